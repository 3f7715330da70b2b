"""Streaming anomaly detectors for one metric series: a score in [0, 1] and a sentence the analyst can cite.

Every detector keeps a fixed amount of state and does a fixed amount of work per point (nothing grows with the
series), so ``update(ts, value)`` is O(1) and one detector per metric can run indefinitely. ``batch(points)``
replays history through the same code, so a detector warmed on history goes on exactly as a live one would.

The detectors look at complementary things:

- ``RangeNovelty``: the value is outside everything seen so far (a new high or low).
- ``RobustLevel``: the value jumps away from the recent level (a spike or a dip).
- ``LevelShift``: the recent mean has moved away from the long-run mean (a change point).
- ``SeasonalBaseline``: the value is unusual for this time of day (or of the week), when the series has
  such a pattern.
- ``SpreadChange``: the series got much noisier or much calmer than usual.

Raw statistics are not comparable across detectors or series, so all but ``RangeNovelty`` pass theirs through
a ``RecordCalibrator``: a point scores when its statistic beats the largest one seen recently. Scores share
one scale, on which ``ALERT_LEVEL`` (0.5) is every detector's alert level. ``Ensemble`` takes the strongest
member and cites it. The method, its parameters and what they were tuned on are in docs/nab.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

ALERT_LEVEL = 0.5
"""The score at which a detector's evidence reaches its alert level; callers alert at or above it."""

QUIET = "within its usual range"
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True, slots=True)
class DetectorScore:
    """One point's verdict from one detector."""

    score: float
    """0 = nothing unusual, 1 = as anomalous as this detector can say; ``ALERT_LEVEL`` is the alert level."""
    explanation: str
    """A sentence with the numbers behind the score, fit to quote in an incident."""
    detector: str = ""
    """Which detector produced the score (for an ensemble: the strongest member)."""


@runtime_checkable
class Detector(Protocol):
    """A streaming detector: constant work per point, scores in [0, 1]."""

    name: str

    def update(self, ts: float, value: float) -> DetectorScore:
        """Score one new point (epoch seconds, value) and learn from it."""
        ...

    def batch(self, points: Iterable[tuple[float, float]]) -> list[DetectorScore]:
        """Score and learn a run of points in order, as repeated ``update`` calls would."""
        ...


def _fmt(x: float) -> str:
    return f"{x:.4g}"


class StreamingDetector:
    """Base of the detectors here: ``update`` and ``batch`` on top of a cheap ``step`` and a lazy ``explain``.

    A subclass implements ``step`` (score a point, then learn from it) and ``explain`` (describe the last point
    that scored above 0). ``Ensemble`` calls ``step`` on its members and asks only the strongest to explain.
    """

    name = "detector"

    def step(self, ts: float, value: float) -> float:
        """Score one point and learn from it; the explanation is built only on demand."""
        raise NotImplementedError

    def explain(self) -> str:
        """The explanation of the last scored point."""
        raise NotImplementedError

    def update(self, ts: float, value: float) -> DetectorScore:
        """Score one new point and learn from it."""
        if not math.isfinite(value):
            return DetectorScore(0.0, f"value {value!r} is not a number; skipped", self.name)
        score = self.step(ts, value)
        return DetectorScore(score, self.explain() if score > 0.0 else QUIET, self.name)

    def batch(self, points: Iterable[tuple[float, float]]) -> list[DetectorScore]:
        """Score and learn a run of points in order (same state and results as calling ``update``)."""
        return [self.update(ts, value) for ts, value in points]


class _Resolution:
    """The smallest step the series has moved by: a floor for scales, so a flat series cannot divide by 0."""

    __slots__ = ("last", "step")

    def __init__(self) -> None:
        self.last: float | None = None
        self.step = math.inf

    def see(self, value: float) -> float:
        """Learn from one value; return half the smallest non-zero step seen (or a tiny constant)."""
        if self.last is not None:
            d = abs(value - self.last)
            if 0.0 < d < self.step:
                self.step = d
        self.last = value
        return (0.5 * self.step if self.step < math.inf else 0.0) + 1e-9


