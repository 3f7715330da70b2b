"""The Alertmanager webhook receiver: payload validation, grouping, dedup, resolution, HTTP answers, queue."""

from __future__ import annotations

import copy
import json
import socket
import threading
from typing import Any

import httpx
import pytest

from sregraph.alerts import (
    AlertReceiver,
    ResolvedAlert,
    WebhookError,
    fingerprint_of,
    group_alerts,
    parse_webhook,
    trigger_for,
)
from tests.support import ManualClock
from tools.base import ConfigError
from tools.domain import Trigger

T0 = 1_700_000_000.0


def alert(
    service: str,
    status: str = "firing",
    alertname: str = "ErrorBudgetBurnPage",
    slo: str | None = None,
    fp: str | None = None,
) -> dict[str, Any]:
    slo = slo or f"{service}-availability"
    return {
        "status": status,
        "labels": {
            "alertname": alertname,
            "severity": "page",
            "sregraph_service": service,
            "sregraph_slo": slo,
            "team": "t",
        },
        "annotations": {
            "summary": f"{service}: SLO {slo} is burning its error budget (page)",
            "description": "Error ratio 12% over the long window",
        },
        "startsAt": "2024-05-01T12:00:00.123Z",
        "endsAt": "2024-05-01T12:05:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=...",
        "fingerprint": fp or f"fp-{slo}",
    }


def payload(*alerts: dict[str, Any], status: str | None = None) -> dict[str, Any]:
    """What Alertmanager 0.25 posts (field for field)."""
    return {
        "receiver": "sregraph",
        "status": status or ("firing" if any(a["status"] == "firing" for a in alerts) else "resolved"),
        "alerts": list(alerts),
        "groupLabels": {"alertname": "ErrorBudgetBurnPage"},
        "commonLabels": {"alertname": "ErrorBudgetBurnPage"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": '{}:{alertname="ErrorBudgetBurnPage"}',
        "truncatedAlerts": 0,
    }


def body(data: object) -> bytes:
    return json.dumps(data).encode()


# --------------------------------------------------------------------------- parsing and grouping


def test_parse_and_group_by_service_and_alertname() -> None:
    hook = parse_webhook(
        body(payload(alert("payments"), alert("payments", slo="payments-error-rate"), alert("checkout")))
    )
    assert hook.version == "4" and hook.receiver == "sregraph"
    groups = group_alerts(hook)
    assert [(g.fingerprint, len(g.alerts)) for g in groups] == [
        ("payments:ErrorBudgetBurnPage", 2),
        ("checkout:ErrorBudgetBurnPage", 1),
    ]
    trigger = trigger_for(groups[0])
    assert trigger.source == "alert"
    assert trigger.service == "payments"
    assert trigger.signal == "ErrorBudgetBurnPage"
    assert trigger.summary == "payments: SLO payments-availability is burning its error budget (page)"
    assert trigger.fired_at == pytest.approx(1714564800.123)
    assert trigger.labels["fingerprint"] == "payments:ErrorBudgetBurnPage"
    assert trigger.labels["alerts"] == "2"
    assert trigger.labels["alertmanager_fingerprints"] == "fp-payments-availability,fp-payments-error-rate"
    assert trigger.labels["severity"] == "page" and trigger.labels["team"] == "t"
    assert "sregraph_slo" not in trigger.labels  # differs between the two alerts


def test_service_label_preference_and_fallbacks() -> None:
    a = alert("payments")
    a["labels"]["service"] = "payments-api"
    b = alert("x")
    del b["labels"]["sregraph_service"]
    b["labels"]["alertname"] = "InstanceDown"
    del b["fingerprint"]
    hook = parse_webhook(body(payload(a, b)))
    groups = group_alerts(hook)
    assert [g.fingerprint for g in groups] == ["payments-api:ErrorBudgetBurnPage", "-:InstanceDown"]
    assert trigger_for(groups[1]).service is None
    assert len(trigger_for(groups[1]).labels["alertmanager_fingerprints"]) == 16  # hash of the labels
    assert fingerprint_of(None, "X") == "-:X"


def test_long_alert_text_is_clipped() -> None:
    a = alert("payments")
    a["annotations"]["summary"] = "word " * 500
    trigger = trigger_for(group_alerts(parse_webhook(body(payload(a))))[0])
    assert len(trigger.summary) == 300 and trigger.summary.endswith("…")


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (b"{not json", 400, "body is not JSON"),
        (body({**payload(alert("p")), "version": "3"}), 422, "version: Input should be '4'"),
        (
            body({k: v for k, v in payload(alert("p")).items() if k != "status"}),
            422,
            "status: Field required",
        ),
        (body({**payload(alert("p")), "alerts": {"a": 1}}), 422, "alerts: Input should be a valid list"),
        (
            body(payload({**alert("p"), "startsAt": "yesterday"})),
            422,
            "alerts.0.startsAt: Input should be a valid datetime",
        ),
        (
            body(payload({**alert("p"), "status": "pending"})),
            422,
            "alerts.0.status: Input should be 'firing' or 'resolved'",
        ),
        (
            body(payload({**alert("p"), "labels": {"a": 1}})),
            422,
            "alerts.0.labels.a: Input should be a valid string",
        ),
        (body([1, 2]), 422, "Input should be a valid dictionary"),
    ],
)
def test_bad_payloads_name_the_problem(raw: bytes, status: int, message: str) -> None:
    with pytest.raises(WebhookError) as info:
        parse_webhook(raw)
    assert info.value.status == status
    assert message in str(info.value)
    assert isinstance(info.value, ConfigError)


