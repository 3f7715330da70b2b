"""Replay: recorded incidents run again through the real graph, with every tool answered from the recording.

Every backend of the `Toolbox` becomes a replay proxy (reads answered by key, mutations logged for scoring,
telemetry from the recorded tables, the clock pinned); a deterministic brain replays strictly
(`MissingRecording`), an LLM brain against a simulated world built from the recording. Memory and the action
ledger are live. Method: docs/evals.md §Replay, §Judging replays.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import TypeAdapter

import tools.base as tool_errors
from agents.grounding import check_postmortem, facts_of
from agents.llm import ModelUsage, model_usage
from evals.calls import (
    MUTATING,
    TOOLS,
    bind_args,
    call_text,
    caller_name,
    canonical,
    identity,
    protocol_methods,
    result_adapter,
)
from evals.case import Case, Outcome, outcome_of
from evals.case_files import case_folders, read_calls, read_case
from evals.replay_world import SimulatedWorld
from evals.telemetry_tables import TelemetryTables, covered, expand, stream_of, tables_from_json
from sregraph.config import Settings
from sregraph.engine import Engine
from tools.base import LogRecord, NotFound, Series, Span, Telemetry
from tools.domain import ApprovalDecision
from tools.ledger import ActionLedger
from tools.toolbox import Toolbox

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from evals.cassette import Cassette
    from memory.store import PostMortemStore

log = logging.getLogger("sregraph.evals")

HOW_TO_RECORD = (
    "The recorded run never made this call, so the agents took another path than when it was recorded. "
    "Re-record the case: `python -m evals.build_suite --only CASE_ID` for a suite case built on the local app, "
    "`sregraph record FAULT SERVICE --out DIR` for a new one, or `attach_recorder(engine, DIR)` on a worker "
    "for live incidents (docs/evals.md, 'Recording')."
)

IDEMPOTENT = {
    ("incidents", "open_issue"),
    ("incidents", "comment"),
    ("incidents", "set_labels"),
    ("incidents", "close"),
    ("gitops", "propose"),
    ("gitops", "merge"),
}
"""Mutations whose repeat returns the first result (keyed comments and PRs, fingerprinted issues)."""


class MissingRecording(Exception):  # noqa: N818 - the name says what happened
    """A replayed incident made a tool call the recording has no answer for."""

    def __init__(self, case_id: str, call: str, detail: str) -> None:
        self.case_id, self.call, self.detail = case_id, call, detail
        super().__init__(
            f"case {case_id}: no recording for {call}: {detail}. {HOW_TO_RECORD.replace('CASE_ID', case_id)}"
        )


@dataclass
class Mutation:
    """One mutating call the replayed agents made (answered from the recording, never executed)."""

    tool: str
    method: str
    args: dict[str, Any]
    at: float
    recorded: bool = True
    result: Any = None

    @property
    def text(self) -> str:
        """`runtime.restart(service='payments')`."""
        keys = MUTATING.get((self.tool, self.method), tuple(self.args))
        return call_text(self.tool, self.method, {k: self.args.get(k) for k in keys})


@dataclass
class ReplaySession:
    """What one replayed case did: its mutations and the calls the recording could not answer."""

    case_id: str
    mutations: list[Mutation] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)
    strict: bool = True
    """Deterministic brains replay strictly; LLM brains read more than was recorded (see `stale_reads`)."""
    calls: int = 0
    clock_fallbacks: int = 0
    stale_reads: list[str] = field(default_factory=list)
    """Reads beyond the recording answered with the last recorded answer (LLM brains only)."""
    simulated: list[str] = field(default_factory=list)
    """Calls the recording has no answer for, answered by the simulated world (LLM brains only;
    evals/replay_world.py)."""
    extra_reads: list[str] = field(default_factory=list)
    """Telemetry queries outside the recorded windows, answered from the recorded tables (LLM brains only)."""
    empty_reads: list[str] = field(default_factory=list)
    """Telemetry queries wholly outside the recorded data, answered with nothing (LLM brains only)."""
    unused: list[str] = field(default_factory=list)

    def miss(self, call: str, detail: str) -> MissingRecording:
        """Remember a miss and build the exception that reports it."""
        exc = MissingRecording(self.case_id, call, detail)
        self.misses.append(str(exc))
        return exc


def _jsonable(value: Any) -> Any:
    """A simulated answer as the recording would hold it (scoring reads comment and PR ids from it)."""
    return TypeAdapter(Any).dump_python(value, mode="json")


def _error_class(name: str) -> type[Exception]:
    found = getattr(tool_errors, name, None)
    return found if isinstance(found, type) and issubclass(found, Exception) else tool_errors.ToolError


class RecordedCalls:
    """The recorded calls of one case, by replay key, each key's answers in call order."""

    def __init__(self, calls: list[dict[str, Any]]) -> None:
        self.by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.clock: dict[str, list[float]] = defaultdict(list)
        for entry in calls:
            if entry["tool"] == "clock":
                self.clock[entry["by"]].append(float(entry["result"]))
            else:
                self.by_key[identity(entry["tool"], entry["method"], entry.get("args", {}))].append(entry)
        self.used: dict[str, int] = defaultdict(int)

    def next(
        self, tool: str, method: str, args: dict[str, Any], session: ReplaySession
    ) -> dict[str, Any] | None:
        """The recorded answer to the next occurrence of this call; MissingRecording if there is none (strict
        sessions) or None (judging sessions, whose simulated world answers instead)."""
        key = identity(tool, method, args)
        entries = self.by_key.get(key, [])
        n = self.used[key]
        if n < len(entries):
            self.used[key] = n + 1
            return entries[n]
        mutating = (tool, method) in MUTATING
        if entries and (not mutating or (tool, method) in IDEMPOTENT):
            answers = {canonical(e.get("result", e.get("error"))) for e in entries}
            if len(answers) == 1 or (tool, method) in IDEMPOTENT:
                # A read that always answered the same (or a keyed, idempotent mutation) may repeat.
                return entries[-1] if not mutating else entries[0]
            if not session.strict and not mutating:
                # An LLM brain's extra read (a model tool, the librarian reading comments): the latest state.
                session.stale_reads.append(call_text(tool, method, args))
                return entries[-1]
            detail = (
                f"it was recorded {len(entries)} time(s) with different answers and this is call #{n + 1}"
            )
        elif entries:
            detail = f"it was recorded {len(entries)} time(s) and this is call #{n + 1}"
        else:
            similar = sorted(
                {k.split(":", 1)[1][:120] for k in self.by_key if k.startswith(f"{tool}.{method}:")}
            )
            detail = "this call was never recorded" + (
                f" (recorded arguments: {'; '.join(similar[:3])})" if similar else ""
            )
        if not session.strict:
            return None  # a judging replay: the simulated world answers
        raise session.miss(call_text(tool, method, args), detail)

    def unused_keys(self) -> list[str]:
        """Recorded calls the replay never asked for (a sign of a different path; not an error)."""
        return [k for k, v in self.by_key.items() if self.used[k] < len(v) and not k.startswith("notifier.")]


