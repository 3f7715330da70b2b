"""The job queue (procrastinate on Postgres): alerts and approval decisions become jobs, and two running workers
take them, each incident under its lease, each job once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from evals.harness import SCENARIOS, World, settings_for, toolbox_for
from sregraph.config import load_settings
from sregraph.engine import Engine
from sregraph.leases import lease_log, overlaps
from sregraph.worker import Worker
from tools.base import ConfigError
from tools.domain import ApprovalDecision, Trigger
from tools.gitops import LocalGitOps


def test_job_queue_needs_postgres() -> None:
    with pytest.raises(ConfigError, match="job_queue"):
        load_settings(environ={}, storage={"job_queue": "procrastinate"})


def _wait(engine: Engine, ids: list[str], want: set[str], timeout_s: float = 90) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    statuses: dict[str, str] = {}
    while time.monotonic() < deadline:
        statuses = {r["incident_id"]: r["status"] for r in engine.registry.list()}
        if all(statuses.get(i) in want for i in ids) and all(
            not engine.state(i)["next"] for i in ids if statuses.get(i) != "awaiting_approval"
        ):
            return statuses
        time.sleep(0.1)
    raise AssertionError(f"not all of {ids} reached {want}: {statuses}")


@pytest.mark.slow
def test_alerts_and_approvals_are_jobs_that_running_workers_take(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARNESS_DSN", pg_dsn)
    monkeypatch.setenv("HARNESS_JOBS", "procrastinate")
    root = tmp_path / "world"
    World.create(root)
    router_engine = Engine(settings_for(root), toolbox_for(World(root)))
    router = Worker(router_engine)
    assert router.jobs is not None
    workers = [
        Worker(Engine(settings_for(root), toolbox_for(World(root))), max_concurrent=2) for _ in range(2)
    ]
    threads = [threading.Thread(target=w.run, kwargs={"interval": 0.1}) for w in workers]
    for t in threads:
        t.start()
    try:
        probes = [
            router.submit(
                Trigger(source="alert", summary=f"probe {n}", labels={"fingerprint": f"probe-{n}"})
            )[0]
            for n in range(6)
        ]
        assert router.running() == []  # queued, not run by the router
        _wait(router_engine, probes, {"healthy"})
        # search needs a human's approval to restart: the decision is a job too.
        world = World(root)
        assert isinstance(router_engine.toolbox.gitops, LocalGitOps)
        world.inject(SCENARIOS[7], router_engine.toolbox.gitops)
        search, new = router.submit(
            Trigger(
                source="alert",
                service="search",
                signal="HighLatency",
                summary="p95 up",
                fired_at=world.current(),
            )
        )
        assert new
        _wait(router_engine, [search], {"awaiting_approval"})
        assert router_engine.pending_approval(search)
        assert router.decide(search, ApprovalDecision(approved=True, by="ann", reason="go"))
        statuses = _wait(router_engine, [search], {"resolved", "escalated"})
        assert statuses[search] == "resolved"
    finally:
        for w in workers:
            w.stopping = True
        for t in threads:
            t.join(90)
    assert not any(t.is_alive() for t in threads)
    jobs = router.jobs.jobs()
    router.jobs.stop()
    state = router_engine.state(search)
    assert [a.action.kind for a in state["actions"]] == ["restart"] and state["actions"][0].status == "done"
    runs = [
        args["incident_id"]
        for task, status, args in jobs
        if task == "sregraph.run_incident" and status == "succeeded"
    ]
    decisions = [(args["incident_id"], status) for task, status, args in jobs if task == "sregraph.decide"]
    assert {*probes, search} <= set(runs)
    # Any other run job is an incident a worker's own scan opened (the injected latency seen before or after the
    # alert's incident): it went through the queue as well.
    for extra in set(runs) - {*probes, search}:
        trigger = router_engine.registry.trigger(extra)
        assert trigger is not None and trigger.source == "scan", (extra, trigger)
    assert decisions == [(search, "succeeded")]
    assert all(status == "succeeded" for _, status, _ in jobs), jobs
    tenures = lease_log(router_engine.registry.db)
    assert overlaps(tenures) == [] and {t["owner"] for t in tenures} <= {w.leases.owner for w in workers}
    router_engine.close()
