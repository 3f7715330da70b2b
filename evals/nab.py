"""Numenta Anomaly Benchmark (NAB v1.1): corpus loader, faithful scorer and benchmark runner.

The scoring follows NAB's ``sweeper.py``/``optimizer.py`` as described in the corpus README: a probationary
period, windows weighted by a scaled sigmoid, one threshold per profile shared by the whole corpus (found by
sweeping every distinct score), and normalisation between the null detector (0) and the perfect one (100).
The method and the numbers are written up in docs/nab.md.

A folder in NAB's layout holds ``data/<category>/<file>.csv`` (``timestamp,value``) and
``labels/combined_windows.json``. Rows are addressed by position, because timestamps may repeat or go back.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.detection.detectors import ALERT_LEVEL, default_ensemble
from tools.base import ConfigError

PROBATION_PERCENT = 0.15
PROBATION_CAP_ROWS = 5000
SWEEP_START = 1.1
"""The first threshold of the sweep: above any score, so nothing is detected."""


@dataclass(frozen=True)
class Profile:
    """One NAB application profile (``config/profiles.json``)."""

    name: str
    tp: float
    """A_TP: the reward for the earliest detection at a window's left edge."""
    fp: float
    """A_FP: the cost of a detection far from any window."""
    fn: float
    """A_FN: the cost of a window with no detection."""


PROFILES: dict[str, Profile] = {
    "standard": Profile("standard", tp=1.0, fp=0.11, fn=1.0),
    "low_fp": Profile("reward_low_FP_rate", tp=1.0, fp=0.22, fn=1.0),
    "low_fn": Profile("reward_low_FN_rate", tp=1.0, fp=0.11, fn=2.0),
}
"""Keyed by the short names the benchmark prints; ``Profile.name`` is NAB's own name."""


@dataclass(frozen=True)
class NabFile:
    """One data file of the corpus with its windows resolved to row positions."""

    key: str
    """``<category>/<file>.csv``, the key of the label files."""
    timestamps: list[str]
    epoch: np.ndarray
    """Seconds since 1970 (the timestamps have no time zone; they are read as UTC)."""
    values: np.ndarray
    windows: list[tuple[int, int]]
    """Inclusive row ranges, in file order."""

    @property
    def rows(self) -> int:
        """Number of rows."""
        return len(self.timestamps)


# --------------------------------------------------------------------------------------------- loading


def _window_rows(key: str, timestamps: list[str], start: str, end: str) -> tuple[int, int]:
    """Row range of a window: the first row stamped `start`, and the first row stamped `end` from there on."""
    start, end = start[:19], end[:19]
    # Exact matches are what NAB uses; a label that names no row falls back to the rows it encloses.
    try:
        left = timestamps.index(start)
    except ValueError:
        left = next((i for i, ts in enumerate(timestamps) if ts >= start), -1)
    try:
        right = timestamps.index(end, max(left, 0))
    except ValueError:
        after = (i for i in range(max(left, 0), len(timestamps)) if timestamps[i] > end)
        right = next(after, len(timestamps)) - 1
    if left < 0 or right < left:
        raise ConfigError(f"{key}: window [{start}, {end}] covers no row")
    return left, right


