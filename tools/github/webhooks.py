"""GitHub webhook deliveries: signature verification, parsing, and the receiver that turns them into commands."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from tools.base import ConfigError, Refused, ToolError
from tools.github.commands import Command

logger = logging.getLogger(__name__)


def verify_signature(secret: str | bytes, body: bytes, header: str | None) -> bool:
    """Whether `header` (X-Hub-Signature-256) is the HMAC-SHA256 of `body` under `secret`; constant time."""
    if not secret or not header:
        return False
    key = secret.encode() if isinstance(secret, str) else secret
    expected = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header.strip().encode())


class WebhookEvent(BaseModel):
    """One verified webhook delivery."""

    event: str
    delivery: str
    action: str = ""
    payload: dict[str, Any]


def parse_webhook(secret: str | bytes, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
    """A delivery whose signature checks out; Refused for a bad or missing signature, ToolError for bad JSON."""
    lower = {k.lower(): v for k, v in headers.items()}
    if not verify_signature(secret, body, lower.get("x-hub-signature-256")):
        raise Refused("webhook: missing or bad X-Hub-Signature-256; delivery rejected")
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise ToolError(f"webhook: body is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ToolError("webhook: body is not a JSON object")
    return WebhookEvent(
        event=lower.get("x-github-event", ""),
        delivery=lower.get("x-github-delivery", ""),
        action=str(payload.get("action", "")),
        payload=payload,
    )


@dataclass
class WebhookResult:
    """What a webhook delivery led to: the HTTP status to answer GitHub with, and honoured commands."""

    status: int
    reason: str
    commands: list[Command]


class WebhookCommands(Protocol):
    """What a `WebhookReceiver` asks of its surface (a `GitHubIncidentSurface`, or a proxy around one)."""

    def commands_from_webhook(self, payload: Mapping[str, Any]) -> list[Command]:
        """Honoured commands in the comment of a verified delivery."""
        ...


class WebhookReceiver:
    """Turns GitHub webhook deliveries (issue_comment, issues) into honoured commands; mount it in any server."""

    def __init__(self, surface: WebhookCommands, secret: str | bytes, *, remember: int = 1000) -> None:
        """Verify deliveries with `secret` (the webhook's secret); remember recent delivery ids to drop repeats."""
        if not secret:
            raise ConfigError("webhook secret: must not be empty; unsigned deliveries are never accepted")
        self.surface = surface
        self._secret = secret
        self._seen: deque[str] = deque(maxlen=remember)

    def handle(self, headers: Mapping[str, str], body: bytes) -> WebhookResult:
        """401 for a bad signature, 400 for a bad body, 200 for nothing to do, 202 with commands."""
        try:
            event = parse_webhook(self._secret, headers, body)
        except Refused as exc:
            logger.warning("%s", exc)
            return WebhookResult(401, str(exc), [])
        except ToolError as exc:
            return WebhookResult(400, str(exc), [])
        if event.delivery and event.delivery in self._seen:
            return WebhookResult(200, f"delivery {event.delivery} already handled", [])
        if event.delivery:
            self._seen.append(event.delivery)
        if event.event == "ping":
            return WebhookResult(200, "pong", [])
        if event.event != "issue_comment" or event.action != "created":
            return WebhookResult(200, f"{event.event}/{event.action}: nothing to do", [])
        commands = self.surface.commands_from_webhook(event.payload)
        return WebhookResult(202 if commands else 200, f"{len(commands)} command(s) honoured", commands)
