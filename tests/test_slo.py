"""SLOs: the file, burn-rate and budget maths against hand-computed cases, the release gate, rules, CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from sregraph.slo_cli import release_gate_command, slo
from tools.base import ConfigError
from tools.slo.budget import ALERT_PAIRS, budget_remaining, burn_rate, evaluate_alerts, forecast_exhaustion
from tools.slo.durations import format_duration, parse_duration
from tools.slo.evaluation import evaluate, release_gate
from tools.slo.gate import GATE_EXIT_CODES, decide_gate
from tools.slo.loading import load_slo_file, parse_slo_text
from tools.slo.rules import render_rules, rules_document, skipped
from tools.slo.spec import GatePolicy, SloFile
from tools.telemetry import LocalTelemetryStore

REPO = Path(__file__).resolve().parent.parent
NOW = 1_700_000_000.0
MIN, HOUR, DAY = 60.0, 3600.0, 86400.0
W30 = 30 * DAY

ONE_SLO = """
slos:
  - name: checkout-availability
    service: checkout
    sli: {sli}
    target: 0.999
    window: 30d
    labels: {{team: shop}}
    prometheus:
      errors: http_requests_total{{service="checkout",code=~"5.."}}
      total: http_requests_total{{service="checkout"}}
"""


def slo_file(sli: str = "availability") -> SloFile:
    return parse_slo_text(ONE_SLO.format(sli=sli))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalTelemetryStore]:
    with LocalTelemetryStore(tmp_path / "app" / "telemetry.db") as s:
        yield s


def write(
    store: LocalTelemetryStore,
    service: str,
    *,
    now: float = NOW,
    span: float,
    step: float,
    rate: float = 10.0,
    metric: str = "error_ratio",
    value: Callable[[float], float] = lambda age: 0.0,
    labels: dict[str, str] | None = None,
    skip: Callable[[float], bool] = lambda age: False,
) -> None:
    """Samples every `step` s from `now` back over `span` s; `value(age)` gives the SLI metric at that age."""
    lb = labels or {"service": service}
    points = []
    for k in range(int(span // step)):
        age = k * step
        if skip(age):
            continue
        points += [("request_rate", lb, rate, now - age), (metric, lb, value(age), now - age)]
    store.write_metrics(points)


def burns(status: Any) -> dict[str, float | None]:
    return {b.window: b.burn_rate for b in status.burn_rates}


# --------------------------------------------------------------------------- durations and factors


def test_durations_round_trip() -> None:
    assert parse_duration("30d") == W30
    assert parse_duration("1h30m") == 5400
    assert parse_duration("4w") == 28 * DAY
    assert [format_duration(s) for s in (300, 1800, 3600, 7200, 6 * HOUR, DAY, 3 * DAY, W30, 5400)] == [
        "5m",
        "30m",
        "1h",
        "2h",
        "6h",
        "1d",
        "3d",
        "30d",
        "1h30m",
    ]
    for bad in ("30 days", "1.5h", "", "h"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(bad)


def test_alert_pairs_are_the_workbook_ones_for_30_days_and_scale_with_the_window() -> None:
    assert [(p.severity, p.label, p.factor(W30)) for p in ALERT_PAIRS] == [
        ("page", "1h/5m", 14.4),
        ("page", "6h/30m", 6.0),
        ("ticket", "1d/2h", 3.0),
        ("ticket", "3d/6h", 1.0),
    ]
    # 2% of a 28-day budget in 1h is 0.02 * 672h / 1h = 13.44x; 10% in 3d is 0.1 * 28 / 3.
    assert [p.factor(28 * DAY) for p in ALERT_PAIRS] == [13.44, 5.6, 2.8, 0.933333]


# --------------------------------------------------------------------------- pure maths, by hand


def test_burn_rate_and_budget_by_hand() -> None:
    assert burn_rate(0.002, 0.999) == pytest.approx(2.0)  # 0.2% errors against a 0.1% budget
    assert burn_rate(0.02, 0.99) == pytest.approx(2.0)
    assert burn_rate(0.0, 0.999) == 0.0
    assert budget_remaining(0.0005, 0.999) == pytest.approx(0.5)
    assert budget_remaining(0.003, 0.999) == pytest.approx(-2.0)  # overspent three times over


@pytest.mark.parametrize(
    ("rates", "firing"),
    [
        ({3600: 15, 300: 15}, ["page 1h/5m"]),
        ({3600: 15, 300: 10}, []),  # the short window says it is over: no page
        ({3600: 10, 300: 50}, []),  # a 5-minute blip alone does not page
        ({3600: 14.4, 300: 20}, []),  # strictly greater than the factor
        ({3600: 14.5, 300: None}, []),  # no data in a window: no alert
        ({6 * HOUR: 7, 1800: 7}, ["page 6h/30m"]),
        ({DAY: 3.5, 7200: 3.5}, ["ticket 1d/2h"]),
        ({3 * DAY: 1.2, 6 * HOUR: 1.2}, ["ticket 3d/6h"]),
        (
            {300: 20, 1800: 20, 3600: 20, 7200: 20, 6 * HOUR: 20, DAY: 20, 3 * DAY: 20},
            ["page 1h/5m", "page 6h/30m", "ticket 1d/2h", "ticket 3d/6h"],
        ),
    ],
)
def test_alert_pairs_fire_only_when_both_windows_burn(
    rates: dict[float, float | None], firing: list[str]
) -> None:
    states = evaluate_alerts(rates, W30)
    assert [f"{a.severity} {a.long_window}/{a.short_window}" for a in states if a.firing] == firing


def test_forecast_by_hand() -> None:
    # Half the budget left; burns 1x, 2x, 4x; at bx the 720h budget lasts 720 / b hours, half of it 360 / b.
    f = forecast_exhaustion(0.5, [1.0, None, 4.0, 2.0], W30)
    assert (f.hours, f.earliest_h, f.latest_h) == pytest.approx((180.0, 90.0, 360.0))
    assert (f.burn_central, f.burn_low, f.burn_high, f.windows_used) == (2.0, 1.0, 4.0, 3)
    # Some windows burn nothing: the slow end is "never", the median decides the centre.
    f = forecast_exhaustion(0.5, [0.0, 0.0, 3.0], W30)
    assert (f.hours, f.earliest_h, f.latest_h) == (None, pytest.approx(120.0), None)
    f = forecast_exhaustion(-0.2, [5.0], W30)
    assert f.exhausted and f.hours == 0.0
    f = forecast_exhaustion(None, [], W30)
    assert f.hours is None and f.windows_used == 0


ALL = (300, 1800, 3600, 7200, 6 * HOUR, DAY, 3 * DAY)


def _flat(b: float, **over: float) -> dict[float, float | None]:
    names = {"m5": 300, "m30": 1800, "h1": 3600, "h2": 7200, "h6": 6 * HOUR, "d1": DAY, "d3": 3 * DAY}
    rates: dict[float, float | None] = {w: b for w in ALL}
    rates.update({names[k]: v for k, v in over.items()})
    return rates


@pytest.mark.parametrize(
    ("remaining", "rates", "state", "why"),
    [
        (0.9, _flat(0.5), "SAFE", "no window burning"),
        (0.4, _flat(0.5), "OBSERVE", "40% of the error budget left (< 50%)"),
        (0.9, _flat(0.5, m5=20), "OBSERVE", "burning 20.0x"),
        (0.2, _flat(0.5), "DANGER", "only 20% of the error budget left (< 25%)"),
        (0.9, _flat(3.5), "DANGER", "ticket alert: burn 3.5x over 1d and 3.5x over 2h (> 3x)"),
        # No alert pair fires (1h/5m at 12 < 14.4, 1d at 2.9 < 3, 3d at 0.5 < 1) but the median burn of
        # the seven windows is 5x, and 30% of a 720h budget at 5x lasts 0.3 * 720 / 5 = 43.2h < 72h.
        (0.3, _flat(12, h2=5, h6=0.9, d1=2.9, d3=0.5), "DANGER", "run out in 43.2h"),
        (0.9, _flat(15), "FREEZE", "page alert: burn 15.0x over 1h and 15.0x over 5m (> 14.4x)"),
        (0.0, _flat(0.0), "FREEZE", "error budget exhausted"),
        (None, {w: None for w in ALL}, "OBSERVE", "no telemetry"),
        (0.3, {w: None for w in ALL}, "OBSERVE", "burn rates unknown"),
    ],
)
def test_gate_states_by_hand(
    remaining: float | None, rates: dict[float, float | None], state: str, why: str
) -> None:
    policy = GatePolicy()
    forecast = forecast_exhaustion(remaining, rates.values(), W30)
    got, reasons = decide_gate(remaining, evaluate_alerts(rates, W30), forecast, rates.values(), policy)
    assert got == state
    assert any(why in r for r in reasons), reasons
    assert (GATE_EXIT_CODES[got] == 0) == (state in ("SAFE", "OBSERVE"))


def test_gate_thresholds_come_from_the_file() -> None:
    strict = parse_slo_text(
        ONE_SLO.format(sli="availability")
        + "gate:\n  danger_budget_below: 0.5\n  observe_budget_below: 0.8\n"
    )
    rates = _flat(0.2)
    fc = forecast_exhaustion(0.45, rates.values(), W30)
    assert decide_gate(0.45, evaluate_alerts(rates, W30), fc, rates.values(), strict.gate)[0] == "DANGER"
    assert decide_gate(0.45, evaluate_alerts(rates, W30), fc, rates.values(), GatePolicy())[0] == "OBSERVE"


# --------------------------------------------------------------------------- SLIs from the telemetry store


def test_page_case_from_the_store_by_hand(store: LocalTelemetryStore) -> None:
    # 3 days of samples every minute at 10 req/s; the last hour (60 samples) fails 2%, before that nothing.
    write(store, "checkout", span=3 * DAY, step=MIN, value=lambda age: 0.02 if age < HOUR else 0.0)
    [status] = evaluate(store, slo_file(), NOW)
    # Error ratio per window = 0.02 x (bad minutes / minutes in window); burn = ratio / 0.001.
    assert burns(status) == pytest.approx(
        {"5m": 20, "30m": 20, "1h": 20, "2h": 10, "6h": 20 / 6, "1d": 20 / 24, "3d": 20 / 72}
    )
    # The 30d window only has 3d of data, so the period ratio equals the 3d one: 1 - 20/72 left.
    assert status.budget_remaining == pytest.approx(1 - 20 / 72)
    assert status.coverage == pytest.approx(0.1, abs=1e-3)
    assert status.budget_minutes == pytest.approx(43.2)  # 0.1% of 30 days
    assert [a.long_window for a in status.alerts if a.firing] == ["1h"]
    # Median of (20, 20, 20, 10, 3.33, 0.83, 0.28) is 10x: 0.7222 x 720h / 10 = 52h; 20x: 26h; 0.28x: 1872h.
    fc = status.forecast
    assert (fc.hours, fc.earliest_h, fc.latest_h) == pytest.approx((52.0, 26.0, 1872.0))
    assert status.state == "FREEZE"
    gate = release_gate(store, slo_file(), "checkout", NOW)
    assert (gate.state, gate.exit_code) == ("FREEZE", 4)
    assert "checkout-availability: page alert" in gate.reasons[0]


def test_ticket_case_over_a_full_window(store: LocalTelemetryStore) -> None:
    # 30 days every 5 minutes; the last 3 days fail 0.4% (4x), the 27 before are clean.
    write(store, "checkout", span=W30, step=300, value=lambda age: 0.004 if age < 3 * DAY else 0.0)
    [status] = evaluate(store, slo_file(), NOW)
    assert list(burns(status).values()) == pytest.approx([4.0] * 7)
    assert status.budget_remaining == pytest.approx(1 - 4 * 3 / 30)  # 0.4 spent
    assert [(a.severity, a.long_window) for a in status.alerts if a.firing] == [
        ("ticket", "1d"),
        ("ticket", "3d"),
    ]
    assert status.forecast.hours == pytest.approx(0.6 * 720 / 4)  # 108h: not within the 72h danger horizon
    assert status.state == "DANGER"
    assert status.coverage == pytest.approx(1.0, abs=1e-3)


def test_an_old_incident_leaves_a_smaller_budget_but_no_alert(store: LocalTelemetryStore) -> None:
    # 30 days every 5 minutes, one 2-day incident 20 days ago at 0.9% errors: 0.009 x 2/30 = 0.0006 spent.
    write(
        store, "checkout", span=W30, step=300, value=lambda age: 0.009 if 20 * DAY <= age < 22 * DAY else 0.0
    )
    [status] = evaluate(store, slo_file(), NOW)
    assert status.budget_remaining == pytest.approx(0.4)
    assert not any(a.firing for a in status.alerts)
    assert status.forecast.hours is None  # nothing burning now
    assert status.state == "OBSERVE"


def test_availability_counts_silence_while_the_rest_of_the_app_reports(store: LocalTelemetryStore) -> None:
    # payments stops reporting 10 minutes ago; frontend keeps going. Samples every 10 s for an hour.
    write(store, "frontend", span=HOUR, step=10)
    write(store, "payments", span=HOUR, step=10, skip=lambda age: age < 10 * MIN)
    slos = parse_slo_text(
        """
