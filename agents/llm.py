"""The LLM side of the agents: provider configuration, chat-model construction and a bounded tool loop.

Every agent works without a model; a model only ever *adds* an opinion. So everything here fails one way:
`LLMError` (a `SregraphError`), which callers catch to fall back to their deterministic method. Bad
configuration (a missing API key, a watsonx URL not set) is a `ConfigError` naming the field or variable.

The tool loop lets a model call read-only tools (tools/readonly.py) for at most `max_steps` model calls and a
token budget, then asks for a structured answer. Tokens are counted locally with real tiktoken on every
message (cl100k_base, an approximation for non-OpenAI models); when the provider reports usage, its numbers
are what the budget is charged.

A model built by `make_chat_model` carries a `Resilience` (tools/resilience.py, settings `llm.resilience`):
each model call is retried on transient errors (connection refused or lost, timeouts, 408/409/429/5xx) with
backoff and jitter, the SDK's own retries being off so the two do not multiply; after
`failure_threshold` calls in a row fail that way, the circuit opens and every later call (the next agents,
the next incidents) fails at once with an `LLMError`, so the agents fall back to their deterministic method
without waiting out a timeout each, and say so on the incident. A model handed in by the caller (tests, a
custom model) is called as is, unless given a policy with `guard_model`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from agents.tokens import TokenBudget, count_tokens, trim_to_tokens
from graphs.state import FaultType
from tools.base import ConfigError, SregraphError, ToolResult
from tools.resilience import Resilience, ResilienceConfig

log = logging.getLogger(__name__)

# Per-message framing tokens in OpenAI's chat format (role, separators); close enough for other providers.
MESSAGE_OVERHEAD = 4
# Tokens kept back for a model's reply when deciding whether another call fits the budget.
REPLY_RESERVE = 400
MIN_RESULT_TOKENS = 48
MAX_RESULT_TOKENS = 1200


class LLMError(SregraphError):
    """The model failed, went over budget, or answered with something unusable; fall back to deterministic."""


# --------------------------------------------------------------------------- configuration


class WatsonxConfig(BaseModel):
    """IBM watsonx.ai connection settings."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    """Regional endpoint, e.g. https://us-south.ml.cloud.ibm.com (https only)."""
    project_id: str | None = None
    api_key_env: str = "WATSONX_APIKEY"
    """Name of the environment variable holding the API key (the key itself never sits in config)."""


class LLMConfig(BaseModel):
    """Which chat model the agents use in LLM mode, and the limits of one investigation."""

    model_config = ConfigDict(extra="forbid")

    provider: Literal["openai", "watsonx", "none"] = "openai"
    model: str = "gpt-4o-mini"
    """Model name (OpenAI) or model id (watsonx, e.g. ibm/granite-3-8b-instruct)."""
    base_url: str | None = None
    """OpenAI-compatible endpoint; None for api.openai.com."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the OpenAI API key."""
    temperature: float = Field(default=0.0, ge=0, le=2)
    timeout_s: float = Field(default=30.0, gt=0)
    max_steps: int = Field(default=6, ge=0)
    """Model calls allowed while investigating, before the final structured answer."""
    token_budget: int = Field(default=12000, gt=0)
    """Tokens one investigation may spend, prompts and replies of every call included."""
    watsonx: WatsonxConfig = Field(default_factory=WatsonxConfig)
    resilience: ResilienceConfig = Field(
        default_factory=lambda: ResilienceConfig(
            attempts=2, backoff_s=1.0, max_backoff_s=4.0, failure_threshold=2, reset_timeout_s=30.0,
            max_reset_timeout_s=300.0,
        )
    )
    """Retries of one model call and the endpoint's circuit breaker; `max_elapsed_s` is at most `timeout_s`."""


def _secret(environ: Mapping[str, str], name: str, provider: str, field_name: str) -> SecretStr:
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigError(
            f"{field_name}: environment variable {name} is not set; "
            f"provider {provider!r} reads its API key from there"
        )
    return SecretStr(value)


# --------------------------------------------------------------------------- resilience


_GUARDS: dict[int, Resilience] = {}
"""id(model) -> its policy; an entry goes when its model is collected, so a recycled id never inherits one."""


def guard_model(model: Any, resilience: Resilience) -> Any:
    """Give `model` a retry and circuit-breaker policy for every call `run_tool_loop` makes; returns `model`."""
    key = id(model)
    if key not in _GUARDS:
        weakref.finalize(model, _GUARDS.pop, key, None)
    _GUARDS[key] = resilience
    return model


def model_resilience(model: Any) -> Resilience | None:
    """The policy `guard_model` gave `model`, if any."""
    return _GUARDS.get(id(model))


