"""The root-cause ranker: every candidate service scored from metrics, traces and logs, then moved along the call graph.

One method serves the live analyst and the offline benchmark (`sregraph bench rca`); it knows nothing of a
dataset's service or metric names. Metrics (BARO-style), traces, logs and events score each service, a symptom
steers them, and a personalised PageRank moves trouble from callers to callees.
Method, sources and measured numbers: docs/rca.md §The method.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

Kind = Literal["cpu", "memory", "latency", "errors", "traffic", "saturation", "other"]
Direction = Literal["up", "down", "both"]
RcaFault = Literal["cpu", "memory", "latency", "error", "crash", "disk", "network_loss", "other"]

KINDS: tuple[Kind, ...] = ("cpu", "memory", "latency", "errors", "traffic", "saturation", "other")

# ----------------------------------------------------------------------------- inputs


@dataclass
class MetricSeries:
    """One metric of one service (one instance, when a service has several)."""

    service: str
    metric: str
    ts: np.ndarray
    values: np.ndarray
    normal: np.ndarray | None = None
    """Values of the same series in a known-normal period, when there is one."""
    kind: Kind = "other"
    direction: Direction = "both"
    floor: float = 0.0
    """The smallest change of this series that matters, in its own unit (0: not known): the scale of its
    z-scores is never below it, so a series that is almost constant does not turn a tiny wobble into news."""


@dataclass
class SpanRow:
    """One span, in the few fields the ranker reads."""

    trace_id: str
    span_id: str
    parent_id: str
    service: str
    operation: str
    start: float
    """Unix seconds."""
    duration: float
    """Seconds."""
    status: str = ""
    """ok, error, or empty when unknown."""
    peer: str = ""
    """The service a client span called (OpenTelemetry's `peer.service`), or empty when not recorded."""


@dataclass
class LogRow:
    """One log line."""

    ts: float
    service: str
    level: str
    message: str


@dataclass
class EdgeSeries:
    """A metric of one call edge as one side of the call measured it (a mesh's per-edge latency, say)."""

    caller: str
    callee: str
    side: Literal["client", "server"]
    series: MetricSeries
    """Its service is the callee."""


@dataclass
class RcaInput:
    """Everything one diagnosis reads."""

    anomaly_start: float
    services: list[str]
    series: list[MetricSeries] = field(default_factory=list)
    edges: set[tuple[str, str]] = field(default_factory=set)
    """(caller, callee) pairs."""
    spans: list[SpanRow] = field(default_factory=list)
    logs: list[LogRow] = field(default_factory=list)
    symptom: tuple[str, str | None] | None = None
    """(service, metric) where the trouble was seen, when known."""
    edge_series: list[EdgeSeries] = field(default_factory=list)
    normal_spans: list[SpanRow] = field(default_factory=list)
    """Spans of a known-normal period (like `MetricSeries.normal` for metrics), when there is one."""
    normal_logs: list[LogRow] = field(default_factory=list)
    """Log lines of a known-normal period, when there is one."""
    down: set[str] = field(default_factory=set)
    """Services a live system reports as not serving (a failing health check, a process that is not running).
    They count as vanished, as a service whose telemetry stopped does: a crash seconds old has not yet emptied
    the window of its last points."""


# ----------------------------------------------------------------------------- metric kinds

_KIND_PATTERNS: tuple[tuple[Kind, Direction, re.Pattern[str]], ...] = (
    ("errors", "down", re.compile(r"success|availab|\bok[_ ]?ratio|uptime", re.I)),
    ("errors", "up", re.compile(r"err|fail|fault|5xx|exception|reject|timeout|drop", re.I)),
    (
        "latency",
        "up",
        re.compile(
            r"laten|duration|response.?time|\brt\b|_rt|elapsed|delay|_ms\b|_seconds\b|\bp\d\d\b", re.I
        ),
    ),
    ("cpu", "up", re.compile(r"cpu|processor|load_?avg|throttl", re.I)),
    ("memory", "up", re.compile(r"mem|rss|heap|\bgc\b|swap|oom", re.I)),
    (
        "saturation",
        "up",
        re.compile(r"disk|fs_|inode|io_?wait|queue|pool|thread|conn|fd|file_?desc|saturat|node", re.I),
    ),
    (
        "traffic",
        "both",
        re.compile(
            r"req|qps|rps|tps|throughput|workload|ops|count|calls|sum|rate|bytes|packets|network|net_|syscall",
            re.I,
        ),
    ),
)


_CALLER_VIEW = re.compile(r"client|outbound|egress|upstream", re.I)
"""Names of metrics measured on the calling side (a client's latency is its callee's symptom)."""


def infer_kind(metric: str) -> tuple[Kind, Direction]:
    """A metric's kind and worse direction guessed from its name; ("other", "both") when nothing matches."""
    for kind, direction, pattern in _KIND_PATTERNS:
        if pattern.search(metric):
            return kind, direction
    return "other", "both"


# ----------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Params:
    """The ranker's few global parameters, chosen by leave-one-dataset-out (docs/rca.md), never per dataset."""

    rel_floor: float = 0.05
    """A series' scale is at least this share of its reference median (a flat series still has a unit)."""
    z_cap: float = 1e4
    w_metric: float = 1.0
    w_trace: float = 0.5
    w_log: float = 2.0
    w_event: float = 1.0
    """Weight of the event-sequence evidence (logs tied to spans by their trace and span ids)."""
    common_scale: bool = True
    """Put every modality on one scale (divided by the largest score of any modality) instead of each by its own
    best service, so a modality whose best evidence is weak stays weak. All scores are log1p-sized deviations.
    With metrics alone the two are the same."""
    kind_weight: tuple[tuple[str, float], ...] = (
        ("cpu", 1.0),
        ("memory", 1.0),
        ("latency", 1.0),
        ("errors", 1.0),
        ("traffic", 0.5),
        ("saturation", 0.5),
        ("other", 0.5),
    )
    propagation: float = 0.5
    """Weight of the call-graph walk against each service's own score (0 = no propagation)."""
    restart: float = 0.6
    """Restart probability of the personalised PageRank."""
    infer_symptom: bool = False
    """With no symptom in the case, take the entry service's most deviating user-facing metric as the symptom."""
    w_symptom_kind: float = 1.0
    """Extra weight of a service's deviation in the kind of metric the symptom was seen in. A design choice
    (follow the trail of the trouble that was seen), not tuned: only PetShop's cases name a symptom, so the
    other datasets cannot choose it."""
    w_vanished: float = 1.0
    """Score of a service whose telemetry stopped after the start (or that a live system reports down), as a share
    of the full scale: every modality at its strongest (w_metric + w_trace + w_log + w_event). A service that
    stopped answering is the strongest evidence there is, and its callers' errors, logs and latency are what it
    left behind: scored as one modality (1 until this round), it lost to callers that logged its absence in
    every modality. A design choice: none of the 104 dataset cases has a vanished service."""
    w_silenced: float = 1.0
    """Score shared by the callers of a live service whose request-facing series stopped (no more calls came)."""
    flat_exact: bool = True
    """Judge a series with a flat reference by the value-relative floor alone (no share of the median)."""
    caller_view: float = 0.2
    """Multiplier of a deviation in a metric measured on the calling side (named client, outbound, ...)."""
    flat_weight: float = 1.0
    """Multiplier of a deviation judged against a reference with no interquartile spread."""
    w_shift: float = 1.0
    """Weight of a service's log-template mix shift against its error rise."""
    value_floor: float = 0.01
    """The scale is at least this share of the value judged, which caps any one point's z at 1 / value_floor."""
    off_path: float = 0.2
    """Score multiplier of a service that the symptom's service does not reach in the call graph."""
    min_ref: int = 5
    """A reference needs this many points to judge a series on its own."""
    reference: str = "strict"
    """How the usable references (the points before the start, the normal period) judge a series. "strict": it
    deviates as far as either says (the points before the start may hold an earlier incident's tail); "both": only
    as far as every one agrees; "first": the points before the start when there are enough of them, else the
    normal period; "normal": the other way round."""
    onset: bool = True
    """Discount what a series already showed before the start (a condition that was already there is not the
    incident's). Judged against the normal period with enough points before the start: their lower quartile's
    deviation is subtracted (it ignores an earlier incident's tail). With too few points before the start to judge
    by: only the growth past the worst clean pre-start point counts (a point whose aggregation step may reach
    past the start is not clean)."""
    min_deviation: float = 1.0
    """Below this (log1p of robust z) a series counts as not deviating."""
    signal_reference: str = "strict"
    """References of the trace, log and event evidence: "before" (the spans and lines before the start only),
    "normal" (the known-normal period alone when the case has one, else the before ones), "strict" (both; what
    either shows)."""
    signal_onset: bool = False
    """Judged against the normal spans and lines, discount what those before the start already showed."""
    callee_traffic: float = 0.0
    """How far a callee's traffic deviation pulls the call-graph walk towards it (its own score is untouched).
    Traffic travels from caller to callee (retries, fan-out), the other way from latency and errors, so a callee
    whose only news is more requests explains nothing of its caller's trouble: 0."""
    failure_share: bool = True
    """Judge a success share (availability, success rate: errors-kind, worse down, within 0–100 or 0–1) as its
    complement, the failure share (`_as_failure_share`)."""
    common_mode: bool = True
    """Subtract from each modality what the median candidate shows (`_common_mode`) before combining: in a system
    where most services move at once (a load change across 45 services), what they share is no one's evidence."""
    common_skip: int = 3
    """The most deviating candidates left out of the common mode (a cause and its nearest callers)."""
    co_move: float = 0.5
    """Share of a deviation that counts only as far as the series moved with the symptom over the case's window
    (its positive correlation with the symptom series, before and after the start). A cause's trouble rises and
    falls with what was seen; a condition that drifts on its own does not. 0.5: half of every deviation counts as
    it is, half by that correlation (no prior for either)."""

    w_self_explained: float = 0.5
    """Weight of a service's own trouble that its own resources explain (`self_explained`), added to its metric
    score: a saturated service slow by itself is a cause, a caller slow without CPU waits on someone else. A
    design choice (half of the weaker deviation: corroboration, not a new modality); the leave-one-dataset-out
    search chooses between 0 and 0.5."""

    def kind_w(self, kind: str) -> float:
        """The weight of a metric kind."""
        return dict(self.kind_weight).get(kind, 0.5)


DEFAULT_PARAMS = Params()

# ----------------------------------------------------------------------------- output


@dataclass
class ServiceScore:
    """What the ranker found about one service."""

    service: str
    score: float = 0.0
    metric: float = 0.0
    trace: float = 0.0
    log: float = 0.0
    by_kind: dict[str, float] = field(default_factory=dict)
    """The strongest metric deviation of each kind on this service."""
    top_series: list[tuple[str, float]] = field(default_factory=list)
    """(metric, deviation) of its most deviating series, worst first."""
    vanished: bool = False
    """Its telemetry stopped after the start."""
    silenced: bool = False
    """It is alive, but its request-facing series (latency, traffic, errors) stopped: nobody calls it any more."""
    with_symptom: dict[str, float] = field(default_factory=dict)
    """Per kind: the strongest deviation of a series that moved with the symptom, times that correlation."""
    trace_errors: float = 0.0
    log_errors: float = 0.0
    event: float = 0.0
    """How far the sequences of its events (log templates and calls, per span) changed after the start."""


@dataclass
class RcaResult:
    """A ranking over every candidate, the fault type of the top one, and the features confidence reads."""

    ranking: list[ServiceScore]
    fault_type: RcaFault | None
    features: dict[str, float]

    @property
    def services(self) -> list[str]:
        """Candidates, most likely cause first."""
        return [s.service for s in self.ranking]

    @property
    def answered(self) -> bool:
        """Whether anything deviated at all."""
        return bool(self.ranking) and self.ranking[0].score > 0


# ----------------------------------------------------------------------------- metrics


def robust_scale(ref: np.ndarray, rel_floor: float) -> tuple[float, float]:
    """Median and a robust scale of reference values: max(IQR/1.349, 1.4826 MAD, rel_floor * |median|, tiny)."""
    med = float(np.median(ref))
    q1, q3 = np.percentile(ref, [25, 75])
    mad = float(np.median(np.abs(ref - med)))
    scale = max(float(q3 - q1) / 1.349, 1.4826 * mad, rel_floor * abs(med), 1e-9)
    return med, scale


def _worse(values: np.ndarray, med: float, scale: float, direction: Direction, p: Params) -> np.ndarray:
    """Robust z of each value against (med, scale), counted only in the direction worse for the metric."""
    z = (values - med) / np.maximum(scale, p.value_floor * np.maximum(np.abs(values), abs(med)))
    worse: np.ndarray  # numpy types its ufuncs' results as Any
    if direction == "up":
        worse = np.maximum(z, 0.0)
    elif direction == "down":
        worse = np.maximum(-z, 0.0)
    else:
        worse = np.abs(z)
    return worse


def _as_failure_share(
    s: MetricSeries, before: np.ndarray, after: np.ndarray, normal: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, MetricSeries]:
    """A success share (an errors-kind series that is worse down and lies within 0–100, or 0–1) as its complement.

    Availability 100 % → 97.8 % is a small move of the value but a failure share going from none to 2.2 %: judged
    as the failure share, a reference with no failures makes any failure news, as for an error counter at 0.
    Other series are returned as they are."""
    every = np.concatenate([before, after, normal])
    if s.kind != "errors" or s.direction != "down" or not len(every) or every.min() < 0 or every.max() > 100:
        return before, after, normal, s
    cap = 100.0 if every.max() > 1 else 1.0
    return (
        cap - before,
        cap - after,
        cap - normal,
        replace(s, values=cap - s.values, normal=None, direction="up"),
    )


def series_deviation(s: MetricSeries, start: float, p: Params) -> tuple[float, bool]:
    """How far a series went the worse way after `start` (log1p of robust z) and whether it stopped reporting."""
    finite = np.isfinite(s.values)
    before = s.values[(s.ts < start) & finite]
    after = s.values[(s.ts >= start) & finite]
    if len(after) == 0:
        # Vanished: it reported steadily before the start and not once since (a sparse series proves nothing).
        return 0.0, len(before) >= p.min_ref and s.ts.max() < start
    normal = s.normal[np.isfinite(s.normal)] if s.normal is not None else np.array([])
    if p.failure_share:
        before, after, normal, s = _as_failure_share(s, before, after, normal)
    # Each reference that has enough points judges the series (`reference` says how their verdicts combine). The
    # points just before the start see the system as it was that day, but may hold an earlier incident; a
    # known-normal period covers a start with too little history, but not a drift since (`onset` handles that).
    refs = [r for r in (before, normal) if len(r) >= p.min_ref]
    if not refs:
        refs = [r for r in (before, normal) if len(r) >= 2]
    if not refs:
        return 0.0, False
    if p.reference == "normal":
        refs = refs[::-1]
    # Too few pre-start points to be a reference of their own, but they still show what was already there.
    # Only the points whose whole step lies before the start count: a point stamped at the start of its step may
    # already hold the incident.
    prior = np.array([])
    if p.onset and 0 < len(before) < p.min_ref:
        ts = s.ts[finite]
        step = float(np.median(np.diff(ts))) if len(ts) > 1 else 0.0
        prior = s.values[(s.ts + step <= start) & finite]
    devs = []
    for ref in refs[: 2 if p.reference in ("both", "strict") else 1]:
        flat = bool(np.percentile(ref, 75) == np.percentile(ref, 25))
        # A flat reference (an availability pinned at 100, a counter at 0) has no spread to scale by: there any
        # change is news, so only the floor relative to the value (or the median, whichever is larger) applies.
        # That floor also bounds z at 1 / value_floor, so a series that leaves or falls to zero cannot
        # dominate by dividing by a near-zero spread.
        med, scale = robust_scale(ref, 0.0 if flat and p.flat_exact else p.rel_floor)
        scale = max(scale, s.floor)
        z = _worse(after, med, scale, s.direction, p)
        worst = float(np.sort(z)[::-1][:2].mean())
        if len(prior):
            worst = max(worst - float(_worse(prior, med, scale, s.direction, p).max()), 0.0)
        dev = float(np.log1p(min(worst, p.z_cap)))
        if p.onset and ref is not before and len(before) >= p.min_ref:
            # Only what changed at the start is news: a level the series already held before it (a drift since
            # the normal period, a leak under way) is discounted. Its lower quartile ignores an earlier incident's tail.
            held = float(np.percentile(_worse(before, med, scale, s.direction, p), 25))
            dev = max(dev - float(np.log1p(min(held, p.z_cap))), 0.0)
        if flat:
            # A reference with no spread (mostly zeros, a constant) says little about what is normal for it.
            dev *= p.flat_weight
        devs.append(dev)
    return (max(devs) if p.reference == "strict" else min(devs)), False


def metric_scores(inp: RcaInput, p: Params, devs: dict[int, float] | None = None) -> dict[str, ServiceScore]:
    """Per service: the strongest weighted deviation over its series, with the per-kind maxima kept."""
    out = {s: ServiceScore(s) for s in inp.services}
    stopped: set[str] = set()
    stopped_requests: set[str] = set()
    for i, s in enumerate(inp.series):
        dev, vanished = series_deviation(s, inp.anomaly_start, p)
        sc = out.setdefault(s.service, ServiceScore(s.service))
        if vanished:
            stopped.add(s.service)
            if s.kind in ("latency", "traffic", "errors"):
                stopped_requests.add(s.service)
        if _CALLER_VIEW.search(s.metric):
            dev *= p.caller_view
        if dev < p.min_deviation:
            continue
        if devs is not None:
            devs[i] = dev
        sc.by_kind[s.kind] = max(sc.by_kind.get(s.kind, 0.0), dev)
        sc.top_series.append((s.metric, round(dev, 3)))
    # A crash silences the whole service. Series that stop while others of the same service still report (a
    # latency with no more requests to time) say its callers stopped calling, which is their trouble.
    still = {s.service for s in inp.series if np.any((s.ts >= inp.anomaly_start) & np.isfinite(s.values))}
    for service in (stopped - still) | (set(inp.down) & set(out)):
        out[service].vanished = True
    for service in stopped_requests & still:
        out[service].silenced = True
    for callee, kinds in edge_gaps(inp, p).items():
        sc = out.setdefault(callee, ServiceScore(callee))
        for kind, gap in kinds.items():
            if gap >= p.min_deviation:
                sc.by_kind[kind] = max(sc.by_kind.get(kind, 0.0), gap)
                sc.top_series.append((f"{kind} its callers see beyond its own", round(gap, 3)))
    for sc in out.values():
        sc.top_series.sort(key=lambda x: -x[1])
        del sc.top_series[5:]
        sc.metric = max((p.kind_w(k) * v for k, v in sc.by_kind.items()), default=0.0)
    return out


def edge_gaps(inp: RcaInput, p: Params) -> dict[str, dict[str, float]]:
    """Per callee and metric kind: how much more its callers' view of its calls deviated than its own view.

    A call measured at both ends splits into the callee's own time (server side) and what lies between the two
    (client side less server side): the network, the callee's queue, its sidecar. A delay injected on a pod's
    network shows only in the second. A callee's score is the mean over its callers of the client side's
    deviation less the server side's (the client side alone when the server side is not measured); every
    caller sees a fault of the callee, while a fault of one caller shows on that caller's edges only.
    """
    if not inp.edge_series:
        return {}
    dev: dict[tuple[str, str, str, str], float] = {}
    kind_of: dict[str, str] = {}
    for e in inp.edge_series:
        dev[(e.caller, e.callee, e.series.metric, e.side)], _ = series_deviation(
            e.series, inp.anomaly_start, p
        )
        kind_of[e.series.metric] = e.series.kind
    gaps: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (caller, callee, metric, side), d in dev.items():
        if side == "client":
            own = dev.get((caller, callee, metric, "server"), 0.0)
            gaps[callee][kind_of[metric]].append(max(d - own, 0.0))
    return {callee: {k: float(np.mean(v)) for k, v in kinds.items()} for callee, kinds in gaps.items()}


# ----------------------------------------------------------------------------- traces


def _self_times(
    spans: Sequence[SpanRow],
) -> tuple[dict[tuple[str, str], list[tuple[float, float]]], set[tuple[str, str]], set[tuple[str, str]]]:
    """(service, operation) -> [(start, exclusive time)], the call edges seen, and the spans with an erroring child."""
    by_id = {(sp.trace_id, sp.span_id): sp for sp in spans}
    child_time: dict[tuple[str, str], float] = defaultdict(float)
    erroring_child: set[tuple[str, str]] = set()
    edges: set[tuple[str, str]] = set()
    for sp in spans:
        if not sp.parent_id:
            continue
        key = (sp.trace_id, sp.parent_id)
        parent = by_id.get(key)
        child_time[key] += sp.duration
        if parent is not None and parent.service != sp.service:
            edges.add((parent.service, sp.service))
        if sp.status == "error":
            erroring_child.add(key)
    edges |= {(sp.service, sp.peer) for sp in spans if sp.peer and sp.peer != sp.service}
    self_time: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for sp in spans:
        own = max(sp.duration - child_time.get((sp.trace_id, sp.span_id), 0.0), 0.0)
        self_time[(sp.service, sp.operation)].append((sp.start, own))
    return self_time, edges, erroring_child


def _origin_errors(
    spans: Sequence[SpanRow], erroring_child: set[tuple[str, str]], start: float | None
) -> tuple[Counter[str], Counter[str], Counter[str], Counter[str]]:
    """Per service: spans and errors it originates, before and after `start` (all "before" when start is None).

    A failed client call that left no span of its callee (connection refused by a service that is down or
    restarting) is the callee's error when the span names it (`peer`): the caller only reported it.
    """
    parents = {(sp.trace_id, sp.parent_id) for sp in spans if sp.parent_id}
    count_before: Counter[str] = Counter()
    count_after: Counter[str] = Counter()
    errors_before: Counter[str] = Counter()
    errors_after: Counter[str] = Counter()
    for sp in spans:
        after = start is not None and sp.start >= start
        (count_after if after else count_before)[sp.service] += 1
        if sp.status == "error" and (sp.trace_id, sp.span_id) not in erroring_child:
            unreached = sp.peer and sp.peer != sp.service and (sp.trace_id, sp.span_id) not in parents
            (errors_after if after else errors_before)[sp.peer if unreached else sp.service] += 1
    return count_before, count_after, errors_before, errors_after


def _uses_normal(p: Params, has_normal: bool) -> tuple[bool, bool]:
    """(judge against the spans/lines before the start, judge against the normal ones) for the trace, log and
    event evidence; with no normal period, the ones before the start judge whatever `signal_reference` says."""
    use_normal = has_normal and p.signal_reference in ("strict", "normal")
    return p.signal_reference != "normal" or not use_normal, use_normal


def trace_scores(inp: RcaInput, p: Params) -> tuple[dict[str, float], dict[str, float], set[tuple[str, str]]]:
    """Per service: excess share of slow exclusive time after the start, errors it originates; call edges seen.

    A span is slow when its exclusive time exceeds median + 3 robust scales of the same operation's reference.
    The references are the spans before the start and, when the case has them, the spans of a known-normal
    period; with `signal_reference` "strict" a service scores what either shows (the larger). Against the normal
    period, with `signal_onset`, what the spans before the start already showed against it is discounted.
    """
    spans = inp.spans
    if not spans:
        return {}, {}, set()
    self_time, edges, erroring_child = _self_times(spans)
    count_before, count_after, errors_before, errors_after = _origin_errors(
        spans, erroring_child, inp.anomaly_start
    )
    start = inp.anomaly_start
    use_before, use_normal = _uses_normal(p, bool(inp.normal_spans))
    normal_times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    normal_count: Counter[str] = Counter()
    normal_errors: Counter[str] = Counter()
    if use_normal and inp.normal_spans:
        normal_times, _, normal_erroring = _self_times(inp.normal_spans)
        normal_count, _, normal_errors, _ = _origin_errors(inp.normal_spans, normal_erroring, None)
    latency: dict[str, float] = {}
    for ref_name in ("before", "normal"):
        if (ref_name == "before" and not use_before) or (ref_name == "normal" and not normal_times):
            continue
        slow_after: Counter[str] = Counter()
        judged_after: Counter[str] = Counter()
        slow_ref: Counter[str] = Counter()
        judged_ref: Counter[str] = Counter()
        slow_before: Counter[str] = Counter()
        judged_before: Counter[str] = Counter()
        for (service, op), rows in self_time.items():
            ref_rows = (
                [d for t, d in rows if t < start]
                if ref_name == "before"
                else [d for _, d in normal_times.get((service, op), [])]
            )
            if len(ref_rows) < 5:
                continue
            ref = np.array(ref_rows)
            med, scale = robust_scale(ref, p.rel_floor)
            limit = med + 3 * scale
            judged_ref[service] += len(ref)
            slow_ref[service] += int(np.sum(ref > limit))
            for t, d in rows:
                if t >= start:
                    judged_after[service] += 1
                    slow_after[service] += d > limit
                elif ref_name == "normal":
                    judged_before[service] += 1
                    slow_before[service] += d > limit
        for service in judged_after:
            share_ref = slow_ref[service] / max(judged_ref[service], 1)
            if ref_name == "normal" and p.signal_onset and judged_before[service]:
                share_ref = max(share_ref, slow_before[service] / judged_before[service])
            excess = slow_after[service] / judged_after[service] - share_ref
            if excess > 0:
                # Excess share of slow spans, weighted by how many there were (a few slow spans are noise).
                latency[service] = max(latency.get(service, 0.0), excess * math.log1p(slow_after[service]))
    errors: dict[str, float] = {}
    for service, n in errors_after.items():
        rate_after = n / max(count_after[service], 1)
        rates = []
        if use_before:
            rates.append(errors_before[service] / max(count_before[service], 1))
        if normal_count[service]:
            rate_n = normal_errors[service] / normal_count[service]
            if p.signal_onset and count_before[service]:
                rate_n = max(rate_n, errors_before[service] / count_before[service])
            rates.append(rate_n)
        # Strict: the deviation is what either reference shows, so the lower reference rate judges.
        rate_ref = min(rates, default=0.0)
        if rate_after > rate_ref:
            errors[service] = (rate_after - rate_ref) * math.log1p(n)
    return latency, errors, edges


# ----------------------------------------------------------------------------- logs

_VOLATILE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|0x[0-9a-fA-F]+|\b[0-9a-fA-F]*\d[0-9a-fA-F]*\b|\d+(?:\.\d+)?"
)
_ERROR_WORDS = re.compile(
    r"\b(error|exception|fail(ed|ure)?|fatal|panic|refused|timed? ?out|traceback)\b", re.I
)
_ERROR_LEVELS = {"error", "err", "fatal", "critical", "crit", "severe", "panic", "alert", "emerg"}


