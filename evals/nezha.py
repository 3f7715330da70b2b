"""Nezha (ESEC/FSE 2023) OnlineBoutique days as an external root-cause benchmark for the analyst.

Each labelled fault of a day folder (``rca_data/<day>/``) becomes one replayed incident:
:class:`NezhaTelemetry` serves the day's files, the topology is its call graph, runtime, health and GitOps are
stubs, and the label is used only to score. Run with ``sregraph bench nezha --data DIR``
(``evals/nezha_cli.py``). The adapter, the mapping and the numbers: docs/nezha.md §The adapter.
"""

from __future__ import annotations

import bisect
import calendar
import csv
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, cast

from agents.analyst import Analyst, AnalystConfig
from agents.observer import ObserverConfig
from tools.base import (
    Change,
    ConfigError,
    Deployer,
    HealthResult,
    IncidentSurface,
    LogRecord,
    Notifier,
    PullRequest,
    Refused,
    Series,
    ServiceStatus,
    Span,
)
from tools.domain import Diagnosis, FaultType, Observation
from tools.ledger import ActionLedger
from tools.toolbox import Toolbox

# ----------------------------------------------------------------------------- the mapping

FAULT_TYPES: dict[str, FaultType] = {
    "cpu_contention": "cpu_saturation",
    "cpu_consumed": "cpu_saturation",
    "network_delay": "latency",
    "return": "error_spike",
    "exception": "error_spike",
}
"""Nezha's injected fault types onto ours. ``return`` and ``exception`` are code defects that make requests
fail (an error return, a thrown exception); there is no deploy in the data, so they are error spikes."""

MIB_TO_MB = 1.048576

POD_COLUMNS: dict[str, tuple[str, float]] = {
    # Judged by the analyst (agents/detection/rules.RULES).
    "CpuUsageRate(%)": ("cpu_percent", 1.0),
    "MemoryUsage(Mi)": ("memory_rss_mb", MIB_TO_MB),
    "PodServerLatencyP95(s)": ("latency_p95_ms", 1000.0),
    "PodWorkload(Ops)": ("request_rate", 1.0),
    # Readable through the Telemetry interface, not judged.
    "CpuUsage(m)": ("cpu_usage_m", 1.0),
    "MemoryUsageRate(%)": ("memory_percent", 1.0),
    "SyscallRead": ("syscall_read", 1.0),
    "SyscallWrite": ("syscall_write", 1.0),
    "NetworkReceiveBytes": ("network_rx_bytes", 1.0),
    "NetworkTransmitBytes": ("network_tx_bytes", 1.0),
    "PodServerLatencyP90(s)": ("latency_p90_ms", 1000.0),
    "PodServerLatencyP99(s)": ("latency_p99_ms", 1000.0),
    "PodClientLatencyP90(s)": ("client_latency_p90_ms", 1000.0),
    "PodClientLatencyP95(s)": ("client_latency_p95_ms", 1000.0),
    "PodClientLatencyP99(s)": ("client_latency_p99_ms", 1000.0),
    "NodeCpuUsageRate(%)": ("node_cpu_percent", 1.0),
    "NodeMemoryUsageRate(%)": ("node_memory_percent", 1.0),
    "NodeNetworkReceiveBytes": ("node_network_rx_bytes", 1.0),
}
"""Pod metric columns: dataset column -> (our name, factor). Seconds become milliseconds, MiB become MB."""

POD_SUCCESS_COLUMN = "PodSuccessRate(%)"
"""Mapped to ``error_ratio`` = 1 - rate/100 only when the day recorded it (0 in every row of 2022-08-22)."""

ENTRY_COLUMNS: dict[str, tuple[str, float]] = {
    "LatencyP50(s)": ("entry_latency_p50_ms", 1000.0),
    "LatencyP90(s)": ("entry_latency_p90_ms", 1000.0),
    "LatencyP95(s)": ("entry_latency_p95_ms", 1000.0),
    "LatencyP99(s)": ("entry_latency_p99_ms", 1000.0),
}
"""``front_service.csv``: the entry service's view. ``SuccessRate(%)`` becomes its ``error_ratio``."""

EDGE_FILES = {"source_50.csv": "client", "destination_50.csv": "server"}
"""Per-call-edge latency (undocumented; looks like a median in seconds): ``edge_latency_p50_ms``
labelled ``source``, ``target`` and ``side``."""

