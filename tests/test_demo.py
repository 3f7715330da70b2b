"""`sregraph demo` end to end on the embedded default (a short fault sequence; the full one is the README's)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from sregraph.api_auth import ApiStore
from sregraph.config import load_settings
from sregraph.demo import demo_settings, run_demo
from tests.localapp import ROOT
from tools.telemetry import LocalTelemetryStore

REQUIRED = {"fault", "service", "detected", "root_cause_correct", "action", "recovered", "mttd_s", "mttr_s"}


def test_demo_json_scorecard_and_memory_hit(tmp_path: Path) -> None:
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sregraph",
            "demo",
            "--format",
            "json",
            "--data-dir",
            str(tmp_path),
            "--faults",
            "crash:payments,conversion-drop:payments,crash:payments",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # The dashboard is served while the demo runs, with a read-only token of its own.
    assert demo.stderr is not None
    head = []
    for line in demo.stderr:
        head.append(line)
        if "watch it live:" in line:
            found = re.search(r"(http://127\.0\.0\.1:\d+)/ui/ .*(srg_\S+)", line)
            assert found is not None, line
            url, token = found.groups()
            me = httpx.get(f"{url}/api/v1/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert me.json() == {"name": "demo-viewer", "role": "viewer"}
            assert httpx.get(f"{url}/ui/", timeout=10).status_code == 200
            break
    else:
        raise AssertionError("the demo never said where its dashboard is:\n" + "".join(head)[-3000:])
    stdout, stderr = demo.communicate(timeout=300)
    result = subprocess.CompletedProcess(demo.args, demo.returncode, stdout, "".join(head) + stderr)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout)
    assert [r["fault"] for r in rows] == ["crash", "conversion_drop", "crash"]
    for row in rows:
        assert REQUIRED <= set(row)
        assert row["detected"] and row["recovered"] and row["root_cause_correct"], row
        assert 0 < row["mttd_s"] <= row["mttr_s"]
    assert rows[0]["action"] == "restart payments"
    assert rows[1]["action"] == "config_change payments"
    # The second crash is recognised from the first one's post-mortem.
    assert rows[2]["memory_hit"] == rows[0]["incident_id"]
    # Everything the demo started is stopped.
    assert "auto-approves" in result.stderr
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""


def test_bad_faults_and_services_are_refused_before_anything_starts(tmp_path: Path) -> None:
    for args, message in (
        (["demo", "--faults", "explode:payments"], "unknown fault 'explode'"),
        (["demo", "--faults", "crash:database"], "unknown service 'database'"),
        (["chaos", "explode", "payments"], "unknown fault 'explode'"),
        (["chaos", "crash", "database"], "unknown service 'database'"),
        (["chaos", "crash", "payments"], "no local app"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "sregraph", *args, "--data-dir", str(tmp_path / "d")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").rglob("app.json"))


def sregraph(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m sregraph ARGS` in `cwd`, output captured (stdout is a pipe, not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "sregraph", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_after_the_demo_the_next_commands_show_its_incidents(tmp_path: Path) -> None:
    """README's flow in a fresh folder: the demo, then what it suggests, `slo status`, the gate; no flag."""
    shutil.copy(ROOT / "slos.yaml", tmp_path)
    faults = "crash:payments,latency:checkout"
    demo = sregraph(tmp_path, "demo", "--format", "json", "--faults", faults, timeout=300)
    assert demo.returncode == 0, demo.stderr[-3000:]
    ids = [row["incident_id"] for row in json.loads(demo.stdout)]
    assert len(ids) == 2 and all(ids), ids

    listed = sregraph(tmp_path, "incidents", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert set(ids) <= {run["incident_id"] for run in json.loads(listed.stdout)}
    assert "reading .sregraph/demo" in listed.stderr

    # The three commands the demo ends with work as printed.
    suggested = [line.strip() for line in demo.stderr.split("try next")[1].splitlines()[1:4]]
    commands = [shlex.split(c)[3:5] for c in suggested]
    assert commands == [["incidents", "list"], ["incidents", "show"], ["memory", "search"]], suggested
    outputs = []
    for command in suggested:
        argv = shlex.split(command)
        assert argv[:3] == ["python", "-m", "sregraph"], command
        result = sregraph(tmp_path, *argv[3:])
        assert result.returncode == 0, (command, result.stderr)
        outputs.append(result.stdout)
    table, shown, similar = outputs
    assert all(i in table for i in ids), table  # whole ids: a pipe gets every value in full
    assert f"incident {ids[-1]}" in shown and f"Post-mortem {ids[-1]}" in shown
    assert ids[0] in similar

    status = sregraph(tmp_path, "slo", "status")
    assert status.returncode == 0, status.stderr
    assert "payments-availability" in status.stdout and "checkout-availability" in status.stdout
    gates = json.loads(sregraph(tmp_path, "slo", "status", "--format", "json").stdout)["gates"]
    assert gates["payments"]["state"] != "SAFE"  # the crash burnt payments' budget
    gate = sregraph(tmp_path, "release-gate", "payments")
    assert gate.returncode in (3, 4) and "deploys should stop" in gate.stdout, gate.stdout + gate.stderr


def test_the_stand_in_human_clears_a_stopped_service_and_closes_every_escalation() -> None:
    """A dependency_down nobody fixed leaves the service stopped: it is started before its chaos is cleared (POST
    /chaos to a stopped service used to raise and end the run); and every escalated incident's issue is closed,
    not only the one the scorecard matched, so none keeps its services claimed through later faults."""
    from types import SimpleNamespace

    from sregraph.demo import _clear, _close_other_escalations
    from tools.base import ToolError

    calls: list[str] = []

    class Runtime:
        running = False

        def status(self, service: str) -> SimpleNamespace:
            return SimpleNamespace(running=self.running)

        def start(self, service: str) -> None:
            calls.append(f"start {service}")
            self.running = True

    class App:
        runtime = Runtime()

        def inject(self, fault: str, service: str) -> None:
            if not self.runtime.running:
                raise ToolError(f"chaos on {service} failed: ConnectError")
            calls.append(f"{fault} {service}")

    said: list[str] = []
    _clear(App(), "payments", said.append)
    assert calls == ["start payments", "clear payments"] and said == []

    closed: list[int] = []
    runs = [
        {"incident_id": "inc-a", "status": "escalated"},
        {"incident_id": "inc-b", "status": "resolved"},
        {"incident_id": "inc-c", "status": "escalated"},
    ]
    engine = SimpleNamespace(
        registry=SimpleNamespace(list=lambda: runs),
        state=lambda incident_id: {"issue_id": {"inc-a": 1, "inc-b": 2, "inc-c": 3}[incident_id]},
        toolbox=SimpleNamespace(incidents=SimpleNamespace(close=closed.append)),
    )
    handled = {"inc-a"}  # the scorecard's own escalation, already handed over
    _close_other_escalations(engine, handled, said.append)  # type: ignore[arg-type]  # a stand-in engine
    _close_other_escalations(engine, handled, said.append)  # type: ignore[arg-type]  # a stand-in engine
    assert closed == [3] and handled == {"inc-a", "inc-c"} and len(said) == 1


def test_the_demo_diagnoses_payments_from_the_telemetry_it_shipped_through_the_api(tmp_path: Path) -> None:
    settings = demo_settings(load_settings(environ={}, data_dir=tmp_path))
    diagnoses: dict[str, Any] = {}

    def progress(incident_id: str, node: str, update: dict[str, Any] | None) -> None:
        if update and update.get("diagnosis") is not None:
            diagnoses[incident_id] = update["diagnosis"]

    said: list[str] = []
    rows = run_demo(
        settings,
        [("error_rate", "payments", {"ratio": 0.5})],
        progress=progress,
        say=said.append,
        dashboard=False,
    )
    assert any("payments sends its logs, metrics and spans through sregraph.sdk" in line for line in said), (
        said
    )
    assert not any("srg_" in line for line in said)  # no token is printed without the dashboard
    row = rows[0]
    assert row.detected and row.root_cause_correct and row.recovered, row
    assert row.incident_id is not None
    top = diagnoses[row.incident_id].top
    assert (top.service, top.fault_type) == ("payments", "error_spike")
    assert any(e.kind == "metric" and e.ref == "error_ratio" and e.weight > 0 for e in top.evidence), (
        top.evidence
    )

    # payments never opened the store: all it said reached it through the API, from its SDK handler, pusher and
    # exporter.
    store = LocalTelemetryStore(settings.data_dir / "app" / "telemetry.db")
    try:
        now = time.time()
        logs = store.search_logs("payments", now - 3600, now, limit=100_000)
        assert logs and {r.attrs.get("logger") for r in logs} == {"sregraph.localenv.payments"}
        assert any(
            r.level == "error" and "request handler failed" in r.message and r.attrs.get("trace_id")
            for r in logs
        )
        assert store.query_range("error_ratio", {"service": "payments"}, now - 3600, now)
        assert store.spans("payments", now - 3600, now, limit=10)
        # The other services still write the store themselves (no SDK logger on their lines).
        assert "logger" not in store.search_logs("checkout", now - 3600, now, limit=1)[0].attrs
    finally:
        store.close()
    audit = ApiStore(settings.data_dir / "api.db").audit_log(limit=1000)
    shipped = [(e["path"], e["status"]) for e in audit if e["principal"] == "demo-app"]
    assert {path for path, _ in shipped} == {
        "/api/v1/ingest/logs",
        "/api/v1/ingest/metrics",
        "/api/v1/ingest/spans",
    }
    assert {status for _, status in shipped} == {200}
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""
