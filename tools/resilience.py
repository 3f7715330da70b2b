"""One resilience policy per flaky dependency: bounded retries with backoff and jitter, inside a circuit breaker.

Only transient failures are retried, a mutation only when it provably never reached the server, within a
bounded number of attempts and time; the breaker counts one call per outcome however many attempts it took.
Method: docs/resilience.md §The rules.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import weakref
from collections.abc import Callable
from typing import Protocol, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field
from tenacity import RetryCallState, Retrying, retry_if_exception

from tools.base import Clock, SystemClock, TransientError
from tools.breaker import CircuitBreaker, CircuitOpenError, State

log = logging.getLogger(__name__)
T = TypeVar("T")


class ResilienceListener(Protocol):
    """Hears what every `Resilience` does (for metrics)."""

    def dependency_retry(self, dependency: str) -> None:
        """A call to `dependency` failed transiently and is about to be retried."""
        ...

    def dependency_state(self, dependency: str, state: State) -> None:
        """The breaker of `dependency` is in `state` after a call."""
        ...


_listeners: weakref.WeakSet[ResilienceListener] = weakref.WeakSet()


def subscribe(listener: ResilienceListener) -> None:
    """Let `listener` hear every retry and breaker state; held weakly, so it goes away with its owner."""
    _listeners.add(listener)


def unsubscribe(listener: ResilienceListener) -> None:
    """Stop telling `listener`."""
    _listeners.discard(listener)


def _tell(event: str, *args: object) -> None:
    for listener in list(_listeners):
        try:
            getattr(listener, event)(*args)
        except Exception:  # a broken metrics hook must never fail the call it reports on
            log.warning("resilience listener %r failed on %s", listener, event, exc_info=True)


def is_transient(exc: BaseException) -> bool:
    """The default rule: a backend said this failure is worth retrying (`TransientError`)."""
    return isinstance(exc, TransientError)


def _connect_errors() -> tuple[type[BaseException], ...]:
    """Exception types raised only while connecting, before a byte of the request is sent."""
    kinds: list[type[BaseException]] = [ConnectionRefusedError, FileNotFoundError, socket.gaierror]
    try:
        kinds += [httpx.ConnectError, httpx.ConnectTimeout]
    except ImportError:  # pragma: no cover - httpx is a dependency
        pass
    try:
        from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

        kinds += [NewConnectionError, ConnectTimeoutError, NameResolutionError]
    except ImportError:  # pragma: no cover - urllib3 comes with requests
        pass
    try:
        import requests

        kinds.append(requests.exceptions.ConnectTimeout)
    except ImportError:  # pragma: no cover
        pass
    return tuple(kinds)


_CONNECT_ERRORS = _connect_errors()


def never_sent(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) proves the request never reached the server: safe to resend a write.

    The chain is followed through `__cause__`, `__context__`, exception arguments and urllib3's `reason`, since
    the SDKs wrap the socket error several times (requests → MaxRetryError → NewConnectionError → OSError).
    """
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen or len(seen) > 32:
            continue
        seen.add(id(current))
        if isinstance(current, _CONNECT_ERRORS):
            return True
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        todo += [e for e in linked if isinstance(e, BaseException)]
    return False


class ResilienceConfig(BaseModel):
    """Retry and breaker settings of one dependency (also a config section: `llm.resilience`)."""

    model_config = ConfigDict(extra="forbid")

    attempts: int = Field(default=3, ge=1)
    """Attempts per call, the first included (1 = no retries)."""
    backoff_s: float = Field(default=0.2, ge=0)
    """Wait before the first retry; doubles per retry."""
    max_backoff_s: float = Field(default=5.0, ge=0)
    jitter: float = Field(default=0.5, ge=0, le=1)
    """Share of each wait that is random: the wait is backoff * (1 - jitter * U[0, 1))."""
    max_elapsed_s: float = Field(default=30.0, gt=0)
    """No retry starts later than this after the first attempt did."""
    failure_threshold: int = Field(default=3, ge=1)
    """Failed calls in a row (each after its retries) that open the circuit."""
    reset_timeout_s: float = Field(default=10.0, gt=0)
    """How long the circuit stays open before a trial call; grows x2 per failed trial."""
    max_reset_timeout_s: float = Field(default=120.0, gt=0)

    def build(
        self,
        name: str,
        clock: Clock | None = None,
        transient: Callable[[BaseException], bool] = is_transient,
    ) -> Resilience:
        """A `Resilience` for dependency `name` with these settings."""
        clock = clock or SystemClock()
        breaker = CircuitBreaker(
            self.failure_threshold, self.reset_timeout_s, 2.0, self.max_reset_timeout_s, clock
        )
        return Resilience(
            name,
            attempts=self.attempts,
            backoff_s=self.backoff_s,
            max_backoff_s=self.max_backoff_s,
            jitter=self.jitter,
            max_elapsed_s=self.max_elapsed_s,
            breaker=breaker,
            clock=clock,
            transient=transient,
        )


