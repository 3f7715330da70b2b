"""Choose the ranker's global parameters by leave-one-dataset-out, and fit its confidence model the same way.

    python -m evals.tune_rca --data DIR [--data DIR ...] [--write]

Method (the grid, the held-out choice, the confidence fit, `min_confidence`): docs/rca.md §Parameters.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from agents.rca import DEFAULT_PARAMS, SIGNAL_KEYS, Params, combine, gather, signals
from agents.rca_confidence import (
    ARTEFACT,
    FEATURES,
    brier,
    choose_threshold,
    ece,
    fit,
    matrix,
    reliability,
    selective_risk,
)
from evals.rca_bench import load_cases
from evals.rca_case import Case, load_label

GRID: dict[str, Sequence[Any]] = {
    "reference": ("both", "strict"),
    "onset": (False, True),
    "caller_view": (0.2, 1.0),
    "flat_exact": (False, True),
    "w_log": (1.0, 2.0),
    "w_trace": (0.5, 1.0),
    "propagation": (0.3, 0.5),
    "off_path": (0.2, 1.0),
    "infer_symptom": (False, True),
    "co_move": (0.0, 0.5),
    "common_mode": (False, True),
    "failure_share": (False, True),
    "w_self_explained": (0.0, 0.5),
}
"""The grid searched. reference, onset, caller_view, flat_exact and failure_share change the metric evidence itself;
the others only how it is combined."""

TARGET_RISK = 0.2
"""The error rate an automatic remedy may have: out of fold, at most one answer in five acted on was wrong. The
remedies (restart, start, rollback, config revert) are reversible, checked by the policy, verified, and a remedy
that does not help leads to another attempt or to a human; a wrong one costs a needless restart or revert."""
MIN_ACTED = 10
"""A curve row counts only if it acts on at least this many out-of-fold cases (a risk measured on three answers
says nothing)."""


def min_confidence_choice(out_of_fold: dict[str, Any]) -> dict[str, Any]:
    """The act-or-escalate threshold stored in the artefact, from its out-of-fold selective-risk curve."""
    return choose_threshold(out_of_fold["selective_risk"], int(out_of_fold["cases"]), TARGET_RISK, MIN_ACTED)


EVIDENCE_KEYS = (
    "rel_floor",
    "value_floor",
    "caller_view",
    "flat_exact",
    "flat_weight",
    "w_shift",
    "min_ref",
    "min_deviation",
    "reference",
    "onset",
    "failure_share",
    *SIGNAL_KEYS,
)


def _ranks(
    cases: Sequence[tuple[Case, str]], params: Params, cache: dict[Any, Any]
) -> list[tuple[int | None, dict[str, float]]]:
    out = []
    for case, truth in cases:
        key = (case.id, tuple(getattr(params, k) for k in EVIDENCE_KEYS))
        if key not in cache:
            # Traces and logs depend on few parameters and cost most: computed once per case and reused.
            sig_key = ("signals", case.id, tuple(getattr(params, k) for k in SIGNAL_KEYS))
            if sig_key not in cache:
                cache[sig_key] = signals(case.input, params)
            cache[key] = gather(case.input, params, cache[sig_key])
        result = combine(cache[key], params)
        ranked = result.services if result.answered else []
        out.append((ranked.index(truth) + 1 if truth in ranked else None, result.features))
    return out


def _score(ranks: Sequence[int | None]) -> tuple[float, float]:
    ac = [sum(1 for r in ranks if r is not None and r <= k) / len(ranks) for k in range(1, 6)]
    return ac[0], float(np.mean(ac))


def tune(data: Sequence[Path]) -> dict[str, Any]:
    """Leave-one-system-out parameter choice and confidence fit; returns numbers and the in-sample choice."""
    t0 = time.perf_counter()
    loaded = [(c, load_label(c.path)[0]) for d in data for c in load_cases(d)]
    systems = sorted({c.system for c, _ in loaded})
    by_system = {s: [(c, t) for c, t in loaded if c.system == s] for s in systems}
    names = list(GRID)
    points = [
        replace(DEFAULT_PARAMS, **dict(zip(names, values, strict=True)))
        for values in itertools.product(*GRID.values())
    ]
    cache: dict[Any, Any] = {}
    table: dict[tuple[int, str], list[tuple[int | None, dict[str, float]]]] = {}
    for i, params in enumerate(points):
        for system in systems:
            table[(i, system)] = _ranks(by_system[system], params, cache)

    # how many defaults each point changes
    changed = [len(_diff(params, with_grid=False)) for params in points]

    def best(use: Sequence[str]) -> int:
        def key(i: int) -> tuple[float, float, int]:
            per = [_score([r for r, _ in table[(i, s)]]) for s in use]
            # Ties go to the point nearest the shipped defaults: a parameter the systems in `use` cannot tell
            # apart (co_move without a named symptom, w_log without logs) keeps its default, not the grid's
            # first value.
            return float(np.mean([a for a, _ in per])), float(np.mean([b for _, b in per])), -changed[i]

        return max(range(len(points)), key=key)

    report: dict[str, Any] = {"grid": {k: list(v) for k, v in GRID.items()}, "systems": {}}
    oof_p: list[float] = []
    oof_y: list[float] = []
    for held in systems:
        others = [s for s in systems if s != held]
        i = best(others)
        ac1, avg5 = _score([r for r, _ in table[(i, held)]])
        train = [(f, 1.0 if r == 1 else 0.0) for s in others for r, f in table[(i, s)]]
        w, b = fit(matrix([f for f, _ in train]), np.array([y for _, y in train]))
        test = table[(i, held)]
        probs = [float(1 / (1 + np.exp(-(matrix([f]) @ w + b)[0]))) for _, f in test]
        ys = [1.0 if r == 1 else 0.0 for r, _ in test]
        oof_p += probs
        oof_y += ys
        in_sample = _score([r for r, _ in table[(best(systems), held)]])
        report["systems"][held] = {
            "cases": len(test),
            "leave_one_out": {
                "ac1": ac1,
                "avg5": avg5,
                "ac3": _ac(test, 3),
                "ac5": _ac(test, 5),
                "params": _diff(points[i]),
                "brier": brier(probs, ys),
                "ece": ece(probs, ys),
            },
            "in_sample": {"ac1": in_sample[0], "avg5": in_sample[1]},
        }
    chosen = points[best(systems)]
    everything = [(f, 1.0 if r == 1 else 0.0) for s in systems for r, f in table[(best(systems), s)]]
    w, b = fit(matrix([f for f, _ in everything]), np.array([y for _, y in everything]))
    report["chosen"] = _diff(chosen)
    report["confidence"] = {
        "out_of_fold": {
            "cases": len(oof_p),
            "brier": brier(oof_p, oof_y),
            "ece": ece(oof_p, oof_y),
            "accuracy": float(np.mean(oof_y)) if oof_y else None,
            "reliability": reliability(oof_p, oof_y),
            "selective_risk": selective_risk(oof_p, oof_y),
        },
        "weights": dict(zip(FEATURES, map(float, w), strict=True)),
        "bias": b,
        "fitted_on": {s: len(by_system[s]) for s in systems},
    }
    report["confidence"]["min_confidence"] = min_confidence_choice(report["confidence"]["out_of_fold"])
    report["seconds"] = time.perf_counter() - t0
    report["grid_points"] = len(points)
    return report


def _ac(rows: Sequence[tuple[int | None, dict[str, float]]], k: int) -> float:
    return sum(1 for r, _ in rows if r is not None and r <= k) / len(rows)


def _diff(params: Params, with_grid: bool = True) -> dict[str, Any]:
    """The grid's parameters and any other that differs from the defaults; with with_grid=False, only those
    that differ."""
    base = asdict(DEFAULT_PARAMS)
    return {k: v for k, v in asdict(params).items() if (with_grid and k in GRID) or v != base[k]}


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: print the report as JSON; with --write, store the confidence model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", action="append", type=Path, required=True, help="a folder of cases (repeatable)"
    )
    parser.add_argument(
        "--write", action="store_true", help="write agents/rca_confidence.json from the fit on every system"
    )
    args = parser.parse_args(argv)
    report = tune(args.data)
    if args.write:
        conf = report["confidence"]
        choice = conf["min_confidence"]
        if not choice["target_met"]:
            print(
                f"warning: no threshold keeps the out-of-fold error under {TARGET_RISK}; min_confidence "
                f"{choice['threshold']} "
                f"is the lowest-risk row {choice['row']}",
                file=sys.stderr,
            )
        version = time.strftime("%Y-%m-%d") + "-" + "+".join(f"{s}:{n}" for s, n in conf["fitted_on"].items())
        ARTEFACT.write_text(
            json.dumps(
                {
                    "version": version,
                    "features": list(FEATURES),
                    "weights": conf["weights"],
                    "bias": conf["bias"],
                    "params": report["chosen"],
                    "fitted_on": conf["fitted_on"],
                    "out_of_fold": conf["out_of_fold"],
                    "min_confidence": choice,
                    "script": "python -m evals.tune_rca --data DIR ... --write",
                },
                indent=2,
            )
            + "\n"
        )
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
