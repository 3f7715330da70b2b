"""Test doubles: a scripted chat model, local servers of the OpenAI-compatible and watsonx.ai APIs."""

from tests.fakes.chat import ScriptedChatModel, answer, say, tool_call
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.watsonx_server import FakeWatsonxServer

__all__ = ["FakeOpenAIServer", "FakeWatsonxServer", "ScriptedChatModel", "answer", "say", "tool_call"]
