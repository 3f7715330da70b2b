"""The analyst: ranks root-cause hypotheses from evidence; their confidence is a calibrated probability.

The deterministic method (docs/analyst-method.md) scores every service on independent evidence families —
metrics, health/runtime, logs, traces, recent changes, memory of past incidents — then moves blame down the
dependency graph: a service whose own dependency is failing is more likely a symptom than a cause. The LLM
mode lets a model investigate with read-only tools and rank hypotheses, but every hypothesis it names is
scored on the same measured evidence, so a model cannot talk its way into confidence. Confidence is the
probability that the top answer is right, from the root-cause ranker's fitted confidence model
(agents/rca_confidence.json) applied to the margins of this ranking (`calibrated`).
"""

from __future__ import annotations

import functools
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, ConfigDict, Field

from agents.detection.window import Windows, log_evidence, measure, trace_origins
from agents.grounding import invented_services
from agents.observer import ObserverConfig
from agents.rca import ServiceScore, features, rank
from agents.rca_confidence import ARTEFACT, ConfidenceModel, default_min_confidence
from agents.rca_live import live_input
from tools.base import Change, ServiceStatus, SregraphError
from tools.domain import (
    FAULT_TYPES,
    ActionResult,
    Diagnosis,
    Evidence,
    FaultType,
    Hypothesis,
    Observation,
    Signal,
    SimilarIncident,
)
from tools.gitops import is_own_change
from tools.toolbox import Toolbox

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from agents.llm_config import LLMConfig


class AnalystConfig(BaseModel):
    """Analyst knobs."""

    model_config = ConfigDict(extra="forbid")

    change_lookback_s: float = Field(default=900.0, ge=0)
    """Deploys and config changes this far before the onset count as suspects."""
    min_confidence: float = Field(default_factory=default_min_confidence, ge=0, le=1)
    """Below this the engineer escalates instead of acting. The default is the threshold evals/tune_rca.py chose
    from the confidence model's out-of-fold selective-risk curve, stored in agents/rca_confidence.json
    (docs/rca.md); sregraph.yaml or SREGRAPH_ANALYST__MIN_CONFIDENCE override it."""
    similar_k: int = Field(default=3, ge=0, le=100)
    memory_min_similarity: float = Field(default=0.5, ge=-1, le=1)


log = logging.getLogger(__name__)

# Evidence weights. They are prior beliefs about how telling each kind of evidence is, set once by hand and
# documented; they are not fitted to any test case.
W_HEALTH = 3.0
W_NOT_RUNNING = 3.0
W_STALE = 2.0
W_METRIC_PER_SD = 0.25
W_METRIC_CAP = 2.0
W_FIRST = 0.75
W_LOGS = 1.0
W_LOG_POINTER = 1.0
W_TRACE_ORIGIN = 2.5
W_CHANGE = 2.0
W_SYMPTOM_PENALTY = 0.7
W_DEPENDENCY_BONUS = 0.5
W_MEMORY = 0.75
W_FAILED_ACTION = 2.0
W_RANKER = 0.5
"""Weight of the ranker's answer: its top service gets this much evidence (its normalised score is 1)."""
RANKER_MIN_DEVIATION = 1.6
"""... and only on a service whose own metrics moved by log1p(z) >= 1.6 (z about 4, the observer's threshold),
or whose traces or logs did: on a healthy system the ranker still orders services by their noise, which is no
evidence. Its z-scores are scaled by at least each metric's floor (`agents.detection.rules.RULES`), as the window rule's
are: without the floor, a latency of 5.1 ms with a flat baseline that reads 8 ms once was z ≈ 12 (log1p 2.5)."""

CHANGE_SLACK_S = 5.0
"""A change may land a few seconds after the baseline ends (commit times are whole seconds)."""


def change_proximity(healthy_for: float) -> float:
    """How suspect a change is, from how long the service ran normally after it.

    A bad deploy or config usually hurts within seconds to a minute of rollout; a service that ran normally
    for minutes after a change is probably failing for another reason (documented in docs/analyst-method.md).
    """
    if healthy_for <= 60:
        return 1.0
    if healthy_for <= 300:
        return 0.4
    return 0.2


FAMILIES = {
    "metric": "metric",
    "health": "health",
    "runtime": "health",
    "log": "log",
    "trace": "trace",
    "change": "change",
    "memory": "memory",
}


