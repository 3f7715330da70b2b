"""Test doubles: a scripted chat model, local servers of the OpenAI-compatible, watsonx.ai and GitHub APIs."""

from tests.fakes.chat import ScriptedChatModel, answer, say, tool_call
from tests.fakes.github import FakeGitHub
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.watsonx_server import FakeWatsonxServer

__all__ = [
    "FakeGitHub",
    "FakeOpenAIServer",
    "FakeWatsonxServer",
    "ScriptedChatModel",
    "answer",
    "say",
    "tool_call",
]
