"""GitHub backends through unmodified PyGithub, over real HTTP, against the local fake (tests/fakes/github/).

Every assertion about effects counts what the server holds (issues, comments, branches, commits), not what
the client believes. Time is a fake clock shared by the client's backoff and the server's rate-limit window:
no test sleeps on real time except the one that trips a real socket timeout.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sregraph.config import load_settings
from sregraph.engine import Engine
from tests.fakes.github import FakeGitHub
from tests.fixtures.github import (
    BOT,
    BOT_TOKEN,
    REPO,
    SECRET,
    SEED,
    SEED_MESSAGE,
    SIGNING_KEY,
    T0,
    make_gitops,
    make_surface,
)
from tests.fixtures.telemetry import FAULT_AT, NOW, TOPOLOGY, error_traces, write_phase
from tests.support import FakeHealth, FakeRuntime, GraphDeployer, ManualClock
from tools.base import (
    ConfigError,
    GitOps,
    IncidentSurface,
    LogRecord,
    NotFound,
    Refused,
    TransientError,
)
from tools.breaker import CircuitOpenError
from tools.domain import Trigger
from tools.github.client import GitHubClient, RetryPolicy, resolve_token
from tools.github.commands import parse_commands
from tools.github.gitops import GitHubGitOps
from tools.github.issues import GitHubIncidentSurface
from tools.github.webhooks import WebhookReceiver, verify_signature
from tools.gitops import MergeConflict
from tools.ledger import ActionLedger
from tools.notifier import JsonlNotifier
from tools.redact import redact
from tools.telemetry import LocalTelemetryStore
from tools.toolbox import Toolbox


def open_incident(surface: GitHubIncidentSurface, fingerprint: str = "fp-payments-down") -> int:
    issue, created = surface.open_issue(
        "[incident] payments: health check failed",
        "**Trigger:** alert\n\n### Deviations\n| service | signal |\n|---|---|\n| payments | health |",
        ["incident", "status:open", "severity:sev1", "service:payments"],
        fingerprint,
    )
    assert created
    return issue.id


def keys_on(github: FakeGitHub, number: int) -> list[str]:
    """The idempotency keys of the bot's comments on an issue, as stored on the server."""
    import re

    return [
        m
        for c in github.issue_comments(number)
        if c["user"] == BOT
        for m in re.findall(r"sregraph:key=(\S+) -->", c["body"])
    ]


# --------------------------------------------------------------------------- incident surface


def test_backends_satisfy_the_protocols(surface: GitHubIncidentSurface, gitops: GitHubGitOps) -> None:
    assert isinstance(surface, IncidentSurface)
    assert isinstance(gitops, GitOps)


def test_issue_opens_with_labels_and_structured_body(
    github: FakeGitHub, surface: GitHubIncidentSurface
) -> None:
    number = open_incident(surface)
    [stored] = github.open_issues()
    assert stored["number"] == number and stored["user"] == BOT
    assert stored["labels"] == ["incident", "status:open", "severity:sev1", "service:payments"]
    assert stored["title"] == "[incident] payments: health check failed"
    assert "### Deviations" in stored["body"]
    assert "<!-- sregraph:fingerprint=fp-payments-down -->" in stored["body"]
    assert "fingerprint <code>fp-payments-down</code>" in stored["body"]  # visible to humans too
    issue = surface.get(number)
    assert issue.fingerprint == "fp-payments-down"
    assert issue.body.endswith("| payments | health |")  # the footer and markers are not part of the body
    assert issue.url == f"{github.repo_html}/issues/{number}"
    assert surface.status(number) == "open"
    assert [i.id for i in surface.list_issues()] == [number]


def test_refired_alert_comments_instead_of_opening_a_duplicate(
    github: FakeGitHub, surface: GitHubIncidentSurface
) -> None:
    # Other incidents fill several pages of the listing the fingerprint search walks.
    others = [open_incident(surface, f"fp-other-{i}") for i in range(5)]
    number = open_incident(surface)
    again, created = surface.open_issue(
        "[incident] payments again", "re-fired", ["incident", "status:open"], "fp-payments-down"
    )
    assert (again.id, created) == (number, False)
    surface.comment(number, "Incident `inc-2` attached to this issue.", key="inc-2/attach")
    assert len(github.open_issues()) == len(others) + 1
    assert [c["body"].splitlines()[0] for c in github.issue_comments(number)] == [
        "Incident `inc-2` attached to this issue."
    ]
    found = surface.find_open("fp-payments-down")
    assert found is not None and found.id == number
    assert surface.find_open("fp-unknown") is None
    # Once closed, the same alert opens a new incident.
    surface.close(number)
    fresh, created = surface.open_issue("[incident] payments", "again", ["incident"], "fp-payments-down")
    assert created and fresh.id != number