@dataclass
class ServiceEvidence:
    """Everything measured about one service."""

    service: str
    signals: list[Signal] = field(default_factory=list)
    status: ServiceStatus | None = None
    evidence: list[Evidence] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    error_lines: int = 0
    """Error log lines in the incident's span."""
    error_templates: list[tuple[str, int]] = field(default_factory=list)
    """The most frequent error-line templates with their counts."""
    errors_rose: bool = False
    """Its own error lines rose well above the baseline's."""
    unreached_since: float | None = None
    """When its callers' calls first failed without reaching it (no span of its own): it was down or restarting."""

    @property
    def score(self) -> float:
        """Sum of evidence weights."""
        return sum(e.weight for e in self.evidence)

    @property
    def onset(self) -> float | None:
        """Earliest onset among this service's signals, or of the calls to it that could not reach it.

        A service that is unreachable for a moment (a redeploy's restart) writes no telemetry of its own then:
        its callers' failed calls are the only record of when its trouble began.
        """
        onsets = [s.onset for s in self.signals if s.onset is not None]
        if self.unreached_since is not None:
            onsets.append(self.unreached_since)
        return min(onsets) if onsets else None

    def has(self, name: str) -> bool:
        """Whether a signal of this name deviates."""
        return any(s.name == name for s in self.signals)

    @property
    def down(self) -> bool:
        """Not serving: health failing, process gone, or telemetry stopped."""
        return (
            self.has("health") or self.has("stale") or (self.status is not None and not self.status.running)
        )


