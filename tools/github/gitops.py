"""GitHubGitOps: the GitOps backend on a GitHub repository, remediations as pull requests."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Self

from github import GithubException, InputGitAuthor
from github.ContentFile import ContentFile
from github.PullRequest import PullRequest as GHPull

from tools.base import Change, Clock, ConfigError, NotFound, PullRequest, Refused
from tools.github.client import (
    DEFAULT_BASE_URL,
    GitHubClient,
    RetryPolicy,
    check_repo,
    error_message,
    timestamp,
)
from tools.github.markers import BODY_MAX, TITLE_MAX, fit, hidden_marker, read_markers
from tools.gitops import (
    MergeConflict,
    ProvenanceStore,
    commit_signature,
    git_blob_id,
    signature_valid,
    signing_key,
)
from tools.gitops_common import (
    BRANCH_PREFIX,
    CHANGE_KINDS,
    KIND_TRAILER,
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

logger = logging.getLogger(__name__)

_ROLLBACK_LOOKBACK = 10
_DETAILS = "<!-- sregraph:details -->"


class GitHubGitOps:
    """GitOps on a GitHub repository: services/<service>.yaml on the deploy branch is what runs."""

    def __init__(
        self,
        repo: str,
        token: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        deploy_branch: str = "main",
        timeout: float = 10,
        *,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        per_page: int = 100,
        allow_merge: bool = True,
        incident_repo: str | None = None,
        committer: tuple[str, str] = ("sregraph", "sregraph@users.noreply.github.com"),
        max_history: int = 100,
        seconds_between_requests: float | None = 0.25,
        seconds_between_writes: float | None = 1.0,
        environ: Mapping[str, str] | None = None,
        secrets_file: Path | str | None = None,
        client: GitHubClient | None = None,
        key: bytes | None = None,
        provenance: ProvenanceStore | None = None,
    ) -> None:
        """Work on `repo`'s `deploy_branch` through the git data and contents APIs, through `client` or through
        a client of its own built from the connection arguments (see `GitHubClient`; unused when `client` is
        given).

        `key` signs sregraph's commits (default: $SREGRAPH_SIGNING_KEY, else a key for this process only);
        `provenance` is its ledger of own commits and PR pins (default: in memory, this process only).

        `allow_merge=False` makes `merge` refuse, leaving every merge to a human whatever the caller's policy
        says; `incident_repo` ("owner/name") is where incident issues live when that is another repository,
        so PR bodies link them across repositories.
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
        if not deploy_branch or deploy_branch.startswith(BRANCH_PREFIX):
            raise ConfigError(f"deploy_branch: {deploy_branch!r} is not a usable deploy branch")
        self.repo_name = repo
        self.deploy_branch = deploy_branch
        self.allow_merge = allow_merge
        self.incident_repo = incident_repo
        self.committer = committer
        self.max_history = max_history
        self.clock = self._c.clock
        self._lock = threading.RLock()
        self._key = key if key is not None else signing_key(None, environ)
        self.provenance = provenance if provenance is not None else ProvenanceStore()

    def disconnect(self) -> None:
        """Close the HTTP connections."""
        if self._owns_client:  # a shared client is closed by whoever built it
            self._c.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    # ------------------------------------------------------------------ read side

    def config(self, service: str) -> dict[str, Any]:
        """The service's config at the tip of the deploy branch; NotFound if it has none."""
        path = service_path(service)

        def run() -> dict[str, Any]:
            found = self._read(path, self.deploy_branch)
            if found is None:
                raise NotFound(
                    f"service {service!r} has no config ({path} is missing on {self.deploy_branch})"
                )
            return parse_config(found.decoded_content, f"{self.deploy_branch}:{path}")

        return self._c.call(f"read {path}", run)

    def services(self) -> list[str]:
        """Names of the services with a config on the deploy branch."""

        def run() -> list[str]:
            try:
                entries = self._c.repo.get_contents(SERVICES_DIR, ref=self.deploy_branch)
            except GithubException as exc:
                if exc.status == 404:
                    return []
                raise
            items = entries if isinstance(entries, list) else [entries]
            return sorted(
                e.name[: -len(".yaml")] for e in items if e.type == "file" and e.name.endswith(".yaml")
            )

        return self._c.call(f"list {SERVICES_DIR}/", run)

    def history(
        self, since: float | None = None, service: str | None = None, limit: int | None = None
    ) -> list[Change]:
        """Commits on the deploy branch, newest first, optionally since a time and touching a service."""
        path = service_path(service) if service is not None else None

        def run() -> list[Change]:
            kwargs: dict[str, Any] = {"sha": self.deploy_branch}
            if since is not None:
                kwargs["since"] = datetime.fromtimestamp(math.floor(since), UTC)
            if path is not None:
                kwargs["path"] = path
            cap = min(limit if limit is not None else self.max_history, self.max_history)
            changes: list[Change] = []
            for commit in self._c.repo.get_commits(**kwargs):
                if len(changes) >= cap:
                    break
                change = self._change(commit)
                if since is None or change.at >= since:
                    changes.append(change)
            return [c for c in changes if service is None or service in c.services]

        return self._c.call(f"read the history of {self.deploy_branch}", run)

    def rollback_config(self, service: str, before: float | str | None = None) -> dict[str, Any]:
        """The service's config just before a change: a sha, a time, or (default) its newest change."""
        path = service_path(service)

        def run() -> dict[str, Any]:
            repo = self._c.repo
            if isinstance(before, str):
                try:
                    commit = repo.get_commit(before)
                except GithubException as exc:
                    if exc.status in (404, 422):
                        raise NotFound(f"no commit {before!r} in {self.repo_name}") from exc
                    raise
                if not commit.parents:
                    raise NotFound(f"commit {before[:12]} has no parent to roll back to")
                ref, what = commit.parents[0].sha, f"before {commit.sha[:12]}"
            elif before is None:
                latest = next(iter(repo.get_commits(sha=self.deploy_branch, path=path)), None)
                if latest is None or not latest.parents:
                    raise NotFound(f"service {service!r} has no change on {self.deploy_branch} to roll back")
                ref, what = latest.parents[0].sha, f"before its newest change {latest.sha[:12]}"
            else:
                until = datetime.fromtimestamp(math.ceil(before), UTC)
                earlier = next(
                    (
                        c
                        for c in repo.get_commits(sha=self.deploy_branch, until=until)
                        if self._at(c) < before
                    ),
                    None,
                )
                if earlier is None:
                    raise NotFound(f"{self.deploy_branch} has no commit before t={before}")
                ref, what = earlier.sha, f"at t<{before} ({earlier.sha[:12]})"
            found = self._read(path, ref)
            if found is None:
                raise NotFound(f"service {service!r} had no config {what}")
            return parse_config(found.decoded_content, f"{ref}:{path}")

        return self._c.call(f"read the earlier config of {service}", run)

    def pull_requests(self, state: Literal["open", "merged", "closed", "all"] = "all") -> list[PullRequest]:
        """sregraph's pull requests against the deploy branch in a state, newest first."""
        if state not in ("open", "merged", "closed", "all"):
            raise ConfigError(f"state: expected open, merged, closed or all, got {state!r}")
        return self._c.call(f"list {state} pull requests", lambda: self._list_prs(state))

    def get_pr(self, pr_id: int) -> PullRequest:
        """One pull request; NotFound if missing."""
        return self._c.call(f"read PR #{pr_id}", lambda: self._pr(self._c.repo.get_pull(int(pr_id))))

    # ------------------------------------------------------------------ write side

    def commit_config(
        self,
        service: str,
        new_config: Mapping[str, Any],
        message: str,
        kind: ChangeKind = "deploy",
        author: str = "operator",
    ) -> Change:
        """Commit a service's config straight to the deploy branch, as a human or CI deploy would."""
        path = service_path(service)
        if kind not in CHANGE_KINDS:
            raise ConfigError(f"kind: expected one of {', '.join(CHANGE_KINDS)}, got {kind!r}")
        content = dump_config(new_config, "new_config")
        subject, _, rest = message.strip().partition("\n")
        text = self._c.redact(commit_message(subject, rest, kind, [service]))

        def run() -> Change:
            current = self._read(path, self.deploy_branch)
            if current is not None and same_config(current.decoded_content, new_config):
                raise Refused(
                    f"config for {service!r} is identical to {self.deploy_branch}; nothing to commit"
                )
            who = InputGitAuthor(author, f"{slug(author)}@sregraph.local", self._stamp())
            if current is None:
                result = self._c.repo.create_file(
                    path, text, content, branch=self.deploy_branch, author=who, committer=who
                )
            else:
                result = self._c.repo.update_file(
                    path, text, content, current.sha, branch=self.deploy_branch, author=who, committer=who
                )
            return self._change(self._c.repo.get_commit(result["commit"].sha))

        with self._lock:
            return self._c.call(f"commit {path}", run)

    def propose(
        self,
        service: str,
        new_config: Mapping[str, Any],
        title: str,
        body: str,
        key: str | None = None,
        *,
        kind: ChangeKind | None = None,
        issue: int | None = None,
    ) -> PullRequest:
        """Branch + commit + pull request setting the service's config; a repeated key returns the first PR."""
        path = service_path(service)
        content = dump_config(new_config, "new_config")
        if kind is not None and kind not in CHANGE_KINDS:
            raise ConfigError(f"kind: expected one of {', '.join(CHANGE_KINDS)}, got {kind!r}")
        with self._lock:
            return self._c.call(
                f"propose a change to {path}",
                lambda: self._propose(
                    service, path, dict(new_config), content, title, body, key, kind, issue
                ),
            )

    def merge(self, pr_id: int) -> PullRequest:
        """Squash-merge a PR onto the deploy branch; the caller has checked policy. A merged PR is returned as is."""
        with self._lock:
            return self._c.call(f"merge PR #{pr_id}", lambda: self._merge(pr_id))

    def close_pr(self, pr_id: int) -> PullRequest:
        """Close an open pull request and delete its branch; Refused for a merged one."""

        def run() -> PullRequest:
            pull = self._c.repo.get_pull(int(pr_id))
            if pull.merged_at is not None:
                raise Refused(f"PR #{pr_id} is already merged; propose a rollback instead")
            if pull.state == "open":
                pull.edit(state="closed")
            self._delete_branch(pull.head.ref)
            return self._pr(self._c.repo.get_pull(int(pr_id)))

        with self._lock:
            return self._c.call(f"close PR #{pr_id}", run)

    def prune_branches(self, keep: int) -> list[str]:
        """Keep at most `keep` remediation branches: those of the newest open PRs; return the deleted ones.

        Branches of merged and closed PRs, and stray sregraph/ branches without a PR, are deleted; open PRs
        beyond the `keep` newest are closed first (as the local backend does). GitHub keeps the PRs and
        their commits, so a deleted branch can be restored from the PR page.
        """
        if keep < 0:
            raise ConfigError(f"keep: must be >= 0, got {keep}")

        def run() -> list[str]:
            refs = self._c.repo.get_git_matching_refs(f"heads/{BRANCH_PREFIX}")
            branches = [ref.ref.removeprefix("refs/heads/") for ref in refs]
            open_prs = self._list_prs("open")
            kept = {pr.branch for pr in open_prs[:keep]}
            for pr in open_prs[keep:]:
                self._c.repo.get_pull(pr.id).edit(state="closed")
            deleted = []
            for branch in branches:
                if branch not in kept:
                    self._delete_branch(branch)
                    deleted.append(branch)
            return deleted

        with self._lock:
            return self._c.call("prune remediation branches", run)

    # ------------------------------------------------------------------ internals (run inside _c.call)

    def _list_prs(self, state: Literal["open", "merged", "closed", "all"]) -> list[PullRequest]:
        gh_state = {"open": "open", "merged": "closed", "closed": "closed", "all": "all"}[state]
        pulls = self._c.repo.get_pulls(
            state=gh_state, base=self.deploy_branch, sort="created", direction="desc"
        )
        found = [self._pr(p) for p in pulls if p.head.ref.startswith(BRANCH_PREFIX)]
        return sorted((p for p in found if state == "all" or p.state == state), key=lambda p: -p.id)

    def _propose(
        self,
        service: str,
        path: str,
        new_config: dict[str, Any],
        content: bytes,
        title: str,
        body: str,
        key: str | None,
        kind: ChangeKind | None,
        issue: int | None,
    ) -> PullRequest:
        repo = self._c.repo
        if key is not None:
            branch = _branch_for(key)
            existing = self._pr_on(branch)
            if existing is not None:
                return existing
        main = repo.get_git_ref(f"heads/{self.deploy_branch}").object.sha
        current = self._read(path, main)
        if current is None:
            raise NotFound(f"service {service!r} has no config ({path} is missing on {self.deploy_branch})")
        if same_config(current.decoded_content, new_config):
            raise Refused(
                f"proposed config for {service!r} is identical to {self.deploy_branch}; nothing to propose"
            )
        if key is None:
            # Deterministic, so a retried attempt of this call finds the branch and PR it already made.
            digest = hashlib.sha1(main.encode() + content + title.encode()).hexdigest()[:8]
            branch = f"{BRANCH_PREFIX}{slug(title)[:40]}-{digest}"
            existing = self._pr_on(branch)
            if existing is not None:
                return existing
        if kind is None:
            kind = "rollback" if self._is_earlier_config(path, new_config) else "config"
        try:
            repo.create_git_ref(f"refs/heads/{branch}", main)
        except GithubException as exc:
            # "Reference already exists": an earlier attempt got this far; carry on from its branch.
            if not (exc.status == 422 and "already exists" in error_message(exc).lower()):
                raise
        on_branch = self._read(path, branch)
        if on_branch is None or not same_config(on_branch.decoded_content, new_config):
            who = InputGitAuthor(self.committer[0], self.committer[1], self._stamp())
            signature = commit_signature(self._key, kind, [service], {path: git_blob_id(content)})
            message = _with_trailer(
                self._c.redact(commit_message(title, body, kind, [service])), SIGNATURE_TRAILER, signature
            )
            if on_branch is None:
                result = repo.create_file(path, message, content, branch=branch, author=who, committer=who)
            else:
                result = repo.update_file(
                    path, message, content, on_branch.sha, branch=branch, author=who, committer=who
                )
            head = result["commit"].sha
            self.provenance.record_own(head, kind)
        else:
            head = repo.get_git_ref(f"heads/{branch}").object.sha
        # The pin lives in sregraph's ledger; the PR body's copy is for humans and may be edited.
        self.provenance.pin(self.repo_name, branch, head, service, kind)
        before = parse_config(current.decoded_content, path)
        pr_body = self._pr_body(body, service, kind, path, before, new_config, key, issue, head)
        try:
            pull = repo.create_pull(
                base=self.deploy_branch,
                head=branch,
                title=fit(self._c.redact(title), TITLE_MAX),
                body=pr_body,
            )
        except GithubException as exc:
            if exc.status == 422 and "already exists" in error_message(exc).lower():
                found = self._pr_on(branch)
                if found is not None:
                    return found
            raise
        logger.info("proposed PR #%d on %s for %s (%s)", pull.number, branch, service, kind)
        return self._pr(pull)

    def _pr_body(
        self,
        body: str,
        service: str,
        kind: str,
        path: str,
        before: dict[str, Any],
        after: dict[str, Any],
        key: str | None,
        issue: int | None,
        head: str,
    ) -> str:
        rows = [
            f"| `{k}` | `{_short(before.get(k, '—'))}` | `{_short(after.get(k, '—'))}` |"
            for k in sorted(set(before) | set(after), key=str)
            if before.get(k) != after.get(k)
        ]
        links = []
        if issue is None:
            match = re.search(r"incident #(\d+)", body)
            issue = int(match[1]) if match else None
        if issue is not None:
            where = self.incident_repo if self.incident_repo and self.incident_repo != self.repo_name else ""
            links.append(f"Incident: {where}#{issue}")
        details = [
            _DETAILS,
            "---",
            f"**Service** `{service}` · **kind** {kind} · **file** `{path}` on `{self.deploy_branch}`",
            "",
            "| setting | now | after merge |",
            "|---|---|---|",
            *rows,
            "",
            *links,
            (
                "Merging applies the change: the deployer restarts the service with the merged config. "
                "sregraph merges only where its remediation policy allows; otherwise a human reviews and merges."
            ),
            # `head` pins the commit that was proposed (and reviewed): the merge refuses if the branch moved.
            hidden_marker("service", service)
            + hidden_marker("kind", kind)
            + hidden_marker("head", head)
            + (hidden_marker("key", key) if key else ""),
        ]
        text = "\n".join(details)
        return fit(self._c.redact(body), BODY_MAX - len(text) - 2) + "\n\n" + text

    def _merge(self, pr_id: int) -> PullRequest:
        pull = self._c.repo.get_pull(int(pr_id))
        if pull.merged_at is not None:
            return self._pr(pull)  # merged already, e.g. by an attempt whose answer was lost
        if pull.state == "closed":
            raise Refused(f"PR #{pr_id} is closed; propose the change again")
        if not self.allow_merge:
            raise Refused(
                f"merging is switched off for {self.repo_name} (allow_merge=False); a human merges PR #{pr_id}"
            )
        pinned = self.provenance.pinned(self.repo_name, pull.head.ref)
        if pinned is None:
            raise Refused(
                f"PR #{pr_id}: sregraph's ledger has no pin for branch {pull.head.ref}, so it did not propose "
                "this change here; a human reviews and merges it"
            )
        head, service, kind = pinned
        marks = read_markers(pull.body)
        if marks.get("head") and marks["head"] != head:
            raise Refused(
                f"PR #{pr_id}: its body names head {marks['head'][:12]}, sregraph proposed {head[:12]}"
            )
        path = service_path(service)
        proposed = self._read(path, head)
        if proposed is None:
            raise Refused(f"PR #{pr_id}: the pinned head {head[:12]} has no {path}")
        description = (pull.body or "").split(_DETAILS)[0].strip()
        signature = commit_signature(self._key, kind, [service], {path: proposed.sha})
        message = _with_trailer(
            self._c.redact(commit_message(pull.title, description, kind, [service], pr_id=pull.number)),
            SIGNATURE_TRAILER,
            signature,
        )
        subject, _, rest = message.partition("\n\n")
        try:
            # `sha` pins what was reviewed: GitHub refuses (409) if the branch moved since.
            pull.merge(
                commit_title=f"{subject} (#{pull.number})",
                commit_message=rest.strip(),
                merge_method="squash",
                sha=head,
            )
        except GithubException as exc:
            if exc.status == 405 and "not mergeable" not in error_message(exc).lower():
                # Branch protection: required reviews or checks. Policy said merge; the repository says wait.
                raise Refused(
                    f"PR #{pr_id}: GitHub will not merge it yet ({error_message(exc)}); "
                    "branch protection on the deploy branch wants a human or a check first"
                ) from exc
            if exc.status == 405:
                raise MergeConflict(
                    f"PR #{pr_id} cannot be merged into {self.deploy_branch} ({error_message(exc)}): the config "
                    "changed since it was proposed; close it and propose again"
                ) from exc
            if exc.status == 409:
                raise Refused(
                    f"PR #{pr_id}: its branch moved since it was proposed; review it again"
                ) from exc
            raise
        merged = self._pr(self._c.repo.get_pull(int(pr_id)))
        if merged.merge_sha:
            self.provenance.record_own(merged.merge_sha, kind)
        logger.info("merged PR #%d as %s", pr_id, (merged.merge_sha or "")[:12])
        return merged

    def _delete_branch(self, branch: str) -> None:
        try:
            self._c.repo.get_git_ref(f"heads/{branch}").delete()
        except GithubException as exc:
            if exc.status not in (404, 422):  # already deleted: a retried attempt, or GitHub's auto-delete
                raise

    def _read(self, path: str, ref: str) -> ContentFile | None:
        try:
            found = self._c.repo.get_contents(path, ref=ref)
        except GithubException as exc:
            if exc.status == 404:
                return None
            raise
        if isinstance(found, list):
            raise ConfigError(f"{path} is a directory on {ref}, not a service config")
        return found

    def _pr_on(self, branch: str) -> PullRequest | None:
        pulls = self._c.repo.get_pulls(state="all", head=f"{self._c.owner}:{branch}", base=self.deploy_branch)
        found = next(iter(pulls), None)
        return None if found is None else self._pr(found)

    def _pr(self, pull: GHPull) -> PullRequest:
        marks = read_markers(pull.body)
        merged = pull.merged_at is not None
        return PullRequest(
            id=pull.number,
            branch=pull.head.ref,
            title=pull.title,
            body=(pull.body or "").split(_DETAILS)[0].rstrip(),
            state="merged" if merged else ("closed" if pull.state == "closed" else "open"),
            head_sha=marks.get("head") or pull.head.sha,
            # An open PR's merge_commit_sha is GitHub's test merge, not something on the deploy branch.
            merge_sha=pull.merge_commit_sha if merged else None,
            service=marks.get("service", ""),
            key=marks.get("key"),
            url=pull.html_url or "",
        )

    def _is_earlier_config(self, path: str, config: Mapping[str, Any]) -> bool:
        """Whether `config` equals a version the file had before one of its recent changes."""
        commits = self._c.repo.get_commits(sha=self.deploy_branch, path=path)
        for index, commit in enumerate(commits):
            if index >= _ROLLBACK_LOOKBACK:
                break
            if commit.parents:
                earlier = self._read(path, commit.parents[0].sha)
                if earlier is not None and same_config(earlier.decoded_content, config):
                    return True
        return False

    def _at(self, commit: Any) -> float:
        return timestamp(commit.commit.committer.date)

    def _change(self, commit: Any) -> Change:
        message = commit.commit.message or ""
        trailers = _trailers(message)
        kind = trailers.get(KIND_TRAILER, "").split(",")[-1].strip()
        services = [s.strip() for s in trailers.get(SERVICES_TRAILER, "").split(",") if s.strip()]
        ours = self.provenance.is_own(commit.sha)
        files: list[Any] | None = None
        if not ours and kind and services and trailers.get(SIGNATURE_TRAILER):
            # Verify the signature against the blobs the commit really wrote (one more request).
            files = list(self._c.repo.get_commit(commit.sha).files)
            written = {f.filename: f.sha for f in files}
            try:
                blobs = {p: written[p] for p in (service_path(s) for s in services)}
            except (KeyError, ConfigError):
                blobs = {}
            ours = signature_valid(self._key, trailers[SIGNATURE_TRAILER], kind, services, blobs)
        if not ours:
            # Not sregraph's (or not provably): trailers are text anyone could write; classify by the files.
            files = files if files is not None else list(self._c.repo.get_commit(commit.sha).files)
            services = sorted({name for f in files if (name := path_service(f.filename))})
            kind = _infer_kind(files)
        return Change(
            sha=commit.sha,
            at=self._at(commit),
            author=commit.commit.author.name if commit.commit.author else "",
            message=message.strip(),
            services=services,
            kind=kind if kind in CHANGE_KINDS else "other",
            ours=ours,
        )

    def _stamp(self) -> str:
        # Commit dates from the injected clock, as the local backend does, so replays see stable history.
        return datetime.fromtimestamp(int(self.clock.now()), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _branch_for(key: str) -> str:
    # A slug alone could map two keys onto one branch; the digest keeps them apart.
    return f"{BRANCH_PREFIX}{slug(key)[:40]}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def _trailers(message: str) -> dict[str, str]:
    last = message.strip().split("\n\n")[-1]
    return {m[1]: m[2].strip() for m in re.finditer(r"^(Sregraph-[A-Za-z]+):[ \t]*(.*)$", last, re.MULTILINE)}


def _with_trailer(message: str, name: str, value: str) -> str:
    """`message` (ending in sregraph's trailer paragraph) with one more trailer, after redaction touched the rest."""
    return message.rstrip("\n") + f"\n{name}: {value}\n"


def _infer_kind(files: Iterable[Any]) -> str:
    """Kind of a commit sregraph did not write, from the files it changed (never from its message)."""
    service_files = [f for f in files if path_service(f.filename)]
    if not service_files:
        return "other"
    version_line = re.compile(r"^[+-]\s*version\s*:", re.MULTILINE)
    if any(version_line.search(f.patch or "") for f in service_files):
        return "deploy"
    return "config"


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."
