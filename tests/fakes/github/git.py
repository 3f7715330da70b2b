"""The flat git model (blobs, commits, refs) and the refs, contents and commits routes over it."""

from __future__ import annotations

import base64
import difflib
import hashlib
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

from tests.fakes.github.model import (
    GitCommit,
    HTTPError,
    Json,
    User,
    blob_sha,
    fmt_time,
    parse_time,
    tree_sha,
)
from tests.fakes.github.users import Users


class GitData(Users):
    """Commits as whole trees, branches and tags as refs, file contents, history and diffs."""

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
            f"tree {tree_sha(tree)}\n"
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

    def _ref_json(self, ref: str) -> Json:
        sha = self.refs[ref]
        return {
            "ref": ref,
            "node_id": f"REF_{hashlib.sha1(ref.encode()).hexdigest()[:12]}",
            "url": f"{self.repo_api}/git/{urllib.parse.quote(ref)}",
            "object": {"sha": sha, "type": "commit", "url": f"{self.repo_api}/git/commits/{sha}"},
        }

    def _person(self, who: tuple[str, str, float]) -> Json:
        return {"name": who[0], "email": who[1], "date": fmt_time(who[2])}

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
                "sha": tree_sha(commit.tree),
                "url": f"{self.repo_api}/git/trees/{tree_sha(commit.tree)}",
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
                        "sha": tree_sha({k: v for k, v in tree.items() if k.startswith(full + "/")}),
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
            parse_time(author_in["date"]) if author_in.get("date") else now,
        )
        committer = (
            committer_in.get("name", user.login),
            committer_in.get("email", f"{user.login}@users.noreply.fake"),
            parse_time(committer_in["date"]) if committer_in.get("date") else now,
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

    def _generation(self, sha: str) -> int:
        """Distance from the root commit: orders commits whose dates tie (same second)."""
        if sha not in self._generations:
            parents = self.commits[sha].parents
            self._generations[sha] = 1 + max((self._generation(p) for p in parents), default=0)
        return self._generations[sha]

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
            since = parse_time(params["since"])
            commits = [c for c in commits if c.committer[2] >= since]
        if params.get("until"):
            until = parse_time(params["until"])
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
