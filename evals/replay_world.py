"""The recorded world, simulated: answers for calls an LLM brain makes that the recorded run never made.

A deterministic brain replays exactly (evals/replay.py). A model may take another path: read another service's
status, post a comment under another key, propose a pull request the recorded run did not. Failing such a case
with `MissingRecording` would judge the recording, not the model; so in a judging replay (`strict=False`) these
calls are answered from a small world built from everything the recording shows (issues, labels, comments, pull
requests, service statuses, commits, configs), and mutations change that world, never anything real. Each
simulated answer is listed on the session (`simulated`), so a report shows how far a run left the recording.

What cannot be derived from the recording (a config never read, a rollback target never computed) is answered
with a `ToolError`, as a real backend answers a call it cannot serve: the agents' own error handling applies.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from tools.base import Change, Comment, HealthResult, Issue, NotFound, PullRequest, ServiceStatus, ToolError


class SimulatedWorld:
    """Issues, pull requests, statuses and commits as the recording last showed them, changed by simulated mutations."""

    def __init__(self, topology: dict[str, list[str]], logs_of: Any = None) -> None:
        self.services = sorted(topology)
        self.issues: dict[int, Issue] = {}
        self.prs: dict[int, PullRequest] = {}
        self.statuses: dict[str, ServiceStatus] = {}
        self.health: dict[str, HealthResult] = {}
        self.changes: dict[str, Change] = {}
        self.configs: dict[str, dict[str, Any]] = {}
        self.rollbacks: dict[str, dict[str, Any]] = {}
        self.logs_of = logs_of
        """service, tail -> the last log lines (from the recorded telemetry), or None."""
        self.now = 0.0

    # ------------------------------------------------------------------ learning from recorded answers

    def observe(self, tool: str, method: str, args: dict[str, Any], result: Any) -> None:
        """Fold a recorded (or simulated) answer into the world."""
        for value in _models(result):
            if isinstance(value, Issue):
                self.issues[value.id] = value.model_copy(deep=True)
            elif isinstance(value, PullRequest):
                self.prs[value.id] = value.model_copy(deep=True)
            elif isinstance(value, ServiceStatus):
                self.statuses[value.service] = value.model_copy(deep=True)
            elif isinstance(value, HealthResult):
                self.health[value.service] = value.model_copy(deep=True)
            elif isinstance(value, Change):
                self.changes[value.sha] = value.model_copy(deep=True)
            elif isinstance(value, Comment) and tool == "incidents" and "issue_id" in args:
                issue = self.issues.get(int(args["issue_id"]))
                if issue is not None and all(c.id != value.id for c in issue.comments):
                    issue.comments.append(value.model_copy(deep=True))
        if (tool, method) == ("gitops", "config") and isinstance(result, dict):
            self.configs[str(args.get("service"))] = dict(result)
        if (tool, method) == ("gitops", "rollback_config") and isinstance(result, dict):
            self.rollbacks[str(args.get("service"))] = dict(result)

    # ------------------------------------------------------------------ answering

    def answer(self, tool: str, method: str, args: dict[str, Any]) -> Any:
        """The world's answer to a call the recording has none for (a model object, a list, or None)."""
        handler = getattr(self, f"_{tool}_{method}", None)
        if handler is None:
            raise ToolError(
                f"{tool}.{method} is not simulated on replay and the recording has no answer for it"
            )
        result = handler(**args)
        self.observe(tool, method, args, result)
        return result

    def _service(self, service: str) -> ServiceStatus:
        if service not in self.services:
            raise NotFound(f"unknown service {service!r}")
        return self.statuses.get(service) or ServiceStatus(service=service, running=True)

    def _runtime_services(self) -> list[str]:
        return list(self.services)

    def _runtime_status(self, service: str) -> ServiceStatus:
        return self._service(service).model_copy()

    def _runtime_restart(self, service: str) -> ServiceStatus:
        before = self._service(service)
        return before.model_copy(
            update={
                "running": True,
                "restarts": before.restarts + 1,
                "exit_code": None,
                "oom_killed": False,
                "started_at": self.now,
            }
        )

    def _runtime_start(self, service: str) -> ServiceStatus:
        before = self._service(service)
        if before.running:
            return before.model_copy()
        return before.model_copy(
            update={
                "running": True,
                "restarts": before.restarts + 1,
                "exit_code": None,
                "started_at": self.now,
            }
        )

    def _runtime_stop(self, service: str) -> ServiceStatus:
        return self._service(service).model_copy(update={"running": False})

    def _runtime_scale(self, service: str, replicas: int) -> ServiceStatus:
        return self._service(service).model_copy(update={"replicas": int(replicas)})

    def _runtime_logs(self, service: str, tail: int = 100) -> list[str]:
        self._service(service)
        return list(self.logs_of(service, tail)) if self.logs_of is not None else []

    def _health_check(self, service: str) -> HealthResult:
        status = self._service(service)
        known = self.health.get(service)
        if known is not None and known.ok == status.running:
            return known.model_copy()
        return HealthResult(
            service=service, ok=status.running, detail="" if status.running else "process not running"
        )

    def _deployer_apply(self, service: str) -> ServiceStatus:
        return self._runtime_restart(service)

    def _issue(self, issue_id: int) -> Issue:
        issue = self.issues.get(int(issue_id))
        if issue is None:
            raise NotFound(f"issue #{issue_id} does not exist")
        return issue

    def _incidents_open_issue(
        self, title: str, body: str, labels: list[str], fingerprint: str
    ) -> tuple[Issue, bool]:
        found = self._incidents_find_open(fingerprint)
        if found is not None:
            return found, False
        issue = Issue(
            id=max(self.issues, default=0) + 1,
            title=title,
            body=body,
            labels=list(labels),
            fingerprint=fingerprint,
            created_at=self.now,
        )
        self.issues[issue.id] = issue
        return issue.model_copy(deep=True), True

    def _incidents_find_open(self, fingerprint: str) -> Issue | None:
        found = [i for i in self.issues.values() if i.state == "open" and i.fingerprint == fingerprint]
        return max(found, key=lambda i: i.id).model_copy(deep=True) if found else None

    def _incidents_get(self, issue_id: int) -> Issue:
        return self._issue(issue_id).model_copy(deep=True)

    def _incidents_list_issues(self, state: str = "open") -> list[Issue]:
        chosen = [i for i in self.issues.values() if state == "all" or i.state == state]
        return [i.model_copy(deep=True) for i in sorted(chosen, key=lambda i: -i.id)]

    def _incidents_comment(self, issue_id: int, body: str, key: str | None = None) -> Comment:
        issue = self._issue(issue_id)
        ids = [c.id for i in self.issues.values() for c in i.comments]
        comment = Comment(id=max(ids, default=0) + 1, author="sregraph", body=body, created_at=self.now)
        issue.comments.append(comment)
        return comment

    def _incidents_set_labels(self, issue_id: int, add: list[str], remove: list[str] | None = None) -> Issue:
        issue = self._issue(issue_id)
        gone = set(remove or [])
        issue.labels = [label for label in issue.labels if label not in gone] + [
            label for label in add if label not in issue.labels
        ]
        return issue.model_copy(deep=True)

    def _incidents_close(self, issue_id: int) -> Issue:
        issue = self._issue(issue_id)
        issue.state = "closed"
        return issue.model_copy(deep=True)

    def _gitops_history(self, since: float | None = None, service: str | None = None) -> list[Change]:
        chosen = [
            c
            for c in self.changes.values()
            if (since is None or c.at >= since) and (service is None or service in c.services)
        ]
        return sorted(chosen, key=lambda c: -c.at)

    def _gitops_config(self, service: str) -> dict[str, Any]:
        if service not in self.configs:
            raise ToolError(f"the config of {service} was never read in the recording")
        return dict(self.configs[service])

    def _gitops_rollback_config(self, service: str, before: float | str) -> dict[str, Any]:
        if service not in self.rollbacks:
            raise ToolError(f"no rollback target of {service} was computed in the recording")
        return dict(self.rollbacks[service])

    def _gitops_propose(
        self, service: str, new_config: dict[str, Any], title: str, body: str, key: str | None = None
    ) -> PullRequest:
        if key is not None:
            same = [p for p in self.prs.values() if p.key == key]
            if same:
                return same[0].model_copy()
        number = max(self.prs, default=0) + 1
        pr = PullRequest(
            id=number,
            branch=f"sregraph/simulated-{number}",
            title=title,
            body=body,
            head_sha=f"simulated{number:033d}",
            service=service,
            key=key,
        )
        self.prs[number] = pr
        return pr.model_copy()

    def _gitops_merge(self, pr_id: int) -> PullRequest:
        pr = self.prs.get(int(pr_id))
        if pr is None:
            raise NotFound(f"pull request #{pr_id} does not exist")
        pr.state, pr.merge_sha = "merged", pr.merge_sha or f"merged{pr.id:034d}"
        return pr.model_copy()

    def _gitops_pull_requests(self, state: str = "all") -> list[PullRequest]:
        return [
            p.model_copy()
            for p in sorted(self.prs.values(), key=lambda p: p.id)
            if state == "all" or p.state == state
        ]


def _models(result: Any) -> list[BaseModel]:
    if isinstance(result, BaseModel):
        return [result]
    if isinstance(result, (list, tuple)):
        return [v for item in result for v in _models(item)]
    return []
