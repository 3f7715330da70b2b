"""One tiny HTTP service of the local app (stdlib server, no framework).

Run as ``python -m sregraph.localenv.service --name NAME --port PORT --config PATH --telemetry DB
[--downstream NAME=URL ...]``. The YAML config is read once at start (a restart picks up a new one):
``version``, ``error_rate`` (0), ``latency_ms`` (5), ``timeout_ms`` (1000), ``memory_limit_mb`` (1536), any
other keys are kept and ignored. The version selects a row of `RELEASES` (how a bad release misbehaves).

Routes: ``GET /health``; ``GET /metrics`` (Prometheus text format, prometheus-client); the business route
(frontend ``/buy``, checkout ``/checkout``, payments ``/pay``, and ``/work`` everywhere) which calls every
downstream's business route, propagating W3C ``traceparent`` through the OpenTelemetry SDK; ``POST /chaos``
which sets in-memory faults (gone after a restart).

Every `TICK_S` a background thread writes metrics labelled ``{"service": NAME}`` (plus ``"replica": "i"``
for an extra replica, which listens on PORT+i) and flushes buffered logs to the telemetry store; spans go to
the store through an OpenTelemetry span exporter. With ``SREGRAPH_URL`` and ``SREGRAPH_INGEST_TOKEN`` in its
environment the service never opens the store: its logs, metrics and spans go through sregraph's SDK to the
worker's API (`ShippedTelemetry`), as an application's would.

Config ``capture: false`` makes payments authorise without capturing: every request succeeds, nothing is
bought (the business journey breaks with no error anywhere).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from sregraph.sdk import MetricsPusher, SpanShipper, SregraphHandler
from tools.base import LogRecord, Span, SregraphError
from tools.telemetry import LocalTelemetryStore, MetricPoint

TICK_S = 0.5
DISK_FULL_MARKER = "FULL"
"""A file in the service's volume whose presence means the disk is full (chaos `disk_full`); it holds the
share of writes that fail."""
ROUTES = {"frontend": "/buy", "checkout": "/checkout", "payments": "/pay"}
"""The business route of each known service; any other name serves `/work` only."""
OOM_EXIT_CODE = 137
MAX_BUFFER = 5000
MB = 1024 * 1024


@dataclass(frozen=True)
class Release:
    """How a released version behaves, on top of its config."""

    error_rate: float = 0.0
    extra_latency_ms: float = 0.0
    error: str = ""


RELEASES: dict[str, Release] = {
    "2.0.0-rc1": Release(error_rate=0.6, error="NullPointerException in PriceCalculator.apply"),
    "2.0.0-rc2": Release(extra_latency_ms=400.0, error="slow query in InventoryRepository.reserve"),
}
"""Known-bad releases; every other version (the 1.x line included) behaves as its config says."""


def release_for(version: str) -> Release:
    """The behaviour of a version: a known-bad row of `RELEASES`, else healthy."""
    return RELEASES.get(version, Release())


def _rss_mb() -> float:
    """This process's resident memory in MB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _p95(values: list[float]) -> float:
    """95th percentile (nearest rank) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


class StoreSpanExporter(SpanExporter):
    """OpenTelemetry exporter into the local telemetry store (the embedded default has no collector)."""

    def __init__(self, store: LocalTelemetryStore, service: str) -> None:
        self.store = store
        self.service = service

    def export(self, spans: Any) -> SpanExportResult:
        """Convert and write one batch."""
        out = []
        for span in spans:
            assert isinstance(span, ReadableSpan)
            ctx = span.get_span_context()
            if ctx is None:
                continue
            parent = span.parent
            start, end = span.start_time or 0, span.end_time or span.start_time or 0
            attrs = {k: v for k, v in (span.attributes or {}).items()}
            out.append(
                Span(
                    trace_id=format(ctx.trace_id, "032x"),
                    span_id=format(ctx.span_id, "016x"),
                    parent_id=format(parent.span_id, "016x") if parent is not None else None,
                    service=self.service,
                    name=span.name,
                    start=start / 1e9,
                    duration_ms=(end - start) / 1e6,
                    status="error" if span.status.status_code == StatusCode.ERROR else "ok",
                    attrs=attrs,
                )
            )
        try:
            self.store.write_spans(out)
        except SregraphError as exc:
            print(f"span export failed, dropped {len(out)} spans: {exc}", file=sys.stderr, flush=True)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release: the store belongs to the service."""


