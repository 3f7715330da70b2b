"""The storage seam (tools/sql.py): the ledger, the run registry and the checkpointer behave the same on SQLite
and on Postgres; migrations run once; a DSN never carries a password."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sregraph.config import load_settings
from sregraph.engine import RunRegistry
from tests.pg import PostgresServer
from tools.base import ConfigError
from tools.domain import Trigger
from tools.ledger import ActionLedger
from tools.sql import Database, PostgresDatabase, SqlError, SqliteDatabase, StorageConfig, open_database


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """The same store on either backend."""
    if request.param == "sqlite":
        database: Database = SqliteDatabase(tmp_path / "store.db")
    else:
        database = PostgresDatabase(request.getfixturevalue("pg_dsn"))
    try:
        yield database
    finally:
        database.close()


def test_ledger_is_idempotent_on_both_backends(db: Database) -> None:
    ledger = ActionLedger(db)
    ledger.start("k1", "inc-1", "payments", "restart", {"v": 1}, 100.25)
    ledger.start("k1", "inc-1", "payments", "restart", {"v": 2}, 200.0)  # a re-run: no second row
    ledger.finish("k1", "done", "ok", "ref", 101.5)
    [entry] = ledger.all()
    assert (entry.status, entry.before, entry.started_at, entry.finished_at) == (
        "done",
        {"v": 1},
        100.25,
        101.5,
    )
    assert ledger.last_action_at("payments", "restart") == 101.5
    ledger.notification_sending("n1", "inc-1", "opened", 1_700_000_000.123456)
    ledger.notification_sending("n1", "inc-1", "opened", 1_700_000_001.0)
    assert ledger.notification_status("n1") == "sending"
    ledger.notification_sent("n1", 1_700_000_002.0)
    assert ledger.notifications("inc-1") == [("n1", "opened", "sent")]
    assert ledger.notification_status("nope") is None


def test_ledger_fence_stops_an_action_before_it_is_recorded(db: Database) -> None:
    refused: list[str] = []

    def fence(incident_id: str) -> None:
        refused.append(incident_id)
        raise RuntimeError("lease lost")

    ledger = ActionLedger(db, fence=fence)
    with pytest.raises(RuntimeError):
        ledger.start("k1", "inc-9", "payments", "restart", {}, 1.0)
    with pytest.raises(RuntimeError):
        ledger.notification_sending("n1", "inc-9", "opened", 1.0)
    assert refused == ["inc-9", "inc-9"] and ledger.all() == [] and ledger.notifications() == []


def test_registry_on_both_backends(db: Database) -> None:
    registry = RunRegistry(db)
    trigger = Trigger(source="alert", service="payments", signal="Down", summary="down", fired_at=5.0)
    registry.record("inc-1", trigger, "observing")
    registry.record("inc-2", None, "observing")
    registry.record("inc-1", None, "resolved")  # an update keeps the trigger
    assert registry.trigger("inc-1") == trigger and registry.trigger("inc-2") is None
    assert registry.exists("inc-1") and not registry.exists("inc-3")
    assert {r["incident_id"]: r["status"] for r in registry.list()} == {
        "inc-1": "resolved",
        "inc-2": "observing",
    }
    assert registry.attach("inc-1", "a", trigger) and not registry.attach("inc-1", "a", trigger)
    assert registry.attached("inc-1") == [("a", trigger)]
    assert registry.acknowledge("inc-1", "ann") and not registry.acknowledge("inc-1", "bob")
    assert (registry.acknowledgement("inc-1") or {})["by"] == "ann"
    # A final status is not the end of the thread: only mark_ended takes a run out of the adoptable ones.
    registry.record("inc-3", trigger, "awaiting_approval")
    assert registry.active() == ["inc-1", "inc-2"]
    registry.mark_ended("inc-1")
    assert registry.active() == ["inc-2"]


def test_migrations_run_once_even_when_processes_race(db: Database) -> None:
    """Eight stores opened at once on one database: each migration applied once, none failing."""
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            ActionLedger(db)
            RunRegistry(db)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    with db.read() as conn:
        rows = conn.execute(
            "SELECT component, version FROM sregraph_migrations ORDER BY component, version"
        ).fetchall()
    assert [tuple(r) for r in rows] == [
        ("ledger", 1),
        ("ledger", 2),
        ("registry", 1),
        ("registry", 2),
        ("registry", 3),
    ]


def test_exclusive_is_exclusive(db: Database) -> None:
    inside, overlaps = [0], []
    lock = threading.Lock()

    def critical() -> None:
        for _ in range(5):
            with db.exclusive("route"):
                with lock:
                    inside[0] += 1
                    overlaps.append(inside[0])
                threading.Event().wait(0.005)
                with lock:
                    inside[0] -= 1

    threads = [threading.Thread(target=critical) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(overlaps) == 20 and max(overlaps) == 1


def test_dsn_with_a_password_is_refused() -> None:
    with pytest.raises(ConfigError, match="must not contain a password"):
        load_settings(environ={}, storage={"backend": "postgres", "dsn": "host=db user=s password=hunter2"})
    with pytest.raises(ConfigError, match="must not contain a password") as caught:
        load_settings(
            environ={}, storage={"backend": "postgres", "dsn": "postgresql://s:hunter2@db/sregraph"}
        )
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigError, match="storage.dsn"):
        open_database(StorageConfig(backend="postgres"), Path("."), "ledger")


def test_password_comes_from_the_environment_over_tcp(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over TCP the server asks for a password: libpq finds it in PGPASSWORD, and a failure never shows it."""
    dsn = postgres_server.dsn(tcp=True)
    monkeypatch.setenv("PGPASSWORD", "wrong-password-123")
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "5")
    with pytest.raises(SqlError) as caught:
        PostgresDatabase(dsn)
    assert "wrong-password-123" not in str(caught.value)
    monkeypatch.setenv("PGPASSWORD", postgres_server.password)
    db = PostgresDatabase(dsn)
    try:
        with db.read() as conn:
            assert conn.execute("SELECT 1 + ?", (1,)).fetchone()[0] == 2
    finally:
        db.close()
    assert os.environ["PGPASSWORD"] not in dsn


