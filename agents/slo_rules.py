"""Moved to `tools.slo.rules`; this re-export keeps `agents.slo_rules` importable for one release."""

from tools.slo.rules import (
    PAGE_ALERT,
    TICKET_ALERT,
    error_ratio_expr,
    events_expr,
    render_rules,
    rule_groups,
    rules_document,
    skipped,
)

__all__ = [
    "PAGE_ALERT",
    "TICKET_ALERT",
    "error_ratio_expr",
    "events_expr",
    "render_rules",
    "rule_groups",
    "rules_document",
    "skipped",
]
