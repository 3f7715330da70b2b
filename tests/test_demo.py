"""`sregraph demo` end to end on the embedded default (a short fault sequence; the full one is the README's)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from tests.localapp import ROOT

REQUIRED = {"fault", "service", "detected", "root_cause_correct", "action", "recovered", "mttd_s", "mttr_s"}


def test_demo_json_scorecard_and_memory_hit(tmp_path: Path) -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "sregraph", "demo", "--format", "json", "--data-dir", str(tmp_path),
         "--faults", "crash:payments,conversion-drop:payments,crash:payments"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # The dashboard is served while the demo runs, with a read-only token of its own.
    assert demo.stderr is not None
    head = []
    for line in demo.stderr:
        head.append(line)
        if "watch it live:" in line:
            url, token = re.search(r"(http://127\.0\.0\.1:\d+)/ui/ .*(srg_\S+)", line).groups()  # type: ignore[union-attr]
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
            cwd=ROOT, capture_output=True, text=True, timeout=120,
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
    _close_other_escalations(engine, handled, said.append)  # type: ignore[arg-type]
    _close_other_escalations(engine, handled, said.append)  # type: ignore[arg-type]
    assert closed == [3] and handled == {"inc-a", "inc-c"} and len(said) == 1
