"""Service level objectives: SLO file, SLIs from telemetry, error budgets, burn rates, forecast, release gate.

The SLO file is YAML in sregraph's compact form (a `slos:` list) or OpenSLO v1 `kind: SLO` documents (the
subset this module understands: ratio indicators, one objective, one rolling window, Occurrences budgeting);
both load into the same `SLO` model and every problem is a `ConfigError` naming the field.

Everything below the models is plain arithmetic over numbers the caller supplies (burn rates, budgets,
alert pairs, forecast, gate), so the maths can be checked by hand; `evaluate` is the one place that reads
telemetry. Definitions, formulas and thresholds are written up in docs/slo.md.
"""

from __future__ import annotations

import re
import statistics
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, pairwise
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tools.base import ConfigError, Series, Telemetry

SliKind = Literal["availability", "error_rate", "latency", "conversion"]
GateState = Literal["SAFE", "OBSERVE", "DANGER", "FREEZE"]

GATE_ORDER: dict[GateState, int] = {"SAFE": 0, "OBSERVE": 1, "DANGER": 2, "FREEZE": 3}
GATE_EXIT_CODES: dict[GateState, int] = {"SAFE": 0, "OBSERVE": 0, "DANGER": 3, "FREEZE": 4}
"""Exit status of `sregraph release-gate`: deploys go ahead on 0; 2 is reserved for a bad file or store."""

# --------------------------------------------------------------------------- durations

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


# --------------------------------------------------------------------------- multiwindow, multi-burn-rate


@dataclass(frozen=True)
class AlertPair:
    """One multiwindow burn-rate alert: fires when both windows burn faster than `factor(window)`."""

    severity: Literal["page", "ticket"]
    budget_fraction: float
    """Share of the whole window's error budget that burning at the threshold spends in `long_s`."""
    long_s: float
    short_s: float

    def factor(self, slo_window_s: float) -> float:
        """Burn-rate threshold: budget_fraction x SLO window / long window (14.4 for 2% of 30d in 1h)."""
        return round(self.budget_fraction * slo_window_s / self.long_s, 6)

    @property
    def label(self) -> str:
        """Short name such as `1h/5m`."""
        return f"{format_duration(self.long_s)}/{format_duration(self.short_s)}"


ALERT_PAIRS: tuple[AlertPair, ...] = (
    AlertPair("page", 0.02, 3600, 300),  # 14.4x over a 30d window
    AlertPair("page", 0.05, 6 * 3600, 1800),  # 6x
    AlertPair("ticket", 0.10, 86400, 7200),  # 3x
    AlertPair("ticket", 0.10, 3 * 86400, 6 * 3600),  # 1x
)
"""The Google SRE workbook pairs; the factors follow from the budget fractions for any SLO window."""

BURN_WINDOWS_S: tuple[float, ...] = tuple(
    sorted({p.long_s for p in ALERT_PAIRS} | {p.short_s for p in ALERT_PAIRS})
)
"""5m, 30m, 1h, 2h, 6h, 1d, 3d: every window an alert pair reads, and the spread the forecast uses."""
MIN_SLO_WINDOW_S = max(BURN_WINDOWS_S)


# --------------------------------------------------------------------------- the SLO file

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SELECTOR = re.compile(r'^(?:[A-Za-z_:][A-Za-z0-9_:]*)?\s*(?:\{(?:[^{}"]|"(?:[^"\\]|\\.)*")*\})?$')
WINDOW_PLACEHOLDERS = ("{{window}}", "{{.window}}")


class PrometheusQueries(BaseModel):
    """Where the SLI lives in Prometheus: a bad-or-good events counter and a total events counter.

    Each is a counter selector (wrapped as `sum(rate(SELECTOR[window]))`) or a full PromQL expression that
    contains `{{window}}` (Sloth's `{{.window}}` works too) where the range goes.
    """

    model_config = ConfigDict(extra="forbid")

    errors: str | None = None
    """Bad events, e.g. `http_requests_total{service="checkout",code=~"5.."}`."""
    good: str | None = None
    """Good events, e.g. `http_request_duration_seconds_bucket{service="checkout",le="0.3"}`."""
    total: str
    """All events, e.g. `http_requests_total{service="checkout"}`."""

    @field_validator("errors", "good", "total")
    @classmethod
    def _query(cls, value: str | None) -> str | None:
        if value is None:
            return None
        text = " ".join(str(value).split())
        if not text:
            raise ValueError("must not be empty")
        if any(p in text for p in WINDOW_PLACEHOLDERS):
            return text
        if not _SELECTOR.match(text):
            raise ValueError(
                f'expected a counter selector such as http_requests_total{{service="x",code=~"5.."}} or a '
                f"PromQL expression containing {{{{window}}}}; got {text!r}"
            )
        return text

    @model_validator(mode="after")
    def _one_of(self) -> PrometheusQueries:
        if (self.errors is None) == (self.good is None):
            raise ValueError(
                "give exactly one of `errors` (bad events) or `good` (good events), plus `total`"
            )
        return self


