"""Where notifications go beyond the console: chat webhooks, a generic JSON webhook, email; and the routing
tree that picks channels for each notification, like Alertmanager's routes.

Each channel speaks its provider's documented payload: Slack incoming webhooks (`text` plus a `blocks`
section; Mattermost and Rocket.Chat take the same), Discord webhooks (`content`), Microsoft Teams workflow
webhooks (an Adaptive Card in `attachments`), a generic webhook (the notification as JSON), email over SMTP
(STARTTLS when asked), paging: a PagerDuty incident (Events API v2) or an Opsgenie alert (Alert API v2) per
incident, triggered, added to and resolved with it, and tickets: a Jira issue or a ServiceNow incident per
incident, with later notifications as comments or work notes. Every call has a timeout; every text passes the
redactor first.

`RoutedNotifier` is a `Notifier`: the graph calls it as it calls any other, and `IdempotentNotifier` around it
keeps each notification once across crashes. For each notification it builds labels (`event`, and `service`
and `severity` from the incident), walks the routes, and delivers to the channels they name, at most once per
`repeat_interval_s` for the same channel, service and event (grouping a flapping service's repeats).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import smtplib
import ssl
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Literal, Protocol
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tools.base import Clock, ConfigError, SystemClock, ToolError
from tools.notifier import current_key
from tools.redact import redact_out

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    """One notification, with the labels routing matched it on."""

    incident_id: str
    event: str
    text: str
    labels: dict[str, str]

    @property
    def title(self) -> str:
        """One line for a subject or a heading."""
        service = self.labels.get("service")
        return f"[sregraph] {self.event}: {self.incident_id}" + (f" ({service})" if service else "")


class Channel(Protocol):
    """Delivers a message; raises ToolError when it could not."""

    def send(self, message: Message) -> None:
        """Deliver one notification; raise ToolError when it could not."""
        ...


# ----------------------------------------------------------------------------- channels


class _Http:
    """A JSON POST with a timeout; any answer but 2xx is a failure."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url, self.timeout_s = url, timeout_s

    def post(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        try:
            answer = httpx.post(self.url, json=payload, headers=headers, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise ToolError(f"{type(self).__name__}: {type(exc).__name__} posting to the webhook") from exc
        if not answer.is_success:
            raise ToolError(f"{type(self).__name__}: the webhook answered {answer.status_code}")


class WebhookChannel(_Http):
    """Any HTTP endpoint: the notification as JSON (incident_id, event, title, text, labels, key)."""

    def send(self, message: Message) -> None:
        """POST the notification as JSON."""
        self.post(
            {
                "incident_id": message.incident_id,
                "event": message.event,
                "title": message.title,
                "text": message.text,
                "labels": message.labels,
                "key": current_key(),
            }
        )


class SlackChannel(_Http):
    """A Slack incoming webhook (Mattermost and Rocket.Chat accept the same): `text` is the fallback, one
    section block carries the message."""

    def send(self, message: Message) -> None:
        """Post the notification to the Slack webhook."""
        body = f"*{_slack_escape(message.title)}*\n{_slack_escape(message.text)}"
        self.post(
            {
                "text": f"{message.title}: {message.text}",
                "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": body}}],
            }
        )


class DiscordChannel(_Http):
    """A Discord webhook: `content` (at most 2,000 characters), mentions disabled."""

    def send(self, message: Message) -> None:
        """Post the notification to the Discord webhook."""
        content = f"**{message.title}**\n{message.text}"
        self.post({"content": content[:2000], "allowed_mentions": {"parse": []}})


class TeamsChannel(_Http):
    """A Microsoft Teams workflow webhook: one Adaptive Card."""

    def send(self, message: Message) -> None:
        """Post the notification to the Teams webhook as an Adaptive Card."""
        card = {
            "type": "AdaptiveCard",
            "version": "1.4",
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "body": [
                {"type": "TextBlock", "text": message.title, "weight": "Bolder", "wrap": True},
                {"type": "TextBlock", "text": message.text, "wrap": True},
            ],
        }
        self.post(
            {
                "type": "message",
                "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": card}],
            }
        )


