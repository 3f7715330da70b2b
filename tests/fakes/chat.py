"""A scripted chat model: plays back a fixed list of replies and records what it was sent.

langchain_core's fake chat models refuse `bind_tools`; this one accepts it (returning itself), so a test can
script a full tool-call round trip. The structured final answer goes through langchain_core's own
`with_structured_output`, which binds the schema as a tool and parses the first tool call: script it with
`answer(SomeModel(...))`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, Field

_ids = itertools.count(1)


def _usage(usage: tuple[int, int] | None) -> UsageMetadata | None:
    if usage is None:
        return None
    return UsageMetadata(input_tokens=usage[0], output_tokens=usage[1], total_tokens=usage[0] + usage[1])


def tool_call(
    name: str,
    args: dict[str, Any] | None = None,
    *more: tuple[str, dict[str, Any]],
    usage: tuple[int, int] | None = None,
) -> AIMessage:
    """A reply asking for one tool call (and optionally more, as (name, args) pairs)."""
    calls = [(name, args or {}), *more]
    return AIMessage(
        content="",
        tool_calls=[
            {"name": n, "args": a, "id": f"call_{next(_ids)}", "type": "tool_call"} for n, a in calls
        ],
        usage_metadata=_usage(usage),
    )


def say(text: str, usage: tuple[int, int] | None = None) -> AIMessage:
    """A plain text reply with no tool calls."""
    return AIMessage(content=text, usage_metadata=_usage(usage))


def answer(output: BaseModel, usage: tuple[int, int] | None = None) -> AIMessage:
    """A structured final answer, as the schema-as-a-tool call `with_structured_output` parses."""
    return AIMessage(
        content="",
        tool_calls=[
            {
                "name": type(output).__name__,
                "args": output.model_dump(mode="json"),
                "id": f"call_{next(_ids)}",
                "type": "tool_call",
            }
        ],
        usage_metadata=_usage(usage),
    )


class ScriptedChatModel(FakeMessagesListChatModel):
    """Replies with `responses` in order (an Exception in the script is raised instead); never cycles."""

    responses: list[BaseMessage | Exception]  # type: ignore[assignment]  # a script may raise, too
    calls: list[list[BaseMessage]] = Field(default_factory=list)
    """The messages of every call, in order."""
    bound: list[dict[str, Any]] = Field(default_factory=list)
    """Every bind_tools call: the tool names and the keyword arguments."""

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.calls.append(list(messages))
        if self.i >= len(self.responses):
            raise AssertionError(
                f"scripted model exhausted: call {self.i + 1}, {len(self.responses)} replies scripted; "
                f"last message sent: {messages[-1].text[:300]!r}"
            )
        reply = self.responses[self.i]
        self.i += 1
        if isinstance(reply, Exception):
            raise reply
        return ChatResult(generations=[ChatGeneration(message=reply.model_copy(deep=True))])

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[Any, AIMessage]:
        """Record the tools and return the model itself: the script decides which tools get called."""
        names = [convert_to_openai_tool(t)["function"]["name"] for t in tools]
        self.bound.append({"tools": names, "tool_choice": tool_choice, **kwargs})
        return self

    @property
    def remaining(self) -> int:
        """Scripted replies not played yet."""
        return len(self.responses) - self.i
