"""The SLO file as typed models: each SLO (service, SLI, target, window, Prometheus queries) and the gate's
thresholds. Reading the YAML is `tools.slo.loading`."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tools.base import ConfigError
from tools.slo.budget import MIN_SLO_WINDOW_S
from tools.slo.durations import format_duration, parse_duration

SliKind = Literal["availability", "error_rate", "latency", "conversion"]

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