def test_fingerprints_and_keys_are_trusted_only_from_the_bot(
    github: FakeGitHub, surface: GitHubIncidentSurface
) -> None:
    """A human cannot make sregraph join a forged issue or skip a comment by copying a marker."""
    forged = github.add_issue("bob", "forged", "<!-- sregraph:fingerprint=fp-payments-down -->", ["incident"])
    number = open_incident(surface)
    assert number != forged
    github.add_comment(number, "bob", "decoy\n\n<!-- sregraph:key=inc-1%2Fdiagnosis-0 -->")
    surface.comment(number, "### Diagnosis", key="inc-1/diagnosis-0")
    assert keys_on(github, number) == ["inc-1%2Fdiagnosis-0"]
    comments = surface.get(number).comments
    assert [(c.author, c.body) for c in comments] == [("bob", "decoy"), ("sregraph", "### Diagnosis")]


def test_comments_per_phase_are_idempotent_by_key(
    github: FakeGitHub, surface: GitHubIncidentSurface, clock: ManualClock
) -> None:
    number = open_incident(surface)
    phases = ["diagnosis-0", "plan-0", "approval-request-0", "action-x", "verify-1", "postmortem"]
    first = [surface.comment(number, f"### {phase}", key=f"inc-1/{phase}") for phase in phases]
    # The graph re-runs a node after a crash: every comment is asked for again.
    second = [surface.comment(number, f"### {phase} (rerun)", key=f"inc-1/{phase}") for phase in phases]
    assert [c.id for c in first] == [c.id for c in second]
    fresh = make_surface(github, clock)  # another process: no in-memory cache, it must read the server
    third = [fresh.comment(number, f"### {phase} (other process)", key=f"inc-1/{phase}") for phase in phases]
    fresh.disconnect()
    assert [c.id for c in first] == [c.id for c in third]
    assert len(github.issue_comments(number)) == len(phases)  # 6 comments over 3 pages of 2
    issue = surface.get(number)
    assert [c.body for c in issue.comments] == [f"### {phase}" for phase in phases]
    assert {c.author for c in issue.comments} == {"sregraph"}
    # Keys are scoped to one issue.
    other = open_incident(surface, "fp-other")
    surface.comment(other, "### diagnosis-0", key="inc-1/diagnosis-0")
    assert len(github.issue_comments(other)) == 1
    assert surface.comments_since(number, after_id=first[2].id) == issue.comments[3:]


def test_duplicate_keyed_comments_converge_on_the_oldest(
    github: FakeGitHub, surface: GitHubIncidentSurface
) -> None:
    """A timed-out POST that lands after its retry checked leaves two copies; the next write removes one."""
    number = open_incident(surface)
    one = github.add_comment(number, BOT, "plan\n\n<!-- sregraph:key=k -->")
    github.add_comment(number, BOT, "plan\n\n<!-- sregraph:key=k -->")
    assert surface.comment(number, "plan", key="k").id == one
    assert [c["id"] for c in github.issue_comments(number)] == [one]


def test_status_labels_close_with_postmortem_and_reopen(
    github: FakeGitHub, surface: GitHubIncidentSurface
) -> None:
    number = open_incident(surface)
    github.add_comment(number, "alice", "looking")  # a human label change meanwhile must survive ours
    github.add_label(number, "team:payments")
    surface.set_status(number, "diagnosing")
    issue = surface.set_labels(number, add=["status:remediating"], remove=["status:diagnosing"])
    assert [label for label in issue.labels if label.startswith("status:")] == ["status:remediating"]
    assert "team:payments" in issue.labels
    surface.comment(number, "## Post-mortem\nRoot cause: bad deploy.", key="inc-1/postmortem")
    surface.set_status(number, "resolved")
    closed = surface.close(number)
    assert closed.state == "closed" and "status:resolved" in closed.labels
    stored = github.issues[number]
    assert (stored["state"], stored["state_reason"]) == ("closed", "completed")
    assert github.issue_comments(number)[-1]["body"].startswith("## Post-mortem")
    assert surface.close(number).state == "closed"  # closing twice changes nothing
    assert surface.list_issues("closed")[0].id == number
    # Reopen is refused while another issue with the fingerprint is open.
    newer = open_incident(surface)
    with pytest.raises(Refused, match=f"#{newer}"):
        surface.reopen(number)
    surface.close(newer)
    assert surface.reopen(number).state == "open"


