"""The domain: the incident state, its reducers, and the structured outputs the agents produce.

At the bottom of the layers (sregraph -> graphs -> agents -> tools, memory, prompts): every layer speaks it.

Everything in the state is a pydantic model or a plain value so the SQLite checkpointer can store it and a
resumed run in a new process reads back exactly what the old one wrote.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal, TypedDict, get_args

from pydantic import BaseModel, Field

FaultType = Literal[
    "crash",
    "memory_leak",
    "bad_deploy",
    "config_change",
    "latency",
    "error_spike",
    "dependency_down",
    "cpu_saturation",
    "disk_full",
    "conversion_drop",
    "unknown",
]
FAULT_TYPES: frozenset[str] = frozenset(get_args(FaultType))
"""Every FaultType, as strings: for checking a fault type read from text (a model's answer, a past incident)."""

ActionKind = Literal["restart", "scale", "rollback", "config_change", "start"]

Status = Literal[
    "observing",
    "healthy",
    "open",
    "diagnosing",
    "awaiting_approval",
    "remediating",
    "verifying",
    "recovered",
    "escalated",
    "resolved",
]


class Trigger(BaseModel):
    """What starts a run: an alert, a scheduled scan, or an issue a human opened."""

    source: Literal["alert", "scan", "issue", "scenario"] = "scan"
    service: str | None = None
    """Service the alert names, if any; the observer still checks every service."""
    signal: str | None = None
    summary: str = ""
    fired_at: float = 0.0
    labels: dict[str, str] = Field(default_factory=dict)
    issue_id: int | None = None
    """Set when a human opened the incident on the surface."""


class Signal(BaseModel):
    """One deviation the observer or analyst measured."""

    service: str
    name: str
    """Metric or check name: health, error_ratio, latency_p95_ms, memory_rss_mb, request_rate, log_errors..."""
    value: float
    baseline: float
    score: float
    """How far from normal, in robust standard deviations (health and staleness use fixed large scores)."""
    onset: float | None = None
    """When the deviation started, if it could be located."""
    detail: str = ""
    sense: str = ""
    """What saw it: window_z (window medians), ensemble:<detector> (streaming detectors), health, stale."""
    why: str = ""
    """A streaming detector's explanation of its score, with its numbers."""


class Observation(BaseModel):
    """What the observer saw when it decided whether an incident exists."""

    healthy: bool
    signals: list[Signal] = Field(default_factory=list)
    snapshot: dict[str, dict[str, float]] = Field(default_factory=dict)
    """Per service, the latest value of each key metric."""
    observed_at: float = 0.0
    window_s: float = 0.0
    baseline_end: float = 0.0
    """Baseline windows end here: before the trouble began, so later measurements compare with normal."""
    detected_by: list[str] = Field(default_factory=list)
    """The senses that first saw the confirmed deviations (window_z, ensemble:<detector>, health, stale)."""

    def top_signal(self, service: str | None = None) -> Signal | None:
        """The strongest deviation of `service` if it has any, else the strongest of all (None when healthy).

        An incident started for one service (an alert, a scan's pick) is about that service even when another
        one, with a problem of its own, deviates more at the same moment.
        """
        own = [s for s in self.signals if s.service == service] if service else []
        pool = own or self.signals
        return max(pool, key=lambda s: s.score) if pool else None

    def fingerprint_for(self, service: str | None = None) -> str:
        """Service + signal of `top_signal(service)`: the key for deduplicating incidents."""
        top = self.top_signal(service)
        return f"{top.service}:{top.name}" if top else "healthy"

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the strongest deviation of all."""
        return self.fingerprint_for(None)


class Evidence(BaseModel):
    """One piece of evidence behind a hypothesis."""

    kind: Literal["metric", "log", "trace", "health", "change", "runtime", "memory", "action", "topology"]
    service: str
    summary: str
    weight: float
    """Signed contribution to the hypothesis score."""
    ref: str = ""


class Hypothesis(BaseModel):
    """A candidate root cause."""

    service: str
    fault_type: FaultType
    score: float = 0.0
    """Sum of evidence weights."""
    confidence: float = 0.0
    """Derived from the evidence (see docs/analyst-method.md), in [0, 1]."""
    evidence: list[Evidence] = Field(default_factory=list)
    rationale: str = ""


class SimilarIncident(BaseModel):
    """A past incident the librarian found similar."""

    incident_id: str
    service: str
    fault_type: str
    outcome: str
    similarity: float
    summary: str
    action: str = ""


class Diagnosis(BaseModel):
    """The analyst's ranked hypotheses."""

    hypotheses: list[Hypothesis]
    confidence: float
    """Confidence in the top hypothesis."""
    method: str = "deterministic"
    similar: list[SimilarIncident] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    tokens: int = 0
    incident_id: str = ""
    llm_fallback: str | None = None
    """Why the LLM brain's answer was not used here (the deterministic one was), or None."""

    @property
    def top(self) -> Hypothesis | None:
        """Best hypothesis, if any."""
        return self.hypotheses[0] if self.hypotheses else None


class Action(BaseModel):
    """One typed remediation action."""

    kind: ActionKind
    service: str
    params: dict[str, Any] = Field(default_factory=dict)
    reason: str = ""


class ActionPlan(BaseModel):
    """What the engineer intends to do, after the policy check."""

    decision: Literal["act", "escalate"]
    actions: list[Action] = Field(default_factory=list)
    needs_approval: bool = False
    dry_run: bool = False
    hypothesis: Hypothesis | None = None
    policy_notes: list[str] = Field(default_factory=list)
    escalation_reason: str = ""
    tokens: int = 0
    """LLM tokens spent choosing the action (0 in deterministic mode)."""
    llm_fallback: str | None = None
    """Why the LLM brain's answer was not used here (the deterministic one was), or None."""


class ApprovalDecision(BaseModel):
    """A human's answer at the approval gate."""

    approved: bool
    by: str = "unknown"
    reason: str = ""


class ActionResult(BaseModel):
    """What happened when an action ran."""

    action: Action
    key: str
    """Idempotency key: incident, attempt and action."""
    status: Literal["done", "failed", "refused", "dry_run"]
    detail: str = ""
    ref: str = ""
    """Pull request number, commit or restart count that proves the effect."""
    started_at: float = 0.0
    finished_at: float = 0.0


class Verification(BaseModel):
    """Whether the system recovered after the actions."""

    recovered: bool
    checks: list[str] = Field(default_factory=list)
    remaining: list[Signal] = Field(default_factory=list)
    at: float = 0.0


class TimelineEntry(BaseModel):
    """One dated event of the incident."""

    at: float
    event: str


class PostMortem(BaseModel):
    """The librarian's write-up."""

    incident_id: str
    title: str
    summary: str
    impact: str
    timeline: list[TimelineEntry]
    root_cause: str
    service: str
    fault_type: str
    evidence: list[str]
    actions: list[str]
    outcome: Literal["recovered", "escalated", "not_recovered"]
    follow_ups: list[str]
    markdown: str = ""
    tokens: int = 0
    """LLM tokens spent writing it (0 in deterministic mode)."""
    wording: Literal["deterministic", "model"] = "deterministic"
    """Who wrote title, summary, impact, root cause and follow-ups: a model's wording passed agents/grounding.py."""
    ungrounded: list[str] = Field(default_factory=list)
    """Why a model's wording was rejected (the deterministic text is used and stored instead); [] when it was not."""
    llm_fallback: str | None = None
    """Why the LLM brain's answer was not used here (the deterministic one was), or None."""


class IncidentState(TypedDict, total=False):
    """State of one graph thread (thread id = incident id)."""

    incident_id: str
    trigger: Trigger
    status: Status
    observation: Observation | None
    issue_id: int | None
    diagnosis: Diagnosis | None
    diagnoses: Annotated[list[Diagnosis], operator.add]
    plan: ActionPlan | None
    approval: ApprovalDecision | None
    actions: Annotated[list[ActionResult], operator.add]
    verification: Verification | None
    attempts: int
    escalation: str | None
    postmortem: PostMortem | None
    timeline: Annotated[list[TimelineEntry], operator.add]
    tokens: int
    llm_fallbacks: Annotated[list[str], operator.add]
    """"agent: reason" for every place the LLM brain fell back to the deterministic method."""
    ungrounded: Annotated[list[str], operator.add]
    """"agent: problems" for every model-written text rejected as ungrounded (agents/grounding.py) and replaced."""


class RunInput(TypedDict):
    """The narrow input that starts a run."""

    incident_id: str
    trigger: Trigger