class Analyst:
    """Produces a Diagnosis; deterministic by default, LLM-ranked when a chat model is given."""

    def __init__(
        self,
        toolbox: Toolbox,
        config: AnalystConfig,
        observer_config: ObserverConfig,
        chat_model: BaseChatModel | None = None,
        llm_config: LLMConfig | None = None,
        confidence_artefact: Path = ARTEFACT,
    ) -> None:
        self.toolbox = toolbox
        self.config = config
        self.observer_config = observer_config
        self.chat_model = chat_model
        self.llm_config = llm_config
        self.confidence_artefact = Path(confidence_artefact)
        self.confidence_model = shipped_model(self.confidence_artefact)
        """The calibrated confidence model (agents/rca_confidence.json); None when the artefact is missing."""

    # ------------------------------------------------------------------ gathering

    def gather(
        self, observation: Observation, previous: list[ActionResult]
    ) -> tuple[dict[str, ServiceEvidence], list[SimilarIncident], Windows]:
        """Measure every service now, against the baseline that ended before the incident."""
        tb, oc = self.toolbox, self.observer_config
        now = tb.clock.now()
        windows = Windows.ending_at(now, oc.window_s, oc.baseline_s, baseline_end=observation.baseline_end)
        signals, _ = measure(tb, windows, oc.z_threshold)
        # What the observer confirmed is evidence too: the trouble may have paused, or (seen early by the
        # streaming detectors) not yet have moved a whole window's median.
        measured = {(s.service, s.name) for s in signals}
        signals += [s for s in observation.signals if (s.service, s.name) not in measured]
        table = {s: ServiceEvidence(s) for s in tb.services}
        for sig in signals:
            if sig.service in table:
                table[sig.service].signals.append(sig)
        for service, ev in table.items():
            try:
                ev.status = tb.runtime.status(service)
            except SregraphError as exc:
                log.warning("runtime status of %s failed: %s", service, exc)
        since = windows.baseline_end - self.config.change_lookback_s
        for change in tb.changes.history(since=since):
            if change.kind == "other":
                continue  # seed commits and unrelated files change nothing that runs
            if is_own_change(change):
                # sregraph's own remediation, by provenance (signed or in its ledger): reverting it would bring
                # the bad change back, so it is never a suspect.
                continue
            for service in change.services:
                if service in table:
                    table[service].changes.append(change)
        similar = self.similar(signals)
        self._score(table, windows, similar, previous)
        return table, similar, windows

    def similar(self, signals: list[Signal]) -> list[SimilarIncident]:
        """Past incidents whose post-mortems resemble these symptoms."""
        if self.toolbox.memory is None or not signals:
            return []
        text = symptom_text(signals)
        try:
            found: list[SimilarIncident] = self.toolbox.memory.search(text, k=self.config.similar_k)
        except SregraphError as exc:
            log.warning("memory search failed: %s", exc)
            return []
        return [s for s in found if s.similarity >= self.config.memory_min_similarity]

    def _score(
        self,
        table: dict[str, ServiceEvidence],
        windows: Windows,
        similar: list[SimilarIncident],
        previous: list[ActionResult],
    ) -> None:
        z = self.observer_config.z_threshold
        for ev in table.values():
            for sig in ev.signals:
                if sig.name == "health":
                    ev.evidence.append(
                        Evidence(kind="health", service=ev.service, summary=sig.detail, weight=W_HEALTH)
                    )
                elif sig.name == "stale":
                    ev.evidence.append(
                        Evidence(
                            kind="metric", service=ev.service, summary=sig.detail, weight=W_STALE, ref="stale"
                        )
                    )
                else:
                    weight = min(W_METRIC_PER_SD * sig.score, W_METRIC_CAP) * min(sig.score / z, 1.0)
                    ev.evidence.append(
                        Evidence(
                            kind="metric",
                            service=ev.service,
                            summary=sig.detail,
                            weight=round(weight, 3),
                            ref=sig.name,
                        )
                    )
            if ev.status is not None and not ev.status.running:
                detail = (
                    f"process not running (exit code {ev.status.exit_code}, restarts {ev.status.restarts})"
                )
                if ev.status.oom_killed:
                    detail += ", OOM-killed"
                ev.evidence.append(
                    Evidence(kind="runtime", service=ev.service, summary=detail, weight=W_NOT_RUNNING)
                )

        # Logs and traces are read from the incident's start (at most a minute back), not just the last window.
        span = Windows(
            windows.baseline_start,
            windows.baseline_end,
            max(windows.baseline_end, windows.recent_end - 60),
            windows.recent_end,
        )
        traces = trace_origins(self.toolbox.telemetry, span)
        for service, since in traces.unreached.items():
            if service in table:
                table[service].unreached_since = since

        # Which deviated first: the cause usually leads its symptoms.
        onsets = {s: ev.onset for s, ev in table.items() if ev.onset is not None}
        if len(onsets) > 1:
            first = min(onsets, key=lambda s: onsets[s])
            lead = sorted(onsets.values())[1] - onsets[first]
            if lead > 0:
                table[first].evidence.append(
                    Evidence(
                        kind="metric",
                        service=first,
                        summary=f"deviated first, {lead:.1f}s before the next service",
                        weight=W_FIRST,
                        ref="onset",
                    )
                )

        services = list(table)
        logs = log_evidence(self.toolbox.telemetry, services, span)
        for service, le in logs.items():
            table[service].error_lines, table[service].error_templates = le.errors, le.templates
            if le.errors >= 3 and le.errors > 3 * le.baseline_errors:
                table[service].errors_rose = True
                top = le.templates[0][0] if le.templates else ""
                table[service].evidence.append(
                    Evidence(
                        kind="log",
                        service=service,
                        summary=f"{le.errors} error lines (baseline {le.baseline_errors}); top: {top}",
                        weight=W_LOGS,
                    )
                )
            if le.warnings >= 3 and le.warnings > 3 * le.baseline_warnings:
                table[service].evidence.append(
                    Evidence(
                        kind="log",
                        service=service,
                        summary=f"{le.warnings} warning lines (baseline {le.baseline_warnings})",
                        weight=W_LOGS / 2,
                    )
                )
            total = sum(le.mentions.values())
            for other, count in le.mentions.items():
                if count >= 3 and other in self.toolbox.downstream_of(service):
                    table[other].evidence.append(
                        Evidence(
                            kind="log",
                            service=other,
                            summary=f"{count} of {service}'s error lines name {other}",
                            weight=round(W_LOG_POINTER * count / total, 3),
                        )
                    )

        origins, edges = traces.origins, traces.edges
        failing = sum(origins.values())
        for service, count in origins.items():
            if service in table and failing >= 3:
                table[service].evidence.append(
                    Evidence(
                        kind="trace",
                        service=service,
                        summary=f"origin of {count} of {failing} failing traces (deepest error, or the slow "
                        "call a caller gave up on)",
                        weight=round(W_TRACE_ORIGIN * count / failing, 3),
                    )
                )

        deviating = {s for s, ev in table.items() if ev.score > 0}
        # A broken business journey with no errors anywhere: changes along the journey's path are suspects
        # even on services that look quiet, because "succeeds but buys nothing" shows only at the entry.
        journey = set()
        for s, ev in table.items():
            if ev.has("conversion_ratio"):
                journey |= self.toolbox.downstream_of(s)
        for ev in table.values():
            if ev.service not in deviating and ev.service not in journey:
                continue  # a change on a quiet service is a red herring, not evidence
            # Only changes before the incident began can have caused it: the incident's own remediation
            # commits (a rollback PR merged a minute ago) are never suspects, and never reverted in turn.
            started = windows.baseline_end
            before = [c for c in ev.changes if c.at <= started + CHANGE_SLACK_S]
            for change in before[:1]:
                healthy_for = max(0.0, started - change.at)
                if healthy_for <= self.config.change_lookback_s:
                    ev.evidence.append(
                        Evidence(
                            kind="change",
                            service=ev.service,
                            summary=f"{change.kind} {change.sha[:8]} '{change.message.splitlines()[0]}', "
                            f"{healthy_for:.0f}s of normal running before the incident",
                            weight=round(W_CHANGE * change_proximity(healthy_for), 3),
                            ref=change.sha,
                        )
                    )

        # The ranker's view comes after the change rule: a change stays a suspect only on a service that the
        # rules already saw deviate, so the ranker's ordering of small movements never makes a red herring.
        self._rank_evidence(table, windows, span, previous)

        # Blame flows down the dependency graph: a caller of a failing dependency is a symptom.
        base_scores = {s: ev.score for s, ev in table.items()}
        for service, ev in table.items():
            if base_scores[service] <= 0:
                continue
            culprits = [
                d
                for d in self.toolbox.downstream_of(service) | edges.get(service, set())
                if d in table and base_scores[d] > 0 and _leads(table[d], ev)
            ]
            if culprits:
                culprit = max(culprits, key=lambda d: base_scores[d])
                metric_weight = sum(e.weight for e in ev.evidence if e.kind in ("metric", "log", "trace"))
                ev.evidence.append(
                    Evidence(
                        kind="topology",
                        service=service,
                        summary=f"depends on {culprit}, which is failing too: likely a symptom",
                        weight=-round(W_SYMPTOM_PENALTY * metric_weight, 3),
                        ref=culprit,
                    )
                )
                table[culprit].evidence.append(
                    Evidence(
                        kind="topology",
                        service=culprit,
                        summary=f"its caller {service} degrades too, consistent with {culprit} as the cause",
                        weight=W_DEPENDENCY_BONUS,
                        ref=service,
                    )
                )

        for past in similar[:1]:
            if past.service in table and table[past.service].score > 0:
                table[past.service].evidence.append(
                    Evidence(
                        kind="memory",
                        service=past.service,
                        summary=f"resembles {past.incident_id} ({past.fault_type}, {past.outcome}; "
                        f"similarity {past.similarity:.2f})",
                        weight=round(W_MEMORY * past.similarity, 3),
                        ref=past.incident_id,
                    )
                )

        for result in previous:
            if result.status == "done" and result.action.service in table:
                table[result.action.service].evidence.append(
                    Evidence(
                        kind="action",
                        service=result.action.service,
                        summary=f"{result.action.kind} already tried ({result.key}) and the system did not recover",
                        weight=-W_FAILED_ACTION,
                        ref=result.key,
                    )
                )

    def _rank_evidence(
        self, table: dict[str, ServiceEvidence], windows: Windows, span: Windows, previous: list[ActionResult]
    ) -> None:
        """The root-cause ranker's scores (agents/rca.py, measured in docs/rca.md) as evidence on every service.

        Each service the ranker scores gets W_RANKER times its score normalised so the ranker's top is 1, when
        its own metrics moved enough or its traces or logs did (RANKER_MIN_DEVIATION). A caller that is only a
        symptom then loses 0.7 of it with its other metric evidence (the topology penalty).

        Not on a service already acted on in this incident: whether to try it again or hand it to a human after
        a remedy did not help is the rule layer's call (attempt limits, escalation), and the ranker's view,
        which has not changed, would only argue for repeating the same action.
        """
        acted_on = {r.action.service for r in previous if r.status == "done"}
        try:
            down = {service for service, ev in table.items() if ev.down}
            ranked = rank(
                live_input(
                    self.toolbox.telemetry, list(table), self.toolbox.topology, windows, span, down=down
                )
            )
        except SregraphError as exc:
            log.warning("root-cause ranker skipped: %s", exc)
            return
        top = ranked.ranking[0].score if ranked.ranking else 0.0
        if top <= 0:
            return
        for sc in ranked.ranking:
            strong = (
                max(sc.by_kind.values(), default=0.0) >= RANKER_MIN_DEVIATION or sc.trace > 0 or sc.log > 0
            )
            weight = round(W_RANKER * sc.score / top, 3)
            if sc.service in table and sc.service not in acted_on and strong and weight > 0:
                parts = ", ".join(
                    f"{name} {value:.2f}"
                    for name, value in (("metrics", sc.metric), ("traces", sc.trace), ("logs", sc.log))
                    if value > 0
                )
                table[sc.service].evidence.append(
                    Evidence(
                        kind="metric",
                        service=sc.service,
                        summary=f"root-cause ranker score {sc.score / top:.2f} of its top ({parts or 'call graph'})",
                        weight=weight,
                        ref="ranker",
                    )
                )

    # ------------------------------------------------------------------ ranking

    def diagnose(
        self, observation: Observation, previous: list[ActionResult] | None = None, tokens_spent: int = 0
    ) -> Diagnosis:
        """Ranked hypotheses, each with its calibrated confidence (`calibrated`)."""
        previous = previous or []
        table, similar, _ = self.gather(observation, previous)
        if self.chat_model is not None:
            try:
                return self._diagnose_llm(
                    self.chat_model, observation, table, similar, previous, tokens_spent
                )
            except SregraphError as exc:
                log.warning("LLM analyst failed, using the deterministic method: %s", exc)
                diagnosis = self._rank(table, similar, previous)
                diagnosis.notes.append(f"LLM unavailable ({exc}); fell back to the deterministic method")
                diagnosis.llm_fallback = str(exc)
                return diagnosis
        return self._rank(table, similar, previous)

    def _rank(
        self,
        table: dict[str, ServiceEvidence],
        similar: list[SimilarIncident],
        previous: list[ActionResult],
        order: list[tuple[str, FaultType, str]] | None = None,
        method: str = "deterministic",
    ) -> Diagnosis:
        candidates = [ev for ev in table.values() if ev.score > 0]
        grounding: list[str] = []
        if order is None:
            candidates.sort(key=lambda ev: (-ev.score, ev.service))
            picks = [(ev.service, classify(ev, table, self.toolbox, similar), "") for ev in candidates]
        else:
            picks = []
            recorded = recorded_text(table)
            for service, fault, rationale in (p for p in order if p[0] in table):
                measured = classify(table[service], table, self.toolbox, similar)
                why_not = unsupported(fault, table[service], table, self.toolbox)
                if fault != measured and why_not:
                    grounding.append(
                        f"model said {fault} on {service}, but {why_not}: kept the evidence's {measured}"
                    )
                    fault = measured
                invented = invented_services(rationale, table, recorded)
                if invented:
                    # The rationale is shown on the incident and read by the engineer model: no invented services.
                    grounding.append(
                        f"model's rationale for {service} names services that do not exist "
                        f"({', '.join(invented)}): ignored, the evidence's rationale is shown"
                    )
                    rationale = ""
                picks.append((service, fault, rationale))
            named = {p[0] for p in picks}
            picks += [
                (ev.service, classify(ev, table, self.toolbox, similar), "")
                for ev in sorted(candidates, key=lambda e: -e.score)
                if ev.service not in named
            ]
        notes = ([] if picks else ["no service shows evidence of a fault"]) + grounding
        if self.confidence_model is not None:
            probabilities = calibrated({s: ev.score for s, ev in table.items()}, self.confidence_model)
        else:
            total = sum(ev.score for ev in candidates) or 1.0
            probabilities = {service: confidence(table[service], total) for service, _, _ in picks}
            notes.append(
                f"CONFIDENCE NOT CALIBRATED: the confidence model {self.confidence_artefact} is missing, so "
                "confidence is "
                "the old evidence-share formula (docs/analyst-method.md §5), not a probability, and "
                "analyst.min_confidence "
                "was not chosen for it; refit the model with: python -m evals.tune_rca --data DIR --write"
            )
        hypotheses = []
        for service, fault, rationale in picks:
            ev = table[service]
            hypotheses.append(
                Hypothesis(
                    service=service,
                    fault_type=fault,
                    score=round(ev.score, 3),
                    confidence=probabilities[service],
                    evidence=sorted(ev.evidence, key=lambda e: -abs(e.weight)),
                    rationale=rationale or rationale_for(ev, fault),
                )
            )
        top_conf = hypotheses[0].confidence if hypotheses else 0.0
        return Diagnosis(
            hypotheses=hypotheses, confidence=top_conf, method=method, similar=similar, notes=notes
        )

    def _diagnose_llm(
        self,
        model: BaseChatModel,
        observation: Observation,
        table: dict[str, ServiceEvidence],
        similar: list[SimilarIncident],
        previous: list[ActionResult],
        tokens_spent: int,
    ) -> Diagnosis:
        # Imported on the first model call: the deterministic agents never load langchain or jinja2.
        from agents.investigation import build_readonly_tools
        from agents.llm import LLMDiagnosis, incident_budget, run_tool_loop
        from prompts import render

        tb = self.toolbox
        memory = tb.memory
        memory_search = (
            (lambda text: memory.search(text, k=self.config.similar_k)) if memory is not None else None
        )
        tools = build_readonly_tools(
            tb.telemetry, tb.runtime, tb.changes, memory_search, tb.clock, self.observer_config.window_s * 10
        )
        changes = sorted(
            {c.sha: c for ev in table.values() for c in ev.changes}.values(), key=lambda c: -c.at
        )
        system = render(
            "analyst.md.j2", **analyst_prompt_context(observation, tb, changes, similar, previous)
        )
        user = "Investigate this incident with the tools, then give your ranked hypotheses."
        budget = incident_budget(self.llm_config, tokens_spent)
        result = run_tool_loop(
            model,
            system,
            user,
            tools,
            LLMDiagnosis,
            self.llm_config.max_steps if self.llm_config else 6,
            budget,
        )
        answer: LLMDiagnosis = result.output
        order = [(h.service, h.fault_type, h.rationale) for h in answer.hypotheses]
        unknown = [s for s, _, _ in order if s not in table]
        diagnosis = self._rank(
            table,
            similar,
            previous,
            order=order,
            method=f"llm:{getattr(self.llm_config, 'provider', 'custom')}",
        )
        diagnosis.tokens = result.tokens
        recorded = recorded_text(table)
        for note in answer.notes if hasattr(answer, "notes") else []:
            invented = invented_services(note, table, recorded)
            if invented:
                diagnosis.notes.append(
                    f"a model note named services that do not exist ({', '.join(invented)}): not shown"
                )
            else:
                diagnosis.notes.append(f"model: {note}")
        if unknown:
            diagnosis.notes.append(
                f"model named services that do not exist, ignored: {', '.join(dict.fromkeys(unknown))}"
            )
        return diagnosis


