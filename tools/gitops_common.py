"""What the local and the GitHub GitOps backends share: the repository layout, change kinds, commit messages.

A service's config is `services/<service>.yaml` on the deploy branch; sregraph's remediation branches start
with `sregraph/`; its commits end in a paragraph of `Sregraph-*` trailers (see tools/gitops.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import yaml

from tools.base import ConfigError

BRANCH_PREFIX = "sregraph/"
SERVICES_DIR = "services"
KIND_TRAILER = "Sregraph-Kind"
SERVICES_TRAILER = "Sregraph-Services"
PR_TRAILER = "Sregraph-PR"
SIGNATURE_TRAILER = "Sregraph-Signature"

ChangeKind = Literal["deploy", "config", "rollback", "other"]
CHANGE_KINDS: tuple[str, ...] = ("deploy", "config", "rollback", "other")
"""Every `ChangeKind`, for checks at run time."""

# Service names become file names and branch names: no slashes, no leading dot, nothing git or YAML minds.
SERVICE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def service_path(service: str) -> str:
    """The path of `service`'s config file; ConfigError for a name that is not a valid service name."""
    if not isinstance(service, str) or not SERVICE_NAME_RE.match(service) or ".." in service:
        raise ConfigError(f"service: {service!r} is not a valid service name (letters, digits, . _ -)")
    return f"{SERVICES_DIR}/{service}.yaml"


def path_service(path: str) -> str | None:
    """The service whose config file `path` is, or None for any other file."""
    match = re.fullmatch(rf"{SERVICES_DIR}/([^/]+)\.yaml", path)
    return match.group(1) if match else None


def dump_config(config: Mapping[str, Any], field: str) -> bytes:
    """A service config as the YAML bytes committed; ConfigError naming `field` if it cannot be written."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"{field}: expected a mapping, got {type(config).__name__}")
    try:
        text = yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True, default_flow_style=False)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{field}: cannot be written as YAML: {exc}") from exc
    return text.encode()


def parse_config(data: bytes, where: str) -> dict[str, Any]:
    """A committed config file as a mapping (empty for an empty file); ConfigError naming `where` otherwise."""
    try:
        loaded = yaml.safe_load(data.decode())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{where}: expected a YAML mapping, got {type(loaded).__name__}")
    return loaded


def same_config(data: bytes, config: Mapping[str, Any]) -> bool:
    """Whether the committed bytes `data` hold `config` (unreadable bytes hold nothing)."""
    try:
        return parse_config(data, "") == dict(config)
    except ConfigError:
        return False


def commit_message(
    title: str,
    body: str,
    kind: str,
    services: Sequence[str],
    pr_id: int | None = None,
    signature: str | None = None,
) -> str:
    """A commit message sregraph writes: title, body, then its trailers as the last paragraph."""
    trailers = [f"{KIND_TRAILER}: {kind}", f"{SERVICES_TRAILER}: {','.join(services)}"]
    if pr_id is not None:
        trailers.append(f"{PR_TRAILER}: {pr_id}")
    if signature is not None:
        trailers.append(f"{SIGNATURE_TRAILER}: {signature}")
    # Our trailers always form the last paragraph, so text in a PR body cannot pose as one.
    parts = [title.strip() or "(no title)", body.strip(), "\n".join(trailers)]
    return "\n\n".join(part for part in parts if part) + "\n"


def slug(text: str) -> str:
    """`text` as a short lowercase name for branches and e-mail addresses."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48].strip("-")
    return name or "change"
