"""The observer's streaming sense: detector ensembles per series, gated by an effect that matters."""

from __future__ import annotations

import random

from agents.detection.stream import MetricSense
from agents.detection.window import Windows, measure_service
from tools.telemetry import LocalTelemetryStore

TICK = 0.5


def noisy(n: int, level: float, sd: float, seed: int = 7, start: float = 1000.0) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    return [(start + i * TICK, max(0.0, rng.gauss(level, sd))) for i in range(n)]


def feed_in_polls(
    sense: MetricSense, metric: str, points: list[tuple[float, float]], baseline: float, per_poll: int = 1
):
    """Feed as the observer does: each poll re-sends a window that overlaps what was already seen."""
    alerts = []
    for end in range(per_poll, len(points) + 1, per_poll):
        window = points[max(0, end - 72) : end]
        alerts.append(sense.feed("checkout", metric, window, baseline, since=window[-1][0] - 6.0))
    return alerts


def test_a_step_in_latency_alerts_on_its_first_points():
    sense = MetricSense(warmup_points=40)
    history = noisy(120, 40.0, 3.0)
    step = [(ts + 120 * TICK, v + 80.0) for ts, v in noisy(10, 40.0, 3.0, seed=8)]
    alerts = feed_in_polls(sense, "latency_p95_ms", history + step, baseline=40.0)
    assert all(a is None for a in alerts[:120]), "noise alone must not alert"
    first = next(i for i, a in enumerate(alerts) if a is not None)
    assert first <= 121, f"the step was seen only {first - 119} points after it began"
    alert = alerts[first]
    assert alert.value > 100 and alert.baseline == 40.0
    assert alert.explanation and alert.detector != "ensemble"


def test_noise_never_alerts_even_when_the_detectors_are_surprised():
    # A very calm series makes small wiggles statistically surprising; the effect gate keeps them quiet.
    sense = MetricSense(warmup_points=40)
    calm = noisy(2000, 20.0, 0.01, seed=3)
    wiggle = [(ts, v + (5.0 if i % 97 == 0 else 0.0)) for i, (ts, v) in enumerate(calm)]
    assert all(a is None for a in feed_in_polls(sense, "latency_p95_ms", wiggle, baseline=20.0))


def test_a_change_smaller_than_the_gate_does_not_alert():
    sense = MetricSense(warmup_points=40, gate=2.0)
    history = noisy(100, 0.0, 0.0)
    small = [(ts + 100 * TICK, 0.04) for ts, _ in noisy(20, 0.0, 0.0)]  # error_ratio floor 0.03: gate 0.06
    assert all(a is None for a in feed_in_polls(sense, "error_ratio", history + small, baseline=0.0))
    big = [(ts + 120 * TICK, 0.5) for ts, _ in noisy(5, 0.0, 0.0)]
    assert feed_in_polls(sense, "error_ratio", big, baseline=0.0)[-1] is not None


def test_an_alert_holds_while_the_effect_lasts_and_clears_after():
    sense = MetricSense(warmup_points=40)
    history = noisy(100, 0.0, 0.001)
    bad = [(ts + 100 * TICK, 0.5) for ts, _ in noisy(30, 0.0, 0.0)]
    good = [(ts + 130 * TICK, 0.0) for ts, _ in noisy(10, 0.0, 0.0)]
    alerts = feed_in_polls(sense, "error_ratio", history + bad + good, baseline=0.0)
    assert all(a is not None for a in alerts[101:130]), (
        "a constant bad level is no longer surprising, but holds"
    )
    assert alerts[-1] is None


def test_overlapping_windows_teach_each_point_once():
    sense = MetricSense()
    points = noisy(200, 10.0, 1.0)
    feed_in_polls(sense, "cpu_percent", points, baseline=10.0, per_poll=3)
    assert sense.points_seen == 198


def test_measure_service_reports_which_sense_saw_a_deviation(tmp_path):
    store = LocalTelemetryStore(tmp_path / "t.db")
    now = 2000.0
    rng = random.Random(1)
    for i in range(80):
        ts = now - 40.0 + i * TICK
        store.write_metric("error_ratio", {"service": "payments"}, 0.0, ts)
        store.write_metric(
            "latency_p95_ms",
            {"service": "payments"},
            rng.gauss(30.0, 1.0) + (60.0 if ts > now - 1.2 else 0.0),
            ts,
        )
    windows = Windows.ending_at(now, 6.0, 30.0)
    plain, _ = measure_service(store, "payments", windows, z_threshold=4.0)
    assert plain == [], "1.2 s of a doubled latency does not move a 6 s window's median"
    sensed, _ = measure_service(store, "payments", windows, z_threshold=4.0, sense=MetricSense())
    assert [(s.name, s.sense.split(":")[0]) for s in sensed] == [("latency_p95_ms", "ensemble")]
    assert sensed[0].why and sensed[0].onset is not None and sensed[0].onset > now - 1.5


def test_settings_choose_prometheus_for_metrics_and_keep_local_logs(tmp_path):
    from sregraph.config import load_settings
    from sregraph.engine import telemetry_for
    from tools.base import ConfigError
    from tools.prometheus import PrometheusTelemetry
    from tools.telemetry import SplitTelemetry

    local = LocalTelemetryStore(tmp_path / "t.db")
    assert telemetry_for(load_settings(environ={}), local) is local
    env = {
        "SREGRAPH_TELEMETRY__BACKEND": "prometheus",
        "SREGRAPH_TELEMETRY__PROMETHEUS_URL": "http://127.0.0.1:9",
    }
    chosen = telemetry_for(load_settings(environ=env), local)
    assert isinstance(chosen, SplitTelemetry) and isinstance(chosen.metrics, PrometheusTelemetry)
    assert chosen.logs_and_spans is local
    try:  # refused when the settings load (it used to pass until the backend was built)
        telemetry_for(load_settings(environ={**env, "SREGRAPH_TELEMETRY__RATE_WINDOW": "thirty"}), local)
    except ConfigError as exc:
        assert "rate_window" in str(exc)
    else:
        raise AssertionError("a bad rate window must be refused")


def test_split_telemetry_reads_each_kind_from_its_backend(tmp_path):
    from tools.base import LogRecord
    from tools.telemetry import SplitTelemetry

    metrics, logs = LocalTelemetryStore(tmp_path / "m.db"), LocalTelemetryStore(tmp_path / "l.db")
    metrics.write_metric("cpu_percent", {"service": "a"}, 5.0, 10.0)
    logs.write_metric("cpu_percent", {"service": "a"}, 99.0, 10.0)
    logs.write_log(LogRecord(ts=10.0, service="a", level="error", message="boom", attrs={}))
    split = SplitTelemetry(metrics, logs)
    assert [p[1] for s in split.query_range("cpu_percent", {"service": "a"}, 0, 20) for p in s.points] == [
        5.0
    ]
    assert [r.message for r in split.search_logs("a", 0, 20, level="error")] == ["boom"]
    assert split.spans(None, 0, 20) == []
