"""The observer: watches telemetry and health, decides that an incident exists, and describes it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from agents.detection.stream import MetricSense
from agents.detection.window import Windows, backtrack_onset, measure
from agents.grounding import check_title
from tools.base import SregraphError
from tools.display import md
from tools.domain import Observation, Signal, Trigger
from tools.toolbox import Toolbox

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from agents.llm_config import LLMConfig


class ObserverConfig(BaseModel):
    """How the observer decides an incident exists."""

    model_config = ConfigDict(extra="forbid")

    window_s: float = Field(default=6.0, gt=0)
    """Recent window compared with the baseline."""
    baseline_s: float = Field(default=30.0, gt=0)
    """Length of the baseline window that ends where the recent window starts."""
    z_threshold: float = Field(default=4.0, gt=0)
    """Robust z-score above which a metric counts as deviating."""
    confirm_polls: int = Field(default=2, ge=1)
    """Consecutive polls a deviation must persist before an incident opens (flap suppression)."""
    confirm_s: float = Field(default=1.5, ge=0)
    """...and for at least this long, so a restart's sub-second gap is not an incident."""
    poll_s: float = Field(default=0.5, gt=0)
    detect_timeout_s: float = Field(default=20.0, ge=0)
    """How long one observe step watches before calling the system healthy (0: one look)."""
    ensemble: bool = True
    """Also run the streaming detector ensemble on every series (agents/detection/stream.py), not only the
    window rule."""
    ensemble_warmup_points: int = Field(default=40, ge=5)
    """Points of a series the ensemble learns from before it may alert."""
    ensemble_gate: float = Field(default=2.0, gt=0)
    """An ensemble alert needs the value worse than baseline by this many times the metric's smallest change
    that matters (agents/detection/window.py RULES)."""


log = logging.getLogger(__name__)


class IncidentTitle(BaseModel):
    """The observer model's answer."""

    title: str = Field(description="At most 80 characters: the most affected service and its main symptom.")


