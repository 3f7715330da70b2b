"""The long-lived worker: resumes unfinished incidents, then watches and handles new ones, several at a time.

Runs go to a thread pool, at most one per incident; an alert for an incident in progress joins it. Every run
holds the incident's lease, so many workers on one database run each incident in one of them at a time, and
every outside write is fenced by it. SIGTERM finishes the running graph steps; SIGKILL loses at most those.
Design: docs/scale-out.md §One worker.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from types import FrameType
from typing import TYPE_CHECKING, Any

from sregraph.alerts import AlertReceiver
from sregraph.config import AlertsConfig
from sregraph.engine import FINAL, Engine
from sregraph.escalation import Escalator
from sregraph.leases import LeaseLost, Leases
from sregraph.observability import HealthState, incident_var
from sregraph.storm import Notification, SharedStormGate, StormGate
from tools.base import Clock, ConfigError, Issue, NotFound, SregraphError
from tools.domain import ApprovalDecision, Trigger

if TYPE_CHECKING:
    from sregraph.jobs import JobQueue
    from tools.github.commands import Command

log = logging.getLogger("sregraph.worker")


ISSUE_POLL_EVERY = 15
"""Loops between two listings of open incident issues (an API call on GitHub; commands are polled every loop)."""

FENCED = (
    "start",
    "stop",
    "restart",
    "scale",
    "apply",
    "open_issue",
    "comment",
    "set_labels",
    "close",
    "propose",
    "merge",
    "notify",
)
"""Methods of the toolbox's backends that change something outside: called during an incident's run, each first
checks that this worker still holds the incident's lease."""

ISSUE_LIST_MAX_AGE_S = 30.0
"""How old a listing of open issues may be when a scan asks whether an escalated incident's issue is still open."""


