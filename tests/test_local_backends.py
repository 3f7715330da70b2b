"""The embedded backends against real SQLite files and real git repositories in tmp_path."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tests.support import ManualClock
from tools.base import (
    ConfigError,
    GitOps,
    IncidentSurface,
    NotFound,
    Notifier,
    Refused,
    ToolError,
    TransientError,
)
from tools.gitops import LocalGitOps, MergeConflict, _Git
from tools.incidents import LocalIncidentSurface
from tools.notifier import ConsoleNotifier, JsonlNotifier, MultiNotifier

T0 = 1_700_000_000.0


def git(repo: Path, *args: str, at: float | None = None) -> str:
    """Run git as a human would, outside the code under test."""
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "LC_ALL": "C"}
    if at is not None:
        env |= {"GIT_AUTHOR_DATE": f"@{int(at)} +0000", "GIT_COMMITTER_DATE": f"@{int(at)} +0000"}
    result = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=human", "-c", "user.email=human@example.com", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    )
    return result.stdout


# =========================================================================== incidents


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def surface(tmp_path: Path, clock: ManualClock) -> LocalIncidentSurface:
    return LocalIncidentSurface(tmp_path / "state" / "incidents.db", clock=clock)


def test_surface_implements_protocol_and_uses_wal(surface: LocalIncidentSurface) -> None:
    assert isinstance(surface, IncidentSurface)
    with sqlite3.connect(surface.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_open_issue_dedups_by_fingerprint(surface: LocalIncidentSurface, clock: ManualClock) -> None:
    first, created = surface.open_issue("payments down", "5xx", ["sev2", "sev2", "payments"], "fp-1")
    assert created
    assert first.url == f"local://incidents/{first.id}"
    assert first.labels == ["sev2", "payments"]
    assert first.created_at == T0

    clock.sleep(30)
    again, created_again = surface.open_issue("payments down again", "other body", ["x"], "fp-1")
    assert not created_again
    assert again.id == first.id
    assert again.title == "payments down"
    assert surface.find_open("fp-1") == again
    assert surface.find_open("fp-unknown") is None

    other, created_other = surface.open_issue("web slow", "p99", [], "fp-2")
    assert created_other and other.id != first.id
    assert [issue.id for issue in surface.list_issues()] == [other.id, first.id]


def test_closed_fingerprint_opens_a_new_issue(surface: LocalIncidentSurface) -> None:
    first, _ = surface.open_issue("a", "b", [], "fp")
    surface.close(first.id)
    second, created = surface.open_issue("a", "b", [], "fp")
    assert created and second.id != first.id
    assert surface.find_open("fp") == second


def test_comment_idempotent_by_key(surface: LocalIncidentSurface, clock: ManualClock) -> None:
    issue, _ = surface.open_issue("t", "b", [], "fp")
    first = surface.comment(issue.id, "diagnosis: bad deploy", key="diagnosis")
    clock.sleep(5)
    repeat = surface.comment(issue.id, "diagnosis (retried)", key="diagnosis")
    assert repeat == first
    plain_a = surface.comment(issue.id, "note")
    plain_b = surface.comment(issue.id, "note")
    assert plain_a.id != plain_b.id
    bodies = [comment.body for comment in surface.get(issue.id).comments]
    assert bodies == ["diagnosis: bad deploy", "note", "note"]

    # A key reused on another incident posts there instead of returning the first incident's comment.
    other, _ = surface.open_issue("t2", "b", [], "fp2")
    elsewhere = surface.comment(other.id, "diagnosis 2", key="diagnosis")
    assert elsewhere.id != first.id
    assert [c.body for c in surface.get(other.id).comments] == ["diagnosis 2"]


def test_comments_since(surface: LocalIncidentSurface) -> None:
    issue, _ = surface.open_issue("t", "b", [], "fp")
    first = surface.comment(issue.id, "one", author="alice")
    surface.comment(issue.id, "two")
    surface.comment(issue.id, "three")
    assert [c.body for c in surface.comments_since(issue.id, first.id)] == ["two", "three"]
    assert [c.body for c in surface.comments_since(issue.id, 0)] == ["one", "two", "three"]
    assert surface.get(issue.id).comments[0].author == "alice"


def test_labels_unique_and_status_exclusive(surface: LocalIncidentSurface) -> None:
    issue, _ = surface.open_issue("t", "b", ["sev2"], "fp")
    issue = surface.set_labels(issue.id, add=["payments", "sev2", "payments"])
    assert issue.labels == ["sev2", "payments"]
    issue = surface.set_labels(issue.id, add=["sev1"], remove=["sev2", "absent"])
    assert issue.labels == ["payments", "sev1"]

    surface.set_status(issue.id, "diagnosing")
    surface.set_labels(issue.id, add=["status:stale-extra"])
    issue = surface.set_status(issue.id, "remediating")
    assert [label for label in issue.labels if label.startswith("status:")] == ["status:remediating"]
    assert "payments" in issue.labels and "sev1" in issue.labels
    assert surface.status(issue.id) == "remediating"
    issue = surface.set_status(issue.id, "status:resolved")
    assert surface.status(issue.id) == "resolved"
    assert issue.labels.count("status:resolved") == 1


def test_close_and_reopen(surface: LocalIncidentSurface) -> None:
    issue, _ = surface.open_issue("t", "b", [], "fp")
    closed = surface.close(issue.id)
    assert closed.state == "closed"
    assert surface.close(issue.id).state == "closed"
    assert surface.find_open("fp") is None
    assert [i.id for i in surface.list_issues("closed")] == [issue.id]
    assert surface.list_issues("open") == []

    reopened = surface.reopen(issue.id)
    assert reopened.state == "open"
    assert surface.find_open("fp") == reopened
    assert len(surface.list_issues("all")) == 1


def test_reopen_refused_while_same_fingerprint_open(surface: LocalIncidentSurface) -> None:
    old, _ = surface.open_issue("t", "b", [], "fp")
    surface.close(old.id)
    surface.open_issue("t", "b", [], "fp")
    with pytest.raises(Refused, match="fingerprint"):
        surface.reopen(old.id)


def test_missing_issue_is_not_found(surface: LocalIncidentSurface) -> None:
    for call in (
        lambda: surface.get(42),
        lambda: surface.comment(42, "x"),
        lambda: surface.set_labels(42, ["a"]),
        lambda: surface.set_status(42, "diagnosing"),
        lambda: surface.close(42),
        lambda: surface.reopen(42),
        lambda: surface.comments_since(42, 0),
    ):
        with pytest.raises(NotFound, match="42"):
            call()


def test_memory_path_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="memory"):
        LocalIncidentSurface(":memory:")


def test_concurrent_writers_from_two_threads(tmp_path: Path) -> None:
    path = tmp_path / "incidents.db"
    # Separate instances stand in for the worker and the CLI; each call has its own connection anyway.
    surfaces = [LocalIncidentSurface(path), LocalIncidentSurface(path)]
    created: list[bool] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)
    rounds = 25

    def work(worker: int) -> None:
        surface = surfaces[worker]
        try:
            barrier.wait()
            for n in range(rounds):
                issue, new = surface.open_issue("db down", "b", ["sev1"], "fp-concurrent")
                created.append(new)
                surface.comment(issue.id, f"w{worker} n{n}")
                surface.comment(issue.id, "shared", key=f"round-{n}")
                surface.set_status(issue.id, f"w{worker}")
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert created.count(True) == 1
    issues = surfaces[0].list_issues("all")
    assert len(issues) == 1
    comments = issues[0].comments
    assert len([c for c in comments if c.body != "shared"]) == 2 * rounds
    assert len([c for c in comments if c.body == "shared"]) == rounds
    assert len([label for label in issues[0].labels if label.startswith("status:")]) == 1


# =========================================================================== gitops

SEED: dict[str, dict[str, Any]] = {
    "payments": {"version": "1.4.0", "pool_size": 10, "timeout_ms": 800},
    "web": {"version": "2.0.1", "replicas": 2},
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return tmp_path / "deploy-repo"


@pytest.fixture
def ops(repo: Path, clock: ManualClock) -> LocalGitOps:
    return LocalGitOps.init(repo, SEED, clock=clock)


def on_disk(repo: Path, service: str) -> str:
    return (repo / "services" / f"{service}.yaml").read_text()


def test_init_creates_a_real_repo(ops: LocalGitOps, repo: Path) -> None:
    assert isinstance(ops, GitOps)
    assert (repo / ".git").is_dir()
    assert "version: 1.4.0" in on_disk(repo, "payments")
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"
    assert ops.config("payments") == SEED["payments"]
    assert ops.services() == ["payments", "web"]
    [seed] = ops.history()
    assert seed.author == "sregraph-seed"
    assert seed.at == T0
    assert seed.kind == "other"
    assert seed.services == ["payments", "web"]


def test_init_is_idempotent(ops: LocalGitOps, repo: Path, clock: ManualClock) -> None:
    again = LocalGitOps.init(repo, {"other": {"version": "9"}}, clock=clock)
    assert again.config("payments") == SEED["payments"]
    assert len(again.history()) == 1
    with pytest.raises(NotFound, match="other"):
        again.config("other")


def test_config_errors(ops: LocalGitOps) -> None:
    with pytest.raises(NotFound, match="billing"):
        ops.config("billing")
    with pytest.raises(ConfigError, match="service"):
        ops.config("../etc/passwd")


def test_commit_config_lands_on_main_and_disk(ops: LocalGitOps, repo: Path, clock: ManualClock) -> None:
    clock.sleep(60)
    change = ops.commit_config("payments", {**SEED["payments"], "version": "1.5.0"}, "Deploy payments 1.5.0")
    assert change.kind == "deploy"
    assert change.services == ["payments"]
    assert change.at == T0 + 60
    assert change.author == "operator"
    assert change.sha == git(repo, "rev-parse", "main").strip()
    assert ops.config("payments")["version"] == "1.5.0"
    assert "version: 1.5.0" in on_disk(repo, "payments")
    assert git(repo, "status", "--porcelain") == ""
    with pytest.raises(Refused, match="identical"):
        ops.commit_config("payments", {**SEED["payments"], "version": "1.5.0"}, "again")
    with pytest.raises(ConfigError, match="kind"):
        ops.commit_config("payments", {"version": "2"}, "x", kind="bogus")  # type: ignore[arg-type]  # refused: not a kind


def test_history_order_kinds_and_filters(ops: LocalGitOps, repo: Path, clock: ManualClock) -> None:
    clock.sleep(60)
    deploy = ops.commit_config(
        "payments", {**SEED["payments"], "version": "1.5.0"}, "Deploy 1.5.0", author="ci"
    )
    clock.sleep(60)
    tune = ops.commit_config("web", {**SEED["web"], "replicas": 3}, "More web", kind="config")
    history = ops.history()
    assert [c.sha for c in history[:2]] == [tune.sha, deploy.sha]
    assert [c.kind for c in history] == ["config", "deploy", "other"]
    assert [c.at for c in history] == [T0 + 120, T0 + 60, T0]
    assert history[1].author == "ci"
    assert [c.sha for c in ops.history(service="payments")] == [deploy.sha, history[2].sha]
    assert [c.sha for c in ops.history(since=T0 + 60)] == [tune.sha, deploy.sha]
    assert [c.sha for c in ops.history(since=T0 + 61, service="payments")] == []
    assert len(ops.history(limit=1)) == 1


def test_history_classifies_human_commits_by_paths(ops: LocalGitOps, repo: Path) -> None:
    payments = repo / "services" / "payments.yaml"
    payments.write_text(payments.read_text().replace("1.4.0", "1.4.1"))
    git(repo, "commit", "-qam", "bump payments", at=T0 + 10)
    payments.write_text(payments.read_text().replace("pool_size: 10", "pool_size: 20"))
    git(repo, "commit", "-qam", "bigger pool", at=T0 + 20)
    (repo / "README.md").write_text("deploy repo\n")
    git(repo, "add", "README.md")
    git(repo, "commit", "-qm", "docs", at=T0 + 30)
    (repo / "services" / "search.yaml").write_text("version: 0.1.0\n")
    git(repo, "add", "services/search.yaml")
    git(repo, "commit", "-qm", "add search", at=T0 + 40)
    git(repo, "revert", "--no-edit", "HEAD~1", at=T0 + 50)

    history = ops.history()
    assert [(c.kind, c.services) for c in history] == [
        ("other", []),  # `Revert "docs"`: classified by what it changes (no service), never by its message
        ("deploy", ["search"]),
        ("other", []),
        ("config", ["payments"]),
        ("deploy", ["payments"]),
        ("other", ["payments", "web"]),
    ]
    assert history[1].author == "human"
    assert history[1].at == T0 + 40


def test_propose_leaves_main_and_work_tree_alone(ops: LocalGitOps, repo: Path) -> None:
    before_disk = on_disk(repo, "payments")
    main_before = git(repo, "rev-parse", "main").strip()
    pr = ops.propose("payments", {**SEED["payments"], "pool_size": 50}, "Grow pool", "pool exhausted")
    assert pr.state == "open"
    assert pr.branch.startswith("sregraph/grow-pool-")
    assert pr.url == f"local://pulls/{pr.id}"
    assert git(repo, "rev-parse", "main").strip() == main_before
    assert on_disk(repo, "payments") == before_disk
    assert git(repo, "status", "--porcelain") == ""
    assert "pool_size: 50" in git(repo, "show", f"{pr.branch}:services/payments.yaml")
    assert git(repo, "rev-parse", f"{pr.branch}^").strip() == main_before
    assert git(repo, "rev-parse", pr.branch).strip() == pr.head_sha
    assert (repo / ".git" / "sregraph-prs.db").is_file()
    assert ops.pull_requests("open") == [pr]
    assert ops.get_pr(pr.id) == pr


def test_propose_is_idempotent_by_key(ops: LocalGitOps, repo: Path) -> None:
    first = ops.propose("payments", {**SEED["payments"], "pool_size": 50}, "Grow pool", "b", key="INC-7 pool")
    again = ops.propose("payments", {**SEED["payments"], "pool_size": 99}, "Other", "b2", key="INC-7 pool")
    assert again == first
    assert first.branch == "sregraph/inc-7-pool"
    assert len(ops.pull_requests()) == 1
    assert git(repo, "branch", "--list", "sregraph/*").split() == ["sregraph/inc-7-pool"]


def test_propose_refuses_noop_and_unknown_service(ops: LocalGitOps) -> None:
    with pytest.raises(Refused, match="identical"):
        ops.propose("payments", dict(SEED["payments"]), "noop", "b")
    with pytest.raises(NotFound, match="billing"):
        ops.propose("billing", {"version": "1"}, "new", "b")
    with pytest.raises(ConfigError, match="new_config"):
        ops.propose("payments", ["not", "a", "mapping"], "bad", "b")  # type: ignore[arg-type]  # refused


def test_propose_merge_round_trip(ops: LocalGitOps, repo: Path, clock: ManualClock) -> None:
    clock.sleep(60)
    bad = ops.commit_config("payments", {**SEED["payments"], "version": "1.5.0"}, "Deploy 1.5.0")
    previous = ops.rollback_config("payments")
    assert previous == SEED["payments"]
    pr = ops.propose("payments", previous, "Roll back payments to 1.4.0", "1.5.0 raised 5xx", key="inc-1")
    clock.sleep(60)
    merged = ops.merge(pr.id)

    assert merged.state == "merged"
    main = git(repo, "rev-parse", "main").strip()
    assert merged.merge_sha == main
    assert git(repo, "rev-parse", "main^").strip() == bad.sha  # squash: one commit, one parent
    assert "version: 1.4.0" in on_disk(repo, "payments")
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "branch", "--list", pr.branch) == ""
    assert ops.config("payments") == SEED["payments"]
    newest = ops.history()[0]
    assert (newest.sha, newest.kind, newest.services, newest.at) == (main, "rollback", ["payments"], T0 + 120)
    assert "Sregraph-PR: 1" in newest.message
    assert newest.message.startswith("Roll back payments to 1.4.0\n\n1.5.0 raised 5xx")
    assert ops.pull_requests("merged") == [merged]
    assert ops.pull_requests("open") == []


def test_merge_twice_is_safe(ops: LocalGitOps, repo: Path) -> None:
    pr = ops.propose("web", {**SEED["web"], "replicas": 4}, "Scale web", "b")
    first = ops.merge(pr.id)
    commits = git(repo, "rev-list", "--count", "main")
    second = ops.merge(pr.id)
    assert second == first
    assert git(repo, "rev-list", "--count", "main") == commits
    assert ops.history()[0].kind == "config"


def test_merge_of_a_change_main_already_has_adds_no_commit(ops: LocalGitOps, repo: Path) -> None:
    wanted = {**SEED["web"], "replicas": 6}
    pr = ops.propose("web", wanted, "Scale web to 6", "b")
    ops.commit_config("web", wanted, "same change by hand", kind="config")
    main = git(repo, "rev-parse", "main").strip()
    merged = ops.merge(pr.id)
    assert (merged.state, merged.merge_sha) == ("merged", main)
    assert git(repo, "rev-parse", "main").strip() == main


def test_merge_conflict_is_reported(ops: LocalGitOps, repo: Path) -> None:
    pr = ops.propose("payments", {**SEED["payments"], "version": "1.3.9"}, "Roll back", "b")
    ops.commit_config("payments", {**SEED["payments"], "version": "1.6.0"}, "Deploy 1.6.0")
    with pytest.raises(MergeConflict, match=r"conflicts with main.*services/payments.yaml"):
        ops.merge(pr.id)
    assert ops.get_pr(pr.id).state == "open"
    assert ops.config("payments")["version"] == "1.6.0"
    assert git(repo, "status", "--porcelain") == ""


def test_merge_applies_on_top_of_unrelated_main_change(ops: LocalGitOps, repo: Path) -> None:
    pr = ops.propose("payments", {**SEED["payments"], "timeout_ms": 2000}, "Longer timeout", "b")
    ops.commit_config("payments", {**SEED["payments"], "version": "1.5.0"}, "Deploy 1.5.0")
    ops.commit_config("web", {**SEED["web"], "replicas": 5}, "Scale web", kind="config")
    ops.merge(pr.id)
    assert ops.config("payments") == {**SEED["payments"], "version": "1.5.0", "timeout_ms": 2000}
    assert ops.config("web")["replicas"] == 5
    assert "timeout_ms: 2000" in on_disk(repo, "payments")


def test_merge_refuses_with_local_edits_to_the_file(ops: LocalGitOps, repo: Path) -> None:
    pr = ops.propose("payments", {**SEED["payments"], "pool_size": 11}, "Pool", "b")
    main_before = git(repo, "rev-parse", "main").strip()
    (repo / "services" / "payments.yaml").write_text("version: hand-edited\n")
    with pytest.raises(Refused, match="local changes"):
        ops.merge(pr.id)
    assert git(repo, "rev-parse", "main").strip() == main_before
    assert ops.get_pr(pr.id).state == "open"


def test_merge_refuses_a_branch_that_moved_after_review(ops: LocalGitOps, repo: Path) -> None:
    pr = ops.propose("web", {**SEED["web"], "replicas": 3}, "Scale", "b")
    tree = git(repo, "rev-parse", f"{pr.head_sha}^{{tree}}").strip()
    sneaky = git(repo, "commit-tree", tree, "-p", pr.head_sha, "-m", "unreviewed").strip()
    git(repo, "update-ref", f"refs/heads/{pr.branch}", sneaky)
    with pytest.raises(Refused, match="moved"):
        ops.merge(pr.id)
    assert ops.get_pr(pr.id).state == "open"


def test_closed_and_missing_prs(ops: LocalGitOps, repo: Path) -> None:
    pr = ops.propose("web", {**SEED["web"], "replicas": 9}, "Scale", "b")
    closed = ops.close_pr(pr.id)
    assert closed.state == "closed"
    assert git(repo, "branch", "--list", pr.branch) == ""
    with pytest.raises(Refused, match="closed"):
        ops.merge(pr.id)
    merged = ops.merge(ops.propose("web", {**SEED["web"], "replicas": 3}, "Scale 3", "b").id)
    with pytest.raises(Refused, match="merged"):
        ops.close_pr(merged.id)
    with pytest.raises(NotFound, match="#99"):
        ops.merge(99)
    with pytest.raises(NotFound):
        ops.get_pr(99)


def test_rollback_config_by_sha_and_time(ops: LocalGitOps, clock: ManualClock) -> None:
    clock.sleep(100)
    v15 = ops.commit_config("payments", {**SEED["payments"], "version": "1.5.0"}, "1.5.0")
    clock.sleep(100)
    v16 = ops.commit_config("payments", {**SEED["payments"], "version": "1.6.0"}, "1.6.0")
    clock.sleep(100)
    ops.commit_config("web", {**SEED["web"], "replicas": 7}, "web", kind="config")
    assert ops.rollback_config("payments")["version"] == "1.5.0"
    assert ops.rollback_config("payments", before=v16.sha)["version"] == "1.5.0"
    assert ops.rollback_config("payments", before=v15.sha[:10])["version"] == "1.4.0"
    assert ops.rollback_config("payments", before=T0 + 150)["version"] == "1.5.0"
    assert ops.rollback_config("payments", before=T0 + 250)["version"] == "1.6.0"
    with pytest.raises(NotFound):
        ops.rollback_config("payments", before=T0)
    with pytest.raises(NotFound):
        ops.rollback_config("payments", before="0123456789abcdef")
    with pytest.raises(NotFound, match="no config"):
        ops.rollback_config("payments", before=ops.history()[-1].sha)


def test_prune_branches_keeps_newest_open(ops: LocalGitOps, repo: Path) -> None:
    prs = [ops.propose("web", {**SEED["web"], "replicas": n}, f"Scale to {n}", "b") for n in (3, 4, 5)]
    git(repo, "branch", "sregraph/stray", "main")
    git(repo, "branch", "feature/human", "main")
    deleted = ops.prune_branches(keep=1)
    assert set(deleted) == {prs[0].branch, prs[1].branch, "sregraph/stray"}
    assert [pr.id for pr in ops.pull_requests("open")] == [prs[2].id]
    assert {pr.state for pr in ops.pull_requests("closed")} == {"closed"}
    branches = git(repo, "branch", "--format=%(refname:short)").split()
    assert sorted(branches) == sorted(["main", "feature/human", prs[2].branch])
    assert ops.prune_branches(keep=1) == []
    with pytest.raises(ConfigError, match="keep"):
        ops.prune_branches(keep=-1)


def test_concurrent_writers_are_serialised(ops: LocalGitOps, repo: Path) -> None:
    errors: list[BaseException] = []

    def deploy(service: str, versions: list[str]) -> None:
        other = LocalGitOps(repo)
        try:
            for version in versions:
                other.commit_config(service, {**SEED[service], "version": version}, f"deploy {version}")
                candidate = {**SEED[service], "version": version + "-rc"}
                other.propose(service, candidate, version, "b", key=version)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=deploy, args=("payments", ["p1", "p2", "p3"])),
        threading.Thread(target=deploy, args=("web", ["w1", "w2", "w3"])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(ops.history()) == 7
    assert ops.config("payments")["version"] == "p3" and ops.config("web")["version"] == "w3"
    assert len(ops.pull_requests("open")) == 6
    assert git(repo, "status", "--porcelain") == ""


def test_bad_repo_paths_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        LocalGitOps(tmp_path / "nope")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ConfigError, match="not the top of a git work tree"):
        LocalGitOps(plain)
    LocalGitOps.init(tmp_path / "outer", {"a": {"version": "1"}})
    (tmp_path / "outer" / "sub").mkdir()
    with pytest.raises(ConfigError, match="not the top"):
        LocalGitOps(tmp_path / "outer" / "sub")
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    with pytest.raises(ConfigError, match="no 'main' branch"):
        LocalGitOps(empty)


def test_git_failures_carry_stderr_and_timeouts_are_transient(ops: LocalGitOps, repo: Path) -> None:
    with pytest.raises(ToolError, match="not a git command"):
        _Git(repo, 30.0).run("frobnicate")
    with pytest.raises(TransientError, match="timed out"):
        _Git(repo, 1e-9).run("log")


# =========================================================================== notifiers


def test_jsonl_notifier_appends_lines(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "out" / "notify.jsonl"
    notifier = JsonlNotifier(path, clock=clock)
    assert isinstance(notifier, Notifier)
    notifier.notify("INC-1", "opened", "payments 5xx")
    clock.sleep(1)
    notifier.notify("INC-1", "resolved", "rolled back\nto 1.4.0")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records == [
        {"ts": T0, "incident_id": "INC-1", "event": "opened", "text": "payments 5xx"},
        {"ts": T0 + 1, "incident_id": "INC-1", "event": "resolved", "text": "rolled back\nto 1.4.0"},
    ]


def test_console_notifier_prints_one_literal_line(clock: ManualClock) -> None:
    out = io.StringIO()
    notifier = ConsoleNotifier(Console(file=out, width=30, color_system=None), clock=clock)
    notifier.notify("INC-2", "diagnosed", "bad deploy [red]of[/red] payments\nwith a long explanation text")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert "[INC-2] diagnosed bad deploy [red]of[/red] payments with a long" in lines[0]


class Broken:
    def notify(self, incident_id: str, event: str, text: str) -> None:
        raise OSError("channel down")


def test_multi_notifier_survives_a_failing_channel(
    tmp_path: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    first, last = JsonlNotifier(tmp_path / "a.jsonl", clock), JsonlNotifier(tmp_path / "b.jsonl", clock)
    with caplog.at_level(logging.ERROR, logger="tools.notifier"):
        MultiNotifier(first, Broken(), last).notify("INC-3", "opened", "x")
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 1
    assert len((tmp_path / "b.jsonl").read_text().splitlines()) == 1
    assert "Broken" in caplog.text and "channel down" in caplog.text
    with caplog.at_level(logging.CRITICAL, logger="tools.notifier"), pytest.raises(ToolError, match="every"):
        MultiNotifier(Broken(), Broken()).notify("INC-3", "opened", "x")
    MultiNotifier().notify("INC-3", "opened", "nobody listens")
