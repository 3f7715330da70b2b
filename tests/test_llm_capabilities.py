"""Provider capabilities at the network boundary: what sregraph's ChatOpenAI actually sends, and how errors count.

Every test drives the real client against tests/fakes/openai_server.py on loopback and asserts on the JSON bodies.
"""

from __future__ import annotations

from typing import Any

import pytest

from agents.llm import (
    LLMConfig,
    LLMDiagnosis,
    LLMError,
    ask,
    make_chat_model,
    model_resilience,
    model_usage,
    run_tool_loop,
    transient_model_error,
)
from agents.tokens import TokenBudget
from tests.fakes.openai_server import FakeOpenAIServer, reply
from tests.fixtures.investigation import DIAGNOSIS, make_tools
from tests.support import ManualClock

ENV = {"OPENAI_API_KEY": "test"}


# What llama-cpp-python 0.3.36's server answers (HTTP 500) to response_format json_schema, verbatim.
LLAMA_CPP_500 = (
    "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
    "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', "
    "'ctx': {'expected': \"'text' or 'json_object'\"}}\n\n  File \"llama_cpp/server/app.py\", line 376, "
    "in create_chat_completion\n    POST /v1/chat/completions"
)


def model_for(server: FakeOpenAIServer, **settings: Any) -> Any:
    cfg = LLMConfig(provider="openai", model="local", base_url=server.base_url, timeout_s=5, **settings)
    model = make_chat_model(cfg, environ=ENV)
    resilience = model_resilience(model)
    assert resilience is not None
    resilience.clock = ManualClock()  # retries never sleep for real
    return model


def test_defaults_per_provider() -> None:
    hosted = LLMConfig(provider="openai")
    local = LLMConfig(provider="openai", base_url="http://127.0.0.1:8080/v1")
    watsonx = LLMConfig(provider="watsonx")
    assert (hosted.structured_method, hosted.call_timeout_s) == ("json_schema", 30.0)
    assert (local.structured_method, local.call_timeout_s) == ("json_mode", 180.0)
    assert watsonx.structured_method == "function_calling"
    assert (
        LLMConfig(provider="openai", base_url="https://api.openai.com/v1").structured_method == "json_schema"
    )
    chosen = LLMConfig(
        provider="openai", base_url="http://x/v1", structured_output="function_calling", timeout_s=7
    )
    assert (chosen.structured_method, chosen.call_timeout_s) == ("function_calling", 7)
    assert hosted.max_tokens > 0


def test_a_compatible_server_gets_json_object_with_the_schema_max_tokens_and_tool_choice() -> None:
    script = [
        reply(tool_calls=[("recent_changes", {"service": "payments"})]),
        reply(content="Looked at the changes."),
        reply(content=DIAGNOSIS.model_dump_json()),
    ]
    with FakeOpenAIServer(script) as server:
        model = model_for(server, max_tokens=321)
        result = run_tool_loop(model, "s", "u", make_tools(), LLMDiagnosis, 6, TokenBudget(12000))
    assert result.output == DIAGNOSIS
    first, second, final = server.requests
    for body in server.requests:
        assert body["max_tokens"] == 321  # the name every compatible server knows
        assert "max_completion_tokens" not in body
        for message in body["messages"]:
            assert message.get("content") is not None, message  # llama.cpp rejects content: null
    assert first["tool_choice"] == "auto" and second["tool_choice"] == "auto"
    assistant = [m for m in second["messages"] if m["role"] == "assistant"]
    assert assistant[0]["tool_calls"] and assistant[0]["content"] == ""
    assert "tools" not in final
    assert final["response_format"]["type"] == "json_object"
    assert final["response_format"]["schema"]["title"] == "LLMDiagnosis"
    assert "JSON schema" in final["messages"][-1]["content"]


def test_hosted_openai_gets_json_schema_and_max_completion_tokens() -> None:
    with FakeOpenAIServer([reply(content="not json"), reply(content=DIAGNOSIS.model_dump_json())]) as server:
        cfg = LLMConfig(
            provider="openai", base_url=server.base_url, timeout_s=5, structured_output="json_schema"
        )
        model = make_chat_model(cfg, environ=ENV)
        # The same client, told it talks to OpenAI itself (api.openai.com is unreachable from tests).
        assert model is not None
        model.compat_max_tokens = False  # type: ignore[attr-defined]  # the compatible client's own field
        run_tool_loop(model, "s", "u", [], LLMDiagnosis, 1, TokenBudget(12000))
    final = server.requests[-1]
    assert final["response_format"]["type"] == "json_schema"
    assert final["max_completion_tokens"] == cfg.max_tokens