def recorded_text(table: dict[str, ServiceEvidence]) -> str:
    """What the agents measured, as text (evidence summaries, commit messages): names found here are not invented."""
    return "\n".join(
        [
            *(e.summary for ev in table.values() for e in ev.evidence),
            *(c.message for ev in table.values() for c in ev.changes),
        ]
    )


def _stronger(ev: ServiceEvidence, name: str, than: str) -> bool:
    """Whether signal `name` deviates more (in robust sd) than signal `than` on this service."""
    scores = {s.name: s.score for s in ev.signals}
    return scores.get(name, 0.0) > scores.get(than, 0.0)


def _leads(cause: ServiceEvidence, symptom: ServiceEvidence) -> bool:
    """Whether `cause` went wrong no later than `symptom` (a dead dependency always leads)."""
    if cause.down:
        return True
    if cause.onset is None or symptom.onset is None:
        return True
    return cause.onset <= symptom.onset + 1.0


@functools.lru_cache(maxsize=8)
def shipped_model(path: Path = ARTEFACT) -> ConfidenceModel | None:
    """The confidence model stored at `path`, read once; None (and a warning) when there is none."""
    model = ConfidenceModel.load(path)
    if model is None:
        log.warning(
            "confidence model %s is missing: the analyst falls back to the uncalibrated evidence-share formula",
            path,
        )
    return model


