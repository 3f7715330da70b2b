"""The incident graph: observe → open → analyze → plan → (approve) → act → verify → document, with loops.

One thread per incident (thread id = incident id). Nodes get the agents through the run context, so the same
compiled graph serves the CLI, the worker, the evals and LangGraph Studio (langgraph.json points at `graph`).
Every side effect in a node is idempotent (issue fingerprints, comment keys, the action ledger), because a node
interrupted by a crash runs again from its start when the thread resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import interrupt

from agents.analyst import Analyst
from agents.engineer import Engineer
from agents.librarian import Librarian
from agents.observer import Observer, incident_body
from graphs import comments
from tools.display import md
from tools.domain import ApprovalDecision, IncidentState, RunInput, Status, TimelineEntry
from tools.notifier import notification_key
from tools.toolbox import Toolbox


@dataclass
class Team:
    """The four agents and what they share; the graph's run context."""

    toolbox: Toolbox
    observer: Observer
    analyst: Analyst
    engineer: Engineer
    librarian: Librarian


def _at(team: Team, event: str) -> list[TimelineEntry]:
    return [TimelineEntry(at=team.toolbox.clock.now(), event=event)]


def _status(team: Team, state: IncidentState, status: str) -> None:
    issue = state.get("issue_id")
    if issue is not None:
        surface = team.toolbox.incidents
        current = surface.get(issue)
        stale = [
            label for label in current.labels if label.startswith("status:") and label != f"status:{status}"
        ]
        surface.set_labels(issue, add=[f"status:{status}"], remove=stale)


def _comment(team: Team, state: IncidentState, phase: str, body: str) -> None:
    issue = state.get("issue_id")
    if issue is not None:
        team.toolbox.incidents.comment(issue, body, key=f"{state['incident_id']}/{phase}")


def _fell_back(agent: str, reason: str | None) -> IncidentState:
    """The state update that records where the LLM brain fell back to the deterministic method (none if it did not)."""
    return {"llm_fallbacks": [f"{agent}: {reason}"]} if reason else {}


def _rejected(agent: str, problems: list[str]) -> IncidentState:
    """The state update that records a model text rejected as ungrounded and replaced (none if it was not)."""
    return {"ungrounded": [f"{agent}: {'; '.join(problems[:5])}"]} if problems else {}


def _notify(team: Team, state: IncidentState, key: str, event: str, text: str) -> None:
    # The key makes a re-run of the step after a crash not notify twice (tools/notifier.IdempotentNotifier).
    with notification_key(f"{state['incident_id']}/notify/{key}"):
        team.toolbox.notifier.notify(state["incident_id"], event, text)


# ----------------------------------------------------------------------------- nodes


def observe(state: IncidentState, runtime: Runtime[Team]) -> IncidentState:
    """Decide whether an incident exists."""
    team = runtime.context
    trigger = state["trigger"]
    observation = team.observer.observe(trigger)
    if observation.healthy and trigger.issue_id is None:
        return {
            "observation": observation,
            "status": "healthy",
            "attempts": 0,
            "timeline": _at(team, "checked every service: healthy, no incident"),
        }
    what = observation.signals[0].detail if observation.signals else f"reported: {trigger.summary}"
    return {
        "observation": observation,
        "status": "open",
        "attempts": 0,
        "timeline": _at(team, f"detected: {what}"),
    }


def open_incident(state: IncidentState, runtime: Runtime[Team]) -> IncidentState:
    """Open (or join) the incident issue on the surface with a telemetry snapshot."""
    team = runtime.context
    observation, trigger = state["observation"], state["trigger"]
    assert observation is not None
    tokens = 0
    fallback: str | None = None
    ungrounded: list[str] = []
    if trigger.issue_id is not None:
        issue = team.toolbox.incidents.get(trigger.issue_id)
        created = False
    else:
        top = observation.top_signal(trigger.service)
        labels = ["incident", "status:open", f"severity:{comments.severity(observation)}"]
        if top:
            labels.append(f"service:{top.service}")
        title, tokens, fallback, ungrounded = team.observer.title(
            observation, trigger, state.get("tokens", 0)
        )
        # The observer's fallback goes on the incident itself, not only on stderr.
        note = (
            f"\n\n_Title by the deterministic observer: the LLM was unavailable ({md(fallback)})._"
            if fallback
            else ""
        )
        if ungrounded:
            note += (
                "\n\n_Title by the deterministic observer: the model's title was not grounded in what "
                f"was measured ({md('; '.join(ungrounded[:3]))})._"
            )
        issue, created = team.toolbox.incidents.open_issue(
            title,
            incident_body(observation, trigger) + f"\n\n_sregraph incident `{state['incident_id']}`_" + note,
            labels,
            observation.fingerprint_for(trigger.service),
        )
    # An issue this very incident opened before its process died (same fingerprint, its id in the body) is its
    # own, not one it joins: a re-run of this step must not announce it as attached.
    own = not created and f"_sregraph incident `{state['incident_id']}`_" in issue.body
    if not created and not own:
        team.toolbox.incidents.comment(
            issue.id,
            f"Incident `{state['incident_id']}` attached to this issue.\n\n"
            + incident_body(observation, trigger),
            key=f"{state['incident_id']}/attach",
        )
    _notify(team, state, "opened", "opened", f"{issue.title} ({issue.url})")
    return {
        "issue_id": issue.id,
        "tokens": state.get("tokens", 0) + tokens,
        "timeline": _at(team, f"incident opened as issue #{issue.id}"),
        **_fell_back("observer", fallback),
        **_rejected("observer", ungrounded),
    }


