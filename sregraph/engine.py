"""Wires settings, backends and agents together, and runs, resumes and lists incident threads."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.runnables import RunnableConfig
from langgraph.types import Command

from agents.analyst import Analyst
from agents.engineer import Engineer
from agents.librarian import Librarian
from agents.llm import make_chat_model
from agents.observer import Observer
from agents.policy import load_policy
from graphs.checkpoint import open_checkpointer, open_postgres_checkpointer
from graphs.graph import Team, build_graph
from sregraph.config import Settings
from sregraph.observability import Metrics, incident_var
from tools.base import ConfigError, NotFound
from tools.breaker import BreakerHealthChecker
from tools.channels import RoutedNotifier
from tools.display import md
from tools.domain import ApprovalDecision, Trigger
from tools.gitops import ProvenanceStore, signing_key
from tools.incidents import LocalIncidentSurface
from tools.ledger import ActionLedger
from tools.notifier import ConsoleNotifier, IdempotentNotifier, JsonlNotifier, MultiNotifier
from tools.prometheus import PrometheusTelemetry
from tools.sql import Database, PostgresDatabase, SqliteDatabase, open_database
from tools.telemetry import SplitTelemetry
from tools.toolbox import Toolbox

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

log = logging.getLogger("sregraph.engine")

ProgressFn = Callable[[str, str, dict[str, Any]], None]
"""Called with (incident_id, node, update) after every node."""


def new_incident_id(now: float | None = None) -> str:
    """A sortable, unique incident id."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now or time.time()))
    return f"inc-{stamp}-{secrets.token_hex(2)}"


def local_toolbox(settings: Settings, app: Any) -> Toolbox:
    """The embedded default backends around a running local application."""
    # ChromaDB (and PyGithub, for GitHub backends) load when a toolbox is built, not for registry reads.
    from memory.store import PostMortemStore

    data = settings.data_dir
    ledger = ActionLedger(open_database(settings.storage, data, "ledger"))
    routed = [routed_notifier(settings)] if settings.notifications.channels else []
    incidents: Any = LocalIncidentSurface(data / "incidents.db")
    gitops: Any = app.gitops
    gh = settings.github
    if settings.surface == "github" and not gh.repo:
        raise ConfigError("github.repo: set owner/name of the incident repository when surface is github")
    repos = ([gh.repo] if settings.surface == "github" else []) + ([gh.gitops_repo] if gh.gitops_repo else [])
    on_close: list[Callable[[], None]] = [ledger.close]
    if repos:
        from tools.github.client import GitHubClient, check_repo

        for repo in repos:
            check_repo(repo)  # a malformed name is reported before a missing token
        # One client for both backends: one token, one connection pool, one rate-limit budget, one breaker.
        client = GitHubClient(base_url=gh.base_url, timeout=gh.timeout_s)
        on_close.append(client.close)
        if settings.surface == "github":
            from tools.github.issues import GitHubIncidentSurface

            incidents = GitHubIncidentSurface(gh.repo, client=client)
        if gh.gitops_repo:
            from tools.github.gitops import GitHubGitOps

            gitops = GitHubGitOps(
                gh.gitops_repo,
                deploy_branch=gh.deploy_branch,
                incident_repo=gh.repo or None,
                # sregraph's own commits are recognised by this key's signature or by this ledger, across restarts.
                key=signing_key(data),
                provenance=ProvenanceStore(data / "provenance.db"),
                client=client,
            )
    return Toolbox(
        telemetry=telemetry_for(settings, app.telemetry),
        runtime=app.runtime,
        incidents=incidents,
        gitops=gitops,
        # Each notification once, even when a step runs again after a crash.
        notifier=IdempotentNotifier(
            MultiNotifier(ConsoleNotifier(), JsonlNotifier(data / "notifications.jsonl"), *routed), ledger
        ),
        # A hung endpoint stops costing a probe timeout per poll (refusals are cheap and always probed, so a
        # restart's one-second gap is not stretched into the circuit's timeout); the engineer resets it after acting.
        health=BreakerHealthChecker(app.health, slow_probe_s=0.25),
        deployer=app,
        ledger=ledger,
        topology=app.topology,
        memory=PostMortemStore(data / "memory"),
        on_close=on_close,
    )


