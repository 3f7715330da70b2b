"""The LLM side of the agents: provider configuration, chat-model construction and a bounded tool loop.

A model only ever adds an opinion: everything here fails as `LLMError` (bad configuration as `ConfigError`),
so callers fall back to their deterministic method. Model calls are retried and circuit-broken through a
`Resilience`; provider capabilities are settings. Design: docs/llm.md.

Each provider's SDK (langchain-openai, langchain-ibm and ibm-watsonx-ai, openai) is imported when a model of
that provider is built, so a process that builds none never pays for them.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import ssl
import sys
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import httpx
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, Field, SecretStr, ValidationError

from agents.llm_config import LLMConfig as LLMConfig
from agents.llm_config import StructuredMethod as StructuredMethod
from agents.llm_config import WatsonxConfig as WatsonxConfig
from agents.tokens import TokenBudget, count_tokens, trim_to_tokens
from tools.base import ConfigError, SregraphError, ToolResult
from tools.domain import FaultType
from tools.resilience import Resilience

log = logging.getLogger(__name__)

_Model = TypeVar("_Model")
_Output = TypeVar("_Output", bound=BaseModel)

# Per-message framing tokens in OpenAI's chat format (role, separators); close enough for other providers.
MESSAGE_OVERHEAD = 4
# Tokens kept back for a model's reply when deciding whether another call fits the budget.
REPLY_RESERVE = 400
MIN_RESULT_TOKENS = 48
MAX_RESULT_TOKENS = 1200


class LLMError(SregraphError):
    """The model failed, went over budget, or answered with something unusable; fall back to deterministic."""


# --------------------------------------------------------------------------- configuration


def _secret(environ: Mapping[str, str], name: str, provider: str, field_name: str) -> SecretStr:
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigError(
            f"{field_name}: environment variable {name} is not set; "
            f"provider {provider!r} reads its API key from there"
        )
    return SecretStr(value)


# --------------------------------------------------------------------------- resilience


@dataclass
class ModelUsage:
    """What the tool loop asked of one model: calls sent, calls failed, tokens charged."""

    calls: int = 0
    failures: int = 0
    tokens: int = 0
    errors: list[str] = field(default_factory=list)
    """The last few failures' messages (at most 5)."""

    def snapshot(self) -> ModelUsage:
        """A copy, to diff against later."""
        return ModelUsage(self.calls, self.failures, self.tokens, list(self.errors))

    def since(self, before: ModelUsage) -> ModelUsage:
        """What was asked after `before` was taken."""
        errors = self.errors[len(before.errors) :] if len(self.errors) > len(before.errors) else []
        return ModelUsage(
            self.calls - before.calls, self.failures - before.failures, self.tokens - before.tokens, errors
        )


@dataclass
class _Profile:
    """What sregraph knows of one model object: its policy, its capabilities, what it was asked."""

    resilience: Resilience | None = None
    structured: StructuredMethod | None = None
    """None: the model's own `with_structured_output` default (a model handed in by the caller)."""
    max_tokens: int | None = None
    usage: ModelUsage = field(default_factory=ModelUsage)


_PROFILES: dict[int, _Profile] = {}
"""id(model) -> its profile; an entry goes when its model is collected, so a recycled id never inherits one."""


def _profile(model: Any) -> _Profile:
    key = id(model)
    found = _PROFILES.get(key)
    if found is None:
        found = _PROFILES[key] = _Profile()
        try:
            weakref.finalize(model, _PROFILES.pop, key, None)
        except TypeError:  # an object without weak references: keep its profile for the process' life
            pass
    return found


def guard_model(model: _Model, resilience: Resilience) -> _Model:
    """Give `model` a retry and circuit-breaker policy for every call `run_tool_loop` makes; returns `model`."""
    _profile(model).resilience = resilience
    return model


def model_resilience(model: Any) -> Resilience | None:
    """The policy `guard_model` gave `model`, if any."""
    found = _PROFILES.get(id(model))
    return found.resilience if found else None


def set_capabilities(
    model: _Model, structured: StructuredMethod | None = None, max_tokens: int | None = None
) -> _Model:
    """Tell `run_tool_loop` how `model`'s endpoint takes structured answers and how long a reply may be."""
    found = _profile(model)
    found.structured, found.max_tokens = structured, max_tokens
    return model


def model_usage(model: Any) -> ModelUsage:
    """Calls, failures and tokens `run_tool_loop` has spent on `model` so far (live; `snapshot()` to keep)."""
    return _profile(model).usage


_TRANSIENT_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
_REQUEST_INVALID = re.compile(
    r"validation error|input should be|field required|extra inputs are not permitted|unexpected keyword"
    r"|not supported|unsupported|unrecognized|invalid (?:request|value|type|parameter|argument)"
    r"|is not (?:a )?valid|must be one of|missing required",
    re.IGNORECASE,
)


