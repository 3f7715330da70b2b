"""Shared root-cause datasets written as sregraph cases, one folder per case (layout: evals/rca_case.py).

`sregraph dataset convert nezha|petshop SRC DEST` runs :func:`convert_nezha` or :func:`convert_petshop`; each
case is written to a hidden temporary folder and renamed into place, after the source was read and checked.
Only label.json holds label data. What each converter decides: docs/rca.md §What the converters decide.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import math
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evals.nezha import find_days, load_faults, parse_log_line, parse_utc, service_of
from tools.base import ConfigError

csv.field_size_limit(64 * 1024 * 1024)

BEFORE_S = 600.0
"""Data kept before anomaly_start."""
FAULT_S = 180.0
"""Nezha's fault length; the moment of analysis is anomaly_start + FAULT_S."""
NORMAL_GAP_S = 600.0
"""A normal row lies at least this far from every fault's [inject, inject + FAULT_S]."""
NORMAL_MIN_S = 600.0
NORMAL_MAX_S = 3600.0

METRIC_HEADER = ("timestamp", "service", "metric", "value", "instance")
SPAN_HEADER = (
    "trace_id",
    "span_id",
    "parent_id",
    "service",
    "operation",
    "start_us",
    "duration_us",
    "status",
)
LOG_HEADER = ("timestamp", "service", "level", "message")
EDGE_HEADER = ("timestamp", "caller", "callee", "metric", "value", "side")

NEZHA_FAULT_TYPES = {
    "cpu_contention": "cpu",
    "cpu_consumed": "cpu",
    "network_delay": "latency",
    "return": "error",
    "exception": "error",
}
"""Nezha's inject_type onto the case format's fault types; anything else is ``other``."""

_NEZHA_META: tuple[tuple[str, str, str], ...] = (
    # (substring of the column name, kind, direction), first match wins.
    ("Node", "saturation", "up"),
    ("Latency", "latency", "up"),
    ("SuccessRate", "errors", "down"),
    ("Cpu", "cpu", "up"),
    ("Memory", "memory", "up"),
    ("Workload", "traffic", "both"),
    ("Network", "traffic", "both"),
    ("Syscall", "other", "both"),
)
_PETSHOP_META = {
    "latency": ("latency", "up"),
    "requests": ("traffic", "both"),
    "availability": ("errors", "down"),
}

_OB_SERVICES = {
    "frontend",
    "checkoutservice",
    "cartservice",
    "productcatalogservice",
    "recommendationservice",
}
_IP = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_NOT_METRICS = {"Time", "TimeStamp", "PodName", "ServiceName", "time", "timestamp"}
_ENTRY_MATCH = (
    ("LatencyP90(s)", "PodServerLatencyP90(s)"),
    ("LatencyP95(s)", "PodServerLatencyP95(s)"),
    ("LatencyP99(s)", "PodServerLatencyP99(s)"),
)

Row = Sequence[Any]


# ----------------------------------------------------------------------------- writing cases


@dataclass
class CaseOut:
    """One case ready to write: case.json, label.json and the CSV files (header, rows)."""

    id: str
    case: dict[str, Any]
    label: dict[str, Any]
    tables: dict[str, tuple[Sequence[str], Iterable[Row]] | str] = field(default_factory=dict)
    """File name -> (header, rows), or the file's text when many cases share it (see :func:`render_csv`)."""


