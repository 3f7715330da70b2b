"""The release gate's table: one SLO's state (SAFE, OBSERVE, DANGER, FREEZE) and why, from its budget,
alerts and forecast; the first matching row of the table in docs/slo.md wins."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

from tools.slo.budget import MIN_SLO_WINDOW_S, AlertState, Forecast
from tools.slo.durations import format_duration
from tools.slo.spec import GatePolicy

GateState = Literal["SAFE", "OBSERVE", "DANGER", "FREEZE"]

GATE_ORDER: dict[GateState, int] = {"SAFE": 0, "OBSERVE": 1, "DANGER": 2, "FREEZE": 3}
GATE_EXIT_CODES: dict[GateState, int] = {"SAFE": 0, "OBSERVE": 0, "DANGER": 3, "FREEZE": 4}
"""Exit status of `sregraph release-gate`: deploys go ahead on 0; 2 is reserved for a bad file or store."""


def decide_gate(
    remaining: float | None,
    alerts: Sequence[AlertState],
    forecast: Forecast,
    burn_rates: Iterable[float | None],
    policy: GatePolicy,
) -> tuple[GateState, list[str]]:
    """The release-gate state of one SLO and why; the first matching row of the table in docs/slo.md wins."""
    rates = [b for b in burn_rates if b is not None]
    if remaining is None:
        return "OBSERVE", ["no telemetry in the SLO window; the gate cannot judge"]
    pct = f"{remaining:.0%}"
    freeze = []
    if remaining <= 0:
        freeze.append(f"error budget exhausted ({pct} left)")
    freeze += [_alert_reason(a) for a in alerts if a.firing and a.severity == "page"]
    if freeze:
        return "FREEZE", freeze
    danger = [_alert_reason(a) for a in alerts if a.firing and a.severity == "ticket"]
    if remaining < policy.danger_budget_below:
        danger.append(f"only {pct} of the error budget left (< {policy.danger_budget_below:.0%})")
    if forecast.hours is not None and forecast.hours * 3600 < policy.danger_exhaustion_s:
        danger.append(
            f"budget forecast to run out in {forecast.hours:.1f}h (< {policy.danger_exhaustion_within}; "
            f"range {_hours(forecast.earliest_h)} to {_hours(forecast.latest_h)})"
        )
    if danger:
        return "DANGER", danger
    observe = []
    if not rates:
        observe.append(f"no telemetry in the last {format_duration(MIN_SLO_WINDOW_S)}; burn rates unknown")
    if remaining < policy.observe_budget_below:
        observe.append(f"{pct} of the error budget left (< {policy.observe_budget_below:.0%})")
    if rates and max(rates) > 1:
        observe.append(
            f"burning {max(rates):.1f}x the sustainable rate in some window, not confirmed by an alert pair"
        )
    if observe:
        return "OBSERVE", observe
    return "SAFE", [f"{pct} of the error budget left; no window burning faster than sustainable"]


def _alert_reason(alert: AlertState) -> str:
    return (
        f"{alert.severity} alert: burn {alert.long_burn:.1f}x over {alert.long_window} and "
        f"{alert.short_burn:.1f}x over {alert.short_window} (> {alert.factor:g}x)"
    )


def _hours(h: float | None) -> str:
    return "never" if h is None else f"{h:.1f}h"
