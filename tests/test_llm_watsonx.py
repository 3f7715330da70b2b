"""Provider watsonx through the real langchain-ibm and ibm-watsonx-ai, against tests/fakes/watsonx_server.py.

The server speaks watsonx.ai's REST shape over TLS on loopback (IAM token exchange, project, model specs,
chat), answering from a script here; tests/test_llm_real.py runs the same path with a real model behind it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from agents.investigation import READONLY_TOOL_NAMES
from agents.llm import (
    LLMConfig,
    LLMDiagnosis,
    LLMError,
    WatsonxConfig,
    ask,
    make_chat_model,
    model_resilience,
    model_usage,
    run_tool_loop,
    transient_model_error,
)
from agents.tokens import TokenBudget
from tests.fakes.openai_server import reply
from tests.fakes.watsonx_server import GRANT_TYPE, FakeWatsonxServer
from tests.fixtures.investigation import DIAGNOSIS, make_tools
from tests.support import ManualClock
from tools.base import ConfigError

API_KEY = "wx-test-key-0123456789"
ENV = {"WATSONX_APIKEY": API_KEY}
MODEL_ID = "ibm/granite-3-8b-instruct"


def config_for(server: FakeWatsonxServer, **settings: Any) -> LLMConfig:
    """Provider watsonx pointed at `server`: its url, IAM endpoint, platform API and CA."""
    watsonx = WatsonxConfig(
        url=server.url,
        project_id=server.project_id,
        iam_url=server.iam_url,
        platform_url=server.url,
        ca_bundle=str(server.ca_file),
    )
    return LLMConfig(provider="watsonx", model=MODEL_ID, timeout_s=10, watsonx=watsonx, **settings)


def model_for(server: FakeWatsonxServer, **settings: Any) -> Any:
    model = make_chat_model(config_for(server, **settings), environ=ENV)
    resilience = model_resilience(model)
    assert resilience is not None
    resilience.clock = ManualClock()  # retries never sleep for real
    return model


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """serve(script) -> a running FakeWatsonxServer answering chat from `script`; stopped after the test."""
    servers: list[FakeWatsonxServer] = []

    def start(script: list[dict[str, Any]], **kwargs: Any) -> FakeWatsonxServer:
        directory = tmp_path / f"wx{len(servers)}"
        directory.mkdir()
        server = FakeWatsonxServer(directory, API_KEY, script=script, **kwargs).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def test_the_api_key_is_exchanged_for_a_bearer_token_that_every_call_carries(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from langchain_ibm import ChatWatsonx

    caplog.set_level(logging.DEBUG)
    server = serve([reply(content=DIAGNOSIS.model_dump_json(), usage=(100, 20))])
    model = model_for(server)
    assert isinstance(model, ChatWatsonx)
    token, project, specs = server.requests[:3]
    assert (token.method, token.path) == ("POST", "/identity/token")
    assert token.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(token.body) == {"apikey": [API_KEY], "grant_type": [GRANT_TYPE]}
    (issued,) = server.tokens
    assert project.path == f"/v2/projects/{server.project_id}"
    assert specs.path == "/ml/v1/foundation_model_specs"
    result = ask(model, "Diagnose.", LLMDiagnosis, TokenBudget(12000))
    assert result.output == DIAGNOSIS
    (chat,) = server.chat_requests()
    for request in (project, chat):
        assert request.headers["authorization"] == f"Bearer {issued}"
    assert chat.query["version"][0] and chat.body["project_id"] == server.project_id
    assert chat.body["model_id"] == MODEL_ID
    assert chat.body["max_tokens"] == 1024 and chat.body["temperature"] == 0
    # The API key went to IAM only, and no log line holds it, even at DEBUG.
    assert all(API_KEY not in json.dumps(r.body) + json.dumps(r.headers) for r in server.requests[1:])
    assert caplog.records and API_KEY not in caplog.text


def test_a_wrong_api_key_fails_at_setup_with_an_llm_error_that_does_not_show_it(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = serve([])
    with pytest.raises(LLMError, match="could not set up model") as raised:
        make_chat_model(config_for(server), environ={"WATSONX_APIKEY": "not-the-key"})
    assert "BXNIM0415E" in str(raised.value)  # IAM's refusal, passed on
    assert "not-the-key" not in str(raised.value) and "not-the-key" not in caplog.text
    assert [r.path for r in server.requests] == ["/identity/token"]  # nothing past IAM without a token


def test_structured_diagnosis_by_function_calling(serve: Any) -> None:
    arguments = DIAGNOSIS.model_dump(mode="json")
    server = serve([reply(tool_calls=[("LLMDiagnosis", arguments)], usage=(300, 60))])
    model = model_for(server)
    result = ask(model, "Diagnose.", LLMDiagnosis, TokenBudget(12000))
    assert result.output == DIAGNOSIS
    (chat,) = server.chat_requests()
    # watsonx's way of naming the tool it wants: `tool_choice`, not OpenAI's string forms.
    assert chat.body["tool_choice"] == {"type": "function", "function": {"name": "LLMDiagnosis"}}
    assert "tool_choice_option" not in chat.body
    assert [t["function"]["name"] for t in chat.body["tools"]] == ["LLMDiagnosis"]


def test_tool_loop_through_chat_watsonx(serve: Any) -> None:
    script = [
        reply(
            tool_calls=[
                ("query_metric", {"name": "error_ratio", "service": "payments"}),
                ("recent_changes", {"service": "payments"}),
            ],
            usage=(900, 40),
        ),
        reply(content="The config change explains it.", usage=(1200, 12)),
        reply(tool_calls=[("LLMDiagnosis", DIAGNOSIS.model_dump(mode="json"))], usage=(1300, 90)),
    ]
    server = serve(script)
    model = model_for(server)
    result = run_tool_loop(
        model, "You are the analyst.", "Investigate.", make_tools(), LLMDiagnosis, 6, TokenBudget(12000)
    )
    assert result.output == DIAGNOSIS
    assert [c["name"] for c in result.tool_calls] == ["query_metric", "recent_changes"]
    assert result.tokens == 940 + 1212 + 1390  # watsonx's `usage`, not local counts
    usage = model_usage(model)
    assert (usage.calls, usage.failures, usage.tokens) == (3, 0, 940 + 1212 + 1390)
    first, second, final = (r.body for r in server.chat_requests())
    assert [t["function"]["name"] for t in first["tools"]] == list(READONLY_TOOL_NAMES)
    assert first["tool_choice_option"] == "auto"
    calls = {c["id"] for m in second["messages"] if m["role"] == "assistant" for c in m.get("tool_calls", [])}
    tool_messages = [m for m in second["messages"] if m["role"] == "tool"]
    assert {m["tool_call_id"] for m in tool_messages} == calls and len(calls) == 2
    assert "pool_size 20 -> 2" in tool_messages[1]["content"]
    assert final["tool_choice"]["function"]["name"] == "LLMDiagnosis"


@pytest.mark.parametrize("status", [400, 401, 404])
def test_client_errors_are_permanent(serve: Any, status: int) -> None:
    server = serve([reply(content="refused", status=status), reply(content="refused", status=status)])
    model = model_for(server)
    for _ in range(2):
        with pytest.raises(LLMError, match=f"Status code: {status}"):
            ask(model, "s", LLMDiagnosis, TokenBudget(12000))
    assert len(server.chat_requests()) == 2  # one request per call: neither sregraph nor the SDK retried
    resilience = model_resilience(model)
    assert resilience is not None and resilience.retries == 0 and resilience.state == "closed"


def test_an_expired_token_is_a_401_from_the_server_and_permanent(serve: Any) -> None:
    server = serve([reply(content="unused")])
    model = model_for(server)
    server.tokens.clear()  # the service no longer knows the token the client holds
    with pytest.raises(LLMError, match="authentication_token_not_valid"):
        ask(model, "s", LLMDiagnosis, TokenBudget(12000))
    assert len(server.chat_requests()) == 1


def test_a_request_the_api_refuses_is_a_400_with_a_watsonx_error_body(serve: Any) -> None:
    server = serve([reply(content="{}")])
    chat = "/ml/v1/text/chat?version=2025-02-11"
    forged = {"authorization": "Bearer x", "content-type": "application/json"}
    status, body = server.handle("POST", chat, forged, b"{}")
    assert status == 401 and body["errors"][0]["code"] == "authentication_token_not_valid"
    status, issued = server.handle(
        "POST",
        "/identity/token",
        {"content-type": "application/x-www-form-urlencoded"},
        f"grant_type={GRANT_TYPE}&apikey={API_KEY}".encode(),
    )
    assert status == 200 and issued["token_type"] == "Bearer" and issued["expires_in"] > 0
    token = issued["access_token"]
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    messages = [{"role": "user", "content": "x"}]
    good = {"model_id": MODEL_ID, "project_id": server.project_id, "messages": messages}
    tools = [{"type": "function", "function": {"name": "f"}}]
    refused = [
        ({**good, "max_new_tokens": 5}, "unknown field"),
        ({**good, "messages": []}, "messages"),
        ({**good, "tool_choice_option": "any", "tools": tools}, "tool_choice_option"),
        ({**good, "tool_choice": {"type": "function", "function": {"name": "g"}}, "tools": tools}, "naming"),
        ({**good, "tool_choice_option": "auto"}, "needs tools"),
        ({**good, "response_format": {"type": "json_schema"}}, "json_schema"),
        ({**good, "max_tokens": 0}, "max_tokens"),
        ({**good, "messages": [{"role": "tool", "content": "x", "tool_call_id": "nope"}]}, "tool_call_id"),
    ]
    for body, reason in refused:
        status, answer = server.handle("POST", chat, headers, json.dumps(body).encode())
        assert status == 400, body
        assert answer["status_code"] == 400 and answer["trace"] and reason in answer["errors"][0]["message"]
    status, answer = server.handle("POST", "/ml/v1/text/chat", headers, json.dumps(good).encode())
    assert status == 400 and "version" in answer["errors"][0]["message"]
    # The refused requests used no scripted answer: the first good one gets the first.
    status, answer = server.handle("POST", chat, headers, json.dumps(good).encode())
    assert status == 200 and answer["choices"][0]["message"]["content"] == "{}"


def test_an_outage_is_retried_and_opens_the_breaker(serve: Any) -> None:
    server = serve([reply(content="upstream unavailable", status=503) for _ in range(4)])
    model = model_for(server)
    for _ in range(2):
        with pytest.raises(LLMError):
            ask(model, "s", LLMDiagnosis, TokenBudget(12000))
    assert len(server.chat_requests()) == 4  # two attempts per call, by the resilience policy alone
    resilience = model_resilience(model)
    assert resilience is not None and resilience.state == "open"
    with pytest.raises(LLMError, match="circuit open"):
        ask(model, "s", LLMDiagnosis, TokenBudget(12000))
    assert len(server.chat_requests()) == 4


def test_a_transient_failure_then_an_answer(serve: Any) -> None:
    server = serve([reply(status=502), reply(content=DIAGNOSIS.model_dump_json(), usage=(80, 20))])
    model = model_for(server)
    assert ask(model, "s", LLMDiagnosis, TokenBudget(12000)).output == DIAGNOSIS
    assert len(server.chat_requests()) == 2 and model_usage(model).tokens == 100


def test_transient_classification_of_watsonx_errors() -> None:
    import httpx
    from ibm_watsonx_ai.wml_client_error import ApiRequestFailure

    def failure(status: int, message: str) -> ApiRequestFailure:
        request = httpx.Request("POST", "https://127.0.0.1/ml/v1/text/chat")
        body = {"errors": [{"code": "c", "message": message}], "trace": "t", "status_code": status}
        return ApiRequestFailure("Failure during chat.", httpx.Response(status, json=body, request=request))

    assert transient_model_error(failure(503, "busy")) and transient_model_error(failure(429, "slow down"))
    assert transient_model_error(failure(500, "Internal Server Error"))
    assert not transient_model_error(failure(500, "Json document validation error: unknown field"))
    for status in (400, 401, 403, 404):
        assert not transient_model_error(failure(status, "no"))
    assert transient_model_error(httpx.ConnectError("refused"))


def test_watsonx_urls_are_https_and_the_ca_bundle_must_exist(serve: Any, tmp_path: Path) -> None:
    for field in ("url", "iam_url", "platform_url"):
        with pytest.raises(ValueError, match="https://"):
            WatsonxConfig(**{field: "http://127.0.0.1:1"})
    server = serve([])
    cfg = config_for(server)
    cfg.watsonx.ca_bundle = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="llm.watsonx.ca_bundle"):
        make_chat_model(cfg, environ=ENV)
    assert server.requests == []


def test_the_server_certificate_is_verified(serve: Any) -> None:
    server = serve([])
    cfg = config_for(server)
    cfg.watsonx.ca_bundle = None  # the system's CAs do not know the test CA
    with pytest.raises(LLMError, match="could not set up model"):
        make_chat_model(cfg, environ=ENV)
    assert server.requests == []  # no request got past the TLS handshake