def _slack_escape(text: str) -> str:
    # Slack's three control characters; a log line's "<!channel>" must not ping anyone.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class EmailChannel:
    """Email over SMTP; the password is read from the environment variable named in the settings."""

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        to: list[str],
        starttls: bool,
        username: str | None,
        password_env: str | None,
        timeout_s: float,
    ) -> None:
        self.host, self.port, self.sender, self.to = host, port, sender, to
        self.starttls, self.username, self.password_env, self.timeout_s = (
            starttls,
            username,
            password_env,
            timeout_s,
        )

    def send(self, message: Message) -> None:
        """Mail the notification over SMTP."""
        email = EmailMessage()
        email["From"], email["To"], email["Subject"] = self.sender, ", ".join(self.to), message.title
        email.set_content(
            message.text + "\n\n" + "\n".join(f"{k}: {v}" for k, v in sorted(message.labels.items()))
        )
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.username:
                    smtp.login(self.username, os.environ.get(self.password_env or "", ""))
                smtp.send_message(email)
        except (OSError, smtplib.SMTPException) as exc:
            raise ToolError(
                f"EmailChannel: {type(exc).__name__} sending through {self.host}:{self.port}"
            ) from exc


RESOLVING_EVENTS = frozenset({"documented"})
"""Events after which the incident is over (the post-mortem is written once it recovered): a pager resolves."""
PAGING_EVENTS = frozenset({"opened", "escalated", "page"})
"""Events that (re)page; any other event is added to the open page as context."""


def _secret(env: str, channel: str) -> str:
    value = os.environ.get(env, "")
    if not value:
        raise ToolError(f"{channel}: the environment variable {env} holding its key is not set")
    return value


class PagerDutyChannel:
    """PagerDuty Events API v2: one alert per incident (`dedup_key` = incident id), triggered when the incident
    opens, escalates or pages, and resolved when it is documented; other events re-trigger the same alert, which
    PagerDuty adds to it. The integration's routing key comes from the environment variable `key_env`."""

    URL = "https://events.pagerduty.com/v2/enqueue"
    SEVERITY = {
        "critical": "critical",
        "page": "critical",
        "high": "error",
        "error": "error",
        "warning": "warning",
        "info": "info",
    }

    def __init__(self, key_env: str, url: str | None = None, timeout_s: float = 10.0) -> None:
        self.key_env, self.url, self.timeout_s = key_env, url or self.URL, timeout_s

    def send(self, message: Message) -> None:
        """Trigger, update or resolve the incident's PagerDuty event."""
        event: dict[str, Any] = {
            "routing_key": _secret(self.key_env, "PagerDutyChannel"),
            "dedup_key": message.incident_id,
            "event_action": "resolve" if message.event in RESOLVING_EVENTS else "trigger",
        }
        if event["event_action"] == "trigger":
            event["payload"] = {
                "summary": f"{message.title}: {message.text}"[:1024],
                "source": message.labels.get("service") or "sregraph",
                "severity": self.SEVERITY.get(message.labels.get("severity", ""), "error"),
                "custom_details": {"event": message.event, "text": message.text, "labels": message.labels},
            }
            if message.labels.get("service"):
                event["payload"]["component"] = message.labels["service"]
            event["client"] = "sregraph"
        _post(self.url, event, {}, self.timeout_s, "PagerDutyChannel")


class OpsgenieChannel:
    """Opsgenie Alert API v2: one alert per incident (`alias` = incident id), created when the incident opens,
    escalates or pages (Opsgenie counts a repeat of an open alias), closed when it is documented, and every other
    event a note on it. The API key (a GenieKey) comes from the environment variable `key_env`; `url` is the
    API's base (api.eu.opsgenie.com for the EU instance)."""

    URL = "https://api.opsgenie.com"
    PRIORITY = {"critical": "P1", "page": "P1", "high": "P2", "error": "P2", "warning": "P3", "info": "P5"}

    def __init__(self, key_env: str, url: str | None = None, timeout_s: float = 10.0) -> None:
        self.key_env, self.base, self.timeout_s = key_env, (url or self.URL).rstrip("/"), timeout_s

    def send(self, message: Message) -> None:
        """Create, note or close the incident's Opsgenie alert."""
        headers = {"Authorization": f"GenieKey {_secret(self.key_env, 'OpsgenieChannel')}"}
        alias = quote(message.incident_id, safe="")
        if message.event in PAGING_EVENTS:
            alert = {
                "message": message.title[:130],
                "alias": message.incident_id[:512],
                "description": message.text[:15000],
                "priority": self.PRIORITY.get(message.labels.get("severity", ""), "P3"),
                "source": "sregraph",
                "entity": message.labels.get("service", "")[:512],
                "tags": ["sregraph", message.event],
                "details": {k: v[:8000] for k, v in message.labels.items()},
            }
            _post(f"{self.base}/v2/alerts", alert, headers, self.timeout_s, "OpsgenieChannel")
        elif message.event in RESOLVING_EVENTS:
            note = {"source": "sregraph", "note": f"{message.event}: {message.text}"[:25000]}
            _post(
                f"{self.base}/v2/alerts/{alias}/close?identifierType=alias",
                note,
                headers,
                self.timeout_s,
                "OpsgenieChannel",
            )
        else:
            note = {"source": "sregraph", "note": f"{message.event}: {message.text}"[:25000]}
            _post(
                f"{self.base}/v2/alerts/{alias}/notes?identifierType=alias",
                note,
                headers,
                self.timeout_s,
                "OpsgenieChannel",
            )


