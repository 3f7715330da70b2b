"""Recent changes as the analyst reads them: the GitOps history, merged with the deploy markers applications
and their pipelines sent through the API (`POST /api/v1/ingest/deploys`).

A marker whose revision names a commit of the GitOps history is that commit, reported twice: the commit is
kept (sregraph can roll it back), the marker dropped. Markers live in the local telemetry store; a backend
that is not one (a recording, a replay, Prometheus alone) has none, and the history is the GitOps one.
"""

from __future__ import annotations

import logging
from typing import Any

from tools.base import Change, SregraphError
from tools.telemetry import LocalTelemetryStore, SplitTelemetry

log = logging.getLogger("sregraph.changes")

MIN_REVISION = 7
"""The shortest revision matched against commit shas (git's own shortest abbreviation)."""


def marker_store(telemetry: Any) -> LocalTelemetryStore | None:
    """The store that keeps deploy markers and external events: the local telemetry store, also when metrics
    come from Prometheus (`SplitTelemetry`); None when there is none."""
    local = telemetry.logs_and_spans if isinstance(telemetry, SplitTelemetry) else telemetry
    return local if isinstance(local, LocalTelemetryStore) else None


class ChangeFeed:
    """`history()` over the GitOps history and the ingested deploy markers, newest first."""

    def __init__(self, gitops: Any, telemetry: Any) -> None:
        self.gitops = gitops
        self.markers = marker_store(telemetry)

    def history(
        self, since: float | None = None, service: str | None = None, limit: int | None = None
    ) -> list[Change]:
        """Changes since a time (and touching a service), newest first: commits and deploy markers."""
        commits: list[Change] = self.gitops.history(since=since, service=service)
        if self.markers is None:
            return commits if limit is None else commits[:limit]
        try:
            markers = self.markers.deploys(since if since is not None else 0.0, float("inf"), service=service)
        except SregraphError as exc:
            # The GitOps history alone is still the truth about what sregraph can revert.
            log.warning("deploy markers unreadable, using the GitOps history alone: %s", exc)
            markers = []
        shas = [c.sha for c in commits]
        extra = [
            m.as_change()
            for m in markers
            if not (
                len(m.revision) >= MIN_REVISION
                and any(sha.startswith(m.revision) or m.revision.startswith(sha) for sha in shas)
            )
        ]
        # Without markers the GitOps order stands as it was (first-parent order, which times need not follow).
        merged = sorted([*commits, *extra], key=lambda c: -c.at) if extra else commits
        return merged if limit is None else merged[:limit]