@dataclass
class Converted:
    """What one conversion wrote."""

    name: str
    cases: int = 0
    bytes: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for the console."""
        size = f"{self.bytes} bytes ({self.bytes / 1e6:.1f} MB)"
        return f"{self.name}: {self.cases} cases, {self.seconds:.2f} s, {size}"


def write_case(dest: Path, case: CaseOut) -> int:
    """Write `case` under `dest` through a temporary folder and a rename; return the bytes written."""
    final = dest / case.id
    tmp = dest / f".{case.id}.tmp{os.getpid()}"
    old = dest / f".{case.id}.old{os.getpid()}"
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    try:
        tmp.mkdir(parents=True)
        (tmp / "case.json").write_text(json.dumps(case.case, indent=2) + "\n", encoding="utf-8")
        (tmp / "label.json").write_text(json.dumps(case.label, indent=2) + "\n", encoding="utf-8")
        for name, table in case.tables.items():
            with (tmp / name).open("w", newline="", encoding="utf-8") as fh:
                if isinstance(table, str):
                    fh.write(table)
                    continue
                writer = csv.writer(fh, lineterminator="\n")
                writer.writerow(table[0])
                writer.writerows(table[1])
        size = sum(p.stat().st_size for p in tmp.iterdir())
        if final.exists():
            final.rename(old)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():
            old.rename(final)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return size


def render_csv(header: Sequence[str], rows: Iterable[Row]) -> str:
    """A CSV file's text, rendered once for a file that every case of a day or traffic level shares."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _prepare_dest(dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"DEST {dest} exists and is not a folder")
    dest.mkdir(parents=True, exist_ok=True)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _seconds(value: float) -> int | float:
    """A timestamp as written: whole seconds without a fraction."""
    return int(value) if float(value).is_integer() else value


def _read_rows(path: Path) -> list[list[str]]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.reader(fh))
    except OSError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


# ----------------------------------------------------------------------------- Nezha


@dataclass
class _PodRows:
    """One metric file: who it is about, its metric columns and its rows by time."""

    service: str
    instance: str
    columns: list[tuple[int, str]]
    rows: list[tuple[float, list[str]]]
    ragged: int = 0
    """Rows whose cell count differs from the header's, left out."""


@dataclass
class NezhaDayData:
    """One Nezha day, read once for all its cases."""

    name: str
    system: str
    faults: list[Any]
    metrics: list[tuple[float, int, str, str, list[tuple[str, str]]]]
    """(ts, order, service, instance, [(metric, value)]) sorted by time."""
    metric_times: list[float]
    topology: set[tuple[str, str]]
    spans: list[tuple[int, str, str, str, str, str, int, int]]
    """(start_ns, trace, span, parent, service, operation, start_us, duration_us) sorted by start."""
    span_times: list[int]
    logs: list[tuple[int, str, str, str]]
    """(ts_ns, service, level, message) sorted by time."""
    log_times: list[int]
    normal: list[tuple[float, int, str, str, list[tuple[str, str]]]]
    entry: str | None
    notes: list[str] = field(default_factory=list)
    edge_metrics: list[tuple[float, str, str, str, str, str]] = field(default_factory=list)
    """(ts, caller, callee, metric, value, side) sorted by time: per-edge latency seen by each side."""
    edge_times: list[float] = field(default_factory=list)
    edge_normal: list[tuple[float, str, str, str, str, str]] = field(default_factory=list)
    normal_spans: list[tuple[int, str, str, str, str, str, int, int]] = field(default_factory=list)
    """The fault-free reference's spans (``construct_data/<day>/trace``), as `spans`."""
    normal_logs: list[tuple[int, str, str, str]] = field(default_factory=list)
    """The fault-free reference's log lines (``construct_data/<day>/log``), as `logs`."""


def nezha_metric_meta(metric: str) -> tuple[str, str] | None:
    """(kind, direction) of a Nezha metric column, None when the column is not a known one."""
    for needle, kind, direction in _NEZHA_META:
        if needle in metric:
            return kind, direction
    return None


def _fault_list(day_dir: Path) -> Path:
    found = sorted(day_dir.glob("*fault_list.json"))
    if not found:
        raise ConfigError(f"{day_dir}: no <day>-fault_list.json")
    return found[0]


def _read_metric_file(path: Path, service: str, instance: str) -> _PodRows:
    rows = _read_rows(path)
    if not rows:
        raise ConfigError(f"{path}: empty file")
    header = rows[0]
    if "Time" not in header:
        raise ConfigError(f"{path}: no Time column (header {header[:4]}...)")
    t_col = header.index("Time")
    columns = [(i, c) for i, c in enumerate(header) if c not in _NOT_METRICS]
    good = [row for row in rows[1:] if len(row) == len(header)]
    out = [(parse_utc(row[t_col]), row) for row in good]
    return _PodRows(service, instance, columns, out, ragged=len(rows) - 1 - len(good))


_EDGE_FILES = (("source_50.csv", "client"), ("destination_50.csv", "server"))
"""Per-edge latency files and the side of the call that measured them."""


