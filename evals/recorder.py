"""Record mode: proxies that wrap each backend of a `Toolbox` in place (agents holding the toolbox see them),
pass every call through and, while an incident is being recorded, log it with its result (pydantic models
dumped to JSON; exceptions recorded as errors to re-raise), telemetry queries and clock reads included."""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from typing import Any, TypeVar

from evals.calls import TOOLS, bind_args, caller_name, protocol_methods, result_adapter
from evals.telemetry_tables import TelemetryLog
from sregraph.observability import incident_var
from tools.base import Clock, LogRecord, Series, Span, Telemetry
from tools.toolbox import Toolbox

_R = TypeVar("_R")


@dataclass
class Recording:
    """Everything one recorded incident produced, ready to be written as a case."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    telemetry: TelemetryLog = field(default_factory=TelemetryLog)
    ledger_seed: list[dict[str, Any]] = field(default_factory=list)
    started_at: float = 0.0


def latest_actions(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ledger rows cooldowns look at: the latest started or done action per service and kind."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        if row.get("status") not in ("started", "done"):
            continue
        key = (row["service"], row["kind"])
        at = row.get("finished_at") or row["started_at"]
        if key not in latest or at > (latest[key].get("finished_at") or latest[key]["started_at"]):
            latest[key] = row
    return sorted(latest.values(), key=lambda r: r["started_at"])


class Recorder:
    """Logs tool calls of the incidents being recorded; proxies installed by `attach` pass everything through.

    Several incidents may run at once (the worker runs them on a thread pool): each call is filed under the
    incident the engine is working for (`sregraph.observability.incident_var`, set for every step of a run).
    """

    def __init__(self) -> None:
        self.recordings: dict[str, Recording] = {}
        self._lock = threading.Lock()
        self.toolbox: Toolbox | None = None

    @property
    def active(self) -> bool:
        """Whether any incident is being recorded."""
        return bool(self.recordings)

    def attach(self, toolbox: Toolbox) -> Recorder:
        """Swap the toolbox's backends for recording proxies, in place (agents already hold the toolbox)."""
        if self.toolbox is not None:
            raise RuntimeError("this recorder is already attached")
        self.toolbox = toolbox
        toolbox.telemetry = RecordingTelemetry(toolbox.telemetry, self)
        for name, protocol in TOOLS.items():
            setattr(toolbox, name, RecordingProxy(name, protocol, getattr(toolbox, name), self))
        toolbox.clock = RecordingClock(toolbox.clock, self)
        return self

    def begin(self, incident_id: str, lookback_s: float = 3600.0) -> None:
        """Start recording one incident; the ledger's recent rows become the case's seed."""
        assert self.toolbox is not None, "attach the recorder to a toolbox first"
        clock = self.toolbox.clock
        now = clock.inner.now() if isinstance(clock, RecordingClock) else clock.now()
        seed = latest_actions(
            [e.model_dump(mode="json") for e in self.toolbox.ledger.all() if e.started_at >= now - lookback_s]
        )
        with self._lock:
            self.recordings[incident_id] = Recording(ledger_seed=seed, started_at=now)

    def end(self, incident_id: str) -> Recording:
        """Stop recording one incident and hand back what was recorded."""
        with self._lock:
            return self.recordings.pop(incident_id, Recording())

    def _current(self) -> Recording | None:
        return self.recordings.get(incident_var.get())

    def recording_now(self) -> bool:
        """Whether the calling code works for an incident being recorded."""
        return bool(self.recordings) and self._current() is not None

    def log_call(self, entry: dict[str, Any]) -> None:
        """Append one call to the current incident's recording (if it is being recorded)."""
        with self._lock:
            current = self._current()
            if current is not None:
                current.calls.append(entry)

    def log_query(self, method: str, args: dict[str, Any], result: Any) -> None:
        """Append one telemetry query to the current incident's recording."""
        with self._lock:
            current = self._current()
            if current is not None:
                current.telemetry.add(method, args, result)


class RecordingProxy:
    """Passes every call to the real backend; logs protocol calls with their results or errors."""

    def __init__(self, tool: str, protocol: type, inner: Any, recorder: Recorder) -> None:
        self._tool, self._protocol, self._inner, self._recorder = tool, protocol, inner, recorder

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in protocol_methods(self._protocol) or not callable(attr):
            return attr
        tool, protocol, recorder = self._tool, self._protocol, self._recorder
        adapter = result_adapter(protocol, name)

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            if not recorder.recording_now():
                return attr(*args, **kwargs)
            named = bind_args(protocol, name, args, kwargs)
            entry: dict[str, Any] = {"tool": tool, "method": name, "args": named}
            try:
                result = attr(*args, **kwargs)
            except Exception as exc:
                entry["error"] = {"type": type(exc).__name__, "message": str(exc)}
                recorder.log_call(entry)
                raise
            entry["result"] = adapter.dump_python(result, mode="json")
            recorder.log_call(entry)
            return result

        return call


class RecordingTelemetry:
    """Telemetry proxy: queries pass through; what they return goes into the recording's telemetry log."""

    def __init__(self, inner: Telemetry, recorder: Recorder) -> None:
        self._inner, self._recorder = inner, recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _log(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], result: _R) -> _R:
        if self._recorder.recording_now():
            self._recorder.log_query(method, bind_args(Telemetry, method, args, kwargs), result)
        return result

    def query_range(self, *args: Any, **kwargs: Any) -> list[Series]:
        """Series in a window (recorded)."""
        return self._log("query_range", args, kwargs, self._inner.query_range(*args, **kwargs))

    def search_logs(self, *args: Any, **kwargs: Any) -> list[LogRecord]:
        """Log records in a window (recorded)."""
        return self._log("search_logs", args, kwargs, self._inner.search_logs(*args, **kwargs))

    def spans(self, *args: Any, **kwargs: Any) -> list[Span]:
        """Spans in a window (recorded)."""
        return self._log("spans", args, kwargs, self._inner.spans(*args, **kwargs))

    def metric_names(self) -> list[str]:
        """Metric names (recorded)."""
        return self._log("metric_names", (), {}, self._inner.metric_names())


class RecordingClock:
    """The real clock; each read is recorded with the function that made it (replay pins per caller)."""

    def __init__(self, inner: Clock, recorder: Recorder) -> None:
        self.inner, self._recorder = inner, recorder

    def now(self) -> float:
        """Real time, recorded."""
        value = self.inner.now()
        if self._recorder.recording_now():
            self._recorder.log_call({"tool": "clock", "method": "now", "by": caller_name(), "result": value})
        return value

    def sleep(self, seconds: float) -> None:
        """Real sleep (not recorded: replay time moves by the recorded reads)."""
        self.inner.sleep(seconds)
