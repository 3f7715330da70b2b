"""Send an application's logs, metrics, deploy markers and events to sregraph's API, so the agents diagnose
from them. In three lines:

    from sregraph.sdk import SregraphHandler
    logging.getLogger().addHandler(SregraphHandler("http://127.0.0.1:8787", token, service="checkout"))
    logging.getLogger("checkout").warning("payment provider slow")

A deploy, once, from the application or its pipeline (the analyst suspects it like a deploy commit):

    mark_deploy("http://127.0.0.1:8787", token, service="checkout", version="1.5.0", revision=git_sha)

`Shipper` is the engine of `SregraphHandler` (a `logging.Handler`), `MetricsPusher` and `Annotator` (deploy
markers and events from a long-running process): records go into
a bounded queue (the application never blocks on the network; a full queue drops the record and counts it),
a background thread sends them in batches every `flush_s` or `batch_size` records, retrying a failed batch
with backoff (connection errors, 429 and 5xx; a 4xx other than 429 is the batch's fault and is dropped and
counted). `close()` flushes what is queued, within `close_timeout_s`. OpenTelemetry is imported only when
`SpanShipper` exports spans: an application that ships none needs none of it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import httpx

log = logging.getLogger("sregraph.sdk")

FIELDS = {"logs": "records", "metrics": "points", "spans": "spans", "deploys": "deploys", "events": "events"}
"""Each ingestion endpoint, and the field of its body that holds the batch."""

_LEVELS = {
    "WARNING": "warning",
    "WARN": "warning",
    "ERROR": "error",
    "CRITICAL": "critical",
    "FATAL": "fatal",
    "DEBUG": "debug",
}


class Shipper:
    """Batches items of one kind to one ingestion endpoint from a background thread."""

    def __init__(
        self,
        url: str,
        token: str,
        kind: str,
        *,
        batch_size: int = 500,
        flush_s: float = 1.0,
        max_queue: int = 10_000,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        close_timeout_s: float = 10.0,
    ) -> None:
        self.endpoint = f"{url.rstrip('/')}/api/v1/ingest/{kind}"
        self.field = FIELDS[kind]
        self.batch_size, self.flush_s, self.retries, self.backoff_s = batch_size, flush_s, retries, backoff_s
        self.close_timeout_s = close_timeout_s
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(max_queue)
        self.client = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s)
        self.sent = 0
        self.dropped = 0
        """Items lost: the queue was full, the server refused the batch, or every retry failed."""
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sregraph-sdk-{kind}", daemon=True)
        self._thread.start()

    def put(self, item: dict[str, Any]) -> None:
        """Queue one item; never blocks (a full queue drops it and counts the drop)."""
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch:
                self._send(batch)
            elif self._closing.is_set():
                return

    def _take(self) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.flush_s
        while len(batch) < self.batch_size:
            wait = deadline - time.monotonic()
            if self._closing.is_set():
                wait = 0.0
            try:
                batch.append(self.queue.get(timeout=max(wait, 0.0)) if wait > 0 else self.queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _send(self, batch: list[dict[str, Any]]) -> None:
        for attempt in range(self.retries + 1):
            try:
                answer = self.client.post(self.endpoint, json={self.field: batch})
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}"
            else:
                if answer.is_success:
                    self.sent += len(batch)
                    return
                if answer.status_code != 429 and answer.status_code < 500:
                    # The batch itself is wrong (a bad record, a revoked token): sending it again cannot help.
                    log.error(
                        "sregraph refused %d %s (%s): %s",
                        len(batch),
                        self.field,
                        answer.status_code,
                        answer.text[:300],
                    )
                    self.dropped += len(batch)
                    return
                problem = f"HTTP {answer.status_code}"
            if attempt < self.retries and not self._closing.is_set():
                time.sleep(self.backoff_s * 2**attempt)
        log.error("sregraph unreachable (%s): %d %s dropped", problem, len(batch), self.field)
        self.dropped += len(batch)

    def close(self) -> None:
        """Send what is queued (within `close_timeout_s`), then stop."""
        self._closing.set()
        self._thread.join(self.close_timeout_s)
        self.client.close()


MAX_ATTRS = 50
"""Attributes of one log record or span the API takes."""

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller passed as `extra=` (a trace id, a route), as the record's attributes."""
    fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
    return {
        k[:200]: v if v is None or isinstance(v, (bool, int, float)) else str(v)[:1000]
        for k, v in list(fields.items())[: MAX_ATTRS - 1]
    }


