"""GitHub as the incident surface (issues, labels, comments, slash commands) and as the GitOps repository.

Both backends speak GitHub's REST API through PyGithub and mirror the local ones (tools/incidents.py,
tools/gitops.py), so the graph runs unchanged on either. What GitHub cannot give us (transactions, unique
indexes) is replaced by hidden markers and check-then-act operations:

- an incident issue carries its fingerprint in an HTML comment (`<!-- sregraph:fingerprint=... -->`);
  `open_issue` lists open issues labelled `incident` that the bot itself opened and joins the one with the
  same fingerprint, so a re-fired alert comments instead of opening a second issue;
- every comment sregraph posts carries an idempotency marker (`<!-- sregraph:key=... -->`, or a one-off
  nonce when the caller gives no key); a comment is posted only after checking none with that marker exists;
- a remediation branch is named after the proposal's key and the PR body carries the key, so `propose`
  finds the first PR instead of opening another.

Markers are trusted only on issues and comments written by the bot's own account, so a human cannot
pre-empt or forge them.

Retries: PyGithub's own transport retry is switched off (`retry=None`) because it would resend a POST
whose first attempt may already have landed (a 502 from GitHub's edge after the write, a read timeout).
Instead every operation here is check-then-act and is retried *as a whole* (tenacity) on 5xx, timeouts,
connection errors and rate limits: a retry re-reads before writing, so nothing is lost or doubled.
Rate limits are respected: `Retry-After` first, then `x-ratelimit-reset` when `x-ratelimit-remaining` is 0,
then GitHub's advice for secondary limits (wait a minute, growing exponentially); a wait longer than
`RetryPolicy.max_rate_wait_s` raises TransientError instead of stalling an incident. Sleeps go through the
injected Clock, so tests never wait on real time. Around those retries sits a circuit breaker
(tools/resilience.py, one per client): after `RetryPolicy.breaker_failures` operations in a row end in a
TransientError, operations fail fast with `CircuitOpenError` (a `ToolError`) until a trial one succeeds.

Every text posted (titles, bodies, comments, commit messages) goes through `tools.redact.redact`, which also
removes the token itself. The token comes from the environment (`GITHUB_TOKEN`) or a secrets file
(`GITHUB_TOKEN_FILE`), never from sregraph.yaml. See docs/github.md for scopes, webhooks and labels.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import logging
import math
import os
import random
import re
import threading
import urllib.parse
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal, Protocol, Self, TypeVar

import requests
from github import Auth, Github, GithubException, InputGitAuthor
from github.ContentFile import ContentFile
from github.GithubException import BadCredentialsException, RateLimitExceededException
from github.Issue import Issue as GHIssue
from github.IssueComment import IssueComment as GHComment
from github.PullRequest import PullRequest as GHPull
from github.Repository import Repository
from github.Requester import Requester
from pydantic import BaseModel
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from tools.base import (
    Change,
    Clock,
    Comment,
    ConfigError,
    Issue,
    NotFound,
    PullRequest,
    Refused,
    SregraphError,
    SystemClock,
    ToolError,
    TransientError,
)
from tools.breaker import CircuitBreaker
from tools.gitops import (
    MergeConflict,
    ProvenanceStore,
    commit_signature,
    git_blob_id,
    signature_valid,
    signing_key,
)
from tools.gitops_common import (
    BRANCH_PREFIX,
    CHANGE_KINDS,
    KIND_TRAILER,
    SERVICES_DIR,
    SERVICES_TRAILER,
    SIGNATURE_TRAILER,
    ChangeKind,
    commit_message,
    dump_config,
    parse_config,
    path_service,
    same_config,
    service_path,
    slug,
)
from tools.redact import redact_out
from tools.resilience import Resilience

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.github.com"
TOKEN_ENV = "GITHUB_TOKEN"
TOKEN_FILE_ENV = "GITHUB_TOKEN_FILE"
SREGRAPH_AUTHOR = "sregraph"
"""Author name given to comments the bot posted, as the local surface does (the librarian filters on it)."""
INCIDENT_LABEL = "incident"
STATUS_PREFIX = "status:"
WRITE_PERMISSIONS = frozenset({"admin", "maintain", "write"})
"""Repository permissions whose slash commands are honoured."""
COMMANDS = ("approve", "reject", "retry", "escalate", "ack")

# The label scheme (docs/github.md): created with these colours by `ensure_labels`, else GitHub creates
# missing labels in grey the first time they are applied.
LABELS: dict[str, tuple[str, str]] = {
    INCIDENT_LABEL: ("b60205", "An incident handled by sregraph"),
    "severity:sev1": ("b60205", "A service is down"),
    "severity:sev2": ("d93f0b", "Strong deviation from the baseline"),
    "severity:sev3": ("fbca04", "Deviation from the baseline"),
    "status:open": ("c5def5", "Incident opened"),
    "status:diagnosing": ("1d76db", "Analyst is ranking hypotheses"),
    "status:awaiting-approval": ("5319e7", "Waiting for /approve or /reject"),
    "status:remediating": ("0e8a16", "Actions running"),
    "status:verifying": ("0e8a16", "Watching for recovery"),
    "status:escalated": ("e99695", "Handed to a human"),
    "status:resolved": ("0e8a16", "Recovered and documented"),
}

_TITLE_MAX = 256
_BODY_MAX = 65_536
_ROLLBACK_LOOKBACK = 10
_MARK_RE = re.compile(r"\n*<!-- sregraph:(?P<name>[a-z-]+)=(?P<value>[^\s>]*) -->")
_FOOTER = "<!-- sregraph:footer -->"
_DETAILS = "<!-- sregraph:details -->"
_COMMAND_RE = re.compile(r"^/(?P<name>[A-Za-z]+)(?:[ \t]+(?P<args>.*))?$")
_FENCE_RE = re.compile(r"^\s*(```|~~~)")


# --------------------------------------------------------------------------- token and retry policy


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


class _Client:
    """One PyGithub client with the retry loop and the error translation both backends share."""

    def __init__(
        self,
        repo: str,
        token: str | None,
        base_url: str,
        timeout: float,
        *,
        clock: Clock | None,
        retry: RetryPolicy | None,
        per_page: int,
        seconds_between_requests: float | None,
        seconds_between_writes: float | None,
        environ: Mapping[str, str] | None,
        secrets_file: Path | str | None,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", repo or ""):
            raise ConfigError(f"repo: expected 'owner/name', got {repo!r}")
        if timeout <= 0:
            raise ConfigError(f"timeout: must be > 0 seconds, got {timeout}")
        self.full_name = repo
        self.owner = repo.split("/")[0]
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
        self._repo: Repository | None = None
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

    @property
    def repo(self) -> Repository:
        """The repository object (fetched on first use, inside a retried call)."""
        if self._repo is None:
            self._repo = self.gh.get_repo(self.full_name)
        return self._repo

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

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run `fn` (a whole check-then-act operation), retrying transient failures; errors as SregraphError.

        The breaker judges the operation once its retries are over; CircuitOpenError while it is open.
        """
        return self.resilience.call(lambda: self._call(what, fn))

    def _call(self, what: str, fn: Callable[[], T]) -> T:
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
            raise self.translate(exc, what) from exc

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
        message = _error_message(exc).lower()
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

    def translate(self, exc: BaseException, what: str) -> SregraphError:
        """A PyGithub or requests exception as the error kind sregraph understands."""
        if isinstance(exc, requests.Timeout):
            return TransientError(f"{what}: GitHub did not answer within {self.timeout}s")
        if isinstance(exc, requests.RequestException):
            return TransientError(f"{what}: cannot reach GitHub at {self.base_url}: {type(exc).__name__}")
        if not isinstance(exc, GithubException):
            return ToolError(f"{what}: {type(exc).__name__}: {exc}")
        message = self.redact(_error_message(exc))
        if isinstance(exc, BadCredentialsException) or exc.status == 401:
            return ConfigError(f"token: GitHub rejected the token for {self.full_name} ({message})")
        wait = self.rate_wait(exc, self.retry.attempts)
        if wait is not None:
            return TransientError(f"{what}: rate limited by GitHub ({message}); retry in {wait:.0f}s")
        if exc.status >= 500:
            return TransientError(f"{what}: GitHub answered {exc.status} ({message})")
        if exc.status == 404:
            return NotFound(f"{what}: not found in {self.full_name} (or the token cannot see it)")
        if exc.status == 403:
            return Refused(
                f"{what}: GitHub refused ({message}); the token needs Issues, Pull requests and Contents "
                f"read/write on {self.full_name}"
            )
        return ToolError(f"{what}: GitHub answered {exc.status}: {message}")