class SLO(BaseModel):
    """One objective: a service, an SLI, a target ratio over a rolling window."""

    model_config = ConfigDict(extra="forbid")

    name: str
    """Unique in the file; used in rule labels."""
    service: str
    """The service label the SLI is measured on (`{"service": NAME}` in the telemetry store)."""
    sli: SliKind = "availability"
    """availability (errors plus downtime), error_rate (errors among served requests), latency, conversion."""
    target: float
    """Good/total ratio to meet, strictly between 0 and 1 (0.999 is 99.9%)."""
    window: str = "30d"
    """Rolling compliance window (Prometheus duration, at least 3d)."""
    threshold_ms: float | None = Field(default=None, gt=0)
    """Latency SLI only: a request interval is good when its p95 is at most this."""
    description: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    """Extra labels on every generated rule and alert (team, tier...)."""
    prometheus: PrometheusQueries | None = None
    """Queries for `sregraph slo rules`; an SLO without them is evaluated locally only."""

    @field_validator("name", "service")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"{value!r}: use letters, digits, '-', '_' and '.', starting with a letter or digit"
            )
        return value

    @field_validator("sli", mode="before")
    @classmethod
    def _sli(cls, value: Any) -> Any:
        return value.replace("-", "_").lower() if isinstance(value, str) else value

    @field_validator("target")
    @classmethod
    def _target(cls, value: float) -> float:
        if not 0 < value < 1:
            hint = f" (for {value}% write {value / 100:g})" if 1 < value < 100 else ""
            raise ValueError(
                f"must be a ratio strictly between 0 and 1, e.g. 0.999 for 99.9%; got {value}{hint}"
            )
        return value

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        seconds = parse_duration(value)
        if seconds < MIN_SLO_WINDOW_S:
            raise ValueError(
                f"must be at least {format_duration(MIN_SLO_WINDOW_S)} so every burn-rate window fits in it; "
                f"got {value}"
            )
        return str(value).strip()

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _LABEL.match(key) or key.startswith(("__", "sregraph_")):
                raise ValueError(
                    f"{key!r} is not a usable label name (letters, digits, _; no __ or sregraph_ prefix)"
                )
        return value

    @model_validator(mode="after")
    def _threshold(self) -> SLO:
        if self.sli == "latency" and self.threshold_ms is None:
            raise ValueError("threshold_ms is required when sli is latency")
        if self.sli != "latency" and self.threshold_ms is not None:
            raise ValueError(f"threshold_ms only applies to sli: latency (this SLO's sli is {self.sli})")
        return self

    @property
    def window_s(self) -> float:
        """The compliance window in seconds."""
        return parse_duration(self.window)

    @property
    def error_budget(self) -> float:
        """Allowed bad ratio, 1 - target (rounded so 1 - 0.999 is exactly 0.001)."""
        return round(1.0 - self.target, 12)


class GatePolicy(BaseModel):
    """Thresholds of the release gate (docs/slo.md); the defaults suit a 30-day window."""

    model_config = ConfigDict(extra="forbid")

    observe_budget_below: float = Field(default=0.5, ge=0, le=1)
    """OBSERVE when less than this share of the error budget is left."""
    danger_budget_below: float = Field(default=0.25, ge=0, le=1)
    """DANGER when less than this share is left."""
    danger_exhaustion_within: str = "3d"
    """DANGER when the central forecast spends the rest of the budget within this duration."""

    @field_validator("danger_exhaustion_within")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @model_validator(mode="after")
    def _ordered(self) -> GatePolicy:
        if self.danger_budget_below > self.observe_budget_below:
            raise ValueError("danger_budget_below must not exceed observe_budget_below")
        return self

    @property
    def danger_exhaustion_s(self) -> float:
        """`danger_exhaustion_within` in seconds."""
        return parse_duration(self.danger_exhaustion_within)


