"""`Runtime` on containers, through the `docker` SDK and a Docker Engine API (Docker, or podman serving it).

Only containers labelled as this project's are ever touched; `restart` re-creates every replica from its spec
and keeps the restart count in a label, so a new `DockerRuntime` in another process sees what the last one
left. Every engine call has a timeout and goes through one `Resilience`.
Design: docs/container-runtime.md (§Ownership, §Restarts, §Replicas, §Errors, §Flaky engine, §OOM).
"""

from __future__ import annotations

import hashlib
import json
import re
import signal as signals
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, TypeVar, cast

import docker
import docker.errors
import requests
from docker.models.containers import Container
from pydantic import BaseModel

from tools.base import ConfigError, NotFound, Refused, ServiceStatus, ToolError, TransientError
from tools.resilience import Resilience
from tools.runtime import service_environment

MANAGED = "io.sregraph.managed"
PROJECT = "io.sregraph.project"
SERVICE = "io.sregraph.service"
REPLICA = "io.sregraph.replica"
RESTARTS = "io.sregraph.restarts"
SPEC = "io.sregraph.spec"
"""Hash of the spec a container was created from; `start` re-creates a container whose spec changed."""

DEFAULT_TIMEOUT_S = 15.0
API_VERSION = "1.41"
"""Spoken by podman 4.x's compat API and by Docker 20.10 and later; one-shot stats need at least 1.41."""
STOP_GRACE_S = 3.0
KILL_WAIT_S = 5.0
MB = 1024 * 1024
_PROJECT_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,40}$")
_TRANSIENT_STATUS = {502, 503, 504}
T = TypeVar("T")