def _read_edge_metrics(
    metric_dir: Path, topology: set[tuple[str, str]]
) -> list[tuple[float, str, str, str, str, str]]:
    """Nezha's per-edge P50 latencies (``<caller>_<callee>`` columns), client side and server side, by time.

    A column is read only when it names an edge of the call graph, so hyphens and underscores in service
    names cannot split it wrongly. Empty cells (minutes with no call) are no point.
    """
    by_column = {f"{a}_{b}": (a, b) for a, b in topology}
    out: list[tuple[float, str, str, str, str, str]] = []
    for name, side in _EDGE_FILES:
        path = metric_dir / name
        if not path.exists():
            continue
        rows = _read_rows(path)
        if not rows or "time" not in rows[0]:
            raise ConfigError(f"{path}: no time column")
        t_col = rows[0].index("time")
        cols = [(i, by_column[c]) for i, c in enumerate(rows[0]) if c in by_column]
        for row in rows[1:]:
            if len(row) != len(rows[0]):
                continue
            ts = parse_utc(row[t_col])
            for i, (a, b) in cols:
                if _number(row[i].strip()) is not None:
                    out.append((ts, a, b, "latency_p50", row[i].strip(), side))
    out.sort(key=lambda r: (r[0], r[5]))
    return out


def _entry_service(
    front: _PodRows, pods: list[_PodRows], named: str, roots: set[str], services: set[str]
) -> tuple[str | None, str]:
    """The real service behind the entry view, and how it was found."""
    f_col = {c: i for i, c in front.columns}
    front_by_minute = {ts // 60: row for ts, row in front.rows}
    best: tuple[int, int, str] = (0, 0, "")
    for pod in pods:
        p_col = {c: i for i, c in pod.columns}
        pairs = [(f_col[a], p_col[b]) for a, b in _ENTRY_MATCH if a in f_col and b in p_col]
        if not pairs:
            continue
        common = equal = 0
        for ts, row in pod.rows:
            other = front_by_minute.get(ts // 60)
            if other is None:
                continue
            common += 1
            equal += all(
                _number(other[i]) == _number(row[j]) and _number(row[j]) is not None for i, j in pairs
            )
        if equal > best[0]:
            best = (equal, common, pod.service)
    if best[0] and best[0] * 2 >= best[1]:
        return best[2], f"its own server latency equals the entry view's in {best[0]} of {best[1]} minutes"
    match = next((s for s in sorted(services) if s.lower() == named.strip().lower()), None)
    if match:
        return match, f"front_service.csv names it ({named!r})"
    if len(roots) == 1:
        return next(iter(roots)), "the only trace root / call-graph source"
    return None, f"front_service.csv names {named!r}; no service matches, entry view left out"


def _system(services: set[str], src: Path) -> str:
    ts = sum(1 for s in services if s.startswith("ts-"))
    if services and ts * 2 > len(services):
        return "nezha-tt"
    if len(services & _OB_SERVICES) >= 2:
        return "nezha-ob"
    hint = str(src).lower()
    if "tt" in re.split(r"[^a-z]+", hint) or "train" in hint:
        return "nezha-tt"
    if "ob" in re.split(r"[^a-z]+", hint) or "boutique" in hint or "hipster" in hint:
        return "nezha-ob"
    return "nezha"


def _columns(path: Path, header: list[str], wanted: Sequence[str]) -> list[int]:
    missing = [c for c in wanted if c not in header]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}")
    return [header.index(c) for c in wanted]


def _read_spans(trace_dir: Path) -> tuple[list[tuple[int, str, str, str, str, str, int, int]], int]:
    spans: dict[tuple[str, str], tuple[int, str, str, str, str, str, int, int]] = {}
    repeated = 0
    wanted = ("TraceID", "SpanID", "ParentID", "PodName", "OperationName", "StartTimeUnixNano", "Duration")
    for path in sorted(trace_dir.glob("*_trace.csv")):
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            cols = _columns(path, next(reader, []), wanted)
            for row in reader:
                try:
                    trace, span, parent, pod, operation, start, duration = (row[i] for i in cols)
                    start_ns, duration_us = int(start), int(duration)  # Duration is in microseconds
                except (IndexError, ValueError) as exc:
                    raise ConfigError(f"{path}: bad span row {row!r}: {exc}") from exc
                if (trace, span) in spans:
                    repeated += 1
                    continue
                spans[(trace, span)] = (
                    start_ns, trace, span, "" if parent == "root" else parent, service_of(pod), operation,
                    start_ns // 1000, duration_us,
                )  # fmt: skip
    return sorted(spans.values()), repeated


def _read_logs(log_dir: Path) -> tuple[list[tuple[int, str, str, str]], int]:
    seen: set[tuple[str, ...]] = set()
    logs = []
    repeated = 0
    for path in sorted(log_dir.glob("*_log.csv")):
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            cols = _columns(path, next(reader, []), ("TimeUnixNano", "PodName", "SpanID", "Log"))
            for row in reader:
                try:
                    key = tuple(row[i] for i in cols)
                    ts_ns = int(key[0])
                except (IndexError, ValueError) as exc:
                    raise ConfigError(f"{path}: bad log row {row[:4]!r}: {exc}") from exc
                if key in seen:
                    repeated += 1
                    continue
                seen.add(key)
                level, message = parse_log_line(key[3])
                logs.append((ts_ns, service_of(key[1]), level, message))
    logs.sort(key=lambda x: x[0])
    return logs, repeated


def _normal_stretch(times: Iterable[float], faults: Sequence[float]) -> tuple[float, float] | None:
    """[first, last] row time of the longest fault-free stretch (capped), None when under NORMAL_MIN_S."""
    banned: list[list[float]] = []
    for lo, hi in sorted((at - NORMAL_GAP_S, at + FAULT_S + NORMAL_GAP_S) for at in faults):
        if banned and lo <= banned[-1][1]:
            banned[-1][1] = max(banned[-1][1], hi)
        else:
            banned.append([lo, hi])
    starts = [lo for lo, _ in banned]
    best: tuple[float, float] | None = None
    run: list[float] = []
    for ts in [*sorted(set(times)), math.nan]:
        i = bisect.bisect_left(starts, ts) - 1
        if not math.isnan(ts) and not (i >= 0 and ts < banned[i][1]):
            run.append(ts)
            continue
        if run and (best is None or run[-1] - run[0] > best[1] - best[0]):
            best = (run[0], run[-1])
        run = []
    if best is None or best[1] - best[0] < NORMAL_MIN_S:
        return None
    return best[0], min(best[1], best[0] + NORMAL_MAX_S)


def construct_dir(day_dir: Path) -> Path | None:
    """The authors' fault-free reference of a day, ``<root>/construct_data/<day>`` beside ``<root>/rca_data/<day>``."""
    if day_dir.parent.name != "rca_data":
        return None
    found = day_dir.parent.parent / "construct_data" / day_dir.name
    return found if found.is_dir() else None


def load_nezha_day(day_dir: Path, src: Path) -> NezhaDayData:
    """Read one day folder (metrics, fault list, call graph, traces, logs) once for all its cases."""
    faults = load_faults(_fault_list(day_dir))
    if not faults:
        raise ConfigError(f"{_fault_list(day_dir)}: no faults listed")
    metric_dir = day_dir / "metric"
    pod_files = sorted(metric_dir.glob("*_metric.csv"))
    if not pod_files:
        raise ConfigError(f"{metric_dir}: no <pod>_metric.csv files")
    notes: list[str] = []
    pods = []
    for path in pod_files:
        pod_name = path.name[: -len("_metric.csv")]
        pods.append(_read_metric_file(path, service_of(pod_name), pod_name))
    services = {p.service for p in pods}

    topology: set[tuple[str, str]] = set()
    dep = metric_dir / "dependency.csv"
    if dep.exists():
        dep_rows = _read_rows(dep)
        cols = _columns(dep, dep_rows[0] if dep_rows else [], ("Source", "Target"))
        for r in dep_rows[1:]:
            a, b = (r[cols[0]].strip(), r[cols[1]].strip()) if len(r) > max(cols) else ("", "")
            if a and b and a != b and "loadgenerator" not in (a, b) and not _IP.match(a) and not _IP.match(b):
                topology.add((a, b))

    spans: list[tuple[int, str, str, str, str, str, int, int]] = []
    logs: list[tuple[int, str, str, str]] = []
    if (day_dir / "trace").is_dir():
        spans, repeated = _read_spans(day_dir / "trace")
        if repeated:
            notes.append(f"{repeated} spans repeated across minute files, kept once")
    if (day_dir / "log").is_dir():
        logs, repeated = _read_logs(day_dir / "log")
        if repeated:
            notes.append(f"{repeated} log lines repeated across minute files, kept once")

    normal_spans: list[tuple[int, str, str, str, str, str, int, int]] = []
    normal_logs: list[tuple[int, str, str, str]] = []
    reference = construct_dir(day_dir)
    if reference is not None and (reference / "trace").is_dir():
        normal_spans, _ = _read_spans(reference / "trace")
        if normal_spans:
            notes.append(f"normal_spans.csv: {len(normal_spans)} spans of {reference / 'trace'}")
    if reference is not None and (reference / "log").is_dir():
        normal_logs, _ = _read_logs(reference / "log")
        if normal_logs:
            notes.append(f"normal_logs.csv: {len(normal_logs)} log lines of {reference / 'log'}")

    front_path = metric_dir / "front_service.csv"
    entry = None
    if front_path.exists():
        front = _read_metric_file(front_path, "", "")
        rows = _read_rows(front_path)
        named = rows[1][rows[0].index("ServiceName")] if len(rows) > 1 and "ServiceName" in rows[0] else ""
        roots = {s[4] for s in spans if not s[3]} or (
            {a for a, _ in topology} - {b for _, b in topology} if topology else set()
        )
        entry, why = _entry_service(front, pods, named, roots, services)
        notes.append(f"entry view (front_service.csv) -> {entry}: {why}")
        if entry:
            front.service = entry
            pods.append(front)

    metrics = []
    skipped = 0
    for pod in pods:
        if pod.ragged:
            notes.append(
                f"{pod.instance or 'front_service.csv'}: {pod.ragged} rows of the wrong width left out"
            )
    for order, pod in enumerate(pods):
        for ts, row in pod.rows:
            values = []
            for i, name in pod.columns:
                text = row[i].strip()
                if _number(text) is None:
                    skipped += 1
                    continue
                values.append((name, text))
            metrics.append((ts, order, pod.service, pod.instance, values))
    metrics.sort(key=lambda m: (m[0], m[1]))
    if skipped:
        notes.append(f"{skipped} empty or NaN metric cells written as no point")

    metric_times = [m[0] for m in metrics]
    stretch = _normal_stretch(metric_times, [f.at for f in faults])
    normal = []
    if stretch is None:
        notes.append("no fault-free stretch of 10 minutes: no normal.csv")
    else:
        normal = [m for m in metrics if stretch[0] <= m[0] <= stretch[1]]
        notes.append(
            "normal.csv: " + " to ".join(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) for t in stretch)
        )
    edge_metrics = _read_edge_metrics(metric_dir, topology)
    if edge_metrics:
        notes.append(
            f"edge_metrics.csv: {len(edge_metrics)} per-edge latency points (client and server side)"
        )
    return NezhaDayData(
        edge_metrics=edge_metrics,
        edge_times=[e[0] for e in edge_metrics],
        edge_normal=[e for e in edge_metrics if stretch and stretch[0] <= e[0] <= stretch[1]],
        name=day_dir.name,
        system=_system(services, src),
        faults=faults,
        metrics=metrics,
        metric_times=metric_times,
        topology=topology,
        spans=spans,
        span_times=[s[0] for s in spans],
        logs=logs,
        log_times=[x[0] for x in logs],
        normal=normal,
        entry=entry,
        notes=notes,
        normal_spans=normal_spans,
        normal_logs=normal_logs,
    )