def test_missing_issue_and_pull_request_numbers_are_not_found(
    github: FakeGitHub, surface: GitHubIncidentSurface, gitops: GitHubGitOps
) -> None:
    with pytest.raises(NotFound):
        surface.get(404)
    pr = gitops.propose("checkout", {"version": "1.5.0"}, "checkout 1.5.0", "config", key="k-checkout")
    with pytest.raises(NotFound, match="pull request"):
        surface.get(pr.id)
    assert surface.list_issues("all") == []  # pull requests are issues on GitHub, but not incidents


# --------------------------------------------------------------------------- commands


def test_approve_from_a_writer_is_honoured_and_from_a_reader_refused(
    github: FakeGitHub, surface: GitHubIncidentSurface
) -> None:
    number = open_incident(surface)
    surface.comment(
        number,
        "### Approval needed\nReply `/approve` or `/reject`.\n/approve",
        key="inc-1/approval-request-0",
    )
    github.add_comment(number, "bob", "/approve")
    github.add_comment(number, "tim", "> /approve\n```\n/approve\n```\n/retry please")
    alice = github.add_comment(number, "alice", "Checked the deploy.\n/approve rollback is safe")
    github.add_comment(number, "ghost", "/escalate")  # a deleted account
    issue = surface.get(number)
    assert [(c.name, c.author) for c in parse_commands(issue)] == [
        ("approve", "bob"),
        ("retry", "tim"),
        ("approve", "alice"),
        ("escalate", "ghost"),
    ]
    honoured = surface.commands(number)
    assert [(c.name, c.author, c.args, c.comment_id) for c in honoured] == [
        ("approve", "alice", "rollback is safe", alice)
    ]
    replies = [
        c["body"] for c in github.issue_comments(number) if c["user"] == BOT and "was ignored" in c["body"]
    ]
    assert len(replies) == 3
    assert "@bob `/approve` was ignored" in replies[0] and "yours is `read`" in replies[0]
    assert "yours is `read`" in replies[1]  # triage is read in GitHub's legacy permission field
    assert "yours is `none`" in replies[2]  # an account GitHub does not know
    before = len(github.issue_comments(number))
    assert surface.commands(number) == honoured  # asking again replies to nobody twice
    assert len(github.issue_comments(number)) == before
    assert surface.commands(number, after_id=alice) == []


def test_polling_uses_conditional_requests(github: FakeGitHub, surface: GitHubIncidentSurface) -> None:
    number = open_incident(surface)
    assert surface.poll_commands() == []
    quota = github.users[BOT].remaining
    assert surface.poll_commands() == []
    assert github.log[-1][2] == 304 and github.users[BOT].remaining == quota  # a 304 costs no quota
    github.add_comment(number, "alice", "/approve")
    github.add_comment(number, "bob", "/reject")
    [command] = surface.poll_commands()
    assert (command.name, command.author, command.issue_id) == ("approve", "alice", number)
    assert any("@bob `/reject` was ignored" in c["body"] for c in github.issue_comments(number))
    assert surface.poll_commands() == []  # our reply is new, but it is ours: no command, no second reply
    assert surface.poll_commands() == []
    assert github.log[-1][2] == 304
    assert len([c for c in github.issue_comments(number) if "was ignored" in c["body"]]) == 1


