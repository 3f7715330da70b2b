"""Fault injection: a worker SIGKILLed at every node boundary (and inside actions, inside notifications, and at
random moments) still brings every incident to the end an uninterrupted worker reaches, with the same side
effects, none twice: actions, issue comments, pull requests and notifications.

The worker runs as a subprocess (tests/worker_harness.py) over evals/harness.py's synthetic world (simulated
clock, real local backends), so one incident takes milliseconds and a restart costs only the interpreter start-up.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from evals.harness import SCENARIOS, World, run, summary
from tests.worker_harness import comparable, normalised

ROOT = Path(__file__).resolve().parents[1]

# (environment variable, value): each is one worker process that must die there. The order follows the
# scenarios, so each target is still ahead when its process starts.
KILLS: list[tuple[str, str]] = [
    *[
        ("HARNESS_KILL_AFTER", node)
        for node in ("observe", "open_incident", "analyze", "plan", "act", "verify", "document")
    ],
    ("HARNESS_KILL_IN", "restart"),  # scenario 1: the restart happened, the ledger does not know yet
    ("HARNESS_KILL_AFTER", "document"),
    ("HARNESS_KILL_IN", "propose"),  # scenario 2, the rollback: PR opened, not merged
    ("HARNESS_KILL_IN", "merge"),  # merged, not applied
    ("HARNESS_KILL_IN", "apply"),  # applied, not recorded
    ("HARNESS_KILL_IN", "notify:2"),  # a notification written, its ledger row still `sending`
    ("HARNESS_KILL_AFTER", "verify"),
    ("HARNESS_KILL_AFTER", "document"),
    ("HARNESS_KILL_AFTER", "analyze:2"),  # scenario 4: the second analysis, after a failed verification
    ("HARNESS_KILL_IN", "notify"),  # the second restart's notification written, not recorded
    ("HARNESS_KILL_AFTER", "escalate"),
    ("HARNESS_KILL_AFTER", "observe"),  # scenario 5: a healthy alert
    ("HARNESS_KILL_AFTER", "escalate"),  # scenario 6: policy refuses
    ("HARNESS_KILL_AFTER", "approval"),  # scenario 7: after the human's approval is recorded
    ("HARNESS_KILL_AFTER", "act"),
]
RANDOM_KILLS = 3
HARNESS_STARTUP_S = 1.6
"""Roughly the interpreter and import time; random kills aim past it, into the work."""


def _worker(
    root: Path, env: dict[str, str], kill_after_s: float | None = None
) -> subprocess.CompletedProcess[str]:
    """One worker process on the harness directory."""
    clean = {k: v for k, v in os.environ.items() if k not in ("HARNESS_KILL_AFTER", "HARNESS_KILL_IN")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.worker_harness", str(root)],
        cwd=ROOT,
        env={**clean, **env, "PYTHONWARNINGS": "error"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if kill_after_s is not None:
            try:
                proc.wait(timeout=kill_after_s)
            except subprocess.TimeoutExpired:
                proc.kill()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _incident_ids(root: Path) -> list[str]:
    world = World(root)
    return [i for k in range(len(SCENARIOS)) for i in json.loads(world.get(f"incidents-{k}") or "[]")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same scenarios on an uninterrupted worker (in this process)."""
    root = tmp_path_factory.mktemp("reference")
    World.create(root)
    run(root)
    result = summary(root)
    return {
        "root": root,
        "summary": result,
        "normalised": normalised(comparable(result), _incident_ids(root)),
    }


