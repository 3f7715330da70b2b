"""telemetry.json: the telemetry a recorded incident read, as tables that answer queries as the local store
does.

Record mode logs what each query returned (`TelemetryLog`) and writes the points, log records and spans once,
the windows each stream was queried over (`coverage`), and, for the few queries whose answer filtering those
tables would not reproduce (records that arrived after the query ran), that query's own answer (`exceptions`).
Replay answers from the tables (`tables_from_json`).
"""

from __future__ import annotations

import json
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from typing import Any

from evals.calls import canonical, to_jsonable
from evals.case import FORMAT_VERSION
from tools.base import LogRecord, Series, Span


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
        self,
        service: str | None,
        start: float,
        end: float,
        query: str | None = None,
        level: str | None = None,
        limit: int = 500,
    ) -> list[LogRecord]:
        """Log records in [start, end] by service, text and level: the newest `limit`, oldest first."""
        rows = self.logs[bisect_left(self._log_ts, start) : bisect_right(self._log_ts, end)]
        needle = query.lower() if query else None
        out = [
            r
            for r in rows
            if (service is None or r.service == service)
            and (level is None or r.level == level.lower())
            and (
                needle is None
                or needle in r.message.lower()
                or needle in json.dumps(r.attrs, default=str).lower()
            )
        ]
        limit = max(0, int(limit))
        return out[len(out) - limit :] if limit else []

    def spans_in(self, service: str | None, start: float, end: float, limit: int = 2000) -> list[Span]:
        """Spans that started in [start, end], optionally of one service: the newest `limit`, oldest first."""
        rows = self.spans[bisect_left(self._span_ts, start) : bisect_right(self._span_ts, end)]
        out = [s for s in rows if service is None or s.service == service]
        limit = max(0, int(limit))
        return out[len(out) - limit :] if limit else []

    def answer(self, method: str, args: dict[str, Any]) -> Any:
        """What a query with these arguments returns from the tables."""
        if method == "query_range":
            return self.query_range(args["name"], args.get("labels"), args["start"], args["end"])
        if method == "search_logs":
            return self.search_logs(
                args.get("service"),
                args["start"],
                args["end"],
                args.get("query"),
                args.get("level"),
                args.get("limit", 500),
            )
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
            self.queries.append(
                (method, args, [(_series_key(s.name, s.labels), [p[0] for p in s.points]) for s in result])
            )
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
            Series(
                name=self.labels[key][0], labels=self.labels[key][1], points=sorted(self.points[key].items())
            )
            for key in sorted(self.points)
        ]
        log_ids = sorted(self.logs)
        span_ids = sorted(self.spans, key=lambda sid: (self.spans[sid].start, sid))
        tables = TelemetryTables(series, [self.logs[i] for i in log_ids], [self.spans[i] for i in span_ids])
        log_index = {rid: i for i, rid in enumerate(log_ids)}
        span_index = {sid: i for i, sid in enumerate(span_ids)}
        point_index = {
            key: {p[0]: i for i, p in enumerate(s.points)}
            for key, s in zip(sorted(self.points), series, strict=True)
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
                result: Any = [
                    [tables.series_keys[k], ranges([point_index[k][t] for t in tss])] for k, tss in ids
                ]
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
            [
                tname(s.trace_id),
                sname(s.span_id),
                sname(s.parent_id) if s.parent_id else None,
                s.service,
                s.name,
                s.start,
                s.duration_ms,
                s.status,
            ]
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
            "span_columns": [
                "trace_id",
                "span_id",
                "parent_id",
                "service",
                "name",
                "start",
                "duration_ms",
                "status",
            ],
            "log_columns": ["ts", "service", "level", "message", "attrs"],
            "coverage": [[stream, merge_intervals(ws)] for stream, ws in sorted(coverage.items())],
            "exceptions": exceptions,
            "other": other,
            "series": [
                {"name": s.name, "labels": s.labels, "points": [list(p) for p in s.points]} for s in series
            ],
            "logs": logs_out,
            "spans": spans_out,
        }


def tables_from_json(doc: dict[str, Any]) -> TelemetryTables:
    """The tables of a telemetry.json document."""
    series = [
        Series(name=s["name"], labels=s["labels"], points=[(p[0], p[1]) for p in s["points"]])
        for s in doc["series"]
    ]
    logs = [LogRecord(ts=r[0], service=r[1], level=r[2], message=r[3], attrs=r[4]) for r in doc["logs"]]
    spans = [
        Span(
            trace_id=r[0],
            span_id=r[1],
            parent_id=r[2],
            service=r[3],
            name=r[4],
            start=r[5],
            duration_ms=r[6],
            status=r[7],
        )
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