def _post(url: str, payload: dict[str, Any], headers: dict[str, str], timeout_s: float, name: str) -> None:
    try:
        answer = httpx.post(url, json=payload, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise ToolError(f"{name}: {type(exc).__name__} posting to {url.split('?')[0]}") from exc
    if not answer.is_success:
        raise ToolError(f"{name}: {url.split('?')[0]} answered {answer.status_code}")


class _Tickets(ABC):
    """Opens one ticket per incident in a tracker and adds each later notification to it as a comment.

    The tracker itself is asked first whether the incident already has a ticket (it is tagged with the incident
    id), so a process that died between creating a ticket and hearing back does not open a second one."""

    def __init__(self, base_url: str, username: str, secret_env: str, timeout_s: float) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{type(self).__name__}: url {base_url!r} is not an http(s) URL")
        self.base_url, self.username, self.secret_env, self.timeout_s = (
            base_url.rstrip("/"),
            username,
            secret_env,
            timeout_s,
        )
        self._known: dict[str, str] = {}

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        secret = os.environ.get(self.secret_env, "")
        try:
            answer = httpx.request(
                method, self.base_url + path, auth=(self.username, secret), timeout=self.timeout_s, **kwargs
            )
        except httpx.HTTPError as exc:
            raise ToolError(f"{type(self).__name__}: {type(exc).__name__} on {method} {path}") from exc
        if not answer.is_success:
            raise ToolError(f"{type(self).__name__}: {method} {path} answered {answer.status_code}")
        return answer.json() if answer.content else {}

    def send(self, message: Message) -> None:
        ticket = self._known.get(message.incident_id) or self.find(message.incident_id)
        if ticket is None:
            ticket = self.create(message)
        else:
            self.comment(ticket, message)
        self._known[message.incident_id] = ticket

    @abstractmethod
    def find(self, incident_id: str) -> str | None:
        """The ticket already opened for this incident, if any."""

    @abstractmethod
    def create(self, message: Message) -> str:
        """Open the incident's ticket; returns its id."""

    @abstractmethod
    def comment(self, ticket: str, message: Message) -> None:
        """Add a later notification to the ticket."""


class JiraChannel(_Tickets):
    """Jira (REST API v2): an issue labelled `sregraph` and the incident id, then comments."""

    def __init__(
        self, base_url: str, username: str, secret_env: str, timeout_s: float, project: str, issue_type: str
    ) -> None:
        super().__init__(base_url, username, secret_env, timeout_s)
        self.project, self.issue_type = project, issue_type

    def find(self, incident_id: str) -> str | None:
        """The Jira issue opened for `incident_id`, if any."""
        found = self._request(
            "GET",
            "/rest/api/2/search",
            params={"jql": f'labels = "{incident_id}"', "fields": "key", "maxResults": 1},
        )
        issues = found.get("issues") or []
        return str(issues[0]["key"]) if issues else None

    def create(self, message: Message) -> str:
        """Open a Jira issue for the notification's incident; its key."""
        fields = {
            "project": {"key": self.project},
            "summary": message.title[:250],
            "description": message.text,
            "issuetype": {"name": self.issue_type},
            "labels": ["sregraph", message.incident_id],
        }
        return str(self._request("POST", "/rest/api/2/issue", json={"fields": fields})["key"])

    def comment(self, ticket: str, message: Message) -> None:
        """Add the notification to the Jira issue."""
        self._request(
            "POST", f"/rest/api/2/issue/{ticket}/comment", json={"body": f"{message.event}: {message.text}"}
        )


class ServiceNowChannel(_Tickets):
    """ServiceNow (Table API): an incident whose correlation_id is the incident id, then work notes."""

    URGENCY = {"critical": "1", "high": "1", "warning": "2"}

    def find(self, incident_id: str) -> str | None:
        """The ServiceNow incident opened for `incident_id`, if any."""
        found = self._request(
            "GET",
            "/api/now/table/incident",
            params={
                "sysparm_query": f"correlation_id={incident_id}",
                "sysparm_fields": "sys_id",
                "sysparm_limit": 1,
            },
        )
        rows = found.get("result") or []
        return str(rows[0]["sys_id"]) if rows else None

    def create(self, message: Message) -> str:
        """Open a ServiceNow incident for the notification's incident; its key."""
        urgency = self.URGENCY.get(message.labels.get("severity", ""), "2")
        record = {
            "short_description": message.title[:160],
            "description": message.text,
            "urgency": urgency,
            "impact": urgency,
            "correlation_id": message.incident_id,
            "correlation_display": "sregraph",
        }
        return str(self._request("POST", "/api/now/table/incident", json=record)["result"]["sys_id"])

    def comment(self, ticket: str, message: Message) -> None:
        """Add the notification to the ServiceNow incident."""
        self._request(
            "PATCH",
            f"/api/now/table/incident/{ticket}",
            json={"work_notes": f"{message.event}: {message.text}"},
        )


# ----------------------------------------------------------------------------- settings


class ChannelConfig(BaseModel):
    """One channel of `notifications.channels`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal[
        "webhook", "slack", "discord", "teams", "email", "jira", "servicenow", "pagerduty", "opsgenie"
    ]
    url: str | None = None
    """Webhook URL (webhook, slack, discord, teams), the tracker's base URL (jira, servicenow), or another endpoint
    than the pager's public one (pagerduty: the Events API v2 enqueue URL; opsgenie: the API base)."""
    url_env: str | None = None
    """Or the environment variable that holds it (webhook URLs are secrets: they post without credentials)."""
    smtp_host: str = "localhost"
    smtp_port: int = Field(25, ge=1, le=65535)
    sender: str = "sregraph@localhost"
    to: list[str] = Field(default_factory=list)
    starttls: bool = False
    username: str | None = None
    password_env: str | None = None
    """The environment variable holding the SMTP password, Jira API token or ServiceNow password."""
    project: str | None = None
    """Jira project key."""
    issue_type: str = "Task"
    """Jira issue type of the tickets opened."""
    key_env: str | None = None
    """The environment variable holding the PagerDuty integration's routing key or the Opsgenie API key."""
    timeout_s: float = Field(10.0, gt=0, le=120)

    @model_validator(mode="after")
    def _complete(self) -> ChannelConfig:
        if self.type == "email" and not self.to:
            raise ValueError("an email channel needs `to`")
        if self.type in ("jira", "servicenow") and not (self.url and self.username and self.password_env):
            raise ValueError(f"a {self.type} channel needs `url`, `username` and `password_env`")
        if self.type == "jira" and not self.project:
            raise ValueError("a jira channel needs `project`")
        if self.type in ("pagerduty", "opsgenie"):
            if not self.key_env:
                raise ValueError(f"a {self.type} channel needs `key_env` (the variable holding its key)")
            if self.url is not None and not self.url.startswith(("http://", "https://")):
                raise ValueError(f"a {self.type} channel's `url` must be an http(s) URL")
        elif self.type != "email" and not (self.url or self.url_env):
            raise ValueError(f"a {self.type} channel needs `url` or `url_env`")
        return self

    def build(self) -> Channel:
        """The channel these settings describe."""
        if self.type == "email":
            return EmailChannel(
                self.smtp_host,
                self.smtp_port,
                self.sender,
                self.to,
                self.starttls,
                self.username,
                self.password_env,
                self.timeout_s,
            )
        if self.type == "jira":
            return JiraChannel(
                self.url or "",
                self.username or "",
                self.password_env or "",
                self.timeout_s,
                self.project or "",
                self.issue_type,
            )
        if self.type == "servicenow":
            return ServiceNowChannel(
                self.url or "", self.username or "", self.password_env or "", self.timeout_s
            )
        if self.type == "pagerduty":
            return PagerDutyChannel(self.key_env or "", self.url, self.timeout_s)
        if self.type == "opsgenie":
            return OpsgenieChannel(self.key_env or "", self.url, self.timeout_s)
        url = self.url or os.environ.get(self.url_env or "", "")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"notifications: the {self.type} channel's URL ({self.url_env or 'url'}) is not an http(s) URL"
            )
        kinds: dict[str, type[_Http]] = {
            "webhook": WebhookChannel,
            "slack": SlackChannel,
            "discord": DiscordChannel,
            "teams": TeamsChannel,
        }
        return kinds[self.type](url, self.timeout_s)  # type: ignore[return-value]


