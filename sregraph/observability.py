"""sregraph's own telemetry: Prometheus metrics, JSON logs carrying the incident id, and /metrics + /healthz."""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tools.redact import redact_out
from tools.resilience import subscribe

incident_var: contextvars.ContextVar[str] = contextvars.ContextVar("incident_id", default="-")
"""The incident the current code works for; every log line carries it."""

_base_factory = logging.getLogRecordFactory()


def _record_with_incident(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _base_factory(*args, **kwargs)
    record.incident_id = incident_var.get()
    return record


if not getattr(_base_factory, "_sregraph", False):
    # Stamp the incident id when a record is made (a handler may format it later, in another context).
    _record_with_incident._sregraph = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(_record_with_incident)


CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}
"""`sregraph_circuit_state` values."""


class Metrics:
    """The worker's metrics, in a registry of its own (tests can create as many as they like)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.open_incidents = Gauge(
            "sregraph_open_incidents", "Incidents started and not finished.", registry=self.registry
        )
        self.step_seconds = Histogram(
            "sregraph_step_duration_seconds",
            "Time per graph step.",
            ["node"],
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.actions = Counter(
            "sregraph_actions_total", "Remediation actions.", ["kind", "status"], registry=self.registry
        )
        self.incidents = Counter(
            "sregraph_incidents_total", "Incidents by final status.", ["status"], registry=self.registry
        )
        self.llm_tokens = Counter("sregraph_llm_tokens_total", "LLM tokens spent.", registry=self.registry)
        self.errors = Counter(
            "sregraph_errors_total", "Errors while running incidents.", ["where"], registry=self.registry
        )
        self.last_scan = Gauge(
            "sregraph_last_scan_timestamp_seconds",
            "When the worker last looked at telemetry.",
            registry=self.registry,
        )
        self.dependency_retries = Counter(
            "sregraph_dependency_retries_total",
            "Retries of calls to a flaky dependency.",
            ["dependency"],
            registry=self.registry,
        )
        self.circuit_state = Gauge(
            "sregraph_circuit_state",
            "Circuit breaker per dependency: 0 closed, 1 half-open, 2 open.",
            ["dependency"],
            registry=self.registry,
        )
        self.alerts_rejected = Counter(
            "sregraph_alerts_rejected_total",
            "Alertmanager webhooks (or alerts in them) refused, by reason: auth, unknown_service, rate_limited, "
            "timeout, overloaded, bad_request.",
            ["reason"],
            registry=self.registry,
        )
        self.alerts_auth_failures = Counter(
            "sregraph_alerts_auth_failures_total",
            "Webhook requests with a missing or wrong bearer token.",
            registry=self.registry,
        )
        subscribe(self)  # held weakly: a Metrics that is dropped stops hearing

    def alert_rejected(self, reason: str) -> None:
        """The alert receiver refused something (sregraph/alerts.py `on_reject`)."""
        self.alerts_rejected.labels(reason).inc()
        if reason == "auth":
            self.alerts_auth_failures.inc()

    def dependency_retry(self, dependency: str) -> None:
        """A call to `dependency` is being retried (tools/resilience.py calls this)."""
        self.dependency_retries.labels(dependency).inc()

    def dependency_state(self, dependency: str, state: str) -> None:
        """The circuit of `dependency` is closed, half_open or open (tools/resilience.py calls this)."""
        self.circuit_state.labels(dependency).set(CIRCUIT_STATES.get(state, 0))

    def observe_update(self, node: str, update: dict[str, Any], seconds: float) -> None:
        """Account for one graph step's update."""
        self.step_seconds.labels(node).observe(seconds)
        for result in update.get("actions", []) if node == "act" else []:
            self.actions.labels(result.action.kind, result.status).inc()
        status = update.get("status")
        if node in ("document", "observe") and status in ("resolved", "escalated", "healthy"):
            self.incidents.labels(status).inc()

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the incident id from the context."""

    def format(self, record: logging.LogRecord) -> str:
        """Render a record."""
        data = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "incident_id": getattr(record, "incident_id", incident_var.get()),
            # Log lines quote errors, URLs and payloads: the same redactor as every other outward path.
            "message": redact_out(record.getMessage()),
        }
        if record.exc_info:
            data["exception"] = redact_out(self.formatException(record.exc_info))
        return json.dumps(data, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    """JSON logs on stderr for the long-lived worker."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class HealthState:
    """What /healthz reports: alive and scanning recently."""

    def __init__(self, stale_after_s: float = 60.0) -> None:
        self.started = time.time()
        self.last_scan = 0.0
        self.stale_after_s = stale_after_s
        self.lock = threading.Lock()

    def beat(self) -> None:
        """The worker completed a loop."""
        with self.lock:
            self.last_scan = time.time()

    def report(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, body)."""
        with self.lock:
            age = time.time() - self.last_scan if self.last_scan else None
        ok = age is not None and age <= self.stale_after_s
        return ok, {
            "status": "ok" if ok else "stale",
            "seconds_since_scan": None if age is None else round(age, 1),
            "uptime_s": round(time.time() - self.started, 1),
        }


def serve(
    metrics: Metrics, health: HealthState, host: str = "127.0.0.1", port: int = 0
) -> ThreadingHTTPServer:
    """Serve /metrics and /healthz from a daemon thread; returns the server (its port is server_address[1])."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            """No access log."""

        def do_GET(self) -> None:  # noqa: N802 - stdlib naming
            """Metrics and health."""
            if self.path == "/metrics":
                body, ctype, code = metrics.render(), CONTENT_TYPE_LATEST, 200
            elif self.path == "/healthz":
                ok, report = health.report()
                body, ctype, code = json.dumps(report).encode(), "application/json", 200 if ok else 503
            else:
                body, ctype, code = b'{"error": "not found"}', "application/json", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="sregraph-http", daemon=True).start()
    return server
