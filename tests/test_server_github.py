"""The API with GitHub as the incident surface: signed webhook deliveries carry slash commands to the worker,
/retry over HTTP, and the worker's metrics."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from evals.harness import Scenario, World, settings_for, toolbox_for
from sregraph.api_auth import ApiStore
from sregraph.engine import Engine
from sregraph.server import GITHUB_WEBHOOK_SECRET_ENV, ApiServer, create_app
from sregraph.worker import Worker
from tests.fixtures.github import SECRET, make_surface
from tools.gitops import LocalGitOps


def test_webhook_commands_retry_and_metrics(
    tmp_path: Path,
    github,
    clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(GITHUB_WEBHOOK_SECRET_ENV, SECRET)
    world = World.create(tmp_path / "world")
    surface = make_surface(github, clock)
    engine = Engine(settings_for(tmp_path / "world"), replace(toolbox_for(world), incidents=surface))
    worker = Worker(engine)
    store = ApiStore(tmp_path / "api.db")
    operator = {"Authorization": f"Bearer {store.create_token('alice-bot', 'operator')}"}
    server = ApiServer(create_app(worker, store)).start()
    try:
        assert isinstance(engine.toolbox.gitops, LocalGitOps)
        # the policy lets the agents do nothing
        world.inject(Scenario("crash", "frontend"), engine.toolbox.gitops)
        incident_id = worker.scan()
        assert incident_id is not None and worker.wait_idle(60)
        state = engine.state(incident_id)
        assert state["status"] == "escalated"
        with httpx.Client(base_url=server.url, timeout=30) as client:
            # A maintainer's /ack arrives as a signed delivery; a forged one changes nothing.
            comment = github.add_comment(state["issue_id"], "alice", "/ack taking this")
            forged, body = github.webhook(
                "issue_comment", github.comment_payload(comment), "not-the-secret", delivery="d-0"
            )
            assert client.post("/api/v1/github/webhook", headers=forged, content=body).status_code == 401
            assert engine.registry.acknowledgement(incident_id) is None
            headers, body = github.webhook(
                "issue_comment", github.comment_payload(comment), SECRET, delivery="d-1"
            )
            answer = client.post("/api/v1/github/webhook", headers=headers, content=body)
            assert answer.status_code == 202 and answer.json()["done"] == [f"ack {incident_id}"]
            acknowledged = engine.registry.acknowledgement(incident_id)
            assert acknowledged is not None and acknowledged["by"] == "alice"
            # redelivered: once
            assert client.post("/api/v1/github/webhook", headers=headers, content=body).status_code == 200

            # /retry over HTTP starts a new investigation on the same issue.
            retried = client.post(f"/api/v1/incidents/{incident_id}/retry", headers=operator)
            assert retried.status_code == 202
            new_id = retried.json()["retry"]
            assert worker.wait_idle(60)
            assert engine.state(new_id)["issue_id"] == state["issue_id"]
            assert client.post("/api/v1/incidents/nope/retry", headers=operator).status_code == 404

            assert client.get("/metrics").status_code == 401
            scraped = client.get("/metrics", headers=operator)
            assert scraped.status_code == 200 and "sregraph_step_duration_seconds" in scraped.text
    finally:
        server.stop()
        worker.wait_idle(60)
        engine.close()
        surface.disconnect()


def test_without_a_secret_there_is_no_webhook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GITHUB_WEBHOOK_SECRET_ENV, raising=False)
    world = World.create(tmp_path / "world")
    engine = Engine(settings_for(tmp_path / "world"), toolbox_for(world))
    server = ApiServer(create_app(Worker(engine), ApiStore(tmp_path / "api.db"))).start()
    try:
        answer = httpx.post(f"{server.url}/api/v1/github/webhook", content=b"{}", timeout=10)
        assert answer.status_code == 404 and GITHUB_WEBHOOK_SECRET_ENV in answer.json()["detail"]
    finally:
        server.stop()
        engine.close()
