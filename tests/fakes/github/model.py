"""The fake's records and pure helpers: error answers, scripted faults, accounts, commits, timestamps, shas."""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

Json = dict[str, Any]

DOCS = "https://docs.github.com/rest"


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
        self.body: Json = {"message": message, "documentation_url": DOCS, "status": str(status)}
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


def fmt_time(ts: float | None) -> str | None:
    """GitHub's timestamp text (ISO 8601, UTC, seconds), or None."""
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def parse_time(text: str) -> float:
    """Seconds since the epoch of an ISO 8601 timestamp as clients send it (`since`, commit dates)."""
    text = text.strip().replace("Z", "+00:00")
    return datetime.fromisoformat(text).timestamp()


def blob_sha(data: bytes) -> str:
    """Git's object id of a blob."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def tree_sha(tree: dict[str, str]) -> str:
    """A stable id of a whole tree (path -> blob sha); not git's, but unique per content."""
    return hashlib.sha1("".join(f"{p}\0{s}\n" for p, s in sorted(tree.items())).encode()).hexdigest()
