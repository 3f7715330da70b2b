"""Alert storms: deduplicate, suppress flapping and group alerts the way Alertmanager does, so a storm of
alerts for a handful of problems becomes a handful of incidents.

The clock is injected and nothing sleeps: call `due()` to collect notifications whose time has come.
The rules (group wait and interval, duplicates, flapping, resolution): docs/observability.md §4, The storm
gate.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sregraph.alerts import (
    SERVICE_LABELS,
    AlertGroup,
    AlertmanagerAlert,
    parse_webhook,
    service_of,
    trigger_for,
)
from tools.base import Clock, ConfigError, SystemClock
from tools.domain import Trigger

if TYPE_CHECKING:
    from tools.sql import Database

Outcome = Literal["grouped", "duplicate", "flapping", "resolved", "ignored", "dropped"]


@dataclass
class _AlertState:
    alert: AlertmanagerAlert
    firing: bool
    changes: deque[float] = field(default_factory=lambda: deque(maxlen=32))
    flapping_until: float = 0.0


@dataclass
class _Group:
    key: str
    service: str | None
    alertname: str
    created_at: float
    flush_at: float | None
    notified: bool = False
    new_alerts: int = 0
    resolved_at: float | None = None
    alerts: dict[str, _AlertState] = field(default_factory=dict)

    def firing(self) -> list[AlertmanagerAlert]:
        return [s.alert for s in self.alerts.values() if s.firing]


@dataclass(frozen=True)
class Notification:
    """What a group has to say: a new incident, more alerts for it, or that it is over."""

    kind: Literal["new", "update", "resolved"]
    key: str
    service: str | None
    alertname: str
    firing: int
    new_alerts: int
    trigger: Trigger


@dataclass
class StormStats:
    """Counters since start."""

    received: int = 0
    grouped: int = 0
    duplicates: int = 0
    flapping: int = 0
    resolved: int = 0
    ignored: int = 0
    dropped: int = 0
    notifications: dict[str, int] = field(default_factory=lambda: {"new": 0, "update": 0, "resolved": 0})


def alert_fingerprint(alert: AlertmanagerAlert) -> str:
    """One alert's identity: Alertmanager's fingerprint, else a hash of its sorted labels."""
    if alert.fingerprint:
        return alert.fingerprint
    canonical = json.dumps(alert.labels, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class StormGate:
    """Turns a stream of alerts into few notifications; thread-safe."""

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        group_wait_s: float = 30.0,
        group_interval_s: float = 300.0,
        flap_window_s: float = 600.0,
        max_flaps: int = 4,
        group_by: Sequence[str] = ("service", "alertname"),
        service_labels: Sequence[str] = SERVICE_LABELS,
        max_groups: int = 10_000,
        max_alerts_per_group: int = 5_000,
    ) -> None:
        """Alertmanager's defaults for the waits; the caps bound memory whatever arrives."""
        if min(group_wait_s, group_interval_s, flap_window_s) < 0 or max_flaps < 2:
            raise ConfigError("storm: waits must be >= 0 and max_flaps >= 2")
        self.clock: Clock = clock or SystemClock()
        self.group_wait_s, self.group_interval_s = group_wait_s, group_interval_s
        self.flap_window_s, self.max_flaps = flap_window_s, max_flaps
        self.group_by, self.service_labels = tuple(group_by), tuple(service_labels)
        self.max_groups, self.max_alerts_per_group = max_groups, max_alerts_per_group
        self.stats = StormStats()
        self._groups: dict[str, _Group] = {}
        self._lock = threading.Lock()

    def group_key(self, alert: AlertmanagerAlert) -> tuple[str, str | None]:
        """(group key, service) of an alert; `service` in group_by means the first of the service labels."""
        service = service_of(alert.labels, self.service_labels)
        parts = [
            (service or "-") if name == "service" else alert.labels.get(name, "-") for name in self.group_by
        ]
        return ":".join(parts), service

    # ------------------------------------------------------------------ ingestion

    def ingest(self, alert: AlertmanagerAlert) -> Outcome:
        """Take one alert; says what became of it."""
        now = self.clock.now()
        key, service = self.group_key(alert)
        fingerprint = alert_fingerprint(alert)
        firing = alert.status == "firing"
        with self._lock:
            self.stats.received += 1
            group = self._groups.get(key)
            if group is None:
                if not firing:
                    self.stats.ignored += 1
                    return "ignored"  # resolved news of an alert we never saw firing
                if len(self._groups) >= self.max_groups:
                    self.stats.dropped += 1
                    return "dropped"
                group = self._groups[key] = _Group(
                    key, service, alert.alertname, now, now + self.group_wait_s
                )
            state = group.alerts.get(fingerprint)
            if state is None:
                if not firing:
                    self.stats.ignored += 1
                    return "ignored"
                if len(group.alerts) >= self.max_alerts_per_group:
                    self.stats.dropped += 1
                    return "dropped"
                group.alerts[fingerprint] = _AlertState(alert, True)
                return self._joined(group, now)
            if state.firing == firing:
                state.alert = alert
                self.stats.duplicates += 1
                return "duplicate"
            if now < state.flapping_until:
                state.flapping_until = now + self.flap_window_s
                state.firing = True  # a flapping alert counts as firing until it settles
                self.stats.flapping += 1
                return "flapping"
            state.changes.append(now)
            recent = [t for t in state.changes if now - t <= self.flap_window_s]
            if len(recent) >= self.max_flaps:
                state.flapping_until = now + self.flap_window_s
                state.firing = True
                self.stats.flapping += 1
                return "flapping"
            state.alert, state.firing = alert, firing
            if firing:
                return self._joined(group, now)
            self.stats.resolved += 1
            if not group.firing():
                group.resolved_at = now
                group.flush_at = now + self.group_interval_s if group.notified else None
            return "resolved"

    def _joined(self, group: _Group, now: float) -> Outcome:
        self.stats.grouped += 1
        group.new_alerts += 1
        group.resolved_at = None
        if group.flush_at is None:
            group.flush_at = now + (self.group_interval_s if group.notified else self.group_wait_s)
        return "grouped"

    def ingest_many(self, alerts: Iterable[AlertmanagerAlert]) -> dict[str, int]:
        """Take several alerts; counts per outcome."""
        counts: dict[str, int] = {}
        for alert in alerts:
            outcome = self.ingest(alert)
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts

    def ingest_body(self, body: bytes | str) -> dict[str, int]:
        """Validate an Alertmanager webhook body (alerts.WebhookError 400/422 if broken) and take its alerts."""
        return self.ingest_many(parse_webhook(body).alerts)

    # ------------------------------------------------------------------ output

    def due(self) -> list[Notification]:
        """Notifications whose wait is over, oldest group first."""
        now = self.clock.now()
        out: list[Notification] = []
        with self._lock:
            for key, group in sorted(self._groups.items(), key=lambda kv: kv[1].created_at):
                if group.flush_at is None or group.flush_at > now:
                    continue
                firing = group.firing()
                if not firing:
                    if group.notified:
                        out.append(
                            self._notice("resolved", group, group.alerts[next(iter(group.alerts))].alert)
                        )
                    del self._groups[key]
                    continue
                kind: Literal["new", "update"] = "update" if group.notified else "new"
                out.append(self._notice(kind, group, *firing))
                group.notified, group.new_alerts = True, 0
                group.flush_at = None
            for notice in out:
                self.stats.notifications[notice.kind] += 1
        return out

    def _notice(
        self, kind: Literal["new", "update", "resolved"], group: _Group, *alerts: AlertmanagerAlert
    ) -> Notification:
        trigger = trigger_for(AlertGroup(group.key, group.service, group.alertname, list(alerts)))
        labels = {**trigger.labels, "fingerprint": group.key}
        return Notification(
            kind,
            group.key,
            group.service,
            group.alertname,
            len(alerts),
            group.new_alerts,
            trigger.model_copy(update={"labels": labels}),
        )

    def active(self) -> dict[str, int]:
        """Groups and how many of their alerts fire."""
        with self._lock:
            return {key: len(group.firing()) for key, group in self._groups.items()}

    def forward(self, submit: Callable[[Trigger], object]) -> list[Notification]:
        """Hand due notifications to the worker (`Worker.submit`): new and update groups as triggers."""
        notices = self.due()
        for notice in notices:
            if notice.kind != "resolved":
                submit(notice.trigger)
        return notices