def test_webhook_with_a_bad_signature_is_rejected(github: FakeGitHub, surface: GitHubIncidentSurface) -> None:
    number = open_incident(surface)
    cid = github.add_comment(number, "alice", "/approve")
    receiver = WebhookReceiver(surface, SECRET)
    headers, body = github.webhook("issue_comment", github.comment_payload(cid), SECRET, delivery="d-1")
    forged_headers, _ = github.webhook(
        "issue_comment", github.comment_payload(cid), "not-the-secret", delivery="d-0"
    )
    rejected = receiver.handle(forged_headers, body)
    assert (rejected.status, rejected.commands) == (401, [])
    tampered = body.replace(b"/approve", b"/reject!")
    assert receiver.handle(headers, tampered).status == 401
    assert (
        receiver.handle({k: v for k, v in headers.items() if k != "X-Hub-Signature-256"}, body).status == 401
    )
    accepted = receiver.handle(headers, body)
    assert accepted.status == 202 and [(c.name, c.author) for c in accepted.commands] == [
        ("approve", "alice")
    ]
    assert receiver.handle(headers, body).status == 200  # a redelivery is handled once
    ping_headers, ping = github.webhook("ping", {"zen": "Keep it logically awesome."}, SECRET, delivery="d-2")
    assert receiver.handle(ping_headers, ping).reason == "pong"
    signature = headers["X-Hub-Signature-256"]
    assert verify_signature(SECRET, body, signature)
    assert not verify_signature(SECRET, body, signature.replace("sha256=", "sha1="))
    assert not verify_signature("", body, signature)
    assert not verify_signature(SECRET, body, None)
    with pytest.raises(ConfigError):
        WebhookReceiver(surface, "")


# --------------------------------------------------------------------------- GitOps


def test_rollback_pr_is_opened_merged_where_allowed_and_branches_pruned(
    github: FakeGitHub, gitops: GitHubGitOps, clock: ManualClock
) -> None:
    clock.t = T0 - 100
    bad = gitops.commit_config("payments", {"version": "2.0.0-rc1", "replicas": 1}, "payments 2.0.0-rc1")
    assert (bad.kind, bad.services, bad.at) == ("deploy", ["payments"], T0 - 100)
    clock.t = T0
    target = gitops.rollback_config("payments", bad.sha)
    assert target == {"version": "1.4.0", "replicas": 1}
    assert gitops.rollback_config("payments") == target
    assert gitops.rollback_config("payments", T0 - 50) == {"version": "2.0.0-rc1", "replicas": 1}
    key = "inc-20231114-221320-ab12/attempt-1/rollback/payments"
    body = "bad_deploy after change 1a2b3c4d\n\nOpened by sregraph for incident #7.\nIdempotency key: `inc/…`"
    pr = gitops.propose("payments", target, f"rollback payments: revert {bad.sha[:8]}", body, key=key)
    assert (pr.state, pr.service, pr.key, pr.merge_sha) == ("open", "payments", key, None)
    assert gitops.propose("payments", target, "again", body, key=key).id == pr.id  # idempotent by key
    stored = github.pulls()[0]
    assert "Incident: #7" in stored["body"] and "| `version` | `2.0.0-rc1` | `1.4.0` |" in stored["body"]
    assert "Sregraph-Kind: rollback" in github.commits[github.refs[f"refs/heads/{pr.branch}"]].message
    # nothing runs before the merge
    assert github.file("services/payments.yaml") == "version: 2.0.0-rc1\nreplicas: 1\n"

    # Where policy leaves the merge to a human, the PR stays open.
    with (
        make_gitops(github, clock, allow_merge=False) as human_only,
        pytest.raises(Refused, match="allow_merge"),
    ):
        human_only.merge(pr.id)
    assert gitops.get_pr(pr.id).state == "open"

    merged = gitops.merge(pr.id)
    assert merged.state == "merged" and merged.merge_sha == github.refs["refs/heads/main"]
    assert gitops.merge(pr.id).merge_sha == merged.merge_sha  # merging twice changes nothing
    assert gitops.config("payments") == target
    newest = gitops.history(limit=1)[0]
    assert (newest.kind, newest.services, newest.sha) == ("rollback", ["payments"], merged.merge_sha)
    assert f"Sregraph-PR: {pr.id}" in newest.message
    assert [c.kind for c in gitops.history(service="payments")] == ["rollback", "deploy", "other"]
    assert gitops.history(since=T0 - 150, service="checkout") == []

    # Two more proposals, then prune to one branch: merged and older ones go, the newest open PR stays.
    one = gitops.propose("checkout", {"version": "1.5.0"}, "checkout 1.5.0", "scale", key="k-1")
    two = gitops.propose(
        "payments", {"version": "1.4.0", "replicas": 2}, "payments replicas", "scale", key="k-2"
    )
    assert sorted(github.branches()) == sorted(["main", pr.branch, one.branch, two.branch])
    deleted = gitops.prune_branches(1)
    assert sorted(deleted) == sorted([pr.branch, one.branch])
    assert github.branches() == sorted(["main", two.branch])
    assert gitops.get_pr(one.id).state == "closed" and gitops.get_pr(two.id).state == "open"
    assert [p.id for p in gitops.pull_requests("merged")] == [pr.id]
    assert [p.id for p in gitops.pull_requests()] == [two.id, one.id, pr.id]
    assert gitops.prune_branches(1) == []


