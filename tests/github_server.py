"""A local GitHub REST API for tests: unmodified PyGithub talks to it over real HTTP on 127.0.0.1.

It covers the endpoints sregraph uses, with GitHub's documented JSON shapes and habits that clients trip on:

- absolute `url` fields and `Link` pagination headers built from the server's own host and port (PyGithub
  follows them and checks the host), `per_page` capped by `max_per_page` so small pages exercise pagination;
- pull requests are issues too: they share the number sequence and appear in `GET /issues` with a
  `pull_request` key; list endpoints omit fields only the single-object endpoints return (`merged`,
  `mergeable`), and an open PR carries a test-merge `merge_commit_sha`;
- `X-RateLimit-*` headers on every answer, a primary limit that refuses with 403 until the reset time,
  weak `ETag`s and `304 Not Modified` (which costs no quota) for `If-None-Match`;
- a flat git model (blobs, commits, refs) behind the refs, contents, commits, pulls and merge endpoints;
- scriptable faults (`inject`): a burst of 502s, a 403 secondary rate limit with `Retry-After`, a 429, a
  slow answer that trips a client timeout, or a failure *after* the request took effect (the answer was
  lost on the way back, the case that doubles writes in naive clients).

Time comes from an injectable clock, so tests that fake sleeping can move the server's rate-limit window
along with the client's backoff.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import hmac
import json
import re
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

Json = dict[str, Any]

ROLES = ("read", "triage", "write", "maintain", "admin")
_LEGACY_PERMISSION = {
    "admin": "admin",
    "maintain": "write",
    "write": "write",
    "triage": "read",
    "read": "read",
}
_DOCS = "https://docs.github.com/rest"


class HTTPError(Exception):
    """An error answer: status, GitHub's JSON body and extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        errors: list[Json] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: Json = {"message": message, "documentation_url": _DOCS, "status": str(status)}
        if errors is not None:
            self.body["errors"] = errors
        self.headers = headers or {}


@dataclass
class Fault:
    """One scripted failure, matched by method and a regular expression searched in the request path."""

    status: int
    method: str | None = None
    path: str | None = None
    times: int = 1
    headers: dict[str, str] = field(default_factory=dict)
    body: Json | str | None = None
    after: bool = False
    """Let the request take effect, then answer with the fault (the real answer was lost)."""
    delay: float = 0.0
    """Seconds before the request is handled (or, with `after`, before its answer goes back): trips a
    client timeout. With status 0 the fault is only that delay and the request is answered normally."""

    def matches(self, method: str, path: str) -> bool:
        """Whether this fault applies to the request."""
        return (self.method is None or self.method == method) and (
            self.path is None or re.search(self.path, path) is not None
        )


@dataclass
class User:
    """An account: a login, a token, and a role on the repository."""

    login: str
    id: int
    token: str
    role: str | None
    type: str = "User"
    remaining: int = 5000
    reset: float = 0.0


@dataclass
class GitCommit:
    """A commit in the flat git model: the whole tree as path -> blob sha."""

    sha: str
    tree: dict[str, str]
    parents: list[str]
    message: str
    author: tuple[str, str, float]
    committer: tuple[str, str, float]
    login: str | None = None


