"""The librarian's memory against a real ChromaDB on disk, with the network switched off."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import memory.embeddings as embeddings
from memory import PostMortemStore, WordLlamaEmbeddingFunction, document_text
from tools.base import ConfigError, ToolError
from tools.domain import PostMortem, TimelineEntry

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- network guard


def _is_local(address: Any) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX socket path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Refuse non-loopback connections and lookups, recording each (a library may swallow the error)."""
    attempts: list[Any] = []
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        if not _is_local(address):
            attempts.append(address)
            raise OSError(f"network disabled in tests: {address}")
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if not _is_local(address):
            attempts.append(address)
            raise OSError(f"network disabled in tests: {address}")
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and not _is_local((host,)):
            attempts.append(host)
            raise OSError(f"name lookup disabled in tests: {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts
    assert attempts == [], f"memory touched the network: {attempts}"


# Installed first thing in subprocesses, before any import, so import-time network use is caught too.
SUBPROCESS_GUARD = """
import ipaddress, socket
def _guard(self, address):
    host = address if isinstance(address, (str, bytes)) else address[0]
    if not isinstance(address, (str, bytes)) and host not in ("localhost", ""):
        if not ipaddress.ip_address(host).is_loopback:
            raise SystemExit(f"network touched: {address}")
    return _real(self, address)
_real = socket.socket.connect
socket.socket.connect = _guard
"""


def run_python(code: str) -> dict[str, Any]:
    """Run `code` in a fresh guarded interpreter, warnings as errors; parse its last output line as JSON."""
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", SUBPROCESS_GUARD + textwrap.dedent(code)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------- data


def make_pm(
    incident_id: str,
    service: str,
    fault_type: str,
    title: str,
    summary: str,
    root_cause: str,
    evidence: list[str],
    actions: list[str],
    outcome: str = "recovered",
) -> PostMortem:
    """A post-mortem with a small timeline and markdown, as the librarian writes them."""
    return PostMortem(
        incident_id=incident_id,
        title=title,
        summary=summary,
        impact=f"{service} degraded for 12 minutes",
        timeline=[
            TimelineEntry(at=1_700_000_000.25, event="incident opened"),
            TimelineEntry(at=1_700_000_720.5, event="recovered"),
        ],
        root_cause=root_cause,
        service=service,
        fault_type=fault_type,
        evidence=evidence,
        actions=actions,
        outcome=outcome,
        follow_ups=[f"add an alert for {fault_type} on {service}"],
        markdown=f"# {title}\n\n{summary}\n\n## Root cause\n\n{root_cause}\n",
    )


CORPUS = [
    make_pm(
        "inc-payments-crash",
        "payments",
        "crash",
        "Payments crash loop",
        "The payments service crashed repeatedly and was restarted by the supervisor.",
        "A null pointer dereference in the card tokenizer made the process segfault on a malformed request.",
        [
            "process exited with code 139 (SIGSEGV)",
            "restart count rose from 0 to 7 in 10 minutes",
            "health check failed",
        ],
        ["restart payments"],
    ),
    make_pm(
        "inc-checkout-leak",
        "checkout",
        "memory_leak",
        "Checkout memory leak",
        "Checkout memory grew without bound until the kernel OOM killer stopped it.",
        "Session objects were cached in an unbounded in-process dictionary.",
        [
            "memory_rss_mb grew from 310 to 1980 over 6 hours",
            "container OOMKilled",
            "garbage collection pauses increased",
        ],
        ["restart checkout", "scale checkout to 3 replicas"],
    ),
    make_pm(
        "inc-frontend-deploy",
        "frontend",
        "bad_deploy",
        "Frontend regression after release",
        "Frontend errors spiked right after version 2.4.0 was deployed.",
        "Release 2.4.0 shipped a template that references a removed field.",
        [
            "error_ratio rose from 0.1% to 38% within a minute of the deploy",
            "deploy commit a1b2c3 changed the frontend image",
            "500 responses on /product pages",
        ],
        ["rollback frontend to 2.3.9"],
    ),
    make_pm(
        "inc-cart-config",
        "cart",
        "config_change",
        "Cart timeouts after pool config change",
        "Cart requests timed out after the Redis connection pool was resized.",
        "A config change set redis max_connections to 2.",
        [
            "config commit set max_connections=2",
            "redis pool exhausted warnings in logs",
            "latency_p95_ms 4200",
        ],
        ["revert cart config max_connections to 64"],
    ),
    make_pm(
        "inc-search-latency",
        "search",
        "latency",
        "Search slow queries",
        "Search responses became slow under normal traffic.",
        "A missing index made product queries scan the whole table.",
        [
            "latency_p95_ms rose from 120 to 3100",
            "slow query log shows full table scans",
            "request rate unchanged",
        ],
        ["scale search to 4 replicas"],
    ),
    make_pm(
        "inc-auth-db",
        "auth",
        "dependency_down",
        "Auth lost its database",
        "Logins failed because the auth database was down.",
        "The postgres instance auth depends on was stopped.",
        ["connection refused to postgres:5432", "auth health check failing", "error_ratio 100% on /login"],
        ["start postgres"],
        outcome="escalated",
    ),
    make_pm(
        "inc-inventory-disk",
        "inventory",
        "disk_full",
        "Inventory disk full",
        "Inventory writes failed when its volume filled up.",
        "Debug logging filled the data volume.",
        ["No space left on device errors", "disk usage 100% on /var/lib/inventory", "writes rejected"],
        ["set inventory log_level to info"],
    ),
    make_pm(
        "inc-shipping-cpu",
        "shipping",
        "cpu_saturation",
        "Shipping CPU saturation",
        "Shipping rate calculation pegged the CPU and requests queued.",
        "A quadratic loop in rate calculation for large carts.",
        ["cpu usage 100% on all cores", "throttled periods increasing", "request queue depth 900"],
        ["scale shipping to 3 replicas"],
    ),
]

# New symptom descriptions, worded differently from the stored post-mortems.
SYMPTOMS = [
    ("payments process keeps dying with a segmentation fault and restarting", "inc-payments-crash"),
    ("checkout resident memory climbing for hours, then the container gets OOM killed", "inc-checkout-leak"),
    ("frontend started returning HTTP 500 right after the new version went out", "inc-frontend-deploy"),
    ("cart requests timing out after someone changed the redis pool settings", "inc-cart-config"),
    ("search p95 latency over 3 seconds with the same traffic", "inc-search-latency"),
    ("auth cannot reach postgres, connection refused, logins failing", "inc-auth-db"),
    ("inventory writes failing with no space left on device", "inc-inventory-disk"),
    ("shipping CPU pinned at 100 percent and requests piling up", "inc-shipping-cpu"),
    # No service named: the fault description alone has to carry the match.
    ("process killed by out of memory after memory grew steadily", "inc-checkout-leak"),
    ("errors jumped right after the deploy of a new release", "inc-frontend-deploy"),
    ("disk is full, no space left", "inc-inventory-disk"),
]


@pytest.fixture
def store(tmp_path: Path) -> PostMortemStore:
    """An empty store in a fresh directory."""
    return PostMortemStore(tmp_path / "memory")


@pytest.fixture
def filled(store: PostMortemStore) -> PostMortemStore:
    """A store holding the eight post-mortems of CORPUS."""
    for pm in CORPUS:
        store.add(pm)
    return store


# --------------------------------------------------------------------------- embedding function


def test_embedding_function_gives_unit_vectors_of_the_configured_width() -> None:
    ef = WordLlamaEmbeddingFunction()
    vectors = ef(["payments crashed", "checkout leaks memory", ""])
    assert [len(v) for v in vectors] == [256, 256, 256]
    assert np.allclose([np.linalg.norm(v) for v in vectors[:2]], 1.0, atol=1e-5)
    # A text without tokens gets a zero vector, not NaNs.
    assert not np.isnan(vectors[2]).any()
    assert len(WordLlamaEmbeddingFunction(dim=64)(["x"])[0]) == 64


def test_embedding_function_is_not_legacy_and_round_trips_its_config() -> None:
    ef = WordLlamaEmbeddingFunction(dim=128)
    assert not ef.is_legacy()
    rebuilt = WordLlamaEmbeddingFunction.build_from_config(ef.get_config())
    assert rebuilt.get_config() == {"model": "l2_supercat", "dim": 128}
    with pytest.raises(ValueError):
        WordLlamaEmbeddingFunction.build_from_config({"model": "other", "dim": 256})
    with pytest.raises(ValueError):
        ef.validate_config_update(ef.get_config(), {"dim": 256})


def test_embedding_separates_related_from_unrelated_text() -> None:
    a, b, c = WordLlamaEmbeddingFunction()(
        ["the service ran out of memory", "memory usage grew until OOM", "rollback the frontend deploy"]
    )
    assert float(np.dot(a, b)) > float(np.dot(a, c)) + 0.1


def test_loading_the_model_leaves_logging_alone() -> None:
    # wordllama calls logging.basicConfig at import; a fresh process shows whether we undo it.
    out = run_python(
        """
        import json, logging
        from memory.embeddings import load_model
        load_model()
        root = logging.getLogger()
        print(json.dumps({"handlers": len(root.handlers), "level": root.level}))
        """
    )
    assert out == {"handlers": 0, "level": 30}


# --------------------------------------------------------------------------- store


def test_add_get_search_round_trip(store: PostMortemStore) -> None:
    pm = CORPUS[1]
    store.add(pm)
    assert store.count() == 1
    got = store.get(pm.incident_id)
    assert got == pm
    assert got is not None and got.markdown.startswith("# Checkout memory leak")
    assert store.get("inc-missing") is None

    [hit] = store.search("checkout memory keeps growing", k=3)
    assert hit.incident_id == pm.incident_id
    assert (hit.service, hit.fault_type, hit.outcome) == ("checkout", "memory_leak", "recovered")
    assert hit.summary == pm.summary
    assert hit.action == "restart checkout"
    assert 0.3 < hit.similarity <= 1.0


def test_document_text_carries_the_searchable_fields() -> None:
    text = document_text(CORPUS[0])
    for part in ("Payments crash loop", "segfault", "payments", "crash", "code 139", "restart payments"):
        assert part in text


def test_re_adding_is_idempotent_and_replaces(store: PostMortemStore) -> None:
    pm = CORPUS[0]
    store.add(pm)
    store.add(pm)
    assert store.count() == 1

    revised = pm.model_copy(
        update={"summary": "Payments exhausted its disk and stopped.", "actions": ["rotate logs"]}
    )
    store.add(revised)
    assert store.count() == 1
    assert store.get(pm.incident_id) == revised
    [hit] = store.search("payments", k=1)
    assert (hit.summary, hit.action) == ("Payments exhausted its disk and stopped.", "rotate logs")


def test_search_filters_by_service_k_and_similarity(filled: PostMortemStore) -> None:
    everything = filled.search("memory leak, OOM killed", k=8, min_similarity=-1.0)
    assert len(everything) == 8
    assert [h.similarity for h in everything] == sorted((h.similarity for h in everything), reverse=True)
    # The default floor of 0 drops incidents pointing away from the query.
    by_default = filled.search("memory leak, OOM killed", k=8)
    assert by_default == [h for h in everything if h.similarity >= 0.0]
    assert len(filled.search("memory leak", k=2)) == 2

    only_payments = filled.search("memory leak, OOM killed", k=3, service="payments")
    assert [h.incident_id for h in only_payments] == ["inc-payments-crash"]
    assert filled.search("anything", service="no-such-service") == []

    strict = filled.search("checkout memory leak OOM killed", k=8, min_similarity=0.45)
    assert [h.incident_id for h in strict] == ["inc-checkout-leak"]
    assert filled.search("checkout memory leak", min_similarity=1.01) == []


def test_search_on_empty_store_and_bad_input(store: PostMortemStore) -> None:
    assert store.search("payments crash") == []
    with pytest.raises(ConfigError):
        store.search("   ")
    with pytest.raises(ConfigError):
        store.search("payments crash", k=0)


def test_collection_uses_cosine_and_our_embedding_function(store: PostMortemStore) -> None:
    config = store._collection.configuration_json
    assert config["hnsw"]["space"] == "cosine"
    assert config["embedding_function"]["name"] == "sregraph_wordllama"


@pytest.mark.parametrize(("symptom", "expected"), SYMPTOMS)
def test_a_new_symptom_retrieves_the_matching_incident_first(
    filled: PostMortemStore, symptom: str, expected: str
) -> None:
    hits = filled.search(symptom, k=3)
    assert hits[0].incident_id == expected, [(h.incident_id, round(h.similarity, 3)) for h in hits]


def test_persists_across_stores_and_processes(tmp_path: Path) -> None:
    path = tmp_path / "memory"
    first = PostMortemStore(path)
    for pm in CORPUS:
        first.add(pm)
    assert PostMortemStore(path).count() == len(CORPUS)

    # A new process shares no client cache with this one, so this reads what is on disk.
    out = run_python(
        f"""
        import json
        from memory import PostMortemStore
        store = PostMortemStore({str(path)!r})
        pm = store.get("inc-auth-db")
        hits = store.search("auth cannot reach its postgres database", k=1)
        print(json.dumps({{"count": store.count(), "pm": pm.model_dump_json(), "top": hits[0].incident_id}}))
        """
    )
    assert out["count"] == len(CORPUS)
    assert PostMortem.model_validate_json(out["pm"]) == CORPUS[5]
    assert out["top"] == "inc-auth-db"


def test_no_network_is_touched(
    tmp_path: Path, no_network: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Drop the cached model so loading it happens under the guard too.
    monkeypatch.setattr(embeddings, "_models", {})
    store = PostMortemStore(tmp_path / "memory")
    for pm in CORPUS:
        store.add(pm)
    assert store.search("payments segfault", k=1)[0].incident_id == "inc-payments-crash"
    assert store.get("inc-cart-config") == CORPUS[3]
    assert no_network == []


def test_network_guard_catches_a_connection(no_network: list[Any]) -> None:
    # The guard itself must be able to fail, or the test above proves nothing.
    with socket.socket() as sock, pytest.raises(OSError, match="network disabled"):
        sock.connect(("192.0.2.1", 443))
    assert no_network == [("192.0.2.1", 443)]
    no_network.clear()


@pytest.mark.parametrize("make_path", ["file", "under_file", "corrupt_db"])
def test_unusable_path_raises_tool_error(tmp_path: Path, make_path: str) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    if make_path == "file":
        path = a_file
    elif make_path == "under_file":
        path = a_file / "memory"
    else:
        path = tmp_path / "corrupt"
        path.mkdir()
        (path / "chroma.sqlite3").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ToolError, match=str(path)):
        PostMortemStore(path)
