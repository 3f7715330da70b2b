"""Streaming detectors: what they flag, what they leave alone, and that each point costs the same work."""

from __future__ import annotations

import math
import pickle
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import numpy as np
import pytest

from agents.detection.detectors import (
    ALERT_LEVEL,
    QUIET,
    Detector,
    DetectorScore,
    Ensemble,
    LevelShift,
    RangeNovelty,
    RecordCalibrator,
    RobustLevel,
    SeasonalBaseline,
    SpreadChange,
    default_ensemble,
)

T0 = 1_400_000_000.0  # a Tuesday, 16:53 UTC
STEP = 300.0
FACTORIES: dict[str, Callable[[], Any]] = {
    "range_novelty": RangeNovelty,
    "robust_level": RobustLevel,
    "level_shift": LevelShift,
    "seasonal_baseline": SeasonalBaseline,
    "spread_change": SpreadChange,
    "ensemble": default_ensemble,
}


def stamps(n: int) -> list[float]:
    return [T0 + STEP * i for i in range(n)]


def run(detector: Any, values: np.ndarray) -> list[DetectorScore]:
    return detector.batch(zip(stamps(len(values)), values.tolist(), strict=True))


def noise(n: int, seed: int, sd: float = 1.0) -> np.ndarray:
    return 10.0 + np.random.default_rng(seed).normal(0.0, sd, n)


@pytest.mark.parametrize("name", FACTORIES)
def test_every_detector_follows_the_protocol(name: str) -> None:
    det = FACTORIES[name]()
    assert isinstance(det, Detector)
    out = run(det, noise(300, 0))
    assert len(out) == 300
    assert all(isinstance(o, DetectorScore) and 0.0 <= o.score <= 1.0 and o.explanation for o in out)


@pytest.mark.parametrize("name", FACTORIES)
def test_batch_gives_what_streaming_gives(name: str) -> None:
    values = noise(2000, 1)
    values[1500:] += 6
    streamed = FACTORIES[name]()
    live = [streamed.update(t, v) for t, v in zip(stamps(2000), values.tolist(), strict=True)]
    batched = run(FACTORIES[name](), values)
    assert [o.score for o in live] == [o.score for o in batched]
    assert [o.explanation for o in live] == [o.explanation for o in batched]


def test_level_shift_is_flagged_at_once_with_an_explanation() -> None:
    values = noise(4000, 2)
    values[3000:] += 8.0  # eight standard deviations
    out = run(default_ensemble(), values)
    assert out[3000].score >= ALERT_LEVEL
    assert out[3000].detector == "range_novelty"
    assert "above the highest value" in out[3000].explanation
    assert f"{values[3000]:.4g}" in out[3000].explanation
    for factory in (RobustLevel, LevelShift):
        scores = [o.score for o in run(factory(), values)]
        assert max(scores[3000:3010]) >= ALERT_LEVEL, factory.__name__


def test_a_shift_inside_the_usual_range_is_found_by_the_change_point_detector() -> None:
    # Two outliers at the very start teach a wide range [-10, 30]; later the mean moves up by 4 sd, inside it.
    values = noise(3000, 4)
    values[5], values[10] = 30.0, -10.0
    values[2500:] += 4.0
    assert max(o.score for o in run(RangeNovelty(), values)[2500:]) == 0.0
    out = run(LevelShift(), values)
    first = next(i for i, o in enumerate(out) if i >= 2500 and o.score >= ALERT_LEVEL)
    assert first < 2520
    assert "recent mean has risen" in out[first].explanation
    assert sum(o.score >= ALERT_LEVEL for o in out[500:2500]) <= 2


@pytest.mark.parametrize("name", FACTORIES)
def test_stationary_noise_is_mostly_quiet(name: str) -> None:
    alerts = 0
    scored = 0
    for seed in range(3):
        out = run(FACTORIES[name](), noise(5000, seed))
        alerts += sum(o.score >= ALERT_LEVEL for o in out[500:])
        scored += len(out) - 500
    assert alerts / scored < 0.002, f"{name}: {alerts} alerts in {scored} points"


def test_quiet_points_say_so() -> None:
    out = run(default_ensemble(), noise(1000, 5))
    quiet = [o for o in out if o.score == 0.0]
    assert quiet and all(o.explanation == QUIET for o in quiet)


def test_flat_series_does_not_divide_by_zero_and_a_step_is_certain() -> None:
    values = np.full(2000, 5.0)
    values[1500] = 6.0
    out = run(default_ensemble(), values)
    assert all(o.score == 0.0 for o in out[:1500])
    assert out[1500].score == 1.0
    assert "flat" in out[1500].explanation


def test_non_numbers_are_skipped_without_learning() -> None:
    det = default_ensemble()
    run(det, noise(500, 6))
    before = pickle.dumps(det)
    got = det.update(T0, math.nan)
    assert got.score == 0.0 and "not a number" in got.explanation
    assert pickle.dumps(det) == before