class SloFile(BaseModel):
    """The whole SLO file."""

    model_config = ConfigDict(extra="forbid")

    slos: list[SLO] = Field(min_length=1)
    gate: GatePolicy = Field(default_factory=GatePolicy)

    @model_validator(mode="after")
    def _unique(self) -> SloFile:
        seen: set[str] = set()
        for slo in self.slos:
            if slo.name in seen:
                raise ValueError(f"name {slo.name!r} is used by more than one SLO")
            seen.add(slo.name)
        return self

    def services(self) -> list[str]:
        """Services with at least one SLO, in file order."""
        return list(dict.fromkeys(s.service for s in self.slos))

    def for_service(self, service: str) -> list[SLO]:
        """The service's SLOs; NotFound-style ConfigError naming the known services when it has none."""
        found = [s for s in self.slos if s.service == service]
        if not found:
            raise ConfigError(
                f"no SLO for service {service!r}; the file defines: {', '.join(self.services())}"
            )
        return found


# OpenSLO field paths of each compact field, so errors in an OpenSLO document name the field the user wrote.
_OPENSLO_PATHS = {
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


def _loc(loc: Sequence[int | str]) -> str:
    """`slos[1].prometheus.errors` from pydantic's ('slos', 1, 'prometheus', 'errors')."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _problems(exc: ValidationError, data: Any, openslo: bool = False) -> str:
    """One line per pydantic error, each naming the field (and the SLO, by name, where known)."""
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        who = ""
        if len(loc) >= 2 and loc[0] == "slos" and isinstance(loc[1], int) and isinstance(data, Mapping):
            items = data.get("slos")
            item = items[loc[1]] if isinstance(items, list) and loc[1] < len(items) else None
            if isinstance(item, Mapping) and item.get("name"):
                who = f" ({item['name']})"
        field = _loc(loc)
        if openslo:
            field = _OPENSLO_PATHS.get(_loc(loc), _loc(loc)) if loc else "spec"
        lines.append(f"{field or 'file'}{who}: {msg}")
    return "; ".join(lines)


def _openslo_to_compact(doc: Mapping[str, Any], where: str) -> dict[str, Any]:
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


def parse_slo_text(text: str, source: str = "SLO file") -> SloFile:
    """Parse SLO YAML (compact `slos:` form and/or OpenSLO v1 documents); ConfigError naming the field."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not docs:
        raise ConfigError(f"{source}: slos: the file is empty; define at least one SLO under `slos:`")
    compact: dict[str, Any] = {"slos": []}
    openslo: list[tuple[int, str]] = []  # (index in compact["slos"], where) of converted documents
    for number, doc in enumerate(docs, start=1):
        where = f"{source} document {number}" if len(docs) > 1 else source
        if not isinstance(doc, Mapping):
            raise ConfigError(
                f"{where}: expected a mapping with `slos:` or an OpenSLO document; got {type(doc).__name__}"
            )
        api = str(doc.get("apiVersion", ""))
        if api.startswith("openslo/"):
            if api != "openslo/v1":
                raise ConfigError(f"{where}: apiVersion: only openslo/v1 is supported; got {api!r}")
            kind = doc.get("kind")
            if kind in (
                "Service",
                "SLI",
                "AlertPolicy",
                "AlertCondition",
                "AlertNotificationTarget",
                "DataSource",
            ):
                continue  # context documents of an OpenSLO bundle; nothing here reads them
            if kind != "SLO":
                raise ConfigError(f"{where}: kind: expected SLO; got {kind!r}")
            name = (
                (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), Mapping) else None
            )
            label = f"{where} (SLO {name})" if name else where
            openslo.append((len(compact["slos"]), label))
            compact["slos"].append(_openslo_to_compact(doc, label))
            continue
        if "slos" not in doc:
            raise ConfigError(
                f"{where}: slos: missing; expected a `slos:` list (sregraph form) or OpenSLO documents "
                "(apiVersion: openslo/v1, kind: SLO)"
            )
        extra = {k: v for k, v in doc.items() if k not in ("slos", "gate", "apiVersion", "kind")}
        if not isinstance(doc["slos"], list):
            raise ConfigError(f"{where}: slos: must be a list of SLOs")
        compact["slos"].extend(doc["slos"])
        compact.update(extra)  # unknown keys reach the model and are reported by name
        if "gate" in doc:
            compact["gate"] = doc["gate"]
    # Validate OpenSLO documents one by one first, so their errors use OpenSLO field paths.
    for index, where in openslo:
        try:
            SLO.model_validate(compact["slos"][index])
        except ValidationError as exc:
            raise ConfigError(f"{where}: {_problems(exc, compact['slos'][index], openslo=True)}") from exc
    try:
        return SloFile.model_validate(compact)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_problems(exc, compact)}") from exc