slos:
  - {name: pay-avail, service: payments, sli: availability, target: 0.999}
  - {name: pay-errors, service: payments, sli: error_rate, target: 0.999}
"""
    )
    avail, errors = evaluate(store, slos, NOW)
    # Last payments sample is 600 s old and frontend's is fresh: 600 s of imputed failures at 10 req/s
    # against 3000 s served (300 samples x 10 s). 1h ratio = 600 / 3600.
    assert burns(avail)["1h"] == pytest.approx((600 / 3600) / 0.001)
    assert burns(avail)["5m"] == pytest.approx(1000.0)  # the last 5 minutes are all downtime
    assert avail.state == "FREEZE"
    assert burns(errors)["1h"] == 0.0  # error_rate only judges the requests that were served
    assert errors.state == "SAFE"


def test_a_gap_inside_the_data_is_downtime_but_a_silent_app_is_unknown(store: LocalTelemetryStore) -> None:
    # payments is silent from 40 to 30 minutes ago (exclusive), then back; everything stops 5 minutes ago.
    def gone(age: float) -> bool:
        return age < 5 * MIN or 30 * MIN < age < 40 * MIN

    write(store, "payments", span=HOUR, step=10, skip=gone)
    write(store, "frontend", span=HOUR, step=10, skip=lambda age: age < 5 * MIN)
    [status] = evaluate(
        store, parse_slo_text("slos:\n  - {name: a, service: payments, target: 0.999}\n"), NOW
    )
    # The gap runs from the sample at 40m to the one at 30m; that sample covers its own 10 s, so 590 s are
    # imputed. Served: samples between 5m and 60m old minus the 59 missing ones = 271 samples x 10 s.
    bad, served = 590.0, 271 * 10.0
    assert burns(status)["1h"] == pytest.approx(bad / (bad + served) / 0.001)
    assert burns(status)["5m"] is None  # no data at all in the last 5 minutes: unknown, not down


def test_latency_and_conversion_slis(store: LocalTelemetryStore) -> None:
    # Latency: p95 over the 300 ms threshold in 6 of the last 60 one-minute intervals -> 10% of requests bad.
    write(
        store,
        "frontend",
        span=HOUR,
        step=MIN,
        metric="latency_p95_ms",
        value=lambda age: 450.0 if age < 6 * MIN else 20.0,
    )
    # Conversion: 90% of buy attempts complete against a 95% objective -> 10% bad, burn 2x.
    write(store, "frontend", span=HOUR, step=MIN, metric="conversion_ratio", value=lambda age: 0.9)
    slos = parse_slo_text(
        """