def daily(n: int, seed: int) -> np.ndarray:
    phase = (np.array(stamps(n)) % 86400) / 86400
    return 10 + 5 * np.sin(2 * np.pi * phase) + np.random.default_rng(seed).normal(0, 0.3, n)


def test_seasonal_baseline_flags_a_missing_daily_peak() -> None:
    values = daily(4032, 7)  # 14 days of 5-minute points
    peak = [i for i in range(3456, 3744) if values[i] > 14.5]  # day 12's peak, which stays in range
    values[peak[0] : peak[0] + 24] = 10.0  # the peak does not happen: the value sits at the daily mean
    out = run(SeasonalBaseline(), values)
    hit = max(range(peak[0], peak[0] + 24), key=lambda i: out[i].score)
    assert out[hit].score >= ALERT_LEVEL
    assert "usual for that time" in out[hit].explanation and "UTC" in out[hit].explanation
    assert max(o.score for o in run(RangeNovelty(), values)[peak[0] : peak[0] + 24]) == 0.0


def test_seasonal_baseline_rarely_speaks_on_a_random_walk() -> None:
    # A random walk has no daily pattern: yesterday's value at this hour is just a stale level.
    alerts = 0
    for seed in range(5):
        walk = 100 + np.cumsum(np.random.default_rng(seed).normal(0, 1, 4032))
        alerts += sum(o.score >= ALERT_LEVEL for o in run(SeasonalBaseline(), walk))
    assert alerts <= 5


def test_weekly_baseline_names_the_weekday() -> None:
    det = SeasonalBaseline(period_s=7 * 86400.0, bucket_s=3600.0, name="weekly_baseline")
    det._last = (3.0, 9.0, 6.0, 2.0, 4 * 86400 + 9 * 3600.0)  # epoch day 4 was a Monday
    assert det.explain().startswith("3 at Mon 09:00 UTC")


def test_spread_change_flags_a_noisier_series() -> None:
    values = np.concatenate([noise(3000, 9, sd=1.0), noise(1000, 10, sd=6.0)])
    out = run(SpreadChange(), values)
    first = next(i for i, o in enumerate(out) if i >= 3000 and o.score >= ALERT_LEVEL)
    assert first < 3060
    assert "noisier" in out[first].explanation


def test_record_calibrator_scale() -> None:
    cal = RecordCalibrator(
        short_half_life=math.inf,
        long_half_life=math.inf,
        long_share=1.0,
        alert_ratio=2.0,
        track_after=0,
        quiet_points=10,
    )
    assert [cal(1.0) for _ in range(10)] == [0.0] * 10  # quiet while it settles
    assert cal(1.0) == 0.0  # equal to the reference: nothing
    assert cal(2.0) == pytest.approx(ALERT_LEVEL)  # alert_ratio times the reference
    assert cal(2.0) == 0.0  # the reference is now 2
    assert cal(8.0) == pytest.approx(3 / 4)


def test_ensemble_cites_its_strongest_member() -> None:
    values = noise(3000, 11)
    values[2500] = 40.0
    det = default_ensemble()
    out = run(det, values)[2500]
    assert out.score >= ALERT_LEVEL
    assert out.detector in {m.name for m in det.members}
    assert out.explanation.startswith(out.detector)
    assert "also alerting" in out.explanation
    with pytest.raises(ValueError):
        Ensemble([])


def lines_executed(det: Any, points: list[tuple[float, float]]) -> int:
    """The most source lines any one of `points` took to process: a deterministic measure of work."""
    worst = 0
    for ts, value in points:
        count = 0

        def tracer(frame: FrameType, event: str, arg: object) -> Any:
            nonlocal count
            if event == "line":
                count += 1
            return tracer

        sys.settrace(tracer)
        try:
            det.update(ts, value)
        finally:
            sys.settrace(None)
        worst = max(worst, count)
    return worst


def test_work_and_memory_per_point_do_not_grow_with_history() -> None:
    n = 30_000
    values = noise(n, 12)
    points = list(zip(stamps(n), values.tolist(), strict=True))
    det = default_ensemble()
    det.batch(points[:3000])  # past every warm-up; every daily and weekly slot has been visited
    early_work = lines_executed(det, points[3000:3200])
    early_size = len(pickle.dumps(det))
    det.batch(points[3200:29_800])
    late_work = lines_executed(det, points[29_800:])
    late_size = len(pickle.dumps(det))
    assert late_work <= early_work
    assert late_size <= early_size + 64


def test_a_climb_that_keeps_setting_new_highs_alerts_once() -> None:
    values = noise(2000, 13)
    values[1500:1600] = 20.0 + 0.1 * np.arange(100)  # a jump, then a new high on every point
    scores = [o.score for o in run(RangeNovelty(), values)]
    assert scores[1500] >= ALERT_LEVEL
    assert sum(s >= ALERT_LEVEL for s in scores[1501:1600]) == 0
