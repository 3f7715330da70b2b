"""The root-cause ranker on live telemetry: what the analyst reads, as the ranker's input.

The analyst measures each service over a baseline window (ending where the incident began) and a recent window,
reads error lines over the incident's span and the spans of its last minute. `live_input` makes exactly those
reads through the `Telemetry` contract (the same calls, so a recorded incident replays them) and hands them to
`agents.rca.rank`, the method `sregraph bench rca` measures on public datasets (docs/rca.md).
"""

from __future__ import annotations

import numpy as np

from agents.detection.rules import RULES
from agents.detection.window import PEER, Windows
from agents.rca import LogRow, MetricSeries, RcaInput, SpanRow, infer_kind
from tools.base import Telemetry


def live_input(
    telemetry: Telemetry,
    services: list[str],
    topology: dict[str, list[str]],
    windows: Windows,
    span: Windows,
    symptom: str | None = None,
    down: set[str] | None = None,
) -> RcaInput:
    """The ranker's input from the windows the analyst measured: metrics of both windows, error lines, spans.

    Each metric carries the analyst's floor for it (`agents.detection.rules.RULES`): a latency of 5.1 ms that is 8 ms
    for one sample is no deviation, however flat its baseline was. A client span carries the service it called
    (`peer.service`), and `down` names the services the analyst found not serving (health, process state).
    """
    series: list[MetricSeries] = []
    for service in services:
        labels = {"service": service}
        for name in RULES:
            points = [
                p
                for start, end in (
                    (windows.baseline_start, windows.baseline_end),
                    (windows.recent_start, windows.recent_end),
                )
                for s in telemetry.query_range(name, labels, start, end)
                for p in s.points
            ]
            if not points:
                continue
            points.sort()
            kind, direction = infer_kind(name)
            if RULES[name].direction < 0:
                direction = "down"
            ts, values = zip(*points, strict=True)
            series.append(
                MetricSeries(
                    service,
                    name,
                    np.array(ts, dtype=float),
                    np.array(values, dtype=float),
                    None,
                    kind,
                    direction,
                    RULES[name].floor,
                )
            )
    logs: list[LogRow] = []
    for service in services:
        for start, end in ((span.baseline_start, span.baseline_end), (span.recent_start, span.recent_end)):
            logs += [
                LogRow(r.ts, r.service, r.level, r.message)
                for r in telemetry.search_logs(service, start, end, level="error")
            ]
    spans = [
        SpanRow(
            s.trace_id,
            s.span_id,
            s.parent_id or "",
            s.service,
            s.name,
            s.start,
            s.duration_ms / 1000.0,
            s.status,
            _peer(s.attrs),
        )
        for s in telemetry.spans(None, span.recent_start, span.recent_end)
    ]
    edges = {(caller, callee) for caller, callees in topology.items() for callee in callees}
    return RcaInput(
        windows.baseline_end,
        list(services),
        series,
        edges,
        spans,
        logs,
        (symptom, None) if symptom else None,
        down=set(down or ()) & set(services),
    )


def _peer(attrs: dict[str, object]) -> str:
    peer = attrs.get(PEER)
    return peer if isinstance(peer, str) else ""
