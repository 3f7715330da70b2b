"""A case folder on disk (docs/evals.md describes every field)::

case.yaml        metadata, ground truth, the settings and policy of the run, the recorded outcome
calls.jsonl      every tool call but telemetry, in call order, one JSON object a line:
                 {"tool", "method", "args", "result" | "error"}; clock reads are {"tool": "clock", "by", "result"}
telemetry.json   the telemetry the agents read (evals/telemetry_tables.py)
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import yaml

from evals.case import Case
from evals.recorder import Recording


def case_settings(settings: Any) -> dict[str, Any]:
    """The parts of Settings a replay must reuse (window lengths, thresholds, loop caps)."""
    return {k: getattr(settings, k).model_dump(mode="json") for k in ("observer", "analyst", "engineer")}


def dump_yaml(data: Any) -> str:
    """YAML as case files are written: keys in model order, unicode kept, 110 columns."""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110, default_flow_style=None)


def write_case(folder: Path, case: Case, recording: Recording) -> Path:
    """Write case.yaml, calls.jsonl and telemetry.json into `folder` (replacing what was there)."""
    folder.mkdir(parents=True, exist_ok=True)
    case = case.model_copy(update={"ledger_seed": recording.ledger_seed or case.ledger_seed})
    (folder / "case.yaml").write_text(dump_yaml(case.model_dump(mode="json", exclude_none=False)))
    write_calls(folder / "calls.jsonl", recording.calls)
    write_telemetry(folder / "telemetry.json", recording.telemetry.to_json())
    return folder


def write_calls(path: Path, calls: list[dict[str, Any]]) -> None:
    """calls.jsonl; an issue's comments already written in full earlier are written as {"comment_ref": id}."""
    seen: dict[int, Any] = {}
    lines = []
    for entry in calls:
        entry = json.loads(json.dumps(entry))
        if entry["tool"] == "incidents" and "result" in entry:
            _compact_comments(entry["result"], seen)
        lines.append(json.dumps(entry, ensure_ascii=False, separators=(",", ":")))
    path.write_text("\n".join(lines) + ("\n" if lines else ""))


def _compact_comments(node: Any, seen: dict[int, Any]) -> None:
    """Replace repeated comments inside issue results by references, first occurrence kept in full."""
    if isinstance(node, list):
        for item in node:
            _compact_comments(item, seen)
        return
    if not isinstance(node, dict):
        return
    if {"id", "author", "body", "created_at"} <= set(node) and "title" not in node:
        seen.setdefault(node["id"], dict(node))
        return
    comments = node.get("comments")
    if isinstance(comments, list):
        out = []
        for c in comments:
            if isinstance(c, dict) and c.get("id") in seen and seen[c["id"]] == c:
                out.append({"comment_ref": c["id"]})
            else:
                if isinstance(c, dict) and "id" in c:
                    seen.setdefault(c["id"], dict(c))
                out.append(c)
        node["comments"] = out
    for key, value in node.items():
        if key != "comments":
            _compact_comments(value, seen)


def read_calls(path: Path) -> list[dict[str, Any]]:
    """calls.jsonl with comment references resolved."""
    seen: dict[int, Any] = {}
    calls = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not JSON: {exc}") from exc
        if entry.get("tool") == "incidents" and "result" in entry:
            _resolve_comments(entry["result"], seen, f"{path}:{n}")
        calls.append(entry)
    return calls


def _resolve_comments(node: Any, seen: dict[int, Any], where: str) -> None:
    if isinstance(node, list):
        for item in node:
            _resolve_comments(item, seen, where)
        return
    if not isinstance(node, dict):
        return
    if {"id", "author", "body", "created_at"} <= set(node) and "title" not in node:
        seen.setdefault(node["id"], dict(node))
        return
    comments = node.get("comments")
    if isinstance(comments, list):
        out = []
        for c in comments:
            if isinstance(c, dict) and set(c) == {"comment_ref"}:
                if c["comment_ref"] not in seen:
                    raise ValueError(f"{where}: comment_ref {c['comment_ref']} names no earlier comment")
                out.append(dict(seen[c["comment_ref"]]))
            else:
                if isinstance(c, dict) and "id" in c:
                    seen.setdefault(c["id"], dict(c))
                out.append(c)
        node["comments"] = out
    for key, value in node.items():
        if key != "comments":
            _resolve_comments(value, seen, where)


def write_telemetry(path: Path, doc: dict[str, Any]) -> None:
    """telemetry.json with one record a line (valid JSON, readable, diff-friendly)."""
    dense = functools.partial(json.dumps, ensure_ascii=False, separators=(",", ":"))
    parts = ["{"]
    scalars = [k for k in doc if not isinstance(doc[k], list) or k.endswith("_columns")]
    for k in scalars:
        parts.append(f" {json.dumps(k)}: {dense(doc[k])},")
    tables = [k for k in doc if k not in scalars]
    for t, k in enumerate(tables):
        rows = doc[k]
        parts.append(f" {json.dumps(k)}: [" + ("" if rows else "]" + ("," if t < len(tables) - 1 else "")))
        for i, row in enumerate(rows):
            parts.append("  " + dense(row) + ("," if i < len(rows) - 1 else ""))
        if rows:
            parts.append(" ]" + ("," if t < len(tables) - 1 else ""))
    parts.append("}")
    path.write_text("\n".join(parts) + "\n")


def read_case(folder: Path) -> Case:
    """case.yaml of a case folder, validated."""
    path = folder / "case.yaml"
    try:
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return Case.model_validate(data)


def case_folders(suite: Path) -> list[Path]:
    """The case folders of a suite, in replay order (folder name order)."""
    if (suite / "case.yaml").exists():
        return [suite]
    return sorted(p for p in suite.iterdir() if (p / "case.yaml").exists())
