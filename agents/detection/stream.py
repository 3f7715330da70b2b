"""The observer's streaming sense: one detector ensemble per (service, metric), fed as telemetry arrives.

The window rule in `agents.detection.window` compares a recent window's median with the baseline's; it needs the
trouble to fill half the window before it moves. The ensemble (`agents.detection.detectors`, measured on NAB in
docs/nab.md) scores every new point as it arrives, so a level shift, spike or new extreme can be seen on its
first points. It is fed the same points the window rule fetched (no extra queries), keeps constant state per
series, and warms on the history it first sees.

Statistical surprise alone is not an incident: a flat series makes any wiggle surprising. A series alerts only
when its ensemble scores at `ALERT_LEVEL` or more *and* its latest value is worse than the baseline median by
at least `gate` times the metric's smallest change that matters (`MetricRule.floor`, or its relative floor).
Once raised, the alert holds while that effect lasts, so the observer's confirmation (consecutive polls over a
minimum time) applies to it as to any other signal.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from agents.detection.detectors import (
    ALERT_LEVEL,
    DetectorScore,
    Ensemble,
    LevelShift,
    RangeNovelty,
    RecordCalibrator,
    RobustLevel,
    SpreadChange,
)
from agents.detection.rules import RULES


def live_ensemble(warmup_points: int = 40) -> Ensemble:
    """The ensemble for live, seconds-apart telemetry: NAB's detectors with warm-ups sized to the history.

    NAB's tuning (`default_ensemble`) waits 150 points before scoring, and its seasonal members need days of
    data; live series are judged after `warmup_points` points, without the seasonal members.
    """

    def calibrator() -> RecordCalibrator:
        return RecordCalibrator(
            short_half_life=200.0, track_after=max(5, warmup_points // 4), quiet_points=warmup_points
        )

    return Ensemble(
        [
            RangeNovelty(warmup=warmup_points),
            RobustLevel(calibrator=calibrator()),
            LevelShift(slow_alpha=0.02, calibrator=calibrator()),
            SpreadChange(calibrator=calibrator()),
        ]
    )


@dataclass
class SeriesAlert:
    """A series the ensemble flagged and whose effect still holds."""

    service: str
    metric: str
    score: float
    """The ensemble's score on the point that raised the alert (0-1, `ALERT_LEVEL` = alert)."""
    detector: str
    explanation: str
    raised_at: float
    value: float
    baseline: float


@dataclass
class _Series:
    ensemble: Ensemble
    last_ts: float = float("-inf")
    alert: SeriesAlert | None = None


class MetricSense:
    """Detector ensembles for every series the observer watches; thread-safe (the worker's scan and incident
    threads share one observer)."""

    def __init__(self, warmup_points: int = 40, gate: float = 2.0) -> None:
        self.warmup_points = warmup_points
        self.gate = gate
        self._series: dict[tuple[str, str], _Series] = {}
        self._lock = threading.Lock()
        self.points_seen = 0

    def effect_floor(self, metric: str, baseline: float) -> float:
        """The smallest worsening that can raise or hold an alert on this metric."""
        rule = RULES[metric]
        return self.gate * max(rule.floor, rule.relative_floor * abs(baseline))

    def _worse_by(self, metric: str, value: float, baseline: float) -> float:
        rule = RULES[metric]
        if rule.mode == "growth":
            return value - baseline  # memory: growth above where the baseline sat
        return rule.direction * (value - baseline)

    def feed(
        self, service: str, metric: str, points: list[tuple[float, float]], baseline: float, since: float
    ) -> SeriesAlert | None:
        """Learn the points not seen yet; return the series' alert if one is raised or still holds.

        `baseline` is the baseline window's median, `since` the start of the recent window: only points in it
        can raise an alert (older ones only teach the detectors what normal looks like).
        """
        with self._lock:
            series = self._series.get((service, metric))
            if series is None:
                series = self._series[(service, metric)] = _Series(live_ensemble(self.warmup_points))
            floor = self.effect_floor(metric, baseline)
            for ts, value in points:
                if ts <= series.last_ts:
                    continue
                series.last_ts = ts
                self.points_seen += 1
                verdict: DetectorScore = series.ensemble.update(ts, value)
                if (
                    ts < since
                    or verdict.score < ALERT_LEVEL
                    or self._worse_by(metric, value, baseline) < floor
                ):
                    continue
                if series.alert is None or verdict.score > series.alert.score:
                    series.alert = SeriesAlert(
                        service,
                        metric,
                        round(verdict.score, 3),
                        verdict.detector,
                        verdict.explanation,
                        ts,
                        value,
                        baseline,
                    )
            alert = series.alert
            if alert is None or not points:
                return alert
            latest = points[-1][1]
            if self._worse_by(metric, latest, baseline) < floor:
                series.alert = None  # the effect is gone: whatever comes next must raise a new alert
                return None
            alert.value = latest
            return alert

    def clear(self) -> None:
        """Forget every alert (detector state is kept: it is what normal looks like)."""
        with self._lock:
            for series in self._series.values():
                series.alert = None
