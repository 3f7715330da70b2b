"""Reading the SLO file: YAML in sregraph's compact form (a `slos:` list) or OpenSLO v1 documents, both
into `SloFile`; every problem is a ConfigError naming the field."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tools.base import ConfigError
from tools.slo.openslo import OPENSLO_PATHS, openslo_to_compact
from tools.slo.spec import SLO, SloFile


def _loc(loc: Sequence[int | str]) -> str:
    """`slos[1].prometheus.errors` from pydantic's ('slos', 1, 'prometheus', 'errors')."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _problems(exc: ValidationError, data: Any, openslo: bool = False) -> str:
    """One line per pydantic error, each naming the field (and the SLO, by name, where known)."""
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        who = ""
        if len(loc) >= 2 and loc[0] == "slos" and isinstance(loc[1], int) and isinstance(data, Mapping):
            items = data.get("slos")
            item = items[loc[1]] if isinstance(items, list) and loc[1] < len(items) else None
            if isinstance(item, Mapping) and item.get("name"):
                who = f" ({item['name']})"
        field = _loc(loc)
        if openslo:
            field = OPENSLO_PATHS.get(_loc(loc), _loc(loc)) if loc else "spec"
        lines.append(f"{field or 'file'}{who}: {msg}")
    return "; ".join(lines)


def parse_slo_text(text: str, source: str = "SLO file") -> SloFile:
    """Parse SLO YAML (compact `slos:` form and/or OpenSLO v1 documents); ConfigError naming the field."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not docs:
        raise ConfigError(f"{source}: slos: the file is empty; define at least one SLO under `slos:`")
    compact: dict[str, Any] = {"slos": []}
    openslo: list[tuple[int, str]] = []  # (index in compact["slos"], where) of converted documents
    for number, doc in enumerate(docs, start=1):
        where = f"{source} document {number}" if len(docs) > 1 else source
        if not isinstance(doc, Mapping):
            raise ConfigError(
                f"{where}: expected a mapping with `slos:` or an OpenSLO document; got {type(doc).__name__}"
            )
        api = str(doc.get("apiVersion", ""))
        if api.startswith("openslo/"):
            if api != "openslo/v1":
                raise ConfigError(f"{where}: apiVersion: only openslo/v1 is supported; got {api!r}")
            kind = doc.get("kind")
            if kind in (
                "Service",
                "SLI",
                "AlertPolicy",
                "AlertCondition",
                "AlertNotificationTarget",
                "DataSource",
            ):
                continue  # context documents of an OpenSLO bundle; nothing here reads them
            if kind != "SLO":
                raise ConfigError(f"{where}: kind: expected SLO; got {kind!r}")
            name = (
                (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), Mapping) else None
            )
            label = f"{where} (SLO {name})" if name else where
            openslo.append((len(compact["slos"]), label))
            compact["slos"].append(openslo_to_compact(doc, label))
            continue
        if "slos" not in doc:
            raise ConfigError(
                f"{where}: slos: missing; expected a `slos:` list (sregraph form) or OpenSLO documents "
                "(apiVersion: openslo/v1, kind: SLO)"
            )
        extra = {k: v for k, v in doc.items() if k not in ("slos", "gate", "apiVersion", "kind")}
        if not isinstance(doc["slos"], list):
            raise ConfigError(f"{where}: slos: must be a list of SLOs")
        compact["slos"].extend(doc["slos"])
        compact.update(extra)  # unknown keys reach the model and are reported by name
        if "gate" in doc:
            compact["gate"] = doc["gate"]
    # Validate OpenSLO documents one by one first, so their errors use OpenSLO field paths.
    for index, where in openslo:
        try:
            SLO.model_validate(compact["slos"][index])
        except ValidationError as exc:
            raise ConfigError(f"{where}: {_problems(exc, compact['slos'][index], openslo=True)}") from exc
    try:
        return SloFile.model_validate(compact)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_problems(exc, compact)}") from exc


def load_slo_file(path: Path | str) -> SloFile:
    """Read and validate an SLO file; ConfigError (naming the field) for anything wrong with it."""
    file = Path(path)
    if not file.exists():
        raise ConfigError(f"SLO file {file} does not exist")
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(f"SLO file {file}: cannot read: {exc}") from exc
    return parse_slo_text(text, str(file))
