"""The local application the agents keep alive: three services, their config repo, telemetry, load and chaos.

`LocalApp` composes the parts, each in its own module: the app's shape, ports and data directory
(`layout.py`), what the services run on (`runtimes.py`), the load on the entry point (`load.py`) and the faults
injected into it (`chaos.py`).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sregraph.localenv.chaos import FaultInjection, check_request, inject
from sregraph.localenv.layout import (
    DEFAULT_CONFIGS,
    HOST,
    PORT_BLOCK,
    START_ORDER,
    TOPOLOGY,
    check_service,
    config_path,
    load_ports,
)
from sregraph.localenv.load import LoadGenerator, background_load
from sregraph.localenv.runtimes import choose_runtime, container_specs, process_specs
from sregraph.localenv.service import ROUTES, SHIP_TOKEN_ENV, SHIP_URL_ENV
from tools.base import Clock, HealthResult, ServiceStatus, SystemClock, ToolError
from tools.gitops import LocalGitOps
from tools.health import HttpHealthChecker
from tools.runtime import ProcessSpec, ProcessSupervisor
from tools.telemetry import LocalTelemetryStore

if TYPE_CHECKING:
    from tools.docker_runtime import ContainerSpec, DockerRuntime

_NOT_OK = HealthResult(service="", ok=False)


class LocalApp:
    """The three-service app, its config repo, telemetry store, runtime, health checks, load and chaos."""

    def __init__(
        self,
        data_dir: Path,
        clock: Clock | None = None,
        runtime: str | None = None,
        docker_url: str | None = None,
        image: str | None = None,
    ) -> None:
        """Create or re-attach to the app whose state lives in `data_dir`.

        `runtime` is "process" or "docker"; None means the one saved in app.json (else "process"). For
        "docker", `docker_url` and `image` default to the saved ones, else $DOCKER_HOST or
        `DEFAULT_ENGINE_URL`, and `APP_IMAGE`.
        """
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.clock: Clock = clock or SystemClock()
        self.ports = load_ports(self.data_dir)
        self.runtime_choice = choose_runtime(self.data_dir, runtime, docker_url, image)
        self.telemetry = LocalTelemetryStore(self.data_dir / "telemetry.db")
        self.repo_dir = self.data_dir / "config-repo"
        self.gitops = LocalGitOps.init(self.repo_dir, DEFAULT_CONFIGS)
        self.shipping: dict[str, str] = {}
        """service -> the API URL it ships its telemetry to through the SDK (`ship_telemetry`)."""
        self._ship_token = ""
        self.runtime: ProcessSupervisor | DockerRuntime = self._make_runtime()
        self.health = HttpHealthChecker(self.urls)
        self._load: LoadGenerator | None = None
        self._journal_lock = threading.Lock()

    # ------------------------------------------------------------------ layout and runtime

    def _make_runtime(self) -> ProcessSupervisor | DockerRuntime:
        """The runtime `runtime_choice` names, over this app's specs."""
        if self.runtime_choice["kind"] == "process":
            return ProcessSupervisor(self.data_dir / "runtime", self._specs(), max_replicas=PORT_BLOCK)
        # The Docker SDK loads only for the container runtime.
        from tools.docker_runtime import DockerRuntime, connect

        client = connect(self.runtime_choice["url"])
        return DockerRuntime(
            client, self._container_specs(), self.runtime_choice["project"], max_replicas=PORT_BLOCK
        )

    def _specs(self) -> dict[str, ProcessSpec]:
        """How the supervisor runs each service."""
        return process_specs(self.data_dir, self.repo_dir, self.ports, self._ship_env())

    def _container_specs(self) -> dict[str, ContainerSpec]:
        """How the Docker runtime runs each service: the process specs as containers."""
        image = self.runtime_choice["image"]
        return container_specs(self._specs(), image, self.data_dir, self.repo_dir, self._ship_env())

    def _ship_env(self) -> dict[str, dict[str, str]]:
        """service -> the environment that makes it ship its telemetry (only the services in `shipping`)."""
        return {
            name: {SHIP_URL_ENV: url, SHIP_TOKEN_ENV: self._ship_token} for name, url in self.shipping.items()
        }

    def ship_telemetry(self, url: str, token: str, services: list[str]) -> None:
        """From their next start on, `services` send their logs, metrics and spans through sregraph's SDK to the
        API at `url` with `token` (role ingest) instead of writing the store; the others keep writing it. The
        choice lives in this object only: an app re-attached by another process writes the store again."""
        for service in services:
            check_service(service)
        self.shipping = {service: url for service in services}
        self._ship_token = token
        # The runtime holds the specs it starts and restarts services with (a restart by the engineer included).
        fresh = self._specs() if self.runtime_choice["kind"] == "process" else self._container_specs()
        self.runtime.specs.update(fresh)  # type: ignore[arg-type]

    def volume(self, service: str) -> Path:
        """A service's persistent disk: kept across restarts and redeploys, like a mounted volume."""
        return self.data_dir / "volumes" / service

    def config_path(self, service: str) -> Path:
        """The config file a service reads at start."""
        return config_path(self.repo_dir, service)

    @property
    def topology(self) -> dict[str, list[str]]:
        """Who calls whom."""
        return {name: list(downs) for name, downs in TOPOLOGY.items()}

    @property
    def urls(self) -> dict[str, str]:
        """Base URL of each service's replica 0."""
        return {name: f"http://{HOST}:{port}" for name, port in self.ports.items()}

    def services(self) -> list[str]:
        """The app's services, entry point first."""
        return list(TOPOLOGY)

    # ------------------------------------------------------------------ lifecycle

    def start(self, wait_healthy: bool = True, timeout: float = 15.0) -> dict[str, ServiceStatus]:
        """Start the stopped services, dependencies first; optionally wait until all are healthy."""
        for name in START_ORDER:
            self.runtime.start(name)
        if wait_healthy:
            results = self.wait_healthy(timeout=timeout)
            bad = {name: r for name, r in results.items() if not r.ok}
            if bad:
                lines = []
                for name, result in bad.items():
                    tail = " | ".join(self.runtime.logs(name, tail=3))
                    lines.append(f"{name}: {result.detail}; last log lines: {tail}")
                raise ToolError(f"services not healthy after {timeout:g}s: " + "; ".join(lines))
        return {name: self.status(name) for name in TOPOLOGY}

    def wait_healthy(
        self, services: list[str] | None = None, timeout: float = 10.0
    ) -> dict[str, HealthResult]:
        """Poll health until every service (default: all) is ok or `timeout` passes; the last results."""
        names = services or list(TOPOLOGY)
        deadline = time.monotonic() + timeout
        results: dict[str, HealthResult] = {}
        while True:
            results.update({n: self.health.check(n) for n in names if not results.get(n, _NOT_OK).ok})
            if all(r.ok for r in results.values()) or time.monotonic() >= deadline:
                return results
            time.sleep(0.1)  # real processes run on real time, whatever the injected clock says

    def stop(self) -> None:
        """Stop the load and every service."""
        self.stop_load()
        self.stop_background_load()
        self.runtime.shutdown_all()

    def close(self) -> None:
        """Release this object's resources (stops the load, leaves services running)."""
        self.stop_load()
        self.health.close()
        self.runtime.close()
        self.telemetry.close()

    def status(self, service: str) -> ServiceStatus:
        """Runtime status plus the version the config repo says should run."""
        check_service(service)
        status = self.runtime.status(service)
        status.version = str(self.gitops.config(service).get("version") or "") or None
        return status

    # ------------------------------------------------------------------ load

    def start_load(self, rps: float = 15.0) -> None:
        """Start (or re-rate) the load generator calling frontend /buy."""
        self.stop_load()
        self._load = LoadGenerator(self.urls["frontend"] + ROUTES["frontend"], rps)
        self._load.start()

    def stop_load(self) -> None:
        """Stop the load generator, if running."""
        if self._load is not None:
            self._load.stop()
            self._load = None

    def _background(self, rps: float = 15.0) -> ProcessSupervisor:
        """A supervisor of the detached load process on frontend /buy."""
        return background_load(self.data_dir, self.urls["frontend"] + ROUTES["frontend"], rps)

    def start_background_load(self, rps: float = 15.0) -> None:
        """Load from a detached process that outlives this one (`sregraph run --keep-running`)."""
        self.stop_load()
        supervisor = self._background(rps)
        try:
            supervisor.start("load")
        finally:
            supervisor.close()

    def stop_background_load(self) -> None:
        """Stop the detached load process, if any."""
        if (self.data_dir / "load").exists():
            supervisor = self._background()
            try:
                supervisor.shutdown_all()
            finally:
                supervisor.close()

    def load_stats(self) -> dict[str, float]:
        """The load generator's counters (empty when no load runs)."""
        return self._load.stats() if self._load else {}

    # ------------------------------------------------------------------ deploys and chaos

    def apply(self, service: str, timeout: float = 10.0) -> ServiceStatus:
        """Restart `service` so it runs the config now on the deploy branch, and wait (bounded) for health."""
        check_service(service)
        self.runtime.restart(service)
        self.wait_healthy([service], timeout=timeout)
        return self.status(service)

    def inject(self, fault: str, service: str, **params: Any) -> FaultInjection:
        """Inject a fault (see FAULTS); unknown fault, service or parameter raises before anything changes.

        Every injection is appended to data_dir/chaos.jsonl.
        """
        check_request(fault, service, params)
        detail = inject(self, fault, service, params)
        injection = FaultInjection(
            fault=fault, service=service, params=params, at=self.clock.now(), detail=detail
        )
        with self._journal_lock, open(self.data_dir / "chaos.jsonl", "a") as fh:
            fh.write(injection.model_dump_json() + "\n")
        return injection
