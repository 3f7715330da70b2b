"""A circuit breaker, and a `HealthChecker` wrapper that stops probing an endpoint that keeps failing.

States::

    closed ──(failure_threshold failures in a row)──▶ open ──(reset_timeout_s passes)──▶ half-open
      ▲                                                 ▲                                   │
      └───────────────(the trial call succeeds)─────────┼───────────────────────────────────┘
                                                        └──────(the trial call fails)───────┘

While open, calls are refused without touching the endpoint. After `reset_timeout_s` one trial call goes
through (half-open): success closes the circuit, failure opens it again, for `reset_timeout_s * backoff`
this time (capped at `max_reset_timeout_s`), so a long-dead endpoint is probed less and less often.

Time comes from an injectable `Clock` (tools.base), so tests step it instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal, TypeVar

from tools.base import Clock, HealthChecker, HealthResult, SystemClock, ToolError

State = Literal["closed", "open", "half_open"]
T = TypeVar("T")


class CircuitOpenError(ToolError):
    """The circuit is open: the call was refused without reaching the backend."""


class CircuitBreaker:
    """Counts consecutive failures of one endpoint and refuses calls while it is known to be failing."""

    def __init__(
        self,
        failure_threshold: int = 3,
        reset_timeout_s: float = 10.0,
        backoff: float = 1.0,
        max_reset_timeout_s: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        """Open after `failure_threshold` failures in a row; try again after `reset_timeout_s`."""
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {failure_threshold}")
        if reset_timeout_s <= 0:
            raise ValueError(f"reset_timeout_s must be positive, got {reset_timeout_s}")
        if backoff < 1.0:
            raise ValueError(f"backoff must be at least 1, got {backoff}")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.backoff = backoff
        self.max_reset_timeout_s = max_reset_timeout_s if max_reset_timeout_s is not None else reset_timeout_s
        self.max_reset_timeout_s = max(self.max_reset_timeout_s, reset_timeout_s)
        self.clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._timeout = reset_timeout_s
        self._trial_out = False

    # ------------------------------------------------------------------ reading

    @property
    def state(self) -> State:
        """closed, open or half_open (an open circuit whose timeout passed reads as half_open)."""
        with self._lock:
            return self._current()

    @property
    def failures(self) -> int:
        """Consecutive failures counted so far."""
        with self._lock:
            return self._failures

    def retry_in(self) -> float:
        """Seconds until an open circuit lets a trial call through (0 when not open)."""
        with self._lock:
            if self._current() != "open":
                return 0.0
            return max(0.0, self._opened_at + self._timeout - self.clock.now())

    def _current(self) -> State:
        if self._state == "open":
            now = self.clock.now()
            if now < self._opened_at:  # the clock went backwards: restart the wait rather than wait forever
                self._opened_at = now
            if now - self._opened_at >= self._timeout:
                self._state = "half_open"
                self._trial_out = False
        return self._state

    # ------------------------------------------------------------------ using

    def allow(self) -> bool:
        """Whether a call may go out now; in half-open, only one trial call at a time."""
        with self._lock:
            state = self._current()
            if state == "closed":
                return True
            if state == "half_open" and not self._trial_out:
                self._trial_out = True
                return True
            return False

    def record_success(self) -> None:
        """A call succeeded: close the circuit and forget the failures."""
        with self._lock:
            self._state = "closed"
            self._failures = 0
            self._timeout = self.reset_timeout_s
            self._trial_out = False

    def record_failure(self) -> None:
        """A call failed: count it, and open the circuit at the threshold or when a trial call fails."""
        with self._lock:
            state = self._current()
            self._failures += 1
            if state == "half_open":
                self._timeout = min(self._timeout * self.backoff, self.max_reset_timeout_s)
                self._open()
            elif state == "closed" and self._failures >= self.failure_threshold:
                self._open()

    def _open(self) -> None:
        self._state = "open"
        self._opened_at = self.clock.now()
        self._trial_out = False

    def cancel(self) -> None:
        """A call allowed out was abandoned: free the half-open trial without judging the endpoint."""
        with self._lock:
            self._trial_out = False

    def reset(self) -> None:
        """Close the circuit by hand (after a restart, say), without waiting for a trial call."""
        self.record_success()

    def call(self, fn: Callable[[], T], is_failure: Callable[[T], bool] | None = None) -> T:
        """Run `fn` through the breaker: CircuitOpenError while open; exceptions and `is_failure` count."""
        if not self.allow():
            raise CircuitOpenError(f"circuit open; next trial in {self.retry_in():.1f}s")
        try:
            result = fn()
        except Exception:
            self.record_failure()
            raise
        except BaseException:
            self.cancel()
            raise
        if is_failure is not None and is_failure(result):
            self.record_failure()
        else:
            self.record_success()
        return result


class BreakerHealthChecker:
    """A `HealthChecker` that wraps another and stops probing a service once it keeps failing.

    Each service has its own breaker. While a service's circuit is open, `check` answers at once with
    `ok=False` and `detail="circuit open ..."` (the service still reads as unhealthy, so detection goes on),
    and the wrapped checker is not called: a dead endpoint that times out no longer costs a timeout per poll.
    Any not-ok probe counts as a failure, or with `slow_probe_s` only one that took at least that long: a
    refused connection costs nothing to probe, and answering it from an open circuit would keep a service that
    restarted in a second looking down for the circuit's whole timeout. `NotFound` (an unknown service)
    passes through untouched.

    The defaults (open after 3 failed probes, first trial after 2 s, then 4 s, 8 s, at most 10 s) keep the
    worst extra delay in noticing a recovery under the engineer's verification window; call `reset(service)`
    after restarting a service so the next check probes at once.
    """

    def __init__(
        self,
        inner: HealthChecker,
        failure_threshold: int = 3,
        reset_timeout_s: float = 2.0,
        backoff: float = 2.0,
        max_reset_timeout_s: float = 10.0,
        clock: Clock | None = None,
        slow_probe_s: float | None = None,
    ) -> None:
        """Wrap `inner`; breaker settings apply to every service's breaker."""
        self.inner = inner
        self.clock: Clock = clock or SystemClock()
        self.slow_probe_s = slow_probe_s
        self._settings = (failure_threshold, reset_timeout_s, backoff, max_reset_timeout_s)
        self._breakers: dict[str, CircuitBreaker] = {}
        self._last: dict[str, HealthResult] = {}
        self._lock = threading.Lock()
        self.probes = 0
        """How many probes reached the wrapped checker (for tests and metrics)."""

    def breaker(self, service: str) -> CircuitBreaker:
        """The breaker of one service, created on first use."""
        with self._lock:
            found = self._breakers.get(service)
            if found is None:
                threshold, timeout, backoff, cap = self._settings
                found = self._breakers[service] = CircuitBreaker(threshold, timeout, backoff, cap, self.clock)
            return found

    def states(self) -> dict[str, State]:
        """Each known service's circuit state."""
        with self._lock:
            breakers = dict(self._breakers)
        return {service: b.state for service, b in sorted(breakers.items())}

    def reset(self, service: str | None = None) -> None:
        """Close one service's circuit (or all): after a restart the next check probes for real."""
        with self._lock:
            targets = (
                list(self._breakers.values())
                if service is None
                else [self._breakers[service]]
                if service in self._breakers
                else []
            )
        for b in targets:
            b.reset()

    def check(self, service: str) -> HealthResult:
        """Probe through the service's breaker; while it is open, answer unhealthy without probing."""
        breaker = self.breaker(service)
        if not breaker.allow():
            last = self._last.get(service)
            because = f"; last probe: {last.detail}" if last is not None and last.detail else ""
            return HealthResult(
                service=service,
                ok=False,
                detail=f"circuit open after {breaker.failures} failed probes, next probe in "
                f"{breaker.retry_in():.1f}s{because}",
            )
        started = time.monotonic()
        try:
            result = self.inner.check(service)
        except ToolError as exc:  # the protocol says never raise for a dead service; count it if one does
            result = HealthResult(service=service, ok=False, detail=f"{type(exc).__name__}: {exc}")
        except BaseException:
            breaker.cancel()  # NotFound and the like say nothing about the endpoint
            raise
        finally:
            with self._lock:
                self.probes += 1
        if result.ok:
            breaker.record_success()
        elif self.slow_probe_s is None or time.monotonic() - started >= self.slow_probe_s:
            breaker.record_failure()
        else:
            breaker.cancel()  # a fast failure: cheap to probe again, and nothing to protect the poll from
        self._last[service] = result
        return result