FAULT_DURATION_S = 180.0
"""The paper injects each fault for 3 minutes."""
WINDOW_S = 180.0
"""Recent window: the fault's length."""
BASELINE_S = 300.0
"""Baseline window before the injection: faults are 8-9 minutes apart, so 5 minutes stay clear of the
previous one, and 5 one-minute points pass the analyst's minimum of 4."""
MINUTE = 60.0

PUBLISHED: dict[str, dict[str, float]] = {
    "Nezha (metrics + traces + logs)": {"as1": 0.9286, "as3": 0.9643, "as5": 0.9643},
    "Nezha w/o logs (metrics + traces)": {"as1": 0.6428, "as3": 0.6428, "as5": 0.6428},
    "PDiagnose (metrics + traces + logs)": {"as1": 0.4107, "as3": 0.7321, "as5": 0.8214},
    "MicroRank (traces)": {"as1": 0.4107, "as3": 0.4821, "as5": 0.625},
    "TraceAnomaly (traces)": {"as1": 0.3035, "as3": 0.3392, "as5": 0.4821},
    "MicroRCA (metrics)": {"as1": 0.1607, "as3": 0.625, "as5": 0.9275},
    "MicroScope (metrics)": {"as1": 0.125, "as3": 0.4107, "as5": 0.5535},
}
"""Paper Table 3, service level, OnlineBoutique, both days (56 faults), as printed."""

# ----------------------------------------------------------------------------- parsing helpers

_DEPLOYMENT_POD = re.compile(r"^(?P<svc>.+)-[a-z0-9]{6,10}-[a-z0-9]{5}$")
_STATEFUL_POD = re.compile(r"^(?P<svc>.+)-\d+$")


def service_of(pod: str) -> str:
    """The service a Kubernetes pod belongs to: a deployment pod loses its two hash parts."""
    for pattern in (_DEPLOYMENT_POD, _STATEFUL_POD):
        m = pattern.match(pod)
        if m:
            return m.group("svc")
    return pod


def parse_utc(text: str) -> float:
    """Unix seconds of ``YYYY-MM-DD HH:MM:SS`` (or with a ``T``) read as UTC; longer strings are cut."""
    stamp = text.strip()[:19].replace("T", " ")
    try:
        return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")))
    except ValueError as exc:
        raise ConfigError(f"unreadable time {text!r}") from exc


def _row_minute(row: dict[str, str]) -> float:
    """A metric row's minute: Go's ``Time`` string cut to the minute (``TimeStamp`` can be corrupt)."""
    text = row.get("Time") or row.get("time")
    if text:
        return parse_utc(text[:16] + ":00")
    raw = row.get("TimeStamp") or row.get("timestamp") or ""
    try:
        return math.floor(float(raw) / MINUTE) * MINUTE
    except ValueError as exc:
        raise ConfigError(f"metric row without a readable time: {row!r}") from exc


def _number(text: str | None) -> float | None:
    if text is None or text.strip() == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------- the day


@dataclass(frozen=True)
class NezhaFault:
    """One labelled fault."""

    at: float
    """Injection time, Unix seconds (from ``inject_time``, which matches the metrics' clock)."""
    pod: str
    service: str
    nezha_type: str
    expected: FaultType
    """Our fault type for ``nezha_type`` (``unknown`` when unmapped)."""


SeriesKey = tuple[str, tuple[tuple[str, str], ...]]
AddPoint = Callable[[str, dict[str, str], float, float], None]


@dataclass
class NezhaDay:
    """One day folder, loaded: labels, metric series, call graph, and where traces and logs are."""

    name: str
    path: Path
    faults: list[NezhaFault]
    services: list[str]
    topology: dict[str, list[str]]
    series: dict[SeriesKey, list[tuple[float, float]]] = field(default_factory=dict)
    entry_service: str | None = None
    notes: list[str] = field(default_factory=list)