def _fmt(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _parse_time(text: str) -> float:
    text = text.strip().replace("Z", "+00:00")
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


def blob_sha(data: bytes) -> str:
    """Git's object id of a blob."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeGitHub:
    """The fake: state, HTTP server, fault injection and assertion helpers. Use as a context manager."""

    def __init__(
        self,
        owner: str = "acme",
        name: str = "ops",
        *,
        max_per_page: int = 100,
        rate_limit: int = 5000,
        clock: Callable[[], float] | None = None,
        default_branch: str = "main",
    ) -> None:
        self.owner, self.name = owner, name
        self.max_per_page = max_per_page
        self.rate_limit = rate_limit
        self.clock = clock or time.time
        self.default_branch = default_branch
        self.lock = threading.RLock()
        self.users: dict[str, User] = {}
        self.labels: dict[str, Json] = {}
        self.issues: dict[int, Json] = {}
        """number -> issue record; pull requests too (with a `pull` entry)."""
        self.comments: dict[int, Json] = {}
        self.blobs: dict[str, bytes] = {}
        self.commits: dict[str, GitCommit] = {}
        self.refs: dict[str, str] = {}
        self._generations: dict[str, int] = {}
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str, int]] = []
        self.errors: list[str] = []
        """Tracebacks of requests the fake itself failed on (a bug in the fake, not a scripted fault)."""
        """(method, path with query, status) of every request, in order."""
        self._ids = 1000
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.add_user(owner, role="admin", type="Organization", token=None)
        # Content of deleted accounts is attributed to @ghost, who has no permission on anything.
        self.add_user("ghost", role=None, token=None)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Listen on 127.0.0.1 on a free port, serving from a daemon thread."""
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """What to give PyGithub as base_url."""
        assert self._server is not None, "start() the server first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def repo_api(self) -> str:
        """API URL of the repository."""
        return f"{self.base_url}/repos/{self.owner}/{self.name}"

    @property
    def repo_html(self) -> str:
        """Web URL of the repository (same host: a GitHub Enterprise-like layout)."""
        return f"{self.base_url}/{self.owner}/{self.name}"

    # ------------------------------------------------------------------ scripting

    def add_user(
        self, login: str, *, role: str | None = "read", type: str = "User", token: str | None = ""
    ) -> str:
        """Create an account with a role on the repository; returns its token."""
        if role is not None and role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        with self.lock:
            tok = token if token is not None else ""
            tok = tok or f"ghp_{hashlib.sha1(login.encode()).hexdigest()[:36]}"
            self.users[login] = User(
                login=login,
                id=len(self.users) + 1,
                token=tok,
                role=role,
                type=type,
                remaining=self.rate_limit,
                reset=self.clock() + 3600,
            )
            return tok

    def inject(
        self,
        status: int,
        *,
        method: str | None = None,
        path: str | None = None,
        times: int = 1,
        retry_after: float | None = None,
        after: bool = False,
        delay: float = 0.0,
        body: Json | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Fault:
        """Queue a fault; the first matching fault answers the next matching request."""
        hdrs = dict(headers or {})
        if retry_after is not None:
            hdrs["Retry-After"] = str(int(retry_after))
        if body is None:
            body = _default_fault_body(status)
        fault = Fault(
            status=status,
            method=method,
            path=path,
            times=times,
            headers=hdrs,
            body=body,
            after=after,
            delay=delay,
        )
        with self.lock:
            self.faults.append(fault)
        return fault

    def secondary_rate_limit(
        self,
        *,
        status: int = 403,
        retry_after: float | None = 1,
        method: str | None = None,
        path: str | None = None,
        times: int = 1,
    ) -> Fault:
        """A secondary (abuse) rate limit, as a 403 or a 429."""
        message = (
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you reach "
            "out to GitHub Support for help, please include the request ID 0000:0000:0000:0000:0000."
        )
        return self.inject(
            status,
            method=method,
            path=path,
            times=times,
            retry_after=retry_after,
            body={"message": message, "documentation_url": f"{_DOCS}/overview/rate-limits-for-the-rest-api"},
        )

    def exhaust_quota(self, login: str, reset_in: float) -> None:
        """Spend `login`'s primary quota; requests are refused with 403 until `reset_in` seconds from now."""
        with self.lock:
            user = self.users[login]
            user.remaining = 0
            user.reset = self.clock() + reset_in

    def webhook(
        self, event: str, payload: Json, secret: str, delivery: str = "d-1"
    ) -> tuple[dict[str, str], bytes]:
        """Headers and body of a webhook delivery as GitHub sends it, signed with `secret`."""
        body = json.dumps(payload).encode()
        signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        headers = {
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": signature,
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/fake",
        }
        return headers, body

    def comment_payload(self, comment_id: int, action: str = "created") -> Json:
        """An `issue_comment` webhook payload for an existing comment."""
        with self.lock:
            comment = self.comments[comment_id]
            issue = self.issues[comment["issue"]]
            return {
                "action": action,
                "issue": self._issue_json(issue),
                "comment": self._comment_json(comment),
                "repository": self._repo_json(),
                "sender": self._user_json(comment["user"]),
            }

    # ------------------------------------------------------------------ git model helpers

    def seed(
        self,
        files: dict[str, str],
        message: str = "Seed deploy configuration",
        *,
        at: float | None = None,
        author: str = "seed",
    ) -> str:
        """Create the first commit on the default branch."""
        with self.lock:
            return self._commit(
                self.default_branch,
                {p: c.encode() for p, c in files.items()},
                message,
                (author, f"{author}@example.com", at if at is not None else self.clock()),
                None,
                create_branch=True,
            )

    def commit(
        self,
        files: dict[str, str | None],
        message: str,
        *,
        branch: str | None = None,
        at: float | None = None,
        author: str = "operator",
    ) -> str:
        """Commit straight to a branch, as a human pushing would; a None content deletes the file."""
        with self.lock:
            data = {p: (c.encode() if c is not None else None) for p, c in files.items()}
            return self._commit(
                branch or self.default_branch,
                data,
                message,
                (author, f"{author}@example.com", at if at is not None else self.clock()),
                None,
            )

    def file(self, path: str, ref: str | None = None) -> str | None:
        """A file's text at a branch or sha (default branch by default)."""
        with self.lock:
            sha = self._resolve(ref or self.default_branch)
            if sha is None:
                return None
            blob = self.commits[sha].tree.get(path)
            return None if blob is None else self.blobs[blob].decode()

    def branches(self) -> list[str]:
        """Branch names."""
        with self.lock:
            return sorted(
                ref.removeprefix("refs/heads/") for ref in self.refs if ref.startswith("refs/heads/")
            )

    def open_issues(self) -> list[Json]:
        """Open issues that are not pull requests."""
        with self.lock:
            return [i for i in self.issues.values() if i["state"] == "open" and "pull" not in i]

    def issue_comments(self, number: int) -> list[Json]:
        """Comments on one issue, oldest first."""
        with self.lock:
            return [c for c in sorted(self.comments.values(), key=lambda c: c["id"]) if c["issue"] == number]

    def pulls(self) -> list[Json]:
        """Pull-request records."""
        with self.lock:
            return [i for i in self.issues.values() if "pull" in i]

    def requests(self, method: str | None = None, path: str | None = None) -> list[tuple[str, str, int]]:
        """Logged requests, filtered by method and a regex searched in the path."""
        with self.lock:
            return [
                r
                for r in self.log
                if (method is None or r[0] == method) and (path is None or re.search(path, r[1]))
            ]

    # ------------------------------------------------------------------ request entry point

    def handle(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """Answer one request: (status, headers, body)."""
        parsed = urllib.parse.urlsplit(raw_path)
        path, query = parsed.path, urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
        params = {k: v[-1] for k, v in query.items()}
        fault = self._take_fault(method, path)
        late = fault.delay if fault is not None and fault.after else 0.0
        if fault is not None and fault.delay and not fault.after:
            time.sleep(fault.delay)  # real time on purpose: this is what trips the client's socket timeout
        if fault is not None and fault.status == 0:
            fault = None  # a pure delay: answer normally (after the request took effect, if `after`)
        try:
            return self._answer(method, raw_path, path, params, headers, body, fault)
        except Exception as exc:  # noqa: BLE001  (a bug in the fake: answer 500, keep it for the test)
            self.errors.append(f"{method} {raw_path}: {traceback.format_exc()}")
            return (
                500,
                {"Content-Type": "application/json"},
                json.dumps({"message": f"fake server error: {exc!r}"}).encode(),
            )
        finally:
            if late:
                time.sleep(late)  # the request took effect; its answer is slow to come back

    def _answer(
        self,
        method: str,
        raw_path: str,
        path: str,
        params: dict[str, str],
        headers: dict[str, str],
        body: bytes,
        fault: Fault | None,
    ) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            user = self._authenticate(headers.get("authorization", ""))
            status, extra, payload = self._dispatch_guarded(user, method, path, params, headers, body, fault)
            out_headers = {
                "Content-Type": "application/json; charset=utf-8",
                "X-GitHub-Media-Type": "github.v3; format=json",
                "X-GitHub-Request-Id": f"FAKE:{len(self.log):06d}",
                **extra,
            }
            data = b""
            if payload is not None and status != 304:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                if isinstance(payload, bytes):
                    out_headers["Content-Type"] = "text/html; charset=utf-8"
            if method == "GET" and status == 200 and user is not None:
                etag = 'W/"' + hashlib.sha1(data).hexdigest() + '"'
                out_headers["ETag"] = etag
                if headers.get("if-none-match") == etag:
                    status, data = 304, b""
                    user.remaining += 1  # a 304 on a conditional request does not count against the quota
                    out_headers.update(self._rate_headers(user))
            self.log.append((method, raw_path, status))
            return status, out_headers, data

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.times > 0 and fault.matches(method, path):
                    fault.times -= 1
                    if fault.times == 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def _authenticate(self, header: str) -> User | None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() not in ("token", "bearer") or not token:
            return None
        return next((u for u in self.users.values() if u.token == token.strip()), None)

    def _rate_headers(self, user: User) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Remaining": str(max(user.remaining, 0)),
            "X-RateLimit-Reset": str(int(user.reset)),
            "X-RateLimit-Used": str(self.rate_limit - max(user.remaining, 0)),
            "X-RateLimit-Resource": "core",
        }

    def _dispatch_guarded(
        self,
        user: User | None,
        method: str,
        path: str,
        params: dict[str, str],
        headers: dict[str, str],
        body: bytes,
        fault: Fault | None,
    ) -> tuple[int, dict[str, str], Json | list[Json] | bytes | None]:
        if user is None:
            message = "Bad credentials" if headers.get("authorization") else "Requires authentication"
            return 401, {}, {"message": message, "documentation_url": _DOCS, "status": "401"}
        now = self.clock()
        if now >= user.reset:
            user.remaining, user.reset = self.rate_limit, now + 3600
        if user.remaining <= 0:
            return (
                403,
                self._rate_headers(user),
                {
                    "message": f"API rate limit exceeded for user ID {user.id}. If you reach out to GitHub "
                    "Support for help, please include the request ID FAKE.",
                    "documentation_url": f"{_DOCS}/overview/rate-limits-for-the-rest-api",
                },
            )
        user.remaining -= 1
        rate = self._rate_headers(user)
        if fault is not None and not fault.after:
            return fault.status, {**rate, **fault.headers}, _fault_payload(fault)
        try:
            status, extra, payload = self._route(user, method, path, params, body)
        except HTTPError as err:
            status, extra, payload = err.status, err.headers, err.body
        if fault is not None:
            return fault.status, {**rate, **fault.headers}, _fault_payload(fault)
        return status, {**rate, **extra}, payload

    # ------------------------------------------------------------------ routing

    def _route(
        self, user: User, method: str, path: str, params: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], Any]:
        data: Any = None
        if body:
            try:
                data = json.loads(body)
            except ValueError as exc:
                raise HTTPError(400, "Problems parsing JSON") from exc
        if path == "/user" and method == "GET":
            return 200, {}, self._user_json(user.login)
        if path == "/rate_limit" and method == "GET":
            core = {
                "limit": self.rate_limit,
                "remaining": user.remaining,
                "reset": int(user.reset),
                "used": self.rate_limit - user.remaining,
            }
            return 200, {}, {"resources": {"core": core}, "rate": core}
        match = re.fullmatch(r"/repos/([^/]+)/([^/]+)(/.*)?", path)
        if not match or match[1].lower() != self.owner.lower() or match[2].lower() != self.name.lower():
            raise HTTPError(404, "Not Found")
        rest = match[3] or ""
        for verb, pattern, handler in self._routes():
            found = re.fullmatch(pattern, rest)
            if found and verb == method:
                args = [urllib.parse.unquote(g) for g in found.groups()]
                result = handler(user, params, data, *args)
                if len(result) == 2:
                    return result[0], {}, result[1]
                return result
        raise HTTPError(404, "Not Found")  # GitHub answers unknown routes and methods alike

    def _routes(self) -> list[tuple[str, str, Callable[..., Any]]]:
        return [
            ("GET", r"", lambda u, p, d: (200, self._repo_json())),
            ("GET", r"/issues", self._list_issues),
            ("POST", r"/issues", self._create_issue),
            ("GET", r"/issues/comments", self._list_repo_comments),
            ("GET", r"/issues/comments/(\d+)", self._get_comment),
            ("PATCH", r"/issues/comments/(\d+)", self._edit_comment),
            ("DELETE", r"/issues/comments/(\d+)", self._delete_comment),
            ("GET", r"/issues/(\d+)", self._get_issue),
            ("PATCH", r"/issues/(\d+)", self._edit_issue),
            ("GET", r"/issues/(\d+)/comments", self._list_comments),
            ("POST", r"/issues/(\d+)/comments", self._create_comment),
            ("GET", r"/issues/(\d+)/labels", self._issue_labels),
            ("POST", r"/issues/(\d+)/labels", self._add_labels),
            ("PUT", r"/issues/(\d+)/labels", self._set_labels),
            ("DELETE", r"/issues/(\d+)/labels/(.+)", self._remove_label),
            ("GET", r"/labels", self._list_labels),
            ("POST", r"/labels", self._create_label),
            ("GET", r"/labels/(.+)", self._get_label),
            ("GET", r"/collaborators/([^/]+)/permission", self._permission),
            ("GET", r"/git/ref/(.+)", self._get_ref),
            ("GET", r"/git/matching-refs/(.*)", self._matching_refs),
            ("POST", r"/git/refs", self._create_ref),
            ("PATCH", r"/git/refs/(.+)", self._update_ref),
            ("DELETE", r"/git/refs/(.+)", self._delete_ref),
            (
                "GET",
                r"/git/commits/([0-9a-f]{40})",
                lambda u, p, d, sha: (200, self._git_commit_json(self._commit_or_404(sha))),
            ),
            ("GET", r"/contents/(.*)", self._get_contents),
            ("PUT", r"/contents/(.+)", self._put_contents),
            ("GET", r"/commits", self._list_commits),
            ("GET", r"/commits/([^/]+)", self._get_commit),
            ("GET", r"/pulls", self._list_pulls),
            ("POST", r"/pulls", self._create_pull),
            ("GET", r"/pulls/(\d+)", self._get_pull),
            ("PATCH", r"/pulls/(\d+)", self._edit_pull),
            ("GET", r"/pulls/(\d+)/merge", self._is_merged),
            ("PUT", r"/pulls/(\d+)/merge", self._merge_pull),
        ]

    # ------------------------------------------------------------------ pagination

    def _page(
        self, items: list[Any], params: dict[str, str], path: str
    ) -> tuple[int, dict[str, str], list[Any]]:
        per_page = min(int(params.get("per_page", 30) or 30), 100, self.max_per_page)
        page = max(int(params.get("page", 1) or 1), 1)
        last = max((len(items) + per_page - 1) // per_page, 1)
        chunk = items[(page - 1) * per_page : page * per_page]
        links = []

        def url(n: int) -> str:
            query = urllib.parse.urlencode({**params, "page": str(n)})
            return f"{self.base_url}{path}?{query}"

        if page < last:
            links += [f'<{url(page + 1)}>; rel="next"', f'<{url(last)}>; rel="last"']
        if page > 1:
            links += [f'<{url(1)}>; rel="first"', f'<{url(page - 1)}>; rel="prev"']
        return 200, ({"Link": ", ".join(links)} if links else {}), chunk

    # ------------------------------------------------------------------ JSON shapes

    def _user_json(self, login: str) -> Json:
        user = self.users[login]
        return {
            "login": login,
            "id": user.id,
            "node_id": base64.b64encode(f"04:User{user.id}".encode()).decode(),
            "avatar_url": f"{self.base_url}/avatars/u/{user.id}",
            "gravatar_id": "",
            "url": f"{self.base_url}/users/{login}",
            "html_url": f"{self.base_url}/{login}",
            "type": user.type,
            "site_admin": False,
        }

    def _repo_json(self) -> Json:
        return {
            "id": 4242,
            "node_id": "R_fake",
            "name": self.name,
            "full_name": f"{self.owner}/{self.name}",
            "owner": self._user_json(self.owner),
            "private": False,
            "html_url": self.repo_html,
            "description": "fake repository",
            "fork": False,
            "url": self.repo_api,
            "issues_url": f"{self.repo_api}/issues{{/number}}",
            "pulls_url": f"{self.repo_api}/pulls{{/number}}",
            "default_branch": self.default_branch,
            "visibility": "public",
            "has_issues": True,
            "created_at": _fmt(0),
            "updated_at": _fmt(self.clock()),
            "pushed_at": _fmt(self.clock()),
        }

    def _label_json(self, name: str) -> Json:
        label = self.labels[name]
        return {
            "id": label["id"],
            "node_id": f"LA_{label['id']}",
            "url": f"{self.repo_api}/labels/{urllib.parse.quote(name, safe='')}",
            "name": name,
            "color": label["color"],
            "default": False,
            "description": label["description"],
        }

    def _association(self, login: str) -> str:
        role = self.users[login].role
        return (
            "OWNER"
            if login == self.owner
            else ("COLLABORATOR" if role in ("write", "maintain", "admin") else "NONE")
        )

    def _issue_json(self, issue: Json) -> Json:
        n = issue["number"]
        out = {
            "id": issue["id"],
            "node_id": f"I_{issue['id']}",
            "url": f"{self.repo_api}/issues/{n}",
            "repository_url": self.repo_api,
            "labels_url": f"{self.repo_api}/issues/{n}/labels{{/name}}",
            "comments_url": f"{self.repo_api}/issues/{n}/comments",
            "events_url": f"{self.repo_api}/issues/{n}/events",
            "html_url": f"{self.repo_html}/{'pull' if 'pull' in issue else 'issues'}/{n}",
            "number": n,
            "state": issue["state"],
            "state_reason": issue["state_reason"],
            "title": issue["title"],
            "body": issue["body"],
            "user": self._user_json(issue["user"]),
            "labels": [self._label_json(name) for name in issue["labels"]],
            "assignee": None,
            "assignees": [],
            "milestone": None,
            "locked": False,
            "active_lock_reason": None,
            "comments": sum(1 for c in self.comments.values() if c["issue"] == n),
            "created_at": _fmt(issue["created_at"]),
            "updated_at": _fmt(issue["updated_at"]),
            "closed_at": _fmt(issue["closed_at"]),
            "author_association": self._association(issue["user"]),
        }
        if "pull" in issue:
            out["pull_request"] = {
                "url": f"{self.repo_api}/pulls/{n}",
                "html_url": f"{self.repo_html}/pull/{n}",
                "diff_url": f"{self.repo_html}/pull/{n}.diff",
                "patch_url": f"{self.repo_html}/pull/{n}.patch",
                "merged_at": _fmt(issue["pull"]["merged_at"]),
            }
        return out

    def _comment_json(self, comment: Json) -> Json:
        n = comment["issue"]
        return {
            "id": comment["id"],
            "node_id": f"IC_{comment['id']}",
            "url": f"{self.repo_api}/issues/comments/{comment['id']}",
            "html_url": f"{self.repo_html}/issues/{n}#issuecomment-{comment['id']}",
            "issue_url": f"{self.repo_api}/issues/{n}",
            "body": comment["body"],
            "user": self._user_json(comment["user"]),
            "created_at": _fmt(comment["created_at"]),
            "updated_at": _fmt(comment["updated_at"]),
            "author_association": self._association(comment["user"]),
        }

    def _ref_json(self, ref: str) -> Json:
        sha = self.refs[ref]
        return {
            "ref": ref,
            "node_id": f"REF_{hashlib.sha1(ref.encode()).hexdigest()[:12]}",
            "url": f"{self.repo_api}/git/{urllib.parse.quote(ref)}",
            "object": {"sha": sha, "type": "commit", "url": f"{self.repo_api}/git/commits/{sha}"},
        }

    def _person(self, who: tuple[str, str, float]) -> Json:
        return {"name": who[0], "email": who[1], "date": _fmt(who[2])}

    def _git_commit_json(self, commit: GitCommit) -> Json:
        return {
            "sha": commit.sha,
            "node_id": f"C_{commit.sha[:12]}",
            "url": f"{self.repo_api}/git/commits/{commit.sha}",
            "html_url": f"{self.repo_html}/commit/{commit.sha}",
            "author": self._person(commit.author),
            "committer": self._person(commit.committer),
            "message": commit.message,
            "tree": {
                "sha": _tree_sha(commit.tree),
                "url": f"{self.repo_api}/git/trees/{_tree_sha(commit.tree)}",
            },
            "parents": [
                {
                    "sha": p,
                    "url": f"{self.repo_api}/git/commits/{p}",
                    "html_url": f"{self.repo_html}/commit/{p}",
                }
                for p in commit.parents
            ],
            "verification": {
                "verified": False,
                "reason": "unsigned",
                "signature": None,
                "payload": None,
                "verified_at": None,
            },
        }

    def _commit_json(self, commit: GitCommit, *, with_files: bool) -> Json:
        user = self._user_json(commit.login) if commit.login in self.users else None
        git = self._git_commit_json(commit)
        out: Json = {
            "sha": commit.sha,
            "node_id": git["node_id"],
            "commit": {
                "author": git["author"],
                "committer": git["committer"],
                "message": commit.message,
                "tree": git["tree"],
                "url": git["url"],
                "comment_count": 0,
                "verification": git["verification"],
            },
            "url": f"{self.repo_api}/commits/{commit.sha}",
            "html_url": git["html_url"],
            "comments_url": f"{self.repo_api}/commits/{commit.sha}/comments",
            "author": user,
            "committer": user,
            "parents": [
                {"sha": p, "url": f"{self.repo_api}/commits/{p}", "html_url": f"{self.repo_html}/commit/{p}"}
                for p in commit.parents
            ],
        }
        if with_files:
            files = self._diff(commit)
            out["files"] = files
            adds, dels = sum(f["additions"] for f in files), sum(f["deletions"] for f in files)
            out["stats"] = {"total": adds + dels, "additions": adds, "deletions": dels}
        return out

    def _content_json(self, path: str, ref: str, blob: str, *, with_content: bool = True) -> Json:
        data = self.blobs[blob]
        quoted = urllib.parse.quote(path)
        out = {
            "type": "file",
            "size": len(data),
            "name": path.rsplit("/", 1)[-1],
            "path": path,
            "sha": blob,
            "url": f"{self.repo_api}/contents/{quoted}?ref={urllib.parse.quote(ref)}",
            "git_url": f"{self.repo_api}/git/blobs/{blob}",
            "html_url": f"{self.repo_html}/blob/{ref}/{quoted}",
            "download_url": f"{self.base_url}/raw/{self.owner}/{self.name}/{ref}/{quoted}",
            "_links": {
                "self": f"{self.repo_api}/contents/{quoted}?ref={ref}",
                "git": f"{self.repo_api}/git/blobs/{blob}",
                "html": f"{self.repo_html}/blob/{ref}/{quoted}",
            },
        }
        if with_content:
            encoded = base64.b64encode(data).decode()
            # GitHub wraps the base64 text at 60 characters.
            out["content"] = "\n".join(encoded[i : i + 60] for i in range(0, len(encoded), 60)) + "\n"
            out["encoding"] = "base64"
        return out

    def _pull_json(self, issue: Json, *, full: bool) -> Json:
        pull = issue["pull"]
        n = issue["number"]
        head_sha = (
            self.refs.get(f"refs/heads/{pull['head']}", pull["head_sha"])
            if issue["state"] == "open"
            else pull["head_sha"]
        )
        base_sha = self.refs.get(f"refs/heads/{pull['base']}", pull["base_sha"])
        merged = pull["merged_at"] is not None
        merge_sha = (
            pull["merge_sha"]
            if merged
            else hashlib.sha1(f"test-merge {head_sha} {base_sha}".encode()).hexdigest()
        )
        out: Json = {
            "url": f"{self.repo_api}/pulls/{n}",
            "id": issue["id"],
            "node_id": f"PR_{issue['id']}",
            "html_url": f"{self.repo_html}/pull/{n}",
            "diff_url": f"{self.repo_html}/pull/{n}.diff",
            "patch_url": f"{self.repo_html}/pull/{n}.patch",
            "issue_url": f"{self.repo_api}/issues/{n}",
            "commits_url": f"{self.repo_api}/pulls/{n}/commits",
            "review_comments_url": f"{self.repo_api}/pulls/{n}/comments",
            "comments_url": f"{self.repo_api}/issues/{n}/comments",
            "statuses_url": f"{self.repo_api}/statuses/{head_sha}",
            "number": n,
            "state": issue["state"],
            "locked": False,
            "title": issue["title"],
            "user": self._user_json(issue["user"]),
            "body": issue["body"],
            "labels": [self._label_json(name) for name in issue["labels"]],
            "milestone": None,
            "active_lock_reason": None,
            "created_at": _fmt(issue["created_at"]),
            "updated_at": _fmt(issue["updated_at"]),
            "closed_at": _fmt(issue["closed_at"]),
            "merged_at": _fmt(pull["merged_at"]),
            "merge_commit_sha": merge_sha,
            "assignee": None,
            "assignees": [],
            "requested_reviewers": [],
            "requested_teams": [],
            "head": {
                "label": f"{self.owner}:{pull['head']}",
                "ref": pull["head"],
                "sha": head_sha,
                "user": self._user_json(self.owner),
                "repo": self._repo_json(),
            },
            "base": {
                "label": f"{self.owner}:{pull['base']}",
                "ref": pull["base"],
                "sha": base_sha,
                "user": self._user_json(self.owner),
                "repo": self._repo_json(),
            },
            "author_association": self._association(issue["user"]),
            "draft": False,
        }
        if full:
            conflict = bool(self._squash_tree(pull, head_sha)[1]) if issue["state"] == "open" else False
            out.update(
                {
                    "merged": merged,
                    "mergeable": None if merged else not conflict,
                    "mergeable_state": "clean" if not conflict else "dirty",
                    "merged_by": self._user_json(pull["merged_by"]) if pull["merged_by"] else None,
                    "comments": sum(1 for c in self.comments.values() if c["issue"] == n),
                    "review_comments": 0,
                    "maintainer_can_modify": False,
                    "commits": 1,
                    "additions": 0,
                    "deletions": 0,
                    "changed_files": len(self._changed(pull["base_sha"], head_sha)),
                }
            )
        return out

    # ------------------------------------------------------------------ issues

    def _issue_or_404(self, number: str | int) -> Json:
        issue = self.issues.get(int(number))
        if issue is None:
            raise HTTPError(404, "Not Found")
        return issue

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def _ensure_label(self, name: str) -> None:
        if name not in self.labels:
            self.labels[name] = {"id": self._next_id(), "color": "ededed", "description": None}

    def _can_push(self, user: User) -> bool:
        return user.role in ("write", "maintain", "admin") or user.login == self.owner

    def _list_issues(
        self, user: User, params: dict[str, str], data: Any
    ) -> tuple[int, dict[str, str], list[Json]]:
        state = params.get("state", "open")
        wanted = [name for name in params.get("labels", "").split(",") if name]
        items = [i for i in self.issues.values() if state == "all" or i["state"] == state]
        items = [i for i in items if all(name in i["labels"] for name in wanted)]
        if params.get("creator"):
            items = [i for i in items if i["user"] == params["creator"]]
        if params.get("since"):
            since = _parse_time(params["since"])
            items = [i for i in items if i["updated_at"] >= since]
        key = "updated_at" if params.get("sort") == "updated" else "created_at"
        items.sort(key=lambda i: (i[key], i["number"]), reverse=params.get("direction", "desc") == "desc")
        status, headers, chunk = self._page(items, params, f"/repos/{self.owner}/{self.name}/issues")
        return status, headers, [self._issue_json(i) for i in chunk]

    def _create_issue(self, user: User, params: dict[str, str], data: Any) -> tuple[int, Json]:
        if not isinstance(data, dict) or not data.get("title"):
            raise HTTPError(
                422,
                "Validation Failed",
                errors=[{"resource": "Issue", "code": "missing_field", "field": "title"}],
            )
        labels = [str(name) for name in data.get("labels") or []] if self._can_push(user) else []
        for name in labels:
            self._ensure_label(name)
        now = self.clock()
        number = max(self.issues, default=0) + 1
        self.issues[number] = {
            "number": number,
            "id": self._next_id(),
            "title": str(data["title"]),
            "body": data.get("body"),
            "state": "open",
            "state_reason": None,
            "user": user.login,
            "labels": list(dict.fromkeys(labels)),
            "created_at": now,
            "updated_at": now,
            "closed_at": None,
        }
        return 201, self._issue_json(self.issues[number])

    def _get_issue(self, user: User, params: dict[str, str], data: Any, number: str) -> tuple[int, Json]:
        return 200, self._issue_json(self._issue_or_404(number))

    def _edit_issue(self, user: User, params: dict[str, str], data: Any, number: str) -> tuple[int, Json]:
        issue = self._issue_or_404(number)
        data = data or {}
        if not self._can_push(user) and user.login != issue["user"]:
            raise HTTPError(403, "Must have admin rights to Repository.")
        now = self.clock()
        for key in ("title", "body"):
            if key in data:
                issue[key] = data[key]
        if "labels" in data:
            names = [n if isinstance(n, str) else n["name"] for n in data["labels"]]
            for name in names:
                self._ensure_label(name)
            issue["labels"] = list(dict.fromkeys(names))
        if data.get("state") in ("open", "closed") and data["state"] != issue["state"]:
            issue["state"] = data["state"]
            issue["closed_at"] = now if data["state"] == "closed" else None
            issue["state_reason"] = data.get("state_reason") or (
                "completed" if data["state"] == "closed" else "reopened"
            )
        issue["updated_at"] = now
        return 200, self._issue_json(issue)

    def _list_comments(
        self, user: User, params: dict[str, str], data: Any, number: str
    ) -> tuple[int, dict[str, str], list[Json]]:
        self._issue_or_404(number)
        items = [
            c for c in sorted(self.comments.values(), key=lambda c: c["id"]) if c["issue"] == int(number)
        ]
        if params.get("since"):
            since = _parse_time(params["since"])
            items = [c for c in items if c["updated_at"] >= since]
        status, headers, chunk = self._page(
            items, params, f"/repos/{self.owner}/{self.name}/issues/{number}/comments"
        )
        return status, headers, [self._comment_json(c) for c in chunk]

    def _list_repo_comments(
        self, user: User, params: dict[str, str], data: Any
    ) -> tuple[int, dict[str, str], list[Json]]:
        items = list(self.comments.values())
        if params.get("since"):
            since = _parse_time(params["since"])
            items = [c for c in items if c["updated_at"] >= since]
        key = "updated_at" if params.get("sort") == "updated" else "created_at"
        items.sort(key=lambda c: (c[key], c["id"]), reverse=params.get("direction", "asc") == "desc")
        status, headers, chunk = self._page(items, params, f"/repos/{self.owner}/{self.name}/issues/comments")
        return status, headers, [self._comment_json(c) for c in chunk]

    def _create_comment(self, user: User, params: dict[str, str], data: Any, number: str) -> tuple[int, Json]:
        issue = self._issue_or_404(number)
        if not isinstance(data, dict) or not data.get("body"):
            raise HTTPError(
                422,
                "Validation Failed",
                errors=[{"resource": "IssueComment", "code": "missing_field", "field": "body"}],
            )
        if len(data["body"]) > 65536:
            raise HTTPError(
                422,
                "Validation Failed",
                errors=[
                    {
                        "resource": "IssueComment",
                        "code": "custom",
                        "field": "body",
                        "message": "body is too long (maximum is 65536 characters)",
                    }
                ],
            )
        now = self.clock()
        cid = self._next_id()
        self.comments[cid] = {
            "id": cid,
            "issue": issue["number"],
            "user": user.login,
            "body": data["body"],
            "created_at": now,
            "updated_at": now,
        }
        issue["updated_at"] = now
        return 201, self._comment_json(self.comments[cid])

    def add_issue(self, login: str, title: str, body: str, labels: list[str]) -> int:
        """An issue opened by `login` in the web UI."""
        with self.lock:
            for name in labels:
                self._ensure_label(name)
            now = self.clock()
            number = max(self.issues, default=0) + 1
            self.issues[number] = {
                "number": number,
                "id": self._next_id(),
                "title": title,
                "body": body,
                "state": "open",
                "state_reason": None,
                "user": login,
                "labels": list(labels),
                "created_at": now,
                "updated_at": now,
                "closed_at": None,
            }
            return number

    def add_label(self, number: int, name: str) -> None:
        """A label added by a human in the web UI."""
        with self.lock:
            self._ensure_label(name)
            if name not in self.issues[number]["labels"]:
                self.issues[number]["labels"].append(name)

    def add_comment(self, number: int, login: str, body: str) -> int:
        """A comment written by `login` outside the API under test (a human in the web UI)."""
        if login not in self.users:
            raise ValueError(f"unknown user {login!r}; add_user first")
        with self.lock:
            now = self.clock()
            cid = self._next_id()
            self.comments[cid] = {
                "id": cid,
                "issue": number,
                "user": login,
                "body": body,
                "created_at": now,
                "updated_at": now,
            }
            self.issues[number]["updated_at"] = now
            return cid

    def _get_comment(self, user: User, params: dict[str, str], data: Any, cid: str) -> tuple[int, Json]:
        comment = self.comments.get(int(cid))
        if comment is None:
            raise HTTPError(404, "Not Found")
        return 200, self._comment_json(comment)

    def _edit_comment(self, user: User, params: dict[str, str], data: Any, cid: str) -> tuple[int, Json]:
        comment = self.comments.get(int(cid))
        if comment is None:
            raise HTTPError(404, "Not Found")
        if comment["user"] != user.login and not self._can_push(user):
            raise HTTPError(403, "Resource not accessible by personal access token")
        comment["body"] = (data or {}).get("body", comment["body"])
        comment["updated_at"] = self.clock()
        return 200, self._comment_json(comment)

    def _delete_comment(self, user: User, params: dict[str, str], data: Any, cid: str) -> tuple[int, None]:
        comment = self.comments.get(int(cid))
        if comment is None:
            raise HTTPError(404, "Not Found")
        if comment["user"] != user.login and not self._can_push(user):
            raise HTTPError(403, "Resource not accessible by personal access token")
        del self.comments[int(cid)]
        return 204, None

    def _issue_labels(
        self, user: User, params: dict[str, str], data: Any, number: str
    ) -> tuple[int, dict[str, str], list[Json]]:
        issue = self._issue_or_404(number)
        status, headers, chunk = self._page(
            issue["labels"], params, f"/repos/{self.owner}/{self.name}/issues/{number}/labels"
        )
        return status, headers, [self._label_json(name) for name in chunk]

    def _label_names(self, data: Any) -> list[str]:
        raw = data.get("labels", []) if isinstance(data, dict) else (data or [])
        return [n if isinstance(n, str) else n["name"] for n in raw]

    def _add_labels(
        self, user: User, params: dict[str, str], data: Any, number: str
    ) -> tuple[int, list[Json]]:
        issue = self._issue_or_404(number)
        if not self._can_push(user) and user.role != "triage":
            raise HTTPError(403, "Resource not accessible by personal access token")
        for name in self._label_names(data):
            self._ensure_label(name)
            if name not in issue["labels"]:
                issue["labels"].append(name)
        issue["updated_at"] = self.clock()
        return 200, [self._label_json(name) for name in issue["labels"]]

    def _set_labels(
        self, user: User, params: dict[str, str], data: Any, number: str
    ) -> tuple[int, list[Json]]:
        issue = self._issue_or_404(number)
        names = self._label_names(data)
        for name in names:
            self._ensure_label(name)
        issue["labels"] = list(dict.fromkeys(names))
        issue["updated_at"] = self.clock()
        return 200, [self._label_json(name) for name in issue["labels"]]

    def _remove_label(
        self, user: User, params: dict[str, str], data: Any, number: str, name: str
    ) -> tuple[int, list[Json]]:
        issue = self._issue_or_404(number)
        if name not in issue["labels"]:
            raise HTTPError(404, "Label does not exist")
        issue["labels"].remove(name)
        issue["updated_at"] = self.clock()
        return 200, [self._label_json(n) for n in issue["labels"]]

    def _list_labels(
        self, user: User, params: dict[str, str], data: Any
    ) -> tuple[int, dict[str, str], list[Json]]:
        status, headers, chunk = self._page(
            sorted(self.labels), params, f"/repos/{self.owner}/{self.name}/labels"
        )
        return status, headers, [self._label_json(name) for name in chunk]

    def _create_label(self, user: User, params: dict[str, str], data: Any) -> tuple[int, Json]:
        name = str((data or {}).get("name", ""))
        if not name:
            raise HTTPError(
                422,
                "Validation Failed",
                errors=[{"resource": "Label", "code": "missing_field", "field": "name"}],
            )
        if name in self.labels:
            raise HTTPError(
                422,
                "Validation Failed",
                errors=[{"resource": "Label", "code": "already_exists", "field": "name"}],
            )
        self.labels[name] = {
            "id": self._next_id(),
            "color": str(data.get("color", "ededed")).lstrip("#"),
            "description": data.get("description"),
        }
        return 201, self._label_json(name)

    def _get_label(self, user: User, params: dict[str, str], data: Any, name: str) -> tuple[int, Json]:
        if name not in self.labels:
            raise HTTPError(404, "Not Found")
        return 200, self._label_json(name)

    def _permission(self, user: User, params: dict[str, str], data: Any, login: str) -> tuple[int, Json]:
        target = self.users.get(login)
        if target is None or login == "ghost":
            raise HTTPError(404, "Not Found")
        role = target.role or "read"  # a public repository: everyone can read
        return 200, {
            "permission": _LEGACY_PERMISSION[role],
            "role_name": role,
            "user": self._user_json(login),
        }

    # ------------------------------------------------------------------ git

    def _resolve(self, ref: str) -> str | None:
        for candidate in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}"):
            if candidate in self.refs:
                return self.refs[candidate]
        if re.fullmatch(r"[0-9a-f]{7,40}", ref):
            hits = [sha for sha in self.commits if sha.startswith(ref)]
            if len(hits) == 1:
                return hits[0]
        return None

    def _commit_or_404(self, ref: str) -> GitCommit:
        sha = self._resolve(ref)
        if sha is None:
            raise HTTPError(
                404 if re.fullmatch(r"[0-9a-f]{40}", ref) else 422, "No commit found for SHA: " + ref
            )
        return self.commits[sha]

    def _new_commit(
        self,
        tree: dict[str, str],
        parents: list[str],
        message: str,
        author: tuple[str, str, float],
        committer: tuple[str, str, float],
        login: str | None,
    ) -> str:
        text = (
            f"tree {_tree_sha(tree)}\n"
            + "".join(f"parent {p}\n" for p in parents)
            + f"author {author}\ncommitter {committer}\n\n{message}"
        )
        sha = hashlib.sha1(f"commit {len(text)}\0{text}".encode()).hexdigest()
        self.commits[sha] = GitCommit(
            sha=sha,
            tree=dict(tree),
            parents=list(parents),
            message=message,
            author=author,
            committer=committer,
            login=login,
        )
        return sha

    def _commit(
        self,
        branch: str,
        files: dict[str, bytes | None],
        message: str,
        author: tuple[str, str, float],
        login: str | None,
        *,
        create_branch: bool = False,
        committer: tuple[str, str, float] | None = None,
    ) -> str:
        ref = f"refs/heads/{branch}"
        parent = self.refs.get(ref)
        if parent is None and not create_branch:
            raise HTTPError(404, f"Branch {branch} not found")
        tree = dict(self.commits[parent].tree) if parent else {}
        for path, content in files.items():
            if content is None:
                tree.pop(path, None)
            else:
                sha = blob_sha(content)
                self.blobs[sha] = content
                tree[path] = sha
        sha = self._new_commit(tree, [parent] if parent else [], message, author, committer or author, login)
        self.refs[ref] = sha
        return sha

    def _get_ref(self, user: User, params: dict[str, str], data: Any, ref: str) -> tuple[int, Json]:
        full = f"refs/{ref}"
        if full not in self.refs:
            raise HTTPError(404, "Not Found")
        return 200, self._ref_json(full)

    def _matching_refs(
        self, user: User, params: dict[str, str], data: Any, prefix: str
    ) -> tuple[int, list[Json]]:
        full = f"refs/{prefix}"
        return 200, [self._ref_json(ref) for ref in sorted(self.refs) if ref.startswith(full)]

    def _create_ref(self, user: User, params: dict[str, str], data: Any) -> tuple[int, Json]:
        if not self._can_push(user):
            raise HTTPError(403, "Resource not accessible by personal access token")
        ref, sha = str((data or {}).get("ref", "")), str((data or {}).get("sha", ""))
        if not ref.startswith("refs/") or ref.count("/") < 2:
            raise HTTPError(422, "Reference name must start with 'refs/' and have at least two slashes.")
        if sha not in self.commits:
            raise HTTPError(422, "Object does not exist")
        if ref in self.refs:
            raise HTTPError(422, "Reference already exists")
        self.refs[ref] = sha
        return 201, self._ref_json(ref)

    def _update_ref(self, user: User, params: dict[str, str], data: Any, ref: str) -> tuple[int, Json]:
        full = f"refs/{ref}"
        if full not in self.refs:
            raise HTTPError(422, "Reference does not exist")
        sha = str((data or {}).get("sha", ""))
        if sha not in self.commits:
            raise HTTPError(422, "Object does not exist")
        if not (data or {}).get("force") and not self._is_ancestor(self.refs[full], sha):
            raise HTTPError(422, "Update is not a fast forward")
        self.refs[full] = sha
        return 200, self._ref_json(full)

    def _delete_ref(self, user: User, params: dict[str, str], data: Any, ref: str) -> tuple[int, None]:
        full = f"refs/{ref}"
        if full not in self.refs:
            raise HTTPError(422, "Reference does not exist")
        if full == f"refs/heads/{self.default_branch}":
            raise HTTPError(422, "Cannot delete the default branch")
        del self.refs[full]
        return 204, None

    def _get_contents(self, user: User, params: dict[str, str], data: Any, path: str) -> tuple[int, Any]:
        ref = params.get("ref") or self.default_branch
        sha = self._resolve(ref)
        if sha is None:
            raise HTTPError(404, f"No commit found for the ref {ref}")
        tree = self.commits[sha].tree
        path = path.strip("/")
        if path in tree:
            return 200, self._content_json(path, ref, tree[path])
        children = (
            sorted({p[len(path) + 1 :].split("/")[0] for p in tree if p.startswith(path + "/")})
            if path
            else sorted({p.split("/")[0] for p in tree})
        )
        if not children:
            raise HTTPError(404, "Not Found")
        entries = []
        for child in children:
            full = f"{path}/{child}" if path else child
            if full in tree:
                entries.append(self._content_json(full, ref, tree[full], with_content=False))
            else:
                entries.append(
                    {
                        "type": "dir",
                        "name": child,
                        "path": full,
                        "sha": _tree_sha({k: v for k, v in tree.items() if k.startswith(full + "/")}),
                        "size": 0,
                        "url": f"{self.repo_api}/contents/{full}?ref={ref}",
                        "git_url": None,
                        "html_url": None,
                        "download_url": None,
                        "_links": {},
                    }
                )
        return 200, entries

    def _put_contents(self, user: User, params: dict[str, str], data: Any, path: str) -> tuple[int, Json]:
        if not self._can_push(user):
            raise HTTPError(403, "Resource not accessible by personal access token")
        data = data or {}
        for name in ("message", "content"):
            if name not in data:
                raise HTTPError(422, f'Invalid request.\n\n"{name}" wasn\'t supplied.')
        branch = data.get("branch") or self.default_branch
        tip = self.refs.get(f"refs/heads/{branch}")
        if tip is None:
            raise HTTPError(404, f"Branch {branch} not found")
        current = self.commits[tip].tree.get(path)
        if current is not None and "sha" not in data:
            raise HTTPError(422, 'Invalid request.\n\n"sha" wasn\'t supplied.')
        if current is not None and data["sha"] != current:
            raise HTTPError(409, f"{path} does not match {data['sha']}")
        try:
            content = base64.b64decode(data["content"], validate=True)
        except ValueError as exc:
            raise HTTPError(422, "content is not valid Base64") from exc
        now = self.clock()
        author_in = data.get("author") or data.get("committer") or {}
        committer_in = data.get("committer") or author_in
        author = (
            author_in.get("name", user.login),
            author_in.get("email", f"{user.login}@users.noreply.fake"),
            _parse_time(author_in["date"]) if author_in.get("date") else now,
        )
        committer = (
            committer_in.get("name", user.login),
            committer_in.get("email", f"{user.login}@users.noreply.fake"),
            _parse_time(committer_in["date"]) if committer_in.get("date") else now,
        )
        sha = self._commit(
            branch, {path: content}, str(data["message"]), author, user.login, committer=committer
        )
        blob = self.commits[sha].tree[path]
        return (201 if current is None else 200), {
            "content": self._content_json(path, branch, blob, with_content=False),
            "commit": self._git_commit_json(self.commits[sha]),
        }

    def _ancestors(self, sha: str) -> Iterator[GitCommit]:
        seen: set[str] = set()
        stack = [sha]
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            commit = self.commits[current]
            yield commit
            stack.extend(commit.parents)

    def _is_ancestor(self, ancestor: str, sha: str) -> bool:
        return any(c.sha == ancestor for c in self._ancestors(sha))

    def _list_commits(
        self, user: User, params: dict[str, str], data: Any
    ) -> tuple[int, dict[str, str], list[Json]]:
        start = self._commit_or_404(params.get("sha") or self.default_branch)
        commits = sorted(
            self._ancestors(start.sha), key=lambda c: (c.committer[2], self._generation(c.sha)), reverse=True
        )
        if params.get("path"):
            path = params["path"].strip("/")
            commits = [
                c
                for c in commits
                if c.tree.get(path) != (self.commits[c.parents[0]].tree.get(path) if c.parents else None)
            ]
        if params.get("since"):
            since = _parse_time(params["since"])
            commits = [c for c in commits if c.committer[2] >= since]
        if params.get("until"):
            until = _parse_time(params["until"])
            commits = [c for c in commits if c.committer[2] <= until]
        status, headers, chunk = self._page(commits, params, f"/repos/{self.owner}/{self.name}/commits")
        return status, headers, [self._commit_json(c, with_files=False) for c in chunk]

    def _get_commit(self, user: User, params: dict[str, str], data: Any, ref: str) -> tuple[int, Json]:
        return 200, self._commit_json(self._commit_or_404(ref), with_files=True)

    def _changed(self, old: str | None, new: str) -> list[str]:
        before = self.commits[old].tree if old else {}
        after = self.commits[new].tree
        return sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))

    def _diff(self, commit: GitCommit) -> list[Json]:
        parent = commit.parents[0] if commit.parents else None
        before = self.commits[parent].tree if parent else {}
        files = []
        for path in self._changed(parent, commit.sha):
            old = self.blobs[before[path]].decode(errors="replace").splitlines() if path in before else []
            new = (
                self.blobs[commit.tree[path]].decode(errors="replace").splitlines()
                if path in commit.tree
                else []
            )
            lines = list(difflib.unified_diff(old, new, lineterm="", n=3))[2:]
            adds = sum(1 for line in lines if line.startswith("+"))
            dels = sum(1 for line in lines if line.startswith("-"))
            status = "added" if path not in before else ("removed" if path not in commit.tree else "modified")
            blob = commit.tree.get(path) or before.get(path, "")
            files.append(
                {
                    "sha": blob,
                    "filename": path,
                    "status": status,
                    "additions": adds,
                    "deletions": dels,
                    "changes": adds + dels,
                    "blob_url": f"{self.repo_html}/blob/{commit.sha}/{path}",
                    "raw_url": f"{self.repo_html}/raw/{commit.sha}/{path}",
                    "contents_url": f"{self.repo_api}/contents/{path}?ref={commit.sha}",
                    "patch": "\n".join(lines),
                }
            )
        return files

    # ------------------------------------------------------------------ pull requests

    def _pull_or_404(self, number: str) -> Json:
        issue = self.issues.get(int(number))
        if issue is None or "pull" not in issue:
            raise HTTPError(404, "Not Found")
        return issue

    def _list_pulls(
        self, user: User, params: dict[str, str], data: Any
    ) -> tuple[int, dict[str, str], list[Json]]:
        state = params.get("state", "open")
        items = [i for i in self.pulls() if state == "all" or i["state"] == state]
        if params.get("head"):
            owner, _, branch = params["head"].rpartition(":")
            items = [
                i
                for i in items
                if i["pull"]["head"] == branch and (not owner or owner.lower() == self.owner.lower())
            ]
        if params.get("base"):
            items = [i for i in items if i["pull"]["base"] == params["base"]]
        key = {"updated": "updated_at"}.get(params.get("sort", ""), "created_at")
        items.sort(key=lambda i: (i[key], i["number"]), reverse=params.get("direction", "desc") == "desc")
        status, headers, chunk = self._page(items, params, f"/repos/{self.owner}/{self.name}/pulls")
        return status, headers, [self._pull_json(i, full=False) for i in chunk]

    def _create_pull(self, user: User, params: dict[str, str], data: Any) -> tuple[int, Json]:
        data = data or {}
        if not self._can_push(user):
            raise HTTPError(403, "Resource not accessible by personal access token")
        head = str(data.get("head", "")).rpartition(":")[2]
        base = str(data.get("base", ""))
        invalid = [f for f, v in (("head", head), ("base", base)) if f"refs/heads/{v}" not in self.refs]
        if invalid:
            raise HTTPError(
                422,
                "Validation Failed",
                errors=[{"resource": "PullRequest", "field": f, "code": "invalid"} for f in invalid],
            )
        if not data.get("title"):
            raise HTTPError(
                422,
                "Validation Failed",
                errors=[{"resource": "PullRequest", "code": "missing_field", "field": "title"}],
            )
        if any(
            i["state"] == "open" and i["pull"]["head"] == head and i["pull"]["base"] == base
            for i in self.pulls()
        ):
            raise HTTPError(
                422,
                "Validation Failed",
                errors=[
                    {
                        "resource": "PullRequest",
                        "code": "custom",
                        "message": f"A pull request already exists for {self.owner}:{head}.",
                    }
                ],
            )
        head_sha, base_sha = self.refs[f"refs/heads/{head}"], self.refs[f"refs/heads/{base}"]
        if self._is_ancestor(head_sha, base_sha):
            raise HTTPError(
                422,
                "Validation Failed",
                errors=[
                    {
                        "resource": "PullRequest",
                        "code": "custom",
                        "message": f"No commits between {base} and {head}",
                    }
                ],
            )
        now = self.clock()
        number = max(self.issues, default=0) + 1
        self.issues[number] = {
            "number": number,
            "id": self._next_id(),
            "title": str(data["title"]),
            "body": data.get("body"),
            "state": "open",
            "state_reason": None,
            "user": user.login,
            "labels": [],
            "created_at": now,
            "updated_at": now,
            "closed_at": None,
            "pull": {
                "head": head,
                "base": base,
                "head_sha": head_sha,
                "base_sha": self._merge_base(head_sha, base_sha),
                "merged_at": None,
                "merge_sha": None,
                "merged_by": None,
            },
        }
        return 201, self._pull_json(self.issues[number], full=True)

    def _merge_base(self, a: str, b: str) -> str:
        ancestors_b = {c.sha for c in self._ancestors(b)}
        return max(
            (c for c in self._ancestors(a) if c.sha in ancestors_b), key=lambda c: self._generation(c.sha)
        ).sha

    def _generation(self, sha: str) -> int:
        """Distance from the root commit: orders commits whose dates tie (same second)."""
        if sha not in self._generations:
            parents = self.commits[sha].parents
            self._generations[sha] = 1 + max((self._generation(p) for p in parents), default=0)
        return self._generations[sha]

    def _get_pull(self, user: User, params: dict[str, str], data: Any, number: str) -> tuple[int, Json]:
        return 200, self._pull_json(self._pull_or_404(number), full=True)

    def _edit_pull(self, user: User, params: dict[str, str], data: Any, number: str) -> tuple[int, Json]:
        issue = self._pull_or_404(number)
        data = data or {}
        for key in ("title", "body"):
            if key in data:
                issue[key] = data[key]
        if data.get("state") == "closed" and issue["state"] == "open":
            issue["pull"]["head_sha"] = self.refs.get(
                f"refs/heads/{issue['pull']['head']}", issue["pull"]["head_sha"]
            )
            issue["state"], issue["closed_at"] = "closed", self.clock()
        elif (
            data.get("state") == "open" and issue["state"] == "closed" and issue["pull"]["merged_at"] is None
        ):
            issue["state"], issue["closed_at"] = "open", None
        issue["updated_at"] = self.clock()
        return 200, self._pull_json(issue, full=True)

    def _is_merged(self, user: User, params: dict[str, str], data: Any, number: str) -> tuple[int, None]:
        if self._pull_or_404(number)["pull"]["merged_at"] is None:
            raise HTTPError(404, "Not Found")
        return 204, None

    def _squash_tree(self, pull: Json, head_sha: str) -> tuple[dict[str, str], list[str]]:
        """The base branch's tree with the PR's changes applied, and the paths that conflict."""
        base_tip = self.refs[f"refs/heads/{pull['base']}"]
        origin, head, tip = (
            self.commits[pull["base_sha"]].tree,
            self.commits[head_sha].tree,
            self.commits[base_tip].tree,
        )
        tree = dict(tip)
        conflicts = []
        for path in self._changed(pull["base_sha"], head_sha):
            if tip.get(path) not in (origin.get(path), head.get(path)):
                conflicts.append(path)
            elif head.get(path) is None:
                tree.pop(path, None)
            else:
                tree[path] = head[path]
        return tree, conflicts

    def _merge_pull(self, user: User, params: dict[str, str], data: Any, number: str) -> tuple[int, Json]:
        issue = self._pull_or_404(number)
        pull = issue["pull"]
        data = data or {}
        if not self._can_push(user):
            raise HTTPError(403, "Resource not accessible by personal access token")
        if issue["state"] != "open":
            raise HTTPError(405, "Pull Request is not mergeable")
        head_sha = self.refs.get(f"refs/heads/{pull['head']}", pull["head_sha"])
        if data.get("sha") and data["sha"] != head_sha:
            raise HTTPError(409, "Head branch was modified. Review and try the merge again.")
        method = data.get("merge_method", "merge")
        if method not in ("merge", "squash", "rebase"):
            raise HTTPError(
                422,
                "Validation Failed",
                errors=[{"resource": "PullRequest", "code": "invalid", "field": "merge_method"}],
            )
        if method != "squash":
            raise HTTPError(422, f"merge_method {method!r} is not implemented by the fake; sregraph squashes")
        tree, conflicts = self._squash_tree(pull, head_sha)
        if conflicts:
            raise HTTPError(405, "Pull Request is not mergeable")
        now = self.clock()
        title = data.get("commit_title") or f"{issue['title']} (#{issue['number']})"
        message = title + ("\n\n" + data["commit_message"] if data.get("commit_message") else "")
        base_ref = f"refs/heads/{pull['base']}"
        author = (issue["user"], f"{issue['user']}@users.noreply.fake", now)
        sha = self._new_commit(
            tree, [self.refs[base_ref]], message, author, ("GitHub", "noreply@github.com", now), issue["user"]
        )
        self.refs[base_ref] = sha
        pull.update(head_sha=head_sha, merged_at=now, merge_sha=sha, merged_by=user.login)
        issue.update(state="closed", closed_at=now, updated_at=now)
        return 200, {"sha": sha, "merged": True, "message": "Pull Request successfully merged"}


