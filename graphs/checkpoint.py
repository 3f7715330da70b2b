"""The durable SQLite checkpointer, with the state's own types allow-listed for deserialization."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from pydantic import BaseModel

from graphs import state as state_module


def _state_types() -> list[tuple[str, str]]:
    return [
        (state_module.__name__, name)
        for name, value in vars(state_module).items()
        if isinstance(value, type) and issubclass(value, BaseModel) and value.__module__ == state_module.__name__
    ]


def open_checkpointer(path: Path | str) -> SqliteSaver:
    """A SqliteSaver on `path` (created if needed) that accepts exactly the incident state's types."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    serde = JsonPlusSerializer(allowed_msgpack_modules=_state_types())
    saver = SqliteSaver(conn, serde=serde)
    saver.setup()
    return saver