def _retry_after(value: str, now: float) -> float:
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - now)
        except (TypeError, ValueError):
            return 60.0


def _error_message(exc: GithubException) -> str:
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
        return f"HTTP {exc.status}: {_error_message(exc)[:120]}"
    return type(exc).__name__ if exc is not None else "unknown"


# --------------------------------------------------------------------------- markers


def _mark(name: str, value: str) -> str:
    return f"<!-- sregraph:{name}={urllib.parse.quote(value, safe='')} -->"


def _marks(text: str | None) -> dict[str, str]:
    return {m["name"]: urllib.parse.unquote(m["value"]) for m in _MARK_RE.finditer(text or "")}


def _strip_marks(text: str | None) -> str:
    return _MARK_RE.sub("", text or "").rstrip()


def _fit(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    note = "\n\n… (truncated by sregraph: GitHub limits the length of this text)"
    return text[: max(0, limit - len(note))] + note


def _ts(value: datetime | None) -> float:
    if value is None:
        return 0.0
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _is_pull(gi: GHIssue) -> bool:
    # `pull_request` is absent (not null) on plain issues, and PyGithub completes the object with an extra
    # GET when asked for an absent attribute; the html_url of a PR always ends in /pull/<n>.
    return "/pull/" in (gi.html_url or "")


# --------------------------------------------------------------------------- commands


class Command(BaseModel):
    """A slash command a human wrote in an incident comment."""

    name: Literal["approve", "reject", "retry", "escalate", "ack"]
    args: str = ""
    """The rest of the line: a reason, for instance."""
    author: str
    issue_id: int
    comment_id: int
    created_at: float = 0.0


def parse_commands(issue: Issue) -> list[Command]:
    """Slash commands in the issue's human comments, oldest first: the first command line of each comment.

    A command is a line that starts with `/approve`, `/reject`, `/retry`, `/escalate` or `/ack`; quoted lines
    (`> /approve`) and fenced code blocks do not count, nor do sregraph's own comments. This only reads
    the text: whether the author may command anything is `GitHubIncidentSurface.commands`'s business.
    """
    found: list[Command] = []
    for comment in issue.comments:
        if comment.author == SREGRAPH_AUTHOR:
            continue
        parsed = _first_command(comment.body)
        if parsed is not None:
            name, args = parsed
            found.append(
                Command(
                    name=name,
                    args=args,
                    author=comment.author,
                    issue_id=issue.id,
                    comment_id=comment.id,
                    created_at=comment.created_at,
                )
            )
    return found


def _first_command(body: str) -> tuple[str, str] | None:
    fenced = False
    for line in body.splitlines():
        if _FENCE_RE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        match = _COMMAND_RE.match(line.strip())
        if match and match["name"].lower() in COMMANDS:
            return match["name"].lower(), (match["args"] or "").strip()
    return None


# --------------------------------------------------------------------------- webhooks


def verify_signature(secret: str | bytes, body: bytes, header: str | None) -> bool:
    """Whether `header` (X-Hub-Signature-256) is the HMAC-SHA256 of `body` under `secret`; constant time."""
    if not secret or not header:
        return False
    key = secret.encode() if isinstance(secret, str) else secret
    expected = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header.strip().encode())


class WebhookEvent(BaseModel):
    """One verified webhook delivery."""

    event: str
    delivery: str
    action: str = ""
    payload: dict[str, Any]


