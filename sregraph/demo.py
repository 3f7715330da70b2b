"""`sregraph demo`: the local app, the worker, and a sequence of faults handled live, with a scorecard.

The worker runs exactly as `sregraph worker` does (scan, open, diagnose, act, verify, document), in a thread
of this process; the demo only injects faults and reads the outcome of each incident from the run registry and
the checkpoints. Nothing in the worker knows which fault was injected.
"""

from __future__ import annotations

import shlex
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sregraph.api_auth import ApiStore
from sregraph.config import Settings
from sregraph.datadir import demo_dir
from sregraph.engine import FINAL, Engine, ProgressFn, local_toolbox
from sregraph.localenv.app import LocalApp
from sregraph.localenv.chaos import FAULTS
from sregraph.localenv.layout import TOPOLOGY
from sregraph.worker import Worker
from tools.base import ConfigError, SregraphError

# (fault, service, params): every chaos fault of the local app, then one repeat that memory should recognise.
DEFAULT_SEQUENCE: list[tuple[str, str, dict[str, Any]]] = [
    ("crash", "payments", {}),
    ("latency", "checkout", {"ms": 400}),
    ("error_rate", "payments", {"ratio": 0.5}),
    ("memory_leak", "checkout", {"mb_per_s": 40}),
    ("bad_deploy", "payments", {}),
    ("dependency_down", "payments", {}),
    ("cpu", "checkout", {"threads": 4}),
    ("conversion_drop", "payments", {}),
    ("crash", "payments", {}),
]
FAULT_TIMEOUT_S = 60.0
SETTLE_S = 5.0
"""Healthy traffic between two faults, so each incident has a clean recent baseline."""
MATCH_GRACE_S = 10.0
"""How long the scorecard waits for the faulted service's own incident once a connected one has finished."""


@dataclass
class FaultResult:
    """One row of the demo's scorecard."""

    fault: str
    service: str
    incident_id: str | None
    detected: bool
    root_cause_service: str | None
    root_cause_correct: bool
    fault_type: str | None
    action: str | None
    recovered: bool
    mttd_s: float | None
    mttr_s: float | None
    memory_hit: str | None
    status: str
    detected_by: str = ""
    """The senses that confirmed the incident (window_z, ensemble:<detector>, health, stale)."""
    action_s: float | None = None
    """How long the incident's actions took to run (a restart or a redeploy on this runtime), summed."""

    @classmethod
    def missed(cls, fault: str, service: str, status: str) -> FaultResult:
        """A fault that never became an incident ("not injected", "not detected")."""
        return cls(fault, service, None, False, None, False, None, None, False, None, None, None, status)


CHAOS_NAMES = {
    "crash": "crash",
    "latency": "latency",
    "error-rate": "error_rate",
    "memory-leak": "memory_leak",
    "bad-deploy": "bad_deploy",
    "dependency-down": "dependency_down",
    "cpu-saturation": "cpu",
    "conversion-drop": "conversion_drop",
    "disk-full": "disk_full",
}
"""The `sregraph chaos` names of the local app's faults."""


def fault_name(name: str) -> str:
    """The app's fault for a chaos name (both spellings accepted); ConfigError naming the choices otherwise."""
    fault = CHAOS_NAMES.get(name, name)
    if fault not in FAULTS or fault == "clear":
        raise ConfigError(f"unknown fault {name!r}; known faults: {', '.join(CHAOS_NAMES)}")
    return fault


def validate(sequence: list[tuple[str, str, dict[str, Any]]]) -> list[tuple[str, str, dict[str, Any]]]:
    """The sequence with canonical fault names; bad faults or services fail before anything starts."""
    checked = []
    for fault, service, params in sequence:
        if service not in TOPOLOGY:
            raise ConfigError(f"unknown service {service!r}; known services: {', '.join(TOPOLOGY)}")
        checked.append((fault_name(fault), service, params))
    return checked


def demo_settings(base: Settings) -> Settings:
    """The demo's settings: its own data dir, short windows, and the demo policy (auto-approved, said so)."""
    policy = resources.files("sregraph").joinpath("demo_policy.yaml")
    return base.model_copy(
        update={
            "data_dir": demo_dir(base.data_dir),
            "policy_file": Path(str(policy)),
            "observer": base.observer.model_copy(
                update={"window_s": 4.0, "baseline_s": 20.0, "detect_timeout_s": 10.0}
            ),
            "engineer": base.engineer.model_copy(update={"verify_timeout_s": 20.0}),
        }
    )