def ranking_features(scores: dict[str, float]) -> dict[str, float]:
    """The confidence model's features of the analyst's ranking, by `agents.rca.features` itself.

    Every service of the system is a candidate (as every service of a case is the ranker's). Scores below zero
    (penalties outweighing evidence) count as 0, as the ranker's never go below 0, and all are divided by the
    largest, so the top scores 1: the ranker's final scores mix two max-normalised scores, whose top is 1
    whenever both agree on it. Ties are broken by name, as the ranker breaks them.
    """
    top = max((max(v, 0.0) for v in scores.values()), default=0.0)
    norm = {s: max(v, 0.0) / top if top > 0 else 0.0 for s, v in scores.items()}
    ranking = [ServiceScore(service=s, score=norm[s]) for s in sorted(norm, key=lambda s: (-norm[s], s))]
    return features(ranking, {}, {}, {})


def calibrated(scores: dict[str, float], model: ConfidenceModel) -> dict[str, float]:
    """Confidence of every service with positive evidence, from the analyst's final scores.

    The top service gets the model's probability that the top answer is right (`ranking_features`). The model
    says nothing about the others: they share what is left, 1 − p, in proportion to their positive scores, an
    apportionment rather than a fitted probability. A service the LLM picks over the evidence's top therefore
    gets at most 1 − p: it can only be right if the top is wrong. Services without positive evidence get 0.
    """
    positive = {s: v for s, v in scores.items() if v > 0}
    if not positive:
        return {s: 0.0 for s in scores}
    top = min(positive, key=lambda s: (-positive[s], s))
    p_top = model.probability(ranking_features(scores))
    rest = sum(v for s, v in positive.items() if s != top)
    out = {s: 0.0 for s in scores}
    out.update({s: round((1.0 - p_top) * v / rest, 3) for s, v in positive.items() if s != top})
    out[top] = round(p_top, 3)
    return out


