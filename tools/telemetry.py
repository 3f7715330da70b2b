"""Metrics, logs and spans in one SQLite file, shared by the services that write and the agents that read;
deploy markers and external events sent through the API live beside them.

Each process opens its own `LocalTelemetryStore`; WAL mode lets readers run while one writer commits, and
`busy_timeout` makes concurrent writers queue instead of failing. Every write is one short `BEGIN IMMEDIATE`
transaction, so a batch costs one lock acquisition however many rows it holds.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from tools.base import (
    DeployMarker,
    ExternalEvent,
    LogRecord,
    Series,
    Span,
    Telemetry,
    ToolError,
    TransientError,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS metrics (
    name   TEXT NOT NULL,
    labels TEXT NOT NULL,
    ts     REAL NOT NULL,
    value  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_name_ts ON metrics (name, ts);
CREATE TABLE IF NOT EXISTS logs (
    ts      REAL NOT NULL,
    service TEXT NOT NULL,
    level   TEXT NOT NULL,
    message TEXT NOT NULL,
    attrs   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_service_ts ON logs (service, ts);
CREATE INDEX IF NOT EXISTS logs_ts ON logs (ts);
CREATE TABLE IF NOT EXISTS spans (
    trace_id    TEXT NOT NULL,
    span_id     TEXT NOT NULL,
    parent_id   TEXT,
    service     TEXT NOT NULL,
    name        TEXT NOT NULL,
    start       REAL NOT NULL,
    duration_ms REAL NOT NULL,
    status      TEXT NOT NULL,
    attrs       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS spans_service_start ON spans (service, start);
CREATE INDEX IF NOT EXISTS spans_start ON spans (start);
CREATE INDEX IF NOT EXISTS spans_trace ON spans (trace_id);
CREATE TABLE IF NOT EXISTS deploys (
    id          TEXT PRIMARY KEY,
    ts          REAL NOT NULL,
    service     TEXT NOT NULL,
    version     TEXT NOT NULL,
    revision    TEXT NOT NULL,
    author      TEXT NOT NULL,
    description TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deploys_ts ON deploys (ts);
CREATE TABLE IF NOT EXISTS events (
    ts      REAL NOT NULL,
    kind    TEXT NOT NULL,
    service TEXT,
    title   TEXT NOT NULL,
    attrs   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
"""

BUSY_TIMEOUT_S = 5.0


MetricTuple = tuple[str, Mapping[str, Any], float, float]


class MetricPoint(NamedTuple):
    """One metric sample as `write_metrics` takes it; a plain 4-tuple works too."""

    name: str
    labels: Mapping[str, Any]
    value: float
    ts: float


def _labels_key(labels: Mapping[str, Any] | None) -> str:
    """Canonical text of a label set, so equal sets compare equal in SQL."""
    canonical = {str(k): str(v) for k, v in (labels or {}).items()}
    return json.dumps(canonical, sort_keys=True, separators=(",", ":"))


