"""Alertmanager webhook receiver: firing alerts become `Trigger`s, resolved ones are noted.

The webhook payload (version 4) is validated with pydantic; a broken one gets a 4xx naming the field, so
Alertmanager, which retries only 5xx, does not resend it forever. Alerts are grouped by `SERVICE:ALERTNAME`,
deduplicated while active, and go through a bounded queue (a full queue answers 503); with `on_alerts` the
worker's storm gate does the grouping instead. Design and answers: docs/observability.md §4.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from tools.base import Clock, ConfigError, SystemClock
from tools.domain import Trigger

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
MAX_ALERTS = 1000
MAX_LABELS = 64
MAX_TEXT = 2000
MAX_DEPTH = 16
"""JSON nesting an Alertmanager payload never needs more than 4 levels of; deeper is refused with 400."""
LabelName = Annotated[str, StringConstraints(max_length=128)]
MAX_VALUE = 16 * 1024
"""Longest label or annotation value accepted; what reaches a Trigger is clipped far shorter (SUMMARY_CHARS)."""
LabelValue = Annotated[str, StringConstraints(max_length=MAX_VALUE)]
Labels = dict[LabelName, LabelValue]
SUMMARY_CHARS = 300
"""Alert text is written by whoever writes alert rules; keep what reaches a prompt short."""
SERVICE_LABELS: tuple[str, ...] = ("service", "sregraph_service", "app")


# --------------------------------------------------------------------------- payload


class AlertmanagerAlert(BaseModel):
    """One alert of the webhook payload."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    status: Literal["firing", "resolved"]
    labels: Labels = Field(max_length=MAX_LABELS)
    annotations: Labels = Field(default_factory=dict, max_length=MAX_LABELS)
    starts_at: datetime = Field(alias="startsAt")
    ends_at: datetime | None = Field(default=None, alias="endsAt")
    """Alertmanager sends year 1 (`0001-01-01T00:00:00Z`) for "not ended"."""
    generator_url: str = Field(default="", alias="generatorURL", max_length=MAX_TEXT)
    fingerprint: str = Field(default="", max_length=128)

    @property
    def alertname(self) -> str:
        """The `alertname` label (every Prometheus alert has one)."""
        return self.labels.get("alertname", "unnamed")

    def key(self) -> str:
        """Alertmanager's fingerprint, or a hash of the labels when the sender gave none."""
        if self.fingerprint:
            return self.fingerprint
        canonical = json.dumps(self.labels, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class AlertmanagerWebhook(BaseModel):
    """Alertmanager's webhook payload, version 4."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    alerts: list[AlertmanagerAlert] = Field(max_length=MAX_ALERTS)
    receiver: str = Field(default="", max_length=MAX_TEXT)
    group_key: str = Field(default="", alias="groupKey", max_length=MAX_TEXT)
    truncated_alerts: int = Field(default=0, alias="truncatedAlerts", ge=0)
    group_labels: Labels = Field(default_factory=dict, alias="groupLabels", max_length=MAX_LABELS)
    common_labels: Labels = Field(default_factory=dict, alias="commonLabels", max_length=MAX_LABELS)
    common_annotations: Labels = Field(default_factory=dict, alias="commonAnnotations", max_length=MAX_LABELS)
    external_url: str = Field(default="", alias="externalURL", max_length=MAX_TEXT)


class WebhookError(ConfigError):
    """A payload sregraph will not accept; `status` is the HTTP code to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def json_depth_exceeds(body: bytes | str, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text nests arrays and objects deeper than `limit` (brackets inside strings ignored)."""
    data = body.encode() if isinstance(body, str) else body
    if data.count(b"[") + data.count(b"{") <= limit:
        return False  # cannot be deeper than its number of openings
    depth, in_string, escaped = 0, False, False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def parse_webhook(body: bytes | str) -> AlertmanagerWebhook:
    """Validate a webhook body; WebhookError 400 (not JSON, or nested too deeply) or 422 (wrong shape, naming
    the fields)."""
    if json_depth_exceeds(body):
        raise WebhookError(400, f"body nests JSON deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise WebhookError(400, f"body is not JSON: {exc}") from exc
    try:
        return AlertmanagerWebhook.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:10]
        )
        raise WebhookError(422, f"not an Alertmanager v4 webhook payload: {problems}") from exc


# --------------------------------------------------------------------------- alerts -> triggers


@dataclass(frozen=True)
class ResolvedAlert:
    """A group of alerts that stopped firing."""

    fingerprint: str
    service: str | None
    alertname: str
    ended_at: float
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class AlertGroup:
    """The alerts of one payload that share sregraph's fingerprint."""

    fingerprint: str
    service: str | None
    alertname: str
    alerts: list[AlertmanagerAlert]

    @property
    def firing(self) -> list[AlertmanagerAlert]:
        """The group's alerts that are firing."""
        return [a for a in self.alerts if a.status == "firing"]


def service_of(labels: dict[str, str], service_labels: Sequence[str] = SERVICE_LABELS) -> str | None:
    """The service an alert names: the first of `service_labels` it carries."""
    for name in service_labels:
        if labels.get(name):
            return labels[name]
    return None


def fingerprint_of(service: str | None, alertname: str) -> str:
    """sregraph's grouping key for alerts: `SERVICE:ALERTNAME` (`-` when no service label)."""
    return f"{service or '-'}:{alertname}"


def group_alerts(
    webhook: AlertmanagerWebhook, service_labels: Sequence[str] = SERVICE_LABELS
) -> list[AlertGroup]:
    """The payload's alerts grouped by fingerprint, in first-seen order."""
    groups: dict[str, AlertGroup] = {}
    for alert in webhook.alerts:
        service = service_of(alert.labels, service_labels)
        key = fingerprint_of(service, alert.alertname)
        if key not in groups:
            groups[key] = AlertGroup(key, service, alert.alertname, [])
        groups[key].alerts.append(alert)
    return list(groups.values())


def _epoch(moment: datetime | None) -> float | None:
    """Seconds since the epoch, or None for a missing or year-1 ("not set") time."""
    if moment is None or moment.year < 1970:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC).timestamp()
    return moment.timestamp()


def _clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def trigger_for(group: AlertGroup) -> Trigger:
    """The Trigger for a firing group: signal = alertname, labels shared by its firing alerts."""
    firing = group.firing or group.alerts
    shared = dict(firing[0].labels)
    for alert in firing[1:]:
        shared = {k: v for k, v in shared.items() if alert.labels.get(k) == v}
    annotations = firing[0].annotations
    summary = (
        annotations.get("summary")
        or annotations.get("description")
        or (f"{group.alertname} firing" + (f" on {group.service}" if group.service else ""))
    )
    labels = {k: _clip(v, 200) for k, v in sorted(shared.items())[:MAX_LABELS]}
    labels.update(
        {
            "fingerprint": group.fingerprint,
            "alertname": group.alertname,
            "alerts": str(len(firing)),
            "alertmanager_fingerprints": ",".join(sorted({a.key() for a in firing})[:10]),
        }
    )
    starts = [t for a in firing if (t := _epoch(a.starts_at)) is not None]
    return Trigger(
        source="alert",
        service=group.service,
        signal=group.alertname,
        summary=_clip(summary, SUMMARY_CHARS),
        fired_at=min(starts) if starts else 0.0,
        labels=labels,
    )


# --------------------------------------------------------------------------- the receiver

AlertEvent = Trigger | ResolvedAlert


class _BoundedQueue:
    """A FIFO with a capacity, where a batch goes in whole or not at all."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[AlertEvent] = deque()
        self._cond = threading.Condition()
        self.busy = 0
        """Events taken but not finished (the dispatcher's current callback)."""

    def offer_all(self, items: list[AlertEvent]) -> bool:
        with self._cond:
            if len(self._items) + len(items) > self.capacity:
                return False
            self._items.extend(items)
            self._cond.notify_all()
            return True

    def take(self, timeout: float | None, mark_busy: bool = False) -> AlertEvent | None:
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._items), timeout):
                return None
            self.busy += mark_busy
            return self._items.popleft()

    def done(self) -> None:
        with self._cond:
            self.busy -= 1
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._items and self.busy == 0, timeout)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


