"""HTTP API under load: latency percentiles and throughput with many concurrent clients.

    python -m evals.bench_api [--clients 50] [--requests 2000] [--runs 200] [--format json]

A worker over the synthetic world (evals/harness.py) serves the API in its own process; this process
measures health, incident pages, a whole incident, an audited refusal, and ingestion through the SDK and the
API. What is measured and how: docs/control-room.md §Measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from sregraph.sdk import SregraphHandler


def _serve(root: str, runs: int, ready: Any, stop: Any) -> None:
    """The API process: a worker with `runs` finished incidents and one waiting for approval."""
    # The server's stack loads in the spawned server process only; this one stays a plain HTTP client.
    from evals.harness import Scenario, World, settings_for, toolbox_for
    from sregraph.api_auth import ApiStore
    from sregraph.engine import Engine
    from sregraph.server import ApiServer, create_app
    from sregraph.worker import Worker
    from tools.domain import Trigger
    from tools.gitops import LocalGitOps

    world = World.create(Path(root) / "world")
    engine = Engine(settings_for(Path(root) / "world"), toolbox_for(world))
    worker = Worker(engine)
    for i in range(runs):
        trigger = Trigger(
            source="alert", service=f"svc-{i % 20}", signal="HighLatency", summary=f"p95 over 500 ms ({i})"
        )
        engine.registry.record(f"inc-bench-{i:05d}", trigger, "resolved")
    gitops = engine.toolbox.gitops
    if not isinstance(gitops, LocalGitOps):
        raise TypeError(f"toolbox_for gives a LocalGitOps, not {type(gitops).__name__}")
    world.inject(Scenario("latency", "search"), gitops)
    waiting = worker.scan()
    worker.wait_idle(120)
    worker.health.beat()
    store = ApiStore(Path(root) / "api.db")
    token = store.create_token("bench", "operator")
    apps = [store.create_token(f"app-{i}", "ingest") for i in range(INGEST_CLIENTS)]
    server = ApiServer(create_app(worker, store)).start()
    ready.put(
        {
            "url": server.url,
            "token": token,
            "apps": apps,
            "waiting": waiting,
            "pending": engine.pending_approval(str(waiting)),
        }
    )
    stop.wait()
    server.stop()
    engine.close()


INGEST_CLIENTS = 10
"""Applications sending metrics at once, each with its own ingest token (the rate limit is per token)."""


def _sdk_logs(url: str, token: str, lines: int) -> dict[str, Any]:
    """`lines` log lines through the SDK's handler, timed until the last one is stored."""
    handler = SregraphHandler(url, token, service="checkout", flush_s=0.2, max_queue=lines)
    logger = logging.getLogger("bench.sdk")
    logger.propagate = False
    logger.addHandler(handler)
    t0 = time.perf_counter()
    for i in range(lines):
        logger.warning("payment provider slow (%d ms)", i)
    emitted = time.perf_counter() - t0
    handler.close()
    wall = time.perf_counter() - t0
    logger.removeHandler(handler)
    return {
        "lines": lines,
        "sent": handler.shipper.sent,
        "dropped": handler.dropped,
        "per_s": round(handler.shipper.sent / wall),
        "emit_us_per_line": round(emitted / lines * 1e6, 1),
    }


async def _api_points(url: str, tokens: list[str], batches: int, batch: int) -> dict[str, Any]:
    """Each token's client posts `batches` batches of `batch` metric points; points/s over all of them."""
    refused = 0

    async def client(token: str) -> None:
        nonlocal refused
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as http:
            for _ in range(batches):
                now = time.time()
                points = [
                    {
                        "name": "bench_gauge",
                        "labels": {"service": "checkout", "client": token[-6:]},
                        "value": float(i),
                        "ts": now - i * 1e-3,
                    }
                    for i in range(batch)
                ]
                answer = await http.post("/api/v1/ingest/metrics", json={"points": points})
                refused += answer.status_code != 200

    t0 = time.perf_counter()
    await asyncio.gather(*(client(t) for t in tokens))
    wall = time.perf_counter() - t0
    total = len(tokens) * batches * batch
    return {"clients": len(tokens), "points": total, "per_s": round(total / wall), "refused_batches": refused}


async def _load(
    url: str, clients: int, requests: int, call: tuple[str, str, int], headers: dict[str, str]
) -> dict[str, Any]:
    method, path, expected = call
    latencies: list[float] = []
    unexpected = 0
    todo = iter(range(requests))

    async def client() -> None:
        nonlocal unexpected
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
            for _ in todo:
                t0 = time.perf_counter()
                answer = await http.request(method, path, json={} if method == "POST" else None)
                latencies.append(time.perf_counter() - t0)
                unexpected += answer.status_code != expected

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
        "per_s": round(len(latencies) / wall, 1),
        "unexpected_status": unexpected,
    }


def run(clients: int, requests: int, runs: int) -> dict[str, Any]:
    """Start the API process, load each call in turn, stop it."""
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Queue(), context.Event()
    with tempfile.TemporaryDirectory(prefix="sregraph-bench-api-") as root:
        server = context.Process(target=_serve, args=(root, runs, ready, stop), daemon=True)
        server.start()
        try:
            info = ready.get(timeout=300)
            if not info["pending"]:
                raise SystemExit(
                    "the approval incident did not reach the gate: nothing to measure `detail` on"
                )
            calls = {
                "healthz": ("GET", "/healthz", 200),
                "list": ("GET", "/api/v1/incidents?limit=50", 200),
                "detail": ("GET", f"/api/v1/incidents/{info['waiting']}", 200),
                "refused": ("POST", "/api/v1/incidents/inc-bench-00000/approve", 404),
            }
            headers = {"Authorization": f"Bearer {info['token']}"}
            results = {
                name: asyncio.run(_load(info["url"], clients, requests, call, headers))
                for name, call in calls.items()
            }
            ingest = {
                "sdk_logs": _sdk_logs(info["url"], info["apps"][0], 20_000),
                "api_metrics": asyncio.run(_api_points(info["url"], info["apps"], 10, 1000)),
            }
        finally:
            stop.set()
            server.join(30)
    return {
        "clients": clients,
        "requests_per_call": requests,
        "runs_in_registry": runs,
        "calls": results,
        "ingest": ingest,
    }


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args()
    result = run(args.clients, args.requests, args.runs)
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return
    print(
        f"{result['clients']} clients, {result['requests_per_call']} requests per call, "
        f"{result['runs_in_registry']} incidents"
    )
    print(f"{'call':10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'req/s':>8} {'bad':>4}")
    for name, r in result["calls"].items():
        print(
            f"{name:10} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['max_ms']:8.1f} {r['per_s']:8.1f} "
            f"{r['unexpected_status']:4d}"
        )
    sdk, api = result["ingest"]["sdk_logs"], result["ingest"]["api_metrics"]
    print(
        f"SDK logs: {sdk['sent']:,} of {sdk['lines']:,} lines stored, {sdk['per_s']:,}/s, {sdk['dropped']} dropped, "
        f"{sdk['emit_us_per_line']} µs per logging call"
    )
    print(
        f"API metrics: {api['points']:,} points from {api['clients']} clients, {api['per_s']:,}/s, "
        f"{api['refused_batches']} batches refused"
    )


if __name__ == "__main__":
    main()
