"""Ingestion through the API and the SDK: validated, all-or-nothing, size- and rate-limited, and read by the agents'
telemetry store; the SDK batches, retries, and counts what it drops."""

from __future__ import annotations

import json
import logging
import time

import httpx
import pytest

from evals.harness import Scenario
from sregraph import server
from sregraph.ingest import MAX_BODY, DeployIn
from sregraph.sdk import Annotator, MetricsPusher, Shipper, SregraphHandler, mark_deploy
from tests.fixtures.api import auth_header
from tools.base import DeployMarker, ExternalEvent


def test_sdk_logs_and_metrics_reach_the_store_the_agents_read(api) -> None:
    world, engine, _, store, _, client = api
    token = store.create_token("checkout-app", "ingest")
    handler = SregraphHandler(str(client.base_url), token, service="checkout", flush_s=0.1)
    app_log = logging.getLogger("checkout.test")
    app_log.addHandler(handler)
    app_log.propagate = False
    try:
        for i in range(250):
            app_log.warning("payment provider slow (%d ms)", 900 + i)
    finally:
        app_log.removeHandler(handler)
        handler.close()
    pusher = MetricsPusher(str(client.base_url), token, service="checkout", flush_s=0.1)
    now = time.time()
    for i in range(30):
        pusher.gauge("queue_depth", i, ts=now - 30 + i)
    pusher.close()
    assert (handler.shipper.sent, handler.dropped, pusher.shipper.sent, pusher.shipper.dropped) == (
        250,
        0,
        30,
        0,
    )
    telemetry = engine.toolbox.telemetry
    lines = telemetry.search_logs(
        "checkout", now - 60, time.time() + 1, query="payment provider slow", limit=1000
    )
    assert len(lines) == 250 and {r.level for r in lines} == {"warning"}
    series = telemetry.query_range("queue_depth", {"service": "checkout"}, now - 60, now + 1)
    assert [p[1] for p in series[0].points] == [float(i) for i in range(30)]


def test_an_ingest_token_only_ingests_and_a_viewer_may_not_ingest(api) -> None:
    _, _, _, store, tokens, client = api
    app_token = store.create_token("app", "ingest")
    assert client.get("/api/v1/incidents", headers=auth_header(app_token)).status_code == 403
    record = {"ts": time.time(), "service": "checkout", "message": "hello"}
    assert (
        client.post(
            "/api/v1/ingest/logs", json={"records": [record]}, headers=auth_header(tokens["viewer"])
        ).status_code
        == 403
    )
    assert client.post(
        "/api/v1/ingest/logs", json={"records": [record]}, headers=auth_header(tokens["operator"])
    ).json() == {"stored": 1}


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        ("logs", {"ts": 1.0, "service": "checkout", "message": "from 1970"}),
        ("logs", {"ts": "now", "service": "checkout", "message": "x"}),
        ("logs", {"ts": 0, "service": "check out; drop", "message": "x"}),
        ("logs", {"ts": 0, "service": "checkout", "message": "x", "extra": 1}),
        ("metrics", {"name": "q", "labels": {}, "value": 1.0, "ts": 0}),
        ("metrics", {"name": "q", "labels": {"service": "checkout"}, "value": float("nan"), "ts": 0}),
        (
            "spans",
            {
                "trace_id": "t",
                "span_id": "s",
                "service": "checkout",
                "name": "GET",
                "start": 0,
                "duration_ms": -1,
            },
        ),
        ("deploys", {"ts": 0, "service": "checkout", "version": ""}),
        ("deploys", {"ts": 0, "service": "checkout", "version": "1", "revision": "$(rm -rf /)"}),
        ("events", {"ts": 0, "kind": "feature flag", "title": "x"}),
        ("events", {"ts": 4e9, "kind": "feature_flag", "title": "from the future"}),
    ],
)
def test_a_bad_record_refuses_its_whole_batch(api, path: str, bad: dict) -> None:
    _, engine, _, _, tokens, client = api
    now = time.time()
    good = {
        "logs": {"ts": now, "service": "checkout", "message": "fine"},
        "metrics": {"name": "q", "labels": {"service": "checkout"}, "value": 1.0, "ts": now},
        "spans": {
            "trace_id": "t",
            "span_id": "s1",
            "service": "checkout",
            "name": "GET",
            "start": now,
            "duration_ms": 3,
        },
        "deploys": {"ts": now, "service": "checkout", "version": "1.5.0"},
        "events": {"ts": now, "kind": "config_push", "title": "fine"},
    }[path]
    bad = {k: (now if v == 0 else v) for k, v in bad.items()}
    field = {
        "logs": "records",
        "metrics": "points",
        "spans": "spans",
        "deploys": "deploys",
        "events": "events",
    }[path]
    answer = client.post(
        f"/api/v1/ingest/{path}",
        content=json.dumps({field: [good, bad]}, allow_nan=True),
        headers={**auth_header(tokens["operator"]), "Content-Type": "application/json"},
    )
    assert answer.status_code == 422, answer.text
    # never the input echoed back
    assert all(set(e) == {"loc", "msg", "type"} for e in answer.json()["detail"])
    telemetry = engine.toolbox.telemetry
    assert telemetry.search_logs("checkout", now - 10, now + 10, query="fine") == []
    assert telemetry.query_range("q", {"service": "checkout"}, now - 10, now + 10) == []
    assert telemetry.spans("checkout", now - 10, now + 10) == []
    assert telemetry.deploys(now - 10, now + 10) == [] and telemetry.events(now - 10, now + 10) == []


