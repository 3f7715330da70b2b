"""IdempotentNotifier: a keyed notification is delivered once, whatever crashes happen around its delivery."""

from __future__ import annotations

import json
from pathlib import Path

from tools.ledger import ActionLedger
from tools.notifier import ConsoleNotifier, IdempotentNotifier, JsonlNotifier, MultiNotifier, notification_key


class Counting:
    """A channel that cannot tell what it delivered (like the console)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    def notify(self, incident_id: str, event: str, text: str) -> None:
        """Count."""
        self.sent.append((incident_id, event, text))


def _lines(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_once_per_key_and_unkeyed_pass_through(tmp_path: Path) -> None:
    ledger, channel = ActionLedger(tmp_path / "ledger.db"), Counting()
    notifier = IdempotentNotifier(channel, ledger)
    for _ in range(3):
        with notification_key("inc-1/notify/opened"):
            notifier.notify("inc-1", "opened", "issue #1")
    with notification_key("inc-1/notify/action-a1"):
        notifier.notify("inc-1", "action", "restart payments: done")
    with notification_key("inc-1/notify/action-a2"):  # a second attempt, same text: its own key
        notifier.notify("inc-1", "action", "restart payments: done")
    notifier.notify("inc-1", "note", "no key")
    notifier.notify("inc-1", "note", "no key")
    assert [e for _, e, _ in channel.sent] == ["opened", "action", "action", "note", "note"]
    assert [status for _, _, status in ledger.notifications("inc-1")] == ["sent"] * 3
    assert ledger.all() == []  # notifications are not actions: cooldowns and the eval ledger never see them


def test_crash_after_delivery_before_the_record(tmp_path: Path) -> None:
    """`sending` in the ledger: a channel that has the key is not sent to again; one that cannot tell is."""
    ledger = ActionLedger(tmp_path / "ledger.db")
    path = tmp_path / "n.jsonl"
    jsonl = JsonlNotifier(path)
    with notification_key("inc-2/notify/escalated"):
        ledger.notification_sending("inc-2/notify/escalated", "inc-2", "escalated", 1.0)
        jsonl.notify("inc-2", "escalated", "needs a human")  # ...and the process died here
        IdempotentNotifier(MultiNotifier(ConsoleNotifier(), jsonl), ledger).notify(
            "inc-2", "escalated", "needs a human"
        )
    assert [line["key"] for line in _lines(path)] == ["inc-2/notify/escalated"]
    assert ledger.notification_status("inc-2/notify/escalated") == "sent"

    # Died before the channel got it: delivered on the re-run, once.
    ledger.notification_sending("inc-2/notify/documented", "inc-2", "documented", 2.0)
    with notification_key("inc-2/notify/documented"):
        IdempotentNotifier(jsonl, ledger).notify("inc-2", "documented", "post-mortem")
        IdempotentNotifier(jsonl, ledger).notify("inc-2", "documented", "post-mortem")
    assert [line["event"] for line in _lines(path)] == ["escalated", "documented"]

    # A channel that cannot tell gets it again (at least once, never zero times).
    channel = Counting()
    ledger.notification_sending("inc-2/notify/opened", "inc-2", "opened", 3.0)
    with notification_key("inc-2/notify/opened"):
        IdempotentNotifier(channel, ledger).notify("inc-2", "opened", "issue #2")
    assert len(channel.sent) == 1 and ledger.notification_status("inc-2/notify/opened") == "sent"
