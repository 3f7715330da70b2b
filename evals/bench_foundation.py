"""Benchmark of the graph's foundation: checkpointer overhead per graph step, and the tokens of one LLM incident.

Run with ``python -m evals.bench_foundation [--incidents N] [--format json]``.

1. The real incident graph (``graphs.graph.build_graph``) runs N complete synthetic incidents, compiled three
   ways: without a checkpointer, with LangGraph's ``InMemorySaver``, and with the project's durable SQLite
   checkpointer (``graphs.checkpoint.open_checkpointer``). The agents do their real work on real local backends
   (SQLite telemetry store, git-backed GitOps, SQLite incident surface, action ledger) in a temporary
   directory; only the runtime and the health probe are fakes, and the clock is simulated, so nothing waits on
   wall time. In each incident payments crashes, callers fail, the engineer restarts payments, the restart
   fixes it, verification passes and the incident is resolved. Every run must end "resolved"; failures are
   counted and shown.
2. One incident of the same kind runs with ``brain="llm"`` and a chat model that replays a fixed script. The
   script carries no usage metadata, so the project's meter counts every message locally with tiktoken
   (cl100k_base): the numbers are what would be sent and received, with short scripted answers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool
from langgraph.checkpoint.memory import InMemorySaver
from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table

from agents.engineer import EngineerChoice
from agents.investigation import READONLY_TOOL_NAMES
from agents.librarian import PostMortemText
from agents.llm import LLMDiagnosis, LLMHypothesis
from agents.observer import IncidentTitle
from graphs.checkpoint import open_checkpointer
from graphs.graph import Team, build_graph
from sregraph.config import Settings
from sregraph.engine import build_team
from tools.base import HealthResult, LogRecord, NotFound, ServiceStatus, Span
from tools.domain import RunInput, Trigger
from tools.gitops import LocalGitOps
from tools.incidents import LocalIncidentSurface
from tools.ledger import ActionLedger
from tools.notifier import JsonlNotifier
from tools.telemetry import LocalTelemetryStore
from tools.toolbox import Toolbox

# ----------------------------------------------------------------------------- the synthetic system

TOPOLOGY: dict[str, list[str]] = {"frontend": ["checkout"], "checkout": ["payments"], "payments": []}
FAULTY = "payments"
NORMAL: dict[str, float] = {
    "request_rate": 15.0,
    "error_ratio": 0.0,
    "latency_p95_ms": 12.0,
    "memory_rss_mb": 40.0,
    "cpu_percent": 5.0,
}
TICK_S = 0.5
"""Telemetry sample interval."""
HEALTHY_LEAD_S = 40.0
"""Normal telemetry before each crash (longer than the observer's 6 s window plus 30 s baseline)."""
DETECT_AFTER_S = 10.0
"""The incident run starts this long after the crash."""
MetricRow = tuple[str, dict[str, str], float, float]
"""(name, labels, value, ts), as `LocalTelemetryStore.write_metrics` takes it."""
GAP_S = 120.0
"""Quiet time between incidents (longer than the policy's 30 s restart cooldown)."""
EPOCH = 1_700_000_000.0


class SimClock:
    """A clock whose `sleep` advances simulated time at once and lets the world catch up to it."""

    def __init__(self, now: float) -> None:
        self.t = now
        self.on_advance: Callable[[float], None] | None = None

    def now(self) -> float:
        """Simulated time."""
        return self.t

    def sleep(self, seconds: float) -> None:
        """Advance simulated time; no wall time passes."""
        self.t += seconds
        if self.on_advance is not None:
            self.on_advance(self.t)


class FakeRuntime:
    """In-memory process table; restarting the crashed service fixes the world. Also the (unused) deployer."""

    def __init__(self, world: SyntheticWorld) -> None:
        self.world = world
        self.table = {
            s: ServiceStatus(
                service=s, running=True, pid=1000 + i, started_at=world.clock.now(), version="1.4.0"
            )
            for i, s in enumerate(TOPOLOGY)
        }

    def services(self) -> list[str]:
        """Every managed service."""
        return list(self.table)

    def status(self, service: str) -> ServiceStatus:
        """A copy of the service's status; NotFound for an unknown service."""
        if service not in self.table:
            raise NotFound(f"unknown service {service!r}")
        return self.table[service].model_copy()

    def _run(self, service: str, count_restart: bool) -> ServiceStatus:
        current = self.status(service)
        self.table[service] = current.model_copy(
            update={
                "running": True,
                "pid": (current.pid or 2000) + 1,
                "exit_code": None,
                "started_at": self.world.clock.now(),
                "restarts": current.restarts + (1 if count_restart else 0),
            }
        )
        if service == FAULTY:
            self.world.recover()
        return self.status(service)

    def start(self, service: str) -> ServiceStatus:
        """Start a stopped service."""
        return self._run(service, count_restart=False)

    def stop(self, service: str) -> ServiceStatus:
        """Stop a service."""
        self.table[service] = self.status(service).model_copy(
            update={"running": False, "pid": None, "exit_code": 0}
        )
        return self.status(service)

    def restart(self, service: str) -> ServiceStatus:
        """Stop then start; the restart counter goes up."""
        return self._run(service, count_restart=True)

    def scale(self, service: str, replicas: int) -> ServiceStatus:
        """Record the replica count."""
        self.table[service] = self.status(service).model_copy(update={"replicas": replicas})
        return self.status(service)

    def logs(self, service: str, tail: int = 100) -> list[str]:
        """No process output in the synthetic world."""
        self.status(service)
        return []

    def apply(self, service: str) -> ServiceStatus:
        """Deployer: apply the merged config by restarting."""
        return self.restart(service)

    def crash(self, service: str) -> None:
        """Mark a service as killed."""
        self.table[service] = self.status(service).model_copy(
            update={"running": False, "pid": None, "exit_code": 137}
        )


class FakeHealth:
    """Health probe: the crashed service refuses connections."""

    def __init__(self, world: SyntheticWorld) -> None:
        self.world = world

    def check(self, service: str) -> HealthResult:
        """Probe one service."""
        down = self.world.crashed and service == FAULTY
        return HealthResult(service=service, ok=not down, detail="connection refused" if down else "")


class SyntheticWorld:
    """Three services on real local backends in `root`; telemetry is written as the simulated clock advances.

    While payments is crashed it writes nothing, checkout and frontend report error_ratio 1.0, log errors that
    name their dependency and emit failing traces; otherwise every service is normal.
    """

    def __init__(self, root: Path, seed: int) -> None:
        self.rng = random.Random(seed)
        self.clock = SimClock(EPOCH - 600)
        self.crashed = False
        self.next_tick = EPOCH
        self._traces = 0
        self.store = LocalTelemetryStore(root / "telemetry.db")
        self.runtime = FakeRuntime(self)
        gitops = LocalGitOps.init(
            root / "repo", {s: {"version": "1.4.0"} for s in TOPOLOGY}, clock=self.clock
        )
        self.clock.t = EPOCH
        self.toolbox = Toolbox(
            telemetry=self.store,
            runtime=self.runtime,
            incidents=LocalIncidentSurface(root / "incidents.db", clock=self.clock),
            gitops=gitops,
            notifier=JsonlNotifier(root / "notifications.jsonl", clock=self.clock),
            health=FakeHealth(self),
            deployer=self.runtime,
            ledger=ActionLedger(root / "ledger.db"),
            topology=TOPOLOGY,
            memory=None,
            clock=self.clock,
        )
        self.toolbox.on_close.append(self.store.close)
        self.clock.on_advance = self.advance_to

    def begin_incident(self) -> Trigger:
        """Write a healthy lead-in, crash payments, and move the clock to when the run starts."""
        start = self.next_tick + GAP_S
        self.next_tick = start
        self.advance_to(start + HEALTHY_LEAD_S - TICK_S)
        self.crashed = True
        self.runtime.crash(FAULTY)
        self.clock.t = start + HEALTHY_LEAD_S + DETECT_AFTER_S
        self.advance_to(self.clock.t)
        return Trigger(
            source="alert",
            service=FAULTY,
            signal="health",
            summary=f"{FAULTY} health check failing",
            fired_at=self.clock.t,
        )

    def recover(self) -> None:
        """The restart worked: from now on every service is normal."""
        self.crashed = False

    def advance_to(self, t: float) -> None:
        """Write every telemetry tick up to `t` (one transaction per kind)."""
        metrics: list[MetricRow] = []
        logs: list[LogRecord] = []
        spans: list[Span] = []
        while self.next_tick <= t + 1e-9:
            self._tick(self.next_tick, metrics, logs, spans)
            self.next_tick += TICK_S
        if metrics:
            self.store.write_metrics(metrics)
        if logs:
            self.store.write_logs(logs)
        if spans:
            self.store.write_spans(spans)

    def _tick(self, ts: float, metrics: list[MetricRow], logs: list[LogRecord], spans: list[Span]) -> None:
        """One sample of every metric of every service that is up, plus the tick's logs and one trace."""
        for service in TOPOLOGY:
            if self.crashed and service == FAULTY:
                continue
            for name, normal in NORMAL.items():
                value = normal * (1 + self.rng.uniform(-0.05, 0.05)) if normal else 0.0
                if self.crashed and name == "error_ratio":
                    value = 1.0
                metrics.append((name, {"service": service}, value, ts))
        self._traces += 1
        trace = f"t{self._traces}"
        if self.crashed:
            refused = f"upstream payments unreachable: connection refused (request {self._traces})"
            logs.append(LogRecord(ts=ts, service="checkout", level="error", message=refused))
            logs.append(
                LogRecord(
                    ts=ts, service="frontend", level="error", message="checkout returned 502 for /orders"
                )
            )
            spans.append(
                Span(
                    trace_id=trace,
                    span_id=f"{trace}-f",
                    service="frontend",
                    name="GET /orders",
                    start=ts,
                    duration_ms=4,
                    status="error",
                )
            )
            spans.append(
                Span(
                    trace_id=trace,
                    span_id=f"{trace}-c",
                    parent_id=f"{trace}-f",
                    service="checkout",
                    name="POST /pay",
                    start=ts,
                    duration_ms=2,
                    status="error",
                )
            )
        else:
            parent = None
            for service in ("frontend", "checkout", "payments"):
                span_id = f"{trace}-{service}"
                spans.append(
                    Span(
                        trace_id=trace,
                        span_id=span_id,
                        parent_id=parent,
                        service=service,
                        name="req",
                        start=ts,
                        duration_ms=5,
                    )
                )
                parent = span_id

    def close(self) -> None:
        """Close what the world opened."""
        self.toolbox.close()


# ----------------------------------------------------------------------------- part 1: checkpointer overhead


@dataclass
class ConfigResult:
    """Timings of one graph configuration."""

    name: str
    incidents: int
    resolved: int
    failures: list[str]
    steps_per_incident: int
    step_path: list[str]
    checkpoints_per_incident: int | None
    total_s: float
    incidents_per_s: float
    mean_ms: float
    median_ms: float
    stdev_ms: float
    overhead_ms_per_step: float | None = None
    """(mean ms with this checkpointer - mean ms without) / steps per incident; None for the baseline."""
    overhead_ms_per_step_ci95: float | None = None
    """Half-width of the 95% confidence interval of `overhead_ms_per_step` (normal approximation)."""
    overhead_ms_per_step_median: float | None = None
    """The same difference from the medians, which a stray slow run moves less."""
    saver_ms_per_step: float | None = None
    """Time spent inside the saver's put / put_writes / get_tuple calls, per step (serialization and storage)."""


class SaverTimer:
    """Wraps a saver's storage calls on the instance and adds up the time spent in them (thread-safe)."""

    METHODS = ("put", "put_writes", "get_tuple")

    def __init__(self, saver: Any) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._lock = threading.Lock()
        for name in self.METHODS:
            setattr(saver, name, self._wrap(getattr(saver, name)))

    def _wrap(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                with self._lock:
                    self.seconds += elapsed
                    self.calls += 1

        return timed

    def reset(self) -> None:
        """Forget what was measured so far."""
        with self._lock:
            self.seconds, self.calls = 0.0, 0


@dataclass
class _Config:
    name: str
    graph: Any
    world: SyntheticWorld
    team: Team
    timer: SaverTimer | None = None
    durations: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    steps: int = 0
    path: list[str] = field(default_factory=list)
    checkpoints: int | None = None


def _signature(state: dict[str, Any]) -> tuple[Any, ...]:
    """The path an incident took, as far as its final state tells."""
    return (
        state.get("status"),
        state.get("attempts"),
        len(state.get("actions", [])),
        len(state.get("diagnoses", [])),
        len(state.get("timeline", [])),
    )


def _failure(incident_id: str, state: dict[str, Any] | None, error: BaseException | None = None) -> str:
    if error is not None:
        return f"{incident_id}: raised {type(error).__name__}: {error}"
    assert state is not None
    return f"{incident_id}: ended {state.get('status')!r} (escalation: {state.get('escalation')})"


def _durability(cfg: _Config, durability: str) -> dict[str, Any]:
    """The durability argument, for graphs with a checkpointer only (LangGraph warns otherwise)."""
    return {"durability": durability} if cfg.graph.checkpointer is not None else {}


def _warm_up(cfg: _Config, durability: str) -> tuple[Any, ...] | None:
    """One untimed run through `graph.stream`: counts the node updates (steps) and the checkpoints written."""
    incident_id = f"bench-{cfg.name}-warmup"
    trigger = cfg.world.begin_incident()
    config = {"configurable": {"thread_id": incident_id}}
    final: dict[str, Any] | None = None
    try:
        for mode, chunk in cfg.graph.stream(
            {"incident_id": incident_id, "trigger": trigger},
            config,
            context=cfg.team,
            stream_mode=["updates", "values"],
            **_durability(cfg, durability),
        ):
            if mode == "updates":
                cfg.path.extend(node for node in chunk if node != "__interrupt__")
            else:
                final = chunk
    except Exception as exc:  # reported, never hidden
        cfg.failures.append(_failure(incident_id, None, exc))
        return None
    cfg.steps = len(cfg.path)
    if cfg.graph.checkpointer is not None:
        cfg.checkpoints = sum(1 for _ in cfg.graph.get_state_history(config))
    if final is None or final.get("status") != "resolved":
        cfg.failures.append(_failure(incident_id, final or {}))
        return None
    return _signature(final)


def _timed_run(cfg: _Config, index: int, expected: tuple[Any, ...] | None, durability: str) -> None:
    """One timed `graph.invoke` of a fresh incident; anything but "resolved" by the warm-up's path is a failure."""
    incident_id = f"bench-{cfg.name}-{index:04d}"
    trigger = cfg.world.begin_incident()
    payload = {"incident_id": incident_id, "trigger": trigger}
    config = {"configurable": {"thread_id": incident_id}}
    t0 = time.perf_counter()
    try:
        state = cfg.graph.invoke(payload, config, context=cfg.team, **_durability(cfg, durability))
    except Exception as exc:  # reported, never hidden
        cfg.durations.append(time.perf_counter() - t0)
        cfg.failures.append(_failure(incident_id, None, exc))
        return
    cfg.durations.append(time.perf_counter() - t0)
    if state.get("status") != "resolved":
        cfg.failures.append(_failure(incident_id, state))
    elif expected is not None and _signature(state) != expected:
        cfg.failures.append(
            f"{incident_id}: resolved by another path than the warm-up: {_signature(state)} != {expected}"
        )


def bench_checkpointers(
    root: Path, incidents: int, seed: int, durability: str = "async"
) -> list[ConfigResult]:
    """Time `incidents` incidents per configuration, interleaved and rotated so drift and position hit all alike."""
    configs: list[_Config] = []
    sqlite_saver = open_checkpointer(root / "sqlite" / "checkpoints.db")
    try:
        # Both savers share the project's serializer, which allow-lists the state's types.
        memory_saver = InMemorySaver(serde=sqlite_saver.serde)
        savers: dict[str, Any] = {"none": None, "memory": memory_saver, "sqlite": sqlite_saver}
        for name, saver in savers.items():
            base = root / name
            settings = Settings(data_dir=base / "data")
            world = SyntheticWorld(base, seed)
            timer = SaverTimer(saver) if saver is not None else None
            graph = build_graph().compile(checkpointer=saver)
            configs.append(_Config(name, graph, world, build_team(settings, world.toolbox), timer))
        expected = {cfg.name: _warm_up(cfg, durability) for cfg in configs}
        for cfg in configs:
            if cfg.timer is not None:
                cfg.timer.reset()
        for i in range(incidents):
            for cfg in configs[i % len(configs) :] + configs[: i % len(configs)]:
                _timed_run(cfg, i, expected[cfg.name], durability)
    finally:
        for cfg in configs:
            cfg.world.close()
        sqlite_saver.conn.close()

    results = []
    for cfg in configs:
        total = sum(cfg.durations)
        ms = [d * 1000 for d in cfg.durations]
        saver_ms = None
        if cfg.timer is not None and cfg.steps and ms:
            saver_ms = round(cfg.timer.seconds * 1000 / (len(ms) * cfg.steps), 4)
        results.append(
            ConfigResult(
                name={"none": "none", "memory": "InMemorySaver", "sqlite": "SqliteSaver"}[cfg.name],
                incidents=len(cfg.durations),
                resolved=len(cfg.durations) - sum(1 for f in cfg.failures if "-warmup:" not in f),
                failures=cfg.failures,
                steps_per_incident=cfg.steps,
                step_path=cfg.path,
                checkpoints_per_incident=cfg.checkpoints,
                total_s=round(total, 4),
                incidents_per_s=round(len(ms) / total, 2) if total else 0.0,
                mean_ms=round(statistics.fmean(ms), 3),
                median_ms=round(statistics.median(ms), 3),
                stdev_ms=round(statistics.stdev(ms), 3) if len(ms) > 1 else 0.0,
                saver_ms_per_step=saver_ms,
            )
        )
    baseline = results[0]
    for r in results[1:]:
        if r.steps_per_incident:
            r.overhead_ms_per_step = round((r.mean_ms - baseline.mean_ms) / r.steps_per_incident, 4)
            r.overhead_ms_per_step_median = round(
                (r.median_ms - baseline.median_ms) / r.steps_per_incident, 4
            )
            if r.incidents > 1 and baseline.incidents > 1:
                se = math.sqrt(r.stdev_ms**2 / r.incidents + baseline.stdev_ms**2 / baseline.incidents)
                r.overhead_ms_per_step_ci95 = round(1.96 * se / r.steps_per_incident, 4)
    return results


# ----------------------------------------------------------------------------- part 2: tokens in LLM mode


class ReplayChatModel(FakeMessagesListChatModel):
    """Replies with `responses` in order and records every conversation it is sent; raises when the script ends.

    `bind_tools` returns the model itself, so the script decides which tools get called; langchain_core's own
    `with_structured_output` binds the schema as a tool and parses the first tool call of the reply.
    """

    received: list[list[BaseMessage]] = Field(default_factory=list)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.received.append(list(messages))
        if self.i >= len(self.responses):
            raise RuntimeError(f"replay script exhausted after {len(self.responses)} replies")
        reply = self.responses[self.i]
        self.i += 1
        return ChatResult(generations=[ChatGeneration(message=reply.model_copy(deep=True))])

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[Any, AIMessage]:
        """Accept any tools and return the model itself."""
        return self

    @property
    def remaining(self) -> int:
        """Replies not played yet."""
        return len(self.responses) - self.i


_call_ids = itertools.count(1)


def _tool_calls(*calls: tuple[str, dict[str, Any]]) -> AIMessage:
    """A reply asking for these tool calls, in parallel."""
    return AIMessage(
        content="",
        tool_calls=[
            {"name": name, "args": args, "id": f"call_{next(_call_ids)}", "type": "tool_call"}
            for name, args in calls
        ],
    )


def _structured(output: BaseModel) -> AIMessage:
    """The schema-as-a-tool call `with_structured_output` parses."""
    return _tool_calls((type(output).__name__, output.model_dump(mode="json")))


TOOL_ARGS: dict[str, dict[str, Any]] = {
    "query_metric": {"name": "error_ratio", "service": "checkout"},
    "search_logs": {"service": "checkout", "query": "payments"},
    "trace_errors": {},
    "service_status": {"service": "payments"},
    "recent_changes": {},
    "similar_incidents": {"text": "payments down, checkout and frontend error ratio 1.0"},
}
"""One call of every read-only tool, with arguments named as in agents/investigation.py."""

SCRIPTED_TITLE = "payments down, checkout and frontend failing"
SCRIPTED_DIAGNOSIS = LLMDiagnosis(
    hypotheses=[
        LLMHypothesis(
            service="payments",
            fault_type="crash",
            cited_evidence=["running: false", "exit_code: 137"],
            rationale="payments exited; its callers fail because it is unreachable",
        ),
        LLMHypothesis(
            service="checkout",
            fault_type="dependency_down",
            cited_evidence=["upstream payments unreachable"],
            rationale="checkout errors are a symptom of payments being down",
        ),
    ],
    notes=[],
)
SCRIPTED_POSTMORTEM = PostMortemText(
    title="payments crashed and was restarted",
    summary="The payments process exited; checkout and frontend failed until sregraph restarted it.",
    impact="Orders failed for about fifteen seconds.",
    root_cause="payments process exit (cause of the exit unconfirmed).",
    follow_ups=["Find why payments exited."],
)


@dataclass
class TokenResult:
    """Tokens of one LLM-mode incident, as the project's meter charged them."""

    ok: bool
    problems: list[str]
    status: str
    total: int
    observer: int
    analyst: int
    engineer: int
    librarian: int
    model_calls: int
    tools_called: dict[str, str]
    """Tool name -> status of its result envelope, as the model received it."""
    tools_not_offered: list[str]
    token_budget: int
    counting: str = (
        "tiktoken cl100k_base counts (agents/tokens.py, agents/llm.py) of what would be sent and received: "
        "prompts, tool schemas, tool results, message framing; the model is a replay script with short "
        "answers, not a real model, and reports no usage"
    )


def bench_llm_tokens(root: Path, seed: int) -> TokenResult:
    """Run one synthetic incident with brain="llm" and a replayed script; read the tokens from the state."""
    settings = Settings(data_dir=root / "data", brain="llm")
    world = SyntheticWorld(root, seed)
    offered = [n for n in READONLY_TOOL_NAMES if n != "similar_incidents" or world.toolbox.memory is not None]
    script: list[BaseMessage] = [_structured(IncidentTitle(title=SCRIPTED_TITLE))]
    # All tool calls in one reply (as tool-calling models do in parallel): one call per step would resend the
    # growing conversation each time, and the default 12000-token budget stops that loop after four tools.
    script.append(_tool_calls(*[(name, TOOL_ARGS[name]) for name in offered]))
    script += [
        AIMessage(content=SCRIPTED_DIAGNOSIS.model_dump_json()),
        _structured(EngineerChoice(kind="restart", reason="the payments process is not running")),
        _structured(SCRIPTED_POSTMORTEM),
    ]
    model = ReplayChatModel(responses=script)
    problems: list[str] = []
    state: dict[str, Any] = {}
    title = ""
    try:
        team = build_team(settings, world.toolbox, chat_model=model)
        graph = build_graph().compile()
        trigger = world.begin_incident()
        config: RunnableConfig = {"configurable": {"thread_id": "bench-llm"}}
        run_input: RunInput = {"incident_id": "bench-llm", "trigger": trigger}
        state = graph.invoke(run_input, config, context=team)
        title = (
            world.toolbox.incidents.get(state["issue_id"]).title if state.get("issue_id") is not None else ""
        )
    except Exception as exc:  # reported, never hidden
        problems.append(f"the LLM-mode incident raised {type(exc).__name__}: {exc}")
    finally:
        world.close()

    diagnosis, plan, postmortem = state.get("diagnosis"), state.get("plan"), state.get("postmortem")
    if state.get("status") != "resolved":
        problems.append(f"incident ended {state.get('status')!r}: {state.get('escalation')}")
    if title != f"[incident] {SCRIPTED_TITLE}":
        problems.append(f"observer did not use the model's title (issue title {title!r})")
    fell_back = diagnosis is None or any("LLM unavailable" in n for n in diagnosis.notes)
    if diagnosis is None or fell_back or not diagnosis.method.startswith("llm"):
        problems.append(
            f"analyst fell back to the deterministic method: {diagnosis.notes if diagnosis else None}"
        )
    if plan is None or not any("model chose restart" in n for n in plan.policy_notes):
        problems.append(f"engineer did not use the model's choice: {plan.policy_notes if plan else None}")
    if postmortem is None or postmortem.title != SCRIPTED_POSTMORTEM.title:
        problems.append("librarian did not use the model's post-mortem")
    if model.remaining:
        problems.append(f"{model.remaining} scripted replies were never requested")

    tools: dict[str, str] = {}
    for conversation in model.received:
        for message in conversation:
            if isinstance(message, ToolMessage) and message.name:
                try:
                    tools[message.name] = json.loads(str(message.content)).get("status", "?")
                except json.JSONDecodeError:
                    tools[message.name] = "not json"
    missing = [n for n in offered if n not in tools]
    if missing:
        problems.append(f"tools never run: {missing}")

    total = int(state.get("tokens", 0))
    analyst = diagnosis.tokens if diagnosis else 0
    engineer = plan.tokens if plan else 0
    librarian = postmortem.tokens if postmortem else 0
    return TokenResult(
        ok=not problems,
        problems=problems,
        status=str(state.get("status")),
        total=total,
        observer=total - analyst - engineer - librarian,
        analyst=analyst,
        engineer=engineer,
        librarian=librarian,
        model_calls=len(model.received),
        tools_called=tools,
        tools_not_offered=[n for n in READONLY_TOOL_NAMES if n not in offered],
        token_budget=settings.llm.token_budget,
    )


# ----------------------------------------------------------------------------- report


def _fs_type(path: Path) -> str:
    """File system type of `path` from /proc/mounts (Linux), else "unknown"; SQLite fsync cost depends on it."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    resolved = str(path.resolve())
    under = [m for m in mounts if resolved == m[0] or resolved.startswith(m[0].rstrip("/") + "/")]
    best = max(under, key=lambda m: len(m[0]), default=None)
    return best[1] if best else "unknown"


def machine_info(workdir: Path) -> dict[str, Any]:
    """What the numbers were measured on."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "workdir": str(workdir),
        "workdir_fs": _fs_type(workdir),
        "langgraph": version("langgraph"),
        "langgraph_checkpoint": version("langgraph-checkpoint"),
        "langgraph_checkpoint_sqlite": version("langgraph-checkpoint-sqlite"),
        "sqlite": sqlite3.sqlite_version,
    }


@dataclass
class Report:
    """Everything one benchmark run measured."""

    machine: dict[str, Any]
    incidents_per_configuration: int
    warmup_per_configuration: int
    durability: str
    """LangGraph durability mode of the checkpointed runs ("async" is LangGraph's default)."""
    graph: list[ConfigResult]
    tokens: TokenResult
    wall_s: float

    @property
    def failures(self) -> int:
        """Failed incident runs (warm-ups included) plus a failed LLM run."""
        return sum(len(r.failures) for r in self.graph) + (0 if self.tokens.ok else 1)


def run(incidents: int, seed: int = 7, workdir: Path | None = None, durability: str = "async") -> Report:
    """Both measurements in a fresh temporary directory that is removed afterwards."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-foundation-", dir=workdir) as tmp:
        root = Path(tmp)
        machine = machine_info(root.parent)
        graph = bench_checkpointers(root / "graph", incidents, seed, durability)
        tokens = bench_llm_tokens(root / "llm", seed)
    return Report(machine, incidents, 1, durability, graph, tokens, round(time.perf_counter() - started, 2))


def _opt(value: float | int | None, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def _print_table(report: Report) -> None:
    console = Console()
    m = report.machine
    console.print(
        f"[bold]machine[/]: {m['cpu_count']} CPUs ({m['cpus_usable']} usable), {m['python']}, {m['platform']}; "
        f"langgraph {m['langgraph']}, checkpoint {m['langgraph_checkpoint']}, checkpoint-sqlite "
        f"{m['langgraph_checkpoint_sqlite']}, SQLite {m['sqlite']}; temp dir {m['workdir']} ({m['workdir_fs']})"
    )
    table = Table(
        title=f"incident graph: {report.incidents_per_configuration} timed graph.invoke runs per checkpointer "
        f"(interleaved, after {report.warmup_per_configuration} untimed warm-up each; durability "
        f"{report.durability!r})"
    )
    table.add_column("measure")
    for r in report.graph:
        table.add_column(r.name, justify="right")

    def overhead(value: float | None, ci: float | None = None) -> str:
        if value is None:
            return "baseline"
        return f"{value:+.3f}" + (f" ± {ci:.3f}" if ci is not None else "")

    rows: list[tuple[str, Callable[[ConfigResult], str]]] = [
        ("resolved as expected / runs", lambda r: f"{r.resolved}/{r.incidents}"),
        ("failures (incl. warm-up)", lambda r: str(len(r.failures))),
        ("graph steps per incident", lambda r: str(r.steps_per_incident)),
        ("checkpoints per incident", lambda r: _opt(r.checkpoints_per_incident, "{}")),
        ("incidents/s (invoke time)", lambda r: f"{r.incidents_per_s:.1f}"),
        ("mean ms per incident", lambda r: f"{r.mean_ms:.2f}"),
        ("median ms per incident", lambda r: f"{r.median_ms:.2f}"),
        ("stdev ms", lambda r: f"{r.stdev_ms:.2f}"),
        (
            "overhead ms/step, mean ±CI95",
            lambda r: overhead(r.overhead_ms_per_step, r.overhead_ms_per_step_ci95),
        ),
        ("overhead ms/step, median", lambda r: overhead(r.overhead_ms_per_step_median)),
        ("ms/step inside saver calls", lambda r: _opt(r.saver_ms_per_step, "{:.3f}")),
    ]
    for label, cell in rows:
        table.add_row(label, *[cell(r) for r in report.graph])
    console.print(table)
    console.print(f"steps: {' → '.join(report.graph[0].step_path)}")
    console.print(
        "overhead/step = (mean ms with the saver - mean ms without) / steps per incident; "
        "'inside saver calls' adds up put, put_writes and get_tuple (with durability 'async' the puts run on a "
        "background thread, overlapping the next node)."
    )
    for r in report.graph:
        for failure in r.failures:
            console.print(f"[red]FAILED[/] [{r.name}] {failure}")

    t = report.tokens
    tokens = Table(title="tokens of one incident in LLM mode (scripted replay model)")
    tokens.add_column("agent")
    tokens.add_column("tokens", justify="right")
    per_agent = [
        ("observer (title)", t.observer),
        ("analyst (tool loop)", t.analyst),
        ("engineer (choice)", t.engineer),
        ("librarian (post-mortem)", t.librarian),
    ]
    for agent, n in per_agent:
        tokens.add_row(agent, str(n))
    tokens.add_row("[bold]total (state['tokens'])[/]", f"[bold]{t.total}[/]")
    console.print(tokens)
    console.print(
        f"{t.model_calls} model calls; tools called: "
        + ", ".join(f"{name} ({status})" for name, status in t.tools_called.items())
        + (f"; not offered: {', '.join(t.tools_not_offered)} (memory=None)" if t.tools_not_offered else "")
        + f"; budget {t.token_budget}; incident {t.status}"
    )
    console.print(f"[italic]note: {t.counting}.[/]")
    for problem in t.problems:
        console.print(f"[red]LLM RUN PROBLEM[/] {problem}")
    console.print(f"wall time {report.wall_s:.1f} s; failures: {report.failures}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; exits 1 when any incident run failed."""
    parser = argparse.ArgumentParser(
        prog="python -m evals.bench_foundation", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--incidents", type=int, default=30, help="timed incidents per graph configuration")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="parent of the temp directory (default: system temp)"
    )
    parser.add_argument(
        "--durability",
        choices=["async", "sync", "exit"],
        default="async",
        help="LangGraph durability of the saver runs",
    )
    parser.add_argument("--format", choices=["table", "json"], default="table")
    args = parser.parse_args(argv)
    if args.incidents < 1:
        parser.error("--incidents must be at least 1")
    report = run(args.incidents, args.seed, args.workdir, args.durability)
    if args.format == "json":
        print(json.dumps({**asdict(report), "failures": report.failures}, indent=2))
    else:
        _print_table(report)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
