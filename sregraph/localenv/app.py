"""The local application the agents keep alive: three services, their config repo, telemetry, load and chaos.

Everything lives under one data directory, and the ports are chosen once and saved in ``app.json``, so a new
`LocalApp` on the same directory (a worker restarted after SIGKILL) re-attaches to the running services::

    data_dir/app.json          ports, and the runtime the services run on (with its engine, image, project)
    data_dir/telemetry.db      metrics, logs, spans (LocalTelemetryStore)
    data_dir/config-repo/      git repo; services/<name>.yaml on main is what runs after a restart
    data_dir/runtime/          supervisor state and per-service stdout logs
    data_dir/chaos.jsonl       every injected fault (ground truth for evals; the services never log it)

`runtime.scale` starts extra replicas on PORT+i; they serve and report telemetry with a ``replica`` label, but
nothing load-balances to them (callers use replica 0), so scaling adds capacity only in name.

Runtimes: ``"process"`` (local processes under `ProcessSupervisor`, the default) or ``"docker"`` (containers
of `APP_IMAGE` through a Docker Engine API, `DockerRuntime`: scripts/container-engine.sh starts one and builds
the image). Containers run the same command with the image's python3, on the host network, with the repository
mounted read-only and the data directory read-write at the same paths (the config repo read-only on top), so
they read the merged config and write telemetry exactly as processes do. The choice is saved in app.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, Field

from sregraph.localenv.service import DISK_FULL_MARKER, ROUTES, SHIP_TOKEN_ENV, SHIP_URL_ENV
from tools.base import (
    Clock,
    ConfigError,
    HealthResult,
    NotFound,
    ServiceStatus,
    SystemClock,
    ToolError,
)
from tools.gitops import LocalGitOps
from tools.health import HttpHealthChecker
from tools.runtime import ProcessSpec, ProcessSupervisor
from tools.telemetry import LocalTelemetryStore

if TYPE_CHECKING:
    from tools.docker_runtime import ContainerSpec, DockerRuntime

TOPOLOGY: dict[str, list[str]] = {"frontend": ["checkout"], "checkout": ["payments"], "payments": []}
"""Who calls whom: each service calls every listed downstream on each request."""

START_ORDER = ["payments", "checkout", "frontend"]
"""Dependencies first."""

STABLE_VERSION = "1.4.0"
BAD_VERSION = "2.0.0-rc1"

# Timeouts shrink downstream so a slow leaf surfaces as a 502 at each hop rather than a client timeout.
DEFAULT_CONFIGS: dict[str, dict[str, Any]] = {
    "frontend": {"version": STABLE_VERSION, "error_rate": 0.0, "latency_ms": 5, "timeout_ms": 800},
    "checkout": {"version": STABLE_VERSION, "error_rate": 0.0, "latency_ms": 5, "timeout_ms": 600},
    "payments": {"version": STABLE_VERSION, "error_rate": 0.0, "latency_ms": 5, "timeout_ms": 400},
}

FAULTS: dict[str, frozenset[str]] = {
    "crash": frozenset(),
    "memory_leak": frozenset({"mb_per_s"}),
    "latency": frozenset({"ms"}),
    "error_rate": frozenset({"ratio"}),
    "cpu": frozenset({"threads"}),
    "bad_deploy": frozenset({"version"}),
    "dependency_down": frozenset(),
    "conversion_drop": frozenset(),
    "disk_full": frozenset({"ratio"}),
    "clear": frozenset(),
}
"""Every fault `inject` knows, with the parameters it accepts."""

PORT_BLOCK = 8
"""Ports reserved per service: PORT for replica 0, PORT+i for replica i (so at most 8 replicas)."""
PORT_RANGE = (20000, 32000)
"""Below Linux's default ephemeral range, so outgoing connections never hold a port we want to listen on."""
LOAD_TIMEOUT_S = 1.0
LOAD_WORKERS = 8
HOST = "127.0.0.1"
_NOT_OK = HealthResult(service="", ok=False)
PROJECT_ROOT = Path(__file__).resolve().parents[2]
RUNTIMES = ("process", "docker")
APP_IMAGE = "localhost/sregraph-app:latest"
"""The services' image (Debian's python3 plus their dependencies), built by scripts/container-engine.sh."""
DEFAULT_ENGINE_URL = f"unix://{PROJECT_ROOT / '.sregraph' / 'engine' / 'podman.sock'}"
"""Where scripts/container-engine.sh serves the Docker API by default (used when DOCKER_HOST is unset)."""


