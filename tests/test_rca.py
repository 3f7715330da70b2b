"""The root-cause ranker's scorers on small synthetic cases, the case format, and the bench end to end."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from agents.rca import (
    DEFAULT_PARAMS,
    Direction,
    EdgeSeries,
    Evidence,
    Kind,
    LogRow,
    MetricSeries,
    RcaInput,
    ServiceScore,
    SpanRow,
    _common_mode,
    combine,
    edge_gaps,
    event_scores,
    fault_type,
    gather,
    infer_kind,
    log_scores,
    metric_scores,
    personalised_pagerank,
    rank,
    self_explained,
    series_deviation,
    trace_scores,
)
from agents.rca_confidence import (
    ARTEFACT,
    FALLBACK_MIN_CONFIDENCE,
    FEATURES,
    ConfidenceModel,
    brier,
    choose_threshold,
    default_min_confidence,
    ece,
    fit,
)
from evals.rca_bench import baro_scores, run_bench
from evals.rca_case import load_case, load_label
from tests.data import SHARED_DATA
from tools.base import ConfigError

T0 = 1_700_000_000.0
STEP = 60.0


def _series(
    service: str,
    metric: str,
    before: list[float],
    after: list[float],
    kind: Kind = "other",
    direction: Direction = "both",
) -> MetricSeries:
    values = np.array(before + after, dtype=float)
    ts = T0 + STEP * (np.arange(len(values)) - len(before))
    return MetricSeries(service, metric, ts, values, None, kind, direction)


def test_infer_kind_from_names() -> None:
    assert infer_kind("CpuUsageRate(%)") == ("cpu", "up")
    assert infer_kind("MemoryUsage(Mi)") == ("memory", "up")
    assert infer_kind("PodServerLatencyP95(s)") == ("latency", "up")
    assert infer_kind("availability_Average") == ("errors", "down")
    assert infer_kind("SuccessRate(%)") == ("errors", "down")
    assert infer_kind("http_5xx_total") == ("errors", "up")
    assert infer_kind("requests_Sum") == ("traffic", "both")
    assert infer_kind("zzz") == ("other", "both")


def test_series_deviation_is_direction_aware() -> None:
    base = [10.0, 11.0, 9.0, 10.5, 9.5, 10.0]
    up = _series("a", "lat", base, [40.0, 42.0], "latency", "up")
    down = _series("a", "lat", base, [1.0, 1.0], "latency", "up")
    dev_up, _ = series_deviation(up, T0, DEFAULT_PARAMS)
    dev_down, _ = series_deviation(down, T0, DEFAULT_PARAMS)
    assert dev_up > 3.0
    assert dev_down == 0.0  # a latency that drops is not worse
    both = _series("a", "x", base, [1.0, 1.0])
    assert series_deviation(both, T0, DEFAULT_PARAMS)[0] > 1.0


def test_series_deviation_uses_every_reference_and_sees_a_series_stop() -> None:
    normal = np.array([10.0, 11.0, 9.0, 10.0, 10.5, 9.5])
    short = _series("a", "cpu", [10.0, 10.5], [52.0, 52.0], "cpu", "up")
    short.normal = normal
    # too little history: the normal period judges
    assert series_deviation(short, T0, DEFAULT_PARAMS)[0] > 3.0
    already = _series("a", "cpu", [50.0] * 2, [50.5, 50.0], "cpu", "up")
    already.normal = normal
    # high before the start too
    assert series_deviation(already, T0, DEFAULT_PARAMS)[0] < DEFAULT_PARAMS.min_deviation
    assert series_deviation(already, T0, replace(DEFAULT_PARAMS, onset=False))[0] > 3.0
    drifted = _series("a", "cpu", [50.0, 51.0, 49.0, 50.0, 50.5, 49.5], [50.5, 50.0], "cpu", "up")
    drifted.normal = normal
    # high all day, not since the start
    assert series_deviation(drifted, T0, DEFAULT_PARAMS)[0] < DEFAULT_PARAMS.min_deviation
    # An earlier incident's tail in the points before the start hides nothing that the normal period sees.
    tail = _series("a", "cpu", [90.0, 95.0, 10.0, 10.5, 9.5, 10.0, 10.2, 9.8], [52.0, 52.0], "cpu", "up")
    tail.normal = normal
    assert series_deviation(tail, T0, DEFAULT_PARAMS)[0] > 3.0
    # the lenient choice is fooled
    assert series_deviation(tail, T0, replace(DEFAULT_PARAMS, reference="both"))[0] < 3.0
    gone = _series("a", "cpu", [10.0] * 6, [], "cpu", "up")
    assert series_deviation(gone, T0, DEFAULT_PARAMS) == (0.0, True)


def test_onset_discounts_what_the_few_clean_points_before_the_start_already_show() -> None:
    normal = np.array([10.0, 11.0, 9.0, 10.0, 10.5, 9.5])
    already = _series("a", "cpu", [50.0, 50.0], [52.0, 52.0], "cpu", "up")
    already.normal = normal
    dev = series_deviation(already, T0, DEFAULT_PARAMS)[0]
    assert dev < 1.5  # high before the start: only the growth from 50 to 52 is the incident's
    assert series_deviation(already, T0, replace(DEFAULT_PARAMS, onset=False))[0] > 3.0
    # The start falls inside the last pre-start step: that point may already hold the incident and is not
    # clean, so the earlier, normal point is the one that says what was there before.
    late = _series("a", "cpu", [10.0, 50.0], [52.0, 52.0], "cpu", "up")
    late.normal = normal
    assert series_deviation(late, T0 - STEP / 2, DEFAULT_PARAMS)[0] > 3.0
    # with the start after its whole step, it is clean
    assert series_deviation(late, T0, DEFAULT_PARAMS)[0] < 1.5
    # With enough points before the start they are a reference of their own and the rule stays out of the way.
    many = _series("a", "cpu", [10.0, 10.5, 9.5, 10.0, 10.2, 9.8], [52.0, 52.0], "cpu", "up")
    many.normal = normal
    assert (
        series_deviation(many, T0, DEFAULT_PARAMS)[0]
        == series_deviation(many, T0, replace(DEFAULT_PARAMS, onset=False))[0]
    )


def _co_case() -> RcaInput:
    """front calls a and b. The symptom (front's latency) spikes and recovers; a moves with it, b rises only after
    front recovered and by a little more than a."""
    quiet = [10.0, 10.5, 9.5, 10.0, 10.2, 9.8]
    series = [
        _series("front", "lat", quiet, [30.0, 30.0, 10.0, 10.0], "latency", "up"),
        _series("a", "lat", quiet, [40.0, 40.0, 10.0, 10.0], "latency", "up"),
        _series("b", "lat", quiet, [10.0, 10.0, 44.0, 44.0], "latency", "up"),
    ]
    return RcaInput(
        T0, ["a", "b", "front"], series, {("front", "a"), ("front", "b")}, symptom=("front", "lat")
    )


def test_co_movement_keeps_the_deviation_that_moves_with_the_symptom() -> None:
    inp = _co_case()
    ev = gather(inp)
    assert ev.scores["b"].by_kind["latency"] > ev.scores["a"].by_kind["latency"]
    assert ev.scores["a"].with_symptom["latency"] == pytest.approx(
        ev.scores["a"].by_kind["latency"], rel=0.05
    )
    assert "latency" not in ev.scores["b"].with_symptom  # it moved against the symptom
    assert rank(inp).services[0] == "a"
    assert rank(inp, replace(DEFAULT_PARAMS, co_move=0.0)).services[0] == "b"
    # With no symptom given, and infer_symptom on, the entry service's most deviating user-facing series stands
    # in for it.
    inferred = _co_case()
    inferred.symptom = None
    assert rank(inferred, replace(DEFAULT_PARAMS, infer_symptom=True)).services[0] == "a"


def _chain_case(root: str = "c") -> RcaInput:
    """a → b → c; the root's CPU rises, and latency rises on it and every caller above it."""
    quiet = [10.0, 10.5, 9.5, 10.0, 10.2, 9.8]
    chain = ["a", "b", "c"]
    series = []
    for s in chain:
        hit = chain.index(s) <= chain.index(root)
        series.append(_series(s, "latency_ms", quiet, [30.0, 31.0] if hit else [10.0, 10.1], "latency", "up"))
        series.append(_series(s, "cpu", quiet, [90.0, 91.0] if s == root else [10.0, 10.1], "cpu", "up"))
    return RcaInput(T0, chain, series, {("a", "b"), ("b", "c")})


def test_metric_scores_keep_the_kind_of_each_deviation() -> None:
    scores = metric_scores(_chain_case(), DEFAULT_PARAMS)
    assert set(scores["c"].by_kind) == {"latency", "cpu"}
    assert set(scores["a"].by_kind) == {"latency"}
    assert scores["c"].metric >= scores["a"].metric


@pytest.mark.parametrize("root", ["b", "c"])
def test_rank_puts_the_deepest_deviating_service_first(root: str) -> None:
    result = rank(_chain_case(root))
    assert result.services[0] == root
    assert result.fault_type == "cpu"
    assert set(result.services) == {"a", "b", "c"}


def test_personalised_pagerank_moves_mass_to_the_deviating_callee() -> None:
    pr = personalised_pagerank(["a", "b"], {("a", "b")}, {"a": 1.0, "b": 1.0}, restart=0.3)
    assert pr["b"] > pr["a"]
    quiet_callee = personalised_pagerank(["a", "b"], {("a", "b")}, {"a": 1.0, "b": 0.0}, restart=0.3)
    assert quiet_callee["a"] > quiet_callee["b"]


def test_personalised_pagerank_follows_the_pull_of_a_callee_not_its_own_score() -> None:
    own = {"a": 1.0, "b": 1.0}
    assert personalised_pagerank(["a", "b"], {("a", "b")}, own, restart=0.3)["b"] > 0.6
    kept = personalised_pagerank(["a", "b"], {("a", "b")}, own, restart=0.3, pull={"a": 1.0, "b": 0.0})
    # b pulls nothing: each keeps its own
    assert kept["a"] == pytest.approx(0.5) and kept["b"] == pytest.approx(0.5)


def _traffic_case() -> RcaInput:
    """front → a → s. a's latency rises with front's; s, a's callee, only gets many more requests (a's retries)."""
    quiet = [10.0, 10.5, 9.5, 10.0, 10.2, 9.8]
    series = [
        _series("front", "lat", quiet, [30.0, 30.0], "latency", "up"),
        _series("a", "lat", quiet, [20.0, 20.0], "latency", "up"),
        _series("s", "requests", quiet, [500.0, 500.0], "traffic", "both"),
    ]
    return RcaInput(T0, ["a", "front", "s"], series, {("front", "a"), ("a", "s")}, symptom=("front", "lat"))


def test_a_callees_traffic_does_not_pull_the_walk_from_its_caller() -> None:
    inp = _traffic_case()
    assert rank(inp).services[0] == "a"
    # Pulled by s's requests, the walk leaves a, and a caller (front) comes out on top instead.
    assert rank(inp, replace(DEFAULT_PARAMS, callee_traffic=1.0)).services[0] != "a"


def _span(
    trace: str, sid: str, parent: str, service: str, start: float, duration: float, status: str = ""
) -> SpanRow:
    return SpanRow(trace, sid, parent, service, "op", start, duration, status)


def test_trace_scores_blame_exclusive_time_not_the_waiting_caller() -> None:
    spans = []
    for i in range(40):
        after = i >= 20
        t = T0 + (i - 20) * 5.0
        slow = 1.0 if after else 0.0
        spans.append(_span(f"t{i}", "1", "", "front", t, 0.11 + slow + 0.001 * (i % 3)))
        spans.append(_span(f"t{i}", "2", "1", "db", t, 0.1 + slow + 0.001 * (i % 3)))
    latency, errors, edges = trace_scores(RcaInput(T0, ["front", "db"], spans=spans), DEFAULT_PARAMS)
    assert latency.get("db", 0) > 0 and latency.get("front", 0) == 0
    assert edges == {("front", "db")}
    assert errors == {}


def test_trace_scores_count_the_deepest_error_only() -> None:
    spans = []
    for i in range(20):
        t = T0 + i
        status = "error" if i >= 10 else "ok"
        spans.append(_span(f"t{i}", "1", "", "front", t - 10, 0.2, status))
        spans.append(_span(f"t{i}", "2", "1", "db", t - 10, 0.1, status))
    _, errors, _ = trace_scores(RcaInput(T0 - 5, ["front", "db"], spans=spans), DEFAULT_PARAMS)
    assert errors.get("db", 0) > 0 and "front" not in errors


def test_trace_scores_blame_the_callee_a_refused_call_names() -> None:
    # front calls db; after the start db refuses connections: front's client spans fail with no db span below.
    spans = []
    for i in range(20):
        t = T0 + i - 10
        down = i >= 10
        spans.append(SpanRow(f"t{i}", "1", "", "front", "GET /", t, 0.2, "error" if down else "ok"))
        spans.append(
            SpanRow(f"t{i}", "2", "1", "front", "call db", t, 0.1, "error" if down else "ok", peer="db")
        )
        if not down:
            spans.append(SpanRow(f"t{i}", "3", "2", "db", "query", t, 0.05, "ok"))
    _, errors, edges = trace_scores(RcaInput(T0, ["front", "db"], spans=spans), DEFAULT_PARAMS)
    assert errors.get("db", 0) > 0 and "front" not in errors
    assert ("front", "db") in edges
    # Without the callee's name, the failed call is the caller's own error.
    anonymous = [replace(sp, peer="") for sp in spans]
    _, errors, _ = trace_scores(RcaInput(T0, ["front", "db"], spans=anonymous), DEFAULT_PARAMS)
    assert errors.get("front", 0) > 0 and "db" not in errors


def test_a_service_reported_down_outranks_the_callers_that_log_its_absence() -> None:
    quiet = [10.0, 10.5, 9.5, 10.0, 10.2, 9.8]
    series = [
        _series("front", "errors", quiet, [80.0, 85.0], "errors", "up"),
        _series("mid", "errors", quiet, [80.0, 85.0], "errors", "up"),
        _series("db", "cpu", quiet, [10.0, 10.1], "cpu", "up"),  # its last points before it died look normal
    ]
    logs = [LogRow(T0 - 300 + i, s, "info", "served") for i in range(300) for s in ("front", "mid")]
    logs += [
        LogRow(T0 + i, s, "error", "connection refused by db") for i in range(60) for s in ("front", "mid")
    ]
    inp = RcaInput(T0, ["db", "front", "mid"], series, {("front", "mid"), ("mid", "db")}, logs=logs)
    assert rank(inp).services[0] != "db"
    down = replace(inp, down={"db"})
    assert rank(down).services[0] == "db" and rank(down).fault_type == "crash"


def test_log_scores_see_new_error_templates() -> None:
    logs = [LogRow(T0 - 60 + i, "a", "info", f"served request {i}") for i in range(30)]
    logs += [LogRow(T0 - 60 + i, "b", "info", f"served request {i}") for i in range(30)]
    logs += [LogRow(T0 + i, "b", "error", f"NullPointerException at line {i}") for i in range(20)]
    logs += [LogRow(T0 + i, "a", "info", f"served request {i}") for i in range(20)]
    score, errors = log_scores(RcaInput(T0, ["a", "b"], logs=logs))
    assert score["b"] > score.get("a", 0.0)
    assert "a" not in errors and errors["b"] > 0


def _requests(t0: float, n: int, faulty: bool) -> tuple[list[SpanRow], list[LogRow]]:
    """n requests: api calls db; db writes "looked up", then "returned" unless faulty (it throws after the lookup)."""
    spans: list[SpanRow] = []
    logs: list[LogRow] = []
    for i in range(n):
        t = t0 + 2 * i
        k = int(t0 * 1000) + i  # ids unique per request
        trace, api, db = f"{k:032x}", f"{2 * k + 1:016x}", f"{2 * k + 2:016x}"
        spans.append(SpanRow(trace, api, "", "api", "GET /order", t, 0.05))
        spans.append(SpanRow(trace, db, api, "db", "lookup", t + 0.01, 0.02))
        logs.append(LogRow(t + 0.005, "api", "info", f"TraceID: {trace} SpanID: {api} order requested"))
        logs.append(LogRow(t + 0.012, "db", "info", f"TraceID: {trace} SpanID: {db} looked up row {i}"))
        if not faulty:
            logs.append(LogRow(t + 0.015, "db", "info", f"TraceID: {trace} SpanID: {db} returned row {i}"))
        logs.append(LogRow(t + 0.04, "api", "info", f"TraceID: {trace} SpanID: {api} order answered"))
    return spans, logs


def test_event_scores_blame_the_service_whose_own_sequence_changed() -> None:
    before_spans, before_logs = _requests(T0 - 60, 30, faulty=False)
    after_spans, after_logs = _requests(T0, 30, faulty=True)
    inp = RcaInput(T0, ["api", "db"], spans=before_spans + after_spans, logs=before_logs + after_logs)
    scores = event_scores(inp)
    assert scores["db"] > 1.0  # after "looked up" comes the end of the span, no longer "returned"
    assert scores.get("api", 0.0) == 0.0  # api writes and calls exactly as before
    # Lines that name no trace or span of the spans cannot be placed in a sequence: no evidence.
    bare = [LogRow(r.ts, r.service, r.level, r.message.split(" ", 4)[-1]) for r in inp.logs]
    assert event_scores(RcaInput(T0, ["api", "db"], spans=inp.spans, logs=bare)) == {}
    # The same requests on both sides: nothing changed.
    same_spans, same_logs = _requests(T0, 30, faulty=False)
    assert not any(
        event_scores(
            RcaInput(T0, ["api", "db"], spans=before_spans + same_spans, logs=before_logs + same_logs)
        ).values()
    )


def _errors_and_requests(t0: float, seconds: int, service: str, errors_per_min: int) -> list[LogRow]:
    """One "served" line a second, and `errors_per_min` error lines a minute, from `service`."""
    logs = [LogRow(t0 + i, service, "info", f"served request {i}") for i in range(seconds)]
    step = 60.0 / errors_per_min if errors_per_min else 0.0
    logs += [
        LogRow(t0 + k * step + 0.5, service, "error", f"NullPointerException at line {k}")
        for k in range(int(seconds / 60 * errors_per_min))
    ]
    return logs


def test_log_scores_judge_against_the_normal_lines_when_the_pre_window_held_a_fault() -> None:
    # The previous fault on b threw in the pre-window exactly as the new one does after the start.
    logs = _errors_and_requests(T0 - 600, 600, "b", 20) + _errors_and_requests(T0, 180, "b", 20)
    logs += _errors_and_requests(T0 - 600, 600, "a", 0) + _errors_and_requests(T0, 180, "a", 0)
    normal = _errors_and_requests(T0 - 7200, 60, "b", 0) + _errors_and_requests(T0 - 7200, 60, "a", 0)
    inp = RcaInput(T0, ["a", "b"], logs=logs, normal_logs=normal)
    before_only, before_errors = log_scores(inp, replace(DEFAULT_PARAMS, signal_reference="before"))
    # cancelled by the pre-window
    assert before_only.get("b", 0.0) < 0.5 and before_errors.get("b", 0.0) < 0.5
    score, errors = log_scores(inp)  # strict: what either reference shows
    assert errors["b"] == pytest.approx(np.log1p(20), rel=0.05)  # 20 error lines a minute more than normal
    assert score["b"] > 3.0 and score.get("a", 0.0) == 0.0
    assert log_scores(inp, replace(DEFAULT_PARAMS, signal_reference="normal"))[0]["b"] == pytest.approx(
        score["b"]
    )
    # The onset option discounts what the pre-window already showed against the normal lines: nothing is left.
    onset, _ = log_scores(inp, replace(DEFAULT_PARAMS, signal_onset=True))
    assert onset.get("b", 0.0) < 0.5
    # Without normal lines the strict reference is the pre-window alone.
    assert log_scores(replace(inp, normal_logs=[])) == (before_only, before_errors)
    assert log_scores(replace(inp, normal_logs=[]), replace(DEFAULT_PARAMS, signal_reference="normal")) == (
        before_only,
        before_errors,
    )


def test_log_scores_compare_rates_per_minute_of_a_short_normal_period() -> None:
    # One normal minute with 10 error lines (and a stray line 100 s later); 180 s after the start at the same rate.
    normal = _errors_and_requests(T0 - 7200, 60, "b", 10) + [
        LogRow(T0 - 7200 + 160, "b", "info", "served request 0")
    ]
    after = _errors_and_requests(T0, 180, "b", 10)
    inp = RcaInput(T0, ["b"], logs=after, normal_logs=normal)
    _, errors = log_scores(inp, replace(DEFAULT_PARAMS, signal_reference="normal"))
    assert errors.get("b", 0.0) < 0.1  # 30 lines in 3 minutes is the normal minute's 10 a minute
    _, errors = log_scores(
        replace(inp, logs=_errors_and_requests(T0, 180, "b", 40)),
        replace(DEFAULT_PARAMS, signal_reference="normal"),
    )
    assert errors["b"] == pytest.approx(np.log1p(30), rel=0.1)


def test_period_seconds_ignores_stray_lines() -> None:
    from agents.rca import period_seconds

    ts = [T0 + i * 0.5 for i in range(120)] + [T0 - 50, T0 + 110]
    assert 55 < period_seconds(ts) < 65
    assert period_seconds([T0]) == 1.0


def test_trace_scores_judge_against_normal_spans_when_the_pre_window_was_slow() -> None:
    def calls(t0: float, n: int, slow: bool) -> list[SpanRow]:
        out = []
        for i in range(n):
            t = t0 + i
            extra = 1.0 if slow else 0.0
            out.append(_span(f"{t0}-{i}", "1", "", "front", t, 0.11 + extra + 0.001 * (i % 3)))
            out.append(_span(f"{t0}-{i}", "2", "1", "db", t, 0.1 + extra + 0.001 * (i % 3)))
        return out

    spans = calls(T0 - 100, 40, slow=True) + calls(T0, 40, slow=True)  # db was already slow before the start
    inp = RcaInput(T0, ["front", "db"], spans=spans, normal_spans=calls(T0 - 7200, 30, slow=False))
    assert trace_scores(replace(inp, normal_spans=[]), DEFAULT_PARAMS)[0].get("db", 0.0) == 0.0
    latency, _, edges = trace_scores(inp, DEFAULT_PARAMS)
    # exclusive time, against the normal spans
    assert latency["db"] > 1.0 and latency.get("front", 0.0) == 0.0
    assert edges == {("front", "db")}  # the normal spans add no edges
    assert trace_scores(inp, replace(DEFAULT_PARAMS, signal_reference="before"))[0].get("db", 0.0) == 0.0
    assert trace_scores(inp, replace(DEFAULT_PARAMS, signal_onset=True))[0].get("db", 0.0) == 0.0


def test_event_scores_judge_against_the_normal_requests() -> None:
    before_spans, before_logs = _requests(T0 - 60, 30, faulty=True)  # the previous fault
    after_spans, after_logs = _requests(T0, 30, faulty=True)
    normal_spans, normal_logs = _requests(T0 - 7200, 30, faulty=False)
    inp = RcaInput(T0, ["api", "db"], spans=before_spans + after_spans, logs=before_logs + after_logs,
                   normal_spans=normal_spans, normal_logs=normal_logs)  # fmt: skip
    assert event_scores(inp, replace(DEFAULT_PARAMS, signal_reference="before")).get("db", 0.0) == 0.0
    scores = event_scores(inp)
    assert scores["db"] > 1.0 and scores.get("api", 0.0) == 0.0
    assert event_scores(inp, replace(DEFAULT_PARAMS, signal_onset=True)).get("db", 0.0) == 0.0
    # Normal lines without normal spans cannot be placed in sequences: the pre-window alone judges.
    assert event_scores(replace(inp, normal_spans=[])).get("db", 0.0) == 0.0


def test_common_scale_keeps_a_weak_modality_weak() -> None:
    # x: its CPU leaves its range by far; y: its log mix shifts a little (a few extra lines of a second template).
    quiet = [10.0, 10.5, 9.5, 10.0, 10.2, 9.8]
    series = [
        _series("x", "cpu", quiet, [95.0, 97.0], "cpu", "up"),
        _series("y", "cpu", quiet, [10.1, 9.9], "cpu", "up"),
    ]
    logs = [LogRow(T0 - 300 + i, "y", "info", "served") for i in range(200)]
    logs += [LogRow(T0 + i / 2, "y", "info", "served") for i in range(150)]
    logs += [LogRow(T0 + i, "y", "info", "cache refreshed") for i in range(25)]
    inp = RcaInput(T0, ["x", "y"], series=series, logs=logs)
    assert rank(inp).services[0] == "x"
    # Each modality scaled by its own best service would make y's small shift as strong as x's CPU.
    assert rank(inp, replace(DEFAULT_PARAMS, common_scale=False)).services[0] == "y"


def test_self_explained_needs_the_resource_to_explain_the_trouble() -> None:
    assert self_explained({"cpu": 4.0, "latency": 4.5}) == 4.0  # saturated and slow: the weaker of the two
    assert self_explained({"memory": 3.0, "errors": 2.0}) == 2.0
    # far slower than its CPU explains: it waits on someone
    assert self_explained({"cpu": 1.5, "latency": 4.0}) == 0.0
    assert self_explained({"cpu": 4.0, "traffic": 4.0}) == 0.0  # busy, not slow
    assert self_explained({"latency": 4.0}) == 0.0


def _waiting_caller_case() -> RcaInput:
    """front → a → s. a is far slower than s, but only s's CPU saturates with its own latency; a's log mix shifts."""
    quiet = [10.0, 10.5, 9.5, 10.0, 10.2, 9.8]
    series = [
        _series("a", "lat", quiet, [400.0, 420.0], "latency", "up"),
        _series("a", "cpu", quiet, [10.1, 10.0], "cpu", "up"),
        _series("s", "lat", quiet, [60.0, 61.0], "latency", "up"),
        _series("s", "cpu", quiet, [60.0, 62.0], "cpu", "up"),
        _series("front", "cpu", quiet, [10.0, 10.1], "cpu", "up"),
    ]
    logs = [LogRow(T0 - 300 + i, "a", "info", "served") for i in range(300)]
    logs += [LogRow(T0 + i, "a", "info", "served") for i in range(60)] + [
        LogRow(T0 + i, "a", "info", "slow call to s") for i in range(40)
    ]
    return RcaInput(T0, ["a", "front", "s"], series, {("front", "a"), ("a", "s")}, logs=logs)


def test_a_service_slowed_by_its_own_resources_outranks_the_caller_waiting_on_it() -> None:
    inp = _waiting_caller_case()
    assert rank(inp).services[0] == "s"
    assert rank(inp).fault_type == "cpu"
    # Without the corroboration, the caller's larger latency and its log shift win.
    assert rank(inp, replace(DEFAULT_PARAMS, w_self_explained=0.0)).services[0] == "a"


def test_no_deviation_means_no_answer() -> None:
    quiet = [10.0, 10.5, 9.5, 10.0, 10.2, 9.8]
    inp = RcaInput(T0, ["a", "b"], [_series("a", "cpu", quiet, [10.0, 10.1], "cpu", "up")])
    result = rank(inp)
    assert not result.answered and result.fault_type is None


def test_logistic_fit_and_calibration_metrics() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 1))
    y = (rng.random(400) < 1 / (1 + np.exp(-3 * x[:, 0]))).astype(float)
    w, b = fit(x, y, l2=0.01)
    assert 2.0 < w[0] < 4.5 and abs(b) < 0.5
    assert brier([1.0, 0.0], [1.0, 0.0]) == 0.0
    assert ece([0.9] * 10, [1.0] * 9 + [0.0]) == pytest.approx(0.0)
    assert ece([0.9] * 10, [0.0] * 10) == pytest.approx(0.9)


