"""The fake's in-memory repository, and what it builds from its own address: URLs, `Link` pages, JSON of accounts."""

from __future__ import annotations

import base64
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any

from tests.fakes.github.model import Fault, GitCommit, Json, User, fmt_time


class RepoState:
    """One repository's accounts, issues, comments, labels and git objects, the request log and the faults queue."""

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
        """(method, path with query, status) of every request, in order."""
        self.errors: list[str] = []
        """Tracebacks of requests the fake itself failed on (a bug in the fake, not a scripted fault)."""
        self._ids = 1000
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

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

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

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
            "created_at": fmt_time(0),
            "updated_at": fmt_time(self.clock()),
            "pushed_at": fmt_time(self.clock()),
        }
