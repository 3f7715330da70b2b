"""Benchmark of the librarian's memory: model load, embedding and add speed, query latency, retrieval quality.

Run with ``python -m evals.bench_memory [--n 1000] [--format json]``. Post-mortems and symptom queries come
from separate templates, so a hit means the embedding matched meaning rather than copied wording.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tools.domain import PostMortem, TimelineEntry

SERVICES = [
    "payments",
    "checkout",
    "frontend",
    "cart",
    "inventory",
    "search",
    "auth",
    "shipping",
    "recommendations",
    "notifications",
    "catalog",
    "gateway",
]
DEPENDENCIES = ["postgres", "redis", "kafka", "the fraud API", "elasticsearch", "the SMTP relay", "rabbitmq"]
COMPONENTS = [
    "session",
    "pricing",
    "tokenizer",
    "image resize",
    "rate limiter",
    "order export",
    "cache warmer",
]
ENDPOINTS = ["/api/orders", "/login", "/cart/items", "/search", "/product", "/checkout/confirm"]
EXCEPTIONS = [
    "NullPointerException",
    "KeyError: 'currency'",
    "TypeError: undefined is not a function",
    "panic: index out of range",
    "DecodeError",
]
CONFIG_KEYS = [
    ("max_connections", "2", "64"),
    ("timeout_ms", "50", "2000"),
    ("worker_threads", "1", "16"),
    ("cache_ttl_s", "0", "300"),
    ("pool_size", "1", "32"),
]


@dataclass(frozen=True)
class FaultTemplates:
    """How post-mortems of one fault type are written, and how a new occurrence is described."""

    titles: list[str]
    summaries: list[str]
    root_causes: list[str]
    evidence: list[str]
    actions: list[str]
    symptoms: list[str]


# Templates use the placeholders that _values fills: {svc} {dep} {comp} {ep} {exc} {ver} {key} {n} {p}...
FAULTS: dict[str, FaultTemplates] = {
    "crash": FaultTemplates(
        titles=["{Svc} crash loop", "{Svc} process exits repeatedly", "{Svc} keeps restarting"],
        summaries=[
            "{Svc} crashed {n} times in {m} minutes and the supervisor kept restarting it.",
            "The {svc} process terminated on a subset of requests and went into a restart loop.",
        ],
        root_causes=[
            "A nil pointer dereference in the {comp} handler.",
            "An unhandled {exc} while parsing a malformed request.",
            "A segfault in the native {comp} library binding.",
        ],
        evidence=[
            "process exited with code {code}",
            "restart count rose from 0 to {n}",
            "health check failed for {m} consecutive probes",
            "stack trace in logs: {exc}",
        ],
        actions=["restart {svc}"],
        symptoms=[
            "{svc} keeps dying and coming back, restart counter climbing",
            "{svc} process terminated unexpectedly several times, exit code {code}",
            "{svc} is flapping: health goes down, comes back after a restart, goes down again",
        ],
    ),
    "memory_leak": FaultTemplates(
        titles=["{Svc} memory leak", "{Svc} OOM after steady memory growth"],
        summaries=[
            "{Svc} memory grew without bound until the kernel OOM killer stopped it.",
            "Resident memory of {svc} rose for {h} hours until the container was killed.",
        ],
        root_causes=[
            "An unbounded in-process cache of {comp} objects.",
            "Listeners registered on every request and never removed in the {comp} module.",
            "A thread leak in the {dep} client.",
        ],
        evidence=[
            "memory_rss_mb grew from {a} to {b} over {h} hours",
            "container OOMKilled",
            "garbage collection pauses up {x}x",
            "heap dump shows {n} retained {comp} objects",
        ],
        actions=["restart {svc}", "scale {svc} to {r} replicas"],
        symptoms=[
            "{svc} resident memory keeps rising until the kernel kills it",
            "{svc} got OOM killed after hours of slow growth in RSS",
            "{svc} heap usage creeping up all day, pods evicted for memory",
        ],
    ),
    "bad_deploy": FaultTemplates(
        titles=["{Svc} regression after release {ver}", "Bad deploy of {svc} {ver}"],
        summaries=[
            "{Svc} errors spiked right after version {ver} was deployed.",
            "Release {ver} of {svc} broke {ep} for most users.",
        ],
        root_causes=[
            "Release {ver} shipped a template that references a removed field.",
            "Release {ver} changed the {comp} serialization format without a migration.",
            "Release {ver} was built against the wrong {dep} schema.",
        ],
        evidence=[
            "error_ratio rose from {a_small}% to {b_pct}% within {m} minutes of deploy {sha}",
            "deploy commit {sha} bumped {svc} to {ver}",
            "new version {ver} logs {exc}",
            "previous version {prev} had no errors",
        ],
        actions=["rollback {svc} to {prev}"],
        symptoms=[
            "{svc} errors started right after version {ver} rolled out",
            "{svc} broke as soon as the new release went live",
            "since this morning's {svc} release, requests to {ep} fail with 500",
        ],
    ),
    "config_change": FaultTemplates(
        titles=["{Svc} outage after {key} config change", "{Svc} misconfiguration"],
        summaries=[
            "{Svc} requests timed out after {key} was changed in its config.",
            "A config edit to {svc} set {key} to {bad} and degraded it.",
        ],
        root_causes=[
            "A config change set {key} to {bad}.",
            "A reviewer approved {key}={bad} thinking it was a staging file.",
        ],
        evidence=[
            "config commit {sha} set {key}={bad}",
            "{svc} logs warn about exhausted {key}",
            "latency_p95_ms rose to {b}",
            "no code deploy in the window",
        ],
        actions=["revert {svc} config {key} to {good}"],
        symptoms=[
            "{svc} misbehaving after someone edited its settings ({key})",
            "{svc} timeouts began right after the {key} parameter was modified",
            "{svc} degraded following a configuration commit, no new code shipped",
        ],
    ),
    "latency": FaultTemplates(
        titles=["{Svc} slow responses", "{Svc} latency regression"],
        summaries=[
            "{Svc} responses became slow under normal traffic.",
            "{Svc} p95 latency went from {a} ms to {b} ms without a traffic change.",
        ],
        root_causes=[
            "A missing index on the {comp} table made queries scan everything.",
            "A synchronous call to {dep} was added to the hot path.",
            "Lock contention in the {comp} module.",
        ],
        evidence=[
            "latency_p95_ms rose from {a} to {b}",
            "slow query log shows full table scans",
            "request rate unchanged at {rps} rps",
            "traces show {dep} spans taking {b} ms",
        ],
        actions=["scale {svc} to {r} replicas"],
        symptoms=[
            "{svc} responses are sluggish, p95 around {b} ms with ordinary traffic",
            "{svc} requests taking seconds instead of milliseconds",
            "{svc} feels slow to users although load is normal",
        ],
    ),
    "error_spike": FaultTemplates(
        titles=["{Svc} error spike on {ep}", "{Svc} elevated errors"],
        summaries=[
            "{Svc} returned errors on {ep} for {m} minutes with no change deployed.",
            "A burst of {exc} errors hit {svc}.",
        ],
        root_causes=[
            "An expired TLS certificate for {dep}.",
            "Malformed responses from {dep}.",
            "Rate limiting by {dep} surfaced as {exc}.",
        ],
        evidence=["error_ratio {b_pct}% on {ep}", "log errors: {exc} x{n}", "traces show {exc} in {comp}"],
        actions=["restart {svc}"],
        symptoms=[
            "{svc} throwing lots of errors on {ep}, nothing was deployed",
            "sudden burst of exceptions in {svc} logs",
            "{svc} failure rate jumped, users see error pages",
        ],
    ),
    "dependency_down": FaultTemplates(
        titles=["{Svc} lost {dep}", "{Svc} outage: {dep} unavailable"],
        summaries=["{Svc} failed because {dep} was down.", "{Dep} stopped and every {svc} request failed."],
        root_causes=[
            "{Dep}, which {svc} depends on, was stopped.",
            "{Dep} ran out of connections and refused new ones.",
        ],
        evidence=["connection refused to {dep}", "{svc} health check failing", "error_ratio 100% on {ep}"],
        actions=["start {dep}"],
        symptoms=[
            "{svc} cannot reach {dep}, connections refused",
            "{svc} failing because its backing {dep} is unavailable",
            "{svc} times out talking to {dep}, which looks dead",
        ],
    ),
    "cpu_saturation": FaultTemplates(
        titles=["{Svc} CPU saturation", "{Svc} pegged CPU"],
        summaries=["{Svc} pegged the CPU and requests queued.", "{Svc} ran at {p}% CPU for {m} minutes."],
        root_causes=[
            "A quadratic loop in {comp}.",
            "Regex backtracking on long {comp} inputs.",
            "A hot retry loop against {dep}.",
        ],
        evidence=["cpu usage {p}% on all cores", "throttled periods increasing", "request queue depth {n}"],
        actions=["scale {svc} to {r} replicas"],
        symptoms=[
            "{svc} CPU pinned near 100% and requests piling up",
            "{svc} pods CPU throttled, backlog of requests growing",
            "{svc} burning all its cores, everything queued",
        ],
    ),
    "disk_full": FaultTemplates(
        titles=["{Svc} disk full", "{Svc} volume out of space"],
        summaries=[
            "{Svc} writes failed when its volume filled up.",
            "{Svc} stopped persisting data at {p}% disk.",
        ],
        root_causes=[
            "Debug logging filled the data volume.",
            "Old snapshots were never pruned.",
            "Temporary files from {comp} were never cleaned up.",
        ],
        evidence=["No space left on device errors", "disk usage {p}% on /var/lib/{svc}", "writes rejected"],
        actions=["set {svc} log_level to info", "set {svc} snapshot_retention to 3"],
        symptoms=[
            "{svc} cannot write: the device has no free space left",
            "{svc} volume at 100% usage, writes failing",
            "{svc} storage exhausted, saving data errors out",
        ],
    ),
    "conversion_drop": FaultTemplates(
        titles=["{Svc} conversion drop", "{Svc} fewer completed orders"],
        summaries=[
            "{Svc} conversion fell from {a_small}% to {b_small}% with no errors.",
            "Orders through {svc} dropped while every health signal stayed green.",
        ],
        root_causes=[
            "A feature flag hid the confirm button.",
            "Prices rendered as zero in {comp}.",
            "A/B test variant broke the {comp} form.",
        ],
        evidence=[
            "conversion rate fell from {a_small}% to {b_small}%",
            "add-to-cart events down {p}%",
            "no rise in error_ratio or latency",
        ],
        actions=["set {svc} feature flag new_{comp_flag} to off"],
        symptoms=[
            "{svc} orders dropped sharply but there are no errors anywhere",
            "fewer customers completing purchases on {svc}, other metrics fine",
            "{svc} sales funnel collapsed without any alert firing",
        ],
    ),
}


def _values(rng: random.Random, svc: str) -> dict[str, str]:
    """Random fillers for every template placeholder."""
    major, minor = rng.randint(1, 9), rng.randint(0, 30)
    key, bad, good = rng.choice(CONFIG_KEYS)
    dep = rng.choice(DEPENDENCIES)
    comp = rng.choice(COMPONENTS)
    return {
        "svc": svc,
        "Svc": svc.capitalize(),
        "dep": dep,
        "Dep": dep[0].upper() + dep[1:],
        "comp": comp,
        "comp_flag": comp.replace(" ", "_"),
        "ep": rng.choice(ENDPOINTS),
        "exc": rng.choice(EXCEPTIONS),
        "n": str(rng.randint(3, 900)),
        "m": str(rng.randint(2, 45)),
        "h": str(rng.randint(2, 30)),
        "a": str(rng.randint(80, 400)),
        "b": str(rng.randint(1200, 9000)),
        "x": str(rng.randint(2, 9)),
        "a_small": f"{rng.uniform(0.1, 4):.1f}",
        "b_small": f"{rng.uniform(0.1, 1.5):.1f}",
        "b_pct": str(rng.randint(12, 95)),
        "p": str(rng.randint(91, 100)),
        "r": str(rng.randint(2, 6)),
        "rps": str(rng.randint(40, 2000)),
        "code": rng.choice(["137", "139", "1", "134"]),
        "ver": f"{major}.{minor + 1}.0",
        "prev": f"{major}.{minor}.{rng.randint(0, 9)}",
        "sha": f"{rng.getrandbits(28):07x}",
        "key": key,
        "bad": bad,
        "good": good,
    }


def make_postmortem(rng: random.Random, index: int, service: str, fault: str) -> PostMortem:
    """One plausible post-mortem of `fault` in `service`."""
    t = FAULTS[fault]
    v = _values(rng, service)
    start = 1_700_000_000.0 + index * 3600.0
    summary = rng.choice(t.summaries).format(**v)
    title = rng.choice(t.titles).format(**v)
    return PostMortem(
        incident_id=f"inc-{index:05d}",
        title=title,
        summary=summary,
        impact=f"{service} degraded for {v['m']} minutes",
        timeline=[
            TimelineEntry(at=start, event="incident opened"),
            TimelineEntry(at=start + 60 * int(v["m"]), event="recovered"),
        ],
        root_cause=rng.choice(t.root_causes).format(**v),
        service=service,
        fault_type=fault,
        evidence=[e.format(**v) for e in rng.sample(t.evidence, k=min(3, len(t.evidence)))],
        actions=[a.format(**v) for a in t.actions],
        outcome=rng.choices(["recovered", "escalated", "not_recovered"], weights=[80, 15, 5])[0],
        follow_ups=[f"alert earlier on {fault.replace('_', ' ')} in {service}"],
        markdown=f"# {title}\n\n{summary}\n",
    )


def make_corpus(n: int, seed: int) -> list[PostMortem]:
    """`n` post-mortems over every (service, fault) pair, in random order."""
    rng = random.Random(seed)
    pairs = [(s, f) for s in SERVICES for f in FAULTS]
    # Every pair once (when n allows), then random pairs, so each held-out query has a right answer.
    chosen = pairs[:n] + [rng.choice(pairs) for _ in range(n - len(pairs))]
    rng.shuffle(chosen)
    return [make_postmortem(rng, i, service, fault) for i, (service, fault) in enumerate(chosen)]


def make_symptoms(corpus: list[PostMortem], count: int, seed: int) -> list[tuple[str, str, str]]:
    """(symptom, service, fault) for pairs present in `corpus`, worded from the symptom templates only."""
    rng = random.Random(seed + 1)
    pairs = sorted({(pm.service, pm.fault_type) for pm in corpus})
    out = []
    for _ in range(count):
        service, fault = rng.choice(pairs)
        out.append((rng.choice(FAULTS[fault].symptoms).format(**_values(rng, service)), service, fault))
    return out


@dataclass
class Report:
    """The numbers one benchmark run produced."""

    n: int
    model_load_s: float
    embed_s_per_1000: float
    add_s_per_1000: float
    query_p50_ms: float
    query_p95_ms: float
    hit_at_1: float
    hit_at_3: float
    fault_hit_at_1_service_filtered: float
    quality_queries: int
    latency_queries: int


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run(n: int, seed: int = 7, quality_queries: int = 50, latency_queries: int = 100) -> Report:
    """Build a corpus of `n` post-mortems, store it in a fresh directory and measure."""
    # Imported here so that loading the model is what the first timer measures, not module import order.
    from memory.embeddings import WordLlamaEmbeddingFunction, load_model
    from memory.store import PostMortemStore, document_text

    corpus = make_corpus(n, seed)

    t0 = time.perf_counter()
    load_model()
    model_load_s = time.perf_counter() - t0

    ef = WordLlamaEmbeddingFunction()
    texts = [document_text(pm) for pm in corpus]
    t0 = time.perf_counter()
    ef(texts)
    embed_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        store = PostMortemStore(Path(tmp) / "memory")
        t0 = time.perf_counter()
        for pm in corpus:
            store.add(pm)
        add_s = time.perf_counter() - t0
        assert store.count() == n

        symptoms = make_symptoms(corpus, max(quality_queries, latency_queries), seed)
        latencies = []
        for text, _, _ in symptoms[:latency_queries]:
            t0 = time.perf_counter()
            store.search(text, k=3)
            latencies.append((time.perf_counter() - t0) * 1000)

        hit1 = hit3 = fault_hit1 = 0
        for text, service, fault in symptoms[:quality_queries]:
            hits = [(h.service, h.fault_type) for h in store.search(text, k=3, min_similarity=-1.0)]
            hit1 += bool(hits) and hits[0] == (service, fault)
            hit3 += (service, fault) in hits
            # What the analyst gets when the observer already named the service.
            filtered = store.search(text, k=1, service=service, min_similarity=-1.0)
            fault_hit1 += bool(filtered) and filtered[0].fault_type == fault

    return Report(
        n=n,
        model_load_s=round(model_load_s, 3),
        embed_s_per_1000=round(embed_s * 1000 / n, 3),
        add_s_per_1000=round(add_s * 1000 / n, 3),
        query_p50_ms=round(_percentile(latencies, 50), 2),
        query_p95_ms=round(_percentile(latencies, 95), 2),
        hit_at_1=round(hit1 / quality_queries, 3),
        hit_at_3=round(hit3 / quality_queries, 3),
        fault_hit_at_1_service_filtered=round(fault_hit1 / quality_queries, 3),
        quality_queries=quality_queries,
        latency_queries=latency_queries,
    )


def _print_table(report: Report) -> None:
    table = Table(title=f"memory benchmark ({report.n} post-mortems)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("model load (import + weights)", f"{report.model_load_s:.3f} s"),
        ("embedding only, per 1000 post-mortems", f"{report.embed_s_per_1000:.3f} s"),
        ("store.add, per 1000 post-mortems", f"{report.add_s_per_1000:.3f} s"),
        (f"query p50 ({report.latency_queries} queries, k=3)", f"{report.query_p50_ms:.2f} ms"),
        (f"query p95 ({report.latency_queries} queries, k=3)", f"{report.query_p95_ms:.2f} ms"),
        (f"hit@1 same service+fault ({report.quality_queries} queries)", f"{report.hit_at_1:.0%}"),
        (f"hit@3 same service+fault ({report.quality_queries} queries)", f"{report.hit_at_3:.0%}"),
        ("fault hit@1 with service filter", f"{report.fault_hit_at_1_service_filtered:.0%}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m evals.bench_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="post-mortems to generate and store")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--queries", type=int, default=50, help="held-out symptom queries scored for quality")
    parser.add_argument("--latency-queries", type=int, default=100)
    parser.add_argument("--format", choices=["table", "json"], default="table")
    args = parser.parse_args(argv)
    if args.n < 1 or args.queries < 1 or args.latency_queries < 2:
        parser.error("--n and --queries must be at least 1, --latency-queries at least 2")
    report = run(args.n, args.seed, args.queries, args.latency_queries)
    if args.format == "json":
        print(json.dumps(asdict(report), indent=2))
    else:
        _print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
