"""Engine bookkeeping: runs killed before their first checkpoint are restarted, busy services are known."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sregraph.config import load_settings
from sregraph.engine import Engine
from tests.fixtures.telemetry import FAULT_AT, TOPOLOGY, make_toolbox, write_series
from tests.support import FakeHealth, FakeRuntime
from tools.domain import Trigger


def test_run_killed_before_its_first_checkpoint_is_restarted(tmp_path: Path) -> None:
    tb = make_toolbox(tmp_path, FakeRuntime.up(TOPOLOGY), FakeHealth())
    for service in TOPOLOGY:
        write_series(tb.telemetry, service)
    from tools.incidents import LocalIncidentSurface

    tb.incidents = LocalIncidentSurface(tmp_path / "incidents.db")
    settings = load_settings(
        environ={},
        data_dir=tmp_path / "data",
        observer={"detect_timeout_s": 1, "window_s": 6, "baseline_s": 30},
    )
    engine = Engine(settings, tb)
    trigger = Trigger(source="alert", service="payments", signal="error_ratio", summary="alert fired")
    engine.registry.record("inc-early", trigger, "observing")  # registered, then the process died
    assert list(engine.unfinished()) == ["inc-early"]
    assert engine.in_progress_services() == {"payments"}
    state = engine.resume("inc-early")
    assert state["status"] == "healthy" and state["trigger"] == trigger
    assert list(engine.unfinished()) == []
    assert engine.in_progress_services() == set()
    engine.close()


def _healthy_engine(tmp_path: Path) -> Engine:
    from tools.incidents import LocalIncidentSurface

    tb = make_toolbox(tmp_path, FakeRuntime.up(TOPOLOGY), FakeHealth())
    for service in TOPOLOGY:
        write_series(tb.telemetry, service)
    tb.incidents = LocalIncidentSurface(tmp_path / "incidents.db")
    settings = load_settings(
        environ={},
        data_dir=tmp_path / "data",
        observer={"detect_timeout_s": 1, "window_s": 6, "baseline_s": 30},
    )
    return Engine(settings, tb)


def test_metrics_and_json_logs_carry_the_incident(tmp_path: Path, caplog: Any) -> None:
    import json
    import logging

    from sregraph.observability import JsonFormatter

    engine = _healthy_engine(tmp_path)
    with caplog.at_level(logging.INFO, logger="sregraph.engine"):
        engine.start(Trigger(source="scan"), incident_id="inc-obs")
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "sregraph.engine"]
    assert lines and all(line["incident_id"] == "inc-obs" for line in lines)
    text = engine.metrics.render().decode()
    assert 'sregraph_incidents_total{status="healthy"} 1.0' in text
    assert 'sregraph_step_duration_seconds_count{node="observe"} 1.0' in text
    assert "sregraph_open_incidents 0.0" in text
    engine.close()


def test_stop_request_leaves_the_incident_at_a_step_boundary(tmp_path: Path) -> None:
    """A stop between steps (SIGTERM in the worker) leaves a checkpoint that the next start resumes."""
    from tools.incidents import LocalIncidentSurface

    tb = make_toolbox(tmp_path, FakeRuntime.up(TOPOLOGY, down={"payments"}), FakeHealth(failing={"payments"}))
    write_series(tb.telemetry, "payments", stop_at=FAULT_AT)
    write_series(tb.telemetry, "checkout", {"error_ratio": 1.0})
    write_series(tb.telemetry, "frontend", {"error_ratio": 1.0})
    tb.incidents = LocalIncidentSurface(tmp_path / "incidents.db")
    tb.runtime.restart = lambda service: tb.runtime.status(service)  # type: ignore[method-assign]  # no-op restart
    settings = load_settings(
        environ={},
        data_dir=tmp_path / "data",
        observer={"detect_timeout_s": 1, "window_s": 6, "baseline_s": 30, "confirm_s": 0, "confirm_polls": 1},
    )
    engine = Engine(settings, tb)
    engine.should_stop = lambda: True
    paused = engine.start(Trigger(source="alert", service="payments"), incident_id="inc-stop")
    assert paused["next"] == ["open_incident"]  # observe finished and was checkpointed; nothing else ran
    assert list(engine.unfinished()) == ["inc-stop"]
    engine.should_stop = lambda: False
    final = engine.resume("inc-stop")
    assert final["next"] == [] and final["status"] in ("resolved", "escalated")
    assert final["issue_id"] is not None and final["diagnosis"].top.service == "payments"
    engine.close()


def test_healthz_reports_stale_until_the_worker_scans() -> None:
    import httpx

    from sregraph.observability import HealthState, Metrics, serve

    health = HealthState(stale_after_s=60)
    server = serve(Metrics(), health)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert httpx.get(base + "/healthz", timeout=2).status_code == 503
        health.beat()
        reply = httpx.get(base + "/healthz", timeout=2)
        assert reply.status_code == 200 and reply.json()["status"] == "ok"
        assert "sregraph_open_incidents" in httpx.get(base + "/metrics", timeout=2).text
    finally:
        server.shutdown()
        server.server_close()