@dataclass(frozen=True)
class BindMount:
    """A host path mounted into the container at `target`."""

    source: str
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class ContainerSpec:
    """How to run one service as a container."""

    name: str
    image: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    mounts: tuple[BindMount, ...] = ()
    network_mode: str = "host"
    mem_limit: str | None = None
    """A memory limit the kernel enforces ("256m"); None for none."""
    stop_grace_s: float = STOP_GRACE_S

    def digest(self) -> str:
        """A short hash of everything that shapes the container."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


class ContainerStats(BaseModel):
    """Resource use of one replica."""

    replica: int
    container: str
    running: bool
    memory_mb: float | None = None
    memory_limit_mb: float | None = None
    cpu_percent: float | None = None
    pids: int | None = None


def connect(
    base_url: str, timeout: float = DEFAULT_TIMEOUT_S, version: str = API_VERSION
) -> docker.DockerClient:
    """A client for the engine at `base_url` (``unix:///path/to/socket``) whose every call times out.

    The API version is fixed rather than negotiated, so making a client never calls the engine: an engine
    that is down shows up as a TransientError on the first call, not as a failure to construct the app.
    """
    try:
        # docker hands the timeout to requests, which takes float seconds; the stub says int.
        return docker.DockerClient(base_url=base_url, timeout=timeout, version=version)  # type: ignore[arg-type]
    except docker.errors.DockerException as exc:
        raise ToolError(f"cannot use the container engine at {base_url}: {exc}") from exc


def _parse_time(text: str | None) -> float | None:
    """Epoch seconds of an engine timestamp (RFC 3339 with nanoseconds); None for unset."""
    if not text or text.startswith("0001-"):
        return None
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?$", text)
    if not match:
        return None
    base, frac, zone = match.groups()
    stamp = base + (frac[:7] if frac else "") + ("+00:00" if zone in (None, "Z") else zone)
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


class DockerRuntime:
    """`Runtime` over labelled containers of one project on a Docker Engine API."""

    def __init__(
        self,
        client: docker.DockerClient,
        specs: dict[str, ContainerSpec],
        project: str,
        max_replicas: int = 8,
        resilience: Resilience | None = None,
    ) -> None:
        """Manage `specs` as containers of `project`; the runtime owns `client` (`close` closes it).

        `resilience` is the retry and breaker policy of every engine call (default: 3 attempts, 0.2 s
        backoff with jitter, open after 3 failed calls).
        """
        if not _PROJECT_RE.match(project):
            raise ConfigError(
                f"project: {project!r} must be lowercase letters, digits, '_', '.', '-' (max 41)"
            )
        timeout = getattr(client.api, "timeout", None)
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigError("client: the docker client needs a timeout (docker.DockerClient(timeout=...))")
        for name, spec in specs.items():
            if name != spec.name:
                raise ConfigError(f"specs: key {name!r} names a spec for {spec.name!r}")
        self.client = client
        self.specs = dict(specs)
        self.project = project
        self.max_replicas = max_replicas
        self.resilience = resilience or Resilience("docker", max_elapsed_s=2 * timeout)
        self._lock = threading.RLock()

    def close(self) -> None:
        """Close the client; containers are left as they are."""
        self.client.close()

    # ------------------------------------------------------------------ errors and ownership

    @contextmanager
    def _api(self, action: str) -> Iterator[None]:
        """Turn the SDK's exceptions into ours, keeping the engine's message."""
        try:
            yield
        except docker.errors.ImageNotFound as exc:
            raise ToolError(
                f"{action}: image not found in the engine ({exc.explanation or exc}); build it with "
                "scripts/container-engine.sh image"
            ) from exc
        except docker.errors.NotFound as exc:
            raise NotFound(f"{action}: {exc.explanation or exc}") from exc
        except docker.errors.APIError as exc:
            status = exc.status_code or 0
            kind = TransientError if status in _TRANSIENT_STATUS else ToolError
            raise kind(f"{action}: the engine answered {status}: {exc.explanation or exc}") from exc
        except (requests.exceptions.Timeout, requests.exceptions.ConnectionError) as exc:
            raise TransientError(
                f"{action}: the container engine did not answer "
                f"({type(exc).__name__}: {exc}); is it running? (scripts/container-engine.sh start)"
            ) from exc
        except docker.errors.DockerException as exc:
            raise ToolError(f"{action}: {exc}") from exc

    def _call(self, action: str, fn: Callable[[], T], *, write: bool = False) -> T:
        """One engine call, errors translated, through the resilience policy (writes resent only if unsent)."""

        def once() -> T:
            with self._api(action):
                return fn()

        return self.resilience.call(once, idempotent=not write)

    def _ours(self, container: Container) -> bool:
        """Whether a container carries this project's management labels."""
        labels = container.labels or {}
        return labels.get(MANAGED) == "true" and labels.get(PROJECT) == self.project

    def _guard(self, container: Container, action: str) -> Container:
        """`container` if it is ours, else Refused; called before every call that changes a container."""
        if not self._ours(container):
            raise Refused(
                f"refusing to {action} container {container.name} ({container.short_id}): it does not carry "
                f"the labels {MANAGED}=true and {PROJECT}={self.project}, so sregraph does not manage it"
            )
        return container

    def container(self, name_or_id: str) -> Container:
        """One of our containers by name or id; Refused for any container not labelled as ours."""
        found = self._call(f"look up container {name_or_id}", lambda: self.client.containers.get(name_or_id))
        return self._guard(found, "touch")

    def _spec(self, service: str) -> ContainerSpec:
        spec = self.specs.get(service)
        if spec is None:
            raise NotFound(f"unknown service {service!r}; known services: {', '.join(sorted(self.specs))}")
        return spec

    def container_name(self, service: str, replica: int) -> str:
        """The name of a replica's container."""
        return f"{self.project}-{service}-{replica}"

    def _replicas(self, service: str) -> dict[int, Container]:
        """replica -> container, for the service's containers (running or not), found by label."""
        labels = [f"{MANAGED}=true", f"{PROJECT}={self.project}", f"{SERVICE}={service}"]
        found = self._call(
            f"list containers of {service}",
            lambda: self.client.containers.list(all=True, filters={"label": labels}),
        )
        replicas: dict[int, Container] = {}
        for container in found:
            if not self._ours(container) or container.labels.get(SERVICE) != service:
                continue  # the engine's filter is trusted for speed, not for ownership
            try:
                replicas[int(container.labels.get(REPLICA, ""))] = container
            except ValueError:
                continue
        return replicas

    def _preflight(self, service: str, slots: int, action: str) -> None:
        """Refuse before changing anything if a foreign container holds one of our names."""
        for replica in range(slots):
            name = self.container_name(service, replica)
            try:
                found = self._call(f"look up container {name}", partial(self.client.containers.get, name))
            except NotFound:
                continue
            labels = found.labels or {}
            if not self._ours(found) or labels.get(SERVICE) != service or labels.get(REPLICA) != str(replica):
                raise Refused(
                    f"cannot {action} {service}: container {name} ({found.short_id}) exists but is not "
                    f"sregraph's {service} replica {replica} of project {self.project} (labels {MANAGED}, "
                    f"{PROJECT}, {SERVICE}, {REPLICA}); it was left untouched — rename or remove it"
                )

    # ------------------------------------------------------------------ container control

    def _create(self, spec: ContainerSpec, replica: int, restarts: int) -> Container:
        """Create (not start) one replica's container."""
        # Nothing of sregraph's own environment: a container gets its spec's variables only.
        env = service_environment(spec.env, inherit={})
        if replica:
            env["REPLICA"] = str(replica)
        labels = {
            MANAGED: "true",
            PROJECT: self.project,
            SERVICE: spec.name,
            REPLICA: str(replica),
            RESTARTS: str(restarts),
            SPEC: spec.digest(),
        }
        volumes = {m.source: {"bind": m.target, "mode": "ro" if m.read_only else "rw"} for m in spec.mounts}
        name = self.container_name(spec.name, replica)
        return self._call(
            f"create container {name}",
            lambda: self.client.containers.create(
                spec.image,
                spec.command,
                name=name,
                labels=labels,
                environment=env,
                working_dir=spec.working_dir,
                volumes=volumes,
                network_mode=spec.network_mode,
                mem_limit=spec.mem_limit,
                detach=True,
            ),
            write=True,
        )

    def _start(self, container: Container) -> None:
        self._guard(container, "start")
        self._call(f"start container {container.name}", container.start, write=True)

    def _stop(self, container: Container, grace: float) -> None:
        self._guard(container, "stop")
        self._call(f"inspect container {container.name}", container.reload)
        if container.status in ("running", "paused", "restarting"):
            self._call(
                f"stop container {container.name}",
                lambda: container.stop(timeout=max(1, round(grace))),
                write=True,
            )

    def _remove(self, container: Container, grace: float) -> None:
        self._stop(container, grace)
        self._guard(container, "remove")

        def remove() -> None:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass  # already gone

        self._call(f"remove container {container.name}", remove, write=True)

    @staticmethod
    def _restarts(containers: dict[int, Container]) -> int:
        """The restart counter: replica 0's label, else the highest any replica carries."""

        def count(c: Container) -> int:
            try:
                return int(c.labels.get(RESTARTS, "0"))
            except ValueError:
                return 0

        if 0 in containers:
            return count(containers[0])
        return max((count(c) for c in containers.values()), default=0)

    # ------------------------------------------------------------------ Runtime protocol

    def services(self) -> list[str]:
        """Names of the services this runtime manages."""
        return sorted(self.specs)

    def status(self, service: str) -> ServiceStatus:
        """Current state of one service (replica 0); NotFound for an unknown one."""
        self._spec(service)
        replicas = self._replicas(service)
        main = replicas.get(0)
        if main is None:
            return ServiceStatus(
                service=service,
                running=False,
                replicas=max(1, len(replicas)),
                restarts=self._restarts(replicas),
            )
        state = main.attrs.get("State") or {}
        running = bool(state.get("Running"))
        never_ran = state.get("Status") == "created"
        memory = None
        if running:
            stats = self._stats_of(0, main)
            memory = stats.memory_mb
        return ServiceStatus(
            service=service,
            running=running,
            replicas=len(replicas),
            pid=(state.get("Pid") or None) if running else None,
            restarts=self._restarts(replicas),
            exit_code=None if running or never_ran else state.get("ExitCode"),
            oom_killed=(not running) and bool(state.get("OOMKilled")),
            started_at=_parse_time(state.get("StartedAt")) if running else None,
            memory_mb=memory,
        )

    def start(self, service: str) -> ServiceStatus:
        """Start every replica that is not running (creating replica 0 if the service has no container)."""
        spec = self._spec(service)
        with self._lock:
            replicas = self._replicas(service)
            self._preflight(service, max(1, len(replicas), max(replicas, default=0) + 1), "start")
            restarts = self._restarts(replicas)
            if not replicas:
                replicas = {0: self._create(spec, 0, restarts)}
            for replica, container in sorted(replicas.items()):
                if container.labels.get(SPEC) != spec.digest():  # created from another spec: re-create
                    self._remove(container, spec.stop_grace_s)
                    container = self._create(spec, replica, restarts)
                elif container.status == "running":
                    continue
                self._start(container)
        return self.status(service)

    def stop(self, service: str) -> ServiceStatus:
        """Stop every replica (SIGTERM, the spec's grace period, then SIGKILL); the containers stay."""
        spec = self._spec(service)
        with self._lock:
            replicas = self._replicas(service)
            self._preflight(service, max(1, max(replicas, default=0) + 1), "stop")
            for _, container in sorted(replicas.items(), reverse=True):
                self._stop(container, spec.stop_grace_s)
        return self.status(service)

    def restart(self, service: str) -> ServiceStatus:
        """Re-create every replica from the spec and start it; the restart counter goes up by one."""
        spec = self._spec(service)
        with self._lock:
            replicas = self._replicas(service)
            count = max(1, len(replicas))
            self._preflight(service, max(count, max(replicas, default=0) + 1), "restart")
            restarts = self._restarts(replicas) + 1
            for _, container in sorted(replicas.items(), reverse=True):
                self._remove(container, spec.stop_grace_s)
            for replica in range(count):
                self._start(self._create(spec, replica, restarts))
        return self.status(service)

    def scale(self, service: str, replicas: int) -> ServiceStatus:
        """Run `replicas` containers: create missing ones (started only if replica 0 runs) or remove extras."""
        spec = self._spec(service)
        if not 1 <= replicas <= self.max_replicas:
            raise ConfigError(f"replicas must be between 1 and {self.max_replicas}, got {replicas}")
        with self._lock:
            current = self._replicas(service)
            self._preflight(service, max(replicas, max(current, default=0) + 1), "scale")
            for replica, container in sorted(current.items(), reverse=True):
                if replica >= replicas:
                    self._remove(container, spec.stop_grace_s)
            main = current.get(0)
            running = main is not None and main.status == "running"
            restarts = self._restarts(current)
            for replica in range(replicas):
                if replica not in current:
                    created = self._create(spec, replica, restarts)
                    if running:
                        self._start(created)
        return self.status(service)

    def logs(self, service: str, tail: int = 100) -> list[str]:
        """Last `tail` lines replica 0's current container wrote to stdout/stderr."""
        self._spec(service)
        main = self._replicas(service).get(0)
        if main is None or tail <= 0:
            return []
        raw: bytes = self._call(
            f"read logs of {main.name}", lambda: main.logs(stdout=True, stderr=True, tail=tail)
        )
        return raw.decode("utf-8", "replace").splitlines()[-tail:]

    # ------------------------------------------------------------------ extras

    def _stats_of(self, replica: int, container: Container) -> ContainerStats:
        """One replica's resource use (a single sample; CPU is None when the engine gives no previous one)."""
        running = container.status == "running"
        if not running:
            return ContainerStats(replica=replica, container=container.name, running=False)
        raw: dict[str, Any] = self._call(
            f"read stats of {container.name}",
            # stream=False answers one dict; the stub's return type ignores `stream`.
            lambda: cast(dict[str, Any], container.stats(stream=False, one_shot=True)),
        )
        mem = raw.get("memory_stats") or {}
        usage, limit = mem.get("usage"), mem.get("limit")
        cpu, pre = raw.get("cpu_stats") or {}, raw.get("precpu_stats") or {}
        cpu_percent = None
        try:
            d_cpu = cpu["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"]
            d_sys = cpu["system_cpu_usage"] - pre["system_cpu_usage"]
            if d_sys > 0 and pre["system_cpu_usage"] > 0:
                cpu_percent = round(100.0 * d_cpu / d_sys * (cpu.get("online_cpus") or 1), 2)
        except (KeyError, TypeError):
            pass
        return ContainerStats(
            replica=replica,
            container=container.name,
            running=True,
            memory_mb=round(usage / MB, 2) if isinstance(usage, (int, float)) else None,
            memory_limit_mb=round(limit / MB, 2) if isinstance(limit, (int, float)) else None,
            cpu_percent=cpu_percent,
            pids=(raw.get("pids_stats") or {}).get("current"),
        )

    def stats(self, service: str) -> list[ContainerStats]:
        """Memory, CPU and pids of every replica of a service, replica 0 first."""
        self._spec(service)
        return [self._stats_of(r, c) for r, c in sorted(self._replicas(service).items())]

    def kill(self, service: str, signal: int | str = "SIGKILL") -> ServiceStatus:
        """Send `signal` to every running replica, as a crash would (not a restart; nothing restarts it)."""
        self._spec(service)
        name = signals.Signals(signal).name if isinstance(signal, int) else str(signal).upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        if name not in signals.Signals.__members__:
            raise ConfigError(f"signal: unknown signal {signal!r}")
        with self._lock:
            replicas = self._replicas(service)
            self._preflight(service, max(1, max(replicas, default=0) + 1), "kill")
            running = [c for c in replicas.values() if c.status == "running"]
            for container in running:
                self._guard(container, "kill")

                def kill(container: Container = container) -> None:
                    try:
                        container.kill(signal=name)
                    except docker.errors.APIError as exc:
                        if exc.status_code != 409:  # 409: it died on its own meanwhile
                            raise

                self._call(f"kill container {container.name}", kill, write=True)
            if name in ("SIGKILL", "SIGTERM"):
                deadline = time.monotonic() + KILL_WAIT_S
                for container in running:
                    # Not through the breaker: a wait that times out says the container lives, not that the
                    # engine is failing.
                    with self._api(f"wait for container {container.name}"):
                        try:
                            container.wait(timeout=max(0.5, deadline - time.monotonic()))
                        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                            if name == "SIGKILL":
                                raise TransientError(
                                    f"{container.name} still runs {KILL_WAIT_S:g}s after SIGKILL"
                                ) from None
                            # A process may handle or ignore SIGTERM; the status says whether it still runs.
        return self.status(service)

    def shutdown_all(self) -> None:
        """Stop and remove every container of this project (teardown)."""
        errors: list[str] = []
        with self._lock:
            labels = [f"{MANAGED}=true", f"{PROJECT}={self.project}"]
            found = self._call(
                "list the project's containers",
                lambda: self.client.containers.list(all=True, filters={"label": labels}),
            )
            for container in found:
                try:
                    self._remove(self._guard(container, "remove"), STOP_GRACE_S)
                except (ToolError, NotFound) as exc:
                    errors.append(str(exc))
        if errors:
            raise ToolError("; ".join(errors))
