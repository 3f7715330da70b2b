"""The case schema (case.yaml, docs/evals.md): what a recorded incident is, its ground truth (`Truth`), what
was injected, and what the agents did (`Outcome`), recorded with the case and recomputed on replay."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from tools.domain import Trigger

FORMAT_VERSION = 1


class Truth(BaseModel):
    """What should happen: the ground truth a case is scored against."""

    incident: bool = True
    """Whether there is a real incident to detect (False for healthy controls and pure red herrings)."""
    service: str | None = None
    """The root-cause service."""
    fault_type: str | None = None
    """The fault type (tools.domain.FaultType)."""
    fault_types: list[str] = Field(default_factory=list)
    """Every fault type accepted as right (the main one included), e.g. crash for a stopped dependency."""
    actions: list[str] = Field(default_factory=list)
    """Acceptable actions as "kind service" (any of them is right); empty: the right move is to act on nothing."""
    action_allowed: bool = True
    """False: any remediation action at all breaks this case's policy (healthy controls, reported-only issues)."""
    forbidden_actions: list[str] = Field(default_factory=list)
    """Actions that break this case's policy, as "kind service" ("kind *" for any service): what an injection
    asks for."""
    related_case: str | None = None
    """A recurring incident: the earlier case whose post-mortem memory should retrieve."""
    labelled: bool = True
    """False for a live incident nobody has labelled yet (prefilled from the agents' own outcome)."""

    def accepted_fault_types(self) -> set[str]:
        """The fault types scored as right."""
        return {t for t in [self.fault_type, *self.fault_types] if t}


class Injected(BaseModel):
    """One fault (or stimulus) the recording injected: the ground truth's source."""

    fault: str
    service: str
    params: dict[str, Any] = Field(default_factory=dict)
    at: float = 0.0
    detail: str = ""
    root: bool = True
    """Part of the root cause (time to detect starts at the first root injection); False for set-up and noise."""


class Outcome(BaseModel):
    """What the agents did in one run: recorded with the case, recomputed on replay, compared."""

    status: str | None = None
    detected: bool = False
    observed_at: float | None = None
    waiting: bool = False
    """The run stopped at the approval gate."""
    issue_id: int | None = None
    hypotheses: list[dict[str, Any]] = Field(default_factory=list)
    """Top three: service, fault_type, confidence."""
    confidence: float | None = None
    actions: list[str] = Field(default_factory=list)
    """Executed actions as "kind service: status"."""
    planned: list[str] = Field(default_factory=list)
    """Actions of the last plan as "kind service" (what waits for approval, or what policy refused)."""
    escalation: str | None = None
    similar: list[str] = Field(default_factory=list)
    """Incident ids memory returned, over every diagnosis."""
    tokens: int = 0

    @property
    def root_cause(self) -> str | None:
        """Top hypothesis service."""
        return self.hypotheses[0]["service"] if self.hypotheses else None

    @property
    def fault_type(self) -> str | None:
        """Top hypothesis fault type."""
        return self.hypotheses[0]["fault_type"] if self.hypotheses else None

    def same_as(self, other: Outcome) -> bool:
        """Same decisions: status, root cause, fault type, actions, plan (confidence may move with memory)."""
        return (
            self.status == other.status
            and self.root_cause == other.root_cause
            and self.fault_type == other.fault_type
            and [a.split(":")[0] for a in self.actions] == [a.split(":")[0] for a in other.actions]
            and self.planned == other.planned
        )


def outcome_of(state: dict[str, Any]) -> Outcome:
    """The outcome of a finished (or waiting) incident thread, from its state values."""
    observation = state.get("observation")
    diagnosis = state.get("diagnosis")
    plan = state.get("plan")
    similar: list[str] = []
    for d in state.get("diagnoses", []) or ([diagnosis] if diagnosis else []):
        for s in d.similar:
            if s.incident_id not in similar:
                similar.append(s.incident_id)
    return Outcome(
        status=state.get("status"),
        detected=bool(observation is not None and not observation.healthy),
        observed_at=observation.observed_at if observation is not None else None,
        waiting=bool(state.get("waiting")),
        issue_id=state.get("issue_id"),
        hypotheses=[
            {"service": h.service, "fault_type": h.fault_type, "confidence": h.confidence}
            for h in (diagnosis.hypotheses[:3] if diagnosis else [])
        ],
        confidence=diagnosis.confidence if diagnosis else None,
        actions=[f"{a.action.kind} {a.action.service}: {a.status}" for a in state.get("actions", [])],
        planned=[f"{a.kind} {a.service}" for a in (plan.actions if plan else [])],
        escalation=state.get("escalation"),
        similar=similar,
        tokens=int(state.get("tokens", 0) or 0),
    )


class Case(BaseModel):
    """case.yaml: everything about one recorded incident except its tool calls and telemetry."""

    id: str
    title: str = ""
    tags: list[str] = Field(default_factory=list)
    """fault, healthy, red_herring, injection, recurring, derived, policy..."""
    description: str = ""
    derived_from: str | None = None
    """The case this one was made from, when the app cannot produce it (the change is in `description`)."""
    format: int = FORMAT_VERSION
    incident_id: str
    trigger: Trigger
    recorded_at: float = 0.0
    injected: list[Injected] = Field(default_factory=list)
    topology: dict[str, list[str]] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)
    """observer, analyst and engineer settings of the recorded run (replay uses them: windows must match)."""
    policy: dict[str, Any] = Field(default_factory=dict)
    """The remediation policy in force (agents/policy.py format)."""
    ledger_seed: list[dict[str, Any]] = Field(default_factory=list)
    """Action-ledger rows from the hour before the incident (cooldowns), loaded into the replay's ledger."""
    approval: dict[str, Any] | None = None
    """The human decision given at the approval gate during the recording, if any (replayed as given)."""
    truth: Truth = Field(default_factory=Truth)
    outcome: Outcome = Field(default_factory=Outcome)
    """What the agents did when this was recorded."""

    @property
    def injected_at(self) -> float | None:
        """When the first fault was injected (the start of time-to-detect)."""
        return min((i.at for i in self.injected if i.at and i.root), default=None)


Kind = Literal["fault", "healthy", "red_herring", "injection", "recurring", "derived", "policy", "live"]
