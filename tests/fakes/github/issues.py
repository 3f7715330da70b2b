"""Issues, their comments and labels: the routes, their JSON shapes, and helpers that act as a human in the web UI."""

from __future__ import annotations

import urllib.parse
from typing import Any

from tests.fakes.github.model import HTTPError, Json, User, fmt_time, parse_time
from tests.fakes.github.users import Users


class Issues(Users):
    """Issues (pull requests share their numbers), comments and labels."""

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

    def open_issues(self) -> list[Json]:
        """Open issues that are not pull requests."""
        with self.lock:
            return [i for i in self.issues.values() if i["state"] == "open" and "pull" not in i]

    def issue_comments(self, number: int) -> list[Json]:
        """Comments on one issue, oldest first."""
        with self.lock:
            return [c for c in sorted(self.comments.values(), key=lambda c: c["id"]) if c["issue"] == number]

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

    def _issue_or_404(self, number: str | int) -> Json:
        issue = self.issues.get(int(number))
        if issue is None:
            raise HTTPError(404, "Not Found")
        return issue

    def _ensure_label(self, name: str) -> None:
        if name not in self.labels:
            self.labels[name] = {"id": self._next_id(), "color": "ededed", "description": None}

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
            "created_at": fmt_time(issue["created_at"]),
            "updated_at": fmt_time(issue["updated_at"]),
            "closed_at": fmt_time(issue["closed_at"]),
            "author_association": self._association(issue["user"]),
        }
        if "pull" in issue:
            out["pull_request"] = {
                "url": f"{self.repo_api}/pulls/{n}",
                "html_url": f"{self.repo_html}/pull/{n}",
                "diff_url": f"{self.repo_html}/pull/{n}.diff",
                "patch_url": f"{self.repo_html}/pull/{n}.patch",
                "merged_at": fmt_time(issue["pull"]["merged_at"]),
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
            "created_at": fmt_time(comment["created_at"]),
            "updated_at": fmt_time(comment["updated_at"]),
            "author_association": self._association(comment["user"]),
        }

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
            since = parse_time(params["since"])
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
            since = parse_time(params["since"])
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
            since = parse_time(params["since"])
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
