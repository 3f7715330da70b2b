"""Notifiers that tell humans something happened: the console, a JSON-lines file, or several at once."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.text import Text

from tools.base import Clock, ConfigError, Notifier, SystemClock, ToolError

logger = logging.getLogger(__name__)


class ConsoleNotifier:
    """Prints each notification as one line on a rich console."""

    def __init__(self, console: Console | None = None, clock: Clock | None = None) -> None:
        """Print to `console` (stderr by default) with timestamps from `clock`."""
        self.console = console or Console(stderr=True)
        self.clock: Clock = clock or SystemClock()

    def notify(self, incident_id: str, event: str, text: str) -> None:
        """Print one line: time, incident, event, text (newlines folded so it stays one line)."""
        stamp = datetime.fromtimestamp(self.clock.now(), UTC).strftime("%H:%M:%S")
        line = Text.assemble(
            (stamp, "dim"),
            " ",
            (f"[{incident_id}]", "bold cyan"),
            " ",
            (event, "bold"),
            " ",
            # Text, not markup: a "[red]" inside model-written text must print as written.
            " ".join(text.split()),
        )
        self.console.print(line, soft_wrap=True)


class JsonlNotifier:
    """Appends each notification as one JSON line {ts, incident_id, event, text} to a file."""

    def __init__(self, path: Path | str, clock: Clock | None = None) -> None:
        """Append to `path`, creating its directory if needed."""
        self.path = Path(path)
        self.clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"path: cannot create directory for {self.path}: {exc}") from exc

    def notify(self, incident_id: str, event: str, text: str) -> None:
        """Append one JSON line."""
        record = {"ts": self.clock.now(), "incident_id": incident_id, "event": event, "text": text}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        try:
            # One write of a whole line on an O_APPEND file keeps lines from other processes intact.
            with self._lock, self.path.open("a", encoding="utf-8") as handle:
                handle.write(line)
        except OSError as exc:
            raise ToolError(f"cannot append notification to {self.path}: {exc}") from exc


class MultiNotifier:
    """Delivers to every notifier; one failing channel does not stop the others."""

    def __init__(self, *notifiers: Notifier) -> None:
        """Fan out to `notifiers` in order."""
        self.notifiers = list(notifiers)

    def notify(self, incident_id: str, event: str, text: str) -> None:
        """Deliver to all; ToolError only if every channel failed."""
        failures: list[str] = []
        for notifier in self.notifiers:
            try:
                notifier.notify(incident_id, event, text)
            except Exception as exc:  # noqa: BLE001 - a broken channel must not silence the others
                logger.exception("notifier %s failed for %s/%s", type(notifier).__name__, incident_id, event)
                failures.append(f"{type(notifier).__name__}: {exc}")
        if failures and len(failures) == len(self.notifiers):
            raise ToolError(f"every notifier failed for {incident_id}/{event}: {'; '.join(failures)}")
