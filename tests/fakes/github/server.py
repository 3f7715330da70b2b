"""`FakeGitHub`: the HTTP server, the request pipeline (credentials, quota, faults, ETags) and the route table."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from tests.fakes.github.limits import Limits, fault_payload
from tests.fakes.github.model import DOCS, Fault, HTTPError, Json, User
from tests.fakes.github.pulls import Pulls


class FakeGitHub(Pulls, Limits):
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
        super().__init__(
            owner,
            name,
            max_per_page=max_per_page,
            rate_limit=rate_limit,
            clock=clock,
            default_branch=default_branch,
        )
        self.add_user(owner, role="admin", type="Organization", token=None)
        # Content of deleted accounts is attributed to @ghost, who has no permission on anything.
        self.add_user("ghost", role=None, token=None)

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

    def requests(self, method: str | None = None, path: str | None = None) -> list[tuple[str, str, int]]:
        """Logged requests, filtered by method and a regex searched in the path."""
        with self.lock:
            return [
                r
                for r in self.log
                if (method is None or r[0] == method) and (path is None or re.search(path, r[1]))
            ]

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
            return 401, {}, {"message": message, "documentation_url": DOCS, "status": "401"}
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
                    "documentation_url": f"{DOCS}/overview/rate-limits-for-the-rest-api",
                },
            )
        user.remaining -= 1
        rate = self._rate_headers(user)
        if fault is not None and not fault.after:
            return fault.status, {**rate, **fault.headers}, fault_payload(fault)
        try:
            status, extra, payload = self._route(user, method, path, params, body)
        except HTTPError as err:
            status, extra, payload = err.status, err.headers, err.body
        if fault is not None:
            return fault.status, {**rate, **fault.headers}, fault_payload(fault)
        return status, {**rate, **extra}, payload

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