slos:
  - {name: lat, service: frontend, sli: latency, threshold_ms: 300, target: 0.99}
  - {name: conv, service: frontend, sli: conversion, target: 0.95}
"""
    )
    lat, conv = evaluate(store, slos, NOW)
    assert burns(lat)["1h"] == pytest.approx(0.1 / 0.01)
    assert burns(lat)["5m"] == pytest.approx(100.0)
    assert burns(conv)["1h"] == pytest.approx(2.0)


def test_replicas_are_added_up(store: LocalTelemetryStore) -> None:
    # The main replica serves 10 req/s cleanly; an extra replica serves 30 req/s at 4% errors: 1.2/40 = 3%.
    write(store, "checkout", span=HOUR, step=MIN)
    write(
        store,
        "checkout",
        span=HOUR,
        step=MIN,
        rate=30.0,
        value=lambda age: 0.04,
        labels={"service": "checkout", "replica": "1"},
    )
    [status] = evaluate(store, slo_file(), NOW)
    assert burns(status)["1h"] == pytest.approx(30.0)


def test_no_telemetry_is_observe_not_safe(store: LocalTelemetryStore) -> None:
    [status] = evaluate(store, slo_file(), NOW)
    assert status.budget_remaining is None and status.state == "OBSERVE"


# --------------------------------------------------------------------------- the file


def test_example_file_loads() -> None:
    slos = load_slo_file(REPO / "slos.yaml")
    assert slos.services() == ["frontend", "checkout", "payments"]
    assert {s.sli for s in slos.slos} == {"availability", "latency", "conversion", "error_rate"}
    assert all(s.prometheus is not None for s in slos.slos)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("slos:\n  - {name: a, service: s, target: 99.9}\n", r"slos\[0\]\.target \(a\): .*write 0\.999"),
        ("slos:\n  - {name: a, target: 0.99}\n", r"slos\[0\]\.service \(a\): Field required"),
        (
            "slos:\n  - {name: a, service: s, target: 0.99, window: 30 days}\n",
            r"slos\[0\]\.window.*not a duration",
        ),
        ("slos:\n  - {name: a, service: s, target: 0.99, window: 1d}\n", r"slos\[0\]\.window.*at least 3d"),
        ("slos:\n  - {name: a, service: s, target: 0.99, sli: uptime}\n", r"slos\[0\]\.sli"),
        (
            "slos:\n  - {name: a, service: s, target: 0.99, sli: latency}\n",
            r"slos\[0\] \(a\): threshold_ms is required",
        ),
        ("slos:\n  - {name: a, service: s, target: 0.99, taget: 0.9}\n", r"slos\[0\]\.taget"),
        (
            "slos:\n  - {name: a, service: s, target: 0.99}\n  - {name: a, service: t, target: 0.9}\n",
            r"name 'a' is used",
        ),
        (
            "slos:\n  - {name: a, service: s, target: 0.99, prometheus: {errors: 'x', good: 'y', total: 'z'}}\n",
            r"slos\[0\]\.prometheus \(a\): give exactly one of",
        ),
        (
            "slos:\n  - {name: a, service: s, target: 0.99, prometheus: {errors: 'rate(x[5m])', total: 'z'}}\n",
            r"slos\[0\]\.prometheus\.errors \(a\): expected a counter selector",
        ),
        ("slos:\n  - {name: a, service: s, target: 0.99, labels: {__bad: x}}\n", r"slos\[0\]\.labels"),
        ("slos: []\n", r"slos: List should have at least 1 item"),
        (
            "slos:\n  - {name: a, service: s, target: 0.99}\ngate: {danger_budget_below: 0.6}\n",
            r"gate: danger_budget_below must not exceed",
        ),
        ("objectives: []\n", r"slos: missing"),
        ("", r"slos: the file is empty"),
        ("slos: [unclosed\n", r"not valid YAML"),
    ],
)
def test_bad_files_name_the_field(text: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        parse_slo_text(text, "slos.yaml")


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_slo_file("/nonexistent/slos.yaml")


OPENSLO = """
apiVersion: openslo/v1
kind: Service
metadata: {name: checkout}
spec: {description: the checkout service}
---
apiVersion: openslo/v1
kind: SLO
metadata:
  name: checkout-availability
  labels: {team: shop}
  annotations: {sregraph.io/sli: availability}
