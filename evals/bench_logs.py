"""Tokens a model reads for the same logs: raw lines vs the regex summary vs Drain templates.

    python -m evals.bench_logs [--seconds 10] [--db PATH | --keep DIR] [--format json] [--show]

Without `--db` it runs the real demo app (three services, 15 requests/s of load) in a temporary directory and
injects faults one after another, each for `--seconds`: 50% errors on payments, 600 ms latency on payments
(checkout's calls to it time out), then a bad deploy of checkout (release 2.0.0-rc1). With `--db` it reads
the logs of an existing local telemetry store instead (a demo run's `DATA_DIR/app/telemetry.db`).

Each slice of logs is rendered four ways and counted with tiktoken (cl100k_base, agents/tokens.py):
raw JSON lines as the services write them, compact text lines, `agents.tokens.summarize_logs` (regex
masking) and `agents.logtemplates.summarize_templates` (drain3). Slices: the whole run, and per fault the
newest 500 records of its window (what the `search_logs` tool fetches). `coverage` is the share of records
whose template appears in the summary (the rest are counted in its last line).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agents.logtemplates import LogTemplateMiner, summarize_templates
from agents.tokens import count_tokens, summarize_logs
from sregraph.localenv.app import LocalApp
from tools.base import LogRecord
from tools.telemetry import LocalTelemetryStore

MAX_TEMPLATES = 8
"""What agents/investigation.py shows (MAX_LOG_TEMPLATES), for both summaries."""
TOOL_LIMIT = 500
"""Records the `search_logs` tool fetches per call."""
FAULTS: list[tuple[str, str, dict[str, Any]]] = [
    ("error_rate", "payments", {"ratio": 0.5}),
    ("latency", "payments", {"ms": 600}),
    ("bad_deploy", "checkout", {"version": "2.0.0-rc1"}),
]


def raw_json(records: list[LogRecord]) -> str:
    """One JSON object per line, the shape the services print."""
    return "\n".join(
        json.dumps(
            {"ts": r.ts, "level": r.level, "service": r.service, "message": r.message, **r.attrs}, default=str
        )
        for r in records
    )


def raw_text(records: list[LogRecord]) -> str:
    """Compact text lines: time, level, service, message, attributes."""
    lines = []
    for r in records:
        clock = dt.datetime.fromtimestamp(r.ts, dt.UTC).strftime("%H:%M:%S.%f")[:-3]
        attrs = " ".join(f"{k}={v}" for k, v in r.attrs.items())
        lines.append(f"{clock} {r.level} {r.service} {r.message} {attrs}".rstrip())
    return "\n".join(lines)


def measure(name: str, records: list[LogRecord]) -> dict[str, Any]:
    """Token counts of one slice in every rendering, and the saving of the templates over raw JSON."""
    began = time.perf_counter()
    miner = LogTemplateMiner()
    drain = summarize_templates(records, MAX_TEMPLATES, miner=miner)
    mine_ms = (time.perf_counter() - began) * 1000.0
    templates = miner.templates()
    shown = sum(t.count for t in templates[:MAX_TEMPLATES])
    counts = {
        "raw_json": count_tokens(raw_json(records)),
        "raw_text": count_tokens(raw_text(records)),
        "regex_summary": count_tokens(summarize_logs(records, MAX_TEMPLATES)),
        "drain_summary": count_tokens(drain),
    }
    return {
        "slice": name,
        "records": len(records),
        "templates": len(templates),
        "coverage": round(shown / len(records), 3) if records else 0.0,
        **counts,
        "ratio_json": round(counts["raw_json"] / max(counts["drain_summary"], 1), 1),
        "ratio_text": round(counts["raw_text"] / max(counts["drain_summary"], 1), 1),
        "mine_ms": round(mine_ms, 1),
        "summary": drain,
    }


def generate(data_dir: Path, seconds: float) -> tuple[Path, list[tuple[str, float, float]]]:
    """Run the demo app with the faults in turn; the store's path and each fault's (name, start, end)."""
    app = LocalApp(data_dir)
    windows: list[tuple[str, float, float]] = []
    try:
        app.start()
        app.start_load(15.0)
        time.sleep(5.0)
        for fault, service, params in FAULTS:
            print(f"injecting {fault} on {service} for {seconds:g}s", file=sys.stderr)
            started = time.time()
            app.inject(fault, service, **params)
            time.sleep(seconds)
            windows.append((f"{fault}:{service}", started, time.time()))
            if fault == "bad_deploy":
                continue
            app.inject("clear", service)
            time.sleep(2.0)
        time.sleep(1.0)  # the services flush their logs every 0.5 s
    finally:
        app.stop()
        app.close()
    return data_dir / "telemetry.db", windows


def main(argv: list[str] | None = None) -> int:
    """Generate or read logs, measure every slice, print a table or JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--db", type=Path, help="read an existing local telemetry store instead of running the app"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each fault runs")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument(
        "--keep", type=Path, help="generate into this directory and keep it (reuse with --db)"
    )
    parser.add_argument("--show", action="store_true", help="also print the whole-run template summary")
    args = parser.parse_args(argv)

    windows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="sregraph-bench-logs-") as tmp:
        if args.db is not None:
            db = args.db
        else:
            db, windows = generate((args.keep or Path(tmp)) / "app", args.seconds)
        with LocalTelemetryStore(db) as store:
            everything = store.search_logs(None, 0.0, time.time() + 3600, limit=10**7)
            slices = [("whole run", everything)]
            for name, start, end in windows:
                slices.append(
                    (f"{name} (newest {TOOL_LIMIT})", store.search_logs(None, start, end, limit=TOOL_LIMIT))
                )
    rows = [measure(name, records) for name, records in slices if records]
    if args.format == "json":
        print(
            json.dumps({"encoding": "cl100k_base", "max_templates": MAX_TEMPLATES, "slices": rows}, indent=2)
        )
        return 0
    print(
        f"{'slice':32} {'records':>7} {'tmpl':>4} {'cover':>6} {'raw json':>9} {'raw text':>9} {'regex':>6} "
        f"{'drain':>6} {'json/drain':>10} {'text/drain':>10} {'mine ms':>8}"
    )
    for r in rows:
        print(
            f"{r['slice']:32} {r['records']:>7} {r['templates']:>4} {r['coverage']:>6.0%} {r['raw_json']:>9} "
            f"{r['raw_text']:>9} {r['regex_summary']:>6} {r['drain_summary']:>6} {r['ratio_json']:>9.1f}x "
            f"{r['ratio_text']:>9.1f}x {r['mine_ms']:>8.1f}"
        )
    if args.show and rows:
        print("\n" + rows[0]["summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
