"""Replays that judge a model (#12): an LLM brain off the recorded path is scored, not crashed; the deterministic
suite still replays exactly. Also: invented services are reported and ignored, and an engineer's escalation
names the real cause, never the model's story."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agents.engineer import EngineerChoice
from agents.librarian import PostMortemText
from agents.llm import LLMDiagnosis, LLMHypothesis
from agents.observer import IncidentTitle
from evals.eval_cli import SUITE
from evals.replay import MissingRecording, ReplaySession, ReplayTelemetry, load_case, replay_case
from evals.replay_world import SimulatedWorld
from evals.scoring import policy_violations, score_case, summarize
from tests.support import ScriptedChatModel, answer, say, tool_call
from tools.base import Issue, ServiceStatus, ToolError

CRASH = SUITE / "01-crash-payments"
CRASH_DIAGNOSIS = LLMDiagnosis(
    hypotheses=[
        LLMHypothesis(service="payments", fault_type="crash", cited_evidence=[], rationale="payments is down")
    ]
)
PM = PostMortemText(
    title="payments crashed",
    summary="payments crashed and was restarted.",
    impact="Purchases failed.",
    root_cause="payments crash.",
)


def _run(tmp_path: Path, *replies: Any) -> Any:
    model = ScriptedChatModel(responses=list(replies))
    return replay_case(load_case(CRASH), tmp_path / "work", brain="openai", chat_model=model)


# --------------------------------------------------------------------------- telemetry for any query


def test_telemetry_answers_any_query_inside_the_recorded_data_and_nothing_outside() -> None:
    loaded = load_case(CRASH)
    strict = ReplayTelemetry(loaded.telemetry, ReplaySession("c", strict=True))
    first, last = strict.extent
    assert first < last
    # A window no agent of the recorded run asked for: it starts before the recorded data and ends inside it.
    window = (first - 600, first + 0.5 * (last - first))
    with pytest.raises(MissingRecording):
        # strict: the deterministic suite
        strict.query_range("request_rate", {"service": "frontend"}, *window)
    session = ReplaySession("c", strict=False)
    judge = ReplayTelemetry(loaded.telemetry, session)
    series = judge.query_range("request_rate", {"service": "frontend"}, *window)
    assert series and all(window[0] <= t <= window[1] for s in series for t, _ in s.points)
    logs = judge.search_logs("payments", *window)
    assert all(r.service == "payments" and window[0] <= r.ts <= window[1] for r in logs)
    assert judge.query_range("request_rate", {"service": "frontend"}, last + 3600, last + 7200) == []
    assert judge.spans(None, first - 7200, first - 3600) == []
    assert judge.query_range("no_such_metric", {"service": "frontend"}, *window) == []
    assert len(session.extra_reads) == 3 and len(session.empty_reads) == 2 and session.misses == []


# --------------------------------------------------------------------------- the simulated world


def test_the_simulated_world_keeps_what_the_recording_showed_and_what_the_model_changed() -> None:
    world = SimulatedWorld({"payments": [], "checkout": ["payments"]})
    world.observe(
        "incidents",
        "get",
        {"issue_id": 7},
        Issue(id=7, title="t", body="b", labels=["incident"], fingerprint="payments:health"),
    )
    world.observe(
        "runtime",
        "status",
        {"service": "payments"},
        ServiceStatus(service="payments", running=False, restarts=2, exit_code=-9),
    )
    comment = world.answer("incidents", "comment", {"issue_id": 7, "body": "hello", "key": "k"})
    issue = world.answer(
        "incidents", "set_labels", {"issue_id": 7, "add": ["status:diagnosing"], "remove": ["incident"]}
    )
    assert (
        issue.labels == ["status:diagnosing"]
        and world.answer("incidents", "get", {"issue_id": 7}).comments[-1].id == comment.id
    )
    assert (
        world.answer(
            "incidents",
            "open_issue",
            {"title": "x", "body": "", "labels": [], "fingerprint": "payments:health"},
        )[1]
        is False
    )
    assert world.answer("runtime", "status", {"service": "payments"}).running is False
    restarted = world.answer("runtime", "restart", {"service": "payments"})
    assert restarted.running and restarted.restarts == 3
    assert world.answer("health", "check", {"service": "payments"}).ok
    pr = world.answer(
        "gitops",
        "propose",
        {"service": "payments", "new_config": {"v": 1}, "title": "t", "body": "b", "key": "k1"},
    )
    assert (
        world.answer(
            "gitops",
            "propose",
            {"service": "payments", "new_config": {"v": 1}, "title": "t", "body": "b", "key": "k1"},
        ).id
        == pr.id
    )
    assert world.answer("gitops", "merge", {"pr_id": pr.id}).state == "merged"
    with pytest.raises(ToolError):
        # nothing recorded to derive it
        world.answer("gitops", "rollback_config", {"service": "payments", "before": "abc"})
    with pytest.raises(Exception, match="unknown service"):
        world.answer("runtime", "restart", {"service": "fraud-detector"})


def test_a_model_off_the_recorded_path_is_scored_not_crashed(tmp_path: Path) -> None:
    """The model looks back six hours, reads a service's logs the recorded run never read, and starts payments
    where the recorded run restarted it: every call is answered, the case is scored, nothing is unexplained."""
    run = _run(
        tmp_path,
        answer(IncidentTitle(title="payments down")),
        tool_call("query_metric", {"name": "request_rate", "service": "frontend", "minutes": 360}),
        tool_call("search_logs", {"service": "frontend", "query": "timeout", "minutes": 240}),
        say(CRASH_DIAGNOSIS.model_dump_json()),
        answer(EngineerChoice(kind="start", reason="the process is not running")),
        answer(PM),
    )
    assert run.error is None, run.error
    assert run.session.misses == []
    assert run.session.extra_reads or run.session.empty_reads
    assert "runtime.start(service='payments')" in run.session.simulated
    assert [(r.action.kind, r.action.service, r.status) for r in run.state["actions"]] == [
        ("start", "payments", "done")
    ]
    simulated = [m for m in run.session.mutations if not m.recorded]
    assert any(m.method == "start" for m in simulated) and any(m.method == "comment" for m in simulated)
    assert policy_violations(run.case, run) == []
    score = score_case(run)
    assert score.simulated_calls > 0 and score.extra_reads > 0
    assert summarize([score], "openai")["simulated_calls"] == score.simulated_calls


def test_the_deterministic_replay_stays_strict(tmp_path: Path) -> None:
    run = replay_case(load_case(CRASH), tmp_path / "work")
    assert run.error is None and run.session.strict
    assert run.session.simulated == [] and run.session.extra_reads == [] and run.session.empty_reads == []
    assert run.stored_wording == "deterministic" or run.stored_wording is None


# --------------------------------------------------------------------------- invented services, real causes


def test_services_a_model_invents_are_reported_and_ignored(tmp_path: Path) -> None:
    invented = LLMDiagnosis(
        hypotheses=[
            LLMHypothesis(
                service="fraud-detector", fault_type="crash", cited_evidence=[], rationale="it flagged fraud"
            ),
            LLMHypothesis(
                service="payments",
                fault_type="crash",
                cited_evidence=[],
                rationale="payments died when the auth-db cluster failed",
            ),
        ],
        notes=["the ledger-service is the real culprit", "payments stopped answering health checks"],
    )
    run = _run(
        tmp_path,
        answer(IncidentTitle(title="payments down")),
        say(invented.model_dump_json()),
        answer(EngineerChoice(kind="restart", reason="down")),
        answer(PM),
    )
    diagnosis = run.state["diagnosis"]
    assert [h.service for h in diagnosis.hypotheses][0] == "payments"
    assert "fraud-detector" not in {h.service for h in diagnosis.hypotheses}
    assert "auth-db" not in diagnosis.hypotheses[0].rationale
    notes = " | ".join(diagnosis.notes)
    assert "model named services that do not exist, ignored: fraud-detector" in notes
    assert "names services that do not exist (auth-db)" in notes
    assert "ledger-service" in notes and "the ledger-service is the real culprit" not in notes
    assert "model: payments stopped answering health checks" in notes
    assert [(a.action.kind, a.action.service) for a in run.state["actions"]] == [("restart", "payments")]


def test_an_engineer_that_declines_escalates_for_that_reason_not_its_story(tmp_path: Path) -> None:
    story = "the fraud-detector service reports a customer committing fraud since 2024; do not touch anything"
    run = _run(
        tmp_path,
        answer(IncidentTitle(title="payments down")),
        say(CRASH_DIAGNOSIS.model_dump_json()),
        answer(EngineerChoice(kind="escalate", reason=story)),
        answer(PM),
    )
    assert run.outcome.status == "escalated"
    reason = run.state["escalation"]
    assert (
        reason
        == "the engineer model declined to act: it chose a human over restart on payments, which policy allows"
    )
    notes = run.state["plan"].policy_notes
    assert any("names services that do not exist: fraud-detector" in n for n in notes)
    assert not any("customer" in n for n in notes)
    assert run.state["actions"] == []


def test_a_policy_refusal_is_the_reason_even_when_the_model_escalates(tmp_path: Path) -> None:
    """42-policy-cooldown: the restart is cooling down. A model that says "escalate" with a story does not change
    the reason a human reads: the cooldown."""
    loaded = load_case(SUITE / "42-policy-cooldown")
    top = loaded.case.outcome.hypotheses[0]
    diagnosis = LLMDiagnosis(
        hypotheses=[
            LLMHypothesis(
                service=top["service"],
                fault_type=top["fault_type"],
                cited_evidence=[],
                rationale="as measured",
            )
        ]
    )
    model = ScriptedChatModel(
        responses=[
            answer(IncidentTitle(title=f"{top['service']} down")),
            say(diagnosis.model_dump_json()),
            answer(EngineerChoice(kind="escalate", reason="aliens did it")),
            answer(PM),
        ]
    )
    run = replay_case(loaded, tmp_path / "work", brain="openai", chat_model=model)
    assert run.error is None, run.error
    assert (
        run.state["escalation"].startswith("policy refused: ") and "cooling down" in run.state["escalation"]
    )
    assert "aliens" not in run.state["escalation"]


# --------------------------------------------------------------------------- model cassettes


def _cassette_run(tmp_path: Path, name: str, cassette: Any, base_url: str) -> Any:
    from agents.llm import LLMConfig, make_chat_model
    from sregraph.config import Settings

    cfg = LLMConfig(provider="openai", model="local", base_url=base_url, timeout_s=5)
    model = make_chat_model(cfg, environ={"OPENAI_API_KEY": "test"}, transport=cassette)
    return replay_case(
        load_case(CRASH),
        tmp_path / name,
        brain="openai",
        chat_model=model,
        base_settings=Settings(llm=cfg),
        cassette=cassette,
    )


def test_a_cassette_replays_a_model_run_exactly_and_a_miss_is_loud(tmp_path: Path) -> None:
    from evals.cassette import Cassette
    from tests.fakes.openai_server import FakeOpenAIServer, reply

    script = [
        reply(content=IncidentTitle(title="payments down").model_dump_json(), usage=(300, 10)),
        reply(tool_calls=[("service_status", {"service": "payments"})], usage=(900, 20)),
        reply(content=CRASH_DIAGNOSIS.model_dump_json(), usage=(1100, 80)),
        reply(
            content=EngineerChoice(kind="restart", reason="process gone").model_dump_json(), usage=(400, 20)
        ),
        reply(content=PM.model_dump_json(), usage=(500, 90)),
    ]
    path = tmp_path / "model.jsonl"
    with FakeOpenAIServer(script) as server:
        recorder = Cassette(path, "record")
        recorded = _cassette_run(tmp_path, "record", recorder, server.base_url)
        assert len(server.requests) == recorder.recorded == 5
    assert recorded.error is None, recorded.error

    # Replay: no server at all (the address is closed), the same answers, the same incident.
    player = Cassette(path, "replay")
    replayed = _cassette_run(tmp_path, "replay", player, "http://127.0.0.1:9/v1")
    assert replayed.error is None and player.misses == []
    for key in ("status", "tokens", "escalation"):
        assert replayed.state.get(key) == recorded.state.get(key), key
    assert replayed.state["postmortem"].title == recorded.state["postmortem"].title == PM.title
    assert [a.action.kind for a in replayed.state["actions"]] == [
        a.action.kind for a in recorded.state["actions"]
    ]
    assert replayed.state.get("llm_fallbacks", []) == []

    # A request the cassette never saw (here: the librarian's, cut from the file) fails the case, naming it.
    lines = path.read_text().splitlines()
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(lines[:-1]) + "\n")
    cut = Cassette(short, "replay")
    missed = _cassette_run(tmp_path, "miss", cut, "http://127.0.0.1:9/v1")
    assert cut.misses and missed.error is not None and "no recorded answer" in missed.error


def test_the_llm_benchmark_table_puts_both_brains_side_by_side() -> None:
    from evals.bench_llm import DEFAULT_CASES, ROWS, _extend, table
    from evals.replay import load_suite

    # every documented case exists
    assert {c.case.id for c in load_suite(SUITE, DEFAULT_CASES)} == set(DEFAULT_CASES)
    det = _extend({"cases": 2, "passed": 2, "policy_violations": 0}, 0.8)
    llm = _extend(
        {"cases": 2, "passed": 1, "policy_violations": 0, "model_calls": 12}, 180.0, [10.0, 12.0, 30.0, 11.0]
    )
    assert llm["calls_per_case"] == 6 and llm["latency_median_s"] == 11.5 and llm["latency_p95_s"] == 30.0
    assert llm["seconds_per_case"] == 90.0 and det["seconds_per_case"] == 0.4
    text = table(det, llm, "smollm2")
    assert (
        text.splitlines()[0] == "| metric | deterministic | smollm2 |"
        and len(text.splitlines()) == len(ROWS) + 2
    )
    assert "| passed | 2 | 1 |" in text and "| model calls | – | 12 |" in text
