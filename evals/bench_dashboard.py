"""Dashboard event latency: from a graph step to the control room's live feed in a real browser.

    python -m evals.bench_dashboard [--incidents 20] [--format json]

A worker over the synthetic world of evals/harness.py serves the API from its own process, as
`sregraph worker --api-port` does; Debian's headless Chromium (scripts/browser.sh) shows the control room with
a viewer token. Each of `--incidents` incidents (a crash of payments, restarted without approval, then the
world repaired and given a clean baseline) runs through the whole graph. The page records when each step's
line enters its live feed (a MutationObserver reading `Date.now()`); a step's latency is that moment minus
the moment the engine published the step (`EventLog`, the same host's clock). The server's event stream
polls its log every `server.POLL_S`, which bounds what it adds.

Reported: steps seen, p50, p95, p99 and max latency in ms, and steps whose line never appeared (must be 0).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from evals.browser import Browser, find_browser
from evals.harness import Scenario, World, settings_for, toolbox_for
from sregraph.api_auth import ApiStore
from sregraph.engine import Engine
from sregraph.events import EventLog
from sregraph.server import POLL_S, ApiServer, create_app
from sregraph.worker import Worker

OBSERVER = """
window.__seen = [];
new MutationObserver((changes) => {
  const t = Date.now();
  for (const change of changes) for (const node of change.addedNodes)
    if (node.dataset) window.__seen.push({incident: node.dataset.incident, node: node.dataset.node, t});
}).observe(document.querySelector('#feed'), {childList: true});
true
"""


def run(incidents: int) -> dict[str, Any]:
    """Drive `incidents` incidents with the control room open; the latency of every graph step."""
    binary = find_browser()
    if binary is None:
        raise SystemExit(
            "no headless Chromium: bash scripts/browser.sh installs Debian's chromium-headless-shell"
        )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        world = World.create(root / "world")
        toolbox = toolbox_for(world)
        engine = Engine(settings_for(root / "world"), toolbox)
        worker = Worker(engine)
        store = ApiStore(root / "api.db")
        token = store.create_token("bench", "viewer")
        events = EventLog()
        server = ApiServer(create_app(worker, store, events)).start()
        browser = Browser(binary, root / "profile")
        page = None
        try:
            page = browser.page()
            page.goto(server.url + "/ui/")
            page.eval(f"sessionStorage.setItem('sregraph-token', {token!r})")
            page.goto(server.url + "/ui/")
            page.wait_for("document.querySelector('.who').textContent.length > 0")
            page.eval(OBSERVER)
            time.sleep(1.0)  # the event stream connected
            first = events.last
            resolved = 0
            for _ in range(incidents):
                world.inject(Scenario("crash", "payments"), toolbox.gitops)  # type: ignore[arg-type]
                incident_id = worker.scan()
                worker.wait_idle(120)
                resolved += incident_id is not None and engine.state(incident_id).get("status") == "resolved"
                world.repair(toolbox.gitops)  # type: ignore[arg-type]
                world.advance(45)
            published = events.after(first)
            page.wait_for(f"window.__seen.length >= {len(published)}", timeout=30)
            seen = page.eval("JSON.stringify(window.__seen)")
        finally:
            if page is not None:
                page.close()
            browser.close()
            server.stop()
            worker.wait_idle(60)
            engine.close()
    shown = json.loads(seen)
    latencies = []
    for event, line in zip(published, shown, strict=False):
        if (event.incident_id, event.node) != (line["incident"], line["node"]):
            raise SystemExit(f"the feed's lines are out of step with the published events at {event.seq}")
        latencies.append(line["t"] - event.at * 1000.0)
    ms = np.array(latencies)
    return {
        "incidents": incidents,
        "resolved": resolved,
        "steps": len(published),
        "missing": len(published) - len(shown),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "max_ms": round(float(ms.max()), 1),
        "server_poll_ms": POLL_S * 1000,
    }


def main() -> None:
    """Run the benchmark and print its numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--incidents", type=int, default=20)
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args()
    result = run(args.incidents)
    if args.format == "json":
        print(json.dumps(result))
    else:
        print(
            f"{result['steps']} graph steps of {result['incidents']} incidents ({result['resolved']} "
            "resolved) in the browser's feed: "
            f"p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, p99 {result['p99_ms']} ms, max "
            f"{result['max_ms']} ms; "
            f"{result['missing']} missing (server polls every {result['server_poll_ms']:.0f} ms)"
        )


if __name__ == "__main__":
    main()