class Observer:
    """Decides whether the system is healthy; deterministic detection in both modes.

    Detection stays statistical even with an LLM brain (a model is no better at thresholds and far slower);
    in LLM mode the model only words the incident title, which must be grounded in what was measured
    (agents/grounding.py) or the deterministic title is used.
    """

    def __init__(
        self,
        toolbox: Toolbox,
        config: ObserverConfig,
        chat_model: BaseChatModel | None = None,
        llm_config: LLMConfig | None = None,
    ) -> None:
        self.toolbox = toolbox
        self.config = config
        self.chat_model = chat_model
        self.llm_config = llm_config

    def title(
        self, observation: Observation, trigger: Trigger, tokens_spent: int = 0
    ) -> tuple[str, int, str | None, list[str]]:
        """The incident's title, the tokens spent on it, why the model was not used (or None), and why its
        title was rejected."""
        fallback = incident_title(observation, trigger)
        if self.chat_model is None or not observation.signals:
            return fallback, 0, None, []
        # Imported on the first model call: the deterministic agents never load langchain or jinja2.
        from agents.llm import ask, incident_budget
        from prompts import render

        try:
            result = ask(
                self.chat_model,
                render("observer.md.j2", signals=observation.signals[:12]),
                IncidentTitle,
                incident_budget(self.llm_config, tokens_spent),
            )
        except SregraphError as exc:
            log.warning("LLM observer failed, using the deterministic title: %s", exc)
            return fallback, 0, str(exc), []
        answer: IncidentTitle = result.output
        # The title is untrusted model text: one line, bounded, and prefixed so it is never mistaken for ours.
        text = " ".join(answer.title.split())[:80]
        problems = check_title(text, observation, self.toolbox.services)
        if problems:
            log.warning(
                "the model's incident title %r is not grounded, using the deterministic one: %s",
                text,
                problems,
            )
            return fallback, result.tokens, None, problems
        return f"[incident] {text}", result.tokens, None, []

    def new_sense(self) -> MetricSense | None:
        """Streaming detectors for every series (None when the ensemble is switched off)."""
        if not self.config.ensemble:
            return None
        return MetricSense(self.config.ensemble_warmup_points, self.config.ensemble_gate)

    def check(
        self, now: float | None = None, sense: MetricSense | None = None
    ) -> tuple[list[Signal], dict[str, dict[str, float]], Windows]:
        """One measurement of every service; without a `sense`, with detectors warmed afresh on this baseline.

        A scan's detectors are rebuilt each time (a few thousand point updates): detectors that lived through
        an incident would have learnt its extremes as normal, and after one large latency incident NAB's
        record calibrator stays deaf to the next one for hours.
        """
        now = self.toolbox.clock.now() if now is None else now
        windows = Windows.ending_at(now, self.config.window_s, self.config.baseline_s)
        signals, snapshot = measure(self.toolbox, windows, self.config.z_threshold, sense or self.new_sense())
        return signals, snapshot, windows

    def observe(self, trigger: Trigger, timeout_s: float | None = None) -> Observation:
        """Watch until a deviation persists for `confirm_polls` polls, or until the timeout says healthy."""
        clock = self.toolbox.clock
        timeout = self.config.detect_timeout_s if timeout_s is None else timeout_s
        deadline = clock.now() + timeout
        streak: dict[str, int] = {}
        first_seen: dict[str, float] = {}
        first_sense: dict[str, str] = {}
        # Each incident's watch has its own detectors, warmed on the first baseline window it reads: what it
        # decides depends only on the telemetry it queried, so a recorded incident replays the same.
        sense = self.new_sense()
        while True:
            signals, snapshot, windows = self.check(sense=sense)
            keys = {f"{s.service}:{s.name}" for s in signals}
            streak = {k: streak.get(k, 0) + 1 for k in keys}
            first_seen = {k: first_seen.get(k, windows.recent_end) for k in keys}
            # Which sense saw each deviation first (a streaming detector's sighting is later confirmed by the
            # window rule under the same key).
            first_sense = {
                f"{s.service}:{s.name}": first_sense.get(f"{s.service}:{s.name}", s.sense) for s in signals
            }
            confirmed = [
                s
                for s in signals
                if streak[f"{s.service}:{s.name}"] >= self.config.confirm_polls
                and windows.recent_end - first_seen[f"{s.service}:{s.name}"] >= self.config.confirm_s
            ]
            if confirmed:
                # The baseline must end before the trouble began, or later analysis compares trouble with trouble.
                onset = min(first_seen[f"{s.service}:{s.name}"] for s in confirmed)
                lookback = windows.recent_end - self.config.window_s - self.config.baseline_s
                for s in confirmed:
                    s.onset = backtrack_onset(self.toolbox.telemetry, s, lookback, windows.recent_end)
                onsets = [s.onset for s in confirmed if s.onset is not None]
                start = min([onset - self.config.window_s, *onsets]) - 1.0
                return Observation(
                    healthy=False,
                    signals=signals,
                    snapshot=snapshot,
                    observed_at=windows.recent_end,
                    window_s=self.config.window_s,
                    baseline_end=start,
                    detected_by=sorted({first_sense[f"{s.service}:{s.name}"] for s in confirmed} - {""}),
                )
            if clock.now() >= deadline:
                return Observation(
                    healthy=True,
                    signals=[],
                    snapshot=snapshot,
                    observed_at=windows.recent_end,
                    window_s=self.config.window_s,
                    baseline_end=windows.baseline_end,
                )
            clock.sleep(self.config.poll_s)


def incident_title(observation: Observation, trigger: Trigger) -> str:
    """A short human title for the incident issue."""
    top = observation.top_signal(trigger.service)
    if top is not None:
        return f"[incident] {top.service}: {top.detail}"
    return f"[incident] {trigger.summary or 'reported problem'}"


def incident_body(observation: Observation, trigger: Trigger) -> str:
    """The issue body: what was observed, when, and a compact telemetry snapshot."""
    lines = [
        f"**Trigger:** {trigger.source}" + (f" — {md(trigger.summary)}" if trigger.summary else ""),
        f"**Observed at:** {observation.observed_at:.0f} (epoch s), window {observation.window_s:.0f}s",
        "",
        "### Deviations",
        "| service | signal | value | baseline | score | seen by |",
        "|---|---|---|---|---|---|",
    ]
    for s in observation.signals[:10]:
        lines.append(
            f"| {md(s.service)} | {md(s.name)} | {s.value:g} | {s.baseline:g} | {s.score:.1f} | {md(s.sense) or '–'} |"
        )
    explained = [s for s in observation.signals[:10] if s.why]
    if explained:
        lines += ["", "Streaming detectors:"]
        lines += [f"- {md(s.service)} {md(s.name)}: {md(s.why)}" for s in explained]
    metrics = sorted({m for snap in observation.snapshot.values() for m in snap})
    lines += [
        "",
        "### Telemetry snapshot",
        "| service | " + " | ".join(map(md, metrics)) + " |",
        "|---" * (len(metrics) + 1) + "|",
    ]
    for service, snap in sorted(observation.snapshot.items()):
        lines.append(
            f"| {md(service)} | " + " | ".join(f"{snap[m]:g}" if m in snap else "–" for m in metrics) + " |"
        )
    return "\n".join(lines)
