"""The embedded GitOps backend: a real local git repository whose `main` branch is what runs.

Layout: one YAML mapping per service at `services/<service>.yaml`. Every commit sregraph writes is built
with plumbing (hash-object, a private index, merge-tree, commit-tree, update-ref), so proposals never touch
the checked-out work tree; only a move of `main` updates it, and only the files that changed.

Commits sregraph writes carry trailers that `history` reads back::

    Sregraph-Kind: deploy | config | rollback | other
    Sregraph-Services: payments
    Sregraph-PR: 3                  (squash merges only)
    Sregraph-Signature: v1:<hex>    (HMAC-SHA256 over kind, services and the blobs of the files written)

Provenance decides trust, never text: a commit is sregraph's own (`Change.ours`, never a suspect) only when its
signature verifies with sregraph's key (`signing_key`: $SREGRAPH_SIGNING_KEY, else a key file in the data
directory) or its sha is in sregraph's ledger of its own commits. Anything else — whatever its author name,
message or trailers say — is classified from the files it changed: a changed `version` is a deploy, any other
change under services/ is config. The squash-merge pin (the head commit that was proposed and reviewed) is
kept in sregraph's own store, not only in the PR body.

Pull requests live in `.git/sregraph-prs.db` (SQLite). Writers in several processes are serialised by an
flock on `.git/sregraph.lock`; `main` only moves by compare-and-swap, so a concurrent human commit makes
the move fail with TransientError instead of being overwritten. Needs git >= 2.38 (`merge-tree --write-tree`).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import logging
import os
import re
import secrets
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Literal, cast

from tools.base import (
    Change,
    Clock,
    ConfigError,
    NotFound,
    PullRequest,
    Refused,
    SystemClock,
    ToolError,
    TransientError,
)
from tools.gitops_common import (
    BRANCH_PREFIX,
    CHANGE_KINDS,
    KIND_TRAILER,
    SERVICE_NAME_RE,
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

logger = logging.getLogger(__name__)

DEPLOY_BRANCH = "main"
SIGNING_KEY_ENV = "SREGRAPH_SIGNING_KEY"
SIGNING_KEY_FILE = "signing.key"

PRState = Literal["open", "merged", "closed"]
_MAIN_REF = f"refs/heads/{DEPLOY_BRANCH}"
_BOT_AUTHOR = "sregraph"
# How many earlier versions of a service `propose` compares against to recognise a rollback.
_ROLLBACK_LOOKBACK = 20

_PR_SCHEMA = """
CREATE TABLE IF NOT EXISTS own_commits (
    sha        TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pull_requests (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    branch     TEXT NOT NULL,
    title      TEXT NOT NULL,
    body       TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('open', 'merged', 'closed')),
    head_sha   TEXT NOT NULL,
    base_sha   TEXT NOT NULL,
    merge_sha  TEXT,
    service    TEXT NOT NULL,
    key        TEXT UNIQUE,
    kind       TEXT NOT NULL,
    author     TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
"""


# --------------------------------------------------------------------------- provenance


def signing_key(directory: Path | str | None, environ: Mapping[str, str] | None = None) -> bytes:
    """sregraph's commit-signing key: $SREGRAPH_SIGNING_KEY, else `directory`/signing.key (made once, mode 0600).

    With neither (no directory given) a random key for this process only: its commits are still recognised
    through the ledger of own commits, not by signature, in a later process.
    """
    environ = os.environ if environ is None else environ
    value = environ.get(SIGNING_KEY_ENV, "").strip()
    if value:
        return value.encode()
    if directory is None:
        return secrets.token_bytes(32)
    path = Path(directory) / SIGNING_KEY_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    except ValueError as exc:
        raise ConfigError(f"{path}: not a hex signing key ({exc}); delete it to make a new one") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    try:
        # O_EXCL: two processes starting at once agree on one key (the loser reads the winner's).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex() + "\n")
    return key


def git_blob_id(content: bytes) -> str:
    """The id git gives a blob with this content (what `git hash-object` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def commit_signature(key: bytes, kind: str, services: Sequence[str], blobs: Mapping[str, str]) -> str:
    """The Sregraph-Signature of a commit of `kind` on `services` writing `blobs` ({path: blob id})."""
    payload = "\n".join(
        [
            "sregraph-commit-v1",
            kind,
            ",".join(sorted(services)),
            *(f"{p} {b}" for p, b in sorted(blobs.items())),
        ]
    )
    return "v1:" + hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


def signature_valid(
    key: bytes, signature: str, kind: str, services: Sequence[str], blobs: Mapping[str, str]
) -> bool:
    """Whether `signature` is sregraph's for a commit with this kind, services and written blobs."""
    if not signature or not blobs:
        return False
    return hmac.compare_digest(signature.strip(), commit_signature(key, kind, services, blobs))


class ProvenanceStore:
    """sregraph's ledger for a remote GitOps repository: the commits it made, and the head each PR is pinned to.

    A PR body is editable by anyone who can edit the PR; what sregraph proposed (and merges, and trusts) is
    read from here. `path=None` keeps it in memory, for this process only.
    """

    _SCHEMA = """
    CREATE TABLE IF NOT EXISTS own_commits (sha TEXT PRIMARY KEY, kind TEXT NOT NULL, created_at REAL NOT NULL);
    CREATE TABLE IF NOT EXISTS pins (
        repo TEXT NOT NULL, branch TEXT NOT NULL, head_sha TEXT NOT NULL, service TEXT NOT NULL,
        kind TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (repo, branch)
    );
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = None if path is None else Path(path)
        self._lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            ":memory:" if self.path is None else str(self.path),
            timeout=10.0,
            isolation_level=None,
            check_same_thread=False,
        )
        with self._lock:
            self._conn.executescript(self._SCHEMA)

    def record_own(self, sha: str, kind: str) -> None:
        """Remember a commit sregraph made."""
        with self._lock:
            self._conn.execute("INSERT OR IGNORE INTO own_commits VALUES (?, ?, ?)", (sha, kind, time.time()))

    def is_own(self, sha: str) -> bool:
        """Whether sregraph made this commit."""
        with self._lock:
            return (
                self._conn.execute("SELECT 1 FROM own_commits WHERE sha = ?", (sha,)).fetchone() is not None
            )

    def pin(self, repo: str, branch: str, head_sha: str, service: str, kind: str) -> None:
        """Pin a proposed PR's branch to the head sregraph committed (the first pin stays)."""
        with self._lock:
            self._conn.execute(
                "INSERT OR IGNORE INTO pins VALUES (?, ?, ?, ?, ?, ?)",
                (repo, branch, head_sha, service, kind, time.time()),
            )

    def pinned(self, repo: str, branch: str) -> tuple[str, str, str] | None:
        """(head sha, service, kind) sregraph proposed on this branch, or None if it proposed nothing there."""
        with self._lock:
            row = self._conn.execute(
                "SELECT head_sha, service, kind FROM pins WHERE repo = ? AND branch = ?", (repo, branch)
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]), str(row[2]))

    def close(self) -> None:
        """Close the database."""
        self._conn.close()