class _Ew:
    """An exponentially weighted mean corrected for starting at zero: its first values are plain averages."""

    __slots__ = ("acc", "alpha", "weight")

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.acc = 0.0
        self.weight = 0.0

    def add(self, x: float) -> None:
        """Learn one observation."""
        self.acc += self.alpha * (x - self.acc)
        self.weight += self.alpha * (1.0 - self.weight)

    def get(self) -> float:
        """The current mean (0 before any observation)."""
        return self.acc / self.weight if self.weight > 0.0 else 0.0


def _half_life_decay(points: float) -> float:
    return 0.5 ** (1.0 / points) if points > 0 and math.isfinite(points) else 1.0


class RecordCalibrator:
    """Turns a raw statistic (>= 0) into a score by how far it beats the largest value seen recently.

    The reference is the larger of the maximum with a short memory (exponential decay, ``short_half_life``
    points) and ``long_share`` times the maximum with a long memory. A statistic at ``alert_ratio`` times the
    reference scores ``ALERT_LEVEL``; anything at or under the reference scores 0. Nothing scores during the
    first ``quiet_points`` points, while the reference settles.
    """

    __slots__ = (
        "alert_ratio",
        "d_long",
        "d_short",
        "long",
        "long_share",
        "n",
        "quiet_points",
        "short",
        "track_after",
    )

    def __init__(
        self,
        short_half_life: float = 350.0,
        long_half_life: float = 14000.0,
        long_share: float = 0.8,
        alert_ratio: float = 1.27,
        track_after: int = 20,
        quiet_points: int = 150,
    ) -> None:
        self.short = 0.0
        self.long = 0.0
        self.d_short = _half_life_decay(short_half_life)
        self.d_long = _half_life_decay(long_half_life)
        self.long_share = long_share
        self.alert_ratio = alert_ratio
        self.track_after = track_after
        self.quiet_points = quiet_points
        self.n = 0

    def reference(self) -> float:
        """The value a statistic must beat to score at all."""
        return max(self.short, self.long_share * self.long)

    def __call__(self, z: float) -> float:
        """Score `z`, then remember it."""
        ref = self.reference()
        score = 0.0
        if self.n >= self.quiet_points and ref > 0.0 and z > ref:
            excess = z / ref - 1.0
            score = excess / (excess + self.alert_ratio - 1.0)
        if self.n >= self.track_after:
            self.short = max(self.short * self.d_short, z)
            self.long = max(self.long * self.d_long, z)
        self.n += 1
        return score


class RangeNovelty(StreamingDetector):
    """A value beyond the lowest or highest seen so far, by a share of the range seen so far.

    A margin of ``alert_margin`` (as a share of the range) scores ``ALERT_LEVEL``. The first ``warmup`` points
    only establish the range. Breaking a bound that was itself set moments ago is the same excursion going on,
    not a new one, so the margin counts in proportion age / (age + ``settle_points``), age being the points
    since that bound last moved.
    """

    name = "range_novelty"

    def __init__(self, alert_margin: float = 0.005, warmup: int = 20, settle_points: float = 10.0) -> None:
        self.alert_margin = alert_margin
        self.warmup = warmup
        self.settle_points = settle_points
        self.n = 0
        self.lo = math.inf
        self.hi = -math.inf
        self.lo_at = 0
        self.hi_at = 0
        self._last = (0.0, 0.0, 0.0, 0.0, 0)

    def step(self, ts: float, value: float) -> float:
        """Score one point against the range so far, then widen the range."""
        score = 0.0
        if self.n >= self.warmup:
            if value > self.hi:
                beyond, age = value - self.hi, self.n - self.hi_at
            elif value < self.lo:
                beyond, age = self.lo - value, self.n - self.lo_at
            else:
                beyond, age = 0.0, 0
            if beyond > 0.0:
                span = self.hi - self.lo
                share = beyond / span if span > 0.0 else math.inf
                settled = age / (age + self.settle_points) if self.settle_points > 0 else 1.0
                weighted = share * settled
                score = 1.0 if math.isinf(weighted) else weighted / (weighted + self.alert_margin)
                self._last = (value, self.lo, self.hi, share, age)
        if value > self.hi:
            self.hi, self.hi_at = value, self.n
        if value < self.lo:
            self.lo, self.lo_at = value, self.n
        self.n += 1
        return score

    def explain(self) -> str:
        """Which bound was broken, by how much, and how long it had held."""
        value, lo, hi, share, age = self._last
        if value > hi:
            side, bound = "above the highest value", hi
        else:
            side, bound = "below the lowest value", lo
        margin = (
            "(the series was flat until now)"
            if math.isinf(share)
            else f"by {share:.1%} of the range [{_fmt(lo)}, {_fmt(hi)}]"
        )
        held = f"({_fmt(bound)}, held for {age} points)"
        return f"{_fmt(value)} is {side} seen in {self.n - 1} points {held} {margin}"