@dataclass
class ReceiverStats:
    """Counters since start."""

    payloads: int = 0
    rejected: int = 0
    triggers: int = 0
    duplicates: int = 0
    resolved: int = 0
    queue_full: int = 0
    callback_errors: int = 0
    auth_failures: int = 0
    unknown_service: int = 0
    """Alerts refused because they name no service, or one the topology does not know."""
    rate_limited: int = 0
    timeouts: int = 0
    """Connections closed because headers or body did not arrive in time."""
    overloaded: int = 0
    """Connections refused because `max_connections` were being served."""


class RateLimiter:
    """A token bucket per source address: `rate` requests per second, `burst` at once."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic, max_sources: int = 10_000
    ) -> None:
        self.rate, self.burst, self.clock, self.max_sources = rate, burst, clock, max_sources
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, source: str) -> bool:
        """Take one token from `source`'s bucket; False if it is empty."""
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.get(source, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if len(self._buckets) >= self.max_sources and source not in self._buckets:
                # Full buckets carry no information: forget them first, so a spray of addresses cannot grow this.
                self._buckets = {
                    s: b for s, b in self._buckets.items() if b[0] + (now - b[1]) * self.rate < self.burst
                }
            if tokens < 1:
                self._buckets[source] = (tokens, now)
                return False
            self._buckets[source] = (tokens - 1, now)
            return True


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (or `localhost`)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AlertReceiver:
    """A small HTTP server taking Alertmanager webhooks on `POST /alerts` (stdlib; no framework needed)."""

    def __init__(
        self,
        callback: Callable[[Trigger], Any] | None = None,
        *,
        on_resolved: Callable[[ResolvedAlert], Any] | None = None,
        on_alerts: Callable[[list[AlertmanagerAlert]], dict[str, int]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/alerts",
        token: str | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        queue_size: int = 100,
        dedup_window_s: float = 3600.0,
        service_labels: Sequence[str] = SERVICE_LABELS,
        clock: Clock | None = None,
        insecure_no_auth: bool = False,
        known_services: Callable[[], Sequence[str]] | Sequence[str] | None = None,
        rate_per_s: float = 20.0,
        rate_burst: int = 100,
        header_timeout_s: float = 5.0,
        body_timeout_s: float = 10.0,
        max_connections: int = 32,
        on_reject: Callable[[str], Any] | None = None,
    ) -> None:
        """Listen on host:port (0: a free port) once started; `token` requires `Authorization: Bearer`.

        Serving needs `token`, or `insecure_no_auth` on a loopback host. `known_services` (or a function
        returning them) makes alerts for any other service, or for none, a 422; `on_reject(reason)` is called
        for every refusal (auth, unknown_service, rate_limited, timeout, overloaded, bad_request).
        """
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        if on_alerts is not None and (callback is not None or on_resolved is not None):
            raise ConfigError(
                "AlertReceiver: on_alerts takes every alert; it excludes callback and on_resolved"
            )
        self.callback = callback
        self.on_resolved = on_resolved
        self.on_alerts = on_alerts
        self.host, self.port, self.path = host, port, path
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.dedup_window_s = dedup_window_s
        self.service_labels = tuple(service_labels)
        self.clock: Clock = clock or SystemClock()
        self.insecure_no_auth = insecure_no_auth
        self._known_services = known_services
        self.header_timeout_s, self.body_timeout_s = header_timeout_s, body_timeout_s
        self.max_connections = max_connections
        self.on_reject = on_reject
        self._limiter = RateLimiter(rate_per_s, rate_burst)
        self.stats = ReceiverStats()
        self.resolved: deque[ResolvedAlert] = deque(maxlen=100)
        """The latest resolved groups, newest last."""
        self._queue = _BoundedQueue(queue_size)
        self._lock = threading.Lock()
        self._active: dict[str, dict[str, float]] = {}
        """sregraph fingerprint -> {Alertmanager fingerprint: starts_at} of its alerts still firing."""
        self._enqueued_at: dict[str, float] = {}
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ processing (no HTTP needed)

    def active(self) -> dict[str, int]:
        """Active groups and how many of their alerts are firing."""
        with self._lock:
            return {fp: len(alerts) for fp, alerts in sorted(self._active.items())}

    def accept(self, webhook: AlertmanagerWebhook) -> tuple[int, dict[str, Any]]:
        """Apply one payload: (HTTP status, JSON answer). 503 and nothing changed when the queue is full."""
        now = self.clock.now()
        events: list[AlertEvent] = []
        with self._lock:
            active = {fp: dict(alerts) for fp, alerts in self._active.items()}
            enqueued_at = dict(self._enqueued_at)
            new_triggers = duplicates = 0
            resolved_now: list[ResolvedAlert] = []
            for group in group_alerts(webhook, self.service_labels):
                was_active = bool(active.get(group.fingerprint))
                alerts = active.setdefault(group.fingerprint, {})
                for alert in group.alerts:
                    if alert.status == "firing":
                        alerts[alert.key()] = _epoch(alert.starts_at) or now
                    else:
                        alerts.pop(alert.key(), None)
                if alerts and group.firing:
                    last = enqueued_at.get(group.fingerprint)
                    if not was_active or last is None or now - last >= self.dedup_window_s:
                        events.append(trigger_for(group))
                        enqueued_at[group.fingerprint] = now
                        new_triggers += 1
                    else:
                        duplicates += 1
                elif not alerts:
                    del active[group.fingerprint]
                    enqueued_at.pop(group.fingerprint, None)
                    if was_active or not group.firing:
                        ends = [t for a in group.alerts if (t := _epoch(a.ends_at)) is not None]
                        resolved = ResolvedAlert(
                            group.fingerprint,
                            group.service,
                            group.alertname,
                            max(ends) if ends else now,
                            dict(group.alerts[0].labels),
                        )
                        resolved_now.append(resolved)
                        if self.on_resolved is not None or self.callback is None:
                            events.append(resolved)
            if events and not self._queue.offer_all(events):
                self.stats.queue_full += 1
                return 503, {"error": f"queue full ({self._queue.capacity} events waiting); retry later"}
            self._active, self._enqueued_at = active, enqueued_at
            self.stats.payloads += 1
            self.stats.triggers += new_triggers
            self.stats.duplicates += duplicates
            self.stats.resolved += len(resolved_now)
            self.resolved.extend(resolved_now)
        for r in resolved_now:
            log.info("alert group %s resolved", r.fingerprint)
        return 200, {"triggers": new_triggers, "duplicates": duplicates, "resolved": len(resolved_now)}

    def reject(self, reason: str, count: int = 1) -> None:
        """Count a refusal (stats and `on_reject`)."""
        field_name = {"auth": "auth_failures", "bad_request": "rejected", "timeout": "timeouts"}.get(
            reason, reason
        )
        with self._lock:
            setattr(self.stats, field_name, getattr(self.stats, field_name, 0) + count)
        if self.on_reject is not None:
            for _ in range(count):
                self.on_reject(reason)

    def known_services(self) -> set[str] | None:
        """The services alerts may name (None: any)."""
        known = self._known_services
        if known is None:
            return None
        return set(known() if callable(known) else known)

    def _only_known(self, webhook: AlertmanagerWebhook) -> tuple[AlertmanagerWebhook, list[str]]:
        """The payload without alerts for unknown services (or none), and the names refused."""
        known = self.known_services()
        if known is None:
            return webhook, []
        kept, refused = [], []
        for alert in webhook.alerts:
            service = service_of(alert.labels, self.service_labels)
            if service is not None and service in known:
                kept.append(alert)
            else:
                refused.append("(none)" if service is None else service)
        if refused:
            webhook = webhook.model_copy(update={"alerts": kept})
        return webhook, refused

    def handle(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Parse and apply one webhook body: (HTTP status, JSON answer)."""
        try:
            webhook = parse_webhook(body)
        except WebhookError as exc:
            self.reject("bad_request")
            return exc.status, {"error": str(exc)}
        webhook, refused = self._only_known(webhook)
        if refused:
            self.reject("unknown_service", len(refused))
            names = ", ".join(sorted({repr(_clip(n, 60)) for n in refused})[:10])
            log.warning("alert webhook: %d alert(s) for unknown services refused: %s", len(refused), names)
            if not webhook.alerts:
                known = ", ".join(sorted(self.known_services() or ()))
                return 422, {"error": f"unknown service(s) {names}; this receiver takes alerts for {known}"}
        if webhook.truncated_alerts:
            log.warning(
                "Alertmanager truncated %d alerts of group %s", webhook.truncated_alerts, webhook.group_key
            )
        if self.on_alerts is not None:
            try:
                outcomes = self.on_alerts(webhook.alerts)
            except Exception:
                # A 5xx: Alertmanager sends the payload again later.
                log.exception("alert intake failed")
                with self._lock:
                    self.stats.callback_errors += 1
                return 500, {"error": "alert intake failed; retry later"}
            with self._lock:
                self.stats.payloads += 1
            return 200, {**outcomes, **({"unknown_service": len(refused)} if refused else {})}
        status, answer = self.accept(webhook)
        if refused and status == 200:
            answer["unknown_service"] = len(refused)
        return status, answer

    def next_event(self, timeout: float | None = None) -> AlertEvent | None:
        """Pull mode (no callback): the next Trigger or ResolvedAlert, or None after `timeout` seconds."""
        if self.callback is not None:
            raise ConfigError(
                "next_event: this receiver hands events to its callback; pull mode needs callback=None"
            )
        return self._queue.take(timeout)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event was handed out and its callback returned."""
        return self._queue.wait_idle(timeout)

    @property
    def queued(self) -> int:
        """Events waiting in the queue."""
        return len(self._queue)

    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            event = self._queue.take(0.2, mark_busy=True)
            if event is None:
                continue
            try:
                if isinstance(event, Trigger):
                    assert self.callback is not None
                    self.callback(event)
                elif self.on_resolved is not None:
                    self.on_resolved(event)
            except Exception:
                self.stats.callback_errors += 1
                log.exception("alert callback failed for %s", event)
            finally:
                self._queue.done()

    # ------------------------------------------------------------------ HTTP

    @property
    def url(self) -> str:
        """The webhook URL to put in alertmanager.yml."""
        return f"http://{self.host}:{self.port}{self.path}"

    def start(self) -> AlertReceiver:
        """Bind, then serve and dispatch on daemon threads; returns self."""
        if self._server is not None:
            return self
        if self.token is None and not self.insecure_no_auth:
            raise ConfigError(
                "alerts: the webhook receiver needs a bearer token (set SREGRAPH_ALERTS_TOKEN); "
                "--insecure-no-auth serves without one, on a loopback host only"
            )
        if self.token is None and not is_loopback(self.host):
            raise ConfigError(f"alerts: --insecure-no-auth serves on loopback only, not on {self.host}")
        self._stopping.clear()
        self._server = _Server((self.host, self.port), _handler(self))
        self._server.receiver = self
        self.port = self._server.server_address[1]
        serve = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="alerts-http", daemon=True
        )
        self._threads = [serve]
        if self.callback is not None:
            self._threads.append(threading.Thread(target=self._dispatch, name="alerts-dispatch", daemon=True))
        for thread in self._threads:
            thread.start()
        log.info("alert receiver listening on %s", self.url)
        if self.token is None:
            log.warning(
                "alert receiver on %s takes webhooks WITHOUT authentication (insecure_no_auth)", self.url
            )
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving; the dispatcher finishes its current callback (bounded wait), queued events stay."""
        server, self._server = self._server, None
        self._stopping.set()
        self._queue.wake()
        if server is not None:
            server.shutdown()
            server.server_close()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = []
        if len(self._queue):
            log.warning("alert receiver stopped with %d events still queued", len(self._queue))

    def __enter__(self) -> AlertReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    receiver: AlertReceiver

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots: threading.BoundedSemaphore | None = None

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve on a thread while fewer than `max_connections` are; otherwise answer 503 and close at once."""
        if self._slots is None:
            self._slots = threading.BoundedSemaphore(self.receiver.max_connections)
        if not self._slots.acquire(blocking=False):
            self.receiver.reject("overloaded")
            try:
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\nConnection: "
                    b"close\r\n\r\n"
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Serve one connection and give its slot back."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            assert self._slots is not None
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that broke (timed out, reset) is logged in one line, not a traceback on stderr."""
        log.debug("alert webhook connection from %s ended with an error", client_address, exc_info=True)


def _handler(receiver: AlertReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "sregraph-alerts"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            """Requests are logged by outcome in `do_POST`, not per line."""

        def log_error(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            """The stdlib reports a read that hit the socket timeout here ("Request timed out")."""
            if "timed out" in format:
                self._count_timeout()

        def setup(self) -> None:
            """Every read on this connection gives up after the header deadline (the body's is set later)."""
            super().setup()
            self.connection.settimeout(receiver.header_timeout_s)

        def handle_one_request(self) -> None:
            """One request, with a deadline for the whole of its request line and headers."""
            self.connection.settimeout(receiver.header_timeout_s)
            self._expired = False
            self._deadline = threading.Timer(receiver.header_timeout_s, self._expire)
            self._deadline.daemon = True
            self._deadline.start()
            try:
                super().handle_one_request()
            except TimeoutError:
                self.close_connection = True
                self._count_timeout()
            finally:
                self._deadline.cancel()

        def _count_timeout(self) -> None:
            if not self._expired:  # the watchdog counted it already
                self._expired = True
                receiver.reject("timeout")

        def _expire(self) -> None:
            """A slow client (one byte a second keeps a plain socket timeout happy) loses its connection."""
            self._count_timeout()
            log.warning(
                "alert webhook: %s too slow to send its request; connection closed", self.client_address[0]
            )
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def _read_body(self, length: int) -> bytes | None:
            """The body within the body deadline, or None (the connection is closed)."""
            self._deadline.cancel()
            self._deadline = threading.Timer(receiver.body_timeout_s, self._expire)
            self._deadline.daemon = True
            self._deadline.start()
            self.connection.settimeout(receiver.body_timeout_s)
            try:
                body = self.rfile.read(length)
            except (TimeoutError, OSError):
                body = b""
            finally:
                self._deadline.cancel()
            if len(body) < length:
                self.close_connection = True
                self._count_timeout()
                return None
            return body

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 503:
                self.send_header("Retry-After", "5")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - stdlib naming
            """Liveness and counters."""
            if self._expired:
                return  # the deadline cut the headers short: they only look complete
            if self.path.split("?", 1)[0] in ("/health", "/-/healthy"):
                self._send(200, {"status": "ok", "queued": receiver.queued, **receiver.stats.__dict__})
            elif self.path.split("?", 1)[0] == receiver.path:
                self._send(405, {"error": f"use POST {receiver.path}"})
            else:
                self._send(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:  # noqa: N802 - stdlib naming
            """The webhook."""
            self._deadline.cancel()  # the headers are in
            if self._expired:
                return  # the deadline cut the headers short: they only look complete
            source = str(self.client_address[0])
            if not receiver._limiter.allow(source):
                receiver.reject("rate_limited")
                self.close_connection = True
                self._send(429, {"error": "too many requests from this address; slow down"})
                return
            if self.path.split("?", 1)[0] != receiver.path:
                self._send(404, {"error": f"no route {self.path[:200]}; the webhook is POST {receiver.path}"})
                return
            if receiver.token is not None:
                given = self.headers.get("Authorization", "")
                if not hmac.compare_digest(
                    given.encode(errors="replace"), f"Bearer {receiver.token}".encode()
                ):
                    receiver.reject("auth")
                    log.warning("alert webhook: %s bearer token from %s", "wrong" if given else "no", source)
                    self.close_connection = True
                    self._send(401, {"error": "missing or wrong bearer token"})
                    return
            kind = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip().lower()
            if kind != "application/json" and not kind.endswith("+json"):
                self.close_connection = True
                self._send(415, {"error": f"content type {kind!r}; send application/json"})
                return
            length_text = self.headers.get("Content-Length")
            if length_text is None or not length_text.strip().isdigit():
                self.close_connection = True
                self._send(411, {"error": "Content-Length required"})
                return
            length = int(length_text)
            if length > receiver.max_body_bytes:
                self.close_connection = True  # the unread body must not be parsed as the next request
                self._send(
                    413, {"error": f"body of {length} bytes exceeds the limit of {receiver.max_body_bytes}"}
                )
                return
            body = self._read_body(length)
            if body is None:
                return  # too slow or cut short: nothing to answer on a closed connection
            status, answer = receiver.handle(body)
            if status >= 400:
                log.warning("alert webhook answered %d: %s", status, answer.get("error"))
            self._send(status, answer)

    return Handler
