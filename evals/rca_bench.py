"""`sregraph bench rca`: the root-cause ranker on every case under a folder, next to two baselines.

For each case the ranker (`agents.rca.rank`) ranks every candidate; the truth's rank gives AC@k (share of cases
whose root cause is in the top k) and Avg@5 (mean of AC@1..5). Confidence comes from the shipped calibration
model (`agents/rca_confidence.py`); Brier and ECE are measured on the same cases, misses included. The two
baselines run on the same loaded cases:

* ``baro``: BARO's robust scorer as the issue states it: a service scores the max over its series of
  ``|x - median(ref)| / IQR(ref)`` after the start, with ref the normal period when given, else the points before.
* ``random``: the expected AC@k of a uniformly random order, ``min(k, n) / n`` for n candidates (exact, not a draw).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.rca import DEFAULT_PARAMS, Params, RcaInput, RcaResult, rank
from agents.rca_confidence import ConfidenceModel, brier, ece, reliability
from evals.rca_case import Case, find_cases, load_case, load_label


@dataclass
class Outcome:
    """One case's answer and how it scored."""

    id: str
    system: str
    subset: str | None
    truth: str
    truth_fault: str | None
    ranked: list[str]
    fault_type: str | None
    confidence: float | None
    rank: int | None
    seconds: float
    features: dict[str, float] = field(default_factory=dict)

    @property
    def right(self) -> bool:
        """The top answer is the root cause."""
        return self.rank == 1


def _hits(outcomes: Sequence[Outcome], k: int) -> float:
    return (
        sum(1 for o in outcomes if o.rank is not None and o.rank <= k) / len(outcomes)
        if outcomes
        else math.nan
    )


def _scored(outcomes: Sequence[Outcome]) -> tuple[list[float], list[float]]:
    """The confidence, and 1.0 if right else 0.0, of each outcome that has a confidence."""
    pairs = [(o.confidence, 1.0 if o.right else 0.0) for o in outcomes if o.confidence is not None]
    return [p for p, _ in pairs], [y for _, y in pairs]


def summarise(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """AC@1/3/5, Avg@5, fault-type accuracy, no-answer rate, Brier and ECE of confidence, seconds per case."""
    if not outcomes:
        return {"cases": 0}
    typed = [o for o in outcomes if o.truth_fault is not None]
    probs, rights = _scored(outcomes)
    return {
        "cases": len(outcomes),
        "ac1": _hits(outcomes, 1),
        "ac3": _hits(outcomes, 3),
        "ac5": _hits(outcomes, 5),
        "avg5": float(np.mean([_hits(outcomes, k) for k in range(1, 6)])),
        "fault_type_acc": (sum(1 for o in typed if o.fault_type == o.truth_fault) / len(typed))
        if typed
        else None,
        "no_answer_rate": sum(1 for o in outcomes if not o.ranked) / len(outcomes),
        "brier": brier(probs, rights) if probs else None,
        "ece": ece(probs, rights) if probs else None,
        "mean_confidence": float(np.mean(probs)) if probs else None,
        "seconds_per_case": float(np.mean([o.seconds for o in outcomes])),
    }


def _by(outcomes: Sequence[Outcome], key: Callable[[Outcome], str | None]) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        name = key(o)
        if name:
            groups[name].append(o)
    return {name: summarise(group) for name, group in sorted(groups.items())}


# ----------------------------------------------------------------------------- methods


def baro_scores(inp: RcaInput) -> dict[str, float]:
    """BARO's robust scorer: per service, max over its series of |x - median(ref)| / IQR(ref) after the start."""
    out = {s: 0.0 for s in inp.services}
    for s in inp.series:
        finite = np.isfinite(s.values)
        after = s.values[(s.ts >= inp.anomaly_start) & finite]
        ref = (
            s.normal[np.isfinite(s.normal)]
            if s.normal is not None and np.isfinite(s.normal).sum() >= 2
            else s.values[(s.ts < inp.anomaly_start) & finite]
        )
        if len(after) == 0 or len(ref) < 2:
            continue
        q1, q3 = np.percentile(ref, [25, 75])
        iqr = float(q3 - q1)
        dev = float(np.max(np.abs(after - np.median(ref))))
        score = dev / iqr if iqr > 0 else (math.inf if dev > 0 else 0.0)
        out[s.service] = max(out.get(s.service, 0.0), score)
    return out


def _outcome(
    case: Case,
    ranked: list[str],
    fault: str | None,
    confidence: float | None,
    seconds: float,
    feats: dict[str, float] | None = None,
) -> Outcome:
    truth, truth_fault = load_label(case.path)
    position = ranked.index(truth) + 1 if truth in ranked else None
    return Outcome(
        case.id,
        case.system,
        case.subset,
        truth,
        truth_fault,
        ranked,
        fault,
        confidence,
        position,
        seconds,
        feats or {},
    )


def run_sregraph(
    cases: Sequence[Case], params: Params = DEFAULT_PARAMS, model: ConfidenceModel | None = None
) -> list[Outcome]:
    """The ranker on every case."""
    out = []
    for case in cases:
        t0 = time.perf_counter()
        result: RcaResult = rank(case.input, params)
        seconds = time.perf_counter() - t0
        ranked = result.services if result.answered else []
        confidence = model.probability(result.features) if (model is not None and result.answered) else None
        out.append(_outcome(case, ranked, result.fault_type, confidence, seconds, result.features))
    return out


def run_baro(cases: Sequence[Case]) -> list[Outcome]:
    """The BARO-style baseline on every case (ties broken by name; services with no deviation are not ranked)."""
    out = []
    for case in cases:
        t0 = time.perf_counter()
        scores = baro_scores(case.input)
        ranked = [s for s, v in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0])) if v > 0]
        out.append(_outcome(case, ranked, None, None, time.perf_counter() - t0))
    return out