def _outcome(engine: Engine, incident_id: str, fault: str, service: str, injected_at: float) -> FaultResult:
    state = engine.state(incident_id)
    observation, diagnosis, verification = (
        state.get("observation"),
        state.get("diagnosis"),
        state.get("verification"),
    )
    top = diagnosis.top if diagnosis else None
    actions = state.get("actions", [])
    detected = observation is not None and not observation.healthy
    recovered = bool(verification and verification.recovered)
    return FaultResult(
        fault=fault,
        service=service,
        incident_id=incident_id,
        detected=detected,
        root_cause_service=top.service if top else None,
        root_cause_correct=bool(top and top.service == service),
        fault_type=top.fault_type if top else None,
        action=", ".join(f"{a.action.kind} {a.action.service}" for a in actions) or None,
        recovered=recovered,
        mttd_s=round(observation.observed_at - injected_at, 2) if detected and observation else None,
        mttr_s=round(verification.at - injected_at, 2) if recovered and verification else None,
        memory_hit=diagnosis.similar[0].incident_id if diagnosis and diagnosis.similar else None,
        status=str(state.get("status")),
        detected_by=",".join(observation.detected_by) if detected and observation else "",
        action_s=round(sum(a.finished_at - a.started_at for a in actions), 2) if actions else None,
    )


def _wait_for_incident(engine: Engine, known: set[str], service: str, deadline: float) -> str | None:
    """The id of a new incident that reached a final state (or waits for approval), or None at the deadline.

    A fault can open more than one incident (a caller's symptoms may be seen before the faulty service's,
    or a late incident of the previous fault may finish now). The scorecard takes the one opened on the
    faulted service; failing that, after `MATCH_GRACE_S`, one opened on a connected service; failing that, at
    the deadline, any. The worker never sees this matching: it is the scorecard's.
    """
    near = engine.toolbox.connected(service)
    first_seen: dict[str, float] = {}
    while time.time() < deadline:
        for run in reversed(engine.registry.list()):  # oldest first
            incident_id = str(run["incident_id"])
            if incident_id in known or run["status"] not in (FINAL - {"healthy"}) | {"awaiting_approval"}:
                continue
            opened_on = run["trigger"].get("service")
            if opened_on in (service, None, ""):
                return incident_id
            first_seen.setdefault(incident_id, time.time())
            if opened_on in near and time.time() - first_seen[incident_id] >= MATCH_GRACE_S:
                return incident_id
        time.sleep(0.2)
    return next(iter(first_seen), None)


def _stand_in_for_the_human(
    engine: Engine, app: Any, incident_id: str, service: str, say: Callable[[str], None]
) -> None:
    """What the on-call human does with an incident the agents handed over: fix the fault, close the issue.

    An escalated incident keeps its services claimed while its issue is open (the worker must not fight the
    human); the demo plays the human so the next fault is watched again.
    """
    say(f"  {incident_id} was handed to a human: the demo clears the fault and closes its issue")
    _clear(app, service, say)
    _close_issue(engine, incident_id)


def _clear(app: Any, service: str, say: Callable[[str], None]) -> None:
    """Undo an injected fault the agents did not fix: start the service if it is down, clear its chaos."""
    try:
        if not app.runtime.status(service).running:
            app.runtime.start(service)
        app.inject("clear", service)
    except SregraphError as exc:
        say(f"  could not clear {service}: {exc}")


def _close_issue(engine: Engine, incident_id: str) -> None:
    issue_id = engine.state(incident_id).get("issue_id")
    if issue_id is not None:
        engine.toolbox.incidents.close(issue_id)


def _close_other_escalations(engine: Engine, handled: set[str], say: Callable[[str], None]) -> None:
    """The human also closes every other escalated incident (a second incident of the same fault, opened on a
    caller, that the scorecard did not match): its open issue would keep its services claimed, unwatched, through
    every later fault."""
    for run in engine.registry.list():
        incident_id = str(run["incident_id"])
        if run["status"] == "escalated" and incident_id not in handled:
            handled.add(incident_id)
            say(f"  {incident_id} (escalated, not this fault's scorecard row) was closed by the human")
            _close_issue(engine, incident_id)