class ReplayProxy:
    """Answers one backend's protocol calls from the recording; mutations are logged, never executed."""

    def __init__(
        self,
        tool: str,
        protocol: type,
        calls: RecordedCalls,
        session: ReplaySession,
        clock: ReplayClock,
        world: SimulatedWorld | None = None,
    ) -> None:
        self._tool, self._protocol, self._calls, self._session, self._clock = (
            tool,
            protocol,
            calls,
            session,
            clock,
        )
        self._world = world

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in protocol_methods(self._protocol):
            raise AttributeError(
                f"{self._tool}.{name} is not part of the {self._protocol.__name__} contract, so a replay "
                "cannot answer it"
            )
        tool, protocol, calls, session, clock, world = (
            self._tool,
            self._protocol,
            self._calls,
            self._session,
            self._clock,
            self._world,
        )
        adapter = result_adapter(protocol, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            named = bind_args(protocol, name, args, kwargs)
            session.calls += 1
            mutating = (tool, name) in MUTATING
            if tool == "notifier":
                # Nothing to answer: notifications are counted, never required to match.
                session.mutations.append(Mutation(tool, name, named, clock.pinned))
                return None
            try:
                entry = calls.next(tool, name, named, session)
            except MissingRecording:
                if mutating:
                    session.mutations.append(Mutation(tool, name, named, clock.pinned, recorded=False))
                raise
            if entry is None:
                return simulate(named)
            if mutating:
                session.mutations.append(
                    Mutation(tool, name, named, clock.pinned, result=entry.get("result"))
                )
            if "error" in entry:
                raise _error_class(entry["error"]["type"])(entry["error"]["message"])
            value = adapter.validate_python(entry["result"])
            if world is not None:
                world.observe(tool, name, named, value)
            return value

        def simulate(named: dict[str, Any]) -> Any:
            # A judging replay only: the model took a path the recording does not cover.
            assert world is not None, "a non-strict replay needs a simulated world"
            world.now = clock.pinned + clock.drift
            session.simulated.append(call_text(tool, name, named))
            try:
                value = world.answer(tool, name, named)
            except Exception:
                if (tool, name) in MUTATING:
                    session.mutations.append(Mutation(tool, name, named, clock.pinned, recorded=False))
                raise
            if (tool, name) in MUTATING:
                session.mutations.append(
                    Mutation(tool, name, named, clock.pinned, recorded=False, result=_jsonable(value))
                )
            return value

        return call


class ReplayTelemetry:
    """Telemetry answered from the recorded tables, inside the windows each stream was queried over."""

    def __init__(self, doc: dict[str, Any], session: ReplaySession) -> None:
        self.tables: TelemetryTables = tables_from_json(doc)
        self.coverage = {stream: intervals for stream, intervals in doc.get("coverage", [])}
        self.exceptions = {
            (e["method"], canonical(e["args"]), e["n"]): e["result"] for e in doc.get("exceptions", [])
        }
        self.other = defaultdict(list)
        for e in doc.get("other", []):
            self.other[(e["method"], canonical(e["args"]))].append(e["result"])
        self.seen: dict[str, int] = defaultdict(int)
        self.session = session
        t = self.tables
        times = (
            [p[0] for s in t.series for p in s.points] + [r.ts for r in t.logs] + [sp.start for sp in t.spans]
        )
        times += [x for intervals in self.coverage.values() for pair in intervals for x in pair]
        self.extent = (min(times), max(times)) if times else (0.0, -1.0)
        """The first and last instant the recorded telemetry covers."""

    def log_lines(self, service: str, tail: int, until: float) -> list[str]:
        """The last `tail` recorded log lines of a service before `until`, as a runtime's log tail shows them."""
        lines = [
            f"{r.level.upper()} {r.message}"
            for r in self.tables.logs
            if r.service == service and r.ts <= until
        ]
        return lines[-tail:]

    def _answer(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        named = bind_args(Telemetry, method, args, kwargs)
        self.session.calls += 1
        key = canonical(named)
        self.seen[f"{method}:{key}"] += 1
        n = self.seen[f"{method}:{key}"]
        exact = self.exceptions.get((method, key, n))
        if exact is not None:
            return self._build(method, exact)
        intervals = self.coverage.get(stream_of(method, named), [])
        if covered(intervals, float(named["start"]), float(named["end"])):
            return self.tables.answer(method, named)
        if not self.session.strict:
            # A judging replay: any query is answered from the recorded tables, and plainly empty outside them.
            first, last = self.extent
            if float(named["end"]) < first or float(named["start"]) > last:
                self.session.empty_reads.append(call_text("telemetry", method, named))
                return []
            self.session.extra_reads.append(call_text("telemetry", method, named))
            return self.tables.answer(method, named)
        where = (
            f"recorded windows of this stream: {intervals[:3]}"
            if intervals
            else "this stream was never queried"
        )
        raise self.session.miss(
            call_text("telemetry", method, named), f"the window is outside what was recorded ({where})"
        )

    def _build(self, method: str, result: Any) -> Any:
        t = self.tables
        if method == "query_range":
            out = []
            for pos, runs in result:
                s = t.series[pos]
                out.append(
                    Series(name=s.name, labels=dict(s.labels), points=[s.points[i] for i in expand(runs)])
                )
            return out
        if method == "search_logs":
            return [t.logs[i] for i in expand(result)]
        return [t.spans[i] for i in expand(result)]

    def query_range(self, name: str, labels: dict[str, str] | None, start: float, end: float) -> list[Series]:
        """Recorded series in a window."""
        result: list[Series] = self._answer("query_range", (name, labels, start, end), {})
        return result

    def search_logs(
        self,
        service: str | None,
        start: float,
        end: float,
        query: str | None = None,
        level: str | None = None,
        limit: int = 500,
    ) -> list[LogRecord]:
        """Recorded log records in a window."""
        result: list[LogRecord] = self._answer(
            "search_logs", (service, start, end), {"query": query, "level": level, "limit": limit}
        )
        return result

    def spans(self, service: str | None, start: float, end: float, limit: int = 2000) -> list[Span]:
        """Recorded spans in a window."""
        result: list[Span] = self._answer("spans", (service, start, end), {"limit": limit})
        return result

    def metric_names(self) -> list[str]:
        """The recorded answer, or the names of the recorded series."""
        self.session.calls += 1
        answers = self.other.get(("metric_names", canonical({})))
        return list(answers[0]) if answers else sorted({s.name for s in self.tables.series})


class ReplayClock:
    """The pinned clock: every caller reads the times it read when the incident was recorded, in order.

    A read beyond the recording (an LLM tool, or a run that polls longer than the recorded one) gets the last
    time handed out plus the sleeps since; sleeping never waits.
    """

    def __init__(self, reads: dict[str, list[float]], session: ReplaySession) -> None:
        self.queues = {by: list(values) for by, values in reads.items()}
        self.pos: dict[str, int] = defaultdict(int)
        first = min((v[0] for v in reads.values() if v), default=0.0)
        self.pinned = first
        self.drift = 0.0
        self.session = session

    def now(self) -> float:
        """The next recorded read of this caller, or the pinned time."""
        by = caller_name()
        queue = self.queues.get(by, [])
        i = self.pos[by]
        if i < len(queue):
            self.pos[by] = i + 1
            self.pinned, self.drift = queue[i], 0.0
            return queue[i]
        self.session.clock_fallbacks += 1
        return self.pinned + self.drift

    def sleep(self, seconds: float) -> None:
        """No waiting on replay."""
        self.drift += max(0.0, seconds)


# --------------------------------------------------------------------------- one case


@dataclass
class LoadedCase:
    """A case folder read into memory."""

    folder: Path
    case: Case
    calls: list[dict[str, Any]]
    telemetry: dict[str, Any]


def load_case(folder: Path) -> LoadedCase:
    """Read a case folder (case.yaml, calls.jsonl, telemetry.json)."""
    folder = Path(folder)
    case = read_case(folder)
    calls = read_calls(folder / "calls.jsonl")
    try:
        telemetry = json.loads((folder / "telemetry.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{folder / 'telemetry.json'}: {exc}") from exc
    return LoadedCase(folder, case, calls, telemetry)


def load_suite(suite: Path, only: list[str] | None = None) -> list[LoadedCase]:
    """Every case of a suite folder in replay order (or just the named ones, still in order)."""
    folders = case_folders(Path(suite))
    if only:
        wanted = set(only)
        folders = [f for f in folders if f.name in wanted or read_case(f).id in wanted]
    return [load_case(f) for f in folders]


@dataclass
class CaseRun:
    """One replayed case: the outcome, the session (mutations, misses) and any error that ended it."""

    case: Case
    outcome: Outcome
    session: ReplaySession
    state: dict[str, Any]
    error: str | None = None
    seconds: float = 0.0
    ledger: list[dict[str, Any]] = field(default_factory=list)
    model: ModelUsage | None = None
    """With an LLM brain: the agents.llm.ModelUsage of this case (model calls, failures, tokens)."""
    stored_wording: str | None = None
    """Who worded the post-mortem memory holds for this incident ("model", "deterministic"), None if none is stored."""
    stored_ungrounded: list[str] = field(default_factory=list)
    """Grounding problems of the stored post-mortem, checked again after the run (must stay empty)."""


def replay_toolbox(
    loaded: LoadedCase, workdir: Path, memory: PostMortemStore | None = None, strict: bool = True
) -> tuple[Toolbox, ReplaySession, RecordedCalls]:
    """A toolbox answering from one case's recording (ledger seeded in `workdir`, memory as given)."""
    case = loaded.case
    session = ReplaySession(case.id, strict=strict)
    calls = RecordedCalls(loaded.calls)
    clock = ReplayClock(calls.clock, session)
    ledger = ActionLedger(workdir / "ledger.db")
    for row in case.ledger_seed:
        ledger.start(
            row["key"],
            row["incident_id"],
            row["service"],
            row["kind"],
            row.get("before") or {},
            row["started_at"],
        )
        if row.get("status") and row["status"] != "started":
            ledger.finish(
                row["key"],
                row["status"],
                row.get("detail", ""),
                row.get("ref", ""),
                row.get("finished_at") or row["started_at"],
            )
    telemetry = ReplayTelemetry(loaded.telemetry, session)
    world = (
        None
        if strict
        else SimulatedWorld(
            case.topology,
            lambda service, tail: telemetry.log_lines(service, tail, clock.pinned + clock.drift),
        )
    )
    proxies = {
        name: ReplayProxy(name, protocol, calls, session, clock, world) for name, protocol in TOOLS.items()
    }
    toolbox = Toolbox(
        telemetry=telemetry,
        runtime=proxies["runtime"],
        incidents=proxies["incidents"],
        gitops=proxies["gitops"],
        notifier=proxies["notifier"],
        health=proxies["health"],
        deployer=proxies["deployer"],
        ledger=ledger,
        topology={k: list(v) for k, v in case.topology.items()},
        memory=memory,
        clock=clock,
    )
    return toolbox, session, calls


def case_settings_for(
    loaded: LoadedCase, workdir: Path, brain: str = "deterministic", base: Settings | None = None
) -> Settings:
    """Settings of a replay: the recorded windows and loop caps, the recorded policy, data under `workdir`."""
    policy_file = workdir / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(loaded.case.policy))
    data: dict[str, Any] = {
        k: v for k, v in loaded.case.settings.items() if k in ("observer", "analyst", "engineer")
    }
    data.update(
        data_dir=workdir / "data",
        policy_file=policy_file,
        brain="deterministic" if brain == "deterministic" else "llm",
    )
    if base is not None:
        data["llm"] = base.llm.model_dump()
    if brain in ("openai", "watsonx"):
        data.setdefault("llm", {})["provider"] = brain
    return Settings.model_validate(data)


def replay_case(
    loaded: LoadedCase,
    workdir: Path,
    memory: PostMortemStore | None = None,
    brain: str = "deterministic",
    chat_model: BaseChatModel | None = None,
    base_settings: Settings | None = None,
    cassette: Cassette | None = None,
) -> CaseRun:
    """Run one recorded incident through the real graph with tools answered from its recording.

    With a model `cassette` (evals/cassette.py) in replay mode, a model request it has no answer for fails the case.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    case = loaded.case
    toolbox, session, calls = replay_toolbox(loaded, workdir, memory, strict=brain == "deterministic")
    settings = case_settings_for(loaded, workdir, brain, base_settings)
    started = time.perf_counter()
    engine = Engine(settings, toolbox, chat_model=chat_model)
    usage_before = model_usage(chat_model).snapshot() if chat_model is not None else None
    cassette_misses = len(cassette.misses) if cassette is not None else 0
    error: str | None = None
    state: dict[str, Any] = {}
    try:
        try:
            engine.start(case.trigger, incident_id=case.incident_id)
            state = engine.state(case.incident_id)
            if state.get("waiting") and case.approval is not None:
                state = engine.decide(case.incident_id, ApprovalDecision.model_validate(case.approval))
        except MissingRecording as exc:
            error = str(exc)
        except Exception as exc:  # a crash in the agents is a failed case, reported, not a dead suite
            log.warning("case %s failed: %s", case.id, exc, exc_info=True)
            error = f"{type(exc).__name__}: {exc}"
        if not state:
            try:
                state = engine.state(case.incident_id)
            except NotFound:
                state = {}
    finally:
        engine.close()
    if session.misses and error is None and session.strict:
        # A miss an agent caught still fails a deterministic case. With an LLM brain the model's own tool calls
        # outside the recording were answered with an error envelope; they are counted, not fatal.
        error = session.misses[0]
    if cassette is not None and len(cassette.misses) > cassette_misses and error is None:
        error = cassette.misses[cassette_misses]  # the fallback hid it from the graph; the case must not pass
    session.unused = calls.unused_keys()
    ledger = [e.model_dump(mode="json") for e in toolbox.ledger.all()]
    usage = model_usage(chat_model).since(usage_before) if usage_before is not None else None
    run = CaseRun(
        case, outcome_of(state), session, state, error, round(time.perf_counter() - started, 3), ledger, usage
    )
    if memory is not None:
        run.stored_wording, run.stored_ungrounded = stored_grounding(
            memory, case.incident_id, list(case.topology)
        )
    return run


def stored_grounding(
    memory: PostMortemStore, incident_id: str, services: list[str]
) -> tuple[str | None, list[str]]:
    """Who worded the post-mortem memory holds for an incident, and its grounding problems (checked anew)."""
    stored = memory.get(incident_id)
    if stored is None:
        return None, []
    problems = check_postmortem(stored, facts_of(stored, services)) if stored.wording == "model" else []
    return stored.wording, problems


@contextmanager
def suite_memory(workdir: Path | None = None) -> Iterator[PostMortemStore]:
    """A fresh ChromaDB post-mortem store for one suite run."""
    # ChromaDB loads when a suite runs, not with the replay helpers.
    from memory.store import PostMortemStore

    with tempfile.TemporaryDirectory(prefix="sregraph-eval-memory-") as tmp:
        yield PostMortemStore(Path(workdir or tmp) / "memory")


def replay_suite(
    cases: list[LoadedCase],
    brain: str = "deterministic",
    chat_model: BaseChatModel | None = None,
    base_settings: Settings | None = None,
    on_case: Callable[[CaseRun], None] | None = None,
    memory: bool = True,
    cassette: Cassette | None = None,
) -> list[CaseRun]:
    """Replay cases in order, sharing one live memory store, each with its own ledger and checkpoints."""
    runs: list[CaseRun] = []
    with tempfile.TemporaryDirectory(prefix="sregraph-eval-") as tmp, suite_memory(Path(tmp)) as store:
        for i, loaded in enumerate(cases):
            run = replay_case(
                loaded,
                Path(tmp) / f"{i:03d}-{loaded.case.id}",
                store if memory else None,
                brain,
                chat_model,
                base_settings,
                cassette,
            )
            runs.append(run)
            if on_case is not None:
                on_case(run)
    return runs