spec:
  service: checkout
  budgetingMethod: Occurrences
  timeWindow: [{duration: 30d, isRolling: true}]
  objectives: [{displayName: good, target: 0.999}]
  indicator:
    metadata: {name: checkout-errors}
    spec:
      ratioMetric:
        counter: true
        bad: {metricSource: {type: Prometheus, spec: {query: 'http_requests_total{service="checkout",code=~"5.."}'}}}
        total: {metricSource: {type: Prometheus, spec: {query: 'http_requests_total{service="checkout"}'}}}
"""


def test_openslo_documents_load_like_the_compact_form() -> None:
    assert parse_slo_text(OPENSLO) == slo_file()


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        (
            "budgetingMethod: Occurrences",
            "budgetingMethod: Timeslices",
            "spec.budgetingMethod: only Occurrences",
        ),
        ("isRolling: true", "isRolling: false", r"spec.timeWindow\[0\].isRolling"),
        ("target: 0.999", "target: 99.9", r"spec.objectives\[0\].target: must be a ratio"),
        ("duration: 30d", "duration: 1d", r"spec.timeWindow\[0\].duration: .*at least 3d"),
        ("ratioMetric:", "thresholdMetric:", "spec.indicator.spec.ratioMetric: is required"),
        (
            'type: Prometheus, spec: {query: \'http_requests_total{service="checkout",code',
            "type: Datadog, spec: {query: 'x{code",
            r"ratioMetric.bad.metricSource.type: only Prometheus",
        ),
    ],
)
def test_openslo_errors_use_openslo_paths(old: str, new: str, field: str) -> None:
    assert old in OPENSLO
    with pytest.raises(ConfigError, match=f"SLO checkout-availability.*{field}"):
        parse_slo_text(OPENSLO.replace(old, new, 1), "slo.yaml")


# --------------------------------------------------------------------------- Prometheus rules

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not on PATH (Debian/Ubuntu: apt-get install prometheus); generated rules are unchecked",
)


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@needs_promtool
def test_rules_for_the_example_file_pass_promtool_check(tmp_path: Path) -> None:
    text = render_rules(load_slo_file(REPO / "slos.yaml"), "slos.yaml")
    (tmp_path / "rules.yml").write_text(text)
    result = _promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # 7 SLOs x (8 SLI windows + 7 meta) recording rules and 2 alerts each.
    assert "SUCCESS: 119 rules found" in result.stdout


@needs_promtool
def test_rules_with_good_events_and_templates_pass_promtool_check(tmp_path: Path) -> None:
    slos = parse_slo_text(
        """
