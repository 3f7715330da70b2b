"""The HTTP API: tokens and roles, the audit log, limits, and an approval given over HTTP that the worker acts on."""

from __future__ import annotations

import json
from pathlib import Path

from evals.harness import Scenario
from sregraph.api_auth import ApiStore
from sregraph.server import MAX_BODY
from tests.fixtures.api import auth_header
from tools.domain import Trigger


def test_every_call_but_health_needs_a_live_token(api) -> None:
    _, _, worker, store, tokens, client = api
    # Health needs no token; it is the worker loop's, which has not run yet.
    assert client.get("/healthz").status_code == 503
    worker.health.beat()
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/api/v1/incidents").status_code == 401
    assert (
        client.get(
            "/api/v1/incidents", headers={"Authorization": "Bearer srg_not-a-token-at-all-xxxxxx"}
        ).status_code
        == 401
    )
    # no scheme
    assert client.get("/api/v1/incidents", headers={"Authorization": tokens["viewer"]}).status_code == 401
    assert client.get("/api/v1/whoami", headers=auth_header(tokens["viewer"])).json() == {
        "name": "viewer-bot",
        "role": "viewer",
    }
    store.revoke("viewer-bot")
    assert client.get("/api/v1/incidents", headers=auth_header(tokens["viewer"])).status_code == 401


def test_tokens_are_stored_hashed(api, tmp_path: Path) -> None:
    _, _, _, store, tokens, _ = api
    raw = (tmp_path / "api.db").read_bytes()
    for token in tokens.values():
        assert token.encode() not in raw
    assert {t["name"] for t in store.tokens()} == {"viewer-bot", "operator-bot", "admin-bot"}
    assert all("hash" not in t for t in store.tokens())


def test_roles_and_the_audit_log(api) -> None:
    _, engine, _, store, tokens, client = api
    engine.registry.record(
        "inc-1", Trigger(source="scan", service="search", signal="x", summary="s"), "observing"
    )
    # A viewer may read but not approve; the refusal is audited under its name.
    assert client.get("/api/v1/incidents", headers=auth_header(tokens["viewer"])).json()["total"] == 1
    denied = client.post(
        "/api/v1/incidents/inc-1/approve", json={"reason": "lgtm"}, headers=auth_header(tokens["viewer"])
    )
    assert denied.status_code == 403
    # No token at all: audited as anonymous.
    assert client.post("/api/v1/incidents/inc-1/reject", json={}).status_code == 401
    # An operator may, but this incident has no graph state yet: 404, audited too.
    assert (
        client.post(
            "/api/v1/incidents/inc-1/approve", json={}, headers=auth_header(tokens["operator"])
        ).status_code
        == 404
    )
    # Only an admin reads the audit log.
    assert client.get("/api/v1/audit", headers=auth_header(tokens["operator"])).status_code == 403
    log = client.get("/api/v1/audit", headers=auth_header(tokens["admin"])).json()
    assert [(e["principal"], e["path"], e["status"]) for e in reversed(log)] == [
        ("viewer-bot", "/api/v1/incidents/inc-1/approve", 403),
        ("anonymous", "/api/v1/incidents/inc-1/reject", 401),
        ("operator-bot", "/api/v1/incidents/inc-1/approve", 404),
    ]
    assert store.audit_log()[0]["detail"] == {"incident_id": "inc-1", "approved": True, "reason": ""}


def test_bad_bodies_are_refused_and_change_nothing(api) -> None:
    _, engine, _, store, tokens, client = api
    engine.registry.record(
        "inc-2", Trigger(source="scan", service="search", signal="x", summary="s"), "observing"
    )
    headers = auth_header(tokens["operator"])
    big = client.post(
        "/api/v1/incidents/inc-2/approve", content=b"{" + b" " * MAX_BODY + b"}", headers=headers
    )
    assert big.status_code == 413
    assert (
        client.post("/api/v1/incidents/inc-2/approve", content=b"{not json", headers=headers).status_code
        == 422
    )
    assert (
        client.post("/api/v1/incidents/inc-2/approve", json={"approved": False}, headers=headers).status_code
        == 422
    )
    assert (
        client.post(
            "/api/v1/incidents/inc-2/approve", json={"reason": "x" * 3000}, headers=headers
        ).status_code
        == 422
    )
    assert [r["status"] for r in engine.registry.list()] == ["observing"]
    assert [e["status"] for e in store.audit_log()] == [422, 422, 422, 413]