def _metric_rows(rows: Iterable[tuple[float, int, str, str, list[tuple[str, str]]]]) -> Iterator[Row]:
    for ts, _, service, instance, values in rows:
        stamp = _seconds(ts)
        for name, value in values:
            yield (stamp, service, name, value, instance)


def _edge_rows(rows: Iterable[tuple[float, str, str, str, str, str]]) -> Iterator[Row]:
    for ts, *rest in rows:
        yield (_seconds(ts), *rest)


def _window(times: Sequence[float], lo: float, hi: float) -> slice:
    return slice(bisect.bisect_left(times, lo), bisect.bisect_right(times, hi))


def _log_rows(logs: Iterable[tuple[int, str, str, str]]) -> list[Row]:
    return [(f"{t // 10**9}.{t % 10**9 // 1000:06d}", svc, lvl, msg) for t, svc, lvl, msg in logs]


def nezha_cases(day: NezhaDayData, meta: bool = True) -> Iterator[CaseOut]:
    """The day's cases, one per labelled fault, in injection order."""
    used: Counter[str] = Counter()
    normal_spans = (
        render_csv(SPAN_HEADER, [(*s[1:], "") for s in day.normal_spans]) if day.normal_spans else ""
    )
    normal_logs = render_csv(LOG_HEADER, _log_rows(day.normal_logs)) if day.normal_logs else ""
    normal = render_csv(METRIC_HEADER, _metric_rows(day.normal)) if day.normal else ""
    normal_names = {n for m in day.normal for n, _ in m[4]}
    for fault in day.faults:
        start = float(fault.at)
        lo, hi = start - BEFORE_S, start + FAULT_S
        case_id = f"{day.system}-{day.name}-{time.strftime('%H%M%S', time.gmtime(start))}"
        used[case_id] += 1
        if used[case_id] > 1:
            case_id += f"-{used[case_id]}"
        metrics = day.metrics[_window(day.metric_times, lo, hi)]
        lo_ns, hi_ns = round(lo * 1e6) * 1000, round(hi * 1e6) * 1000  # exact to the microsecond
        spans = day.spans[_window(day.span_times, lo_ns, hi_ns)]
        logs = day.logs[_window(day.log_times, lo_ns, hi_ns)]
        edges = set(day.topology)
        by_id = {(s[1], s[2]): s[4] for s in spans}
        for s in spans:
            parent = by_id.get((s[1], s[3])) if s[3] else None
            if parent and parent != s[4]:
                edges.add((parent, s[4]))
        out = CaseOut(
            id=case_id,
            case={"id": case_id, "system": day.system, "anomaly_start": start},
            label={
                "root_cause": fault.service,
                "fault_type": NEZHA_FAULT_TYPES.get(fault.nezha_type, "other"),
            },
        )
        out.tables["metrics.csv"] = (METRIC_HEADER, _metric_rows(metrics))
        if normal:
            out.tables["normal.csv"] = normal
        if meta:
            names = sorted({n for m in metrics for n, _ in m[4]} | normal_names)
            kinds = [(n, *k) for n in names if (k := nezha_metric_meta(n))]
            out.tables["metrics_meta.csv"] = (("metric", "kind", "direction"), kinds)
        if edges:
            out.tables["topology.csv"] = (("caller", "callee"), sorted(edges))
        if day.span_times:
            out.tables["spans.csv"] = (SPAN_HEADER, [(*s[1:], "") for s in spans])
        if day.edge_times:
            out.tables["edge_metrics.csv"] = (
                EDGE_HEADER,
                _edge_rows(day.edge_metrics[_window(day.edge_times, lo, hi)]),
            )
            if day.edge_normal:
                out.tables["edge_normal.csv"] = (EDGE_HEADER, _edge_rows(day.edge_normal))
        if day.log_times:
            out.tables["logs.csv"] = (LOG_HEADER, _log_rows(logs))
        if normal_spans:
            out.tables["normal_spans.csv"] = normal_spans
        if normal_logs:
            out.tables["normal_logs.csv"] = normal_logs
        yield out


