"""The librarian's long-term memory: post-mortems in a persistent ChromaDB collection, searched by symptom."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import chromadb
from chromadb.config import Settings
from pydantic import ValidationError

from memory.embeddings import WordLlamaEmbeddingFunction
from tools.base import ConfigError, ToolError
from tools.domain import PostMortem, SimilarIncident
from tools.redact import redact_data

COLLECTION = "postmortems"


def document_text(pm: PostMortem) -> str:
    """The compact text that gets embedded: what happened, where, why, what showed it and what fixed it."""
    parts = [
        pm.title,
        pm.summary,
        f"Root cause: {pm.root_cause}",
        f"Service: {pm.service}. Fault: {pm.fault_type.replace('_', ' ')}.",
    ]
    if pm.evidence:
        parts.append("Evidence: " + "; ".join(pm.evidence))
    if pm.actions:
        parts.append("Actions: " + "; ".join(pm.actions))
    return "\n".join(p.strip() for p in parts if p.strip())


def _created_at(pm: PostMortem) -> float:
    # The last timeline event is when the write-up was made; deriving it from the post-mortem (not the wall
    # clock) keeps a re-add byte-identical.
    return max((entry.at for entry in pm.timeline), default=0.0)


class PostMortemStore:
    """Post-mortems kept on disk at `path`, one per incident id, searchable by meaning."""

    def __init__(self, path: Path | str) -> None:
        """Open (or create) the store at `path`; ToolError if the path cannot hold a database."""
        self.path = Path(path).expanduser()
        if self.path.exists() and not self.path.is_dir():
            raise ToolError(f"memory path {self.path} exists and is not a directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ToolError(f"cannot create memory directory {self.path}: {exc}") from exc
        try:
            # Telemetry off explicitly: chroma 1.5's client is a no-op, but that is a version detail.
            self._client = chromadb.PersistentClient(
                path=str(self.path), settings=Settings(anonymized_telemetry=False)
            )
            self._collection = self._client.get_or_create_collection(
                COLLECTION,
                # chroma types this as a function of documents *or* images; a text-only one is still valid.
                embedding_function=WordLlamaEmbeddingFunction(),  # type: ignore[arg-type]
                # Measured: with chroma's default sync_threshold (1000) a single add slows from 10 ms to 40 ms
                # as unsynced writes pile up; syncing every 100 writes keeps it near 10 ms.
                configuration={"hnsw": {"space": "cosine", "sync_threshold": 100}},
            )
        except ToolError:
            raise
        except Exception as exc:  # chromadb surfaces I/O and schema problems under many exception types
            raise ToolError(f"cannot open post-mortem store at {self.path}: {exc}") from exc

    def add(self, pm: PostMortem) -> None:
        """Store a post-mortem, replacing any earlier one with the same incident id (redacted first)."""
        pm = PostMortem.model_validate(redact_data(pm.model_dump()))
        metadata: dict[str, str | int | float | bool | None] = {
            "incident_id": pm.incident_id,
            "service": pm.service,
            "fault_type": pm.fault_type,
            "outcome": pm.outcome,
            "actions": "; ".join(pm.actions),
            "created_at": _created_at(pm),
            # The whole model rides along so `get` returns exactly what was stored, markdown included.
            "postmortem": pm.model_dump_json(),
        }
        self._collection.upsert(ids=[pm.incident_id], documents=[document_text(pm)], metadatas=[metadata])

    def search(
        self, text: str, k: int = 3, service: str | None = None, min_similarity: float = 0.0
    ) -> list[SimilarIncident]:
        """Up to `k` stored incidents most similar to `text`, best first, optionally for one service."""
        if not text.strip():
            raise ConfigError("search text is empty")
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        result = self._collection.query(
            query_texts=[text],
            n_results=k,
            where={"service": service} if service is not None else None,
            include=["metadatas", "distances"],
        )
        metadatas = (result["metadatas"] or [[]])[0]
        distances = (result["distances"] or [[]])[0]
        found: list[SimilarIncident] = []
        for meta, distance in zip(metadatas, distances, strict=True):
            similarity = 1.0 - float(distance)
            if similarity < min_similarity:
                continue
            pm = _parse(meta)
            found.append(
                SimilarIncident(
                    incident_id=pm.incident_id,
                    service=pm.service,
                    fault_type=pm.fault_type,
                    outcome=pm.outcome,
                    similarity=similarity,
                    summary=pm.summary,
                    action=pm.actions[0] if pm.actions else "",
                )
            )
        return found

    def get(self, incident_id: str) -> PostMortem | None:
        """The stored post-mortem of an incident, if any."""
        result = self._collection.get(ids=[incident_id], include=["metadatas"])
        metadatas = result["metadatas"] or []
        return _parse(metadatas[0]) if metadatas else None

    def count(self) -> int:
        """Number of stored post-mortems."""
        return self._collection.count()


def _parse(meta: Any) -> PostMortem:
    """The PostMortem stored in a record's metadata; ToolError if the record was not written by `add`."""
    raw = meta.get("postmortem") if meta else None
    if not isinstance(raw, str):
        raise ToolError(f"memory record {meta.get('incident_id') if meta else '?'} has no stored post-mortem")
    try:
        return PostMortem.model_validate_json(raw)
    except ValidationError as exc:
        raise ToolError(
            f"memory record {meta.get('incident_id')} holds an invalid post-mortem: {exc}"
        ) from exc
