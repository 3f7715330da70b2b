"""Steady load on the app's entry point: from threads of this process, or from a detached process.

Run as ``python -m sregraph.localenv.load URL RPS``: the detached load process (`background_load`), which
outlives the process that started it and stops on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import httpx

from sregraph.localenv.layout import PROJECT_ROOT
from tools.base import ConfigError
from tools.runtime import ProcessSpec, ProcessSupervisor

LOAD_TIMEOUT_S = 1.0
LOAD_WORKERS = 8


class LoadGenerator:
    """Calls frontend /buy at a steady rate from a few daemon threads; a slow backend never causes a burst."""

    def __init__(self, url: str, rps: float) -> None:
        """Target `url` at `rps` requests per second (not started yet)."""
        if rps <= 0:
            raise ConfigError(f"rps must be positive, got {rps}")
        self.url = url
        self.rps = rps
        self.sent = self.ok = self.failed = 0
        self._next = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._client = httpx.Client(timeout=LOAD_TIMEOUT_S)
        self._threads = [
            threading.Thread(target=self._work, name=f"load-{i}", daemon=True) for i in range(LOAD_WORKERS)
        ]

    def start(self) -> None:
        """Start the workers."""
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop the workers (bounded wait) and close the client."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=LOAD_TIMEOUT_S + 1.0)
        self._client.close()

    def stats(self) -> dict[str, float]:
        """Requests sent, succeeded and failed so far, and the target rate."""
        with self._lock:
            return {"rps": self.rps, "sent": self.sent, "ok": self.ok, "failed": self.failed}

    def _work(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                # Behind schedule (every worker was stuck on slow requests): skip the missed slots.
                slot = max(self._next, now)
                self._next = slot + 1.0 / self.rps
            if self._stop.wait(max(0.0, slot - now)):
                return
            try:
                ok = self._client.get(self.url).status_code == 200
            except httpx.HTTPError:
                ok = False
            except RuntimeError:  # the client was closed under us during stop()
                return
            with self._lock:
                self.sent += 1
                self.ok += ok
                self.failed += not ok


def background_load(data_dir: Path, url: str, rps: float = 15.0) -> ProcessSupervisor:
    """A supervisor of the detached load process; separate so agents never see or restart it."""
    argv = [sys.executable, "-m", "sregraph.localenv.load", url, str(rps)]
    env = {
        "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    }
    return ProcessSupervisor(
        data_dir / "load", {"load": ProcessSpec(name="load", argv=argv, env=env, cwd=data_dir)}
    )


def _run_load(url: str, rps: float) -> None:
    """Generate load until SIGTERM (the detached load process)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    load = LoadGenerator(url, rps)
    load.start()
    stop.wait()
    load.stop()


if __name__ == "__main__":
    _run_load(sys.argv[1], float(sys.argv[2]))
