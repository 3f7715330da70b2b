"""The HTTP API (`sregraph serve`, or `sregraph worker --api-port`): incidents, approvals and memory, for people
and tools beyond the CLI. OpenAPI docs at `/docs`.

It runs inside the worker's process and acts through the worker: an approval is answered on the worker's pool
like a `/approve` comment, so a run never happens twice for one incident. Every call but `/healthz` needs a
bearer token (`sregraph token create NAME --role ROLE`); every mutating call, allowed or not, is written to
the audit log. Answers pass through the redactor, as everything sregraph lets out does.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeGuard

import swagger_ui_bundle
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from sregraph import ingest
from sregraph.alerts import RateLimiter
from sregraph.api_auth import ApiStore, Principal, Role
from sregraph.events import EventLog
from sregraph.worker import Worker
from tools.base import NotFound, SregraphError
from tools.changes import marker_store
from tools.domain import ApprovalDecision
from tools.redact import redact_data
from tools.slo.evaluation import combine_gate, evaluate
from tools.slo.loading import load_slo_file

if TYPE_CHECKING:
    from tools.github.webhooks import WebhookCommands

log = logging.getLogger("sregraph.server")

API = "/api/v1"
MAX_BODY = 64 * 1024
"""Largest request body taken (the Alertmanager receiver has its own, smaller, limits on what is inside)."""
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
GITHUB_WEBHOOK_SECRET_ENV = "SREGRAPH_GITHUB_WEBHOOK_SECRET"
"""The secret GitHub signs webhook deliveries with (environment only, like every secret)."""
UI = Path(__file__).parent / "ui"
"""The dashboard: hand-written HTML, CSS and JavaScript, no build step, nothing from a CDN."""
POLL_S = 0.1
"""How often an event stream looks for new events (the feed's added latency, at most)."""
KEEPALIVE_S = 15.0
"""A comment line on an idle event stream this often, so proxies and the browser keep it open."""


class DecisionBody(BaseModel):
    """An approval or a rejection."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=2000)


def _summary(run: dict[str, Any]) -> dict[str, Any]:
    trigger = run["trigger"] if isinstance(run["trigger"], dict) else {}
    return {
        "incident_id": run["incident_id"],
        "status": run["status"],
        "created_at": run["created_at"],
        "updated_at": run["updated_at"],
        "service": trigger.get("service"),
        "signal": trigger.get("signal"),
        "summary": trigger.get("summary", ""),
        "source": trigger.get("source"),
    }


def _dump(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def incident_detail(
    incident_id: str,
    state: dict[str, Any],
    acknowledged: dict[str, Any] | None = None,
    nearby: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """What the API says of one incident (its graph state, in the JSON the API documents); `nearby` are the
    ingested deploy markers and external events around it (`nearby_changes`)."""
    diagnosis = state.get("diagnosis")
    postmortem = state.get("postmortem")
    return {
        "incident_id": incident_id,
        # As the incident list (the run registry) says it: a run paused at the gate awaits approval.
        "status": "awaiting_approval" if state.get("waiting") else state.get("status"),
        "waiting_for_approval": bool(state.get("waiting")),
        "issue_id": state.get("issue_id"),
        "trigger": _dump(state.get("trigger")),
        "observation": _dump(state.get("observation")),
        "diagnosis": _dump(diagnosis),
        "plan": _dump(state.get("plan")),
        "actions": [_dump(a) for a in state.get("actions", [])],
        "verification": _dump(state.get("verification")),
        "escalation": state.get("escalation"),
        "postmortem": _dump(postmortem),
        "acknowledged": acknowledged,
        "llm_fallbacks": state.get("llm_fallbacks", []),
        "tokens": state.get("tokens", 0),
        "timeline": [_dump(t) for t in state.get("timeline", [])],
        "nearby": nearby or [],
    }


NEARBY_LIMIT = 50
"""Deploy markers and external events shown with one incident, the newest first."""


def nearby_changes(
    toolbox: Any, state: dict[str, Any], lookback_s: float, now: float
) -> list[dict[str, Any]]:
    """The ingested deploy markers and external events that may explain an incident: of the services its fault
    shows on (the trigger's and the top hypothesis's, with what they call and what calls them; every service
    when neither is known), from `lookback_s` before its first step to its last (now, while it runs)."""
    markers = marker_store(toolbox.telemetry)
    timeline = state.get("timeline", [])
    if markers is None or not timeline:
        return []
    start = min(t.at for t in timeline) - lookback_s
    end = (
        max(t.at for t in timeline)
        if state.get("status") in ("resolved", "escalated", "healthy") and not state.get("waiting")
        else now
    )
    diagnosis, trigger = state.get("diagnosis"), state.get("trigger")
    named = {
        getattr(trigger, "service", None),
        diagnosis.top.service if diagnosis is not None and diagnosis.top else None,
    } - {None, ""}
    services: set[str] | None = set().union(*(toolbox.connected(s) for s in named)) if named else None
    deploys: list[dict[str, Any]] = [
        {
            "type": "deploy",
            "at": d.ts,
            "service": d.service,
            "kind": "deploy",
            "title": d.as_change().message,
            "id": d.id,
            "author": d.author,
        }
        for service in (sorted(services) if services is not None else [None])
        for d in markers.deploys(start, end, service=service, limit=NEARBY_LIMIT)
    ]
    events: list[dict[str, Any]] = [
        {
            "type": "event",
            "at": e.ts,
            "service": e.service,
            "kind": e.kind,
            "title": e.title,
            "attrs": e.attrs,
        }
        for e in markers.events(start, end, services=services, limit=NEARBY_LIMIT)
    ]
    return sorted([*deploys, *events], key=lambda x: -x["at"])[:NEARBY_LIMIT]


def _takes_webhooks(surface: object) -> TypeGuard[WebhookCommands]:
    """Whether `surface` honours commands from GitHub webhooks (a GitHub surface, or a proxy around one)."""
    return hasattr(surface, "commands_from_webhook")


def require(role: Role) -> Callable[[Request], Principal]:
    """A dependency: the caller's principal, which must hold `role` (401 without a live token, 403 below the role)."""

    def check(request: Request) -> Principal:
        store: ApiStore = request.app.state.store
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        principal = store.verify(token.strip()) if scheme.lower() == "bearer" else None
        if principal is None:
            raise HTTPException(
                401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
            )
        request.state.principal = principal
        if not principal.may(role):
            raise HTTPException(
                403, f"this call needs the {role} role; token {principal.name!r} is {principal.role}"
            )
        return principal

    return check


Ingest = Annotated[Principal, Depends(require("ingest"))]
Viewer = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]
Admin = Annotated[Principal, Depends(require("admin"))]


