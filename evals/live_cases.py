"""Eval cases from live incidents: `attach_recorder(engine, out_dir)` records every incident an engine starts
(how a worker or the demo turns real incidents into eval cases); `record_demo_incident` injects one fault into
the local app and records the incident the worker opens for it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from evals.case import Case, Injected, Truth, outcome_of
from evals.case_files import case_settings, dump_yaml, read_case, write_case
from evals.recorder import Recorder, Recording
from sregraph.engine import Engine, local_toolbox, new_incident_id
from sregraph.localenv.app import LocalApp
from sregraph.worker import Worker
from tools.domain import Trigger


def new_case(
    case_id: str,
    incident_id: str,
    trigger: Trigger,
    state: dict[str, Any],
    engine: Any,
    recording: Recording,
    truth: Truth | None = None,
    injected: Iterable[Injected] = (),
    **meta: Any,
) -> Case:
    """A Case for a live incident an engine just ran; without a truth, one prefilled from the outcome."""
    outcome = outcome_of(state)
    if truth is None:
        truth = Truth(
            incident=outcome.detected,
            service=outcome.root_cause,
            fault_type=outcome.fault_type,
            actions=[a.split(":")[0] for a in outcome.actions],
            labelled=False,
        )
    return Case(
        id=case_id,
        incident_id=incident_id,
        trigger=trigger,
        recorded_at=recording.started_at,
        injected=list(injected),
        topology={k: list(v) for k, v in engine.toolbox.topology.items()},
        settings=case_settings(engine.settings),
        policy=engine.team.engineer.policy.model_dump(mode="json"),
        truth=truth,
        outcome=outcome,
        **meta,
    )


TruthFn = Callable[[str, Trigger, dict[str, Any]], "Truth | None"]


def attach_recorder(
    engine: Any,
    out_dir: Path,
    truth_for: TruthFn | None = None,
    case_id_for: Callable[[str], str] | None = None,
) -> Recorder:
    """Record every incident `engine.start` runs from now on, each into `out_dir/<case id>/`.

    This is the worker flag: `Worker(engine)` after `attach_recorder(engine, DIR)` saves every real incident
    as an eval case (ground truth unlabelled unless `truth_for(incident_id, trigger, state)` gives one; the
    case id is the incident id unless `case_id_for` names it).
    """
    recorder = Recorder().attach(engine.toolbox)
    original = engine.start

    def start(trigger: Trigger, incident_id: str | None = None) -> dict[str, Any]:
        incident_id = incident_id or (
            engine.new_id() if hasattr(engine, "new_id") else new_incident_id(engine.toolbox.clock.now())
        )
        case_id = case_id_for(incident_id) if case_id_for else incident_id
        recorder.begin(incident_id)
        try:
            state: dict[str, Any] = original(trigger, incident_id)
        finally:
            recording = recorder.end(incident_id)
        truth = truth_for(incident_id, trigger, state) if truth_for else None
        case = new_case(
            case_id,
            incident_id,
            trigger,
            state,
            engine,
            recording,
            truth,
            title=f"live incident {incident_id}",
            tags=["live"],
        )
        write_case(Path(out_dir) / case_id, case, recording)
        return state

    engine.start = start
    return recorder


FAULT_TRUTH: dict[str, tuple[str, list[str], list[str]]] = {
    "crash": ("crash", [], ["restart {s}", "start {s}"]),
    "latency": ("latency", [], ["restart {s}"]),
    "error_rate": ("error_spike", [], ["restart {s}"]),
    "memory_leak": ("memory_leak", [], ["restart {s}"]),
    "bad_deploy": ("bad_deploy", [], ["rollback {s}"]),
    "dependency_down": ("dependency_down", ["crash"], ["restart {s}", "start {s}"]),
    "cpu": ("cpu_saturation", [], ["restart {s}"]),
    "conversion_drop": ("conversion_drop", ["config_change"], ["config_change {s}", "rollback {s}"]),
}
"""Ground truth of each chaos fault of the local app: fault type, other accepted types, right actions."""


def truth_of_fault(fault: str, service: str) -> Truth:
    """The ground truth of an injected local-app fault."""
    fault_type, also, actions = FAULT_TRUTH[fault]
    return Truth(
        service=service,
        fault_type=fault_type,
        fault_types=also,
        actions=[a.format(s=service) for a in actions],
    )


def record_demo_incident(
    settings: Any,
    fault: str,
    service: str,
    out: Path,
    params: dict[str, Any] | None = None,
    warmup_s: float = 22.0,
    timeout_s: float = 90.0,
    say: Callable[[str], None] = lambda text: None,
) -> Case:
    """One demo incident, recorded: the local app with load, the worker (as `sregraph demo` runs it) with the
    recorder attached, one injected fault; the case is written to `out` and returned.

    `settings` should be the demo's (`sregraph.demo.demo_settings`); its data_dir must not hold a running app.
    """
    out = Path(out)
    app = LocalApp(settings.data_dir / "app")
    injected: list[Injected] = []
    worker: Worker | None = None
    thread: threading.Thread | None = None
    try:
        say("starting the local app and its load…")
        app.start()
        app.start_load()
        engine = Engine(settings, local_toolbox(settings, app))
        named: list[str] = []
        armed: list[bool] = []

        def name_for(incident_id: str) -> str:
            # The first incident started after the fault is the case; one before it (start-up noise) or after it
            # (the worker opening another incident for a symptom) goes to a hidden folder, never taken for the case.
            if armed and not named:
                named.append(incident_id)
                return out.name
            return f".{out.name}-other/{incident_id}"

        attach_recorder(
            engine,
            out.parent,
            truth_for=lambda incident_id, trigger, state: truth_of_fault(fault, service),
            case_id_for=name_for,
        )
        time.sleep(warmup_s)
        worker = Worker(engine)
        thread = threading.Thread(
            target=worker.run, kwargs={"interval": 0.5}, name="record-worker", daemon=True
        )
        thread.start()
        say(f"injecting {fault} into {service}")
        armed.append(True)  # before the fault: the worker may start the incident before inject() returns
        injection = app.inject(fault, service, **(params or {}))
        injected.append(Injected(**injection.model_dump()))
        deadline = time.time() + timeout_s
        while time.time() < deadline and not (out / "case.yaml").exists():
            time.sleep(0.2)
    finally:
        if worker is not None:
            worker.stopping = True
        if thread is not None:
            thread.join(timeout=timeout_s)
        app.stop()
        app.close()
    if not (out / "case.yaml").exists():
        raise TimeoutError(
            f"no incident was recorded within {timeout_s:.0f}s of injecting {fault} into {service}"
        )
    case = read_case(out).model_copy(
        update={
            "injected": injected,
            "title": f"{fault} on {service} (recorded from the demo worker)",
            "tags": ["fault", "live"],
        }
    )
    (out / "case.yaml").write_text(dump_yaml(case.model_dump(mode="json")))
    return case
