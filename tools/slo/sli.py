"""SLIs from the telemetry store: bad and total events of one SLO per interval, downtime as failed
requests, and window counts by bisection (definitions in docs/slo.md)."""

from __future__ import annotations

import statistics
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate, pairwise

from tools.base import Series, Telemetry
from tools.slo.spec import SLO

GAP_TICKS = 4.0
"""A silence longer than this many sampling intervals is downtime (availability SLI only)."""
_RATE_LOOKBACK = 10
"""Samples averaged to estimate the request rate a silent service would have served."""


@dataclass(frozen=True)
class WindowCounts:
    """Bad and total events in one window, and how much of the window the data spans."""

    window_s: float
    bad: float
    total: float
    coverage: float

    @property
    def error_ratio(self) -> float | None:
        """bad / total, None without events."""
        return self.bad / self.total if self.total > 0 else None


@dataclass(frozen=True)
class Downtime:
    """A stretch with no telemetry from a service that was serving, counted as failed requests at `rate`/s."""

    start: float
    end: float
    rate: float


class Events:
    """Bad and total events of one SLI in time order, with prefix sums so each window costs a bisection."""

    def __init__(
        self, samples: Iterable[tuple[float, float, float]], downtime: Iterable[Downtime] = ()
    ) -> None:
        """Index `samples`, (time, bad, total) events counted over the interval ending at `time`."""
        ordered = sorted(samples)
        self._t = [s[0] for s in ordered]
        self._bad = list(accumulate((s[1] for s in ordered), initial=0.0))
        self._total = list(accumulate((s[2] for s in ordered), initial=0.0))
        self.downtime = list(downtime)
        edges = self._t + [d.start for d in self.downtime] + [d.end for d in self.downtime]
        self.first = min(edges) if edges else None
        self.last = max(edges) if edges else None

    def window(self, end: float, length: float) -> WindowCounts:
        """Events in (end - length, end]."""
        start = end - length
        i, j = bisect_right(self._t, start), bisect_right(self._t, end)
        bad, total = self._bad[j] - self._bad[i], self._total[j] - self._total[i]
        for d in self.downtime:
            overlap = max(0.0, min(end, d.end) - max(start, d.start))
            bad += overlap * d.rate
            total += overlap * d.rate
        coverage = 0.0
        if self.first is not None and self.last is not None and self.first < end and self.last > start:
            coverage = (min(end, self.last) - max(start, self.first)) / length
        return WindowCounts(window_s=length, bad=bad, total=total, coverage=min(1.0, max(0.0, coverage)))


_SLI_METRIC: dict[str, str] = {
    "availability": "error_ratio",
    "error_rate": "error_ratio",
    "latency": "latency_p95_ms",
    "conversion": "conversion_ratio",
}
"""The store metric each SLI kind reads next to `request_rate`."""


class MetricCache:
    """Each metric read once, for every service, over the evaluation range; SLOs then share the reads."""

    def __init__(self, telemetry: Telemetry, start: float, end: float) -> None:
        """Read from `telemetry` over [start, end], lazily."""
        self.telemetry, self.start, self.end = telemetry, start, end
        self._cache: dict[str, list[Series]] = {}

    def series(self, metric: str, service: str | None = None) -> list[Series]:
        """Series of `metric` (of one service, or all)."""
        if metric not in self._cache:
            self._cache[metric] = self.telemetry.query_range(metric, None, self.start, self.end)
        found = self._cache[metric]
        return found if service is None else [s for s in found if s.labels.get("service") == service]

    def freshest(self) -> float | None:
        """The newest request_rate sample of any service: how far the telemetry pipeline itself reaches."""
        ends = [s.points[-1][0] for s in self.series("request_rate") if s.points]
        return max(ends) if ends else None


def _spacing(times: Sequence[float]) -> float:
    diffs = [b - a for a, b in pairwise(times) if b > a]
    return statistics.median(diffs) if diffs else 1.0


def sli_events(slo: SLO, queries: MetricCache) -> Events:
    """Bad and total requests of one SLO from the store's per-interval rates (definitions in docs/slo.md)."""
    metric = _SLI_METRIC[slo.sli]
    by_labels = {tuple(sorted(s.labels.items())): dict(s.points) for s in queries.series(metric, slo.service)}
    samples: list[tuple[float, float, float]] = []
    downtime: list[Downtime] = []
    tails: list[tuple[float, float, float]] = []  # (last time, spacing, recent rate) of each series
    for rate_series in queries.series("request_rate", slo.service):
        points = rate_series.points
        if not points:
            continue
        values = by_labels.get(tuple(sorted(rate_series.labels.items())), {})
        times = [t for t, _ in points]
        spacing = _spacing(times)
        for k, (t, rate) in enumerate(points):
            dt = t - points[k - 1][0] if k else spacing
            if dt > GAP_TICKS * spacing:
                if slo.sli == "availability":
                    downtime.append(Downtime(points[k - 1][0], t - spacing, _recent_rate(points, k)))
                dt = spacing
            x = values.get(t)
            if x is None:
                continue
            total = max(0.0, rate) * dt
            samples.append((t, total * _bad_share(slo, x), total))
        tails.append((points[-1][0], spacing, _recent_rate(points, len(points))))
    if slo.sli == "availability" and tails:
        # Silence at the end is downtime only while other services still report: a stopped telemetry
        # pipeline (the whole app down, or an old store) is unknown, not an outage.
        last = max(t for t, _, _ in tails)
        spacing = min(s for t, s, _ in tails if t == last)
        freshest = queries.freshest()
        if freshest is not None and freshest - last > GAP_TICKS * spacing:
            rate = sum(r for t, s, r in tails if last - t <= GAP_TICKS * s)
            downtime.append(Downtime(last, freshest, rate))
    return Events(samples, downtime)


def _recent_rate(points: Sequence[tuple[float, float]], before: int) -> float:
    recent = [max(0.0, v) for _, v in points[max(0, before - _RATE_LOOKBACK) : before]]
    return statistics.fmean(recent) if recent else 0.0


def _bad_share(slo: SLO, x: float) -> float:
    """Share of an interval's requests that were bad, given the SLI metric's value `x` for the interval."""
    if slo.sli in ("availability", "error_rate"):
        return min(1.0, max(0.0, x))
    if slo.sli == "latency":
        assert slo.threshold_ms is not None
        return 1.0 if x > slo.threshold_ms else 0.0
    return 1.0 - min(1.0, max(0.0, x))  # conversion: the ratio is the good share