def convert_nezha(src: Path, dest: Path, meta: bool = True) -> list[Converted]:
    """Convert every Nezha day under `src` into case folders under `dest`; one result per day."""
    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        raise ConfigError(f"SRC {src} is not a folder")
    try:
        days = find_days(src)
    except ConfigError as exc:
        raise ConfigError(
            f"{src}: no Nezha day folder (<day>-fault_list.json and metric/) in it or below it"
        ) from exc
    for day_dir in days:  # check every day before writing anything
        if not load_faults(_fault_list(day_dir)):
            raise ConfigError(f"{_fault_list(day_dir)}: no faults listed")
        if not any((day_dir / "metric").glob("*_metric.csv")):
            raise ConfigError(f"{day_dir / 'metric'}: no <pod>_metric.csv files")
    _prepare_dest(dest)
    results = []
    for day_dir in days:
        started = time.perf_counter()
        day = load_nezha_day(day_dir, src)
        result = Converted(f"{day.system} {day.name}", notes=list(day.notes))
        for case in nezha_cases(day, meta):
            result.bytes += write_case(dest, case)
            result.cases += 1
        result.seconds = time.perf_counter() - started
        results.append(result)
    return results


# ----------------------------------------------------------------------------- PetShop


def petshop_fault_type(command: str) -> str:
    """The fault type an injection command names (score only, never an input)."""
    text = command.lower()
    if re.search(r"\bcpu\b|stress|hog", text):
        return "cpu"
    if "memory" in text or "leak" in text:
        return "memory"
    if "delay" in text or "sleep(" in text or "latency" in text:
        return "latency"
    if "error" in text or "inject = true" in text or "misconfig" in text:
        return "error"
    return "other"  # request overload (issue_dynamo_db_requests) and anything unrecognised


