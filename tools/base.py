"""Contracts every tool backend implements, the data they exchange, and the error tree.

Error tree (all raised by tools, never swallowed silently)::

    SregraphError
    ├── ToolError            a backend failed (I/O, process, git, HTTP)
    │   └── TransientError   worth retrying (timeouts, 5xx, lock contention)
    ├── NotFound             the named service, issue, PR or change does not exist
    ├── Refused              the request is outside what the backend may touch
    └── ConfigError          bad configuration or bad input file (names the field)

Read-only interfaces (Telemetry, and the read parts of the others) are what the analyst's tools expose to
a model; mutating calls (restart, propose, merge, comment...) are reached only through the engineer's
policy gate.
"""

from __future__ import annotations

import time
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field


class SregraphError(Exception):
    """Base of every error sregraph raises on purpose."""


class ToolError(SregraphError):
    """A backend failed."""


class TransientError(ToolError):
    """A backend failed in a way that a retry may fix."""


class NotFound(SregraphError):
    """The named object does not exist."""


class Refused(SregraphError):
    """The request is outside what this backend may touch."""


class ConfigError(SregraphError):
    """Bad configuration or input; the message names the field."""


# --------------------------------------------------------------------------- result envelope


class ToolResult(BaseModel):
    """What a tool hands to an agent: a status, never a bare exception."""

    status: Literal["success", "error", "no_data", "approval_required"]
    data: Any = None
    error: str | None = None

    @classmethod
    def ok(cls, data: Any) -> ToolResult:
        """Success, or no_data when the payload is empty."""
        empty = data is None or (hasattr(data, "__len__") and len(data) == 0)
        return cls(status="no_data" if empty else "success", data=data)

    @classmethod
    def fail(cls, error: str) -> ToolResult:
        """An error the caller can read and act on."""
        return cls(status="error", error=error)


# --------------------------------------------------------------------------- telemetry


class Series(BaseModel):
    """One metric series: a name, its labels and (timestamp, value) points in time order."""

    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    points: list[tuple[float, float]] = Field(default_factory=list)


class LogRecord(BaseModel):
    """One structured log line."""

    ts: float
    service: str
    level: str = "info"
    message: str
    attrs: dict[str, Any] = Field(default_factory=dict)


class Span(BaseModel):
    """One trace span."""

    trace_id: str
    span_id: str
    parent_id: str | None = None
    service: str
    name: str
    start: float
    duration_ms: float
    status: Literal["ok", "error"] = "ok"
    attrs: dict[str, Any] = Field(default_factory=dict)


@runtime_checkable
class Telemetry(Protocol):
    """Metrics, logs and traces, read side."""

    def query_range(self, name: str, labels: dict[str, str] | None, start: float, end: float) -> list[Series]:
        """Series named `name` whose labels include `labels`, restricted to [start, end]."""
        ...

    def search_logs(
        self,
        service: str | None,
        start: float,
        end: float,
        query: str | None = None,
        level: str | None = None,
        limit: int = 500,
    ) -> list[LogRecord]:
        """Log records in [start, end], optionally filtered by service, substring and level."""
        ...

    def spans(self, service: str | None, start: float, end: float, limit: int = 2000) -> list[Span]:
        """Spans that started in [start, end], optionally for one service."""
        ...

    def metric_names(self) -> list[str]:
        """Every metric name the store holds."""
        ...


# --------------------------------------------------------------------------- runtime


class ServiceStatus(BaseModel):
    """What the runtime knows about one service."""

    service: str
    running: bool
    replicas: int = 1
    pid: int | None = None
    restarts: int = 0
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: float | None = None
    memory_mb: float | None = None
    version: str | None = None


@runtime_checkable
class Runtime(Protocol):
    """Where services run: local processes now, containers later."""

    def services(self) -> list[str]:
        """Names of the services this runtime manages."""
        ...

    def status(self, service: str) -> ServiceStatus:
        """Current state of one service; NotFound for an unknown one."""
        ...

    def start(self, service: str) -> ServiceStatus:
        """Start a stopped service."""
        ...

    def stop(self, service: str) -> ServiceStatus:
        """Stop a service."""
        ...

    def restart(self, service: str) -> ServiceStatus:
        """Stop then start; the restart counter goes up by one."""
        ...

    def scale(self, service: str, replicas: int) -> ServiceStatus:
        """Run `replicas` copies of a service."""
        ...

    def logs(self, service: str, tail: int = 100) -> list[str]:
        """Last `tail` lines the service wrote."""
        ...


# --------------------------------------------------------------------------- incident surface


class Comment(BaseModel):
    """A comment on an incident issue."""

    id: int
    author: str
    body: str
    created_at: float


class Issue(BaseModel):
    """An incident as the surface shows it."""

    id: int
    title: str
    body: str
    state: Literal["open", "closed"] = "open"
    labels: list[str] = Field(default_factory=list)
    fingerprint: str | None = None
    url: str = ""
    comments: list[Comment] = Field(default_factory=list)
    created_at: float = 0.0