def incident_labels(settings: Settings) -> Callable[[str], dict[str, str]]:
    """What notifications are routed on, per incident: its trigger's service, severity and source (as the run
    registry has them)."""

    def labels_of(incident_id: str) -> dict[str, str]:
        # Opened per call: notifications are rare, and a Postgres handle held here would outlive the engine.
        registry = RunRegistry(open_database(settings.storage, settings.data_dir, "runs"))
        try:
            trigger = registry.trigger(incident_id)
        finally:
            registry.close()
        if trigger is None:
            return {}
        return {
            "service": trigger.service or "",
            "severity": trigger.labels.get("severity", ""),
            "source": trigger.source,
        }

    return labels_of


def routed_notifier(settings: Settings) -> Any:
    """The configured channels behind the routing tree."""
    config = settings.notifications
    channels = {name: channel.build() for name, channel in config.channels.items()}
    return RoutedNotifier(channels, config.route, incident_labels(settings), config.repeat_interval_s)


def telemetry_for(settings: Settings, local: Any) -> Any:
    """The agents' telemetry: the local store, or Prometheus for metrics with the local store for logs and spans."""
    tc = settings.telemetry
    if tc.backend == "local":
        return local
    try:
        prometheus = PrometheusTelemetry(
            tc.prometheus_url, timeout_s=tc.timeout_s, rate_window=tc.rate_window
        )
    except ValueError as exc:
        raise ConfigError(f"telemetry: {exc}") from exc
    return SplitTelemetry(prometheus, local)


def build_team(settings: Settings, toolbox: Toolbox, chat_model: BaseChatModel | None = None) -> Team:
    """The four agents; an LLM brain only when configured (or a model is injected, as tests do)."""
    if chat_model is None and settings.brain == "llm":
        chat_model = make_chat_model(settings.llm)
    policy = load_policy(settings.policy_file)
    return Team(
        toolbox=toolbox,
        observer=Observer(toolbox, settings.observer, chat_model, settings.llm),
        analyst=Analyst(toolbox, settings.analyst, settings.observer, chat_model, settings.llm),
        engineer=Engineer(
            toolbox, policy, settings.engineer, settings.analyst, settings.observer, chat_model, settings.llm
        ),
        librarian=Librarian(toolbox, chat_model, settings.llm),
    )


REGISTRY_MIGRATIONS = [
    """
CREATE TABLE IF NOT EXISTS runs (incident_id TEXT PRIMARY KEY, created_at DOUBLE PRECISION, trigger TEXT,
    status TEXT, updated_at DOUBLE PRECISION);
CREATE TABLE IF NOT EXISTS attached_alerts (incident_id TEXT NOT NULL, key TEXT NOT NULL, trigger TEXT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (incident_id, key));
CREATE TABLE IF NOT EXISTS acknowledgements (incident_id TEXT PRIMARY KEY, by TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL)
""",
    "CREATE INDEX IF NOT EXISTS runs_created ON runs (created_at); "
    "CREATE INDEX IF NOT EXISTS runs_status ON runs (status)",
    # Whether the thread has run to its end: a status is final from the verification or the escalation on, while
    # the post-mortem step may still be ahead (and must be resumed if the worker dies there).
    "ALTER TABLE runs ADD COLUMN ended INTEGER NOT NULL DEFAULT 0; "
    "CREATE INDEX IF NOT EXISTS runs_ended ON runs (ended)",
]
"""The run registry's schema, one script per version (tools.sql's migrations)."""