def _tree_sha(tree: dict[str, str]) -> str:
    return hashlib.sha1("".join(f"{p}\0{s}\n" for p, s in sorted(tree.items())).encode()).hexdigest()


def _default_fault_body(status: int) -> Json | str:
    if status in (502, 504):
        # GitHub's edge answers gateway errors with HTML, not JSON.
        return (
            "<html><head><title>502 Bad Gateway</title></head><body>Bad Gateway</body></html>"
            if status == 502
            else "<html><body>Gateway Timeout</body></html>"
        )
    if status == 429:
        return {
            "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
            "documentation_url": f"{_DOCS}/overview/rate-limits-for-the-rest-api",
        }
    return {
        "message": {500: "Server Error", 503: "Service Unavailable"}.get(status, f"Error {status}"),
        "documentation_url": _DOCS,
    }


def _fault_payload(fault: Fault) -> Json | bytes:
    return fault.body.encode() if isinstance(fault.body, str) else (fault.body or {})


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, as api.github.com speaks; every answer has a Content-Length."""

    fake: FakeGitHub
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes; Nagle would delay the body
    timeout = 10  # an idle keep-alive connection is dropped after this many seconds

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, out_headers, data = self.fake.handle(self.command, self.path, headers, body)
        try:
            self.send_response(status)
            for key, value in out_headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data:
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (a timeout): nothing to answer

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815 - http.server dispatches on these names

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the fake's own request log is `FakeGitHub.log`."""
