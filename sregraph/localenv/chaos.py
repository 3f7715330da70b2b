"""Faults injected into the running app: the faults known, checking a request for one, and doing it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, Field

from sregraph.localenv.layout import BAD_VERSION, HOST, check_service
from sregraph.localenv.service import DISK_FULL_MARKER
from tools.base import ConfigError, ToolError

if TYPE_CHECKING:
    from sregraph.localenv.app import LocalApp

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


class FaultInjection(BaseModel):
    """What `inject` did."""

    fault: str
    service: str
    params: dict[str, Any] = Field(default_factory=dict)
    at: float
    detail: str = ""


def check_request(fault: str, service: str, params: dict[str, Any]) -> None:
    """ConfigError (NotFound for the service) unless `fault` on `service` with `params` can be injected."""
    if fault not in FAULTS:
        raise ConfigError(f"fault: unknown fault {fault!r}; known faults: {', '.join(FAULTS)}")
    check_service(service)
    extra = set(params) - FAULTS[fault]
    if extra:
        allowed = ", ".join(sorted(FAULTS[fault])) or "none"
        raise ConfigError(f"{', '.join(sorted(extra))}: not a parameter of {fault} (allowed: {allowed})")
    for key, value in params.items():
        if key != "version" and not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: must be a number, got {value!r}")


def inject(app: LocalApp, fault: str, service: str, params: dict[str, Any]) -> str:
    """Do a checked fault to `app`'s `service`: through its runtime, its config repo or its /chaos endpoint.

    Returns what was done, for the journal.
    """
    if fault == "crash":
        if not app.runtime.status(service).running:
            raise ToolError(f"cannot crash {service}: it is not running")
        status = app.runtime.kill(service)
        return f"killed; exit_code={status.exit_code}"
    if fault == "dependency_down":
        # A clean shutdown (exit 0), as when a dependency is taken down rather than crashing.
        if not app.runtime.status(service).running:
            raise ToolError(f"cannot take {service} down: it is not running")
        status = app.runtime.stop(service)
        return f"stopped; exit_code={status.exit_code}"
    if fault == "conversion_drop":
        # Requests keep succeeding but nothing is bought: a config change turns payment capture off.
        config = {**app.gitops.config(service), "capture": False}
        change = app.gitops.commit_config(
            service,
            config,
            f"{service}: disable payment capture during PSP migration",
            kind="config",
            author="ops",
        )
        status = app.apply(service)
        return f"config {change.sha[:10]} sets capture=false; running={status.running}"
    if fault == "disk_full":
        # The service's volume fills up: its writes fail until someone frees space; restarts do not help.
        ratio = min(1.0, max(0.0, float(params.get("ratio", 0.5))))
        volume = app.volume(service)
        volume.mkdir(parents=True, exist_ok=True)
        (volume / DISK_FULL_MARKER).write_text(f"{ratio:g}\n")
        return f"volume {volume} full: {ratio:.0%} of writes fail with ENOSPC"
    if fault == "bad_deploy":
        version = str(params.get("version", BAD_VERSION))
        config = {**app.gitops.config(service), "version": version}
        change = app.gitops.commit_config(
            service, config, f"Deploy {service} {version}", kind="deploy", author="release-bot"
        )
        status = app.apply(service)
        return f"deployed {version} as {change.sha[:10]}; running={status.running}"
    if fault == "clear":
        (app.volume(service) / DISK_FULL_MARKER).unlink(missing_ok=True)  # space freed
    chaos = {"memory_leak": "leak", "latency": "latency", "error_rate": "errors", "cpu": "cpu"}
    body = {"fault": chaos.get(fault, fault), **params}
    replicas = max(1, app.runtime.status(service).replicas)
    return json.dumps(post_chaos(service, app.ports[service], replicas, body))


def post_chaos(service: str, port: int, replicas: int, body: dict[str, Any]) -> dict[str, Any]:
    """POST /chaos to every replica of a service (replica i listens on `port` + i); the replicas' replies."""
    replies: dict[str, Any] = {}
    with httpx.Client(timeout=2.0) as client:
        for i in range(replicas):
            url = f"http://{HOST}:{port + i}/chaos"
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
