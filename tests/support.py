"""Test doubles shared by the test files: a manual clock, a runtime and a health checker over fixed answers,
and the scripted chat model (it lives in tests/fakes/chat.py, beside the fake API servers).

A test that needs something special subclasses these (a runtime that counts restarts, a clock whose time
stands still) rather than writing its own from scratch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Self

from tests.fakes.chat import ScriptedChatModel, answer, say, tool_call
from tools.base import HealthResult, NotFound, ServiceStatus

__all__ = ["FakeHealth", "FakeRuntime", "ManualClock", "ScriptedChatModel", "answer", "say", "tool_call"]


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
