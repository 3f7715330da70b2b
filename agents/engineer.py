"""The engineer: turns a diagnosis into typed, policy-checked actions, runs them once, and verifies recovery."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agents.analyst import AnalystConfig
from agents.detection.window import Windows, measure
from agents.grounding import invented_services
from agents.observer import ObserverConfig
from agents.policy import Policy
from tools.base import Refused, SregraphError
from tools.domain import (
    Action,
    ActionKind,
    ActionPlan,
    ActionResult,
    Diagnosis,
    FaultType,
    Hypothesis,
    Observation,
    Signal,
    Verification,
)
from tools.toolbox import Toolbox

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from agents.llm_config import LLMConfig


class EngineerConfig(BaseModel):
    """Engineer knobs."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(default=3, ge=1)
    """Remediation attempts per incident before escalating (a policy may lower it per service)."""
    verify_timeout_s: float = Field(default=25.0, gt=0)
    stable_checks: int = Field(default=3, ge=1)
    """Consecutive healthy polls that count as recovered."""
    verify_poll_s: float = Field(default=0.5, gt=0)


log = logging.getLogger(__name__)

# What each fault type calls for. Faults with no safe automatic remedy are left to a human.
REMEDY: dict[FaultType, ActionKind | None] = {
    "crash": "restart",
    "memory_leak": "restart",
    "bad_deploy": "rollback",
    "config_change": "config_change",
    "latency": "restart",
    "error_spike": "restart",
    "cpu_saturation": "restart",
    "dependency_down": "restart",
    "conversion_drop": None,
    "disk_full": None,
    "unknown": None,
}


MODEL_MAY_CHOOSE: dict[FaultType, frozenset[ActionKind]] = {
    "crash": frozenset({"restart", "start"}),
    "memory_leak": frozenset({"restart"}),
    "bad_deploy": frozenset({"rollback"}),
    "config_change": frozenset({"config_change"}),
    "latency": frozenset({"restart", "scale"}),
    "error_spike": frozenset({"restart"}),
    "cpu_saturation": frozenset({"restart", "scale"}),
    "dependency_down": frozenset({"restart", "start"}),
}
"""The remedies the engineer model may pick for each fault type the evidence found (REMEDY's, and the few that
also address that fault); anything else contradicts the evidence and is ignored. No entry: no automatic remedy
(conversion_drop, disk_full, unknown), whatever the model says; it may always escalate."""


class EngineerChoice(BaseModel):
    """The engineer model's answer: one action kind from the allowed list, or escalate."""

    kind: Literal["restart", "start", "scale", "rollback", "config_change", "escalate"]
    replicas: int | None = Field(default=None, description="Only for scale.")
    reason: str = ""


def action_key(incident_id: str, attempt: int, action: Action) -> str:
    """Idempotency key of an action: incident, attempt number and what is done to what."""
    return f"{incident_id}/attempt-{attempt}/{action.kind}/{action.service}"