class RobustLevel(StreamingDetector):
    """A jump away from the recent level, in units of the usual size of such jumps.

    The level is an exponentially weighted mean (weight ``level_alpha`` on the newest point); the scale is the
    exponentially weighted mean absolute deviation from that level (weight ``scale_alpha``). A point's
    statistic is |value - level| / scale, calibrated by ``RecordCalibrator``.
    """

    name = "robust_level"

    def __init__(
        self, level_alpha: float = 0.6, scale_alpha: float = 0.01, calibrator: RecordCalibrator | None = None
    ) -> None:
        self.level_alpha = level_alpha
        self.scale_alpha = scale_alpha
        self.calibrator = calibrator or RecordCalibrator()
        self.level: float | None = None
        self.scale = _Ew(scale_alpha)
        self.resolution = _Resolution()
        self._last = (0.0, 0.0, 0.0, 0.0)

    def step(self, ts: float, value: float) -> float:
        """Score the deviation from the level, then move the level and the scale."""
        floor = self.resolution.see(value)
        if self.level is None:
            self.level = value
        resid = value - self.level
        z = abs(resid) / max(self.scale.get(), floor)
        ref = self.calibrator.reference()
        score = self.calibrator(z)
        if score > 0.0:
            self._last = (value, self.level, z, ref)
        self.level += self.level_alpha * resid
        self.scale.add(abs(resid))
        return score

    def explain(self) -> str:
        """The jump in robust units, against the largest recent jump."""
        value, level, z, ref = self._last
        direction = "jumped up" if value > level else "dropped"
        return (
            f"value {direction} to {_fmt(value)} from a level of {_fmt(level)}: {z:.1f} robust deviations, "
            f"{z / ref:.1f}x the largest recent jump"
        )


class LevelShift(StreamingDetector):
    """A change point in the mean: the recent mean against the long-run mean, in long-run deviations.

    Two exponentially weighted means (``fast_alpha``, ``slow_alpha``) and the long-run mean absolute deviation
    (``scale_alpha``); the statistic |fast - slow| / scale is calibrated by ``RecordCalibrator``.
    """

    name = "level_shift"

    def __init__(
        self,
        fast_alpha: float = 0.1,
        slow_alpha: float = 0.002,
        scale_alpha: float = 0.005,
        calibrator: RecordCalibrator | None = None,
    ) -> None:
        self.fast_alpha = fast_alpha
        self.slow_alpha = slow_alpha
        self.scale_alpha = scale_alpha
        self.calibrator = calibrator or RecordCalibrator()
        self.fast: float | None = None
        self.slow = 0.0
        self.scale = _Ew(scale_alpha)
        self.resolution = _Resolution()
        self._last = (0.0, 0.0, 0.0, 0.0)

    def step(self, ts: float, value: float) -> float:
        """Score the gap between the recent and the long-run mean, then update both."""
        floor = self.resolution.see(value)
        if self.fast is None:
            self.fast = self.slow = value
        self.fast += self.fast_alpha * (value - self.fast)
        z = abs(self.fast - self.slow) / max(self.scale.get(), floor)
        ref = self.calibrator.reference()
        score = self.calibrator(z)
        if score > 0.0:
            self._last = (self.fast, self.slow, z, ref)
        dev = value - self.slow
        self.slow += self.slow_alpha * dev
        self.scale.add(abs(dev))
        return score

    def explain(self) -> str:
        """The shift of the recent mean in long-run deviations."""
        fast, slow, z, ref = self._last
        direction = "risen" if fast > slow else "fallen"
        return (
            f"the recent mean has {direction} to {_fmt(fast)} from a long-run mean of {_fmt(slow)}: "
            f"{z:.1f} long-run deviations, {z / ref:.1f}x the largest recent shift"
        )


