"""GitHubIncidentSurface: the incident surface on GitHub issues, labels, comments and slash commands."""

from __future__ import annotations

import html
import json
import logging
import re
import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Self

from github import GithubException
from github.Issue import Issue as GHIssue
from github.IssueComment import IssueComment as GHComment
from github.Requester import Requester

from tools.base import Clock, Comment, ConfigError, Issue, NotFound, Refused
from tools.github.client import DEFAULT_BASE_URL, GitHubClient, RetryPolicy, check_repo, timestamp
from tools.github.commands import COMMANDS, WRITE_PERMISSIONS, Command, parse_commands
from tools.github.markers import (
    BODY_MAX,
    SREGRAPH_AUTHOR,
    TITLE_MAX,
    fit,
    hidden_marker,
    read_markers,
    strip_markers,
)

logger = logging.getLogger(__name__)

INCIDENT_LABEL = "incident"
STATUS_PREFIX = "status:"

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

_FOOTER = "<!-- sregraph:footer -->"


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
        client: GitHubClient | None = None,
    ) -> None:
        """Talk to `repo` ("owner/name") through `client`, or through a client of its own built from the
        connection arguments (token, base_url, timeout, clock, retry, per_page, the pauses, environ,
        secrets_file: see `GitHubClient`), which are not used when `client` is given.

        `bot_login` is the account the token acts as; asked from GET /user when not given (a GitHub App
        installation token cannot, so give "<app>[bot]" then).
        """
        owns_client = client is None
        if client is None:
            check_repo(repo)  # a malformed name is reported before a missing token
            client = GitHubClient(
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
        self._c = client.repository(repo)
        self._owns_client = owns_client
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
        if self._owns_client:  # a shared client is closed by whoever built it
            self._c.client.close()

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
        ours = login == self.bot_login and bool(read_markers(body))
        comment = Comment(
            id=int(raw["id"]),
            author=SREGRAPH_AUTHOR if ours else login,
            body=strip_markers(body),
            created_at=timestamp(_parse_time(str(raw.get("created_at") or ""))),
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
            mine = read_markers(existing[0].body).get("nonce") == nonce
            return self._issue(existing[0], [] if mine else self._comments(existing[0])), mine
        names = list(dict.fromkeys([self.incident_label, *[name for name in labels if name]]))
        gi = self._c.repo.create_issue(
            title=fit(self._c.redact(title), TITLE_MAX),
            body=self._issue_body(body, fingerprint, nonce),
            labels=names,
        )
        # No unique index on GitHub: if another writer opened the same fingerprint at the same moment, the
        # oldest issue wins and ours is closed as its duplicate, so both writers converge on one issue.
        found = self._find(fingerprint)
        oldest = found[0] if found else gi
        if oldest.number != gi.number:
            gi.create_comment(
                f"Duplicate of #{oldest.number} (same alert fingerprint).\n\n"
                + hidden_marker("key", "duplicate")
            )
            gi.edit(state="closed", state_reason="not_planned")
            return self._issue(oldest, self._comments(oldest)), False
        return self._issue(gi, []), True

    def _issue_body(self, body: str, fingerprint: str, nonce: str) -> str:
        footer = (
            f"\n\n{_FOOTER}\n---\n<sub>Managed by sregraph · fingerprint <code>{html.escape(fingerprint)}</code> · "
            "a re-fired alert with this fingerprint comments here instead of opening another issue · "
            f"commands: {' '.join('`/' + c + '`' for c in COMMANDS)} (write access needed)</sub>\n"
            + hidden_marker("fingerprint", fingerprint)
            + hidden_marker("nonce", nonce)
        )
        return fit(self._c.redact(body), BODY_MAX - len(footer)) + footer

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
            and read_markers(gi.body).get("fingerprint") == fingerprint
        ]

    def _fingerprint(self, gi: GHIssue) -> str | None:
        if gi.user is None or gi.user.login != self.bot_login:
            return None
        return read_markers(gi.body).get("fingerprint")

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
        ours = login == self.bot_login and bool(read_markers(gc.body))
        return Comment(
            id=gc.id,
            author=SREGRAPH_AUTHOR if ours else login,
            body=strip_markers(gc.body),
            created_at=timestamp(gc.created_at),
        )

    def _issue(self, gi: GHIssue, comments: list[Comment]) -> Issue:
        raw = gi.body or ""
        body = raw.split(_FOOTER)[0].rstrip() if _FOOTER in raw else strip_markers(raw)
        return Issue(
            id=gi.number,
            title=gi.title,
            body=body,
            state="closed" if gi.state == "closed" else "open",
            labels=[label.name for label in gi.labels],
            fingerprint=self._fingerprint(gi),
            url=gi.html_url or "",
            comments=comments,
            created_at=timestamp(gi.created_at),
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
            if gc.user is not None and gc.user.login == bot and read_markers(gc.body).get(name) == value
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
        mark = hidden_marker(name, value)
        text = fit(self._c.redact(body), BODY_MAX - len(mark) - 2) + "\n\n" + mark
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
            ours = login == bot and bool(read_markers(text))
            created = timestamp(_parse_time(str(raw.get("created_at") or "")))
            fresh.setdefault(int(match[1]), []).append(
                Comment(
                    id=cid,
                    author=SREGRAPH_AUTHOR if ours else login,
                    body=strip_markers(text),
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


def _is_pull(gi: GHIssue) -> bool:
    # `pull_request` is absent (not null) on plain issues, and PyGithub completes the object with an extra
    # GET when asked for an absent attribute; the html_url of a PR always ends in /pull/<n>.
    return "/pull/" in (gi.html_url or "")