_TRANSIENT_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


def transient_model_error(exc: BaseException) -> bool:
    """Whether a model call failed in a way a retry may fix: no connection, a timeout, overload, 5xx.

    Bad requests, authentication, content filters and unusable answers (`LLMError`) are not: a retry would
    fail the same way.
    """
    if isinstance(exc, SregraphError):
        return False
    import httpx

    if isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError)):
        return True
    try:
        import openai
    except ImportError:  # pragma: no cover - langchain-openai brings it
        return False
    if isinstance(exc, openai.APIConnectionError):  # APITimeoutError included
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in _TRANSIENT_STATUS or exc.status_code >= 500
    try:
        import requests  # ibm-watsonx-ai talks through requests
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, (requests.ConnectionError, requests.Timeout))


def _resilience(cfg: LLMConfig) -> Resilience:
    settings = cfg.resilience
    if settings.max_elapsed_s > cfg.timeout_s:
        # A call that timed out is not worth a second full timeout: retries fit in one timeout's time.
        settings = settings.model_copy(update={"max_elapsed_s": cfg.timeout_s})
    return settings.build("llm", transient=transient_model_error)


def make_chat_model(cfg: LLMConfig, environ: Mapping[str, str] | None = None) -> BaseChatModel | None:
    """The chat model `cfg` describes, or None for provider "none"; reads the API key from the environment.

    The model carries `cfg.resilience` (see the module docstring), so one failing endpoint costs the agents
    sharing this model a few failed calls, not a timeout each.
    """
    env = os.environ if environ is None else environ
    if cfg.provider == "none":
        return None
    if cfg.provider == "openai":
        from langchain_openai import ChatOpenAI

        model = ChatOpenAI(
            model=cfg.model,
            base_url=cfg.base_url,
            api_key=_secret(env, cfg.api_key_env, "openai", "llm.api_key_env"),
            timeout=cfg.timeout_s,
            max_retries=0,  # retries are the resilience policy's, which also feeds the breaker
            temperature=cfg.temperature,
            # OpenAI-compatible servers speak Chat Completions; never let a model name route to /responses.
            use_responses_api=False,
        )
        return guard_model(model, _resilience(cfg))
    wx = cfg.watsonx
    if not wx.url:
        raise ConfigError("llm.watsonx.url: not set; provider 'watsonx' needs the regional https endpoint")
    if not wx.project_id:
        raise ConfigError("llm.watsonx.project_id: not set; provider 'watsonx' needs a project id")
    api_key = _secret(env, wx.api_key_env, "watsonx", "llm.watsonx.api_key_env")
    # Imported and built only here: the constructor authenticates against IBM Cloud over the network.
    from langchain_ibm import ChatWatsonx

    try:
        watsonx = ChatWatsonx(
            model_id=cfg.model,
            url=SecretStr(wx.url),
            project_id=wx.project_id,
            api_key=api_key,
            temperature=cfg.temperature,
        )
    except Exception as exc:  # authentication and connection failures surface from the SDK in many types
        raise LLMError(f"watsonx: could not set up model {cfg.model} at {wx.url}: {exc}") from exc
    return guard_model(watsonx, _resilience(cfg))


# --------------------------------------------------------------------------- structured answers


class LLMHypothesis(BaseModel):
    """One candidate root cause."""

    service: str = Field(description="The service at fault, spelled as the tools spell it.")
    fault_type: FaultType = Field(description="The kind of fault.")
    cited_evidence: list[str] = Field(
        default_factory=list,
        description="Short verbatim quotes of the tool results this hypothesis rests on.",
    )
    rationale: str = Field(description="One or two sentences: why this service and this fault.")


class LLMDiagnosis(BaseModel):
    """Ranked root-cause hypotheses for the incident, most likely first."""

    hypotheses: list[LLMHypothesis] = Field(
        description="Candidate root causes, most likely first; at most 3."
    )
    notes: list[str] = Field(
        default_factory=list, description="Anything an on-call engineer should know: gaps, contradictions."
    )


@dataclass
class LoopResult:
    """What one tool loop produced and what it cost."""

    output: BaseModel
    tokens: int
    """Tokens charged to the budget by this loop."""
    steps: int
    """Model calls made while investigating (the final structured call not included)."""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """Every tool call: step, name, args, status of its envelope, tokens and the (trimmed) result."""
    stop_reason: Literal["answered", "max_steps", "budget"] = "answered"


