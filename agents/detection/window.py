"""Measuring deviations: the shared arithmetic of the observer (detect), analyst (explain) and engineer (verify).

Each metric of each service is compared between a baseline window and a recent window with a robust z-score:
(recent median - baseline median) / max(1.4826 * baseline MAD, floor). The floor keeps a perfectly flat
baseline (MAD = 0) from turning noise into huge scores; it is the smallest change an operator would care about.
Memory is judged on growth across the window (a leak is a slope, not a level). Health probes and telemetry
that stopped arriving are signals of their own. The method is written up in docs/analyst-method.md.
"""

from __future__ import annotations

import itertools
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import NamedTuple

from agents.detection.rules import RULES
from agents.detection.stream import MetricSense
from tools.base import LogRecord, Span, Telemetry
from tools.domain import Signal
from tools.toolbox import Toolbox

HEALTH_SCORE = 12.0
STALE_SCORE = 8.0
MIN_POINTS = 4


@dataclass(frozen=True)
class Windows:
    """The baseline and recent windows of one measurement."""

    baseline_start: float
    baseline_end: float
    recent_start: float
    recent_end: float

    @classmethod
    def ending_at(
        cls, now: float, window_s: float, baseline_s: float, baseline_end: float | None = None
    ) -> Windows:
        """Recent window [now - window_s, now]; baseline ends at `baseline_end` or where the recent one starts."""
        b_end = now - window_s if baseline_end is None else baseline_end
        return cls(b_end - baseline_s, b_end, now - window_s, now)


def _mad_scale(values: list[float]) -> float:
    med = statistics.median(values)
    return 1.4826 * statistics.median(abs(v - med) for v in values)


def _growth(points: list[tuple[float, float]]) -> float:
    """Least-squares slope times the window span: how much the series rose across the window."""
    if len(points) < 2:
        return 0.0
    ts = [p[0] for p in points]
    vs = [p[1] for p in points]
    t_mean, v_mean = statistics.fmean(ts), statistics.fmean(vs)
    den = sum((t - t_mean) ** 2 for t in ts)
    if den == 0:
        return 0.0
    slope = sum((t - t_mean) * (v - v_mean) for t, v in zip(ts, vs, strict=True)) / den
    return slope * (ts[-1] - ts[0])


def score_metric(
    name: str, baseline: list[tuple[float, float]], recent: list[tuple[float, float]], z_threshold: float
) -> tuple[float, float, float, float | None] | None:
    """(score, recent value, baseline value, onset) for one metric, or None without enough data."""
    rule = RULES[name]
    if len(baseline) < MIN_POINTS or len(recent) < 2:
        return None
    base_vals = [v for _, v in baseline]
    if rule.mode == "growth":
        # Compare the rise across the recent window with rises of the same length seen in the baseline.
        span = recent[-1][0] - recent[0][0]
        base_growth = _growth(baseline) * (span / max(baseline[-1][0] - baseline[0][0], 1e-9))
        # A leak is growth: memory settling back down during the baseline is not a negative normal.
        value, center = _growth(recent), max(base_growth, 0.0)
        scale = rule.floor
    else:
        center = statistics.median(base_vals)
        value = statistics.median(v for _, v in recent)
        scale = max(_mad_scale(base_vals), rule.floor, rule.relative_floor * abs(center))
    score = rule.direction * (value - center) / scale
    onset = None
    if score >= z_threshold:
        if rule.mode == "growth":
            onset = recent[0][0]
        else:
            limit = center + rule.direction * z_threshold * scale
            for ts, v in recent:
                if rule.direction * (v - limit) >= 0:
                    onset = ts
                    break
    return score, value, center, onset


def backtrack_onset(telemetry: Telemetry, signal: Signal, start: float, end: float) -> float | None:
    """Walk back from `end` while the metric stays past the midpoint between baseline and now: the onset."""
    if signal.name not in RULES or RULES[signal.name].mode != "level":
        return signal.onset
    rule = RULES[signal.name]
    midpoint = (signal.baseline + signal.value) / 2
    points = _points(telemetry, signal.name, {"service": signal.service}, start, end)
    onset = None
    for ts, value in reversed(points):
        if rule.direction * (value - midpoint) < 0:
            break
        onset = ts
    return onset if onset is not None else signal.onset


