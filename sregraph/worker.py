"""The long-lived worker: resumes unfinished incidents, then watches and handles new ones, one at a time.

A SIGTERM lets the current graph step finish (its checkpoint is written by LangGraph at the step boundary)
and then exits; a SIGKILL loses at most the step in flight, which runs again on the next start.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from graphs.state import Trigger
from sregraph.engine import Engine
from sregraph.observability import HealthState
from tools.base import SregraphError

log = logging.getLogger("sregraph.worker")


class Worker:
    """Drives the engine forever (or once)."""

    def __init__(self, engine: Engine, health: HealthState | None = None) -> None:
        self.engine = engine
        self.stopping = False
        self.health = health or HealthState()
        engine.should_stop = lambda: self.stopping

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: finishing the current step, then exiting", signum)
        self.stopping = True

    def resume_unfinished(self) -> list[str]:
        """Finish every thread a previous process left mid-way; returns their ids."""
        resumed = []
        for incident_id in list(self.engine.unfinished()):
            if self.stopping:
                break
            log.info("resuming %s from its last checkpoint", incident_id)
            self.engine.resume(incident_id)
            resumed.append(incident_id)
        return resumed

    def scan(self) -> str | None:
        """One look at telemetry; a deviation starts an incident thread. Returns its id."""
        signals, _, _ = self.engine.crew.observer.check()
        if not signals:
            return None
        busy = self.engine.in_progress_services()
        signals = [s for s in signals if s.service not in busy]
        if not signals:
            return None  # already handled by an open incident (e.g. one waiting for approval)
        top = signals[0]
        trigger = Trigger(source="scan", service=top.service, signal=top.name, summary=top.detail, fired_at=self.engine.toolbox.clock.now())
        state = self.engine.start(trigger)
        log.info("incident %s ended with status %s", state.get("incident_id"), state.get("status"))
        return str(state.get("incident_id"))

    def run(self, once: bool = False, interval: float = 2.0) -> None:
        """Resume, then scan every `interval` seconds until stopped."""
        # Signal handlers belong to the main thread; a worker run in a thread (the demo) is stopped by flag.
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, self._on_term) if main else None
        try:
            self.resume_unfinished()
            while not self.stopping:
                try:
                    self.scan()
                except SregraphError as exc:
                    # A flaky backend must not kill a worker meant to run for months; the next loop retries.
                    self.engine.metrics.errors.labels("scan").inc()
                    log.error("scan failed: %s", exc)
                self.health.beat()
                self.engine.metrics.last_scan.set_to_current_time()
                if once:
                    break
                self.engine.toolbox.clock.sleep(interval)
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
            self.engine.close()
