"""How each metric of the local app is judged: which way is worse and the smallest change that matters.

Shared by the window rule (window.py), the streaming detectors' gate (stream.py) and the ranker's live input
(agents/rca_live.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricRule:
    """How one metric is judged."""

    direction: int
    """+1 when higher is worse, -1 when lower is worse."""
    floor: float
    """Smallest absolute change that matters."""
    relative_floor: float = 0.0
    """Smallest change that matters as a share of the baseline level."""
    mode: str = "level"
    """level: compare medians; growth: compare the rise across each window."""


RULES: dict[str, MetricRule] = {
    "error_ratio": MetricRule(+1, floor=0.03),
    "latency_p95_ms": MetricRule(+1, floor=15.0, relative_floor=0.3),
    "memory_rss_mb": MetricRule(+1, floor=10.0, mode="growth"),
    "cpu_percent": MetricRule(+1, floor=20.0),
    "request_rate": MetricRule(-1, floor=2.0, relative_floor=0.5),
    "conversion_ratio": MetricRule(-1, floor=0.1),
}