def measure_service(
    telemetry: Telemetry, service: str, windows: Windows, z_threshold: float, sense: MetricSense | None = None
) -> tuple[list[Signal], dict[str, float]]:
    """Deviating metric signals of one service and a snapshot of its latest values.

    With a `sense` (the observer's), every series is also fed to its streaming detectors; a series they flag
    that the window rule does not yet see becomes a signal too.
    """
    signals: list[Signal] = []
    snapshot: dict[str, float] = {}
    labels = {"service": service}
    for name in RULES:
        base = _points(telemetry, name, labels, windows.baseline_start, windows.baseline_end)
        recent = _points(telemetry, name, labels, windows.recent_start, windows.recent_end)
        if recent:
            snapshot[name] = round(recent[-1][1], 3)
        result = score_metric(name, base, recent, z_threshold)
        if result is None:
            continue
        score, value, center, onset = result
        alert, level = None, 0.0
        if sense is not None:
            level = statistics.median(v for _, v in base)
            alert = sense.feed(service, name, base + recent, level, windows.recent_start)
        if score >= z_threshold:
            signals.append(
                Signal(
                    service=service,
                    name=name,
                    value=round(value, 3),
                    baseline=round(center, 3),
                    score=round(score, 2),
                    onset=onset,
                    detail=f"{name} {'rose' if RULES[name].direction > 0 else 'fell'} to {value:.3g} "
                    f"from {center:.3g} ({score:.1f} robust sd)",
                    sense="window_z",
                )
            )
        elif alert is not None:
            signals.append(
                Signal(
                    service=service,
                    name=name,
                    value=round(alert.value, 3),
                    baseline=round(level, 3),
                    score=round(max(score, 0.0), 2),
                    onset=alert.raised_at,
                    detail=f"{name} {'rose' if RULES[name].direction > 0 else 'fell'} to {alert.value:.3g} "
                    f"from {level:.3g} ({alert.detector} {alert.score:.2f})",
                    sense=f"ensemble:{alert.detector}",
                    why=alert.explanation[:300],
                )
            )
    baseline_rate = _points(telemetry, "request_rate", labels, windows.baseline_start, windows.baseline_end)
    # "Silent" means several sampling intervals without a point, whatever the scrape interval is.
    interval = (
        statistics.median(b[0] - a[0] for a, b in itertools.pairwise(baseline_rate))
        if len(baseline_rate) > 2
        else 0.5
    )
    fresh = _points(
        telemetry, "request_rate", labels, windows.recent_end - max(2.5, 5 * interval), windows.recent_end
    )
    had_baseline = bool(baseline_rate)
    if had_baseline and not fresh:
        last = _points(telemetry, "request_rate", labels, windows.baseline_start, windows.recent_end)
        signals.append(
            Signal(
                service=service,
                name="stale",
                value=0,
                baseline=1,
                score=STALE_SCORE,
                onset=last[-1][0] if last else windows.recent_start,
                detail="telemetry stopped arriving",
                sense="stale",
            )
        )
    return signals, snapshot


def _points(
    telemetry: Telemetry, name: str, labels: dict[str, str], start: float, end: float
) -> list[tuple[float, float]]:
    series = telemetry.query_range(name, labels, start, end)
    points = [p for s in series for p in s.points]
    points.sort()
    return points


def measure(
    toolbox: Toolbox, windows: Windows, z_threshold: float, sense: MetricSense | None = None
) -> tuple[list[Signal], dict[str, dict[str, float]]]:
    """Signals across every service (metrics, staleness, health probes) and a per-service snapshot."""
    signals: list[Signal] = []
    snapshot: dict[str, dict[str, float]] = {}
    for service in toolbox.services:
        found, snap = measure_service(toolbox.telemetry, service, windows, z_threshold, sense)
        health = toolbox.health.check(service)
        snap["health_ok"] = 1.0 if health.ok else 0.0
        if not health.ok:
            found.append(
                Signal(
                    service=service,
                    name="health",
                    value=0,
                    baseline=1,
                    score=HEALTH_SCORE,
                    onset=windows.recent_end,
                    detail=f"health check failed: {health.detail}",
                    sense="health",
                )
            )
        signals.extend(found)
        snapshot[service] = snap
    signals.sort(key=lambda s: -s.score)
    return signals, snapshot


# --------------------------------------------------------------------------- logs and traces

_VOLATILE = re.compile(r"0x[0-9a-fA-F]+|\b[0-9a-f]{8,}\b|\b\d+(\.\d+)?\b")


def template_of(message: str) -> str:
    """A log message with numbers and ids masked, so repeated errors group together."""
    return _VOLATILE.sub("<*>", message)[:200]


