"""One typed configuration, loaded once: `sregraph.yaml`, then `SREGRAPH_*` environment variables, then defaults.

Environment variables address nested fields with a double underscore: `SREGRAPH_BRAIN=llm`,
`SREGRAPH_LLM__PROVIDER=openai`, `SREGRAPH_OBSERVER__WINDOW_S=10`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agents.analyst import AnalystConfig
from agents.engineer import EngineerConfig
from agents.llm_config import LLMConfig
from agents.observer import ObserverConfig
from tools.base import ConfigError
from tools.channels import NotificationsConfig
from tools.sql import StorageConfig

ENV_PREFIX = "SREGRAPH_"


class TelemetryConfig(BaseModel):
    """Where the agents read metrics from (logs and traces always come from the local store)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["local", "prometheus"] = "local"
    """local: the SQLite store the services write; prometheus: a Prometheus server's HTTP API."""
    prometheus_url: str = "http://127.0.0.1:9090"
    timeout_s: float = Field(default=5.0, gt=0)
    rate_window: str = Field(default="30s", pattern=r"^[1-9][0-9]*(ms|s|m|h)$")
    """Range of PromQL rate() (at least four scrape intervals)."""


class WorkerConfig(BaseModel):
    """The long-lived worker."""

    model_config = ConfigDict(extra="forbid")

    max_concurrent: int = Field(default=4, ge=1, le=256)
    """Incident threads run at once; more wait their turn (one run per incident at any time)."""
    interval_s: float = Field(default=2.0, gt=0, le=3600)
    """Seconds between two scans (`sregraph worker --interval`)."""
    http_port: int | None = Field(default=None, ge=1, le=65535)
    """Serve /metrics and /healthz on 127.0.0.1:PORT (`--http-port`); None: not served."""
    api_port: int | None = Field(default=None, ge=0, le=65535)
    """Serve the HTTP API (sregraph/server.py) on api_host:PORT (`--api-port`, 0: any free port); None: not served."""
    api_host: str = "127.0.0.1"
    """Where the API listens. It needs a token on every call, but a host other than loopback should be behind TLS."""


ALERTS_TOKEN_ENV = "SREGRAPH_ALERTS_TOKEN"
"""The receiver's bearer token: read from this environment variable only, never from a settings file."""


class AlertsConfig(BaseModel):
    """The worker's Alertmanager webhook receiver and the storm gate behind it (sregraph/alerts.py, storm.py)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=9094, ge=0, le=65535)
    """1-65535, or 0 for any free port."""
    path: str = Field(default="/alerts", pattern=r"^/[A-Za-z0-9/_.-]*$")
    insecure_no_auth: bool = False
    """Accept webhooks without a bearer token: only on a loopback host, and warned at start."""
    rate_per_s: float = Field(default=20.0, gt=0)
    """Requests per second one source address may send (token bucket)."""
    rate_burst: int = Field(default=100, ge=1)
    """...and how many it may send at once."""
    header_timeout_s: float = Field(default=5.0, gt=0, le=300)
    """A client must have sent its request line and headers within this long."""
    body_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """...and its body within this long after the headers."""
    max_connections: int = Field(default=32, ge=1, le=1024)
    """Connections served at once; more are answered 503 and closed."""
    group_wait_s: float = Field(default=30.0, ge=0)
    """A new alert group waits this long to collect its first batch before it starts an incident."""
    group_interval_s: float = Field(default=300.0, ge=0)
    """More alerts for a group already notified join its incident at most this often."""
    flap_window_s: float = Field(default=600.0, ge=0)
    max_flaps: int = Field(default=4, ge=2)
    """State changes within `flap_window_s` after which an alert counts as flapping (firing)."""


def alerts_token(environ: dict[str, str] | None = None) -> str | None:
    """The receiver's bearer token from $SREGRAPH_ALERTS_TOKEN (None when unset or empty)."""
    environ = dict(os.environ) if environ is None else environ
    return environ.get(ALERTS_TOKEN_ENV) or None


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
    timeout_s: float = Field(default=10.0, gt=0)


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
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    slo_file: Path | None = None
    """SLO file (sregraph or OpenSLO YAML) the API's /slo and the dashboard's SLO page evaluate; default
    ./slos.yaml when it exists."""
    notifications: NotificationsConfig = Field(default_factory=NotificationsConfig)
    """Channels (Slack, Discord, Teams, webhooks, email) and the routing tree (tools/channels.py)."""
    storage: StorageConfig = Field(default_factory=StorageConfig)
    """Where checkpoints, the ledger, the run registry and the leases live: SQLite files in the data dir, or one
    Postgres database shared by many workers (docs/scale-out.md)."""

    @field_validator("data_dir", mode="before")
    @classmethod
    def _data_dir_not_empty(cls, value: Any) -> Any:
        # Path("") is the current directory: an empty SREGRAPH_DATA_DIR= would write state into the cwd.
        if value is None or (isinstance(value, str | Path) and not str(value).strip()):
            raise ValueError("must not be empty (an empty value would write into the current directory)")
        return value

    @property
    def checkpoint_db(self) -> Path:
        """SQLite file of the graph checkpoints."""
        return self.data_dir / "checkpoints.db"


NOT_SETTINGS = frozenset(
    {
        "SREGRAPH_CONFIG",
        "SREGRAPH_HOME",
        ALERTS_TOKEN_ENV,
        "SREGRAPH_GITHUB_WEBHOOK_SECRET",
        # the project's scripts and tests: where the container engine, the apt log, the venv, the shared datasets
        # and the test model live, and how llama.cpp is built
        "SREGRAPH_ENGINE_DIR",
        "SREGRAPH_CACHE_DIR",
        "SREGRAPH_APT_LOG",
        "SREGRAPH_VENV",
        "SREGRAPH_LLAMA_CMAKE_ARGS",
        "SREGRAPH_SHARED_DATA",
        "SREGRAPH_TEST_GGUF",
        "SREGRAPH_UPDATE_SNAPSHOTS",
        "SREGRAPH_CHROMIUM",
        "SREGRAPH_TEST_ARTIFACTS",
    }
)
"""SREGRAPH_* variables that are not settings: every other one must name a setting (a typo is an error)."""


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """Nested dict from SREGRAPH_A__B=value variables."""
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key in NOT_SETTINGS:
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
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


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    """Overrides minus unset (None) values, at every level: an unset CLI flag leaves the file's value alone."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            value = _without_none(value)
            if not value:
                continue
        if value is not None:
            out[key] = value
    return out


def load_settings(
    path: Path | str | None = None, environ: dict[str, str] | None = None, **overrides: Any
) -> Settings:
    """Load settings from a YAML file (default `sregraph.yaml` if present), the environment and overrides."""
    environ = dict(os.environ) if environ is None else environ
    named = environ.get("SREGRAPH_CONFIG")
    if not path and named is not None:
        if not named.strip():
            raise ConfigError("SREGRAPH_CONFIG is set but empty; unset it or name a settings file")
        path = named  # a file named explicitly must exist, like --config
    file = Path(path) if path else Path("sregraph.yaml")
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
        raise ConfigError(
            f"config file {file} does not exist" + (" (from SREGRAPH_CONFIG)" if path == named else "")
        )
    data = _merge(data, _env_overrides(environ))
    data = _merge(data, _without_none(overrides))
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(
            f"invalid configuration ({file if file.exists() else 'defaults + environment'}): {problems}"
        ) from exc