def parse_webhook(secret: str | bytes, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
    """A delivery whose signature checks out; Refused for a bad or missing signature, ToolError for bad JSON."""
    lower = {k.lower(): v for k, v in headers.items()}
    if not verify_signature(secret, body, lower.get("x-hub-signature-256")):
        raise Refused("webhook: missing or bad X-Hub-Signature-256; delivery rejected")
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise ToolError(f"webhook: body is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ToolError("webhook: body is not a JSON object")
    return WebhookEvent(
        event=lower.get("x-github-event", ""),
        delivery=lower.get("x-github-delivery", ""),
        action=str(payload.get("action", "")),
        payload=payload,
    )


@dataclass
class WebhookResult:
    """What a webhook delivery led to: the HTTP status to answer GitHub with, and honoured commands."""

    status: int
    reason: str
    commands: list[Command]


class WebhookCommands(Protocol):
    """What a `WebhookReceiver` asks of its surface (a `GitHubIncidentSurface`, or a proxy around one)."""

    def commands_from_webhook(self, payload: Mapping[str, Any]) -> list[Command]:
        """Honoured commands in the comment of a verified delivery."""
        ...


class WebhookReceiver:
    """Turns GitHub webhook deliveries (issue_comment, issues) into honoured commands; mount it in any server."""

    def __init__(self, surface: WebhookCommands, secret: str | bytes, *, remember: int = 1000) -> None:
        """Verify deliveries with `secret` (the webhook's secret); remember recent delivery ids to drop repeats."""
        if not secret:
            raise ConfigError("webhook secret: must not be empty; unsigned deliveries are never accepted")
        self.surface = surface
        self._secret = secret
        self._seen: deque[str] = deque(maxlen=remember)

    def handle(self, headers: Mapping[str, str], body: bytes) -> WebhookResult:
        """401 for a bad signature, 400 for a bad body, 200 for nothing to do, 202 with commands."""
        try:
            event = parse_webhook(self._secret, headers, body)
        except Refused as exc:
            logger.warning("%s", exc)
            return WebhookResult(401, str(exc), [])
        except ToolError as exc:
            return WebhookResult(400, str(exc), [])
        if event.delivery and event.delivery in self._seen:
            return WebhookResult(200, f"delivery {event.delivery} already handled", [])
        if event.delivery:
            self._seen.append(event.delivery)
        if event.event == "ping":
            return WebhookResult(200, "pong", [])
        if event.event != "issue_comment" or event.action != "created":
            return WebhookResult(200, f"{event.event}/{event.action}: nothing to do", [])
        commands = self.surface.commands_from_webhook(event.payload)
        return WebhookResult(202 if commands else 200, f"{len(commands)} command(s) honoured", commands)


# --------------------------------------------------------------------------- incident surface


class GitHubIncidentSurface:
    """IncidentSurface on GitHub issues: one issue per incident, labels for severity/service/status."""

    def __init__(
        self,
        repo: str,
        token: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 10,
        *,
        bot_login: str | None = None,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        per_page: int = 100,
        incident_label: str = INCIDENT_LABEL,
        seconds_between_requests: float | None = 0.25,
        seconds_between_writes: float | None = 1.0,
        environ: Mapping[str, str] | None = None,
        secrets_file: Path | str | None = None,
    ) -> None:
        """Talk to `repo` ("owner/name"); the token from the caller, $GITHUB_TOKEN or $GITHUB_TOKEN_FILE.

        `bot_login` is the account the token acts as; asked from GET /user when not given (a GitHub App
        installation token cannot, so give "<app>[bot]" then). The pauses between requests and between
        writes are GitHub's advice against secondary rate limits; tests set them to 0.
        """
        self._c = _Client(
            repo,
            token,
            base_url,
            timeout,
            clock=clock,
            retry=retry,
            per_page=per_page,
            seconds_between_requests=seconds_between_requests,
            seconds_between_writes=seconds_between_writes,
            environ=environ,
            secrets_file=secrets_file,
        )
        self.repo_name = repo
        self.incident_label = incident_label
        self._bot_login = bot_login
        self._lock = threading.RLock()
        self._keys: dict[tuple[int, str], Comment] = {}
        self._poll_etag: str | None = None
        self._poll_since: str | None = None
        self._poll_seen: deque[int] = deque(maxlen=5000)

    def disconnect(self) -> None:
        """Close the HTTP connections (`close` is the IncidentSurface method that closes an issue)."""
        self._c.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    @property
    def bot_login(self) -> str:
        """The login of the account the token acts as."""
        if self._bot_login is None:
            self._bot_login = self._c.call(
                "identify the token's account", lambda: self._c.gh.get_user().login
            )
        return self._bot_login

    # ------------------------------------------------------------------ IncidentSurface

    def open_issue(self, title: str, body: str, labels: list[str], fingerprint: str) -> tuple[Issue, bool]:
        """Open an issue, or return the open one with this fingerprint; the bool says whether it is new."""
        if not fingerprint:
            raise ConfigError("fingerprint: must not be empty")
        # The nonce tells a retried attempt that the issue it finds is the one its lost POST created.
        nonce = uuid.uuid4().hex
        with self._lock:
            return self._c.call(
                "open an incident issue", lambda: self._open(title, body, labels, fingerprint, nonce)
            )

    def find_open(self, fingerprint: str) -> Issue | None:
        """The open issue with this fingerprint, if any."""

        def run() -> Issue | None:
            found = self._find(fingerprint)
            return self._issue(found[0], self._comments(found[0])) if found else None

        return self._c.call("find an open incident issue", run)

    def get(self, issue_id: int) -> Issue:
        """One issue with its labels and comments; NotFound if missing or a pull request."""
        return self._c.call(f"read issue #{issue_id}", lambda: self._load(issue_id))

    def list_issues(
        self, state: Literal["open", "closed", "all"] = "open", *, with_comments: bool = False
    ) -> list[Issue]:
        """Incident issues in a state, newest first; comments only on request (one more request per issue)."""
        if state not in ("open", "closed", "all"):
            raise ConfigError(f"state: expected open, closed or all, got {state!r}")

        def run() -> list[Issue]:
            issues = self._c.repo.get_issues(
                state=state, labels=[self.incident_label], sort="created", direction="desc"
            )
            return [
                self._issue(gi, self._comments(gi) if with_comments else [])
                for gi in issues
                if not _is_pull(gi)
            ]

        return self._c.call(f"list {state} incident issues", run)

    def comment(self, issue_id: int, body: str, key: str | None = None) -> Comment:
        """Add a comment; a repeated `key` on the same issue returns the first comment instead."""
        # Without a key, a nonce chosen once makes the retries of this one call idempotent.
        marker = ("key", key) if key is not None else ("nonce", uuid.uuid4().hex)
        with self._lock:
            return self._c.call(
                f"comment on issue #{issue_id}", lambda: self._comment(issue_id, body, marker)
            )

    def set_labels(self, issue_id: int, add: list[str], remove: list[str] | None = None) -> Issue:
        """Remove then add labels, one label at a time, so labels a human set meanwhile are kept."""
        with self._lock:
            return self._c.call(
                f"label issue #{issue_id}", lambda: self._set_labels(issue_id, add, remove or [])
            )

    def close(self, issue_id: int) -> Issue:
        """Close the issue as completed; closing a closed issue changes nothing."""

        def run() -> Issue:
            gi = self._gh_issue(issue_id)
            if gi.state != "closed":
                gi.edit(state="closed", state_reason="completed")
            return self._load(issue_id)

        with self._lock:
            return self._c.call(f"close issue #{issue_id}", run)

    # ------------------------------------------------------------------ extras (as the local surface)

    def reopen(self, issue_id: int) -> Issue:
        """Reopen a closed issue; Refused if another issue with its fingerprint is already open."""

        def run() -> Issue:
            gi = self._gh_issue(issue_id)
            if gi.state == "open":
                return self._load(issue_id)
            fingerprint = self._fingerprint(gi)
            others = [o for o in self._find(fingerprint) if o.number != issue_id] if fingerprint else []
            if others:
                raise Refused(
                    f"cannot reopen issue #{issue_id}: issue #{others[0].number} with fingerprint "
                    f"{fingerprint!r} is open"
                )
            gi.edit(state="open")
            return self._load(issue_id)

        with self._lock:
            return self._c.call(f"reopen issue #{issue_id}", run)

    def set_status(self, issue_id: int, status: str) -> Issue:
        """Make `status:<status>` the issue's only status label."""
        name = status if status.startswith(STATUS_PREFIX) else STATUS_PREFIX + status
        if name == STATUS_PREFIX:
            raise ConfigError("status: must not be empty")

        def run() -> Issue:
            gi = self._gh_issue(issue_id)
            stale = [
                label.name
                for label in gi.labels
                if label.name.startswith(STATUS_PREFIX) and label.name != name
            ]
            return self._set_labels(issue_id, [name], stale)

        with self._lock:
            return self._c.call(f"set the status of issue #{issue_id}", run)

    def status(self, issue_id: int) -> str | None:
        """The issue's status (without the `status:` prefix), if it has one."""
        statuses = [label for label in self.get(issue_id).labels if label.startswith(STATUS_PREFIX)]
        return statuses[0][len(STATUS_PREFIX) :] if statuses else None

    def comments_since(self, issue_id: int, after_id: int = 0) -> list[Comment]:
        """Comments on the issue whose id is greater than `after_id`, oldest first."""
        return [c for c in self.get(issue_id).comments if c.id > after_id]

    def ensure_labels(self) -> list[str]:
        """Create the label scheme's labels with colours and descriptions; returns those created."""

        def run() -> list[str]:
            existing = {label.name for label in self._c.repo.get_labels()}
            created = []
            for name, (color, description) in LABELS.items():
                if name not in existing:
                    try:
                        self._c.repo.create_label(name, color, description)
                    except GithubException as exc:
                        if exc.status != 422:  # already exists: created meanwhile (or by a retried attempt)
                            raise
                    created.append(name)
            return created

        with self._lock:
            return self._c.call("create the incident labels", run)

    # ------------------------------------------------------------------ commands

    def commands(self, issue_id: int, after_id: int = 0) -> list[Command]:
        """Honoured slash commands in comments newer than `after_id`; others get a reply saying why."""
        issue = self.get(issue_id)
        return self._authorize(issue_id, [c for c in parse_commands(issue) if c.comment_id > after_id])

    def permission(self, login: str) -> str:
        """`login`'s permission on the repository: admin, write (also for maintain), read or none."""

        def run() -> str:
            try:
                return str(self._c.repo.get_collaborator_permission(login))
            except GithubException as exc:
                if exc.status == 404:  # not a user GitHub knows, or not visible to the token
                    return "none"
                raise

        return self._c.call(f"read {login}'s permission", run)

    def poll_commands(self) -> list[Command]:
        """Honoured commands in comments written since the last poll (for when no webhook is configured).

        One conditional request (If-None-Match) on the repository's comment feed: while nothing changed,
        GitHub answers 304, which does not count against the rate limit.
        """
        with self._lock:
            issues, remember = self._c.call("poll issue comments", self._poll)
            commands: list[Command] = []
            for issue in issues:
                commands += self._authorize(issue.id, parse_commands(issue))
            remember()
            return commands

    def commands_from_webhook(self, payload: Mapping[str, Any]) -> list[Command]:
        """Honoured commands in the comment of an `issue_comment` delivery (already verified)."""
        issue, raw = payload.get("issue") or {}, payload.get("comment") or {}
        labels = {str(label.get("name")) for label in issue.get("labels") or [] if isinstance(label, dict)}
        if "pull_request" in issue or self.incident_label not in labels or not raw:
            return []
        login = str((raw.get("user") or {}).get("login", "ghost"))
        body = str(raw.get("body") or "")
        ours = login == self.bot_login and bool(_marks(body))
        comment = Comment(
            id=int(raw["id"]),
            author=SREGRAPH_AUTHOR if ours else login,
            body=_strip_marks(body),
            created_at=_ts(_parse_time(str(raw.get("created_at") or ""))),
        )
        stub = Issue(id=int(issue["number"]), title=str(issue.get("title", "")), body="", comments=[comment])
        with self._lock:
            return self._authorize(stub.id, parse_commands(stub))

    # ------------------------------------------------------------------ internals (run inside _c.call)

    def _open(
        self, title: str, body: str, labels: list[str], fingerprint: str, nonce: str
    ) -> tuple[Issue, bool]:
        existing = self._find(fingerprint)
        if existing:
            mine = _marks(existing[0].body).get("nonce") == nonce
            return self._issue(existing[0], [] if mine else self._comments(existing[0])), mine
        names = list(dict.fromkeys([self.incident_label, *[name for name in labels if name]]))
        gi = self._c.repo.create_issue(
            title=_fit(self._c.redact(title), _TITLE_MAX),
            body=self._issue_body(body, fingerprint, nonce),
            labels=names,
        )
        # No unique index on GitHub: if another writer opened the same fingerprint at the same moment, the
        # oldest issue wins and ours is closed as its duplicate, so both writers converge on one issue.
        found = self._find(fingerprint)
        oldest = found[0] if found else gi
        if oldest.number != gi.number:
            gi.create_comment(
                f"Duplicate of #{oldest.number} (same alert fingerprint).\n\n" + _mark("key", "duplicate")
            )
            gi.edit(state="closed", state_reason="not_planned")
            return self._issue(oldest, self._comments(oldest)), False
        return self._issue(gi, []), True

    def _issue_body(self, body: str, fingerprint: str, nonce: str) -> str:
        footer = (
            f"\n\n{_FOOTER}\n---\n<sub>Managed by sregraph · fingerprint <code>{html.escape(fingerprint)}</code> · "
            "a re-fired alert with this fingerprint comments here instead of opening another issue · "
            f"commands: {' '.join('`/' + c + '`' for c in COMMANDS)} (write access needed)</sub>\n"
            + _mark("fingerprint", fingerprint)
            + _mark("nonce", nonce)
        )
        return _fit(self._c.redact(body), _BODY_MAX - len(footer)) + footer

    def _find(self, fingerprint: str) -> list[GHIssue]:
        """Open incident issues the bot opened with this fingerprint, oldest first."""
        bot = self.bot_login
        issues = self._c.repo.get_issues(
            state="open", labels=[self.incident_label], sort="created", direction="asc"
        )
        return [
            gi
            for gi in issues
            if not _is_pull(gi)
            and gi.user is not None
            and gi.user.login == bot
            and _marks(gi.body).get("fingerprint") == fingerprint
        ]

    def _fingerprint(self, gi: GHIssue) -> str | None:
        if gi.user is None or gi.user.login != self.bot_login:
            return None
        return _marks(gi.body).get("fingerprint")

    def _gh_issue(self, issue_id: int, *, allow_pull: bool = False) -> GHIssue:
        gi = self._c.repo.get_issue(int(issue_id))
        if _is_pull(gi) and not allow_pull:
            raise NotFound(f"#{issue_id} in {self.repo_name} is a pull request, not an incident issue")
        return gi

    def _load(self, issue_id: int) -> Issue:
        gi = self._gh_issue(issue_id)
        return self._issue(gi, self._comments(gi))

    def _comments(self, gi: GHIssue) -> list[Comment]:
        return [self._to_comment(c) for c in gi.get_comments()]

    def _to_comment(self, gc: GHComment) -> Comment:
        login = gc.user.login if gc.user is not None else "ghost"
        ours = login == self.bot_login and bool(_marks(gc.body))
        return Comment(
            id=gc.id,
            author=SREGRAPH_AUTHOR if ours else login,
            body=_strip_marks(gc.body),
            created_at=_ts(gc.created_at),
        )

    def _issue(self, gi: GHIssue, comments: list[Comment]) -> Issue:
        raw = gi.body or ""
        body = raw.split(_FOOTER)[0].rstrip() if _FOOTER in raw else _strip_marks(raw)
        return Issue(
            id=gi.number,
            title=gi.title,
            body=body,
            state="closed" if gi.state == "closed" else "open",
            labels=[label.name for label in gi.labels],
            fingerprint=self._fingerprint(gi),
            url=gi.html_url or "",
            comments=comments,
            created_at=_ts(gi.created_at),
        )

    def _comment(self, issue_id: int, body: str, marker: tuple[str, str]) -> Comment:
        name, value = marker
        cached = self._keys.get((issue_id, f"{name}={value}"))
        if cached is not None:
            return cached
        gi = self._gh_issue(issue_id)
        bot = self.bot_login
        same = [
            gc
            for gc in gi.get_comments()
            if gc.user is not None and gc.user.login == bot and _marks(gc.body).get(name) == value
        ]
        if same:
            # More than one can exist only if a request that timed out landed after its retry had checked;
            # the oldest stays, later copies go, so the issue converges on one comment per key.
            for extra in same[1:]:
                try:
                    extra.delete()
                except GithubException as exc:
                    if exc.status != 404:
                        raise
            found = self._to_comment(same[0])
            self._remember(issue_id, f"{name}={value}", found)
            return found
        mark = _mark(name, value)
        text = _fit(self._c.redact(body), _BODY_MAX - len(mark) - 2) + "\n\n" + mark
        posted = self._to_comment(gi.create_comment(text))
        if name == "key":
            self._remember(issue_id, f"{name}={value}", posted)
        return posted

    def _remember(self, issue_id: int, marker: str, comment: Comment) -> None:
        # Saves listing the comments again when a node re-runs in this process; bounded for a long-lived worker.
        if len(self._keys) >= 10_000:
            del self._keys[next(iter(self._keys))]
        self._keys[(issue_id, marker)] = comment

    def _set_labels(self, issue_id: int, add: list[str], remove: list[str]) -> Issue:
        gi = self._gh_issue(issue_id)
        current = [label.name for label in gi.labels]
        wanted = [name for name in dict.fromkeys(add) if name]
        for name in remove:
            if name in current and name not in wanted:
                try:
                    gi.remove_from_labels(name)
                except GithubException as exc:
                    if exc.status != 404:  # already gone (a retried attempt, or a human was quicker)
                        raise
        missing = [name for name in wanted if name not in current]
        if missing:
            gi.add_to_labels(*missing)
        return self._load(issue_id)

    def _authorize(self, issue_id: int, commands: list[Command]) -> list[Command]:
        honoured: list[Command] = []
        permissions: dict[str, str] = {}
        for command in commands:
            if command.author not in permissions:
                permissions[command.author] = self.permission(command.author)
            permission = permissions[command.author]
            if permission in WRITE_PERMISSIONS:
                honoured.append(command)
                continue
            logger.info(
                "ignored /%s from %s on #%d (permission %s)",
                command.name,
                command.author,
                issue_id,
                permission,
            )
            self.comment(
                issue_id,
                f"@{command.author} `/{command.name}` was ignored: sregraph honours commands only from people with "
                f"write, maintain or admin permission on `{self.repo_name}`, and yours is `{permission}`.",
                key=f"command-refused/{command.comment_id}",
            )
        return honoured

    def _poll(self) -> tuple[list[Issue], Callable[[], None]]:
        """Incident issues with only the comments written since the last poll, and how to remember them.

        The poll position (ETag, `since`, ids seen) moves only when the caller calls the returned function,
        after it has handled the commands: a failure on the way asks again instead of losing a command.
        """
        requester = self._c.requester
        url = f"{self._c.repo.url}/issues/comments"
        params: dict[str, Any] = {"sort": "updated", "direction": "asc", "per_page": requester.per_page}
        if self._poll_since:
            params["since"] = self._poll_since
        headers = {"If-None-Match": self._poll_etag} if self._poll_etag else None
        status, response_headers, body = requester.requestJson("GET", url, parameters=params, headers=headers)
        if status == 304:
            return [], lambda: None
        data = json.loads(body) if body else None
        if status >= 400:
            raise Requester.createException(status, response_headers, data if isinstance(data, dict) else {})
        items: list[dict[str, Any]] = list(data or [])
        next_url = _next_link(response_headers)
        while next_url:
            page_headers, page = requester.requestJsonAndCheck("GET", next_url)
            items += page or []
            next_url = _next_link(page_headers)
        fresh: dict[int, list[Comment]] = {}
        bot = self.bot_login
        since = self._poll_since or ""
        seen = set(self._poll_seen)
        new_ids: list[int] = []
        for raw in items:
            cid = int(raw["id"])
            # `since` compares update times, inclusively: the newest comment comes back once more; ids dedupe.
            since = max(since, str(raw.get("updated_at") or ""))
            if cid in seen:
                continue
            seen.add(cid)
            new_ids.append(cid)
            match = re.search(r"/issues/(\d+)$", str(raw.get("issue_url", "")))
            if not match:
                continue
            login = str((raw.get("user") or {}).get("login", "ghost"))
            text = str(raw.get("body") or "")
            ours = login == bot and bool(_marks(text))
            created = _ts(_parse_time(str(raw.get("created_at") or "")))
            fresh.setdefault(int(match[1]), []).append(
                Comment(
                    id=cid,
                    author=SREGRAPH_AUTHOR if ours else login,
                    body=_strip_marks(text),
                    created_at=created,
                )
            )
        incidents = []
        for number, comments in fresh.items():
            gi = self._gh_issue(number, allow_pull=True)
            if not _is_pull(gi) and self.incident_label in {label.name for label in gi.labels}:
                incidents.append(self._issue(gi, comments))
        etag = response_headers.get("etag")

        def remember() -> None:
            self._poll_etag, self._poll_since = etag, since or None
            self._poll_seen.extend(new_ids)

        return incidents, remember


def _next_link(headers: Mapping[str, Any]) -> str | None:
    for part in str(headers.get("link") or "").split(","):
        match = re.search(r'<([^>]+)>\s*;\s*rel="next"', part)
        if match:
            return match[1]
    return None


def _parse_time(text: str) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)  # GitHub's "2024-01-02T03:04:05Z" (the Z needs Python >= 3.11)
    except ValueError:
        return None


# --------------------------------------------------------------------------- GitOps


class GitHubGitOps:
    """GitOps on a GitHub repository: services/<service>.yaml on the deploy branch is what runs."""

    def __init__(
        self,
        repo: str,
        token: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        deploy_branch: str = "main",
        timeout: float = 10,
        *,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        per_page: int = 100,
        allow_merge: bool = True,
        incident_repo: str | None = None,
        committer: tuple[str, str] = ("sregraph", "sregraph@users.noreply.github.com"),
        max_history: int = 100,
        seconds_between_requests: float | None = 0.25,
        seconds_between_writes: float | None = 1.0,
        environ: Mapping[str, str] | None = None,
        secrets_file: Path | str | None = None,
        key: bytes | None = None,
        provenance: ProvenanceStore | None = None,
    ) -> None:
        """Work on `repo`'s `deploy_branch` through the git data and contents APIs.

        `key` signs sregraph's commits (default: $SREGRAPH_SIGNING_KEY, else a key for this process only);
        `provenance` is its ledger of own commits and PR pins (default: in memory, this process only).

        `allow_merge=False` makes `merge` refuse, leaving every merge to a human whatever the caller's policy
        says; `incident_repo` ("owner/name") is where incident issues live when that is another repository,
        so PR bodies link them across repositories.
        """
        self._c = _Client(
            repo,
            token,
            base_url,
            timeout,
            clock=clock,
            retry=retry,
            per_page=per_page,
            seconds_between_requests=seconds_between_requests,
            seconds_between_writes=seconds_between_writes,
            environ=environ,
            secrets_file=secrets_file,
        )
        if not deploy_branch or deploy_branch.startswith(BRANCH_PREFIX):
            raise ConfigError(f"deploy_branch: {deploy_branch!r} is not a usable deploy branch")
        self.repo_name = repo
        self.deploy_branch = deploy_branch
        self.allow_merge = allow_merge
        self.incident_repo = incident_repo
        self.committer = committer
        self.max_history = max_history
        self.clock = self._c.clock
        self._lock = threading.RLock()
        self._key = key if key is not None else signing_key(None, environ)
        self.provenance = provenance if provenance is not None else ProvenanceStore()

    def disconnect(self) -> None:
        """Close the HTTP connections."""
        self._c.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    # ------------------------------------------------------------------ read side

    def config(self, service: str) -> dict[str, Any]:
        """The service's config at the tip of the deploy branch; NotFound if it has none."""
        path = service_path(service)

        def run() -> dict[str, Any]:
            found = self._read(path, self.deploy_branch)
            if found is None:
                raise NotFound(
                    f"service {service!r} has no config ({path} is missing on {self.deploy_branch})"
                )
            return parse_config(found.decoded_content, f"{self.deploy_branch}:{path}")

        return self._c.call(f"read {path}", run)

    def services(self) -> list[str]:
        """Names of the services with a config on the deploy branch."""

        def run() -> list[str]:
            try:
                entries = self._c.repo.get_contents(SERVICES_DIR, ref=self.deploy_branch)
            except GithubException as exc:
                if exc.status == 404:
                    return []
                raise
            items = entries if isinstance(entries, list) else [entries]
            return sorted(
                e.name[: -len(".yaml")] for e in items if e.type == "file" and e.name.endswith(".yaml")
            )

        return self._c.call(f"list {SERVICES_DIR}/", run)

    def history(
        self, since: float | None = None, service: str | None = None, limit: int | None = None
    ) -> list[Change]:
        """Commits on the deploy branch, newest first, optionally since a time and touching a service."""
        path = service_path(service) if service is not None else None

        def run() -> list[Change]:
            kwargs: dict[str, Any] = {"sha": self.deploy_branch}
            if since is not None:
                kwargs["since"] = datetime.fromtimestamp(math.floor(since), UTC)
            if path is not None:
                kwargs["path"] = path
            cap = min(limit if limit is not None else self.max_history, self.max_history)
            changes: list[Change] = []
            for commit in self._c.repo.get_commits(**kwargs):
                if len(changes) >= cap:
                    break
                change = self._change(commit)
                if since is None or change.at >= since:
                    changes.append(change)
            return [c for c in changes if service is None or service in c.services]

        return self._c.call(f"read the history of {self.deploy_branch}", run)

    def rollback_config(self, service: str, before: float | str | None = None) -> dict[str, Any]:
        """The service's config just before a change: a sha, a time, or (default) its newest change."""
        path = service_path(service)

        def run() -> dict[str, Any]:
            repo = self._c.repo
            if isinstance(before, str):
                try:
                    commit = repo.get_commit(before)
                except GithubException as exc:
                    if exc.status in (404, 422):
                        raise NotFound(f"no commit {before!r} in {self.repo_name}") from exc
                    raise
                if not commit.parents:
                    raise NotFound(f"commit {before[:12]} has no parent to roll back to")
                ref, what = commit.parents[0].sha, f"before {commit.sha[:12]}"
            elif before is None:
                latest = next(iter(repo.get_commits(sha=self.deploy_branch, path=path)), None)
                if latest is None or not latest.parents:
                    raise NotFound(f"service {service!r} has no change on {self.deploy_branch} to roll back")
                ref, what = latest.parents[0].sha, f"before its newest change {latest.sha[:12]}"
            else:
                until = datetime.fromtimestamp(math.ceil(before), UTC)
                earlier = next(
                    (
                        c
                        for c in repo.get_commits(sha=self.deploy_branch, until=until)
                        if self._at(c) < before
                    ),
                    None,
                )
                if earlier is None:
                    raise NotFound(f"{self.deploy_branch} has no commit before t={before}")
                ref, what = earlier.sha, f"at t<{before} ({earlier.sha[:12]})"
            found = self._read(path, ref)
            if found is None:
                raise NotFound(f"service {service!r} had no config {what}")
            return parse_config(found.decoded_content, f"{ref}:{path}")

        return self._c.call(f"read the earlier config of {service}", run)

    def pull_requests(self, state: Literal["open", "merged", "closed", "all"] = "all") -> list[PullRequest]:
        """sregraph's pull requests against the deploy branch in a state, newest first."""
        if state not in ("open", "merged", "closed", "all"):
            raise ConfigError(f"state: expected open, merged, closed or all, got {state!r}")
        return self._c.call(f"list {state} pull requests", lambda: self._list_prs(state))

    def get_pr(self, pr_id: int) -> PullRequest:
        """One pull request; NotFound if missing."""
        return self._c.call(f"read PR #{pr_id}", lambda: self._pr(self._c.repo.get_pull(int(pr_id))))

    # ------------------------------------------------------------------ write side

    def commit_config(
        self,
        service: str,
        new_config: Mapping[str, Any],
        message: str,
        kind: ChangeKind = "deploy",
        author: str = "operator",
    ) -> Change:
        """Commit a service's config straight to the deploy branch, as a human or CI deploy would."""
        path = service_path(service)
        if kind not in CHANGE_KINDS:
            raise ConfigError(f"kind: expected one of {', '.join(CHANGE_KINDS)}, got {kind!r}")
        content = dump_config(new_config, "new_config")
        subject, _, rest = message.strip().partition("\n")
        text = self._c.redact(commit_message(subject, rest, kind, [service]))

        def run() -> Change:
            current = self._read(path, self.deploy_branch)
            if current is not None and same_config(current.decoded_content, new_config):
                raise Refused(
                    f"config for {service!r} is identical to {self.deploy_branch}; nothing to commit"
                )
            who = InputGitAuthor(author, f"{slug(author)}@sregraph.local", self._stamp())
            if current is None:
                result = self._c.repo.create_file(
                    path, text, content, branch=self.deploy_branch, author=who, committer=who
                )
            else:
                result = self._c.repo.update_file(
                    path, text, content, current.sha, branch=self.deploy_branch, author=who, committer=who
                )
            return self._change(self._c.repo.get_commit(result["commit"].sha))

        with self._lock:
            return self._c.call(f"commit {path}", run)

    def propose(
        self,
        service: str,
        new_config: Mapping[str, Any],
        title: str,
        body: str,
        key: str | None = None,
        *,
        kind: ChangeKind | None = None,
        issue: int | None = None,
    ) -> PullRequest:
        """Branch + commit + pull request setting the service's config; a repeated key returns the first PR."""
        path = service_path(service)
        content = dump_config(new_config, "new_config")
        if kind is not None and kind not in CHANGE_KINDS:
            raise ConfigError(f"kind: expected one of {', '.join(CHANGE_KINDS)}, got {kind!r}")
        with self._lock:
            return self._c.call(
                f"propose a change to {path}",
                lambda: self._propose(
                    service, path, dict(new_config), content, title, body, key, kind, issue
                ),
            )

    def merge(self, pr_id: int) -> PullRequest:
        """Squash-merge a PR onto the deploy branch; the caller has checked policy. A merged PR is returned as is."""
        with self._lock:
            return self._c.call(f"merge PR #{pr_id}", lambda: self._merge(pr_id))

    def close_pr(self, pr_id: int) -> PullRequest:
        """Close an open pull request and delete its branch; Refused for a merged one."""

        def run() -> PullRequest:
            pull = self._c.repo.get_pull(int(pr_id))
            if pull.merged_at is not None:
                raise Refused(f"PR #{pr_id} is already merged; propose a rollback instead")
            if pull.state == "open":
                pull.edit(state="closed")
            self._delete_branch(pull.head.ref)
            return self._pr(self._c.repo.get_pull(int(pr_id)))

        with self._lock:
            return self._c.call(f"close PR #{pr_id}", run)

    def prune_branches(self, keep: int) -> list[str]:
        """Keep at most `keep` remediation branches: those of the newest open PRs; return the deleted ones.

        Branches of merged and closed PRs, and stray sregraph/ branches without a PR, are deleted; open PRs
        beyond the `keep` newest are closed first (as the local backend does). GitHub keeps the PRs and
        their commits, so a deleted branch can be restored from the PR page.
        """
        if keep < 0:
            raise ConfigError(f"keep: must be >= 0, got {keep}")

        def run() -> list[str]:
            refs = self._c.repo.get_git_matching_refs(f"heads/{BRANCH_PREFIX}")
            branches = [ref.ref.removeprefix("refs/heads/") for ref in refs]
            open_prs = self._list_prs("open")
            kept = {pr.branch for pr in open_prs[:keep]}
            for pr in open_prs[keep:]:
                self._c.repo.get_pull(pr.id).edit(state="closed")
            deleted = []
            for branch in branches:
                if branch not in kept:
                    self._delete_branch(branch)
                    deleted.append(branch)
            return deleted

        with self._lock:
            return self._c.call("prune remediation branches", run)

    # ------------------------------------------------------------------ internals (run inside _c.call)

    def _list_prs(self, state: Literal["open", "merged", "closed", "all"]) -> list[PullRequest]:
        gh_state = {"open": "open", "merged": "closed", "closed": "closed", "all": "all"}[state]
        pulls = self._c.repo.get_pulls(
            state=gh_state, base=self.deploy_branch, sort="created", direction="desc"
        )
        found = [self._pr(p) for p in pulls if p.head.ref.startswith(BRANCH_PREFIX)]
        return sorted((p for p in found if state == "all" or p.state == state), key=lambda p: -p.id)

    def _propose(
        self,
        service: str,
        path: str,
        new_config: dict[str, Any],
        content: bytes,
        title: str,
        body: str,
        key: str | None,
        kind: ChangeKind | None,
        issue: int | None,
    ) -> PullRequest:
        repo = self._c.repo
        if key is not None:
            branch = _branch_for(key)
            existing = self._pr_on(branch)
            if existing is not None:
                return existing
        main = repo.get_git_ref(f"heads/{self.deploy_branch}").object.sha
        current = self._read(path, main)
        if current is None:
            raise NotFound(f"service {service!r} has no config ({path} is missing on {self.deploy_branch})")
        if same_config(current.decoded_content, new_config):
            raise Refused(
                f"proposed config for {service!r} is identical to {self.deploy_branch}; nothing to propose"
            )
        if key is None:
            # Deterministic, so a retried attempt of this call finds the branch and PR it already made.
            digest = hashlib.sha1(main.encode() + content + title.encode()).hexdigest()[:8]
            branch = f"{BRANCH_PREFIX}{slug(title)[:40]}-{digest}"
            existing = self._pr_on(branch)
            if existing is not None:
                return existing
        if kind is None:
            kind = "rollback" if self._is_earlier_config(path, new_config) else "config"
        try:
            repo.create_git_ref(f"refs/heads/{branch}", main)
        except GithubException as exc:
            # "Reference already exists": an earlier attempt got this far; carry on from its branch.
            if not (exc.status == 422 and "already exists" in _error_message(exc).lower()):
                raise
        on_branch = self._read(path, branch)
        if on_branch is None or not same_config(on_branch.decoded_content, new_config):
            who = InputGitAuthor(self.committer[0], self.committer[1], self._stamp())
            signature = commit_signature(self._key, kind, [service], {path: git_blob_id(content)})
            message = _with_trailer(
                self._c.redact(commit_message(title, body, kind, [service])), SIGNATURE_TRAILER, signature
            )
            if on_branch is None:
                result = repo.create_file(path, message, content, branch=branch, author=who, committer=who)
            else:
                result = repo.update_file(
                    path, message, content, on_branch.sha, branch=branch, author=who, committer=who
                )
            head = result["commit"].sha
            self.provenance.record_own(head, kind)
        else:
            head = repo.get_git_ref(f"heads/{branch}").object.sha
        # The pin lives in sregraph's ledger; the PR body's copy is for humans and may be edited.
        self.provenance.pin(self.repo_name, branch, head, service, kind)
        before = parse_config(current.decoded_content, path)
        pr_body = self._pr_body(body, service, kind, path, before, new_config, key, issue, head)
        try:
            pull = repo.create_pull(
                base=self.deploy_branch,
                head=branch,
                title=_fit(self._c.redact(title), _TITLE_MAX),
                body=pr_body,
            )
        except GithubException as exc:
            if exc.status == 422 and "already exists" in _error_message(exc).lower():
                found = self._pr_on(branch)
                if found is not None:
                    return found
            raise
        logger.info("proposed PR #%d on %s for %s (%s)", pull.number, branch, service, kind)
        return self._pr(pull)

    def _pr_body(
        self,
        body: str,
        service: str,
        kind: str,
        path: str,
        before: dict[str, Any],
        after: dict[str, Any],
        key: str | None,
        issue: int | None,
        head: str,
    ) -> str:
        rows = [
            f"| `{k}` | `{_short(before.get(k, '—'))}` | `{_short(after.get(k, '—'))}` |"
            for k in sorted(set(before) | set(after), key=str)
            if before.get(k) != after.get(k)
        ]
        links = []
        if issue is None:
            match = re.search(r"incident #(\d+)", body)
            issue = int(match[1]) if match else None
        if issue is not None:
            where = self.incident_repo if self.incident_repo and self.incident_repo != self.repo_name else ""
            links.append(f"Incident: {where}#{issue}")
        details = [
            _DETAILS,
            "---",
            f"**Service** `{service}` · **kind** {kind} · **file** `{path}` on `{self.deploy_branch}`",
            "",
            "| setting | now | after merge |",
            "|---|---|---|",
            *rows,
            "",
            *links,
            (
                "Merging applies the change: the deployer restarts the service with the merged config. "
                "sregraph merges only where its remediation policy allows; otherwise a human reviews and merges."
            ),
            # `head` pins the commit that was proposed (and reviewed): the merge refuses if the branch moved.
            _mark("service", service)
            + _mark("kind", kind)
            + _mark("head", head)
            + (_mark("key", key) if key else ""),
        ]
        text = "\n".join(details)
        return _fit(self._c.redact(body), _BODY_MAX - len(text) - 2) + "\n\n" + text

    def _merge(self, pr_id: int) -> PullRequest:
        pull = self._c.repo.get_pull(int(pr_id))
        if pull.merged_at is not None:
            return self._pr(pull)  # merged already, e.g. by an attempt whose answer was lost
        if pull.state == "closed":
            raise Refused(f"PR #{pr_id} is closed; propose the change again")
        if not self.allow_merge:
            raise Refused(
                f"merging is switched off for {self.repo_name} (allow_merge=False); a human merges PR #{pr_id}"
            )
        pinned = self.provenance.pinned(self.repo_name, pull.head.ref)
        if pinned is None:
            raise Refused(
                f"PR #{pr_id}: sregraph's ledger has no pin for branch {pull.head.ref}, so it did not propose "
                "this change here; a human reviews and merges it"
            )
        head, service, kind = pinned
        marks = _marks(pull.body)
        if marks.get("head") and marks["head"] != head:
            raise Refused(
                f"PR #{pr_id}: its body names head {marks['head'][:12]}, sregraph proposed {head[:12]}"
            )
        path = service_path(service)
        proposed = self._read(path, head)
        if proposed is None:
            raise Refused(f"PR #{pr_id}: the pinned head {head[:12]} has no {path}")
        description = (pull.body or "").split(_DETAILS)[0].strip()
        signature = commit_signature(self._key, kind, [service], {path: proposed.sha})
        message = _with_trailer(
            self._c.redact(commit_message(pull.title, description, kind, [service], pr_id=pull.number)),
            SIGNATURE_TRAILER,
            signature,
        )
        subject, _, rest = message.partition("\n\n")
        try:
            # `sha` pins what was reviewed: GitHub refuses (409) if the branch moved since.
            pull.merge(
                commit_title=f"{subject} (#{pull.number})",
                commit_message=rest.strip(),
                merge_method="squash",
                sha=head,
            )
        except GithubException as exc:
            if exc.status == 405 and "not mergeable" not in _error_message(exc).lower():
                # Branch protection: required reviews or checks. Policy said merge; the repository says wait.
                raise Refused(
                    f"PR #{pr_id}: GitHub will not merge it yet ({_error_message(exc)}); "
                    "branch protection on the deploy branch wants a human or a check first"
                ) from exc
            if exc.status == 405:
                raise MergeConflict(
                    f"PR #{pr_id} cannot be merged into {self.deploy_branch} ({_error_message(exc)}): the config "
                    "changed since it was proposed; close it and propose again"
                ) from exc
            if exc.status == 409:
                raise Refused(
                    f"PR #{pr_id}: its branch moved since it was proposed; review it again"
                ) from exc
            raise
        merged = self._pr(self._c.repo.get_pull(int(pr_id)))
        if merged.merge_sha:
            self.provenance.record_own(merged.merge_sha, kind)
        logger.info("merged PR #%d as %s", pr_id, (merged.merge_sha or "")[:12])
        return merged

    def _delete_branch(self, branch: str) -> None:
        try:
            self._c.repo.get_git_ref(f"heads/{branch}").delete()
        except GithubException as exc:
            if exc.status not in (404, 422):  # already deleted: a retried attempt, or GitHub's auto-delete
                raise

    def _read(self, path: str, ref: str) -> ContentFile | None:
        try:
            found = self._c.repo.get_contents(path, ref=ref)
        except GithubException as exc:
            if exc.status == 404:
                return None
            raise
        if isinstance(found, list):
            raise ConfigError(f"{path} is a directory on {ref}, not a service config")
        return found

    def _pr_on(self, branch: str) -> PullRequest | None:
        pulls = self._c.repo.get_pulls(state="all", head=f"{self._c.owner}:{branch}", base=self.deploy_branch)
        found = next(iter(pulls), None)
        return None if found is None else self._pr(found)

    def _pr(self, pull: GHPull) -> PullRequest:
        marks = _marks(pull.body)
        merged = pull.merged_at is not None
        return PullRequest(
            id=pull.number,
            branch=pull.head.ref,
            title=pull.title,
            body=(pull.body or "").split(_DETAILS)[0].rstrip(),
            state="merged" if merged else ("closed" if pull.state == "closed" else "open"),
            head_sha=marks.get("head") or pull.head.sha,
            # An open PR's merge_commit_sha is GitHub's test merge, not something on the deploy branch.
            merge_sha=pull.merge_commit_sha if merged else None,
            service=marks.get("service", ""),
            key=marks.get("key"),
            url=pull.html_url or "",
        )

    def _is_earlier_config(self, path: str, config: Mapping[str, Any]) -> bool:
        """Whether `config` equals a version the file had before one of its recent changes."""
        commits = self._c.repo.get_commits(sha=self.deploy_branch, path=path)
        for index, commit in enumerate(commits):
            if index >= _ROLLBACK_LOOKBACK:
                break
            if commit.parents:
                earlier = self._read(path, commit.parents[0].sha)
                if earlier is not None and same_config(earlier.decoded_content, config):
                    return True
        return False

    def _at(self, commit: Any) -> float:
        return _ts(commit.commit.committer.date)

    def _change(self, commit: Any) -> Change:
        message = commit.commit.message or ""
        trailers = _trailers(message)
        kind = trailers.get(KIND_TRAILER, "").split(",")[-1].strip()
        services = [s.strip() for s in trailers.get(SERVICES_TRAILER, "").split(",") if s.strip()]
        ours = self.provenance.is_own(commit.sha)
        files: list[Any] | None = None
        if not ours and kind and services and trailers.get(SIGNATURE_TRAILER):
            # Verify the signature against the blobs the commit really wrote (one more request).
            files = list(self._c.repo.get_commit(commit.sha).files)
            written = {f.filename: f.sha for f in files}
            try:
                blobs = {p: written[p] for p in (service_path(s) for s in services)}
            except (KeyError, ConfigError):
                blobs = {}
            ours = signature_valid(self._key, trailers[SIGNATURE_TRAILER], kind, services, blobs)
        if not ours:
            # Not sregraph's (or not provably): trailers are text anyone could write; classify by the files.
            files = files if files is not None else list(self._c.repo.get_commit(commit.sha).files)
            services = sorted({name for f in files if (name := path_service(f.filename))})
            kind = _infer_kind(files)
        return Change(
            sha=commit.sha,
            at=self._at(commit),
            author=commit.commit.author.name if commit.commit.author else "",
            message=message.strip(),
            services=services,
            kind=kind if kind in CHANGE_KINDS else "other",
            ours=ours,
        )

    def _stamp(self) -> str:
        # Commit dates from the injected clock, as the local backend does, so replays see stable history.
        return datetime.fromtimestamp(int(self.clock.now()), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _branch_for(key: str) -> str:
    # A slug alone could map two keys onto one branch; the digest keeps them apart.
    return f"{BRANCH_PREFIX}{slug(key)[:40]}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def _trailers(message: str) -> dict[str, str]:
    last = message.strip().split("\n\n")[-1]
    return {m[1]: m[2].strip() for m in re.finditer(r"^(Sregraph-[A-Za-z]+):[ \t]*(.*)$", last, re.MULTILINE)}


def _with_trailer(message: str, name: str, value: str) -> str:
    """`message` (ending in sregraph's trailer paragraph) with one more trailer, after redaction touched the rest."""
    return message.rstrip("\n") + f"\n{name}: {value}\n"


def _infer_kind(files: Iterable[Any]) -> str:
    """Kind of a commit sregraph did not write, from the files it changed (never from its message)."""
    service_files = [f for f in files if path_service(f.filename)]
    if not service_files:
        return "other"
    version_line = re.compile(r"^[+-]\s*version\s*:", re.MULTILINE)
    if any(version_line.search(f.patch or "") for f in service_files):
        return "deploy"
    return "config"


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."
