"""Tool calls as record mode logs them: which backends are recorded, which calls change the world, a call's
arguments as JSON, and the key a call is matched by on replay."""

from __future__ import annotations

import functools
import inspect
import json
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter

from tools.base import Deployer, GitOps, HealthChecker, IncidentSurface, Notifier, Runtime

TOOLS: dict[str, type] = {
    "runtime": Runtime,
    "incidents": IncidentSurface,
    "gitops": GitOps,
    "notifier": Notifier,
    "health": HealthChecker,
    "deployer": Deployer,
}
"""The recorded backends (telemetry has its own format) and the protocol whose methods are recorded."""

MUTATING: dict[tuple[str, str], tuple[str, ...]] = {
    ("runtime", "start"): ("service",),
    ("runtime", "stop"): ("service",),
    ("runtime", "restart"): ("service",),
    ("runtime", "scale"): ("service", "replicas"),
    ("incidents", "open_issue"): ("fingerprint",),
    ("incidents", "comment"): ("issue_id", "key"),
    ("incidents", "set_labels"): ("issue_id", "add"),
    ("incidents", "close"): ("issue_id",),
    ("gitops", "propose"): ("service", "key"),
    ("gitops", "merge"): ("pr_id",),
    ("deployer", "apply"): ("service",),
    ("notifier", "notify"): ("incident_id", "event"),
}
"""Calls that change the world, and the arguments that identify them on replay.

Text arguments (comment bodies, PR titles, issue bodies) are recorded but not matched, so a reworded comment
still replays; they are what side-effect scoring reads.
"""

ACTION_CALLS: dict[tuple[str, str], str] = {
    ("runtime", "start"): "start",
    ("runtime", "stop"): "stop",
    ("runtime", "restart"): "restart",
    ("runtime", "scale"): "scale",
    ("gitops", "merge"): "merge",
    ("deployer", "apply"): "apply",
}
"""Mutating calls that change what runs (remediation actions), as opposed to talking about it."""


def to_jsonable(value: Any) -> Any:
    """Plain JSON data for a value: pydantic models dumped, tuples as lists, keys as strings."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def canonical(value: Any) -> str:
    """Canonical JSON text: equal values give equal text (the key of a recorded call)."""
    return json.dumps(to_jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def call_text(tool: str, method: str, args: dict[str, Any]) -> str:
    """A call as a person reads it: `runtime.status(service='payments')`."""
    shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
    if len(shown) > 200:
        shown = shown[:197] + "..."
    return f"{tool}.{method}({shown})"


@functools.cache
def protocol_methods(protocol: type) -> dict[str, inspect.Signature]:
    """Public methods a protocol declares, with their signatures."""
    return {
        name: inspect.signature(fn)
        for name, fn in vars(protocol).items()
        if callable(fn) and not name.startswith("_")
    }


@functools.cache
def result_adapter(protocol: type, method: str) -> TypeAdapter[Any]:
    """The pydantic adapter of a protocol method's return type (to dump and to rebuild results)."""
    hints = typing.get_type_hints(getattr(protocol, method))
    return TypeAdapter(hints.get("return", Any))


def bind_args(protocol: type, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Arguments by name, defaults filled in, as JSON data."""
    sig = protocol_methods(protocol)[method]
    bound = sig.bind(None, *args, **kwargs)
    bound.apply_defaults()
    named = dict(bound.arguments)
    named.pop("self", None)
    extra = named.pop("kwargs", None)
    if isinstance(extra, dict):
        named.update(extra)
    return {k: to_jsonable(v) for k, v in named.items()}


def identity(tool: str, method: str, args: dict[str, Any]) -> str:
    """The replay key of a call: every argument for reads, the identifying ones for mutations."""
    keys = MUTATING.get((tool, method))
    chosen = args if keys is None else {k: args.get(k) for k in keys}
    return f"{tool}.{method}:{canonical(chosen)}"


def caller_name(depth: int = 2) -> str:
    """`module:qualname` of the function `depth` frames up (who read the clock)."""
    frame = sys._getframe(depth)
    return f"{frame.f_globals.get('__name__', '?')}:{frame.f_code.co_qualname}"
