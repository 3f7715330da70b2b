"""Alert-ingestion latency of the storm gate (sregraph/storm.py).

    python -m evals.bench_storm [--alerts 100000] [--problems 8] [--format json]

A seeded storm (many instances per problem, repeats, flapping instances) goes through `StormGate.ingest` one
parsed alert at a time, with `due()` looked at every simulated second, on a fake clock. Reported: per-alert
ingest latency p50/p99/max in microseconds, the same for whole Alertmanager webhook bodies of 50 alerts
(`ingest_body`: JSON parse + pydantic validation + ingest), throughput, and what the storm became.

End to end through HTTP: the worker's receiver (`AlertReceiver(on_alerts=gate.ingest_many)`, as
`Worker.serve_alerts` builds it) on a local port, POSTed Alertmanager webhooks on one kept-alive connection
(as Alertmanager sends), timed from request to response: p50/p99 per POST of 50 alerts and of one alert.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from sregraph.alerts import AlertmanagerAlert, AlertReceiver
from sregraph.storm import StormGate

T0 = 1_700_000_000.0


class _Clock:
    def __init__(self) -> None:
        self.t = T0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def _raw(rng: random.Random, problems: int, at: float) -> dict[str, Any]:
    p = rng.randrange(problems)
    instance = rng.randrange(200)
    status = "resolved" if instance < 10 and rng.random() < 0.5 else "firing"
    return {
        "status": status,
        "labels": {
            "alertname": f"Alert{p}",
            "service": f"svc{p}",
            "instance": f"pod-{instance}",
            "severity": "page",
        },
        "annotations": {"summary": f"problem {p} on pod-{instance}"},
        "startsAt": datetime.fromtimestamp(at, UTC).isoformat(),
    }


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(alerts: int = 100_000, problems: int = 8, seconds: float = 60.0, seed: int = 1) -> dict[str, Any]:
    """Measure; returns the numbers."""
    rng = random.Random(seed)
    times = sorted(T0 + rng.uniform(0, seconds) for _ in range(alerts))
    parsed = [AlertmanagerAlert.model_validate(_raw(rng, problems, t)) for t in times]
    clock = _Clock()
    gate = StormGate(clock, group_wait_s=10, group_interval_s=120, flap_window_s=300, max_flaps=3)
    per_alert: list[float] = []
    notices = {"new": 0, "update": 0, "resolved": 0}
    look = T0 + 1
    started = time.perf_counter()
    for at, alert in zip(times, parsed, strict=True):
        while look <= at:
            clock.t = look
            for n in gate.due():
                notices[n.kind] += 1
            look += 1
        clock.t = at
        t0 = time.perf_counter_ns()
        gate.ingest(alert)
        per_alert.append((time.perf_counter_ns() - t0) / 1000)
    elapsed = time.perf_counter() - started
    clock.t = T0 + seconds + 121
    for n in gate.due():
        notices[n.kind] += 1

    body_gate = StormGate(_Clock(), group_wait_s=10)
    bodies = []
    for i in range(0, min(alerts, 20_000), 50):
        batch = [_raw(rng, problems, T0 + i / 1000) for _ in range(50)]
        bodies.append(
            json.dumps({"version": "4", "status": "firing", "receiver": "sregraph", "alerts": batch}).encode()
        )
    per_body: list[float] = []
    for body in bodies:
        t0 = time.perf_counter_ns()
        body_gate.ingest_body(body)
        per_body.append((time.perf_counter_ns() - t0) / 1000)
    http_50 = _http(bodies)
    singles = [
        json.dumps(
            {"version": "4", "status": "firing", "alerts": [_raw(rng, problems, T0 + i / 100)]}
        ).encode()
        for i in range(min(alerts, 5_000))
    ]
    http_1 = _http(singles)
    return {
        "alerts": alerts,
        "problems": problems,
        "http_post_50_alerts_ms": http_50,
        "http_post_1_alert_ms": http_1,
        "ingest_us": {
            "p50": round(_pct(per_alert, 0.5), 2),
            "p99": round(_pct(per_alert, 0.99), 2),
            "max": round(max(per_alert), 1),
            "mean": round(statistics.fmean(per_alert), 2),
        },
        "alerts_per_s": round(alerts / elapsed),
        "webhook_body_50_alerts_us": {
            "p50": round(_pct(per_body, 0.5), 1),
            "p99": round(_pct(per_body, 0.99), 1),
        },
        "notifications": notices,
        "stats": {k: v for k, v in vars(gate.stats).items() if k != "notifications"},
    }


def _http(bodies: list[bytes]) -> dict[str, float]:
    """POST each body to a receiver feeding a fresh gate; latency per request in milliseconds."""
    gate = StormGate(_Clock(), group_wait_s=10)
    samples: list[float] = []
    # The real path, token check included; the per-source limit is lifted, this measures ingestion.
    with AlertReceiver(
        on_alerts=gate.ingest_many, port=0, token="bench", rate_per_s=1e9, rate_burst=10**9
    ) as receiver:
        conn = http.client.HTTPConnection(receiver.host, receiver.port, timeout=10)
        headers = {"Content-Type": "application/json", "Authorization": "Bearer bench"}
        for body in bodies:
            t0 = time.perf_counter_ns()
            conn.request("POST", receiver.path, body, headers)
            response = conn.getresponse()
            response.read()
            samples.append((time.perf_counter_ns() - t0) / 1e6)
            if response.status != 200:
                raise RuntimeError(f"receiver answered {response.status}")
        conn.close()
    return {"p50": round(_pct(samples, 0.5), 3), "p99": round(_pct(samples, 0.99), 3), "posts": len(samples)}


def main() -> None:
    """CLI."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=100_000)
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args()
    result = run(args.alerts, args.problems)
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return
    i, b = result["ingest_us"], result["webhook_body_50_alerts_us"]
    print(
        f"{result['alerts']} alerts for {result['problems']} problems -> {result['notifications']['new']} incidents"
        f" ({result['notifications']['update']} updates, {result['notifications']['resolved']} resolved)"
    )
    print(
        f"ingest per alert: p50 {i['p50']} us  p99 {i['p99']} us  max {i['max']} us  "
        f"({result['alerts_per_s']} alerts/s)"
    )
    print(f"webhook body of 50 alerts (parse + validate + ingest): p50 {b['p50']} us  p99 {b['p99']} us")
    for label, key in (("50 alerts", "http_post_50_alerts_ms"), ("1 alert", "http_post_1_alert_ms")):
        h = result[key]
        print(
            f"HTTP POST of {label} through the receiver: p50 {h['p50']} ms  p99 {h['p99']} ms  ({h['posts']} posts)"
        )
    print(f"outcomes: {result['stats']}")


if __name__ == "__main__":
    main()
