"""Prometheus recording and alerting rules from the SLO file, in the manner of Sloth.

Per SLO, three rule groups:

* `sregraph-slo-NAME-sli`: `slo:sli_error:ratio_rate<W>` for every burn-rate window (5m ... 3d) and the SLO
  window, the bad/total ratio of the counters named in the SLO's `prometheus:` section;
* `sregraph-slo-NAME-meta`: objective, error budget, period, current and period burn rate, budget remaining,
  and an info series;
* `sregraph-slo-NAME-alerts`: `ErrorBudgetBurnPage` (14.4x over 1h and 5m, or 6x over 6h and 30m, for a 30-day
  window) and `ErrorBudgetBurnTicket` (3x over 1d and 2h, or 1x over 3d and 6h).

Every series carries `sregraph_slo` and `sregraph_service` (plus the SLO's own `labels`), so the rules of
many SLOs share one set of names. The thresholds are the same `ALERT_PAIRS` the local evaluation uses.
"""

from __future__ import annotations

from typing import Any

import yaml

from tools.base import ConfigError
from tools.slo.budget import ALERT_PAIRS, BURN_WINDOWS_S
from tools.slo.durations import format_duration
from tools.slo.spec import SLO, WINDOW_PLACEHOLDERS, SloFile

PAGE_ALERT = "ErrorBudgetBurnPage"
TICKET_ALERT = "ErrorBudgetBurnTicket"


def _num(value: float) -> str:
    """A PromQL number literal without float noise (0.001, 14.4, 30)."""
    return format(value, ".12g")


def events_expr(query: str, window: str, zero_if_absent: bool = False) -> str:
    """Events per second over `window`: a template with `{{window}}` filled in, or `sum(rate(SELECTOR[W]))`.

    With `zero_if_absent`, a selector that matches no series yet (no 5xx ever) counts as 0 events instead
    of leaving the ratio, and every alert on it, without data.
    """
    if any(p in query for p in WINDOW_PLACEHOLDERS):
        for placeholder in WINDOW_PLACEHOLDERS:
            query = query.replace(placeholder, window)
        return query
    expr = f"sum(rate({query}[{window}]))"
    return f"{expr} or vector(0)" if zero_if_absent else expr


def error_ratio_expr(slo: SLO, window: str) -> str:
    """PromQL for the SLO's bad/total ratio over `window`."""
    assert slo.prometheus is not None
    total = events_expr(slo.prometheus.total, window)
    if slo.prometheus.errors is not None:
        return f"(\n  {events_expr(slo.prometheus.errors, window, True)}\n)\n/\n(\n  {total}\n)"
    assert slo.prometheus.good is not None
    good = events_expr(slo.prometheus.good, window, True)
    return f"1 - (\n  (\n    {good}\n  )\n  /\n  (\n    {total}\n  )\n)"


def _labels(slo: SLO) -> dict[str, str]:
    return {"sregraph_slo": slo.name, "sregraph_service": slo.service, **slo.labels}


def _selector(slo: SLO) -> str:
    return f'{{sregraph_slo="{slo.name}",sregraph_service="{slo.service}"}}'


