"""Root-cause cases on disk: one folder per case, read into the ranker's input (`agents.rca.RcaInput`).

A case is case.json (the only inputs of time), label.json (read only to score), metrics.csv and optional
normal, metadata, topology, span, log and edge files. `load_case` never opens label.json; `load_label` is the
only function that does. The layout in full: docs/rca.md §The case format.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from agents.rca import KINDS, Direction, EdgeSeries, Kind, LogRow, MetricSeries, RcaInput, SpanRow, infer_kind
from tools.base import ConfigError

csv.field_size_limit(16 * 1024 * 1024)

FAULT_TYPES = ("cpu", "memory", "latency", "error", "crash", "disk", "network_loss", "other")


@dataclass
class Case:
    """One case: its id and system, and what the ranker reads."""

    id: str
    system: str
    path: Path
    input: RcaInput
    subset: str | None = None


def find_cases(root: Path) -> list[Path]:
    """Every folder under `root` (or `root` itself) that holds a case.json, in name order."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: not a folder")
    if (root / "case.json").is_file():
        return [root]
    found = sorted(p.parent for p in root.rglob("case.json"))
    if not found:
        raise ConfigError(f"{root}: no case.json found below it (see docs/rca.md for the case layout)")
    return found


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(
                f"{path}: missing column(s) {', '.join(missing)}; header is {reader.fieldnames}"
            )
        return list(reader)