STORM_MIGRATIONS = [
    "CREATE TABLE IF NOT EXISTS storm_groups "
    "(key TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL, state TEXT NOT NULL)",
]
"""The shared storm gate's table (tools.sql migrations)."""


class SharedStormGate(StormGate):
    """A StormGate whose groups live in the shared storage, for several workers behind one Alertmanager.

    Every batch of alerts and every `due()` runs under a cluster-wide lock on the latest groups read from the
    database and writes back the groups it changed, so the same storm seen by several workers is grouped,
    deduplicated and flap-suppressed as by one, and each group's notification is emitted by one worker only.
    The counters in `stats` stay per worker.
    """

    def __init__(self, db: Database, clock: Clock | None = None, **options: Any) -> None:
        super().__init__(clock, **options)
        self.db = db
        db.migrate("storm", STORM_MIGRATIONS)

    def ingest(self, alert: AlertmanagerAlert) -> Outcome:
        """Take one alert (see StormGate.ingest), against the shared groups."""
        return next(iter(self._shared(lambda: [StormGate.ingest(self, alert)])))

    def ingest_many(self, alerts: Iterable[AlertmanagerAlert]) -> dict[str, int]:
        """Take a webhook's alerts under one lock and one read and write of their groups."""
        batch = list(alerts)

        def take() -> list[Outcome]:
            return [StormGate.ingest(self, alert) for alert in batch]

        counts: dict[str, int] = {}
        for outcome in self._shared(take):
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts

    def due(self) -> list[Notification]:
        """Due notifications of the shared groups; each is emitted by the one worker that finds it due."""
        return self._shared(lambda: StormGate.due(self))

    def active(self) -> dict[str, int]:
        """Groups and how many of their alerts fire, as stored."""
        with self.db.read() as conn:
            rows = conn.execute("SELECT key, state FROM storm_groups").fetchall()
        return {r[0]: len(_group_from(json.loads(r[1])).firing()) for r in rows}

    def _shared(self, body: Callable[[], list[Any]]) -> list[Any]:
        with self.db.exclusive("storm"):
            with self.db.read() as conn:
                rows = conn.execute("SELECT key, state FROM storm_groups").fetchall()
            with self._lock:
                self._groups = {r[0]: _group_from(json.loads(r[1])) for r in rows}
                before = {key: _group_to(group) for key, group in self._groups.items()}
            result = body()
            with self._lock:
                after = {key: _group_to(group) for key, group in self._groups.items()}
                self._groups = {}
            with self.db.connect() as conn:
                for key in before.keys() - after.keys():
                    conn.execute("DELETE FROM storm_groups WHERE key = ?", (key,))
                for key, state in after.items():
                    if before.get(key) != state:
                        conn.execute(
                            "INSERT INTO storm_groups VALUES (?, ?, ?) "
                            "ON CONFLICT (key) DO UPDATE SET state = excluded.state",
                            (key, state["created_at"], json.dumps(state)),
                        )
        return result


def _group_to(group: _Group) -> dict[str, Any]:
    return {
        "key": group.key,
        "service": group.service,
        "alertname": group.alertname,
        "created_at": group.created_at,
        "flush_at": group.flush_at,
        "notified": group.notified,
        "new_alerts": group.new_alerts,
        "resolved_at": group.resolved_at,
        "alerts": {
            fp: {
                "alert": s.alert.model_dump(mode="json", by_alias=True),
                "firing": s.firing,
                "changes": list(s.changes),
                "flapping_until": s.flapping_until,
            }
            for fp, s in group.alerts.items()
        },
    }


def _group_from(data: dict[str, Any]) -> _Group:
    group = _Group(
        data["key"],
        data["service"],
        data["alertname"],
        data["created_at"],
        data["flush_at"],
        data["notified"],
        data["new_alerts"],
        data["resolved_at"],
    )
    for fp, s in data["alerts"].items():
        group.alerts[fp] = _AlertState(
            AlertmanagerAlert.model_validate(s["alert"]),
            s["firing"],
            deque(s["changes"], maxlen=32),
            s["flapping_until"],
        )
    return group