def is_own_change(change: Change) -> bool:
    """Whether sregraph itself made this change (signed trailer verified, or in its ledger of own commits).

    Its own remediations are never suspects; author names and commit messages play no part in this.
    """
    return change.ours


class MergeConflict(ToolError):
    """The pull request no longer applies cleanly to the deploy branch."""


class LocalGitOps:
    """GitOps over a local git repository; deploy branch `main`, configs at services/<service>.yaml."""

    def __init__(
        self,
        repo_dir: Path | str,
        clock: Clock | None = None,
        *,
        timeout_s: float = 30.0,
        lock_timeout_s: float = 30.0,
        key: bytes | None = None,
    ) -> None:
        """Open an existing repository; ConfigError if it is not a git repository with a `main` branch.

        `key` signs sregraph's commits; default `signing_key` of the repository's git directory.
        """
        self.clock: Clock = clock or SystemClock()
        self._git = _Git(_resolve_repo(repo_dir), timeout_s)
        self.repo_dir = self._git.repo
        self._lock_timeout_s = lock_timeout_s
        top = self._git.run("rev-parse", "--show-toplevel", ok=(0, 128))
        toplevel = top.stdout.decode(errors="replace").strip()
        if top.returncode != 0 or Path(toplevel).resolve() != self.repo_dir:
            # git's own words matter here too, e.g. "detected dubious ownership" names the fix.
            detail = top.stderr.decode(errors="replace").strip()
            raise ConfigError(
                f"repo_dir: {self.repo_dir} is not the top of a git work tree "
                f"(create one with LocalGitOps.init){': ' + detail if detail else ''}"
            )
        if self._rev(_MAIN_REF) is None:
            raise ConfigError(f"repo_dir: {self.repo_dir} has no '{DEPLOY_BRANCH}' branch with a commit")
        common = Path(self._git.text("rev-parse", "--git-common-dir"))
        self.git_dir = common if common.is_absolute() else (self.repo_dir / common).resolve()
        self._db_path = self.git_dir / "sregraph-prs.db"
        self._key = key if key is not None else signing_key(self.git_dir)
        with self._db() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_PR_SCHEMA)

    @classmethod
    def init(
        cls,
        repo_dir: Path | str,
        configs: Mapping[str, Mapping[str, Any]],
        author: str = "sregraph-seed",
        clock: Clock | None = None,
    ) -> LocalGitOps:
        """Create the repository with one commit holding `configs`; an existing repository is just opened."""
        repo = _resolve_repo(repo_dir, must_exist=False)
        if (repo / ".git").exists():
            return cls(repo, clock)
        files = {
            service_path(name): dump_config(config, f"configs[{name!r}]") for name, config in configs.items()
        }
        try:
            repo.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"repo_dir: cannot create {repo}: {exc}") from exc
        git = _Git(repo, 30.0)
        git.run("init", "--quiet", f"--initial-branch={DEPLOY_BRANCH}")
        # The seed is tagged "other": it is where history starts, not a change an analyst should suspect.
        key = signing_key(repo / ".git")
        blob_ids = {path: git_blob_id(content) for path, content in files.items()}
        signature = commit_signature(key, "other", sorted(configs), blob_ids)
        message = commit_message(
            "Seed deploy configuration", "", "other", sorted(configs), signature=signature
        )
        tree = _write_tree(git, None, files)
        seed = _commit_tree(git, clock or SystemClock(), tree, [], message, author)
        _advance_main(git, None, seed)
        ops = cls(repo, clock)
        ops._record_own(seed, "other")
        return ops

    # ------------------------------------------------------------------ read side

    def config(self, service: str) -> dict[str, Any]:
        """The service's config at the tip of main; NotFound if it has none."""
        path = service_path(service)
        data = self._git.blobs([f"{_MAIN_REF}:{path}"])[0]
        if data is None:
            raise NotFound(f"service {service!r} has no config ({path} is missing on {DEPLOY_BRANCH})")
        return parse_config(data, f"{DEPLOY_BRANCH}:{path}")

    def services(self) -> list[str]:
        """Names of the services with a config on main."""
        out = self._git.text("ls-tree", "--name-only", f"{_MAIN_REF}:{SERVICES_DIR}", ok=(0, 128))
        return sorted(name[: -len(".yaml")] for name in out.splitlines() if name.endswith(".yaml"))

    def history(
        self, since: float | None = None, service: str | None = None, limit: int | None = None
    ) -> list[Change]:
        """Commits on main (first-parent), newest first, optionally since a time and touching a service."""
        if service is not None:
            service_path(service)
        changes = self._log([_MAIN_REF])
        selected = [
            change
            for change in changes
            if (since is None or change.at >= since) and (service is None or service in change.services)
        ]
        return selected if limit is None else selected[:limit]

    def rollback_config(self, service: str, before: float | str | None = None) -> dict[str, Any]:
        """The service's config just before a change: a sha, a time, or (default) its newest change."""
        path = service_path(service)
        if isinstance(before, str):
            sha = self._rev(before)
            if sha is None:
                raise NotFound(f"no commit {before!r} in {self.repo_dir}")
            rev, what = f"{sha}^", f"before {sha[:12]}"
        elif before is None:
            latest = self.history(service=service, limit=1)
            if not latest:
                raise NotFound(f"service {service!r} has no change on {DEPLOY_BRANCH}")
            rev, what = f"{latest[0].sha}^", f"before its newest change {latest[0].sha[:12]}"
        else:
            earlier = [change for change in self._log([_MAIN_REF]) if change.at < before]
            if not earlier:
                raise NotFound(f"{DEPLOY_BRANCH} has no commit before t={before}")
            rev, what = earlier[0].sha, f"at t<{before} ({earlier[0].sha[:12]})"
        data = self._git.blobs([f"{rev}:{path}"])[0]
        if data is None:
            raise NotFound(f"service {service!r} had no config {what}")
        return parse_config(data, f"{rev}:{path}")

    def pull_requests(self, state: Literal["open", "merged", "closed", "all"] = "all") -> list[PullRequest]:
        """Pull requests in a state, newest first."""
        if state not in ("open", "merged", "closed", "all"):
            raise ConfigError(f"state: expected open, merged, closed or all, got {state!r}")
        with self._db() as conn:
            if state == "all":
                rows = conn.execute("SELECT * FROM pull_requests ORDER BY id DESC").fetchall()
            else:
                rows = conn.execute(
                    "SELECT * FROM pull_requests WHERE state = ? ORDER BY id DESC", (state,)
                ).fetchall()
        return [_pr(row) for row in rows]

    def get_pr(self, pr_id: int) -> PullRequest:
        """One pull request; NotFound if missing."""
        return _pr(self._pr_row(pr_id))

    # ------------------------------------------------------------------ write side

    def commit_config(
        self,
        service: str,
        new_config: Mapping[str, Any],
        message: str,
        kind: ChangeKind = "deploy",
        author: str = "operator",
    ) -> Change:
        """Commit a service's config straight to main, as a human or CI deploy would."""
        path = service_path(service)
        if kind not in CHANGE_KINDS:
            raise ConfigError(f"kind: expected one of {', '.join(CHANGE_KINDS)}, got {kind!r}")
        content = dump_config(new_config, "new_config")
        with self._locked():
            main = self._main()
            current = self._git.blobs([f"{main}:{path}"])[0]
            if current is not None and (current == content or same_config(current, new_config)):
                raise Refused(f"config for {service!r} is identical to {DEPLOY_BRANCH}; nothing to commit")
            subject, _, rest = message.strip().partition("\n")
            tree = self._tree_with(main, {path: content})
            sha = self._commit_tree(tree, [main], commit_message(subject, rest, kind, [service]), author)
            self._advance_main(main, sha)
        return self._log([sha, "-1"])[0]

    def propose(
        self,
        service: str,
        new_config: Mapping[str, Any],
        title: str,
        body: str,
        key: str | None = None,
        *,
        kind: ChangeKind | None = None,
        author: str = _BOT_AUTHOR,
    ) -> PullRequest:
        """Branch + commit + PR setting the service's config; a repeated key returns the first PR."""
        path = service_path(service)
        content = dump_config(new_config, "new_config")
        title, body = redact_out(title), redact_out(body)
        if kind is not None and kind not in CHANGE_KINDS:
            raise ConfigError(f"kind: expected one of {', '.join(CHANGE_KINDS)}, got {kind!r}")
        with self._locked():
            if key is not None:
                existing = self._pr_by_key(key)
                if existing is not None:
                    return existing
            main = self._main()
            current = self._git.blobs([f"{main}:{path}"])[0]
            if current is None:
                raise NotFound(f"service {service!r} has no config ({path} is missing on {DEPLOY_BRANCH})")
            if current == content or same_config(current, new_config):
                raise Refused(
                    f"proposed config for {service!r} is identical to {DEPLOY_BRANCH}; nothing to propose"
                )
            if kind is None:
                kind = "rollback" if self._is_earlier_config(service, new_config) else "config"
            tree = self._tree_with(main, {path: content})
            signature = commit_signature(self._key, kind, [service], {path: git_blob_id(content)})
            head = self._commit_tree(
                tree, [main], commit_message(title, body, kind, [service], signature=signature), author
            )
            self._record_own(head, kind)
            branch = BRANCH_PREFIX + (slug(key) if key is not None else f"{slug(title)}-{head[:8]}")
            if self._rev(f"refs/heads/{branch}") is not None:
                branch = f"{branch}-{head[:8]}"
            # An empty old value makes update-ref fail rather than overwrite a branch that appeared meanwhile.
            self._git.run("update-ref", "-m", "sregraph: propose", f"refs/heads/{branch}", head, "")
            now = self.clock.now()
            with self._db() as conn:
                cur = conn.execute(
                    "INSERT INTO pull_requests (branch, title, body, state, head_sha, base_sha, service, key,"
                    " kind, author, created_at, updated_at) VALUES (?, ?, ?, 'open', ?, ?, ?, ?, ?, ?, ?, ?)",
                    (branch, title, body, head, main, service, key, kind, author, now, now),
                )
                pr_id = int(cur.lastrowid or 0)
        logger.info("proposed PR #%d on %s for %s (%s)", pr_id, branch, service, kind)
        return self.get_pr(pr_id)

    def merge(self, pr_id: int) -> PullRequest:
        """Squash-merge a pull request onto main and update the work tree; a merged PR is returned as is."""
        with self._locked():
            row = self._pr_row(pr_id)
            if row["state"] == "merged":
                return _pr(row)
            if row["state"] == "closed":
                raise Refused(f"PR #{pr_id} is closed; propose the change again")
            branch, head = str(row["branch"]), str(row["head_sha"])
            tip = self._rev(f"refs/heads/{branch}")
            if tip is not None and tip != head:
                # What was reviewed and approved is head_sha; merging a branch that moved would skip review.
                raise Refused(
                    f"PR #{pr_id}: branch {branch} moved from {head[:12]} to {tip[:12]} since it was proposed"
                )
            main = self._main()
            merged = self._git.run(
                "merge-tree", "--write-tree", "--name-only", "--no-messages", main, head, ok=(0, 1)
            )
            lines = merged.stdout.decode(errors="replace").splitlines()
            if merged.returncode == 1:
                conflicts = ", ".join(line for line in lines[1:] if line) or "unknown files"
                raise MergeConflict(
                    f"PR #{pr_id} ({branch}) conflicts with {DEPLOY_BRANCH} at {main[:12]} in {conflicts}: "
                    "the config changed since the PR was proposed; close it and propose again"
                )
            tree = lines[0].strip()
            if tree == self._git.text("rev-parse", f"{main}^{{tree}}"):
                # Main already holds exactly this change (a crash after the merge commit): no empty commit.
                merge_sha = main
            else:
                service, kind = str(row["service"]), str(row["kind"])
                path = service_path(service)
                blob = self._git.text("rev-parse", f"{tree}:{path}")
                signature = commit_signature(self._key, kind, [service], {path: blob})
                message = commit_message(
                    str(row["title"]), str(row["body"]), kind, [service], pr_id=pr_id, signature=signature
                )
                merge_sha = self._commit_tree(tree, [main], message, str(row["author"]))
                self._record_own(merge_sha, kind)
                self._advance_main(main, merge_sha)
            self._set_state(pr_id, "merged", merge_sha=merge_sha)
            self._delete_branch(branch, head)
        logger.info("merged PR #%d as %s", pr_id, merge_sha[:12])
        return self.get_pr(pr_id)

    def close_pr(self, pr_id: int) -> PullRequest:
        """Close an open pull request and delete its branch; Refused for a merged one."""
        with self._locked():
            row = self._pr_row(pr_id)
            if row["state"] == "merged":
                raise Refused(f"PR #{pr_id} is already merged; propose a rollback instead")
            if row["state"] == "open":
                self._set_state(pr_id, "closed")
                self._delete_branch(str(row["branch"]), str(row["head_sha"]))
        return self.get_pr(pr_id)

    def prune_branches(self, keep: int) -> list[str]:
        """Close all but the `keep` newest open PRs, delete stray sregraph/ branches; return those deleted."""
        if keep < 0:
            raise ConfigError(f"keep: must be >= 0, got {keep}")
        deleted: list[str] = []
        with self._locked():
            open_prs = self.pull_requests("open")
            for pr in open_prs[keep:]:
                self._set_state(pr.id, "closed")
                if self._delete_branch(pr.branch, pr.head_sha):
                    deleted.append(pr.branch)
            kept = {pr.branch for pr in open_prs[:keep]}
            refs = self._git.text("for-each-ref", "--format=%(refname)", f"refs/heads/{BRANCH_PREFIX}")
            for ref in refs.splitlines():
                branch = ref.removeprefix("refs/heads/")
                if branch not in kept and branch not in deleted and self._delete_branch(branch, None):
                    deleted.append(branch)
        return deleted

    # ------------------------------------------------------------------ git helpers

    def _rev(self, rev: str) -> str | None:
        out = self._git.run(
            "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}", ok=(0, 1, 128)
        )
        return out.stdout.decode().strip() if out.returncode == 0 else None

    def _main(self) -> str:
        sha = self._rev(_MAIN_REF)
        if sha is None:
            raise ToolError(f"{self.repo_dir}: branch {DEPLOY_BRANCH} disappeared")
        return sha

    def _tree_with(self, parent: str, files: Mapping[str, bytes]) -> str:
        return _write_tree(self._git, parent, files)

    def _commit_tree(self, tree: str, parents: Sequence[str], message: str, author: str) -> str:
        return _commit_tree(self._git, self.clock, tree, parents, message, author)

    def _advance_main(self, old: str, new: str) -> None:
        _advance_main(self._git, old, new)

    def _delete_branch(self, branch: str, expected: str | None) -> bool:
        args = ["update-ref", "-d", f"refs/heads/{branch}"] + ([expected] if expected else [])
        result = self._git.run(*args, ok=None)
        if result.returncode != 0:
            stderr = result.stderr.decode(errors="replace").strip()
            logger.warning("could not delete branch %s: %s", branch, stderr)
            return False
        return True

    def _log(self, revs: Sequence[str]) -> list[Change]:
        fields = ["%H", "%P", "%ct", "%an", "%B"] + [
            f"%(trailers:key={key},valueonly,separator=%x2C)"
            for key in (KIND_TRAILER, SERVICES_TRAILER, SIGNATURE_TRAILER)
        ]
        # Raw stdout: str.strip() and splitlines() treat the \x1e/\x1f separators as whitespace.
        out = self._git.run(
            "-c",
            "log.showRoot=true",
            "log",
            "--first-parent",
            "--diff-merges=first-parent",
            "--name-only",
            "--format=%x1e" + "%x1f".join(fields) + "%x1f",
            *revs,
            "--",
        ).stdout.decode(errors="replace")
        raw: list[tuple[str, str, float, str, str, str, list[str], str, list[str]]] = []
        for chunk in out.split("\x1e")[1:]:
            sha, parents, ct, author, body, kind, services, signature, names = chunk.split("\x1f", 8)
            paths = [line for line in names.split("\n") if line.strip()]
            parent = parents.split()[0] if parents else ""
            listed = [name.strip() for name in services.split(",") if name.strip()]
            raw.append(
                (sha, parent, float(ct), author, body, kind.split(",")[-1].strip(), listed, signature, paths)
            )
        # Provenance: sregraph's ledger of its own commits, else a signature over the blobs the commit wrote
        # (one batch lookup of blob ids for the whole log).
        own = self._own_commits()
        to_verify = [
            (sha, [f"{sha}:{service_path(s)}" for s in listed if SERVICE_NAME_RE.match(s)])
            for sha, _, _, _, _, kind, listed, signature, _ in raw
            if sha not in own and kind and signature
        ]
        id_specs = [spec for _, specs_of in to_verify for spec in specs_of]
        ids = dict(zip(id_specs, self._git.blob_ids(id_specs), strict=True)) if id_specs else {}
        ours: set[str] = set(own)
        for sha, specs_of in to_verify:
            row = next(r for r in raw if r[0] == sha)
            blob_ids = {spec.split(":", 1)[1]: blob for spec in specs_of if (blob := ids.get(spec))}
            if len(blob_ids) == len(specs_of) and signature_valid(
                self._key, row[7], row[5], row[6], blob_ids
            ):
                ours.add(sha)
        # Other commits are classified by comparing `version` before and after; one batch read covers every
        # such file in the whole log.
        specs: list[str] = []
        for sha, parent, _, _, _, _, _, _, paths in raw:
            if sha not in ours:
                for path in paths:
                    if path_service(path):
                        specs += [f"{parent}:{path}" if parent else "", f"{sha}:{path}"]
        blobs = dict(zip(specs, self._git.blobs(specs), strict=True)) if specs else {}
        changes: list[Change] = []
        for sha, parent, at, author, body, kind, listed, _, paths in raw:
            touched = sorted({name for path in paths if (name := path_service(path))})
            if sha in ours:
                change_kind = kind if kind in CHANGE_KINDS else "other"
                services_of = listed or touched
            else:
                # Trailers on a commit sregraph cannot vouch for are text anyone could write: ignored.
                change_kind = _infer_kind(parent, sha, paths, blobs)
                services_of = touched
            changes.append(
                Change(
                    sha=sha,
                    at=at,
                    author=author,
                    message=body.strip(),
                    services=services_of,
                    kind=cast(ChangeKind, change_kind),
                    ours=sha in ours,
                )
            )
        return changes

    def _own_commits(self) -> set[str]:
        with self._db() as conn:
            return {str(row[0]) for row in conn.execute("SELECT sha FROM own_commits")}

    def _record_own(self, sha: str, kind: str) -> None:
        """Remember a commit sregraph made (its ledger of own commits: provenance without the key)."""
        with self._db() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO own_commits (sha, kind, created_at) VALUES (?, ?, ?)",
                (sha, kind, self.clock.now()),
            )

    def _is_earlier_config(self, service: str, config: Mapping[str, Any]) -> bool:
        """Whether `config` equals a version the service had before one of its recent changes."""
        path = service_path(service)
        changes = self.history(service=service, limit=_ROLLBACK_LOOKBACK)
        blobs = self._git.blobs([f"{change.sha}^:{path}" for change in changes])
        return any(blob is not None and same_config(blob, config) for blob in blobs)

    # ------------------------------------------------------------------ PR store

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(self._db_path, timeout=10.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise ToolError(f"cannot open PR store {self._db_path}: {exc}") from exc
        with closing(conn):
            conn.row_factory = sqlite3.Row
            try:
                conn.execute("PRAGMA busy_timeout=10000")
                yield conn
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    raise TransientError(f"PR store {self._db_path} is busy: {exc}") from exc
                raise ToolError(f"PR store {self._db_path}: {exc}") from exc
            except sqlite3.Error as exc:
                raise ToolError(f"PR store {self._db_path}: {exc}") from exc

    def _pr_row(self, pr_id: int) -> sqlite3.Row:
        with self._db() as conn:
            row: sqlite3.Row | None = conn.execute(
                "SELECT * FROM pull_requests WHERE id = ?", (pr_id,)
            ).fetchone()
        if row is None:
            raise NotFound(f"pull request #{pr_id} does not exist")
        return row

    def _pr_by_key(self, key: str) -> PullRequest | None:
        with self._db() as conn:
            row = conn.execute("SELECT * FROM pull_requests WHERE key = ?", (key,)).fetchone()
        return None if row is None else _pr(row)

    def _set_state(self, pr_id: int, state: PRState, merge_sha: str | None = None) -> None:
        with self._db() as conn:
            conn.execute(
                "UPDATE pull_requests SET state = ?, merge_sha = COALESCE(?, merge_sha), updated_at = ?"
                " WHERE id = ?",
                (state, merge_sha, self.clock.now(), pr_id),
            )

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise sregraph writers across threads and processes (flock conflicts between open files)."""
        with open(self.git_dir / "sregraph.lock", "a") as handle:
            # Real time on purpose: this bounds a wait on another process, not a simulated duration.
            deadline = time.monotonic() + self._lock_timeout_s
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TransientError(
                            f"{self.repo_dir}: another sregraph writer holds the lock"
                        ) from None
                    time.sleep(0.02)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- git process


class _Git:
    """Runs git in one repository: argument lists only, a timeout on every call, errors as ToolError."""

    def __init__(self, repo: Path, timeout_s: float) -> None:
        self.repo = repo
        self.timeout_s = timeout_s
        # Inherited GIT_DIR / GIT_INDEX_FILE (e.g. when run from a git hook) would point git elsewhere.
        self.env = {name: value for name, value in os.environ.items() if not name.startswith("GIT_")}
        self.env.update({"LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0"})

    def run(
        self,
        *args: str,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
        ok: Sequence[int] | None = (0,),
        identity: str = _BOT_AUTHOR,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run one git command; a return code outside `ok` (None: any) raises ToolError with git's stderr."""
        name, email = _identity(identity)
        command = [
            "git",
            "-C",
            str(self.repo),
            # Per-command settings so a machine without (or with an unusual) global config behaves the same.
            "-c",
            f"user.name={name}",
            "-c",
            f"user.email={email}",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "core.autocrlf=false",
            "-c",
            "core.quotePath=false",
            "-c",
            "log.showSignature=false",
            *args,
        ]
        try:
            result = subprocess.run(
                command,
                input=input,
                capture_output=True,
                env={**self.env, **(env or {})},
                timeout=self.timeout_s,
                check=False,
            )
        except FileNotFoundError as exc:
            raise ConfigError("git: the git executable was not found on PATH") from exc
        except subprocess.TimeoutExpired as exc:
            raise TransientError(f"git {args[0]} timed out after {self.timeout_s}s in {self.repo}") from exc
        if ok is not None and result.returncode not in ok:
            stderr = result.stderr.decode(errors="replace").strip() or result.stdout.decode(errors="replace")
            message = f"git {' '.join(args[:2])} failed in {self.repo} (exit {result.returncode}): {stderr}"
            if "index.lock" in stderr or "cannot lock ref" in stderr or "Unable to create" in stderr:
                raise TransientError(message)
            raise ToolError(message)
        return result

    def text(self, *args: str, **kwargs: Any) -> str:
        """Run git and return its stdout as stripped text."""
        return self.run(*args, **kwargs).stdout.decode(errors="replace").strip()

    def blob_ids(self, specs: Sequence[str]) -> list[str | None]:
        """Blob ids of `<rev>:<path>` specs in one process; None for a missing object or a non-blob."""
        if not specs:
            return []
        out = self.run("cat-file", "--batch-check", input="".join(f"{s}\n" for s in specs).encode()).stdout
        ids: list[str | None] = []
        for line in out.decode(errors="replace").splitlines()[: len(specs)]:
            parts = line.split(" ")
            ids.append(parts[0] if len(parts) == 3 and parts[1] == "blob" else None)
        return ids + [None] * (len(specs) - len(ids))

    def blobs(self, specs: Sequence[str]) -> list[bytes | None]:
        """Contents of `<rev>:<path>` specs in one process; None for a missing object (or an empty spec)."""
        if not specs:
            return []
        batch = "".join(f"{spec or 'missing-object'}\n" for spec in specs).encode()
        out = self.run("cat-file", "--batch", input=batch).stdout
        result: list[bytes | None] = []
        pos = 0
        for _ in specs:
            end = out.index(b"\n", pos)
            header = out[pos:end].decode(errors="replace").split(" ")
            pos = end + 1
            if len(header) == 3 and header[2].isdigit():
                size = int(header[2])
                result.append(out[pos : pos + size] if header[1] == "blob" else None)
                pos += size + 1
            else:
                result.append(None)  # "<spec> missing" or "ambiguous"
        return result


def _write_tree(git: _Git, parent: str | None, files: Mapping[str, bytes]) -> str:
    """The tree of `parent` (or an empty one) with `files` written, built in a private index file."""
    # A throwaway index keeps the checked-out work tree and its real index untouched.
    with tempfile.TemporaryDirectory(prefix="sregraph-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        if parent is not None:
            git.run("read-tree", parent, env=env)
        for path, content in files.items():
            blob = git.text("hash-object", "-w", "--stdin", input=content)
            git.run("update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=env)
        return git.text("write-tree", env=env)


def _commit_tree(
    git: _Git, clock: Clock, tree: str, parents: Sequence[str], message: str, author: str
) -> str:
    # Both dates come from the injected clock so replays and tests produce stable history; git keeps seconds.
    stamp = f"@{int(clock.now())} +0000"
    parent_args = [arg for parent in parents for arg in ("-p", parent)]
    return git.text(
        "commit-tree",
        tree,
        *parent_args,
        "-F",
        "-",
        input=message.encode(),
        env={"GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp},
        identity=author,
    )


def _advance_main(git: _Git, old: str | None, new: str) -> None:
    """Move main from `old` to `new` (compare-and-swap) and bring a work tree on main along."""
    empty_tree = git.text("mktree", input=b"")
    base = old or empty_tree
    paths = [p for p in git.text("diff-tree", "-r", "--name-only", "-z", base, new).split("\0") if p]
    on_main = git.run("symbolic-ref", "-q", "HEAD", ok=(0, 1)).stdout.decode().strip() == _MAIN_REF
    if on_main and paths:
        dirty = git.text("status", "--porcelain", "--untracked-files=all", "--", *paths)
        if dirty:
            raise Refused(
                f"the work tree of {git.repo} has local changes to {', '.join(paths)}: "
                "commit or discard them before sregraph moves main"
            )
    git.run("update-ref", "-m", "sregraph: advance main", _MAIN_REF, new, old or "")
    if not on_main:
        logger.warning("%s: HEAD is not on %s; work tree left as is", git.repo, DEPLOY_BRANCH)
        return
    synced = git.run("read-tree", "-m", "-u", base, new, ok=None)
    if synced.returncode != 0:
        raise ToolError(
            f"{DEPLOY_BRANCH} is now {new[:12]} but the work tree of {git.repo} could not follow: "
            f"{synced.stderr.decode(errors='replace').strip()}; run `git checkout -f {DEPLOY_BRANCH}` there"
        )


# --------------------------------------------------------------------------- small pure helpers


def _resolve_repo(repo_dir: Path | str, must_exist: bool = True) -> Path:
    repo = Path(repo_dir).expanduser().resolve()
    if must_exist and not repo.is_dir():
        raise ConfigError(f"repo_dir: {repo} does not exist or is not a directory")
    if repo.exists() and not repo.is_dir():
        raise ConfigError(f"repo_dir: {repo} is not a directory")
    return repo


def _version(data: bytes | None) -> object:
    if data is None:
        return None
    try:
        return parse_config(data, "").get("version")
    except ConfigError:
        return None


def _infer_kind(parent: str, sha: str, paths: Sequence[str], blobs: Mapping[str, bytes | None]) -> ChangeKind:
    """Kind of a commit sregraph did not write, from the files it changed (never from its message)."""
    service_paths = [path for path in paths if path_service(path)]
    if not service_paths:
        return "other"
    for path in service_paths:
        before = blobs.get(f"{parent}:{path}" if parent else "")
        after = blobs.get(f"{sha}:{path}")
        if after is not None and _version(before) != _version(after):
            return "deploy"
    return "config"


def _identity(author: str) -> tuple[str, str]:
    match = re.fullmatch(r"\s*(.*?)\s*<([^<>]+)>\s*", author)
    if match:
        return match.group(1) or match.group(2), match.group(2)
    name = author.strip() or _BOT_AUTHOR
    return name, f"{slug(name)}@sregraph.local"


def _pr(row: sqlite3.Row) -> PullRequest:
    return PullRequest(
        id=int(row["id"]),
        branch=row["branch"],
        title=row["title"],
        body=row["body"],
        state=row["state"],
        head_sha=row["head_sha"],
        merge_sha=row["merge_sha"],
        service=row["service"],
        key=row["key"],
        url=f"local://pulls/{row['id']}",
    )
