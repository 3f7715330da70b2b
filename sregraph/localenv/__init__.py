"""The embedded local environment: a three-service app, its telemetry, runtime, load and chaos.

`LocalApp` is imported lazily so that running one service (``python -m sregraph.localenv.service``) does
not pay for the app's imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sregraph.localenv.app import LocalApp
    from sregraph.localenv.chaos import FAULTS, FaultInjection
    from sregraph.localenv.layout import DEFAULT_CONFIGS, TOPOLOGY

__all__ = ["DEFAULT_CONFIGS", "FAULTS", "TOPOLOGY", "FaultInjection", "LocalApp"]

_HOMES = {
    "DEFAULT_CONFIGS": "layout",
    "FAULTS": "chaos",
    "TOPOLOGY": "layout",
    "FaultInjection": "chaos",
    "LocalApp": "app",
}
"""Which module of the package defines each name."""


def __getattr__(name: str) -> Any:
    """Load the module that defines one of the names above on its first use."""
    if name in _HOMES:
        return getattr(importlib.import_module(f"sregraph.localenv.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
