"""Test doubles shared by the test files: a manual clock; a runtime, a health checker, telemetry and a config
history over fixed answers; a deployer that applies the config repository's version; and the scripted chat model
(it lives in tests/fakes/chat.py, beside the fake API servers).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Self

from tests.fakes.chat import ScriptedChatModel, answer, say, tool_call
from tools.base import Change, GitOps, HealthResult, LogRecord, NotFound, Series, ServiceStatus, Span

__all__ = [
    "FakeGitOps",
    "FakeHealth",
    "FakeRuntime",
    "FakeTelemetry",
    "GraphDeployer",
    "ManualClock",
    "ScriptedChatModel",
    "answer",
    "say",
    "tool_call",
]


class ManualClock:
    """A clock that moves only when slept on or set: `t` is now; every sleep is kept in `slept`."""

    def __init__(self, now: float = 1000.0) -> None:
        self.t = now
        self.slept: list[float] = []

    def now(self) -> float:
        """The current manual time."""
        return self.t

    def sleep(self, seconds: float) -> None:
        """Record the sleep and move time forward by it, at once."""
        self.slept.append(seconds)
        self.t += seconds


class FakeRuntime:
    """A runtime over a dict of statuses (services in the order given); a mutating call fails the test.

    Subclass it to script a mutation (a restart that counts, a deploy that bumps the version).
    """

    def __init__(self, statuses: dict[str, ServiceStatus]) -> None:
        self.statuses = statuses

    @classmethod
    def up(cls, services: Iterable[str], down: Iterable[str] = (), **fields: Any) -> Self:
        """Every service running except those `down` (killed: exit code -9); `fields` go into every status."""
        stopped = set(down)
        return cls(
            {
                s: ServiceStatus(
                    service=s, running=s not in stopped, exit_code=-9 if s in stopped else None, **fields
                )
                for s in services
            }
        )

    def services(self) -> list[str]:
        """The services, in the order given."""
        return list(self.statuses)

    def status(self, service: str) -> ServiceStatus:
        """The service's status; NotFound for a service the runtime does not run."""
        if service not in self.statuses:
            raise NotFound(f"service {service!r}")
        return self.statuses[service]

    def _mutation(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a read-only tool tried to change the runtime")

    start = stop = restart = scale = _mutation

    def logs(self, service: str, tail: int = 100) -> list[str]:
        """No log lines."""
        return []


class FakeHealth:
    """Health checks that fail for the services in `failing` (connection refused) and pass for the rest."""

    def __init__(self, failing: Iterable[str] = ()) -> None:
        self.failing = set(failing)

    def check(self, service: str) -> HealthResult:
        """The fixed answer for `service`."""
        failed = service in self.failing
        return HealthResult(service=service, ok=not failed, detail="connection refused" if failed else "")


class GraphDeployer:
    """Applies the merged config: restarts the service with the version now on the deploy branch."""

    def __init__(self, runtime: FakeRuntime, gitops: GitOps) -> None:
        self.runtime, self.gitops = runtime, gitops
        self.applied: list[str] = []

    def apply(self, service: str) -> ServiceStatus:
        """Count a restart of `service` and set its version from the config repository."""
        status = self.runtime.status(service)
        status.restarts += 1
        status.version = str(self.gitops.config(service)["version"])
        self.applied.append(service)
        return status


class FakeTelemetry:
    """Telemetry over fixed lists; records the queries it answered."""

    def __init__(
        self,
        series: list[Series] | None = None,
        logs: list[LogRecord] | None = None,
        spans: list[Span] | None = None,
        fail: Exception | None = None,
    ) -> None:
        self.series, self.logs, self.span_list, self.fail = series or [], logs or [], spans or [], fail
        self.queries: list[tuple[Any, ...]] = []

    def query_range(self, name: str, labels: dict[str, str] | None, start: float, end: float) -> list[Series]:
        if self.fail:
            raise self.fail
        self.queries.append((name, labels, start, end))
        return [
            s.model_copy(update={"points": [p for p in s.points if start <= p[0] <= end]})
            for s in self.series
            if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items())
        ]

    def search_logs(
        self,
        service: str | None,
        start: float,
        end: float,
        query: str | None = None,
        level: str | None = None,
        limit: int = 500,
    ) -> list[LogRecord]:
        self.queries.append(("logs", service, start, end, query))
        return [
            r
            for r in self.logs
            if (service is None or r.service == service)
            and start <= r.ts <= end
            and (query is None or query.lower() in r.message.lower())
            and (level is None or r.level == level)
        ][:limit]

    def spans(self, service: str | None, start: float, end: float, limit: int = 2000) -> list[Span]:
        return [
            s for s in self.span_list if (service is None or s.service == service) and start <= s.start <= end
        ]

    def metric_names(self) -> list[str]:
        return sorted({s.name for s in self.series})


class FakeGitOps:
    """GitOps history only; proposing or merging fails the test."""

    def __init__(self, changes: list[Change]) -> None:
        self.changes = changes

    def config(self, service: str) -> dict[str, Any]:
        return {}

    def history(self, since: float | None = None, service: str | None = None) -> list[Change]:
        return [
            c
            for c in sorted(self.changes, key=lambda c: -c.at)
            if (since is None or c.at >= since) and (service is None or service in c.services)
        ]

    def _mutation(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a read-only tool tried to change the config repository")

    propose = merge = _mutation

    def rollback_config(self, service: str, before: float | str) -> dict[str, Any]:
        return {}

    def pull_requests(self, state: str = "all") -> list[Any]:
        return []
