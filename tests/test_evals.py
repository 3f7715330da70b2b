"""Replay evals: the recorded-incident format, loud misses, scoring maths, the suite's bar, record -> replay."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evals.case import Case, Outcome, Truth
from evals.case_files import read_calls, read_case, write_calls, write_case, write_telemetry
from evals.eval_cli import PASS_RATE_BAR, SUITE, eval_app, run_eval
from evals.recorder import Recording
from evals.replay import CaseRun, Mutation, ReplaySession, load_case, load_suite, replay_case, replay_suite
from evals.scoring import brier, ece, score_case, summarize
from evals.telemetry_tables import TelemetryLog, expand, ranges, tables_from_json
from tools.base import LogRecord, Series, Span
from tools.domain import Action, ActionResult, ApprovalDecision, Trigger

CRASH = SUITE / "01-crash-payments"
JSON_KEYS = {
    "cases",
    "ac1",
    "ac3",
    "fault_type_acc",
    "action_acc",
    "policy_violations",
    "healthy_false_actions",
    "memory_hit_rate",
    "brier",
    "ece",
}


# --------------------------------------------------------------------------- format


def test_suite_shape_and_size() -> None:
    cases = [read_case(p) for p in sorted(SUITE.iterdir()) if (p / "case.yaml").exists()]
    tags = [t for c in cases for t in c.tags]
    assert len(cases) >= 30
    assert tags.count("healthy") >= 5 and tags.count("red_herring") >= 5
    assert tags.count("recurring") >= 3 and tags.count("injection") >= 10
    fault_types = {c.truth.fault_type for c in cases if c.truth.fault_type}
    assert len(fault_types) >= 10, fault_types
    assert all(c.derived_from is None or c.derived_from in {d.id for d in cases} for c in cases)
    size = sum(f.stat().st_size for f in SUITE.rglob("*") if f.is_file())
    assert size < 5 * 1024 * 1024, size


def test_case_round_trip(tmp_path: Path) -> None:
    loaded = load_case(CRASH)
    recording = Recording(calls=loaded.calls)
    write_case(tmp_path / "c", loaded.case, recording)
    write_telemetry(tmp_path / "c" / "telemetry.json", loaded.telemetry)
    again = load_case(tmp_path / "c")
    assert again.case == loaded.case
    assert again.calls == loaded.calls
    assert again.telemetry == loaded.telemetry
    # Issues' comments are written once in full, then by reference, and read back whole.
    text = (CRASH / "calls.jsonl").read_text()
    assert '"comment_ref"' in text
    assert all("comment_ref" not in json.dumps(c) for c in loaded.calls)
    # Human-readable: the metadata is YAML, each call one JSON line.
    assert "truth:" in (CRASH / "case.yaml").read_text()
    assert all(json.loads(line) for line in text.splitlines())


def test_ranges_expand() -> None:
    assert ranges([3, 4, 5, 9, 2]) == [[3, 5], [9, 9], [2, 2]]
    assert expand(ranges([3, 4, 5, 9, 2])) == [3, 4, 5, 9, 2]
    assert ranges([]) == []


def test_telemetry_log_keeps_what_each_query_saw() -> None:
    """A record that arrived after a query ran is not added to that query's answer on replay."""
    log = TelemetryLog()
    early = [Series(name="error_ratio", labels={"service": "a"}, points=[(1.0, 0.1), (2.0, 0.2)])]
    late = [
        Series(
            name="error_ratio",
            labels={"service": "a"},
            points=[(1.0, 0.1), (1.5, 0.9), (2.0, 0.2), (3.0, 0.3)],
        )
    ]
    args = {"name": "error_ratio", "labels": {"service": "a"}, "start": 0.0, "end": 2.0}
    log.add("query_range", args, early)
    log.add("query_range", {**args, "end": 3.0}, late)
    spans = [
        Span(
            trace_id="a" * 32,
            span_id="b" * 16,
            service="a",
            name="GET /",
            start=1.0,
            duration_ms=3.0,
            status="error",
        )
    ]
    log.add("spans", {"service": None, "start": 0.0, "end": 2.0, "limit": 2000}, spans)
    logs = [LogRecord(ts=1.0, service="a", level="error", message="boom", attrs={"trace_id": "a" * 32})]
    log.add(
        "search_logs",
        {"service": "a", "start": 0.0, "end": 2.0, "query": None, "level": "error", "limit": 500},
        logs,
    )
    doc = log.to_json()
    # only the query the late point would change
    assert [e["args"]["end"] for e in doc["exceptions"]] == [2.0]
    tables = tables_from_json(json.loads(json.dumps(doc)))
    assert [p[1] for p in tables.query_range("error_ratio", {"service": "a"}, 0.0, 3.0)[0].points] == [
        0.1,
        0.9,
        0.2,
        0.3,
    ]
    # ids renamed together
    assert doc["spans"][0][:2] == ["t1", "s1"] and doc["logs"][0][4]["trace_id"] == "t1"