def confidence(ev: ServiceEvidence, total: float) -> float:
    """The fallback confidence when the calibrated model is missing: a formula, not a probability.

    Its share of all evidence times how many families agree.

    share = score / sum of positive scores (separation from the alternatives);
    agreement = independent families (metric, health, log, trace, change, memory) with positive weight, over 3.
    confidence = share * (0.4 + 0.6 * min(agreement, 1)).
    """
    if ev.score <= 0:
        return 0.0
    families = {FAMILIES[e.kind] for e in ev.evidence if e.weight > 0 and e.kind in FAMILIES}
    agreement = min(len(families) / 3.0, 1.0)
    share = ev.score / total
    return round(min(1.0, share * (0.4 + 0.6 * agreement)), 3)


def classify(
    ev: ServiceEvidence, table: dict[str, ServiceEvidence], toolbox: Toolbox, similar: list[SimilarIncident]
) -> FaultType:
    """The fault type the evidence pattern of one service points to."""
    change = next((e for e in ev.evidence if e.kind == "change"), None)
    restart_failed = any(e.kind == "action" and "restart" in e.summary for e in ev.evidence)
    # A change names the fault when it is close to the onset, or when restarting has already failed.
    recent_change = change if change is not None and (change.weight >= W_CHANGE or restart_failed) else None
    change_kind = next((c.kind for c in ev.changes if recent_change and c.sha == recent_change.ref), None)
    if restart_failed and recent_change is not None and recent_change.weight >= W_CHANGE:
        # Down or failing right after its own change, and a restart did not help: the change is the fault (a
        # crash-looping or broken release), and only undoing it helps. A first crash is still restarted: a deploy
        # minutes before a crash is often a red herring, and a restart is the cheaper test.
        return "config_change" if change_kind == "config" else "bad_deploy"
    if ev.status is not None and not ev.status.running:
        return "crash"
    if ev.has("memory_rss_mb") and not _stronger(ev, "cpu_percent", "memory_rss_mb"):
        return "memory_leak"
    if ev.down:
        return "crash"
    if _disk_full(ev):
        return "disk_full"
    # Errors seen from any family: its own metrics, or callers' traces and logs pointing at it.
    erroring = ev.has("error_ratio") or any(e.kind in ("trace", "log") and e.weight > 0 for e in ev.evidence)
    if recent_change is not None and (erroring or ev.has("latency_p95_ms")):
        return "config_change" if change_kind == "config" else "bad_deploy"
    if ev.has("cpu_percent"):
        return "cpu_saturation"
    if ev.has("error_ratio") or (ev.errors_rose and not ev.has("latency_p95_ms")):
        # Failing requests, seen in its error ratio or (before a window's median moves) in its own error lines.
        return "error_spike"
    if ev.has("latency_p95_ms"):
        return "latency"
    if ev.has("conversion_ratio"):
        return "bad_deploy" if recent_change is not None else "conversion_drop"
    if recent_change is not None:
        # Quiet itself, but changed just before the journey broke (see the journey rule in _score).
        return "config_change" if change_kind == "config" else "bad_deploy"
    if any(table[d].down for d in toolbox.downstream_of(ev.service) if d in table):
        return "dependency_down"
    remembered = next((s.fault_type for s in similar if s.service == ev.service), None)
    if remembered is not None and remembered in FAULT_TYPES:
        return cast(FaultType, remembered)
    return "unknown"