PROPAGATOR = TraceContextTextMapPropagator()

SHIP_URL_ENV = "SREGRAPH_URL"
SHIP_TOKEN_ENV = "SREGRAPH_INGEST_TOKEN"
"""Where a shipping service sends its telemetry, and its token (role ingest): environment only, never argv."""
METRICS_FLUSH_S = 0.05
"""How long a shipping service's metrics wait in the SDK's queue for more of their tick before they are sent."""
SHIP_CLOSE_S = 2.0
"""How long a stopping (or dying of OOM) shipping service waits to send what it has queued."""
_LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class ShippedTelemetry:
    """A service's telemetry through sregraph's SDK to the worker's API instead of the store: logs through a
    logging handler, metrics through a pusher, spans through an OpenTelemetry exporter, each batched every tick."""

    def __init__(self, url: str, token: str, service: str) -> None:
        options: dict[str, Any] = {"flush_s": TICK_S, "close_timeout_s": SHIP_CLOSE_S, "timeout_s": 5.0}
        self.handler = SregraphHandler(url, token, service=service, level=logging.DEBUG, **options)
        self.logger = logging.getLogger(f"sregraph.localenv.{service}")
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False  # stdout has its own JSON line already
        self.logger.addHandler(self.handler)
        # A tick's points are queued together: sent at once, they arrive as fast as a direct write. Waiting out
        # a whole tick more would leave a restarted service silent past the observer's staleness limit (2.5 s).
        self.metrics = MetricsPusher(url, token, service=service, **{**options, "flush_s": METRICS_FLUSH_S})
        self.spans = SpanShipper(url, token, service, **options)

    def log(self, level: str, message: str, attrs: dict[str, Any]) -> None:
        """One log record, queued for the next batch."""
        try:
            self.logger.log(_LOG_LEVELS.get(level, logging.INFO), message, extra=attrs)
        except KeyError:  # an attribute named like one of logging's own fields
            self.logger.log(
                _LOG_LEVELS.get(level, logging.INFO),
                message,
                extra={f"attr_{k}": v for k, v in attrs.items()},
            )

    def write_metrics(self, points: list[MetricPoint]) -> None:
        """Metric points, queued for the next batch (the pusher adds the service label)."""
        for p in points:
            self.metrics.gauge(
                p.name, p.value, {k: str(v) for k, v in p.labels.items() if k != "service"}, ts=p.ts
            )

    def write_logs(self, records: list[LogRecord]) -> None:
        """Buffered records (a shipping service logs through `log` at once; this takes any left over)."""
        for r in records:
            self.log(r.level, r.message, r.attrs)

    @property
    def dropped(self) -> int:
        """Everything the SDK lost so far (see `Shipper.dropped`)."""
        return self.handler.dropped + self.metrics.shipper.dropped + self.spans.shipper.dropped

    def close(self) -> None:
        """Send what is queued (each kind within SHIP_CLOSE_S); spans stop with the tracer provider."""
        self.handler.close()
        self.logger.removeHandler(self.handler)
        self.metrics.close()


@dataclass
class Faults:
    """Chaos state, in memory only: a restart clears it."""

    leak_mb_per_s: float = 0.0
    latency_ms: float = 0.0
    error_ratio: float = 0.0
    no_capture: bool = False
    cpu_stop: threading.Event | None = None
    leaked: list[bytes] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """The active faults as JSON."""
        return {
            "leak_mb_per_s": self.leak_mb_per_s,
            "leaked_mb": sum(len(b) for b in self.leaked) / MB,
            "latency_ms": self.latency_ms,
            "error_ratio": self.error_ratio,
            "no_capture": self.no_capture,
            "cpu": self.cpu_stop is not None,
        }