def test_too_many_alerts_is_refused() -> None:
    with pytest.raises(WebhookError, match="alerts: List should have at most 1000 items"):
        parse_webhook(body(payload(*[alert(f"s{i}") for i in range(1001)])))


# --------------------------------------------------------------------------- dedup and resolution


def pull_all(receiver: AlertReceiver) -> list[Any]:
    out = []
    while (event := receiver.next_event(timeout=0)) is not None:
        out.append(event)
    return out


def test_repeats_are_duplicates_until_resolved() -> None:
    clock = ManualClock(T0)
    r = AlertReceiver(clock=clock)
    first = payload(alert("payments"))
    assert r.handle(body(first)) == (200, {"triggers": 1, "duplicates": 0, "resolved": 0})
    assert r.handle(body(first)) == (200, {"triggers": 0, "duplicates": 1, "resolved": 0})
    assert r.active() == {"payments:ErrorBudgetBurnPage": 1}
    events = pull_all(r)
    assert len(events) == 1 and isinstance(events[0], Trigger)

    assert r.handle(body(payload(alert("payments", status="resolved")))) == (
        200,
        {"triggers": 0, "duplicates": 0, "resolved": 1},
    )
    assert r.active() == {}
    (resolved,) = pull_all(r)  # pull mode hands out resolutions too
    assert isinstance(resolved, ResolvedAlert)
    assert resolved.fingerprint == "payments:ErrorBudgetBurnPage" and resolved.service == "payments"
    assert resolved.ended_at == pytest.approx(1714565100.0)
    assert list(r.resolved) == [resolved]

    assert r.handle(body(first))[1]["triggers"] == 1  # firing again after resolution: a new incident
    assert r.stats.triggers == 2 and r.stats.duplicates == 1 and r.stats.resolved == 1


def test_dedup_window_lets_a_long_running_alert_trigger_again() -> None:
    clock = ManualClock(T0)
    r = AlertReceiver(clock=clock, dedup_window_s=600)
    first = body(payload(alert("payments")))
    assert r.handle(first)[1]["triggers"] == 1
    clock.sleep(599)
    assert r.handle(first)[1]["duplicates"] == 1
    clock.sleep(1)
    assert r.handle(first)[1]["triggers"] == 1


def test_group_stays_active_while_any_of_its_alerts_fires() -> None:
    r = AlertReceiver(clock=ManualClock(T0))
    r.handle(body(payload(alert("payments"), alert("payments", slo="payments-error-rate"))))
    # Alertmanager groups differently: one SLO's alert resolves in a payload of its own.
    answer = r.handle(body(payload(alert("payments", status="resolved"))))
    assert answer[1] == {"triggers": 0, "duplicates": 0, "resolved": 0}
    assert r.active() == {"payments:ErrorBudgetBurnPage": 1}
    answer = r.handle(body(payload(alert("payments", slo="payments-error-rate", status="resolved"))))
    assert answer[1]["resolved"] == 1 and r.active() == {}


def test_full_queue_answers_503_and_changes_nothing() -> None:
    r = AlertReceiver(queue_size=1, clock=ManualClock(T0))
    two = body(payload(alert("payments"), alert("checkout")))
    status, answer = r.handle(two)
    assert status == 503 and "queue full" in answer["error"]
    assert r.active() == {} and r.queued == 0 and r.stats.queue_full == 1
    assert r.handle(body(payload(alert("payments"))))[0] == 200
    r.next_event(timeout=0)
    assert r.handle(body(payload(alert("checkout"))))[0] == 200  # room again


def test_pull_mode_only_without_callback() -> None:
    r = AlertReceiver(callback=lambda t: None)
    with pytest.raises(ConfigError, match="pull mode needs callback=None"):
        r.next_event(0)
    with pytest.raises(ValueError):
        AlertReceiver(queue_size=0)


# --------------------------------------------------------------------------- over HTTP


