"""Alert to diagnosis through real Prometheus and Alertmanager (Debian's packages), end to end.

The demo app runs for real; Prometheus scrapes its `/metrics` every second and evaluates the burn-rate rules
that `tools/slo/rules.py` generates from an SLO file written here; 50% errors are injected on payments; the
page alert fires, Alertmanager posts it to sregraph's webhook receiver, and the Trigger it yields starts an
incident on an Engine whose telemetry is `PrometheusTelemetry`, so every metric the observer, analyst and
engineer read comes from Prometheus's HTTP API.

The generated rules are used as generated (30-day SLO, 1h/5m and 6h/30m page pairs). They fire within
seconds here because Prometheus is fresh: `rate(x[1h])` over a few seconds of history is the rate over
those seconds, so every window of a pair reads the error ratio since start-up (docs/observability.md).

Skipped, saying why, when the `prometheus` or Alertmanager binary is missing (scripts/observability.sh
installs them from Debian).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from evals.processes import stop_process
from sregraph.alerts import AlertReceiver
from sregraph.config import Settings, load_settings
from sregraph.engine import Engine, local_toolbox
from sregraph.localenv.app import LocalApp
from tests.localapp import write_config
from tools.base import Series
from tools.domain import Trigger
from tools.prometheus import PrometheusTelemetry
from tools.slo.loading import parse_slo_text
from tools.slo.rules import PAGE_ALERT, render_rules

PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")

pytestmark = [
    pytest.mark.skipif(
        PROMETHEUS is None or ALERTMANAGER is None,
        reason="needs Debian's prometheus and prometheus-alertmanager binaries on PATH "
        "(install: scripts/observability.sh, or apt-get install prometheus prometheus-alertmanager)",
    ),
    pytest.mark.timeout(150),
]

SERVICES = ("frontend", "checkout", "payments")
SCRAPE_S = 1
RATE_WINDOW = "5s"
"""At least 4 scrape intervals, so every rate() has samples; short, so the agents see change quickly."""
BASELINE_S = 15.0
READY_TIMEOUT_S = 20.0
TOKEN = "integration-token"


def free_port() -> int:
    """A loopback port free right now (the servers bind it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, check: Any, timeout: float, interval: float = 0.2) -> Any:
    """Poll `check()` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


@contextmanager
def server(name: str, argv: list[str], log_dir: Path, ready_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run one server binary until the block ends; always terminated (then killed) afterwards."""
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:

            def ready() -> bool:
                if proc.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    pytest.fail(f"{name} exited with {proc.returncode}: {tail}")
                return httpx.get(ready_url, timeout=1.0).status_code == 200

            wait_for(f"{name} at {ready_url}", ready, READY_TIMEOUT_S)
            yield proc
        finally:
            stop_process(proc)


def slo_file_text() -> str:
    """An availability SLO per service, with the counters the demo services export."""
    slos = [
        {
            "name": f"{s}-availability",
            "service": s,
            "sli": "availability",
            "target": 0.999,
            "window": "30d",
            "labels": {"team": "demo"},
            "prometheus": {
                "errors": f'http_requests_total{{service="{s}",code=~"5.."}}',
                "total": f'http_requests_total{{service="{s}"}}',
            },
        }
        for s in SERVICES
    ]
    return yaml.safe_dump({"slos": slos}, sort_keys=False)


