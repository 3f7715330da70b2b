"""The whole incident loop on the embedded local backends: real processes, real git, real SQLite, real ChromaDB."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from sregraph.config import Settings, load_settings
from sregraph.engine import Engine
from sregraph.localenv.app import LocalApp
from tests.localapp import FAST, ROOT, WARMUP_S, engine_for, run_incident, running_app, write_config
from tools.base import NotFound
from tools.domain import ApprovalDecision


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
def settings(config_file: Path) -> Settings:
    return load_settings(config_file, environ={})


@pytest.fixture
def app(settings: Settings) -> Iterator[LocalApp]:
    with running_app(settings) as local:
        yield local


def run(engine: Engine) -> dict:
    return run_incident(engine)


def test_crash_is_restarted_and_verified(settings: Settings, app: LocalApp) -> None:
    engine = engine_for(settings, app)
    app.inject("crash", "payments")
    state = run(engine)
    assert state["status"] == "resolved", state.get("escalation")
    assert state["diagnosis"].top.service == "payments"
    assert state["diagnosis"].top.fault_type == "crash"
    assert [(a.action.kind, a.action.service, a.status) for a in state["actions"]] == [
        ("restart", "payments", "done")
    ]
    assert app.runtime.status("payments").running
    assert app.runtime.status("payments").restarts == 1
    issue = engine.toolbox.incidents.get(state["issue_id"])
    assert issue.state == "closed"
    assert "status:resolved" in issue.labels and "incident" in issue.labels
    bodies = [c.body for c in issue.comments]
    assert any(b.startswith("### Diagnosis") for b in bodies)
    assert any("Post-mortem" in b for b in bodies)
    assert engine.toolbox.memory is not None
    assert engine.toolbox.memory.get(state["incident_id"]) is not None
    engine.close()


def test_bad_deploy_is_rolled_back_through_gitops(settings: Settings, app: LocalApp) -> None:
    engine = engine_for(settings, app)
    app.inject("bad_deploy", "payments")
    assert app.gitops.config("payments")["version"] == "2.0.0-rc1"
    state = run(engine)
    assert state["status"] == "resolved", state.get("escalation")
    assert (state["diagnosis"].top.service, state["diagnosis"].top.fault_type) == ("payments", "bad_deploy")
    assert [a.action.kind for a in state["actions"]] == ["rollback"]
    prs = app.gitops.pull_requests("merged")
    assert len(prs) == 1 and prs[0].service == "payments"
    assert app.gitops.config("payments")["version"] == "1.4.0"
    assert yaml.safe_load(app.config_path("payments").read_text())["version"] == "1.4.0"
    assert app.status("payments").version == "1.4.0"
    engine.close()


def test_memory_leak_is_restarted(settings: Settings, app: LocalApp) -> None:
    engine = engine_for(settings, app)
    app.inject("memory_leak", "checkout", mb_per_s=40)
    state = run(engine)
    assert state["status"] == "resolved", state.get("escalation")
    assert (state["diagnosis"].top.service, state["diagnosis"].top.fault_type) == ("checkout", "memory_leak")
    assert [(a.action.kind, a.action.service) for a in state["actions"]] == [("restart", "checkout")]
    engine.close()


def test_healthy_system_opens_nothing_and_does_nothing(tmp_path: Path, app: LocalApp) -> None:
    settings = load_settings(
        write_config(tmp_path), environ={}, observer={**FAST["observer"], "detect_timeout_s": 5}
    )
    engine = engine_for(settings, app)
    state = run(engine)
    assert state["status"] == "healthy"
    assert state.get("issue_id") is None and not state.get("actions")
    assert engine.toolbox.incidents.list_issues("all") == []
    assert engine.toolbox.ledger.all() == []
    assert all(app.runtime.status(s).restarts == 0 for s in app.services())
    engine.close()


APPROVAL_POLICY = {
    "defaults": {"allowed": ["restart", "rollback"], "require_approval": ["restart"], "cooldown_s": 0}
}


def cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sregraph", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_approval_gate_pauses_then_cli_approve_resumes(tmp_path: Path) -> None:
    config = write_config(tmp_path, APPROVAL_POLICY)
    settings = load_settings(config, environ={})
    with running_app(settings) as app:
        engine = engine_for(settings, app)
        app.inject("crash", "payments")
        state = run(engine)
        assert state["waiting"] and state["status"] == "diagnosing"
        assert engine.toolbox.ledger.all() == []  # nothing mutated while waiting
        assert app.runtime.status("payments").restarts == 0
        issue = engine.toolbox.incidents.get(state["issue_id"])
        assert "status:awaiting-approval" in issue.labels
        engine.close()
        # A human approves from another process; the graph resumes from the checkpoint there.
        result = cli("approve", state["incident_id"], "--by", "alice", config=config)
        assert result.returncode == 0, result.stderr
        engine = engine_for(settings, app)
        final = engine.state(state["incident_id"])
        assert final["status"] == "resolved"
        assert final["approval"] == ApprovalDecision(approved=True, by="alice", reason="")
        assert app.runtime.status("payments").restarts == 1
        # Nothing is left to approve.
        again = cli("approve", state["incident_id"], config=config)
        assert again.returncode == 2 and "not waiting" in again.stderr
        engine.close()


def test_reject_escalates_without_acting(tmp_path: Path) -> None:
    config = write_config(tmp_path, APPROVAL_POLICY)
    settings = load_settings(config, environ={})
    with running_app(settings) as app:
        engine = engine_for(settings, app)
        app.inject("crash", "payments")
        state = run(engine)
        assert state["waiting"]
        final = engine.decide(
            state["incident_id"], ApprovalDecision(approved=False, by="bob", reason="maintenance window")
        )
        assert final["status"] == "escalated"
        assert "rejected by bob" in final["escalation"]
        assert engine.toolbox.ledger.all() == []
        assert app.runtime.status("payments").restarts == 0
        issue = engine.toolbox.incidents.get(state["issue_id"])
        assert issue.state == "open" and "status:escalated" in issue.labels
        with pytest.raises(NotFound):
            engine.decide(state["incident_id"], ApprovalDecision(approved=True))
        engine.close()


def test_worker_killed_mid_incident_resumes_without_repeating(
    config_file: Path, settings: Settings, app: LocalApp
) -> None:
    from tools.ledger import ActionLedger

    ledger = ActionLedger(settings.data_dir / "ledger.db")
    app.inject("crash", "payments")
    worker_log = (settings.data_dir / "worker.log").open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "sregraph", "worker", "--interval", "0.5", "--config", str(config_file)],
        cwd=ROOT,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not any(e.status == "done" for e in ledger.all()):
            assert worker.poll() is None, (settings.data_dir / "worker.log").read_text()
            time.sleep(0.05)
        assert any(e.status == "done" for e in ledger.all()), "the worker never acted"
        os.kill(worker.pid, signal.SIGKILL)  # mid-incident: the action is done, verification is not
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        worker_log.close()
    engine = engine_for(settings, app)
    [incident_id] = [r["incident_id"] for r in engine.registry.list()]
    assert engine.state(incident_id)["status"] != "resolved"
    assert list(engine.unfinished()) == [incident_id]
    engine.close()
    restarted = subprocess.run(
        [sys.executable, "-m", "sregraph", "worker", "--once", "--config", str(config_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert restarted.returncode == 0, restarted.stderr
    engine = engine_for(settings, app)
    final = engine.state(incident_id)
    assert final["status"] == "resolved"
    assert app.runtime.status("payments").restarts == 1  # the completed restart was not repeated
    assert [e.kind for e in ledger.all()] == ["restart"]
    engine.close()


def test_second_occurrence_recalls_the_first_postmortem(tmp_path: Path, app: LocalApp) -> None:
    # No cooldown: the default 30 s would (rightly) hold back a second restart this soon.
    policy = {"defaults": {"allowed": ["restart"], "cooldown_s": 0}}
    settings = load_settings(write_config(tmp_path, policy), environ={})
    engine = engine_for(settings, app)
    app.inject("crash", "payments")
    first = run(engine)
    assert first["status"] == "resolved"
    time.sleep(WARMUP_S)  # a fresh baseline after recovery
    app.inject("crash", "payments")
    second = run(engine)
    assert second["status"] == "resolved", second.get("escalation")
    similar = second["diagnosis"].similar
    assert similar and similar[0].incident_id == first["incident_id"]
    memory_evidence = [e for e in second["diagnosis"].top.evidence if e.kind == "memory"]
    assert memory_evidence and memory_evidence[0].ref == first["incident_id"]
    engine.close()
