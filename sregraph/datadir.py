"""Which data dir the read-only commands show when none is named.

`sregraph demo` starts `DATA_DIR/demo` afresh on every run (it wipes what it finds there), so it never touches
the incidents of `sregraph run` or a worker in `DATA_DIR`. The commands that only read (`incidents`, `memory`,
`slo status`, `release-gate`) look at both and show the one written last, saying so when there was a choice;
`--data-dir` names one exactly.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

DEMO_SUBDIR = "demo"
"""The demo's data dir under the configured one."""

# Activity, each read through an index: an incident's last update, the app's newest span or log line.
_LATEST = (
    ("runs.db", "SELECT max(updated_at) FROM runs"),
    ("app/telemetry.db", "SELECT max(start) FROM spans"),
    ("app/telemetry.db", "SELECT max(ts) FROM logs"),
)


@dataclass(frozen=True)
class Choice:
    """The data dir to read and, when another one also holds data, a sentence saying which and why."""

    path: Path
    note: str | None = None


def demo_dir(data_dir: Path) -> Path:
    """Where `sregraph demo` keeps its data for a configured data dir."""
    return data_dir / DEMO_SUBDIR


def last_written(data_dir: Path) -> float | None:
    """When an incident or the app's telemetry was last written under `data_dir` (None when it holds neither).

    Read from the data, not from file times: attaching to an app or listing an empty dir creates empty stores.
    """
    times: list[float] = []
    for name, query in _LATEST:
        path = data_dir / name
        if not path.exists():
            continue
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
            try:
                (value,) = conn.execute(query).fetchone()
            finally:
                conn.close()
        except sqlite3.Error:  # a store being created, or of another shape: no activity to go by
            continue
        if value is not None:
            times.append(float(value))
    return max(times, default=None)


def data_dir_to_read(configured: Path) -> Choice:
    """The configured data dir or the demo's under it, whichever was written last (a tie: the configured)."""
    demo = demo_dir(configured)
    demo_at, configured_at = last_written(demo), last_written(configured)
    if demo_at is None:
        return Choice(configured)
    if configured_at is None:
        return Choice(demo, f"reading {demo}, the data `sregraph demo` left (--data-dir reads another)")
    if demo_at > configured_at:
        return Choice(demo, f"reading {demo}, newer than {configured} (--data-dir {configured} reads that)")
    return Choice(configured, f"reading {configured}, newer than the demo's (--data-dir {demo} reads that)")