def unsupported(fault: str, ev: ServiceEvidence, table: dict[str, ServiceEvidence], toolbox: Toolbox) -> str:
    """Why the measured evidence does not support `fault` on this service ("" when it does).

    A model proposes a fault type; it counts only where the evidence that fault type would leave is there, because
    the fault type chooses the remedy (a restart for a crash, a rollback for a bad deploy). "unknown" is always
    supported: it claims nothing and acts on nothing.
    """
    changes = {c.kind for c in ev.changes}
    needs = {
        "crash": (ev.down, "it is running and its health checks pass"),
        "memory_leak": (ev.has("memory_rss_mb"), "its memory did not deviate"),
        "cpu_saturation": (ev.has("cpu_percent"), "its CPU did not deviate"),
        "latency": (
            ev.has("latency_p95_ms") or any(e.kind == "trace" and e.weight > 0 for e in ev.evidence),
            "neither its latency nor its traces deviated",
        ),
        "error_spike": (
            ev.has("error_ratio")
            or ev.errors_rose
            or any(e.kind in ("trace", "log") and e.weight > 0 for e in ev.evidence),
            "no error ratio, error lines or failing traces point at it",
        ),
        "bad_deploy": ("deploy" in changes, "it had no deploy in the lookback"),
        "config_change": ("config" in changes, "it had no config change in the lookback"),
        "disk_full": (_disk_full(ev), "its error lines are not the kernel's no-space errors"),
        "dependency_down": (
            any(table[d].down for d in toolbox.downstream_of(ev.service) if d in table),
            "none of its dependencies is down",
        ),
        "conversion_drop": (ev.has("conversion_ratio"), "its conversion did not drop"),
    }
    supported, reason = needs.get(fault, (True, ""))
    return "" if supported else reason


