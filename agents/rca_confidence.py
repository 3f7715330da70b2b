"""Confidence as a probability: a small logistic model over the ranker's own features.

`P(top answer is right) = sigmoid(w · x + b)` with `x` from `agents.rca.features`: the margin of the top
answer over the runner-up, and the runner-up's score as a share of the top's. Both lie in [0, 1] whatever the
system's size, so a ranking over 3 services is not judged by extrapolating a fit on 10 to 45, and two equally
suspect services give a low probability. Every subset of up to three of eleven candidate features was tried
leave-one-system-out (docs/rca.md); among the ones the live analyst can compute from its own ranking (margins
and ratios, not the per-modality agreement), this one had the lowest out-of-fold Brier score. It is fitted by
`python -m evals.tune_rca --data DIR --write` on the dev cases with leave-one-system-out cross-validation, and
shipped as `agents/rca_confidence.json` (versioned, with the data it was fitted on and its cross-validated
Brier score and ECE). Nothing here is set by hand.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np

from tools.base import ConfigError

log = logging.getLogger(__name__)

ARTEFACT = Path(__file__).with_name("rca_confidence.json")
FEATURES = ("margin", "ratio")
FALLBACK_MIN_CONFIDENCE = 0.3
"""`analyst.min_confidence` when the artefact is missing or holds no chosen threshold: the old hand-set value,
used only so that sregraph still starts (the analyst then says loudly that its confidence is not calibrated)."""


@dataclass
class ConfidenceModel:
    """Weights of the logistic model, in the order of FEATURES, and its intercept."""

    weights: tuple[float, ...]
    bias: float
    version: str = "unfitted"

    def probability(self, features: dict[str, float]) -> float:
        """The calibrated probability that the top answer is right."""
        z = self.bias + sum(
            w * float(features.get(name, 0.0)) for w, name in zip(self.weights, FEATURES, strict=True)
        )
        return 1.0 / (1.0 + math.exp(-max(min(z, 40.0), -40.0)))

    @classmethod
    def load(cls, path: Path = ARTEFACT) -> ConfidenceModel | None:
        """The shipped model, or None when there is no artefact (callers then say loudly that none was used)."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: not a confidence model: {exc}") from exc
        if list(data.get("features", [])) != list(FEATURES):
            raise ConfigError(
                f"{path}: fitted on features {data.get('features')}, this code reads {list(FEATURES)}; "
                "refit it with: python -m evals.tune_rca --data DIR --write"
            )
        return cls(
            tuple(float(data["weights"][n]) for n in FEATURES), float(data["bias"]), str(data["version"])
        )


def matrix(rows: Sequence[dict[str, float]]) -> np.ndarray:
    """Feature rows as a matrix in FEATURES order."""
    return np.array([[float(r.get(n, 0.0)) for n in FEATURES] for r in rows], dtype=float).reshape(
        len(rows), len(FEATURES)
    )