def log_template(message: str) -> str:
    """A message with ids and numbers masked, cut to its first twelve words."""
    return " ".join(_VOLATILE.sub("*", message).split()[:12])


def is_error(row: LogRow) -> bool:
    """An error line: by its level, or by its words when the level is unknown."""
    level = row.level.lower()
    if level:
        return level in _ERROR_LEVELS
    return bool(_ERROR_WORDS.search(row.message))


def period_seconds(ts: Sequence[float]) -> float:
    """How long a reference period lasted, by the spread of its middle 90 % of times (the stray early or late
    lines of a one-minute file do not stretch it), at least one second."""
    if len(ts) < 2:
        return 1.0
    lo, hi = np.percentile(np.asarray(ts, dtype=float), [5, 95])
    return max(float(hi - lo) / 0.9, 1.0)


def _mix_shift(a: Counter[Any], b: Counter[Any]) -> float:
    """Total-variation distance between two non-empty mixes less what sampling alone gives (1/sqrt(count));
    negative when the two differ less than sampling would make them."""
    na, nb = sum(a.values()), sum(b.values())
    tv = 0.5 * sum(abs(a[t] / na - b[t] / nb) for t in a.keys() | b.keys())
    return tv - 1.0 / math.sqrt(min(na, nb))


def _template_shift(a: Counter[str], b: Counter[str]) -> float:
    """How far two template mixes differ beyond sampling (0 when either is empty)."""
    if not sum(a.values()) or not sum(b.values()):
        return 0.0
    return max(_mix_shift(a, b), 0.0)