def load_slo_file(path: Path | str) -> SloFile:
    """Read and validate an SLO file; ConfigError (naming the field) for anything wrong with it."""
    file = Path(path)
    if not file.exists():
        raise ConfigError(f"SLO file {file} does not exist")
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(f"SLO file {file}: cannot read: {exc}") from exc
    return parse_slo_text(text, str(file))


# --------------------------------------------------------------------------- the maths (pure)


def burn_rate(error_ratio: float, target: float) -> float:
    """How many times faster than sustainable the budget burns: error ratio / (1 - target)."""
    return error_ratio / round(1.0 - target, 12)


def budget_remaining(error_ratio: float, target: float) -> float:
    """Share of the window's error budget left, 1 - error ratio / (1 - target); negative when overspent."""
    return 1.0 - burn_rate(error_ratio, target)


class AlertState(BaseModel):
    """One multiwindow alert pair, evaluated."""

    severity: Literal["page", "ticket"]
    long_window: str
    short_window: str
    factor: float
    long_burn: float | None
    short_burn: float | None
    firing: bool


def evaluate_alerts(burn_rates: Mapping[float, float | None], slo_window_s: float) -> list[AlertState]:
    """Each alert pair fires when the burn rate of both its long and short window exceeds its factor."""
    states = []
    for pair in ALERT_PAIRS:
        factor = pair.factor(slo_window_s)
        long_b, short_b = burn_rates.get(pair.long_s), burn_rates.get(pair.short_s)
        firing = long_b is not None and short_b is not None and long_b > factor and short_b > factor
        states.append(
            AlertState(
                severity=pair.severity,
                long_window=format_duration(pair.long_s),
                short_window=format_duration(pair.short_s),
                factor=factor,
                long_burn=long_b,
                short_burn=short_b,
                firing=firing,
            )
        )
    return states


class Forecast(BaseModel):
    """When the rest of the error budget runs out if the service keeps burning as it has lately.

    Hours from now; None means "not at the current rates" (nothing burning). `earliest_h`/`latest_h` come
    from the fastest and slowest of the burn-rate windows, `hours` from their median.
    """

    hours: float | None
    earliest_h: float | None
    latest_h: float | None
    burn_central: float | None
    burn_low: float | None
    burn_high: float | None
    exhausted: bool = False
    windows_used: int = 0


def forecast_exhaustion(
    remaining: float | None, burn_rates: Iterable[float | None], slo_window_s: float
) -> Forecast:
    """Hours until the budget is spent at the median burn rate, bounded by the fastest and slowest windows.

    At burn rate b the budget drains b / window per unit of time, so `remaining` lasts remaining x window / b.
    """
    rates = sorted(b for b in burn_rates if b is not None)
    if remaining is None or not rates:
        return Forecast(
            hours=None, earliest_h=None, latest_h=None, burn_central=None, burn_low=None, burn_high=None
        )
    central, low, high = statistics.median(rates), rates[0], rates[-1]
    if remaining <= 0:
        return Forecast(
            hours=0.0,
            earliest_h=0.0,
            latest_h=0.0,
            burn_central=central,
            burn_low=low,
            burn_high=high,
            exhausted=True,
            windows_used=len(rates),
        )
    window_h = slo_window_s / 3600.0

    def eta(b: float) -> float | None:
        return remaining * window_h / b if b > 0 else None

    return Forecast(
        hours=eta(central),
        earliest_h=eta(high),
        latest_h=eta(low),
        burn_central=central,
        burn_low=low,
        burn_high=high,
        windows_used=len(rates),
    )


