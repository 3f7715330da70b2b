"""Accounts: tokens, roles on the repository and what each role may do."""

from __future__ import annotations

import hashlib
from typing import Any

from tests.fakes.github.model import HTTPError, Json, User
from tests.fakes.github.state import RepoState

ROLES = ("read", "triage", "write", "maintain", "admin")
_LEGACY_PERMISSION = {
    "admin": "admin",
    "maintain": "write",
    "write": "write",
    "triage": "read",
    "read": "read",
}


class Users(RepoState):
    """Creating accounts, authenticating requests, permissions and author associations."""

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

    def _authenticate(self, header: str) -> User | None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() not in ("token", "bearer") or not token:
            return None
        return next((u for u in self.users.values() if u.token == token.strip()), None)

    def _association(self, login: str) -> str:
        role = self.users[login].role
        return (
            "OWNER"
            if login == self.owner
            else ("COLLABORATOR" if role in ("write", "maintain", "admin") else "NONE")
        )

    def _can_push(self, user: User) -> bool:
        return user.role in ("write", "maintain", "admin") or user.login == self.owner

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