class RunRegistry:
    """Which incident threads exist and how they ended, for listing and for resuming after a crash."""

    def __init__(self, db: Database | Path) -> None:
        self.db: Database = SqliteDatabase(db) if isinstance(db, Path) else db
        self.db.migrate("registry", REGISTRY_MIGRATIONS)

    def close(self) -> None:
        """Release the database handle."""
        self.db.close()

    def acknowledge(self, incident_id: str, by: str, at: float | None = None) -> bool:
        """Record that a human took the incident (it stops paging); False if someone already had."""
        with self.db.connect() as conn:
            done = conn.execute(
                "INSERT INTO acknowledgements VALUES (?, ?, ?) ON CONFLICT (incident_id) DO NOTHING",
                (incident_id, by, time.time() if at is None else at),
            ).rowcount
        return bool(done)

    def acknowledgement(self, incident_id: str) -> dict[str, Any] | None:
        """Who acknowledged the incident and when, or None."""
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT by, at FROM acknowledgements WHERE incident_id = ?", (incident_id,)
            ).fetchone()
        return {"by": row[0], "at": row[1]} if row else None

    def record(self, incident_id: str, trigger: Trigger | None, status: str) -> None:
        """Insert or update a run."""
        now = time.time()
        with self.db.connect() as conn:
            conn.execute(
                "INSERT INTO runs (incident_id, created_at, trigger, status, updated_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (incident_id) DO UPDATE SET status = excluded.status,"
                " updated_at = excluded.updated_at",
                (incident_id, now, trigger.model_dump_json() if trigger else "{}", status, now),
            )

    def trigger(self, incident_id: str) -> Trigger | None:
        """The trigger a run started with (None if unknown)."""
        with self.db.read() as conn:
            row = conn.execute("SELECT trigger FROM runs WHERE incident_id = ?", (incident_id,)).fetchone()
        if not row or row[0] in ("", "{}"):
            return None
        return Trigger.model_validate_json(row[0])

    def exists(self, incident_id: str) -> bool:
        """Whether a run with this id was ever registered."""
        with self.db.read() as conn:
            row = conn.execute("SELECT 1 FROM runs WHERE incident_id = ?", (incident_id,)).fetchone()
        return row is not None

    def attach(self, incident_id: str, key: str, trigger: Trigger) -> bool:
        """Remember an alert that joined a run; False if this alert was already attached."""
        with self.db.connect() as conn:
            cur = conn.execute(
                "INSERT INTO attached_alerts VALUES (?, ?, ?, ?) ON CONFLICT (incident_id, key) DO NOTHING",
                (incident_id, key, trigger.model_dump_json(), time.time()),
            )
            added = bool(cur.rowcount == 1)
        return added

    def attached(self, incident_id: str) -> list[tuple[str, Trigger]]:
        """The alerts that joined a run, oldest first, with their keys."""
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT key, trigger FROM attached_alerts WHERE incident_id = ? ORDER BY received_at, key",
                (incident_id,),
            ).fetchall()
        return [(r[0], Trigger.model_validate_json(r[1])) for r in rows]

    def mark_ended(self, incident_id: str, ended: bool = True) -> None:
        """Record whether the run's thread has reached its end (no step left)."""
        with self.db.connect() as conn:
            conn.execute("UPDATE runs SET ended = ? WHERE incident_id = ?", (int(ended), incident_id))

    def active(self) -> list[str]:
        """Runs whose thread has steps left and that do not wait for a human, oldest first (a final status is not
        enough: the post-mortem comes after it)."""
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT incident_id FROM runs WHERE ended = 0 AND status <> 'awaiting_approval' "
                "ORDER BY created_at, incident_id"
            ).fetchall()
        return [r[0] for r in rows]

    def list(self) -> list[dict[str, Any]]:
        """All runs, newest first."""
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT incident_id, created_at, trigger, status, updated_at FROM runs "
                "ORDER BY created_at DESC, incident_id DESC"
            ).fetchall()
        return [
            {
                "incident_id": r[0],
                "created_at": r[1],
                "trigger": json.loads(r[2]),
                "status": r[3],
                "updated_at": r[4],
            }
            for r in rows
        ]


FINAL = {"healthy", "resolved", "escalated"}


