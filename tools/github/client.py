"""GitHubClient: one authenticated PyGithub connection with retries, rate limits, a circuit breaker and timeouts.

Every operation is check-then-act and retried as a whole; PyGithub's own retry is off, so a POST is never sent
twice blindly. Errors come out as the project's error tree (tools/base.py). Details in docs/github.md.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TypeVar

import requests
from github import Auth, Github, GithubException
from github.GithubException import BadCredentialsException, RateLimitExceededException
from github.Repository import Repository
from github.Requester import Requester
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from tools.base import (
    Clock,
    ConfigError,
    NotFound,
    Refused,
    SregraphError,
    SystemClock,
    ToolError,
    TransientError,
)
from tools.breaker import CircuitBreaker
from tools.redact import redact_out
from tools.resilience import Resilience

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.github.com"
TOKEN_ENV = "GITHUB_TOKEN"
TOKEN_FILE_ENV = "GITHUB_TOKEN_FILE"


def resolve_token(
    token: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    secrets_file: Path | str | None = None,
) -> str:
    """The GitHub token: `token` if the caller already holds it, else $GITHUB_TOKEN, else a secrets file.

    The secrets file is `secrets_file` or $GITHUB_TOKEN_FILE (Docker and Kubernetes secrets mount one).
    """
    if token:
        return token.strip()
    env = os.environ if environ is None else environ
    if env.get(TOKEN_ENV, "").strip():
        return env[TOKEN_ENV].strip()
    path = secrets_file or env.get(TOKEN_FILE_ENV)
    if path:
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{TOKEN_FILE_ENV}: cannot read the GitHub token file {path}: {exc}") from exc
        if not value:
            raise ConfigError(f"{TOKEN_FILE_ENV}: the GitHub token file {path} is empty")
        return value
    raise ConfigError(
        f"token: set {TOKEN_ENV} or {TOKEN_FILE_ENV} (a secrets file); sregraph never reads tokens from its config file"
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to retry GitHub: attempts per operation, backoff, and the longest rate-limit wait to accept."""

    attempts: int = 5
    backoff_s: float = 1.0
    """First backoff after a 5xx or a timeout; doubles per attempt, with jitter."""
    max_backoff_s: float = 30.0
    max_rate_wait_s: float = 300.0
    """A rate limit that needs a longer wait raises TransientError instead of stalling the incident."""
    secondary_wait_s: float = 60.0
    """Wait after a secondary rate limit without Retry-After (GitHub's advice: at least a minute)."""
    breaker_failures: int = 3
    """Operations in a row that fail transiently (after their retries) before the circuit opens."""
    breaker_reset_s: float = 30.0
    """How long the circuit stays open before a trial operation (doubling per failed trial, at most 10 min)."""