def rule_groups(slo: SLO) -> list[dict[str, Any]]:
    """Recording, meta and alerting rule groups of one SLO; ConfigError without a `prometheus:` section."""
    if slo.prometheus is None:
        raise ConfigError(f"slo {slo.name}: prometheus: needed to generate rules (errors or good, and total)")
    base = _labels(slo)
    sel = _selector(slo)
    budget = _num(slo.error_budget)
    period = format_duration(slo.window_s)
    windows = [format_duration(w) for w in BURN_WINDOWS_S]
    if period not in windows:
        windows.append(period)
    sli = [
        {
            "record": f"slo:sli_error:ratio_rate{w}",
            "expr": error_ratio_expr(slo, w),
            "labels": {**base, "sregraph_window": w},
        }
        for w in windows
    ]
    meta = [
        {"record": "slo:objective:ratio", "expr": f"vector({_num(slo.target)})", "labels": base},
        {"record": "slo:error_budget:ratio", "expr": f"vector({budget})", "labels": base},
        {"record": "slo:time_period:days", "expr": f"vector({_num(slo.window_s / 86400)})", "labels": base},
        {
            "record": "slo:current_burn_rate:ratio",
            "expr": f"slo:sli_error:ratio_rate{windows[0]}{sel} / {budget}",
            "labels": base,
        },
        {
            "record": "slo:period_burn_rate:ratio",
            "expr": f"slo:sli_error:ratio_rate{period}{sel} / {budget}",
            "labels": base,
        },
        {
            "record": "slo:period_error_budget_remaining:ratio",
            "expr": f"1 - slo:period_burn_rate:ratio{sel}",
            "labels": base,
        },
        {
            "record": "sregraph_slo_info",
            "expr": "vector(1)",
            "labels": {
                **base,
                "sregraph_sli": slo.sli,
                "sregraph_objective": _num(slo.target),
                "sregraph_window": period,
            },
        },
    ]
    alerts = [_alert(slo, severity) for severity in ("page", "ticket")]
    prefix = f"sregraph-slo-{slo.name}"
    return [
        {"name": f"{prefix}-sli", "rules": sli},
        {"name": f"{prefix}-meta", "rules": meta},
        {"name": f"{prefix}-alerts", "rules": alerts},
    ]


def _alert(slo: SLO, severity: str) -> dict[str, Any]:
    sel = _selector(slo)
    budget = _num(slo.error_budget)
    clauses = []
    for pair in (p for p in ALERT_PAIRS if p.severity == severity):
        threshold = f"({_num(pair.factor(slo.window_s))} * {budget})"
        sides = [
            f"max without (sregraph_window) (slo:sli_error:ratio_rate{format_duration(w)}{sel} > {threshold})"
            for w in (pair.long_s, pair.short_s)
        ]
        clauses.append(f"(\n  {sides[0]}\n  and\n  {sides[1]}\n)")
    pairs = ", ".join(
        f"{_num(p.factor(slo.window_s))}x over {p.label}" for p in ALERT_PAIRS if p.severity == severity
    )
    return {
        "alert": PAGE_ALERT if severity == "page" else TICKET_ALERT,
        "expr": "\nor\n".join(clauses),
        "labels": {**_labels(slo), "severity": severity},
        "annotations": {
            "summary": f"{slo.service}: SLO {slo.name} is burning its error budget ({severity})",
            "description": (
                "Error ratio {{ $value | humanizePercentage }} over the long window; the objective "
                f"{_num(slo.target * 100)}% over {slo.window} allows {_num(slo.error_budget * 100)}%. "
                f"Fires on {pairs}."
            ),
        },
    }


def rules_document(slo_file: SloFile) -> dict[str, Any]:
    """A Prometheus rule file (`groups:`) for every SLO with a `prometheus:` section."""
    groups = [g for slo in slo_file.slos if slo.prometheus is not None for g in rule_groups(slo)]
    if not groups:
        raise ConfigError(
            "prometheus: no SLO in the file has a `prometheus:` section, so there are no rules to generate"
        )
    return {"groups": groups}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks and no anchors, so the rules read as if hand-written."""

    def ignore_aliases(self, data: Any) -> bool:
        """Never write `&id001` anchors: repeated label maps are spelled out."""
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render_rules(slo_file: SloFile, source: str = "the SLO file") -> str:
    """The rule file as YAML text, with a header saying where it came from."""
    body = yaml.dump(rules_document(slo_file), Dumper=_Dumper, sort_keys=False, width=200)
    return f"# Generated by `sregraph slo rules` from {source}; edit the SLO file, not this one.\n{body}"


def skipped(slo_file: SloFile) -> list[str]:
    """Names of the SLOs that get no rules because they have no `prometheus:` section."""
    return [s.name for s in slo_file.slos if s.prometheus is None]