def decide_gate(
    remaining: float | None,
    alerts: Sequence[AlertState],
    forecast: Forecast,
    burn_rates: Iterable[float | None],
    policy: GatePolicy,
) -> tuple[GateState, list[str]]:
    """The release-gate state of one SLO and why; the first matching row of the table in docs/slo.md wins."""
    rates = [b for b in burn_rates if b is not None]
    if remaining is None:
        return "OBSERVE", ["no telemetry in the SLO window; the gate cannot judge"]
    pct = f"{remaining:.0%}"
    freeze = []
    if remaining <= 0:
        freeze.append(f"error budget exhausted ({pct} left)")
    freeze += [_alert_reason(a) for a in alerts if a.firing and a.severity == "page"]
    if freeze:
        return "FREEZE", freeze
    danger = [_alert_reason(a) for a in alerts if a.firing and a.severity == "ticket"]
    if remaining < policy.danger_budget_below:
        danger.append(f"only {pct} of the error budget left (< {policy.danger_budget_below:.0%})")
    if forecast.hours is not None and forecast.hours * 3600 < policy.danger_exhaustion_s:
        danger.append(
            f"budget forecast to run out in {forecast.hours:.1f}h (< {policy.danger_exhaustion_within}; "
            f"range {_hours(forecast.earliest_h)} to {_hours(forecast.latest_h)})"
        )
    if danger:
        return "DANGER", danger
    observe = []
    if not rates:
        observe.append(f"no telemetry in the last {format_duration(MIN_SLO_WINDOW_S)}; burn rates unknown")
    if remaining < policy.observe_budget_below:
        observe.append(f"{pct} of the error budget left (< {policy.observe_budget_below:.0%})")
    if rates and max(rates) > 1:
        observe.append(
            f"burning {max(rates):.1f}x the sustainable rate in some window, not confirmed by an alert pair"
        )
    if observe:
        return "OBSERVE", observe
    return "SAFE", [f"{pct} of the error budget left; no window burning faster than sustainable"]


def _alert_reason(alert: AlertState) -> str:
    return (
        f"{alert.severity} alert: burn {alert.long_burn:.1f}x over {alert.long_window} and "
        f"{alert.short_burn:.1f}x over {alert.short_window} (> {alert.factor:g}x)"
    )


def _hours(h: float | None) -> str:
    return "never" if h is None else f"{h:.1f}h"


# --------------------------------------------------------------------------- SLIs from telemetry

GAP_TICKS = 4.0
"""A silence longer than this many sampling intervals is downtime (availability SLI only)."""
_RATE_LOOKBACK = 10
"""Samples averaged to estimate the request rate a silent service would have served."""


@dataclass(frozen=True)
class WindowCounts:
    """Bad and total events in one window, and how much of the window the data spans."""

    window_s: float
    bad: float
    total: float
    coverage: float

    @property
    def error_ratio(self) -> float | None:
        """bad / total, None without events."""
        return self.bad / self.total if self.total > 0 else None


@dataclass(frozen=True)
class Downtime:
    """A stretch with no telemetry from a service that was serving, counted as failed requests at `rate`/s."""

    start: float
    end: float
    rate: float


class Events:
    """Bad and total events of one SLI in time order, with prefix sums so each window costs a bisection."""

    def __init__(
        self, samples: Iterable[tuple[float, float, float]], downtime: Iterable[Downtime] = ()
    ) -> None:
        """Index `samples`, (time, bad, total) events counted over the interval ending at `time`."""
        ordered = sorted(samples)
        self._t = [s[0] for s in ordered]
        self._bad = list(accumulate((s[1] for s in ordered), initial=0.0))
        self._total = list(accumulate((s[2] for s in ordered), initial=0.0))
        self.downtime = list(downtime)
        edges = self._t + [d.start for d in self.downtime] + [d.end for d in self.downtime]
        self.first = min(edges) if edges else None
        self.last = max(edges) if edges else None

    def window(self, end: float, length: float) -> WindowCounts:
        """Events in (end - length, end]."""
        start = end - length
        i, j = bisect_right(self._t, start), bisect_right(self._t, end)
        bad, total = self._bad[j] - self._bad[i], self._total[j] - self._total[i]
        for d in self.downtime:
            overlap = max(0.0, min(end, d.end) - max(start, d.start))
            bad += overlap * d.rate
            total += overlap * d.rate
        coverage = 0.0
        if self.first is not None and self.last is not None and self.first < end and self.last > start:
            coverage = (min(end, self.last) - max(start, self.first)) / length
        return WindowCounts(window_s=length, bad=bad, total=total, coverage=min(1.0, max(0.0, coverage)))


