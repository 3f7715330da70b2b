"""A throwaway PostgreSQL for the tests (scripts/postgres.sh): started once per session, a fresh database per test.

Tests that need it take `pg_dsn` (a new empty database, dropped afterwards) or `postgres_server`. Without a
PostgreSQL server binary (`bash scripts/postgres.sh install`) they skip and say so.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "postgres.sh"


@dataclass
class PostgresServer:
    """A running test server: its directory (the unix socket's too), TCP port and password."""

    dir: Path
    port: int
    password: str

    def dsn(self, dbname: str = "sregraph", tcp: bool = False) -> str:
        """A DSN without a password: over the socket (trusted), or over TCP (the password comes from PGPASSWORD)."""
        host = "127.0.0.1" if tcp else str(self.dir)
        return f"host={host} port={self.port} user=sregraph dbname={dbname}"

    def admin(self, sql: str) -> None:
        """Run one statement as the superuser on the maintenance database (autocommit)."""
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql)

    def new_database(self) -> str:
        """A fresh empty database; its name."""
        name = f"t_{secrets.token_hex(6)}"
        self.admin(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, ending whatever sessions are still on it."""
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _have_server() -> bool:
    return any(Path(d, "postgres").exists() for d in Path("/usr/lib/postgresql").glob("*/bin")) or bool(
        shutil.which("pg_ctl")
    )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL for the session, in a temp dir, stopped and removed at the end."""
    if not _have_server():
        pytest.skip("no PostgreSQL server: bash scripts/postgres.sh install (or scripts/setup.sh --test)")
    directory = Path(tempfile.mkdtemp(prefix="sregraph-pg-"))
    password = secrets.token_hex(16)
    env = {**os.environ, "SREGRAPH_PG_TEST_PASSWORD": password}
    env.pop("PGPORT", None)
    try:
        started = subprocess.run(
            ["bash", str(SCRIPT), "start", str(directory)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if started.returncode != 0:
            pytest.fail(f"scripts/postgres.sh start failed: {started.stderr[-2000:]}")
        port = int(
            dict(line.split("=", 1) for line in started.stdout.splitlines() if line.startswith("port="))[
                "port"
            ]
        )
        yield PostgresServer(directory, port, password)
    finally:
        subprocess.run(
            ["bash", str(SCRIPT), "stop", str(directory)], capture_output=True, timeout=120, check=False
        )
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def pg_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database on the session's server (socket DSN), dropped after the test."""
    name = postgres_server.new_database()
    try:
        yield postgres_server.dsn(name)
    finally:
        postgres_server.drop_database(name)