def _one_line(text: str | None, limit: int) -> str:
    """Whitespace (newlines included) collapsed, control characters dropped, clipped to `limit`."""
    flat = " ".join("".join(c for c in str(text or "") if c.isprintable() or c.isspace()).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def alert_key(trigger: Trigger) -> str:
    """Idempotency key of an alert attached to a run: a redelivered alert gets the same key."""
    return hashlib.sha256(trigger.model_dump_json().encode()).hexdigest()[:16]


class Engine:
    """Runs incident threads on a compiled graph with the durable checkpointer."""

    def __init__(
        self,
        settings: Settings,
        toolbox: Toolbox,
        chat_model: BaseChatModel | None = None,
        progress: ProgressFn | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.toolbox = toolbox
        self.team = build_team(settings, toolbox, chat_model)
        self._checkpoint_db: Database | None = None
        if settings.storage.backend == "postgres":
            self._checkpoint_db = open_database(settings.storage, settings.data_dir, "checkpoints")
            assert isinstance(self._checkpoint_db, PostgresDatabase)
            self.checkpointer: Any = open_postgres_checkpointer(self._checkpoint_db)
        else:
            self.checkpointer = open_checkpointer(settings.checkpoint_db)
        self.graph = build_graph().compile(checkpointer=self.checkpointer)
        self.registry = RunRegistry(open_database(settings.storage, settings.data_dir, "runs"))
        self.progress = progress
        self.metrics = metrics or Metrics()
        self.should_stop: Callable[[], bool] = lambda: False

    def _config(self, incident_id: str) -> RunnableConfig:
        return {"configurable": {"thread_id": incident_id}}

    def _drive(self, incident_id: str, payload: Any) -> dict[str, Any]:
        token = incident_var.set(incident_id)
        self.metrics.open_incidents.inc()
        tokens_before = self._tokens(incident_id)
        step_started = time.monotonic()
        try:
            # durability="sync": each step's checkpoint is on disk before the next step starts, so a kill at
            # any moment loses at most the step in flight (about 2.5 ms more per step than "async").
            stream = self.graph.stream(
                payload,
                self._config(incident_id),
                context=self.team,
                stream_mode="updates",
                durability="sync",
            )
            for chunk in stream:
                for node, update in chunk.items():
                    if node == "__interrupt__":
                        self.registry.record(incident_id, None, "awaiting_approval")
                        if self.progress is not None:
                            self.progress(incident_id, node, {})
                        continue
                    now = time.monotonic()
                    self.metrics.observe_update(node, update or {}, now - step_started)
                    step_started = now
                    log.info("step %s done", node)
                    if isinstance(update, dict) and update.get("issue_id") is not None:
                        self._post_attached(incident_id, int(update["issue_id"]))
                    if self.progress is not None:
                        self.progress(incident_id, node, update or {})
                    if isinstance(update, dict) and update.get("status"):
                        self.registry.record(incident_id, None, update["status"])
                # Between steps, a stop request leaves the thread at a checkpoint the next start resumes.
                if self.should_stop():
                    log.info("stopping at a step boundary; the incident resumes on the next start")
                    break
        except Exception:
            self.metrics.errors.labels("graph").inc()
            log.exception("incident run failed")
            raise
        finally:
            self.metrics.open_incidents.dec()
            incident_var.reset(token)
        self.metrics.llm_tokens.inc(max(0, self._tokens(incident_id) - tokens_before))
        state = self.state(incident_id)
        self.sync_registry(incident_id, state)
        return state

    def sync_registry(self, incident_id: str, state: dict[str, Any], known: str | None = None) -> None:
        """Make the registry's status the checkpoint's: a process killed after a step's checkpoint and before its
        streamed update leaves the registry one step behind (a finished incident would look busy forever)."""
        status = "awaiting_approval" if state["waiting"] else state.get("status")
        if status and status != known:
            self.registry.record(incident_id, None, status)
        if not state["next"]:
            self.registry.mark_ended(incident_id)

    def _tokens(self, incident_id: str) -> int:
        try:
            return int(self.state(incident_id).get("tokens", 0) or 0)
        except NotFound:
            return 0

    def new_id(self) -> str:
        """A fresh incident id no run has used."""
        while True:
            incident_id = new_incident_id(self.toolbox.clock.now())
            if not self.registry.exists(incident_id):
                return incident_id

    def attach_alert(self, incident_id: str, trigger: Trigger) -> bool:
        """Add an alert to an incident in progress instead of starting another; noted on its issue once it has one.

        Returns False for an alert already attached (a redelivery). Safe from any thread: the note is keyed.
        """
        if self.registry.trigger(incident_id) == trigger:
            return False  # a redelivery of the alert that started the incident
        added = self.registry.attach(incident_id, alert_key(trigger), trigger)
        try:
            issue_id = self.state(incident_id).get("issue_id")
        except NotFound:
            issue_id = None
        if issue_id is not None:
            self._post_attached(incident_id, int(issue_id))
        return added

    def _post_attached(self, incident_id: str, issue_id: int) -> None:
        for key, trigger in self.registry.attached(incident_id):
            what = " ".join(
                x for x in (trigger.signal, f"on {trigger.service}" if trigger.service else "") if x
            )
            # Alert text is data written by whoever writes alert rules: one quoted line, never a line of its own
            # that a reader (or a command parser) could take for a slash command.
            # The alert's name sits in a code span (inert Markdown); its summary is escaped.
            body = (
                "Another alert joined this incident: "
                f"`{_one_line(what or trigger.source, 120).replace('`', chr(39))}`\n\n> "
                + (md(_one_line(trigger.summary, 300)) or "(no summary)")
            )
            self.toolbox.incidents.comment(issue_id, body, key=f"{incident_id}/alert-{key}")

    def incident_for_alert(self, trigger: Trigger) -> str | None:
        """The incident in progress that an alert belongs to (same service, or same fingerprint), if any."""
        fingerprint = trigger.labels.get("fingerprint")
        if trigger.service is None and fingerprint is None:
            return None
        for run in self.registry.list():
            if run["status"] in FINAL:
                continue
            started = run["trigger"]
            labels = started.get("labels") or {}
            if (trigger.service is not None and started.get("service") == trigger.service) or (
                fingerprint is not None and labels.get("fingerprint") == fingerprint
            ):
                return str(run["incident_id"])
        return None

    def start(self, trigger: Trigger, incident_id: str | None = None) -> dict[str, Any]:
        """Run a new incident thread until it ends or waits for a human; a thread of that id that already has a
        checkpoint (another worker took it first) is continued, never started over."""
        incident_id = incident_id or self.new_id()
        try:
            self.state(incident_id)
        except NotFound:
            pass
        else:
            return self._drive(incident_id, None)
        self.registry.record(incident_id, trigger, "observing")
        return self._drive(incident_id, {"incident_id": incident_id, "trigger": trigger})

    def decide(self, incident_id: str, decision: ApprovalDecision) -> dict[str, Any]:
        """Resume a thread paused at the approval gate with a human decision."""
        if not self.pending_approval(incident_id):
            raise NotFound(f"incident {incident_id} is not waiting for an approval")
        # No longer waiting as far as the registry goes: if this process dies before the next status, another
        # worker adopts the thread (a registry left at awaiting_approval would hide it from adoption for ever).
        self.registry.record(incident_id, None, str(self.state(incident_id).get("status") or "deciding"))
        return self._drive(incident_id, Command(resume=decision.model_dump()))

    def resume(self, incident_id: str) -> dict[str, Any]:
        """Continue a thread from its last checkpoint (after a crash or restart)."""
        try:
            self.state(incident_id)
        except NotFound:
            trigger = self.registry.trigger(incident_id)
            if trigger is None:
                raise
            # Killed before the first checkpoint: start over with the same id and trigger.
            return self._drive(incident_id, {"incident_id": incident_id, "trigger": trigger})
        return self._drive(incident_id, None)

    def state(self, incident_id: str) -> dict[str, Any]:
        """The thread's current values, plus `next` (nodes still to run) and `waiting` (an approval)."""
        snapshot = self.graph.get_state(self._config(incident_id))
        if not snapshot.values and not snapshot.next:
            raise NotFound(f"no incident {incident_id}")
        values = dict(snapshot.values)
        values["next"] = list(snapshot.next)
        values["waiting"] = any(t.interrupts for t in snapshot.tasks)
        return values

    def pending_approval(self, incident_id: str) -> bool:
        """Whether the thread waits at the approval gate."""
        try:
            return bool(self.state(incident_id)["waiting"])
        except NotFound:
            return False

    def unfinished(self) -> Iterator[str]:
        """Threads that stopped mid-way (not finished, not waiting for a human).

        Includes runs registered but killed before their first checkpoint: `resume` restarts those.
        """
        for run in self.registry.list():
            try:
                state = self.state(run["incident_id"])
            except NotFound:
                if run["status"] == "observing":
                    yield run["incident_id"]
                continue
            self.sync_registry(run["incident_id"], state, run["status"])
            if state["next"] and not state["waiting"]:
                yield run["incident_id"]

    def incident_for_issue(self, issue_id: int) -> str | None:
        """The newest incident thread attached to an issue of the surface."""
        for run in self.registry.list():
            try:
                if self.state(run["incident_id"]).get("issue_id") == issue_id:
                    return str(run["incident_id"])
            except NotFound:
                continue
        return None

    def in_progress_services(self) -> set[str]:
        """Services named by incidents not yet finished (including those waiting for approval)."""
        busy = set()
        for run in self.registry.list():
            if run["status"] not in FINAL and run["trigger"].get("service"):
                busy.add(run["trigger"]["service"])
        return busy

    def close(self) -> None:
        """Close the checkpointer's connection (or give back its pool) and the registry's handle."""
        if self._checkpoint_db is not None:
            self._checkpoint_db.close()
        else:
            self.checkpointer.conn.close()
        self.registry.close()
