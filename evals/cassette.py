"""Model cassettes: a chat model's answers recorded once and replayed, so an LLM-mode eval can run again exactly.

A `Cassette` is an httpx transport for the OpenAI-compatible client (`make_chat_model(cfg, transport=...)`). In
record mode it sends each request on to the real server and keeps the answer, keyed by the SHA-256 of the
request body (model, messages, tools, tool_choice, response_format, max_tokens: everything that decides the
answer); the n-th repeat of the same request gets the n-th recorded answer. In replay mode no server is needed;
a request that was not recorded is a miss: `CassetteMiss` is raised (the agents see a failed model call) and
kept in `misses`, and the replay fails the case with it (evals/replay.replay_case), so a changed prompt is loud,
never silently answered by the deterministic fallback.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

import httpx

Mode = Literal["record", "replay"]


class CassetteMiss(Exception):  # noqa: N818 - the name says what happened
    """A replayed model request has no recorded answer (the prompt, tools or schema changed)."""


def request_key(body: bytes) -> str:
    """The cassette key of a request body: SHA-256 of its canonical JSON (key order does not matter)."""
    try:
        doc = json.loads(body or b"{}")
    except json.JSONDecodeError:
        return hashlib.sha256(body).hexdigest()
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Cassette(httpx.BaseTransport):
    """Records (mode "record") or serves (mode "replay") a model's HTTP answers, in a JSONL file at `path`."""

    def __init__(self, path: Path | str, mode: Mode, upstream: httpx.BaseTransport | None = None) -> None:
        if mode not in ("record", "replay"):
            raise ValueError(f"cassette mode must be record or replay, got {mode!r}")
        self.path, self.mode = Path(path), mode
        self.upstream = (
            upstream if upstream is not None else (httpx.HTTPTransport() if mode == "record" else None)
        )
        self.answers: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.used: dict[str, int] = defaultdict(int)
        self.misses: list[str] = []
        self.recorded = 0
        self.latencies: list[float] = []
        """Seconds each recorded request took the server (record mode): the model's latency per call."""
        if mode == "replay":
            if not self.path.exists():
                raise FileNotFoundError(f"no cassette at {self.path}: record one first (mode 'record')")
            for line in self.path.read_text().splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self.answers[entry["key"]].append(entry)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Serve the recorded answer (replay) or fetch and record one (record)."""
        body = request.read()
        key = request_key(body)
        if self.mode == "replay":
            return self._replay(key, body, request)
        assert self.upstream is not None
        started = time.perf_counter()
        response = self.upstream.handle_request(request)
        content = response.read()
        entry = {
            "key": key,
            "n": len(self.answers[key]),
            "url": str(request.url.path),
            "status": response.status_code,
            "seconds": round(time.perf_counter() - started, 3),
            "content_type": response.headers.get("content-type", "application/json"),
            "body": content.decode("utf-8", "replace"),
            "request": _summary(body),
        }
        self.answers[key].append(entry)
        with self.path.open("a") as out:
            out.write(json.dumps(entry) + "\n")
        self.recorded += 1
        self.latencies.append(entry["seconds"])
        return httpx.Response(
            response.status_code,
            headers={"content-type": entry["content_type"]},
            content=content,
            request=request,
        )

    def _replay(self, key: str, body: bytes, request: httpx.Request) -> httpx.Response:
        entries = self.answers.get(key, [])
        n = self.used[key]
        if n >= len(entries):
            what = f"request {key[:12]} ({_summary(body)})"
            detail = (
                "never recorded" if not entries else f"recorded {len(entries)} time(s), this is call #{n + 1}"
            )
            message = f"cassette {self.path}: no recorded answer for {what}: {detail}; re-record the cassette"
            self.misses.append(message)
            raise CassetteMiss(message)
        self.used[key] = n + 1
        entry = entries[n]
        return httpx.Response(
            entry["status"],
            headers={"content-type": entry["content_type"]},
            content=entry["body"].encode(),
            request=request,
        )

    def close(self) -> None:
        """Close the upstream transport, if any."""
        if self.upstream is not None:
            self.upstream.close()


def _summary(body: bytes) -> str:
    """A short, human-readable description of a request (for the cassette file and miss messages)."""
    try:
        doc = json.loads(body or b"{}")
    except json.JSONDecodeError:
        return f"{len(body)} bytes"
    messages = doc.get("messages", [])
    last = messages[-1].get("content", "") if messages and isinstance(messages[-1], dict) else ""
    text = last if isinstance(last, str) else json.dumps(last)
    tools = ",".join(
        t.get("function", {}).get("name", "?") for t in doc.get("tools", []) if isinstance(t, dict)
    )
    return f"{len(messages)} messages, tools [{tools}], last: {' '.join(text.split())[:80]!r}"