def find_days(data_dir: Path) -> list[Path]:
    """Day folders under `data_dir`: the folder itself, its ``rca_data/<day>`` folders, or its subfolders."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ConfigError(f"--data: {data_dir} is not a folder")
    if _fault_list(data_dir) is not None:
        return [data_dir]
    for parent in (data_dir / "rca_data", data_dir):
        if parent.is_dir():
            days = sorted(p for p in parent.iterdir() if p.is_dir() and _fault_list(p) is not None)
            if days:
                return days
    raise ConfigError(f"--data: no Nezha day folder (<day>-fault_list.json and metric/) under {data_dir}")


def _fault_list(day_dir: Path) -> Path | None:
    found = sorted(day_dir.glob("*fault_list.json"))
    return found[0] if found and (day_dir / "metric").is_dir() else None


def load_faults(path: Path) -> list[NezhaFault]:
    """The labels: ``{"HH": [fault, ...]}`` (or a plain list), sorted by injection time."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    entries: Iterable[Any] = raw if isinstance(raw, list) else [f for group in raw.values() for f in group]
    faults = []
    for entry in entries:
        try:
            pod, kind = str(entry["inject_pod"]), str(entry["inject_type"])
            when = entry.get("inject_time")
            at = parse_utc(when) if when else float(entry["inject_timestamp"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: bad fault entry {entry!r}: {exc}") from exc
        expected = FAULT_TYPES.get(kind, "unknown")
        faults.append(NezhaFault(at=at, pod=pod, service=service_of(pod), nezha_type=kind, expected=expected))
    return sorted(faults, key=lambda f: f.at)


def load_day(day_dir: Path) -> NezhaDay:
    """Read one day folder: labels, every metric file, and the call graph."""
    day_dir = Path(day_dir)
    labels = _fault_list(day_dir)
    if labels is None:
        raise ConfigError(f"{day_dir}: not a Nezha day folder (needs <day>-fault_list.json and metric/)")
    metric_dir = day_dir / "metric"
    pod_files = sorted(metric_dir.glob("*_metric.csv"))
    if not pod_files:
        raise ConfigError(f"{metric_dir}: no <pod>_metric.csv files")
    series: dict[SeriesKey, list[tuple[float, float]]] = {}
    notes: list[str] = []

    def add(name: str, labels_: dict[str, str], ts: float, value: float) -> None:
        series.setdefault((name, tuple(sorted(labels_.items()))), []).append((ts, value))

    services = []
    for path in pod_files:
        pod = path.name[: -len("_metric.csv")]
        service = service_of(pod)
        services.append(service)
        rows = _read_csv(path)
        success_recorded = any((_number(r.get(POD_SUCCESS_COLUMN)) or 0.0) != 0.0 for r in rows)
        labels_ = {"service": service, "pod": pod}
        for row in rows:
            ts = _row_minute(row)
            for column, (name, factor) in POD_COLUMNS.items():
                value = _number(row.get(column))
                if value is not None:
                    add(name, labels_, ts, value * factor)
            if success_recorded:
                value = _number(row.get(POD_SUCCESS_COLUMN))
                if value is not None:
                    add("error_ratio", labels_, ts, 1.0 - value / 100.0)
        if not success_recorded:
            notes.append(f"{pod}: {POD_SUCCESS_COLUMN} not recorded (0 in every row); no per-pod error_ratio")
    services = sorted(set(services))

    topology = _call_graph(metric_dir, services)
    entry = _entry_metrics(metric_dir, services, topology, add, notes)
    _edge_metrics(metric_dir, services, add)
    _caller_latency(series)
    for points in series.values():
        points.sort()
    return NezhaDay(
        name=day_dir.name,
        path=day_dir,
        faults=load_faults(labels),
        services=services,
        topology=topology,
        series=series,
        entry_service=entry,
        notes=notes,
    )


def _split_edge(column: str, services: Sequence[str]) -> tuple[str, str] | None:
    """``<caller>_<callee>`` split where both halves are known services."""
    for i, ch in enumerate(column):
        if ch == "_" and column[:i] in services and column[i + 1 :] in services:
            return column[:i], column[i + 1 :]
    return None


def _call_graph(metric_dir: Path, services: list[str]) -> dict[str, list[str]]:
    """The call graph, service -> services it calls, from ``dependency.csv`` and the edge-latency headers."""
    edges: dict[str, set[str]] = {s: set() for s in services}
    dep = metric_dir / "dependency.csv"
    if dep.exists():
        for row in _read_csv(dep):
            src, dst = row.get("Source", ""), row.get("Target", "")
            if src in edges and dst in edges and src != dst:
                edges[src].add(dst)
    for name in EDGE_FILES:
        path = metric_dir / name
        if path.exists():
            with path.open(newline="", encoding="utf-8") as fh:
                header = next(csv.reader(fh), [])
            for column in header:
                pair = _split_edge(column, services)
                if pair and pair[0] != pair[1]:
                    edges[pair[0]].add(pair[1])
    return {s: sorted(d) for s, d in edges.items()}


def _entry_metrics(
    metric_dir: Path, services: list[str], topology: dict[str, list[str]], add: AddPoint, notes: list[str]
) -> str | None:
    """Attach ``front_service.csv`` to the service it names, else the call graph's only root; return it."""
    path = metric_dir / "front_service.csv"
    if not path.exists():
        return None
    rows = _read_csv(path)
    if not rows:
        return None
    named = (rows[0].get("ServiceName") or "").strip().lower()
    entry = next((s for s in services if s.lower() == named), None)
    if entry is None:
        roots = [s for s in services if topology.get(s) and not any(s in deps for deps in topology.values())]
        entry = roots[0] if len(roots) == 1 else None
    if entry is None:
        notes.append(f"front_service.csv names {named!r}, which matches no service; entry metrics skipped")
        return None
    labels_ = {"service": entry, "source": "front_service"}
    for row in rows:
        ts = _row_minute(row)
        rate = _number(row.get("SuccessRate(%)"))
        if rate is not None:
            add("error_ratio", labels_, ts, 1.0 - rate / 100.0)
        for column, (name, factor) in ENTRY_COLUMNS.items():
            value = _number(row.get(column))
            if value is not None:
                add(name, labels_, ts, value * factor)
    return entry


def _edge_metrics(metric_dir: Path, services: list[str], add: AddPoint) -> None:
    for name, side in EDGE_FILES.items():
        path = metric_dir / name
        if not path.exists():
            continue
        for row in _read_csv(path):
            ts = _row_minute(row)
            for column, text in row.items():
                pair = _split_edge(column or "", services)
                value = _number(text)
                if pair and value is not None:
                    labels_ = {"source": pair[0], "target": pair[1], "side": side}
                    add("edge_latency_p50_ms", labels_, ts, value * 1000.0)


def _caller_latency(series: dict[SeriesKey, list[tuple[float, float]]]) -> None:
    """``caller_latency_p50_ms``: per minute, the slowest caller's client-side median latency to a service."""
    worst: dict[str, dict[float, float]] = {}
    for (name, labels), points in series.items():
        tags = dict(labels)
        if name == "edge_latency_p50_ms" and tags.get("side") == "client":
            per_minute = worst.setdefault(tags["target"], {})
            for ts, value in points:
                per_minute[ts] = max(value, per_minute.get(ts, value))
    for target, per_minute in worst.items():
        series[("caller_latency_p50_ms", (("service", target),))] = sorted(per_minute.items())


# ----------------------------------------------------------------------------- telemetry over the day


_LEVEL_WORD = re.compile(r"\b(FATAL|SEVERE|CRITICAL|ERROR|WARNING|WARN|INFO|DEBUG|TRACE)\b", re.IGNORECASE)
_LEVELS = {
    **dict.fromkeys(("fatal", "severe", "critical", "error", "err", "panic"), "error"),
    **dict.fromkeys(("warning", "warn"), "warn"),
    **dict.fromkeys(("debug", "trace"), "debug"),
    "info": "info",
}


def parse_log_line(raw: str) -> tuple[str, str]:
    """(level, message) of one container log line: Docker's JSON envelope around a JSON or plain-text line."""
    text = raw
    try:
        outer = json.loads(raw)
        if isinstance(outer, dict) and isinstance(outer.get("log"), str):
            text = outer["log"]
    except json.JSONDecodeError:
        pass
    text = text.strip()
    try:
        inner = json.loads(text)
    except json.JSONDecodeError:
        inner = None
    if isinstance(inner, dict):
        level = str(inner.get("severity") or inner.get("level") or "info").lower()
        message = str(inner.get("message") or inner.get("msg") or text)
        return _LEVELS.get(level, "info"), message
    m = _LEVEL_WORD.search(text[:120])
    return (_LEVELS.get(m.group(1).lower(), "info") if m else "info"), text


LatencyView = Literal["server", "client"]


def _series_for_view(day: NezhaDay, view: LatencyView) -> dict[SeriesKey, list[tuple[float, float]]]:
    """The day's series with ``latency_p95_ms`` taken from the chosen view.

    server: the pod's own server-side p95 (the default). client: the latency callers see
    (``caller_latency_p50_ms``) for every service that has callers; a service nobody calls keeps its own.
    The server-side p95 stays readable as ``server_latency_p95_ms`` in both views.
    """
    out = dict(day.series)
    callers = {dict(k[1])["service"]: pts for k, pts in day.series.items() if k[0] == "caller_latency_p50_ms"}
    for key, points in day.series.items():
        if key[0] != "latency_p95_ms":
            continue
        out[("server_latency_p95_ms", key[1])] = points
        service = dict(key[1]).get("service", "")
        if view == "client" and service in callers:
            out[key] = callers[service]
    return out


class NezhaTelemetry:
    """``Telemetry`` over one loaded day: metrics from memory, traces and logs per minute file on demand."""

    def __init__(self, day: NezhaDay, latency_view: LatencyView = "server", cache_minutes: int = 16) -> None:
        """Serve `day` with `latency_view`; at most `cache_minutes` parsed trace or log files are kept."""
        self.day = day
        self._series = _series_for_view(day, latency_view)
        self._keys: dict[str, list[SeriesKey]] = {}
        for key in self._series:
            self._keys.setdefault(key[0], []).append(key)
        self._spans = lru_cache(maxsize=cache_minutes)(self._read_spans)
        self._logs = lru_cache(maxsize=cache_minutes)(self._read_logs)

    def query_range(self, name: str, labels: dict[str, str] | None, start: float, end: float) -> list[Series]:
        """Series named `name` whose labels include `labels`, restricted to [start, end]."""
        wanted = set((labels or {}).items())
        out = []
        for key in self._keys.get(name, []):
            if not wanted <= set(key[1]):
                continue
            points = self._series[key]
            lo = bisect.bisect_left(points, (start, -math.inf))
            hi = bisect.bisect_right(points, (end, math.inf))
            if hi > lo:
                out.append(Series(name=name, labels=dict(key[1]), points=points[lo:hi]))
        return out

    def metric_names(self) -> list[str]:
        """Every metric name the day holds."""
        return sorted(self._keys)

    def spans(self, service: str | None, start: float, end: float, limit: int = 2000) -> list[Span]:
        """Spans that started in [start, end], optionally of one service: the newest `limit`, oldest first."""
        found = [
            s
            for minute in self._minutes(start, end)
            for s in self._spans(minute)
            if start <= s.start <= end and (service is None or s.service == service)
        ]
        found.sort(key=lambda s: s.start)
        return found[-limit:] if limit > 0 else []

    def search_logs(
        self,
        service: str | None,
        start: float,
        end: float,
        query: str | None = None,
        level: str | None = None,
        limit: int = 500,
    ) -> list[LogRecord]:
        """Log records in [start, end] by service, substring and level: the newest `limit`, oldest first."""
        needle = query.lower() if query else None
        found = [
            r
            for minute in self._minutes(start, end)
            for r in self._logs(minute)
            if start <= r.ts <= end
            and (service is None or r.service == service)
            and (level is None or r.level == level.lower())
            and (needle is None or needle in r.message.lower() or needle in json.dumps(r.attrs).lower())
        ]
        found.sort(key=lambda r: r.ts)
        return found[-limit:] if limit > 0 else []

    def _minutes(self, start: float, end: float) -> list[str]:
        """``HH_MM`` names of the minute files that may hold [start, end] (one minute of slack each side)."""
        first = math.floor(start / MINUTE) - 1
        last = math.floor(end / MINUTE) + 1
        if last - first > 24 * 60:
            first = last - 24 * 60
        return [time.strftime("%H_%M", time.gmtime(m * MINUTE)) for m in range(first, last + 1)]

    def _read_spans(self, minute: str) -> tuple[Span, ...]:
        path = self.day.path / "trace" / f"{minute}_trace.csv"
        if not path.exists():
            return ()
        spans = []
        for row in _read_csv(path):
            start_ns, duration = _number(row.get("StartTimeUnixNano")), _number(row.get("Duration"))
            if start_ns is None or duration is None:
                continue
            parent = row.get("ParentID") or None
            spans.append(
                Span(
                    trace_id=row.get("TraceID", ""),
                    span_id=row.get("SpanID", ""),
                    parent_id=None if parent == "root" else parent,
                    service=service_of(row.get("PodName", "")),
                    name=row.get("OperationName", ""),
                    start=start_ns / 1e9,
                    duration_ms=duration / 1000.0,  # microseconds in the files (end - start in ns / 1000)
                    attrs={"pod": row.get("PodName", "")},
                )
            )
        return tuple(spans)

    def _read_logs(self, minute: str) -> tuple[LogRecord, ...]:
        path = self.day.path / "log" / f"{minute}_log.csv"
        if not path.exists():
            return ()
        records = []
        for row in _read_csv(path):
            ts_ns = _number(row.get("TimeUnixNano"))
            if ts_ns is None:
                continue
            level, message = parse_log_line(row.get("Log", ""))
            pod = row.get("PodName", "")
            records.append(
                LogRecord(
                    ts=ts_ns / 1e9,
                    service=service_of(pod),
                    level=level,
                    message=message,
                    attrs={"pod": pod, "trace_id": row.get("TraceID", ""), "span_id": row.get("SpanID", "")},
                )
            )
        return tuple(records)


# ----------------------------------------------------------------------------- stubs for what the data lacks


class ReplayRuntime:
    """Every service of the day is running: the dataset records no process state."""

    def __init__(self, services: Sequence[str]) -> None:
        """Manage `services`."""
        self._services = list(services)

    def services(self) -> list[str]:
        """The day's services."""
        return list(self._services)

    def status(self, service: str) -> ServiceStatus:
        """Running, one replica."""
        return ServiceStatus(service=service, running=True)

    def start(self, service: str) -> ServiceStatus:
        """Refused: a recording cannot be changed."""
        raise Refused("a replayed dataset cannot be changed")

    stop = restart = start

    def scale(self, service: str, replicas: int) -> ServiceStatus:
        """Refused: a recording cannot be changed."""
        raise Refused("a replayed dataset cannot be changed")

    def logs(self, service: str, tail: int = 100) -> list[str]:
        """No process output is recorded."""
        return []


class ReplayHealth:
    """Every probe passes: the dataset has no health probe."""

    def check(self, service: str) -> HealthResult:
        """OK, with a note that nothing was probed."""
        return HealthResult(service=service, ok=True, detail="no probe recorded in the dataset")


class ReplayGitOps:
    """No deploy history: the dataset records no changes."""

    def config(self, service: str) -> dict[str, Any]:
        """No config recorded."""
        return {}

    def history(self, since: float | None = None, service: str | None = None) -> list[Change]:
        """No commits."""
        return []

    def pull_requests(self, state: Literal["open", "merged", "closed", "all"] = "all") -> list[PullRequest]:
        """No pull requests."""
        return []

    def propose(
        self, service: str, new_config: dict[str, Any], title: str, body: str, key: str | None = None
    ) -> PullRequest:
        """Refused: a recording cannot be changed."""
        raise Refused("a replayed dataset cannot be changed")

    def merge(self, pr_id: int) -> PullRequest:
        """Refused: a recording cannot be changed."""
        raise Refused("a replayed dataset cannot be changed")

    def rollback_config(self, service: str, before: float | str) -> dict[str, Any]:
        """Refused: a recording cannot be changed."""
        raise Refused("a replayed dataset cannot be changed")


class _Refusing:
    """Stands in for a backend the analyst never needs; any use fails loudly."""

    def __init__(self, what: str) -> None:
        self._what = what

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)  # copy, pickle and friends probe dunders; they are simply absent
        raise Refused(f"{self._what}.{name}: not available when replaying a dataset")


class FixedClock:
    """The replay's clock: always the analysis instant."""

    def __init__(self, now: float) -> None:
        """Stand still at `now`."""
        self.t = now

    def now(self) -> float:
        """The analysis instant."""
        return self.t

    def sleep(self, seconds: float) -> None:
        """Advance without waiting."""
        self.t += seconds


# ----------------------------------------------------------------------------- one case


@dataclass(frozen=True)
class Replay:
    """How a fault is replayed: window lengths and when the analyst looks."""

    window_s: float = WINDOW_S
    baseline_s: float = BASELINE_S
    fault_duration_s: float = FAULT_DURATION_S
    latency_view: LatencyView = "server"
    """Which latency the analyst judges; ``client`` came after seeing 2022-08-22's misses (docs/nezha.md)."""

    def analysed_at(self, injected_at: float) -> float:
        """The end of the fault, rounded up to the next minute point."""
        return math.ceil((injected_at + self.fault_duration_s) / MINUTE) * MINUTE

    def observer_config(self) -> ObserverConfig:
        """The observer settings the analyst measures with."""
        return ObserverConfig(window_s=self.window_s, baseline_s=self.baseline_s)


def build_incident(
    day: NezhaDay, telemetry: NezhaTelemetry, injected_at: float, replay: Replay
) -> tuple[Toolbox, Observation]:
    """The toolbox and observation of an incident that started at `injected_at`: no label enters here."""
    now = replay.analysed_at(injected_at)
    toolbox = Toolbox(
        telemetry=telemetry,
        runtime=ReplayRuntime(day.services),
        incidents=cast(IncidentSurface, _Refusing("incidents")),
        gitops=ReplayGitOps(),
        notifier=cast(Notifier, _Refusing("notifier")),
        health=ReplayHealth(),
        deployer=cast(Deployer, _Refusing("deployer")),
        ledger=cast(ActionLedger, _Refusing("ledger")),
        topology=day.topology,
        clock=FixedClock(now),
    )
    observation = Observation(
        healthy=False, observed_at=now, window_s=replay.window_s, baseline_end=injected_at
    )
    return toolbox, observation


@dataclass
class CaseResult:
    """The analyst's answer on one labelled fault."""

    day: str
    injected_at: str
    service: str
    nezha_type: str
    expected: str
    ranked: list[str]
    top_fault: str
    confidence: float
    seconds: float

    @property
    def rank(self) -> int | None:
        """1-based position of the true service in the ranking, None when absent."""
        return self.ranked.index(self.service) + 1 if self.service in self.ranked else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the rank and the top three."""
        out = asdict(self)
        out["rank"] = self.rank
        out["top3"] = self.ranked[:3]
        return out


def run_case(
    day: NezhaDay, telemetry: NezhaTelemetry, fault: NezhaFault, replay: Replay
) -> tuple[CaseResult, Diagnosis]:
    """Replay one fault through the real analyst and score its answer."""
    started = time.perf_counter()
    toolbox, observation = build_incident(day, telemetry, fault.at, replay)
    diagnosis = Analyst(toolbox, AnalystConfig(), replay.observer_config()).diagnose(observation)
    top = diagnosis.top
    result = CaseResult(
        day=day.name,
        injected_at=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(fault.at)),
        service=fault.service,
        nezha_type=fault.nezha_type,
        expected=fault.expected,
        ranked=[h.service for h in diagnosis.hypotheses],
        top_fault=top.fault_type if top is not None else "unknown",
        confidence=diagnosis.confidence,
        seconds=round(time.perf_counter() - started, 4),
    )
    return result, diagnosis


# ----------------------------------------------------------------------------- scoring and the runner


def summarise(cases: Sequence[CaseResult]) -> dict[str, Any]:
    """AS@1/3/5 (share of cases with the true service in the top k) and the top fault type's accuracy."""
    n = len(cases)

    def share(hits: int, total: int) -> float:
        return round(hits / total, 4) if total else 0.0

    def at(k: int) -> float:
        return share(sum(1 for c in cases if c.rank is not None and c.rank <= k), n)

    typed = [c for c in cases if c.expected != "unknown"]
    return {
        "cases": n,
        "as1": at(1),
        "as3": at(3),
        "as5": at(5),
        "fault_type_acc": share(sum(1 for c in typed if c.top_fault == c.expected), len(typed)),
        "fault_type_cases": len(typed),
        "as1_and_type": share(sum(1 for c in typed if c.rank == 1 and c.top_fault == c.expected), len(typed)),
        "no_hypothesis": sum(1 for c in cases if not c.ranked),
    }


def run_nezha(data_dir: Path | str, replay: Replay | None = None) -> dict[str, Any]:
    """Replay every labelled fault of every day folder under `data_dir` and score the analyst."""
    replay = replay or Replay()
    started = time.perf_counter()
    days = find_days(Path(data_dir))
    cases: list[CaseResult] = []
    per_day: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for day_dir in days:
        day = load_day(day_dir)
        notes.extend(f"{day.name}: {n}" for n in day.notes)
        telemetry = NezhaTelemetry(day, replay.latency_view)
        day_cases = [run_case(day, telemetry, fault, replay)[0] for fault in day.faults]
        per_day[day.name] = summarise(day_cases)
        cases.extend(day_cases)
    result = summarise(cases)
    result.update(
        {
            "days": per_day,
            "wall_s": round(time.perf_counter() - started, 3),
            "replay": asdict(replay),
            "fault_type_map": dict(FAULT_TYPES),
            "published": PUBLISHED,
            "per_case": [c.to_dict() for c in cases],
            "notes": notes,
        }
    )
    return result