def test_gitops_refusals_conflicts_and_moved_branches(github: FakeGitHub, gitops: GitHubGitOps) -> None:
    with pytest.raises(Refused, match="identical"):
        gitops.propose("payments", {"version": "1.4.0", "replicas": 1}, "noop", "", key="noop")
    with pytest.raises(NotFound):
        gitops.propose("inventory", {"version": "1"}, "new", "", key="new")
    with pytest.raises(NotFound):
        gitops.config("inventory")
    with pytest.raises(ConfigError):
        gitops.config("../etc/passwd")
    assert gitops.services() == ["checkout", "payments"]
    conflicting = gitops.propose(
        "payments", {"version": "1.3.0", "replicas": 1}, "payments 1.3.0", "", key="c-1"
    )
    github.commit({"services/payments.yaml": "version: 1.5.0\nreplicas: 1\n"}, "hotfix by a human")
    with pytest.raises(MergeConflict):
        gitops.merge(conflicting.id)
    moved = gitops.propose("checkout", {"version": "1.6.0"}, "checkout 1.6.0", "", key="m-1")
    github.commit(
        {"services/checkout.yaml": "version: 1.7.0\n"}, "pushed to the PR branch", branch=moved.branch
    )
    with pytest.raises(Refused, match="moved"):
        gitops.merge(moved.id)
    protected = gitops.propose("checkout", {"version": "1.8.0"}, "checkout 1.8.0", "", key="p-1")
    review = "At least 1 approving review is required by reviewers with write access."
    github.inject(405, method="PUT", path=r"/merge$", body={"message": review})
    with pytest.raises(Refused, match="approving review"):
        gitops.merge(protected.id)
    assert gitops.get_pr(protected.id).state == "open"
    change = gitops.history(limit=1)[0]
    assert (change.message, change.kind, change.services) == ("hotfix by a human", "deploy", ["payments"])


# --------------------------------------------------------------------------- robustness


def test_a_5xx_burst_is_survived_with_nothing_lost_or_doubled(
    github: FakeGitHub, surface: GitHubIncidentSurface, clock: ManualClock
) -> None:
    github.inject(503, method="GET", path=r"/issues$", times=2)
    github.inject(502, method="POST", path=r"/issues$", after=True)  # created, but the answer was lost
    issue, created = surface.open_issue("[incident] x", "body", ["incident"], "fp-burst")
    assert created  # the retry recognised the issue its lost POST had opened
    github.inject(500, method="GET", path=r"/comments$")
    github.inject(502, method="POST", path=r"/comments$", after=True)
    surface.comment(issue.id, "diagnosis", key="inc/diagnosis-0")
    github.inject(502, method="POST", path=r"/comments$", after=True)
    surface.comment(issue.id, "a comment without a key")
    github.inject(504, method="PATCH", path=r"/issues/\d+$", after=True)
    github.inject(502, method="DELETE", path=r"/labels/", after=True)
    surface.set_labels(issue.id, ["status:resolved"], ["incident"])
    surface.close(issue.id)
    assert len(github.issues) == 1
    assert [c["body"].split("\n")[0] for c in github.issue_comments(issue.id)] == [
        "diagnosis",
        "a comment without a key",
    ]
    assert (
        github.issues[issue.id]["labels"] == ["status:resolved"]
        and github.issues[issue.id]["state"] == "closed"
    )
    assert github.faults == [] and github.errors == []  # every scripted failure was met and survived
    assert len([s for _, _, s in github.log if s >= 500]) == 8
    assert len(clock.slept) == 8 and all(0 < s <= 1.0 for s in clock.slept[:1])  # backoff on the fake clock


