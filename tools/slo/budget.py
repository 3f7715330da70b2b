"""Error-budget maths, plain arithmetic over numbers the caller supplies: burn rates, budget left, the
multiwindow multi-burn-rate alert pairs, and the forecast of when the budget runs out (docs/slo.md)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from tools.slo.durations import format_duration


@dataclass(frozen=True)
class AlertPair:
    """One multiwindow burn-rate alert: fires when both windows burn faster than `factor(window)`."""

    severity: Literal["page", "ticket"]
    budget_fraction: float
    """Share of the whole window's error budget that burning at the threshold spends in `long_s`."""
    long_s: float
    short_s: float

    def factor(self, slo_window_s: float) -> float:
        """Burn-rate threshold: budget_fraction x SLO window / long window (14.4 for 2% of 30d in 1h)."""
        return round(self.budget_fraction * slo_window_s / self.long_s, 6)

    @property
    def label(self) -> str:
        """Short name such as `1h/5m`."""
        return f"{format_duration(self.long_s)}/{format_duration(self.short_s)}"


ALERT_PAIRS: tuple[AlertPair, ...] = (
    AlertPair("page", 0.02, 3600, 300),  # 14.4x over a 30d window
    AlertPair("page", 0.05, 6 * 3600, 1800),  # 6x
    AlertPair("ticket", 0.10, 86400, 7200),  # 3x
    AlertPair("ticket", 0.10, 3 * 86400, 6 * 3600),  # 1x
)
"""The Google SRE workbook pairs; the factors follow from the budget fractions for any SLO window."""

BURN_WINDOWS_S: tuple[float, ...] = tuple(
    sorted({p.long_s for p in ALERT_PAIRS} | {p.short_s for p in ALERT_PAIRS})
)
"""5m, 30m, 1h, 2h, 6h, 1d, 3d: every window an alert pair reads, and the spread the forecast uses."""
MIN_SLO_WINDOW_S = max(BURN_WINDOWS_S)


def burn_rate(error_ratio: float, target: float) -> float:
    """How many times faster than sustainable the budget burns: error ratio / (1 - target)."""
    return error_ratio / round(1.0 - target, 12)


def budget_remaining(error_ratio: float, target: float) -> float:
    """Share of the window's error budget left, 1 - error ratio / (1 - target); negative when overspent."""
    return 1.0 - burn_rate(error_ratio, target)


class AlertState(BaseModel):
    """One multiwindow alert pair, evaluated."""

    severity: Literal["page", "ticket"]
    long_window: str
    short_window: str
    factor: float
    long_burn: float | None
    short_burn: float | None
    firing: bool


def evaluate_alerts(burn_rates: Mapping[float, float | None], slo_window_s: float) -> list[AlertState]:
    """Each alert pair fires when the burn rate of both its long and short window exceeds its factor."""
    states = []
    for pair in ALERT_PAIRS:
        factor = pair.factor(slo_window_s)
        long_b, short_b = burn_rates.get(pair.long_s), burn_rates.get(pair.short_s)
        firing = long_b is not None and short_b is not None and long_b > factor and short_b > factor
        states.append(
            AlertState(
                severity=pair.severity,
                long_window=format_duration(pair.long_s),
                short_window=format_duration(pair.short_s),
                factor=factor,
                long_burn=long_b,
                short_burn=short_b,
                firing=firing,
            )
        )
    return states


class Forecast(BaseModel):
    """When the rest of the error budget runs out if the service keeps burning as it has lately.

    Hours from now; None means "not at the current rates" (nothing burning). `earliest_h`/`latest_h` come
    from the fastest and slowest of the burn-rate windows, `hours` from their median.
    """

    hours: float | None
    earliest_h: float | None
    latest_h: float | None
    burn_central: float | None
    burn_low: float | None
    burn_high: float | None
    exhausted: bool = False
    windows_used: int = 0


def forecast_exhaustion(
    remaining: float | None, burn_rates: Iterable[float | None], slo_window_s: float
) -> Forecast:
    """Hours until the budget is spent at the median burn rate, bounded by the fastest and slowest windows.

    At burn rate b the budget drains b / window per unit of time, so `remaining` lasts remaining x window / b.
    """
    rates = sorted(b for b in burn_rates if b is not None)
    if remaining is None or not rates:
        return Forecast(
            hours=None, earliest_h=None, latest_h=None, burn_central=None, burn_low=None, burn_high=None
        )
    central, low, high = statistics.median(rates), rates[0], rates[-1]
    if remaining <= 0:
        return Forecast(
            hours=0.0,
            earliest_h=0.0,
            latest_h=0.0,
            burn_central=central,
            burn_low=low,
            burn_high=high,
            exhausted=True,
            windows_used=len(rates),
        )
    window_h = slo_window_s / 3600.0

    def eta(b: float) -> float | None:
        return remaining * window_h / b if b > 0 else None

    return Forecast(
        hours=eta(central),
        earliest_h=eta(high),
        latest_h=eta(low),
        burn_central=central,
        burn_low=low,
        burn_high=high,
        windows_used=len(rates),
    )