def _read_series(path: Path) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
    """(service, metric or metric@instance) → (timestamps, values), in file order."""
    out: dict[tuple[str, str], tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    rows = _rows(path, ("timestamp", "service", "metric", "value"))
    instances: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in rows:
        instances[(row["service"], row["metric"])].add(row.get("instance") or "")
    for row in rows:
        key = (row["service"], row["metric"])
        name = row["metric"] if len(instances[key]) <= 1 else f"{row['metric']}@{row.get('instance') or ''}"
        ts, vs = out[(row["service"], name)]
        ts.append(_number(row["timestamp"]))
        vs.append(_number(row["value"]))
    return out


def _meta(path: Path) -> dict[str, tuple[Kind, Direction]]:
    out: dict[str, tuple[Kind, Direction]] = {}
    if not path.is_file():
        return out
    for row in _rows(path, ("metric", "kind", "direction")):
        kind = row["kind"].strip().lower()
        direction = row["direction"].strip().lower()
        if kind not in KINDS or direction not in ("up", "down", "both"):
            raise ConfigError(f"{path}: metric {row['metric']!r} has kind {kind!r} / direction {direction!r}")
        out[row["metric"]] = (kind, cast(Direction, direction))
    return out


def _series(
    service: str,
    name: str,
    ts: list[float],
    vs: list[float],
    normal: list[float] | None,
    kind: tuple[Kind, Direction],
) -> MetricSeries:
    """One series in time order (the file's order is kept among equal timestamps)."""
    t = np.array(ts)
    order = np.argsort(t, kind="stable")
    return MetricSeries(
        service, name, t[order], np.array(vs)[order], np.array(normal) if normal else None, *kind
    )


def _read_edges(path: Path) -> dict[tuple[str, str, str, str], tuple[list[float], list[float]]]:
    """(caller, callee, metric, side) → (timestamps, values), in file order."""
    out: dict[tuple[str, str, str, str], tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for row in _rows(path, ("timestamp", "caller", "callee", "metric", "value", "side")):
        side = (row["side"] or "").strip().lower()
        if side not in ("client", "server"):
            raise ConfigError(f"{path}: side must be client or server, not {row['side']!r}")
        ts, vs = out[(row["caller"], row["callee"], row["metric"], side)]
        ts.append(_number(row["timestamp"]))
        vs.append(_number(row["value"]))
    return out


def _edge_series(folder: Path, meta: dict[str, tuple[Kind, Direction]]) -> list[EdgeSeries]:
    if not (folder / "edge_metrics.csv").is_file():
        return []
    rows = _read_edges(folder / "edge_metrics.csv")
    normal = _read_edges(folder / "edge_normal.csv") if (folder / "edge_normal.csv").is_file() else {}
    out = []
    for (caller, callee, metric, side), (ts, vs) in rows.items():
        ref = normal.get((caller, callee, metric, side))
        series = _series(
            callee, metric, ts, vs, ref[1] if ref else None, meta.get(metric) or infer_kind(metric)
        )
        out.append(EdgeSeries(caller, callee, cast(Literal["client", "server"], side), series))
    return out


def _read_spans(path: Path) -> list[SpanRow]:
    """The spans of a spans.csv (or normal_spans.csv); none when the file is absent."""
    if not path.is_file():
        return []
    return [
        SpanRow(
            row["trace_id"],
            row["span_id"],
            row["parent_id"] or "",
            row["service"],
            row["operation"],
            _number(row["start_us"]) / 1e6,
            _number(row["duration_us"]) / 1e6,
            (row["status"] or "").lower(),
            row.get("peer") or "",
        )
        for row in _rows(
            path,
            ("trace_id", "span_id", "parent_id", "service", "operation", "start_us", "duration_us", "status"),
        )
    ]


def _read_logs(path: Path) -> list[LogRow]:
    """The lines of a logs.csv (or normal_logs.csv); none when the file is absent."""
    if not path.is_file():
        return []
    return [
        LogRow(_number(row["timestamp"]), row["service"], row["level"] or "", row["message"] or "")
        for row in _rows(path, ("timestamp", "service", "level", "message"))
    ]


def load_case(folder: Path, use_meta: bool = True) -> Case:
    """Read one case folder into the ranker's input; label.json is not opened."""
    folder = Path(folder)
    try:
        info: dict[str, Any] = json.loads((folder / "case.json").read_text())
        start = float(info["anomaly_start"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{folder}/case.json: {exc}") from exc
    if not (folder / "metrics.csv").is_file():
        raise ConfigError(f"{folder}: no metrics.csv")
    meta = _meta(folder / "metrics_meta.csv") if use_meta else {}
    series = _read_series(folder / "metrics.csv")
    normal = _read_series(folder / "normal.csv") if (folder / "normal.csv").is_file() else {}
    services: set[str] = set()
    out: list[MetricSeries] = []
    for (service, name), (ts, vs) in series.items():
        services.add(service)
        base = name.split("@", 1)[0]
        ref = normal.get((service, name))
        out.append(
            _series(service, name, ts, vs, ref[1] if ref else None, meta.get(base) or infer_kind(base))
        )
    edges: set[tuple[str, str]] = set()
    if (folder / "topology.csv").is_file():
        for row in _rows(folder / "topology.csv", ("caller", "callee")):
            edges.add((row["caller"], row["callee"]))
            services |= {row["caller"], row["callee"]}
    spans = _read_spans(folder / "spans.csv")
    logs = _read_logs(folder / "logs.csv")
    services |= {sp.service for sp in spans} | {r.service for r in logs}
    edge_series = _edge_series(folder, meta)
    services |= {e.caller for e in edge_series} | {e.callee for e in edge_series}
    edges |= {(e.caller, e.callee) for e in edge_series}
    symptom = None
    if isinstance(info.get("symptom"), dict) and info["symptom"].get("service"):
        symptom = (str(info["symptom"]["service"]), info["symptom"].get("metric"))
        services.add(symptom[0])
    services.discard("")
    # The normal period's services are not candidates: only what the case's own window names is.
    inp = RcaInput(
        start,
        sorted(services),
        out,
        edges,
        spans,
        logs,
        symptom,
        edge_series,
        normal_spans=_read_spans(folder / "normal_spans.csv"),
        normal_logs=_read_logs(folder / "normal_logs.csv"),
    )
    return Case(
        str(info.get("id") or folder.name),
        str(info.get("system") or "unknown"),
        folder,
        inp,
        info.get("subset"),
    )


def load_label(folder: Path) -> tuple[str, str | None]:
    """The true root-cause service and fault type of a case (for scoring only)."""
    try:
        label = json.loads((Path(folder) / "label.json").read_text())
        fault = label.get("fault_type")
        return str(label["root_cause"]), (str(fault) if fault is not None else None)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{folder}/label.json: {exc}") from exc