class SregraphHandler(logging.Handler):
    """A logging handler that ships records to sregraph as the logs of `service`; fields given as `extra=`
    become the record's attributes."""

    def __init__(self, url: str, token: str, service: str, level: int = logging.INFO, **shipper: Any) -> None:
        super().__init__(level)
        self.service = service
        self.shipper = Shipper(url, token, "logs", **shipper)

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the record for shipping; never raises into the application."""
        try:
            message = self.format(record)
        except Exception:  # noqa: BLE001 - logging must never raise into the application
            self.handleError(record)
            return
        self.shipper.put(
            {
                "ts": record.created,
                "service": self.service,
                "level": _LEVELS.get(record.levelname, "info"),
                "message": message[:8192],
                "attrs": {"logger": record.name[:200], **_extra(record)},
            }
        )

    @property
    def dropped(self) -> int:
        """Records lost (see `Shipper.dropped`)."""
        return self.shipper.dropped

    def close(self) -> None:
        """Ship what is queued (within the shipper's timeout), then close the handler."""
        self.shipper.close()
        super().close()


class MetricsPusher:
    """Pushes metric points of `service` (each gets the `service` label)."""

    def __init__(self, url: str, token: str, service: str, **shipper: Any) -> None:
        self.service = service
        self.shipper = Shipper(url, token, "metrics", **shipper)

    def gauge(
        self, name: str, value: float, labels: dict[str, str] | None = None, ts: float | None = None
    ) -> None:
        """Record one value of `name` now (or at `ts`)."""
        self.shipper.put(
            {
                "name": name,
                "labels": {**(labels or {}), "service": self.service},
                "value": float(value),
                "ts": time.time() if ts is None else ts,
            }
        )

    def close(self) -> None:
        """Send what is queued, then stop."""
        self.shipper.close()


class Annotator:
    """Deploy markers and external events of a long-running process (a deployer, a feature-flag service),
    sent in the background like logs."""

    def __init__(self, url: str, token: str, **shipper: Any) -> None:
        self.deploys = Shipper(url, token, "deploys", **shipper)
        self.events = Shipper(url, token, "events", **shipper)

    def deploy(
        self,
        service: str,
        version: str,
        revision: str = "",
        description: str = "",
        author: str = "",
        ts: float | None = None,
    ) -> None:
        """Mark a deploy of `service` (now, or at `ts`): `version` as people name it, `revision` the commit or image."""
        self.deploys.put(_deploy(service, version, revision, description, author, ts))

    def event(
        self,
        kind: str,
        title: str,
        service: str | None = None,
        attrs: dict[str, Any] | None = None,
        ts: float | None = None,
    ) -> None:
        """Record something another system did (`kind` like `feature_flag`); without `service`, it concerns all."""
        item: dict[str, Any] = {
            "ts": time.time() if ts is None else ts,
            "kind": kind,
            "title": title[:500],
            "attrs": attrs or {},
        }
        if service is not None:
            item["service"] = service
        self.events.put(item)

    @property
    def dropped(self) -> int:
        """Markers and events lost (see `Shipper.dropped`)."""
        return self.deploys.dropped + self.events.dropped

    def close(self) -> None:
        """Send what is queued, then stop."""
        self.deploys.close()
        self.events.close()


def _deploy(
    service: str, version: str, revision: str, description: str, author: str, ts: float | None
) -> dict[str, Any]:
    return {
        "ts": time.time() if ts is None else ts,
        "service": service,
        "version": version,
        "revision": revision,
        "description": description[:2000],
        "author": author[:200],
    }


def mark_deploy(
    url: str,
    token: str,
    service: str,
    version: str,
    revision: str = "",
    description: str = "",
    author: str = "",
    ts: float | None = None,
    timeout_s: float = 10.0,
) -> None:
    """Send one deploy marker now and wait for the answer (a deploy script's last step). Raises
    `httpx.HTTPStatusError` when refused (the message says why) and `httpx.HTTPError` when unreachable: a
    pipeline should know its marker was not taken."""
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s) as client:
        answer = client.post(
            f"{url.rstrip('/')}/api/v1/ingest/deploys",
            json={"deploys": [_deploy(service, version, revision, description, author, ts)]},
        )
        answer.raise_for_status()


class SpanShipper:
    """An OpenTelemetry span exporter that ships the spans of `service` to sregraph: give it to a
    `BatchSpanProcessor`, as in
    `tracer_provider.add_span_processor(BatchSpanProcessor(SpanShipper(url, token, "checkout")))`."""

    def __init__(self, url: str, token: str, service: str, **shipper: Any) -> None:
        self.service = service
        self.shipper = Shipper(url, token, "spans", **shipper)

    def export(self, spans: Any) -> Any:
        """Queue a batch of finished spans (never blocks; see `Shipper.put`)."""
        from opentelemetry.sdk.trace.export import SpanExportResult
        from opentelemetry.trace import StatusCode

        for span in spans:
            ctx = span.get_span_context()
            if ctx is None:
                continue
            start, end = span.start_time or 0, span.end_time or span.start_time or 0
            attrs = {
                str(k)[:200]: v if isinstance(v, (bool, int, float, str)) else str(v)
                for k, v in (span.attributes or {}).items()
            }
            self.shipper.put(
                {
                    "trace_id": format(ctx.trace_id, "032x"),
                    "span_id": format(ctx.span_id, "016x"),
                    "parent_id": format(span.parent.span_id, "016x") if span.parent is not None else None,
                    "service": self.service,
                    "name": span.name[:200],
                    "start": start / 1e9,
                    "duration_ms": max(0.0, (end - start) / 1e6),
                    "status": "error" if span.status.status_code == StatusCode.ERROR else "ok",
                    "attrs": dict(list(attrs.items())[:MAX_ATTRS]),
                }
            )
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Spans are sent from the shipper's thread; nothing to force."""
        return True

    def shutdown(self) -> None:
        """Send what is queued, then stop."""
        self.shipper.close()