def test_oversized_and_too_frequent_batches(api) -> None:
    _, _, worker, store, tokens, client = api
    headers = auth_header(tokens["operator"])
    big = client.post("/api/v1/ingest/logs", content=b" " * (MAX_BODY + 1), headers=headers)
    assert big.status_code == 413
    record = {"records": [{"ts": time.time(), "service": "checkout", "message": "x"}]}
    # A bucket of 3 that refills once an hour: the fourth request of the token is refused, another token's is not.
    slow = server.ApiServer(server.create_app(worker, store, ingest_limit=(1 / 3600, 3))).start()
    try:
        with httpx.Client(base_url=slow.url, timeout=30) as other:
            statuses = [
                other.post("/api/v1/ingest/logs", json=record, headers=headers).status_code for _ in range(5)
            ]
            assert statuses == [200, 200, 200, 429, 429]
            # One bucket per token across every kind: markers and events are refused too.
            marker = {"deploys": [{"ts": time.time(), "service": "checkout", "version": "1"}]}
            assert other.post("/api/v1/ingest/deploys", json=marker, headers=headers).status_code == 429
            assert (
                other.post(
                    "/api/v1/ingest/logs", json=record, headers=auth_header(tokens["admin"])
                ).status_code
                == 200
            )
    finally:
        slow.stop()


def test_the_sdk_never_blocks_and_counts_what_it_loses() -> None:
    # Nothing listens on port 9: every batch fails; a full queue drops at once.
    shipper = Shipper(
        "http://127.0.0.1:9",
        "srg_x",
        "logs",
        max_queue=5,
        flush_s=0.05,
        retries=1,
        backoff_s=0.01,
        timeout_s=1,
    )
    t0 = time.monotonic()
    for i in range(50):
        shipper.put({"ts": time.time(), "service": "s", "message": str(i)})
    assert time.monotonic() - t0 < 0.5
    shipper.close()
    assert shipper.sent == 0 and shipper.dropped == 50


def test_deploy_markers_and_events_through_the_sdk_are_stored_once_and_listed(api) -> None:
    _, engine, _, store, tokens, client = api
    token = store.create_token("pipeline", "ingest")
    now = time.time()
    mark_deploy(
        str(client.base_url),
        token,
        service="checkout",
        version="1.5.0",
        revision="a1b2c3d4e5",
        author="ci",
        ts=now - 5,
    )
    mark_deploy(
        str(client.base_url),
        token,
        service="checkout",
        version="1.5.0",
        revision="a1b2c3d4e5",
        author="ci",
        ts=now - 5,
    )
    again = {
        "deploys": [
            {
                "ts": now - 5,
                "service": "checkout",
                "version": "1.5.0",
                "revision": "a1b2c3d4e5",
                "author": "ci",
                "description": "",
            }
        ]
    }
    # already there
    assert client.post("/api/v1/ingest/deploys", json=again, headers=auth_header(token)).json() == {
        "stored": 0
    }
    annotator = Annotator(str(client.base_url), token, flush_s=0.1)
    annotator.deploy("payments", "2.0.0", description="canary 10%")
    annotator.event(
        "feature_flag", "new-pricing turned on for 50%", service="checkout", attrs={"flag": "new-pricing"}
    )
    annotator.event("scaling", "fleet scaled from 6 to 3 nodes")
    annotator.close()
    assert (annotator.deploys.sent, annotator.events.sent, annotator.dropped) == (1, 2, 0)
    viewer = auth_header(tokens["viewer"])
    deploys = client.get("/api/v1/ingest/deploys", headers=viewer).json()
    assert [(d["service"], d["version"]) for d in deploys] == [("payments", "2.0.0"), ("checkout", "1.5.0")]
    assert deploys[1]["id"].startswith("dm-") and deploys[1]["revision"] == "a1b2c3d4e5"
    assert [
        d["service"] for d in client.get("/api/v1/ingest/deploys?service=checkout", headers=viewer).json()
    ] == ["checkout"]
    events = client.get("/api/v1/ingest/events?service=checkout", headers=viewer).json()
    # A checkout reader gets checkout's events and those concerning every service.
    assert [(e["kind"], e["service"]) for e in events] == [("scaling", None), ("feature_flag", "checkout")]
    assert events[1]["attrs"] == {"flag": "new-pricing"}
    assert (
        client.get("/api/v1/ingest/events?kind=scaling", headers=viewer).json()[0]["title"]
        == "fleet scaled from 6 to 3 nodes"
    )
    # The analyst's change source sees the markers beside the GitOps history (which has only its seed commit).
    changes = engine.toolbox.changes.history(since=now - 60)
    assert [(c.kind, c.services, c.author) for c in changes] == [
        ("deploy", ["payments"], "deploy marker"),
        ("deploy", ["checkout"], "ci"),
    ]
    # Viewers read them, never send them; an ingest token sends, never reads.
    assert (
        client.post(
            "/api/v1/ingest/events", json={"events": [{"ts": now, "kind": "x", "title": "y"}]}, headers=viewer
        ).status_code
        == 403
    )
    assert client.get("/api/v1/ingest/deploys", headers=auth_header(token)).status_code == 403


