"""Pull requests: opening, editing and squash-merging them, with conflicts computed on the git model."""

from __future__ import annotations

import hashlib
from typing import Any

from tests.fakes.github.git import GitData
from tests.fakes.github.issues import Issues
from tests.fakes.github.model import HTTPError, Json, User, fmt_time


class Pulls(Issues, GitData):
    """Pull requests: issue records with a `pull` entry (head, base, merge state)."""

    def pulls(self) -> list[Json]:
        """Pull-request records."""
        with self.lock:
            return [i for i in self.issues.values() if "pull" in i]

    def _pull_or_404(self, number: str) -> Json:
        issue = self.issues.get(int(number))
        if issue is None or "pull" not in issue:
            raise HTTPError(404, "Not Found")
        return issue

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
            "created_at": fmt_time(issue["created_at"]),
            "updated_at": fmt_time(issue["updated_at"]),
            "closed_at": fmt_time(issue["closed_at"]),
            "merged_at": fmt_time(pull["merged_at"]),
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
