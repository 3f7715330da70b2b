"""The embedded local environment with real processes on loopback: telemetry, supervisor, app, chaos."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from sregraph.localenv.app import LocalApp
from sregraph.localenv.layout import BAD_VERSION, STABLE_VERSION
from tools.base import ConfigError, LogRecord, NotFound, Span, Telemetry
from tools.health import HttpHealthChecker
from tools.runtime import ProcessSpec, ProcessSupervisor
from tools.telemetry import LocalTelemetryStore

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 8.0, every: float = 0.1) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def child_env() -> dict[str, str]:
    """Environment for helper processes that import the project."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}


# --------------------------------------------------------------------------- telemetry store


def test_query_range_matches_label_subsets_and_time_range(tmp_path: Path) -> None:
    store = LocalTelemetryStore(tmp_path / "t.db")
    assert isinstance(store, Telemetry)
    store.write_metrics(
        [
            ("request_rate", {"service": "a"}, 3.0, 102.0),
            ("request_rate", {"service": "a"}, 1.0, 100.0),  # out of order on purpose
            ("request_rate", {"service": "a", "replica": "1"}, 5.0, 101.0),
            ("request_rate", {"service": "b"}, 7.0, 101.0),
            ("error_ratio", {"service": "a"}, 0.5, 101.0),
        ]
    )
    store.write_metric("request_rate", {"service": "a"}, 2.0, 101.0)

    series = store.query_range("request_rate", {"service": "a"}, 0, 1000)
    assert [s.labels for s in series] == [{"replica": "1", "service": "a"}, {"service": "a"}]
    assert series[1].points == [(100.0, 1.0), (101.0, 2.0), (102.0, 3.0)]
    assert len(store.query_range("request_rate", None, 0, 1000)) == 3
    exact = store.query_range("request_rate", {"service": "a", "replica": "1"}, 0, 1000)
    assert [s.points for s in exact] == [[(101.0, 5.0)]]
    clipped = store.query_range("request_rate", {"service": "a"}, 100.5, 101.5)
    assert [s.points for s in clipped] == [[(101.0, 5.0)], [(101.0, 2.0)]]
    assert store.query_range("request_rate", {"service": "zzz"}, 0, 1000) == []
    assert store.query_range("nope", None, 0, 1000) == []
    assert store.metric_names() == ["error_ratio", "request_rate"]
    store.close()


def test_logs_spans_and_prune(tmp_path: Path) -> None:
    store = LocalTelemetryStore(tmp_path / "t.db")
    store.write_logs(
        [
            LogRecord(
                ts=10.0 + i,
                service="pay" if i % 2 else "web",
                level="error" if i % 3 == 0 else "info",
                message="line 3 NullPointer" if i == 3 else f"line {i}",
                attrs={"i": i},
            )
            for i in range(10)
        ]
    )
    assert [r.attrs["i"] for r in store.search_logs("pay", 0, 100)] == [1, 3, 5, 7, 9]
    assert [r.attrs["i"] for r in store.search_logs(None, 0, 100, level="ERROR")] == [0, 3, 6, 9]
    assert [r.attrs["i"] for r in store.search_logs(None, 0, 100, query="nullpointer")] == [3]
    assert [r.attrs["i"] for r in store.search_logs(None, 12, 14)] == [2, 3, 4]
    assert [r.attrs["i"] for r in store.search_logs(None, 0, 100, limit=2)] == [8, 9]  # newest, in time order

    root = Span(trace_id="t1", span_id="a", service="web", name="GET /buy", start=50.0, duration_ms=3)
    child = Span(
        trace_id="t1",
        span_id="b",
        parent_id="a",
        service="pay",
        name="GET /pay",
        start=50.001,
        duration_ms=1,
        status="error",
        attrs={"http.status": 500},
    )
    store.write_spans([child, root])
    other = Span(trace_id="t2", span_id="c", service="pay", name="GET /pay", start=70.0, duration_ms=1)
    store.write_span(other)
    assert [s.span_id for s in store.spans(None, 0, 100)] == ["a", "b", "c"]
    assert [s.span_id for s in store.spans("pay", 0, 60)] == ["b"]
    assert store.trace("t1") == [root, child]

    assert store.prune(older_than_ts=15.0) == 5  # logs at t=10..14; every span is newer
    assert [r.attrs["i"] for r in store.search_logs(None, 0, 100)] == [5, 6, 7, 8, 9]
    assert store.prune(older_than_ts=60.0) == 5 + 2
    assert [s.span_id for s in store.spans(None, 0, 100)] == ["c"]
    store.close()


