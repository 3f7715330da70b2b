"""Every SLO evaluated at one instant over the telemetry store (budget, burn rates, alerts, forecast, gate
state), and a service's release gate: the worst state of its SLOs. The one place that reads telemetry."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from tools.base import Telemetry
from tools.slo.budget import (
    BURN_WINDOWS_S,
    MIN_SLO_WINDOW_S,
    AlertState,
    Forecast,
    budget_remaining,
    burn_rate,
    evaluate_alerts,
    forecast_exhaustion,
)
from tools.slo.durations import format_duration
from tools.slo.gate import GATE_EXIT_CODES, GATE_ORDER, GateState, decide_gate
from tools.slo.sli import MetricCache, WindowCounts, sli_events
from tools.slo.spec import SLO, GatePolicy, SliKind, SloFile


class BurnRate(BaseModel):
    """Burn rate of one window."""

    window: str
    burn_rate: float | None
    error_ratio: float | None
    coverage: float


class SloStatus(BaseModel):
    """Everything `slo status` and the release gate know about one SLO at one instant."""

    name: str
    service: str
    sli: SliKind
    target: float
    window: str
    evaluated_at: float
    error_ratio: float | None
    """Bad/total over the whole compliance window (over the data there is, see coverage)."""
    budget_remaining: float | None
    """Share of the window's budget left: 1 - error_ratio / (1 - target); negative once overspent."""
    budget_minutes: float
    """The budget as minutes of total outage per window: (1 - target) x window."""
    coverage: float
    """Share of the compliance window the telemetry spans."""
    burn_rates: list[BurnRate]
    alerts: list[AlertState]
    forecast: Forecast
    state: GateState
    reasons: list[str]


def evaluate_slo(slo: SLO, queries: MetricCache, now: float, policy: GatePolicy) -> SloStatus:
    """Budget, burn rates, alert pairs, forecast and gate state of one SLO at `now`."""
    events = sli_events(slo, queries)
    period = events.window(now, slo.window_s)
    by_window: dict[float, WindowCounts] = {w: events.window(now, w) for w in BURN_WINDOWS_S}
    burns: dict[float, float | None] = {
        w: (None if c.error_ratio is None else burn_rate(c.error_ratio, slo.target))
        for w, c in by_window.items()
    }
    remaining = None if period.error_ratio is None else budget_remaining(period.error_ratio, slo.target)
    alerts = evaluate_alerts(burns, slo.window_s)
    forecast = forecast_exhaustion(remaining, burns.values(), slo.window_s)
    state, reasons = decide_gate(remaining, alerts, forecast, burns.values(), policy)
    return SloStatus(
        name=slo.name,
        service=slo.service,
        sli=slo.sli,
        target=slo.target,
        window=slo.window,
        evaluated_at=now,
        error_ratio=period.error_ratio,
        budget_remaining=remaining,
        budget_minutes=slo.error_budget * slo.window_s / 60.0,
        coverage=period.coverage,
        burn_rates=[
            BurnRate(
                window=format_duration(w), burn_rate=burns[w], error_ratio=c.error_ratio, coverage=c.coverage
            )
            for w, c in by_window.items()
        ],
        alerts=alerts,
        forecast=forecast,
        state=state,
        reasons=reasons,
    )


def evaluate(
    telemetry: Telemetry, slo_file: SloFile, now: float, service: str | None = None
) -> list[SloStatus]:
    """Status of every SLO in the file (or of one service's SLOs) at `now`."""
    slos = slo_file.for_service(service) if service is not None else slo_file.slos
    horizon = max(max(s.window_s for s in slos), MIN_SLO_WINDOW_S)
    queries = MetricCache(telemetry, now - horizon, now)
    return [evaluate_slo(slo, queries, now, slo_file.gate) for slo in slos]


class GateDecision(BaseModel):
    """The release gate for one service: the worst state of its SLOs."""

    service: str
    state: GateState
    exit_code: int
    reasons: list[str]
    slos: list[SloStatus]


def combine_gate(service: str, statuses: Sequence[SloStatus]) -> GateDecision:
    """The worst SLO state wins; reasons come from the SLOs in that state."""
    state: GateState = max((s.state for s in statuses), key=GATE_ORDER.__getitem__, default="OBSERVE")
    reasons = [f"{s.name}: {r}" for s in statuses if s.state == state for r in s.reasons]
    return GateDecision(
        service=service, state=state, exit_code=GATE_EXIT_CODES[state], reasons=reasons, slos=list(statuses)
    )


def release_gate(telemetry: Telemetry, slo_file: SloFile, service: str, now: float) -> GateDecision:
    """Should `service` deploy now? SAFE/OBSERVE: yes; DANGER/FREEZE: no (docs/slo.md has the table)."""
    return combine_gate(service, evaluate(telemetry, slo_file, now, service=service))
