"""Notification channels against local receivers (an HTTP server checking each provider's payload shape, an
SMTP server), the routing tree, grouping, and delivery once across re-runs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from evals.llm_local import free_port
from sregraph.config import load_settings
from sregraph.engine import RunRegistry, routed_notifier
from tests.fakes.http import Receiver, answer_json
from tests.support import ManualClock
from tools.base import ToolError
from tools.channels import (
    ChannelConfig,
    DiscordChannel,
    EmailChannel,
    Message,
    NotificationsConfig,
    OpsgenieChannel,
    PagerDutyChannel,
    Route,
    RoutedNotifier,
    SlackChannel,
    TeamsChannel,
    WebhookChannel,
)
from tools.domain import Trigger
from tools.ledger import ActionLedger
from tools.notifier import IdempotentNotifier, notification_key


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


MESSAGE = Message(
    "inc-1",
    "escalated",
    "payments down <!channel> password=hunter22",
    {"service": "payments", "event": "escalated"},
)


def test_each_provider_gets_its_documented_payload(receiver: Receiver) -> None:
    SlackChannel(receiver.url("/slack"), 5).send(MESSAGE)
    DiscordChannel(receiver.url("/discord"), 5).send(MESSAGE)
    TeamsChannel(receiver.url("/teams"), 5).send(MESSAGE)
    with notification_key("escalated"):
        WebhookChannel(receiver.url("/hook"), 5).send(MESSAGE)
    bodies = dict(receiver.bodies)
    slack = bodies["/slack"]
    assert slack["text"].startswith("[sregraph] escalated: inc-1 (payments)")
    assert slack["blocks"][0]["type"] == "section" and slack["blocks"][0]["text"]["type"] == "mrkdwn"
    assert "<!channel>" not in slack["blocks"][0]["text"]["text"]  # a log line cannot ping a channel
    discord = bodies["/discord"]
    assert set(discord) == {"content", "allowed_mentions"} and discord["allowed_mentions"] == {"parse": []}
    teams = bodies["/teams"]
    assert teams["type"] == "message"
    card = teams["attachments"][0]
    assert (
        card["contentType"] == "application/vnd.microsoft.card.adaptive"
        and card["content"]["type"] == "AdaptiveCard"
    )
    hook = bodies["/hook"]
    assert (hook["incident_id"], hook["event"], hook["labels"]["service"], hook["key"]) == (
        "inc-1",
        "escalated",
        "payments",
        "escalated",
    )


def test_a_failing_or_unreachable_webhook_is_a_tool_error(receiver: Receiver) -> None:
    receiver.status = 500
    with pytest.raises(ToolError, match="answered 500"):
        SlackChannel(receiver.url("/slack"), 5).send(MESSAGE)
    with pytest.raises(ToolError, match="ConnectError"):
        WebhookChannel("http://127.0.0.1:9/nothing", 2).send(MESSAGE)


def test_email_reaches_an_smtp_server() -> None:
    received: list[Any] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
            received.append(envelope)
            return "250 OK"

    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        EmailChannel(
            "127.0.0.1", port, "sregraph@example.org", ["oncall@example.org"], False, None, None, 5
        ).send(MESSAGE)
    finally:
        controller.stop()
    assert [e.rcpt_tos for e in received] == [["oncall@example.org"]]
    text = received[0].content.decode()
    assert "Subject: [sregraph] escalated: inc-1 (payments)" in text and "service: payments" in text
    with pytest.raises(ToolError, match="EmailChannel"):
        EmailChannel("127.0.0.1", 9, "a@b", ["c@d"], False, None, None, 2).send(MESSAGE)


ROUTES = Route.model_validate(
    {
        "channels": ["log"],
        "routes": [
            {"match": {"severity": "critical"}, "channels": ["pager"], "continue": True},
            {"match": {"service": "pay*"}, "channels": ["payments-team"]},
            {"match": {"event": "escalated"}, "channels": ["sre"]},
        ],
    }
)


@pytest.mark.parametrize(
    ("labels", "channels"),
    [
        ({"service": "payments", "event": "opened"}, ["log", "payments-team"]),
        (
            {"service": "payments", "event": "escalated", "severity": "critical"},
            ["log", "pager", "payments-team"],
        ),
        ({"service": "search", "event": "escalated"}, ["log", "sre"]),
        ({"service": "search", "event": "opened"}, ["log"]),
    ],
)
def test_routes_first_match_and_continue(labels: dict[str, str], channels: list[str]) -> None:
    assert ROUTES.select(labels) == channels


def test_settings_refuse_incomplete_channels_and_unknown_routes() -> None:
    with pytest.raises(ValueError, match="unknown channels: nope"):
        NotificationsConfig.model_validate(
            {"channels": {"a": {"type": "slack", "url": "http://x"}}, "route": {"channels": ["nope"]}}
        )
    with pytest.raises(ValueError, match="needs `to`"):
        ChannelConfig.model_validate({"type": "email"})
    with pytest.raises(ValueError, match="needs `url` or `url_env`"):
        ChannelConfig.model_validate({"type": "discord"})


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[Message] = []
        self.fail = fail

    def send(self, message: Message) -> None:
        if self.fail:
            raise ToolError("down")
        self.sent.append(message)


def test_routed_notifier_groups_repeats_and_survives_one_broken_channel() -> None:
    clock = ManualClock()
    good, broken = Recorder(), Recorder(fail=True)
    route = Route(channels=["good", "broken"])
    notifier = RoutedNotifier(
        {"good": good, "broken": broken}, route, lambda _id: {"service": "payments"}, 300, clock
    )
    notifier.notify("inc-1", "opened", "token=abcdef123456")
    notifier.notify("inc-2", "opened", "same service, same event, 10 s later")  # grouped
    clock.sleep(301)
    notifier.notify("inc-3", "opened", "after the repeat interval")
    assert [m.incident_id for m in good.sent] == ["inc-1", "inc-3"]
    assert "abcdef123456" not in good.sent[0].text
    lonely = RoutedNotifier({"broken": broken}, Route(channels=["broken"]), lambda _id: {}, 0, clock)
    with pytest.raises(ToolError, match="every routed channel failed"):
        lonely.notify("inc-4", "opened", "x")


def test_configured_channels_get_the_incident_labels_once_across_reruns(
    tmp_path: Path, receiver: Receiver
) -> None:
    settings = load_settings(
        environ={},
        data_dir=tmp_path / "data",
        notifications={
            "channels": {
                "payments-team": {"type": "webhook", "url": receiver.url("/payments")},
                "pager": {"type": "webhook", "url": receiver.url("/pager")},
            },
            "route": {
                "routes": [
                    {"match": {"service": "payments"}, "channels": ["payments-team"], "continue": True},
                    {"match": {"severity": "critical"}, "channels": ["pager"]},
                ]
            },
        },
    )
    RunRegistry(settings.data_dir / "runs.db").record(
        "inc-7", Trigger(source="alert", service="payments", labels={"severity": "critical"}), "observing"
    )
    RunRegistry(settings.data_dir / "runs.db").record(
        "inc-8", Trigger(source="scan", service="search"), "observing"
    )
    notifier = IdempotentNotifier(routed_notifier(settings), ActionLedger(tmp_path / "ledger.db"))
    for _ in range(2):  # the step runs again after a crash: delivered once
        with notification_key("escalated"):
            notifier.notify("inc-7", "escalated", "payments down")
    with notification_key("opened"):
        notifier.notify("inc-8", "opened", "search slow")  # matches no route: nobody is paged
    assert [(path, body["incident_id"], body["labels"]) for path, body in receiver.bodies] == [
        (
            "/payments",
            "inc-7",
            {"event": "escalated", "service": "payments", "severity": "critical", "source": "alert"},
        ),
        (
            "/pager",
            "inc-7",
            {"event": "escalated", "service": "payments", "severity": "critical", "source": "alert"},
        ),
    ]


class Tracker:
    """A local Jira and ServiceNow: the REST paths and payload fields the channels use, basic auth checked."""

    def __init__(self) -> None:
        self.jira: dict[str, dict[str, Any]] = {}
        self.snow: dict[str, dict[str, Any]] = {}
        tracker = self

        class Handler(BaseHTTPRequestHandler):
            def _authorised(self) -> bool:
                import base64

                expected = "Basic " + base64.b64encode(b"bot:s3cret").decode()
                if self.headers.get("authorization") != expected:
                    self._answer(401, {"error": "unauthorised"})
                    return False
                return True

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                answer_json(self, status, body)

            def _body(self) -> dict[str, Any]:
                return json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))

            def do_GET(self) -> None:  # noqa: N802 - stdlib naming
                from urllib.parse import parse_qs, urlparse

                if not self._authorised():
                    return
                url = urlparse(self.path)
                query = parse_qs(url.query)
                if url.path == "/rest/api/2/search":
                    label = query["jql"][0].split('"')[1]
                    found = [{"key": k} for k, v in tracker.jira.items() if label in v["fields"]["labels"]]
                    self._answer(200, {"issues": found[:1], "total": len(found)})
                elif url.path == "/api/now/table/incident":
                    wanted = query["sysparm_query"][0].removeprefix("correlation_id=")
                    self._answer(
                        200,
                        {
                            "result": [
                                {"sys_id": k}
                                for k, v in tracker.snow.items()
                                if v["correlation_id"] == wanted
                            ][:1]
                        },
                    )
                else:
                    self._answer(404, {})

            def do_POST(self) -> None:  # noqa: N802 - stdlib naming
                if not self._authorised():
                    return
                body = self._body()
                if self.path == "/rest/api/2/issue":
                    fields = body["fields"]
                    assert {"project", "summary", "description", "issuetype", "labels"} <= set(fields)
                    key = f"OPS-{len(tracker.jira) + 1}"
                    tracker.jira[key] = {"fields": fields, "comments": []}
                    self._answer(201, {"id": "1000", "key": key, "self": f"/rest/api/2/issue/{key}"})
                elif self.path.startswith("/rest/api/2/issue/") and self.path.endswith("/comment"):
                    tracker.jira[self.path.split("/")[5]]["comments"].append(body["body"])
                    self._answer(201, {"id": "1"})
                elif self.path == "/api/now/table/incident":
                    assert {"short_description", "description", "urgency", "impact", "correlation_id"} <= set(
                        body
                    )
                    sys_id = f"{len(tracker.snow) + 1:032x}"
                    tracker.snow[sys_id] = {**body, "work_notes": []}
                    self._answer(201, {"result": {"sys_id": sys_id, "number": f"INC00{len(tracker.snow)}"}})
                else:
                    self._answer(404, {})

            def do_PATCH(self) -> None:  # noqa: N802 - stdlib naming
                if not self._authorised():
                    return
                sys_id = self.path.rsplit("/", 1)[1]
                tracker.snow[sys_id]["work_notes"].append(self._body()["work_notes"])
                self._answer(200, {"result": {"sys_id": sys_id}})

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_jira_and_servicenow_get_one_ticket_per_incident_then_comments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tracker = Tracker()
    monkeypatch.setenv("TRACKER_SECRET", "s3cret")
    try:
        jira = ChannelConfig(
            type="jira", url=tracker.url, username="bot", password_env="TRACKER_SECRET", project="OPS"
        ).build()
        snow = ChannelConfig(
            type="servicenow", url=tracker.url, username="bot", password_env="TRACKER_SECRET"
        ).build()
        opened = Message("inc-1", "opened", "payments down", {"service": "payments", "severity": "critical"})
        for channel in (jira, snow):
            channel.send(opened)
            channel.send(Message("inc-1", "action", "restart payments: done", {"service": "payments"}))
        # A restarted worker (new channel objects) finds the tickets in the trackers instead of opening more.
        for config in (dict(type="jira", project="OPS"), dict(type="servicenow")):
            ChannelConfig(
                url=tracker.url, username="bot", password_env="TRACKER_SECRET", **config
            ).build().send(Message("inc-1", "documented", "post-mortem written", {}))
        assert list(tracker.jira) == ["OPS-1"] and tracker.jira["OPS-1"]["fields"]["labels"] == [
            "sregraph",
            "inc-1",
        ]
        assert tracker.jira["OPS-1"]["comments"] == [
            "action: restart payments: done",
            "documented: post-mortem written",
        ]
        (incident,) = tracker.snow.values()
        assert (incident["correlation_id"], incident["urgency"]) == ("inc-1", "1")
        assert incident["work_notes"] == ["action: restart payments: done", "documented: post-mortem written"]
        monkeypatch.setenv("TRACKER_SECRET", "wrong")
        with pytest.raises(ToolError, match="answered 401"):
            jira.send(Message("inc-2", "opened", "x", {}))
    finally:
        tracker.close()
    with pytest.raises(ValueError, match="needs `project`"):
        ChannelConfig(type="jira", url="http://x", username="u", password_env="P")


class Pagers:
    """A local PagerDuty Events API v2 and Opsgenie Alert API v2, checking each request as the services document
    it: PagerDuty's routing key, event action, dedup key and trigger payload (answers 202, or 400 "invalid event");
    Opsgenie's GenieKey header (401 without it), and the alert, close and note bodies (202, or 422)."""

    ROUTING_KEY = "R0123456789abcdef0123456789abcde"
    GENIE_KEY = "eb243592-faa2-4ba2-a551-1afdf565c889"

    def __init__(self) -> None:
        self.pagerduty: list[dict[str, Any]] = []
        self.opsgenie: list[tuple[str, dict[str, Any]]] = []
        self.alerts: dict[str, dict[str, Any]] = {}
        pagers = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - stdlib naming
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                if self.path == "/v2/enqueue":
                    self._answer(*pagers.enqueue(body))
                elif self.path.startswith("/v2/alerts"):
                    if self.headers.get("Authorization") != f"GenieKey {Pagers.GENIE_KEY}":
                        self._answer(401, {"message": "Could not authenticate", "took": 0.0})
                        return
                    self._answer(*pagers.alert(self.path, body))
                else:
                    self._answer(404, {})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                answer_json(self, status, body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def enqueue(self, event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        errors = []
        if event.get("routing_key") != self.ROUTING_KEY:
            errors.append("'routing_key' is invalid")
        if event.get("event_action") not in ("trigger", "acknowledge", "resolve"):
            errors.append("'event_action' is invalid")
        if not isinstance(event.get("dedup_key"), str) or not 0 < len(event["dedup_key"]) <= 255:
            errors.append("'dedup_key' is invalid")
        if event.get("event_action") == "trigger":
            payload = event.get("payload") or {}
            if not isinstance(payload.get("summary"), str) or not 0 < len(payload["summary"]) <= 1024:
                errors.append("'payload.summary' is missing or too long")
            if not payload.get("source"):
                errors.append("'payload.source' is missing")
            if payload.get("severity") not in ("critical", "error", "warning", "info"):
                errors.append("'payload.severity' is invalid")
        if errors:
            return 400, {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
        self.pagerduty.append(event)
        return 202, {"status": "success", "message": "Event processed", "dedup_key": event["dedup_key"]}

    def alert(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.opsgenie.append((path, body))
        accepted = {
            "result": "Request will be processed",
            "took": 0.01,
            "requestId": f"req-{len(self.opsgenie)}",
        }
        if path == "/v2/alerts":
            if not isinstance(body.get("message"), str) or not 0 < len(body["message"]) <= 130:
                return 422, {"message": "Message can not be empty or longer than 130 characters", "took": 0.0}
            if body.get("priority") not in ("P1", "P2", "P3", "P4", "P5"):
                return 422, {"message": "Priority should be one of [P1, P2, P3, P4, P5]", "took": 0.0}
            alias = body.get("alias") or body["message"]
            open_alert = self.alerts.get(alias)
            if open_alert is not None and open_alert["status"] == "open":
                open_alert["count"] += 1  # Opsgenie de-duplicates an open alias
            else:
                self.alerts[alias] = {"status": "open", "count": 1, "notes": [], "message": body["message"]}
            return 202, accepted
        action = path.split("?")[0].rsplit("/", 1)[-1]
        alias = path.split("?")[0].split("/")[3]
        if "identifierType=alias" not in path or alias not in self.alerts:
            return 404, {"message": "Alert does not exist", "took": 0.0}
        if action == "notes":
            if not body.get("note"):
                return 422, {"message": "Note can not be empty", "took": 0.0}
            self.alerts[alias]["notes"].append(body["note"])
        elif action == "close":
            self.alerts[alias]["status"] = "closed"
        else:
            return 404, {"message": "unknown action", "took": 0.0}
        return 202, accepted

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pagers(monkeypatch: pytest.MonkeyPatch) -> Iterator[Pagers]:
    monkeypatch.setenv("PD_ROUTING_KEY", Pagers.ROUTING_KEY)
    monkeypatch.setenv("OPSGENIE_KEY", Pagers.GENIE_KEY)
    p = Pagers()
    yield p
    p.close()


def _lifecycle(channel: Any) -> None:
    labels = {"service": "payments", "severity": "critical"}
    for event, text in (
        ("opened", "payments down"),
        ("action", "restart payments: done"),
        ("page", "unacknowledged for 5 min"),
        ("documented", "post-mortem written"),
    ):
        channel.send(Message("inc-7", event, text, {**labels, "event": event}))


def test_pagerduty_triggers_one_alert_per_incident_and_resolves_it(pagers: Pagers) -> None:
    channel = ChannelConfig(
        type="pagerduty", key_env="PD_ROUTING_KEY", url=f"{pagers.base}/v2/enqueue"
    ).build()
    _lifecycle(channel)
    assert [e["event_action"] for e in pagers.pagerduty] == ["trigger", "trigger", "trigger", "resolve"]
    assert {e["dedup_key"] for e in pagers.pagerduty} == {"inc-7"}
    first = pagers.pagerduty[0]["payload"]
    assert (
        first["severity"] == "critical" and first["source"] == "payments" and first["component"] == "payments"
    )
    assert "payload" not in pagers.pagerduty[-1]
    with pytest.raises(
        ToolError, match="answered 400"
    ):  # a dedup key longer than the 255 characters PagerDuty takes
        PagerDutyChannel("PD_ROUTING_KEY", f"{pagers.base}/v2/enqueue").send(
            Message("x" * 300, "opened", "t", {})
        )


def test_opsgenie_creates_notes_and_closes_one_alert_per_incident(pagers: Pagers) -> None:
    channel = ChannelConfig(type="opsgenie", key_env="OPSGENIE_KEY", url=pagers.base).build()
    _lifecycle(channel)
    alert = pagers.alerts["inc-7"]
    assert alert["status"] == "closed" and alert["count"] == 2  # opened, then paged again: one alert
    assert alert["notes"] == ["action: restart payments: done"]
    created = pagers.opsgenie[0][1]
    assert created["priority"] == "P1" and created["entity"] == "payments" and len(created["message"]) <= 130


def test_pagers_need_their_key_and_say_which_variable_is_missing(
    pagers: Pagers, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="key_env"):
        ChannelConfig(type="pagerduty")
    monkeypatch.setenv("OPSGENIE_KEY", "wrong")
    with pytest.raises(ToolError, match="answered 401"):
        OpsgenieChannel("OPSGENIE_KEY", pagers.base).send(MESSAGE)
    monkeypatch.delenv("PD_ROUTING_KEY")
    with pytest.raises(ToolError, match="PD_ROUTING_KEY"):
        PagerDutyChannel("PD_ROUTING_KEY", f"{pagers.base}/v2/enqueue").send(MESSAGE)
    assert pagers.pagerduty == []
