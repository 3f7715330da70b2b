"""What the services run on, and how each is started there.

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
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from sregraph.localenv.layout import HOST, PROJECT_ROOT, TOPOLOGY, config_path, save_layout
from tools.base import ConfigError
from tools.runtime import ProcessSpec

if TYPE_CHECKING:
    from tools.docker_runtime import ContainerSpec

RUNTIMES = ("process", "docker")
APP_IMAGE = "localhost/sregraph-app:latest"
"""The services' image (Debian's python3 plus their dependencies), built by scripts/container-engine.sh."""
DEFAULT_ENGINE_URL = f"unix://{PROJECT_ROOT / '.sregraph' / 'engine' / 'podman.sock'}"
"""Where scripts/container-engine.sh serves the Docker API by default (used when DOCKER_HOST is unset)."""


def choose_runtime(
    data_dir: Path, runtime: str | None, docker_url: str | None, image: str | None
) -> dict[str, str]:
    """The runtime the app in `data_dir` runs on: the requested one, else the saved one; saved for re-attaching."""
    path = data_dir / "app.json"
    saved = json.loads(path.read_text()).get("runtime") if path.exists() else None
    if saved is not None and not (isinstance(saved, dict) and saved.get("kind") in RUNTIMES):
        raise ConfigError(
            f"{path}: field 'runtime' must be an object whose 'kind' is one of {', '.join(RUNTIMES)}"
        )
    if runtime is not None and runtime not in RUNTIMES:
        raise ConfigError(f"runtime: unknown runtime {runtime!r}; known runtimes: {', '.join(RUNTIMES)}")
    if saved is not None and runtime is not None and runtime != saved["kind"]:
        raise ConfigError(
            f"runtime: this app ({data_dir}) runs on {saved['kind']!r}, not {runtime!r}; stop it and "
            f"remove {path} to switch"
        )
    kind = runtime or (saved["kind"] if saved else "process")
    choice = {"kind": kind}
    if kind == "docker":
        previous = saved or {}
        digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:10]
        choice.update(
            url=docker_url or previous.get("url") or os.environ.get("DOCKER_HOST") or DEFAULT_ENGINE_URL,
            image=image or previous.get("image") or APP_IMAGE,
            project=previous.get("project") or f"sregraph-{digest}",
        )
    if choice != saved:
        save_layout(data_dir, {"runtime": choice})
    return choice


def process_specs(
    data_dir: Path, repo_dir: Path, ports: dict[str, int], ship_env: Mapping[str, dict[str, str]]
) -> dict[str, ProcessSpec]:
    """How the supervisor runs each service; `--config` is the file in the repo's work tree (main).

    `ship_env` adds, per service, the environment that makes it ship its telemetry through the SDK.
    """
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
            str(ports[name]),
            "--config",
            str(config_path(repo_dir, name)),
            "--telemetry",
            str(data_dir / "telemetry.db"),
        ]
        for down in downstreams:
            argv += ["--downstream", f"{down}=http://{HOST}:{ports[down]}"]
        env = {"PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1", **ship_env.get(name, {})}
        specs[name] = ProcessSpec(name=name, argv=argv, env=env, cwd=data_dir)
    return specs


def container_specs(
    processes: dict[str, ProcessSpec],
    image: str,
    data_dir: Path,
    repo_dir: Path,
    ship_env: Mapping[str, dict[str, str]],
) -> dict[str, ContainerSpec]:
    """The process specs as containers: same arguments, the image's python3, host network, same paths."""
    # The Docker SDK loads only for the container runtime.
    from tools.docker_runtime import BindMount, ContainerSpec

    # Parents before children, so the read-only config repo is mounted over the writable data directory.
    mounts = sorted(
        {
            BindMount(str(PROJECT_ROOT), str(PROJECT_ROOT), read_only=True),
            BindMount(str(data_dir), str(data_dir), read_only=False),
            BindMount(str(repo_dir), str(repo_dir), read_only=True),
        },
        key=lambda m: (len(Path(m.target).parts), m.target),
    )
    env = {"PYTHONPATH": str(PROJECT_ROOT), "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return {
        name: ContainerSpec(
            name=name,
            image=image,
            command=["python3", *spec.argv[1:]],
            env={**env, **ship_env.get(name, {})},
            working_dir=str(spec.cwd) if spec.cwd else None,
            mounts=tuple(mounts),
            network_mode="host",
        )
        for name, spec in processes.items()
    }
