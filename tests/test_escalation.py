"""The escalation policy: tiers page an unacknowledged incident that waits for a human, once each across
restarts; an acknowledgement (API, /ack on the issue) stops them."""

from __future__ import annotations

from pathlib import Path

from evals.harness import Scenario, World, settings_for, toolbox_for
from sregraph.engine import Engine, RunRegistry
from sregraph.escalation import Escalator
from sregraph.worker import Worker
from tests.fakes.http import Receiver
from tools.channels import EscalationTier, Message, NotificationsConfig
from tools.domain import Trigger
from tools.github.commands import Command
from tools.gitops import LocalGitOps
from tools.ledger import ActionLedger
from tools.notifier import IdempotentNotifier


class Pager:
    def __init__(self) -> None:
        self.pages: list[Message] = []

    def notify(self, incident_id: str, event: str, text: str) -> None:
        self.pages.append(Message(incident_id, event, text, {}))


TIERS = [EscalationTier(after_s=0, channels=["chat"]), EscalationTier(after_s=600, channels=["pager"])]


def _registry(tmp_path: Path) -> tuple[RunRegistry, float]:
    registry = RunRegistry(tmp_path / "runs.db")
    for incident_id, status in (
        ("waiting", "awaiting_approval"),
        ("stuck", "escalated"),
        ("fine", "resolved"),
        ("busy", "diagnosed"),
    ):
        registry.record(incident_id, Trigger(service="payments"), status)
    return registry, registry.list()[0]["created_at"]


def test_tiers_page_in_turn_once_each_until_acknowledged(tmp_path: Path) -> None:
    registry, t0 = _registry(tmp_path)
    ledger = ActionLedger(tmp_path / "ledger.db")
    chat, pager = Pager(), Pager()
    escalator = Escalator(
        registry, TIERS, [IdempotentNotifier(chat, ledger), IdempotentNotifier(pager, ledger)]
    )
    escalator.tick(t0 + 60)
    # Only the incidents that wait for a human, and only the first tier so far.
    assert sorted(p.incident_id for p in chat.pages) == ["stuck", "waiting"] and pager.pages == []
    registry.acknowledge("stuck", "alice")
    escalator.tick(t0 + 700)
    assert [p.incident_id for p in pager.pages] == ["waiting"]
    # A restarted worker (a new escalator on the same ledger) pages nobody twice.
    Escalator(registry, TIERS, [IdempotentNotifier(chat, ledger), IdempotentNotifier(pager, ledger)]).tick(
        t0 + 900
    )
    assert len(chat.pages) == 2 and len(pager.pages) == 1
    assert "tier 2 of 2" in pager.pages[0].text
    acknowledged = registry.acknowledgement("stuck")
    assert acknowledged is not None and acknowledged["by"] == "alice"
    assert registry.acknowledge("stuck", "bob") is False  # the first acknowledgement stays


def test_an_escalated_incident_whose_issue_was_closed_stops_paging(tmp_path: Path) -> None:
    registry, t0 = _registry(tmp_path)
    chat = Pager()
    Escalator(registry, TIERS[:1], [chat], is_closed=lambda incident_id: incident_id == "stuck").tick(t0 + 60)
    assert [p.incident_id for p in chat.pages] == ["waiting"]


def test_worker_pages_through_configured_channels_and_ack_on_the_issue_stops_it(tmp_path: Path) -> None:
    receiver = Receiver()
    try:
        root = tmp_path / "world"
        world = World.create(root)
        settings = settings_for(root).model_copy(
            update={
                "notifications": NotificationsConfig.model_validate(
                    {
                        "channels": {"pager": {"type": "webhook", "url": receiver.url("/pager")}},
                        "escalation": [
                            {"after_s": 0, "channels": ["pager"]},
                            {"after_s": 3600, "channels": ["pager"]},
                        ],
                    }
                )
            }
        )
        engine = Engine(settings, toolbox_for(world))
        worker = Worker(engine)
        assert worker.escalator is not None
        assert isinstance(engine.toolbox.gitops, LocalGitOps)
        # the policy lets the agents do nothing
        world.inject(Scenario("crash", "frontend"), engine.toolbox.gitops)
        incident_id = worker.scan()
        assert incident_id is not None and worker.wait_idle(60)
        assert engine.state(incident_id)["status"] == "escalated"
        worker.escalator.tick()
        worker.escalator.tick()
        assert [(path, body["incident_id"], body["event"]) for path, body in receiver.bodies] == [
            ("/pager", incident_id, "page")
        ]
        # Someone with write access says /ack on the issue: the second tier never pages.
        issue_id = engine.state(incident_id)["issue_id"]
        engine.toolbox.incidents.poll_commands = lambda: [  # type: ignore[attr-defined]  # GitHub's polling
            Command(name="ack", author="alice", issue_id=issue_id, comment_id=1)
        ]
        assert worker.handle_commands() == [f"ack {incident_id}"]
        created = engine.registry.list()[0]["created_at"]
        assert worker.escalator.tick(created + 7200) == []
        assert len(receiver.bodies) == 1
        engine.close()
    finally:
        receiver.close()
