"""Notifiers that tell humans something happened: the console, a JSON-lines file, or several at once, and
`IdempotentNotifier`, which makes each of them say a thing once even when a step runs again after a crash.

A notification's idempotency key comes from the graph node that sends it (`notification_key`), not through
`notify`'s arguments, so the `Notifier` protocol (and the recording and replay proxies built on it) stays as is.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.text import Text

from tools.base import Clock, ConfigError, Notifier, SystemClock, ToolError
from tools.display import plain
from tools.ledger import ActionLedger
from tools.redact import redact_out

logger = logging.getLogger(__name__)

_KEY: ContextVar[str | None] = ContextVar("notification_key", default=None)


@contextmanager
def notification_key(key: str) -> Iterator[None]:
    """Notifications sent inside this block carry `key`: what identifies them across re-runs of a step."""
    token = _KEY.set(key)
    try:
        yield
    finally:
        _KEY.reset(token)


def current_key() -> str | None:
    """The idempotency key of the notification being sent, if its sender gave one."""
    return _KEY.get()


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
            plain(redact_out(text)),
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
        """Append one JSON line (with the notification's idempotency key, when it has one)."""
        record = {
            "ts": self.clock.now(),
            "incident_id": incident_id,
            "event": event,
            "text": redact_out(text),
        }
        key = current_key()
        if key is not None:
            record["key"] = key
        line = json.dumps(record, ensure_ascii=False) + "\n"
        try:
            # One write of a whole line on an O_APPEND file keeps lines from other processes intact.
            with self._lock, self.path.open("a", encoding="utf-8") as handle:
                handle.write(line)
        except OSError as exc:
            raise ToolError(f"cannot append notification to {self.path}: {exc}") from exc

    def delivered(self, key: str) -> bool:
        """Whether a line with this idempotency key is in the file (read only after a crash mid-delivery)."""
        needle = json.dumps(key, ensure_ascii=False)
        try:
            with self.path.open(encoding="utf-8") as handle:
                for line in handle:
                    if needle in line and json.loads(line).get("key") == key:
                        return True
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as exc:
            raise ToolError(f"cannot read notifications from {self.path}: {exc}") from exc
        return False


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

    def delivered(self, key: str) -> bool:
        """Whether a channel that can tell has this key; channels are served in order, so the earlier ones had it."""
        return any(getattr(n, "delivered", lambda _key: False)(key) for n in self.notifiers)


class IdempotentNotifier:
    """Delivers each keyed notification once, whatever crashes and re-runs happen around it.

    The ledger says `sending` before delivery and `sent` after. A key found `sent` is not delivered again. A key
    found `sending` (the process died during delivery) is delivered again unless the channel can tell it got it
    (`delivered(key)`: the JSON-lines file can; the console cannot, so a console line may repeat then).
    Notifications without a key pass straight through.
    """

    def __init__(self, inner: Notifier, ledger: ActionLedger, clock: Clock | None = None) -> None:
        """Deliver through `inner`, remembering keys in `ledger`'s notifications table."""
        self.inner = inner
        self.ledger = ledger
        self.clock: Clock = clock or SystemClock()

    def notify(self, incident_id: str, event: str, text: str) -> None:
        """Deliver once per `notification_key` (every time, without one)."""
        key = current_key()
        if key is None:
            self.inner.notify(incident_id, event, text)
            return
        status = self.ledger.notification_status(key)
        if status == "sent":
            logger.info("notification %s was already sent", key)
            return
        if status == "sending":
            delivered = getattr(self.inner, "delivered", None)
            if delivered is not None and delivered(key):
                self.ledger.notification_sent(key, self.clock.now())
                return
        else:
            self.ledger.notification_sending(key, incident_id, event, self.clock.now())
        self.inner.notify(incident_id, event, text)
        self.ledger.notification_sent(key, self.clock.now())

    def delivered(self, key: str) -> bool:
        """Whether the ledger has this notification as sent."""
        return self.ledger.notification_status(key) == "sent"