def random_expectation(cases: Sequence[Case]) -> dict[str, Any]:
    """Exact expected AC@k of a uniformly random ranking."""
    ns = [max(len(c.input.services), 1) for c in cases]
    ac = {k: float(np.mean([min(k, n) / n for n in ns])) for k in range(1, 6)}
    return {
        "cases": len(cases),
        "ac1": ac[1],
        "ac3": ac[3],
        "ac5": ac[5],
        "avg5": float(np.mean(list(ac.values()))),
    }


# ----------------------------------------------------------------------------- the bench


def load_cases(data: Path, use_meta: bool = True) -> list[Case]:
    """Every case under `data`."""
    return [load_case(p, use_meta=use_meta) for p in find_cases(Path(data))]


def run_bench(
    data: Path,
    params: Params = DEFAULT_PARAMS,
    model: ConfidenceModel | None = None,
    use_meta: bool = True,
    baselines: bool = True,
) -> dict[str, Any]:
    """Score the ranker (and the baselines) on every case under `data`; the JSON answer of `sregraph bench rca`."""
    t0 = time.perf_counter()
    cases = load_cases(data, use_meta)
    load_s = time.perf_counter() - t0
    outcomes = run_sregraph(cases, params, model)
    result: dict[str, Any] = summarise(outcomes)
    result["seconds_per_case"] = (load_s + sum(o.seconds for o in outcomes)) / max(len(outcomes), 1)
    result["rank_seconds_per_case"] = float(np.mean([o.seconds for o in outcomes])) if outcomes else None
    result["systems"] = _by(outcomes, lambda o: o.system)
    result["subsets"] = _by(outcomes, lambda o: o.subset)
    result["confidence_model"] = model.version if model is not None else None
    if model is None:
        result["warning"] = "no confidence model was loaded: confidence, Brier and ECE are not reported"
    probs, rights = _scored(outcomes)
    result["reliability"] = reliability(probs, rights) if probs else []
    if baselines:
        baro = run_baro(cases)
        result["baselines"] = {
            "baro": {
                **summarise(baro),
                "systems": _by(baro, lambda o: o.system),
                "subsets": _by(baro, lambda o: o.subset),
            },
            "random": {
                **random_expectation(cases),
                "systems": {
                    s: random_expectation([c for c in cases if c.system == s])
                    for s in sorted({c.system for c in cases})
                },
            },
        }
    result["per_case"] = [
        {
            "id": o.id,
            "system": o.system,
            "subset": o.subset,
            "ranked": o.ranked[:5],
            "fault_type": o.fault_type,
            "confidence": o.confidence,
            "rank": o.rank,
            "truth": o.truth,
            "truth_fault": o.truth_fault,
            "features": {k: round(v, 4) for k, v in o.features.items()},
        }
        for o in outcomes
    ]
    return result
