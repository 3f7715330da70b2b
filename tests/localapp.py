"""Shared set-up for tests that run incidents on the real local application."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from sregraph.config import Settings
from sregraph.engine import Engine, local_toolbox
from sregraph.localenv.app import LocalApp
from tools.domain import Trigger

ROOT = Path(__file__).resolve().parents[1]
FAST = {
    "observer": {"window_s": 4, "baseline_s": 20, "detect_timeout_s": 15},
    "engineer": {"verify_timeout_s": 20},
}
WARMUP_S = 6.0


def write_config(tmp_path: Path, policy: dict[str, Any] | None = None, **extra: Any) -> Path:
    """A sregraph.yaml for a test: fast observer windows, data under tmp_path, optional policy."""
    data: dict[str, Any] = {"data_dir": str(tmp_path / "data"), **FAST, **extra}
    if policy is not None:
        policy_file = tmp_path / "policy.yaml"
        policy_file.write_text(yaml.safe_dump(policy))
        data["policy_file"] = str(policy_file)
    path = tmp_path / "sregraph.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@contextmanager
def running_app(settings: Settings) -> Iterator[LocalApp]:
    """The three-service app with load and a baseline; always stopped afterwards."""
    local = LocalApp(settings.data_dir / "app")
    try:
        local.start()
        local.start_load()
        time.sleep(WARMUP_S)
        yield local
    finally:
        local.stop()
        local.close()


def engine_for(settings: Settings, app: LocalApp, chat_model: Any = None) -> Engine:
    """An engine on the local backends around `app`."""
    return Engine(settings, local_toolbox(settings, app), chat_model=chat_model)


def run_incident(engine: Engine) -> dict[str, Any]:
    """Start one incident thread as a scenario run would."""
    return engine.start(Trigger(source="scenario", summary="test", fired_at=time.time()))
