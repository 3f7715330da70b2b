"""Grounded write-ups: a model's post-mortem or incident title is held against the recorded facts (#12).

Hostile texts (inventions of services, dates, causes and actions, the issue's "fraud by a customer in 2024")
must be rejected, replaced by the deterministic text, said on the incident and never stored in memory; honest
texts that only restate the facts in other words must pass.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from agents.grounding import check_postmortem, check_title, facts_of
from agents.librarian import Librarian, PostMortemText
from tests.support import ScriptedChatModel, answer
from tools.domain import (
    Action,
    ActionResult,
    Diagnosis,
    Evidence,
    Hypothesis,
    IncidentState,
    Observation,
    PostMortem,
    Signal,
    TimelineEntry,
    Verification,
)

T0 = 1_796_330_000.0  # 2026-12-03 20:33:20 UTC
SERVICES = ["checkout", "frontend", "payments"]
HHMM = datetime.fromtimestamp(T0 + 20, tz=UTC).strftime("%H:%M")
DAY = datetime.fromtimestamp(T0, tz=UTC).strftime("%Y-%m-%d")

HOSTILE = {
    "the issue's example": PostMortemText(
        title="payments: potential fraud by a customer in 2024",
        summary="payments crashed after potential fraud by a customer in 2024. payments was restarted.",
        impact="Purchases failed for about 40 seconds.",
        root_cause="payments crashed because of potential fraud by a customer in 2024.",
    ),
    "an invented service": PostMortemText(
        title="Crash on payments",
        summary="The fraud-detector service crashed and took payments down; payments was restarted.",
        impact="Purchases failed for about 40 seconds.",
        root_cause="payments crashed when the fraud-detector service stopped answering.",
    ),
    "an invented CamelCase dependency": PostMortemText(
        title="Crash on payments",
        summary="payments crashed; PaymentGateway timed out. payments was restarted.",
        impact="Purchases failed.",
        root_cause="payments crash.",
    ),
    "an action that never ran": PostMortemText(
        title="Crash on payments",
        summary="payments crashed. checkout was rolled back and payments was scaled to 3 replicas.",
        impact="Purchases failed.",
        root_cause="payments crash.",
    ),
    "a restart of the wrong service": PostMortemText(
        title="Crash on payments",
        summary="payments crashed; checkout was restarted.",
        impact="Purchases failed.",
        root_cause="payments crash.",
    ),
    "an action sregraph never takes": PostMortemText(
        title="Crash on payments",
        summary="payments crashed and the team deployed a fix.",
        impact="Purchases failed.",
        root_cause="payments crash.",
    ),
    "a date outside the window": PostMortemText(
        title="Crash on payments",
        summary="payments crashed on 2023-05-01; it was restarted.",
        impact="Purchases failed.",
        root_cause="payments crash.",
    ),
    "a clock time outside the window": PostMortemText(
        title="Crash on payments",
        summary="payments crashed at 03:17 UTC and was restarted.",
        impact="Purchases failed.",
        root_cause="payments crash.",
    ),
    "a relative date": PostMortemText(
        title="Crash on payments",
        summary="payments crashed; it had been failing since last week.",
        impact="Purchases failed.",
        root_cause="payments crash.",
    ),
    "a cause nothing measured": PostMortemText(
        title="Crash on payments",
        summary="payments crashed under a DDoS attack.",
        impact="Purchases failed.",
        root_cause="payments crash caused by a DDoS attack.",
    ),
    "a root cause on another service": PostMortemText(
        title="Crash on payments",
        summary="payments crashed.",
        impact="Purchases failed.",
        root_cause="A memory leak in checkout.",
    ),
    "another fault type": PostMortemText(
        title="Crash on payments",
        summary="payments stopped.",
        impact="Purchases failed.",
        root_cause="payments had a bad deploy.",
    ),
    "the answer format describing itself (SmolLM2, stored before this rule)": PostMortemText(
        title="Crash on payments",
        summary="This is a JSON object that contains the post-mortem text of the incident.",
        impact="No, no impact!",
        root_cause="payments crash.",
        follow_ups=[
            ".&#34;items&#34;: &#34;title&#34;, &#34;type&#34;: &#34;string&#34;, &#34;maxItems&#34;: 200}, "
        ],
    ),
    "a missing section": PostMortemText(
        title="Crash on payments", summary="payments crashed.", impact="", root_cause="payments crash."
    ),
    "a title about something else": PostMortemText(
        title="Quarterly review of the shop",
        summary="payments crashed.",
        impact="Purchases failed.",
        root_cause="payments crash.",
    ),
}

HONEST = {
    "plain restatement": PostMortemText(
        title="payments crashed and was restarted",
        summary="The payments process exited; checkout and frontend failed until it was restarted.",
        impact="Purchases failed for about 40 seconds.",
        root_cause="payments process exit (crash; the cause of the exit is unconfirmed).",
        follow_ups=["Find why payments exited.", "Add a liveness probe to the payments service."],
    ),
    "with times and names": PostMortemText(
        title=f"Post-mortem: crash on payments ({DAY})",
        summary=f"At {HHMM} UTC the payments service stopped answering health checks. sregraph restarted "
        "payments and recovery was verified.",
        impact="checkout and frontend returned errors while payments was down.",
        root_cause="The payments process crashed (exit code -9); why it exited is not confirmed.",
        follow_ups=[
            "Investigate the exit code of payments.",
            "Consider a rollback only if a deploy is found.",
        ],
    ),
    "an error class and a hedged action": PostMortemText(
        title="payments crash",
        summary="checkout saw ConnectionError from payments while it was down; payments was not rolled back.",
        impact="Purchases failed while payments was down.",
        root_cause="payments crashed; nothing shows why it exited.",
    ),
}


def crash_state() -> IncidentState:
    """A recovered crash of payments, as the graph records it."""
    hypothesis = Hypothesis(
        service="payments",
        fault_type="crash",
        score=6.0,
        confidence=0.9,
        evidence=[
            Evidence(
                kind="health",
                service="payments",
                summary="health check failing: connection refused",
                weight=3.0,
            ),
            Evidence(
                kind="runtime",
                service="payments",
                summary="process not running (exit code -9, restarts 0)",
                weight=3.0,
            ),
        ],
        rationale="payments: crash — process not running",
    )
    restart = Action(kind="restart", service="payments", reason="crash on payments")
    return {
        "incident_id": "inc-grounding",
        "observation": Observation(
            healthy=False,
            signals=[
                Signal(
                    service="payments",
                    name="health",
                    value=0,
                    baseline=1,
                    score=50,
                    detail="payments health check failing",
                )
            ],
            observed_at=T0,
            window_s=30,
        ),
        "diagnosis": Diagnosis(hypotheses=[hypothesis], confidence=0.9),
        "actions": [
            ActionResult(
                action=restart,
                key="inc-grounding/attempt-1/restart/payments",
                status="done",
                detail="restarted payments (pid 42)",
                started_at=T0 + 20,
                finished_at=T0 + 21,
            )
        ],
        "verification": Verification(recovered=True, at=T0 + 40),
        "timeline": [
            TimelineEntry(at=T0, event="detected: payments health check failing"),
            TimelineEntry(at=T0 + 10, event="diagnosis: crash on payments (confidence 0.90)"),
            TimelineEntry(at=T0 + 21, event="action restart payments: done — restarted payments (pid 42)"),
            TimelineEntry(at=T0 + 40, event="verified: recovered"),
        ],
        "tokens": 0,
    }


def _worded(text: PostMortemText) -> tuple[PostMortem, PostMortem]:
    draft = Librarian(SimpleNamespace(services=SERVICES, memory=None)).write(crash_state())  # type: ignore[arg-type]  # a stand-in toolbox
    worded = draft.model_copy(
        update={
            **text.model_dump(exclude={"follow_ups"}),
            "follow_ups": text.follow_ups or draft.follow_ups,
            "wording": "model",
        }
    )
    return draft, worded


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_post_mortems_are_not_grounded(name: str) -> None:
    draft, worded = _worded(HOSTILE[name])
    assert check_postmortem(worded, facts_of(draft, SERVICES)), name


@pytest.mark.parametrize("name", sorted(HONEST))
def test_honest_post_mortems_are_grounded(name: str) -> None:
    draft, worded = _worded(HONEST[name])
    assert check_postmortem(worded, facts_of(draft, SERVICES)) == []


def test_the_deterministic_post_mortem_is_grounded_in_its_own_facts() -> None:
    draft = Librarian(SimpleNamespace(services=SERVICES, memory=None)).write(crash_state())  # type: ignore[arg-type]  # a stand-in toolbox
    assert check_postmortem(draft, facts_of(draft, SERVICES)) == []


def test_the_issue_example_names_each_invention() -> None:
    draft, worded = _worded(HOSTILE["the issue's example"])
    problems = check_postmortem(worded, facts_of(draft, SERVICES))
    for field in ("title", "summary", "root_cause"):
        assert f"{field} names a time outside the incident: 2024" in problems
        assert f"{field} names a cause nothing measured: fraud" in problems


def test_an_escalated_incident_may_not_be_written_up_as_recovered() -> None:
    state = crash_state()
    state["actions"] = []
    state["verification"] = None
    state["escalation"] = "policy refused: restart on payments is cooling down for another 30s"
    draft = Librarian(SimpleNamespace(services=SERVICES, memory=None)).write(state)  # type: ignore[arg-type]  # a stand-in toolbox
    claims = draft.model_copy(
        update={"summary": "payments crashed and was restarted; service was restored.", "wording": "model"}
    )
    problems = check_postmortem(claims, facts_of(draft, SERVICES))
    assert any("did not run" in p for p in problems) and any("claims recovery" in p for p in problems)
    honest = draft.model_copy(
        update={
            "summary": "payments crashed; the restart was refused by the cooldown and a human took over.",
            "wording": "model",
        }
    )
    assert check_postmortem(honest, facts_of(draft, SERVICES)) == []


@pytest.mark.parametrize(
    ("title", "grounded"),
    [
        ("payments: health checks failing", True),
        ("payments down since 2024", False),
        ("fraud-detector service failing", False),
        ("checkout slow", False),  # checkout did not deviate
        ("payments hacked by an attacker", False),
        ("payments was restarted", False),  # nothing has run at detection time
        ("payments down at 2019-08-31T07:56:42.123Z", False),  # an ISO timestamp, date and time both outside
        (f"payments down since {HHMM} UTC", True),
        ("The Incident Title 2018-2019: payments", False),  # a range of years (seen from SmolLM2)
    ],
)
def test_incident_titles(title: str, grounded: bool) -> None:
    observation = crash_state()["observation"]
    assert observation is not None
    assert (check_title(title, observation, SERVICES) == []) is grounded


class _Memory:
    """Memory that remembers what it was asked to store (the store's own behaviour is tests/test_memory.py's)."""

    def __init__(self) -> None:
        self.added: list[PostMortem] = []

    def add(self, pm: PostMortem) -> None:
        self.added.append(pm)


def test_an_ungrounded_model_post_mortem_is_replaced_said_and_never_stored() -> None:
    memory = _Memory()
    toolbox = SimpleNamespace(services=SERVICES, memory=memory, incidents=None)
    model = ScriptedChatModel(responses=[answer(HOSTILE["the issue's example"], usage=(300, 60))])
    librarian = Librarian(toolbox, chat_model=model)  # type: ignore[arg-type]  # a stand-in toolbox
    pm = librarian.write_with_model(crash_state())
    assert pm.wording == "deterministic" and pm.ungrounded
    assert "fraud" not in pm.title + pm.summary + pm.root_cause
    assert "rejected as not grounded" in pm.markdown and "2024" in pm.markdown
    assert pm.tokens == 360  # the model was reached and paid for, then overruled
    assert librarian.store(pm)
    assert [p.wording for p in memory.added] == ["deterministic"]
    assert all("fraud" not in p.summary + p.root_cause + p.title for p in memory.added)


def test_a_grounded_model_post_mortem_is_used_and_stored() -> None:
    memory = _Memory()
    toolbox = SimpleNamespace(services=SERVICES, memory=memory, incidents=None)
    model = ScriptedChatModel(responses=[answer(HONEST["plain restatement"])])
    librarian = Librarian(toolbox, chat_model=model)  # type: ignore[arg-type]  # a stand-in toolbox
    pm = librarian.write_with_model(crash_state())
    assert pm.wording == "model" and pm.ungrounded == [] and pm.title == HONEST["plain restatement"].title
    assert librarian.store(pm) and memory.added[0].title == pm.title


def test_store_refuses_a_model_wording_that_skipped_the_check() -> None:
    """Defence in depth: whoever built it, a model-worded post-mortem is checked again before memory keeps it."""
    memory = _Memory()
    librarian = Librarian(SimpleNamespace(services=SERVICES, memory=memory))  # type: ignore[arg-type]  # a stand-in toolbox
    _, worded = _worded(HOSTILE["an invented service"])
    assert librarian.store(worded) is False
    assert memory.added == []


def test_a_real_memory_never_serves_the_rejected_text(tmp_path: Path) -> None:
    """Through ChromaDB: a later search for the invented story finds only the deterministic write-up."""
    from memory.store import PostMortemStore

    store = PostMortemStore(tmp_path / "memory")
    model = ScriptedChatModel(responses=[answer(HOSTILE["the issue's example"])])
    librarian = Librarian(SimpleNamespace(services=SERVICES, memory=store, incidents=None), chat_model=model)  # type: ignore[arg-type]  # a stand-in toolbox
    assert librarian.store(librarian.write_with_model(crash_state()))
    stored = store.get("inc-grounding")
    assert stored is not None and stored.wording == "deterministic"
    assert "fraud" not in stored.model_dump_json().lower() and "2024" not in stored.model_dump_json()
    found = store.search("potential fraud by a customer in 2024", k=1)
    assert found and "fraud" not in found[0].summary.lower()


def test_an_incident_with_no_diagnosed_service_still_gets_no_schema_echo_stored() -> None:
    """18-healthy-issue with SmolLM2: no service was diagnosed, so the service rules had nothing to hold the text
    to, and "The Librarian Model / This is a JSON object..." was stored. It is not a write-up of anything."""
    state = {
        "incident_id": "inc-issue",
        "timeline": [
            TimelineEntry(at=T0, event="detected: reported: checkout is slow"),
            TimelineEntry(at=T0 + 5, event="escalated: no hypothesis explains the symptoms"),
        ],
        "escalation": "no hypothesis explains the symptoms",
    }
    draft = Librarian(SimpleNamespace(services=SERVICES, memory=None)).write(state)  # type: ignore[arg-type]  # a stand-in toolbox
    assert draft.service == "unknown"
    echo = draft.model_copy(
        update={
            "title": "The Librarian Model",
            "summary": "This is a JSON object that contains the post-mortem text of the incident.",
            "impact": "No, no impact!",
            "root_cause": "No, no root cause found.",
            "wording": "model",
        }
    )
    assert any("answer format" in p for p in check_postmortem(echo, facts_of(draft, SERVICES)))
    plain = echo.model_copy(
        update={
            "title": "Reported slowness on checkout, not confirmed",
            "summary": "A human reported checkout as slow; no service deviated and no hypothesis explained "
            "it, so it went to a human.",
        }
    )
    assert check_postmortem(plain, facts_of(draft, SERVICES)) == []
