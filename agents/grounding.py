"""Grounding checks for model-written text: a write-up may only state what the incident recorded.

A model words the incident title and the post-mortem; what it writes is published on the incident and (for the
post-mortem) stored in memory, where future incidents retrieve it as precedent. So before it is used, the text is
held against the facts the agents recorded (services of the system, the timeline, the evidence, the actions
log) by rules in code; any problem and the deterministic text is used instead. The rules are listed in
docs/evals.md ("Grounded write-ups"); every one errs towards rejecting: a rejected wording costs prose, a stored
invention misleads every later incident that retrieves it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tools.domain import FAULT_TYPES, Observation, PostMortem

METRIC_NAMES = frozenset(
    {
        "error_ratio",
        "latency_p95_ms",
        "memory_rss_mb",
        "cpu_percent",
        "request_rate",
        "conversion_ratio",
        "log_errors",
        "health",
        "stale",
    }
)
FAULT_NAMES = FAULT_TYPES
ACTION_NAMES = frozenset({"restart", "scale", "rollback", "config_change", "start"})
COMMON_COMPOUNDS = frozenset(
    {
        "follow-up",
        "follow-ups",
        "post-mortem",
        "postmortem",
        "root-cause",
        "on-call",
        "long-term",
        "short-term",
        "real-time",
        "roll-back",
        "re-run",
        "health-check",
        "health-checks",
        "end-to-end",
        "up-to-date",
        "out-of-memory",
        "read-only",
        "non-zero",
        "error-rate",
        "p95",
        "p99",
        "dry-run",
        "auto-merge",
        "well-known",
        "user-facing",
        "high-latency",
        "low-latency",
        "step-by-step",
        "built-in",
        "in-flight",
        "self-healing",
        "rate-limit",
        "rate-limiting",
        "circuit-breaker",
        "run-book",
        "runbook",
        "sregraph",
    }
)
SERVICE_WORDS = frozenset(
    {
        "service",
        "services",
        "svc",
        "api",
        "db",
        "database",
        "server",
        "gateway",
        "worker",
        "queue",
        "cache",
        "proxy",
        "backend",
        "microservice",
        "cluster",
        "pod",
        "host",
        "lb",
        "balancer",
        "redis",
        "postgres",
        "mysql",
        "kafka",
        "broker",
        "store",
        "daemon",
        "detector",
        "engine",
        "processor",
        "handler",
        "manager",
    }
)
"""Parts that make an identifier a service name ("fraud-detector", "auth_db"), which must then be a known one."""
NOT_A_NAME = frozenset(
    {
        "the",
        "a",
        "an",
        "this",
        "that",
        "each",
        "every",
        "one",
        "which",
        "same",
        "other",
        "affected",
        "failing",
        "downstream",
        "upstream",
        "dependent",
        "web",
        "its",
        "their",
        "our",
        "whole",
        "entire",
        "main",
        "target",
        "impacted",
        "degraded",
        "suspect",
        "faulty",
        "broken",
        "any",
        "no",
        "backend",
        "frontend",
        "calling",
        "caller",
        "called",
        "single",
        "another",
        "second",
        "first",
        "slow",
        "healthy",
        "unhealthy",
        "all",
        "both",
        "several",
        "multiple",
        "some",
        "many",
        "few",
        "two",
        "three",
        "these",
        "those",
        "recovering",
        "restarted",
        "running",
        "crashed",
        "down",
        "up",
        "unavailable",
        "available",
        "responsible",
        "underlying",
        "related",
        "involved",
        "diagnosed",
        "remaining",
        "overloaded",
        "leaking",
        "struggling",
        "troubled",
        "problematic",
        "culprit",
        "said",
        "given",
        "what",
        "whose",
        "in-house",
        "more",
        "most",
        "less",
        "only",
    }
)
UNMEASURED_CAUSE = re.compile(
    r"\b(fraud\w*|attack\w*|ddos|breach\w*|hack\w*|malicious|intrusion|ransomware|botnet|insider|sabotage\w*|"
    r"power outage|hardware failure|cosmic|solar flare|aws|azure|gcp|cloudflare|kubernetes|k8s|dns|bgp|"
    r"certificate|ssl|tls|data loss|data corruption|human error|user error)\b",
    re.IGNORECASE,
)
"""Causes sregraph cannot measure: a write-up may name one only where the recorded facts do (a quoted log line)."""
RELATIVE_DATE = re.compile(
    r"\b(yesterday|last (?:week|month|year|night)|\d+ (?:days|weeks|months|years) ago|next (?:week|month|year))\b",
    re.I,
)
YEAR = re.compile(
    r"(?<![#\d.:-])\b((?:19|20)\d\d)\b(?![\d:]|-\d\d(?!\d)|\.\d|\s*(?:ms|s\b|mb|kb|gb|%|x\b|requests|lines|errors|rps|bytes))",
    re.I,
)
ISO_DATE = re.compile(r"(?<!\d)(\d{4})-(\d{2})-(\d{2})(?!\d)")
MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
MONTH_DATE = re.compile(
    r"\b(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+(\d{1,2})(?:st|nd|rd|th)?\b", re.I
)
CLOCK = re.compile(r"(?<![\d:])([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?(?![\d:])")
IDENTIFIER = re.compile(r"(?<![\w/.-])([A-Za-z][A-Za-z0-9]*(?:[-_][A-Za-z0-9]+)+)(?![\w/-])")
CAMEL = re.compile(r"\b([A-Z][a-z0-9]+(?:[A-Z][a-z0-9]+)+)\b")
NAMED_SERVICE = re.compile(
    r"[`'\"]?\b([A-Za-z][\w-]*)\b[`'\"]?\s+(?:micro)?(?:service|server|database|db|api|cluster|backend)\b",
    re.I,
)
QUOTED = re.compile(r"`([^`\s]{2,60})`")
ACTION_CLAIMS: list[tuple[re.Pattern[str], frozenset[str]]] = [
    (
        re.compile(r"\b(restarted|rebooted|bounced|was restarted|got restarted)\b", re.I),
        frozenset({"restart", "start"}),
    ),
    (
        re.compile(r"\b(rolled back|reverted|was rolled back)\b", re.I),
        frozenset({"rollback", "config_change"}),
    ),
    (re.compile(r"\b(scaled (?:up|out|down|to))\b", re.I), frozenset({"scale"})),
    (re.compile(r"\b(merged)\b", re.I), frozenset({"rollback", "config_change"})),
    (
        re.compile(
            r"\b(redeployed|re-deployed|hotfix(?:ed)?|patched|failed over|migrated|deployed a fix|applied a "
            r"fix|rebuilt|replaced the)\b",
            re.I,
        ),
        frozenset(),
    ),
]
"""Past-tense claims that an action was taken, and the action kinds that would make them true (none: sregraph
never takes that action, so only the recorded facts can)."""
HEDGE = re.compile(
    r"\b(not|no|never|without|would|should|could|can|may|might|if|unless|consider|recommend\w*|before)\b|n't",
    re.I,
)
RECOVERED_CLAIM = re.compile(r"\b(recovered|resolved|restored|fixed|back to normal)\b", re.I)
FAULT_PHRASES: dict[str, re.Pattern[str]] = {
    "crash": re.compile(r"\bcrash", re.I),
    "memory_leak": re.compile(r"memory[ _]leak|\boom\b|out of memory", re.I),
    "bad_deploy": re.compile(r"bad[ _]deploy", re.I),
    "config_change": re.compile(r"config(?:uration)?[ _]change", re.I),
    "latency": re.compile(r"\blatency\b", re.I),
    "error_spike": re.compile(r"error[ _]spike", re.I),
    "cpu_saturation": re.compile(r"\bcpu\b", re.I),
    "disk_full": re.compile(r"disk[ _](?:full|space)|no space", re.I),
    "dependency_down": re.compile(r"dependency[ _](?:down|failure|outage)", re.I),
    "conversion_drop": re.compile(r"conversion", re.I),
}
SCHEMA_ECHO = re.compile(r"\bjson\b|\bschema\b|&#\d+;|maxlength|maxitems|\"type\"\s*:|[{}]", re.I)
"""The answer format talking about itself (seen from SmolLM2: "This is a JSON object that contains the
post-mortem text", escaped schema fragments): says nothing about the incident, so it is not a write-up of it."""
TIME_SLACK_S = 120.0
"""A time a write-up names may lie this far outside the recorded window (clock rounding, minute precision)."""


@dataclass(frozen=True)
class Facts:
    """What the incident recorded, as the checks read it."""

    services: frozenset[str]
    """Every service of the system (the topology's)."""
    service: str
    """The diagnosed service ("unknown" when there was none)."""
    fault_type: str
    done: frozenset[tuple[str, str]]
    """(kind, service) of every action that ran to completion."""
    start: float
    end: float
    outcome: str
    corpus: str
    """The recorded text (timeline, evidence, actions), lower-cased: a phrase found here is grounded."""

    def known(self, name: str) -> bool:
        """Whether `name` is a service of the system or a word the recorded facts use."""
        low = name.lower().strip("`'\".,:;")
        return low in {s.lower() for s in self.services} or bool(
            re.search(rf"(?<![\w-]){re.escape(low)}(?![\w-])", self.corpus)
        )


ACTION_LINE = re.compile(r"^(\w+) (\S+): (\w+)")


def facts_of(pm: PostMortem, services: Iterable[str]) -> Facts:
    """The facts of a post-mortem, from the fields no model writes (timeline, evidence, actions, service, fault)."""
    done = set()
    for line in pm.actions:
        m = ACTION_LINE.match(line)
        if m and m.group(3) == "done":
            done.add((m.group(1), m.group(2)))
    times = [t.at for t in pm.timeline]
    corpus = "\n".join(
        [
            *(t.event for t in pm.timeline),
            *pm.evidence,
            *pm.actions,
            pm.service,
            pm.fault_type,
            pm.incident_id,
        ]
    )
    return Facts(
        services=frozenset(services) | ({pm.service} - {"unknown"}),
        service=pm.service,
        fault_type=pm.fault_type,
        done=frozenset(done),
        start=min(times, default=0.0),
        end=max(times, default=0.0),
        outcome=pm.outcome,
        corpus=corpus.lower(),
    )


def observation_facts(observation: Observation, services: Iterable[str]) -> Facts:
    """The facts at detection time, for the incident title: the signals measured, no action taken yet."""
    onsets = [s.onset for s in observation.signals if s.onset is not None]
    start = min([*onsets, observation.observed_at - max(observation.window_s, 0.0)])
    corpus = "\n".join(f"{s.service} {s.name} {s.detail} {s.why}" for s in observation.signals)
    top = max(observation.signals, key=lambda s: s.score).service if observation.signals else "unknown"
    return Facts(
        services=frozenset(services),
        service=top,
        fault_type="unknown",
        done=frozenset(),
        start=start,
        end=observation.observed_at,
        outcome="open",
        corpus=corpus.lower(),
    )


def unknown_services(text: str, facts: Facts) -> list[str]:
    """Names in `text` that read as services but are neither a service of the system nor in the recorded facts."""
    found: list[str] = []

    def flag(name: str) -> None:
        name = name.strip("`'\".,:;")
        if (
            name
            and not facts.known(name)
            and name.lower() not in found
            and name.lower() not in (x.lower() for x in found)
        ):
            found.append(name)

    vocabulary = METRIC_NAMES | FAULT_NAMES | ACTION_NAMES | COMMON_COMPOUNDS
    for m in IDENTIFIER.finditer(text):
        token = m.group(1)
        low = token.lower()
        if low in vocabulary:
            continue
        parts = set(re.split(r"[-_]", low))
        if parts & SERVICE_WORDS or _followed_by_service_word(text, m.end()):
            flag(token)
    for m in CAMEL.finditer(text):
        # "PaymentGateway", "FraudDetector"; not "ConnectionError", which names an error, not a service.
        if {w.lower() for w in re.findall(r"[A-Z][a-z0-9]*", m.group(1))} & SERVICE_WORDS:
            flag(m.group(1))
    for m in NAMED_SERVICE.finditer(text):
        name = m.group(1)
        if (
            name.lower() in NOT_A_NAME
            or name.lower() in SERVICE_WORDS
            or name.lower() in vocabulary
            or name.isdigit()
        ):
            continue
        if name[0].isupper() or "-" in name or "_" in name or m.group(0)[0] in "`'\"":
            flag(name)
        elif name.lower() not in _ENGLISH_BEFORE_SERVICE:
            flag(name)
    for m in QUOTED.finditer(text):
        token = m.group(1)
        if (
            IDENTIFIER.fullmatch(token)
            and token.lower() not in vocabulary
            and not any(c.isdigit() for c in token.split("-")[0])
        ):
            flag(token)
    return found


_ENGLISH_BEFORE_SERVICE = frozenset(
    {
        "payment",
        "checkout",
        "order",
        "user",
        "customer",
        "external",
        "internal",
        "third",
        "party",
        "remote",
        "local",
        "shared",
        "central",
        "core",
        "critical",
        "primary",
        "secondary",
        "backup",
        "production",
        "prod",
        "staging",
        "test",
        "whole",
        "api",
        "database",
        "http",
        "grpc",
        "rest",
        "new",
        "old",
        "same",
        "own",
        "dependency",
        "application",
        "app",
        "microservice",
        "origin",
        "root",
        "named",
        "unknown",
        "known",
        "sregraph",
        "monitoring",
        "alerting",
        "of",
        "to",
        "for",
        "and",
        "or",
        "on",
        "in",
        "at",
        "by",
        "with",
        "from",
        "is",
        "was",
        "were",
        "be",
        "been",
        "has",
        "had",
        "have",
        "did",
        "does",
        "do",
        "are",
    }
)
"""Ordinary words that may stand before "service"/"server" without naming one ("the payment service" is judged
by the other rules: "payment" is not a service here, but it is not an invention either)."""


def invented_services(text: str, services: Iterable[str], recorded: str = "") -> list[str]:
    """Service-like names in a model's free text (a rationale, a reason) that are not services of the system.

    `recorded` is text the agents measured (evidence, commit messages): a name found there is not an invention.
    """
    facts = Facts(frozenset(services), "unknown", "unknown", frozenset(), 0.0, 0.0, "", recorded.lower())
    return unknown_services(text, facts)


def _followed_by_service_word(text: str, end: int) -> bool:
    m = re.match(r"\s+(\w+)", text[end:])
    return bool(m and m.group(1).lower() in SERVICE_WORDS)


def _days(facts: Facts) -> list[datetime]:
    if facts.end <= 0:
        return []
    first = datetime.fromtimestamp(facts.start - TIME_SLACK_S, tz=UTC).date()
    last = datetime.fromtimestamp(facts.end + TIME_SLACK_S, tz=UTC).date()
    days: list[datetime] = []
    day = first
    while day <= last and len(days) < 8:
        days.append(datetime(day.year, day.month, day.day, tzinfo=UTC))
        day += timedelta(days=1)
    return days


def times_outside(text: str, facts: Facts) -> list[str]:
    """Years, dates and clock times in `text` that fall outside the incident's recorded window (UTC)."""
    days = _days(facts)
    if not days:
        return []
    years = {d.year for d in days}
    problems: list[str] = []
    for m in YEAR.finditer(text):
        if int(m.group(1)) not in years and not facts.known(m.group(1)):
            problems.append(m.group(1))
    for m in ISO_DATE.finditer(text):
        try:
            named = datetime(int(m.group(1)), int(m.group(2)), int(m.group(3)), tzinfo=UTC)
        except ValueError:
            problems.append(m.group(0))
            continue
        if named not in days:
            problems.append(m.group(0))
    for m in MONTH_DATE.finditer(text):
        month, day = MONTHS.index(m.group(1).lower()[:3]) + 1, int(m.group(2))
        if not any(d.month == month and d.day == day for d in days):
            problems.append(m.group(0))
    for m in CLOCK.finditer(text):
        h, mi, s = int(m.group(1)), int(m.group(2)), m.group(3)
        width = 0.0 if s is not None else 59.0
        inside = False
        for d in days:
            at = d.timestamp() + h * 3600 + mi * 60 + int(s or 0)
            if at + width >= facts.start - TIME_SLACK_S and at <= facts.end + TIME_SLACK_S:
                inside = True
        if not inside:
            problems.append(m.group(0))
    problems += [m.group(0) for m in RELATIVE_DATE.finditer(text) if not facts.known(m.group(0))]
    return problems


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?;])\s+|\n+", text) if s.strip()]


