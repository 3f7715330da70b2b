"""The long-lived worker: resumes unfinished incidents, then watches and handles new ones, one at a time.

A SIGTERM lets the current graph step finish (its checkpoint is written by LangGraph at the step boundary)
and then exits; a SIGKILL loses at most the step in flight, which runs again on the next start.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from graphs.state import ApprovalDecision, Trigger
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

    def handle_commands(self) -> list[str]:
        """Act on slash commands humans wrote on incident issues (authorised by the surface); returns what was done.

        /approve and /reject answer a waiting approval gate; /escalate rejects it as an escalation; /retry
        starts a new investigation on an escalated incident's issue. Commands come only from comments by users
        with write access: text in logs or issue bodies is never parsed for commands.
        """
        poll = getattr(self.engine.toolbox.incidents, "poll_commands", None)
        if poll is None:
            return []
        done = []
        for command in poll():
            incident_id = self.engine.incident_for_issue(command.issue_id)
            if incident_id is None:
                log.info("/%s on issue #%s: no incident thread is attached to it", command.name, command.issue_id)
                continue
            if command.name in ("approve", "reject", "escalate") and self.engine.pending_approval(incident_id):
                reason = command.args or f"/{command.name} on the issue"
                decision = ApprovalDecision(approved=command.name == "approve", by=command.author, reason=reason)
                self.engine.decide(incident_id, decision)
                done.append(f"{command.name} {incident_id}")
            elif command.name == "retry" and self.engine.state(incident_id).get("status") == "escalated":
                trigger = Trigger(source="issue", issue_id=command.issue_id, summary=f"/retry by {command.author}", fired_at=self.engine.toolbox.clock.now())
                self.engine.start(trigger)
                done.append(f"retry {incident_id}")
            else:
                log.info("/%s on %s ignored: nothing is waiting for it", command.name, incident_id)
        return done

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
                    self.handle_commands()
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
