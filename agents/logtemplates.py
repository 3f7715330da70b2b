"""Log template mining with Drain (drain3): many log lines in, a few templates with counts and examples out.

A model reading raw log lines pays for every repeat of the same message. `LogTemplateMiner` clusters lines
into templates with the Drain algorithm (a fixed-depth parse tree over tokens; lines of the same length and
similar leading tokens share a template, differing tokens become `<*>`), after masking ids, addresses and
numbers so they never split a template. What comes out per template: its text, how many lines, which
services and levels, when it was first and last seen, one example line with its attributes, and the most
common values of each variable slot (so `upstream <*> returned <NUM>` still says *which* upstream).

`summarize_templates` renders that as a few lines of text, errors first; the analyst (or the `search_logs`
tool) can hand it to a model in place of the raw lines. `evals/bench_logs.py` measures the token saving.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from drain3 import TemplateMiner
from drain3.masking import MaskingInstruction
from drain3.template_miner_config import TemplateMinerConfig

from tools.base import LogRecord

# Order matters: the first pattern that matches a piece of text masks it, so specific shapes go first.
MASKS: tuple[tuple[str, str], ...] = (
    (r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b", "UUID"),
    (r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b", "IP"),
    (r"\b0x[0-9a-fA-F]+\b", "HEX"),
    # Trace ids, span ids, shas: long hex runs with at least one digit and one letter, so words survive.
    (r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b", "ID"),
    (r"(?<![A-Za-z])[-+]?\d+(?:\.\d+)?", "NUM"),
)
"""(regex, mask name) pairs applied before Drain sees a line; the mask shows as `<NAME>` in templates."""

SEVERITY: dict[str, int] = {"critical": 0, "fatal": 0, "error": 1, "err": 1, "warning": 2, "warn": 2}
"""Sort rank of a level (lower is worse); anything else ranks after warnings."""

MAX_DISTINCT_LINES = 256
"""Distinct raw lines remembered per template for slot statistics (memory stays bounded)."""


def severity(level: str) -> int:
    """Sort rank of a log level: critical 0, error 1, warning 2, anything else 3."""
    return SEVERITY.get(level.lower(), 3)


@dataclass
class SlotValues:
    """The values seen in one variable slot of a template."""

    position: int
    """Token index in the template."""
    values: Counter[str] = field(default_factory=Counter)

    def describe(self, top: int = 3) -> str:
        """`a×5, b×2` for the most common values, plus how many distinct values there were."""
        common = self.values.most_common(top)
        text = ", ".join(f"{_clip(v, 40)}×{n}" for v, n in common)
        if len(self.values) > top:
            text += f" (+{len(self.values) - top} more)"
        return text


@dataclass
class Template:
    """One mined template at one level: counts, where it came from, and an example."""

    template: str
    level: str
    count: int
    services: Counter[str]
    first_ts: float
    last_ts: float
    example: LogRecord
    slots: list[SlotValues] = field(default_factory=list)
    """Variable slots whose values were sampled (high-cardinality slots such as ids included)."""

    def as_dict(self, top: int = 3) -> dict[str, Any]:
        """JSON-ready form, for a tool result."""
        return {
            "template": self.template,
            "level": self.level,
            "count": self.count,
            "services": dict(self.services.most_common()),
            "first_ts": round(self.first_ts, 3),
            "last_ts": round(self.last_ts, 3),
            "example": self.example.message,
            "example_attrs": self.example.attrs,
            "slots": {str(s.position): dict(s.values.most_common(top)) for s in self.slots},
        }


@dataclass
class _Cluster:
    """What the miner keeps per (Drain cluster, level)."""

    level: str
    count: int = 0
    services: Counter[str] = field(default_factory=Counter)
    first_ts: float = float("inf")
    last_ts: float = float("-inf")
    example: LogRecord | None = None
    lines: Counter[str] = field(default_factory=Counter)


class LogTemplateMiner:
    """Clusters log records into templates with drain3; feed with `add`, read with `templates`.

    Each service gets its own Drain tree, so a template never generalises one service's line into another's
    (`upstream payments returned 500` from checkout stays apart from `upstream checkout returned 502` from
    frontend: which service names which is the evidence). Identical templates of several services are
    merged when read (`service started version=<NUM>.<NUM>` once, with a count per service).
    """

    def __init__(
        self,
        similarity: float = 0.6,
        depth: int = 4,
        max_clusters: int | None = 1000,
        masks: Sequence[tuple[str, str]] = MASKS,
    ) -> None:
        """Drain's similarity threshold and tree depth; at most `max_clusters` templates per service.

        The threshold is the share of a line's tokens that must equal a template's for the line to join it.
        Drain's usual 0.4 suits long lines; service logs are short, where 0.4 merges `upstream checkout
        returned 502` with `upstream checkout unreachable: ConnectError` (2 of 4 tokens agree), so 0.6.
        """
        self._config = TemplateMinerConfig()
        self._config.drain_sim_th = similarity
        self._config.drain_depth = depth
        self._config.drain_max_clusters = max_clusters
        self._config.masking_instructions = [MaskingInstruction(pattern, name) for pattern, name in masks]
        self._miners: dict[str, TemplateMiner] = {}
        self._clusters: dict[tuple[str, int, str], _Cluster] = {}
        self.records = 0

    def _miner(self, service: str) -> TemplateMiner:
        miner = self._miners.get(service)
        if miner is None:
            # Always pass a config: without one, TemplateMiner reads drain3.ini from the working directory.
            miner = self._miners[service] = TemplateMiner(config=self._config)
        return miner

    def add(self, record: LogRecord) -> str:
        """Mine one record; returns the template its cluster has now."""
        message = " ".join(record.message.split())  # Drain tokenises on whitespace; keep slots aligned
        result = self._miner(record.service).add_log_message(message)
        level = record.level.lower()
        key = (record.service, int(result["cluster_id"]), level)
        cluster = self._clusters.get(key)
        if cluster is None:
            cluster = self._clusters[key] = _Cluster(level=level)
        cluster.count += 1
        cluster.services[record.service] += 1
        cluster.first_ts = min(cluster.first_ts, record.ts)
        cluster.last_ts = max(cluster.last_ts, record.ts)
        if cluster.example is None:
            cluster.example = record
        if message in cluster.lines or len(cluster.lines) < MAX_DISTINCT_LINES:
            cluster.lines[message] += 1
        self.records += 1
        return str(result["template_mined"])

    def add_all(self, records: Iterable[LogRecord]) -> LogTemplateMiner:
        """Mine many records; returns self for chaining."""
        for record in records:
            self.add(record)
        return self

    def templates(self) -> list[Template]:
        """Every template, errors first, then by count (largest first), then by text."""
        current = {
            (service, c.cluster_id): list(c.log_template_tokens)
            for service, miner in self._miners.items()
            for c in miner.drain.clusters
        }
        merged: dict[tuple[str, str], Template] = {}
        for (service, cluster_id, level), kept in self._clusters.items():
            tokens = current.get((service, cluster_id))
            if tokens is None or kept.example is None:
                continue  # evicted by max_clusters
            text = " ".join(tokens)
            slots = _slots(tokens, kept.lines)
            found = merged.get((text, level))
            if found is None:
                merged[(text, level)] = Template(
                    template=text,
                    level=level,
                    count=kept.count,
                    services=Counter(kept.services),
                    first_ts=kept.first_ts,
                    last_ts=kept.last_ts,
                    example=kept.example,
                    slots=slots,
                )
                continue
            found.count += kept.count
            found.services.update(kept.services)
            if kept.first_ts < found.first_ts:
                found.first_ts, found.example = kept.first_ts, kept.example
            found.last_ts = max(found.last_ts, kept.last_ts)
            by_position = {s.position: s for s in found.slots}
            for slot in slots:
                if slot.position in by_position:
                    by_position[slot.position].values.update(slot.values)
                else:
                    found.slots.append(slot)
        out = list(merged.values())
        for template in out:
            template.slots.sort(key=lambda slot: slot.position)
        out.sort(key=lambda t: (severity(t.level), -t.count, t.template))
        return out


def _slots(template_tokens: list[str], lines: Counter[str]) -> list[SlotValues]:
    """Values of the template's variable tokens, read positionally from the remembered raw lines."""
    positions = [i for i, tok in enumerate(template_tokens) if "<" in tok and ">" in tok]
    slots = {i: SlotValues(i) for i in positions}
    for line, n in lines.items():
        tokens = line.split()
        if len(tokens) != len(template_tokens):
            continue
        for i in positions:
            slots[i].values[tokens[i]] += n
    return [s for s in slots.values() if s.values]


def mine(records: Iterable[LogRecord], **options: Any) -> list[Template]:
    """Templates of `records` (options go to `LogTemplateMiner`)."""
    return LogTemplateMiner(**options).add_all(records).templates()


def _clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clock(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%H:%M:%S")


_ID_VALUE = re.compile("|".join(f"(?:{pattern})" for pattern, name in MASKS if name in ("UUID", "HEX", "ID")))


def _attrs(attrs: dict[str, Any], limit: int = 4) -> str:
    """`k=v` pairs of an example's attributes; ids (trace ids, uuids) cost tokens and say nothing, so go."""
    parts = []
    for key, value in attrs.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if not _ID_VALUE.fullmatch(text):
            parts.append(f"{key}={_clip(text, 40)}")
    return " ".join(parts[:limit])


def summarize_templates(
    records: Sequence[LogRecord],
    max_templates: int = 10,
    slot_values: int = 3,
    miner: LogTemplateMiner | None = None,
) -> str:
    """Log records as mined templates, errors first: counts, services, time span, slot values, one example.

    Format (one block per template)::

        [error] x298 frontend×298 21:02:55–21:03:31 upstream checkout returned <NUM>
          slots: <NUM> 502×197, 500×101
          e.g. frontend: upstream checkout returned 502 | route=/buy status=502
    """
    if not records:
        return "no log records"
    templates = (miner or LogTemplateMiner()).add_all(records).templates()
    levels = Counter(r.level.lower() for r in records)
    head = ", ".join(
        f"{n} {lvl}" for lvl, n in sorted(levels.items(), key=lambda kv: (severity(kv[0]), kv[0]))
    )
    lines = [f"{len(records)} records ({head}), {len(templates)} templates"]
    for t in templates[:max_templates]:
        services = " ".join(f"{s}×{n}" for s, n in t.services.most_common(3))
        span = _clock(t.first_ts) if t.count == 1 else f"{_clock(t.first_ts)}–{_clock(t.last_ts)}"
        lines.append(f"[{t.level}] x{t.count} {services} {span} {_clip(t.template, 200)}")
        tokens = t.template.split()
        varying = [s for s in t.slots if len(s.values) > 1]
        if varying:
            described = " | ".join(f"{tokens[s.position]} {s.describe(slot_values)}" for s in varying[:4])
            lines.append(f"  slots: {described}")
        if " ".join(t.example.message.split()) != t.template or t.example.attrs:
            example = f"  e.g. {t.example.service}: {_clip(t.example.message, 200)}"
            attrs = _attrs(t.example.attrs)
            lines.append(f"{example} | {attrs}" if attrs else example)
    rest = templates[max_templates:]
    if rest:
        lines.append(f"… {len(rest)} more templates ({sum(t.count for t in rest)} records)")
    return "\n".join(lines)
