"""The read-only tools a model may call while it investigates an incident.

Each tool is a small typed function; its docstring is what the model reads (Google style, so the argument
descriptions land in the tool schema). Every tool returns the JSON of a `ToolResult` envelope and never raises
to the model: bad arguments and backend failures come back as `status: error` with the reason, an empty
answer as `status: no_data`. Results are summaries (see agents/tokens.py), not raw dumps.

Nothing here may change the system. Mutating calls (restart, scale, propose, merge, comment) are reached only
through the engineer's policy gate; `READONLY_TOOL_NAMES` lists everything this module can hand out.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any, ParamSpec

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import ValidationError

from agents.logtemplates import summarize_templates
from agents.tokens import summarize_series
from tools.base import (
    Clock,
    GitOps,
    NotFound,
    Runtime,
    Span,
    SregraphError,
    Telemetry,
    ToolResult,
    TransientError,
)
from tools.changes import ChangeFeed
from tools.domain import SimilarIncident

log = logging.getLogger(__name__)

READONLY_TOOL_NAMES = (
    "query_metric",
    "search_logs",
    "trace_errors",
    "service_status",
    "recent_changes",
    "similar_incidents",
)

MAX_MINUTES = 24 * 60.0
DEFAULT_CHANGE_MINUTES = 60.0
MAX_SERIES = 5
MAX_LOG_TEMPLATES = 8
MAX_CHANGES = 10

P = ParamSpec("P")


def dump_result(result: ToolResult) -> str:
    """The compact JSON a model reads for one tool result."""
    return result.model_dump_json(exclude_none=True)


def _enveloped(fn: Callable[P, ToolResult]) -> Callable[P, str]:
    """Turn a tool body into one that always answers with an envelope, whatever goes wrong."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> str:
        try:
            result = fn(*args, **kwargs)
        except TransientError as exc:
            result = ToolResult.fail(f"temporary failure, try again: {exc}")
        except NotFound as exc:
            result = ToolResult.fail(f"not found: {exc}")
        except (SregraphError, ValueError) as exc:
            result = ToolResult.fail(str(exc))
        except Exception as exc:  # a backend bug must not end the investigation: the model tries another tool
            log.warning("read-only tool %s failed", fn.__name__, exc_info=True)
            result = ToolResult.fail(f"{type(exc).__name__}: {exc}")
        return dump_result(result)

    return run


def _bad_arguments(exc: ValidationError | Any) -> str:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return dump_result(ToolResult.fail(f"bad arguments: {problems}"))


def _window_s(minutes: float | None, default_s: float) -> float:
    if minutes is None:
        return default_s
    if not math.isfinite(minutes) or minutes <= 0 or minutes > MAX_MINUTES:
        raise ValueError(f"minutes must be in (0, {MAX_MINUTES:g}], got {minutes}")
    return minutes * 60.0


def _depth(span: Span, by_id: dict[str, Span]) -> int:
    depth, seen = 0, {span.span_id}
    while span.parent_id and span.parent_id in by_id and span.parent_id not in seen:
        span = by_id[span.parent_id]
        seen.add(span.span_id)
        depth += 1
    return depth


def _path(span: Span, by_id: dict[str, Span]) -> list[str]:
    services = [span.service]
    seen = {span.span_id}
    while span.parent_id and span.parent_id in by_id and span.parent_id not in seen:
        span = by_id[span.parent_id]
        seen.add(span.span_id)
        if span.service != services[-1]:
            services.append(span.service)
    return services[::-1]


