"""The embedded local environment: a three-service app, its telemetry, runtime, load and chaos.

`LocalApp` is imported lazily so that running one service (``python -m sregraph.localenv.service``) does
not pay for the app's imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sregraph.localenv.app import DEFAULT_CONFIGS, FAULTS, TOPOLOGY, FaultInjection, LocalApp

__all__ = ["DEFAULT_CONFIGS", "FAULTS", "TOPOLOGY", "FaultInjection", "LocalApp"]


def __getattr__(name: str) -> Any:
    """Load the app module on first use of one of its names."""
    if name in __all__:
        from sregraph.localenv import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