def read_petshop_metrics(path: Path) -> list[Row]:
    """(timestamp, node, metric_statistic, value, "") for every non-empty cell of a PetShop metrics.csv."""
    rows = _read_rows(path)
    if len(rows) < 4 or [r[0] if r else "" for r in rows[:3]] != ["microservice", "metric", "statistic"]:
        raise ConfigError(f"{path}: expected three header rows microservice / metric / statistic")
    nodes, metrics, stats = rows[0], rows[1], rows[2]
    if not len(nodes) == len(metrics) == len(stats):
        raise ConfigError(f"{path}: header rows differ in length")
    names = [f"{m}_{s}" for m, s in zip(metrics, stats, strict=True)]
    out: list[Row] = []
    for n, row in enumerate(rows[3:], start=4):
        if not row or (n == 4 and row[0] == "unix_timestamp"):
            continue
        ts = _number(row[0])
        if ts is None or len(row) != len(nodes):
            raise ConfigError(f"{path}: row {n} is not <unix_timestamp>,<{len(nodes) - 1} values>")
        stamp = _seconds(ts)
        for i in range(1, len(row)):
            text = row[i].strip()
            if _number(text) is not None:
                out.append((stamp, nodes[i], names[i], text, ""))
    return out


def read_petshop_graph(path: Path) -> list[tuple[str, str]]:
    """(caller, callee) edges of graph.csv: a cell is non-zero when the row's node calls the column's."""
    rows = _read_rows(path)
    if len(rows) < 2:
        raise ConfigError(f"{path}: empty adjacency matrix")
    callees = rows[0][1:]
    edges = []
    for row in rows[1:]:
        if len(row) != len(callees) + 1:
            raise ConfigError(f"{path}: row {row[:1]} has {len(row) - 1} cells for {len(callees)} columns")
        for callee, cell in zip(callees, row[1:], strict=True):
            value = _number(cell)
            if value is None:
                raise ConfigError(f"{path}: cell {row[0]} -> {callee} is {cell!r}")
            if value != 0 and row[0] != callee:
                edges.append((row[0], callee))
    return sorted(set(edges))