def build_readonly_tools(
    telemetry: Telemetry,
    runtime: Runtime,
    gitops: GitOps | ChangeFeed,
    memory_search: Callable[[str], list[SimilarIncident]] | None,
    clock: Clock,
    window_s: float,
) -> list[BaseTool]:
    """The investigation tools over these backends; `similar_incidents` only when memory_search is given."""
    if window_s <= 0:
        raise ValueError(f"window_s must be positive, got {window_s}")

    # Docstrings below are the model's manual: keep them short, literal and free of internal detail.

    @_enveloped
    def query_metric(name: str, service: str, minutes: float | None = None) -> ToolResult:
        """Summarise one metric of one service over a recent window (n, min, median, max, last, trend).

        Args:
            name: Metric name, e.g. error_ratio, latency_p95_ms, memory_rss_mb, cpu_percent, request_rate.
            service: Service name.
            minutes: How far back to look; defaults to the incident window.
        """
        span_s = _window_s(minutes, window_s)
        now = clock.now()
        series = telemetry.query_range(name, {"service": service}, now - span_s, now)
        series = [s for s in series if s.points]
        context = {"metric": name, "service": service, "window_s": round(span_s)}
        if not series:
            known = telemetry.metric_names()
            if name not in known:
                return ToolResult.fail(f"unknown metric {name!r}; known metrics: {', '.join(sorted(known))}")
            return ToolResult(status="no_data", data=context)
        rows = []
        for s in series[:MAX_SERIES]:
            extra = {k: v for k, v in s.labels.items() if k != "service"}
            rows.append(
                {"labels": extra, "summary": summarize_series(s.points)}
                if extra
                else summarize_series(s.points)
            )
        return ToolResult.ok({**context, "series": rows})

    @_enveloped
    def search_logs(
        service: str | None = None, query: str | None = None, minutes: float | None = None
    ) -> ToolResult:
        """Log lines of a service grouped into templates, errors first, with counts and one example each.

        Args:
            service: Service name; omit to search every service.
            query: Text to look for in the lines, case-insensitive; omit for all lines.
            minutes: How far back to look; defaults to the incident window.
        """
        span_s = _window_s(minutes, window_s)
        now = clock.now()
        records = telemetry.search_logs(service or None, now - span_s, now, query=query or None, limit=500)
        context: dict[str, Any] = {"service": service or "all", "window_s": round(span_s)}
        if query:
            context["query"] = query
        if not records:
            return ToolResult(status="no_data", data=context)
        return ToolResult.ok({**context, "summary": summarize_templates(records, MAX_LOG_TEMPLATES)})

    @_enveloped
    def trace_errors(service: str | None = None, minutes: float | None = None) -> ToolResult:
        """Which services' spans fail in recent traces, and in which service each failing trace fails deepest.

        The deepest failing service of a trace is usually nearer the root cause than its callers.

        Args:
            service: Only traces that pass through this service; omit for all traces.
            minutes: How far back to look; defaults to the incident window.
        """
        span_s = _window_s(minutes, window_s)
        now = clock.now()
        traces: dict[str, list[Span]] = defaultdict(list)
        for span in telemetry.spans(None, now - span_s, now):
            traces[span.trace_id].append(span)
        if service:
            traces = {tid: spans for tid, spans in traces.items() if any(s.service == service for s in spans)}
        context: dict[str, Any] = {"service": service or "all", "window_s": round(span_s)}
        if not traces:
            return ToolResult(status="no_data", data=context)
        spans_by_service: Counter[str] = Counter()
        errors_by_service: Counter[str] = Counter()
        deepest: Counter[str] = Counter()
        example: dict[str, list[str]] = {}
        for spans in traces.values():
            by_id = {s.span_id: s for s in spans}
            spans_by_service.update(s.service for s in spans)
            failing = [s for s in spans if s.status == "error"]
            errors_by_service.update(s.service for s in failing)
            if failing:
                bottom = max(failing, key=lambda s: (_depth(s, by_id), s.start))
                deepest[bottom.service] += 1
                example.setdefault(bottom.service, _path(bottom, by_id))
        data: dict[str, Any] = {
            **context,
            "traces": len(traces),
            "failing_traces": sum(deepest.values()),
            "errors_by_service": {
                s: f"{errors_by_service[s]}/{spans_by_service[s]} spans" for s in sorted(errors_by_service)
            },
            "deepest_failure": dict(deepest.most_common()),
        }
        if deepest:
            top = deepest.most_common(1)[0][0]
            data["example_path"] = " -> ".join(example[top])
        return ToolResult.ok(data)

    @_enveloped
    def service_status(service: str) -> ToolResult:
        """What the runtime reports for a service: running, restarts, exit code, OOM kill, memory, version.

        Args:
            service: Service name.
        """
        try:
            status = runtime.status(service)
        except NotFound:
            return ToolResult.fail(
                f"unknown service {service!r}; known services: {', '.join(sorted(runtime.services()))}"
            )
        data = status.model_dump(exclude_none=True)
        if status.started_at is not None:
            data["uptime_s"] = round(clock.now() - status.started_at, 1)
            del data["started_at"]
        return ToolResult.ok(data)

    @_enveloped
    def recent_changes(minutes: float | None = None, service: str | None = None) -> ToolResult:
        """Deploys and config changes merged recently, newest first.

        Args:
            minutes: How far back to look; defaults to 60.
            service: Only changes touching this service; omit for all.
        """
        span_s = _window_s(DEFAULT_CHANGE_MINUTES if minutes is None else minutes, window_s)
        now = clock.now()
        changes = gitops.history(since=now - span_s, service=service or None)
        rows = [
            {
                "sha": c.sha[:10],
                "age_s": round(now - c.at),
                "kind": c.kind,
                "services": c.services,
                "author": c.author,
                "message": (c.message.strip().splitlines() or [""])[0][:160],
            }
            for c in changes[:MAX_CHANGES]
        ]
        if not rows:
            return ToolResult(status="no_data", data={"service": service or "all", "window_s": round(span_s)})
        return ToolResult.ok(rows)

    tools: list[Callable[..., str]] = [
        query_metric,
        search_logs,
        trace_errors,
        service_status,
        recent_changes,
    ]

    if memory_search is not None:
        search = memory_search

        @_enveloped
        def similar_incidents(text: str) -> ToolResult:
            """Past incidents whose post-mortems resemble a description, with what was done and how it ended.

            Args:
                text: A short description of the symptoms, e.g. "payments error ratio up, OOM kills".
            """
            if not text.strip():
                return ToolResult.fail("text must not be empty")
            found = search(text)
            return ToolResult.ok([s.model_dump(exclude_defaults=True) for s in found])

        tools.append(similar_incidents)

    return [
        StructuredTool.from_function(fn, parse_docstring=True, handle_validation_error=_bad_arguments)
        for fn in tools
    ]