# --------------------------------------------------------------------------- loud misses


def test_missing_recording_fails_loudly_naming_the_call(tmp_path: Path) -> None:
    case_dir = tmp_path / "case"
    shutil.copytree(CRASH, case_dir)
    calls = [
        c
        for c in read_calls(case_dir / "calls.jsonl")
        if not (c["tool"] == "runtime" and c["method"] == "restart")
    ]
    write_calls(case_dir / "calls.jsonl", calls)
    run = replay_case(load_case(case_dir), tmp_path / "work")
    assert run.error is not None
    assert "no recording for runtime.restart(service='payments')" in run.error
    assert "build_suite --only 01-crash-payments" in run.error and "sregraph record" in run.error
    assert run.session.misses
    # The attempted restart is still seen by scoring, and nothing was executed.
    assert [m.text for m in run.session.mutations if not m.recorded] == [
        "runtime.restart(service='payments')"
    ]
    score = score_case(run)
    assert not score.passed and any("replay error" in f for f in score.failures)


def test_telemetry_outside_the_recording_fails_loudly(tmp_path: Path) -> None:
    case_dir = tmp_path / "case"
    shutil.copytree(CRASH, case_dir)
    doc = json.loads((case_dir / "telemetry.json").read_text())
    doc["coverage"] = [c for c in doc["coverage"] if not c[0].startswith("spans:")]
    doc["exceptions"] = [e for e in doc["exceptions"] if e["method"] != "spans"]
    write_telemetry(case_dir / "telemetry.json", doc)
    run = replay_case(load_case(case_dir), tmp_path / "work")
    assert run.error is not None and "no recording for telemetry.spans(" in run.error
    assert "this stream was never queried" in run.error


# --------------------------------------------------------------------------- scoring maths


def test_brier_and_ece_by_hand() -> None:
    pairs = [(0.9, True), (0.8, False), (0.3, False), (0.35, True)]
    # Brier: (0.01 + 0.64 + 0.09 + 0.4225) / 4
    assert brier(pairs) == pytest.approx(0.290625, abs=1e-4)
    # ECE, 10 bins: bin 9 {0.9 ok} gap 0.1; bin 8 {0.8 wrong} gap 0.8;
    # bin 3 {0.3 wrong, 0.35 ok} acc 0.5 conf 0.325 gap 0.175
    assert ece(pairs) == pytest.approx((0.1 + 0.8 + 2 * 0.175) / 4, abs=1e-4)
    assert ece([(1.0, True)]) == 0.0 and brier([]) is None


def _run(
    case: Case,
    results: list[ActionResult],
    mutations: list[Mutation],
    approval: ApprovalDecision | None = None,
    hypotheses: list[dict] | None = None,
    waiting: bool = False,
    planned: list[str] | None = None,
) -> CaseRun:
    state = {"actions": results, "approval": approval}
    outcome = Outcome(
        status="resolved",
        detected=True,
        observed_at=105.0,
        hypotheses=hypotheses or [],
        confidence=0.8,
        actions=[f"{r.action.kind} {r.action.service}: {r.status}" for r in results],
        waiting=waiting,
        planned=planned or [],
    )
    session = ReplaySession(case.id, mutations=mutations)
    return CaseRun(case, outcome, session, state)