def _petshop_traffic_dirs(src: Path) -> list[Path]:
    for base in (src, src / "dataset"):
        if (base / "graph.csv").is_file():
            return [base]
        found = sorted(p for p in base.iterdir() if (p / "graph.csv").is_file()) if base.is_dir() else []
        if found:
            return found
    raise ConfigError(
        f"{src}: no PetShop traffic folder (<traffic>/graph.csv, noissue/, train/, test/) under it"
    )


@dataclass
class _Issue:
    traffic: str
    split: str
    path: Path
    target: dict[str, Any]
    metrics: list[Row]


@dataclass
class PetshopLevel:
    """One traffic level, read whole before any case is written."""

    name: str
    graph: list[tuple[str, str]]
    normal: str
    """normal.csv's text, the same in every case of the level."""
    normal_names: set[str]
    issues: list[_Issue]
    seconds: float = 0.0


def load_petshop_level(traffic_dir: Path) -> PetshopLevel:
    """Read a traffic folder: graph.csv, noissue/metrics.csv and every train/test issue."""
    started = time.perf_counter()
    issues = []
    for split in ("train", "test"):
        split_dir = traffic_dir / split
        if not split_dir.is_dir():
            continue
        for issue in sorted(split_dir.iterdir(), key=lambda p: (len(p.name), p.name)):
            if not issue.is_dir() or issue.name.startswith("."):
                continue
            try:
                target = json.loads((issue / "target.json").read_text(encoding="utf-8"))
                t, root = target["target"], target["root_cause"]
                _ = (t["node"], t["metric"], t["agg"], float(t["timestamp"]), root["node"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{issue}/target.json: {exc!r}") from exc
            if not (issue / "metrics.csv").is_file():
                raise ConfigError(f"{issue}: no metrics.csv")
            metrics = read_petshop_metrics(issue / "metrics.csv")
            issues.append(_Issue(traffic_dir.name, split, issue, target, metrics))
    if not issues:
        raise ConfigError(f"{traffic_dir}: no train/issue_N or test/issue_N folders")
    if not (traffic_dir / "noissue" / "metrics.csv").is_file():
        raise ConfigError(f"{traffic_dir}: no noissue/metrics.csv")
    normal = read_petshop_metrics(traffic_dir / "noissue" / "metrics.csv")
    return PetshopLevel(
        name=traffic_dir.name,
        graph=read_petshop_graph(traffic_dir / "graph.csv"),
        normal=render_csv(METRIC_HEADER, normal),
        normal_names={str(r[2]) for r in normal},
        issues=issues,
        seconds=time.perf_counter() - started,
    )


def petshop_case(level: PetshopLevel, issue: _Issue, meta: bool = True) -> CaseOut:
    """One PetShop issue as a case; only ``target`` reaches case.json, the label only label.json."""
    t = issue.target["target"]
    case_id = f"petshop-{issue.traffic}-{issue.split}-{issue.path.name}"
    command = str((issue.target.get("metadata") or {}).get("reproducibility", {}).get("command") or "")
    out = CaseOut(
        id=case_id,
        case={
            "id": case_id,
            "system": "petshop",
            "subset": f"{issue.traffic}/{issue.split}",
            "anomaly_start": float(t["timestamp"]),
            "symptom": {"service": str(t["node"]), "metric": f"{t['metric']}_{t['agg']}"},
        },
        label={
            "root_cause": str(issue.target["root_cause"]["node"]),
            "fault_type": petshop_fault_type(command),
        },
    )
    out.tables["metrics.csv"] = (METRIC_HEADER, issue.metrics)
    out.tables["normal.csv"] = level.normal
    if meta:
        names = sorted({str(r[2]) for r in issue.metrics} | level.normal_names)
        kinds = [
            (n, *_PETSHOP_META[n.split("_", 1)[0]]) for n in names if n.split("_", 1)[0] in _PETSHOP_META
        ]
        out.tables["metrics_meta.csv"] = (("metric", "kind", "direction"), kinds)
    out.tables["topology.csv"] = (("caller", "callee"), level.graph)
    return out


def convert_petshop(src: Path, dest: Path, meta: bool = True) -> list[Converted]:
    """Convert every PetShop issue under `src` into case folders under `dest`; one result per level."""
    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        raise ConfigError(f"SRC {src} is not a folder")
    # all read before anything is written
    levels = [load_petshop_level(d) for d in _petshop_traffic_dirs(src)]
    _prepare_dest(dest)
    results = []
    for level in levels:
        started = time.perf_counter()
        result = Converted(f"petshop {level.name}")
        for issue in level.issues:
            result.bytes += write_case(dest, petshop_case(level, issue, meta))
            result.cases += 1
        result.seconds = level.seconds + time.perf_counter() - started
        results.append(result)
    return results


CONVERTERS = {"nezha": convert_nezha, "petshop": convert_petshop}
"""Dataset kind -> converter."""
