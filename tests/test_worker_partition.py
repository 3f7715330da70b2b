"""A worker cut off from Postgres stops acting before its lease expires, and only then may another worker take the
incident. The cut is real: the worker reaches Postgres through a TCP relay that the test turns into a black hole
(packets swallowed, connections left hanging, as a partition does), while the incident's outside effects (issue
comments on the local tracker) stay reachable, so only the lease fence can stop them.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from evals.harness import World, settings_for, toolbox_for
from sregraph.engine import Engine
from sregraph.leases import Leases, lease_log, overlaps
from sregraph.observability import incident_var
from sregraph.worker import Worker
from tests.pg import PostgresServer
from tools.domain import Trigger
from tools.sql import PostgresDatabase

TTL_S = 3.0


class Relay:
    """A TCP relay to Postgres on loopback; `blackhole()` stops every byte both ways without closing anything."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = False
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self.lock:
                if self.closed:
                    client.close()
                    return
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self.flowing.wait()  # a black hole: the bytes are held, never delivered
                if self.closed:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def blackhole(self) -> None:
        """Stop forwarding; connections stay open and silent."""
        self.flowing.clear()

    def close(self) -> None:
        """End every connection (idempotent)."""
        with self.lock:
            self.closed = True
        self.flowing.set()
        self.acceptor.join(5)
        self.listener.close()
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


@pytest.mark.slow
def test_worker_cut_from_postgres_stops_acting_before_its_lease_expires(
    tmp_path: Path, postgres_server: PostgresServer, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = Relay(postgres_server.port)
    dbname = pg_dsn.rsplit("dbname=", 1)[1]
    monkeypatch.setenv("PGPASSWORD", postgres_server.password)
    monkeypatch.setenv("HARNESS_DSN", f"host=127.0.0.1 port={relay.port} user=sregraph dbname={dbname}")
    monkeypatch.setenv("HARNESS_LEASE_TTL", str(TTL_S))
    root = tmp_path / "world"
    world = World.create(root)
    toolbox = toolbox_for(world)
    engine = Engine(settings_for(root), toolbox)
    worker = Worker(engine, leases=Leases(engine.registry.db, ttl_s=TTL_S, reap_local=False))
    other_db = PostgresDatabase(pg_dsn)  # another worker, on the database directly
    other = Leases(other_db, ttl_s=TTL_S, reap_local=False)
    issue, _ = toolbox.incidents.open_issue("payments down", "body", ["incident"], "fp-partition")
    engine.registry.record("inc-cut", Trigger(source="alert", service="payments"), "observing")
    acts: list[float] = []
    stopped: list[BaseException] = []

    def run_incident(incident_id: str) -> None:
        """Stands in for a long step: comments on the issue (a fenced outside effect) until it may not."""
        token = incident_var.set(incident_id)
        try:
            while True:
                toolbox.incidents.comment(issue.id, "still acting", key=None)
                acts.append(time.time())
                time.sleep(0.05)
        except BaseException as exc:
            stopped.append(exc)
            raise
        finally:
            incident_var.reset(token)

    try:
        assert worker._launch("inc-cut", run_incident, "inc-cut")
        deadline = time.monotonic() + 10
        while not acts and time.monotonic() < deadline:
            time.sleep(0.05)
        assert acts, "the worker never started acting"
        time.sleep(TTL_S * 1.5)  # the heartbeat keeps the lease past its first ttl
        assert acts[-1] - acts[0] > TTL_S and not other.acquire("inc-cut")

        relay.blackhole()
        cut_at = time.time()
        taken_at = None
        while time.monotonic() < deadline + 30:
            if other.acquire("inc-cut"):
                taken_at = time.time()
                break
            time.sleep(0.05)
        assert taken_at is not None, "no other worker could take the incident"
        time.sleep(0.5)
        # The relay acknowledges what it swallows, so the cut worker's database calls (giving the lease back)
        # hang until it goes; a real partition ends them by TCP timeouts. Its outside effects stopped already.
        relay.close()
        assert worker.wait_idle(30)
    finally:
        relay.close()
        other.release("inc-cut")
        other.stop_heartbeat()
        other_db.close()
        worker.leases.stop_heartbeat()
        engine.close()
        toolbox.close()

    [stop] = stopped
    assert type(stop).__name__ == "LeaseLost"
    last_act = max(acts)
    assert last_act > cut_at  # it went on acting after the cut (nothing but the fence could stop it)...
    assert last_act - cut_at < TTL_S  # ...and stopped within the lease's time
    db = PostgresDatabase(pg_dsn)
    try:
        tenures = lease_log(db)
    finally:
        db.close()
    mine = [t for t in tenures if t["owner"] == worker.leases.owner]
    theirs = [t for t in tenures if t["owner"] == other.owner]
    assert len(mine) == 1 and len(theirs) == 1 and overlaps(tenures) == []
    assert last_act < mine[0]["expires_at"] <= theirs[0]["acquired_at"]  # stopped before its lease expired
    print(
        f"\npartition: stopped {last_act - cut_at:.2f} s after the cut, {mine[0]['expires_at'] - last_act:.2f} s "
        f"before its lease expired; the other worker took over {theirs[0]['acquired_at'] - cut_at:.2f} s after the cut"
    )