def log_scores(
    inp: RcaInput,
    p: Params = DEFAULT_PARAMS,
    templates: Sequence[str] | None = None,
    normal_templates: Sequence[str] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Per service: how far its mix of log templates shifted after the start, plus the rise of its error lines.

    The shift is the total-variation distance between the service's template frequencies in a reference and
    after the start, less what sampling alone would give (about 1/sqrt(lines)), weighted by log1p(lines). It
    counts templates that appear and templates that stop: a handler that now throws often stops writing the
    lines after the throw. The error rise is error lines per minute after the start less in the reference. The
    references are the lines before the start and, when the case has them, the lines of a known-normal period
    (its rate per minute of its own length); with `signal_reference` "strict" a service scores what either
    shows (the larger). Against the normal period, with `signal_onset`, what the lines before the start already
    showed against it is discounted. Returns (score, error rise). `templates` (and `normal_templates`), when
    given, hold each line's template (as `log_template` makes them), in the order of `inp.logs` (`inp.normal_logs`).
    """
    if not inp.logs:
        return {}, {}
    if templates is None:
        templates = [log_template(r.message) for r in inp.logs]
    start = inp.anomaly_start
    before_t = [r.ts for r in inp.logs if r.ts < start]
    after_t = [r.ts for r in inp.logs if r.ts >= start]
    span_before = max((start - min(before_t)) if before_t else 0.0, 1.0)
    span_after = max((max(after_t) - start) if after_t else 0.0, 1.0)
    before: dict[str, Counter[str]] = defaultdict(Counter)
    after: dict[str, Counter[str]] = defaultdict(Counter)
    err_before: Counter[str] = Counter()
    err_after: Counter[str] = Counter()
    for r, template in zip(inp.logs, templates, strict=True):
        late = r.ts >= start
        (after if late else before)[r.service][template] += 1
        (err_after if late else err_before)[r.service] += is_error(r)
    use_before, use_normal = _uses_normal(p, bool(inp.normal_logs))
    normal: dict[str, Counter[str]] = defaultdict(Counter)
    err_normal: Counter[str] = Counter()
    span_normal = 1.0
    if use_normal and inp.normal_logs:
        if normal_templates is None:
            normal_templates = [log_template(r.message) for r in inp.normal_logs]
        for r, template in zip(inp.normal_logs, normal_templates, strict=True):
            normal[r.service][template] += 1
            err_normal[r.service] += is_error(r)
        span_normal = period_seconds([r.ts for r in inp.normal_logs])
    score: dict[str, float] = {}
    errors: dict[str, float] = {}
    for service in set(after) | set(before):
        a = after.get(service, Counter())
        rate_after = err_after[service] / span_after
        rate_before = err_before[service] / span_before
        judged: list[
            tuple[float, float, int]
        ] = []  # (error rise, shift, lines compared) against each reference
        if use_before:
            b = before.get(service, Counter())
            judged.append(
                (math.log1p(max(rate_after - rate_before, 0.0) * 60), _template_shift(a, b), sum(b.values()))
            )
        if normal:
            n = normal.get(service, Counter())
            rate_ref = err_normal[service] / span_normal
            shift = _template_shift(a, n)
            if p.signal_onset and service in before:
                rate_ref = max(rate_ref, rate_before)
                shift = max(shift - _template_shift(before[service], n), 0.0)
            judged.append((math.log1p(max(rate_after - rate_ref, 0.0) * 60), shift, sum(n.values())))
        best_err = best = 0.0
        for err, shift, lines in judged:
            best = max(best, err + p.w_shift * shift * math.log1p(sum(a.values()) + lines))
            best_err = max(best_err, err)
        if best_err > 0:
            errors[service] = best_err
        if best > 0:
            score[service] = best
    return score, errors


# ----------------------------------------------------------------------------- events

_HEX_ID = re.compile(r"\b[0-9a-fA-F]{16,32}\b")
"""A token that may be a trace or span id (W3C, Zipkin, Jaeger ids are 16 or 32 hex digits)."""

Event = tuple[str, str, str]
"""(service, "call" | "log" | "end", operation or template)."""


def _follows(
    spans: Sequence[SpanRow], logs: Sequence[LogRow], templates: Sequence[str], start: float | None
) -> tuple[dict[Event, Counter[Event]], dict[Event, Counter[Event]], int]:
    """What follows each event in the spans' sequences that started before / after `start` (all before when it is
    None), and how many log lines were tied to a span."""
    follows: tuple[dict[Event, Counter[Event]], dict[Event, Counter[Event]]] = (
        defaultdict(Counter),
        defaultdict(Counter),
    )
    by_id = {(sp.trace_id, sp.span_id): sp for sp in spans}
    trace_ids = {sp.trace_id for sp in spans}
    items: dict[tuple[str, str], list[tuple[float, Event]]] = defaultdict(list)
    for sp in spans:
        if sp.parent_id and (sp.trace_id, sp.parent_id) in by_id:
            items[(sp.trace_id, sp.parent_id)].append((sp.start, (sp.service, "call", sp.operation)))
    linked = 0
    for r, template in zip(logs, templates, strict=True):
        tokens = _HEX_ID.findall(r.message)
        if len(tokens) < 2:
            continue
        trace = next((t for t in tokens if t in trace_ids), None)
        span = next((t for t in tokens if (trace, t) in by_id), None) if trace else None
        if span is not None:
            items[(trace, span)].append((r.ts, (r.service, "log", template)))  # type: ignore[index]
            linked += 1
    if not linked:
        return follows[0], follows[1], 0
    for key, events in items.items():
        sp = by_id[key]
        seq = (
            [(sp.service, "call", sp.operation)]
            + [e for _, e in sorted(events, key=lambda x: x[0])]
            + [(sp.service, "end", sp.operation)]
        )
        table = follows[1 if start is not None and sp.start >= start else 0]
        for x, y in itertools.pairwise(seq):
            table[x][y] += 1
    return follows[0], follows[1], linked


def _follow_shift(a: Counter[Event], b: Counter[Event], min_ref: int) -> float | None:
    """Total-variation distance of two follower counts less sampling's 1/sqrt(count), times log1p(count); None
    when either has fewer than `min_ref`."""
    fewer = min(sum(a.values()), sum(b.values()))
    if fewer < min_ref:
        return None
    return _mix_shift(a, b) * math.log1p(fewer)


def event_scores(
    inp: RcaInput,
    p: Params = DEFAULT_PARAMS,
    templates: Sequence[str] | None = None,
    normal_templates: Sequence[str] | None = None,
) -> dict[str, float]:
    """Per service: how far what follows its events changed after the start (Nezha's event patterns, simplified).

    A log line belongs to a span when its text names a trace id of the spans and a span id of that trace. Each
    span then gives one sequence of events in time order: its call (service and operation), its log templates
    and the calls it makes, then its end. Consecutive events are pairs (A, B). For every event A seen at least
    `min_ref` times both in a reference and in spans after the start, the total-variation distance between the
    events that follow A in the two, less what sampling alone gives (1/sqrt(count)), weighted by log1p(count),
    scores A's service; a service keeps its largest. The references are the spans before the start and, when
    the case has them, the spans and lines of a known-normal period; with `signal_reference` "strict" an event
    scores what either shows (the larger). Against the normal period, with `signal_onset`, the distance the
    spans before the start already had from it is discounted. A handler that now throws stops writing the lines
    after the throw (its own events change); a callee that now answers wrongly changes what its caller does
    after the call, and that pair starts at the callee's event.
    """
    if not inp.spans or not inp.logs:
        return {}
    if templates is None:
        templates = [log_template(r.message) for r in inp.logs]
    before, after, linked = _follows(inp.spans, inp.logs, templates, inp.anomaly_start)
    if not linked:
        return {}
    use_before, use_normal = _uses_normal(p, bool(inp.normal_spans and inp.normal_logs))
    normal: dict[Event, Counter[Event]] = {}
    if use_normal and inp.normal_spans and inp.normal_logs:
        if normal_templates is None:
            normal_templates = [log_template(r.message) for r in inp.normal_logs]
        normal, _, _ = _follows(inp.normal_spans, inp.normal_logs, normal_templates, None)
    out: dict[str, float] = {}
    for event, a in after.items():
        scores = []
        if use_before and event in before:
            scores.append(_follow_shift(a, before[event], p.min_ref))
        if event in normal:
            score = _follow_shift(a, normal[event], p.min_ref)
            if score is not None and p.signal_onset and event in before:
                score -= max(_follow_shift(before[event], normal[event], p.min_ref) or 0.0, 0.0)
            scores.append(score)
        best = max((x for x in scores if x is not None), default=0.0)
        if best > 0:
            out[event[0]] = max(out.get(event[0], 0.0), best)
    return out


# ----------------------------------------------------------------------------- propagation


def personalised_pagerank(
    services: Sequence[str],
    edges: Iterable[tuple[str, str]],
    own: dict[str, float],
    restart: float,
    iterations: int = 50,
    pull: dict[str, float] | None = None,
) -> dict[str, float]:
    """Walk from deviating services towards the deviating callees that may explain them.

    From a service the walker moves to a callee with probability proportional to the callee's own score (or to
    its `pull`, the part of it that can explain a caller, when given), stays in proportion to its own score, and
    restarts at a service in proportion to that service's score.
    """
    index = {s: i for i, s in enumerate(services)}
    n = len(services)
    pref = np.array([own.get(s, 0.0) for s in services], dtype=float)
    if n == 0 or pref.sum() <= 0:
        return {s: 0.0 for s in services}
    pref /= pref.sum()
    callees: dict[int, list[int]] = defaultdict(list)
    for a, b in edges:
        if a in index and b in index and a != b:
            callees[index[a]].append(index[b])
    transition = np.zeros((n, n))
    for i in range(n):
        weights = {i: own.get(services[i], 0.0)}
        for j in callees[i]:
            weights[j] = weights.get(j, 0.0) + (pull if pull is not None else own).get(services[j], 0.0)
        total = sum(weights.values())
        if total <= 0:
            transition[i, i] = 1.0
            continue
        for j, w in weights.items():
            transition[i, j] += w / total
    rank = pref.copy()
    for _ in range(iterations):
        rank = restart * pref + (1 - restart) * rank @ transition
    return {s: float(rank[index[s]]) for s in services}


# ----------------------------------------------------------------------------- ranking


def _normalised(values: dict[str, float]) -> dict[str, float]:
    top = max(values.values(), default=0.0)
    return {k: v / top for k, v in values.items()} if top > 0 else {k: 0.0 for k in values}


@dataclass
class Evidence:
    """What the ranker measured on one case, before its weights are applied (kept apart so tuning is cheap)."""

    services: list[str]
    scores: dict[str, ServiceScore]
    edges: set[tuple[str, str]]
    symptom: str | None = None
    symptom_kind: str | None = None
    """The kind of the metric the trouble was seen in, when the case names one."""


def downstream(service: str, edges: Iterable[tuple[str, str]]) -> set[str]:
    """`service` and everything it calls, directly or not."""
    callees: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        callees[a].add(b)
    seen, todo = {service}, [service]
    while todo:
        for nxt in callees[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


@dataclass
class Signals:
    """The trace, log and event evidence of one case (per service), which no metric parameter changes."""

    trace_latency: dict[str, float]
    trace_errors: dict[str, float]
    trace_edges: set[tuple[str, str]]
    logs: dict[str, float]
    log_errors: dict[str, float]
    events: dict[str, float]


SIGNAL_KEYS = ("rel_floor", "w_shift", "min_ref", "w_event", "signal_reference", "signal_onset")
"""The parameters `signals` reads: evidence cached under them can be reused (evals/tune_rca.py)."""


def signals(inp: RcaInput, p: Params = DEFAULT_PARAMS) -> Signals:
    """Score every candidate on traces, logs and the events that tie them together."""
    trace_latency, trace_errors, trace_edges = trace_scores(inp, p)
    templates = [log_template(r.message) for r in inp.logs]
    normal_templates = [log_template(r.message) for r in inp.normal_logs] if inp.logs else []
    logs, log_errors = log_scores(inp, p, templates, normal_templates)
    events = event_scores(inp, p, templates, normal_templates) if p.w_event > 0 else {}
    return Signals(trace_latency, trace_errors, trace_edges, logs, log_errors, events)


def gather(inp: RcaInput, p: Params = DEFAULT_PARAMS, sig: Signals | None = None) -> Evidence:
    """Score every candidate on metrics, traces and logs (`sig`: the case's `signals`, when already computed)."""
    devs: dict[int, float] = {}
    scores = metric_scores(inp, p, devs)
    sig = sig or signals(inp, p)
    trace_edges = sig.trace_edges
    services = sorted(set(inp.services) | set(scores))
    for name in services:
        sc = scores.setdefault(name, ServiceScore(name))
        sc.trace = sig.trace_latency.get(name, 0.0) + sig.trace_errors.get(name, 0.0)
        sc.trace_errors = sig.trace_errors.get(name, 0.0)
        sc.log = sig.logs.get(name, 0.0)
        sc.log_errors = sig.log_errors.get(name, 0.0)
        sc.event = sig.events.get(name, 0.0)
    symptom = inp.symptom[0] if inp.symptom else None
    symptom_kind = None
    if inp.symptom and inp.symptom[1]:
        known = [x.kind for x in inp.series if x.service == inp.symptom[0] and x.metric == inp.symptom[1]]
        symptom_kind = known[0] if known else infer_kind(inp.symptom[1])[0]
    edges = set(inp.edges) | trace_edges
    co_movement(inp, scores, devs, edges)
    return Evidence(services, scores, edges, symptom, symptom_kind)


def _worse_sign(direction: Direction) -> float:
    return -1.0 if direction == "down" else 1.0


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equally long series; 0 when either does not vary (no co-movement to see)."""
    a, b = a - a.mean(), b - b.mean()
    norm = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / norm if norm > 0 else 0.0


def co_movement(
    inp: RcaInput, scores: dict[str, ServiceScore], devs: dict[int, float], edges: set[tuple[str, str]]
) -> None:
    """How far each deviating series moved with the symptom over the whole window (before and after the start).

    The symptom series is the one the case names, else the entry service's most deviating user-facing series.
    Each deviating series is correlated (Pearson, both turned so that up is worse) with it on the symptom's
    timestamps; `with_symptom[kind]` keeps the largest deviation times its positive correlation.
    """
    ref: MetricSeries | None = None
    if inp.symptom and inp.symptom[1]:
        ref = next(
            (x for x in inp.series if x.service == inp.symptom[0] and x.metric == inp.symptom[1]), None
        )
    if ref is None:
        service, kind = (
            (inp.symptom[0], None) if inp.symptom else _entry_symptom(sorted(scores), edges, scores)
        )
        pool = [
            i
            for i, x in enumerate(inp.series)
            if x.service == service and i in devs and (kind is None or x.kind == kind)
        ]
        if pool:
            ref = inp.series[max(pool, key=lambda i: devs[i])]
    if ref is None:
        return
    ok = np.isfinite(ref.values)
    rt, rv = ref.ts[ok], _worse_sign(ref.direction) * ref.values[ok]
    if len(rt) < 3 or np.ptp(rv) == 0:
        return
    for i, dev in devs.items():
        x = inp.series[i]
        good = np.isfinite(x.values)
        xt, xv = x.ts[good], x.values[good]
        if len(xt) < 3:
            continue
        inside = (rt >= xt[0]) & (rt <= xt[-1])
        if inside.sum() < 3:
            continue
        r = _pearson(rv[inside], np.interp(rt[inside], xt, xv))
        r = abs(r) if x.direction == "both" else _worse_sign(x.direction) * r
        if not math.isfinite(r) or r <= 0:
            continue
        sc = scores[x.service]
        sc.with_symptom[x.kind] = max(sc.with_symptom.get(x.kind, 0.0), dev * r)


USER_FACING: tuple[Kind, ...] = ("latency", "errors")


def _entry_symptom(
    services: Sequence[str], edges: set[tuple[str, str]], scores: dict[str, ServiceScore]
) -> tuple[str | None, str | None]:
    """With no symptom given: the entry service (nobody calls it) whose user-facing metrics moved most, and how."""
    called = {b for a, b in edges if a != b}
    entries = [s for s in services if s not in called and any(a == s for a, _ in edges)]
    best = max(
        entries,
        key=lambda s: max((scores[s].by_kind.get(k, 0.0) for k in USER_FACING), default=0.0),
        default=None,
    )
    if best is None:
        return None, None
    kinds = {k: scores[best].by_kind.get(k, 0.0) for k in USER_FACING}
    kind = max(kinds, key=lambda k: kinds[k])
    return (best, kind) if kinds[kind] > 0 else (None, None)


def _common_mode(values: dict[str, float], skip: int) -> float:
    """What the typical candidate shows: the median over the candidates other than the `skip` most deviating
    (those that show nothing count as 0).

    The few most deviating candidates are where the incident is: a cause and the callers it drags along. What the
    median of the rest shows is common to the system (its load changed, a node, the collector), not one
    service's news; only the excess over it is evidence against a service. With few services deviating the
    median is 0 and nothing changes; with `skip` or fewer candidates there is no rest to take it from.
    """
    rest = sorted(values.values())[: max(len(values) - skip, 0)]
    return float(np.median(rest)) if rest else 0.0


def _kind_dev(sc: ServiceScore, kind: str, co_move: float) -> float:
    """A service's deviation in one kind, the `co_move` share of it counted only as far as it moved with the symptom."""
    return (1 - co_move) * sc.by_kind.get(kind, 0.0) + co_move * sc.with_symptom.get(kind, 0.0)


RESOURCE_EXPLAINS = 0.5
"""A service's CPU or memory deviation at least this share of its own latency or errors deviation explains them:
its own resources, not a callee, made it slow or fail (the fault type reads the same pattern, `fault_type`)."""


def self_explained(kinds: dict[str, float]) -> float:
    """How far a service's own trouble is explained by its own resources: the weaker of its resource (CPU, memory)
    and user-facing (latency, errors) deviations, when the resource one is strong enough to explain the other.

    A cause that saturates shows both; a caller waiting on a slow callee shows the latency without the CPU, and a
    busier service shows CPU that its latency does not follow. 0 when either is missing.
    """
    resource = max(kinds.get("cpu", 0.0), kinds.get("memory", 0.0))
    facing = max(kinds.get("latency", 0.0), kinds.get("errors", 0.0))
    return min(resource, facing) if resource >= RESOURCE_EXPLAINS * facing else 0.0


def combine(ev: Evidence, p: Params = DEFAULT_PARAMS) -> RcaResult:
    """Weigh the modalities, walk the call graph, and rank."""
    services, scores = ev.services, ev.scores
    symptom, symptom_kind = ev.symptom, ev.symptom_kind
    if symptom is None and p.infer_symptom:
        symptom, symptom_kind = _entry_symptom(services, ev.edges, scores)
    # With no symptom there is nothing to move with: every deviation counts in full.
    co_move = p.co_move if symptom else 0.0
    for sc in scores.values():
        weighted = {k: p.kind_w(k) * _kind_dev(sc, k, co_move) for k in sc.by_kind}
        sc.metric = max(weighted.values(), default=0.0) + p.w_self_explained * self_explained(weighted)
    modality = {a: {s: getattr(scores[s], a) for s in services} for a in ("metric", "trace", "log", "event")}
    common = {a: _common_mode(v, p.common_skip) if p.common_mode else 0.0 for a, v in modality.items()}
    modality = {a: {s: max(0.0, x - common[a]) for s, x in v.items()} for a, v in modality.items()}
    metric_n, trace_n, log_n, event_n = (
        _normalised(modality[a]) for a in ("metric", "trace", "log", "event")
    )
    if p.common_scale:
        # One scale for every modality: a modality whose best service is weak next to another's stays weak.
        unit = max((x for v in modality.values() for x in v.values()), default=0.0)
        m, t, lg, ev_ = (
            {s: x / unit if unit > 0 else 0.0 for s, x in modality[a].items()}
            for a in ("metric", "trace", "log", "event")
        )
    else:
        unit = max(modality["metric"].values(), default=0.0)
        m, t, lg, ev_ = metric_n, trace_n, log_n, event_n
    full = p.w_metric + p.w_trace + p.w_log + p.w_event
    own = {
        s: p.w_metric * m[s]
        + p.w_trace * t[s]
        + p.w_log * lg[s]
        + p.w_event * ev_[s]
        + (p.w_vanished * full if scores[s].vanished else 0.0)
        for s in services
    }
    if p.w_silenced > 0:
        # A live service that stopped receiving calls: a caller now fails or stops before calling it.
        for s in services:
            if scores[s].silenced:
                callers = [a for a, b in ev.edges if b == s and a != s and a in own]
                for a in callers:
                    own[a] += p.w_silenced / len(callers)
    if symptom_kind and p.w_symptom_kind > 0:
        # The kind of trouble that was seen is the trail to follow: a cause shows it too (PetShop's traversal).
        same = {s: _kind_dev(scores[s], symptom_kind, co_move) for s in services}
        floor = _common_mode(same, p.common_skip) if p.common_mode else 0.0
        same = _normalised({s: max(0.0, x - floor) for s, x in same.items()})
        own = {s: own[s] + p.w_symptom_kind * same[s] for s in services}
    pull = None
    if p.callee_traffic != 1.0:
        # A callee's traffic follows its callers (their retries, their fan-out): it does not explain their trouble,
        # so it pulls the walk only that much. The rest of the callee's score pulls as before.
        pull = {}
        for s in services:
            sc = scores[s]
            weighted = {
                k: p.kind_w(k) * _kind_dev(sc, k, co_move) * (p.callee_traffic if k == "traffic" else 1.0)
                for k in sc.by_kind
            }
            explains = max(weighted.values(), default=0.0) + p.w_self_explained * self_explained(weighted)
            explains = max(0.0, explains - common["metric"])
            pull[s] = own[s] - p.w_metric * m[s] + (p.w_metric * explains / unit if unit > 0 else 0.0)
    walked = (
        _normalised(personalised_pagerank(services, ev.edges, own, p.restart, pull=pull))
        if p.propagation > 0
        else {}
    )
    own_n = _normalised(own)
    behind = downstream(symptom, ev.edges) if symptom else set()
    for s in services:
        scores[s].score = (1 - p.propagation) * own_n[s] + p.propagation * walked.get(s, 0.0)
        if behind and s not in behind:
            # Where the trouble was seen is a caller of its cause (or the cause itself).
            scores[s].score *= p.off_path
    ranking = sorted(scores.values(), key=lambda sc: (-sc.score, sc.service))
    fault = fault_type(ranking[0], symptom_kind) if ranking and ranking[0].score > 0 else None
    return RcaResult(ranking, fault, features(ranking, metric_n, trace_n, log_n))


def rank(inp: RcaInput, p: Params = DEFAULT_PARAMS) -> RcaResult:
    """Rank every candidate service of `inp` as the root cause, most likely first."""
    return combine(gather(inp, p), p)


def fault_type(top: ServiceScore, symptom_kind: str | None = None) -> RcaFault:
    """The fault type the evidence pattern of the top service points to (and the kind of trouble seen, if known)."""
    if top.vanished:
        return "crash"
    kinds = dict(top.by_kind)
    if any("disk" in m.lower() or "inode" in m.lower() for m, _ in top.top_series[:2]):
        return "disk"
    own_errors = top.trace_errors > 0 or top.log_errors > 0
    if own_errors or (symptom_kind == "errors" and kinds.get("errors", 0.0) > 0):
        # Errors the service itself wrote or originated, or errors where errors were what users saw.
        return "error"
    resource = max(kinds.get("cpu", 0.0), kinds.get("memory", 0.0))
    symptom = max(kinds.get("latency", 0.0), kinds.get("errors", 0.0))
    if resource > 0 and resource >= RESOURCE_EXPLAINS * symptom:
        return "cpu" if kinds.get("cpu", 0.0) >= kinds.get("memory", 0.0) else "memory"
    if top.trace_errors > 0 or top.log_errors > 0 or kinds.get("errors", 0.0) > kinds.get("latency", 0.0):
        return "error"
    if kinds.get("latency", 0.0) > 0 or top.trace > 0:
        return "latency"
    return "other"


def features(
    ranking: list[ServiceScore],
    metric_n: dict[str, float],
    trace_n: dict[str, float],
    log_n: dict[str, float],
) -> dict[str, float]:
    """What the confidence model may read: the top answer's margin, how many modalities back it, how many
    candidates there were (log; chance alone is right 1 time in n), and the like."""
    if not ranking or ranking[0].score <= 0:
        return {
            "margin": 0.0,
            "margin3": 0.0,
            "ratio": 0.0,
            "agree": 0.0,
            "deviating": 0.0,
            "top_metric": 0.0,
            "candidates": math.log(max(len(ranking), 1)),
        }
    top = ranking[0]
    second = ranking[1].score if len(ranking) > 1 else 0.0
    third = ranking[2].score if len(ranking) > 2 else 0.0
    agree = sum(1 for n in (metric_n, trace_n, log_n) if n.get(top.service, 0.0) >= 0.999)
    present = sum(1 for n in (metric_n, trace_n, log_n) if any(v > 0 for v in n.values()))
    deviating = sum(1 for s in ranking if s.score > 0.05)
    return {
        "margin": top.score - second,
        "margin3": top.score - third,
        "ratio": second / top.score,
        "agree": agree / max(present, 1),
        "deviating": deviating / len(ranking),
        "top_metric": max(top.by_kind.values(), default=0.0),
        "candidates": math.log(len(ranking)),
    }