def test_persistent_failure_gives_up_with_a_transient_error(
    github: FakeGitHub, surface: GitHubIncidentSurface, clock: ManualClock
) -> None:
    number = open_incident(surface)
    github.inject(502, method="GET", path=rf"/issues/{number}$", times=10)
    with pytest.raises(TransientError, match="502"):
        surface.get(number)
    assert len(clock.slept) == 4  # five attempts


def test_one_client_serves_both_backends(github: FakeGitHub, clock: ManualClock) -> None:
    """Both backends on one GitHubClient share its breaker: an outage seen by one fails the other fast."""
    client = GitHubClient(
        BOT_TOKEN,
        github.base_url,
        clock=clock,
        retry=RetryPolicy(attempts=1, breaker_failures=2),
        seconds_between_requests=0,
        seconds_between_writes=0,
    )
    surface = GitHubIncidentSurface(REPO, client=client)
    gitops = GitHubGitOps(REPO, client=client, key=SIGNING_KEY)
    number = open_incident(surface)
    assert gitops.config("payments")["version"] == "1.4.0"
    github.inject(502, method="GET", path=rf"/issues/{number}$", times=2)
    for _ in range(2):
        with pytest.raises(TransientError, match="502"):
            surface.get(number)
    sent = len(github.requests())
    with pytest.raises(CircuitOpenError):
        gitops.config("payments")
    assert len(github.requests()) == sent  # failed fast: nothing reached GitHub
    client.close()  # whoever builds the shared client closes it (the backends' disconnect leaves it open)


def test_rate_limits_are_respected(
    github: FakeGitHub, surface: GitHubIncidentSurface, clock: ManualClock
) -> None:
    number = open_incident(surface)
    # Secondary limit as a 403 with Retry-After, then as a 429.
    github.secondary_rate_limit(status=403, retry_after=7, method="POST", path=r"/comments$")
    github.secondary_rate_limit(status=429, retry_after=3, method="GET", path=rf"/issues/{number}$")
    surface.comment(number, "after the limits", key="k")
    assert sorted(clock.slept) == [3.0, 7.0]
    assert len(github.issue_comments(number)) == 1
    # Secondary limit without Retry-After: GitHub's advice is at least a minute.
    github.secondary_rate_limit(status=403, retry_after=None, method="GET", path=rf"/issues/{number}$")
    surface.get(number)
    assert clock.slept[-1] == 60.0
    # Primary quota spent: refused until the reset, which the client waits for on its clock.
    github.exhaust_quota(BOT, reset_in=30)
    assert surface.get(number).id == number
    assert 30 <= clock.slept[-1] <= 32
    # The last answer said no quota is left: the next call waits for the reset before asking at all.
    github.users[
        BOT
    ].remaining = 2  # exactly what the next get() uses: the issue and its one page of comments
    github.users[BOT].reset = clock.now() + 20
    surface.get(number)
    assert github.log[-1][2] == 200 and github.users[BOT].remaining == 0
    waited, asked = len(clock.slept), len(github.log)
    surface.get(number)
    assert len(clock.slept) == waited + 1 and 20 <= clock.slept[-1] <= 22
    assert [status for _, _, status in github.log[asked:]] == [200, 200]  # never refused
    # A wait longer than the policy allows fails fast instead of stalling the incident.
    github.exhaust_quota(BOT, reset_in=3600)
    with pytest.raises(TransientError, match="rate limit"):
        surface.get(number)
    assert max(clock.slept) < 300


def test_a_slow_answer_after_the_write_is_not_doubled(github: FakeGitHub, clock: ManualClock) -> None:
    """The POST lands, its answer outlives the client's timeout; the retry finds the comment."""
    slow = make_surface(github, clock, timeout=1)
    number = open_incident(slow)
    github.inject(0, method="POST", path=r"/comments$", after=True, delay=1.3)
    slow.comment(number, "posted once", key="slow")
    assert [c["body"].split("\n")[0] for c in github.issue_comments(number)] == ["posted once"]
    assert clock.slept and clock.slept[-1] >= 1.0  # a timed-out request gets time to land before the re-check
    slow.disconnect()


