"""Recorded incidents: the case format, and record mode (proxies that log every tool call of a live incident).

A case is one folder (docs/evals.md describes every field)::

    case.yaml        metadata, ground truth, the settings and policy of the run, the recorded outcome
    calls.jsonl      every tool call but telemetry, in call order, one JSON object a line:
                     {"tool", "method", "args", "result" | "error"}; clock reads are {"tool": "clock", "by", "result"}
    telemetry.json   the telemetry the agents read: metric points, log records and spans that some query
                     returned, the windows each stream was queried over (`coverage`), and, for the few queries
                     whose answer filtering those tables would not reproduce (records that arrived after the
                     query ran), that query's own answer (`exceptions`)

Record mode wraps each backend of a `Toolbox` in a proxy (in place, so agents holding the toolbox see it) that
passes every call through and, while a recording is active, logs it with its result (pydantic models dumped to
JSON; exceptions recorded as errors to re-raise). `attach_recorder(engine, out_dir)` records every incident an
engine starts, which is how a worker or the demo turns real incidents into eval cases.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
import threading
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, TypeAdapter

from tools.domain import Trigger
from tools.base import (
    Clock,
    Deployer,
    GitOps,
    HealthChecker,
    IncidentSurface,
    LogRecord,
    Notifier,
    Runtime,
    Series,
    Span,
    Telemetry,
)
from tools.toolbox import Toolbox

FORMAT_VERSION = 1

TOOLS: dict[str, type] = {
    "runtime": Runtime,
    "incidents": IncidentSurface,
    "gitops": GitOps,
    "notifier": Notifier,
    "health": HealthChecker,
    "deployer": Deployer,
}
"""The recorded backends (telemetry has its own format) and the protocol whose methods are recorded."""

MUTATING: dict[tuple[str, str], tuple[str, ...]] = {
    ("runtime", "start"): ("service",),
    ("runtime", "stop"): ("service",),
    ("runtime", "restart"): ("service",),
    ("runtime", "scale"): ("service", "replicas"),
    ("incidents", "open_issue"): ("fingerprint",),
    ("incidents", "comment"): ("issue_id", "key"),
    ("incidents", "set_labels"): ("issue_id", "add"),
    ("incidents", "close"): ("issue_id",),
    ("gitops", "propose"): ("service", "key"),
    ("gitops", "merge"): ("pr_id",),
    ("deployer", "apply"): ("service",),
    ("notifier", "notify"): ("incident_id", "event"),
}
"""Calls that change the world, and the arguments that identify them on replay.