def run_demo(
    settings: Settings,
    sequence: list[tuple[str, str, dict[str, Any]]] | None = None,
    progress: ProgressFn | None = None,
    say: Callable[[str], None] = print,
    warmup_s: float = 8.0,
    dashboard: bool = True,
) -> list[FaultResult]:
    """Start everything, inject each fault after the last one is handled, and stop everything. The HTTP API
    runs beside the worker on a free loopback port and takes the telemetry of `SHIPPED` services; with
    `dashboard`, a viewer token made for this demo is printed to watch it (its data directory, tokens
    included, is wiped by the next demo)."""
    sequence = validate(sequence or DEFAULT_SEQUENCE)
    if settings.data_dir.exists():
        # A leftover app from an interrupted demo is stopped before its state is wiped.
        LocalApp(settings.data_dir / "app").stop()
        shutil.rmtree(settings.data_dir)
    app = LocalApp(settings.data_dir / "app", runtime=settings.runtime, docker_url=settings.docker_url)
    results: list[FaultResult] = []
    worker_thread: threading.Thread | None = None
    worker: Worker | None = None
    api: Any = None
    try:
        engine = Engine(settings, local_toolbox(settings, app), progress=progress)
        worker = Worker(engine)
        api = _serve_api(worker, app, settings, say, dashboard)
        say("starting the application (frontend → checkout → payments) and its load…")
        app.start()
        app.start_load()
        say(f"collecting a {warmup_s:.0f}s baseline, then starting the worker…")
        time.sleep(warmup_s)
        worker_thread = threading.Thread(
            target=worker.run, kwargs={"interval": 0.5}, name="worker", daemon=True
        )
        worker_thread.start()
        handled: set[str] = set()
        for fault, service, params in sequence:
            _close_other_escalations(engine, handled, say)
            # Runs still in flight are not "known": a scan that began just before the injection may be the one
            # that sees it (the worker names a run when its scan starts, before it finds anything).
            known = {
                r["incident_id"]
                for r in engine.registry.list()
                if r["status"] in FINAL | {"awaiting_approval"}
            }
            say(f"▶ injecting {fault} into {service}")
            injected_at = time.time()
            try:
                app.inject(fault, service, **params)
            except SregraphError as exc:
                say(f"  could not inject {fault}: {exc}")
                results.append(FaultResult.missed(fault, service, "not injected"))
                continue
            incident = _wait_for_incident(engine, known, service, time.time() + FAULT_TIMEOUT_S)
            if incident is None:
                results.append(FaultResult.missed(fault, service, "not detected"))
                # dependency_down leaves the service stopped: chaos alone cannot reach it
                _clear(app, service, say)
            else:
                results.append(_outcome(engine, incident, fault, service, injected_at))
                if results[-1].status == "escalated":
                    handled.add(incident)
                    _stand_in_for_the_human(engine, app, incident, service, say)
            time.sleep(SETTLE_S)
    finally:
        if worker is not None:
            worker.stopping = True
        if worker_thread is not None:
            worker_thread.join(timeout=FAULT_TIMEOUT_S)
        if api is not None:
            api.stop()
        app.stop()
        app.close()
    return results


SHIPPED = ("payments",)
"""The demo's services that send their telemetry through sregraph's SDK to the API (the others write the store)."""


def _serve_api(
    worker: Worker, app: Any, settings: Settings, say: Callable[[str], None], dashboard: bool
) -> Any:
    """The API beside the demo's worker, before the app starts: `SHIPPED` services send it their telemetry
    with an ingest token of their own. With `dashboard`, a viewer token and where to watch."""
    # FastAPI loads only when a demo serves the API, not for `sregraph chaos` or `record`.
    from sregraph.server import ApiServer, create_app

    store = ApiStore(settings.data_dir / "api.db")
    api = ApiServer(create_app(worker, store), "127.0.0.1", 0).start()
    app.ship_telemetry(api.url, store.create_token("demo-app", "ingest"), list(SHIPPED))
    say(
        f"{', '.join(SHIPPED)} sends its logs, metrics and spans through sregraph.sdk to the API "
        f"({api.url}/api/v1/ingest/…)"
    )
    if dashboard:
        token = store.create_token("demo-viewer", "viewer")
        say(f"watch it live: {api.url}/ui/ — paste this demo's read-only token there: {token}")
    return api


def next_commands(
    results: list[FaultResult], demo_data: Path, read_by_default: Path | None, prog: str = "sregraph"
) -> list[str]:
    """The three commands worth trying after the demo; `--data-dir` only if they would miss its data."""
    handled = [r for r in results if r.incident_id]
    if not handled:
        return []
    flag = "" if read_by_default == demo_data else f" --data-dir {shlex.quote(str(demo_data))}"
    first, last = handled[0], handled[-1]
    return [
        f"{prog} incidents list{flag}",
        f"{prog} incidents show {last.incident_id}{flag}",
        f'{prog} memory search "{first.fault.replace("_", " ")} on {first.service}"{flag}',
    ]


def as_rows(results: list[FaultResult]) -> list[dict[str, Any]]:
    """The scorecard as JSON-ready rows."""
    return [asdict(r) for r in results]