def analyze(state: IncidentState, runtime: Runtime[Team]) -> IncidentState:
    """Rank root-cause hypotheses from the evidence."""
    team = runtime.context
    _status(team, state, "diagnosing")
    observation = state["observation"]
    assert observation is not None
    diagnosis = team.analyst.diagnose(observation, state.get("actions", []), state.get("tokens", 0))
    diagnosis.incident_id = state["incident_id"]
    attempt = state.get("attempts", 0)
    _comment(team, state, f"diagnosis-{attempt}", comments.diagnosis_comment(diagnosis))
    top = diagnosis.top
    event = (
        f"diagnosis: {top.fault_type} on {top.service} (confidence {diagnosis.confidence:.2f})"
        if top
        else "diagnosis: no hypothesis"
    )
    return {
        "diagnosis": diagnosis,
        "diagnoses": [diagnosis],
        "status": "diagnosing",
        "tokens": state.get("tokens", 0) + diagnosis.tokens,
        "timeline": _at(team, event),
        **_fell_back("analyst", diagnosis.llm_fallback),
    }


def plan(state: IncidentState, runtime: Runtime[Team]) -> IncidentState:
    """Choose a typed action and check it against policy."""
    team = runtime.context
    diagnosis = state["diagnosis"]
    assert diagnosis is not None
    action_plan = team.engineer.plan(
        diagnosis, state.get("attempts", 0), state.get("actions", []), state.get("tokens", 0)
    )
    _comment(team, state, f"plan-{state.get('attempts', 0)}", comments.plan_comment(action_plan))
    event = (
        f"plan: {', '.join(f'{a.kind} {a.service}' for a in action_plan.actions)}"
        + (" (needs approval)" if action_plan.needs_approval else "")
        if action_plan.decision == "act"
        else f"plan: escalate ({action_plan.escalation_reason})"
    )
    return {
        "plan": action_plan,
        "approval": None,
        "tokens": state.get("tokens", 0) + action_plan.tokens,
        "timeline": _at(team, event),
        **_fell_back("engineer", action_plan.llm_fallback),
    }


def approval(state: IncidentState, runtime: Runtime[Team]) -> IncidentState:
    """Wait for a human decision; the thread sleeps in the checkpointer until resumed."""
    team = runtime.context
    action_plan = state["plan"]
    assert action_plan is not None
    _status(team, state, "awaiting-approval")
    _comment(
        team,
        state,
        f"approval-request-{state.get('attempts', 0)}",
        comments.approval_request(state["incident_id"], action_plan),
    )
    answer = interrupt(
        {"incident_id": state["incident_id"], "actions": [a.model_dump() for a in action_plan.actions]}
    )
    decision = answer if isinstance(answer, ApprovalDecision) else ApprovalDecision.model_validate(answer)
    verb = "approved" if decision.approved else "rejected"
    _comment(
        team,
        state,
        f"approval-{state.get('attempts', 0)}",
        f"**{verb}** by {decision.by}" + (f": {decision.reason}" if decision.reason else ""),
    )
    return {"approval": decision, "timeline": _at(team, f"{verb} by {decision.by}")}


def act(state: IncidentState, runtime: Runtime[Team]) -> IncidentState:
    """Run the approved, policy-checked actions exactly once."""
    team = runtime.context
    _status(team, state, "remediating")
    action_plan = state["plan"]
    assert action_plan is not None
    attempt = state.get("attempts", 0) + 1
    results = team.engineer.act(
        state["incident_id"], action_plan, attempt, issue_ref=f"#{state.get('issue_id')}"
    )
    for result in results:
        _comment(team, state, f"action-{result.key}", comments.action_comment(result))
        _notify(
            team,
            state,
            f"action-{result.key}",
            "action",
            f"{result.action.kind} {result.action.service}: {result.status}",
        )
    events = [
        TimelineEntry(
            at=r.finished_at, event=f"action {r.action.kind} {r.action.service}: {r.status} — {r.detail}"
        )
        for r in results
    ]
    return {"actions": results, "attempts": attempt, "status": "remediating", "timeline": events}


