"""`sregraph demo` end to end on the embedded default (a short fault sequence; the full one is the README's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.localapp import ROOT

REQUIRED = {"fault", "service", "detected", "root_cause_correct", "action", "recovered", "mttd_s", "mttr_s"}


def test_demo_json_scorecard_and_memory_hit(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sregraph", "demo", "--format", "json", "--data-dir", str(tmp_path),
         "--faults", "crash:payments,conversion-drop:payments,crash:payments"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
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