def actions_not_taken(text: str, facts: Facts) -> list[str]:
    """Past-tense claims of an action that the actions log does not show as done (on the service it names)."""
    problems: list[str] = []
    names = "|".join(re.escape(s) for s in sorted(facts.services, key=len, reverse=True)) or r"(?!x)x"
    for sentence in _sentences(text):
        if HEDGE.search(sentence):
            continue  # negated or hypothetical: "was not restarted", "a rollback would have..."
        for pattern, kinds in ACTION_CLAIMS:
            for m in pattern.finditer(sentence):
                claim = m.group(1)
                if not kinds:
                    ok = facts.known(claim)
                else:
                    # The service the claim is about: "payments was restarted", "restarted the payments service".
                    before = re.search(
                        rf"(?<![\w-])({names})(?:'s)?\s+(?:service\s+|process\s+)?(?:was\s+|got\s+|is\s+|were\s+)?$",
                        sentence[: m.start()],
                        re.I,
                    )
                    after = re.match(rf"\s+(?:the\s+)?({names})(?![\w-])", sentence[m.end() :], re.I)
                    mention = before or after
                    subject = mention.group(1).lower() if mention else None
                    ok = any(k in kinds and (subject is None or s.lower() == subject) for k, s in facts.done)
                if not ok:
                    problems.append(f'{claim!r} in "{sentence.strip()[:120]}"')
    return problems