def verify(state: IncidentState, runtime: Runtime[Team]) -> IncidentState:
    """Watch the system after the actions."""
    team = runtime.context
    _status(team, state, "verifying")
    observation = state["observation"]
    assert observation is not None
    since = max((a.finished_at for a in state.get("actions", [])), default=team.toolbox.clock.now())
    verification = team.engineer.verify(observation, since)
    _comment(team, state, f"verify-{state.get('attempts', 0)}", comments.verification_comment(verification))
    event = "verified: recovered" if verification.recovered else "verification: not recovered"
    return {
        "verification": verification,
        "status": "recovered" if verification.recovered else "verifying",
        "timeline": _at(team, event),
    }


def escalate(state: IncidentState, runtime: Runtime[Team]) -> IncidentState:
    """Hand the incident to a human; nothing is mutated."""
    team = runtime.context
    reason = comments.escalation_reason(state, team.engineer)
    _status(team, state, "escalated")
    _comment(team, state, "escalation", f"### Escalated to a human\n{md(reason)}")
    _notify(team, state, "escalated", "escalated", reason)
    return {"escalation": reason, "status": "escalated", "timeline": _at(team, f"escalated: {reason}")}


def document(state: IncidentState, runtime: Runtime[Team]) -> IncidentState:
    """Write the post-mortem, store it in memory, post it, and close the issue if recovered."""
    team = runtime.context
    postmortem = team.librarian.write_with_model(state)
    stored = team.librarian.store(postmortem)
    _comment(team, state, "postmortem", postmortem.markdown)
    issue = state.get("issue_id")
    if issue is not None and postmortem.outcome == "recovered":
        _status(team, state, "resolved")
        team.toolbox.incidents.close(issue)
    _notify(team, state, "documented", "documented", postmortem.title)
    final: Status = "resolved" if postmortem.outcome == "recovered" else "escalated"
    return {
        "postmortem": postmortem,
        "status": final,
        "tokens": state.get("tokens", 0) + postmortem.tokens,
        "timeline": _at(
            team,
            "post-mortem written and stored"
            if stored or team.toolbox.memory is None
            else "post-mortem written; memory did not store it",
        ),
        **_fell_back("librarian", postmortem.llm_fallback),
        **_rejected("librarian", postmortem.ungrounded),
    }


# ----------------------------------------------------------------------------- routing


def after_observe(state: IncidentState) -> Literal["open_incident", "__end__"]:
    """Healthy systems end here: no incident, no action."""
    return "__end__" if state.get("status") == "healthy" else "open_incident"  # "__end__" is END


def after_plan(state: IncidentState) -> Literal["approval", "act", "escalate"]:
    """Escalate, ask a human, or act."""
    action_plan = state["plan"]
    assert action_plan is not None
    if action_plan.decision == "escalate":
        return "escalate"
    return "approval" if action_plan.needs_approval else "act"


def after_approval(state: IncidentState) -> Literal["act", "escalate"]:
    """Act only on an explicit approval."""
    decision = state.get("approval")
    return "act" if decision is not None and decision.approved else "escalate"


def after_act(state: IncidentState) -> Literal["verify", "escalate"]:
    """A dry run or a failed action is handed to a human; otherwise verify."""
    marker = f"/attempt-{state.get('attempts', 0)}/"
    results = [r for r in state.get("actions", []) if marker in r.key]
    if results and all(r.status == "done" for r in results):
        return "verify"
    return "escalate"


def after_verify(state: IncidentState, runtime: Runtime[Team]) -> Literal["document", "analyze", "escalate"]:
    """Recovered: document. Attempts left: analyze again with the new evidence. Otherwise escalate."""
    verification = state.get("verification")
    if verification is not None and verification.recovered:
        return "document"
    diagnosis = state.get("diagnosis")
    suspect = diagnosis.top.service if diagnosis and diagnosis.top else None
    if state.get("attempts", 0) < runtime.context.engineer.max_attempts(suspect):
        return "analyze"
    return "escalate"


def build_graph() -> StateGraph[IncidentState, Team, RunInput, IncidentState]:
    """The uncompiled incident graph."""
    builder = StateGraph(IncidentState, context_schema=Team, input_schema=RunInput)
    builder.add_node("observe", observe)
    builder.add_node("open_incident", open_incident)
    builder.add_node("analyze", analyze)
    builder.add_node("plan", plan)
    builder.add_node("approval", approval)
    builder.add_node("act", act)
    builder.add_node("verify", verify)
    builder.add_node("escalate", escalate)
    builder.add_node("document", document)
    builder.add_edge(START, "observe")
    builder.add_conditional_edges("observe", after_observe)
    builder.add_edge("open_incident", "analyze")
    builder.add_edge("analyze", "plan")
    builder.add_conditional_edges("plan", after_plan)
    builder.add_conditional_edges("approval", after_approval)
    builder.add_conditional_edges("act", after_act)
    builder.add_conditional_edges("verify", after_verify)
    builder.add_edge("escalate", "document")
    builder.add_edge("document", END)
    return builder


# Compiled without a checkpointer for LangGraph Studio / Agent Server, which bring their own.
graph = build_graph().compile()
