"""Drain template mining over log records, the text summary, and the log token benchmark's arithmetic."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from agents.logtemplates import LogTemplateMiner, mine, severity, summarize_templates
from agents.tokens import count_tokens, summarize_logs
from evals import bench_logs
from tools.base import LogRecord
from tools.telemetry import LocalTelemetryStore

T0 = 1_700_000_000.0


def rec(
    message: str, service: str = "checkout", level: str = "error", ts: float = T0, **attrs: object
) -> LogRecord:
    return LogRecord(ts=ts, service=service, level=level, message=message, attrs=dict(attrs))


def incident_logs(n: int = 400, seed: int = 7) -> list[LogRecord]:
    """What the demo app logs while payments fails half its requests (three hops, ids in every line)."""
    rng = random.Random(seed)
    out = [
        rec("service started version=1.4.0", s, "info", T0, port=20000 + i, pid=100 + i)
        for i, s in enumerate(("payments", "checkout", "frontend"))
    ]
    for i in range(n):
        ts = T0 + 1 + i * 0.05
        trace = f"{rng.getrandbits(128):032x}"
        out.append(
            rec(
                "internal error: request handler failed",
                "payments",
                ts=ts,
                trace_id=trace,
                route="/pay",
                status=500,
            )
        )
        out.append(
            rec(
                "upstream payments returned 500",
                "checkout",
                ts=ts,
                trace_id=trace,
                route="/checkout",
                status=502,
            )
        )
        out.append(
            rec("upstream checkout returned 502", "frontend", ts=ts, trace_id=trace, route="/buy", status=502)
        )
    return out


def test_variable_words_share_a_template_with_their_values() -> None:
    records = [
        rec(f"cache miss for key user:{name} in region {region}", "frontend", "warning", T0 + i)
        for i, (name, region) in enumerate([("alice", "eu"), ("bob", "eu"), ("carol", "us"), ("dave", "eu")])
    ]
    (template,) = mine(records)
    assert template.template == "cache miss for key <*> in region <*>"
    assert template.count == 4 and template.level == "warning"
    assert template.first_ts == T0 and template.last_ts == T0 + 3
    slots = {s.position: dict(s.values) for s in template.slots}
    assert slots == {
        4: {"user:alice": 1, "user:bob": 1, "user:carol": 1, "user:dave": 1},
        7: {"eu": 3, "us": 1},
    }
    # The regex summariser has no word masks: four "templates" for one message shape.
    assert summarize_logs(records).splitlines()[0].endswith("4 templates")


def test_ids_addresses_and_numbers_never_split_a_template() -> None:
    records = [
        rec(
            "request 550e8400-e29b-41d4-a716-446655440000 from 10.0.0.1:5000 took 12 ms trace "
            "4bf92f3577b34da6a3ce929d0e0e4736"
        ),
        rec(
            "request 6ba7b810-9dad-11d1-80b4-00c04fd430c8 from 192.168.1.20:443 took 7.5 ms trace "
            "00f067aa0ba902b7aa0ba902b7aa0b00"
        ),
    ]
    (template,) = mine(records)
    assert template.template == "request <UUID> from <IP> took <NUM> ms trace <ID>"
    assert template.count == 2


def test_each_service_keeps_its_own_wording_and_same_lines_merge() -> None:
    templates = mine(incident_logs(50))
    by_text = {t.template: t for t in templates}
    # Drain on one tree would turn these into "upstream <*> returned <NUM>" and lose who names whom.
    assert by_text["upstream payments returned <NUM>"].services == {"checkout": 50}
    assert by_text["upstream checkout returned <NUM>"].services == {"frontend": 50}
    started = by_text["service started version=<NUM>.<NUM>"]
    assert started.services == {"payments": 1, "checkout": 1, "frontend": 1} and started.count == 3
    assert started.example.service == "payments"  # the earliest line is the example


def test_errors_come_first_then_the_biggest() -> None:
    records = [rec("all good", level="info")] * 50 + [rec("disk almost full", level="warning")] * 2
    records += (
        [rec("boom", level="error")]
        + [rec("worse", level="critical")]
        + [rec("bang bang", level="ERROR")] * 3
    )
    order = [(t.level, t.template) for t in mine(records)]
    assert order == [
        ("critical", "worse"),
        ("error", "bang bang"),
        ("error", "boom"),
        ("warning", "disk almost full"),
        ("info", "all good"),
    ]
    assert severity("WARN") == 2 and severity("debug") == 3


def test_the_same_line_at_two_levels_is_two_entries() -> None:
    templates = mine([rec("retrying call", level="warning"), rec("retrying call", level="error")])
    assert [(t.level, t.count) for t in templates] == [("error", 1), ("warning", 1)]


def test_summary_text_is_short_and_keeps_the_evidence() -> None:
    records = incident_logs(400)
    text = summarize_templates(records, max_templates=8)
    lines = text.splitlines()
    assert lines[0] == "1203 records (1200 error, 3 info), 4 templates"
    # Equal counts: by text. Each line says who logged it and which dependency it names.
    assert lines[1].startswith("[error] x400 payments×400 ") and lines[1].endswith(
        " internal error: request handler failed"
    )
    assert lines[5].startswith("[error] x400 checkout×400 ") and lines[5].endswith(
        " upstream payments returned <NUM>"
    )
    assert "e.g. checkout: upstream payments returned 500 | route=/checkout status=502" in text
    assert "trace_id" not in text  # ids cost tokens and say nothing in a summary
    raw = "\n".join(
        json.dumps({"ts": r.ts, "level": r.level, "service": r.service, "message": r.message, **r.attrs})
        for r in records
    )
    assert count_tokens(raw) > 50 * count_tokens(text)


def test_summary_limits_templates_and_handles_nothing() -> None:
    records = [
        rec(text, level="info")
        for text in ("cache warmed", "config reloaded from disk", "leader elected", "shutting down now")
    ]
    text = summarize_templates(records, max_templates=2)
    assert text.splitlines()[-1] == "… 2 more templates (2 records)"
    assert summarize_templates([]) == "no log records"


def test_slot_lines_show_only_varying_slots() -> None:
    records = [
        rec(f"upstream payments timed out after {ms} ms", ts=T0 + i) for i, ms in enumerate([400, 400, 600])
    ]
    text = summarize_templates(records)
    assert "slots: <NUM> 400×2, 600×1" in text
    constant = summarize_templates([rec("upstream payments timed out after 400 ms")] * 3)
    assert "slots:" not in constant


def test_miner_ignores_a_drain3_ini_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "drain3.ini").write_text("[DRAIN]\nsim_th = 0.0\n")
    monkeypatch.chdir(tmp_path)
    miner = LogTemplateMiner().add_all([rec("alpha one"), rec("beta two")])
    assert len(miner.templates()) == 2  # with sim_th 0 they would be one template
    assert miner.records == 2


def test_bench_measure_and_main_on_a_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = incident_logs(100)
    row = bench_logs.measure("slice", records)
    assert row["records"] == len(records) and row["templates"] == 4 and row["coverage"] == 1.0
    assert row["raw_json"] > row["raw_text"] > row["drain_summary"]
    assert row["ratio_json"] == round(row["raw_json"] / row["drain_summary"], 1)
    with LocalTelemetryStore(tmp_path / "telemetry.db") as store:
        store.write_logs(records)
    assert bench_logs.main(["--db", str(tmp_path / "telemetry.db"), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["encoding"] == "cl100k_base"
    assert out["slices"][0]["slice"] == "whole run" and out["slices"][0]["records"] == len(records)


def test_an_example_whose_attributes_are_all_ids_has_no_attribute_part() -> None:
    text = summarize_templates([rec("payment failed", trace_id="4bf92f3577b34da6a3ce929d0e0e4736")])
    assert text.splitlines()[-1] == "  e.g. checkout: payment failed"
