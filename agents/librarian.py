"""The librarian: writes the post-mortem, stores it in long-term memory, and recalls similar incidents."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from agents.analyst import symptom_text
from agents.grounding import check_postmortem, facts_of
from tools.base import SregraphError
from tools.display import md, md_block
from tools.domain import IncidentState, PostMortem, SimilarIncident
from tools.redact import redact_data
from tools.toolbox import Toolbox

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from agents.llm_config import LLMConfig

log = logging.getLogger(__name__)

FOLLOW_UPS = {
    "crash": "Find why the process exited (exit code, last log lines) and add a liveness probe with automatic restart.",
    "memory_leak": "Profile memory on the leaking code path; set a memory limit so the runtime restarts it "
    "before it hurts others.",
    "bad_deploy": "Add a canary stage and an automatic rollback on error-rate burn for this service's deploys.",
    "config_change": "Validate config changes in CI and roll them out progressively.",
    "latency": "Find the slow dependency or code path; add a latency SLO with a burn-rate alert.",
    "error_spike": "Find the failing code path from the top error template; add a test that reproduces it.",
    "cpu_saturation": "Profile CPU; add autoscaling or a CPU limit with headroom.",
    "dependency_down": "Add a circuit breaker and a fallback for this dependency.",
}


def _ts(at: float) -> str:
    try:
        return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (ValueError, OverflowError, OSError):
        return "?"  # a damaged stored time must not stop the post-mortem from rendering


class PostMortemText(BaseModel):
    """The librarian model's answer: prose only; facts stay as recorded."""

    title: str
    summary: str
    impact: str
    root_cause: str
    follow_ups: list[str] = Field(default_factory=list, max_length=4)


class Librarian:
    """Post-mortems in, similar incidents out."""

    def __init__(
        self, toolbox: Toolbox, chat_model: BaseChatModel | None = None, llm_config: LLMConfig | None = None
    ) -> None:
        self.toolbox = toolbox
        self.chat_model = chat_model
        self.llm_config = llm_config

    def write_with_model(self, state: IncidentState) -> PostMortem:
        """The factual draft, with title, summary, impact, root cause and follow-ups worded by the model."""
        draft = self.write(state)
        if self.chat_model is None:
            return draft
        # Imported on the first model call: the deterministic agents never load langchain or jinja2.
        from agents.llm import ask, incident_budget
        from prompts import render

        comments = []
        issue_id = state.get("issue_id")
        if issue_id is not None:
            try:
                comments = [
                    c for c in self.toolbox.incidents.get(issue_id).comments if c.author != "sregraph"
                ][-5:]
            except SregraphError as exc:
                log.warning("could not read the incident's comments: %s", exc)
        try:
            result = ask(
                self.chat_model,
                render("librarian.md.j2", draft=draft, comments=comments),
                PostMortemText,
                incident_budget(self.llm_config, state.get("tokens", 0)),
            )
        except SregraphError as exc:
            log.warning("LLM librarian failed, keeping the deterministic post-mortem: %s", exc)
            draft.markdown += (
                f"\n\n_Written by the deterministic librarian: the LLM was unavailable ({exc})._"
            )
            draft.llm_fallback = str(exc)
            return draft
        text: PostMortemText = result.output
        worded = draft.model_copy(
            update={
                "title": text.title[:200],
                "summary": text.summary[:2000],
                "impact": text.impact[:1000],
                "root_cause": text.root_cause[:2000],
                "follow_ups": [f[:300] for f in text.follow_ups[:4]] or draft.follow_ups,
                "tokens": result.tokens,
                "wording": "model",
            }
        )
        worded = redacted(worded)
        problems = check_postmortem(worded, facts_of(draft, self.toolbox.services))
        if problems:
            # Published and stored: the deterministic text, never the model's; the rejection is said on the incident.
            log.warning(
                "the model's post-mortem of %s is not grounded, keeping the deterministic one: %s",
                draft.incident_id,
                problems,
            )
            draft.tokens, draft.ungrounded = result.tokens, problems[:10]
            draft.markdown += "\n\n" + rejection_note(problems)
            return draft
        worded.markdown = render_markdown(worded)
        return worded

    def write(self, state: IncidentState) -> PostMortem:
        """A post-mortem from what the graph recorded: facts only, in a fixed shape."""
        iid = state["incident_id"]
        observation = state.get("observation")
        diagnosis = state.get("diagnosis")
        top = diagnosis.top if diagnosis else None
        verification = state.get("verification")
        actions = state.get("actions", [])
        escalation = state.get("escalation")
        recovered = bool(verification and verification.recovered)
        outcome = "recovered" if recovered else ("escalated" if escalation else "not_recovered")
        signals = observation.signals if observation else []
        service = top.service if top else (signals[0].service if signals else "unknown")
        fault = top.fault_type if top else "unknown"
        timeline = sorted(state.get("timeline", []), key=lambda t: t.at)
        duration = (timeline[-1].at - timeline[0].at) if len(timeline) > 1 else 0.0
        symptoms = symptom_text(signals) or "no measured deviation"
        action_lines = [f"{a.action.kind} {a.action.service}: {a.status} — {a.detail}" for a in actions]
        summary = (
            f"{fault.replace('_', ' ')} on {service}. Symptoms: {symptoms} "
            + (
                f"Remedied by {actions[-1].action.kind} of {actions[-1].action.service}; recovery verified."
                if recovered and actions
                else ""
            )
            + (f"Escalated to a human: {escalation}." if escalation else "")
        ).strip()
        impact = (
            f"{len({s.service for s in signals})} service(s) deviated ("
            + ", ".join(sorted({s.service for s in signals}))
            + f") for about {duration:.0f}s from detection to {'recovery' if recovered else 'hand-off'}."
            if signals
            else "No measured impact."
        )
        evidence = [
            f"[{e.kind}] {e.summary} (weight {e.weight:+.2f})" for e in (top.evidence if top else [])
        ][:8]
        root_cause = (
            f"{top.rationale} (confidence {top.confidence:.2f}, method {diagnosis.method})"
            if top and diagnosis
            else "undetermined"
        )
        follow_ups = [FOLLOW_UPS[fault]] if fault in FOLLOW_UPS else []
        if not recovered:
            follow_ups.append("A human must confirm the root cause and finish the remediation.")
        pm = PostMortem(
            incident_id=iid,
            title=f"Post-mortem {iid}: {fault.replace('_', ' ')} on {service}",
            summary=summary,
            impact=impact,
            timeline=timeline,
            root_cause=root_cause,
            service=service,
            fault_type=fault,
            evidence=evidence,
            actions=action_lines,
            outcome=outcome,
            follow_ups=follow_ups,
        )
        pm = redacted(pm)
        pm.markdown = render_markdown(pm)
        return pm

    def store(self, pm: PostMortem) -> bool:
        """Index the post-mortem in memory; False (logged) when memory is unavailable or the wording is ungrounded.

        A model-worded post-mortem is checked again here, whoever built it: memory serves it to every later
        incident, so nothing the recorded facts do not support may enter it.
        """
        if self.toolbox.memory is None:
            return False
        if pm.wording == "model":
            problems = check_postmortem(pm, facts_of(pm, self.toolbox.services))
            if problems:
                log.error(
                    "refusing to store post-mortem %s: its model wording is not grounded: %s",
                    pm.incident_id,
                    problems,
                )
                return False
        if pm.ungrounded:
            # The problems quote the rejected text; memory keeps only that a wording was rejected.
            pm = pm.model_copy(update={"ungrounded": [REJECTED_IN_MEMORY]})
            pm.markdown = render_markdown(pm) + f"\n\n_{REJECTED_IN_MEMORY}_"
        try:
            self.toolbox.memory.add(pm)
        except SregraphError as exc:
            log.error("could not store post-mortem %s: %s", pm.incident_id, exc)
            return False
        return True

    def recall(self, text: str, k: int = 3) -> list[SimilarIncident]:
        """Similar past incidents for free text (used by `sregraph memory search`)."""
        if self.toolbox.memory is None:
            return []
        found: list[SimilarIncident] = self.toolbox.memory.search(text, k=k)
        return found


