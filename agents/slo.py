"""Moved to the `tools.slo` package (it is not an agent); this re-export keeps `agents.slo` importable for one
release. Import from `tools.slo.<module>` instead."""

from tools.slo.budget import (
    ALERT_PAIRS,
    BURN_WINDOWS_S,
    MIN_SLO_WINDOW_S,
    AlertPair,
    AlertState,
    Forecast,
    budget_remaining,
    burn_rate,
    evaluate_alerts,
    forecast_exhaustion,
)
from tools.slo.durations import format_duration, parse_duration
from tools.slo.evaluation import (
    BurnRate,
    GateDecision,
    SloStatus,
    combine_gate,
    evaluate,
    evaluate_slo,
    release_gate,
)
from tools.slo.gate import GATE_EXIT_CODES, GATE_ORDER, GateState, decide_gate
from tools.slo.loading import load_slo_file, parse_slo_text
from tools.slo.sli import GAP_TICKS, Downtime, Events, MetricCache, WindowCounts, sli_events
from tools.slo.spec import SLO, WINDOW_PLACEHOLDERS, GatePolicy, PrometheusQueries, SliKind, SloFile

__all__ = [
    "ALERT_PAIRS",
    "BURN_WINDOWS_S",
    "GAP_TICKS",
    "GATE_EXIT_CODES",
    "GATE_ORDER",
    "MIN_SLO_WINDOW_S",
    "SLO",
    "WINDOW_PLACEHOLDERS",
    "AlertPair",
    "AlertState",
    "BurnRate",
    "Downtime",
    "Events",
    "Forecast",
    "GateDecision",
    "GatePolicy",
    "GateState",
    "MetricCache",
    "PrometheusQueries",
    "SliKind",
    "SloFile",
    "SloStatus",
    "WindowCounts",
    "budget_remaining",
    "burn_rate",
    "combine_gate",
    "decide_gate",
    "evaluate",
    "evaluate_alerts",
    "evaluate_slo",
    "forecast_exhaustion",
    "format_duration",
    "load_slo_file",
    "parse_duration",
    "parse_slo_text",
    "release_gate",
    "sli_events",
]
