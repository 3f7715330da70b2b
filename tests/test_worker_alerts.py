"""Alertmanager webhooks reach the worker through the storm gate: 1,000 alerts POSTed within a (simulated)
minute for four real problems become four incidents on the real engine; a SIGTERM stops the receiver."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import signal
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from evals.harness import TOPOLOGY, Scenario
from sregraph.alerts import AlertReceiver
from sregraph.config import AlertsConfig, alerts_token, load_settings
from sregraph.engine import FINAL
from sregraph.worker import Worker
from tests.fixtures.world import approval_world
from tests.support import ManualClock
from tools.base import ConfigError
from tools.gitops import LocalGitOps

T0 = 1_700_000_000.0
FAULTS = {"payments": "latency", "checkout": "memory_leak", "search": "error_spike", "frontend": "latency"}
GROUPS = [
    ("payments", "PaymentsLatencyHigh"),
    ("payments", "PaymentsSLOBurn"),  # a second alert rule on the same problem: grouped apart, one incident
    ("checkout", "CheckoutMemoryHigh"),
    ("search", "SearchErrors"),
    ("frontend", "FrontendLatency"),
]


def _alert(rng: random.Random, at: float) -> dict[str, Any]:
    service, name = rng.choice(GROUPS)
    instance = rng.randrange(30)
    status = "resolved" if instance < 4 and rng.random() < 0.5 else "firing"  # pods 0-3 flap
    labels = {"alertname": name, "service": service, "instance": f"pod-{instance}", "severity": "page"}
    stamp = datetime.fromtimestamp(at, UTC).isoformat()
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": f"{name} on {service} pod-{instance}"},
        "startsAt": stamp,
        "endsAt": stamp if status == "resolved" else "0001-01-01T00:00:00Z",
        "fingerprint": hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16],
    }


def storm(seed: int, n: int = 1000, seconds: float = 60.0) -> list[tuple[float, list[dict[str, Any]]]]:
    """`n` alerts over `seconds`, in webhook batches of 1-60 alerts (Alertmanager sends a group's alerts at once)."""
    rng = random.Random(seed)
    times = sorted(T0 + rng.uniform(0, seconds) for _ in range(n))
    batches, i = [], 0
    while i < n:
        size = rng.randint(1, 60)
        batches.append((times[min(n, i + size) - 1], [_alert(rng, t) for t in times[i : i + size]]))
        i += size
    return batches


def post(
    conn: http.client.HTTPConnection, alerts: list[dict[str, Any]], token: str | None = None
) -> tuple[int, dict[str, Any]]:
    """One Alertmanager v4 webhook on a kept-alive connection."""
    body = json.dumps(
        {
            "version": "4",
            "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
            "receiver": "sregraph",
            "groupKey": "{}:{}",
            "truncatedAlerts": 0,
            "alerts": alerts,
        }
    ).encode()
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    conn.request("POST", "/alerts", body, headers)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_a_thousand_alerts_over_http_become_four_incidents(tmp_path: Path) -> None:
    world, engine = approval_world(tmp_path)
    gitops = engine.toolbox.gitops
    assert isinstance(gitops, LocalGitOps)
    for service, fault in FAULTS.items():
        world.inject(Scenario(fault, service), gitops)
    worker = Worker(engine, max_concurrent=4)
    clock = ManualClock(T0)
    config = AlertsConfig(
        enabled=True,
        port=0,
        group_wait_s=10,
        group_interval_s=30,
        flap_window_s=300,
        max_flaps=3,
        insecure_no_auth=True,
    )
    receiver = worker.serve_alerts(config, clock=clock)
    conn = http.client.HTTPConnection(receiver.host, receiver.port, timeout=10)
    statuses = []
    look = T0 + 1
    for at, alerts in storm(20240501):
        while look <= at:  # the worker loop: due groups go to Worker.submit once a (simulated) second
            clock.t = look
            worker.forward_alerts()
            look += 1
        clock.t = at
        status, answer = post(conn, alerts)
        statuses.append(status)
        assert sum(answer.values()) == len(alerts)
    clock.t = T0 + 60 + config.group_interval_s + 1
    worker.forward_alerts()
    conn.close()
    assert worker.wait_idle(120)
    worker.stop_alerts()

    assert set(statuses) == {200} and len(statuses) > 30
    gate = worker.gate
    assert gate is not None and gate.stats.received == 1000
    assert gate.stats.duplicates > 300 and gate.stats.flapping > 0
    assert gate.stats.notifications["new"] == len(GROUPS) and gate.stats.notifications["update"] > 0
    runs = engine.registry.list()
    assert sorted(r["trigger"]["service"] for r in runs) == sorted(FAULTS)  # one incident per real problem
    for run in runs:
        state = engine.state(run["incident_id"])
        assert run["status"] not in FINAL - {"escalated"} and state["issue_id"] is not None, run
    # (The observer looks at the whole system, so concurrent problems may share the issue of the strongest one.)
    # The second payments rule, and later alerts of every group, joined the incident their problem started.
    [payments] = [r for r in runs if r["trigger"]["service"] == "payments"]
    joined = {t.signal for _, t in engine.registry.attached(payments["incident_id"])}
    assert {payments["trigger"]["signal"]} | joined == {"PaymentsLatencyHigh", "PaymentsSLOBurn"}
    assert all(engine.registry.attached(r["incident_id"]) for r in runs)
    with pytest.raises(OSError):
        socket.create_connection((receiver.host, receiver.port), timeout=1).close()
    engine.close()


def test_sigterm_stops_the_receiver(tmp_path: Path) -> None:
    """The worker in the main thread: an alert opens an incident, a SIGTERM ends the loop and the receiver."""
    _, engine = approval_world(tmp_path)
    worker = Worker(engine)
    receiver = worker.serve_alerts(AlertsConfig(enabled=True, port=0, group_wait_s=0), token="s3cret")
    conn = http.client.HTTPConnection(receiver.host, receiver.port, timeout=10)
    assert post(conn, [_alert(random.Random(1), T0)], token="wrong")[0] == 401
    conn.close()
    conn = http.client.HTTPConnection(receiver.host, receiver.port, timeout=10)
    alert = _alert(random.Random(1), T0) | {"status": "firing", "endsAt": "0001-01-01T00:00:00Z"}
    assert post(conn, [alert], token="s3cret")[0] == 200
    conn.close()

    def terminate_once_started() -> None:
        for _ in range(200):
            if engine.registry.list():
                break
            threading.Event().wait(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate_once_started)
    killer.start()
    worker.run(interval=0.5)  # returns after the SIGTERM; closes the engine
    killer.join()
    [run] = engine.registry.list()
    assert run["trigger"]["service"] == alert["labels"]["service"]
    with pytest.raises(OSError):
        socket.create_connection((receiver.host, receiver.port), timeout=1).close()


def test_alerts_settings_and_token_from_the_environment_only(tmp_path: Path) -> None:
    settings = load_settings(environ={"SREGRAPH_ALERTS__ENABLED": "true", "SREGRAPH_ALERTS_TOKEN": "t0k"})
    assert settings.alerts.enabled and settings.alerts.port == 9094 and settings.alerts.group_wait_s == 30
    assert alerts_token({"SREGRAPH_ALERTS_TOKEN": "t0k"}) == "t0k" and alerts_token({}) is None
    config = tmp_path / "sregraph.yaml"
    config.write_text(yaml.safe_dump({"alerts": {"enabled": True, "token": "in-a-file"}}))
    with pytest.raises(ConfigError, match="alerts.token"):
        load_settings(config, environ={})
    with pytest.raises(ConfigError, match="alerts.port"):
        load_settings(environ={}, alerts={"port": 70000})
    assert set(TOPOLOGY) == set(FAULTS)


def test_port_in_use_is_a_config_error(tmp_path: Path) -> None:
    _, engine = approval_world(tmp_path)
    with AlertReceiver(on_alerts=lambda alerts: {}, port=0, insecure_no_auth=True) as taken:
        with pytest.raises(ConfigError, match="cannot listen"):
            Worker(engine).serve_alerts(AlertsConfig(enabled=True, port=taken.port), token="s3cret")
    engine.close()


def test_bench_storm_measures_http_ingestion() -> None:
    from evals.bench_storm import run

    result = run(alerts=2_000, problems=4)
    assert result["notifications"]["new"] == 4
    for key in ("http_post_50_alerts_ms", "http_post_1_alert_ms"):
        assert result[key]["posts"] > 0 and 0 < result[key]["p50"] <= result[key]["p99"]
