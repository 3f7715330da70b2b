"""Alert storms: 1,000 alerts in a simulated minute for four real problems become four incidents."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest

from sregraph.alerts import WebhookError
from sregraph.storm import StormGate, alert_fingerprint
from tests.fixtures.storm import PROBLEMS, T0, alert, storm
from tests.support import ManualClock
from tools.domain import Trigger


def test_a_thousand_alerts_in_a_minute_become_four_incidents() -> None:
    clock = ManualClock(T0)
    gate = StormGate(clock, group_wait_s=10, group_interval_s=120, flap_window_s=300, max_flaps=3)
    events = storm(random.Random(7))
    first_seen: dict[str, float] = {}
    notices: list[tuple[float, Any]] = []
    look = T0 + 1
    for at, a in events:
        while look <= at:  # the worker loop looks once per simulated second
            clock.t = look
            notices += [(clock.t, n) for n in gate.due()]
            look += 1
        clock.t = at
        if a.status == "firing":
            first_seen.setdefault(f"{a.labels['service']}:{a.alertname}", at)
        gate.ingest(a)
    clock.t = T0 + 60 + 120 + 1
    notices += [(clock.t, n) for n in gate.due()]

    new = [(t, n) for t, n in notices if n.kind == "new"]
    assert sorted(n.key for _, n in new) == sorted(f"{s}:{a}" for s, a in PROBLEMS)
    for t, n in new:
        assert first_seen[n.key] + 10 <= t <= first_seen[n.key] + 11  # after group_wait, at the next look
        assert n.trigger.source == "alert" and n.trigger.service == n.key.split(":")[0]
        assert n.trigger.labels["fingerprint"] == n.key
    updates = [n for _, n in notices if n.kind == "update"]
    assert len(updates) <= len(PROBLEMS) and all(n.new_alerts > 0 for n in updates)
    s = gate.stats
    assert s.received == 1000
    assert s.grouped + s.duplicates + s.flapping + s.resolved + s.ignored + s.dropped == 1000
    assert s.grouped <= 4 * 40 + s.resolved  # each instance once, plus re-fires after a resolution
    assert s.duplicates > 300 and s.flapping > 0
    assert s.notifications["new"] == 4


def test_storm_through_the_worker_starts_one_incident_per_problem(tmp_path: Path) -> None:
    """Updates go to Worker.submit too, and join the incident their group started."""
    from evals.harness import World, settings_for, toolbox_for
    from sregraph.engine import Engine
    from sregraph.worker import Worker

    world = World.create(tmp_path / "w")
    engine = Engine(settings_for(tmp_path / "w"), toolbox_for(world))
    release = threading.Event()

    def start(trigger: Trigger, incident_id: str | None = None) -> dict[str, Any]:
        assert incident_id is not None  # the worker names every incident it starts
        release.wait(10)
        engine.registry.record(incident_id, None, "escalated")
        return {"incident_id": incident_id}

    engine.start = start  # type: ignore[method-assign]  # a stand-in for the graph run
    worker = Worker(engine, max_concurrent=4)
    clock = ManualClock(T0)
    gate = StormGate(clock, group_wait_s=5, group_interval_s=5)
    for at, a in storm(random.Random(11)):
        clock.t = at
        gate.ingest(a)
        gate.forward(worker.submit)
    clock.t += 5
    gate.forward(worker.submit)
    assert len(engine.registry.list()) == 4
    assert gate.stats.notifications["update"] > 0
    release.set()
    assert worker.wait_idle(10)
    engine.close()


def test_flapping_alert_is_one_incident_and_no_resolution_while_it_flaps() -> None:
    clock = ManualClock(T0)
    gate = StormGate(clock, group_wait_s=10, group_interval_s=60, flap_window_s=120, max_flaps=3)
    kinds = []
    for step in range(48):  # toggles every 5 s for four minutes
        clock.t = T0 + step * 5
        status = "firing" if step % 2 == 0 else "resolved"
        gate.ingest(alert("payments", "PaymentsDown", 1, status, clock.t))
        kinds += [n.kind for n in gate.due()]
    assert kinds == ["new"]
    assert gate.stats.flapping > 20
    assert gate.active() == {"payments:PaymentsDown": 1}
    # Quiet for the flap window, then resolved for good: one resolution.
    clock.t += 121
    gate.ingest(alert("payments", "PaymentsDown", 1, "resolved", clock.t))
    clock.t += 61
    assert [n.kind for n in gate.due()] == ["resolved"]
    assert gate.active() == {}


def test_resolution_and_refire() -> None:
    clock = ManualClock(T0)
    gate = StormGate(clock, group_wait_s=10, group_interval_s=60, max_flaps=10)
    gate.ingest(alert("checkout", "HighLatency", 1))
    clock.t += 10
    assert [n.kind for n in gate.due()] == ["new"]
    gate.ingest(alert("checkout", "HighLatency", 1, "resolved"))
    clock.t += 30
    gate.ingest(alert("checkout", "HighLatency", 1))  # back before the group was closed: the same incident
    clock.t += 60
    assert [n.kind for n in gate.due()] == ["update"]
    gate.ingest(alert("checkout", "HighLatency", 1, "resolved"))
    clock.t += 60
    assert [n.kind for n in gate.due()] == ["resolved"]
    gate.ingest(alert("checkout", "HighLatency", 1))  # a fresh problem later: a new incident
    clock.t += 10
    assert [n.kind for n in gate.due()] == ["new"]


def test_limits_and_bad_input() -> None:
    clock = ManualClock(T0)
    gate = StormGate(clock, max_groups=2, max_alerts_per_group=3)
    outcomes = [gate.ingest(alert(f"svc{n}", "Down", 0)) for n in range(3)]
    assert outcomes == ["grouped", "grouped", "dropped"]
    assert [gate.ingest(alert("svc0", "Down", n)) for n in range(1, 4)] == ["grouped", "grouped", "dropped"]
    assert gate.ingest(alert("svc9", "Down", 0, "resolved")) == "ignored"
    with pytest.raises(WebhookError) as err:
        gate.ingest_body(b'{"version": "4", "status": "firing", "alerts": [{"status": "maybe"}]}')
    assert err.value.status == 422
    with pytest.raises(WebhookError):
        gate.ingest_body(b"\xff not json")
    a = alert("svc0", "Down", 0)
    assert alert_fingerprint(a) == alert_fingerprint(alert("svc0", "Down", 0, at=T0 + 99))  # labels, not time
