"""Which data dir the read-only commands show when none is named; tables printed in full off a terminal."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sregraph.cli import app
from sregraph.datadir import data_dir_to_read, last_written
from sregraph.demo import FaultResult, next_commands
from sregraph.engine import RunRegistry
from tools.base import LogRecord
from tools.domain import Trigger
from tools.telemetry import LocalTelemetryStore

runner = CliRunner()


def log_at(data_dir: Path, ts: float) -> None:
    """One log line of the local app at `ts`."""
    with LocalTelemetryStore(data_dir / "app" / "telemetry.db") as store:
        store.write_log(LogRecord(ts=ts, service="payments", message="GET /pay 200"))


def test_no_demo_data_reads_the_configured_dir_without_a_note(tmp_path: Path) -> None:
    assert data_dir_to_read(tmp_path / ".sregraph").path == tmp_path / ".sregraph"
    (tmp_path / ".sregraph" / "demo").mkdir(parents=True)  # an empty demo dir is not data
    log_at(tmp_path / ".sregraph", 100.0)
    choice = data_dir_to_read(tmp_path / ".sregraph")
    assert choice.path == tmp_path / ".sregraph" and choice.note is None


def test_empty_stores_are_not_activity(tmp_path: Path) -> None:
    configured = tmp_path / ".sregraph"
    # What attaching to no app or listing an empty dir leaves behind: stores without rows.
    RunRegistry(configured / "runs.db")
    LocalTelemetryStore(configured / "app" / "telemetry.db").close()
    assert last_written(configured) is None
    RunRegistry(configured / "demo" / "runs.db").record("inc-1", Trigger(summary="payments down"), "resolved")
    choice = data_dir_to_read(configured)
    assert choice.path == configured / "demo"
    assert choice.note is not None and str(configured / "demo") in choice.note


def test_whichever_was_written_last_is_read_and_the_note_names_the_other(tmp_path: Path) -> None:
    configured = tmp_path / ".sregraph"
    log_at(configured, 100.0)
    log_at(configured / "demo", 200.0)
    assert last_written(configured / "demo") == 200.0
    demo = data_dir_to_read(configured)
    assert demo.path == configured / "demo"
    assert demo.note is not None and f"--data-dir {configured} " in demo.note
    log_at(configured, 300.0)
    newer = data_dir_to_read(configured)
    assert newer.path == configured
    assert newer.note is not None and f"--data-dir {configured / 'demo'} " in newer.note


def test_cli_reads_the_demo_unless_a_data_dir_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SREGRAPH_DATA_DIR", raising=False)
    monkeypatch.delenv("SREGRAPH_CONFIG", raising=False)
    demo_runs = RunRegistry(Path(".sregraph/demo/runs.db"))
    demo_runs.record("inc-demo", Trigger(summary="payments down"), "resolved")
    found = runner.invoke(app, ["incidents", "list", "--format", "json"])
    assert found.exit_code == 0, found.output
    assert [r["incident_id"] for r in json.loads(found.stdout)] == ["inc-demo"]
    assert "reading .sregraph/demo" in found.stderr
    named = runner.invoke(app, ["incidents", "list", "--format", "json", "--data-dir", ".sregraph"])
    assert named.exit_code == 0, named.output
    assert json.loads(named.stdout) == [] and named.stderr == ""
    # Listing the named dir created an empty registry there; the demo's incidents are still the newest.
    again = runner.invoke(app, ["incidents", "list", "--format", "json"])
    assert [r["incident_id"] for r in json.loads(again.stdout)] == ["inc-demo"]


def test_the_demo_suggests_a_data_dir_only_where_the_commands_would_miss_its_data() -> None:
    rows = [
        FaultResult(
            "crash",
            "payments",
            "inc-a",
            True,
            "payments",
            True,
            "crash",
            "restart payments",
            True,
            1.5,
            4.9,
            None,
            "resolved",
        ),
        FaultResult(
            "error_rate",
            "payments",
            None,
            False,
            None,
            False,
            None,
            None,
            False,
            None,
            None,
            None,
            "not detected",
        ),
    ]
    demo = Path(".sregraph/demo")
    assert next_commands(rows, demo, demo, ".venv/bin/sregraph") == [
        ".venv/bin/sregraph incidents list",
        ".venv/bin/sregraph incidents show inc-a",
        '.venv/bin/sregraph memory search "crash on payments"',
    ]
    elsewhere = next_commands(rows, Path("/data/my runs/demo"), demo)
    assert all(c.endswith(" --data-dir '/data/my runs/demo'") for c in elsewhere), elsewhere
    assert next_commands(rows[1:], demo, demo) == []


def test_tables_off_a_terminal_print_every_name_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sregraph.slo_cli import _status_table
    from sregraph.terminal import results_console
    from tools.slo.evaluation import evaluate
    from tools.slo.loading import load_slo_file

    names = [f"{service}-availability-of-the-whole-{service}-service" for service in ("checkout", "payments")]
    slo_file = tmp_path / "slos.yaml"
    rows = [f"  - {{name: {n}, service: {n.split('-')[0]}, target: 0.999}}\n" for n in names]
    slo_file.write_text("slos:\n" + "".join(rows))
    log_at(tmp_path, time.time())
    with LocalTelemetryStore(tmp_path / "app" / "telemetry.db") as store:
        statuses = evaluate(store, load_slo_file(slo_file), time.time())
    piped = io.StringIO()
    monkeypatch.setattr("sys.stdout", piped)  # not a terminal, as in a pipe or a CI log
    results_console().print(_status_table(statuses))
    lines = piped.getvalue().splitlines()
    for name in names:
        assert any(name in line for line in lines), piped.getvalue()