class Worker:
    """Drives the engine forever (or once)."""

    def __init__(
        self,
        engine: Engine,
        health: HealthState | None = None,
        max_concurrent: int | None = None,
        leases: Leases | None = None,
    ) -> None:
        self.engine = engine
        self.leases = leases or Leases(engine.registry.db, ttl_s=engine.settings.storage.lease_ttl_s)
        """This worker's incident leases, in the registry's database."""
        self.stopping = False
        self.health = health or HealthState()
        self.max_concurrent = max_concurrent or engine.settings.worker.max_concurrent
        self._pool = ThreadPoolExecutor(self.max_concurrent, thread_name_prefix="incident")
        # Re-entrant: a future that is already done runs its callback at once, in the thread that holds the lock.
        self._lock = threading.RLock()
        self._runs: dict[str, Future[Any]] = {}
        self._guarding: set[str] = set()
        """Incidents this worker runs now (each under its lease): their writes are fenced."""
        self._open_issue_cache: dict[int, Issue] | None = None
        self._listed_at = 0.0
        self._issue_of: dict[str, int | None] = {}
        """Issue of each escalated incident (final: it never changes)."""
        self.escalator = Escalator.for_engine(engine)
        """Pages the escalation tiers for incidents that wait for a human (None without a policy)."""
        self.gate: StormGate | None = None
        self.receiver: AlertReceiver | None = None
        self.jobs: JobQueue | None = None
        """The job queue, when `storage.job_queue` is procrastinate: new and adopted incidents and decisions go
        there."""
        storage = engine.settings.storage
        if storage.job_queue == "procrastinate":
            # procrastinate loads only when the job queue is configured.
            from sregraph.jobs import JobQueue

            self.jobs = JobQueue(storage.dsn, engine.registry.db)
        engine.should_stop = lambda: self.stopping or not self._lease_ok()
        self._install_fences()

    # ------------------------------------------------------------------ leases

    def _lease_ok(self) -> bool:
        incident_id = incident_var.get()
        return incident_id not in self._guarding or self.leases.valid(incident_id)

    def _check_lease(self, incident_id: str) -> None:
        """Raise LeaseLost if this worker runs the incident (under a lease) and can no longer prove the lease."""
        if incident_id in self._guarding:
            self.leases.check(incident_id)

    def _fence(self, *_: Any) -> None:
        """Raise LeaseLost when the incident this thread runs is no longer this worker's to act on. Outside this
        worker's runs (the escalator paging, an alert noted on an issue, the engine driven directly) nothing is
        fenced: those writes are keyed, so two workers doing the same one write it once."""
        self._check_lease(incident_var.get())

    def _install_fences(self) -> None:
        tb = self.engine.toolbox
        tb.ledger.fence = self._fence
        for backend in (tb.runtime, tb.incidents, tb.gitops, tb.deployer, tb.notifier):
            for name in FENCED:
                method = getattr(backend, name, None)
                if callable(method) and not getattr(method, "_fenced", False):
                    setattr(backend, name, self._fenced(method))
        saver = self.engine.checkpointer
        put, put_writes = saver.put, saver.put_writes

        def fenced_put(config: Any, *args: Any, **kwargs: Any) -> Any:
            self._check_lease(config["configurable"]["thread_id"])
            return put(config, *args, **kwargs)

        # The explicit task_path: LangGraph passes it only to a put_writes whose signature names it.
        def fenced_put_writes(config: Any, writes: Any, task_id: str, task_path: str = "") -> Any:
            self._check_lease(config["configurable"]["thread_id"])
            return put_writes(config, writes, task_id, task_path)

        saver.put, saver.put_writes = fenced_put, fenced_put_writes

    def _fenced(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            self._fence()
            return method(*args, **kwargs)

        call._fenced = True  # type: ignore[attr-defined]
        call.__doc__ = method.__doc__
        return call

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: finishing the current steps, then exiting", signum)
        self.stopping = True

    # ------------------------------------------------------------------ runs

    def _launch(self, incident_id: str, fn: Callable[..., Any], *args: Any) -> bool:
        """Run `fn(*args)` for an incident on the pool, unless that incident already has a run."""
        with self._lock:
            current = self._runs.get(incident_id)
            if current is not None and not current.done():
                return False
            future = self._pool.submit(self._guarded, incident_id, fn, *args)
            self._runs[incident_id] = future
            future.add_done_callback(lambda done: self._forget(incident_id, done))
            return True

    def _forget(self, incident_id: str, future: Future[Any]) -> None:
        with self._lock:
            if self._runs.get(incident_id) is future:
                del self._runs[incident_id]

    def _guarded(self, incident_id: str, fn: Callable[..., Any], *args: Any) -> Any:
        if self.stopping:
            return None  # queued behind the limit when a stop came: the next start resumes it
        try:
            if not self.leases.acquire(incident_id):
                log.info("incident %s is run by another worker", incident_id)
                return None
        except SregraphError as exc:
            log.error("incident %s: lease not taken (%s); it is adopted later", incident_id, exc)
            return None
        with self._lock:
            self._guarding.add(incident_id)
        try:
            state = fn(*args)
        except LeaseLost:
            log.error(
                "incident %s: lease lost; this worker stopped acting on it, another resumes it", incident_id
            )
            return None
        except Exception:
            # The engine logged and counted it; the thread stays resumable and the worker carries on.
            log.error("incident %s stopped on an error; it resumes on the next start", incident_id)
            return None
        finally:
            with self._lock:
                self._guarding.discard(incident_id)
            self.leases.release(incident_id)
        if state:
            log.info("incident %s: %s", incident_id, state.get("status"))
        return state

    def running(self) -> list[str]:
        """Incidents with a run queued or in progress in this process."""
        with self._lock:
            return sorted(i for i, f in self._runs.items() if not f.done())

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no run is queued or in progress; False on timeout."""
        while True:
            with self._lock:
                pending = [f for f in self._runs.values() if not f.done()]
            if not pending:
                return True
            _, not_done = wait_futures(pending, timeout)
            if not_done:
                return False

    # ------------------------------------------------------------------ entry points

    def submit(self, trigger: Trigger, run_here: bool = True) -> tuple[str, bool]:
        """Route one alert or trigger: (incident id, whether a new incident started).

        An alert for a service (or alert fingerprint) with an incident in progress, or with an escalated incident
        whose issue is still open, joins that incident instead of starting another. Thread-safe: the alert
        receiver's dispatcher may call it.
        `run_here=False` only registers a new incident: whichever worker adopts it first runs it.
        """
        # One router at a time across every worker on the storage: two alerts for one service never open two.
        with self._lock, self.engine.registry.db.exclusive("route"):
            existing = self.engine.incident_for_alert(trigger) or self._escalation_for(trigger)
            if existing is not None:
                self.engine.attach_alert(existing, trigger)
                log.info("alert %s/%s joined incident %s", trigger.service, trigger.signal, existing)
                return existing, False
            incident_id, _ = self._start_new(trigger, run_here)
            return incident_id, True

    def _start_new(self, trigger: Trigger, run_here: bool = True) -> tuple[str, bool]:
        """A new incident thread on the pool: (its id, whether it was launched)."""
        incident_id = self.engine.new_id()
        # Registered before the run is queued, so a second alert routed right after this one sees it.
        self.engine.registry.record(incident_id, trigger, "observing")
        if self.jobs is not None:
            return incident_id, self.jobs.defer_run(incident_id)  # any worker takes it
        if not run_here:
            return incident_id, False
        # `start` continues, rather than starts over, a thread another worker adopted and ran first.
        return incident_id, self._launch(incident_id, self.engine.start, trigger, incident_id)

    def decide(self, incident_id: str, decision: ApprovalDecision) -> bool:
        """Answer a waiting approval gate on the pool (or queue the decision as a job); False if that incident has
        a run already here."""
        if self.jobs is not None:
            self.jobs.defer_decision(incident_id, decision.model_dump())
            return True
        return self._launch(incident_id, self.engine.decide, incident_id, decision)

    def start_jobs(self) -> None:
        """Take jobs from the queue (when configured) on a thread of its own, `max_concurrent` at once."""
        if self.jobs is not None:
            self.jobs.start(self._run_job, self._decide_job, self.max_concurrent, self.leases.owner)

    def stop_jobs(self) -> None:
        """Stop taking jobs; running ones end at their next step boundary (idempotent)."""
        if self.jobs is not None:
            self.jobs.stop()

    def _run_job(self, incident_id: str) -> None:
        """A run job from the queue: under the incident's lease, like any run."""
        self._guarded(incident_id, self._adopted, incident_id)

    def _decide_job(self, incident_id: str, decision: dict[str, Any]) -> None:
        """A decision job from the queue: applied under the lease if the incident still waits for it."""
        approval = ApprovalDecision.model_validate(decision)

        def apply() -> dict[str, Any] | None:
            if not self.engine.pending_approval(incident_id):
                log.info("decision on %s dropped: it no longer waits for one", incident_id)
                return None
            return self.engine.decide(incident_id, approval)

        self._guarded(incident_id, apply)

    def resume_unfinished(self, wait: bool = True) -> list[str]:
        """Resume every thread a previous process left mid-way; returns their ids."""
        resumed = []
        for incident_id in list(self.engine.unfinished()):
            if self.stopping:
                break
            if self._launch(incident_id, self.engine.resume, incident_id):
                log.info("resuming %s from its last checkpoint", incident_id)
                resumed.append(incident_id)
        if wait:
            self.wait_idle()
        return resumed

    def adopt(self) -> list[str]:
        """Take the unfinished incidents no worker holds a lease on: routed by another worker and not yet run,
        or left mid-way by one that died (its lease expired). Returns those launched here."""
        try:
            candidates = self.engine.registry.active()
            if not candidates:
                return []
            elsewhere = self.leases.live_elsewhere()
        except SregraphError as exc:
            log.error("adopting: %s", exc)
            return []
        mine = set(self.running()) | set(self.leases.held())  # held: run here as a job, outside the pool
        adopted = []
        for incident_id in candidates:
            if self.stopping:
                break
            if incident_id in elsewhere or incident_id in mine:
                continue
            if self.jobs is not None:
                try:
                    if self.jobs.defer_run(incident_id):
                        adopted.append(incident_id)
                except SregraphError as exc:
                    log.error("adopting %s: %s", incident_id, exc)
                continue
            if self._launch(incident_id, self._adopted, incident_id):
                adopted.append(incident_id)
        return adopted

    def _adopted(self, incident_id: str) -> dict[str, Any] | None:
        """Resume an adopted incident unless it turned out finished or waiting for a human (checked under the lease)."""
        try:
            state = self.engine.state(incident_id)
        except NotFound:
            return self.engine.resume(incident_id)  # registered, never checkpointed: start from its trigger
        if not state["next"] or state["waiting"]:
            self.engine.sync_registry(incident_id, state)
            return None
        log.info("adopting %s at %s", incident_id, state["next"])
        return self.engine.resume(incident_id)

    def handle_commands(self) -> list[str]:
        """Act on slash commands humans wrote on incident issues (authorised by the surface); returns what was done.

        /approve and /reject answer a waiting approval gate; /escalate rejects it as an escalation; /retry
        starts a new investigation on an escalated incident's issue; /ack stops its escalation tiers. Commands
        come only from comments by users with write access: text in logs or issue bodies is never parsed for
        commands.
        """
        poll = getattr(self.engine.toolbox.incidents, "poll_commands", None)
        return self.apply_commands(poll()) if poll is not None else []

    def apply_commands(self, commands: list[Command]) -> list[str]:
        """Carry out commands already authorised by the surface (polled, or from a verified webhook delivery)."""
        done = []
        for command in commands:
            incident_id = self.engine.incident_for_issue(command.issue_id)
            if incident_id is None:
                log.info(
                    "/%s on issue #%s: no incident thread is attached to it", command.name, command.issue_id
                )
                continue
            if command.name in ("approve", "reject", "escalate") and self.engine.pending_approval(
                incident_id
            ):
                reason = command.args or f"/{command.name} on the issue"
                decision = ApprovalDecision(
                    approved=command.name == "approve", by=command.author, reason=reason
                )
                if self.decide(incident_id, decision):
                    done.append(f"{command.name} {incident_id}")
            elif command.name == "ack":
                if self.engine.registry.acknowledge(incident_id, command.author):
                    done.append(f"ack {incident_id}")
            elif command.name == "retry" and self.retry(incident_id, command.author) is not None:
                done.append(f"retry {incident_id}")
            else:
                log.info("/%s on %s ignored: nothing is waiting for it", command.name, incident_id)
        return done

    def retry(self, incident_id: str, by: str) -> str | None:
        """Start a new investigation of an escalated incident, on its issue; the new incident's id, or None if
        it is not escalated."""
        state = self.engine.state(incident_id)
        if state.get("status") != "escalated":
            return None
        trigger = Trigger(
            source="issue",
            issue_id=state.get("issue_id"),
            summary=f"/retry by {by}",
            fired_at=self.engine.toolbox.clock.now(),
        )
        new_id, _ = self._start_new(trigger)
        return new_id

    def handle_new_issues(self) -> list[str]:
        """Start an investigation for incident issues humans opened or reopened on an external surface.

        An open issue labelled `incident` with no thread attached (opened by a human) or whose last thread
        resolved it (reopened since) gets a new thread whose trigger names the issue. Escalated incidents stay
        with their humans until a /retry.
        """
        surface = self.engine.toolbox.incidents
        if not hasattr(surface, "poll_commands"):
            return []  # the local tracker has no humans opening issues behind our back
        started = []
        for issue in list(self._open_issues(refresh=True).values()):
            if "incident" not in issue.labels:
                continue
            incident_id = self.engine.incident_for_issue(issue.id)
            if incident_id is not None and self.engine.state(incident_id).get("status") != "resolved":
                continue
            trigger = Trigger(
                source="issue",
                issue_id=issue.id,
                summary=issue.title[:200],
                fired_at=self.engine.toolbox.clock.now(),
            )
            new_id, launched = self._start_new(trigger)
            if launched:
                started.append(new_id)
        return started

    def scan(self, run_here: bool = True) -> str | None:
        """One look at telemetry; a deviation on a service with no incident in progress starts one. Returns its id.
        `run_here=False`: only registered, for whichever worker adopts it."""
        signals, _, _ = self.engine.team.observer.check()
        if not signals:
            return None
        busy = self._claimed_services()
        signals = [s for s in signals if busy is not None and s.service not in busy]
        if not signals:
            return None  # already handled by an open incident (e.g. one waiting for approval)
        top = signals[0]
        trigger = Trigger(
            source="scan",
            service=top.service,
            signal=top.name,
            summary=top.detail,
            fired_at=self.engine.toolbox.clock.now(),
        )
        incident_id, _ = self.submit(trigger, run_here)
        return incident_id

    def _claimed_services(self) -> set[str] | None:
        """Services an incident in progress, or an escalated one a human still has, already covers: its own and
        every service connected to it, since a fault spreads along calls (a dead dependency fails its callers).
        None: one covers every service."""
        runs = self.engine.registry.list()
        active = [r for r in runs if r["status"] not in FINAL]
        if any(not r["trigger"].get("service") for r in active):
            return None
        services = {r["trigger"]["service"] for r in active}
        for _, held, _ in self._held_escalations(runs):
            services |= held
        claimed: set[str] = set()
        for service in services:
            claimed |= self.engine.toolbox.connected(service)
        return claimed

    # ------------------------------------------------------------------ escalations a human still has

    def _escalation_for(self, trigger: Trigger) -> str | None:
        """The escalated incident still held by a human that an alert belongs to (same service or fingerprint)."""
        fingerprint = trigger.labels.get("fingerprint")
        if trigger.service is None and fingerprint is None:
            return None
        for incident_id, services, held_fingerprint in self._held_escalations():
            if trigger.service in services or (fingerprint is not None and fingerprint == held_fingerprint):
                return incident_id
        return None

    def _held_escalations(
        self, runs: list[dict[str, Any]] | None = None
    ) -> list[tuple[str, set[str], str | None]]:
        """(incident id, services, alert fingerprint) of escalated incidents whose issue is still open and whose
        thread is the newest on it (a /retry takes the issue over). Services: the trigger's, else the issue's
        `service:` labels (a thread started from an issue names no service)."""
        runs = self.engine.registry.list() if runs is None else runs  # newest first
        escalated: list[tuple[dict[str, Any], int]] = []
        seen: set[int] = set()
        for run in runs:
            issue_id = self._issue_of_run(run)
            if issue_id is None or issue_id in seen:
                continue
            seen.add(issue_id)
            if run["status"] == "escalated":
                escalated.append((run, issue_id))
        if not escalated:
            return []  # no listing needed
        open_issues = self._open_issues()
        held = []
        for run, issue_id in escalated:
            issue = open_issues.get(issue_id)
            if issue is None:
                continue  # closed by a human: the service may open again
            trigger = run["trigger"]
            services = (
                {trigger["service"]}
                if trigger.get("service")
                else {label.split(":", 1)[1] for label in issue.labels if label.startswith("service:")}
            )
            held.append((str(run["incident_id"]), services, (trigger.get("labels") or {}).get("fingerprint")))
        return held

    def _issue_of_run(self, run: dict[str, Any]) -> int | None:
        """The issue a run is attached to, as far as holding goes: from its trigger, or (escalated) its state."""
        if run["trigger"].get("issue_id") is not None:
            return int(run["trigger"]["issue_id"])
        if run["status"] != "escalated":
            return None
        incident_id = run["incident_id"]
        if incident_id not in self._issue_of:
            try:
                issue_id = self.engine.state(incident_id).get("issue_id")
            except NotFound:
                issue_id = None
            self._issue_of[incident_id] = None if issue_id is None else int(issue_id)
        return self._issue_of[incident_id]

    def _open_issues(self, refresh: bool = False) -> dict[int, Issue]:
        """Open incident issues by id; one listing serves every scan for ISSUE_LIST_MAX_AGE_S."""
        with self._lock:
            now = self.engine.toolbox.clock.now()
            if (
                refresh
                or self._open_issue_cache is None
                or not 0 <= now - self._listed_at < ISSUE_LIST_MAX_AGE_S
            ):
                listing = self.engine.toolbox.incidents.list_issues("open")
                self._open_issue_cache = {issue.id: issue for issue in listing}
                self._listed_at = now
            return self._open_issue_cache

    # ------------------------------------------------------------------ alerts

    def serve_alerts(
        self, config: AlertsConfig, token: str | None = None, clock: Clock | None = None
    ) -> AlertReceiver:
        """Listen for Alertmanager webhooks now; `run` hands the storm gate's due groups to `submit` every loop.

        ConfigError without a `token` unless `config.insecure_no_auth` (loopback hosts only)."""
        options: dict[str, Any] = {
            "group_wait_s": config.group_wait_s,
            "group_interval_s": config.group_interval_s,
            "flap_window_s": config.flap_window_s,
            "max_flaps": config.max_flaps,
        }
        # On Postgres the groups are shared: several workers behind one Alertmanager group a storm as one.
        gate: StormGate = (
            SharedStormGate(self.engine.registry.db, clock or self.engine.toolbox.clock, **options)
            if self.engine.settings.storage.backend == "postgres"
            else StormGate(clock or self.engine.toolbox.clock, **options)
        )
        receiver = AlertReceiver(
            on_alerts=gate.ingest_many,
            host=config.host,
            port=config.port,
            path=config.path,
            token=token,
            insecure_no_auth=config.insecure_no_auth,
            # Only services the topology knows: an invented one would hold a worker slot for nothing.
            known_services=lambda: sorted(self.engine.toolbox.services),
            rate_per_s=config.rate_per_s,
            rate_burst=config.rate_burst,
            header_timeout_s=config.header_timeout_s,
            body_timeout_s=config.body_timeout_s,
            max_connections=config.max_connections,
            on_reject=self.engine.metrics.alert_rejected,
        )
        try:
            receiver.start()
        except OSError as exc:
            raise ConfigError(f"alerts: cannot listen on {config.host}:{config.port}: {exc}") from exc
        self.gate, self.receiver = gate, receiver
        return receiver

    def forward_alerts(self) -> list[Notification]:
        """Hand the storm gate's due groups to `submit`: a new group starts (or joins) an incident, more alerts join."""
        if self.gate is None:
            return []
        return self.gate.forward(self._submit_alert)

    def _submit_alert(self, trigger: Trigger) -> None:
        try:
            self.submit(trigger)
        except SregraphError as exc:
            # The gate has let go of it; Alertmanager's next notification for the group brings it back.
            self.engine.metrics.errors.labels("alerts").inc()
            log.error("alert %s/%s not routed: %s", trigger.service, trigger.signal, exc)

    def stop_alerts(self) -> None:
        """Stop taking webhooks (idempotent)."""
        if self.receiver is not None:
            self.receiver.stop()

    def run(self, once: bool = False, interval: float = 2.0) -> None:
        """Resume, then scan every `interval` seconds until stopped; `once`: one scan, then finish every run."""
        # Signal handlers belong to the main thread; a worker run in a thread (the demo) is stopped by flag.
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, self._on_term) if main else None
        self.start_jobs()
        try:
            if self.jobs is None:
                self.resume_unfinished(wait=False)
            loops = 0
            while not self.stopping:
                try:
                    self.adopt()
                    self.handle_commands()
                    if loops % ISSUE_POLL_EVERY == 0:
                        self.handle_new_issues()
                    loops += 1
                    self.forward_alerts()
                    self.scan()
                    if self.escalator is not None:
                        self.escalator.tick()
                except SregraphError as exc:
                    # A flaky backend must not kill a worker meant to run for months; the next loop retries.
                    self.engine.metrics.errors.labels("scan").inc()
                    log.error("scan failed: %s", exc)
                self.health.beat()
                self.engine.metrics.last_scan.set_to_current_time()
                if once:
                    break
                self.engine.toolbox.clock.sleep(interval)
            self.stop_alerts()
            self.wait_idle()
        finally:
            self.stop_alerts()
            if main:
                signal.signal(signal.SIGTERM, previous)
            self._pool.shutdown(wait=True)
            self.stop_jobs()
            self.leases.stop_heartbeat()
            self.engine.close()