class SeasonalBaseline(StreamingDetector):
    """A value unusual for its time of day, judged only when the series has a daily pattern.

    Each ``bucket_s``-second slot of the ``period_s`` cycle keeps its own exponentially weighted level (weight
    ``bucket_alpha`` per visit). The series counts as seasonal while the mean squared residual from the slot
    levels is below ``gate`` times the variance around a mean that forgets over one period; a random walk
    (where yesterday's value at this hour is merely a stale level) fails the test and the detector keeps
    quiet.
    """

    name = "seasonal_baseline"

    def __init__(
        self,
        period_s: float = 86400.0,
        bucket_s: float = 1800.0,
        bucket_alpha: float = 0.25,
        var_alpha: float = 0.005,
        gate: float = 0.5,
        min_visits: int = 1,
        calibrator: RecordCalibrator | None = None,
        name: str = "seasonal_baseline",
    ) -> None:
        self.name = name
        self.period_s = period_s
        self.bucket_s = bucket_s
        self.bucket_alpha = bucket_alpha
        self.var_alpha = var_alpha
        self.gate = gate
        self.min_visits = min_visits
        self.calibrator = calibrator or RecordCalibrator()
        self.slots: dict[int, list[float]] = {}
        self.mean: float | None = None
        self.last_ts: float | None = None
        self.step_s = 0.0
        self.total_var = _Ew(var_alpha)
        self.resid_var = _Ew(var_alpha)
        self.resolution = _Resolution()
        self._last = (0.0, 0.0, 0.0, 0.0, 0.0)

    def step(self, ts: float, value: float) -> float:
        """Score the residual from this slot's level, then update the slot and the variances."""
        floor = self.resolution.see(value)
        if self.mean is None:
            self.mean = value
        if self.last_ts is not None and ts > self.last_ts:
            gap = min(ts - self.last_ts, self.bucket_s)
            self.step_s = gap if self.step_s == 0.0 else self.step_s + 0.01 * (gap - self.step_s)
        self.last_ts = ts
        cycle, phase = divmod(ts, self.period_s)
        slot = int(phase // self.bucket_s)
        state = self.slots.get(slot)
        score = 0.0
        if state is None:
            self.slots[slot] = [value, 1.0, cycle]
        else:
            if cycle != state[2]:
                state[1] += 1.0
                state[2] = cycle
            resid = value - state[0]
            resid_var = self.resid_var.get()
            # The calibrator only sees points where the detector is active, so a gate that has just opened
            # does not compare its first residuals with a reference made of zeros.
            if state[1] > self.min_visits and resid_var < self.gate * self.total_var.get():
                z = abs(resid) / max(math.sqrt(resid_var), floor)
                ref = self.calibrator.reference()
                score = self.calibrator(z)
                if score > 0.0:
                    self._last = (value, state[0], z, ref, phase)
            state[0] += self.bucket_alpha * resid
            self.resid_var.add(resid * resid)
        # The comparison mean forgets over about one period: it follows a wandering level, not the cycle.
        per_period = self.period_s / self.step_s if self.step_s > 0.0 else 288.0
        dev = value - self.mean
        self.mean += (1.0 - _half_life_decay(per_period)) * dev
        self.total_var.add(dev * dev)
        return score

    def explain(self) -> str:
        """The residual from what this time of day usually looks like."""
        value, expected, z, ref, phase = self._last
        day, rest = divmod(int(phase), 86400)
        when = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}"
        if self.period_s > 86400.0:
            # Day 0 of the epoch (1970-01-01) was a Thursday.
            when = f"{_WEEKDAYS[(day + 3) % 7]} {when}"
        return (
            f"{_fmt(value)} at {when} UTC where about {_fmt(expected)} is usual for that time: "
            f"{z:.1f} seasonal deviations, {z / ref:.1f}x the largest recent one"
        )


