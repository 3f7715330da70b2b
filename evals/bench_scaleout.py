"""Scale-out benchmark: N worker processes on one Postgres (docs/scale-out.md).

    python -m evals.bench_scaleout [--dsn DSN] [--incidents 60] [--workers 1,2,4] [--open 100,1000,10000]
                                   [--queue none|procrastinate] [--format json]

Throughput of N workers over the synthetic world (evals/harness.py), and the ingest and adoption costs
with many open incidents. What is measured and how: docs/scale-out.md §Measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from evals.harness import World, settings_for, toolbox_for
from sregraph.engine import FINAL, Engine
from sregraph.leases import lease_log
from sregraph.worker import Worker
from tools.domain import Trigger

ROOT = Path(__file__).resolve().parents[1]


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class _Server:
    """A throwaway Postgres from scripts/postgres.sh, or the one `--dsn` names."""

    def __init__(self, dsn: str | None) -> None:
        self.dir: Path | None = None
        self.base = dsn
        if dsn is None:
            self.dir = Path(tempfile.mkdtemp(prefix="sregraph-bench-pg-"))
            out = subprocess.run(
                ["bash", str(ROOT / "scripts/postgres.sh"), "start", str(self.dir)],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if out.returncode != 0:
                raise SystemExit(f"cannot start Postgres: {out.stderr[-2000:]}")
            self.base = next(line[4:] for line in out.stdout.splitlines() if line.startswith("dsn="))

    def new_database(self) -> str:
        """A fresh database on the server; its DSN."""
        assert self.base is not None
        name = f"bench_{os.getpid()}_{time.monotonic_ns() % 10**9}"
        with psycopg.connect(
            self.base.replace("dbname=sregraph", "dbname=postgres"), autocommit=True, connect_timeout=5
        ) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.base.replace("dbname=sregraph", f"dbname={name}")

    def stop(self) -> None:
        """Stop the throwaway server and remove its directory."""
        if self.dir is not None:
            subprocess.run(
                ["bash", str(ROOT / "scripts/postgres.sh"), "stop", str(self.dir)],
                capture_output=True,
                timeout=120,
                check=False,
            )
            shutil.rmtree(self.dir, ignore_errors=True)


def throughput(
    server: _Server, workers: int, incidents: int, threads: int, queue: str = "none"
) -> dict[str, Any]:
    """`incidents` alerts routed at once to `workers` worker processes."""
    dsn = server.new_database()
    os.environ["HARNESS_DSN"], os.environ["HARNESS_LEASE_TTL"], os.environ["HARNESS_JOBS"] = dsn, "10", queue
    root = Path(tempfile.mkdtemp(prefix="sregraph-bench-world-"))
    World.create(root)
    world = World(root)
    toolbox = toolbox_for(world)
    engine = Engine(settings_for(root), toolbox)
    router = Worker(engine)
    env = {**os.environ, "HARNESS_THREADS": str(threads)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "evals.harness", "--serve", str(root)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    try:
        deadline = time.monotonic() + 120
        while len(list(root.glob("ready-*"))) < workers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise SystemExit("the workers did not start")
            time.sleep(0.1)
        latencies: list[float] = []
        started = time.perf_counter()
        ids = []
        for n in range(incidents):
            t0 = time.perf_counter()
            incident_id, _ = router.submit(
                Trigger(source="alert", summary=f"probe {n}", labels={"fingerprint": f"probe-{n}"}),
                run_here=False,
            )
            latencies.append(time.perf_counter() - t0)
            ids.append(incident_id)
        pending = set(ids)
        while pending:
            if time.perf_counter() - started > 900:
                raise SystemExit(f"{len(pending)} incidents did not end")
            statuses = {r["incident_id"]: r["status"] for r in engine.registry.list()}
            pending = {i for i in pending if statuses.get(i) not in FINAL}
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        statuses = {r["incident_id"]: r["status"] for r in engine.registry.list()}
        leases = lease_log(engine.registry.db)
    finally:
        (root / "stop").write_text("")
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        router.stop_jobs()
        engine.close()
        toolbox.close()
        shutil.rmtree(root, ignore_errors=True)
    ended = [statuses[i] for i in ids]
    return {
        "queue": queue,
        "workers": workers,
        "threads_per_worker": threads,
        "incidents": incidents,
        "healthy": ended.count("healthy"),
        "seconds": round(elapsed, 2),
        "incidents_per_s": round(incidents / elapsed, 2),
        "ingest_ms_p50": round(statistics.median(latencies) * 1000, 2),
        "ingest_ms_p99": round(_pct(latencies, 99) * 1000, 2),
        "ingest_ms_max": round(max(latencies) * 1000, 2),
        "leases_taken": len(leases),
        "workers_used": len({t["owner"] for t in leases}),
    }


def open_incidents(server: _Server, count: int, alerts: int = 200) -> dict[str, Any]:
    """Ingest latency and one adoption pass with `count` open incidents in the registry."""
    dsn = server.new_database()
    os.environ["HARNESS_DSN"], os.environ["HARNESS_LEASE_TTL"], os.environ["HARNESS_JOBS"] = dsn, "10", "none"
    root = Path(tempfile.mkdtemp(prefix="sregraph-bench-world-"))
    World.create(root)
    toolbox = toolbox_for(World(root))
    engine = Engine(settings_for(root), toolbox)
    worker = Worker(engine)
    try:
        now = time.time()
        with engine.registry.db.connect() as conn:
            for n in range(count):
                trigger = Trigger(source="alert", summary=f"open {n}", labels={"fingerprint": f"open-{n}"})
                conn.execute(
                    "INSERT INTO runs (incident_id, created_at, trigger, status, updated_at) "
                    "VALUES (?, ?, ?, 'awaiting_approval', ?)",
                    (f"inc-open-{n:06d}", now - count + n, trigger.model_dump_json(), now - count + n),
                )
        latencies = []
        ids = []
        for n in range(alerts):
            t0 = time.perf_counter()
            incident_id, new = worker.submit(
                Trigger(source="alert", summary=f"new {n}", labels={"fingerprint": f"new-{n}"}),
                run_here=False,
            )
            latencies.append(time.perf_counter() - t0)
            assert new
            ids.append(incident_id)
        for incident_id in ids:  # ended, so the adoption pass below only reads
            engine.registry.record(incident_id, None, "healthy")
        passes = []
        for _ in range(5):
            t0 = time.perf_counter()
            assert worker.adopt() == []
            passes.append(time.perf_counter() - t0)
    finally:
        engine.close()
        toolbox.close()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "open_incidents": count,
        "alerts": alerts,
        "ingest_ms_p50": round(statistics.median(latencies) * 1000, 2),
        "ingest_ms_p99": round(_pct(latencies, 99) * 1000, 2),
        "adopt_pass_ms_median": round(statistics.median(passes) * 1000, 2),
    }


def main() -> None:
    """Run both measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn",
        help="a Postgres server's DSN (dbname=sregraph is replaced per run); default: a throwaway one",
    )
    parser.add_argument("--incidents", type=int, default=60)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--open", default="100,1000,10000")
    parser.add_argument(
        "--queue",
        choices=["none", "procrastinate"],
        default="none",
        help="how routed incidents reach the workers",
    )
    parser.add_argument("--format", choices=["text", "json"], default="text")
    args = parser.parse_args()
    server = _Server(args.dsn)
    try:
        runs = [
            throughput(server, int(n), args.incidents, args.threads, args.queue)
            for n in args.workers.split(",")
            if n
        ]
        opened = [open_incidents(server, int(k)) for k in args.open.split(",") if k]
    finally:
        server.stop()
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "throughput": runs,
        "open_incidents": opened,
    }
    if args.format == "json":
        print(json.dumps(report, indent=2))
        return
    print(f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    for r in runs:
        print(
            f"[{r['queue']}] {r['workers']} worker(s) x {r['threads_per_worker']} threads: {r['incidents']} "
            f"incidents in {r['seconds']} s = "
            f"{r['incidents_per_s']}/s ({r['healthy']} healthy); ingest p50 {r['ingest_ms_p50']} ms, p99 "
            f"{r['ingest_ms_p99']} ms, max {r['ingest_ms_max']} ms; {r['leases_taken']} leases by "
            f"{r['workers_used']} workers"
        )
    for o in opened:
        print(
            f"{o['open_incidents']} open incidents: ingest p50 {o['ingest_ms_p50']} ms, p99 {o['ingest_ms_p99']} ms; "
            f"adoption pass {o['adopt_pass_ms_median']} ms"
        )


if __name__ == "__main__":
    main()
