"""Every demo fault N times on the embedded default: median and p95 time to detect and to recover, share recovered.

    python -m evals.bench_demo [--repeats 10] [--runtime process|docker] [--format json]

Each repetition is a full loop handled by the real worker on the real local app (processes or containers, git,
SQLite, ChromaDB); nothing is simulated. Expect about 12 s per loop on 2 cores. `--runtime docker` runs the
services as containers (start the engine first: scripts/container-engine.sh start, then DOCKER_HOST or the
script's default socket); the restart time of the faulted service's runtime is measured and reported with it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sregraph.config import load_settings
from sregraph.demo import DEFAULT_SEQUENCE, FaultResult, demo_settings, run_demo


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]


def summarize(results: list[FaultResult]) -> list[dict[str, Any]]:
    """Per fault: runs, recovered and right root cause (share and count), median and p95 TTD and TTR, and the
    median time the remedy took to run (a restart or redeploy: the runtime's part of TTR)."""
    rows = []
    for fault in dict.fromkeys(r.fault for r in results):
        mine = [r for r in results if r.fault == fault]
        ttd = [r.mttd_s for r in mine if r.mttd_s is not None]
        ttr = [r.mttr_s for r in mine if r.mttr_s is not None]
        acting = [r.action_s for r in mine if r.action_s is not None]
        rows.append(
            {
                "fault": fault,
                "runs": len(mine),
                "recovered": sum(r.recovered for r in mine) / len(mine),
                "recovered_n": sum(r.recovered for r in mine),
                "root_cause_correct": sum(r.root_cause_correct for r in mine) / len(mine),
                "root_cause_correct_n": sum(r.root_cause_correct for r in mine),
                "ttd_median_s": round(statistics.median(ttd), 2) if ttd else None,
                "ttd_p95_s": _p95(ttd),
                "ttr_median_s": round(statistics.median(ttr), 2) if ttr else None,
                "ttr_p95_s": _p95(ttr),
                "action_median_s": round(statistics.median(acting), 2) if acting else None,
                "detected_by": dict(
                    Counter(sense for r in mine for sense in r.detected_by.split(",") if sense)
                ),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table or JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument(
        "--no-ensemble", action="store_true", help="Detect with the window rule only (for comparison)."
    )
    parser.add_argument(
        "--runtime", choices=("process", "docker"), default="process", help="Where the services run."
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="Keep the run's data here (default: a temporary directory).",
    )
    args = parser.parse_args(argv)
    faults = list(dict.fromkeys((f, s, tuple(sorted(p.items()))) for f, s, p in DEFAULT_SEQUENCE))
    sequence = [(f, s, dict(p)) for _ in range(args.repeats) for f, s, p in faults]
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="sregraph-bench-demo-") as tmp:
        settings = demo_settings(
            load_settings(environ={}, data_dir=args.data_dir or Path(tmp), runtime=args.runtime)
        )
        if args.no_ensemble:
            settings = settings.model_copy(
                update={"observer": settings.observer.model_copy(update={"ensemble": False})}
            )
        results = run_demo(settings, sequence, say=lambda text: print(text, file=sys.stderr))
    rows = summarize(results)
    total = {
        "loops": len(results),
        "recovered": sum(r.recovered for r in results) / max(len(results), 1),
        "wall_s": round(time.time() - started, 1),
        "ensemble": not args.no_ensemble,
        "runtime": args.runtime,
    }
    if args.format == "json":
        print(json.dumps({"faults": rows, "total": total}, indent=2))
    else:
        print(
            f"{'fault':18} {'runs':>4} {'recovered':>9} {'RC ok':>6} {'TTD p50':>8} {'TTD p95':>8} "
            f"{'TTR p50':>8} {'TTR p95':>8} {'act p50':>8}  detected by"
        )
        for r in rows:
            cells = [
                r["ttd_median_s"],
                r["ttd_p95_s"],
                r["ttr_median_s"],
                r["ttr_p95_s"],
                r["action_median_s"],
            ]
            senses = ", ".join(f"{k} {v}" for k, v in sorted(r["detected_by"].items(), key=lambda kv: -kv[1]))
            print(
                f"{r['fault']:18} {r['runs']:>4} {r['recovered_n']:>9} {r['root_cause_correct_n']:>6} "
                + " ".join(f"{c:>8.1f}" if c is not None else f"{'–':>8}" for c in cells)
                + f"  {senses}"
            )
        print(
            f"total ({args.runtime}): {total['loops']} loops, {total['recovered']:.0%} recovered, {total['wall_s']} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