class RecordingTelemetry(PrometheusTelemetry):
    """PrometheusTelemetry that remembers what the agents asked and how many points came back."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, str | None, int]] = []
        self._calls_lock = threading.Lock()

    def query_range(self, name: str, labels: dict[str, str] | None, start: float, end: float) -> list[Series]:
        found = super().query_range(name, labels, start, end)
        with self._calls_lock:
            self.calls.append((name, (labels or {}).get("service"), sum(len(s.points) for s in found)))
        return found


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    config = write_config(
        tmp_path,
        observer={"window_s": 4, "baseline_s": BASELINE_S, "detect_timeout_s": 20},
        engineer={"verify_timeout_s": 25},
    )
    return load_settings(config, environ={})


def test_alert_from_prometheus_opens_an_incident_diagnosed_on_prometheus_data(
    tmp_path: Path, settings: Settings
) -> None:
    began = time.monotonic()
    assert PROMETHEUS is not None and ALERTMANAGER is not None
    logs = tmp_path / "logs"
    logs.mkdir()
    app = LocalApp(settings.data_dir / "app")  # ports are chosen here, so Prometheus can be told them
    prom_port, am_port = free_port(), free_port()
    prom_url, am_url = f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{am_port}"

    triggers: list[Trigger] = []
    fired = threading.Event()

    def on_trigger(trigger: Trigger) -> None:
        triggers.append(trigger)
        fired.set()

    with ExitStack() as stack:
        receiver = stack.enter_context(AlertReceiver(callback=on_trigger, token=TOKEN))

        # Rules exactly as `sregraph slo rules` writes them, checked by promtool when it is there.
        rules = tmp_path / "slo-rules.yml"
        rules.write_text(render_rules(parse_slo_text(slo_file_text(), "test SLOs"), "test SLOs"))
        if shutil.which("promtool"):
            check = subprocess.run(
                ["promtool", "check", "rules", str(rules)],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert check.returncode == 0, check.stdout + check.stderr

        am_config = tmp_path / "alertmanager.yml"
        am_config.write_text(
            yaml.safe_dump(
                {
                    # Pages go to sregraph; tickets (the slower 3x/1x pairs fire here too) to nobody.
                    "route": {
                        "receiver": "tickets",
                        "group_by": ["alertname", "sregraph_service"],
                        "group_wait": "1s",
                        "group_interval": "1s",
                        "repeat_interval": "1h",
                        "routes": [{"matchers": ['severity="page"'], "receiver": "sregraph"}],
                    },
                    "receivers": [
                        {"name": "tickets"},
                        {
                            "name": "sregraph",
                            "webhook_configs": [
                                {
                                    "url": receiver.url,
                                    "send_resolved": True,
                                    "http_config": {
                                        "authorization": {"type": "Bearer", "credentials": TOKEN}
                                    },
                                }
                            ],
                        },
                    ],
                }
            )
        )
        stack.enter_context(
            server(
                "alertmanager",
                [
                    ALERTMANAGER,
                    f"--config.file={am_config}",
                    f"--storage.path={tmp_path / 'am-data'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",  # no gossip port: a single, private instance
                ],
                logs,
                f"{am_url}/-/ready",
            )
        )

        prom_config = tmp_path / "prometheus.yml"
        prom_config.write_text(
            yaml.safe_dump(
                {
                    "global": {
                        "scrape_interval": f"{SCRAPE_S}s",
                        "scrape_timeout": f"{SCRAPE_S}s",
                        "evaluation_interval": "1s",
                    },
                    "rule_files": [str(rules)],
                    "alerting": {
                        "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
                    },
                    "scrape_configs": [
                        {
                            "job_name": "sregraph-demo",
                            "static_configs": [{"targets": [f"127.0.0.1:{app.ports[s]}" for s in SERVICES]}],
                        }
                    ],
                }
            )
        )
        stack.enter_context(
            server(
                "prometheus",
                [
                    PROMETHEUS,
                    f"--config.file={prom_config}",
                    f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--storage.tsdb.retention.time=1h",
                ],
                logs,
                f"{prom_url}/-/ready",
            )
        )

        stack.callback(app.close)
        stack.callback(app.stop)
        app.start()
        app.start_load(15.0)

        telemetry = RecordingTelemetry(prom_url, timeout_s=5, rate_window=RATE_WINDOW)
        stack.callback(telemetry.close)
        wait_for(
            "every service scraped and its request rate known",
            lambda: (
                {
                    s.labels.get("service")
                    for s in telemetry.query(telemetry.promql("request_rate")[0])
                    if s.points
                }
                >= set(SERVICES)
            ),
            20.0,
        )
        # The engine (agents, memory, checkpointer) is built before the fault, as a running worker's is.
        toolbox = local_toolbox(settings, app)
        toolbox.telemetry = telemetry
        engine = Engine(settings, toolbox)
        stack.callback(engine.close)
        stack.callback(toolbox.close)

        time.sleep(BASELINE_S + 6)  # a clean baseline in Prometheus before the fault
        assert not triggers, f"an alert fired before any fault: {triggers}"
        assert telemetry.query('ALERTS{alertstate="firing"}') == []

        fault_at = time.time()
        app.inject("error_rate", "payments", ratio=0.5)
        assert fired.wait(30), f"no alert reached the webhook in 30 s; receiver stats {receiver.stats}"
        alerted_s = time.time() - fault_at
        trigger = triggers[0]
        assert trigger.source == "alert" and trigger.signal == PAGE_ALERT
        assert trigger.service in SERVICES  # the first page may name a caller: errors propagate upwards
        assert trigger.labels["fingerprint"] == f"{trigger.service}:{PAGE_ALERT}"
        assert trigger.labels["severity"] == "page"

        telemetry.calls.clear()
        state = engine.start(trigger)
        elapsed = time.monotonic() - began

        diagnosis = state["diagnosis"]
        assert state["issue_id"] is not None, "no incident was opened"
        issue = toolbox.incidents.get(state["issue_id"])
        assert "incident" in issue.labels
        assert diagnosis is not None and diagnosis.top is not None, state.get("escalation")
        assert diagnosis.top.service == "payments", [
            (h.service, h.fault_type, h.score) for h in diagnosis.hypotheses
        ]
        assert diagnosis.top.fault_type == "error_spike"
        assert any(e.kind == "metric" and e.ref == "error_ratio" for e in diagnosis.top.evidence)
        # The agents' numbers came from Prometheus: error ratios for payments with points in them.
        assert any(name == "error_ratio" and svc == "payments" and n > 0 for name, svc, n in telemetry.calls)
        assert {name for name, _, _ in telemetry.calls} >= {"error_ratio", "latency_p95_ms", "request_rate"}
        assert all(n == 0 for name, _, n in telemetry.calls if name in ("memory_rss_mb", "cpu_percent"))
        # The incident ran to its end: payments restarted (the fault is in memory, so that clears it).
        assert [(a.action.kind, a.action.service, a.status) for a in state["actions"]][:1] == [
            ("restart", "payments", "done")
        ]
        assert state["status"] == "resolved", (state["status"], state.get("escalation"))
        print(
            f"\nalert after {alerted_s:.1f}s, whole test {elapsed:.1f}s, {len(telemetry.calls)} Prometheus queries"
        )