def test_http_webhook_calls_back_with_triggers() -> None:
    got: list[Trigger] = []
    resolved: list[ResolvedAlert] = []
    with AlertReceiver(callback=got.append, on_resolved=resolved.append, token="s3cret") as r:
        auth = {"Authorization": "Bearer s3cret"}
        with httpx.Client(timeout=5) as client:
            resp = client.post(r.url, json=payload(alert("payments"), alert("checkout")), headers=auth)
            assert resp.status_code == 200 and resp.json() == {"triggers": 2, "duplicates": 0, "resolved": 0}
            assert r.wait_idle(5)
            assert [t.service for t in got] == ["payments", "checkout"]
            resp = client.post(r.url, json=payload(alert("payments", status="resolved")), headers=auth)
            assert resp.json()["resolved"] == 1
            assert r.wait_idle(5)
            assert [x.fingerprint for x in resolved] == ["payments:ErrorBudgetBurnPage"]
            health = client.get(f"http://{r.host}:{r.port}/health").json()
            assert health["status"] == "ok" and health["triggers"] == 2 and health["queued"] == 0


def test_http_error_answers() -> None:
    with AlertReceiver(callback=lambda t: None, token="s3cret", max_body_bytes=2000) as r:
        auth = {"Authorization": "Bearer s3cret"}
        with httpx.Client(timeout=5) as client:
            assert client.post(r.url, json=payload(alert("p"))).status_code == 401
            assert (
                client.post(
                    r.url, json=payload(alert("p")), headers={"Authorization": "Bearer nope"}
                ).status_code
                == 401
            )
            resp = client.post(r.url, content=b"{", headers={**auth, "Content-Type": "application/json"})
            assert resp.status_code == 400 and "not JSON" in resp.json()["error"]
            resp = client.post(r.url, json={"version": "4"}, headers=auth)
            assert resp.status_code == 422 and "status: Field required" in resp.json()["error"]
            resp = client.post(
                r.url, content=b"x" * 2001, headers={**auth, "Content-Type": "application/json"}
            )
            assert resp.status_code == 413 and "exceeds the limit of 2000" in resp.json()["error"]
            resp = client.post(
                r.url, content=b"a=1", headers={**auth, "Content-Type": "application/x-www-form-urlencoded"}
            )
            assert resp.status_code == 415
            assert client.get(r.url).status_code == 405
            assert client.post(r.url + "/x", json={}, headers=auth).status_code == 404
            assert client.get(f"http://{r.host}:{r.port}/nope").status_code == 404
        assert r.stats.rejected == 2


def test_http_without_content_length_is_411() -> None:
    with AlertReceiver(callback=lambda t: None, insecure_no_auth=True) as r:
        with socket.create_connection((r.host, r.port), timeout=5) as sock:
            sock.sendall(
                b"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
            )
            answer = sock.recv(4096).decode()
    assert answer.startswith("HTTP/1.0 411") or answer.startswith("HTTP/1.1 411")


def test_http_503_when_the_callback_falls_behind() -> None:
    release = threading.Event()
    started = threading.Event()

    def slow(trigger: Trigger) -> None:
        started.set()
        release.wait(5)

    r = AlertReceiver(callback=slow, queue_size=1, dedup_window_s=0, insecure_no_auth=True)
    with r, httpx.Client(timeout=5) as client:
        assert client.post(r.url, json=payload(alert("a"))).status_code == 200
        assert started.wait(5)  # the dispatcher is busy with the first
        assert client.post(r.url, json=payload(alert("b"))).status_code == 200  # waits in the queue
        resp = client.post(r.url, json=payload(alert("c")))
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"
        release.set()
        assert r.wait_idle(5)
        assert client.post(r.url, json=payload(alert("c"))).status_code == 200
        assert r.wait_idle(5)


def test_callback_errors_are_counted_and_dispatch_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str | None] = []

    def flaky(trigger: Trigger) -> None:
        seen.append(trigger.service)
        if trigger.service == "a":
            raise RuntimeError("engine exploded")

    with AlertReceiver(callback=flaky, insecure_no_auth=True) as r, httpx.Client(timeout=5) as client:
        client.post(r.url, json=payload(alert("a"), alert("b")))
        assert r.wait_idle(5)
    assert seen == ["a", "b"] and r.stats.callback_errors == 1
    assert "engine exploded" in caplog.text


def test_stop_is_idempotent_and_restart_free_port() -> None:
    r = AlertReceiver(callback=lambda t: None, insecure_no_auth=True)
    r.start()
    url = r.url
    r.start()  # already running: no second server
    assert r.url == url
    r.stop()
    r.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.post(url, json=copy.deepcopy(payload(alert("a"))), timeout=1)