def message_tokens(message: BaseMessage, encoding: str = "cl100k_base") -> int:
    """Tokens one message costs: its text, its tool calls, and the chat format's framing."""
    n = MESSAGE_OVERHEAD + count_tokens(message.text, encoding)
    if isinstance(message, AIMessage):
        for call in message.tool_calls:
            n += count_tokens(json.dumps({"name": call["name"], "arguments": call["args"]}), encoding)
    return n


def parse_json_output(text: str, output: type[BaseModel]) -> BaseModel:
    """Validate the JSON object in a model's text reply (bare or in a ``` block) against `output`."""
    fenced = re.search(r"```(?:json)?\s*(\{.*\})\s*```", text, re.DOTALL)
    if fenced:
        candidate = fenced.group(1)
    else:
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end <= start:
            raise LLMError(f"the model's answer holds no JSON object for {output.__name__}: {text[:200]!r}")
        candidate = text[start : end + 1]
    try:
        return output.model_validate(json.loads(candidate))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise LLMError(f"the model's answer is not a valid {output.__name__}: {exc}") from exc


# --------------------------------------------------------------------------- the loop


class _Meter:
    """Charges each model call to the budget: provider-reported usage when present, local counts otherwise."""

    def __init__(self, budget: TokenBudget, encoding: str) -> None:
        self.budget = budget
        self.encoding = encoding
        self.start = budget.spent

    def charge(self, prompt_tokens: int, reply: BaseMessage) -> None:
        local = prompt_tokens + message_tokens(reply, self.encoding)
        usage = reply.usage_metadata if isinstance(reply, AIMessage) else None
        reported = usage.get("total_tokens", 0) if usage else 0
        log.debug("model call: %d tokens counted locally, %d reported", local, reported)
        self.budget.charge(reported or local)

    @property
    def used(self) -> int:
        return self.budget.spent - self.start


def _invoke(runnable: Any, messages: list[BaseMessage], what: str, resilience: Resilience | None = None) -> Any:
    try:
        if resilience is None:
            return runnable.invoke(messages)
        return resilience.call(lambda: runnable.invoke(messages))
    except LLMError:
        raise
    except Exception as exc:  # provider SDKs raise many types (HTTP, auth, rate limit, parsing)
        raise LLMError(f"model call failed ({what}): {type(exc).__name__}: {exc}") from exc


def _run_tool(tools: Mapping[str, BaseTool], name: str, args: Any) -> str:
    tool = tools.get(name)
    if tool is None:
        return ToolResult.fail(
            f"unknown tool {name!r}; available: {', '.join(sorted(tools))}"
        ).model_dump_json(exclude_none=True)
    try:
        result = tool.invoke(args if isinstance(args, dict) else {})
    except Exception as exc:  # a tool must never end the loop; the model reads the error and moves on
        log.warning("tool %s raised", name, exc_info=True)
        return ToolResult.fail(f"{type(exc).__name__}: {exc}").model_dump_json(exclude_none=True)
    return result if isinstance(result, str) else json.dumps(result, default=str)


def _envelope_status(content: str) -> str:
    try:
        status = json.loads(content).get("status")
    except (json.JSONDecodeError, AttributeError):
        return "unknown"
    return status if isinstance(status, str) else "unknown"


FINAL_INSTRUCTION = (
    "Stop investigating. Give your final answer now as one JSON object matching the {name} schema. "
    "Quote only what the tools actually returned."
)


