"""Retries, backoff and circuit breakers around flaky dependencies, against real sockets on loopback.

Clocks are stepped, never slept on: every `Resilience` here gets a `ManualClock` whose `sleep` only moves time.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from sregraph.config import load_settings
from sregraph.observability import Metrics
from tests.fakes.openai_server import FakeOpenAIServer, reply
from tests.localapp import engine_for, run_incident, running_app, write_config
from tests.support import ManualClock
from tools.base import NotFound, ToolError, TransientError
from tools.breaker import CircuitBreaker, CircuitOpenError
from tools.docker_runtime import ContainerSpec, DockerRuntime, connect
from tools.prometheus import PrometheusTelemetry
from tools.resilience import Resilience, never_sent

VECTOR = {
    "status": "success",
    "data": {"resultType": "vector", "result": [{"metric": {"service": "payments"}, "value": [12, "3"]}]},
}


def dead_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class ScriptedHTTP:
    """A threading HTTP server on 127.0.0.1 answering each request with `answer(method, path)`; counts them."""

    def __init__(self, answer: Callable[[str, str], tuple[int, Any]]) -> None:
        self.answer = answer
        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                outer.requests.append((self.command, self.path))
                status, body = outer.answer(self.command, self.path)
                data = (body if isinstance(body, str) else json.dumps(body)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _serve  # noqa: N815 - http.server dispatches on these names

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.thread.join(timeout=5)
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[str, str], tuple[int, Any]]], ScriptedHTTP]]:
    servers: list[ScriptedHTTP] = []

    def start(answer: Callable[[str, str], tuple[int, Any]]) -> ScriptedHTTP:
        servers.append(ScriptedHTTP(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


class CountingTransport(httpx.HTTPTransport):
    """A real HTTP transport that counts the requests handed to it (each one opens or reuses a connection)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        return super().handle_request(request)


def prometheus(
    url: str, clock: ManualClock, retries: int = 2, transport: httpx.BaseTransport | None = None
) -> PrometheusTelemetry:
    return PrometheusTelemetry(url, timeout_s=2, retries=retries, clock=clock, transport=transport)


# --------------------------------------------------------------------------- the policy itself


def test_transient_failures_are_retried_with_growing_jittered_backoff() -> None:
    clock = ManualClock()
    policy = Resilience("dep", attempts=4, backoff_s=1.0, max_backoff_s=3.0, jitter=0.5, clock=clock)
    calls = []

    def flaky() -> str:
        calls.append(clock.now())
        if len(calls) < 4:
            raise TransientError("503")
        return "ok"

    assert policy.call(flaky) == "ok"
    assert len(calls) == 4 and policy.retries == 3
    # 1, 2, then capped at 3; each shortened by up to half at random.
    for slept, full in zip(clock.slept, [1.0, 2.0, 3.0], strict=True):
        assert full / 2 < slept <= full
    assert policy.state == "closed"


def test_total_retry_time_is_bounded() -> None:
    clock = ManualClock()
    policy = Resilience(
        "dep", attempts=10, backoff_s=1.0, max_backoff_s=60, jitter=0, max_elapsed_s=5, clock=clock
    )
    calls = 0

    def down() -> None:
        nonlocal calls
        calls += 1
        clock.t += 1.0  # each attempt takes a second (a timeout)
        raise TransientError("timed out")

    with pytest.raises(TransientError):
        policy.call(down)
    # attempt (1 s), wait 1, attempt, wait 2: 5 s, still within; after the third attempt (6 s) a wait of 4 s
    # would start the next one 10 s in, past the bound, so it stops there.
    assert calls == 3 and clock.slept == [1.0, 2.0]


@pytest.mark.parametrize(
    "error", [ToolError("HTTP 400 bad query"), NotFound("no such service"), ValueError("bug")]
)
def test_other_errors_are_not_retried_and_do_not_trip_the_breaker(error: Exception) -> None:
    policy = Resilience("dep", breaker=CircuitBreaker(failure_threshold=1), clock=ManualClock())
    calls = 0

    def fails() -> None:
        nonlocal calls
        calls += 1
        raise error

    for _ in range(3):
        with pytest.raises(type(error)):
            policy.call(fails)
    assert calls == 3 and policy.state == "closed" and policy.breaker.failures == 0


