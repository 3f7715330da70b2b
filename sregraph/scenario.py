"""Scenarios: a fault injected into the local application, then one incident run through the graph."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sregraph.config import Settings
from tools.base import ConfigError
from tools.domain import Trigger


class Scenario(BaseModel):
    """One scenario file."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    fault: str
    """A chaos fault of the local app, or `none` for a healthy control."""
    service: str
    params: dict[str, Any] = Field(default_factory=dict)
    warmup_s: float = 8.0
    """Normal traffic before the fault, so the observer has a baseline."""
    expect: dict[str, Any] = Field(default_factory=dict)


def bundled() -> list[str]:
    """Names of the scenarios shipped with sregraph."""
    folder = resources.files("sregraph").joinpath("scenarios")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_scenario(name_or_path: str) -> Scenario:
    """A bundled scenario by name, or a scenario file by path; errors name the field."""
    path = Path(name_or_path)
    if path.exists():
        text, source = path.read_text(), str(path)
    else:
        resource = resources.files("sregraph").joinpath("scenarios", f"{name_or_path}.yaml")
        if not resource.is_file():
            raise ConfigError(
                f"no scenario {name_or_path!r}: not a file, and not one of {', '.join(bundled())}"
            )
        text, source = resource.read_text(), f"bundled scenario {name_or_path}"
    try:
        return Scenario.model_validate(yaml.safe_load(text))
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def start_app(settings: Settings) -> Any:
    """Start (or re-attach to) the local application with load flowing."""
    # Reading scenarios (`sregraph scenarios`, the CLI's start-up) does not load the local app.
    from sregraph.localenv.app import LocalApp

    app = LocalApp(settings.data_dir / "app", runtime=settings.runtime, docker_url=settings.docker_url)
    app.start(wait_healthy=True)
    app.start_load()
    return app


def inject(app: Any, scenario: Scenario) -> None:
    """Apply the scenario's fault (nothing for a healthy control)."""
    if scenario.fault != "none":
        app.inject(scenario.fault, scenario.service, **scenario.params)


def trigger_for(scenario: Scenario, now: float) -> Trigger:
    """The trigger a scenario run starts with: a scan, as a watching observer would do."""
    return Trigger(
        source="scenario",
        summary=f"scenario {scenario.name}",
        fired_at=now,
        labels={"scenario": scenario.name},
    )