def run_tool_loop(
    model: BaseChatModel,
    system: str,
    user: str,
    tools: Sequence[BaseTool],
    output: type[BaseModel],
    max_steps: int,
    budget: TokenBudget,
    encoding: str = "cl100k_base",
) -> LoopResult:
    """Run the bounded tool loop of `model` over `tools`, then return its structured answer as `output`."""
    if max_steps < 0:
        raise ConfigError(f"max_steps must be >= 0, got {max_steps}")
    by_name = {t.name: t for t in tools}
    messages: list[BaseMessage] = [SystemMessage(system), HumanMessage(user)]
    schema_tokens = (
        count_tokens(json.dumps([convert_to_openai_tool(t) for t in tools]), encoding) if tools else 0
    )
    output_schema_tokens = count_tokens(json.dumps(output.model_json_schema()), encoding)
    answer_tokens = output_schema_tokens + REPLY_RESERVE
    meter = _Meter(budget, encoding)

    def prompt_tokens() -> int:
        """What the next investigation call sends: the conversation and the tool schemas."""
        return schema_tokens + sum(message_tokens(m, encoding) for m in messages)

    def final_prompt_tokens() -> int:
        """What the final call sends: the conversation and the output schema instead of the tools."""
        return output_schema_tokens + sum(message_tokens(m, encoding) for m in messages)

    if prompt_tokens() + answer_tokens > budget.remaining:
        raise LLMError(
            f"the prompt needs {prompt_tokens()} tokens; only {budget.remaining} of the budget remain"
        )

    guard = model_resilience(model)
    bound: Any = model
    if tools and max_steps > 0:
        try:
            bound = model.bind_tools(list(tools))
        except NotImplementedError as exc:
            raise LLMError(f"{type(model).__name__} cannot call tools") from exc

    steps = 0
    stop: Literal["answered", "max_steps", "budget"] = "max_steps"
    calls_log: list[dict[str, Any]] = []
    last: AIMessage | None = None
    while steps < max_steps:
        sent = prompt_tokens()
        # This call and the final answer both resend the conversation; stop while both still fit.
        if 2 * sent + REPLY_RESERVE + answer_tokens > budget.remaining:
            stop = "budget"
            break
        reply = _invoke(bound, messages, f"step {steps + 1}", guard)
        if not isinstance(reply, AIMessage):
            raise LLMError(f"model returned {type(reply).__name__}, expected an AIMessage")
        steps += 1
        meter.charge(sent, reply)
        messages.append(reply)
        last = reply
        if not reply.tool_calls:
            stop = "answered"
            break
        # Every result is resent with each later call: a share of what is left, split among this step's calls.
        cap = max(MIN_RESULT_TOKENS, min(MAX_RESULT_TOKENS, budget.remaining // (4 * len(reply.tool_calls))))
        for i, call in enumerate(reply.tool_calls):
            call_id = call.get("id") or f"call_{steps}_{i}"
            call["id"] = call_id
            content = trim_to_tokens(_run_tool(by_name, call["name"], call["args"]), cap, encoding)
            status = _envelope_status(content)
            messages.append(
                ToolMessage(
                    content,
                    tool_call_id=call_id,
                    name=call["name"],
                    status="error" if status == "error" else "success",
                )
            )
            calls_log.append(
                {
                    "step": steps,
                    "name": call["name"],
                    "args": call["args"],
                    "status": status,
                    "tokens": count_tokens(content, encoding),
                    "result": content,
                }
            )

    answer = _final_answer(
        model, messages, last if stop == "answered" else None, output, meter, final_prompt_tokens, guard
    )
    log.info(
        "tool loop: %d steps, %d tool calls, %d tokens, stopped: %s", steps, len(calls_log), meter.used, stop
    )
    return LoopResult(output=answer, tokens=meter.used, steps=steps, tool_calls=calls_log, stop_reason=stop)


def _final_answer(
    model: BaseChatModel,
    messages: list[BaseMessage],
    last: AIMessage | None,
    output: type[BaseModel],
    meter: _Meter,
    prompt_tokens: Callable[[], int],
    guard: Resilience | None = None,
) -> BaseModel:
    """The structured answer: from the last reply if it already is one, else from one more structured call."""
    if last is not None and "{" in last.text:
        try:
            return parse_json_output(last.text, output)
        except LLMError:
            pass  # prose or partial JSON: ask once more, with the schema enforced
    messages.append(HumanMessage(FINAL_INSTRUCTION.format(name=output.__name__)))
    try:
        structured = model.with_structured_output(output, include_raw=True)
    except NotImplementedError:
        structured = None
    sent = prompt_tokens()
    if structured is None:
        schema = json.dumps(output.model_json_schema())
        messages[-1] = HumanMessage(f"{messages[-1].text}\nJSON schema: {schema}\nReply with the JSON only.")
        sent = prompt_tokens()
        reply = _invoke(model, messages, "final answer", guard)
        meter.charge(sent, reply)
        return parse_json_output(reply.text, output)
    result = _invoke(structured, messages, "final answer", guard)
    raw = result.get("raw")
    if isinstance(raw, BaseMessage):
        meter.charge(sent, raw)
    parsed = result.get("parsed")
    if isinstance(parsed, output):
        return parsed
    if isinstance(raw, BaseMessage) and "{" in raw.text:
        return parse_json_output(raw.text, output)
    raise LLMError(
        f"the model's final answer is not a valid {output.__name__}: {result.get('parsing_error')}"
    )


def ask(model: BaseChatModel, system: str, output: type[BaseModel], budget: TokenBudget) -> LoopResult:
    """One structured answer with no tools (observer titles, engineer choices, librarian prose)."""
    return run_tool_loop(model, system, "Answer now.", [], output, 0, budget)


def incident_budget(cfg: LLMConfig | None, spent: int) -> TokenBudget:
    """What is left of the per-incident token budget after `spent` tokens."""
    limit = cfg.token_budget if cfg is not None else 12000
    budget = TokenBudget(limit)
    budget.charge(min(spent, limit))
    return budget
