"""One small SQL interface over two backends: SQLite files (the embedded default) and PostgreSQL (scale-out).

The stores built on it (the action ledger, the run registry, the leases) write one dialect: `?` placeholders,
`ON CONFLICT ... DO NOTHING`, `DOUBLE PRECISION` times, no `lastrowid`. `Database.connect()` is one transaction,
committed when the block ends and rolled back on an exception; rows answer both `row[0]` and `row["name"]`.

Schemas change only through numbered migrations (`Database.migrate`), recorded per component in
`sregraph_migrations`; on Postgres they run under an advisory lock, so workers starting together apply each once.

Postgres connections come from one pool per DSN and process (shared by the stores and the checkpointer, closed
when the last user closes). A DSN never carries a password: libpq reads it from $PGPASSWORD or ~/.pgpass, so it
is never in a settings file, a log line or an error message. psycopg is imported only where Postgres is used,
so the SQLite default never loads it.

    SqlError            a database call failed (a connection, a constraint, a timeout); carries no DSN
"""

from __future__ import annotations

import fcntl
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tools.base import ConfigError, SregraphError

CONNECT_TIMEOUT_S = 5
"""How long opening a Postgres connection may take."""
STATEMENT_TIMEOUT_MS = 30_000
"""How long one Postgres statement may run before the server cancels it."""
POOL_TIMEOUT_S = 10.0
"""How long a caller waits for a pooled Postgres connection."""


class SqlError(SregraphError):
    """A database call failed; the message names the operation, never the DSN."""


class Row(tuple[Any, ...]):
    """A result row read by position or by column name, like sqlite3.Row."""

    _names: tuple[str, ...]

    def __new__(cls, names: tuple[str, ...], values: Sequence[Any]) -> Self:
        """A row of `values` whose columns are called `names`."""
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names.index(key))
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        """Column names, in order."""
        return list(self._names)


class Cursor(Protocol):
    """What `Conn.execute` returns."""

    rowcount: int

    def fetchone(self) -> Any:
        """The next row, or None."""

    def fetchall(self) -> list[Any]:
        """Every remaining row."""


class Conn(Protocol):
    """One transaction on either backend."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Run one statement with `?` placeholders."""


class Database(Protocol):
    """A SQLite file or a Postgres database, as the stores see it."""

    backend: str
    """"sqlite" or "postgres"."""
    now_sql: str
    """An SQL expression for the database's clock in Unix seconds (leases use it, not the callers' clocks)."""

    def connect(self) -> Any:
        """A context manager: one transaction, yielding a `Conn`."""

    def read(self) -> Any:
        """A context manager yielding a `Conn` for reads only (no write lock taken on SQLite)."""

    def migrate(self, component: str, migrations: Sequence[str]) -> None:
        """Apply the migrations of `component` not yet applied, in order (each a script of statements)."""

    def exclusive(self, name: str) -> Any:
        """A context manager held by one process (of any machine sharing the database) at a time."""

    def close(self) -> None:
        """Release this handle (a shared pool closes with its last handle)."""


_MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS sregraph_migrations (component TEXT NOT NULL, version INTEGER NOT NULL,"
    " PRIMARY KEY (component, version))"
)


# ---------------------------------------------------------------------------------------------------- SQLite


