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

from tools.domain import Trigger
from sregraph.config import load_settings
from sregraph.engine import RunRegistry, routed_notifier
from tests.support import ManualClock
from tools.base import ToolError
from tools.channels import (
    ChannelConfig,
    DiscordChannel,
    EmailChannel,
    Message,
    NotificationsConfig,
    Route,
    RoutedNotifier,
    SlackChannel,
    TeamsChannel,
    WebhookChannel,
)
from tools.ledger import ActionLedger
from tools.notifier import IdempotentNotifier, notification_key
from tests.llm_local import free_port


class Receiver:
    """A local HTTP endpoint that keeps every JSON body posted to it and answers `status`."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - stdlib naming
                length = int(self.headers.get("content-length", 0))
                receiver.bodies.append((self.path, json.loads(self.rfile.read(length))))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


MESSAGE = Message("inc-1", "escalated", "payments down <!channel> password=hunter22", {"service": "payments", "event": "escalated"})


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
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive" and card["content"]["type"] == "AdaptiveCard"
    hook = bodies["/hook"]
    assert (hook["incident_id"], hook["event"], hook["labels"]["service"], hook["key"]) == ("inc-1", "escalated", "payments", "escalated")


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
        EmailChannel("127.0.0.1", port, "sregraph@example.org", ["oncall@example.org"], False, None, None, 5).send(MESSAGE)
    finally:
        controller.stop()
    assert [e.rcpt_tos for e in received] == [["oncall@example.org"]]
    text = received[0].content.decode()
    assert "Subject: [sregraph] escalated: inc-1 (payments)" in text and "service: payments" in text
    with pytest.raises(ToolError, match="EmailChannel"):
        EmailChannel("127.0.0.1", 9, "a@b", ["c@d"], False, None, None, 2).send(MESSAGE)


ROUTES = Route.model_validate({
    "channels": ["log"],
    "routes": [
        {"match": {"severity": "critical"}, "channels": ["pager"], "continue": True},
        {"match": {"service": "pay*"}, "channels": ["payments-team"]},
        {"match": {"event": "escalated"}, "channels": ["sre"]},
    ],
})


@pytest.mark.parametrize(
    ("labels", "channels"),
    [
        ({"service": "payments", "event": "opened"}, ["log", "payments-team"]),
        ({"service": "payments", "event": "escalated", "severity": "critical"}, ["log", "pager", "payments-team"]),
        ({"service": "search", "event": "escalated"}, ["log", "sre"]),
        ({"service": "search", "event": "opened"}, ["log"]),
    ],
)
def test_routes_first_match_and_continue(labels: dict[str, str], channels: list[str]) -> None:
    assert ROUTES.select(labels) == channels


def test_settings_refuse_incomplete_channels_and_unknown_routes() -> None:
    with pytest.raises(ValueError, match="unknown channels: nope"):
        NotificationsConfig.model_validate({"channels": {"a": {"type": "slack", "url": "http://x"}}, "route": {"channels": ["nope"]}})
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
    notifier = RoutedNotifier({"good": good, "broken": broken}, route, lambda _id: {"service": "payments"}, 300, clock)
    notifier.notify("inc-1", "opened", "token=abcdef123456")
    notifier.notify("inc-2", "opened", "same service, same event, 10 s later")  # grouped
    clock.sleep(301)
    notifier.notify("inc-3", "opened", "after the repeat interval")
    assert [m.incident_id for m in good.sent] == ["inc-1", "inc-3"]
    assert "abcdef123456" not in good.sent[0].text
    lonely = RoutedNotifier({"broken": broken}, Route(channels=["broken"]), lambda _id: {}, 0, clock)
    with pytest.raises(ToolError, match="every routed channel failed"):
        lonely.notify("inc-4", "opened", "x")


def test_configured_channels_get_the_incident_labels_once_across_reruns(tmp_path: Path, receiver: Receiver) -> None:
    settings = load_settings(environ={}, data_dir=tmp_path / "data", notifications={
        "channels": {"payments-team": {"type": "webhook", "url": receiver.url("/payments")},
                     "pager": {"type": "webhook", "url": receiver.url("/pager")}},
        "route": {"routes": [{"match": {"service": "payments"}, "channels": ["payments-team"], "continue": True},
                             {"match": {"severity": "critical"}, "channels": ["pager"]}]},
    })
    RunRegistry(settings.data_dir / "runs.db").record(
        "inc-7", Trigger(source="alert", service="payments", labels={"severity": "critical"}), "observing"
    )
    RunRegistry(settings.data_dir / "runs.db").record("inc-8", Trigger(source="scan", service="search"), "observing")
    notifier = IdempotentNotifier(routed_notifier(settings), ActionLedger(tmp_path / "ledger.db"))
    for _ in range(2):  # the step runs again after a crash: delivered once
        with notification_key("escalated"):
            notifier.notify("inc-7", "escalated", "payments down")
    with notification_key("opened"):
        notifier.notify("inc-8", "opened", "search slow")  # matches no route: nobody is paged
    assert [(path, body["incident_id"], body["labels"]) for path, body in receiver.bodies] == [
        ("/payments", "inc-7", {"event": "escalated", "service": "payments", "severity": "critical", "source": "alert"}),
        ("/pager", "inc-7", {"event": "escalated", "service": "payments", "severity": "critical", "source": "alert"}),
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
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

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
                    self._answer(200, {"result": [{"sys_id": k} for k, v in tracker.snow.items() if v["correlation_id"] == wanted][:1]})
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
                    assert {"short_description", "description", "urgency", "impact", "correlation_id"} <= set(body)
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


def test_jira_and_servicenow_get_one_ticket_per_incident_then_comments(monkeypatch: pytest.MonkeyPatch) -> None:
    tracker = Tracker()
    monkeypatch.setenv("TRACKER_SECRET", "s3cret")
    try:
        jira = ChannelConfig(type="jira", url=tracker.url, username="bot", password_env="TRACKER_SECRET", project="OPS").build()
        snow = ChannelConfig(type="servicenow", url=tracker.url, username="bot", password_env="TRACKER_SECRET").build()
        opened = Message("inc-1", "opened", "payments down", {"service": "payments", "severity": "critical"})
        for channel in (jira, snow):
            channel.send(opened)
            channel.send(Message("inc-1", "action", "restart payments: done", {"service": "payments"}))
        # A restarted worker (new channel objects) finds the tickets in the trackers instead of opening more.
        for config in (dict(type="jira", project="OPS"), dict(type="servicenow")):
            ChannelConfig(url=tracker.url, username="bot", password_env="TRACKER_SECRET", **config).build().send(
                Message("inc-1", "documented", "post-mortem written", {})
            )
        assert list(tracker.jira) == ["OPS-1"] and tracker.jira["OPS-1"]["fields"]["labels"] == ["sregraph", "inc-1"]
        assert tracker.jira["OPS-1"]["comments"] == ["action: restart payments: done", "documented: post-mortem written"]
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
