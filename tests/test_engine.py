"""Engine bookkeeping: runs killed before their first checkpoint are restarted, busy services are known."""

from __future__ import annotations

from pathlib import Path

from graphs.state import Trigger
from sregraph.config import load_settings
from sregraph.engine import Engine
from tests.test_analyst import TOPOLOGY, FakeHealth, FakeRuntime, make_toolbox, write_series


def test_run_killed_before_its_first_checkpoint_is_restarted(tmp_path: Path) -> None:
    tb = make_toolbox(tmp_path, FakeRuntime(), FakeHealth())
    for service in TOPOLOGY:
        write_series(tb.telemetry, service)  # type: ignore[arg-type]
    from tools.incidents import LocalIncidentSurface

    tb.incidents = LocalIncidentSurface(tmp_path / "incidents.db")
    settings = load_settings(environ={}, data_dir=tmp_path / "data", observer={"detect_timeout_s": 1, "window_s": 6, "baseline_s": 30})
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
