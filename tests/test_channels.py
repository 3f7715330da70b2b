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

from graphs.state import Trigger
from sregraph.config import load_settings
from sregraph.engine import RunRegistry, routed_notifier
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


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[Message] = []
        self.fail = fail

    def send(self, message: Message) -> None:
        if self.fail:
            raise ToolError("down")
        self.sent.append(message)


def test_routed_notifier_groups_repeats_and_survives_one_broken_channel() -> None:
    clock = Clock()
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
