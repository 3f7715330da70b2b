"""The durable checkpointer (SQLite by default, LangGraph's Postgres saver for scale-out), with the state's own
types allow-listed for deserialization. The Postgres saver is imported only when one is opened."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from pydantic import BaseModel

from tools import domain

if TYPE_CHECKING:
    from tools.sql import PostgresDatabase

LEGACY_MODULE = "graphs.state"
"""Where the state's types lived before tools.domain: checkpoints written then name it (graphs/state.py
re-exports the types under that name)."""


def _state_types() -> list[tuple[str, str]]:
    names = [
        name
        for name, value in vars(domain).items()
        if isinstance(value, type) and issubclass(value, BaseModel) and value.__module__ == domain.__name__
    ]
    return [(module, name) for module in (domain.__name__, LEGACY_MODULE) for name in names]


def _serde() -> JsonPlusSerializer:
    return JsonPlusSerializer(allowed_msgpack_modules=_state_types())


def open_postgres_checkpointer(db: PostgresDatabase) -> Any:
    """LangGraph's PostgresSaver on `db`'s pool, its tables migrated once however many workers start together."""
    from langgraph.checkpoint.postgres import PostgresSaver

    saver = PostgresSaver(db.pool, serde=_serde())
    with db.exclusive("checkpoint-setup"):
        saver.setup()
    return saver


def open_checkpointer(path: Path | str) -> SqliteSaver:
    """A SqliteSaver on `path` (created if needed) that accepts exactly the incident state's types."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    saver = SqliteSaver(conn, serde=_serde())
    saver.setup()
    return saver
