"""Everything the agents can reach, bundled once per process and handed to the graph as its context."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tools.base import (
    Clock,
    Deployer,
    GitOps,
    HealthChecker,
    IncidentSurface,
    Notifier,
    Runtime,
    SystemClock,
    Telemetry,
)
from tools.changes import ChangeFeed
from tools.ledger import ActionLedger

if TYPE_CHECKING:
    from memory.store import PostMortemStore


@dataclass
class Toolbox:
    """The backends one sregraph process talks to."""

    telemetry: Telemetry
    runtime: Runtime
    incidents: IncidentSurface
    gitops: GitOps
    notifier: Notifier
    health: HealthChecker
    deployer: Deployer
    ledger: ActionLedger
    topology: dict[str, list[str]]
    """service -> the services it calls."""
    memory: PostMortemStore | None = None
    """A memory.store.PostMortemStore, or None to run without long-term memory."""
    clock: Clock = field(default_factory=SystemClock)
    on_close: list[Callable[[], None]] = field(default_factory=list)

    @property
    def services(self) -> list[str]:
        """Every service the runtime manages."""
        return sorted(self.runtime.services())

    @property
    def changes(self) -> ChangeFeed:
        """Recent changes the analyst suspects: the GitOps history and the ingested deploy markers."""
        return ChangeFeed(self.gitops, self.telemetry)

    def callers_of(self, service: str) -> list[str]:
        """Services that call `service` directly."""
        return sorted(s for s, deps in self.topology.items() if service in deps)

    def downstream_of(self, service: str) -> set[str]:
        """Every service `service` depends on, directly or not."""
        seen: set[str] = set()
        stack = list(self.topology.get(service, []))
        while stack:
            dep = stack.pop()
            if dep not in seen:
                seen.add(dep)
                stack.extend(self.topology.get(dep, []))
        return seen

    def connected(self, service: str) -> set[str]:
        """A service, every service it depends on, and every transitive caller of it: where its fault shows."""
        found = {service} | self.downstream_of(service)
        stack = [service]
        while stack:
            for caller in self.callers_of(stack.pop()):
                if caller not in found:
                    found.add(caller)
                    stack.append(caller)
        return found

    def close(self) -> None:
        """Release what the toolbox opened."""
        for fn in reversed(self.on_close):
            fn()