# ----------------------------------------------------------------------------- the case format and bench


def _write(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_chain_case(folder: Path, root: str, names: dict[str, str] | None = None) -> None:
    """A chain case on disk: front → mid → db, trouble starting at the root."""
    names = names or {}
    n = lambda s: names.get(s, s)  # noqa: E731
    folder.mkdir(parents=True)
    chain = ["front", "mid", "db"]
    rows: list[list[object]] = []
    for s in chain:
        hit = chain.index(s) <= chain.index(root)
        for i in range(12):
            t = T0 + (i - 8) * STEP
            after = i >= 8
            rows.append([t, n(s), "latency_p95", 30.0 + i % 2 if (after and hit) else 10.0 + 0.3 * (i % 3)])
            rows.append([t, n(s), "cpu_usage", 90.0 + i % 2 if (after and s == root) else 20.0 + (i % 3)])
    _write(folder / "metrics.csv", ["timestamp", "service", "metric", "value"], rows)
    _write(folder / "topology.csv", ["caller", "callee"], [[n("front"), n("mid")], [n("mid"), n("db")]])
    (folder / "case.json").write_text(
        json.dumps(
            {
                "system": "synthetic",
                "anomaly_start": T0,
                "symptom": {"service": n("front"), "metric": "latency_p95"},
            }
        )
    )
    (folder / "label.json").write_text(json.dumps({"root_cause": n(root), "fault_type": "cpu"}))


def test_load_case_reads_every_file_and_never_the_label(tmp_path: Path) -> None:
    write_chain_case(tmp_path / "c1", "mid")
    (tmp_path / "c1" / "label.json").write_text("not json")  # would fail if load_case read it
    case = load_case(tmp_path / "c1")
    assert case.system == "synthetic" and case.input.services == ["db", "front", "mid"]
    assert case.input.edges == {("front", "mid"), ("mid", "db")}
    assert case.input.symptom == ("front", "latency_p95")
    with pytest.raises(ConfigError, match="label.json"):
        load_label(tmp_path / "c1")


def test_load_case_reads_the_optional_peer_of_a_span(tmp_path: Path) -> None:
    write_chain_case(tmp_path / "c1", "mid")
    header = ["trace_id", "span_id", "parent_id", "service", "operation", "start_us", "duration_us", "status"]
    _write(
        tmp_path / "c1" / "spans.csv",
        header + ["peer"],
        [["t", "1", "", "front", "call", T0 * 1e6, 1000, "error", "mid"]],
    )
    _write(
        tmp_path / "c1" / "normal_spans.csv", header, [["t", "1", "", "front", "call", T0 * 1e6, 1000, "ok"]]
    )
    case = load_case(tmp_path / "c1")
    assert case.input.spans[0].peer == "mid" and case.input.normal_spans[0].peer == ""


def test_load_case_rejects_bad_input_clearly(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "case.json").write_text("{}")
    with pytest.raises(ConfigError, match="anomaly_start"):
        load_case(tmp_path / "bad")
    write_chain_case(tmp_path / "c", "db")
    (tmp_path / "c" / "metrics.csv").write_text("time,svc\n1,a\n")
    with pytest.raises(ConfigError, match="missing column"):
        load_case(tmp_path / "c")


def test_relabelling_services_changes_no_ranking(tmp_path: Path) -> None:
    write_chain_case(tmp_path / "plain", "mid")
    names = {"front": "zz-edge", "mid": "aa-orders", "db": "mm-store"}
    write_chain_case(tmp_path / "renamed", "mid", names)
    plain = rank(load_case(tmp_path / "plain").input)
    renamed = rank(load_case(tmp_path / "renamed").input)
    assert [names[s] for s in plain.services] == renamed.services
    assert plain.services[0] == "mid"
    assert [round(s.score, 9) for s in plain.ranking] == [round(s.score, 9) for s in renamed.ranking]


def test_bench_scores_cases_and_baselines(tmp_path: Path) -> None:
    for i, root in enumerate(["db", "mid", "db", "front"]):
        write_chain_case(tmp_path / f"case{i}", root)
    model = ConfidenceModel((0.0,) * len(FEATURES), 0.0, "test")
    result = run_bench(tmp_path, model=model)
    assert result["cases"] == 4
    assert result["ac1"] == 1.0 and result["no_answer_rate"] == 0.0
    assert result["fault_type_acc"] == 1.0
    assert result["brier"] == pytest.approx(0.25) and result["mean_confidence"] == pytest.approx(0.5)
    assert result["systems"]["synthetic"]["cases"] == 4
    assert result["baselines"]["random"]["ac1"] == pytest.approx(1 / 3)
    assert [c["rank"] for c in result["per_case"]] == [1, 1, 1, 1]


def test_baro_baseline_takes_the_largest_iqr_deviation(tmp_path: Path) -> None:
    write_chain_case(tmp_path / "c", "db")
    scores = baro_scores(load_case(tmp_path / "c").input)
    assert max(scores, key=lambda s: scores[s]) in {"db", "front", "mid"}
    assert all(v > 0 for v in scores.values())
    # The formula itself: max over a service's series of |x - median(ref)| / IQR(ref) after the start.
    exact = RcaInput(
        T0,
        ["a", "b", "c"],
        [
            _series("a", "x", [1.0, 2.0, 3.0, 4.0, 5.0], [9.0, 4.0]),  # median 3, IQR 2: (9 - 3) / 2
            _series("a", "y", [1.0, 2.0, 3.0, 4.0, 5.0], [5.0]),  # 1.0, smaller than x's
            _series("b", "x", [7.0] * 5, [7.0]),  # flat and unmoved
            _series("c", "x", [7.0] * 5, [8.0]),  # flat and moved: no IQR to divide by
        ],
    )
    assert baro_scores(exact) == {"a": 3.0, "b": 0.0, "c": float("inf")}


def test_cli_bench_rca_prints_json_and_refuses_a_bad_folder(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sregraph.cli import app

    for i, root in enumerate(["db", "mid"]):
        write_chain_case(tmp_path / "cases" / f"case{i}", root)
    runner = CliRunner()
    out = runner.invoke(app, ["bench", "rca", "--data", str(tmp_path / "cases"), "--format", "json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    for key in (
        "cases",
        "ac1",
        "ac3",
        "ac5",
        "avg5",
        "fault_type_acc",
        "no_answer_rate",
        "brier",
        "ece",
        "seconds_per_case",
        "systems",
        "per_case",
    ):
        assert key in data
    assert data["cases"] == 2 and data["per_case"][0]["rank"] == 1
    text = runner.invoke(app, ["bench", "rca", "--data", str(tmp_path / "cases")])
    assert "baseline: baro" in text.output and "sregraph ranker" in text.output
    assert runner.invoke(app, ["bench", "rca", "--data", str(tmp_path / "missing")]).exit_code == 2


SHARED = SHARED_DATA


@pytest.mark.skipif(
    not (SHARED / "nezha-ob").is_dir(),
    reason=f"the shared Nezha OnlineBoutique day is not at {SHARED} (set SREGRAPH_SHARED_DATA)",
)
def test_real_onlineboutique_day_beats_both_baselines(tmp_path: Path) -> None:
    from evals.rca_convert import convert_nezha

    convert_nezha(SHARED / "nezha-ob", tmp_path)
    result = run_bench(tmp_path)
    assert result["cases"] == 24 and result["no_answer_rate"] == 0.0
    assert result["ac1"] > result["baselines"]["baro"]["ac1"] > result["baselines"]["random"]["ac1"]
    assert result["ac3"] >= result["baselines"]["baro"]["ac3"]


def _edge(
    caller: str, callee: str, side: Literal["client", "server"], before: list[float], after: list[float]
) -> EdgeSeries:
    return EdgeSeries(caller, callee, side, _series(callee, "latency_p50", before, after, "latency", "up"))


def test_edge_gap_points_at_the_callee_whose_callers_wait_on_the_wire() -> None:
    """A delay on c's network: both callers see it, c's own server-side view does not; b is only slow inside."""
    quiet = [10.0, 10.5, 9.5, 10.0, 10.2, 9.8]
    inp = RcaInput(T0, ["a", "b", "c"], [], {("a", "b"), ("a", "c"), ("b", "c")})
    inp.edge_series = [
        _edge("a", "c", "client", quiet, [200.0, 210.0]),
        _edge("a", "c", "server", quiet, [10.0, 10.1]),
        _edge("b", "c", "client", quiet, [190.0, 200.0]),
        _edge("b", "c", "server", quiet, [10.1, 9.9]),
        _edge("a", "b", "client", quiet, [200.0, 210.0]),
        _edge("a", "b", "server", quiet, [195.0, 205.0]),  # b's own time: not the wire
    ]
    gaps = edge_gaps(inp, DEFAULT_PARAMS)
    assert gaps["c"]["latency"] > 3.0
    assert gaps["b"]["latency"] < DEFAULT_PARAMS.min_deviation
    assert rank(inp).services[0] == "c"
    # Without the server side the client side alone speaks for the callee.
    inp.edge_series = [e for e in inp.edge_series if e.side == "client"]
    assert edge_gaps(inp, DEFAULT_PARAMS)["b"]["latency"] > 3.0


def test_a_live_service_nobody_calls_any_more_points_at_its_caller() -> None:
    """b's latency series stop (no requests to time) while its CPU still reports: b is alive, a stopped calling."""
    quiet = [10.0, 10.5, 9.5, 10.0, 10.2, 9.8]
    series = [
        _series("a", "cpu", quiet, [10.1, 9.9], "cpu", "up"),
        _series("b", "cpu", quiet, [10.0, 10.1], "cpu", "up"),
        _series("b", "server_latency", quiet, [], "latency", "up"),
        _series("c", "cpu", quiet, [10.0, 10.1], "cpu", "up"),
        _series("z", "cpu", quiet, [10.0, 12.0], "cpu", "up"),  # a small unrelated move
    ]
    inp = RcaInput(T0, ["a", "b", "c", "z"], series, {("a", "b"), ("c", "z")})
    scores = metric_scores(inp, DEFAULT_PARAMS)
    assert scores["b"].silenced and not scores["b"].vanished
    assert rank(inp).services[0] == "a"
    assert rank(inp, replace(DEFAULT_PARAMS, w_silenced=0.0)).services[0] != "a"
    # Every series of b stops: that is a crash of b, not a caller's trouble.
    inp.series = [x for x in series if x.service != "b"] + [
        _series("b", "cpu", quiet, [], "cpu", "up"),
        series[2],
    ]
    scores = metric_scores(inp, DEFAULT_PARAMS)
    assert scores["b"].vanished and rank(inp).services[0] == "b"


def test_a_confidence_artefact_fitted_on_other_features_is_refused(tmp_path: Path) -> None:
    stale = tmp_path / "model.json"
    stale.write_text(
        json.dumps(
            {
                "version": "old",
                "features": ["margin", "agree"],
                "weights": {"margin": 1.0, "agree": 1.0},
                "bias": 0.0,
            }
        )
    )
    with pytest.raises(ConfigError, match="refit"):
        ConfidenceModel.load(stale)
    assert ConfidenceModel.load(tmp_path / "none.json") is None


CURVE = [
    {"threshold": 0.0, "coverage": 1.0, "risk": 0.4},
    {"threshold": 0.5, "coverage": 0.8, "risk": 0.3},
    {"threshold": 0.6, "coverage": 0.5, "risk": 0.15},
    {"threshold": 0.7, "coverage": 0.3, "risk": 0.1},
    {"threshold": 0.8, "coverage": 0.05, "risk": 0.0},
]


def test_min_confidence_acts_on_the_most_incidents_the_target_allows() -> None:
    """100 cases: the threshold that acts on the most answers while their error stays at most the target."""
    chosen = choose_threshold(CURVE, 100, target_risk=0.2, min_acted=10)
    assert chosen["threshold"] == 0.6 and chosen["target_met"]
    assert chosen["row"] == {"threshold": 0.6, "coverage": 0.5, "risk": 0.15, "acted_on": 50}
    assert choose_threshold(CURVE, 100, target_risk=0.3, min_acted=10)["threshold"] == 0.5
    assert choose_threshold(CURVE, 100, target_risk=0.5, min_acted=10)["threshold"] == 0.0
    # 0.8 is error-free, but on five answers: below min_acted it does not count.
    assert choose_threshold(CURVE, 100, target_risk=0.05, min_acted=10)["threshold"] == 0.7
    unreachable = choose_threshold(CURVE, 100, target_risk=0.05, min_acted=5)
    assert unreachable["threshold"] == 0.8 and unreachable["target_met"]
    # No supported row meets the target: the lowest-risk supported row, flagged.
    missed = choose_threshold(CURVE, 100, target_risk=0.05, min_acted=40)
    assert missed["threshold"] == 0.6 and not missed["target_met"]
    with pytest.raises(ValueError):
        choose_threshold(CURVE, 5, target_risk=0.2, min_acted=10)


def test_min_confidence_is_not_set_below_the_confidences_the_curve_has_seen() -> None:
    """Every out-of-fold confidence was at least 0.6: thresholds 0 to 0.6 act on the same cases, and the
    highest of them is taken (below the seen confidences the curve has no evidence)."""
    flat = [{"threshold": t, "coverage": 1.0, "risk": 0.18} for t in (0.0, 0.2, 0.4, 0.6)] + [
        {"threshold": 0.8, "coverage": 0.5, "risk": 0.15}
    ]
    assert choose_threshold(flat, 100, target_risk=0.2, min_acted=10)["threshold"] == 0.6


def test_the_shipped_threshold_is_the_rule_applied_to_the_shipped_curve() -> None:
    """What agents/rca_confidence.json stores is what tune_rca --write would store from its own curve."""
    from evals.tune_rca import MIN_ACTED, TARGET_RISK, min_confidence_choice

    data = json.loads(ARTEFACT.read_text())
    assert data["min_confidence"] == min_confidence_choice(data["out_of_fold"])
    assert (data["min_confidence"]["target_risk"], data["min_confidence"]["min_acted"]) == (
        TARGET_RISK,
        MIN_ACTED,
    )
    row = next(
        r
        for r in data["out_of_fold"]["selective_risk"]
        if r["threshold"] == data["min_confidence"]["threshold"]
    )
    assert row["risk"] <= TARGET_RISK


def test_the_config_default_of_min_confidence_is_the_artefacts_threshold(tmp_path: Path) -> None:
    from agents.analyst import AnalystConfig

    threshold = json.loads(ARTEFACT.read_text())["min_confidence"]["threshold"]
    assert AnalystConfig().min_confidence == threshold == default_min_confidence()
    assert AnalystConfig(min_confidence=0.42).min_confidence == 0.42
    assert default_min_confidence(tmp_path / "none.json") == FALLBACK_MIN_CONFIDENCE
    bare = tmp_path / "bare.json"
    bare.write_text(
        json.dumps({k: v for k, v in json.loads(ARTEFACT.read_text()).items() if k != "min_confidence"})
    )
    assert default_min_confidence(bare) == FALLBACK_MIN_CONFIDENCE


def test_fault_type_reads_the_pattern_and_the_kind_of_trouble_seen() -> None:
    assert fault_type(ServiceScore("a", vanished=True)) == "crash"
    assert fault_type(ServiceScore("a", by_kind={"cpu": 4.0, "latency": 3.0})) == "cpu"
    assert fault_type(ServiceScore("a", by_kind={"memory": 4.0, "cpu": 1.0})) == "memory"
    assert fault_type(ServiceScore("a", by_kind={"latency": 3.0})) == "latency"
    # Errors the service wrote itself outweigh a CPU that moved with them.
    assert fault_type(ServiceScore("a", by_kind={"cpu": 4.0, "latency": 3.0}, log_errors=1.0)) == "error"
    # A small error-rate move reads as latency, unless errors were what users saw.
    slow_and_failing = ServiceScore("a", by_kind={"latency": 3.0, "errors": 1.2})
    assert fault_type(slow_and_failing) == "latency"
    assert fault_type(slow_and_failing, "errors") == "error"
    assert fault_type(ServiceScore("a")) == "other"


def test_co_movement_with_a_symptom_flat_where_the_series_overlap_warns_of_nothing() -> None:
    """The symptom varies overall, but not over the minutes another series reported: no correlation, no warning."""
    from agents.rca import _pearson

    assert _pearson(np.array([1.0, 1.0, 1.0]), np.array([1.0, 2.0, 3.0])) == 0.0
    assert _pearson(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0])) == pytest.approx(1.0)
    # The symptom rises at the start and stays flat after it; b reports only after the start, against its normal
    # period, so the two overlap where the symptom does not move.
    symptom = _series("front", "latency_ms", [10.0] * 8, [40.0, 40.0, 40.0], "latency", "up")
    late = _series("b", "latency_ms", [], [30.0, 31.0, 33.0], "latency", "up")
    late.normal = np.array([10.0, 10.5, 9.5, 10.0, 10.2])
    inp = RcaInput(T0, ["front", "b"], [symptom, late], {("front", "b")}, symptom=("front", "latency_ms"))
    ev = gather(inp)  # pytest turns a RuntimeWarning into an error
    assert ev.scores["b"].by_kind["latency"] > DEFAULT_PARAMS.min_deviation
    assert "latency" not in ev.scores["b"].with_symptom


def test_common_mode_is_the_median_of_the_candidates_other_than_the_most_deviating() -> None:
    values = {f"s{i}": float(i) for i in range(10)}  # 0..9; without the top three: 0..6
    assert _common_mode(values, 3) == pytest.approx(3.0)
    assert _common_mode({"a": 5.0, "b": 4.0, "c": 3.0}, 3) == 0.0  # no rest to take it from
    assert _common_mode({}, 3) == 0.0


def _shared_shift_evidence() -> Evidence:
    """40 services whose latency moved together (a load change), one noisy beyond them, and the cause, whose only
    news is in its logs."""
    scores = {f"s{i}": ServiceScore(f"s{i}", by_kind={"latency": 3.0}) for i in range(40)}
    scores["noisy"] = ServiceScore("noisy", by_kind={"latency": 4.6})
    scores["cause"] = ServiceScore("cause", log=1.5)
    return Evidence(list(scores), scores, set())


def test_what_most_services_share_is_no_ones_evidence() -> None:
    shared = replace(DEFAULT_PARAMS, common_mode=False)
    assert combine(_shared_shift_evidence(), shared).services[0] == "noisy"
    # Less the common mode, the noisy service keeps only its excess, and the cause's logs stand out.
    assert combine(_shared_shift_evidence(), DEFAULT_PARAMS).services[0] == "cause"


def test_a_success_share_is_judged_as_its_failure_share() -> None:
    """Availability pinned at 100 % that falls to 97.8 %: a small move of the value, but failures from none."""
    s = _series(
        "a", "availability", [100.0, 100.0, 100.0, 100.0, 100.0, 100.0], [99.46, 97.83], "errors", "down"
    )
    s = replace(s, normal=np.full(30, 100.0))
    as_failures, _ = series_deviation(s, T0, DEFAULT_PARAMS)
    as_values, _ = series_deviation(s, T0, replace(DEFAULT_PARAMS, failure_share=False))
    assert as_values < DEFAULT_PARAMS.min_deviation <= as_failures
    # A series that is not a share (it leaves 0..100) is judged as it is.
    counts = replace(s, values=s.values * 10, normal=np.full(30, 1000.0))
    assert (
        series_deviation(counts, T0, DEFAULT_PARAMS)[0]
        == series_deviation(counts, T0, replace(DEFAULT_PARAMS, failure_share=False))[0]
    )
