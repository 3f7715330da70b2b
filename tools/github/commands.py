"""Slash commands (`/approve`, `/reject`, ...) in incident comments, and who may give them."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel

from tools.base import Issue
from tools.github.markers import SREGRAPH_AUTHOR

WRITE_PERMISSIONS = frozenset({"admin", "maintain", "write"})
"""Repository permissions whose slash commands are honoured."""
COMMANDS = ("approve", "reject", "retry", "escalate", "ack")

_COMMAND_RE = re.compile(r"^/(?P<name>[A-Za-z]+)(?:[ \t]+(?P<args>.*))?$")
_FENCE_RE = re.compile(r"^\s*(```|~~~)")


class Command(BaseModel):
    """A slash command a human wrote in an incident comment."""

    name: Literal["approve", "reject", "retry", "escalate", "ack"]
    args: str = ""
    """The rest of the line: a reason, for instance."""
    author: str
    issue_id: int
    comment_id: int
    created_at: float = 0.0


def parse_commands(issue: Issue) -> list[Command]:
    """Slash commands in the issue's human comments, oldest first: the first command line of each comment.

    A command is a line that starts with `/approve`, `/reject`, `/retry`, `/escalate` or `/ack`; quoted lines
    (`> /approve`) and fenced code blocks do not count, nor do sregraph's own comments. This only reads
    the text: whether the author may command anything is `GitHubIncidentSurface.commands`'s business.
    """
    found: list[Command] = []
    for comment in issue.comments:
        if comment.author == SREGRAPH_AUTHOR:
            continue
        parsed = _first_command(comment.body)
        if parsed is not None:
            name, args = parsed
            found.append(
                Command(
                    name=name,
                    args=args,
                    author=comment.author,
                    issue_id=issue.id,
                    comment_id=comment.id,
                    created_at=comment.created_at,
                )
            )
    return found


def _first_command(body: str) -> tuple[str, str] | None:
    fenced = False
    for line in body.splitlines():
        if _FENCE_RE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        match = _COMMAND_RE.match(line.strip())
        if match and match["name"].lower() in COMMANDS:
            return match["name"].lower(), (match["args"] or "").strip()
    return None
