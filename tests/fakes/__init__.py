"""Test doubles shared by the test modules: a scripted chat model and a local OpenAI-compatible server."""

from tests.fakes.chat import ScriptedChatModel, answer, say, tool_call
from tests.fakes.openai_server import FakeOpenAIServer

__all__ = ["FakeOpenAIServer", "ScriptedChatModel", "answer", "say", "tool_call"]