class Route(BaseModel):
    """A node of the routing tree: its `match` (label → glob pattern) must all hold; its channels receive the
    message; its first matching child route is followed; with `continue`, the next sibling is tried as well."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    match: dict[str, str] = Field(default_factory=dict)
    channels: list[str] = Field(default_factory=list)
    continue_: bool = Field(False, alias="continue")
    routes: list[Route] = Field(default_factory=list)

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether every pattern of `match` holds on the labels (a missing label is the empty string)."""
        return all(fnmatch.fnmatchcase(labels.get(key, ""), pattern) for key, pattern in self.match.items())

    def select(self, labels: dict[str, str]) -> list[str]:
        """The channels for these labels: this route's, then its matching children's (first match, or more
        with `continue`), without repeats."""
        chosen = list(self.channels)
        for child in self.routes:
            if child.matches(labels):
                chosen += child.select(labels)
                if not child.continue_:
                    break
        return list(dict.fromkeys(chosen))


Route.model_rebuild()


class EscalationTier(BaseModel):
    """One step of the escalation policy: who is told when an incident that needs a human has been waiting
    this long without an acknowledgement."""

    model_config = ConfigDict(extra="forbid")

    after_s: float = Field(ge=0)
    channels: list[str] = Field(min_length=1)


class NotificationsConfig(BaseModel):
    """`notifications:` in sregraph.yaml. Without channels, notifications go to the console and
    `data_dir/notifications.jsonl` only, as before."""

    model_config = ConfigDict(extra="forbid")

    channels: dict[str, ChannelConfig] = Field(default_factory=dict)
    route: Route = Field(default_factory=Route)
    repeat_interval_s: float = Field(300.0, ge=0)
    """The same event of the same service goes to the same channel at most once in this many seconds."""
    escalation: list[EscalationTier] = Field(default_factory=list)
    """Tiers, by time since the incident opened, for incidents that wait for a human (an approval, or escalated)
    and nobody acknowledged (`/ack` on the issue, the API or the dashboard)."""

    @model_validator(mode="after")
    def _known_channels(self) -> NotificationsConfig:
        def names(route: Route) -> set[str]:
            return set(route.channels).union(*(names(r) for r in route.routes))

        named = names(self.route).union(*(tier.channels for tier in self.escalation))
        unknown = set(named) - set(self.channels)
        if unknown:
            raise ValueError(f"routes name unknown channels: {', '.join(sorted(unknown))}")
        return self


