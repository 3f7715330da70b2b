"""The job queue: procrastinate on the storage's Postgres (`storage.job_queue: procrastinate`).

New incidents (from alerts, scans or issues), incidents to resume (adopted from a worker that died) and approval
decisions become jobs in the `incidents` queue; every `sregraph worker` consumes it, so any worker on any machine
takes any of them, woken by Postgres LISTEN/NOTIFY. A job only asks for work: the incident's lease
(sregraph/leases.py) still decides who runs it, and the checkpoints and the ledger still make a re-run repeat
nothing. A job for an incident that already has one waiting is not queued twice (procrastinate's queueing lock).

Deferring uses a synchronous procrastinate app; consuming runs procrastinate's worker on an event loop in a
thread of its own, whose jobs run the (synchronous) incident steps in threads.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import procrastinate
import psycopg
from procrastinate import exceptions

from tools.base import SregraphError
from tools.sql import CONNECT_TIMEOUT_S, POOL_TIMEOUT_S, STATEMENT_TIMEOUT_MS, Database

log = logging.getLogger("sregraph.jobs")

QUEUE = "incidents"
RUN = "sregraph.run_incident"
DECIDE = "sregraph.decide"


def _pool_args(dsn: str, max_size: int) -> dict[str, Any]:
    return {
        "conninfo": dsn,
        "min_size": 1,
        "max_size": max_size,
        "timeout": POOL_TIMEOUT_S,
        "kwargs": {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 2,
        },
    }


class JobQueue:
    """Defers and consumes this worker's jobs."""

    def __init__(self, dsn: str, db: Database) -> None:
        self.dsn = dsn
        self._sender = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(**_pool_args(dsn, 2)))
        self._sender.open()
        self._migrate(db)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._started = threading.Event()

    def _migrate(self, db: Database) -> None:
        """procrastinate's schema, once per database (its version recorded with ours)."""
        with db.exclusive("procrastinate-schema"), db.connect() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS sregraph_migrations (component TEXT NOT NULL, version INTEGER NOT NULL,"
                " PRIMARY KEY (component, version))"
            )
            done = conn.execute(
                "SELECT 1 FROM sregraph_migrations WHERE component = 'procrastinate'"
            ).fetchone()
        if done is None:
            self._sender.schema_manager.apply_schema()
            with db.connect() as conn:
                conn.execute("INSERT INTO sregraph_migrations VALUES ('procrastinate', 1)")

    # ------------------------------------------------------------------ deferring

    def defer_run(self, incident_id: str) -> bool:
        """Queue a run of the incident; False if one is already waiting."""
        try:
            self._sender.configure_task(RUN, queue=QUEUE, queueing_lock=f"run:{incident_id}").defer(
                incident_id=incident_id
            )
        except exceptions.AlreadyEnqueued:
            return False
        except exceptions.ConnectorException as exc:
            raise SregraphError(f"job queue: cannot queue {incident_id}: {exc.__class__.__name__}") from None
        return True

    def defer_decision(self, incident_id: str, decision: dict[str, Any]) -> None:
        """Queue a human's decision on the incident's approval gate."""
        try:
            self._sender.configure_task(DECIDE, queue=QUEUE).defer(incident_id=incident_id, decision=decision)
        except exceptions.ConnectorException as exc:
            raise SregraphError(
                f"job queue: cannot queue the decision on {incident_id}: {exc.__class__.__name__}"
            ) from None

    # ------------------------------------------------------------------ consuming

    def start(
        self,
        run: Callable[[str], Any],
        decide: Callable[[str, dict[str, Any]], Any],
        concurrency: int,
        name: str,
    ) -> None:
        """Consume the queue on a thread of its own until `stop`."""
        app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(**_pool_args(self.dsn, concurrency + 2))
        )

        @app.task(name=RUN, queue=QUEUE)
        def run_incident(incident_id: str) -> None:
            run(incident_id)

        @app.task(name=DECIDE, queue=QUEUE)
        def decide_incident(incident_id: str, decision: dict[str, Any]) -> None:
            decide(incident_id, decision)

        async def consume() -> None:
            async with app.open_async():
                self._task = asyncio.current_task()
                self._started.set()
                await app.run_worker_async(
                    queues=[QUEUE],
                    concurrency=concurrency,
                    name=name,
                    wait=True,
                    install_signal_handlers=False,
                    fetch_job_polling_interval=2.0,
                    update_heartbeat_interval=5.0,
                )

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(consume())
            except asyncio.CancelledError:
                pass  # stopped
            except Exception:
                log.exception("the job queue consumer stopped")
            finally:
                self._started.set()
                loop.close()

        self._thread = threading.Thread(target=main, name="job-queue", daemon=True)
        self._thread.start()
        self._started.wait(30)

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop consuming (running jobs finish their step first) and close the connections (idempotent)."""
        if self._thread is not None and self._loop is not None and self._task is not None:
            try:
                self._loop.call_soon_threadsafe(self._task.cancel)
            except RuntimeError:
                pass  # its loop already ended
            self._thread.join(timeout_s)
        self._thread = None
        self._sender.close()

    def jobs(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(task, status, arguments) of every job, oldest first (tests and operators)."""
        with psycopg.connect(self.dsn, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            rows = conn.execute(
                "SELECT task_name, status::text, args FROM procrastinate_jobs ORDER BY id"
            ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]
