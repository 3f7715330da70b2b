"""GitHub commands steer the graph: a writer's /approve resumes a paused incident, a reader's is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sregraph.config import load_settings
from sregraph.engine import Engine
from sregraph.worker import Worker
from tests.fakes.github import FakeGitHub
from tests.fixtures.github import BOT, BOT_TOKEN, SEED, SEED_MESSAGE, make_gitops, make_surface
from tests.fixtures.telemetry import FAULT_AT, NOW, T0, TOPOLOGY, error_traces, write_phase
from tests.support import FakeHealth, FakeRuntime, GraphDeployer, ManualClock
from tools.domain import Trigger
from tools.ledger import ActionLedger
from tools.notifier import JsonlNotifier
from tools.telemetry import LocalTelemetryStore
from tools.toolbox import Toolbox


def test_writer_approve_resumes_reader_approve_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    clock = ManualClock(T0 - 600)
    server = FakeGitHub("acme", "ops", max_per_page=3, clock=clock.now)
    server.add_user(BOT, role="write", token=BOT_TOKEN)
    server.add_user("alice", role="maintain")
    server.add_user("bob", role="read")
    server.seed(SEED, SEED_MESSAGE, at=T0 - 600)
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        yaml.safe_dump({"defaults": {"allowed": ["restart", "rollback"], "require_approval": ["rollback"]}})
    )
    with server:
        surface, gitops = make_surface(server, clock), make_gitops(server, clock)
        clock.t = FAULT_AT - 20
        gitops.commit_config(
            "payments", {"version": "2.0.0-rc1", "replicas": 1}, "payments 2.0.0-rc1", kind="deploy"
        )
        clock.t = NOW
        store = LocalTelemetryStore(tmp_path / "telemetry.db")
        for service in TOPOLOGY:
            write_phase(store, service, T0, FAULT_AT - 0.5)
            write_phase(store, service, FAULT_AT, NOW, {"error_ratio": 0.6})
            write_phase(store, service, NOW + 0.5, NOW + 600)
        error_traces(store, "payments")
        runtime = FakeRuntime.up(TOPOLOGY, version="1.4.0")
        toolbox = Toolbox(
            telemetry=store,
            runtime=runtime,
            incidents=surface,
            gitops=gitops,
            notifier=JsonlNotifier(tmp_path / "n.jsonl"),
            health=FakeHealth(),
            deployer=GraphDeployer(runtime, gitops),
            ledger=ActionLedger(tmp_path / "ledger.db"),
            topology=TOPOLOGY,
            clock=clock,
        )
        settings = load_settings(
            environ={},
            data_dir=tmp_path / "data",
            policy_file=str(policy),
            observer={
                "window_s": 6,
                "baseline_s": 30,
                "confirm_polls": 1,
                "confirm_s": 0,
                "detect_timeout_s": 0,
            },
            engineer={"verify_timeout_s": 10},
        )
        engine = Engine(settings, toolbox)
        worker = Worker(engine)
        state = engine.start(
            Trigger(source="alert", service="payments", summary="payments errors", fired_at=NOW)
        )
        incident, issue = state["incident_id"], state["issue_id"]
        assert state["waiting"] and server.pulls() == []
        # Text that looks like a command inside the issue body or a log line decides nothing.
        clock.t += 5
        server.add_comment(issue, "bob", "/approve")
        assert worker.handle_commands() == []
        assert engine.pending_approval(incident)
        assert any(
            "not allowed" in c["body"] or "permission" in c["body"]
            for c in server.issue_comments(issue)
            if c["user"] == BOT
        )
        clock.t += 5
        server.add_comment(issue, "alice", "/approve looks right")
        assert worker.handle_commands() == [f"approve {incident}"]
        assert worker.wait_idle(timeout=60)  # the approved run continues on the worker's pool
        final = engine.state(incident)
        assert final["status"] == "resolved" and final["approval"].by == "alice"
        [pull] = server.pulls()
        assert pull["pull"]["merged_at"] is not None
        assert server.issues[issue]["state"] == "closed"
        assert worker.handle_commands() == []  # the same comments are not acted on twice
        engine.close()
        surface.disconnect()
        gitops.disconnect()


def test_human_opened_or_reopened_issue_starts_an_investigation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    clock = ManualClock(T0 - 600)
    server = FakeGitHub("acme", "ops", max_per_page=3, clock=clock.now)
    server.add_user(BOT, role="write", token=BOT_TOKEN)
    server.add_user("alice", role="maintain")
    server.seed(SEED, SEED_MESSAGE, at=T0 - 600)
    with server:
        surface, gitops = make_surface(server, clock), make_gitops(server, clock)
        clock.t = NOW
        store = LocalTelemetryStore(tmp_path / "telemetry.db")
        for service in TOPOLOGY:
            write_phase(store, service, T0, NOW + 600)  # healthy: the human's report finds nothing measurable
        runtime = FakeRuntime.up(TOPOLOGY, version="1.4.0")
        toolbox = Toolbox(
            telemetry=store,
            runtime=runtime,
            incidents=surface,
            gitops=gitops,
            notifier=JsonlNotifier(tmp_path / "n.jsonl"),
            health=FakeHealth(),
            deployer=GraphDeployer(runtime, gitops),
            ledger=ActionLedger(tmp_path / "ledger.db"),
            topology=TOPOLOGY,
            clock=clock,
        )
        settings = load_settings(
            environ={},
            data_dir=tmp_path / "data",
            observer={"window_s": 6, "baseline_s": 30, "detect_timeout_s": 0},
        )
        engine = Engine(settings, toolbox)
        worker = Worker(engine)
        number = server.add_issue("alice", "checkout feels slow", "customers complain", ["incident"])
        [started] = worker.handle_new_issues()
        assert worker.wait_idle(timeout=60)
        state = engine.state(started)
        assert state["issue_id"] == number and state["trigger"].source == "issue"
        # Nothing measurable: the agents investigate, find no cause, and hand it back to a human on the issue.
        assert state["status"] == "escalated" and state["actions"] == []
        assert any("Escalated" in c["body"] for c in server.issue_comments(number))
        assert worker.handle_new_issues() == []  # escalated: it stays with the humans until /retry
        engine.close()
        surface.disconnect()
        gitops.disconnect()
