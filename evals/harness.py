"""A synthetic world the worker runs in, for the worker tests and the worker, API, dashboard and scale-out
benchmarks.

Everything the agents touch is real (LocalTelemetryStore, LocalIncidentSurface, LocalGitOps, ActionLedger,
the engine and the worker) except the services themselves: a SQLite table of running/restarts/fault per
service, whose telemetry is written as the simulated clock advances. Clock, services and their history live
in files, so a worker stopped and restarted on the same directory continues the same world.

    python -m evals.harness DIR           # run (or continue) every scenario, then exit 0
    python -m evals.harness --serve DIR   # one of several workers: adopt incidents until DIR/stop exists

`HARNESS_DSN` puts checkpoints, ledger, run registry and leases in that Postgres database instead of SQLite
files (`HARNESS_LEASE_TTL` seconds per lease). The world (services, telemetry, issues, PRs) stays in files.
`run` and `serve` take an `instrument(world, engine)` callback, called once the engine is built: the tests
use it to stop the process at chosen points (`World.after_change` hears every change the world makes, after it
is made).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sregraph.config import Settings, load_settings
from sregraph.engine import FINAL, Engine
from sregraph.leases import Leases
from sregraph.worker import Worker
from tools.base import HealthResult, NotFound, PullRequest, ServiceStatus, Span
from tools.domain import ApprovalDecision, Trigger
from tools.gitops import LocalGitOps
from tools.incidents import LocalIncidentSurface
from tools.ledger import ActionLedger
from tools.notifier import IdempotentNotifier, JsonlNotifier
from tools.sql import open_database
from tools.telemetry import LocalTelemetryStore
from tools.toolbox import Toolbox

T0 = 1_700_000_000.0
STEP = 0.5
TOPOLOGY = {"frontend": ["checkout", "search"], "checkout": ["payments"], "payments": [], "search": []}
NORMAL = {
    "request_rate": 15.0,
    "error_ratio": 0.0,
    "latency_p95_ms": 12.0,
    "memory_rss_mb": 40.0,
    "cpu_percent": 5.0,
}
GOOD_VERSION = "1.4.0"
BAD_VERSION = "2.0.0-rc1"
POLICY = {
    "defaults": {
        "allowed": ["restart", "start", "rollback"],
        "max_attempts": 3,
        "cooldown_s": 0,
        "auto_merge": True,
    },
    "services": {
        "frontend": {"allowed": [], "cooldown_s": 0},
        "search": {"allowed": ["restart"], "require_approval": ["restart"], "cooldown_s": 0},
    },
}
SETTINGS: dict[str, Any] = {
    "observer": {
        "window_s": 6,
        "baseline_s": 30,
        "confirm_polls": 2,
        "confirm_s": 1.0,
        "poll_s": 0.5,
        "detect_timeout_s": 3,
    },
    "engineer": {"verify_timeout_s": 8, "stable_checks": 3, "verify_poll_s": 0.5},
}


@dataclass(frozen=True)
class Scenario:
    """One fault (or none) on a service, how the worker hears of it, and the end it must reach."""

    fault: str | None
    service: str
    via: str = "scan"
    sticky: int = 0
    """Restarts that do not fix the fault (the first verification fails, the next attempt works)."""
    expect: tuple[str, ...] = field(default_factory=tuple)
    """Final status, then the kinds of the actions taken, in order."""


SCENARIOS = [
    Scenario("crash", "payments", expect=("resolved", "restart")),
    Scenario("latency", "checkout", expect=("resolved", "restart")),
    Scenario("bad_deploy", "payments", expect=("resolved", "rollback")),
    Scenario("memory_leak", "checkout", expect=("resolved", "restart")),
    # The restart does not help; the second analysis finds nothing it can act on, so a human takes over.
    Scenario("latency", "checkout", sticky=1, expect=("escalated", "restart")),
    Scenario(None, "checkout", via="alert", expect=("healthy",)),
    Scenario("crash", "frontend", expect=("escalated",)),
    Scenario("latency", "search", expect=("resolved", "restart")),
    Scenario("crash", "checkout", expect=("resolved", "restart")),
    Scenario("error_spike", "checkout", expect=("resolved", "restart")),
    Scenario("bad_deploy", "checkout", expect=("resolved", "rollback")),
]


def _noise(service: str, name: str, t: float) -> float:
    """Deterministic ±5% jitter, the same for the same sample whichever process writes it."""
    seed = (int(round(t / STEP)) * 7919 + sum(map(ord, service + name)) * 104729) % 1000
    return (seed / 1000 - 0.5) / 10


Instrument = Callable[["World", Engine], None]
"""Called by `run` and `serve` with the world and the engine, once both are built."""


def _unheard(kind: str) -> None:
    """The default `World.after_change`: nobody listens."""


class World:
    """Services, clock and telemetry on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.db = root / "world.db"
        self.telemetry = LocalTelemetryStore(root / "telemetry.db")
        self._lock = threading.RLock()
        self.after_change: Callable[[str], None] = _unheard
        """Called with the kind of every change (restart, start, apply, propose, merge, notify), after it."""
        with closing(self._conn()) as conn:
            self.t = float(self._get(conn, "t") or T0)

    @classmethod
    def create(cls, root: Path) -> World:
        """A new world with 45 s of normal telemetry behind it."""
        root.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(root / "world.db")) as conn, conn:
            conn.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT)")
            conn.execute(
                "CREATE TABLE services (name TEXT PRIMARY KEY, running INT, restarts INT, fault TEXT, fault_at REAL,"
                " sticky INT, version TEXT)"
            )
            conn.execute(
                "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT, service TEXT, at REAL)"
            )
            conn.executemany(
                "INSERT INTO services VALUES (?, 1, 0, NULL, NULL, 0, ?)",
                [(s, GOOD_VERSION) for s in TOPOLOGY],
            )
            conn.execute("INSERT INTO kv VALUES ('t', ?), ('sampled', ?)", (str(T0), str(T0)))
        world = cls(root)
        LocalGitOps.init(
            root / "gitops", {s: {"version": GOOD_VERSION} for s in TOPOLOGY}, clock=WorldClock(world)
        )
        world.advance(45)
        return world

    def _conn(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db, timeout=10, isolation_level=None)
        conn.row_factory = sqlite3.Row
        return conn

    @staticmethod
    def _get(conn: sqlite3.Connection, key: str) -> str | None:
        row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def current(self) -> float:
        """The clock as stored (another process may have moved it)."""
        with self._lock, closing(self._conn()) as conn:
            self.t = float(self._get(conn, "t") or T0)
            return self.t

    def get(self, key: str) -> str | None:
        """A driver flag or value."""
        with closing(self._conn()) as conn:
            return self._get(conn, key)

    def put(self, key: str, value: str) -> None:
        """Set a driver flag or value."""
        with closing(self._conn()) as conn:
            conn.execute(
                "INSERT INTO kv VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def services(self) -> dict[str, sqlite3.Row]:
        """Every service's row."""
        with closing(self._conn()) as conn:
            return {r["name"]: r for r in conn.execute("SELECT * FROM services")}

    def events(self) -> list[tuple[str, str]]:
        """(kind, service) of every restart and apply, in order."""
        with closing(self._conn()) as conn:
            return [
                (r["kind"], r["service"])
                for r in conn.execute("SELECT kind, service FROM events ORDER BY seq")
            ]

    # ------------------------------------------------------------------ time and telemetry

    def advance(self, seconds: float) -> None:
        """Move the clock, writing the telemetry the services produce meanwhile (samples first, then the clock)."""
        with self._lock:
            with closing(self._conn()) as conn:
                end = float(self._get(conn, "t") or T0) + seconds
                sampled = float(self._get(conn, "sampled") or T0)
                rows = {r["name"]: r for r in conn.execute("SELECT * FROM services")}
                batch: list[tuple[str, dict[str, str], float, float]] = []
                spans: list[Span] = []
                t = sampled + STEP
                last = sampled
                while t <= end + 1e-9:
                    for service, row in rows.items():
                        batch.extend(self._samples(service, row, rows, t))
                        if row["fault"] in ("error_spike", "bad_deploy") and row["running"]:
                            spans.append(
                                Span(
                                    trace_id=f"{service}-{t}",
                                    span_id=f"{service}-{t}",
                                    service=service,
                                    name="req",
                                    start=t,
                                    duration_ms=5,
                                    status="error",
                                )
                            )
                    last = t
                    t += STEP
                if batch:
                    self.telemetry.write_metrics(batch)
                if spans:
                    self.telemetry.write_spans(spans)
                conn.execute("UPDATE kv SET value = ? WHERE key = 'sampled'", (str(last),))
                conn.execute("UPDATE kv SET value = ? WHERE key = 't'", (str(end),))
            self.t = end

    def _samples(
        self, service: str, row: sqlite3.Row, rows: dict[str, sqlite3.Row], t: float
    ) -> list[tuple[str, dict[str, str], float, float]]:
        if not row["running"]:
            return []  # a dead process reports nothing
        values = {name: normal * (1 + _noise(service, name, t)) for name, normal in NORMAL.items()}
        fault = row["fault"]
        if fault == "latency":
            values["latency_p95_ms"] = 400.0
        elif fault in ("error_spike", "bad_deploy"):
            values["error_ratio"] = 0.5
        elif fault == "memory_leak":
            values["memory_rss_mb"] += 40.0 * (t - float(row["fault_at"]))
        if any(not rows[dep]["running"] for dep in TOPOLOGY[service]):
            values["error_ratio"] = 1.0  # its dependency is down
        return [(name, {"service": service}, value, t) for name, value in values.items()]

    # ------------------------------------------------------------------ faults

    def inject(self, scenario: Scenario, gitops: LocalGitOps) -> None:
        """Start a scenario's fault (idempotent), and let it run for 10 s."""
        if scenario.fault == "bad_deploy" and gitops.config(scenario.service).get("version") == GOOD_VERSION:
            gitops.commit_config(
                scenario.service, {"version": BAD_VERSION}, f"{scenario.service} {BAD_VERSION}", kind="deploy"
            )
            self.advance(3)  # the deploy shortly before the trouble
        if scenario.fault is not None:
            now = self.current()
            with closing(self._conn()) as conn:
                conn.execute(
                    "UPDATE services SET fault = ?, fault_at = ?, sticky = ?, running = ?, version = ? WHERE name = ?"
                    " AND fault IS NULL",
                    (
                        scenario.fault,
                        now,
                        scenario.sticky,
                        int(scenario.fault != "crash"),
                        BAD_VERSION if scenario.fault == "bad_deploy" else GOOD_VERSION,
                        scenario.service,
                    ),
                )
        self.advance(10)

    def repair(self, gitops: LocalGitOps) -> None:
        """What a human does after an escalation: every service back to normal (not counted as agent actions)."""
        for service in TOPOLOGY:
            if gitops.config(service).get("version") != GOOD_VERSION:
                gitops.commit_config(
                    service, {"version": GOOD_VERSION}, f"{service} back to {GOOD_VERSION}", kind="deploy"
                )
        with closing(self._conn()) as conn:
            conn.execute(
                "UPDATE services SET running = 1, fault = NULL, sticky = 0, version = ?", (GOOD_VERSION,)
            )

    # ------------------------------------------------------------------ what the agents call

    def restart(self, service: str, kind: str = "restart", version: str | None = None) -> ServiceStatus:
        """Restart (or apply the config to) a service: it comes back, and the fault goes unless it is sticky."""
        now = self.current()
        with self._lock, closing(self._conn()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT * FROM services WHERE name = ?", (service,)).fetchone()
            if row is None:
                conn.execute("ROLLBACK")
                raise NotFound(f"no service {service!r}")
            fault, sticky = row["fault"], int(row["sticky"])
            version = version or row["version"]
            if version == BAD_VERSION:
                fault = "bad_deploy"  # (re)deploying the bad version brings its fault (back)
            elif fault == "bad_deploy":
                fault = None
            elif fault is not None and sticky > 0:
                sticky -= 1
            else:
                fault = None
            conn.execute(
                "UPDATE services SET running = 1, restarts = restarts + 1, fault = ?, sticky = ?, version = ?,"
                " fault_at = ? WHERE name = ?",
                (fault, sticky, version, now, service),
            )
            conn.execute("INSERT INTO events (kind, service, at) VALUES (?, ?, ?)", (kind, service, now))
            conn.execute("COMMIT")
        self.after_change(kind)
        return self.status(service)

    def status(self, service: str) -> ServiceStatus:
        """The runtime's view of a service."""
        row = self.services().get(service)
        if row is None:
            raise NotFound(f"no service {service!r}")
        running = bool(row["running"])
        return ServiceStatus(
            service=service,
            running=running,
            restarts=int(row["restarts"]),
            version=row["version"],
            exit_code=None if running else -9,
        )


class WorldClock:
    """The simulated clock: sleeping advances the world."""

    def __init__(self, world: World) -> None:
        self.world = world

    def now(self) -> float:
        """Simulated time (as the last process to move it left it: several workers may take turns)."""
        return self.world.current()

    def sleep(self, seconds: float) -> None:
        """Advance simulated time (and write the telemetry of the interval)."""
        self.world.advance(seconds)


class WorldRuntime:
    """Runtime over the world's service table."""

    def __init__(self, world: World) -> None:
        self.world = world

    def services(self) -> list[str]:
        """Every service."""
        return list(TOPOLOGY)

    def status(self, service: str) -> ServiceStatus:
        """One service's status."""
        return self.world.status(service)

    def restart(self, service: str) -> ServiceStatus:
        """Restart a service."""
        return self.world.restart(service)

    def start(self, service: str) -> ServiceStatus:
        """Start a service (a restart here)."""
        return self.world.restart(service, kind="start")

    def stop(self, service: str) -> ServiceStatus:
        """Not used by the agents."""
        raise NotImplementedError

    def scale(self, service: str, replicas: int) -> ServiceStatus:
        """Not used by the agents."""
        raise NotImplementedError

    def logs(self, service: str, tail: int = 100) -> list[str]:
        """No process logs in the synthetic world."""
        return []


class WorldHealth:
    """A health probe answers while the process runs."""

    def __init__(self, world: World) -> None:
        self.world = world

    def check(self, service: str) -> HealthResult:
        """Probe one service."""
        ok = self.world.status(service).running
        return HealthResult(service=service, ok=ok, detail="" if ok else "connection refused")


class WorldDeployer:
    """Applies the merged config: a restart with the config's version."""

    def __init__(self, world: World, gitops: LocalGitOps) -> None:
        self.world, self.gitops = world, gitops

    def apply(self, service: str) -> ServiceStatus:
        """Restart `service` on its config from main."""
        return self.world.restart(
            service, kind="apply", version=str(self.gitops.config(service).get("version"))
        )


class WorldGitOps(LocalGitOps):
    """LocalGitOps that tells the world after each propose and merge (`World.after_change`)."""

    world: World

    def propose(self, *args: Any, **kwargs: Any) -> PullRequest:
        """Propose, then tell the world."""
        pr = super().propose(*args, **kwargs)
        self.world.after_change("propose")
        return pr

    def merge(self, pr_id: int) -> PullRequest:
        """Merge, then tell the world."""
        pr = super().merge(pr_id)
        self.world.after_change("merge")
        return pr


class WorldNotifier(JsonlNotifier):
    """JsonlNotifier that tells the world after each notification: written to the file, not yet in the ledger."""

    world: World

    def notify(self, incident_id: str, event: str, text: str) -> None:
        """Notify, then tell the world."""
        super().notify(incident_id, event, text)
        self.world.after_change("notify")


def settings_for(root: Path, max_concurrent: int = 1) -> Settings:
    """Settings of a harness directory."""
    policy = root / "policy.yaml"
    if not policy.exists():
        policy.write_text(yaml.safe_dump(POLICY))
    dsn = os.environ.get("HARNESS_DSN")
    storage: dict[str, Any] = {}
    if dsn:
        storage = {
            "backend": "postgres",
            "dsn": dsn,
            "lease_ttl_s": float(os.environ.get("HARNESS_LEASE_TTL", "15")),
            "job_queue": os.environ.get("HARNESS_JOBS", "none"),
        }
    return load_settings(
        environ={},
        data_dir=root / "data",
        policy_file=policy,
        worker={"max_concurrent": max_concurrent},
        storage=storage,
        **SETTINGS,
    )


def toolbox_for(world: World) -> Toolbox:
    """Real local backends around the synthetic services."""
    clock = WorldClock(world)
    gitops = WorldGitOps(world.root / "gitops", clock=clock)
    gitops.world = world
    ledger = ActionLedger(open_database(settings_for(world.root).storage, world.root, "ledger"))
    notifier = WorldNotifier(world.root / "notifications.jsonl", clock=clock)
    notifier.world = world
    return Toolbox(
        telemetry=world.telemetry,
        runtime=WorldRuntime(world),
        incidents=LocalIncidentSurface(world.root / "incidents.db", clock=clock),
        gitops=gitops,
        notifier=IdempotentNotifier(notifier, ledger, clock=clock),
        health=WorldHealth(world),
        deployer=WorldDeployer(world, gitops),
        ledger=ledger,
        topology=TOPOLOGY,
        clock=clock,
        on_close=[ledger.close],
    )


def _new_runs(engine: Engine, known: set[str]) -> list[dict[str, Any]]:
    return [r for r in engine.registry.list() if r["incident_id"] not in known]


def run(root: Path, scenarios: list[Scenario] = SCENARIOS, instrument: Instrument | None = None) -> None:
    """Run (or continue after a kill) every scenario in order, as a worker in production would meet them."""
    world = World(root)
    toolbox = toolbox_for(world)
    engine = Engine(settings_for(root), toolbox)
    if instrument is not None:
        instrument(world, engine)
    worker = Worker(engine)
    gitops = toolbox.gitops
    assert isinstance(gitops, LocalGitOps)
    try:
        worker.resume_unfinished()
        for k, scenario in enumerate(scenarios):
            if world.get(f"settled-{k}"):
                continue
            if world.get(f"known-{k}") is None:
                world.put(f"known-{k}", json.dumps([r["incident_id"] for r in engine.registry.list()]))
            known = set(json.loads(world.get(f"known-{k}") or "[]"))
            if world.get(f"injected-{k}") is None:
                world.inject(scenario, gitops)
                world.put(f"injected-{k}", "1")
            mine: list[dict[str, Any]] = []
            for _ in range(3):
                if not _new_runs(engine, known):
                    if scenario.via == "alert":
                        worker.submit(
                            Trigger(
                                source="alert",
                                service=scenario.service,
                                signal="HarnessAlert",
                                summary="harness alert",
                                fired_at=world.t,
                            )
                        )
                    elif worker.scan() is None:
                        raise AssertionError(f"scenario {k}: the scan saw nothing")
                worker.wait_idle()
                for r in _new_runs(engine, known):
                    if engine.pending_approval(r["incident_id"]):
                        worker.decide(
                            r["incident_id"], ApprovalDecision(approved=True, by="harness", reason="test")
                        )
                worker.wait_idle()
                mine = _new_runs(engine, known)
                if mine and all(r["status"] in FINAL for r in mine):
                    break
            world.put(f"incidents-{k}", json.dumps(sorted(r["incident_id"] for r in mine)))
            for r in mine:  # the human who takes over an escalation closes its issue once it is fixed
                issue_id = (
                    engine.state(r["incident_id"]).get("issue_id") if r["status"] == "escalated" else None
                )
                if issue_id is not None:
                    toolbox.incidents.close(issue_id)
            world.repair(gitops)
            world.advance(45)  # a clean baseline before the next fault
            world.put(f"settled-{k}", "1")
    finally:
        worker.stopping = True
        worker.wait_idle()
        engine.close()


def summary(root: Path, scenarios: list[Scenario] = SCENARIOS) -> dict[str, Any]:
    """Every outcome and side effect of a harness directory, in a form two runs can be compared in."""
    world = World(root)
    toolbox = toolbox_for(world)
    engine = Engine(settings_for(root), toolbox)
    try:
        outcomes = []
        for k in range(len(scenarios)):
            runs = []
            for incident_id in json.loads(world.get(f"incidents-{k}") or "[]"):
                state = engine.state(incident_id)
                top = state["diagnosis"].top if state.get("diagnosis") else None
                runs.append(
                    {
                        "status": state["status"],
                        "next": state["next"],
                        "root_cause": [top.service, top.fault_type] if top else None,
                        "actions": [
                            [a.action.kind, a.action.service, a.status] for a in state.get("actions", [])
                        ],
                    }
                )
            outcomes.append(runs)
        assert isinstance(toolbox.incidents, LocalIncidentSurface)
        with closing(sqlite3.connect(root / "incidents.db")) as conn:
            keys = conn.execute("SELECT issue_id, key FROM comments ORDER BY id").fetchall()
        issues = [
            {
                "title": i.title,
                "state": i.state,
                "labels": sorted(i.labels),
                "comment_keys": [k for n, k in keys if n == i.id],
            }
            for i in sorted(toolbox.incidents.list_issues("all"), key=lambda i: i.id)
        ]
        gitops = toolbox.gitops
        assert isinstance(gitops, LocalGitOps)
        notifications: dict[str, list[str]] = {}
        path = root / "notifications.jsonl"
        for line in path.read_text().splitlines() if path.exists() else []:
            record = json.loads(line)
            notifications.setdefault(record["incident_id"], []).append(record["event"])
        return {
            "outcomes": outcomes,
            "restarts": {s: int(r["restarts"]) for s, r in sorted(world.services().items())},
            "runtime_calls": [list(e) for e in world.events()],
            "issues": issues,
            "prs": [
                [p.service, p.state, p.key] for p in sorted(gitops.pull_requests("all"), key=lambda p: p.id)
            ],
            "main_commits": int(gitops._git.text("rev-list", "--count", "main")),
            "ledger": sorted([e.key, e.status] for e in toolbox.ledger.all()),
            "notifications": notifications,
            "notification_keys": sorted([key, status] for key, _, status in toolbox.ledger.notifications()),
            "runs": len(engine.registry.list()),
            "unfinished": list(engine.unfinished()),
        }
    finally:
        engine.close()


def serve(root: Path, instrument: Instrument | None = None) -> None:
    """One of several worker processes on a shared Postgres: adopt incidents (queued by the test, or left by a
    killed worker once its lease expires) until DIR/stop exists. Every step it runs is logged to DIR/steps.jsonl
    with this worker's lease owner and the wall-clock time, to be checked against the lease log."""
    world = World(root)
    toolbox = toolbox_for(world)
    settings = settings_for(root)
    steps = root / "steps.jsonl"
    leases_box: list[Leases] = []

    def log_step(incident_id: str, node: str, update: dict[str, Any]) -> None:
        line = json.dumps(
            {"incident_id": incident_id, "node": node, "owner": leases_box[0].owner, "t": time.time()}
        )
        with open(steps, "a") as out:
            out.write(line + "\n")

    engine = Engine(settings, toolbox, progress=log_step)
    if instrument is not None:
        instrument(world, engine)
    # No reaping of this machine's dead workers: each worker stands for a machine of its own, so a dead one's
    # incidents wait for its lease to expire.
    leases = Leases(engine.registry.db, ttl_s=settings.storage.lease_ttl_s, reap_local=False)
    leases_box.append(leases)
    worker = Worker(engine, leases=leases, max_concurrent=int(os.environ.get("HARNESS_THREADS", "2")))
    worker.start_jobs()  # with HARNESS_JOBS=procrastinate: runs come as jobs, and adopt() queues them
    (root / f"ready-{os.getpid()}").write_text(leases.owner)
    try:
        while not (root / "stop").exists():
            worker.adopt()
            time.sleep(0.05)
    finally:
        worker.stopping = True
        worker.stop_jobs()
        worker.wait_idle()
        leases.stop_heartbeat()
        engine.close()
        toolbox.close()


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve(Path(sys.argv[2]))
    else:
        run(Path(sys.argv[1]))