def test_function_calling_names_the_tool_it_wants() -> None:
    arguments = DIAGNOSIS.model_dump(mode="json")
    with FakeOpenAIServer([reply(tool_calls=[("LLMDiagnosis", arguments)])]) as server:
        model = model_for(server, structured_output="function_calling")
        result = ask(model, "s", LLMDiagnosis, TokenBudget(12000))
    assert result.output == DIAGNOSIS
    body = server.requests[0]
    assert body["tool_choice"]["function"]["name"] == "LLMDiagnosis"
    assert "max_tokens" in body


def test_a_request_validation_500_is_permanent_and_leaves_the_breaker_closed() -> None:
    script = [reply(content=LLAMA_CPP_500, status=500) for _ in range(5)]
    with FakeOpenAIServer(script) as server:
        model = model_for(server)
        for _ in range(5):
            with pytest.raises(LLMError, match="validation error"):
                ask(model, "s", LLMDiagnosis, TokenBudget(12000))
        resilience = model_resilience(model)
        assert resilience is not None
        assert len(server.requests) == 5  # one request per call: nothing retried
        assert resilience.retries == 0
        # The endpoint answered: it is not down, and later calls still reach it.
        assert resilience.state == "closed" and resilience.breaker.failures == 0
    usage = model_usage(model)
    assert (usage.calls, usage.failures, usage.tokens) == (5, 5, 0)


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_errors_are_not_retried(status: int) -> None:
    with FakeOpenAIServer([reply(content="no", status=status), reply(content="no", status=status)]) as server:
        model = model_for(server)
        for _ in range(2):
            with pytest.raises(LLMError):
                ask(model, "s", LLMDiagnosis, TokenBudget(12000))
        assert len(server.requests) == 2
        resilience = model_resilience(model)
        assert resilience is not None and resilience.state == "closed"


def test_an_outage_500_is_retried_and_opens_the_breaker() -> None:
    script = [reply(content="CUDA error: out of memory", status=500) for _ in range(4)]
    with FakeOpenAIServer(script) as server:
        model = model_for(server)
        for _ in range(2):
            with pytest.raises(LLMError):
                ask(model, "s", LLMDiagnosis, TokenBudget(12000))
        assert len(server.requests) == 4  # two attempts per call
        resilience = model_resilience(model)
        assert resilience is not None and resilience.state == "open"
        with pytest.raises(LLMError, match="circuit open"):
            ask(model, "s", LLMDiagnosis, TokenBudget(12000))
        assert len(server.requests) == 4
    usage = model_usage(model)
    assert (usage.calls, usage.failures) == (3, 3)


def test_transient_classification_of_500s() -> None:
    import httpx
    import openai

    def error(status: int, message: str) -> openai.APIStatusError:
        response = httpx.Response(
            status, request=httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
        )
        return openai.APIStatusError(
            message,
            response=response,  # type: ignore[arg-type]  # openai types its own httpx fork; this reads the same
            body={"error": {"message": message}},
        )

    assert not transient_model_error(error(500, LLAMA_CPP_500))
    assert not transient_model_error(error(500, "response_format json_schema is not supported"))
    assert transient_model_error(error(500, "Internal Server Error"))
    # only 500 is judged
    assert transient_model_error(error(503, "Input should be fine, but we are overloaded"))
    assert not transient_model_error(error(400, "bad"))
    assert transient_model_error(error(429, "slow down"))


def test_usage_counts_calls_and_tokens() -> None:
    with FakeOpenAIServer([reply(content=DIAGNOSIS.model_dump_json(), usage=(100, 20))]) as server:
        model = model_for(server)
        before = model_usage(model).snapshot()
        ask(model, "s", LLMDiagnosis, TokenBudget(12000))
    spent = model_usage(model).since(before)
    assert (spent.calls, spent.failures, spent.tokens) == (1, 0, 120)


def test_json_mode_bounds_strings_and_lists_in_the_grammar_only() -> None:
    from agents.llm import GRAMMAR_MAX_ITEMS, GRAMMAR_MAX_STRING, bounded_schema, parse_json_output

    schema = bounded_schema(LLMDiagnosis.model_json_schema())
    hypothesis = schema["$defs"]["LLMHypothesis"]["properties"]
    assert hypothesis["rationale"]["maxLength"] == GRAMMAR_MAX_STRING
    assert hypothesis["cited_evidence"]["maxItems"] == GRAMMAR_MAX_ITEMS
    assert hypothesis["cited_evidence"]["items"]["maxLength"] == GRAMMAR_MAX_STRING
    # an enum stays as is
    assert "maxLength" not in schema["$defs"]["LLMHypothesis"]["properties"]["fault_type"]
    assert schema["properties"]["hypotheses"]["maxItems"] == GRAMMAR_MAX_ITEMS
    # The answer itself is judged by the model's schema; raw control characters in strings are tolerated.
    text = DIAGNOSIS.model_dump_json().replace("one", "one\ttwo", 1)
    assert parse_json_output(text.replace('"rationale":"', '"rationale":"line\nbreak ', 1), LLMDiagnosis)
