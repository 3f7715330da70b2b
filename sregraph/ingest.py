"""What applications send to the API's ingestion endpoints (`POST /api/v1/ingest/{logs,metrics,spans,events,
deploys}`): the models that validate a batch, and the write into the telemetry store the agents read.

Deploy markers become suspects of the analyst beside the GitOps history (tools/changes.py); external events
are shown on the incidents they may explain and listed by `GET /api/v1/ingest/events`, never scored.

A batch is taken whole or not at all: one bad record (a missing field, a non-finite value, a time more than
`MAX_FUTURE_S` ahead or `MAX_AGE_S` behind, an oversized text) refuses the batch with a 422 naming the record,
and nothing of it is stored.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tools.base import DeployMarker, ExternalEvent, LogRecord, Span
from tools.changes import marker_store

MAX_RECORDS = 5000
"""Records in one batch."""
MAX_BODY = 4 * 1024 * 1024
"""Bytes of one ingestion request."""
MAX_FUTURE_S = 300.0
"""A record may be stamped this far ahead of the server's clock (clock skew), no further."""
MAX_AGE_S = 7 * 86400.0
"""Nor older than this: the store keeps recent telemetry for diagnosis, not history."""

Name = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:/\-]+$")


def _check_ts(ts: float) -> float:
    now = time.time()
    if not math.isfinite(ts) or ts > now + MAX_FUTURE_S or ts < now - MAX_AGE_S:
        raise ValueError(
            f"timestamp {ts} is not within {MAX_AGE_S / 86400:.0f} days before and {MAX_FUTURE_S:.0f} s after now"
        )
    return ts


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LogIn(_Strict):
    """One log record, as POST /api/v1/ingest/logs takes it."""

    ts: float
    service: str = Name
    level: Literal["debug", "info", "warning", "warn", "error", "critical", "fatal"] = "info"
    message: str = Field(max_length=8192)
    attrs: dict[str, str | int | float | bool | None] = Field(default_factory=dict, max_length=50)

    _ts = field_validator("ts")(_check_ts)


class MetricIn(_Strict):
    """One metric point, as POST /api/v1/ingest/metrics takes it."""

    name: str = Name
    labels: dict[str, str] = Field(default_factory=dict, max_length=20)
    value: float
    ts: float

    _ts = field_validator("ts")(_check_ts)

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("labels")
    @classmethod
    def _service_label(cls, labels: dict[str, str]) -> dict[str, str]:
        if not labels.get("service"):
            raise ValueError("needs a `service` label (the agents read metrics per service)")
        return labels


class SpanIn(_Strict):
    """One trace span, as POST /api/v1/ingest/spans takes it."""

    trace_id: str = Field(min_length=1, max_length=64)
    span_id: str = Field(min_length=1, max_length=64)
    parent_id: str | None = Field(None, max_length=64)
    service: str = Name
    name: str = Field(min_length=1, max_length=200)
    start: float
    duration_ms: float = Field(ge=0, le=86_400_000)
    status: Literal["ok", "error"] = "ok"
    attrs: dict[str, str | int | float | bool | None] = Field(default_factory=dict, max_length=50)

    _start = field_validator("start")(_check_ts)


class DeployIn(_Strict):
    """One deploy marker, as POST /api/v1/ingest/deploys takes it."""

    ts: float
    service: str = Name
    version: str = Field(min_length=1, max_length=200)
    revision: str = Field("", max_length=100, pattern=r"^[A-Za-z0-9_.:@/\-]*$")
    """The commit or image digest the deploy ran: a marker naming a commit of the GitOps repo is that commit."""
    author: str = Field("", max_length=200)
    description: str = Field("", max_length=2000)

    _ts = field_validator("ts")(_check_ts)

    def marker(self) -> DeployMarker:
        """The stored marker, its id a digest of its content (a marker sent twice is stored once)."""
        content = json.dumps(self.model_dump(), sort_keys=True)
        return DeployMarker(id="dm-" + hashlib.sha256(content.encode()).hexdigest()[:12], **self.model_dump())


class EventIn(_Strict):
    """One change event, as POST /api/v1/ingest/events takes it."""

    ts: float
    kind: str = Name
    """What happened, in the sender's words: `feature_flag`, `config_push`, `scaling`, …"""
    title: str = Field(min_length=1, max_length=500)
    service: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:/\-]+$")
    """The service it concerns; omitted, it concerns every service."""
    attrs: dict[str, str | int | float | bool | None] = Field(default_factory=dict, max_length=50)

    _ts = field_validator("ts")(_check_ts)


class LogBatch(_Strict):
    """A batch of log records, accepted or refused whole."""

    records: list[LogIn] = Field(min_length=1, max_length=MAX_RECORDS)

    def __len__(self) -> int:
        return len(self.records)


class MetricBatch(_Strict):
    """A batch of metric points, accepted or refused whole."""

    points: list[MetricIn] = Field(min_length=1, max_length=MAX_RECORDS)

    def __len__(self) -> int:
        return len(self.points)


class SpanBatch(_Strict):
    """A batch of spans, accepted or refused whole."""

    spans: list[SpanIn] = Field(min_length=1, max_length=MAX_RECORDS)

    def __len__(self) -> int:
        return len(self.spans)


class DeployBatch(_Strict):
    """A batch of deploy markers, accepted or refused whole."""

    deploys: list[DeployIn] = Field(min_length=1, max_length=MAX_RECORDS)

    def __len__(self) -> int:
        return len(self.deploys)


class EventBatch(_Strict):
    """A batch of change events, accepted or refused whole."""

    events: list[EventIn] = Field(min_length=1, max_length=MAX_RECORDS)

    def __len__(self) -> int:
        return len(self.events)


Batch = LogBatch | MetricBatch | SpanBatch | DeployBatch | EventBatch


def store(telemetry: Any, batch: Batch) -> int:
    """Write a validated batch into the telemetry store; returns how many records it stored. LookupError if the store
    cannot take this kind (metrics read from Prometheus are Prometheus's: push them there)."""
    # With Prometheus for metrics, logs and spans live in the local store beside it (tools.telemetry.SplitTelemetry).
    local = getattr(telemetry, "logs_and_spans", telemetry)
    if isinstance(batch, (DeployBatch, EventBatch)):
        markers = marker_store(telemetry)
        if markers is None:
            raise LookupError(
                f"this worker's telemetry backend ({type(telemetry).__name__}) keeps no {type(batch).__name__}es"
            )
        if isinstance(batch, DeployBatch):
            # a marker sent again is not stored again
            return markers.write_deploys([d.marker() for d in batch.deploys])
        markers.write_events([ExternalEvent(**e.model_dump()) for e in batch.events])
        return len(batch)
    if isinstance(batch, LogBatch):
        writer = getattr(local, "write_logs", None)
        rows: list[Any] = [LogRecord(**r.model_dump()) for r in batch.records]
    elif isinstance(batch, MetricBatch):
        writer = getattr(telemetry, "write_metrics", None)
        rows = [(p.name, p.labels, p.value, p.ts) for p in batch.points]
    else:
        writer = getattr(local, "write_spans", None)
        rows = [Span(**s.model_dump()) for s in batch.spans]
    if writer is None:
        raise LookupError(
            f"this worker's telemetry backend ({type(telemetry).__name__}) does not take {type(batch).__name__}es"
        )
    writer(rows)
    return len(rows)