@dataclass
class Window:
    """Counters for the current metrics interval."""

    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    purchases: int = 0


class Service:
    """The state and behaviour of one running service."""

    def __init__(
        self,
        name: str,
        config: dict[str, Any],
        store: LocalTelemetryStore | ShippedTelemetry,
        downstreams: dict[str, str],
        replica: int = 0,
        volume: Path | None = None,
    ) -> None:
        """Build the service from its parsed config; `volume` is its persistent disk (survives restarts)."""
        self.name = name
        self.config = config
        self.version = str(config.get("version", "0.0.0"))
        self.release = release_for(self.version)
        self.error_rate = float(config.get("error_rate", 0.0))
        self.latency_ms = float(config.get("latency_ms", 5.0))
        self.timeout_s = float(config.get("timeout_ms", 1000.0)) / 1000.0
        self.memory_limit_mb = float(config.get("memory_limit_mb", 1536.0))
        self.store = store
        self.downstreams = downstreams
        self.replica = replica
        self.route = ROUTES.get(name, "/work")
        self.labels = {"service": name} if replica == 0 else {"service": name, "replica": str(replica)}
        self.capture = bool(config.get("capture", True))
        self.faults = Faults()
        self.volume = volume
        self.disk_full_ratio = self._read_disk()
        self.started = time.time()
        self._lock = threading.Lock()
        self._out_lock = threading.Lock()
        self._window = Window()
        self._logs: list[LogRecord] = []
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._http = httpx.Client(timeout=self.timeout_s)
        # Spans through the OpenTelemetry SDK, exported to the store in batches.
        self.tracer_provider = TracerProvider(
            resource=Resource.create({"service.name": name, "service.version": self.version})
        )
        exporter = store.spans if isinstance(store, ShippedTelemetry) else StoreSpanExporter(store, name)
        # SpanShipper is a SpanExporter by duck typing: sregraph.sdk imports no OpenTelemetry at import time.
        processor = BatchSpanProcessor(exporter, schedule_delay_millis=int(TICK_S * 1000))  # type: ignore[arg-type]
        self.tracer_provider.add_span_processor(processor)
        self.tracer = self.tracer_provider.get_tracer("sregraph.localenv")
        # Prometheus metrics in a registry of this service's own.
        self.registry = CollectorRegistry()
        self.requests_total = Counter(
            "http_requests_total",
            "Business requests served.",
            ["service", "handler", "code"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "Business request duration.",
            ["service", "handler"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.3, 0.5, 1.0, 2.5),
        )
        self.purchases_total = Counter(
            "shop_purchases_total", "Completed purchases (frontend).", ["service"], registry=self.registry
        )

    # ------------------------------------------------------------------ logging

    def log(self, level: str, message: str, **attrs: Any) -> None:
        """One JSON line on stdout, and the same record buffered for the store."""
        record = LogRecord(ts=time.time(), service=self.name, level=level, message=message, attrs=attrs)
        line = json.dumps(
            {"ts": record.ts, "level": level, "service": self.name, "message": message, **attrs}, default=str
        )
        with self._out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        if isinstance(self.store, ShippedTelemetry):
            self.store.log(level, message, attrs)
            return
        with self._lock:
            if len(self._logs) < MAX_BUFFER:
                self._logs.append(record)

    # ------------------------------------------------------------------ requests

    def handle(self, route: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """Serve one business request inside a server span continuing the caller's trace."""
        parent = PROPAGATOR.extract(headers)
        with self.tracer.start_as_current_span(f"GET {route}", context=parent, kind=SpanKind.SERVER) as span:
            span.set_attribute("http.route", route)
            span.set_attribute("service.replica", self.replica)
            status, body = self._handle(route)
            span.set_attribute("http.status_code", status)
            if status != 200:
                span.set_status(Status(StatusCode.ERROR, str(body.get("error", ""))[:200]))
            return status, body

    def _handle(self, route: str) -> tuple[int, dict[str, Any]]:
        """Local work, then every downstream; returns (status, body)."""
        t0 = time.perf_counter()
        trace_id = format(_current_trace_id(), "032x")
        faults = self.faults
        delay_ms = self.latency_ms + self.release.extra_latency_ms + faults.latency_ms
        if delay_ms > 0:
            time.sleep(delay_ms / 1000.0)
        status, error = 200, ""
        p_ok = (1 - self.error_rate) * (1 - self.release.error_rate) * (1 - faults.error_ratio)
        if self.disk_full_ratio and random.random() < self.disk_full_ratio:
            # The write this request needs fails; a restart does not help, the disk stays full.
            status, error = (
                500,
                f"OSError: [Errno 28] No space left on device: '/var/lib/{self.name}/ledger.wal'",
            )
        elif random.random() >= p_ok:
            status = 500
            # Attribute the failure to one cause, weighted like the probabilities that produced it.
            causes = [
                (self.release.error_rate, f"release {self.version}: {self.release.error}"),
                (faults.error_ratio, "internal error: request handler failed"),
                (self.error_rate, f"internal error: simulated failure (error_rate={self.error_rate:g})"),
            ]
            weights = [w for w, _ in causes]
            error = "internal error"
            if sum(weights):
                error = random.choices([m for _, m in causes], weights=weights)[0]
        purchased = self.capture and not faults.no_capture
        if status == 200:
            for name, url in self.downstreams.items():
                error, confirmed = self._call(name, url)
                if error:
                    status = 502
                    break
                purchased = purchased and confirmed
        if error:
            self.log("error", error, trace_id=trace_id, route=route, status=status)
        elif not purchased and not self.downstreams:
            # The journey's last hop says why nothing was bought; a warning, since the request "worked".
            self.log(
                "warning",
                "payment authorised but not captured; no purchase recorded",
                trace_id=trace_id,
                route=route,
            )
        elapsed_ms = (time.perf_counter() - t0) * 1000.0
        self.requests_total.labels(self.name, route, str(status)).inc()
        self.duration.labels(self.name, route).observe(elapsed_ms / 1000.0)
        bought = status == 200 and purchased
        if bought and self.name == "frontend":
            self.purchases_total.labels(self.name).inc()
        with self._lock:
            w = self._window
            w.requests += 1
            w.errors += status != 200
            w.purchases += bought
            w.latencies.append(elapsed_ms)
        if status == 200:
            return 200, {
                "ok": True,
                "service": self.name,
                "version": self.version,
                "purchased": purchased,
                "trace_id": trace_id,
            }
        return status, {"ok": False, "service": self.name, "error": error, "trace_id": trace_id}

    def _call(self, name: str, base_url: str) -> tuple[str, bool]:
        """Call one downstream in a client span; (error message or "", whether it confirmed the purchase)."""
        url = base_url.rstrip("/") + ROUTES.get(name, "/work")
        with self.tracer.start_as_current_span(f"call {name}", kind=SpanKind.CLIENT) as span:
            # OpenTelemetry's name for the callee: a call that never reached it leaves no span of its own.
            span.set_attribute("peer.service", name)
            headers: dict[str, str] = {}
            PROPAGATOR.inject(headers)
            try:
                resp = self._http.get(url, headers=headers)
            except httpx.TimeoutException:
                error = f"upstream {name} timed out after {self.timeout_s * 1000:.0f} ms"
            except httpx.HTTPError as exc:
                error = f"upstream {name} unreachable: {type(exc).__name__}"
            else:
                if resp.status_code == 200:
                    try:
                        confirmed = bool(resp.json().get("purchased", True))
                    except ValueError:
                        confirmed = True
                    return "", confirmed
                error = f"upstream {name} returned {resp.status_code}"
            span.set_status(Status(StatusCode.ERROR, error))
            return error, False

    # ------------------------------------------------------------------ chaos

    def chaos(self, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Set or clear an in-memory fault; returns (status, body)."""
        fault = payload.get("fault")
        try:
            if fault == "leak":
                self.faults.leak_mb_per_s = float(payload.get("mb_per_s", 40.0))
            elif fault == "latency":
                self.faults.latency_ms = float(payload.get("ms", 500.0))
            elif fault == "errors":
                self.faults.error_ratio = min(1.0, max(0.0, float(payload.get("ratio", 0.5))))
            elif fault == "cpu":
                self._start_cpu(int(payload.get("threads", 1)))
            elif fault == "no_capture":
                self.faults.no_capture = True
            elif fault == "clear":
                if self.faults.cpu_stop is not None:
                    self.faults.cpu_stop.set()
                self.faults = Faults()
            else:
                return 400, {"ok": False, "error": f"unknown fault {fault!r}"}
        except (TypeError, ValueError) as exc:
            return 400, {"ok": False, "error": f"bad parameter: {exc}"}
        return 200, {"ok": True, "faults": self.faults.describe()}

    def _start_cpu(self, threads: int) -> None:
        """Burn CPU in `threads` busy threads until the fault is cleared."""
        stop = self.faults.cpu_stop or threading.Event()
        self.faults.cpu_stop = stop

        def burn() -> None:
            x = 0
            while not stop.is_set():
                for _ in range(10_000):
                    x = (x * 31 + 7) % 1_000_003

        for _ in range(max(1, min(threads, 4))):
            threading.Thread(target=burn, name="chaos-cpu", daemon=True).start()

    # ------------------------------------------------------------------ background

    def _read_disk(self) -> float:
        """The share of writes failing because the volume is full (0 when it is not): `FULL` holds it."""
        if self.volume is None:
            return 0.0
        try:
            return min(1.0, max(0.0, float((self.volume / DISK_FULL_MARKER).read_text().strip() or 1.0)))
        except FileNotFoundError:
            return 0.0
        except (OSError, ValueError):
            return 1.0

    def tick(self, interval: float, cpu_s: float) -> None:
        """One metrics interval: grow a leak, check the memory limit, write metrics, flush logs and spans."""
        self.disk_full_ratio = self._read_disk()
        now = time.time()
        if self.faults.leak_mb_per_s > 0:
            # Filled bytes, not zeros: zero pages are not resident, and the point is a growing RSS.
            self.faults.leaked.append(b"\x01" * int(self.faults.leak_mb_per_s * interval * MB))
        rss = _rss_mb()
        if rss > self.memory_limit_mb:
            self.log("error", f"out of memory: rss {rss:.0f} MB exceeds limit {self.memory_limit_mb:.0f} MB")
            self.flush([])
            if isinstance(self.store, ShippedTelemetry):
                self.store.close()  # the out-of-memory line must leave before the process does
            os._exit(OOM_EXIT_CODE)
        with self._lock:
            w, self._window = self._window, Window()
        points = [
            MetricPoint("request_rate", self.labels, w.requests / interval, now),
            MetricPoint("error_ratio", self.labels, w.errors / w.requests if w.requests else 0.0, now),
            MetricPoint("memory_rss_mb", self.labels, rss, now),
            MetricPoint("cpu_percent", self.labels, 100.0 * cpu_s / interval, now),
        ]
        if w.latencies:
            points.append(MetricPoint("latency_p95_ms", self.labels, _p95(w.latencies), now))
        if self.name == "frontend":
            points.append(MetricPoint("purchases_rate", self.labels, w.purchases / interval, now))
            if w.requests:
                points.append(MetricPoint("conversion_ratio", self.labels, w.purchases / w.requests, now))
        self.flush(points)

    def flush(self, points: list[MetricPoint]) -> None:
        """Write metrics and the buffered logs; on failure drop them and say so on stderr."""
        with self._lock:
            logs, self._logs = self._logs, []
        try:
            self.store.write_metrics(points)
            self.store.write_logs(logs)
        except SregraphError as exc:
            print(f"telemetry write failed, dropped a batch: {exc}", file=sys.stderr, flush=True)

    def start_ticker(self) -> None:
        """Start the background thread that runs `tick` every TICK_S."""
        self._ticker = threading.Thread(target=self._run_ticker, name="telemetry", daemon=True)
        self._ticker.start()

    def _run_ticker(self) -> None:
        last, last_cpu = time.monotonic(), time.process_time()
        while not self._stop.wait(max(0.0, last + TICK_S - time.monotonic())):
            now, cpu = time.monotonic(), time.process_time()
            self.tick(max(now - last, 1e-3), cpu - last_cpu)
            last, last_cpu = now, cpu

    def close(self) -> None:
        """Stop the ticker and release resources, flushing what is buffered."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5.0)
        if self.faults.cpu_stop is not None:
            self.faults.cpu_stop.set()
        self.flush([])
        self.tracer_provider.shutdown()  # flushes the last spans
        self._http.close()


def _current_trace_id() -> int:
    """Trace id of the active span (0 outside a span)."""
    return trace.get_current_span(otel_context.get_current()).get_span_context().trace_id


def make_handler(service: Service) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to `service`."""

    class Handler(BaseHTTPRequestHandler):
        server_version = f"sregraph-{service.name}"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            """Silence the per-request access log (spans and metrics cover it)."""

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - stdlib naming
            """Health and business routes."""
            path = self.path.split("?", 1)[0]
            if path == "/health":
                self._send(200, {"status": "ok", "version": service.version, "replica": service.replica})
            elif path == "/metrics":
                data = generate_latest(service.registry)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            elif path in (service.route, "/work"):
                headers = {k.lower(): v for k, v in self.headers.items()}
                self._send(*service.handle(path, headers))
            else:
                self._send(404, {"error": f"no route {path}"})

        def do_POST(self) -> None:  # noqa: N802 - stdlib naming
            """Chaos control."""
            if self.path.split("?", 1)[0] != "/chaos":
                self._send(404, {"error": f"no route {self.path}"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                payload = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(payload, dict):
                    raise ValueError("body must be a JSON object")
            except ValueError as exc:
                self._send(400, {"ok": False, "error": f"bad JSON: {exc}"})
                return
            self._send(*service.chaos(payload))

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # never wait for in-flight requests on shutdown


def _parse_downstream(text: str) -> tuple[str, str]:
    """`NAME=URL` (or a bare URL, named by its host:port)."""
    name, sep, url = text.partition("=")
    if not sep:
        url = text
        name = text.split("://", 1)[-1].rstrip("/")
    return name, url


def main(argv: list[str] | None = None) -> int:
    """Run one service until SIGTERM/SIGINT; the exit code is 0 on a clean stop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--telemetry", type=Path, required=True)
    parser.add_argument("--downstream", action="append", default=[], metavar="NAME=URL")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)

    replica = int(os.environ.get("REPLICA", "0") or 0)
    try:
        config = yaml.safe_load(args.config.read_text()) or {}
        if not isinstance(config, dict):
            raise ValueError("top level must be a mapping")
    except (OSError, ValueError, yaml.YAMLError) as exc:
        message = f"bad config {args.config}: {exc}"
        print(json.dumps({"level": "error", "service": args.name, "message": message}), flush=True)
        return 2
    url, token = os.environ.get(SHIP_URL_ENV, ""), os.environ.get(SHIP_TOKEN_ENV, "")
    store: LocalTelemetryStore | ShippedTelemetry = (
        ShippedTelemetry(url, token, args.name) if url and token else LocalTelemetryStore(args.telemetry)
    )
    volume = args.telemetry.parent / "volumes" / args.name
    service = Service(
        args.name, config, store, dict(map(_parse_downstream, args.downstream)), replica, volume
    )
    port = args.port + replica
    try:
        server = _Server((args.host, port), make_handler(service))
    except OSError as exc:
        service.log("error", f"cannot listen on {args.host}:{port}: {exc}")
        service.close()
        store.close()
        return 1

    def on_signal(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service.start_ticker()
    service.log(
        "info", f"service started version={service.version}", port=port, replica=replica, pid=os.getpid()
    )
    try:
        server.serve_forever(poll_interval=0.05)
    finally:
        service.log("info", "service stopping")
        server.server_close()
        service.close()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