_SLI_METRIC: dict[str, str] = {
    "availability": "error_ratio",
    "error_rate": "error_ratio",
    "latency": "latency_p95_ms",
    "conversion": "conversion_ratio",
}
"""The store metric each SLI kind reads next to `request_rate`."""


class MetricCache:
    """Each metric read once, for every service, over the evaluation range; SLOs then share the reads."""

    def __init__(self, telemetry: Telemetry, start: float, end: float) -> None:
        """Read from `telemetry` over [start, end], lazily."""
        self.telemetry, self.start, self.end = telemetry, start, end
        self._cache: dict[str, list[Series]] = {}

    def series(self, metric: str, service: str | None = None) -> list[Series]:
        """Series of `metric` (of one service, or all)."""
        if metric not in self._cache:
            self._cache[metric] = self.telemetry.query_range(metric, None, self.start, self.end)
        found = self._cache[metric]
        return found if service is None else [s for s in found if s.labels.get("service") == service]

    def freshest(self) -> float | None:
        """The newest request_rate sample of any service: how far the telemetry pipeline itself reaches."""
        ends = [s.points[-1][0] for s in self.series("request_rate") if s.points]
        return max(ends) if ends else None


def _spacing(times: Sequence[float]) -> float:
    diffs = [b - a for a, b in pairwise(times) if b > a]
    return statistics.median(diffs) if diffs else 1.0


def sli_events(slo: SLO, queries: MetricCache) -> Events:
    """Bad and total requests of one SLO from the store's per-interval rates (definitions in docs/slo.md)."""
    metric = _SLI_METRIC[slo.sli]
    by_labels = {tuple(sorted(s.labels.items())): dict(s.points) for s in queries.series(metric, slo.service)}
    samples: list[tuple[float, float, float]] = []
    downtime: list[Downtime] = []
    tails: list[tuple[float, float, float]] = []  # (last time, spacing, recent rate) of each series
    for rate_series in queries.series("request_rate", slo.service):
        points = rate_series.points
        if not points:
            continue
        values = by_labels.get(tuple(sorted(rate_series.labels.items())), {})
        times = [t for t, _ in points]
        spacing = _spacing(times)
        for k, (t, rate) in enumerate(points):
            dt = t - points[k - 1][0] if k else spacing
            if dt > GAP_TICKS * spacing:
                if slo.sli == "availability":
                    downtime.append(Downtime(points[k - 1][0], t - spacing, _recent_rate(points, k)))
                dt = spacing
            x = values.get(t)
            if x is None:
                continue
            total = max(0.0, rate) * dt
            samples.append((t, total * _bad_share(slo, x), total))
        tails.append((points[-1][0], spacing, _recent_rate(points, len(points))))
    if slo.sli == "availability" and tails:
        # Silence at the end is downtime only while other services still report: a stopped telemetry
        # pipeline (the whole app down, or an old store) is unknown, not an outage.
        last = max(t for t, _, _ in tails)
        spacing = min(s for t, s, _ in tails if t == last)
        freshest = queries.freshest()
        if freshest is not None and freshest - last > GAP_TICKS * spacing:
            rate = sum(r for t, s, r in tails if last - t <= GAP_TICKS * s)
            downtime.append(Downtime(last, freshest, rate))
    return Events(samples, downtime)


def _recent_rate(points: Sequence[tuple[float, float]], before: int) -> float:
    recent = [max(0.0, v) for _, v in points[max(0, before - _RATE_LOOKBACK) : before]]
    return statistics.fmean(recent) if recent else 0.0


def _bad_share(slo: SLO, x: float) -> float:
    """Share of an interval's requests that were bad, given the SLI metric's value `x` for the interval."""
    if slo.sli in ("availability", "error_rate"):
        return min(1.0, max(0.0, x))
    if slo.sli == "latency":
        assert slo.threshold_ms is not None
        return 1.0 if x > slo.threshold_ms else 0.0
    return 1.0 - min(1.0, max(0.0, x))  # conversion: the ratio is the good share


