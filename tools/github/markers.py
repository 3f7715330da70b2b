"""The hidden markers sregraph writes into GitHub text, and GitHub's limits on that text.

A marker is an HTML comment (`<!-- sregraph:key=... -->`) that GitHub does not render: fingerprints on issues,
idempotency keys and nonces on comments, pins on pull requests. Markers count only in text the bot's own
account wrote (docs/github.md).
"""

from __future__ import annotations

import re
import urllib.parse

SREGRAPH_AUTHOR = "sregraph"
"""Author name given to comments the bot posted, as the local surface does (the librarian filters on it)."""
TITLE_MAX = 256
"""GitHub's longest issue or pull request title."""
BODY_MAX = 65_536
"""GitHub's longest issue, comment or pull request body."""
_MARK_RE = re.compile(r"\n*<!-- sregraph:(?P<name>[a-z-]+)=(?P<value>[^\s>]*) -->")


def hidden_marker(name: str, value: str) -> str:
    """The marker `<!-- sregraph:name=value -->`, its value URL-quoted."""
    return f"<!-- sregraph:{name}={urllib.parse.quote(value, safe='')} -->"


def read_markers(text: str | None) -> dict[str, str]:
    """Every marker in `text`, by name (whoever wrote the text: the caller checks the author)."""
    return {m["name"]: urllib.parse.unquote(m["value"]) for m in _MARK_RE.finditer(text or "")}


def strip_markers(text: str | None) -> str:
    """`text` without its markers."""
    return _MARK_RE.sub("", text or "").rstrip()


def fit(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with a note saying so, when it is longer."""
    if len(text) <= limit:
        return text
    note = "\n\n… (truncated by sregraph: GitHub limits the length of this text)"
    return text[: max(0, limit - len(note))] + note