def test_open_circuit_fails_fast_then_lets_one_trial_through() -> None:
    clock = ManualClock()
    policy = Resilience(
        "dep", attempts=2, backoff_s=0, breaker=CircuitBreaker(2, 10.0, 2.0, 60.0, clock), clock=clock
    )
    calls = 0

    def down() -> None:
        nonlocal calls
        calls += 1
        raise TransientError("connection refused")

    for _ in range(2):
        with pytest.raises(TransientError):
            policy.call(down)
    assert calls == 4 and policy.state == "open"
    with pytest.raises(CircuitOpenError, match="dep: circuit open after 2 failed calls") as info:
        policy.call(down)
    assert isinstance(info.value, ToolError) and calls == 4
    clock.t += 10
    assert policy.state == "half_open"
    assert policy.call(lambda: "back") == "back"
    assert policy.state == "closed"


def test_writes_are_resent_only_when_the_request_never_left(serve: Callable[..., ScriptedHTTP]) -> None:
    policy = Resilience("dep", attempts=3, backoff_s=0, clock=ManualClock())

    def post(url: str) -> int:
        try:
            return httpx.post(url, timeout=2).status_code
        except httpx.TransportError as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc

    refused = f"http://127.0.0.1:{dead_port()}/write"
    sent: list[int] = []

    def post_refused() -> int:
        sent.append(1)
        return post(refused)

    with pytest.raises(TransientError, match="ConnectError"):
        policy.call(post_refused, idempotent=False)
    assert len(sent) == 3  # refused at connect: the write never left, resending is safe

    server = serve(lambda method, path: (503, {"error": "busy"}))

    def post_503() -> int:
        status = post(server.url + "/write")
        if status >= 500:
            raise TransientError(f"HTTP {status}")
        return status

    with pytest.raises(TransientError, match="HTTP 503"):
        policy.call(post_503, idempotent=False)
    assert server.requests == [("POST", "/write")]  # it reached the server: never resent
    with pytest.raises(TransientError):
        policy.call(post_503)  # a read of the same is retried
    assert len(server.requests) == 4


def test_never_sent_reads_the_real_exception_chains() -> None:
    port = dead_port()
    with pytest.raises(httpx.ConnectError) as httpx_error:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
    assert never_sent(httpx_error.value)
    client = connect(f"tcp://127.0.0.1:{port}", timeout=2)
    try:
        with pytest.raises(Exception) as docker_error:
            client.containers.list()
    finally:
        client.close()
    assert never_sent(docker_error.value)
    assert not never_sent(httpx.ReadTimeout("slow"))
    assert not never_sent(TransientError("HTTP 503"))


def test_nested_calls_belong_to_the_outer_call() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(1, 10.0, clock=clock)
    policy = Resilience("dep", attempts=1, breaker=breaker, clock=clock)
    with pytest.raises(TransientError):
        policy.call(lambda: (_ for _ in ()).throw(TransientError("down")))
    clock.t += 10  # half-open: exactly one trial call may go out
    assert (
        policy.call(lambda: policy.call(lambda: "inner ran inside the trial")) == "inner ran inside the trial"
    )
    assert policy.state == "closed"


def test_metrics_hear_retries_and_circuit_states() -> None:
    metrics = Metrics()
    clock = ManualClock()
    policy = Resilience(
        "flaky-dep", attempts=2, backoff_s=0, breaker=CircuitBreaker(1, 10.0, clock=clock), clock=clock
    )
    with pytest.raises(TransientError):
        policy.call(lambda: (_ for _ in ()).throw(TransientError("down")))
    text = metrics.render().decode()
    assert 'sregraph_dependency_retries_total{dependency="flaky-dep"} 1.0' in text
    assert 'sregraph_circuit_state{dependency="flaky-dep"} 2.0' in text
    clock.t += 10
    policy.call(lambda: None)
    assert 'sregraph_circuit_state{dependency="flaky-dep"} 0.0' in metrics.render().decode()


# --------------------------------------------------------------------------- Prometheus over real HTTP


def test_prometheus_query_succeeds_after_503s(serve: Callable[..., ScriptedHTTP]) -> None:
    answers = [
        (503, "Service Unavailable"),
        (503, {"status": "error", "errorType": "unavailable", "error": "TSDB not ready"}),
    ]
    server = serve(lambda method, path: answers.pop(0) if answers else (200, VECTOR))
    clock = ManualClock()
    with prometheus(server.url, clock, retries=2) as prom:
        series = prom.query("up")
    assert series[0].points == [(12.0, 3.0)]
    assert len(server.requests) == 3
    assert clock.slept == [0.2, 0.4]
    assert prom.resilience.state == "closed"