def _while_locked(step: Callable[[], object]) -> None:
    """Run `step`, again while another process holds the lock, for at most BUSY_TIMEOUT_S.

    Several processes opening a new store at once race to switch it to WAL; SQLite answers that switch with
    "database is locked" at once instead of waiting on the busy handler, so the wait is done here.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            step()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


class LocalTelemetryStore:
    """`Telemetry` over one SQLite file; safe to write from several processes at once."""

    def __init__(self, path: Path | str) -> None:
        """Open (creating if needed) the store at `path`."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so writers wait on the busy handler
            # instead of failing when a deferred read lock has to be upgraded.
            self._conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            _while_locked(lambda: self._conn.execute("PRAGMA journal_mode = WAL"))
            self._conn.execute("PRAGMA synchronous = NORMAL")
            _while_locked(lambda: self._conn.executescript(_SCHEMA))  # idempotent DDL; commits on its own
        except sqlite3.Error as exc:
            raise ToolError(f"cannot open telemetry store {self.path}: {exc}") from exc

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> LocalTelemetryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_tx(self, body: Callable[[sqlite3.Connection], object]) -> None:
        """Run `body(conn)` inside BEGIN IMMEDIATE ... COMMIT; the caller holds the lock."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                body(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise TransientError(f"telemetry store busy: {exc}") from exc
            raise ToolError(f"telemetry write failed: {exc}") from exc
        except sqlite3.Error as exc:
            raise ToolError(f"telemetry write failed: {exc}") from exc

    def _read(self, sql: str, args: Iterable[Any]) -> list[tuple[Any, ...]]:
        """Run one read query."""
        try:
            with self._lock:
                return self._conn.execute(sql, tuple(args)).fetchall()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise TransientError(f"telemetry store busy: {exc}") from exc
            raise ToolError(f"telemetry read failed: {exc}") from exc
        except sqlite3.Error as exc:
            raise ToolError(f"telemetry read failed: {exc}") from exc

    # ------------------------------------------------------------------ write side

    def write_metric(self, name: str, labels: Mapping[str, Any], value: float, ts: float) -> None:
        """Store one metric sample."""
        self.write_metrics([(name, labels, value, ts)])

    def write_metrics(self, batch: Iterable[MetricPoint | MetricTuple]) -> None:
        """Store many samples, each `(name, labels, value, ts)`, in one transaction."""
        rows = [(str(n), _labels_key(lb), float(ts), float(v)) for n, lb, v, ts in batch]
        if not rows:
            return
        with self._lock:
            self._write_tx(lambda c: c.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?)", rows))

    def write_log(self, record: LogRecord) -> None:
        """Store one log record."""
        self.write_logs([record])

    def write_logs(self, batch: Iterable[LogRecord]) -> None:
        """Store many log records in one transaction."""
        rows = [
            (r.ts, r.service, r.level.lower(), r.message, json.dumps(r.attrs, default=str)) for r in batch
        ]
        if not rows:
            return
        with self._lock:
            self._write_tx(lambda c: c.executemany("INSERT INTO logs VALUES (?, ?, ?, ?, ?)", rows))

    def write_span(self, span: Span) -> None:
        """Store one span."""
        self.write_spans([span])

    def write_spans(self, batch: Iterable[Span]) -> None:
        """Store many spans in one transaction."""
        rows = [
            (
                s.trace_id,
                s.span_id,
                s.parent_id,
                s.service,
                s.name,
                s.start,
                s.duration_ms,
                s.status,
                json.dumps(s.attrs, default=str),
            )
            for s in batch
        ]
        if not rows:
            return
        with self._lock:
            self._write_tx(
                lambda c: c.executemany("INSERT INTO spans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            )

    def write_deploys(self, batch: Iterable[DeployMarker]) -> int:
        """Store deploy markers in one transaction; a marker already stored (same id) is kept as it was.
        Returns how many were new."""
        rows = [(d.id, d.ts, d.service, d.version, d.revision, d.author, d.description) for d in batch]
        if not rows:
            return 0
        added = 0

        def body(c: sqlite3.Connection) -> None:
            nonlocal added
            added = c.executemany("INSERT OR IGNORE INTO deploys VALUES (?, ?, ?, ?, ?, ?, ?)", rows).rowcount

        with self._lock:
            self._write_tx(body)
        return added

    def write_events(self, batch: Iterable[ExternalEvent]) -> None:
        """Store external events in one transaction."""
        rows = [(e.ts, e.kind, e.service, e.title, json.dumps(e.attrs, default=str)) for e in batch]
        if not rows:
            return
        with self._lock:
            self._write_tx(lambda c: c.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", rows))

    def prune(self, older_than_ts: float) -> int:
        """Delete everything older than `older_than_ts`; returns how many rows went."""
        deleted = 0

        def body(c: sqlite3.Connection) -> None:
            nonlocal deleted
            deleted += c.execute("DELETE FROM metrics WHERE ts < ?", (older_than_ts,)).rowcount
            deleted += c.execute("DELETE FROM logs WHERE ts < ?", (older_than_ts,)).rowcount
            deleted += c.execute("DELETE FROM spans WHERE start < ?", (older_than_ts,)).rowcount
            deleted += c.execute("DELETE FROM deploys WHERE ts < ?", (older_than_ts,)).rowcount
            deleted += c.execute("DELETE FROM events WHERE ts < ?", (older_than_ts,)).rowcount

        with self._lock:
            self._write_tx(body)
        return deleted

    # ------------------------------------------------------------------ read side

    def query_range(self, name: str, labels: dict[str, str] | None, start: float, end: float) -> list[Series]:
        """Series named `name` whose labels include `labels`, restricted to [start, end]."""
        rows = self._read(
            "SELECT labels, ts, value FROM metrics WHERE name = ? AND ts BETWEEN ? AND ? ORDER BY ts",
            (name, start, end),
        )
        wanted = {str(k): str(v) for k, v in (labels or {}).items()}
        series: dict[str, Series] = {}
        rejected: set[str] = set()
        for key, ts, value in rows:
            found = series.get(key)
            if found is None:
                if key in rejected:
                    continue
                parsed: dict[str, str] = json.loads(key)
                if any(parsed.get(k) != v for k, v in wanted.items()):
                    rejected.add(key)
                    continue
                found = series[key] = Series(name=name, labels=parsed)
            found.points.append((ts, value))
        return sorted(series.values(), key=lambda s: sorted(s.labels.items()))

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
        sql = "SELECT ts, service, level, message, attrs FROM logs WHERE ts BETWEEN ? AND ?"
        args: list[Any] = [start, end]
        if service is not None:
            sql += " AND service = ?"
            args.append(service)
        if level is not None:
            sql += " AND level = ?"
            args.append(level.lower())
        if query:
            # Case-insensitive substring over the message and the attributes' JSON text.
            sql += " AND (instr(lower(message), ?) > 0 OR instr(lower(attrs), ?) > 0)"
            args += [query.lower(), query.lower()]
        sql += " ORDER BY ts DESC LIMIT ?"
        args.append(max(0, int(limit)))
        rows = self._read(sql, args)
        return [
            LogRecord(ts=ts, service=svc, level=lvl, message=msg, attrs=json.loads(attrs))
            for ts, svc, lvl, msg, attrs in reversed(rows)
        ]

    def spans(self, service: str | None, start: float, end: float, limit: int = 2000) -> list[Span]:
        """Spans that started in [start, end], optionally of one service: the newest `limit`, oldest first."""
        sql = (
            "SELECT trace_id, span_id, parent_id, service, name, start, duration_ms, status, attrs "
            "FROM spans WHERE start BETWEEN ? AND ?"
        )
        args: list[Any] = [start, end]
        if service is not None:
            sql += " AND service = ?"
            args.append(service)
        sql += " ORDER BY start DESC LIMIT ?"
        args.append(max(0, int(limit)))
        return [self._span(row) for row in reversed(self._read(sql, args))]

    def trace(self, trace_id: str) -> list[Span]:
        """Every span of one trace, in start order."""
        rows = self._read(
            "SELECT trace_id, span_id, parent_id, service, name, start, duration_ms, status, attrs "
            "FROM spans WHERE trace_id = ? ORDER BY start",
            (trace_id,),
        )
        return [self._span(row) for row in rows]

    def metric_names(self) -> list[str]:
        """Every metric name the store holds."""
        return [r[0] for r in self._read("SELECT DISTINCT name FROM metrics ORDER BY name", ())]

    def deploys(
        self, start: float, end: float, service: str | None = None, limit: int = 500
    ) -> list[DeployMarker]:
        """Deploy markers stamped in [start, end], optionally of one service: the newest `limit`, newest first."""
        sql = "SELECT id, ts, service, version, revision, author, description FROM deploys WHERE ts BETWEEN ? AND ?"
        args: list[Any] = [start, end]
        if service is not None:
            sql += " AND service = ?"
            args.append(service)
        rows = self._read(sql + " ORDER BY ts DESC LIMIT ?", [*args, max(0, int(limit))])
        return [
            DeployMarker(id=i, ts=ts, service=svc, version=v, revision=rev, author=a, description=d)
            for i, ts, svc, v, rev, a, d in rows
        ]

    def events(
        self,
        start: float,
        end: float,
        services: Iterable[str] | None = None,
        kind: str | None = None,
        limit: int = 500,
    ) -> list[ExternalEvent]:
        """External events stamped in [start, end]: of `services` (and those concerning every service) when
        given, of one kind when given; the newest `limit`, newest first."""
        sql = "SELECT ts, kind, service, title, attrs FROM events WHERE ts BETWEEN ? AND ?"
        args: list[Any] = [start, end]
        if services is not None:
            wanted = sorted(set(services))
            sql += f" AND (service IS NULL OR service IN ({', '.join('?' * len(wanted))}))"
            args += wanted
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        rows = self._read(sql + " ORDER BY ts DESC LIMIT ?", [*args, max(0, int(limit))])
        return [
            ExternalEvent(ts=ts, kind=k, service=svc, title=t, attrs=json.loads(a))
            for ts, k, svc, t, a in rows
        ]

    @staticmethod
    def _span(row: tuple[Any, ...]) -> Span:
        trace_id, span_id, parent_id, service, name, start, duration_ms, status, attrs = row
        return Span(
            trace_id=trace_id,
            span_id=span_id,
            parent_id=parent_id,
            service=service,
            name=name,
            start=start,
            duration_ms=duration_ms,
            status=status,
            attrs=json.loads(attrs),
        )


class SplitTelemetry:
    """`Telemetry` whose metrics come from one backend and logs and spans from another.

    Prometheus keeps only metrics: with `telemetry.backend: prometheus` the agents read metrics from it and
    logs and traces from the local store the services write, so log and trace evidence is not lost.
    """

    def __init__(self, metrics: Telemetry, logs_and_spans: Telemetry) -> None:
        self.metrics = metrics
        self.logs_and_spans = logs_and_spans

    def query_range(self, name: str, labels: dict[str, str] | None, start: float, end: float) -> list[Series]:
        """Metric series, from the metrics backend."""
        return self.metrics.query_range(name, labels, start, end)

    def metric_names(self) -> list[str]:
        """Metric names, from the metrics backend."""
        return self.metrics.metric_names()

    def search_logs(
        self,
        service: str | None,
        start: float,
        end: float,
        query: str | None = None,
        level: str | None = None,
        limit: int = 500,
    ) -> list[LogRecord]:
        """Log records, from the log backend."""
        return self.logs_and_spans.search_logs(service, start, end, query=query, level=level, limit=limit)

    def spans(self, service: str | None, start: float, end: float, limit: int = 2000) -> list[Span]:
        """Spans, from the trace backend."""
        return self.logs_and_spans.spans(service, start, end, limit=limit)