# ----------------------------------------------------------------------------- the notifier


class RoutedNotifier:
    """A `Notifier` that routes each notification to its channels."""

    def __init__(
        self,
        channels: dict[str, Channel],
        route: Route,
        labels_of: Callable[[str], dict[str, str]],
        repeat_interval_s: float = 300.0,
        clock: Clock | None = None,
    ) -> None:
        self.channels, self.route, self.labels_of = channels, route, labels_of
        self.repeat_interval_s = repeat_interval_s
        self.clock: Clock = clock or SystemClock()
        self._last: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()

    def notify(self, incident_id: str, event: str, text: str) -> None:
        """Deliver to every routed channel; ToolError only if every one of them failed."""
        labels = {"event": event, **self.labels_of(incident_id)}
        message = Message(incident_id, event, redact_out(text), labels)
        failures: list[str] = []
        sent = 0  # delivered now, or grouped with a delivery within the repeat interval
        for name in self.route.select(labels):
            group = (name, labels.get("service", incident_id), event)
            now = self.clock.now()
            with self._lock:
                last = self._last.get(group)
                if last is not None and now - last < self.repeat_interval_s:
                    log.info(
                        "notification %s/%s to %s grouped (sent %.0f s ago)",
                        incident_id,
                        event,
                        name,
                        now - last,
                    )
                    sent += 1
                    continue
            try:
                self.channels[name].send(message)
            except ToolError as exc:
                log.error("channel %s failed for %s/%s: %s", name, incident_id, event, exc)
                failures.append(f"{name}: {exc}")
                continue
            sent += 1
            with self._lock:
                self._last[group] = now
        if failures and not sent:
            raise ToolError(f"every routed channel failed for {incident_id}/{event}: {'; '.join(failures)}")
