"""Remediation policy: which typed actions each service allows, with what limits. Enforced here, in code.

Nothing a model writes and nothing in a log or a comment can widen this: the engineer asks `Policy.check`
before every action and refuses what it refuses.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tools.base import ConfigError
from tools.domain import Action, ActionKind


def _default_allowed() -> list[ActionKind]:
    """The actions a service allows when its policy does not list them."""
    return ["restart", "start"]


class ServicePolicy(BaseModel):
    """Rules for one service."""

    model_config = ConfigDict(extra="forbid")

    allowed: list[ActionKind] = Field(default_factory=_default_allowed)
    max_attempts: int = Field(default=3, ge=0)
    cooldown_s: float = Field(default=60.0, ge=0)
    """Minimum time between two actions of the same kind on the same service (across incidents)."""
    require_approval: list[ActionKind] = Field(default_factory=list)
    dry_run: bool = False
    auto_merge: bool = True
    """Merge GitOps pull requests without a human (after approval, where approval is required)."""
    max_replicas: int = Field(default=3, ge=1)


class PolicyDecision(BaseModel):
    """The verdict on one action."""

    allowed: bool
    needs_approval: bool = False
    dry_run: bool = False
    reasons: list[str] = Field(default_factory=list)


class Policy(BaseModel):
    """The whole remediation policy file."""

    model_config = ConfigDict(extra="forbid")

    defaults: ServicePolicy = Field(default_factory=ServicePolicy)
    services: dict[str, ServicePolicy] = Field(default_factory=dict)

    def for_service(self, service: str) -> ServicePolicy:
        """The rules that apply to `service` (its own entry, or the defaults)."""
        return self.services.get(service, self.defaults)

    def check(
        self,
        action: Action,
        *,
        attempts_so_far: int,
        last_same_action_at: float | None,
        now: float,
        known_services: list[str],
    ) -> PolicyDecision:
        """Decide whether `action` may run now."""
        rules = self.for_service(action.service)
        reasons: list[str] = []
        if action.service not in known_services:
            reasons.append(f"unknown service {action.service!r}")
        if action.kind not in rules.allowed:
            reasons.append(
                f"{action.kind} is not allowed on {action.service} (allowed: {', '.join(rules.allowed)})"
            )
        if attempts_so_far >= rules.max_attempts:
            reasons.append(
                f"{attempts_so_far} attempts already made; the limit for {action.service} is {rules.max_attempts}"
            )
        if last_same_action_at is not None and now - last_same_action_at < rules.cooldown_s:
            wait = rules.cooldown_s - (now - last_same_action_at)
            reasons.append(f"{action.kind} on {action.service} is cooling down for another {wait:.0f}s")
        if action.kind == "scale":
            replicas = int(action.params.get("replicas", 0))
            if not 1 <= replicas <= rules.max_replicas:
                reasons.append(f"replicas={replicas} is outside 1..{rules.max_replicas}")
        return PolicyDecision(
            allowed=not reasons,
            needs_approval=action.kind in rules.require_approval,
            dry_run=rules.dry_run,
            reasons=reasons,
        )


def load_policy(path: Path | str | None = None) -> Policy:
    """Read a policy YAML file (the bundled default when `path` is None); errors name the field."""
    if path is None:
        text = resources.files("agents").joinpath("default_policy.yaml").read_text()
        source = "bundled default policy"
    else:
        file = Path(path)
        if not file.exists():
            raise ConfigError(f"policy file {file} does not exist")
        text, source = file.read_text(), str(file)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{source}: {problems}") from exc
