"""Prompts as Jinja2 templates, one per agent, with shared partials in `partials/`.

`render(name, **context)` fills a template; an undefined variable is an error (StrictUndefined), never an
empty string. The context each template needs (a snapshot test renders each with a fixed one):

- observer.md.j2: signals (list[Signal])
- analyst.md.j2: summary (str), signals (list[Signal]), services (list[str]), edges (list[(caller, callee)]),
  changes (list[Change]), similar (list[SimilarIncident]), previous (list[ActionResult])
- engineer.md.j2: hypothesis (Hypothesis), allowed (list[ActionKind] the policy allows on its service),
  previous (list[ActionResult])
- librarian.md.j2: draft (PostMortem built from the recorded facts), comments (list[Comment] from the issue)

Filters for untrusted text: `oneline` (one quoted line, trimmed) and `fenced` (a code block the text cannot
break out of).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

PROMPTS_DIR = Path(__file__).resolve().parent

CONTEXTS: dict[str, tuple[str, ...]] = {
    "observer.md.j2": ("signals",),
    "analyst.md.j2": ("summary", "signals", "services", "edges", "changes", "similar", "previous"),
    "engineer.md.j2": ("hypothesis", "allowed", "previous"),
    "librarian.md.j2": ("draft", "comments"),
}
"""Every agent template and the context keys it needs."""


def oneline(text: Any, width: int = 160) -> str:
    """Untrusted text as one line: whitespace collapsed, backticks neutralised, cut to `width` characters."""
    flat = re.sub(r"\s+", " ", str(text)).strip().replace("`", "'")
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def fenced(text: Any, width: int = 2000) -> str:
    """Untrusted text in a code block; fences inside it are broken so it cannot close the block early."""
    body = re.sub(r"`{3,}", lambda m: "'" * len(m.group()), str(text)).strip()
    if len(body) > width:
        body = body[: width - 1] + "…"
    return f"```text\n{body}\n```"


def num(value: float) -> str:
    """A number in at most 4 significant digits."""
    return f"{value:.4g}"


def utc(at: float) -> str:
    """Epoch seconds as an ISO-like UTC time."""
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(PROMPTS_DIR),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # Markdown for a model, not HTML
    )
    env.filters.update(oneline=oneline, fenced=fenced, num=num, utc=utc)
    return env


_env = _environment()


def template_names() -> list[str]:
    """The agent templates (partials excluded)."""
    return sorted(p.name for p in PROMPTS_DIR.glob("*.md.j2"))


def render(name: str, **context: Any) -> str:
    """Render the template `name` (e.g. "analyst.md.j2" or "analyst") with `context`."""
    if not name.endswith(".j2"):
        name = f"{name}.md.j2"
    missing = [key for key in CONTEXTS.get(name, ()) if key not in context]
    if missing:
        raise TypeError(f"prompt {name} needs context: {', '.join(missing)}")
    return _env.get_template(name).render(**context)