class Engineer:
    """Plans, acts and verifies; the policy check is code, not a prompt."""

    def __init__(
        self,
        toolbox: Toolbox,
        policy: Policy,
        config: EngineerConfig,
        analyst_config: AnalystConfig,
        observer_config: ObserverConfig,
        chat_model: BaseChatModel | None = None,
        llm_config: LLMConfig | None = None,
    ) -> None:
        self.toolbox = toolbox
        self.policy = policy
        self.config = config
        self.analyst_config = analyst_config
        self.observer_config = observer_config
        self.chat_model = chat_model
        self.llm_config = llm_config

    def max_attempts(self, service: str | None) -> int:
        """Attempts allowed for an incident whose suspect is `service`."""
        limit = self.config.max_attempts
        if service is not None:
            limit = min(limit, self.policy.for_service(service).max_attempts)
        return limit

    # ------------------------------------------------------------------ plan

    def plan(
        self, diagnosis: Diagnosis, attempts: int, previous: list[ActionResult], tokens_spent: int = 0
    ) -> ActionPlan:
        """Pick the remedy for the best hypothesis and check it against policy."""
        top = diagnosis.top
        if top is None:
            return ActionPlan(decision="escalate", escalation_reason="no hypothesis explains the symptoms")
        if diagnosis.confidence < self.analyst_config.min_confidence:
            return ActionPlan(
                decision="escalate",
                hypothesis=top,
                escalation_reason=f"confidence {diagnosis.confidence:.2f} is below "
                f"{self.analyst_config.min_confidence:.2f}",
            )
        action = self.remedy(top)
        notes: list[str] = []
        tokens = 0
        fallback: str | None = None
        declined: EngineerChoice | None = None
        if self.chat_model is not None:
            choice, tokens, note = self._choose_llm(self.chat_model, top, previous, tokens_spent)
            if note:
                notes.append(note)
                fallback = note
            if choice is not None:
                reason = self._model_reason(choice, top)
                if choice.kind == "escalate":
                    declined = choice
                    notes.append(f"model chose to escalate: {reason}")
                elif choice.kind in MODEL_MAY_CHOOSE.get(top.fault_type, frozenset()):
                    action = self.remedy(top, kind=choice.kind, replicas=choice.replicas)
                    notes.append(f"model chose {choice.kind}: {reason}")
                else:
                    # The model proposes; the evidence's fault type and its remedy table dispose.
                    fits = MODEL_MAY_CHOOSE.get(top.fault_type, frozenset())
                    kept = action.kind if action is not None else "no automatic remedy"
                    notes.append(
                        f"model chose {choice.kind}, which does not remedy {top.fault_type} "
                        f"(allowed: {', '.join(sorted(fits)) or 'none'}); ignored, kept {kept}"
                    )
        # Every escalation reason below is a fact sregraph established (no remedy, a policy refusal, the model's
        # decision not to act); what a model wrote about it is a note, never the reason.
        if action is None:
            return ActionPlan(
                decision="escalate",
                hypothesis=top,
                escalation_reason=f"no automatic remedy for {top.fault_type} on {top.service}",
                policy_notes=notes,
                tokens=tokens,
                llm_fallback=fallback,
            )
        verdict = self.policy.check(
            action,
            attempts_so_far=attempts,
            last_same_action_at=self.toolbox.ledger.last_action_at(action.service, action.kind),
            now=self.toolbox.clock.now(),
            known_services=self.toolbox.services,
        )
        if not verdict.allowed:
            self._record_refusal(diagnosis, attempts, action, verdict.reasons)
            return ActionPlan(
                decision="escalate",
                actions=[action],
                hypothesis=top,
                policy_notes=notes + verdict.reasons,
                escalation_reason="policy refused: " + "; ".join(verdict.reasons),
                tokens=tokens,
                llm_fallback=fallback,
            )
        if declined is not None:
            return ActionPlan(
                decision="escalate",
                hypothesis=top,
                escalation_reason=f"the engineer model declined to act: it chose a human over {action.kind} "
                f"on {action.service}, which policy allows",
                policy_notes=notes,
                tokens=tokens,
                llm_fallback=fallback,
            )
        return ActionPlan(
            decision="act",
            actions=[action],
            needs_approval=verdict.needs_approval,
            dry_run=verdict.dry_run,
            hypothesis=top,
            policy_notes=notes,
            tokens=tokens,
            llm_fallback=fallback,
        )

    def _model_reason(self, choice: EngineerChoice, top: Hypothesis) -> str:
        """The model's stated reason, for the plan's notes: bounded, and withheld if it names invented services."""
        invented = invented_services(
            choice.reason, self.toolbox.services, "\n".join(e.summary for e in top.evidence)
        )
        if invented:
            return f"(its reason names services that do not exist: {', '.join(invented)}; not shown)"
        return choice.reason[:200]

    def _record_refusal(
        self, diagnosis: Diagnosis, attempts: int, action: Action, reasons: list[str]
    ) -> None:
        """Refusals go in the ledger too, so an audit sees what was asked for and why it did not run."""
        ledger, now = self.toolbox.ledger, self.toolbox.clock.now()
        incident = diagnosis.incident_id or "unknown"
        key = f"{action_key(incident, attempts + 1, action)}/refused"
        ledger.start(key, incident, action.service, action.kind, {}, now)
        ledger.finish(key, "refused", "; ".join(reasons), "", now)

    def _choose_llm(
        self, model: BaseChatModel, top: Hypothesis, previous: list[ActionResult], tokens_spent: int
    ) -> tuple[EngineerChoice | None, int, str]:
        """Ask the model to pick among the allowed actions; None (and a note) when it cannot."""
        # Imported on the first model call: the deterministic agents never load langchain or jinja2.
        from agents.llm import ask, incident_budget
        from prompts import render

        fits = MODEL_MAY_CHOOSE.get(top.fault_type, frozenset())
        allowed = [k for k in self.policy.for_service(top.service).allowed if k in fits]
        prompt = render("engineer.md.j2", hypothesis=top, allowed=allowed, previous=previous)
        try:
            result = ask(model, prompt, EngineerChoice, incident_budget(self.llm_config, tokens_spent))
        except SregraphError as exc:
            log.warning("LLM engineer failed, using the deterministic remedy: %s", exc)
            return None, 0, f"LLM unavailable ({exc}); deterministic remedy used"
        choice: EngineerChoice = result.output
        return choice, result.tokens, ""

    def remedy(
        self, hypothesis: Hypothesis, kind: str | None = None, replicas: int | None = None
    ) -> Action | None:
        """The typed action for a hypothesis (the fault type's remedy unless `kind` is given), or None."""
        kind = kind or REMEDY.get(hypothesis.fault_type)
        service = hypothesis.service
        if kind is None:
            return None
        if kind in ("restart", "start"):
            # A restart of a dead process starts it and counts it, which is what an operator expects to see.
            return Action(kind=kind, service=service, reason=f"{hypothesis.fault_type} on {service}")
        if kind == "scale":
            return Action(
                kind="scale",
                service=service,
                params={"replicas": replicas or 2},
                reason=f"{hypothesis.fault_type} on {service}",
            )
        # rollback / config_change: restore the config from before the suspect change.
        change = next((e.ref for e in hypothesis.evidence if e.kind == "change" and e.ref), None)
        if change is None:
            return None
        try:
            target = self.toolbox.gitops.rollback_config(service, before=change)
        except SregraphError as exc:
            log.warning("cannot compute the rollback config of %s: %s", service, exc)
            return None
        return Action(
            kind=kind,
            service=service,
            params={"config": target, "revert": change},
            reason=f"{hypothesis.fault_type} after change {change[:8]}",
        )

    # ------------------------------------------------------------------ act

    def act(
        self, incident_id: str, plan: ActionPlan, attempt: int, issue_ref: str = ""
    ) -> list[ActionResult]:
        """Run the plan's actions once each; a replayed key returns the recorded outcome instead."""
        return [self._run(incident_id, attempt, action, plan.dry_run, issue_ref) for action in plan.actions]

    def _run(
        self, incident_id: str, attempt: int, action: Action, dry_run: bool, issue_ref: str
    ) -> ActionResult:
        tb = self.toolbox
        key = action_key(incident_id, attempt, action)
        entry = tb.ledger.get(key)
        if entry is not None and entry.status in ("done", "failed", "dry_run"):
            return ActionResult(
                action=action,
                key=key,
                status=entry.status,
                detail=entry.detail,
                ref=entry.ref,
                started_at=entry.started_at,
                finished_at=entry.finished_at or entry.started_at,
            )
        now = tb.clock.now()
        if dry_run:
            tb.ledger.start(key, incident_id, action.service, action.kind, {}, now)
            tb.ledger.finish(key, "dry_run", "dry run: nothing was changed", "", now)
            return ActionResult(
                action=action,
                key=key,
                status="dry_run",
                detail="dry run: nothing was changed",
                started_at=now,
                finished_at=now,
            )
        if entry is None:
            before = self._before(action)
            tb.ledger.start(key, incident_id, action.service, action.kind, before, now)
        else:
            before = entry.before
            started = entry.started_at
            # An earlier run died mid-action: finish it without doing it twice.
            if self._took_effect(action, before):
                detail = "completed before a restart of sregraph; not repeated"
                tb.ledger.finish(key, "done", detail, self._ref(action), tb.clock.now())
                return ActionResult(
                    action=action,
                    key=key,
                    status="done",
                    detail=detail,
                    ref=self._ref(action),
                    started_at=started,
                    finished_at=tb.clock.now(),
                )
        try:
            detail, ref = self._execute(action, key, issue_ref)
            status = "done"
        except SregraphError as exc:
            detail, ref, status = f"{type(exc).__name__}: {exc}", "", "failed"
        finished = tb.clock.now()
        tb.ledger.finish(key, status, detail, ref, finished)
        return ActionResult(
            action=action,
            key=key,
            status=status,
            detail=detail,
            ref=ref,
            started_at=now,
            finished_at=finished,
        )

    def _before(self, action: Action) -> dict[str, Any]:
        try:
            status = self.toolbox.runtime.status(action.service)
        except SregraphError:
            return {}
        return {"restarts": status.restarts, "running": status.running, "replicas": status.replicas}

    def _took_effect(self, action: Action, before: dict[str, Any]) -> bool:
        status = self.toolbox.runtime.status(action.service)
        if action.kind in ("restart", "rollback", "config_change"):
            return status.restarts > int(before.get("restarts", status.restarts))
        if action.kind == "start":
            return status.running
        if action.kind == "scale":
            return status.replicas == int(action.params.get("replicas", -1))
        return False

    def _ref(self, action: Action) -> str:
        status = self.toolbox.runtime.status(action.service)
        return f"restarts={status.restarts}"

    def _execute(self, action: Action, key: str, issue_ref: str) -> tuple[str, str]:
        result = self._execute_action(action, key, issue_ref)
        # A health checker with circuit breakers must probe the restarted service at once, not after its backoff.
        reset = getattr(self.toolbox.health, "reset", None)
        if callable(reset):
            reset(action.service)
        return result

    def _execute_action(self, action: Action, key: str, issue_ref: str) -> tuple[str, str]:
        tb = self.toolbox
        if action.kind == "restart":
            status = tb.runtime.restart(action.service)
            return f"restarted {action.service} (pid {status.pid})", f"restarts={status.restarts}"
        if action.kind == "start":
            status = tb.runtime.start(action.service)
            return f"started {action.service} (pid {status.pid})", f"restarts={status.restarts}"
        if action.kind == "scale":
            status = tb.runtime.scale(action.service, int(action.params["replicas"]))
            return f"scaled {action.service} to {status.replicas}", f"replicas={status.replicas}"
        # GitOps: the change is a pull request; merging it and applying the merged config is the deploy.
        title = f"{action.kind.replace('_', ' ')} {action.service}: revert {str(action.params['revert'])[:8]}"
        body = (
            f"{action.reason}\n\nOpened by sregraph for incident "
            f"{issue_ref or key.split('/')[0]}.\nIdempotency key: `{key}`"
        )
        try:
            pr = tb.gitops.propose(action.service, action.params["config"], title, body, key=key)
        except Refused as exc:
            if "identical" not in str(exc):
                raise
            return self._already_reverted(action)
        if not self.policy.for_service(action.service).auto_merge:
            return f"opened PR #{pr.id}; policy leaves the merge to a human", f"pr={pr.id}"
        merged = tb.gitops.merge(pr.id)
        status = tb.deployer.apply(action.service)
        return (
            f"merged PR #{pr.id} ({(merged.merge_sha or '')[:8]}) and applied it to {action.service}",
            f"pr={pr.id} restarts={status.restarts}",
        )

    def _already_reverted(self, action: Action) -> tuple[str, str]:
        """The suspect change is no longer in effect (reverted since): the trouble needs the generic remedy.

        The fallback restart goes through the same policy check as any planned action.
        """
        restart = Action(
            kind="restart", service=action.service, reason=f"{action.kind} found nothing to revert"
        )
        verdict = self.policy.check(
            restart,
            attempts_so_far=0,
            last_same_action_at=self.toolbox.ledger.last_action_at(action.service, "restart"),
            now=self.toolbox.clock.now(),
            known_services=self.toolbox.services,
        )
        if not verdict.allowed:
            raise Refused(
                f"the suspect change is already reverted and a restart is refused: {'; '.join(verdict.reasons)}"
            )
        status = self.toolbox.runtime.restart(action.service)
        return (
            f"the suspect change is already reverted on main; restarted {action.service} instead",
            f"restarts={status.restarts}",
        )

    # ------------------------------------------------------------------ verify

    def verify(self, observation: Observation, since: float) -> Verification:
        """Watch after the actions: recovered once every service is healthy for `stable_checks` polls."""
        tb, oc = self.toolbox, self.observer_config
        deadline = tb.clock.now() + self.config.verify_timeout_s
        streak = 0
        remaining: list[Signal] = []
        # Let fresh telemetry arrive before judging.
        tb.clock.sleep(min(2.0, self.config.verify_timeout_s / 4))
        while True:
            now = tb.clock.now()
            start = max(since + 0.5, now - oc.window_s)
            windows = Windows(observation.baseline_end - oc.baseline_s, observation.baseline_end, start, now)
            remaining, _ = measure(tb, windows, oc.z_threshold)
            streak = streak + 1 if not remaining else 0
            if streak >= self.config.stable_checks:
                return Verification(
                    recovered=True,
                    checks=[f"{streak} consecutive healthy checks of {len(tb.services)} services"],
                    at=now,
                )
            if now >= deadline:
                return Verification(
                    recovered=False,
                    checks=[f"still deviating after {self.config.verify_timeout_s:.0f}s"],
                    remaining=remaining,
                    at=now,
                )
            tb.clock.sleep(self.config.verify_poll_s)