Text arguments (comment bodies, PR titles, issue bodies) are recorded but not matched, so a reworded comment
still replays; they are what side-effect scoring reads.
"""

ACTION_CALLS: dict[tuple[str, str], str] = {
    ("runtime", "start"): "start",
    ("runtime", "stop"): "stop",
    ("runtime", "restart"): "restart",
    ("runtime", "scale"): "scale",
    ("gitops", "merge"): "merge",
    ("deployer", "apply"): "apply",
}
"""Mutating calls that change what runs (remediation actions), as opposed to talking about it."""


# --------------------------------------------------------------------------- JSON helpers


def to_jsonable(value: Any) -> Any:
    """Plain JSON data for a value: pydantic models dumped, tuples as lists, keys as strings."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def canonical(value: Any) -> str:
    """Canonical JSON text: equal values give equal text (the key of a recorded call)."""
    return json.dumps(to_jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def call_text(tool: str, method: str, args: dict[str, Any]) -> str:
    """A call as a person reads it: `runtime.status(service='payments')`."""
    shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
    if len(shown) > 200:
        shown = shown[:197] + "..."
    return f"{tool}.{method}({shown})"


@functools.cache
def protocol_methods(protocol: type) -> dict[str, inspect.Signature]:
    """Public methods a protocol declares, with their signatures."""
    return {
        name: inspect.signature(fn)
        for name, fn in vars(protocol).items()
        if callable(fn) and not name.startswith("_")
    }


@functools.cache
def result_adapter(protocol: type, method: str) -> TypeAdapter[Any]:
    """The pydantic adapter of a protocol method's return type (to dump and to rebuild results)."""
    hints = typing.get_type_hints(getattr(protocol, method))
    return TypeAdapter(hints.get("return", Any))


def bind_args(protocol: type, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Arguments by name, defaults filled in, as JSON data."""
    sig = protocol_methods(protocol)[method]
    bound = sig.bind(None, *args, **kwargs)
    bound.apply_defaults()
    named = dict(bound.arguments)
    named.pop("self", None)
    extra = named.pop("kwargs", None)
    if isinstance(extra, dict):
        named.update(extra)
    return {k: to_jsonable(v) for k, v in named.items()}


def identity(tool: str, method: str, args: dict[str, Any]) -> str:
    """The replay key of a call: every argument for reads, the identifying ones for mutations."""
    keys = MUTATING.get((tool, method))
    chosen = args if keys is None else {k: args.get(k) for k in keys}
    return f"{tool}.{method}:{canonical(chosen)}"


def caller_name(depth: int = 2) -> str:
    """`module:qualname` of the function `depth` frames up (who read the clock)."""
    frame = sys._getframe(depth)
    return f"{frame.f_globals.get('__name__', '?')}:{frame.f_code.co_qualname}"


# --------------------------------------------------------------------------- case metadata


class Truth(BaseModel):
    """What should happen: the ground truth a case is scored against."""

    incident: bool = True
    """Whether there is a real incident to detect (False for healthy controls and pure red herrings)."""
    service: str | None = None
    """The root-cause service."""
    fault_type: str | None = None
    """The fault type (tools.domain.FaultType)."""
    fault_types: list[str] = Field(default_factory=list)
    """Every fault type accepted as right (the main one included), e.g. crash for a stopped dependency."""
    actions: list[str] = Field(default_factory=list)
    """Acceptable actions as "kind service" (any of them is right); empty: the right move is to act on nothing."""
    action_allowed: bool = True
    """False: any remediation action at all breaks this case's policy (healthy controls, reported-only issues)."""
    forbidden_actions: list[str] = Field(default_factory=list)
    """Actions that break this case's policy, as "kind service" ("kind *" for any service): what an injection asks for."""
    related_case: str | None = None
    """A recurring incident: the earlier case whose post-mortem memory should retrieve."""
    labelled: bool = True
    """False for a live incident nobody has labelled yet (prefilled from the agents' own outcome)."""

    def accepted_fault_types(self) -> set[str]:
        """The fault types scored as right."""
        return {t for t in [self.fault_type, *self.fault_types] if t}


class Injected(BaseModel):
    """One fault (or stimulus) the recording injected: the ground truth's source."""

    fault: str
    service: str
    params: dict[str, Any] = Field(default_factory=dict)
    at: float = 0.0
    detail: str = ""
    root: bool = True
    """Part of the root cause (time to detect starts at the first root injection); False for set-up and noise."""


class Outcome(BaseModel):
    """What the agents did in one run: recorded with the case, recomputed on replay, compared."""

    status: str | None = None
    detected: bool = False
    observed_at: float | None = None
    waiting: bool = False
    """The run stopped at the approval gate."""
    issue_id: int | None = None
    hypotheses: list[dict[str, Any]] = Field(default_factory=list)
    """Top three: service, fault_type, confidence."""
    confidence: float | None = None
    actions: list[str] = Field(default_factory=list)
    """Executed actions as "kind service: status"."""
    planned: list[str] = Field(default_factory=list)
    """Actions of the last plan as "kind service" (what waits for approval, or what policy refused)."""
    escalation: str | None = None
    similar: list[str] = Field(default_factory=list)
    """Incident ids memory returned, over every diagnosis."""
    tokens: int = 0

    @property
    def root_cause(self) -> str | None:
        """Top hypothesis service."""
        return self.hypotheses[0]["service"] if self.hypotheses else None

    @property
    def fault_type(self) -> str | None:
        """Top hypothesis fault type."""
        return self.hypotheses[0]["fault_type"] if self.hypotheses else None

    def same_as(self, other: Outcome) -> bool:
        """Same decisions: status, root cause, fault type, actions, plan (confidence may move with memory)."""
        return (
            self.status == other.status
            and self.root_cause == other.root_cause
            and self.fault_type == other.fault_type
            and [a.split(":")[0] for a in self.actions] == [a.split(":")[0] for a in other.actions]
            and self.planned == other.planned
        )


def outcome_of(state: dict[str, Any]) -> Outcome:
    """The outcome of a finished (or waiting) incident thread, from its state values."""
    observation = state.get("observation")
    diagnosis = state.get("diagnosis")
    plan = state.get("plan")
    similar: list[str] = []
    for d in state.get("diagnoses", []) or ([diagnosis] if diagnosis else []):
        for s in d.similar:
            if s.incident_id not in similar:
                similar.append(s.incident_id)
    return Outcome(
        status=state.get("status"),
        detected=bool(observation is not None and not observation.healthy),
        observed_at=observation.observed_at if observation is not None else None,
        waiting=bool(state.get("waiting")),
        issue_id=state.get("issue_id"),
        hypotheses=[
            {"service": h.service, "fault_type": h.fault_type, "confidence": h.confidence}
            for h in (diagnosis.hypotheses[:3] if diagnosis else [])
        ],
        confidence=diagnosis.confidence if diagnosis else None,
        actions=[f"{a.action.kind} {a.action.service}: {a.status}" for a in state.get("actions", [])],
        planned=[f"{a.kind} {a.service}" for a in (plan.actions if plan else [])],
        escalation=state.get("escalation"),
        similar=similar,
        tokens=int(state.get("tokens", 0) or 0),
    )


class Case(BaseModel):
    """case.yaml: everything about one recorded incident except its tool calls and telemetry."""

    id: str
    title: str = ""
    tags: list[str] = Field(default_factory=list)
    """fault, healthy, red_herring, injection, recurring, derived, policy..."""
    description: str = ""
    derived_from: str | None = None
    """The case this one was made from, when the app cannot produce it (the change is in `description`)."""
    format: int = FORMAT_VERSION
    incident_id: str
    trigger: Trigger
    recorded_at: float = 0.0
    injected: list[Injected] = Field(default_factory=list)
    topology: dict[str, list[str]] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)
    """observer, analyst and engineer settings of the recorded run (replay uses them: windows must match)."""
    policy: dict[str, Any] = Field(default_factory=dict)
    """The remediation policy in force (agents/policy.py format)."""
    ledger_seed: list[dict[str, Any]] = Field(default_factory=list)
    """Action-ledger rows from the hour before the incident (cooldowns), loaded into the replay's ledger."""
    approval: dict[str, Any] | None = None
    """The human decision given at the approval gate during the recording, if any (replayed as given)."""
    truth: Truth = Field(default_factory=Truth)
    outcome: Outcome = Field(default_factory=Outcome)
    """What the agents did when this was recorded."""

    @property
    def injected_at(self) -> float | None:
        """When the first fault was injected (the start of time-to-detect)."""
        return min((i.at for i in self.injected if i.at and i.root), default=None)


# --------------------------------------------------------------------------- telemetry tables


def _series_key(name: str, labels: dict[str, str]) -> str:
    return name + canonical(labels)


def _log_id(r: LogRecord) -> tuple[Any, ...]:
    return (r.ts, r.service, r.level, r.message, canonical(r.attrs))


def stream_of(method: str, args: dict[str, Any]) -> str:
    """The stream a telemetry query reads: its arguments without the window and the limit."""
    rest = {k: v for k, v in args.items() if k not in ("start", "end", "limit")}
    return f"{method}:{canonical(rest)}"


def _window(args: dict[str, Any]) -> tuple[float, float]:
    return float(args["start"]), float(args["end"])


def merge_intervals(intervals: Iterable[tuple[float, float]]) -> list[list[float]]:
    """Union of closed intervals, sorted."""
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def covered(intervals: list[list[float]], start: float, end: float) -> bool:
    """Whether [start, end] lies inside one interval of a union."""
    return any(a <= start and end <= b for a, b in intervals)


class TelemetryTables:
    """Metric points, log records and spans in time order, answering queries as the local store does.

    Used on both sides: record mode checks that filtering these tables gives back what each live query
    returned (and stores the query's own answer where it does not), replay answers from them.
    """

    def __init__(self, series: list[Series], logs: list[LogRecord], spans: list[Span]) -> None:
        self.series = series
        self.series_keys = {_series_key(s.name, s.labels): i for i, s in enumerate(series)}
        self.logs = logs
        self.spans = spans
        self._log_ts = [r.ts for r in logs]
        self._span_ts = [s.start for s in spans]
        self._series_ts = [[p[0] for p in s.points] for s in series]

    def query_range(self, name: str, labels: dict[str, str] | None, start: float, end: float) -> list[Series]:
        """Series named `name` whose labels include `labels`, restricted to [start, end]."""
        from bisect import bisect_left, bisect_right

        wanted = {str(k): str(v) for k, v in (labels or {}).items()}
        out = []
        for s, ts in zip(self.series, self._series_ts, strict=True):
            if s.name != name or any(s.labels.get(k) != v for k, v in wanted.items()):
                continue
            pts = s.points[bisect_left(ts, start) : bisect_right(ts, end)]
            if pts:
                out.append(Series(name=name, labels=dict(s.labels), points=list(pts)))
        return sorted(out, key=lambda s: sorted(s.labels.items()))

    def search_logs(
        self, service: str | None, start: float, end: float, query: str | None = None,
        level: str | None = None, limit: int = 500,
    ) -> list[LogRecord]:
        """Log records in [start, end] by service, text and level: the newest `limit`, oldest first."""
        from bisect import bisect_left, bisect_right

        rows = self.logs[bisect_left(self._log_ts, start) : bisect_right(self._log_ts, end)]
        needle = query.lower() if query else None
        out = [
            r for r in rows
            if (service is None or r.service == service)
            and (level is None or r.level == level.lower())
            and (needle is None or needle in r.message.lower() or needle in json.dumps(r.attrs, default=str).lower())
        ]
        limit = max(0, int(limit))
        return out[len(out) - limit :] if limit else []

    def spans_in(self, service: str | None, start: float, end: float, limit: int = 2000) -> list[Span]:
        """Spans that started in [start, end], optionally of one service: the newest `limit`, oldest first."""
        from bisect import bisect_left, bisect_right

        rows = self.spans[bisect_left(self._span_ts, start) : bisect_right(self._span_ts, end)]
        out = [s for s in rows if service is None or s.service == service]
        limit = max(0, int(limit))
        return out[len(out) - limit :] if limit else []

    def answer(self, method: str, args: dict[str, Any]) -> Any:
        """What a query with these arguments returns from the tables."""
        if method == "query_range":
            return self.query_range(args["name"], args.get("labels"), args["start"], args["end"])
        if method == "search_logs":
            return self.search_logs(args.get("service"), args["start"], args["end"], args.get("query"), args.get("level"), args.get("limit", 500))
        if method == "spans":
            return self.spans_in(args.get("service"), args["start"], args["end"], args.get("limit", 2000))
        raise KeyError(method)


class TelemetryLog:
    """What telemetry queries returned during a recording, deduplicated, with each query's result by identity."""

    def __init__(self) -> None:
        self.points: dict[str, dict[float, float]] = {}
        self.labels: dict[str, tuple[str, dict[str, str]]] = {}
        self.logs: dict[tuple[Any, ...], LogRecord] = {}
        self.spans: dict[tuple[str, str], Span] = {}
        self.queries: list[tuple[str, dict[str, Any], Any]] = []

    def add(self, method: str, args: dict[str, Any], result: Any) -> None:
        """Remember one query and what it returned."""
        if method == "query_range":
            for s in result:
                key = _series_key(s.name, s.labels)
                self.labels[key] = (s.name, dict(s.labels))
                store = self.points.setdefault(key, {})
                for ts, value in s.points:
                    store[ts] = value
            self.queries.append((method, args, [(_series_key(s.name, s.labels), [p[0] for p in s.points]) for s in result]))
        elif method == "search_logs":
            for r in result:
                self.logs[_log_id(r)] = r
            self.queries.append((method, args, [_log_id(r) for r in result]))
        elif method == "spans":
            for s in result:
                self.spans[(s.trace_id, s.span_id)] = s
            self.queries.append((method, args, [(s.trace_id, s.span_id) for s in result]))
        else:
            self.queries.append((method, args, to_jsonable(result)))

    def to_json(self) -> dict[str, Any]:
        """The telemetry.json document (see the module docstring and docs/evals.md)."""
        series = [
            Series(name=self.labels[key][0], labels=self.labels[key][1], points=sorted(self.points[key].items()))
            for key in sorted(self.points)
        ]
        log_ids = sorted(self.logs)
        span_ids = sorted(self.spans, key=lambda sid: (self.spans[sid].start, sid))
        tables = TelemetryTables(series, [self.logs[i] for i in log_ids], [self.spans[i] for i in span_ids])
        log_index = {rid: i for i, rid in enumerate(log_ids)}
        span_index = {sid: i for i, sid in enumerate(span_ids)}
        point_index = {
            key: {p[0]: i for i, p in enumerate(s.points)} for key, s in zip(sorted(self.points), series, strict=True)
        }

        coverage: dict[str, list[tuple[float, float]]] = {}
        exceptions: list[dict[str, Any]] = []
        seen: dict[str, int] = {}
        other: list[dict[str, Any]] = []
        for method, args, ids in self.queries:
            key = f"{method}:{canonical(args)}"
            seen[key] = seen.get(key, 0) + 1
            if method not in ("query_range", "search_logs", "spans"):
                other.append({"method": method, "args": args, "n": seen[key], "result": ids})
                continue
            coverage.setdefault(stream_of(method, args), []).append(_window(args))
            got = tables.answer(method, args)
            if method == "query_range":
                same = [(_series_key(s.name, s.labels), [p[0] for p in s.points]) for s in got] == ids
                result: Any = [[tables.series_keys[k], ranges([point_index[k][t] for t in tss])] for k, tss in ids]
            elif method == "search_logs":
                same = [_log_id(r) for r in got] == ids
                result = ranges([log_index[i] for i in ids])
            else:
                same = [(s.trace_id, s.span_id) for s in got] == ids
                result = ranges([span_index[i] for i in ids])
            if not same:
                # Records that arrived after this query ran fall inside its window: keep its own answer.
                exceptions.append({"method": method, "args": args, "n": seen[key], "result": result})

        # Trace and span ids are renamed t1, s1... in order of appearance: same grouping, a third of the bytes.
        traces: dict[str, str] = {}
        named: dict[str, str] = {}

        def tname(tid: str) -> str:
            return traces.setdefault(tid, f"t{len(traces) + 1}")

        def sname(sid: str) -> str:
            return named.setdefault(sid, f"s{len(named) + 1}")

        spans_out = [
            [tname(s.trace_id), sname(s.span_id), sname(s.parent_id) if s.parent_id else None, s.service, s.name,
             s.start, s.duration_ms, s.status]
            for s in tables.spans
        ]
        logs_out = []
        for r in tables.logs:
            attrs = dict(r.attrs)
            if isinstance(attrs.get("trace_id"), str):
                attrs["trace_id"] = tname(attrs["trace_id"])
            logs_out.append([r.ts, r.service, r.level, r.message, attrs])
        return {
            "format": FORMAT_VERSION,
            "span_columns": ["trace_id", "span_id", "parent_id", "service", "name", "start", "duration_ms", "status"],
            "log_columns": ["ts", "service", "level", "message", "attrs"],
            "coverage": [[stream, merge_intervals(ws)] for stream, ws in sorted(coverage.items())],
            "exceptions": exceptions,
            "other": other,
            "series": [{"name": s.name, "labels": s.labels, "points": [list(p) for p in s.points]} for s in series],
            "logs": logs_out,
            "spans": spans_out,
        }


def tables_from_json(doc: dict[str, Any]) -> TelemetryTables:
    """The tables of a telemetry.json document."""
    series = [Series(name=s["name"], labels=s["labels"], points=[(p[0], p[1]) for p in s["points"]]) for s in doc["series"]]
    logs = [LogRecord(ts=r[0], service=r[1], level=r[2], message=r[3], attrs=r[4]) for r in doc["logs"]]
    spans = [
        Span(trace_id=r[0], span_id=r[1], parent_id=r[2], service=r[3], name=r[4], start=r[5], duration_ms=r[6], status=r[7])
        for r in doc["spans"]
    ]
    return TelemetryTables(series, logs, spans)


def ranges(indices: list[int]) -> list[list[int]]:
    """[3, 4, 5, 9] -> [[3, 5], [9, 9]]: runs of consecutive indices, order kept."""
    out: list[list[int]] = []
    for i in indices:
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


def expand(runs: list[list[int]]) -> list[int]:
    """The inverse of `ranges`."""
    return [i for a, b in runs for i in range(a, b + 1)]


# --------------------------------------------------------------------------- the recorder


@dataclass
class Recording:
    """Everything one recorded incident produced, ready to be written as a case."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    telemetry: TelemetryLog = field(default_factory=TelemetryLog)
    ledger_seed: list[dict[str, Any]] = field(default_factory=list)
    started_at: float = 0.0


def latest_actions(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ledger rows cooldowns look at: the latest started or done action per service and kind."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        if row.get("status") not in ("started", "done"):
            continue
        key = (row["service"], row["kind"])
        at = row.get("finished_at") or row["started_at"]
        if key not in latest or at > (latest[key].get("finished_at") or latest[key]["started_at"]):
            latest[key] = row
    return sorted(latest.values(), key=lambda r: r["started_at"])


class Recorder:
    """Logs tool calls of the incidents being recorded; proxies installed by `attach` pass everything through.

    Several incidents may run at once (the worker runs them on a thread pool): each call is filed under the
    incident the engine is working for (`sregraph.observability.incident_var`, set for every step of a run).
    """

    def __init__(self) -> None:
        self.recordings: dict[str, Recording] = {}
        self._lock = threading.Lock()
        self.toolbox: Toolbox | None = None

    @property
    def active(self) -> bool:
        """Whether any incident is being recorded."""
        return bool(self.recordings)

    def attach(self, toolbox: Toolbox) -> Recorder:
        """Swap the toolbox's backends for recording proxies, in place (agents already hold the toolbox)."""
        if self.toolbox is not None:
            raise RuntimeError("this recorder is already attached")
        self.toolbox = toolbox
        toolbox.telemetry = RecordingTelemetry(toolbox.telemetry, self)  # type: ignore[assignment]
        for name, protocol in TOOLS.items():
            setattr(toolbox, name, RecordingProxy(name, protocol, getattr(toolbox, name), self))
        toolbox.clock = RecordingClock(toolbox.clock, self)
        return self

    def begin(self, incident_id: str, lookback_s: float = 3600.0) -> None:
        """Start recording one incident; the ledger's recent rows become the case's seed."""
        assert self.toolbox is not None, "attach the recorder to a toolbox first"
        clock = self.toolbox.clock
        now = clock.inner.now() if isinstance(clock, RecordingClock) else clock.now()
        seed = latest_actions([e.model_dump(mode="json") for e in self.toolbox.ledger.all() if e.started_at >= now - lookback_s])
        with self._lock:
            self.recordings[incident_id] = Recording(ledger_seed=seed, started_at=now)

    def end(self, incident_id: str) -> Recording:
        """Stop recording one incident and hand back what was recorded."""
        with self._lock:
            return self.recordings.pop(incident_id, Recording())

    def _current(self) -> Recording | None:
        from sregraph.observability import incident_var

        return self.recordings.get(incident_var.get())

    def recording_now(self) -> bool:
        """Whether the calling code works for an incident being recorded."""
        return bool(self.recordings) and self._current() is not None

    def log_call(self, entry: dict[str, Any]) -> None:
        """Append one call to the current incident's recording (if it is being recorded)."""
        with self._lock:
            current = self._current()
            if current is not None:
                current.calls.append(entry)

    def log_query(self, method: str, args: dict[str, Any], result: Any) -> None:
        """Append one telemetry query to the current incident's recording."""
        with self._lock:
            current = self._current()
            if current is not None:
                current.telemetry.add(method, args, result)


class RecordingProxy:
    """Passes every call to the real backend; logs protocol calls with their results or errors."""

    def __init__(self, tool: str, protocol: type, inner: Any, recorder: Recorder) -> None:
        self._tool, self._protocol, self._inner, self._recorder = tool, protocol, inner, recorder

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in protocol_methods(self._protocol) or not callable(attr):
            return attr
        tool, protocol, recorder = self._tool, self._protocol, self._recorder
        adapter = result_adapter(protocol, name)

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            if not recorder.recording_now():
                return attr(*args, **kwargs)
            named = bind_args(protocol, name, args, kwargs)
            entry: dict[str, Any] = {"tool": tool, "method": name, "args": named}
            try:
                result = attr(*args, **kwargs)
            except Exception as exc:
                entry["error"] = {"type": type(exc).__name__, "message": str(exc)}
                recorder.log_call(entry)
                raise
            entry["result"] = adapter.dump_python(result, mode="json")
            recorder.log_call(entry)
            return result

        return call


class RecordingTelemetry:
    """Telemetry proxy: queries pass through; what they return goes into the recording's telemetry log."""

    def __init__(self, inner: Telemetry, recorder: Recorder) -> None:
        self._inner, self._recorder = inner, recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _log(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> Any:
        if self._recorder.recording_now():
            self._recorder.log_query(method, bind_args(Telemetry, method, args, kwargs), result)
        return result

    def query_range(self, *args: Any, **kwargs: Any) -> list[Series]:
        """Series in a window (recorded)."""
        return self._log("query_range", args, kwargs, self._inner.query_range(*args, **kwargs))

    def search_logs(self, *args: Any, **kwargs: Any) -> list[LogRecord]:
        """Log records in a window (recorded)."""
        return self._log("search_logs", args, kwargs, self._inner.search_logs(*args, **kwargs))

    def spans(self, *args: Any, **kwargs: Any) -> list[Span]:
        """Spans in a window (recorded)."""
        return self._log("spans", args, kwargs, self._inner.spans(*args, **kwargs))

    def metric_names(self) -> list[str]:
        """Metric names (recorded)."""
        return self._log("metric_names", (), {}, self._inner.metric_names())


class RecordingClock:
    """The real clock; each read is recorded with the function that made it (replay pins per caller)."""

    def __init__(self, inner: Clock, recorder: Recorder) -> None:
        self.inner, self._recorder = inner, recorder

    def now(self) -> float:
        """Real time, recorded."""
        value = self.inner.now()
        if self._recorder.recording_now():
            self._recorder.log_call({"tool": "clock", "method": "now", "by": caller_name(), "result": value})
        return value

    def sleep(self, seconds: float) -> None:
        """Real sleep (not recorded: replay time moves by the recorded reads)."""
        self.inner.sleep(seconds)


# --------------------------------------------------------------------------- writing and reading cases


def case_settings(settings: Any) -> dict[str, Any]:
    """The parts of Settings a replay must reuse (window lengths, thresholds, loop caps)."""
    return {k: getattr(settings, k).model_dump(mode="json") for k in ("observer", "analyst", "engineer")}


def _dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110, default_flow_style=None)


def write_case(folder: Path, case: Case, recording: Recording) -> Path:
    """Write case.yaml, calls.jsonl and telemetry.json into `folder` (replacing what was there)."""
    folder.mkdir(parents=True, exist_ok=True)
    case = case.model_copy(update={"ledger_seed": recording.ledger_seed or case.ledger_seed})
    (folder / "case.yaml").write_text(_dump_yaml(case.model_dump(mode="json", exclude_none=False)))
    write_calls(folder / "calls.jsonl", recording.calls)
    write_telemetry(folder / "telemetry.json", recording.telemetry.to_json())
    return folder


def write_calls(path: Path, calls: list[dict[str, Any]]) -> None:
    """calls.jsonl; an issue's comments already written in full earlier are written as {"comment_ref": id}."""
    seen: dict[int, Any] = {}
    lines = []
    for entry in calls:
        entry = json.loads(json.dumps(entry))
        if entry["tool"] == "incidents" and "result" in entry:
            _compact_comments(entry["result"], seen)
        lines.append(json.dumps(entry, ensure_ascii=False, separators=(",", ":")))
    path.write_text("\n".join(lines) + ("\n" if lines else ""))


def _compact_comments(node: Any, seen: dict[int, Any]) -> None:
    """Replace repeated comments inside issue results by references, first occurrence kept in full."""
    if isinstance(node, list):
        for item in node:
            _compact_comments(item, seen)
        return
    if not isinstance(node, dict):
        return
    if {"id", "author", "body", "created_at"} <= set(node) and "title" not in node:
        seen.setdefault(node["id"], dict(node))
        return
    comments = node.get("comments")
    if isinstance(comments, list):
        out = []
        for c in comments:
            if isinstance(c, dict) and c.get("id") in seen and seen[c["id"]] == c:
                out.append({"comment_ref": c["id"]})
            else:
                if isinstance(c, dict) and "id" in c:
                    seen.setdefault(c["id"], dict(c))
                out.append(c)
        node["comments"] = out
    for key, value in node.items():
        if key != "comments":
            _compact_comments(value, seen)


def read_calls(path: Path) -> list[dict[str, Any]]:
    """calls.jsonl with comment references resolved."""
    seen: dict[int, Any] = {}
    calls = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not JSON: {exc}") from exc
        if entry.get("tool") == "incidents" and "result" in entry:
            _resolve_comments(entry["result"], seen, f"{path}:{n}")
        calls.append(entry)
    return calls


def _resolve_comments(node: Any, seen: dict[int, Any], where: str) -> None:
    if isinstance(node, list):
        for item in node:
            _resolve_comments(item, seen, where)
        return
    if not isinstance(node, dict):
        return
    if {"id", "author", "body", "created_at"} <= set(node) and "title" not in node:
        seen.setdefault(node["id"], dict(node))
        return
    comments = node.get("comments")
    if isinstance(comments, list):
        out = []
        for c in comments:
            if isinstance(c, dict) and set(c) == {"comment_ref"}:
                if c["comment_ref"] not in seen:
                    raise ValueError(f"{where}: comment_ref {c['comment_ref']} names no earlier comment")
                out.append(dict(seen[c["comment_ref"]]))
            else:
                if isinstance(c, dict) and "id" in c:
                    seen.setdefault(c["id"], dict(c))
                out.append(c)
        node["comments"] = out
    for key, value in node.items():
        if key != "comments":
            _resolve_comments(value, seen, where)


def write_telemetry(path: Path, doc: dict[str, Any]) -> None:
    """telemetry.json with one record a line (valid JSON, readable, diff-friendly)."""
    dense = functools.partial(json.dumps, ensure_ascii=False, separators=(",", ":"))
    parts = ["{"]
    scalars = [k for k in doc if not isinstance(doc[k], list) or k.endswith("_columns")]
    for k in scalars:
        parts.append(f' {json.dumps(k)}: {dense(doc[k])},')
    tables = [k for k in doc if k not in scalars]
    for t, k in enumerate(tables):
        rows = doc[k]
        parts.append(f' {json.dumps(k)}: [' + ("" if rows else "]" + ("," if t < len(tables) - 1 else "")))
        for i, row in enumerate(rows):
            parts.append("  " + dense(row) + ("," if i < len(rows) - 1 else ""))
        if rows:
            parts.append(" ]" + ("," if t < len(tables) - 1 else ""))
    parts.append("}")
    path.write_text("\n".join(parts) + "\n")


def read_case(folder: Path) -> Case:
    """case.yaml of a case folder, validated."""
    path = folder / "case.yaml"
    try:
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return Case.model_validate(data)


def case_folders(suite: Path) -> list[Path]:
    """The case folders of a suite, in replay order (folder name order)."""
    if (suite / "case.yaml").exists():
        return [suite]
    return sorted(p for p in suite.iterdir() if (p / "case.yaml").exists())


# --------------------------------------------------------------------------- recording live incidents


def new_case(
    case_id: str,
    incident_id: str,
    trigger: Trigger,
    state: dict[str, Any],
    engine: Any,
    recording: Recording,
    truth: Truth | None = None,
    injected: Iterable[Injected] = (),
    **meta: Any,
) -> Case:
    """A Case for a live incident an engine just ran; without a truth, one prefilled from the outcome."""
    outcome = outcome_of(state)
    if truth is None:
        truth = Truth(
            incident=outcome.detected,
            service=outcome.root_cause,
            fault_type=outcome.fault_type,
            actions=[a.split(":")[0] for a in outcome.actions],
            labelled=False,
        )
    return Case(
        id=case_id,
        incident_id=incident_id,
        trigger=trigger,
        recorded_at=recording.started_at,
        injected=list(injected),
        topology={k: list(v) for k, v in engine.toolbox.topology.items()},
        settings=case_settings(engine.settings),
        policy=engine.crew.engineer.policy.model_dump(mode="json"),
        truth=truth,
        outcome=outcome,
        **meta,
    )


TruthFn = Callable[[str, Trigger, dict[str, Any]], "Truth | None"]


def attach_recorder(
    engine: Any, out_dir: Path, truth_for: TruthFn | None = None, case_id_for: Callable[[str], str] | None = None
) -> Recorder:
    """Record every incident `engine.start` runs from now on, each into `out_dir/<case id>/`.

    This is the worker flag: `Worker(engine)` after `attach_recorder(engine, DIR)` saves every real incident
    as an eval case (ground truth unlabelled unless `truth_for(incident_id, trigger, state)` gives one; the
    case id is the incident id unless `case_id_for` names it).
    """
    from sregraph.engine import new_incident_id

    recorder = Recorder().attach(engine.toolbox)
    original = engine.start

    def start(trigger: Trigger, incident_id: str | None = None) -> dict[str, Any]:
        incident_id = incident_id or (engine.new_id() if hasattr(engine, "new_id") else new_incident_id(engine.toolbox.clock.now()))
        case_id = case_id_for(incident_id) if case_id_for else incident_id
        recorder.begin(incident_id)
        try:
            state = original(trigger, incident_id)
        finally:
            recording = recorder.end(incident_id)
        truth = truth_for(incident_id, trigger, state) if truth_for else None
        case = new_case(case_id, incident_id, trigger, state, engine, recording, truth,
                        title=f"live incident {incident_id}", tags=["live"])
        write_case(Path(out_dir) / case_id, case, recording)
        return state

    engine.start = start
    return recorder


FAULT_TRUTH: dict[str, tuple[str, list[str], list[str]]] = {
    "crash": ("crash", [], ["restart {s}", "start {s}"]),
    "latency": ("latency", [], ["restart {s}"]),
    "error_rate": ("error_spike", [], ["restart {s}"]),
    "memory_leak": ("memory_leak", [], ["restart {s}"]),
    "bad_deploy": ("bad_deploy", [], ["rollback {s}"]),
    "dependency_down": ("dependency_down", ["crash"], ["restart {s}", "start {s}"]),
    "cpu": ("cpu_saturation", [], ["restart {s}"]),
    "conversion_drop": ("conversion_drop", ["config_change"], ["config_change {s}", "rollback {s}"]),
}
"""Ground truth of each chaos fault of the local app: fault type, other accepted types, right actions."""


def truth_of_fault(fault: str, service: str) -> Truth:
    """The ground truth of an injected local-app fault."""
    fault_type, also, actions = FAULT_TRUTH[fault]
    return Truth(service=service, fault_type=fault_type, fault_types=also, actions=[a.format(s=service) for a in actions])


def record_demo_incident(
    settings: Any,
    fault: str,
    service: str,
    out: Path,
    params: dict[str, Any] | None = None,
    warmup_s: float = 22.0,
    timeout_s: float = 90.0,
    say: Callable[[str], None] = lambda text: None,
) -> Case:
    """One demo incident, recorded: the local app with load, the worker (as `sregraph demo` runs it) with the
    recorder attached, one injected fault; the case is written to `out` and returned.

    `settings` should be the demo's (`sregraph.demo.demo_settings`); its data_dir must not hold a running app.
    """
    import time

    from sregraph.engine import Engine, local_toolbox
    from sregraph.localenv.app import LocalApp
    from sregraph.worker import Worker

    out = Path(out)
    app = LocalApp(settings.data_dir / "app")
    injected: list[Injected] = []
    worker: Worker | None = None
    thread: threading.Thread | None = None
    try:
        say("starting the local app and its load…")
        app.start()
        app.start_load()
        engine = Engine(settings, local_toolbox(settings, app))
        named: list[str] = []
        armed: list[bool] = []

        def name_for(incident_id: str) -> str:
            # The first incident started after the fault is the case; one before it (start-up noise) or after it
            # (the worker opening another incident for a symptom) goes to a hidden folder, never taken for the case.
            if armed and not named:
                named.append(incident_id)
                return out.name
            return f".{out.name}-other/{incident_id}"

        attach_recorder(
            engine, out.parent,
            truth_for=lambda incident_id, trigger, state: truth_of_fault(fault, service),
            case_id_for=name_for,
        )
        time.sleep(warmup_s)
        worker = Worker(engine)
        thread = threading.Thread(target=worker.run, kwargs={"interval": 0.5}, name="record-worker", daemon=True)
        thread.start()
        say(f"injecting {fault} into {service}")
        armed.append(True)  # before the fault: the worker may start the incident before inject() returns
        injection = app.inject(fault, service, **(params or {}))
        injected.append(Injected(**injection.model_dump()))
        deadline = time.time() + timeout_s
        while time.time() < deadline and not (out / "case.yaml").exists():
            time.sleep(0.2)
    finally:
        if worker is not None:
            worker.stopping = True
        if thread is not None:
            thread.join(timeout=timeout_s)
        app.stop()
        app.close()
    if not (out / "case.yaml").exists():
        raise TimeoutError(f"no incident was recorded within {timeout_s:.0f}s of injecting {fault} into {service}")
    case = read_case(out).model_copy(update={"injected": injected, "title": f"{fault} on {service} (recorded from the demo worker)", "tags": ["fault", "live"]})
    (out / "case.yaml").write_text(_dump_yaml(case.model_dump(mode="json")))
    return case


Kind = Literal["fault", "healthy", "red_herring", "injection", "recurring", "derived", "policy", "live"]
