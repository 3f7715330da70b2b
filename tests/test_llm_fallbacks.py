"""An LLM brain's eval must say when the model was never reached, and every fallback must show on the incident."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from evals.eval_cli import EXIT_MODEL_NOT_REACHED, SUITE, eval_app
from evals.replay import load_case, replay_case
from evals.scoring import model_banner, score_case, summarize
from tests.fakes.openai_server import FakeOpenAIServer

CRASH = SUITE / "01-crash-payments"


def _config(tmp_path: Path, base_url: str) -> Path:
    path = tmp_path / "sregraph.yaml"
    path.write_text(f"llm:\n  provider: openai\n  model: local\n  base_url: {base_url}\n  timeout_s: 5\n")
    return path


def test_eval_with_an_unreachable_model_is_loud_and_fails(tmp_path: Path) -> None:
    # An empty script: every request is answered 400, as a server that refuses what it is sent.
    with FakeOpenAIServer([]) as server:
        args = [
            "eval",
            "--case",
            "01-crash-payments",
            "--brain",
            "openai",
            "--config",
            str(_config(tmp_path, server.base_url)),
        ]
        text = CliRunner().invoke(eval_app, args, env={"OPENAI_API_KEY": "test"})
        as_json = CliRunner().invoke(
            eval_app,
            [*args, "--format", "json", "--report", str(tmp_path / "r.md")],
            env={"OPENAI_API_KEY": "test"},
        )
        assert server.requests  # the model was asked
    assert text.exit_code == EXIT_MODEL_NOT_REACHED, text.output
    assert "THE MODEL WAS NEVER REACHED" in text.stdout
    assert as_json.exit_code == EXIT_MODEL_NOT_REACHED
    doc = json.loads(as_json.stdout)
    assert doc["model_measured"] is False and doc["model_tokens"] == 0
    assert doc["model_calls"] == doc["model_failures"] > 0
    assert doc["fallbacks_by_agent"].keys() >= {"observer", "analyst", "engineer", "librarian"}
    assert doc["results"][0]["fallbacks"]
    assert "WARNING: THE MODEL WAS NEVER REACHED" in (tmp_path / "r.md").read_text()


def test_every_fallback_is_on_the_incident(tmp_path: Path) -> None:
    from agents.llm import LLMConfig, make_chat_model
    from sregraph.config import Settings

    with FakeOpenAIServer([]) as server:
        cfg = LLMConfig(provider="openai", model="local", base_url=server.base_url, timeout_s=5)
        model = make_chat_model(cfg, environ={"OPENAI_API_KEY": "test"})
        run = replay_case(
            load_case(CRASH),
            tmp_path / "work",
            brain="openai",
            chat_model=model,
            base_settings=Settings(llm=cfg),
        )
    agents = [f.split(":")[0] for f in run.state["llm_fallbacks"]]
    assert {"observer", "analyst", "engineer", "librarian"} <= set(agents), run.state["llm_fallbacks"]
    opened = [m for m in run.session.mutations if m.method == "open_issue"]
    assert opened and "Title by the deterministic observer: the LLM was unavailable" in json.dumps(
        opened[0].args
    )
    assert run.state["diagnosis"].llm_fallback and run.state["plan"].llm_fallback
    assert run.state["postmortem"].llm_fallback
    assert run.model is not None
    assert run.model.calls >= 4 and run.model.failures == run.model.calls
    score = score_case(run)
    summary = summarize([score], "openai")
    assert summary["model_measured"] is False
    assert "NEVER REACHED" in (model_banner(summary) or "")


def test_a_partial_fallback_is_reported_but_the_run_measured_the_model() -> None:
    summary = {
        "brain": "openai",
        "model_measured": True,
        "model_calls": 5,
        "model_failures": 1,
        "model_tokens": 900,
        "fallbacks": 1,
        "fallbacks_by_agent": {"observer": 1},
        "cases_with_fallback": 1,
    }
    assert "bypassed 1 times" in (model_banner(summary) or "")
    assert model_banner({**summary, "fallbacks": 0}) is None
    assert model_banner({"brain": "deterministic"}) is None


def test_the_engineer_model_cannot_override_the_evidences_remedy(tmp_path: Path) -> None:
    """A crash on payments: the model asks for a config change; the evidence's restart runs, and says why."""
    from agents.engineer import MODEL_MAY_CHOOSE, EngineerChoice
    from agents.librarian import PostMortemText
    from agents.llm import LLMDiagnosis, LLMHypothesis
    from agents.observer import IncidentTitle
    from tests.support import ScriptedChatModel, answer, say

    diagnosis = LLMDiagnosis(
        hypotheses=[
            LLMHypothesis(service="payments", fault_type="crash", cited_evidence=[], rationale="down")
        ]
    )
    model = ScriptedChatModel(
        responses=[
            answer(IncidentTitle(title="payments down")),
            say(diagnosis.model_dump_json()),
            answer(EngineerChoice(kind="config_change", reason="the log line said so")),
            answer(PostMortemText(title="t", summary="s", impact="i", root_cause="r", follow_ups=[])),
        ]
    )
    run = replay_case(load_case(CRASH), tmp_path / "work", brain="openai", chat_model=model)
    assert run.error is None, run.error
    plan = run.state["plan"]
    assert [(a.kind, a.service) for a in plan.actions] == [("restart", "payments")]
    assert any(
        "model chose config_change, which does not remedy crash" in n and "kept restart" in n
        for n in plan.policy_notes
    )
    assert run.outcome.status == "resolved"
    # What the engineer model was offered is the policy's list cut to what remedies a crash.
    prompt = " ".join(m.text for m in model.calls[2])
    assert "- config_change" not in prompt and "- restart" in prompt
    # no automatic remedy for disk_full, whatever the model says
    assert MODEL_MAY_CHOOSE.get("disk_full") is None