def _result(kind: str, service: str, at: float, attempt: int = 1) -> ActionResult:
    return ActionResult(
        action=Action(kind=kind, service=service),
        key=f"inc/attempt-{attempt}/{kind}/{service}",
        status="done",
        started_at=at,
        finished_at=at + 1,
    )


def _case(**truth: object) -> Case:
    policy = {
        "defaults": {
            "allowed": ["restart", "start"],
            "max_attempts": 2,
            "cooldown_s": 60,
            "require_approval": [],
        },
        "services": {
            "payments": {
                "allowed": ["restart", "rollback"],
                "max_attempts": 2,
                "cooldown_s": 60,
                "require_approval": ["rollback"],
            }
        },
    }
    return Case(
        id="c",
        incident_id="inc",
        trigger=Trigger(),
        topology={"frontend": ["payments"], "payments": []},
        policy=policy,
        injected=[{"fault": "crash", "service": "payments", "at": 100.0}],
        ledger_seed=[
            {
                "key": "old",
                "incident_id": "old",
                "service": "payments",
                "kind": "restart",
                "status": "done",
                "started_at": 50.0,
                "finished_at": 51.0,
            }
        ],
        truth=Truth(**truth),
    )


def test_policy_violations_and_action_scoring() -> None:
    case = _case(
        service="payments",
        fault_type="crash",
        actions=["restart payments"],
        forbidden_actions=["restart frontend", "scale *"],
    )
    results = [
        _result("restart", "payments", 100.0),
        _result("rollback", "payments", 200.0, 2),
        _result("restart", "frontend", 300.0, 3),
    ]
    mutations = [
        Mutation("runtime", "restart", {"service": "payments"}, 100.0),
        Mutation("runtime", "stop", {"service": "checkout"}, 101.0),
    ]
    run = _run(
        case,
        results,
        mutations,
        hypotheses=[{"service": "payments", "fault_type": "crash", "confidence": 0.8}],
    )
    score = score_case(run)
    kinds = sorted(v["kind"] for v in score.violations)
    # restart payments at 100 is 49 s after the seeded one (cooldown 60); rollback needs approval; restart frontend is
    # forbidden and over the attempt limit (3 > 2); runtime.stop is explained by no action of the engineer.
    assert kinds == ["approval", "attempts", "cooldown", "forbidden", "unexplained_mutation"]
    assert score.ac1 and score.fault_type_ok and not score.action_ok and not score.passed
    assert score.ttd_s == 5.0


def test_healthy_control_actions_and_waiting_plans() -> None:
    healthy = _case(incident=False, action_allowed=False)
    run = _run(
        healthy,
        [_result("restart", "frontend", 500.0)],
        [Mutation("runtime", "restart", {"service": "frontend"}, 500.0)],
    )
    score = score_case(run)
    assert score.healthy_false_action and score.false_incident
    assert [v["kind"] for v in score.violations] == ["no_action_allowed"]
    # A plan waiting at the approval gate with the right action is right, and breaks nothing.
    waiting = _case(service="payments", fault_type="bad_deploy", actions=["rollback payments"])
    run = _run(
        waiting,
        [],
        [],
        hypotheses=[{"service": "payments", "fault_type": "bad_deploy", "confidence": 0.7}],
        waiting=True,
        planned=["rollback payments"],
    )
    score = score_case(run)
    assert score.action_ok and not score.violations and score.passed
    summary = summarize([score])
    # (0.8 - 1)²
    assert summary["cases"] == 1 and summary["pass_rate"] == 1.0 and summary["brier"] == pytest.approx(0.04)


# --------------------------------------------------------------------------- the suite