def request_rejected(exc: BaseException) -> bool:
    """Whether an HTTP 500 is the server refusing the request itself (a parameter it cannot take), not an outage.

    Servers built on FastAPI (llama-cpp-python's among them) answer some request-validation errors with a 500
    whose message is the validation error; resending the same request fails the same way.
    """
    message = str(getattr(exc, "message", "") or exc)
    body = getattr(exc, "body", None)
    if body is not None:
        message += " " + json.dumps(body, default=str)
    return bool(_REQUEST_INVALID.search(message))


def transient_model_error(exc: BaseException) -> bool:
    """Whether a model call failed in a way a retry may fix: no connection, a timeout, overload, 5xx.

    Bad requests, authentication, content filters, a 500 that is a request-validation error
    (`request_rejected`) and unusable answers (`LLMError`) are not: a retry would fail the same way.
    """
    if isinstance(exc, SregraphError):
        return False
    if isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError)):
        return True
    try:
        import openai
    except ImportError:  # pragma: no cover - langchain-openai brings it
        return False
    if isinstance(exc, openai.APIConnectionError):  # APITimeoutError included
        return True
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code == 500 and request_rejected(exc):
            return False
        return exc.status_code in _TRANSIENT_STATUS or exc.status_code >= 500
    status = _watsonx_status(exc)
    if status is not None:
        if status == 500 and request_rejected(exc):
            return False
        return status in _TRANSIENT_STATUS or status >= 500
    try:
        import requests  # older ibm-watsonx-ai releases talk through requests
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, (requests.ConnectionError, requests.Timeout))


def _watsonx_status(exc: BaseException) -> int | None:
    """The HTTP status of a watsonx.ai call that answered with an error, None for anything else."""
    errors = sys.modules.get("ibm_watsonx_ai.wml_client_error")  # not loaded: not a watsonx error
    if errors is None or not isinstance(exc, errors.ApiRequestFailure):
        return None
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def _resilience(cfg: LLMConfig) -> Resilience:
    settings = cfg.resilience
    if settings.max_elapsed_s > cfg.call_timeout_s:
        # A call that timed out is not worth a second full timeout: retries fit in one timeout's time.
        settings = settings.model_copy(update={"max_elapsed_s": cfg.call_timeout_s})
    return settings.build("llm", transient=transient_model_error)


def make_chat_model(
    cfg: LLMConfig, environ: Mapping[str, str] | None = None, transport: Any = None
) -> BaseChatModel | None:
    """The chat model `cfg` describes, or None for provider "none"; reads the API key from the environment.

    The model carries `cfg.resilience` (see the module docstring), so one failing endpoint costs the agents
    sharing this model a few failed calls, not a timeout each. `transport` (an httpx transport, "openai" only)
    carries its HTTP requests instead of the network: a test server, or an eval cassette (evals/cassette.py).
    """
    env = os.environ if environ is None else environ
    if cfg.provider == "none":
        return None
    if cfg.provider == "openai":
        model = _chat_openai_class()(
            model=cfg.model,
            base_url=cfg.base_url,
            api_key=_secret(env, cfg.api_key_env, "openai", "llm.api_key_env"),
            timeout=cfg.call_timeout_s,
            max_retries=0,  # retries are the resilience policy's, which also feeds the breaker
            temperature=cfg.temperature,
            max_tokens=cfg.max_tokens,
            compat_max_tokens=not cfg.hosted,
            # OpenAI-compatible servers speak Chat Completions; never let a model name route to /responses.
            use_responses_api=False,
            **({"http_client": _http_client(transport, cfg.call_timeout_s)} if transport is not None else {}),
        )
        set_capabilities(model, cfg.structured_method, cfg.max_tokens)
        return guard_model(model, _resilience(cfg))
    wx = cfg.watsonx
    if not wx.url:
        raise ConfigError("llm.watsonx.url: not set; provider 'watsonx' needs the regional https endpoint")
    if not wx.project_id:
        raise ConfigError("llm.watsonx.project_id: not set; provider 'watsonx' needs a project id")
    api_key = _secret(env, wx.api_key_env, "watsonx", "llm.watsonx.api_key_env")
    if wx.ca_bundle and not os.path.isfile(wx.ca_bundle):
        raise ConfigError(f"llm.watsonx.ca_bundle: no such file: {wx.ca_bundle}")
    try:
        watsonx = _chat_watsonx(cfg, api_key)
    except Exception as exc:  # authentication and connection failures surface from the SDK in many types
        raise LLMError(
            f"watsonx: could not set up model {cfg.model} at {wx.url}: {type(exc).__name__}: {exc}"
        ) from exc
    set_capabilities(watsonx, cfg.structured_method, cfg.max_tokens)
    return guard_model(watsonx, _resilience(cfg))


