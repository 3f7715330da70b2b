"""The app's shape and where it lives: services and who calls whom, their default configs, ports, app.json.

Everything lives under one data directory, and the ports are chosen once and saved in ``app.json``, so a new
`LocalApp` on the same directory (a worker restarted after SIGKILL) re-attaches to the running services::

    data_dir/app.json          ports, and the runtime the services run on (with its engine, image, project)
    data_dir/telemetry.db      metrics, logs, spans (LocalTelemetryStore)
    data_dir/config-repo/      git repo; services/<name>.yaml on main is what runs after a restart
    data_dir/runtime/          supervisor state and per-service stdout logs
    data_dir/chaos.jsonl       every injected fault (ground truth for evals; the services never log it)

`runtime.scale` starts extra replicas on PORT+i; they serve and report telemetry with a ``replica`` label, but
nothing load-balances to them (callers use replica 0), so scaling adds capacity only in name.
"""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path
from typing import Any

from tools.base import ConfigError, NotFound, ToolError

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

PORT_BLOCK = 8
"""Ports reserved per service: PORT for replica 0, PORT+i for replica i (so at most 8 replicas)."""
PORT_RANGE = (20000, 32000)
"""Below Linux's default ephemeral range, so outgoing connections never hold a port we want to listen on."""
HOST = "127.0.0.1"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def check_service(service: str) -> None:
    """NotFound naming the app's services unless `service` is one of them."""
    if service not in TOPOLOGY:
        raise NotFound(f"unknown service {service!r}; known services: {', '.join(TOPOLOGY)}")


def config_path(repo_dir: Path, service: str) -> Path:
    """The config file a service reads at start, in the config repo's work tree (main)."""
    return repo_dir / "services" / f"{service}.yaml"


def load_ports(data_dir: Path) -> dict[str, int]:
    """The ports saved in `data_dir`'s app.json, or fresh ones saved for next time."""
    path = data_dir / "app.json"
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
    save_layout(data_dir, {"ports": ports})
    return ports


def save_layout(data_dir: Path, fields: dict[str, Any]) -> None:
    """Merge `fields` into `data_dir`'s app.json (atomically)."""
    path = data_dir / "app.json"
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