DISK_FULL = re.compile(r"no space left on device|ENOSPC|errno 28\b|disk quota exceeded|EDQUOT", re.IGNORECASE)


def _disk_full(ev: ServiceEvidence) -> bool:
    """Most of the service's error lines are the kernel's "no space left on device" (or quota exceeded).

    Log text is untrusted, so this may only ever withhold an action: disk_full has no automatic remedy (no
    restart frees a disk), and the engineer escalates it to a human.
    """
    if ev.error_lines < 3:
        return False
    matching = sum(n for template, n in ev.error_templates if DISK_FULL.search(template))
    return matching * 2 > ev.error_lines


def rationale_for(ev: ServiceEvidence, fault: str) -> str:
    """One sentence tying the fault type to the strongest evidence."""
    strongest = [e.summary for e in sorted(ev.evidence, key=lambda e: -e.weight) if e.weight > 0][:3]
    return f"{ev.service}: {fault.replace('_', ' ')} — " + "; ".join(strongest)


def symptom_text(signals: list[Signal]) -> str:
    """Symptoms as text, for similarity search over post-mortems."""
    lines = defaultdict(list)
    for s in sorted(signals, key=lambda s: -s.score)[:8]:
        lines[s.service].append(s.detail)
    return " ".join(f"{svc}: {'; '.join(d)}." for svc, d in lines.items())


def analyst_prompt_context(
    observation: Observation,
    toolbox: Toolbox,
    changes: list[Change],
    similar: list[SimilarIncident],
    previous: list[ActionResult],
) -> dict[str, Any]:
    """What the analyst prompt template is rendered with."""
    return {
        "summary": symptom_text(observation.signals) or "a reported problem with no measured deviation",
        "signals": observation.signals[:12],
        "services": toolbox.services,
        "edges": [(s, d) for s, deps in sorted(toolbox.topology.items()) for d in deps],
        "changes": changes[:5],
        "similar": similar,
        "previous": previous,
    }