def test_a_deploy_marker_naming_a_gitops_commit_is_that_commit(api) -> None:
    world, engine, _, _, _, _ = api
    gitops = engine.toolbox.gitops
    commit = gitops.commit_config("checkout", {"version": "1.5.0"}, "checkout 1.5.0", kind="deploy")
    at = commit.at
    telemetry = engine.toolbox.telemetry
    telemetry.write_deploys(
        [
            DeployMarker(
                id="dm-000000000001", ts=at + 1, service="checkout", version="1.5.0", revision=commit.sha[:10]
            ),
            DeployMarker(id="dm-000000000002", ts=at + 2, service="search", version="9.9.9", revision="abc"),
        ]
    )
    history = engine.toolbox.changes.history(since=at - 1)
    # the commit, not its marker; "abc" is too short to name one
    assert [c.sha for c in history] == [
        "dm-000000000002",
        commit.sha,
    ]


def test_the_analyst_suspects_an_ingested_deploy_marker(api) -> None:
    world, engine, worker, _, tokens, client = api
    # Deploy markers and events are stamped by the sender; the synthetic world runs on its own (2023) clock,
    # older than the API takes, so this test writes them where the API would, in world time.
    telemetry = engine.toolbox.telemetry
    deploy = DeployIn.model_construct(
        ts=world.t,
        service="checkout",
        version="3.1.0",
        revision="",
        author="ci",
        description="new pricing engine",
    )
    telemetry.write_deploys([deploy.marker()])
    telemetry.write_events(
        [
            ExternalEvent(
                ts=world.t + 1, kind="feature_flag", title="new-pricing on for everyone", service="checkout"
            ),
            ExternalEvent(ts=world.t + 1, kind="scaling", title="search scaled to 2", service="search"),
        ]
    )
    world.advance(3)
    world.inject(Scenario("error_spike", "checkout"), engine.toolbox.gitops)
    incident_id = worker.scan()
    assert incident_id is not None and worker.wait_idle(60)
    state = engine.state(incident_id)
    top = state["diagnosis"].top
    assert (top.service, top.fault_type) == ("checkout", "bad_deploy")
    change = next(e for e in top.evidence if e.kind == "change")
    assert (
        change.ref == deploy.marker().id
        and "Deploy checkout 3.1.0 (deploy marker): new pricing engine" in change.summary
    )
    # Nothing here can roll back a deploy made outside the GitOps repo: a human takes it.
    assert (
        state["status"] == "escalated"
        and "no automatic remedy for bad_deploy on checkout" in state["escalation"]
    )
    detail = client.get(f"/api/v1/incidents/{incident_id}", headers=auth_header(tokens["viewer"])).json()
    # checkout's marker and flag flip are shown with it; search's scaling is not (search is not on checkout's path).
    assert [(n["type"], n["kind"], n["service"]) for n in detail["nearby"]] == [
        ("event", "feature_flag", "checkout"),
        ("deploy", "deploy", "checkout"),
    ]
