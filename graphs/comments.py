"""Markdown the graph posts on the incident surface, one comment per phase."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tools.display import md
from tools.domain import ActionPlan, ActionResult, Diagnosis, IncidentState, Observation, Verification

if TYPE_CHECKING:
    from agents.engineer import Engineer


def severity(observation: Observation) -> str:
    """sev1 when a service is down, sev2 for strong deviations, sev3 otherwise."""
    names = {s.name for s in observation.signals}
    if names & {"health", "stale"}:
        return "sev1"
    if any(s.score >= 10 for s in observation.signals):
        return "sev2"
    return "sev3"


def diagnosis_comment(diagnosis: Diagnosis) -> str:
    """Ranked hypotheses, the evidence behind the top one, and similar past incidents."""
    lines = [
        f"### Diagnosis ({diagnosis.method})",
        "",
        "| # | service | fault type | score | confidence |",
        "|---|---|---|---|---|",
    ]
    for i, h in enumerate(diagnosis.hypotheses[:5], 1):
        lines.append(f"| {i} | {md(h.service)} | {md(h.fault_type)} | {h.score:.2f} | {h.confidence:.2f} |")
    top = diagnosis.top
    if top:
        lines += [
            "",
            f"**Evidence for {md(top.service)}**",
            "",
            "| kind | evidence | weight |",
            "|---|---|---|",
        ]
        # Evidence quotes logs and commit messages: escaped, so a line cannot end the table or start markup.
        lines += [f"| {e.kind} | {md(e.summary)} | {e.weight:+.2f} |" for e in top.evidence[:10]]
    if diagnosis.similar:
        lines += ["", "**Similar past incidents**"]
        lines += [
            f"- {md(s.incident_id)}: {md(s.fault_type)} on {md(s.service)} ({md(s.outcome)}), similarity "
            f"{s.similarity:.2f}"
            for s in diagnosis.similar
        ]
    lines += [f"- note: {md(n)}" for n in diagnosis.notes]
    return "\n".join(lines)


def plan_comment(plan: ActionPlan) -> str:
    """The chosen actions, or why the engineer escalates."""
    notes = [f"- note: {md(n)}" for n in plan.policy_notes]
    if plan.decision == "escalate":
        return "\n".join([f"### Plan\nEscalate: {md(plan.escalation_reason)}", *notes])
    lines = ["### Plan"]
    for a in plan.actions:
        lines.append(f"- `{a.kind}` on `{md(a.service)}` — {md(a.reason)}")
    lines += notes
    if plan.needs_approval:
        lines.append("\nPolicy requires a human approval before this runs.")
    if plan.dry_run:
        lines.append("\nPolicy is dry-run for this service: nothing will be changed.")
    return "\n".join(lines)


def approval_request(incident_id: str, plan: ActionPlan) -> str:
    """How to approve or reject."""
    actions = ", ".join(f"`{a.kind} {a.service}`" for a in plan.actions)
    return (
        f"### Approval needed\n{actions} needs a human decision.\n\n"
        f"Approve: `sregraph approve {incident_id}` · Reject: `sregraph reject {incident_id}`"
    )


def action_comment(result: ActionResult) -> str:
    """One action and its outcome."""
    return (
        f"### Action `{result.action.kind}` on `{md(result.action.service)}`: "
        f"{result.status}\n{md(result.detail)}\n\nkey `{md(result.key)}`"
        + (f", ref `{md(result.ref)}`" if result.ref else "")
    )


def verification_comment(verification: Verification) -> str:
    """Recovered or not, and what still deviates."""
    head = "### Verification: recovered" if verification.recovered else "### Verification: not recovered"
    lines = [head, *[f"- {md(c)}" for c in verification.checks]]
    lines += [f"- still deviating: {md(s.service)} {md(s.detail)}" for s in verification.remaining[:5]]
    return "\n".join(lines)


def escalation_reason(state: IncidentState, engineer: Engineer) -> str:
    """Why a human is needed now."""
    plan = state.get("plan")
    approval = state.get("approval")
    if approval is not None and not approval.approved:
        return f"the plan was rejected by {approval.by}" + (f": {approval.reason}" if approval.reason else "")
    if plan is not None and plan.decision == "escalate":
        return plan.escalation_reason
    results = state.get("actions", [])
    if results and results[-1].status == "dry_run":
        return "policy is dry-run: the planned action was not executed"
    if results and results[-1].status == "failed":
        return f"the action failed: {results[-1].detail}"
    diagnosis = state.get("diagnosis")
    suspect = diagnosis.top.service if diagnosis is not None and diagnosis.top is not None else None
    return (
        f"attempt limit reached: not recovered after {state.get('attempts', 0)} of "
        f"{engineer.max_attempts(suspect)} attempt(s) allowed"
    )