class FaultInjection(BaseModel):
    """What `inject` did."""

    fault: str
    service: str
    params: dict[str, Any] = Field(default_factory=dict)
    at: float
    detail: str = ""


def _free_block(taken: set[int]) -> int:
    """A base port whose PORT_BLOCK consecutive ports are bindable on loopback and not in `taken`."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(PORT_RANGE[0], PORT_RANGE[1] - PORT_BLOCK)
        block = range(base, base + PORT_BLOCK)
        if taken.intersection(block):
            continue
        try:
            for port in block:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind((HOST, port))
        except OSError:
            continue
        return base
    raise ToolError(f"no block of {PORT_BLOCK} free ports in {PORT_RANGE}")


class LoadGenerator:
    """Calls frontend /buy at a steady rate from a few daemon threads; a slow backend never causes a burst."""

    def __init__(self, url: str, rps: float) -> None:
        """Target `url` at `rps` requests per second (not started yet)."""
        if rps <= 0:
            raise ConfigError(f"rps must be positive, got {rps}")
        self.url = url
        self.rps = rps
        self.sent = self.ok = self.failed = 0
        self._next = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._client = httpx.Client(timeout=LOAD_TIMEOUT_S)
        self._threads = [
            threading.Thread(target=self._work, name=f"load-{i}", daemon=True) for i in range(LOAD_WORKERS)
        ]

    def start(self) -> None:
        """Start the workers."""
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop the workers (bounded wait) and close the client."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=LOAD_TIMEOUT_S + 1.0)
        self._client.close()

    def stats(self) -> dict[str, float]:
        """Requests sent, succeeded and failed so far, and the target rate."""
        with self._lock:
            return {"rps": self.rps, "sent": self.sent, "ok": self.ok, "failed": self.failed}

    def _work(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                # Behind schedule (every worker was stuck on slow requests): skip the missed slots.
                slot = max(self._next, now)
                self._next = slot + 1.0 / self.rps
            if self._stop.wait(max(0.0, slot - now)):
                return
            try:
                ok = self._client.get(self.url).status_code == 200
            except httpx.HTTPError:
                ok = False
            except RuntimeError:  # the client was closed under us during stop()
                return
            with self._lock:
                self.sent += 1
                self.ok += ok
                self.failed += not ok


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
        self.ports = self._ports()
        self.runtime_choice = self._runtime_choice(runtime, docker_url, image)
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

    # ------------------------------------------------------------------ layout

    def _ports(self) -> dict[str, int]:
        """The saved ports, or fresh ones saved for next time."""
        path = self.data_dir / "app.json"
        if path.exists():
            try:
                ports = {str(k): int(v) for k, v in json.loads(path.read_text())["ports"].items()}
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ConfigError(f"{path}: field 'ports' is unreadable ({exc})") from exc
            if set(ports) == set(TOPOLOGY):
                return ports
        ports = {}
        for name in TOPOLOGY:
            ports[name] = _free_block({p for base in ports.values() for p in range(base, base + PORT_BLOCK)})
        self._save_layout({"ports": ports})
        return ports

    def _save_layout(self, fields: dict[str, Any]) -> None:
        """Merge `fields` into app.json (atomically)."""
        path = self.data_dir / "app.json"
        data: dict[str, Any] = {}
        if path.exists():
            try:
                loaded = json.loads(path.read_text())
                data = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                data = {}
        data.update(fields)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(path)

    def _runtime_choice(
        self, runtime: str | None, docker_url: str | None, image: str | None
    ) -> dict[str, str]:
        """The runtime this app runs on: the requested one, else the saved one; saved for re-attaching."""
        path = self.data_dir / "app.json"
        saved = json.loads(path.read_text()).get("runtime") if path.exists() else None
        if saved is not None and not (isinstance(saved, dict) and saved.get("kind") in RUNTIMES):
            raise ConfigError(
                f"{path}: field 'runtime' must be an object whose 'kind' is one of {', '.join(RUNTIMES)}"
            )
        if runtime is not None and runtime not in RUNTIMES:
            raise ConfigError(f"runtime: unknown runtime {runtime!r}; known runtimes: {', '.join(RUNTIMES)}")
        if saved is not None and runtime is not None and runtime != saved["kind"]:
            raise ConfigError(
                f"runtime: this app ({self.data_dir}) runs on {saved['kind']!r}, not {runtime!r}; stop it and "
                f"remove {path} to switch"
            )
        kind = runtime or (saved["kind"] if saved else "process")
        choice = {"kind": kind}
        if kind == "docker":
            previous = saved or {}
            digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:10]
            choice.update(
                url=docker_url or previous.get("url") or os.environ.get("DOCKER_HOST") or DEFAULT_ENGINE_URL,
                image=image or previous.get("image") or APP_IMAGE,
                project=previous.get("project") or f"sregraph-{digest}",
            )
        if choice != saved:
            self._save_layout({"runtime": choice})
        return choice

    def _make_runtime(self) -> ProcessSupervisor | DockerRuntime:
        """The runtime `runtime_choice` names, over this app's specs."""
        if self.runtime_choice["kind"] == "process":
            return ProcessSupervisor(self.data_dir / "runtime", self._specs(), max_replicas=PORT_BLOCK)
        from tools.docker_runtime import DockerRuntime, connect

        client = connect(self.runtime_choice["url"])
        return DockerRuntime(
            client, self._container_specs(), self.runtime_choice["project"], max_replicas=PORT_BLOCK
        )

    def _container_specs(self) -> dict[str, ContainerSpec]:
        """The process specs as containers: same arguments, the image's python3, host network, same paths."""
        from tools.docker_runtime import BindMount, ContainerSpec

        # Parents before children, so the read-only config repo is mounted over the writable data directory.
        mounts = sorted(
            {
                BindMount(str(PROJECT_ROOT), str(PROJECT_ROOT), read_only=True),
                BindMount(str(self.data_dir), str(self.data_dir), read_only=False),
                BindMount(str(self.repo_dir), str(self.repo_dir), read_only=True),
            },
            key=lambda m: (len(Path(m.target).parts), m.target),
        )
        env = {"PYTHONPATH": str(PROJECT_ROOT), "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        return {
            name: ContainerSpec(
                name=name,
                image=self.runtime_choice["image"],
                command=["python3", *spec.argv[1:]],
                env={**env, **self._ship_env(name)},
                working_dir=str(spec.cwd) if spec.cwd else None,
                mounts=tuple(mounts),
                network_mode="host",
            )
            for name, spec in self._specs().items()
        }

    def _specs(self) -> dict[str, ProcessSpec]:
        """How the supervisor runs each service; `--config` is the file in the repo's work tree (main)."""
        pythonpath = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        specs = {}
        for name, downstreams in TOPOLOGY.items():
            argv = [
                sys.executable,
                "-m",
                "sregraph.localenv.service",
                "--name",
                name,
                "--port",
                str(self.ports[name]),
                "--config",
                str(self.config_path(name)),
                "--telemetry",
                str(self.data_dir / "telemetry.db"),
            ]
            for down in downstreams:
                argv += ["--downstream", f"{down}=http://{HOST}:{self.ports[down]}"]
            env = {"PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1", **self._ship_env(name)}
            specs[name] = ProcessSpec(name=name, argv=argv, env=env, cwd=self.data_dir)
        return specs

    def _ship_env(self, service: str) -> dict[str, str]:
        if service not in self.shipping:
            return {}
        return {SHIP_URL_ENV: self.shipping[service], SHIP_TOKEN_ENV: self._ship_token}

    def ship_telemetry(self, url: str, token: str, services: list[str]) -> None:
        """From their next start on, `services` send their logs, metrics and spans through sregraph's SDK to the
        API at `url` with `token` (role ingest) instead of writing the store; the others keep writing it. The
        choice lives in this object only: an app re-attached by another process writes the store again."""
        for service in services:
            self._check(service)
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
        return self.repo_dir / "services" / f"{service}.yaml"

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

    def _check(self, service: str) -> None:
        if service not in TOPOLOGY:
            raise NotFound(f"unknown service {service!r}; known services: {', '.join(TOPOLOGY)}")

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
        self._check(service)
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
        """A supervisor of the detached load process; separate so agents never see or restart it."""
        argv = [
            sys.executable,
            "-m",
            "sregraph.localenv.app",
            self.urls["frontend"] + ROUTES["frontend"],
            str(rps),
        ]
        env = {
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p
            )
        }
        return ProcessSupervisor(
            self.data_dir / "load", {"load": ProcessSpec(name="load", argv=argv, env=env, cwd=self.data_dir)}
        )

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
        self._check(service)
        self.runtime.restart(service)
        self.wait_healthy([service], timeout=timeout)
        return self.status(service)

    def inject(self, fault: str, service: str, **params: Any) -> FaultInjection:
        """Inject a fault (see FAULTS); unknown fault, service or parameter raises before anything changes."""
        if fault not in FAULTS:
            raise ConfigError(f"fault: unknown fault {fault!r}; known faults: {', '.join(FAULTS)}")
        self._check(service)
        extra = set(params) - FAULTS[fault]
        if extra:
            allowed = ", ".join(sorted(FAULTS[fault])) or "none"
            raise ConfigError(f"{', '.join(sorted(extra))}: not a parameter of {fault} (allowed: {allowed})")
        for key, value in params.items():
            if key != "version" and not isinstance(value, (int, float)):
                raise ConfigError(f"{key}: must be a number, got {value!r}")

        detail = ""
        if fault == "crash":
            if not self.runtime.status(service).running:
                raise ToolError(f"cannot crash {service}: it is not running")
            status = self.runtime.kill(service)
            detail = f"killed; exit_code={status.exit_code}"
        elif fault == "dependency_down":
            # A clean shutdown (exit 0), as when a dependency is taken down rather than crashing.
            if not self.runtime.status(service).running:
                raise ToolError(f"cannot take {service} down: it is not running")
            status = self.runtime.stop(service)
            detail = f"stopped; exit_code={status.exit_code}"
        elif fault == "conversion_drop":
            # Requests keep succeeding but nothing is bought: a config change turns payment capture off.
            config = {**self.gitops.config(service), "capture": False}
            change = self.gitops.commit_config(
                service,
                config,
                f"{service}: disable payment capture during PSP migration",
                kind="config",
                author="ops",
            )
            status = self.apply(service)
            detail = f"config {change.sha[:10]} sets capture=false; running={status.running}"
        elif fault == "disk_full":
            # The service's volume fills up: its writes fail until someone frees space; restarts do not help.
            ratio = min(1.0, max(0.0, float(params.get("ratio", 0.5))))
            volume = self.volume(service)
            volume.mkdir(parents=True, exist_ok=True)
            (volume / DISK_FULL_MARKER).write_text(f"{ratio:g}\n")
            detail = f"volume {volume} full: {ratio:.0%} of writes fail with ENOSPC"
        elif fault == "bad_deploy":
            version = str(params.get("version", BAD_VERSION))
            config = {**self.gitops.config(service), "version": version}
            change = self.gitops.commit_config(
                service, config, f"Deploy {service} {version}", kind="deploy", author="release-bot"
            )
            status = self.apply(service)
            detail = f"deployed {version} as {change.sha[:10]}; running={status.running}"
        else:
            if fault == "clear":
                (self.volume(service) / DISK_FULL_MARKER).unlink(missing_ok=True)  # space freed
            chaos = {"memory_leak": "leak", "latency": "latency", "error_rate": "errors", "cpu": "cpu"}
            body = {"fault": chaos.get(fault, fault), **params}
            detail = json.dumps(self._chaos(service, body))
        injection = FaultInjection(
            fault=fault, service=service, params=params, at=self.clock.now(), detail=detail
        )
        with self._journal_lock, open(self.data_dir / "chaos.jsonl", "a") as fh:
            fh.write(injection.model_dump_json() + "\n")
        return injection

    def _chaos(self, service: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /chaos to every replica of a service; the replicas' replies."""
        replicas = max(1, self.runtime.status(service).replicas)
        replies: dict[str, Any] = {}
        with httpx.Client(timeout=2.0) as client:
            for i in range(replicas):
                url = f"http://{HOST}:{self.ports[service] + i}/chaos"
                try:
                    resp = client.post(url, json=body)
                except httpx.HTTPError as exc:
                    if i == 0:
                        raise ToolError(f"chaos on {service} failed: {type(exc).__name__}: {exc}") from exc
                    continue  # an extra replica that is down has nothing to inject into
                if resp.status_code != 200:
                    raise ToolError(f"chaos on {service} refused: HTTP {resp.status_code} {resp.text}")
                replies[str(i)] = resp.json().get("faults")
        return replies


def _run_load(url: str, rps: float) -> None:
    """Generate load until SIGTERM (the detached load process)."""
    import signal

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    load = LoadGenerator(url, rps)
    load.start()
    stop.wait()
    load.stop()


if __name__ == "__main__":
    _run_load(sys.argv[1], float(sys.argv[2]))
