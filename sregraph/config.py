"""One typed configuration, loaded once: `sregraph.yaml`, then `SREGRAPH_*` environment variables, then defaults.

Environment variables address nested fields with a double underscore: `SREGRAPH_BRAIN=llm`,
`SREGRAPH_LLM__PROVIDER=openai`, `SREGRAPH_OBSERVER__WINDOW_S=10`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.llm import LLMConfig
from tools.base import ConfigError

ENV_PREFIX = "SREGRAPH_"


class ObserverConfig(BaseModel):
    """How the observer decides an incident exists."""

    model_config = ConfigDict(extra="forbid")

    window_s: float = 6.0
    """Recent window compared with the baseline."""
    baseline_s: float = 30.0
    """Length of the baseline window that ends where the recent window starts."""
    z_threshold: float = 4.0
    """Robust z-score above which a metric counts as deviating."""
    confirm_polls: int = 2
    """Consecutive polls a deviation must persist before an incident opens (flap suppression)."""
    confirm_s: float = 1.5
    """...and for at least this long, so a restart's sub-second gap is not an incident."""
    poll_s: float = 0.5
    detect_timeout_s: float = 20.0
    """How long one observe step watches before calling the system healthy."""


class AnalystConfig(BaseModel):
    """Analyst knobs."""

    model_config = ConfigDict(extra="forbid")

    change_lookback_s: float = 900.0
    """Deploys and config changes this far before the onset count as suspects."""
    min_confidence: float = 0.3
    """Below this the engineer escalates instead of acting."""
    similar_k: int = 3
    memory_min_similarity: float = 0.55


class EngineerConfig(BaseModel):
    """Engineer knobs."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = 3
    """Remediation attempts per incident before escalating (a policy may lower it per service)."""
    verify_timeout_s: float = 25.0
    stable_checks: int = 3
    """Consecutive healthy polls that count as recovered."""
    verify_poll_s: float = 0.5


class WorkerConfig(BaseModel):
    """The long-lived worker."""

    model_config = ConfigDict(extra="forbid")

    max_concurrent: int = Field(default=4, ge=1, le=256)
    """Incident threads run at once; more wait their turn (one run per incident at any time)."""


class GitHubSettings(BaseModel):
    """Where the GitHub incident surface and GitOps repository live (the token comes only from the environment)."""

    model_config = ConfigDict(extra="forbid")

    repo: str = ""
    """owner/name of the repository whose issues are the incident surface."""
    base_url: str = "https://api.github.com"
    """GitHub Enterprise: https://HOST/api/v3."""
    gitops_repo: str = ""
    """owner/name of the deploy-config repository (services/<name>.yaml); empty = use the local git repo."""
    deploy_branch: str = "main"
    timeout_s: float = 10.0


class Settings(BaseModel):
    """All of sregraph's configuration."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Path(".sregraph")
    brain: Literal["deterministic", "llm"] = "deterministic"
    llm: LLMConfig = Field(default_factory=LLMConfig)
    runtime: Literal["process", "docker"] = "process"
    """Where the local app's services run: supervised processes, or containers through the Docker API."""
    docker_url: str | None = None
    """Docker Engine API (unix:// or tcp://); default: $DOCKER_HOST, else scripts/container-engine.sh's socket."""
    surface: Literal["local", "github"] = "local"
    """Where incidents are opened: a local SQLite tracker, or GitHub issues (see docs/github.md)."""
    github: GitHubSettings = Field(default_factory=GitHubSettings)
    policy_file: Path | None = None
    """Remediation policy YAML; the bundled default when unset."""
    observer: ObserverConfig = Field(default_factory=ObserverConfig)
    analyst: AnalystConfig = Field(default_factory=AnalystConfig)
    engineer: EngineerConfig = Field(default_factory=EngineerConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)

    @property
    def checkpoint_db(self) -> Path:
        """SQLite file of the graph checkpoints."""
        return self.data_dir / "checkpoints.db"


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """Nested dict from SREGRAPH_A__B=value variables."""
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key in ("SREGRAPH_CONFIG", "SREGRAPH_HOME"):
            continue
        path = key[len(ENV_PREFIX):].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(path: Path | str | None = None, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Load settings from a YAML file (default `sregraph.yaml` if present), the environment and overrides."""
    environ = dict(os.environ) if environ is None else environ
    file = Path(path) if path else Path(environ.get("SREGRAPH_CONFIG", "sregraph.yaml"))
    data: dict[str, Any] = {}
    if file.exists():
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: the top level must be a mapping of settings")
        data = loaded
    elif path:
        raise ConfigError(f"config file {file} does not exist")
    data = _merge(data, _env_overrides(environ))
    data = _merge(data, {k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration ({file if file.exists() else 'defaults + environment'}): {problems}") from exc
