"""An escalated incident whose issue is still open keeps its service claimed: no new incident for the same
still-broken service, until a human closes the issue; a /retry takes the issue over with a new thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evals.harness import Scenario, World, settings_for, toolbox_for
from sregraph.engine import Engine
from sregraph.worker import ISSUE_LIST_MAX_AGE_S, Worker
from tools.domain import Trigger
from tools.github.commands import Command
from tools.gitops import LocalGitOps
from tools.incidents import LocalIncidentSurface


def _setup(tmp_path: Path) -> tuple[World, Engine, LocalIncidentSurface, list[int]]:
    root = tmp_path / "world"
    world = World.create(root)
    engine = Engine(settings_for(root), toolbox_for(world))
    surface = engine.toolbox.incidents
    assert isinstance(surface, LocalIncidentSurface) and isinstance(engine.toolbox.gitops, LocalGitOps)
    listings = [0]
    list_issues = surface.list_issues

    def counted(state: Any = "open") -> Any:
        listings[0] += 1
        return list_issues(state)

    surface.list_issues = counted  # type: ignore[method-assign]  # counts the listings
    # the policy lets the agents do nothing
    world.inject(Scenario("crash", "frontend"), engine.toolbox.gitops)
    return world, engine, surface, listings


def test_escalated_service_stays_claimed_until_the_issue_is_closed(tmp_path: Path) -> None:
    world, engine, surface, listings = _setup(tmp_path)
    worker = Worker(engine)
    first = worker.scan()
    assert first is not None and worker.wait_idle(60)
    state = engine.state(first)
    assert state["status"] == "escalated"
    issue_id = state["issue_id"]
    # Still broken, the issue still open: scans open nothing, one listing of open issues serves them all.
    before = listings[0]
    for _ in range(5):
        world.advance(1)
        assert worker.scan() is None
    assert listings[0] - before <= 1
    # An alert for the held service joins the escalated incident (noted on its issue) instead of starting one.
    assert worker.submit(
        Trigger(source="alert", service="frontend", signal="FrontendDown", summary="5xx")
    ) == (first, False)
    assert any(c.body.startswith("Another alert joined") for c in surface.get(issue_id).comments)
    assert [r["incident_id"] for r in engine.registry.list()] == [first]
    # A human closes the issue (it is still broken, say): once the listing is refreshed, scanning opens again.
    surface.close(issue_id)
    world.advance(ISSUE_LIST_MAX_AGE_S + 1)
    second = worker.scan()
    assert second is not None and second != first
    assert worker.wait_idle(60)
    assert engine.state(second)["issue_id"] != issue_id
    engine.close()


def test_retry_takes_the_issue_over(tmp_path: Path) -> None:
    world, engine, surface, _ = _setup(tmp_path)
    worker = Worker(engine)
    first = worker.scan()
    assert first is not None and worker.wait_idle(60)
    issue_id = engine.state(first)["issue_id"]
    commands = [Command(name="retry", author="alice", issue_id=issue_id, comment_id=1)]
    surface.poll_commands = lambda: [commands.pop()] if commands else []  # type: ignore[attr-defined]  # GitHub's polling
    assert worker.handle_commands() == [f"retry {first}"]
    assert worker.wait_idle(60)
    [retry] = [r["incident_id"] for r in engine.registry.list() if r["incident_id"] != first]
    retried = engine.state(retry)
    assert retried["issue_id"] == issue_id and retried["status"] == "escalated"
    # The retry escalated too: its issue (labelled with the service) still holds frontend and what it calls.
    world.advance(ISSUE_LIST_MAX_AGE_S + 1)
    assert worker.scan() is None
    assert worker.submit(Trigger(source="alert", service="frontend", signal="FrontendDown")) == (retry, False)
    surface.close(issue_id)
    world.advance(ISSUE_LIST_MAX_AGE_S + 1)
    assert worker.scan() not in (None, first, retry)
    assert worker.wait_idle(60)
    engine.close()