@dataclass
class LogEvidence:
    """Error log counts of one service."""

    errors: int
    baseline_errors: int
    warnings: int
    baseline_warnings: int
    templates: list[tuple[str, int]]
    mentions: Counter[str]
    """How often each other service is named in this service's error lines (pointers downstream)."""


def log_evidence(telemetry: Telemetry, services: list[str], windows: Windows) -> dict[str, LogEvidence]:
    """Per service: errors in the recent window vs the baseline, top templates, services named in errors."""
    out: dict[str, LogEvidence] = {}
    for service in services:
        recent = telemetry.search_logs(service, windows.recent_start, windows.recent_end, level="error")
        base = telemetry.search_logs(service, windows.baseline_start, windows.baseline_end, level="error")
        warnings = len(
            telemetry.search_logs(service, windows.recent_start, windows.recent_end, level="warning")
        )
        base_warnings = len(
            telemetry.search_logs(service, windows.baseline_start, windows.baseline_end, level="warning")
        )
        templates = Counter(template_of(r.message) for r in recent)
        mentions: Counter[str] = Counter()
        for record in recent:
            text = _record_text(record)
            for other in services:
                if other != service and other in text:
                    mentions[other] += 1
        out[service] = LogEvidence(
            len(recent), len(base), warnings, base_warnings, templates.most_common(3), mentions
        )
    return out


def _record_text(record: LogRecord) -> str:
    return record.message + " " + " ".join(str(v) for v in record.attrs.values())


class TraceOrigins(NamedTuple):
    """What the failing traces of a window say about where errors start."""

    origins: Counter[str]
    """Per service, how many failing traces have their deepest error there."""
    errors: Counter[str]
    """Per service, how many error spans it had."""
    edges: dict[str, set[str]]
    """Caller -> callees seen in traces."""
    unreached: dict[str, float]
    """Per service, when the first failed call to it began that left no span of it (it could not be reached)."""


PEER = "peer.service"
"""The OpenTelemetry attribute naming the service a client span calls."""


def trace_origins(telemetry: Telemetry, windows: Windows) -> TraceOrigins:
    """Where errors start: per service, how many failing traces have their deepest error there.

    A failed call that left no span of its callee (connection refused while the callee restarts or is down, or a
    callee that died mid-request) is the callee's failure, not the caller's: the caller's client span names it in
    `peer.service`.
    """
    spans = telemetry.spans(None, windows.recent_start, windows.recent_end)
    by_trace: dict[str, list[Span]] = defaultdict(list)
    for span in spans:
        by_trace[span.trace_id].append(span)
    origins: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    edges: dict[str, set[str]] = defaultdict(set)
    unreached: dict[str, float] = {}
    for trace in by_trace.values():
        by_id = {s.span_id: s for s in trace}
        erroring_parents = set()
        for span in trace:
            parent = by_id.get(span.parent_id or "")
            if parent is not None and parent.service != span.service:
                edges[parent.service].add(span.service)
            if span.status == "error":
                errors[span.service] += 1
                if parent is not None and parent.status == "error":
                    erroring_parents.add(parent.span_id)
        children: dict[str, list[Span]] = defaultdict(list)
        for span in trace:
            if span.parent_id:
                children[span.parent_id].append(span)
        for span in trace:
            if span.status == "error" and span.span_id not in erroring_parents:
                where = _where_time_went(span, children)
                peer = where.attrs.get(PEER)
                if (
                    isinstance(peer, str)
                    and peer
                    and peer != where.service
                    and not children.get(where.span_id)
                ):
                    edges[where.service].add(peer)
                    unreached[peer] = min(unreached.get(peer, where.start), where.start)
                    origins[peer] += 1
                else:
                    origins[where.service] += 1
    return TraceOrigins(origins, errors, edges, unreached)


SLOW_SHARE = 0.8
"""A call that failed while its callee took this share of its time or more failed because the callee was slow."""


def _where_time_went(span: Span, children: dict[str, list[Span]]) -> Span:
    """The span an error span's failure belongs to: itself, unless it failed waiting for a slow callee.

    A caller that times out marks its own span as the error while the slow callee's span ends fine (late); the
    origin of that error is the callee, or whichever span further down the time was spent in.
    """
    while True:
        slow = [
            c for c in children.get(span.span_id, []) if c.duration_ms >= SLOW_SHARE * span.duration_ms > 0
        ]
        if not slow:
            return span
        span = max(slow, key=lambda c: c.duration_ms)
