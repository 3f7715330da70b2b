"""A tiny OpenAI-compatible server on loopback that answers /v1/chat/completions from a script.

It lets tests drive the real ChatOpenAI client (HTTP, JSON, tool calls, usage) without the internet::

    with FakeOpenAIServer([reply(tool_calls=[("query_metric", {...})]), reply(content="{...}")]) as server:
        model = ChatOpenAI(model="gpt-4o-mini", base_url=server.base_url, api_key="test")

Each request takes the next scripted reply; `requests` records the JSON bodies (and `headers` the headers).
A scripted `status` other than 200 answers with an OpenAI-style error body. An exhausted script answers 400
(not retried by the client), so a test fails fast with the reason.
"""

from __future__ import annotations

import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.fakes.http import LoopbackServer, answer_json


def reply(
    content: str | None = None,
    tool_calls: list[tuple[str, dict[str, Any]]] | None = None,
    usage: tuple[int, int] = (50, 10),
    status: int = 200,
) -> dict[str, Any]:
    """One scripted response: text and/or tool calls as (name, arguments), token usage, HTTP status."""
    return {"content": content, "tool_calls": tool_calls or [], "usage": usage, "status": status}


class FakeOpenAIServer(LoopbackServer):
    """Serves scripted chat completions on 127.0.0.1 from a background thread."""

    def __init__(self, script: list[dict[str, Any]], model: str = "gpt-4o-mini") -> None:
        self.script = list(script)
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-openai", daemon=True)

    @property
    def base_url(self) -> str:
        """The URL to hand ChatOpenAI as base_url."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    # ------------------------------------------------------------------ responses

    def _next(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            index = len(self.requests) - 1
            if index >= len(self.script):
                return 400, _error(
                    f"fake server script exhausted: request {index + 1}, {len(self.script)} scripted"
                )
            step = self.script[index]
            n = next(self._ids)
        if step["status"] != 200:
            return step["status"], _error(step.get("content") or f"scripted HTTP {step['status']}")
        tool_calls = [
            {
                "id": f"call_{n}_{i}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for i, (name, args) in enumerate(step["tool_calls"])
        ]
        message: dict[str, Any] = {"role": "assistant", "content": step["content"], "refusal": None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        prompt, completion = step["usage"]
        return 200, {
            "id": f"chatcmpl-fake{n}",
            "object": "chat.completion",
            "created": 1_700_000_000 + n,
            "model": body.get("model", self.model),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if tool_calls else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
            "system_fingerprint": "fp_fake",
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, _error(f"fake server only serves /v1/chat/completions, not {self.path}"))
                    return
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError as exc:
                    self._send(400, _error(f"request body is not JSON: {exc}"))
                    return
                self._send(*server._next(body, {k.lower(): v for k, v in self.headers.items()}))

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                answer_json(self, status, payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base class)
                pass

        return Handler


def _error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
