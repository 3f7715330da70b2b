"""OpenSLO v1 `kind: SLO` documents as compact SLO mappings: the subset sregraph understands (ratio
indicators, one objective, one rolling window, Occurrences budgeting); anything else is a ConfigError."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tools.base import ConfigError

# OpenSLO field paths of each compact field, so errors in an OpenSLO document name the field the user wrote.
OPENSLO_PATHS = {
    "name": "metadata.name",
    "service": "spec.service",
    "description": "spec.description",
    "target": "spec.objectives[0].target",
    "window": "spec.timeWindow[0].duration",
    "sli": "metadata.annotations.sregraph.io/sli",
    "threshold_ms": "metadata.annotations.sregraph.io/threshold-ms",
    "labels": "metadata.labels",
    "prometheus": "spec.indicator.spec.ratioMetric",
    "prometheus.errors": "spec.indicator.spec.ratioMetric.bad.metricSource.spec.query",
    "prometheus.good": "spec.indicator.spec.ratioMetric.good.metricSource.spec.query",
    "prometheus.total": "spec.indicator.spec.ratioMetric.total.metricSource.spec.query",
}


def openslo_to_compact(doc: Mapping[str, Any], where: str) -> dict[str, Any]:
    """One OpenSLO v1 `kind: SLO` document as a compact SLO mapping; ConfigError outside the subset."""

    def need(cond: bool, field: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{where}: {field}: {msg}")

    meta = doc.get("metadata") or {}
    spec = doc.get("spec") or {}
    need(isinstance(meta, Mapping), "metadata", "must be a mapping")
    need(isinstance(spec, Mapping), "spec", "must be a mapping")
    annotations = meta.get("annotations") or {}
    need(isinstance(annotations, Mapping), "metadata.annotations", "must be a mapping")
    need(
        "indicatorRef" not in spec,
        "spec.indicatorRef",
        "not supported; inline the indicator under spec.indicator",
    )
    method = spec.get("budgetingMethod", "Occurrences")
    need(method == "Occurrences", "spec.budgetingMethod", f"only Occurrences is supported; got {method!r}")
    windows = spec.get("timeWindow") or []
    need(
        isinstance(windows, list) and len(windows) == 1,
        "spec.timeWindow",
        "exactly one time window is supported",
    )
    need(
        isinstance(windows[0], Mapping) and windows[0].get("isRolling", True) is True,
        "spec.timeWindow[0].isRolling",
        "only rolling windows are supported (calendar windows are not)",
    )
    objectives = spec.get("objectives") or []
    need(
        isinstance(objectives, list) and len(objectives) == 1,
        "spec.objectives",
        "exactly one objective is supported",
    )
    need(
        isinstance(objectives[0], Mapping) and "target" in objectives[0],
        "spec.objectives[0].target",
        "is required",
    )
    indicator = (
        ((spec.get("indicator") or {}).get("spec") or {})
        if isinstance(spec.get("indicator"), Mapping)
        else {}
    )
    ratio = indicator.get("ratioMetric") if isinstance(indicator, Mapping) else None
    need(
        isinstance(ratio, Mapping),
        "spec.indicator.spec.ratioMetric",
        "is required (thresholdMetric indicators are not supported)",
    )
    assert isinstance(ratio, Mapping)

    def query(part: str) -> str | None:
        node = ratio.get(part)
        if node is None:
            return None
        source = node.get("metricSource") if isinstance(node, Mapping) else None
        path = f"spec.indicator.spec.ratioMetric.{part}.metricSource"
        need(isinstance(source, Mapping), path, "must be a mapping with type and spec.query")
        assert isinstance(source, Mapping)
        need(
            str(source.get("type", "")).lower() == "prometheus",
            f"{path}.type",
            f"only Prometheus is supported; got {source.get('type')!r}",
        )
        q = (source.get("spec") or {}).get("query")
        need(isinstance(q, str) and q.strip() != "", f"{path}.spec.query", "is required")
        return str(q)

    compact: dict[str, Any] = {
        "name": meta.get("name"),
        "service": spec.get("service"),
        "description": spec.get("description", "") or "",
        "target": objectives[0]["target"],
        "window": windows[0].get("duration"),
        "sli": annotations.get("sregraph.io/sli", "availability"),
        "prometheus": {"errors": query("bad"), "good": query("good"), "total": query("total")},
    }
    if "sregraph.io/threshold-ms" in annotations:
        compact["threshold_ms"] = annotations["sregraph.io/threshold-ms"]
    labels = meta.get("labels") or {}
    if labels:
        # OpenSLO allows a list of values per label; a Prometheus label holds one string.
        compact["labels"] = {
            k: ",".join(v) if isinstance(v, list) else str(v) for k, v in dict(labels).items()
        }
    return compact
