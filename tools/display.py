"""Text that came from outside, made safe to show: on a terminal (rich) and in Markdown (issues, PRs).

Alerts, issue titles, comments, log lines, labels and commit messages are written by people and programs
sregraph does not control. Shown raw they can crash rich (`[/x]` is a closing tag with no opening one),
move the cursor or recolour a terminal (escape sequences), or turn into Markdown structure on an issue (a
table row, a heading, a link, a mention). Every such text goes through one of these before display:

* `plain`: control characters and terminal escape sequences removed, whitespace folded to one line.
* `term`: `plain`, then rich markup escaped: prints literally with `Console.print`.
* `md`: `plain`, then Markdown's active characters escaped: one literal line inside a comment.
"""

from __future__ import annotations

import re
from typing import Any

from rich.markup import escape as _rich_escape

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), and two-character escapes.
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
# C0 and C1 controls, DEL, and the bidirectional overrides that reorder what a reader sees.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_MD_ACTIVE = re.compile(r"([\\`*\[\]<>|#~!])")
# Underscores emphasise only at word edges; error_ratio stays readable.
_MD_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def plain(text: Any, keep_newlines: bool = False) -> str:
    """`text` without escape sequences and control characters; whitespace runs become one space.

    `keep_newlines` keeps line breaks (each line folded on its own) for multi-line text such as a post-mortem.
    """
    raw = _ESCAPES.sub("", "" if text is None else str(text))
    if keep_newlines:
        return "\n".join(plain(line) for line in raw.replace("\r\n", "\n").split("\n"))
    return " ".join(_CONTROLS.sub(" ", raw).split())


def term(text: Any) -> str:
    """`text` as one literal line for rich: control characters stripped, markup escaped."""
    return _rich_escape(plain(text))


def term_block(text: Any) -> str:
    """Multi-line `text` for rich: each line as `term` makes it."""
    return _rich_escape(plain(text, keep_newlines=True))


def md(text: Any) -> str:
    """`text` as one literal line of Markdown: no structure, link, HTML, mention or code span of its own."""
    escaped = _MD_UNDERSCORE.sub(r"\\_", _MD_ACTIVE.sub(r"\\\1", plain(text)))
    if escaped.startswith("/"):
        escaped = "\\" + escaped  # a line of its own must not read as a slash command
    # A mention pings people; a zero-width space after @ keeps the text and drops the ping.
    return escaped.replace("@", "@\u200b")


def md_block(text: Any) -> str:
    """Multi-line `text` as Markdown: each line as `md` makes it, line breaks kept."""
    return "\n".join(md(line) for line in plain(text, keep_newlines=True).split("\n"))
