"""The circuit breaker's states on a stepped clock, and the health checker wrapper that uses it."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.support import ManualClock
from tools.base import HealthChecker, HealthResult, NotFound, ToolError
from tools.breaker import BreakerHealthChecker, CircuitBreaker, CircuitOpenError
from tools.health import HttpHealthChecker


class ScriptedChecker:
    """A HealthChecker whose answers the test sets; counts the probes that reach it."""

    def __init__(self) -> None:
        self.ok: dict[str, bool] = {}
        self.calls: list[str] = []
        self.raise_for: dict[str, BaseException] = {}

    def check(self, service: str) -> HealthResult:
        self.calls.append(service)
        if service in self.raise_for:
            raise self.raise_for[service]
        ok = self.ok.get(service, True)
        return HealthResult(service=service, ok=ok, detail="HTTP 200" if ok else "connection failed: refused")


# --------------------------------------------------------------------------- CircuitBreaker


def test_opens_after_threshold_and_half_opens_after_timeout() -> None:
    clock = ManualClock()
    b = CircuitBreaker(failure_threshold=3, reset_timeout_s=10, clock=clock)
    assert b.state == "closed"
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert b.state == "closed"
    assert b.allow()
    b.record_failure()
    assert b.state == "open"
    assert not b.allow()
    assert b.retry_in() == pytest.approx(10)
    clock.sleep(9.9)
    assert not b.allow()
    clock.sleep(0.1)
    assert b.state == "half_open"
    assert b.allow()  # the one trial call
    assert not b.allow()  # no second call while the trial is out
    b.record_success()
    assert b.state == "closed" and b.failures == 0 and b.allow()


def test_success_resets_the_consecutive_count() -> None:
    b = CircuitBreaker(failure_threshold=2, clock=ManualClock())
    b.record_failure()
    b.record_success()
    b.record_failure()
    assert b.state == "closed"
    b.record_failure()
    assert b.state == "open"


def test_failed_trial_reopens_with_backoff_up_to_the_cap() -> None:
    clock = ManualClock()
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=2, backoff=2, max_reset_timeout_s=5, clock=clock)
    b.record_failure()
    waits = []
    for _ in range(4):
        waits.append(b.retry_in())
        clock.sleep(b.retry_in())
        assert b.allow()
        b.record_failure()
        assert b.state == "open"
    assert waits == [2, 4, 5, 5]
    clock.sleep(5)
    assert b.allow()
    b.record_success()
    b.record_failure()
    assert b.retry_in() == 2  # the backoff starts over once the endpoint recovered


def test_call_counts_exceptions_and_refuses_while_open() -> None:
    clock = ManualClock()
    b = CircuitBreaker(failure_threshold=2, reset_timeout_s=5, clock=clock)

    def boom() -> int:
        raise ToolError("down")

    for _ in range(2):
        with pytest.raises(ToolError, match="down"):
            b.call(boom)
    with pytest.raises(CircuitOpenError, match="circuit open; next trial in 5.0s"):
        b.call(lambda: 1)
    clock.sleep(5)
    assert b.call(lambda: 7) == 7
    assert b.state == "closed"
    assert b.call(lambda: 0, is_failure=lambda v: v == 0) == 0
    assert b.failures == 1


def test_clock_going_backwards_does_not_wedge_the_circuit() -> None:
    clock = ManualClock(1000)
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=5, clock=clock)
    b.record_failure()
    clock.t = 500  # NTP step back
    assert b.state == "open"
    clock.t = 505
    assert b.state == "half_open"


def test_cancel_frees_the_trial_without_judging() -> None:
    clock = ManualClock()
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=1, clock=clock)
    b.record_failure()
    clock.sleep(1)
    assert b.allow()
    b.cancel()
    assert b.state == "half_open" and b.allow()


@pytest.mark.parametrize("kwargs", [{"failure_threshold": 0}, {"reset_timeout_s": 0}, {"backoff": 0.5}])
def test_bad_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(**kwargs)


# --------------------------------------------------------------------------- BreakerHealthChecker


def test_health_wrapper_stops_probing_a_dead_service() -> None:
    clock = ManualClock()
    inner = ScriptedChecker()
    inner.ok["payments"] = False
    checker = BreakerHealthChecker(
        inner, failure_threshold=3, reset_timeout_s=2, backoff=2, max_reset_timeout_s=10, clock=clock
    )
    assert isinstance(checker, HealthChecker)
    for _ in range(3):
        result = checker.check("payments")
        assert not result.ok and result.detail.startswith("connection failed")
    for _ in range(20):  # the observer polls every 0.5 s; none of these reach the endpoint
        result = checker.check("payments")
        assert not result.ok
        assert result.detail.startswith("circuit open after 3 failed probes, next probe in ")
        assert "last probe: connection failed: refused" in result.detail
    assert inner.calls.count("payments") == 3
    assert checker.check("frontend").ok  # other services have breakers of their own
    assert checker.states() == {"frontend": "closed", "payments": "open"}

    clock.sleep(2)
    assert not checker.check("payments").ok  # the trial probe fails: next wait doubles
    assert inner.calls.count("payments") == 4
    assert checker.breaker("payments").retry_in() == 4
    clock.sleep(4)
    inner.ok["payments"] = True
    result = checker.check("payments")
    assert result.ok and result.detail == "HTTP 200"
    assert checker.states()["payments"] == "closed"
    assert checker.probes == len(inner.calls)


def test_health_wrapper_reset_probes_at_once() -> None:
    clock = ManualClock()
    inner = ScriptedChecker()
    inner.ok["payments"] = False
    checker = BreakerHealthChecker(inner, failure_threshold=1, reset_timeout_s=60, clock=clock)
    checker.check("payments")
    assert "circuit open" in checker.check("payments").detail
    inner.ok["payments"] = True  # restarted by the engineer
    checker.reset("payments")
    assert checker.check("payments").ok
    checker.reset("unknown")  # no breaker yet: nothing to do
    checker.reset()


def test_health_wrapper_counts_tool_errors_and_passes_not_found() -> None:
    clock = ManualClock()
    inner = ScriptedChecker()
    inner.raise_for["payments"] = ToolError("socket exploded")
    inner.raise_for["nope"] = NotFound("no health URL for 'nope'")
    checker = BreakerHealthChecker(inner, failure_threshold=1, clock=clock)
    result = checker.check("payments")
    assert not result.ok and result.detail == "ToolError: socket exploded"
    assert checker.states()["payments"] == "open"
    with pytest.raises(NotFound):
        checker.check("nope")
    assert checker.states()["nope"] == "closed"


def test_health_wrapper_over_a_real_http_checker() -> None:
    """A hung endpoint costs one timeout per probe; behind the breaker, only the first three pay it."""
    release = threading.Event()

    class Hung(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def do_GET(self) -> None:  # noqa: N802
            release.wait(2.0)
            self.send_response(200)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hung)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    clock = ManualClock()
    try:
        with HttpHealthChecker({"svc": f"http://127.0.0.1:{server.server_port}"}, timeout_s=0.1) as http:
            checker = BreakerHealthChecker(http, failure_threshold=3, clock=clock)
            details = [checker.check("svc").detail for _ in range(6)]
    finally:
        release.set()
        server.shutdown()
        server.server_close()
    assert details[:3] == ["timed out after 0.1s"] * 3
    assert all(d.startswith("circuit open after 3 failed probes") for d in details[3:])
    assert checker.probes == 3


def test_fast_failures_are_always_probed_when_only_slow_ones_count() -> None:
    """A refused connection answers at once: the circuit stays closed, so a service back after a restart reads
    healthy on the next poll instead of after the circuit's timeout. Probes that take long still open it."""
    import time as _time

    class Refusing:
        delay = 0.0

        def check(self, service: str) -> HealthResult:
            _time.sleep(self.delay)
            return HealthResult(service=service, ok=False, detail="connection refused")

    inner = Refusing()
    checker = BreakerHealthChecker(
        inner, failure_threshold=2, reset_timeout_s=60, clock=ManualClock(), slow_probe_s=0.05
    )
    for _ in range(5):
        assert not checker.check("payments").ok
    assert checker.probes == 5 and checker.states() == {"payments": "closed"}
    inner.delay = 0.06
    for _ in range(3):
        checker.check("payments")
    assert checker.probes == 7 and checker.states() == {"payments": "open"}