def test_answers_are_redacted(api) -> None:
    _, engine, _, _, tokens, client = api
    trigger = Trigger(
        source="alert", service="search", signal="x", summary="db down: postgres://app:hunter22@db/orders"
    )
    engine.registry.record("inc-3", trigger, "observing")
    body = client.get("/api/v1/incidents", headers=auth_header(tokens["viewer"])).text
    assert "hunter22" not in body and "[REDACTED]" in body


def test_an_approval_over_http_resumes_the_incident_on_the_worker(api) -> None:
    world, engine, worker, store, tokens, client = api
    # The harness policy lets a restart of search happen only with a human's approval.
    world.inject(Scenario("latency", "search"), engine.toolbox.gitops)
    incident_id = worker.scan()
    assert incident_id is not None and worker.wait_idle(60)
    viewer, operator = auth_header(tokens["viewer"]), auth_header(tokens["operator"])
    detail = client.get(f"/api/v1/incidents/{incident_id}", headers=viewer).json()
    assert detail["waiting_for_approval"] is True and detail["status"] == "awaiting_approval"
    assert detail["diagnosis"]["hypotheses"][0]["service"] == "search"
    assert [a["kind"] for a in detail["plan"]["actions"]] == ["restart"]
    listed = client.get(
        "/api/v1/incidents", params={"status": detail["status"], "service": "search"}, headers=viewer
    ).json()
    assert [i["incident_id"] for i in listed["items"]] == [incident_id]

    answer = client.post(f"/api/v1/incidents/{incident_id}/approve", json={"reason": "go"}, headers=operator)
    assert answer.status_code == 202, answer.text
    assert worker.wait_idle(60)
    state = engine.state(incident_id)
    assert state["status"] == "resolved"
    assert [(r.action.kind, r.status) for r in state["actions"]] == [("restart", "done")]
    assert any("api:operator-bot" in t.event for t in state["timeline"])
    # Answered once: a second approval finds nothing waiting.
    again = client.post(f"/api/v1/incidents/{incident_id}/approve", json={}, headers=operator)
    assert again.status_code == 409
    timeline = client.get(f"/api/v1/incidents/{incident_id}/timeline", headers=viewer).json()
    assert timeline and all({"at", "event"} <= set(e) for e in timeline)
    assert [(e["principal"], e["status"]) for e in store.audit_log()] == [
        ("operator-bot", 409),
        ("operator-bot", 202),
    ]


def test_memory_search_without_memory_says_so(api) -> None:
    _, _, _, _, tokens, client = api
    answer = client.get(
        "/api/v1/memory/search", params={"q": "latency"}, headers=auth_header(tokens["viewer"])
    )
    assert answer.status_code == 404 and "without long-term memory" in answer.json()["detail"]
    assert client.get("/api/v1/memory/search", headers=auth_header(tokens["viewer"])).status_code == 422


def test_token_commands(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sregraph.cli import app

    runner = CliRunner()
    data = ["--data-dir", str(tmp_path / "data")]
    made = runner.invoke(app, ["token", "create", "ci", "--role", "operator", *data])
    assert made.exit_code == 0, made.output
    token = made.stdout.strip().splitlines()[-1]
    store = ApiStore(tmp_path / "data" / "api.db")
    principal = store.verify(token)
    assert principal is not None and principal.role == "operator"
    listed = runner.invoke(app, ["token", "list", *data])
    assert "ci" in listed.stdout and token not in listed.stdout
    assert runner.invoke(app, ["token", "create", "ci", *data]).exit_code == 2  # the name is taken
    assert runner.invoke(app, ["token", "create", "x", "--role", "root", *data]).exit_code == 2
    assert runner.invoke(app, ["token", "revoke", "ci", *data]).exit_code == 0
    assert store.verify(token) is None
    assert runner.invoke(app, ["token", "revoke", "ci", *data]).exit_code == 2


def test_event_stream_replays_from_last_event_id_and_follows(api) -> None:
    _, engine, _, _, tokens, client = api
    assert client.get("/api/v1/events").status_code == 401
    # The engine's progress hook feeds the stream (the app chained itself onto it).
    engine.progress(
        "inc-9",
        "analyze",
        {"status": "diagnosed", "timeline": ["diagnosis: crash on payments password=hunter22"]},
    )
    headers = {**auth_header(tokens["viewer"]), "Last-Event-ID": "0"}
    with client.stream("GET", "/api/v1/events", headers=headers) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines) == ": connected"
        got = []
        for line in lines:
            if line.startswith("data: "):
                got.append(json.loads(line[6:]))
                if len(got) == 1:
                    engine.progress("inc-9", "__interrupt__", {})
                else:
                    break
    assert [(e["seq"], e["node"], e["phase"], e["status"]) for e in got] == [
        (1, "analyze", "diagnose", "diagnosed"),
        (2, "__interrupt__", "act", "awaiting_approval"),
    ]
    assert "hunter22" not in got[0]["lines"][0]