class SqliteDatabase:
    """A SQLite file, a connection per transaction (safe between threads and processes on one machine)."""

    backend = "sqlite"
    now_sql = "((julianday('now') - 2440587.5) * 86400.0)"

    def __init__(self, path: Path | str, timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._wal()

    def _wal(self) -> None:
        """WAL mode, once (it persists in the file): readers never wait for the writer. Switching modes does not
        wait on the busy timeout, so a race with another opener is retried here."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                with closing(sqlite3.connect(self.path, timeout=self.timeout_s)) as conn:
                    conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise SqlError(f"cannot open {self.path.name}: {exc}") from exc
                time.sleep(0.02)

    def _open(self) -> sqlite3.Connection:
        """A connection in autocommit mode (transactions are begun explicitly), rows readable by name."""
        try:
            conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        except sqlite3.Error as exc:
            raise SqlError(f"cannot open {self.path.name}: {exc}") from exc
        conn.row_factory = sqlite3.Row
        return conn

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """One transaction (BEGIN IMMEDIATE: writers queue instead of failing mid-way)."""
        with closing(self._open()) as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise SqlError(f"cannot start a transaction on {self.path.name}: {exc}") from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(conn)
                raise SqlError(f"{self.path.name}: {exc}") from exc
            except BaseException:
                _rollback(conn)
                raise

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """Reads in autocommit: WAL readers never wait for a writer."""
        with closing(self._open()) as conn:
            try:
                yield conn
            except sqlite3.Error as exc:
                raise SqlError(f"{self.path.name}: {exc}") from exc

    def migrate(self, component: str, migrations: Sequence[str]) -> None:
        """Apply pending migrations (BEGIN IMMEDIATE serialises processes racing to do it)."""
        with self.connect() as conn:
            _apply_migrations(conn, component, migrations)

    @contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """A file lock beside the database (processes), and a lock per name (this process's threads)."""
        with self._locks_lock:
            local = self._locks.setdefault(name, threading.Lock())
        with local, open(self.path.with_name(f"{self.path.name}.{name}.lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def close(self) -> None:
        """Nothing stays open between transactions."""


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # no transaction left to roll back


def _apply_migrations(conn: Any, component: str, migrations: Sequence[str]) -> None:
    """Run, inside the caller's transaction, the migrations of `component` not yet recorded as applied."""
    conn.execute(_MIGRATIONS_TABLE)
    done = {
        r[0]
        for r in conn.execute(
            "SELECT version FROM sregraph_migrations WHERE component = ?", (component,)
        ).fetchall()
    }
    for version, script in enumerate(migrations, start=1):
        if version in done:
            continue
        for statement in _statements(script):
            conn.execute(statement)
        conn.execute("INSERT INTO sregraph_migrations VALUES (?, ?)", (component, version))


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


# ---------------------------------------------------------------------------------------------------- Postgres


class _PgConn:
    """A psycopg connection inside a transaction, speaking the `?` dialect."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        cur = self._conn.cursor(row_factory=_row_factory)
        cur.execute(sql.replace("%", "%%").replace("?", "%s"), tuple(params))
        return cur


def _row_factory(cursor: Any) -> Any:
    names = tuple(c.name for c in cursor.description or ())

    def make(values: Sequence[Any]) -> Row:
        return Row(names, values)

    return make


class _SharedPool:
    """One psycopg pool per DSN in this process, counted by its users."""

    lock = threading.Lock()
    pools: ClassVar[dict[str, tuple[Any, int]]] = {}

    @classmethod
    def acquire(cls, dsn: str, max_size: int) -> Any:
        import psycopg
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool, PoolTimeout

        with cls.lock:
            pool, users = cls.pools.get(dsn, (None, 0))
            if pool is None:
                pool = ConnectionPool(
                    dsn,
                    min_size=1,
                    max_size=max_size,
                    timeout=POOL_TIMEOUT_S,
                    # What LangGraph's PostgresSaver needs of its connections, and what our stores expect.
                    kwargs={
                        "autocommit": True,
                        "prepare_threshold": 0,
                        "row_factory": dict_row,
                        "connect_timeout": CONNECT_TIMEOUT_S,
                        "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                        # A peer gone silent (a cut network) is noticed in seconds, not hours.
                        "keepalives": 1,
                        "keepalives_idle": 5,
                        "keepalives_interval": 2,
                        "keepalives_count": 2,
                        "tcp_user_timeout": 10_000,
                    },
                    check=ConnectionPool.check_connection,
                    open=False,
                    name="sregraph",
                )
                try:
                    pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 2)
                except (psycopg.Error, PoolTimeout) as exc:
                    pool.close()
                    raise SqlError(f"cannot connect to Postgres: {_safe(exc)}") from None
            cls.pools[dsn] = (pool, users + 1)
            return pool

    @classmethod
    def release(cls, dsn: str) -> None:
        with cls.lock:
            pool, users = cls.pools.get(dsn, (None, 0))
            if pool is None:
                return
            if users <= 1:
                del cls.pools[dsn]
                pool.close()
            else:
                cls.pools[dsn] = (pool, users - 1)


def _safe(exc: BaseException) -> str:
    """An error's message without anything that looks like a connection string's password."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return " ".join("password=***" if word.lower().startswith("password=") else word for word in text.split())


def check_dsn(dsn: str) -> str:
    """The DSN if it carries no password (libpq takes it from $PGPASSWORD or ~/.pgpass); ConfigError otherwise."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise ConfigError("storage.dsn: not a valid libpq connection string") from None
    if parts.get("password"):
        raise ConfigError(
            "storage.dsn: must not contain a password; set PGPASSWORD (or use ~/.pgpass) instead"
        )
    return dsn


class PostgresDatabase:
    """A Postgres database through the process's shared pool for its DSN."""

    backend = "postgres"
    now_sql = "extract(epoch from clock_timestamp())::double precision"

    def __init__(self, dsn: str, max_size: int = 8) -> None:
        self.dsn = check_dsn(dsn)
        self.pool = _SharedPool.acquire(self.dsn, max_size)
        self._closed = False

    @contextmanager
    def connect(self) -> Iterator[_PgConn]:
        """One transaction on a pooled connection."""
        import psycopg

        try:
            with self.pool.connection() as conn, conn.transaction():
                yield _PgConn(conn)
        except psycopg.Error as exc:
            raise SqlError(f"postgres: {_safe(exc)}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith("psycopg_pool"):
                raise SqlError(f"postgres: {_safe(exc)}") from exc
            raise

    def read(self) -> Any:
        """Reads: a transaction like any other (MVCC readers never wait for writers)."""
        return self.connect()

    def migrate(self, component: str, migrations: Sequence[str]) -> None:
        """Apply pending migrations, one process at a time (a transaction-scoped advisory lock)."""
        with self.connect() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(?)", (_lock_id("migrations"),))
            _apply_migrations(conn, component, migrations)

    @contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """A session advisory lock, held for the block outside any transaction (so the block's own statements,
        even a CREATE INDEX CONCURRENTLY, never wait on it); a process that dies releases it with its session."""
        import psycopg

        key = _lock_id(name)
        try:
            with self.pool.connection() as conn:
                conn.execute("SELECT pg_advisory_lock(%s)", (key,))
                try:
                    yield
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        except psycopg.Error as exc:
            raise SqlError(f"postgres: {_safe(exc)}") from exc

    def close(self) -> None:
        """Give the pool back (idempotent)."""
        if not self._closed:
            self._closed = True
            _SharedPool.release(self.dsn)


def _lock_id(name: str) -> int:
    """A stable 64-bit advisory lock key for a name."""
    return zlib.crc32(f"sregraph:{name}".encode()) | (0x5EE << 32)


# ---------------------------------------------------------------------------------------------------- settings


class StorageConfig(BaseModel):
    """Where checkpoints, the ledger, the run registry and the leases live (docs/scale-out.md)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["sqlite", "postgres"] = "sqlite"
    """sqlite: files in the data dir, one machine; postgres: one database any number of workers share."""
    dsn: str = ""
    """libpq connection string of the Postgres database, without a password ($PGPASSWORD or ~/.pgpass)."""
    pool_size: int = Field(default=8, ge=1, le=200)
    """Postgres connections one process may hold."""
    lease_ttl_s: float = Field(default=15.0, gt=0, le=3600)
    """How long an incident's lease lasts without a heartbeat: the longest two workers can wait on a dead one."""
    job_queue: Literal["none", "procrastinate"] = "none"
    """procrastinate: new incidents, adopted ones and approval decisions are jobs on this Postgres that any worker
    takes (sregraph/jobs.py); none: each worker runs what it routes, and adopts the rest every loop."""

    @field_validator("dsn")
    @classmethod
    def _no_password(cls, value: str) -> str:
        if value:
            try:
                check_dsn(value)
            except ConfigError as exc:
                raise ValueError(str(exc).removeprefix("storage.dsn: ")) from None
        return value

    @model_validator(mode="after")
    def _queue_needs_postgres(self) -> StorageConfig:
        if self.job_queue != "none" and self.backend != "postgres":
            raise ValueError("job_queue: procrastinate needs backend: postgres")
        return self


def open_database(config: StorageConfig, data_dir: Path, name: str) -> Database:
    """The database of one store: `data_dir/name.db` on SQLite, the shared database on Postgres."""
    if config.backend == "postgres":
        if not config.dsn:
            raise ConfigError(
                "storage.dsn: set the Postgres connection string when storage.backend is postgres"
            )
        return PostgresDatabase(config.dsn, max_size=config.pool_size)
    return SqliteDatabase(data_dir / f"{name}.db")
