"""Worker soak: many incidents at once on the deterministic brain over the synthetic world of
evals/harness.py (simulated clock, real SQLite/git backends, shared checkpointer).

    python -m evals.bench_worker [--incidents 50] [--concurrency 8] [--format json]

Two measurements:
- `concurrent`: `--incidents` alerts with distinct fingerprints submitted at once to one Worker with
  `--concurrency` threads. The world is healthy, so each incident is a full observe step (detect window of
  3 simulated seconds, every service measured each poll) ending `healthy`: it measures the engine, the shared
  checkpointer and the pool under load, not the remediation path.
- `full`: the harness's 11 scenarios (10 real incidents: restarts, rollbacks through GitOps PRs, an
  approval, escalations, a failed verification) one after another on one worker.
Reported: incidents/s, peak RSS of the process and the tracemalloc peak during each.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from evals.harness import SCENARIOS, World, run, settings_for, summary, toolbox_for
from sregraph.engine import Engine
from sregraph.worker import Worker
from tools.domain import Trigger


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def concurrent(root: Path, incidents: int, concurrency: int) -> dict[str, Any]:
    """`incidents` alerts at once on one worker."""
    world = World.create(root)
    engine = Engine(settings_for(root, max_concurrent=concurrency), toolbox_for(world))
    worker = Worker(engine)
    tracemalloc.start()
    started = time.perf_counter()
    ids = [
        worker.submit(Trigger(source="alert", summary=f"probe {n}", labels={"fingerprint": f"probe-{n}"}))[0]
        for n in range(incidents)
    ]
    assert worker.wait_idle(600)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    statuses = [engine.state(i)["status"] for i in ids]
    engine.close()
    return {
        "incidents": incidents,
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "incidents_per_s": round(incidents / elapsed, 1),
        "ended_healthy": statuses.count("healthy"),
        "tracemalloc_peak_mb": round(peak / 2**20, 1),
    }


def full(root: Path) -> dict[str, Any]:
    """The harness scenarios, in order."""
    World.create(root)
    tracemalloc.start()
    started = time.perf_counter()
    run(root)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    result = summary(root)
    return {
        "incidents": len(SCENARIOS),
        "seconds": round(elapsed, 2),
        "incidents_per_s": round(len(SCENARIOS) / elapsed, 1),
        "ends": [runs[0]["status"] for runs in result["outcomes"]],
        "tracemalloc_peak_mb": round(peak / 2**20, 1),
    }


def main() -> None:
    """CLI."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--incidents", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        c = concurrent(Path(tmp) / "concurrent", args.incidents, args.concurrency)
        f = full(Path(tmp) / "full")
        result = {"concurrent": c, "full": f, "peak_rss_mb": round(_rss_mb(), 1)}
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return
    print(
        f"concurrent: {c['incidents']} incidents on {c['concurrency']} threads in {c['seconds']} s = "
        f"{c['incidents_per_s']} incidents/s"
        f" ({c['ended_healthy']} healthy), tracemalloc peak {c['tracemalloc_peak_mb']} MB"
    )
    print(
        f"full: {f['incidents']} scenarios in {f['seconds']} s = {f['incidents_per_s']} incidents/s, ends {f['ends']},"
        f" tracemalloc peak {f['tracemalloc_peak_mb']} MB"
    )
    print(f"peak RSS {result['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
