"""The escalation policy: an incident that waits for a human and that nobody acknowledged pages the next tier.

An incident needs a human while it waits at the approval gate, or once it is escalated (until a human
closes its issue or acknowledges it). For each tier whose `after_s` has passed since the incident opened, its
channels get one `page` notification, keyed `<incident>/page/tier-N` in the action ledger, so a worker restarted
mid-way does not page twice. An acknowledgement (`/ack` on the issue, `POST .../acknowledge`, the
dashboard's button) stops every later tier.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sregraph.engine import Engine, RunRegistry, incident_labels
from tools.channels import EscalationTier, Route, RoutedNotifier
from tools.notifier import IdempotentNotifier, notification_key

log = logging.getLogger("sregraph.escalation")

NEEDS_A_HUMAN = {"awaiting_approval", "escalated"}


class Escalator:
    """Pages the tiers of the escalation policy for unacknowledged incidents."""

    def __init__(
        self, registry: RunRegistry, tiers: list[EscalationTier], pagers: list[Any], is_closed: Any = None
    ) -> None:
        """`pagers[i]` delivers tier i's pages (a Notifier); `is_closed(incident_id)` says whether a human closed
        the incident's issue (an escalated incident stops paging then)."""
        self.registry, self.tiers, self.pagers = registry, tiers, pagers
        self.is_closed = is_closed or (lambda _incident_id: False)

    @classmethod
    def for_engine(cls, engine: Engine) -> Escalator | None:
        """The engine's configured policy, or None when it has no tiers."""
        config = engine.settings.notifications
        if not config.escalation:
            return None
        labels_of = incident_labels(engine.settings)
        channels = {name: channel.build() for name, channel in config.channels.items()}
        pagers = [
            IdempotentNotifier(
                RoutedNotifier(channels, Route(channels=tier.channels), labels_of, 0.0), engine.toolbox.ledger
            )
            for tier in config.escalation
        ]
        return cls(
            engine.registry, config.escalation, pagers, lambda incident_id: _issue_closed(engine, incident_id)
        )

    def tick(self, now: float | None = None) -> list[tuple[str, int]]:
        """Page every tier that is due; returns (incident, tier) for each page sent or already sent before."""
        now = time.time() if now is None else now
        paged = []
        for run in self.registry.list():
            incident_id = run["incident_id"]
            if run["status"] not in NEEDS_A_HUMAN or self.registry.acknowledgement(incident_id):
                continue
            age = now - run["created_at"]
            due = [i for i, tier in enumerate(self.tiers) if age >= tier.after_s]
            if not due or (run["status"] == "escalated" and self.is_closed(incident_id)):
                continue
            for i in due:
                text = (
                    f"{run['status'].replace('_', ' ')} for {age / 60:.0f} min and nobody acknowledged it "
                    f"(tier {i + 1} of {len(self.tiers)}); acknowledge with /ack on the issue or in the dashboard"
                )
                with notification_key(f"{incident_id}/page/tier-{i}"):
                    self.pagers[i].notify(incident_id, "page", text)
                paged.append((incident_id, i))
        return paged


def _issue_closed(engine: Engine, incident_id: str) -> bool:
    try:
        issue_id = engine.state(incident_id).get("issue_id")
        return issue_id is not None and engine.toolbox.incidents.get(issue_id).state == "closed"
    except Exception:  # noqa: BLE001 - an unreadable issue must not stop the paging of every other incident
        log.exception("cannot tell whether %s's issue is closed; paging as if open", incident_id)
        return False
