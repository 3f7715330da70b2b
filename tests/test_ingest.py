"""Ingestion through the API and the SDK: validated, all-or-nothing, size- and rate-limited, and read by the agents'
telemetry store; the SDK batches, retries, and counts what it drops."""

from __future__ import annotations

import json
import logging
import time

import httpx
import pytest

from sregraph import server
from sregraph.ingest import MAX_BODY
from sregraph.sdk import MetricsPusher, SregraphHandler, Shipper
from tests.test_server import _auth, api  # noqa: F401 - the fixture


def test_sdk_logs_and_metrics_reach_the_store_the_agents_read(api) -> None:  # noqa: F811
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
    assert (handler.shipper.sent, handler.dropped, pusher.shipper.sent, pusher.shipper.dropped) == (250, 0, 30, 0)
    telemetry = engine.toolbox.telemetry
    lines = telemetry.search_logs("checkout", now - 60, time.time() + 1, query="payment provider slow", limit=1000)
    assert len(lines) == 250 and {r.level for r in lines} == {"warning"}
    series = telemetry.query_range("queue_depth", {"service": "checkout"}, now - 60, now + 1)
    assert [p[1] for p in series[0].points] == [float(i) for i in range(30)]


def test_an_ingest_token_only_ingests_and_a_viewer_may_not_ingest(api) -> None:  # noqa: F811
    _, _, _, store, tokens, client = api
    app_token = store.create_token("app", "ingest")
    assert client.get("/api/v1/incidents", headers=_auth(app_token)).status_code == 403
    record = {"ts": time.time(), "service": "checkout", "message": "hello"}
    assert client.post("/api/v1/ingest/logs", json={"records": [record]}, headers=_auth(tokens["viewer"])).status_code == 403
    assert client.post("/api/v1/ingest/logs", json={"records": [record]}, headers=_auth(tokens["operator"])).json() == {"stored": 1}


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        ("logs", {"ts": 1.0, "service": "checkout", "message": "from 1970"}),
        ("logs", {"ts": "now", "service": "checkout", "message": "x"}),
        ("logs", {"ts": 0, "service": "check out; drop", "message": "x"}),
        ("logs", {"ts": 0, "service": "checkout", "message": "x", "extra": 1}),
        ("metrics", {"name": "q", "labels": {}, "value": 1.0, "ts": 0}),
        ("metrics", {"name": "q", "labels": {"service": "checkout"}, "value": float("nan"), "ts": 0}),
        ("spans", {"trace_id": "t", "span_id": "s", "service": "checkout", "name": "GET", "start": 0, "duration_ms": -1}),
    ],
)
def test_a_bad_record_refuses_its_whole_batch(api, path: str, bad: dict) -> None:  # noqa: F811
    _, engine, _, _, tokens, client = api
    now = time.time()
    good = {
        "logs": {"ts": now, "service": "checkout", "message": "fine"},
        "metrics": {"name": "q", "labels": {"service": "checkout"}, "value": 1.0, "ts": now},
        "spans": {"trace_id": "t", "span_id": "s1", "service": "checkout", "name": "GET", "start": now, "duration_ms": 3},
    }[path]
    bad = {k: (now if v == 0 else v) for k, v in bad.items()}
    field = {"logs": "records", "metrics": "points", "spans": "spans"}[path]
    answer = client.post(
        f"/api/v1/ingest/{path}", content=json.dumps({field: [good, bad]}, allow_nan=True),
        headers={**_auth(tokens["operator"]), "Content-Type": "application/json"},
    )
    assert answer.status_code == 422, answer.text
    assert all(set(e) == {"loc", "msg", "type"} for e in answer.json()["detail"])  # never the input echoed back
    telemetry = engine.toolbox.telemetry
    assert telemetry.search_logs("checkout", now - 10, now + 10, query="fine") == []
    assert telemetry.query_range("q", {"service": "checkout"}, now - 10, now + 10) == []
    assert telemetry.spans("checkout", now - 10, now + 10) == []


def test_oversized_and_too_frequent_batches(api) -> None:  # noqa: F811
    _, _, worker, store, tokens, client = api
    headers = _auth(tokens["operator"])
    big = client.post("/api/v1/ingest/logs", content=b" " * (MAX_BODY + 1), headers=headers)
    assert big.status_code == 413
    record = {"records": [{"ts": time.time(), "service": "checkout", "message": "x"}]}
    # A bucket of 3 that refills once an hour: the fourth request of the token is refused, another token's is not.
    slow = server.ApiServer(server.create_app(worker, store, ingest_limit=(1 / 3600, 3))).start()
    try:
        with httpx.Client(base_url=slow.url, timeout=30) as other:
            statuses = [other.post("/api/v1/ingest/logs", json=record, headers=headers).status_code for _ in range(5)]
            assert statuses == [200, 200, 200, 429, 429]
            assert other.post("/api/v1/ingest/logs", json=record, headers=_auth(tokens["admin"])).status_code == 200
    finally:
        slow.stop()


def test_the_sdk_never_blocks_and_counts_what_it_loses() -> None:
    # Nothing listens on port 9: every batch fails; a full queue drops at once.
    shipper = Shipper("http://127.0.0.1:9", "srg_x", "logs", max_queue=5, flush_s=0.05, retries=1, backoff_s=0.01, timeout_s=1)
    t0 = time.monotonic()
    for i in range(50):
        shipper.put({"ts": time.time(), "service": "s", "message": str(i)})
    assert time.monotonic() - t0 < 0.5
    shipper.close()
    assert shipper.sent == 0 and shipper.dropped == 50