WRITER = textwrap.dedent(
    """
    import sys, time
    from tools.base import LogRecord
    from tools.telemetry import LocalTelemetryStore
    store = LocalTelemetryStore(sys.argv[1])
    me = sys.argv[2]
    for i in range(100):
        store.write_metrics([("m", {"writer": me, "k": str(k)}, float(i), 1000.0 + i) for k in range(5)])
        store.write_log(LogRecord(ts=1000.0 + i, service=me, message=f"log {i}"))
    store.close()
    """
)


def test_several_processes_write_concurrently(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), f"w{n}"], env=child_env(), stderr=subprocess.PIPE
        )
        for n in range(4)
    ]
    for proc in writers:
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()
    store = LocalTelemetryStore(db)
    for n in range(4):
        series = store.query_range("m", {"writer": f"w{n}"}, 0, 2000)
        assert len(series) == 5 and all(len(s.points) == 100 for s in series)
        assert len(store.search_logs(f"w{n}", 0, 2000, limit=1000)) == 100
    store.close()


# --------------------------------------------------------------------------- supervisor

SLEEPER = (
    "import os, time; print('hello replica', os.environ.get('REPLICA', '0'), flush=True); time.sleep(120)"
)


def sleeper_specs(tmp_path: Path) -> dict[str, ProcessSpec]:
    return {
        "sleeper": ProcessSpec(name="sleeper", argv=[sys.executable, "-c", SLEEPER], env={}, cwd=tmp_path),
        "other": ProcessSpec(name="other", argv=[sys.executable, "-c", SLEEPER], env={}, cwd=tmp_path),
    }


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[ProcessSupervisor]:
    sup = ProcessSupervisor(tmp_path / "rt", sleeper_specs(tmp_path))
    try:
        yield sup
    finally:
        sup.shutdown_all()
        sup.close()


def test_supervisor_start_kill_restart_and_adoption(supervisor: ProcessSupervisor, tmp_path: Path) -> None:
    first = supervisor.start("sleeper")
    assert first.running and first.pid and first.restarts == 0 and first.started_at
    assert wait_for("memory reading", lambda: supervisor.status("sleeper").memory_mb)
    assert wait_for("log line", lambda: "hello replica 0" in supervisor.logs("sleeper"))
    assert not supervisor.status("other").running

    crashed = supervisor.kill("sleeper")
    assert not crashed.running and crashed.exit_code == -signal.SIGKILL and crashed.restarts == 0

    restarted = supervisor.restart("sleeper")
    assert restarted.running and restarted.pid != first.pid and restarted.restarts == 1

    adopter = ProcessSupervisor(tmp_path / "rt", sleeper_specs(tmp_path))
    try:
        adopted = adopter.status("sleeper")
        assert adopted.running and adopted.pid == restarted.pid and adopted.restarts == 1
        assert adopter.restart("sleeper").restarts == 2
        assert supervisor.status("sleeper").restarts == 2
        assert adopter.stop("sleeper").exit_code == -signal.SIGTERM
        assert not supervisor.status("sleeper").running
    finally:
        adopter.close()