slos:
  - name: conv
    service: frontend
    sli: conversion
    target: 0.95
    window: 28d
    prometheus:
      good: sum(rate(orders_completed_total{service="frontend"}[{{window}}]))
      total: sum(rate(checkout_started_total{service="frontend"}[{{.window}}]))
  - {name: local-only, service: frontend, target: 0.99}
"""
    )
    assert skipped(slos) == ["local-only"]
    (tmp_path / "rules.yml").write_text(render_rules(slos))
    result = _promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ratio_rate28d" in (tmp_path / "rules.yml").read_text()


def _alert_test(severity: str, bad_per_min: int) -> dict[str, Any]:
    labels = {"sregraph_slo": "checkout-availability", "sregraph_service": "checkout", "team": "shop"}
    alert = {"page": "ErrorBudgetBurnPage", "ticket": "ErrorBudgetBurnTicket"}[severity]
    pairs = {"page": "14.4x over 1h/5m, 6x over 6h/30m", "ticket": "3x over 1d/2h, 1x over 3d/6h"}[severity]
    return {
        "alertname": alert,
        "exp_alerts": [
            {
                "exp_labels": {**labels, "severity": severity},
                "exp_annotations": {
                    "summary": f"checkout: SLO checkout-availability is burning its error budget ({severity})",
                    "description": (
                        f"Error ratio {bad_per_min / 10:g}% over the long window; the objective 99.9% over 30d "
                        f"allows 0.1%. Fires on {pairs}."
                    ),
                },
            }
        ],
    }


@needs_promtool
def test_generated_alerts_fire_in_promtool_unit_tests(tmp_path: Path) -> None:
    """The alert expressions, not just their syntax: 2% errors page, 0.4% tickets, none stays quiet."""
    (tmp_path / "rules.yml").write_text(render_rules(slo_file()))

    def case(bad_per_min: int | None, alerts: list[dict[str, Any]]) -> dict[str, Any]:
        series = [
            {
                "series": 'http_requests_total{service="checkout",code="200"}',
                "values": f"0+{1000 - (bad_per_min or 0)}x180",
            }
        ]
        if bad_per_min is not None:  # None: no 5xx series at all, the case `or vector(0)` is for
            series.append(
                {
                    "series": 'http_requests_total{service="checkout",code="500"}',
                    "values": f"0+{bad_per_min}x180",
                }
            )
        return {"interval": "1m", "input_series": series, "alert_rule_test": alerts}

    quiet: list[dict[str, Any]] = [
        {"eval_time": "2h", "alertname": a, "exp_alerts": []}
        for a in ("ErrorBudgetBurnPage", "ErrorBudgetBurnTicket")
    ]
    tests = [
        case(
            20,
            [
                {"eval_time": "2h", **_alert_test("page", 20)},
                {"eval_time": "2h", **_alert_test("ticket", 20)},
            ],
        ),
        case(
            4,
            [
                {"eval_time": "2h", "alertname": "ErrorBudgetBurnPage", "exp_alerts": []},
                {"eval_time": "2h", **_alert_test("ticket", 4)},
            ],
        ),
        case(1, quiet),  # 0.1% errors is exactly the budget: burn 1x, not above the 1x ticket factor
        {  # 5% errors that stopped 30 minutes ago: 1h and 6h still burn 25x+, but the 5m and 30m windows say
            # it is over, so neither page pair fires (the ticket pairs, with longer short windows, still do)
            "interval": "1m",
            "input_series": [
                {"series": 'http_requests_total{service="checkout",code="200"}', "values": "0+950x120"},
                {
                    "series": 'http_requests_total{service="checkout",code="500"}',
                    "values": "0+50x90 4500+0x29",
                },
            ],
            "alert_rule_test": [{"eval_time": "2h", "alertname": "ErrorBudgetBurnPage", "exp_alerts": []}],
        },
        {
            **case(None, quiet),
            "promql_expr_test": [
                {
                    "expr": 'slo:sli_error:ratio_rate5m{sregraph_slo="checkout-availability"}',
                    "eval_time": "1h",
                    "exp_samples": [
                        {
                            "labels": 'slo:sli_error:ratio_rate5m{sregraph_slo="checkout-availability",'
                            'sregraph_service="checkout",'
                            'sregraph_window="5m",team="shop"}',
                            "value": 0,
                        }
                    ],
                }
            ],
        },
    ]
    (tmp_path / "test.yml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests})
    )
    result = _promtool("test", "rules", "test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_need_a_prometheus_section() -> None:
    with pytest.raises(ConfigError, match="prometheus: no SLO"):
        rules_document(parse_slo_text("slos:\n  - {name: a, service: s, target: 0.99}\n"))


def test_rule_thresholds_match_the_local_evaluation() -> None:
    doc = rules_document(slo_file())
    alerts = {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"] if "alert" in r}
    assert (
        "ratio_rate1h" in alerts["ErrorBudgetBurnPage"] and "(14.4 * 0.001)" in alerts["ErrorBudgetBurnPage"]
    )
    assert "(6 * 0.001)" in alerts["ErrorBudgetBurnPage"]
    assert (
        "(3 * 0.001)" in alerts["ErrorBudgetBurnTicket"] and "(1 * 0.001)" in alerts["ErrorBudgetBurnTicket"]
    )


# --------------------------------------------------------------------------- CLI

runner = CliRunner()


def gate_app() -> typer.Typer:
    """The release gate registered the way the main CLI does it."""
    app = typer.Typer()
    app.command("release-gate")(release_gate_command)
    app.command("noop", hidden=True)(lambda: None)  # two commands, so the command name is part of argv
    return app


@pytest.fixture
def live(tmp_path: Path) -> tuple[Path, Path]:
    """A data dir whose store has an hour of data (now): checkout failing 5% lately, payments clean."""
    now = time.time()
    with LocalTelemetryStore(tmp_path / "data" / "app" / "telemetry.db") as s:
        write(s, "checkout", now=now, span=HOUR, step=10, value=lambda age: 0.05 if age < 20 * MIN else 0.0)
        write(s, "payments", now=now, span=HOUR, step=10)
    slos = tmp_path / "slos.yaml"
    slos.write_text(
        ONE_SLO.format(sli="availability")
        + "  - {name: payments-availability, service: payments, target: 0.999}\n"
    )
    return tmp_path / "data", slos


def test_cli_status_json_and_text(live: tuple[Path, Path]) -> None:
    data, slos = live
    result = runner.invoke(
        slo, ["status", "--slo-file", str(slos), "--data-dir", str(data), "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    states = {s["name"]: s["state"] for s in payload["slos"]}
    assert states == {"checkout-availability": "FREEZE", "payments-availability": "SAFE"}
    assert payload["gates"]["checkout"]["exit_code"] == 4
    burn_5m = {b["window"]: b["burn_rate"] for b in payload["slos"][0]["burn_rates"]}["5m"]
    assert burn_5m == pytest.approx(50.0)
    text = runner.invoke(slo, ["status", "-f", str(slos), "--data-dir", str(data)], env={"COLUMNS": "200"})
    assert text.exit_code == 0, text.output
    assert "checkout-availability" in text.output and "page+ticket" in text.output
    assert "checkout: FREEZE" in text.output and "payments: SAFE" in text.output
    assert "page alert: burn 16.7x over 1h and 50.0x over 5m (> 14.4x)" in text.output
    assert "telemetry covers only" in text.output


def test_cli_release_gate_exit_codes(live: tuple[Path, Path]) -> None:
    data, slos = live
    app = gate_app()
    bad = runner.invoke(app, ["release-gate", "checkout", "--slo-file", str(slos), "--data-dir", str(data)])
    assert bad.exit_code == 4, bad.output
    assert "FREEZE" in bad.output and "deploys should stop" in bad.output
    ok = runner.invoke(
        app,
        ["release-gate", "payments", "--slo-file", str(slos), "--data-dir", str(data), "--format", "json"],
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["state"] == "SAFE"
    unknown = runner.invoke(app, ["release-gate", "nope", "--slo-file", str(slos), "--data-dir", str(data)])
    assert unknown.exit_code == 2 and "no SLO for service 'nope'" in unknown.output


def test_cli_bad_input_exits_2_with_the_field(tmp_path: Path, live: tuple[Path, Path]) -> None:
    data, _ = live
    broken = tmp_path / "broken.yaml"
    broken.write_text("slos:\n  - {name: a, service: checkout, target: 1.5}\n")
    app = gate_app()
    result = runner.invoke(
        app, ["release-gate", "checkout", "--slo-file", str(broken), "--data-dir", str(data)]
    )
    assert result.exit_code == 2 and "slos[0].target (a)" in result.output
    result = runner.invoke(
        slo, ["status", "--slo-file", str(REPO / "slos.yaml"), "--data-dir", str(tmp_path / "empty")]
    )
    assert result.exit_code == 2 and "no telemetry store" in result.output
    assert not (tmp_path / "empty").exists()  # a read-only command never creates a store
    result = runner.invoke(
        slo, ["status", "--slo-file", str(REPO / "slos.yaml"), "--data-dir", str(data), "--format", "yaml"]
    )
    assert result.exit_code == 2


def test_cli_rules_to_file_and_stdout(tmp_path: Path) -> None:
    out = tmp_path / "rules.yml"
    result = runner.invoke(slo, ["rules", "--slo-file", str(REPO / "slos.yaml"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(out.read_text())
    assert len(doc["groups"]) == 21
    stdout = runner.invoke(slo, ["rules", "--slo-file", str(REPO / "slos.yaml")])
    assert stdout.exit_code == 0 and stdout.output == out.read_text()
