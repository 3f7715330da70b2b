"""GitHub as the incident surface (issues, labels, comments, slash commands) and as the GitOps repository.

Both backends mirror the local ones (tools/incidents.py, tools/gitops.py) and share one `GitHubClient`.
What GitHub cannot give (transactions, unique indexes) is replaced by hidden markers and check-then-act
operations retried as a whole; see docs/github.md for the design, scopes, webhooks and labels.

Modules: `client` (the REST client), `markers`, `commands`, `webhooks`, `issues` (GitHubIncidentSurface),
`gitops` (GitHubGitOps). The names below are re-exported for code that imports them from `tools.github`.
"""

from tools.github.client import (
    DEFAULT_BASE_URL,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    GitHubClient,
    RepoClient,
    RetryPolicy,
    resolve_token,
)
from tools.github.commands import COMMANDS, WRITE_PERMISSIONS, Command, parse_commands
from tools.github.gitops import GitHubGitOps
from tools.github.issues import INCIDENT_LABEL, LABELS, STATUS_PREFIX, GitHubIncidentSurface
from tools.github.markers import SREGRAPH_AUTHOR
from tools.github.webhooks import (
    WebhookCommands,
    WebhookEvent,
    WebhookReceiver,
    WebhookResult,
    parse_webhook,
    verify_signature,
)

__all__ = [
    "COMMANDS",
    "DEFAULT_BASE_URL",
    "INCIDENT_LABEL",
    "LABELS",
    "SREGRAPH_AUTHOR",
    "STATUS_PREFIX",
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "WRITE_PERMISSIONS",
    "Command",
    "GitHubClient",
    "GitHubGitOps",
    "GitHubIncidentSurface",
    "RepoClient",
    "RetryPolicy",
    "WebhookCommands",
    "WebhookEvent",
    "WebhookReceiver",
    "WebhookResult",
    "parse_commands",
    "parse_webhook",
    "resolve_token",
    "verify_signature",
]