INGEST_RATE_PER_S = 20.0
INGEST_BURST = 40
"""Ingestion requests per token: a token bucket (each request carries up to `ingest.MAX_RECORDS` records)."""


def create_app(
    worker: Worker,
    store: ApiStore,
    events: EventLog | None = None,
    ingest_limit: tuple[float, int] = (INGEST_RATE_PER_S, INGEST_BURST),
) -> FastAPI:
    """The API over one worker (its engine, its pool) and one token store; `events` (a new log by default)
    receives the engine's progress, chained after any progress hook the engine already had; `ingest_limit` is
    the ingestion token bucket per token (requests/s, burst)."""
    engine = worker.engine
    feed = events or EventLog()
    earlier = engine.progress

    def progress(incident_id: str, node: str, update: dict[str, Any]) -> None:
        if earlier is not None:
            earlier(incident_id, node, update)
        feed.publish(incident_id, node, update)

    engine.progress = progress

    @functools.cache
    def github_receiver() -> Any:
        secret = os.environ.get(GITHUB_WEBHOOK_SECRET_ENV, "")
        surface = engine.toolbox.incidents
        if not secret or not _takes_webhooks(surface):
            return None
        # PyGithub loads only when GitHub webhooks are configured.
        from tools.github.webhooks import WebhookReceiver

        return WebhookReceiver(surface, secret)

    app = FastAPI(
        title="sregraph",
        version="1",
        description="Incidents, approvals and memory of an sregraph worker. Bearer tokens: `sregraph token create`.",
        docs_url=None,  # served below from the swagger-ui-bundle package: FastAPI's own page loads it from a CDN
        redoc_url=None,
    )
    app.state.store = store
    app.state.closing = threading.Event()
    """Set when the server stops: open event streams end, so the shutdown need not wait them out."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Where and why, never the input itself: it may be huge, hold a secret, or not be JSON at all (NaN).
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()[:20]
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.middleware("http")
    async def limit_and_audit(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # The body limit holds for a body sent without Content-Length too (chunked): it is read before routing.
        limit = ingest.MAX_BODY if request.url.path.startswith(f"{API}/ingest/") else MAX_BODY
        length = request.headers.get("content-length")
        too_big = length is not None and (not length.isdigit() or int(length) > limit)
        if not too_big and request.method in MUTATING:
            too_big = len(await request.body()) > limit
        if too_big:
            response: Response = JSONResponse({"detail": f"request body over {limit} bytes"}, status_code=413)
        else:
            response = await call_next(request)
        # The dashboard runs only its own scripts and may not be framed (an Approve button in someone else's page).
        # The API docs page starts Swagger UI with an inline script of FastAPI's.
        scripts = "script-src 'self' 'unsafe-inline'; " if request.url.path == "/docs" else ""
        response.headers["Content-Security-Policy"] = (
            f"default-src 'self'; {scripts}frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        if request.method in MUTATING:
            principal = getattr(request.state, "principal", None)
            store.audit(
                principal.name if principal else "anonymous",
                request.method,
                request.url.path,
                response.status_code,
                getattr(request.state, "audit", None),
            )
        return response

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        """Liveness of the worker loop (no token needed)."""
        healthy, detail = worker.health.report()
        if not healthy:
            raise HTTPException(503, detail)
        return detail

    @app.get(f"{API}/whoami", tags=["auth"])
    def whoami(principal: Viewer) -> dict[str, str]:
        """The caller's token name and role."""
        return {"name": principal.name, "role": principal.role}

    @app.get(f"{API}/incidents", tags=["incidents"])
    def incidents(
        _: Viewer,
        status: Annotated[str | None, Query(max_length=40)] = None,
        service: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        """Incidents, newest first, filtered by status and service."""
        runs = [_summary(r) for r in engine.registry.list()]
        runs = [
            r
            for r in runs
            if (status is None or r["status"] == status) and (service is None or r["service"] == service)
        ]
        return redact_data(
            {"total": len(runs), "limit": limit, "offset": offset, "items": runs[offset : offset + limit]}
        )

    def _state(incident_id: str) -> dict[str, Any]:
        try:
            return engine.state(incident_id)
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from exc

    @app.get(f"{API}/incidents/{{incident_id}}", tags=["incidents"])
    def incident(incident_id: str, _: Viewer) -> dict[str, Any]:
        """One incident: trigger, observation, diagnosis with its evidence, plan, actions, verification,
        post-mortem, timeline, and the deploy markers and external events around it (`nearby`)."""
        state = _state(incident_id)
        try:
            nearby = nearby_changes(
                engine.toolbox, state, engine.settings.analyst.change_lookback_s, engine.toolbox.clock.now()
            )
        except SregraphError as exc:
            log.warning("deploy markers and events of %s unreadable: %s", incident_id, exc)
            nearby = []
        return redact_data(
            incident_detail(incident_id, state, engine.registry.acknowledgement(incident_id), nearby)
        )

    @app.get(f"{API}/incidents/{{incident_id}}/timeline", tags=["incidents"])
    def timeline(incident_id: str, _: Viewer) -> list[dict[str, Any]]:
        """The incident's dated events."""
        return redact_data([_dump(t) for t in _state(incident_id).get("timeline", [])])

    def _decide(
        incident_id: str, approved: bool, body: DecisionBody, principal: Principal, request: Request
    ) -> dict[str, Any]:
        request.state.audit = {"incident_id": incident_id, "approved": approved, "reason": body.reason[:200]}
        if not _state(incident_id).get("waiting"):
            raise HTTPException(409, f"incident {incident_id} is not waiting for an approval")
        decision = ApprovalDecision(approved=approved, by=f"api:{principal.name}", reason=body.reason)
        if not worker.decide(incident_id, decision):
            raise HTTPException(409, f"incident {incident_id} already has a run in progress")
        return {"incident_id": incident_id, "accepted": True, "approved": approved}

    @app.post(f"{API}/incidents/{{incident_id}}/approve", status_code=202, tags=["incidents"])
    def approve(
        incident_id: str, body: DecisionBody, principal: Operator, request: Request
    ) -> dict[str, Any]:
        """Approve the plan of an incident waiting at the approval gate; the worker resumes it and acts."""
        return _decide(incident_id, True, body, principal, request)

    @app.post(f"{API}/incidents/{{incident_id}}/reject", status_code=202, tags=["incidents"])
    def reject(incident_id: str, body: DecisionBody, principal: Operator, request: Request) -> dict[str, Any]:
        """Reject the plan of an incident waiting at the approval gate; the incident is escalated."""
        return _decide(incident_id, False, body, principal, request)

    @app.post(f"{API}/incidents/{{incident_id}}/retry", status_code=202, tags=["incidents"])
    def retry(incident_id: str, principal: Operator, request: Request) -> dict[str, Any]:
        """Investigate an escalated incident again, on its issue (like `/retry` on the issue): a new incident."""
        request.state.audit = {"incident_id": incident_id}
        _state(incident_id)
        new_id = worker.retry(incident_id, f"api:{principal.name}")
        if new_id is None:
            raise HTTPException(409, f"incident {incident_id} is not escalated")
        return {"incident_id": incident_id, "retry": new_id}

    @app.post(f"{API}/github/webhook", tags=["incidents"])
    async def github_webhook(request: Request) -> JSONResponse:
        """GitHub's issue_comment deliveries: slash commands, honoured as on a poll (authenticated by the
        webhook's HMAC signature, not a token; needs surface github and SREGRAPH_GITHUB_WEBHOOK_SECRET)."""
        receiver = github_receiver()
        if receiver is None:
            raise HTTPException(
                404, "no GitHub webhook here: needs surface github and SREGRAPH_GITHUB_WEBHOOK_SECRET"
            )
        result = receiver.handle(dict(request.headers), await request.body())
        request.state.audit = {"github": result.reason[:200]}
        done = await asyncio.to_thread(worker.apply_commands, result.commands) if result.commands else []
        return JSONResponse({"detail": result.reason, "done": done}, status_code=result.status)

    @app.get("/metrics", tags=["health"])
    def metrics(_: Viewer) -> Response:
        """The worker's Prometheus metrics (scrape with the token: `authorization: {credentials: ...}`)."""
        return Response(generate_latest(engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post(f"{API}/incidents/{{incident_id}}/acknowledge", tags=["incidents"])
    def acknowledge(incident_id: str, principal: Operator, request: Request) -> dict[str, Any]:
        """Take the incident: its escalation tiers stop paging. Acknowledging twice keeps the first."""
        request.state.audit = {"incident_id": incident_id}
        if not engine.registry.exists(incident_id):
            raise HTTPException(404, f"no incident {incident_id}")
        first = engine.registry.acknowledge(incident_id, f"api:{principal.name}")
        return {
            "incident_id": incident_id,
            "acknowledged": engine.registry.acknowledgement(incident_id),
            "new": first,
        }

    @app.post(f"{API}/alerts", tags=["alerts"])
    async def alerts(request: Request, _: Operator) -> JSONResponse:
        """An Alertmanager webhook (the same intake as the worker's alert receiver: grouping, dedup, limits)."""
        if worker.receiver is None:
            raise HTTPException(404, "alerts are not enabled on this worker (alerts.enabled)")
        status, answer = worker.receiver.handle(await request.body())
        return JSONResponse(answer, status_code=status)

    limiter = RateLimiter(*ingest_limit)

    def _ingest(batch: ingest.Batch, principal: Principal, request: Request) -> dict[str, Any]:
        request.state.audit = {"records": len(batch)}
        if not limiter.allow(principal.name):
            raise HTTPException(
                429,
                f"over {ingest_limit[0]:g} ingestion requests/s for token {principal.name!r}; batch more",
                headers={"Retry-After": "1"},
            )
        try:
            stored = ingest.store(engine.toolbox.telemetry, batch)
        except LookupError as exc:
            raise HTTPException(409, str(exc)) from exc
        except SregraphError as exc:
            raise HTTPException(503, f"the telemetry store refused the batch: {exc}") from exc
        return {"stored": stored}

    @app.post(f"{API}/ingest/logs", tags=["ingest"])
    def ingest_logs(batch: ingest.LogBatch, principal: Ingest, request: Request) -> dict[str, Any]:
        """Log records into the telemetry store the agents read (all or none of the batch)."""
        return _ingest(batch, principal, request)

    @app.post(f"{API}/ingest/metrics", tags=["ingest"])
    def ingest_metrics(batch: ingest.MetricBatch, principal: Ingest, request: Request) -> dict[str, Any]:
        """Metric points (each with a `service` label) into the telemetry store (all or none of the batch)."""
        return _ingest(batch, principal, request)

    @app.post(f"{API}/ingest/spans", tags=["ingest"])
    def ingest_spans(batch: ingest.SpanBatch, principal: Ingest, request: Request) -> dict[str, Any]:
        """Trace spans into the telemetry store (all or none of the batch)."""
        return _ingest(batch, principal, request)

    @app.post(f"{API}/ingest/deploys", tags=["ingest"])
    def ingest_deploys(batch: ingest.DeployBatch, principal: Ingest, request: Request) -> dict[str, Any]:
        """Deploy markers: the analyst suspects them like deploy commits of the GitOps repo (all or none of the
        batch; a marker sent twice is stored once)."""
        return _ingest(batch, principal, request)

    @app.post(f"{API}/ingest/events", tags=["ingest"])
    def ingest_events(batch: ingest.EventBatch, principal: Ingest, request: Request) -> dict[str, Any]:
        """External events (a feature flag, a config push, a scaling): shown with the incidents around them
        (all or none of the batch)."""
        return _ingest(batch, principal, request)

    def _markers() -> Any:
        markers = marker_store(engine.toolbox.telemetry)
        if markers is None:
            raise HTTPException(
                404,
                f"this worker's telemetry backend ({type(engine.toolbox.telemetry).__name__}) keeps no "
                "deploy markers or events",
            )
        return markers

    def _span(since: float | None, until: float | None) -> tuple[float, float]:
        now = time.time()  # the clock the ingestion checks stamps against
        return (now - 86400.0 if since is None else since), (
            now + ingest.MAX_FUTURE_S if until is None else until
        )

    @app.get(f"{API}/ingest/deploys", tags=["ingest"])
    def deploys(
        _: Viewer,
        service: Annotated[str | None, Query(max_length=200)] = None,
        since: Annotated[float | None, Query(description="unix time; default a day ago")] = None,
        until: Annotated[float | None, Query(description="unix time; default now")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        """Deploy markers, newest first."""
        start, end = _span(since, until)
        try:
            found = _markers().deploys(start, end, service=service, limit=limit)
        except SregraphError as exc:
            raise HTTPException(503, f"the telemetry store did not answer: {exc}") from exc
        return redact_data([d.model_dump(mode="json") for d in found])

    @app.get(f"{API}/ingest/events", tags=["ingest"])
    def external_events(
        _: Viewer,
        service: Annotated[
            str | None, Query(max_length=200, description="this service's events and those of every service")
        ] = None,
        kind: Annotated[str | None, Query(max_length=200)] = None,
        since: Annotated[float | None, Query(description="unix time; default a day ago")] = None,
        until: Annotated[float | None, Query(description="unix time; default now")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        """External events, newest first."""
        start, end = _span(since, until)
        try:
            found = _markers().events(
                start, end, services=None if service is None else [service], kind=kind, limit=limit
            )
        except SregraphError as exc:
            raise HTTPException(503, f"the telemetry store did not answer: {exc}") from exc
        return redact_data([e.model_dump(mode="json") for e in found])

    @app.get(f"{API}/slo", tags=["slo"])
    def slo_status(_: Viewer, service: Annotated[str | None, Query(max_length=200)] = None) -> dict[str, Any]:
        """Every SLO's error budget, burn rates by window, alert pairs, forecast and release-gate state, from the
        telemetry the agents read (`slo_file`, default ./slos.yaml)."""
        path = engine.settings.slo_file or Path("slos.yaml")
        if not path.exists():
            raise HTTPException(404, f"no SLO file at {path} (set slo_file)")
        try:
            slos = load_slo_file(path)
            statuses = evaluate(engine.toolbox.telemetry, slos, engine.toolbox.clock.now(), service=service)
        except SregraphError as exc:
            raise HTTPException(422, str(exc)) from exc
        services = sorted({s.service for s in statuses})
        gates = {name: combine_gate(name, [x for x in statuses if x.service == name]) for name in services}
        return redact_data(
            {
                "slos": [s.model_dump(mode="json") for s in statuses],
                "gates": {k: g.model_dump(mode="json", exclude={"slos"}) for k, g in gates.items()},
            }
        )

    @app.get(f"{API}/memory/search", tags=["memory"])
    def memory_search(
        _: Viewer,
        q: Annotated[str, Query(min_length=1, max_length=2000)],
        k: Annotated[int, Query(ge=1, le=20)] = 3,
        service: Annotated[str | None, Query(max_length=200)] = None,
    ) -> list[dict[str, Any]]:
        """Past incidents whose post-mortems resemble `q`, most similar first."""
        memory = engine.toolbox.memory
        if memory is None:
            raise HTTPException(404, "this worker runs without long-term memory")
        try:
            found = memory.search(q, k=k, service=service)
        except SregraphError as exc:
            raise HTTPException(422, str(exc)) from exc
        return redact_data([s.model_dump(mode="json") for s in found])

    @app.get(f"{API}/events", tags=["incidents"])
    async def event_stream(request: Request, _: Viewer) -> StreamingResponse:
        """Server-sent events: one `step` event per graph step of any incident (id = sequence number). A client
        that reconnects with `Last-Event-ID` gets what it missed, as far as the in-memory log still holds it."""
        last = request.headers.get("last-event-id", "")
        seq = int(last) if last.isdigit() else feed.last

        async def stream() -> AsyncIterator[str]:
            nonlocal seq
            yield ": connected\n\n"
            idle = 0.0
            while not app.state.closing.is_set() and not await request.is_disconnected():
                # Polled, not a blocking wait: a thread per open stream would starve the server's pool.
                if feed.last <= seq:
                    await asyncio.sleep(POLL_S)
                    idle += POLL_S
                    if idle >= KEEPALIVE_S:
                        idle = 0.0
                        yield ": keepalive\n\n"
                    continue
                idle = 0.0
                for event in feed.after(seq):
                    seq = event.seq
                    data = json.dumps(redact_data(event.as_dict()))
                    yield f"id: {event.seq}\nevent: step\ndata: {data}\n\n"

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    app.mount("/ui", StaticFiles(directory=UI, html=True), name="ui")
    app.mount("/swagger", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="sregraph API",
            swagger_js_url="/swagger/swagger-ui-bundle.js",
            swagger_css_url="/swagger/swagger-ui.css",
            swagger_favicon_url="/swagger/favicon-32x32.png",
        )

    @app.get(f"{API}/audit", tags=["auth"])
    def audit(
        _: Admin,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> list[dict[str, Any]]:
        """The audit log of mutating calls, newest first."""
        return store.audit_log(limit, offset)

    return app


class ApiServer:
    """The API served by uvicorn on a background thread of the worker's process."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        # The socket is bound here, so port 0 gives a known free port before the thread starts.
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="api", daemon=True
        )

    @property
    def url(self) -> str:
        """Base URL of the API."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> ApiServer:
        """Serve on the background thread; returns once the server accepts connections."""
        self.thread.start()
        stopped = threading.Event()
        while not self.server.started and self.thread.is_alive() and not stopped.wait(0.02):
            timeout -= 0.02
            if timeout <= 0:
                raise SregraphError(f"the API server did not start on {self.url}")
        if not self.server.started:
            raise SregraphError(f"the API server failed to start on {self.url}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (finishing the requests in flight; event streams end at once)."""
        closing = getattr(self.app.state, "closing", None)
        if closing is not None:
            closing.set()
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()