def test_errors_are_translated(github: FakeGitHub, clock: ManualClock) -> None:
    bad = GitHubIncidentSurface(
        REPO,
        token="ghp_" + "x" * 36,
        base_url=github.base_url,
        clock=clock,
        seconds_between_requests=0,
        seconds_between_writes=0,
    )
    with pytest.raises(ConfigError, match="rejected the token"):
        bad.get(1)
    bad.disconnect()
    reader_token = github.add_user("rita", role="read")
    reader = GitHubGitOps(
        REPO,
        token=reader_token,
        base_url=github.base_url,
        clock=clock,
        seconds_between_requests=0,
        seconds_between_writes=0,
    )
    with pytest.raises(Refused, match="Contents"):
        reader.propose("payments", {"version": "9"}, "x", "y", key="r")
    reader.disconnect()
    with pytest.raises(ConfigError, match="owner/name"):
        GitHubIncidentSurface("not-a-repo", token="t")


# --------------------------------------------------------------------------- secrets


def test_redaction_removes_secrets_from_everything_posted(
    github: FakeGitHub, surface: GitHubIncidentSurface, gitops: GitHubGitOps
) -> None:
    leaks = {
        "github": "ghp_" + "a1" * 18,
        "pat": "github_pat_11ABCDEFG0123456789_" + "z" * 40,
        "aws": "AKIAIOSFODNN7EXAMPLE",
        "aws_secret": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "url": "s3cr3t-pw",
        "password": "hunter2",
        "bearer": "eyJhbGciOiJIUzI1NiJ9abcdef",
        "key": "MIIEowIBAAKCAQEAu1SU1L",
        "dsn": "Pa55word",
    }
    text = (
        f"token {leaks['github']} and {leaks['pat']}; aws {leaks['aws']} aws_secret_access_key={leaks['aws_secret']}\n"
        f"db postgres://orders:{leaks['url']}@db:5432/orders password={leaks['password']}\n"
        f"Authorization: Bearer {leaks['bearer']}\n"
        f"-----BEGIN RSA PRIVATE KEY-----\n{leaks['key']}\n-----END RSA PRIVATE KEY-----\n"
        f"Server=db;User Id=sa;Password={leaks['dsn']};\n"
        f"and our own token {BOT_TOKEN}"
    )
    number, _ = surface.open_issue(
        f"[incident] leak password={leaks['password']}", text, ["incident"], "fp-leak"
    )
    surface.comment(number.id, text, key="leak")
    pr = gitops.propose("checkout", {"version": "1.5.0"}, f"title {leaks['github']}", text, key="leak")
    posted = [
        github.issues[number.id]["title"],
        github.issues[number.id]["body"],
        *[c["body"] for c in github.comments.values()],
        github.issues[pr.id]["body"],
        github.issues[pr.id]["title"],
    ]
    posted += [c.message for c in github.commits.values()]
    for value in [*leaks.values(), BOT_TOKEN]:
        assert not any(value in p for p in posted), value
    assert "postgres://orders:[REDACTED]@db:5432/orders" in github.issues[number.id]["body"]
    assert (
        redact("nothing sensitive: error_ratio 0.6, key `inc/1`")
        == "nothing sensitive: error_ratio 0.6, key `inc/1`"
    )