def fit(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 50) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method; returns (weights, bias)."""
    n, d = x.shape
    xa = np.hstack([x, np.ones((n, 1))])
    w = np.zeros(d + 1)
    reg = np.eye(d + 1) * l2
    reg[-1, -1] = 0.0  # the intercept is not shrunk
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(xa @ w, -40, 40)))
        grad = xa.T @ (p - y) + reg @ w
        hess = xa.T @ (xa * (p * (1 - p))[:, None]) + reg + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], float(w[-1])


def brier(p: Sequence[float], y: Sequence[float]) -> float:
    """Mean squared error of probabilities against outcomes."""
    pa, ya = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    return float(np.mean((pa - ya) ** 2)) if len(pa) else math.nan


def ece(p: Sequence[float], y: Sequence[float], bins: int = 10) -> float:
    """Expected calibration error over equal-width bins."""
    pa, ya = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    if not len(pa):
        return math.nan
    idx = np.minimum((pa * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() / len(pa) * abs(pa[m].mean() - ya[m].mean())
    return float(total)


class ReliabilityRow(TypedDict):
    """One bin of a reliability diagram."""

    bin: str
    n: int
    confidence: float
    accuracy: float


def reliability(p: Sequence[float], y: Sequence[float], bins: int = 5) -> list[ReliabilityRow]:
    """Rows of a reliability diagram: per bin, how many answers, mean confidence, share right."""
    pa, ya = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    idx = np.minimum((pa * bins).astype(int), bins - 1)
    rows: list[ReliabilityRow] = []
    for b in range(bins):
        m = idx == b
        if m.any():
            rows.append(
                {
                    "bin": f"{b / bins:.1f}-{(b + 1) / bins:.1f}",
                    "n": int(m.sum()),
                    "confidence": round(float(pa[m].mean()), 3),
                    "accuracy": round(float(ya[m].mean()), 3),
                }
            )
    return rows


THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(20))
"""The thresholds of the selective-risk curve: 0, 0.05, ..., 0.95."""


def selective_risk(
    p: Sequence[float], y: Sequence[float], thresholds: Sequence[float] = THRESHOLDS
) -> list[dict[str, float]]:
    """The selective-risk curve: acting only above each threshold, the share of cases acted on and the share wrong."""
    pa, ya = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    rows = []
    for t in thresholds:
        m = pa >= t
        rows.append(
            {
                "threshold": t,
                "coverage": round(float(m.mean()), 3) if len(pa) else 0.0,
                "risk": round(float(1 - ya[m].mean()), 3) if m.any() else 0.0,
            }
        )
    return rows


def choose_threshold(
    curve: Sequence[dict[str, float]], cases: int, target_risk: float, min_acted: int
) -> dict[str, object]:
    """`analyst.min_confidence` from an out-of-fold selective-risk curve (rows of `selective_risk`).

    The rule: act on as many incidents as the target allows. Among the rows at which the share wrong among the
    answers acted on is at most `target_risk`, counting only rows that act on at least `min_acted` of the
    `cases` (a risk measured on two answers says nothing), the one that acts on the most; of rows that act on
    the same cases, the **highest** threshold, so the threshold is no lower than the confidences the curve has
    seen (below them it has no evidence). When no row meets the target, the row with the lowest risk (then
    the most coverage) among those with enough support is chosen and `target_met` is False: whoever refits
    must see that the target was not reachable. Returns the threshold, the rule's inputs, and the curve row.
    """
    supported = [r for r in curve if round(float(r["coverage"]) * cases) >= min_acted]
    if not supported:
        raise ValueError(f"no row of the selective-risk curve acts on {min_acted} of {cases} cases")
    meeting = [r for r in supported if float(r["risk"]) <= target_risk]
    if meeting:
        row = max(meeting, key=lambda r: (float(r["coverage"]), float(r["threshold"])))
    else:
        row = min(supported, key=lambda r: (float(r["risk"]), -float(r["coverage"]), -float(r["threshold"])))
    return {
        "threshold": float(row["threshold"]),
        "rule": "the most coverage (then the highest threshold) whose out-of-fold error among the answers "
        "acted on is at most target_risk, acting on at least min_acted cases",
        "target_risk": target_risk,
        "min_acted": min_acted,
        "target_met": bool(meeting),
        "row": {
            "threshold": float(row["threshold"]),
            "coverage": float(row["coverage"]),
            "risk": float(row["risk"]),
            "acted_on": round(float(row["coverage"]) * cases),
        },
    }


def default_min_confidence(path: Path = ARTEFACT) -> float:
    """The threshold `evals/tune_rca.py --write` chose from the selective-risk curve and stored in the artefact
    (`min_confidence.threshold`); FALLBACK_MIN_CONFIDENCE, with a warning, when there is none."""
    try:
        data = json.loads(Path(path).read_text())
        return float(data["min_confidence"]["threshold"])
    except FileNotFoundError:
        log.warning(
            "%s is missing: analyst.min_confidence defaults to the hand-set %s", path, FALLBACK_MIN_CONFIDENCE
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning(
            "%s holds no chosen min_confidence (%s): it defaults to the hand-set %s",
            path,
            exc,
            FALLBACK_MIN_CONFIDENCE,
        )
    return FALLBACK_MIN_CONFIDENCE