class SpreadChange(StreamingDetector):
    """The series became much noisier or much calmer: short-run against long-run mean absolute change.

    Absolute residuals from a fast level (weight ``level_alpha``) are averaged with a short (``short_alpha``)
    and a long (``long_alpha``) memory; the statistic |log(short / long)| is calibrated by
    ``RecordCalibrator``.
    """

    name = "spread_change"

    def __init__(
        self,
        level_alpha: float = 0.3,
        short_alpha: float = 0.05,
        long_alpha: float = 0.005,
        calibrator: RecordCalibrator | None = None,
    ) -> None:
        self.level_alpha = level_alpha
        self.short_alpha = short_alpha
        self.long_alpha = long_alpha
        self.calibrator = calibrator or RecordCalibrator()
        self.level: float | None = None
        self.short = _Ew(short_alpha)
        self.long = _Ew(long_alpha)
        self.resolution = _Resolution()
        self._last = (0.0, 0.0, 0.0, 0.0)

    def step(self, ts: float, value: float) -> float:
        """Score the ratio of recent to long-run spread, then update both."""
        floor = self.resolution.see(value)
        if self.level is None:
            self.level = value
        dev = abs(value - self.level)
        self.level += self.level_alpha * (value - self.level)
        self.short.add(dev)
        self.long.add(dev)
        short, long = self.short.get(), self.long.get()
        z = abs(math.log((short + floor) / (long + floor)))
        ref = self.calibrator.reference()
        score = self.calibrator(z)
        if score > 0.0:
            self._last = (short, long, z, ref)
        return score

    def explain(self) -> str:
        """The spread ratio."""
        short, long, z, ref = self._last
        ratio = (short + 1e-12) / (long + 1e-12)
        kind = "noisier" if ratio > 1 else "calmer"
        return (
            f"the series is {kind}: recent mean absolute change {_fmt(short)} "
            f"against {_fmt(long)} in the long run "
            f"({ratio:.2g}x), {z / ref:.1f}x the largest recent change of spread"
        )


class Ensemble(StreamingDetector):
    """Runs several detectors on the same series and reports the strongest, citing it.

    All members score on the same scale (``ALERT_LEVEL`` = alert), so the combination is their maximum; the
    explanation names the strongest member and lists the other members at or above the alert level.
    """

    name = "ensemble"

    def __init__(self, members: Sequence[StreamingDetector]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one detector")
        self.members = list(members)
        self._scores = [0.0] * len(self.members)

    def step(self, ts: float, value: float) -> float:
        """Every member scores the point; the ensemble's score is the largest."""
        best = 0.0
        for i, member in enumerate(self.members):
            s = member.step(ts, value)
            self._scores[i] = s
            best = max(best, s)
        return best

    def top(self) -> StreamingDetector:
        """The member with the largest score on the last point."""
        return self.members[max(range(len(self.members)), key=self._scores.__getitem__)]

    def explain(self) -> str:
        """The strongest member's explanation, plus the names of the others that also alert."""
        top = self.top()
        also = [
            m.name
            for m, s in zip(self.members, self._scores, strict=True)
            if m is not top and s >= ALERT_LEVEL
        ]
        text = f"{top.name} {self._scores[self.members.index(top)]:.2f}: {top.explain()}"
        return text + (f" (also alerting: {', '.join(also)})" if also else "")

    def update(self, ts: float, value: float) -> DetectorScore:
        """Score one point; the verdict is attributed to the strongest member."""
        if not math.isfinite(value):
            return DetectorScore(0.0, f"value {value!r} is not a number; skipped", self.name)
        score = self.step(ts, value)
        if score <= 0.0:
            return DetectorScore(0.0, QUIET, self.name)
        return DetectorScore(score, self.explain(), self.top().name)


def default_ensemble() -> Ensemble:
    """The ensemble ``sregraph bench nab`` measures; its parameters are documented in docs/nab.md."""
    return Ensemble(
        [
            RangeNovelty(),
            RobustLevel(),
            LevelShift(),
            SeasonalBaseline(),
            SeasonalBaseline(period_s=7 * 86400.0, bucket_s=3600.0, name="weekly_baseline"),
            SpreadChange(),
        ]
    )