def inconsistent_root_cause(root_cause: str, facts: Facts) -> list[str]:
    """Where the worded root cause departs from the final hypothesis (its service, its fault type)."""
    problems: list[str] = []
    if facts.service != "unknown" and not re.search(
        rf"(?<![\w-]){re.escape(facts.service)}(?![\w-])", root_cause, re.I
    ):
        problems.append(f"the root cause does not name the diagnosed service {facts.service}")
    if facts.fault_type in FAULT_PHRASES:
        own = (
            FAULT_PHRASES[facts.fault_type].search(root_cause)
            or facts.fault_type.replace("_", " ") in root_cause.lower()
        )
        others = [f for f, p in FAULT_PHRASES.items() if f != facts.fault_type and p.search(root_cause)]
        if others and not own:
            problems.append(
                f"the root cause names {', '.join(others)} where the diagnosis is {facts.fault_type}"
            )
    return problems


def check_texts(
    fields: Mapping[str, str],
    facts: Facts,
    *,
    root_cause_field: str | None = None,
    title_field: str | None = None,
) -> list[str]:
    """Every grounding problem of the model-written `fields` (name -> text) against `facts`; [] when grounded."""
    problems: list[str] = []
    for name, text in fields.items():
        if not text.strip():
            problems.append(f"{name} is empty")
            continue
        problems += [
            f"{name} names a service that does not exist: {s}" for s in unknown_services(text, facts)
        ]
        problems += [f"{name} names a time outside the incident: {t}" for t in times_outside(text, facts)]
        problems += [
            f"{name} names a cause nothing measured: {c.group(0)}"
            for c in UNMEASURED_CAUSE.finditer(text)
            if not facts.known(c.group(0))
        ]
        echo = SCHEMA_ECHO.search(text)
        if echo and not facts.known(echo.group(0)):
            problems.append(f"{name} describes the answer format, not the incident: {echo.group(0)!r}")
        if name != "follow_ups":  # follow-ups propose actions; everything else may only report them
            problems += [
                f"{name} claims an action that did not run: {a}" for a in actions_not_taken(text, facts)
            ]
            if facts.outcome in ("escalated", "not_recovered"):
                problems += [
                    f'{name} claims recovery, but the outcome is {facts.outcome}: "{s.strip()[:120]}"'
                    for s in _sentences(text)
                    if RECOVERED_CLAIM.search(s) and not HEDGE.search(s)
                ]
    if root_cause_field is not None and fields.get(root_cause_field, "").strip():
        problems += inconsistent_root_cause(fields[root_cause_field], facts)
    if title_field is not None and facts.service != "unknown" and fields.get(title_field, "").strip():
        if not re.search(rf"(?<![\w-]){re.escape(facts.service)}(?![\w-])", fields[title_field], re.I):
            problems.append(f"{title_field} does not name the incident's service {facts.service}")
    return problems


def check_postmortem(pm: PostMortem, facts: Facts) -> list[str]:
    """Problems of a post-mortem's worded fields (title, summary, impact, root cause, follow-ups) against `facts`."""
    fields = {
        "title": pm.title,
        "summary": pm.summary,
        "impact": pm.impact,
        "root_cause": pm.root_cause,
        "follow_ups": "\n".join(pm.follow_ups) or "-",
    }
    return check_texts(fields, facts, root_cause_field="root_cause", title_field="title")


def check_title(title: str, observation: Observation, services: Iterable[str]) -> list[str]:
    """Problems of a model-worded incident title against what was measured at detection."""
    facts = observation_facts(observation, services)
    problems = check_texts({"title": title}, facts)
    deviating = {s.service for s in observation.signals}
    if (
        title.strip()
        and deviating
        and not any(re.search(rf"(?<![\w-]){re.escape(s)}(?![\w-])", title, re.I) for s in deviating)
    ):
        problems.append(f"title names none of the services that deviated ({', '.join(sorted(deviating))})")
    return problems