@runtime_checkable
class IncidentSurface(Protocol):
    """Where humans meet the agents: a local SQLite tracker now, GitHub issues later."""

    def open_issue(self, title: str, body: str, labels: list[str], fingerprint: str) -> tuple[Issue, bool]:
        """Open an issue, or return the open one with this fingerprint; the bool says whether it is new."""
        ...

    def find_open(self, fingerprint: str) -> Issue | None:
        """The open issue with this fingerprint, if any."""
        ...

    def get(self, issue_id: int) -> Issue:
        """One issue with its comments; NotFound if missing."""
        ...

    def list_issues(self, state: Literal["open", "closed", "all"] = "open") -> list[Issue]:
        """Issues in a state, newest first."""
        ...

    def comment(self, issue_id: int, body: str, key: str | None = None) -> Comment:
        """Add a comment; a repeated `key` returns the first comment instead of adding another."""
        ...

    def set_labels(self, issue_id: int, add: list[str], remove: list[str] | None = None) -> Issue:
        """Add and remove labels."""
        ...

    def close(self, issue_id: int) -> Issue:
        """Close the issue."""
        ...


# --------------------------------------------------------------------------- GitOps


class Change(BaseModel):
    """One commit on the deploy branch of the config repository."""

    sha: str
    at: float
    author: str
    message: str
    services: list[str] = Field(default_factory=list)
    kind: Literal["deploy", "config", "rollback", "other"] = "other"
    ours: bool = False
    """Made by sregraph itself: its signature verified, or the sha is in its ledger (never the author's name)."""


class DeployMarker(BaseModel):
    """A deploy reported by an application or its pipeline (`POST /api/v1/ingest/deploys`), not made through
    the GitOps repository: the analyst suspects it like a deploy commit, but nothing here can roll it back."""

    id: str
    """`dm-` and 12 hex digits of the marker's content: the same marker sent twice is stored once."""
    ts: float
    service: str
    version: str
    revision: str = ""
    """The commit or image the deploy ran, if the sender said."""
    author: str = ""
    description: str = ""

    def as_change(self) -> Change:
        """The marker as the analyst reads changes (never `ours`: an application cannot vouch for itself)."""
        said = f": {self.description}" if self.description else ""
        revision = f", revision {self.revision}" if self.revision else ""
        return Change(
            sha=self.id,
            at=self.ts,
            author=self.author or "deploy marker",
            kind="deploy",
            services=[self.service],
            message=f"Deploy {self.service} {self.version} (deploy marker{revision}){said}",
        )


class ExternalEvent(BaseModel):
    """Something another system did (a feature flag flipped, a config pushed, a fleet scaled), reported
    through `POST /api/v1/ingest/events`: shown beside the incidents it may explain, never scored."""

    ts: float
    kind: str
    title: str
    service: str | None = None
    """None: it concerns every service."""
    attrs: dict[str, Any] = Field(default_factory=dict)


class PullRequest(BaseModel):
    """A proposed change to the config repository."""

    id: int
    branch: str
    title: str
    body: str
    state: Literal["open", "merged", "closed"] = "open"
    head_sha: str
    merge_sha: str | None = None
    service: str
    key: str | None = None
    url: str = ""


@runtime_checkable
class GitOps(Protocol):
    """The deploy configuration as a git repository; merged config is what runs."""

    def config(self, service: str) -> dict[str, Any]:
        """The service's config on the deploy branch."""
        ...

    def history(self, since: float | None = None, service: str | None = None) -> list[Change]:
        """Commits on the deploy branch, newest first."""
        ...

    def propose(
        self, service: str, new_config: dict[str, Any], title: str, body: str, key: str | None = None
    ) -> PullRequest:
        """Branch + commit + pull request setting the service's config; a repeated key returns the first PR."""
        ...

    def merge(self, pr_id: int) -> PullRequest:
        """Squash-merge a pull request onto the deploy branch."""
        ...

    def pull_requests(self, state: Literal["open", "merged", "closed", "all"] = "all") -> list[PullRequest]:
        """Pull requests in a state."""
        ...

    def rollback_config(self, service: str, before: float | str) -> dict[str, Any]:
        """The service's config as it was before a change (a sha) or a time."""
        ...


# --------------------------------------------------------------------------- notifier


@runtime_checkable
class Notifier(Protocol):
    """Tells humans something happened."""

    def notify(self, incident_id: str, event: str, text: str) -> None:
        """Deliver one notification."""
        ...


# --------------------------------------------------------------------------- health, deploys, clock


class HealthResult(BaseModel):
    """One health probe."""

    service: str
    ok: bool
    latency_ms: float | None = None
    detail: str = ""


@runtime_checkable
class HealthChecker(Protocol):
    """Active health probes (HTTP GET /health on each service)."""

    def check(self, service: str) -> HealthResult:
        """Probe one service, with a timeout; never raises for an unreachable service."""
        ...


@runtime_checkable
class Deployer(Protocol):
    """Makes what runs match the merged config (the GitOps apply step)."""

    def apply(self, service: str) -> ServiceStatus:
        """Restart `service` with the config now on the deploy branch."""
        ...


@runtime_checkable
class Clock(Protocol):
    """Injectable time, so replays and tests never depend on the wall clock."""

    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def sleep(self, seconds: float) -> None:
        """Wait on real time."""
        time.sleep(seconds)