def check_repo(repo: str) -> str:
    """`repo` if it reads "owner/name"; ConfigError otherwise."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", repo or ""):
        raise ConfigError(f"repo: expected 'owner/name', got {repo!r}")
    return repo


class GitHubClient:
    """One PyGithub connection with the retry loop, the breaker and the error translation; backends share one.

    Sharing one client shares the token, the connection pool, the pauses between requests, what GitHub last
    said about the rate limit, and the circuit breaker: it is one dependency, however many repositories.
    """

    def __init__(
        self,
        token: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 10,
        *,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        per_page: int = 100,
        seconds_between_requests: float | None = 0.25,
        seconds_between_writes: float | None = 1.0,
        environ: Mapping[str, str] | None = None,
        secrets_file: Path | str | None = None,
    ) -> None:
        """The token from the caller, $GITHUB_TOKEN or $GITHUB_TOKEN_FILE; `timeout` in seconds per request.

        The pauses between requests and between writes are GitHub's advice against secondary rate limits;
        tests set them to 0.
        """
        if timeout <= 0:
            raise ConfigError(f"timeout: must be > 0 seconds, got {timeout}")
        self.token = resolve_token(token, environ=environ, secrets_file=secrets_file)
        self.base_url = base_url.rstrip("/")
        # PyGithub takes whole seconds; round up so a configured 2.5 s never becomes 2 s.
        self.timeout = max(1, math.ceil(timeout))
        self.clock: Clock = clock or SystemClock()
        self.retry = retry or RetryPolicy()
        self._rng = random.Random()
        self.gh = Github(
            base_url=self.base_url,
            auth=Auth.Token(self.token),
            timeout=self.timeout,
            per_page=per_page,
            retry=None,
            seconds_between_requests=seconds_between_requests,
            seconds_between_writes=seconds_between_writes,
            user_agent="sregraph",
        )
        # Only the breaker: the retries are the tenacity loop in `call`, which knows GitHub's rate limits.
        self.resilience = Resilience(
            "github",
            attempts=1,
            breaker=CircuitBreaker(
                max(1, self.retry.breaker_failures),
                self.retry.breaker_reset_s,
                2.0,
                max(600.0, self.retry.breaker_reset_s),
                self.clock,
            ),
            clock=self.clock,
        )

    def repository(self, full_name: str) -> RepoClient:
        """This client bound to the repository `full_name` ("owner/name"); ConfigError for another shape."""
        return RepoClient(self, full_name)

    @property
    def requester(self) -> Requester:
        """PyGithub's requester, for conditional requests PyGithub has no method for."""
        return self.gh.requester

    def redact(self, text: str) -> str:
        """`text` without credentials, the client's own token included."""
        return redact_out(text, [self.token])

    def close(self) -> None:
        """Close the HTTP connections."""
        self.gh.close()

    # ------------------------------------------------------------------ retries

    def call(self, what: str, fn: Callable[[], T], *, repo: str) -> T:
        """Run `fn` (a whole check-then-act operation on `repo`), retrying transient failures; errors as
        SregraphError.

        The breaker judges the operation once its retries are over; CircuitOpenError while it is open.
        """
        return self.resilience.call(lambda: self._call(what, fn, repo))

    def _call(self, what: str, fn: Callable[[], T], repo: str) -> T:
        retrying = Retrying(
            stop=stop_after_attempt(max(1, self.retry.attempts)),
            retry=retry_if_exception(self._retryable),
            wait=self._wait,
            sleep=self.clock.sleep,
            before_sleep=lambda state: self._log_retry(what, state),
            reraise=True,
        )
        try:
            result: T = retrying(self._attempt, what, fn)
            return result
        except SregraphError:
            raise
        except (GithubException, requests.RequestException) as exc:
            raise self.translate(exc, what, repo) from exc

    def _attempt(self, what: str, fn: Callable[[], T]) -> T:
        self._await_quota(what)
        return fn()

    def _await_quota(self, what: str) -> None:
        """Wait for the primary quota to reset when the last answer said none is left."""
        remaining, _ = self.requester.rate_limiting
        if remaining != 0:
            return
        wait = self.requester.rate_limiting_resettime - self.clock.now() + 1
        if wait <= 0:
            return
        if wait > self.retry.max_rate_wait_s:
            raise TransientError(
                f"{what}: the GitHub API quota is used up for another {wait:.0f}s "
                f"(more than max_rate_wait_s={self.retry.max_rate_wait_s:.0f})"
            )
        logger.warning("GitHub quota used up; waiting %.0fs for the reset before %s", wait, what)
        self.clock.sleep(wait)

    def _retryable(self, exc: BaseException) -> bool:
        if isinstance(
            exc, (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError)
        ):
            return True
        if isinstance(exc, GithubException):
            wait = self.rate_wait(exc, 1)
            if wait is not None:
                return wait <= self.retry.max_rate_wait_s
            return exc.status >= 500
        return False

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, GithubException):
            wait = self.rate_wait(exc, state.attempt_number)
            if wait is not None:
                return wait
        backoff = min(self.retry.max_backoff_s, self.retry.backoff_s * 2.0 ** (state.attempt_number - 1))
        backoff *= 0.5 + self._rng.random() / 2  # jitter: clients retrying together spread out
        if isinstance(exc, requests.Timeout):
            # A request that timed out may still land; give it time before the retry checks what exists.
            backoff = max(backoff, float(self.timeout))
        return backoff

    def rate_wait(self, exc: GithubException, attempt: int) -> float | None:
        """Seconds GitHub asks us to wait before retrying, or None if `exc` is not a rate limit."""
        headers = {str(k).lower(): str(v) for k, v in (exc.headers or {}).items()}
        message = error_message(exc).lower()
        limited = exc.status == 429 or (
            exc.status == 403
            and (
                isinstance(exc, RateLimitExceededException)
                or "retry-after" in headers
                or headers.get("x-ratelimit-remaining") == "0"
                or "rate limit" in message
            )
        )
        if not limited:
            return None
        if "retry-after" in headers:
            return _retry_after(headers["retry-after"], self.clock.now())
        if headers.get("x-ratelimit-remaining") == "0" and headers.get("x-ratelimit-reset", "").isdigit():
            return max(0.0, int(headers["x-ratelimit-reset"]) - self.clock.now()) + 1.0
        return self.retry.secondary_wait_s * 2.0 ** (attempt - 1)

    def _log_retry(self, what: str, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning(
            "GitHub: %s failed (%s); attempt %d of %d, retrying in %.1fs",
            what,
            _describe(exc),
            state.attempt_number,
            self.retry.attempts,
            delay,
        )

    def translate(self, exc: BaseException, what: str, repo: str) -> SregraphError:
        """A PyGithub or requests exception (from an operation on `repo`) as the error kind sregraph understands."""
        if isinstance(exc, requests.Timeout):
            return TransientError(f"{what}: GitHub did not answer within {self.timeout}s")
        if isinstance(exc, requests.RequestException):
            return TransientError(f"{what}: cannot reach GitHub at {self.base_url}: {type(exc).__name__}")
        if not isinstance(exc, GithubException):
            return ToolError(f"{what}: {type(exc).__name__}: {exc}")
        message = self.redact(error_message(exc))
        if isinstance(exc, BadCredentialsException) or exc.status == 401:
            return ConfigError(f"token: GitHub rejected the token for {repo} ({message})")
        wait = self.rate_wait(exc, self.retry.attempts)
        if wait is not None:
            return TransientError(f"{what}: rate limited by GitHub ({message}); retry in {wait:.0f}s")
        if exc.status >= 500:
            return TransientError(f"{what}: GitHub answered {exc.status} ({message})")
        if exc.status == 404:
            return NotFound(f"{what}: not found in {repo} (or the token cannot see it)")
        if exc.status == 403:
            return Refused(
                f"{what}: GitHub refused ({message}); the token needs Issues, Pull requests and Contents "
                f"read/write on {repo}"
            )
        return ToolError(f"{what}: GitHub answered {exc.status}: {message}")


class RepoClient:
    """A `GitHubClient` bound to one repository: what each backend holds."""

    def __init__(self, client: GitHubClient, full_name: str) -> None:
        """Bind `client` to `full_name` ("owner/name"); ConfigError for another shape."""
        self.client = client
        self.full_name = check_repo(full_name)
        self.owner = full_name.split("/")[0]
        self._repo: Repository | None = None

    @property
    def gh(self) -> Github:
        """The shared PyGithub object."""
        return self.client.gh

    @property
    def clock(self) -> Clock:
        """The client's clock (retry sleeps, commit dates)."""
        return self.client.clock

    @property
    def requester(self) -> Requester:
        """PyGithub's requester, for conditional requests PyGithub has no method for."""
        return self.client.requester

    @property
    def repo(self) -> Repository:
        """The repository object (fetched on first use, inside a retried call)."""
        if self._repo is None:
            self._repo = self.client.gh.get_repo(self.full_name)
        return self._repo

    def redact(self, text: str) -> str:
        """`text` without credentials, the client's own token included."""
        return self.client.redact(text)

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """`GitHubClient.call` for an operation on this repository."""
        return self.client.call(what, fn, repo=self.full_name)


def _retry_after(value: str, now: float) -> float:
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - now)
        except (TypeError, ValueError):
            return 60.0


def error_message(exc: GithubException) -> str:
    """What GitHub said in an error answer, on one line and at most 300 characters (not yet redacted)."""
    data = exc.data
    if isinstance(data, dict):
        message = str(data.get("message") or "")
        errors = data.get("errors")
        if isinstance(errors, list):
            details = [
                str(e.get("message") or e.get("code") or "") if isinstance(e, dict) else str(e)
                for e in errors
            ]
            message = "; ".join(part for part in [message, *details] if part)
        if not message and "data" in data:
            message = re.sub(r"<[^>]+>", " ", str(data["data"]))
        return " ".join(message.split())[:300]
    return " ".join(str(data or exc.message or "").split())[:300]


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, GithubException):
        return f"HTTP {exc.status}: {error_message(exc)[:120]}"
    return type(exc).__name__ if exc is not None else "unknown"


def timestamp(value: datetime | None) -> float:
    """A datetime from GitHub as epoch seconds (a naive one is UTC; None is 0)."""
    if value is None:
        return 0.0
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()
