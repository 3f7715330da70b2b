"""The live feed: what the graph does, step by step, for the dashboard and any other reader of the API.

The engine's progress hook (called from the incident threads) appends events to a bounded in-memory log with
increasing sequence numbers; readers (the API's server-sent-event stream) ask for what came after the last
number they saw, so a reader that reconnects with `Last-Event-ID` misses nothing still in the log. The log is
a view of the process's recent activity, not a record: the checkpointer and the incident surface are that.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

PHASES = {
    "observe": "observe",
    "open_incident": "observe",
    "analyze": "diagnose",
    "plan": "diagnose",
    "approval": "act",
    "act": "act",
    "verify": "verify",
    "escalate": "escalate",
    "document": "document",
    "__interrupt__": "act",
}
"""The phase of the incident lifecycle each graph node belongs to (others are reported as their own name)."""


@dataclass
class Event:
    """One graph step of one incident, as the feed shows it."""

    seq: int
    at: float
    incident_id: str
    node: str
    phase: str
    status: str | None
    lines: list[str] = field(default_factory=list)
    """The timeline entries the step added."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


class EventLog:
    """The newest `capacity` events, safe to append from any thread."""

    def __init__(self, capacity: int = 2000) -> None:
        self._events: deque[Event] = deque(maxlen=capacity)
        self._seq = 0
        self._changed = threading.Condition()

    def publish(self, incident_id: str, node: str, update: dict[str, Any] | None) -> Event:
        """Append one step's event (the engine's progress hook calls this)."""
        update = update or {}
        lines = [str(getattr(entry, "event", entry)) for entry in update.get("timeline", [])]
        status = "awaiting_approval" if node == "__interrupt__" else update.get("status")
        with self._changed:
            self._seq += 1
            event = Event(self._seq, time.time(), incident_id, node, PHASES.get(node, node), status, lines)
            self._events.append(event)
            self._changed.notify_all()
        return event

    def after(self, seq: int) -> list[Event]:
        """Events with a sequence number above `seq`, oldest first."""
        with self._changed:
            return [e for e in self._events if e.seq > seq]

    @property
    def last(self) -> int:
        """The newest sequence number (0 before any event)."""
        with self._changed:
            return self._seq