def test_supervisor_scale_and_errors(supervisor: ProcessSupervisor) -> None:
    supervisor.start("sleeper")
    assert supervisor.scale("sleeper", 3).replicas == 3
    assert wait_for(
        "replica 2 log",
        lambda: (
            (supervisor.log_dir / "sleeper-2.log").exists()
            and "hello replica 2" in (supervisor.log_dir / "sleeper-2.log").read_text()
        ),
    )
    assert len(supervisor.pids()) == 3
    assert supervisor.scale("sleeper", 1).replicas == 1
    assert len(supervisor.pids()) == 1
    with pytest.raises(NotFound, match="known services: other, sleeper"):
        supervisor.status("nope")
    with pytest.raises(NotFound):
        supervisor.restart("nope")
    with pytest.raises(ConfigError):
        supervisor.scale("sleeper", 0)


WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tools.runtime import ProcessSpec, ProcessSupervisor
    spec = ProcessSpec(name="sleeper", argv=[sys.executable, "-c", sys.argv[2]], env={}, cwd=None)
    sup = ProcessSupervisor(Path(sys.argv[1]), {"sleeper": spec})
    sup.start("sleeper")
    sup.restart("sleeper")
    print(sup.status("sleeper").pid, flush=True)
    time.sleep(120)
    """
)


def test_new_process_adopts_services_of_a_killed_worker(tmp_path: Path) -> None:
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tmp_path / "rt"), SLEEPER], env=child_env(), stdout=subprocess.PIPE
    )
    sup = ProcessSupervisor(tmp_path / "rt", {"sleeper": sleeper_specs(tmp_path)["sleeper"]})
    try:
        assert worker.stdout is not None
        pid = int(worker.stdout.readline())
        worker.kill()  # the worker dies hard; its service lives on in its own session
        worker.wait(timeout=5)
        worker.stdout.close()
        status = sup.status("sleeper")
        assert status.running and status.pid == pid and status.restarts == 1
        assert sup.kill("sleeper").exit_code == -signal.SIGKILL  # not our child: the signal we sent
        assert sup.restart("sleeper").restarts == 2
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=5)
        sup.shutdown_all()
        sup.close()


def test_health_checker_never_raises_for_a_dead_service() -> None:
    with HttpHealthChecker({"dead": "http://127.0.0.1:9"}, timeout_s=0.3) as checker:
        result = checker.check("dead")
        assert not result.ok and result.detail
        with pytest.raises(NotFound):
            checker.check("unknown")


# --------------------------------------------------------------------------- the app


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalApp]:
    local = LocalApp(tmp_path_factory.mktemp("app"))
    try:
        local.start(timeout=15)
        local.start_load(rps=20)
        yield local
    finally:
        try:
            local.stop()
        finally:
            assert isinstance(local.runtime, ProcessSupervisor)  # the app runs local processes by default
            for pid in local.runtime.pids():  # belt and braces: nothing survives the module
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            local.close()


def recent(app: LocalApp, metric: str, service: str, since: float) -> list[float]:
    """Values of a metric for replica 0 of a service since `since`."""
    series = app.telemetry.query_range(metric, {"service": service}, since, time.time() + 1)
    return [v for s in series if "replica" not in s.labels for _, v in s.points]


def test_load_flows_through_all_services(app: LocalApp) -> None:
    since = time.time()
    for name in app.services():

        def traffic(service: str = name) -> bool:
            return any(v > 0 for v in recent(app, "request_rate", service, since))

        wait_for(f"{name} traffic", traffic)
    assert {
        "request_rate",
        "error_ratio",
        "latency_p95_ms",
        "memory_rss_mb",
        "cpu_percent",
        "purchases_rate",
        "conversion_ratio",
    } <= set(app.telemetry.metric_names())
    assert all(v == 0 for v in recent(app, "error_ratio", "payments", since))
    assert wait_for("conversion", lambda: recent(app, "conversion_ratio", "frontend", since))[-1] == 1.0
    assert app.load_stats()["ok"] > 0
    assert app.topology == {"frontend": ["checkout"], "checkout": ["payments"], "payments": []}
    started = app.telemetry.search_logs("payments", 0, time.time() + 1, query="service started")
    assert started and f"version={STABLE_VERSION}" in started[0].message


def test_spans_link_frontend_checkout_payments(app: LocalApp) -> None:
    """OpenTelemetry server and client spans chain frontend -> checkout -> payments through traceparent."""
    since = time.time() - 5
    roots = wait_for(
        "frontend server spans",
        lambda: [s for s in app.telemetry.spans("frontend", since, time.time() + 1) if s.parent_id is None],
    )
    root = roots[-2] if len(roots) > 1 else roots[-1]  # the newest may still have children in flight

    def full_trace() -> list[Span] | None:
        trace = app.telemetry.trace(root.trace_id)
        return trace if len(trace) == 5 else None

    chain = wait_for("a full trace", full_trace)
    by_name = {(s.service, s.name): s for s in chain}
    front = by_name[("frontend", "GET /buy")]
    call_checkout = by_name[("frontend", "call checkout")]
    checkout = by_name[("checkout", "GET /checkout")]
    call_payments = by_name[("checkout", "call payments")]
    payments = by_name[("payments", "GET /pay")]
    assert front.parent_id is None
    assert call_checkout.parent_id == front.span_id
    assert checkout.parent_id == call_checkout.span_id
    assert call_payments.parent_id == checkout.span_id
    assert payments.parent_id == call_payments.span_id
    assert len(root.trace_id) == 32 and all(s.status == "ok" for s in chain)


def test_metrics_endpoint_speaks_prometheus(app: LocalApp) -> None:
    """Each service exposes prometheus-client metrics that Prometheus can scrape."""
    import httpx

    def counted() -> str | None:
        body = httpx.get(app.urls["frontend"] + "/metrics", timeout=2).text
        return body if "shop_purchases_total{" in body else None

    text = wait_for("requests counted on /metrics", counted)
    assert 'http_requests_total{code="200",handler="/buy",service="frontend"}' in text
    assert "http_request_duration_seconds_bucket" in text


def test_reattach_from_a_new_object(app: LocalApp) -> None:
    again = LocalApp(app.data_dir)
    try:
        assert again.ports == app.ports
        for name in app.services():
            assert again.status(name).pid == app.status(name).pid
            assert again.health.check(name).ok
    finally:
        again.close()


def test_crash_fails_health_and_restart_cures(app: LocalApp) -> None:
    app.inject("crash", "checkout")
    status = app.runtime.status("checkout")
    assert not status.running and status.exit_code == -signal.SIGKILL
    assert not app.health.check("checkout").ok
    wait_for(
        "frontend to log the broken dependency",
        lambda: app.telemetry.search_logs("frontend", time.time() - 5, time.time() + 1, query="upstream"),
    )
    restarted = app.runtime.restart("checkout")
    assert restarted.running and restarted.restarts == 1
    assert app.wait_healthy(["checkout"], timeout=5)["checkout"].ok


def test_memory_leak_grows_rss_and_restart_cures(app: LocalApp) -> None:
    since = time.time()
    base = wait_for("baseline memory", lambda: recent(app, "memory_rss_mb", "payments", since))[-1]
    app.inject("memory_leak", "payments", mb_per_s=60)
    wait_for("memory growth", lambda: max(recent(app, "memory_rss_mb", "payments", since)) > base + 50)
    assert app.apply("payments").running  # a restart drops in-memory faults
    cured = time.time()
    after = wait_for("memory after restart", lambda: recent(app, "memory_rss_mb", "payments", cured))
    assert after[-1] < base + 30


def test_latency_fault_and_clear(app: LocalApp) -> None:
    since = time.time()
    app.inject("latency", "payments", ms=250)
    wait_for("p95 > 250 ms", lambda: any(v > 250 for v in recent(app, "latency_p95_ms", "payments", since)))
    app.inject("clear", "payments")
    cleared = time.time() + 0.6
    wait_for(
        "p95 back to normal",
        lambda: (v := recent(app, "latency_p95_ms", "payments", cleared)) and v[-1] < 100,
    )


def test_disk_full_survives_a_restart_until_space_is_freed(app: LocalApp) -> None:
    app.inject("disk_full", "payments", ratio=1.0)
    since = time.time()
    wait_for(
        "ENOSPC errors",
        lambda: app.telemetry.search_logs(
            "payments", since, time.time() + 1, query="No space left on device"
        ),
    )
    assert app.health.check("payments").ok, "a full disk does not stop the process: health stays green"
    app.runtime.restart("payments")
    app.wait_healthy(["payments"], timeout=5)
    restarted = time.time() + 0.6
    wait_for(
        "errors after the restart",
        lambda: any(v > 0.9 for v in recent(app, "error_ratio", "payments", restarted)),
    )
    app.inject("clear", "payments")
    freed = time.time() + 0.6
    wait_for(
        "writes succeed again", lambda: (v := recent(app, "error_ratio", "payments", freed)) and v[-1] == 0
    )


def test_bad_deploy_cascades_and_rollback_cures(app: LocalApp) -> None:
    since = time.time()
    app.inject("bad_deploy", "payments")
    assert app.status("payments").version == BAD_VERSION
    assert app.gitops.history(service="payments")[0].kind == "deploy"

    def bad(service: str) -> bool:
        values = recent(app, "error_ratio", service, since)[-4:]
        return len(values) == 4 and sum(values) / 4 > 0.3

    wait_for("payments errors", lambda: bad("payments"))
    wait_for("errors cascading to frontend", lambda: bad("frontend"))
    logs = app.telemetry.search_logs
    assert logs("payments", since, time.time() + 1, query="NullPointerException", level="error", limit=1)
    assert logs("frontend", since, time.time() + 1, query="upstream checkout returned 502", level="error")

    good = {**app.gitops.config("payments"), "version": STABLE_VERSION}
    app.gitops.commit_config("payments", good, "Roll back payments to 1.4.0", kind="rollback", author="test")
    assert app.apply("payments").version == STABLE_VERSION
    cured = time.time() + 0.6  # the first interval after the restart may still hold in-flight failures

    def healthy() -> bool:
        values = recent(app, "error_ratio", "frontend", cured)
        return len(values) >= 3 and all(v == 0 for v in values[-3:])

    wait_for("frontend error_ratio back to 0", healthy)


def test_inject_rejects_bad_input_and_changes_nothing(app: LocalApp) -> None:
    journal = app.data_dir / "chaos.jsonl"
    before = (journal.read_text(), len(app.gitops.history()), app.runtime.status("payments").pid)
    with pytest.raises(ConfigError, match="unknown fault"):
        app.inject("meteor", "payments")
    with pytest.raises(NotFound, match="known services"):
        app.inject("crash", "nope")
    with pytest.raises(ConfigError, match="volume"):
        app.inject("memory_leak", "payments", volume=3)
    with pytest.raises(ConfigError, match="mb_per_s"):
        app.inject("memory_leak", "payments", mb_per_s="lots")
    assert before == (journal.read_text(), len(app.gitops.history()), app.runtime.status("payments").pid)
    faults = [json.loads(line)["fault"] for line in journal.read_text().splitlines()]
    assert faults == ["crash", "memory_leak", "latency", "clear", "disk_full", "clear", "bad_deploy"]


def test_stop_stops_everything(app: LocalApp) -> None:
    app.stop()
    assert isinstance(app.runtime, ProcessSupervisor)
    assert app.runtime.pids() == []
    for name in app.services():
        assert not app.runtime.status(name).running
        assert not app.health.check(name).ok
