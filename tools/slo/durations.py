"""Prometheus-style durations (`30d`, `6h`, `1h30m`) to seconds and back."""

from __future__ import annotations

import re

_UNITS = {"y": 365 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
_DURATION = re.compile(r"^(?:\d+(?:ms|y|w|d|h|m|s))+$")
_PART = re.compile(r"(\d+)(ms|y|w|d|h|m|s)")


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus-style duration such as `30d`, `6h`, `1h30m`; ValueError otherwise."""
    clean = str(text).strip()
    if not _DURATION.match(clean):
        raise ValueError(f"{text!r} is not a duration like 30d, 6h, 5m or 1h30m")
    return float(sum(int(n) * _UNITS[u] for n, u in _PART.findall(clean)))


def format_duration(seconds: float) -> str:
    """The shortest Prometheus duration for a whole number of seconds (2592000 -> `30d`)."""
    left = round(seconds)
    if left <= 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s"):  # no w/y: `30d` reads better than `4w2d`
        size = int(_UNITS[unit])
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    return "".join(parts)