def test_token_comes_from_the_environment_or_a_secrets_file(tmp_path: Path) -> None:
    assert resolve_token(environ={"GITHUB_TOKEN": " ghp_env\n"}) == "ghp_env"
    secret = tmp_path / "github_token"
    secret.write_text("ghp_file\n")
    assert resolve_token(environ={"GITHUB_TOKEN_FILE": str(secret)}) == "ghp_file"
    assert resolve_token(environ={}, secrets_file=secret) == "ghp_file"
    with pytest.raises(ConfigError, match="GITHUB_TOKEN"):
        resolve_token(environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_token(environ={"GITHUB_TOKEN_FILE": str(tmp_path / "missing")})


# --------------------------------------------------------------------------- the real graph


def test_the_real_graph_runs_an_incident_on_github(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad deploy of payments: issue, phase comments, a rollback PR merged through GitHub, post-mortem, close."""
    monkeypatch.chdir(tmp_path)  # no stray sregraph.yaml from the working directory
    clock = ManualClock(T0 - 600)
    server = FakeGitHub("acme", "ops", max_per_page=3, clock=clock.now)
    server.add_user(BOT, role="write", token=BOT_TOKEN)
    server.seed(SEED, SEED_MESSAGE, at=T0 - 600)
    with server:
        surface = make_surface(server, clock)
        gitops = make_gitops(server, clock)
        clock.t = FAULT_AT - 20
        gitops.commit_config(
            "payments", {"version": "2.0.0-rc1", "replicas": 1}, "payments 2.0.0-rc1", kind="deploy"
        )
        clock.t = NOW
        store = LocalTelemetryStore(tmp_path / "telemetry.db")
        for service in TOPOLOGY:
            write_phase(store, service, T0, FAULT_AT - 0.5)
            write_phase(store, service, FAULT_AT, NOW, {"error_ratio": 0.6})
            write_phase(store, service, NOW + 0.5, NOW + 60)  # what the rollback brings back
        error_traces(store, "payments")
        store.write_logs(
            [
                LogRecord(
                    ts=FAULT_AT + 2 + i * 0.1,
                    service="checkout",
                    level="error",
                    message="upstream payments returned 500",
                )
                for i in range(10)
            ]
        )
        runtime = FakeRuntime.up(TOPOLOGY, version="1.4.0")
        deployer = GraphDeployer(runtime, gitops)
        toolbox = Toolbox(
            telemetry=store,
            runtime=runtime,
            incidents=surface,
            gitops=gitops,
            notifier=JsonlNotifier(tmp_path / "notifications.jsonl"),
            health=FakeHealth(),
            deployer=deployer,
            ledger=ActionLedger(tmp_path / "ledger.db"),
            topology=TOPOLOGY,
            clock=clock,
        )
        settings = load_settings(
            environ={},
            data_dir=tmp_path / "data",
            observer={
                "window_s": 6,
                "baseline_s": 30,
                "confirm_polls": 1,
                "confirm_s": 0,
                "detect_timeout_s": 0,
            },
            engineer={"verify_timeout_s": 10, "stable_checks": 3, "verify_poll_s": 0.5},
        )
        engine = Engine(settings, toolbox)
        try:
            state = engine.start(
                Trigger(source="alert", service="payments", summary="payments error ratio high", fired_at=NOW)
            )
        finally:
            engine.close()
        incident = state["incident_id"]
        assert state["status"] == "resolved", state.get("escalation")
        assert [(a.action.kind, a.status) for a in state["actions"]] == [("rollback", "done")]

        [issue] = [i for i in server.issues.values() if "pull" not in i]
        assert issue["number"] == state["issue_id"] and issue["state"] == "closed" and issue["user"] == BOT
        assert issue["labels"][:1] == ["incident"] and any(
            label.startswith("service:") for label in issue["labels"]
        )
        assert [label for label in issue["labels"] if label.startswith("status:")] == ["status:resolved"]
        assert any(label.startswith("severity:sev") for label in issue["labels"])
        keys = keys_on(server, issue["number"])
        phases = [k.split("%2F", 1)[1] for k in keys]
        assert keys[0].startswith(incident)
        assert phases[:2] == ["diagnosis-0", "plan-0"] and phases[-2:] == ["verify-1", "postmortem"]
        assert any(p.startswith("action-") for p in phases) and len(phases) == len(set(phases))
        bodies = [c["body"] for c in server.issue_comments(issue["number"])]
        assert bodies[0].startswith("### Diagnosis") and "bad_deploy" in bodies[0]

        [pull] = server.pulls()
        assert pull["pull"]["merged_at"] is not None and f"Incident: #{issue['number']}" in pull["body"]
        assert server.file("services/payments.yaml") == "version: 1.4.0\nreplicas: 1\n"
        assert deployer.applied == ["payments"] and runtime.statuses["payments"].version == "1.4.0"
        assert gitops.history(limit=1)[0].kind == "rollback"
        assert gitops.prune_branches(0) == [pull["pull"]["head"]] and server.branches() == ["main"]
        assert server.errors == [] and all(status < 400 for _, _, status in server.log)  # a clean run
        surface.disconnect()
        gitops.disconnect()