def test_two_workers_storm_gates_on_one_storage_group_as_one(db: Database) -> None:
    """A storm split between two workers' gates yields the notifications one gate yields, each from one worker."""
    import random

    from sregraph.storm import SharedStormGate, StormGate
    from tests.fixtures.storm import T0, storm
    from tests.support import ManualClock

    options: dict[str, Any] = {
        "group_wait_s": 10,
        "group_interval_s": 120,
        "flap_window_s": 300,
        "max_flaps": 3,
    }
    clock = ManualClock(T0)
    alone = StormGate(clock, **options)
    gates = [SharedStormGate(db, clock, **options), SharedStormGate(db, clock, **options)]
    rng = random.Random(5)
    events = storm(random.Random(7), n=400)
    seen_alone: list[tuple[float, str, str, int]] = []
    seen_shared: list[tuple[float, str, str, int]] = []
    look = T0 + 1

    def collect() -> None:
        seen_alone.extend((clock.t, n.kind, n.key, n.firing) for n in alone.due())
        for gate in rng.sample(gates, 2):  # both workers look, in any order
            seen_shared.extend((clock.t, n.kind, n.key, n.firing) for n in gate.due())

    for at, a in events:
        while look <= at:
            clock.t = look
            collect()
            look += 1
        clock.t = at
        alone.ingest(a)
        rng.choice(gates).ingest_many([a])  # Alertmanager's webhook reaches one worker or the other
    for extra in (60 + 1, 60 + 130, 60 + 260, 60 + 400):
        clock.t = T0 + extra
        collect()
    assert [n for n in seen_alone if n[1] == "new"] and seen_shared == seen_alone
    assert gates[0].active() == alone.active()
