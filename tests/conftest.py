"""Test-wide guards: no real outbound connection (so no real model call), no telemetry from chromadb."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

pytest_plugins = ["tests.pg", "tests.fixtures.api", "tests.fixtures.github"]
"""Fixtures shared by several modules: a throwaway PostgreSQL (`postgres_server`, `pg_dsn`), a worker's API on the
synthetic world (`api`), the local fake GitHub and the backends on it (`clock`, `github`, `surface`, `gitops`)."""

# Set before any test module imports chromadb, which reads it once.
os.environ["ANONYMIZED_TELEMETRY"] = "False"


class NetworkBlockedError(ConnectionRefusedError):
    """A test tried to open a connection beyond loopback."""


def _is_loopback(address: Any) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX path (a docker/podman socket, for instance)
        return True
    host = address[0]
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name instead of an address: it would need a lookup, so it is not loopback
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


class NetworkGuard:
    """Refuses non-loopback connections and remembers them, since libraries may swallow the error."""

    def __init__(self) -> None:
        self.blocked: list[Any] = []

    def check(self, address: Any) -> None:
        """Raise for an address beyond loopback."""
        if not _is_loopback(address):
            self.blocked.append(address)
            raise NetworkBlockedError(
                f"sregraph tests allow loopback connections only; blocked {address!r}. Use a scripted "
                "model (tests/fakes/chat.py) or the local server (tests/fakes/openai_server.py) instead."
            )


@pytest.fixture(autouse=True)
def network_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[NetworkGuard]:
    """Every test: no outbound connection beyond loopback; a test that expects a block clears `blocked`."""
    guard = NetworkGuard()
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self: socket.socket, address: Any) -> None:
        guard.check(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        guard.check(address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield guard
    if guard.blocked:
        pytest.fail(
            f"the test tried to reach the network (blocked, maybe swallowed): {guard.blocked}", pytrace=False
        )


SLOW_MODULES = {
    "test_demo",
    "test_docker_runtime",
    "test_e2e",
    "test_localenv",
    "test_prometheus_integration",
    "test_worker_alerts",
    "test_worker_concurrency",
    "test_worker_escalation",
    "test_worker_kills",
    "test_worker_cluster",
    "test_worker_partition",
    "test_jobs",
    "test_evals",
    "test_fuzz",
    "test_hostile",
    "test_llm_graph",
    "test_resilience",
    "test_dashboard",
}
"""Modules whose tests start real processes, containers or servers (the local app, podman, Prometheus and
Alertmanager, worker processes killed and restarted), or take seconds each (whole replays, fuzzing, waiting
out timeouts). `pytest -m "not slow and not llm"` is the quick loop without them; `.ci/run` runs everything."""


INTEGRATION_MODULES = {
    "test_dashboard",
    "test_demo",
    "test_e2e",
    "test_jobs",
    "test_localenv",
    "test_prometheus_integration",
    "test_worker_cluster",
    "test_worker_kills",
    "test_worker_partition",
}
"""Modules whose tests drive real external processes: the local app's services, Prometheus and Alertmanager,
PostgreSQL, the headless browser, worker processes. A test elsewhere that takes a PostgreSQL fixture
(POSTGRES_FIXTURES) is `integration` too."""

POSTGRES_FIXTURES = {"postgres_server", "pg_dsn"}

CONTAINER_MODULES = {"test_docker_runtime"}
"""Modules that need a container engine (podman serving the Docker Engine API)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests of SLOW_MODULES `slow`, of INTEGRATION_MODULES (or on PostgreSQL) `integration`, and of
    CONTAINER_MODULES `container`."""
    for item in items:
        module = ""
        if isinstance(item, pytest.Function) and item.module is not None:
            module = item.module.__name__.rsplit(".", 1)[-1]
        if module in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
        if module in INTEGRATION_MODULES or POSTGRES_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        if module in CONTAINER_MODULES:
            item.add_marker(pytest.mark.container)