def test_reference_run_reaches_the_expected_ends(reference: dict[str, Any]) -> None:
    """The uninterrupted run is itself right: one run per scenario, the expected end and actions, one of each effect."""
    result = reference["summary"]
    assert result["unfinished"] == [] and result["runs"] == len(SCENARIOS)
    for scenario, runs in zip(SCENARIOS, result["outcomes"], strict=True):
        [outcome] = runs
        assert outcome["next"] == []
        assert (outcome["status"], *[kind for kind, _, _ in outcome["actions"]]) == scenario.expect, scenario
        if scenario.fault is not None and scenario.expect[0] == "resolved":
            assert outcome["root_cause"] == [scenario.service, scenario.fault], scenario
    acted = [
        kind for runs in result["outcomes"] for kind, _, status in runs[0]["actions"] if status == "done"
    ]
    assert len(result["runtime_calls"]) == len(acted)  # one restart or apply per action, none repeated
    assert sum(result["restarts"].values()) == len(acted)
    assert len(result["prs"]) == acted.count("rollback") and all(
        state == "merged" for _, state, _ in result["prs"]
    )
    assert len(result["issues"]) == sum(1 for s in SCENARIOS if s.fault is not None)
    for issue in result["issues"]:
        assert None not in issue["comment_keys"]
        assert len(issue["comment_keys"]) == len(set(issue["comment_keys"]))
    assert len(result["notifications"]) == sum(1 for s in SCENARIOS if s.expect[0] != "healthy")
    assert all(status == "sent" for _, status in result["notification_keys"])


def _expected_notifications(outcome: dict[str, Any]) -> list[str]:
    """Each event of one incident, once: opened, one per action, escalated if so, documented."""
    if outcome["status"] == "healthy":
        return []
    escalated = ["escalated"] if outcome["status"] == "escalated" else []
    return ["opened", *["action"] * len(outcome["actions"]), *escalated, "documented"]


def _notifications_per_incident(root: Path, result: dict[str, Any]) -> None:
    world = World(root)
    for k, runs in enumerate(result["outcomes"]):
        [incident_id] = json.loads(world.get(f"incidents-{k}") or "[]")
        assert result["notifications"].get(incident_id, []) == _expected_notifications(runs[0]), (
            k,
            incident_id,
        )


def test_reference_run_notifies_each_event_once(reference: dict[str, Any]) -> None:
    _notifications_per_incident(reference["root"], reference["summary"])


def test_worker_killed_everywhere_repeats_nothing_and_loses_nothing(
    tmp_path: Path, reference: dict[str, Any]
) -> None:
    root = tmp_path / "killed"
    World.create(root)
    rng = random.Random(20240501)
    plans: list[tuple[dict[str, str], float | None]] = [({name: value}, None) for name, value in KILLS]
    plans += [({}, HARNESS_STARTUP_S + rng.uniform(0.1, 1.0)) for _ in range(RANDOM_KILLS)]
    started = time.monotonic()
    for env, delay in plans:
        done = _worker(root, env, delay)
        if delay is None:
            assert done.returncode == -9, (
                f"{env}: expected to be killed there, got {done.returncode}\n{done.stderr[-3000:]}"
            )
        else:
            assert done.returncode in (-9, 0), done.stderr[-3000:]
    final = _worker(root, {})
    assert final.returncode == 0, final.stderr[-3000:]
    assert time.monotonic() - started < 90

    result = summary(root)
    assert result["unfinished"] == []
    _notifications_per_incident(root, result)
    assert normalised(comparable(result), _incident_ids(root)) == reference["normalised"]


def test_kill_hook_fires_after_the_checkpoint(tmp_path: Path) -> None:
    """The hook dies after the node's step is durable: the next process resumes at the following node."""
    from evals.harness import settings_for, toolbox_for
    from sregraph.engine import Engine

    root = tmp_path / "hook"
    World.create(root)
    killed = _worker(root, {"HARNESS_KILL_AFTER": "analyze"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    engine = Engine(settings_for(root), toolbox_for(World(root)))
    try:
        [incident_id] = list(engine.unfinished())
        state = engine.state(incident_id)
        assert state["next"] == ["plan"] and state["diagnosis"] is not None
    finally:
        engine.close()


def test_kill_after_the_issue_opened_does_not_attach_the_incident_to_its_own_issue(tmp_path: Path) -> None:
    """Killed inside the `opened` notification (its issue exists, its step is not checkpointed): the re-run finds
    the issue by fingerprint and knows it for its own, with no "attached" comment."""
    root = tmp_path / "own-issue"
    World.create(root)
    killed = _worker(root, {"HARNESS_KILL_IN": "notify"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    final = _worker(root, {})
    assert final.returncode == 0, final.stderr[-3000:]
    result = summary(root)
    first = result["issues"][0]["comment_keys"]
    assert first and not any(key.endswith("/attach") for key in first), first
    assert len(result["issues"]) == sum(1 for s in SCENARIOS if s.fault is not None)
