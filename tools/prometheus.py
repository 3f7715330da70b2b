"""`Telemetry` over Prometheus's HTTP API: the analyst's metric names become PromQL over conventional metrics.

Each per-service gauge the agents ask for (`request_rate`, `error_ratio`, ...) maps onto a PromQL expression
over the demo services' counters and histograms; other names pass through. Logs and traces are absent (no
data, not an error). Timeouts, refusals and 5xx are transient and retried; bad PromQL is a `ToolError`.
The mapping table, filters and errors: docs/observability.md §3.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from tools.base import Clock, LogRecord, Series, Span, SystemClock, ToolError, TransientError
from tools.breaker import CircuitBreaker
from tools.resilience import Resilience

log = logging.getLogger(__name__)

_METRIC_NAME = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION = re.compile(r"^(?:\d+(?:ms|[smhdwy]))+$")
MB = 1024 * 1024


def matchers(labels: Mapping[str, str] | None, *extra: str) -> str:
    """`{a="x",b="y"}` for a label filter plus extra raw matchers (`code=~"5.."`); `` when empty."""
    parts = [m for m in extra if m]
    for key, value in sorted((labels or {}).items()):
        if not _LABEL_NAME.match(str(key)):
            raise ToolError(f"label name {key!r} is not a valid Prometheus label name")
        escaped = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        parts.append(f'{key}="{escaped}"')
    return "{" + ",".join(parts) + "}" if parts else ""


@dataclass(frozen=True)
class MetricMapping:
    """One agent metric name as PromQL: `build(matchers_fn, window)` returns the expression."""

    name: str
    build: Callable[[Callable[..., str], str], str]
    doc: str


def _total(sel: Callable[..., str], w: str, *extra: str) -> str:
    return f"sum by (service) (rate(http_requests_total{sel(*extra)}[{w}]))"


def _ratio(numerator: str, denominator: str) -> str:
    # `or <denominator> * 0`: no numerator series yet (no 5xx ever, no purchase yet) reads 0, not absent.
    return f"({numerator} or {denominator} * 0) / {denominator}"


MAPPINGS: dict[str, MetricMapping] = {
    m.name: m
    for m in (
        MetricMapping("request_rate", lambda sel, w: _total(sel, w), "requests per second"),
        MetricMapping(
            "error_ratio",
            lambda sel, w: _ratio(_total(sel, w, 'code=~"5.."'), _total(sel, w)),
            "share of requests answered 5xx",
        ),
        MetricMapping(
            "latency_p95_ms",
            lambda sel, w: (
                "histogram_quantile(0.95, sum by (service, le) "
                f"(rate(http_request_duration_seconds_bucket{sel()}[{w}]))) * 1000"
            ),
            "95th percentile request duration, ms",
        ),
        MetricMapping(
            "conversion_ratio",
            lambda sel, w: _ratio(
                f"sum by (service) (rate(shop_purchases_total{sel()}[{w}]))", _total(sel, w, 'handler="/buy"')
            ),
            "purchases per buy attempt",
        ),
        MetricMapping(
            "purchases_rate",
            lambda sel, w: f"sum by (service) (rate(shop_purchases_total{sel()}[{w}]))",
            "purchases per second",
        ),
        MetricMapping(
            "memory_rss_mb",
            lambda sel, w: f"sum by (service) (process_resident_memory_bytes{sel()}) / {MB}",
            "resident memory, MB",
        ),
        MetricMapping(
            "cpu_percent",
            lambda sel, w: f"sum by (service) (rate(process_cpu_seconds_total{sel()}[{w}])) * 100",
            "CPU time per second, percent of one core",
        ),
    )
}
"""The agent's metric names and their PromQL (see the module docstring's table)."""


class PrometheusTelemetry:
    """`Telemetry` read from a Prometheus server's HTTP API (metrics only)."""

    def __init__(
        self,
        base_url: str,
        timeout_s: float = 5.0,
        transport: httpx.BaseTransport | None = None,
        rate_window: str = "30s",
        step_s: float | None = None,
        min_step_s: float = 1.0,
        max_points: int = 500,
        retries: int = 1,
        clock: Clock | None = None,
        headers: Mapping[str, str] | None = None,
        resilience: Resilience | None = None,
    ) -> None:
        """Talk to Prometheus at `base_url` (`http://127.0.0.1:9090`).

        `rate_window` is the range of every `rate()` (at least 4 scrape intervals); range queries use
        `step_s`, or when None a step of (end - start) / `max_points`, at least `min_step_s`. Transient
        failures are retried `retries` times, waiting 0.2 s, 0.4 s, ... on `clock`; `resilience` replaces
        that policy (and the circuit breaker) as a whole.
        """
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if not _DURATION.match(rate_window):
            raise ValueError(
                f"rate_window must be a Prometheus duration such as 30s or 1m, got {rate_window!r}"
            )
        if step_s is not None and step_s <= 0:
            raise ValueError(f"step_s must be positive, got {step_s}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.rate_window = rate_window
        self.step_s = step_s
        self.min_step_s = min_step_s
        self.max_points = max(1, max_points)
        self.retries = max(0, retries)
        self.clock: Clock = clock or SystemClock()
        self._transport = transport
        self._headers = dict(headers or {})
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()
        # No jitter by default: one worker polls one Prometheus, so there is no herd to spread out.
        self.resilience = resilience or Resilience(
            "prometheus",
            attempts=self.retries + 1,
            backoff_s=0.2,
            max_backoff_s=2.0,
            jitter=0.0,
            max_elapsed_s=max(10.0, 3 * timeout_s),
            breaker=CircuitBreaker(3, 5.0, 2.0, 60.0, self.clock),
            clock=self.clock,
        )

    # ------------------------------------------------------------------ plumbing

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    base_url=self.base_url,
                    timeout=self.timeout_s,
                    transport=self._transport,
                    headers=self._headers,
                )
            return self._client

    def close(self) -> None:
        """Close the HTTP client."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> PrometheusTelemetry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        """GET an API path; the `data` of a success answer, else TransientError, ToolError or CircuitOpenError."""
        return self.resilience.call(lambda: self._get_once(path, params))

    def _get_once(self, path: str, params: dict[str, Any]) -> Any:
        where = f"prometheus {self.base_url}{path}"
        try:
            resp = self._http().get(path, params=params)
        except httpx.TimeoutException as exc:
            raise TransientError(f"{where}: timed out after {self.timeout_s:g}s") from exc
        except httpx.TransportError as exc:
            raise TransientError(f"{where}: {type(exc).__name__}: {exc or 'connection failed'}") from exc
        except httpx.HTTPError as exc:
            raise ToolError(f"{where}: {type(exc).__name__}: {exc}") from exc
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            error: Exception = ToolError(
                f"{where}: HTTP {resp.status_code}, not a Prometheus API answer: {resp.text[:200]!r}"
            )
            if resp.status_code >= 500:
                error = TransientError(str(error))
            raise error
        if resp.status_code >= 400 or body.get("status") != "success":
            kind, text = body.get("errorType", "error"), body.get("error", "no error message")
            message = f"{where}: {kind}: {text} (HTTP {resp.status_code})"
            if resp.status_code >= 500 or body.get("errorType") in ("timeout", "unavailable"):
                raise TransientError(message)
            raise ToolError(message)
        for warning in body.get("warnings") or []:
            log.warning("%s: %s", where, warning)
        return body.get("data")

    # ------------------------------------------------------------------ PromQL

    def promql(self, name: str, labels: Mapping[str, str] | None = None) -> tuple[str, bool]:
        """The PromQL for an agent metric name, and whether `labels` still need filtering client-side."""
        mapping = MAPPINGS.get(name)
        if mapping is not None:
            return mapping.build(lambda *extra: matchers(labels, *extra), self.rate_window), False
        if _METRIC_NAME.match(name):
            return f"{name}{matchers(labels)}", False
        return name, bool(labels)

    def query(self, promql: str, at: float | None = None) -> list[Series]:
        """An instant query (`/api/v1/query`), evaluated at `at` (default: Prometheus's now)."""
        params: dict[str, Any] = {"query": promql, "timeout": f"{self.timeout_s:g}s"}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return _series(promql, self._get("/api/v1/query", params))

    def query_promql_range(
        self, promql: str, start: float, end: float, step_s: float | None = None
    ) -> list[Series]:
        """A range query (`/api/v1/query_range`) from `start` to `end` every `step_s` (default: automatic)."""
        step = step_s or self.step_for(start, end)
        params = {
            "query": promql,
            "start": f"{start:.3f}",
            "end": f"{end:.3f}",
            "step": f"{step:.3f}",
            "timeout": f"{self.timeout_s:g}s",
        }
        return _series(promql, self._get("/api/v1/query_range", params))

    def step_for(self, start: float, end: float) -> float:
        """The configured step, or one giving at most `max_points` points, never below `min_step_s`."""
        if self.step_s is not None:
            return self.step_s
        return max(self.min_step_s, (end - start) / self.max_points)

    # ------------------------------------------------------------------ Telemetry

    def query_range(self, name: str, labels: dict[str, str] | None, start: float, end: float) -> list[Series]:
        """Series named `name` whose labels include `labels`, restricted to [start, end]."""
        if end < start:
            return []
        promql, filter_here = self.promql(name, labels)
        if end - start < self.step_for(start, end):
            found = self.query(promql, at=end)
        else:
            found = self.query_promql_range(promql, start, end)
        wanted = {str(k): str(v) for k, v in (labels or {}).items()}
        out = []
        for series in found:
            if filter_here and any(series.labels.get(k) != v for k, v in wanted.items()):
                continue
            series.name = name
            series.points = [p for p in series.points if start <= p[0] <= end]
            if series.points:
                out.append(series)
        return sorted(out, key=lambda s: sorted(s.labels.items()))

    def search_logs(
        self,
        service: str | None,
        start: float,
        end: float,
        query: str | None = None,
        level: str | None = None,
        limit: int = 500,
    ) -> list[LogRecord]:
        """Always empty: Prometheus stores no logs."""
        return []

    def spans(self, service: str | None, start: float, end: float, limit: int = 2000) -> list[Span]:
        """Always empty: Prometheus stores no traces."""
        return []

    def metric_names(self) -> list[str]:
        """The mapped agent names plus every metric name Prometheus holds."""
        names = self._get("/api/v1/label/__name__/values", {})
        if not isinstance(names, list):
            raise ToolError(f"prometheus {self.base_url}: label values answer is not a list: {names!r}"[:300])
        return sorted(set(MAPPINGS) | {str(n) for n in names})


def _value(raw: Any) -> float | None:
    """A Prometheus sample value (a string) as a finite float, or None (NaN, ±Inf, junk)."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _series(promql: str, data: Any) -> list[Series]:
    """Series out of a query answer's `data` (matrix, vector or scalar)."""
    if not isinstance(data, dict) or "resultType" not in data:
        raise ToolError(f"prometheus: unreadable query answer for {promql!r}: {str(data)[:200]}")
    kind, result = data["resultType"], data.get("result")
    result = [] if result is None else result
    try:
        if kind == "scalar":
            value = _value(result[1])
            return [Series(name=promql, points=[(float(result[0]), value)] if value is not None else [])]
        if kind not in ("matrix", "vector"):
            raise ToolError(f"prometheus: {kind} results are not series ({promql!r})")
        out = []
        for item in result or []:
            labels = {str(k): str(v) for k, v in (item.get("metric") or {}).items() if k != "__name__"}
            samples = item.get("values") or ([item["value"]] if "value" in item else [])
            points = [(float(ts), v) for ts, raw in samples if (v := _value(raw)) is not None]
            out.append(Series(name=promql, labels=labels, points=points))
        return out
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ToolError(f"prometheus: unreadable {kind} answer for {promql!r}: {exc}") from exc