def _chat_watsonx(cfg: LLMConfig, api_key: SecretStr) -> BaseChatModel:
    """ChatWatsonx over a client whose HTTP has `call_timeout_s` and no retries of its own.

    Imported and built only here: building it exchanges the API key for an IAM token and checks the project
    and the model over the network. The SDK's default HTTP client retries 401s and 5xx in its transport, and
    its inference retries 429/503/504; a plain httpx client and `max_retries=0` leave retries to the policy.
    """
    from ibm_watsonx_ai import APIClient, Credentials
    from ibm_watsonx_ai.foundation_models import ModelInference
    from langchain_ibm import ChatWatsonx

    wx = cfg.watsonx
    assert wx.url is not None and wx.project_id is not None  # checked by make_chat_model
    tls = ssl.create_default_context(cafile=wx.ca_bundle)
    timeout = httpx.Timeout(cfg.call_timeout_s)
    credentials = Credentials(
        url=wx.url,
        api_key=api_key.get_secret_value(),
        auth_url=wx.iam_url,
        platform_url=wx.platform_url,
        verify=True,
    )
    client = APIClient(
        credentials,
        project_id=wx.project_id,
        httpx_client=httpx.Client(timeout=timeout, verify=tls),
        async_httpx_client=httpx.AsyncClient(timeout=timeout, verify=tls),
    )
    params = {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens}
    inference = ModelInference(
        model_id=cfg.model, api_client=client, project_id=wx.project_id, params=params, max_retries=0
    )
    return ChatWatsonx(
        watsonx_model=inference,
        url=SecretStr(wx.url),
        api_key=api_key,
        project_id=wx.project_id,
        temperature=cfg.temperature,
        max_tokens=cfg.max_tokens,
    )


def _http_client(transport: Any, timeout_s: float) -> Any:
    return httpx.Client(transport=transport, timeout=timeout_s)


@functools.cache
def _chat_openai_class() -> type[BaseChatModel]:
    """ChatOpenAI whose requests every OpenAI-compatible server takes (built on first use: a lazy import).

    - no message has `content: null` (langchain-openai sends null beside tool calls; llama.cpp rejects it);
    - with `compat_max_tokens`, the reply limit goes as `max_tokens`, which every such server knows, instead
      of OpenAI's newer `max_completion_tokens`, which some ignore (and then generate to the context's end).
    """
    from langchain_openai import ChatOpenAI

    class CompatibleChatOpenAI(ChatOpenAI):
        compat_max_tokens: bool = False

        def _get_request_payload(
            self, input_: Any, *, stop: list[str] | None = None, **kwargs: Any
        ) -> dict[str, Any]:
            payload = super()._get_request_payload(input_, stop=stop, **kwargs)
            for message in payload.get("messages", []):
                if isinstance(message, dict) and "content" in message and message["content"] is None:
                    message["content"] = ""
            if self.compat_max_tokens and "max_completion_tokens" in payload:
                payload["max_tokens"] = payload.pop("max_completion_tokens")
            return payload

    return CompatibleChatOpenAI


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
class LoopResult(Generic[_Output]):
    """What one tool loop produced and what it cost."""

    output: _Output
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


GRAMMAR_MAX_STRING = 200
GRAMMAR_MAX_ITEMS = 3


def bounded_schema(schema: Any) -> Any:
    """`schema` with every free string capped at GRAMMAR_MAX_STRING characters and every list at GRAMMAR_MAX_ITEMS.

    Sent with json_mode, where a grammar-constraining server (llama.cpp) enforces it: a small model otherwise
    writes one string until `max_tokens` runs out and the answer is cut-off JSON. Only the request is bounded;
    the answer is validated against the model's own schema.
    """
    if isinstance(schema, list):
        return [bounded_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: bounded_schema(value) for key, value in schema.items()}
    if out.get("type") == "string" and "enum" not in out and "const" not in out:
        out["maxLength"] = min(int(out.get("maxLength", GRAMMAR_MAX_STRING)), GRAMMAR_MAX_STRING)
    if out.get("type") == "array":
        out["maxItems"] = min(int(out.get("maxItems", GRAMMAR_MAX_ITEMS)), GRAMMAR_MAX_ITEMS)
    return out


def parse_json_output(text: str, output: type[_Output]) -> _Output:
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
        # strict=False: small models put raw newlines and tabs inside strings, which is still their answer.
        return output.model_validate(json.loads(candidate, strict=False))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise LLMError(f"the model's answer is not a valid {output.__name__}: {exc}") from exc


# --------------------------------------------------------------------------- the loop