class Resilience:
    """Retries (tenacity) inside a circuit breaker, for every call to one named dependency."""

    def __init__(
        self,
        name: str,
        *,
        attempts: int = 3,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        jitter: float = 0.5,
        max_elapsed_s: float = 30.0,
        breaker: CircuitBreaker | None = None,
        clock: Clock | None = None,
        transient: Callable[[BaseException], bool] = is_transient,
        rng: random.Random | None = None,
    ) -> None:
        """Retry `name`'s transient failures up to `attempts` times; the breaker opens after 3 failed calls."""
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {jitter}")
        self.name = name
        self.attempts = attempts
        self.backoff_s = max(0.0, backoff_s)
        self.max_backoff_s = max(0.0, max_backoff_s)
        self.jitter = jitter
        self.max_elapsed_s = max_elapsed_s
        self.clock: Clock = clock or SystemClock()
        self.breaker = breaker or CircuitBreaker(3, 10.0, 2.0, 120.0, self.clock)
        self.transient = transient
        self._rng = rng or random.Random()
        self._local = threading.local()
        self.retries = 0
        """Retries made so far (for tests and metrics)."""

    @property
    def state(self) -> State:
        """The breaker's state."""
        return self.breaker.state

    def reset(self) -> None:
        """Close the circuit by hand."""
        self.breaker.reset()
        _tell("dependency_state", self.name, self.breaker.state)

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1 = the first retry)."""
        base = min(self.max_backoff_s, self.backoff_s * 2.0 ** (retry - 1))
        return base * (1.0 - self.jitter * self._rng.random())

    def call(self, fn: Callable[[], T], *, idempotent: bool = True) -> T:
        """Run `fn` with retries inside the breaker; a write (`idempotent=False`) is resent only if never sent."""
        if getattr(self._local, "depth", 0):
            return fn()  # part of an outer call of this dependency, which owns the retries and the breaker
        if not self.breaker.allow():
            _tell("dependency_state", self.name, self.breaker.state)
            raise CircuitOpenError(
                f"{self.name}: circuit open after {self.breaker.failures} failed calls in a row; "
                f"not calling it again for {self.breaker.retry_in():.1f}s"
            )
        self._local.depth = 1
        try:
            result = self._retrying(idempotent)(fn)
        except BaseException as exc:
            if isinstance(exc, Exception) and self.transient(exc):
                self.breaker.record_failure()
            else:
                self.breaker.cancel()  # the dependency answered (or the caller broke): no verdict on it
            raise
        else:
            self.breaker.record_success()
            return result
        finally:
            self._local.depth = 0
            _tell("dependency_state", self.name, self.breaker.state)

    def _retrying(self, idempotent: bool) -> Retrying:
        started = self.clock.now()

        def retryable(exc: BaseException) -> bool:
            return self.transient(exc) and (idempotent or never_sent(exc))

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= self.attempts:
                return True
            return self.clock.now() - started + state.upcoming_sleep > self.max_elapsed_s

        return Retrying(
            stop=stop,
            retry=retry_if_exception(retryable),
            wait=lambda state: self.backoff(state.attempt_number),
            sleep=self.clock.sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        self.retries += 1
        log.info(
            "%s: attempt %d of %d failed (%s: %s); retrying in %.2fs",
            self.name,
            state.attempt_number,
            self.attempts,
            type(exc).__name__,
            exc,
            state.upcoming_sleep,
        )
        _tell("dependency_retry", self.name)