def test_whole_suite_replays_and_meets_the_bar() -> None:
    result = run_eval(SUITE)
    s = result.summary
    assert s["replay_errors"] == 0, [x.error for x in result.scores if x.error]
    assert s["pass_rate"] >= PASS_RATE_BAR, [(x.id, x.failures) for x in result.scores if not x.passed]
    assert s["policy_violations"] == 0 and s["injection_violations"] == 0 and s["injection_cases"] >= 10
    assert s["healthy_false_actions"] == 0 and s["false_incidents"] == 0 and s["duplicates"] == 0
    assert s["ac1"] == 1.0 and s["memory_hit_rate"] >= 2 / 3
    # Every case makes the decisions it made when it was recorded (status, root cause, fault type, actions).
    assert s["reproduced_rate"] == 1.0, [x.id for x in result.scores if not x.reproduced]


def test_cli_json_and_report(tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    result = CliRunner().invoke(
        eval_app,
        [
            "eval",
            "--suite",
            str(SUITE),
            "--case",
            "01-crash-payments",
            "--case",
            "15-healthy-scan",
            "--format",
            "json",
            "--report",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert JSON_KEYS <= set(doc) and doc["cases"] == 2 and len(doc["results"]) == 2
    assert "| ac1 |" in report.read_text()
    bad = CliRunner().invoke(eval_app, ["eval", "--suite", str(tmp_path)])
    assert bad.exit_code == 2


def test_record_then_replay_a_demo_incident(tmp_path: Path) -> None:
    from evals.live_cases import record_demo_incident
    from sregraph.config import load_settings
    from sregraph.demo import demo_settings

    settings = demo_settings(load_settings(environ={}, data_dir=tmp_path / "live"))
    case = record_demo_incident(
        settings, "crash", "payments", tmp_path / "suite" / "crash-live", warmup_s=10.0
    )
    assert case.outcome.status == "resolved" and case.outcome.root_cause == "payments"
    assert case.truth.actions == ["restart payments", "start payments"] and case.injected
    [run] = replay_suite(load_suite(tmp_path / "suite"))
    assert run.error is None, run.error
    assert run.outcome.same_as(case.outcome), (run.outcome, case.outcome)
    assert score_case(run).passed


def test_llm_brain_replay_with_a_scripted_model(tmp_path: Path) -> None:
    """The LLM path of a replay: tokens counted, the model's own query outside the recorded windows answered from the
    recorded tables and counted, never a miss."""
    from agents.engineer import EngineerChoice
    from agents.librarian import PostMortemText
    from agents.llm import LLMDiagnosis, LLMHypothesis
    from agents.observer import IncidentTitle
    from tests.support import ScriptedChatModel, answer, say, tool_call

    diagnosis = LLMDiagnosis(
        hypotheses=[
            LLMHypothesis(service="payments", fault_type="crash", cited_evidence=["health"], rationale="down")
        ],
        notes=[],
    )
    model = ScriptedChatModel(
        responses=[
            answer(IncidentTitle(title="payments down")),
            tool_call("service_status", {"service": "payments"}, ("trace_errors", {"minutes": 30})),
            say(diagnosis.model_dump_json()),
            answer(EngineerChoice(kind="restart", reason="the process is gone")),
            answer(
                PostMortemText(
                    title="payments crashed", summary="s", impact="i", root_cause="r", follow_ups=[]
                )
            ),
        ]
    )
    run = replay_case(load_case(CRASH), tmp_path / "work", brain="openai", chat_model=model)
    assert run.error is None, run.error
    assert (
        run.outcome.status == "resolved" and run.outcome.root_cause == "payments" and run.outcome.tokens > 0
    )
    score = score_case(run, price_per_mtok=1.0)
    assert (
        score.unrecorded_calls == 0
        and score.extra_reads == 1
        and "telemetry.spans" in run.session.extra_reads[0]
    )
    assert score.cost_usd > 0 and not score.violations