class _Meter:
    """Charges each model call to the budget: provider-reported usage when present, local counts otherwise."""

    def __init__(self, budget: TokenBudget, encoding: str, usage: ModelUsage | None = None) -> None:
        self.budget = budget
        self.encoding = encoding
        self.start = budget.spent
        self.usage = usage

    def charge(self, prompt_tokens: int, reply: BaseMessage) -> None:
        local = prompt_tokens + message_tokens(reply, self.encoding)
        usage = reply.usage_metadata if isinstance(reply, AIMessage) else None
        reported = usage.get("total_tokens", 0) if usage else 0
        log.debug("model call: %d tokens counted locally, %d reported", local, reported)
        if self.usage is not None:
            self.usage.tokens += reported or local
        self.budget.charge(reported or local)

    @property
    def used(self) -> int:
        return self.budget.spent - self.start


def _invoke(
    runnable: Any,
    messages: list[BaseMessage],
    what: str,
    resilience: Resilience | None = None,
    usage: ModelUsage | None = None,
) -> Any:
    if usage is not None:
        usage.calls += 1
    try:
        if resilience is None:
            return runnable.invoke(messages)
        return resilience.call(lambda: runnable.invoke(messages))
    except Exception as exc:  # provider SDKs raise many types (HTTP, auth, rate limit, parsing)
        if usage is not None:
            usage.failures += 1
            usage.errors = [*usage.errors[-4:], f"{type(exc).__name__}: {exc}"[:300]]
        if isinstance(exc, LLMError):
            raise
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
    output: type[_Output],
    max_steps: int,
    budget: TokenBudget,
    encoding: str = "cl100k_base",
) -> LoopResult[_Output]:
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
    profile = _profile(model)
    meter = _Meter(budget, encoding, profile.usage)

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

    guard = profile.resilience
    bound: Any = model
    if tools and max_steps > 0:
        try:
            # tool_choice always sent: some servers (llama.cpp's chatml-function-calling) only call tools then.
            bound = model.bind_tools(list(tools), tool_choice="auto")
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
        reply = _invoke(bound, messages, f"step {steps + 1}", guard, profile.usage)
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
        model, messages, last if stop == "answered" else None, output, meter, final_prompt_tokens, profile
    )
    log.info(
        "tool loop: %d steps, %d tool calls, %d tokens, stopped: %s", steps, len(calls_log), meter.used, stop
    )
    return LoopResult(output=answer, tokens=meter.used, steps=steps, tool_calls=calls_log, stop_reason=stop)


def _final_answer(
    model: BaseChatModel,
    messages: list[BaseMessage],
    last: AIMessage | None,
    output: type[_Output],
    meter: _Meter,
    prompt_tokens: Callable[[], int],
    profile: _Profile | None = None,
) -> _Output:
    """The structured answer: from the last reply if it already is one, else from one more structured call.

    The call follows the endpoint's `structured` method (`LLMConfig.structured_output`); a model with no
    known method gets its own `with_structured_output` default.
    """
    profile = profile or _Profile()
    guard, usage, method = profile.resilience, profile.usage, profile.structured
    if last is not None and "{" in last.text:
        try:
            return parse_json_output(last.text, output)
        except LLMError:
            pass  # prose or partial JSON: ask once more, with the schema enforced
    messages.append(HumanMessage(FINAL_INSTRUCTION.format(name=output.__name__)))
    structured: Any = None
    if method != "json_mode":
        try:
            # No known method: the model's own default (a model handed in by the caller).
            structured = model.with_structured_output(
                output, include_raw=True, **({"method": method} if method else {})
            )
        except NotImplementedError:
            structured = None
    if structured is None:
        schema = output.model_json_schema()
        if method == "json_mode":
            schema = bounded_schema(schema)
        messages[-1] = HumanMessage(
            f"{messages[-1].text}\nJSON schema: {json.dumps(schema)}\nReply with the JSON only."
        )
        sent = prompt_tokens()
        runnable: Any = model
        if method == "json_mode":
            # json_object with the schema attached: grammar-constrained on llama.cpp, a JSON-only reply elsewhere.
            runnable = model.bind(response_format={"type": "json_object", "schema": schema})
        reply = _invoke(runnable, messages, "final answer", guard, usage)
        meter.charge(sent, reply)
        return parse_json_output(reply.text, output)
    sent = prompt_tokens()
    result = _invoke(structured, messages, "final answer", guard, usage)
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


def ask(model: BaseChatModel, system: str, output: type[_Output], budget: TokenBudget) -> LoopResult[_Output]:
    """One structured answer with no tools (observer titles, engineer choices, librarian prose)."""
    return run_tool_loop(model, system, "Answer now.", [], output, 0, budget)


def incident_budget(cfg: LLMConfig | None, spent: int) -> TokenBudget:
    """What is left of the per-incident token budget after `spent` tokens."""
    limit = cfg.token_budget if cfg is not None else 12000
    budget = TokenBudget(limit)
    budget.charge(min(spent, limit))
    return budget