def test_docs_and_dashboard_are_served_without_a_cdn(api) -> None:
    *_, client = api
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/swagger/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()
    assert client.get("/swagger/swagger-ui-bundle.js").status_code == 200
    page = client.get("/ui/")
    assert page.status_code == 200 and "room.js" in page.text
    # Only its own scripts, never framed.
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    for asset in ("app.js", "room.js", "incident.js", "style.css", "incident.html"):
        body = client.get(f"/ui/{asset}").text
        assert "http://" not in body and "https://" not in body, asset


def test_acknowledge_needs_an_operator_and_keeps_the_first(api) -> None:
    _, engine, _, store, tokens, client = api
    engine.registry.record(
        "inc-5", Trigger(source="scan", service="search", signal="x", summary="s"), "escalated"
    )
    assert (
        client.post("/api/v1/incidents/inc-5/acknowledge", headers=auth_header(tokens["viewer"])).status_code
        == 403
    )
    assert (
        client.post("/api/v1/incidents/nope/acknowledge", headers=auth_header(tokens["operator"])).status_code
        == 404
    )
    first = client.post("/api/v1/incidents/inc-5/acknowledge", headers=auth_header(tokens["operator"])).json()
    assert first["new"] is True and first["acknowledged"]["by"] == "api:operator-bot"
    again = client.post("/api/v1/incidents/inc-5/acknowledge", headers=auth_header(tokens["admin"])).json()
    assert again["new"] is False and again["acknowledged"]["by"] == "api:operator-bot"
    assert [e["status"] for e in store.audit_log()] == [200, 200, 404, 403]


def test_slo_status_over_the_telemetry_the_agents_read(api, tmp_path: Path) -> None:
    world, engine, _, _, tokens, client = api
    viewer = auth_header(tokens["viewer"])
    engine.settings = engine.settings.model_copy(update={"slo_file": tmp_path / "none.yaml"})
    assert client.get("/api/v1/slo", headers=viewer).status_code == 404
    slo_file = tmp_path / "slos.yaml"
    slo_file.write_text(
        "slos:\n"
        "  - {name: checkout-availability, service: checkout, sli: availability, target: 0.99, window: 3d}\n"
        "  - {name: checkout-latency, service: checkout, sli: latency, threshold_ms: 300, target: 0.99, window: 3d}\n"
    )
    engine.settings = engine.settings.model_copy(update={"slo_file": slo_file})
    healthy = client.get("/api/v1/slo", headers=viewer).json()
    assert "slos" in healthy, healthy
    assert {s["name"]: s["budget_remaining"] for s in healthy["slos"]} == {
        "checkout-availability": 1.0,
        "checkout-latency": 1.0,
    }
    # Errors on checkout for a while spend the availability budget and raise the short windows' burn rates.
    world.inject(Scenario("error_spike", "checkout"), engine.toolbox.gitops)
    world.advance(120)
    burning = {s["name"]: s for s in client.get("/api/v1/slo", headers=viewer).json()["slos"]}
    availability = burning["checkout-availability"]
    assert availability["budget_remaining"] < 1.0
    assert max(b["burn_rate"] or 0 for b in availability["burn_rates"]) > 1.0
    assert client.get("/api/v1/slo", params={"service": "nope"}, headers=viewer).status_code == 422