def read_series(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Timestamps (as written), epoch seconds and values of one ``timestamp,value`` CSV file."""
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["timestamp", "value"]:
            raise ConfigError(f"{path}: the header must be 'timestamp,value', got {header!r}")
        rows = [r for r in reader if r]
    stamps = [r[0].strip() for r in rows]
    try:
        values = np.array([float(r[1]) for r in rows], dtype=np.float64)
        epoch = np.array(stamps, dtype="datetime64[s]").astype(np.int64).astype(np.float64)
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"{path}: unreadable row ({exc})") from exc
    return stamps, epoch, values


def load_corpus(root: Path, limit_files: int | None = None) -> list[NabFile]:
    """Every file named in ``labels/combined_windows.json`` (sorted by key), its windows as row ranges."""
    labels = root / "labels" / "combined_windows.json"
    if not labels.is_file():
        raise ConfigError(f"{root}: no labels/combined_windows.json (is this a folder in NAB's layout?)")
    try:
        windows: dict[str, list[list[str]]] = json.loads(labels.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{labels}: not JSON ({exc})") from exc
    keys = sorted(windows)
    if limit_files is not None:
        keys = keys[:limit_files]
    corpus = []
    for key in keys:
        path = root / "data" / key
        if not path.is_file():
            raise ConfigError(f"{labels} names {key}, but {path} does not exist")
        stamps, epoch, values = read_series(path)
        spans = sorted(_window_rows(key, stamps, w[0], w[1]) for w in windows[key])
        for (_, r1), (l2, _) in itertools.pairwise(spans):
            if l2 <= r1:
                raise ConfigError(f"{labels}: windows of {key} overlap (NAB merges overlapping windows)")
        corpus.append(NabFile(key, stamps, epoch, values, spans))
    return corpus


# --------------------------------------------------------------------------------------------- scoring


def probation_rows(n: int) -> int:
    """Rows at the start of a file that are never scored: 15 % of the file, at most 15 % of 5000 rows."""
    return int(min(math.floor(PROBATION_PERCENT * n), PROBATION_PERCENT * PROBATION_CAP_ROWS))


def scaled_sigmoid(y: float) -> float:
    """NAB's reward curve: 2/(1+e^(5y)) - 1, and -1 beyond three window widths past a window."""
    if y > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


@dataclass(frozen=True)
class RowWeights:
    """What detecting each row of one file is worth, before the profile weights are applied."""

    tp: np.ndarray
    """s(y)/s(-1) for rows inside a window, 0 elsewhere (multiply by A_TP)."""
    fp: np.ndarray
    """s(y) (negative) for rows outside every window, 0 elsewhere (multiply by A_FP)."""
    window: np.ndarray
    """Index of the window holding the row, -1 outside windows, -2 in the probationary period."""
    scored_windows: int
    """Windows with at least one row past the probationary period (the others count for nothing)."""


def row_weights(n: int, windows: Sequence[tuple[int, int]]) -> RowWeights:
    """Per-row unweighted rewards and costs of one file, following NAB's sweep."""
    tp = np.zeros(n)
    fp = np.zeros(n)
    win = np.full(n, -1, dtype=np.int64)
    max_tp = scaled_sigmoid(-1.0)
    prev_right: int | None = None
    prev_width = 0
    cursor = 0
    for w, (left, right) in enumerate(windows):
        width = right - left + 1
        for i in range(cursor, left):
            if prev_right is None:
                fp[i] = -1.0
            else:
                # NAB divides by (width - 1); a one-row window would divide by zero, so treat it as width 2.
                fp[i] = scaled_sigmoid((i - prev_right) / max(prev_width - 1, 1))
        for i in range(left, right + 1):
            tp[i] = scaled_sigmoid(-(right - i + 1) / width) / max_tp
            win[i] = w
        prev_right, prev_width, cursor = right, width, right + 1
    for i in range(cursor, n):
        fp[i] = -1.0 if prev_right is None else scaled_sigmoid((i - prev_right) / max(prev_width - 1, 1))
    probation = probation_rows(n)
    win[:probation] = -2
    tp[:probation] = 0.0
    fp[:probation] = 0.0
    scored = len({int(w) for w in win[probation:] if w >= 0})
    return RowWeights(tp, fp, win, scored)


def file_score(scores: np.ndarray, weights: RowWeights, profile: Profile, threshold: float) -> float:
    """Raw NAB score of one file at one threshold (a detection is ``score >= threshold``)."""
    detected = np.asarray(scores) >= threshold
    total = float(profile.fp * weights.fp[detected & (weights.window == -1)].sum())
    for w in sorted({int(x) for x in weights.window if x >= 0}):
        hits = detected & (weights.window == w)
        total += profile.tp * float(weights.tp[hits].max()) if hits.any() else -profile.fn
    return total


@dataclass(frozen=True)
class Sweep:
    """The corpus raw score at every candidate threshold of one profile."""

    thresholds: np.ndarray
    """1.1 first, then every distinct score, descending."""
    raw: np.ndarray


def sweep(scores: Sequence[np.ndarray], weights: Sequence[RowWeights], profile: Profile) -> Sweep:
    """Corpus raw score S at every distinct score value (plus 1.1), as NAB's threshold sweep computes it."""
    all_scores, all_tp, all_fp, all_win = [], [], [], []
    offset = 0
    n_windows = 0
    for s, wt in zip(scores, weights, strict=True):
        keep = wt.window != -2
        all_scores.append(np.asarray(s, dtype=np.float64)[keep])
        all_tp.append(wt.tp[keep] * profile.tp)
        all_fp.append(wt.fp[keep] * profile.fp)
        win = wt.window[keep]
        all_win.append(np.where(win >= 0, win + offset, -1))
        offset += len(wt.window)
        n_windows += wt.scored_windows
    score = np.concatenate(all_scores) if all_scores else np.zeros(0)
    tp = np.concatenate(all_tp) if all_tp else np.zeros(0)
    fp = np.concatenate(all_fp) if all_fp else np.zeros(0)
    win = np.concatenate(all_win) if all_win else np.zeros(0, dtype=np.int64)
    order = np.argsort(-score, kind="stable")
    score, tp, fp, win = score[order], tp[order], fp[order], win[order]

    # A row changes S by its FP weight or, inside a window, by how much it raises the window's best reward.
    delta = fp.copy()
    best: dict[int, float] = {}
    for i in np.flatnonzero(win >= 0):
        w = int(win[i])
        old = best.get(w, -profile.fn)
        if tp[i] > old:
            delta[i] = tp[i] - old
            best[w] = float(tp[i])
    running = -profile.fn * n_windows + np.cumsum(delta)
    # S at threshold t counts every row with score >= t: the last row of each run of equal scores.
    last_of_run = np.flatnonzero(np.append(score[1:] != score[:-1], True)) if len(score) else np.zeros(0, int)
    thresholds = np.concatenate([[SWEEP_START], score[last_of_run]])
    raw = np.concatenate([[-profile.fn * n_windows], running[last_of_run]])
    return Sweep(thresholds, raw)


@dataclass(frozen=True)
class ProfileResult:
    """The outcome of one profile: threshold, raw and normalised score, and the counts behind them."""

    profile: str
    threshold: float
    raw: float
    null: float
    perfect: float
    score: float | None
    """None when the corpus has no scored window: NAB's normalisation is then undefined."""
    windows: int
    detected_windows: int
    false_positives: int


def normalise(raw: float, null: float, perfect: float) -> float | None:
    """NAB's normalised score: 0 for the null detector, 100 for the perfect one (None if they coincide)."""
    if perfect == null:
        return None
    return 100.0 * (raw - null) / (perfect - null)


def baselines(weights: Sequence[RowWeights], profile: Profile) -> tuple[float, float]:
    """(S_null, S_perfect): the detector that never fires, and one that fires on each window's first row."""
    windows = sum(w.scored_windows for w in weights)
    return -profile.fn * windows, profile.tp * windows


def score_profile(
    scores: Sequence[np.ndarray], weights: Sequence[RowWeights], profile: Profile, key: str
) -> ProfileResult:
    """Optimise the corpus threshold for one profile and normalise the best raw score."""
    result = sweep(scores, weights, profile)
    # argmax keeps the first maximum: ties go to the highest threshold, the one that detects least.
    best = int(np.argmax(result.raw))
    threshold = float(result.thresholds[best])
    null, perfect = baselines(weights, profile)
    detected = false_pos = 0
    for s, wt in zip(scores, weights, strict=True):
        hit = np.asarray(s) >= threshold
        scored = wt.window != -2
        false_pos += int((hit & scored & (wt.window == -1)).sum())
        detected += len({int(w) for w in wt.window[hit & (wt.window >= 0)]})
    return ProfileResult(
        profile=key,
        threshold=threshold,
        raw=float(result.raw[best]),
        null=null,
        perfect=perfect,
        score=normalise(float(result.raw[best]), null, perfect),
        windows=sum(w.scored_windows for w in weights),
        detected_windows=detected,
        false_positives=false_pos,
    )


def score_corpus(corpus: Sequence[NabFile], scores: Sequence[np.ndarray]) -> dict[str, ProfileResult]:
    """Every profile's result for one detector's per-row scores (one array per file, in corpus order)."""
    if len(scores) != len(corpus):
        raise ValueError(f"{len(scores)} score arrays for {len(corpus)} files")
    for f, s in zip(corpus, scores, strict=True):
        if len(s) != f.rows:
            raise ValueError(f"{f.key}: {len(s)} scores for {f.rows} rows")
    weights = [row_weights(f.rows, f.windows) for f in corpus]
    return {key: score_profile(scores, weights, p, key) for key, p in PROFILES.items()}


# --------------------------------------------------------------------------------------------- runner

PUBLISHED_FULL: dict[str, tuple[float, float, float]] = {
    "ARTime": (74.9, 65.1, 80.4),
    "Numenta HTM (NuPIC 1.0)": (70.5, 62.6, 75.2),
    "CAD OSE": (69.9, 67.0, 73.2),
    "earthgecko Skyline": (58.2, 46.2, 63.9),
    "KNN CAD": (58.0, 43.4, 64.8),
    "Relative Entropy": (54.6, 47.6, 58.8),
    "Random Cut Forest": (51.7, 38.4, 59.7),
    "Twitter ADVec": (47.1, 33.6, 53.5),
    "Windowed Gaussian": (39.6, 20.9, 47.4),
    "Random (mean over seeds)": (11.0, 1.2, 19.5),
}
"""NAB's scoreboard (standard, low FP, low FN) on the full 58-file corpus, as quoted in the README."""

PUBLISHED_SUBSET: dict[str, tuple[float, float, float]] = {
    "ARTime": (73.55, 65.59, 78.59),
    "Numenta HTM": (69.52, 62.88, 74.02),
    "CAD OSE": (66.13, 62.76, 69.62),
    "Random Cut Forest": (50.64, 29.34, 55.40),
    "Twitter ADVec": (44.10, 36.83, 48.27),
    "Windowed Gaussian": (37.09, 32.72, 39.82),
    "Random (one seed)": (17.16, 3.55, 25.91),
}
"""Published detectors' stored scores, rescored on the 31-file subset with NAB's own thresholds (README)."""

ScoreFn = Callable[[NabFile], np.ndarray]


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


@dataclass
class BenchResult:
    """What ``sregraph bench nab`` prints."""

    detector: str
    files: int
    rows: int
    windows: int
    profiles: dict[str, ProfileResult]
    fixed: dict[str, ProfileResult]
    """Every profile scored at one fixed threshold (the detector's alert level), not the optimised one."""
    detect_seconds: float
    wall_seconds: float
    per_file: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def points_per_second(self) -> float:
        """Rows scored per second of detector time (reading files and scoring excluded)."""
        return self.rows / self.detect_seconds if self.detect_seconds > 0 else float("inf")

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: headline numbers first, details after."""

        def profile(p: ProfileResult) -> dict[str, Any]:
            return {
                "nab_profile": PROFILES[p.profile].name,
                "score": _round(p.score, 4),
                "raw": round(p.raw, 4),
                "null": p.null,
                "perfect": p.perfect,
                "threshold": p.threshold,
                "detected_windows": p.detected_windows,
                "windows": p.windows,
                "false_positives": p.false_positives,
            }

        return {
            "detector": self.detector,
            "files": self.files,
            "rows": self.rows,
            "windows": self.windows,
            **{k: _round(p.score, 2) for k, p in self.profiles.items()},
            "points_per_second": round(self.points_per_second, 1),
            "detect_seconds": round(self.detect_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "profiles": {k: profile(p) for k, p in self.profiles.items()},
            "fixed_threshold": {k: profile(p) for k, p in self.fixed.items()},
            "per_file": self.per_file,
        }


def default_scorer(f: NabFile) -> np.ndarray:
    """Scores of the default ensemble: a fresh detector per file, fed point by point through ``update``."""
    update = default_ensemble().update
    return np.fromiter(
        (update(t, v).score for t, v in zip(f.epoch.tolist(), f.values.tolist(), strict=True)), float, f.rows
    )


def score_at(
    scores: Sequence[np.ndarray], weights: Sequence[RowWeights], profile: Profile, key: str, threshold: float
) -> ProfileResult:
    """One profile's result at a given threshold (no optimisation)."""
    null, perfect = baselines(weights, profile)
    raw = sum(file_score(s, w, profile, threshold) for s, w in zip(scores, weights, strict=True))
    detected = false_pos = 0
    for s, wt in zip(scores, weights, strict=True):
        hit = np.asarray(s) >= threshold
        false_pos += int((hit & (wt.window == -1)).sum())
        detected += len({int(w) for w in wt.window[hit & (wt.window >= 0)]})
    return ProfileResult(
        key,
        threshold,
        raw,
        null,
        perfect,
        normalise(raw, null, perfect),
        sum(w.scored_windows for w in weights),
        detected,
        false_pos,
    )


def run(
    root: Path,
    score_fn: ScoreFn | None = None,
    limit_files: int | None = None,
    name: str = "sregraph default ensemble",
    fixed_threshold: float | None = None,
) -> BenchResult:
    """Load a NAB-layout folder, score every file with `score_fn`, optimise thresholds and normalise."""
    started = time.perf_counter()
    corpus = load_corpus(root, limit_files)
    if not corpus:
        raise ConfigError(f"{root}: the label file names no data file")
    if score_fn is None:
        score_fn = default_scorer
        fixed_threshold = ALERT_LEVEL if fixed_threshold is None else fixed_threshold
    scores = []
    detect = 0.0
    for f in corpus:
        t0 = time.perf_counter()
        s = np.asarray(score_fn(f), dtype=np.float64)
        detect += time.perf_counter() - t0
        if s.shape != (f.rows,):
            raise ValueError(f"{f.key}: {s.shape} scores for {f.rows} rows")
        scores.append(np.clip(np.nan_to_num(s, nan=0.0), 0.0, 1.0))
    weights = [row_weights(f.rows, f.windows) for f in corpus]
    profiles = {key: score_profile(scores, weights, p, key) for key, p in PROFILES.items()}
    fixed = (
        {key: score_at(scores, weights, p, key, fixed_threshold) for key, p in PROFILES.items()}
        if fixed_threshold is not None
        else {}
    )
    standard = profiles["standard"]
    per_file = {}
    for f, s, wt in zip(corpus, scores, weights, strict=True):
        hit = s >= standard.threshold
        per_file[f.key] = {
            "rows": f.rows,
            "windows": wt.scored_windows,
            "detected_windows": len({int(w) for w in wt.window[hit & (wt.window >= 0)]}),
            "false_positives": int((hit & (wt.window == -1)).sum()),
            "standard_raw": round(file_score(s, wt, PROFILES["standard"], standard.threshold), 4),
        }
    return BenchResult(
        detector=name,
        files=len(corpus),
        rows=sum(f.rows for f in corpus),
        windows=sum(w.scored_windows for w in weights),
        profiles=profiles,
        fixed=fixed,
        detect_seconds=detect,
        wall_seconds=time.perf_counter() - started,
        per_file=per_file,
    )