# --------------------------------------------------------------------------- evaluation


class BurnRate(BaseModel):
    """Burn rate of one window."""

    window: str
    burn_rate: float | None
    error_ratio: float | None
    coverage: float


class SloStatus(BaseModel):
    """Everything `slo status` and the release gate know about one SLO at one instant."""

    name: str
    service: str
    sli: SliKind
    target: float
    window: str
    evaluated_at: float
    error_ratio: float | None
    """Bad/total over the whole compliance window (over the data there is, see coverage)."""
    budget_remaining: float | None
    """Share of the window's budget left: 1 - error_ratio / (1 - target); negative once overspent."""
    budget_minutes: float
    """The budget as minutes of total outage per window: (1 - target) x window."""
    coverage: float
    """Share of the compliance window the telemetry spans."""
    burn_rates: list[BurnRate]
    alerts: list[AlertState]
    forecast: Forecast
    state: GateState
    reasons: list[str]


def evaluate_slo(slo: SLO, queries: MetricCache, now: float, policy: GatePolicy) -> SloStatus:
    """Budget, burn rates, alert pairs, forecast and gate state of one SLO at `now`."""
    events = sli_events(slo, queries)
    period = events.window(now, slo.window_s)
    by_window: dict[float, WindowCounts] = {w: events.window(now, w) for w in BURN_WINDOWS_S}
    burns: dict[float, float | None] = {
        w: (None if c.error_ratio is None else burn_rate(c.error_ratio, slo.target))
        for w, c in by_window.items()
    }
    remaining = None if period.error_ratio is None else budget_remaining(period.error_ratio, slo.target)
    alerts = evaluate_alerts(burns, slo.window_s)
    forecast = forecast_exhaustion(remaining, burns.values(), slo.window_s)
    state, reasons = decide_gate(remaining, alerts, forecast, burns.values(), policy)
    return SloStatus(
        name=slo.name,
        service=slo.service,
        sli=slo.sli,
        target=slo.target,
        window=slo.window,
        evaluated_at=now,
        error_ratio=period.error_ratio,
        budget_remaining=remaining,
        budget_minutes=slo.error_budget * slo.window_s / 60.0,
        coverage=period.coverage,
        burn_rates=[
            BurnRate(
                window=format_duration(w), burn_rate=burns[w], error_ratio=c.error_ratio, coverage=c.coverage
            )
            for w, c in by_window.items()
        ],
        alerts=alerts,
        forecast=forecast,
        state=state,
        reasons=reasons,
    )


def evaluate(
    telemetry: Telemetry, slo_file: SloFile, now: float, service: str | None = None
) -> list[SloStatus]:
    """Status of every SLO in the file (or of one service's SLOs) at `now`."""
    slos = slo_file.for_service(service) if service is not None else slo_file.slos
    horizon = max(max(s.window_s for s in slos), MIN_SLO_WINDOW_S)
    queries = MetricCache(telemetry, now - horizon, now)
    return [evaluate_slo(slo, queries, now, slo_file.gate) for slo in slos]


class GateDecision(BaseModel):
    """The release gate for one service: the worst state of its SLOs."""

    service: str
    state: GateState
    exit_code: int
    reasons: list[str]
    slos: list[SloStatus]


def combine_gate(service: str, statuses: Sequence[SloStatus]) -> GateDecision:
    """The worst SLO state wins; reasons come from the SLOs in that state."""
    state: GateState = max((s.state for s in statuses), key=GATE_ORDER.__getitem__, default="OBSERVE")
    reasons = [f"{s.name}: {r}" for s in statuses if s.state == state for r in s.reasons]
    return GateDecision(
        service=service, state=state, exit_code=GATE_EXIT_CODES[state], reasons=reasons, slos=list(statuses)
    )


def release_gate(telemetry: Telemetry, slo_file: SloFile, service: str, now: float) -> GateDecision:
    """Should `service` deploy now? SAFE/OBSERVE: yes; DANGER/FREEZE: no (docs/slo.md has the table)."""
    return combine_gate(service, evaluate(telemetry, slo_file, now, service=service))