REJECTED_IN_MEMORY = (
    "A model's wording of this post-mortem was rejected as ungrounded; this is the deterministic text."
)


def rejection_note(problems: list[str]) -> str:
    """The note under a deterministic post-mortem that replaced a model's ungrounded one."""
    shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
    return (
        "_The model's post-mortem was rejected as not grounded in this incident's timeline and evidence "
        f"({md(shown)}); this is the deterministic post-mortem, and only it is stored in memory._"
    )


def redacted(pm: PostMortem) -> PostMortem:
    """The post-mortem with every text field through the outward redactor (it quotes logs and errors)."""
    return PostMortem.model_validate(redact_data(pm.model_dump()))


def render_markdown(pm: PostMortem) -> str:
    """The post-mortem as Markdown, for the incident issue (every field escaped: they quote outside text)."""
    lines = [
        f"## {md(pm.title)}",
        "",
        f"**Outcome:** {md(pm.outcome)}  ",
        f"**Service:** {md(pm.service)}  **Fault type:** {md(pm.fault_type)}",
        "",
        "### Summary",
        md_block(pm.summary),
        "",
        "### Impact",
        md_block(pm.impact),
        "",
        "### Timeline",
        *[f"- {_ts(t.at)} — {md(t.event)}" for t in pm.timeline],
        "",
        "### Root cause",
        md_block(pm.root_cause),
        "",
        "### Evidence",
        *[f"- {md(e)}" for e in pm.evidence],
        "",
        "### Actions",
        *([f"- {md(a)}" for a in pm.actions] or ["- none"]),
        "",
        "### Follow-ups",
        *[f"- [ ] {md(f)}" for f in pm.follow_ups],
    ]
    return "\n".join(lines)