def test_prometheus_dead_port_opens_the_breaker_and_then_fails_fast() -> None:
    clock = ManualClock()
    transport = CountingTransport()
    with prometheus(f"http://127.0.0.1:{dead_port()}", clock, retries=1, transport=transport) as prom:
        for _ in range(3):  # the default breaker opens after 3 failed calls
            with pytest.raises(TransientError, match="ConnectError"):
                prom.query_range("request_rate", {"service": "payments"}, 0, 60)
        assert transport.sent == 6 and prom.resilience.state == "open"
        for _ in range(5):
            with pytest.raises(CircuitOpenError, match="prometheus: circuit open"):
                prom.query("up")
        assert transport.sent == 6  # refused without a connection attempt
        clock.t += 5  # the reset timeout: one trial call (with its retry) goes out, fails, reopens for longer
        with pytest.raises(TransientError):
            prom.query("up")
        assert transport.sent == 8 and prom.resilience.state == "open"
        assert 9 < prom.resilience.breaker.retry_in() <= 10


def test_prometheus_4xx_is_not_retried_and_does_not_trip(serve: Callable[..., ScriptedHTTP]) -> None:
    body = {"status": "error", "errorType": "bad_data", "error": "parse error: unexpected end of input"}
    server = serve(lambda method, path: (400, body))
    with prometheus(server.url, ManualClock(), retries=3) as prom:
        for _ in range(5):
            with pytest.raises(ToolError, match="bad_data") as info:
                prom.query("rate(")
            assert not isinstance(info.value, (TransientError, CircuitOpenError))
    assert len(server.requests) == 5
    assert prom.resilience.state == "closed"


# --------------------------------------------------------------------------- the container engine's API


def test_docker_reads_are_retried_and_writes_are_not_resent_after_reaching_the_engine(
    serve: Callable[..., ScriptedHTTP],
) -> None:
    """A scripted Docker Engine API: lists fail twice with 503, then creating the container fails with 503."""
    lists = [(503, {"message": "engine busy"}), (503, {"message": "engine busy"})]

    def engine(method: str, path: str) -> tuple[int, Any]:
        if method == "GET" and path.startswith("/v1.41/containers/json"):
            return lists.pop(0) if lists else (200, [])
        if method == "GET" and path.endswith("/json"):
            return 404, {"message": "no such container"}
        return 503, {"message": "engine overloaded"}

    server = serve(engine)
    spec = ContainerSpec(name="api", image="localhost/none:1", command=["true"])
    clock = ManualClock()
    runtime = DockerRuntime(
        connect(server.url.replace("http://", "tcp://"), timeout=2),
        {"api": spec},
        "resil",
        resilience=Resilience("docker", attempts=3, backoff_s=0.1, clock=clock),
    )
    try:
        with pytest.raises(TransientError, match="create container resil-api-0: the engine answered 503"):
            runtime.restart("api")
    finally:
        runtime.close()
    methods = [m for m, _ in server.requests]
    assert methods.count("GET") == 4  # the list: 503, 503, 200; then the name check: 404 (not retried)
    creates = [p for m, p in server.requests if m == "POST"]
    assert len(creates) == 1 and creates[0].startswith("/v1.41/containers/create")
    assert len(clock.slept) == 2


# --------------------------------------------------------------------------- the LLM through the real graph


def test_dead_model_endpoint_falls_back_says_so_and_later_agents_skip_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every model call answers 500: the incident still resolves, deterministically, and says why on the issue.

    Two failed calls (each tried twice) open the circuit; the engineer and the librarian then skip the model.
    """
    with FakeOpenAIServer([reply(content="model server down", status=500)] * 40) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        llm = {
            "provider": "openai",
            "base_url": server.base_url,
            "timeout_s": 10,
            "resilience": {"attempts": 2, "backoff_s": 0, "failure_threshold": 2, "reset_timeout_s": 600},
        }
        settings = load_settings(write_config(tmp_path, brain="llm", llm=llm), environ={})
        with running_app(settings) as app:
            engine = engine_for(settings, app)
            app.inject("crash", "payments")
            state = run_incident(engine)
            comments = [c.body for c in engine.toolbox.incidents.get(state["issue_id"]).comments]
            engine.close()
        requests = len(server.requests)
    assert state["status"] == "resolved", state.get("escalation")
    assert state["diagnosis"].method == "deterministic"
    everything = "\n".join(comments)
    assert "fell back to the deterministic method" in everything
    assert "deterministic remedy used" in everything and "circuit open" in everything
    assert "deterministic librarian" in state["postmortem"].markdown
    # The observer's title and the analyst's first call, each tried twice; nothing after the circuit opened.
    assert requests == 4
