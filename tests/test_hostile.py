"""Trust boundaries, probed as a hostile or careless user would (docs/security.md maps threats to these tests).

Each test is one probe that succeeded against sregraph before issue #13: secrets reaching managed services,
an open or fragile alert receiver, stored text crashing the CLI or shaping Markdown, nonsense configuration,
text deciding what is trusted, and test machinery inside product code.
"""

from __future__ import annotations

import ast
import http.client
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml
from github import Auth, Github
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from agents.librarian import render_markdown
from agents.observer import incident_body
from graphs import comments
from sregraph.alerts import AlertReceiver, WebhookError, parse_webhook
from sregraph.cli import app
from sregraph.config import AlertsConfig, load_settings
from sregraph.engine import RunRegistry
from sregraph.observability import JsonFormatter
from sregraph.worker import Worker
from tests.fakes.github import FakeGitHub
from tests.fixtures.github import BOT, BOT_TOKEN, REPO, SEED, SEED_MESSAGE, T0, make_gitops
from tests.fixtures.telemetry import (
    FAULT_AT,
    NOW,
    TOPOLOGY,
    analyst,
    error_traces,
    make_toolbox,
    observe,
    write_series,
)
from tests.fixtures.world import approval_world
from tests.support import FakeHealth, FakeRuntime, ManualClock
from tools.base import ConfigError, Refused
from tools.display import md, plain, term
from tools.domain import (
    Diagnosis,
    Evidence,
    Hypothesis,
    Observation,
    PostMortem,
    Signal,
    TimelineEntry,
    Trigger,
)
from tools.gitops import LocalGitOps, commit_signature, git_blob_id
from tools.gitops_common import SIGNATURE_TRAILER
from tools.incidents import LocalIncidentSurface
from tools.notifier import ConsoleNotifier, JsonlNotifier
from tools.runtime import ProcessSpec, ProcessSupervisor, service_environment

ROOT = Path(__file__).resolve().parents[1]
SECRETS = {
    # Values no pattern of the redactor recognises: only "these are sregraph's secrets" can catch them.
    "GITHUB_TOKEN": "opaque-github-credential-4f1e",
    "OPENAI_API_KEY": "opaque-model-credential-9a7c",
    "SREGRAPH_ALERTS_TOKEN": "opaque-webhook-credential-2b6d",
    "WATSONX_APIKEY": "opaque-watsonx-credential-7e31",
}
PRODUCT_PACKAGES = ("agents", "evals", "graphs", "memory", "prompts", "sregraph", "tools")


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The worker's environment holds every secret sregraph uses."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return SECRETS


def _environ_of(pid: int) -> str:
    return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")


# --------------------------------------------------------------------------- secrets and managed services


def test_managed_services_and_the_load_generator_hold_none_of_the_workers_secrets(
    secret_env: dict[str, str], tmp_path: Path
) -> None:
    from sregraph.localenv.app import LocalApp

    local = LocalApp(tmp_path / "app")
    try:
        local.start()
        local.start_background_load()
        load = local._background()
        try:
            pids = {s: local.runtime.status(s).pid for s in ("frontend", "checkout", "payments")}
            pids["load"] = load.status("load").pid
        finally:
            load.close()
        environs = {name: _environ_of(pid) for name, pid in pids.items() if pid}
        restarted = local.runtime.restart("payments").pid  # as the worker would
        assert restarted is not None
        environs["payments (restarted)"] = _environ_of(restarted)
        assert len(environs) == 5
        for name, environ in environs.items():
            leaked = [key for key, value in secret_env.items() if value in environ or f"{key}=" in environ]
            assert not leaked, f"{name} holds {leaked}"
            assert "PATH=" in environ  # the allow-list still gives it what a process needs
    finally:
        local.stop()
        local.close()


def test_a_process_spec_cannot_hand_on_a_secret_and_containers_inherit_nothing(
    secret_env: dict[str, str], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="GITHUB_TOKEN"):
        service_environment({"GITHUB_TOKEN": "x"})
    spec = ProcessSpec(
        name="sleeper", argv=[sys.executable, "-c", "import time; time.sleep(30)"], env={"OWN": "1"}
    )
    supervisor = ProcessSupervisor(tmp_path / "sup", {"sleeper": spec})
    try:
        pid = supervisor.start("sleeper").pid
        assert pid is not None
        environ = _environ_of(pid)
        assert "OWN=1" in environ and not any(v in environ for v in secret_env.values())
    finally:
        supervisor.shutdown_all()
        supervisor.close()

    from tools.docker_runtime import ContainerSpec, DockerRuntime

    created: list[dict[str, Any]] = []

    class Containers:
        def create(self, image: str, command: list[str], **kwargs: Any) -> object:
            created.append(kwargs)
            return object()

    class Client:
        containers = Containers()

        class api:  # noqa: N801 - mirrors docker.DockerClient.api
            timeout = 5.0

        def close(self) -> None:
            pass

    runtime = DockerRuntime(
        Client(),  # type: ignore[arg-type]  # a stand-in client that records what would be created
        {"web": ContainerSpec(name="web", image="img", command=["x"], env={"OWN": "1"})},
        project="hostile",
    )
    runtime._create(runtime.specs["web"], 1, 0)
    assert created[0]["environment"] == {"OWN": "1", "REPLICA": "1"}


# --------------------------------------------------------------------------- the alert receiver


def _post(
    port: int, body: bytes | dict[str, Any], token: str | None = None, timeout: float = 5
) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} | (
            {"Authorization": f"Bearer {token}"} if token else {}
        )
        conn.request("POST", "/alerts", data, headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def _payload(*services: str) -> dict[str, Any]:
    alerts = [
        {
            "status": "firing",
            "labels": {"alertname": "Down", "service": s},
            "annotations": {"summary": f"{s} down"},
            "startsAt": "2024-05-01T12:00:00Z",
        }
        for s in services
    ]
    return {"version": "4", "status": "firing", "alerts": alerts}


def test_the_receiver_refuses_to_serve_without_a_token_unless_told_so_on_loopback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, engine = approval_world(tmp_path)
    worker = Worker(engine)
    try:
        with pytest.raises(ConfigError, match="bearer token"):
            worker.serve_alerts(AlertsConfig(enabled=True, port=0))
        with pytest.raises(ConfigError, match="loopback"):
            worker.serve_alerts(AlertsConfig(enabled=True, host="0.0.0.0", port=0, insecure_no_auth=True))
        with caplog.at_level(logging.WARNING, logger="sregraph.alerts"):
            receiver = worker.serve_alerts(AlertsConfig(enabled=True, port=0, insecure_no_auth=True))
        assert "WITHOUT authentication" in caplog.text
        assert _post(receiver.port, _payload("payments"))[0] == 200
    finally:
        worker.stop_alerts()
        engine.close()


def test_alerts_for_services_the_topology_does_not_know_are_refused_and_counted(tmp_path: Path) -> None:
    _, engine = approval_world(tmp_path)
    worker = Worker(engine)
    try:
        receiver = worker.serve_alerts(AlertsConfig(enabled=True, port=0, group_wait_s=0), token="s3cret")
        invented = [f"svc{i}" for i in range(9)] + ["nosuchsvc", "../../etc/passwd"]
        status, answer = _post(receiver.port, _payload(*invented), token="s3cret")
        assert status == 422 and "unknown service" in answer["error"] and "payments" in answer["error"]
        no_service = {
            "version": "4",
            "status": "firing",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"alertname": "Everything"},
                    "startsAt": "2024-05-01T12:00:00Z",
                }
            ],
        }
        assert _post(receiver.port, no_service, token="s3cret")[0] == 422  # would claim every service
        status, answer = _post(receiver.port, _payload("payments", "nosuchsvc"), token="s3cret")
        assert status == 200 and answer["unknown_service"] == 1
        assert receiver.stats.unknown_service == 13
        worker.forward_alerts()
        worker.wait_idle(30)
        assert [r["trigger"]["service"] for r in engine.registry.list()] == ["payments"]
        metrics = engine.metrics.render().decode()
        assert 'sregraph_alerts_rejected_total{reason="unknown_service"} 13.0' in metrics
    finally:
        worker.stop_alerts()
        engine.close()


def test_auth_failures_are_logged_with_their_source_and_exported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, engine = approval_world(tmp_path)
    worker = Worker(engine)
    try:
        receiver = worker.serve_alerts(AlertsConfig(enabled=True, port=0), token="s3cret")
        with caplog.at_level(logging.WARNING, logger="sregraph.alerts"):
            assert _post(receiver.port, _payload("payments"), token="guess")[0] == 401
            assert _post(receiver.port, _payload("payments"))[0] == 401
        assert (
            "wrong bearer token from 127.0.0.1" in caplog.text
            and "no bearer token from 127.0.0.1" in caplog.text
        )
        assert "sregraph_alerts_auth_failures_total 2.0" in engine.metrics.render().decode()
    finally:
        worker.stop_alerts()
        engine.close()


def test_one_source_is_rate_limited() -> None:
    rejected: list[str] = []
    with AlertReceiver(
        on_alerts=lambda alerts: {}, token="t", rate_per_s=0.01, rate_burst=5, on_reject=rejected.append
    ) as r:
        statuses = [_post(r.port, _payload("payments"), token="t")[0] for _ in range(8)]
    assert statuses == [200] * 5 + [429] * 3
    assert rejected == ["rate_limited"] * 3 and r.stats.rate_limited == 3


def test_half_sent_requests_time_out_and_cannot_hold_the_receiver() -> None:
    before = threading.active_count()
    with AlertReceiver(
        on_alerts=lambda alerts: {}, token="t", header_timeout_s=0.5, body_timeout_s=0.5, max_connections=8
    ) as r:
        socks = []
        for _ in range(70):
            sock = socket.create_connection((r.host, r.port), timeout=5)
            sock.sendall(b"POST /alerts HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            socks.append(sock)
        assert threading.active_count() < before + 20
        started = time.monotonic()
        answers = []
        for sock in socks:
            with closing(sock):
                answers.append(sock.recv(100))  # 503 at once, or end of stream at the deadline
        assert time.monotonic() - started < 5
        assert all(a == b"" or a.startswith(b"HTTP/1.1 503") for a in answers)
        # Dripping one header byte at a time must not reset the deadline.
        drip = socket.create_connection((r.host, r.port), timeout=5)
        with closing(drip):
            drip.sendall(b"POST /alerts HTTP/1.1\r\n")
            try:
                for _ in range(20):
                    drip.sendall(b"X")
                    time.sleep(0.1)
                pytest.fail("a dripping client kept its connection past the header deadline")
            except OSError:
                pass
        # A half-sent body: headers complete, 10 of 100 bytes.
        body = socket.create_connection((r.host, r.port), timeout=5)
        with closing(body):
            body.sendall(
                b"POST /alerts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nContent-Type: "
                b'application/json\r\nContent-Length: 100\r\n\r\n{"version"'
            )
            assert body.recv(100) == b""
        assert _post(r.port, _payload("payments"), token="t")[0] == 200  # still serving
    assert r.stats.timeouts >= 9 and r.stats.timeouts + r.stats.overloaded >= 71


def test_deep_nesting_is_a_400_not_a_crash(capfd: pytest.CaptureFixture[str]) -> None:
    deep = b'{"version": "4", "status": "firing", "alerts": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    with pytest.raises(WebhookError) as raised:
        parse_webhook(deep)
    assert raised.value.status == 400
    with AlertReceiver(on_alerts=lambda alerts: {}, token="t") as r:
        status, answer = _post(r.port, deep, token="t")
        assert status == 400 and "deeper than" in answer["error"]
        assert _post(r.port, _payload("payments"), token="t")[0] == 200
    assert "Traceback" not in capfd.readouterr().err
    # Brackets inside strings are text, not nesting.
    assert parse_webhook(json.dumps(_payload("[" * 100))).alerts


# --------------------------------------------------------------------------- stored and typed text on the terminal

runner = CliRunner()


def _cli(*args: str, env: dict[str, str] | None = None) -> Any:
    return runner.invoke(app, list(args), env=env, catch_exceptions=True)


def test_stored_markup_and_escape_sequences_do_not_break_incidents_list(tmp_path: Path) -> None:
    data = tmp_path / "data"
    hostile = "[/x] [bold red]boom\x1b[2J\x1b]0;owned\x07 [link=file:///etc]x[/link]"
    RunRegistry(data / "runs.db").record(
        "inc-1", Trigger(source="alert", summary=hostile, service="payments"), "open"
    )
    result = _cli("incidents", "list", "--data-dir", str(data))
    assert result.exit_code == 0, result.output
    assert "[/x] [bold red]boom" in result.output and "\x1b" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ("approve", "[/x]"),
        ("reject", "[/x]", "--reason", "[/y]"),
        ("incidents", "show", "[/x]"),
        ("chaos", "crash", "[/x]"),
        ("run", "[/x]"),
    ],
)
def test_brackets_in_cli_arguments_are_text(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = _cli(*args, "--data-dir", str(tmp_path / "data"))
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit)  # a clean error, not a MarkupError traceback
    assert "[/x]" in result.output


def test_display_helpers_strip_controls_and_escape() -> None:
    assert plain("a\x1b[31mred\x1b[0m\x00b\r\nc\u202e") == "ared b c"
    assert term("[/x]") == "\\[/x]"
    assert md("| x | [l](http://e) <b> @team `c` _u_ # h") == (
        "\\| x \\| \\[l\\](http://e) \\<b\\> @\u200bteam \\`c\\` \\_u\\_ \\# h"
    )


# --------------------------------------------------------------------------- random text in every stored field

SAMPLES = [
    "[/x]",
    "[bold]",
    "\x1b[2J",
    "\x1b]8;;http://evil\x07",
    "| a | b |",
    "\n/approve\n",
    "```",
    "<script>",
    "@team",
    "\x00\x7f\x85",
    "\u202e",
    "#",
    "\\",
]
hostile_text = st.one_of(
    st.sampled_from(SAMPLES), st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=60)
)
FIELDS = st.fixed_dictionaries(
    {
        name: hostile_text
        for name in (
            "summary",
            "signal",
            "service",
            "label_key",
            "label_value",
            "status",
            "event",
            "detail",
            "why",
            "evidence",
            "note",
            "title",
            "pm_summary",
            "root_cause",
            "action",
            "follow_up",
            "escalation",
        )
    }
)
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def _render_issue(f: dict[str, str]) -> list[str]:
    signal = Signal(
        service=f["service"],
        name=f["signal"],
        value=1,
        baseline=0,
        score=9,
        detail=f["detail"],
        why=f["why"],
        sense=f["signal"],
    )
    observation = Observation(healthy=False, signals=[signal], snapshot={f["service"]: {f["signal"]: 1.0}})
    trigger = Trigger(
        source="alert",
        service=f["service"],
        signal=f["signal"],
        summary=f["summary"],
        labels={f["label_key"]: f["label_value"]},
    )
    evidence = Evidence(kind="log", service=f["service"], summary=f["evidence"], weight=1)
    hypothesis = Hypothesis(
        service=f["service"], fault_type="crash", evidence=[evidence], rationale=f["root_cause"]
    )
    diagnosis = Diagnosis(hypotheses=[hypothesis], confidence=0.5, notes=[f["note"]])
    pm = PostMortem(
        incident_id="inc-1",
        title=f["title"],
        summary=f["pm_summary"],
        impact=f["pm_summary"],
        timeline=[TimelineEntry(at=0, event=f["event"])],
        root_cause=f["root_cause"],
        service=f["service"],
        fault_type=f["signal"],
        evidence=[f["evidence"]],
        actions=[f["action"]],
        outcome="escalated",
        follow_ups=[f["follow_up"]],
    )
    return [incident_body(observation, trigger), comments.diagnosis_comment(diagnosis), render_markdown(pm)]


def _store_incident(data: Path, f: dict[str, str]) -> None:
    from graphs.checkpoint import open_checkpointer
    from graphs.graph import build_graph

    trigger = Trigger(
        source="alert",
        service=f["service"],
        signal=f["signal"],
        summary=f["summary"],
        labels={f["label_key"]: f["label_value"]},
    )
    RunRegistry(data / "runs.db").record("inc-1", trigger, f["status"])
    pm = PostMortem(
        incident_id="inc-1",
        title=f["title"],
        summary=f["pm_summary"],
        impact="",
        timeline=[],
        root_cause=f["root_cause"],
        service=f["service"],
        fault_type=f["signal"],
        evidence=[f["evidence"]],
        actions=[f["action"]],
        outcome="escalated",
        follow_ups=[f["follow_up"]],
        markdown=f["pm_summary"] + "\n" + f["title"],
    )
    saver = open_checkpointer(data / "checkpoints.db")
    try:
        graph = build_graph().compile(checkpointer=saver)
        graph.update_state(
            {"configurable": {"thread_id": "inc-1"}},
            {
                "incident_id": "inc-1",
                "trigger": trigger,
                "escalation": f["escalation"],
                "postmortem": pm,
                "timeline": [TimelineEntry(at=1e9, event=f["event"])],
            },
            as_node="document",
        )
    finally:
        saver.conn.close()


@settings(
    max_examples=40,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(FIELDS)
def test_random_text_in_every_stored_field_never_breaks_the_cli_or_the_issue_renderer(
    f: dict[str, str],
) -> None:
    # Multi-line fields keep their own lines; every other field must not add one.
    reference_fields = {
        k: (v if k in ("pm_summary", "root_cause") else "x" if v else "") for k, v in f.items()
    }
    for rendered, reference in zip(_render_issue(f), _render_issue(reference_fields), strict=True):
        assert not CONTROL.search(rendered)
        assert rendered.count("\n") == reference.count("\n")
        # no slash command
        assert not [line for line in rendered.split("\n") if line.lstrip().startswith("/")]
    for text in f.values():
        # no table cell, link, tag or code span of its own
        assert not re.search(r"(?<!\\)[|\[\]<>`]", md(text))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        _store_incident(data, f)
        for args in (
            ("incidents", "list"),
            ("incidents", "list", "--format", "json"),
            ("incidents", "show", "inc-1"),
        ):
            result = _cli(*args, "--data-dir", str(data))
            assert result.exit_code == 0, (args, result.output, result.exception)
            assert "\x1b" not in result.output


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("setting", "value", "field"),
    [
        ({"observer": {"poll_s": -1}}, "-1", "observer.poll_s"),
        ({"engineer": {"max_attempts": -5}}, "-5", "engineer.max_attempts"),
        ({"observer": {"window_s": -3}}, "-3", "observer.window_s"),
        ({"engineer": {"verify_poll_s": 0}}, "0", "engineer.verify_poll_s"),
        ({"llm": {"timeout_s": -1}}, "-1", "llm.timeout_s"),
    ],
)
def test_nonsense_settings_are_refused_from_the_file_and_the_environment(
    tmp_path: Path, setting: dict[str, Any], value: str, field: str
) -> None:
    file = tmp_path / "sregraph.yaml"
    file.write_text(yaml.safe_dump(setting))
    with pytest.raises(ConfigError, match=re.escape(field)):
        load_settings(file, environ={})
    env_name = "SREGRAPH_" + field.upper().replace(".", "__")
    with pytest.raises(ConfigError, match=re.escape(field)):
        load_settings(environ={env_name: value})


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (("--interval", "-1"), "worker.interval_s"),
        (("--alerts-port", "70000"), "alerts.port"),
        (("--http-port", "-2"), "worker.http_port"),
    ],
)
def test_nonsense_cli_flags_are_refused_before_anything_starts(
    tmp_path: Path, flags: tuple[str, ...], field: str
) -> None:
    result = _cli("worker", "--once", *flags, "--data-dir", str(tmp_path / "data"))
    assert result.exit_code == 2 and field in result.output, result.output
    assert not (tmp_path / "data").exists()


def test_missing_config_file_and_empty_data_dir_are_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(environ={"SREGRAPH_CONFIG": str(tmp_path / "nope.yaml")})
    with pytest.raises(ConfigError, match="data_dir"):
        load_settings(environ={"SREGRAPH_DATA_DIR": ""})
    monkeypatch.chdir(tmp_path)
    result = _cli("incidents", "list", env={"SREGRAPH_DATA_DIR": ""})
    assert result.exit_code == 2 and "data_dir" in result.output
    assert list(tmp_path.iterdir()) == []  # nothing written into the cwd


# --------------------------------------------------------------------------- provenance, not text


def _human_commit(repo: Path, service: str, version: str, message: str, author: str, at: float) -> str:
    (repo / "services" / f"{service}.yaml").write_text(f"version: {version}\n")
    env = {**os.environ, "GIT_AUTHOR_DATE": f"@{int(at)} +0000", "GIT_COMMITTER_DATE": f"@{int(at)} +0000"}
    run = [
        "git",
        "-C",
        str(repo),
        "-c",
        f"user.name={author}",
        "-c",
        "user.email=h@example.com",
        "-c",
        "commit.gpgsign=false",
    ]
    subprocess.run([*run, "commit", "-qam", message], check=True, env=env)
    return subprocess.run(
        [*run, "rev-parse", "HEAD"], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


@pytest.mark.parametrize(
    ("author", "message"),
    [
        ("sregraph", "payments 2.0.0-rc1"),
        ("sregraph-bot <bot@x>", "routine"),
        ("mallory", 'Revert "payments 1.4.0"'),
        (
            "mallory",
            "bad\n\nSregraph-Kind: rollback\nSregraph-Services: frontend\nSregraph-Signature: v1:" + "0" * 64,
        ),
    ],
)
def test_author_names_messages_and_unsigned_trailers_cannot_hide_a_bad_change(
    tmp_path: Path, author: str, message: str
) -> None:
    tb = make_toolbox(tmp_path, FakeRuntime.up(TOPOLOGY), FakeHealth())
    sha = _human_commit(tmp_path / "repo", "payments", "2.0.0-rc1", message, author, FAULT_AT - 20)
    [change] = [c for c in tb.gitops.history() if c.sha == sha]
    assert (change.ours, change.kind, change.services) == (False, "deploy", ["payments"])
    for service in TOPOLOGY:
        write_series(tb.telemetry, service, {"error_ratio": 0.6})
    error_traces(tb.telemetry, "payments")
    diagnosis = analyst(tb).diagnose(observe(tb))
    assert diagnosis.top is not None
    assert sha in {e.ref for e in diagnosis.top.evidence if e.kind == "change"}


def test_a_copied_signature_does_not_vouch_for_other_content(tmp_path: Path) -> None:
    tb = make_toolbox(tmp_path, FakeRuntime.up(TOPOLOGY), FakeHealth())
    ops = tb.gitops
    assert isinstance(ops, LocalGitOps)
    pr = ops.propose(
        "payments", {"version": "1.3.9"}, "rollback payments", "revert", key="k", kind="rollback"
    )
    merged = ops.merge(pr.id)
    [own] = [c for c in ops.history() if c.sha == merged.merge_sha]
    assert own.ours and own.kind == "rollback"
    signature = next(line for line in own.message.splitlines() if line.startswith(SIGNATURE_TRAILER))
    sha = _human_commit(
        tmp_path / "repo",
        "payments",
        "6.6.6",
        f"x\n\nSregraph-Kind: rollback\nSregraph-Services: payments\n{signature}",
        "eve",
        NOW,
    )
    [forged] = [c for c in ops.history() if c.sha == sha]
    assert not forged.ours and forged.kind == "deploy"
    # A signature made with any other key is not sregraph's either.
    blob = git_blob_id(b"version: 6.6.6\n")
    other = commit_signature(b"not-the-key", "rollback", ["payments"], {"services/payments.yaml": blob})
    sha = _human_commit(
        tmp_path / "repo",
        "payments",
        "7.7.7",
        f"y\n\nSregraph-Kind: rollback\nSregraph-Services: payments\n{SIGNATURE_TRAILER}: {other}",
        "eve",
        NOW,
    )
    assert not [c for c in ops.history() if c.sha == sha][0].ours


def test_the_merge_pin_lives_in_the_ledger_not_in_the_editable_pr_body() -> None:
    clock = ManualClock(T0)
    server = FakeGitHub("acme", "ops", clock=clock.now)
    server.add_user(BOT, role="write", token=BOT_TOKEN)
    alice = server.add_user("alice", role="maintain")
    server.seed(SEED, SEED_MESSAGE, at=T0 - 600)
    with server, make_gitops(server, clock) as gitops:
        pr = gitops.propose(
            "payments", {"version": "1.3.0", "replicas": 1}, "rollback payments", "why", key="pin-1"
        )
        # A human pushes to the PR branch and removes the pin from the PR body.
        server.commit({"services/payments.yaml": "version: 6.6.6\nreplicas: 0\n"}, "tweak", branch=pr.branch)
        human = Github(base_url=server.base_url, auth=Auth.Token(alice))
        human.get_repo(REPO).get_pull(pr.id).edit(body="looks fine, merge it")
        with pytest.raises(Refused, match="moved"):
            gitops.merge(pr.id)
        pinned = server.file("services/payments.yaml")
        assert pinned is not None and "6.6.6" not in pinned
        # A PR sregraph never proposed, on a branch named like its own, is not merged either.
        repo = human.get_repo(REPO)
        repo.create_git_ref("refs/heads/sregraph/evil", server.refs["refs/heads/main"])
        server.commit(
            {"services/payments.yaml": "version: 6.6.6\nreplicas: 0\n"}, "evil", branch="sregraph/evil"
        )
        evil = repo.create_pull(base="main", head="sregraph/evil", title="rollback payments", body="")
        with pytest.raises(Refused, match="no pin"):
            gitops.merge(evil.number)
        human.close()
    final = server.file("services/payments.yaml")
    assert final is not None and "6.6.6" not in final


# --------------------------------------------------------------------------- one redactor on every outward path


def test_every_outward_path_redacts_sregraphs_secrets(secret_env: dict[str, str], tmp_path: Path) -> None:
    leak = " ".join(secret_env.values())
    tracker = LocalIncidentSurface(tmp_path / "incidents.db")
    issue, _ = tracker.open_issue(f"title {leak}", f"body {leak}", ["incident"], "fp")
    tracker.comment(issue.id, f"comment {leak}")
    stored = tracker.get(issue.id)
    JsonlNotifier(tmp_path / "n.jsonl").notify("inc-1", "opened", f"note {leak}")
    console = io.StringIO()
    ConsoleNotifier(Console(file=console, width=300)).notify("inc-1", "opened", f"note {leak}")
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed with %s", (leak,), None)
    log_line = JsonFormatter().format(record)
    tb = make_toolbox(tmp_path, FakeRuntime.up(TOPOLOGY), FakeHealth())
    assert isinstance(tb.gitops, LocalGitOps)
    pr = tb.gitops.propose("payments", {"version": "1.3.0"}, f"pr {leak}", f"pr body {leak}")
    commit = tb.gitops._git.text("log", "-1", "--format=%B", pr.head_sha)
    from memory.store import PostMortemStore

    pm = PostMortem(
        incident_id="inc-1",
        title="t",
        summary=f"s {leak}",
        impact="",
        timeline=[],
        root_cause=f"r {leak}",
        service="payments",
        fault_type="crash",
        evidence=[leak],
        actions=[],
        outcome="escalated",
        follow_ups=[],
    )
    store = PostMortemStore(tmp_path / "memory")
    store.add(pm)
    remembered = store.get("inc-1")
    assert remembered is not None
    outward = [
        stored.title,
        stored.body,
        stored.comments[0].body,
        (tmp_path / "n.jsonl").read_text(),
        console.getvalue(),
        log_line,
        pr.title,
        pr.body,
        commit,
        remembered.model_dump_json(),
    ]
    for text in outward:
        assert not [v for v in secret_env.values() if v in text], text
        assert "[REDACTED]" in text or "\\[REDACTED\\]" in text, text


def test_the_librarian_redacts_its_post_mortem(secret_env: dict[str, str], tmp_path: Path) -> None:
    from agents.librarian import Librarian

    tb = make_toolbox(tmp_path, FakeRuntime.up(TOPOLOGY), FakeHealth())
    state: Any = {
        "incident_id": "inc-1",
        "timeline": [TimelineEntry(at=1.0, event=f"detected: {secret_env['OPENAI_API_KEY']}")],
        "escalation": f"token {secret_env['GITHUB_TOKEN']} rejected",
    }
    pm = Librarian(tb).write(state)
    assert not [v for v in secret_env.values() if v in pm.model_dump_json()]


# --------------------------------------------------------------------------- test machinery stays in tests


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_product_module_imports_test_machinery_or_reads_a_kill_hook() -> None:
    """Product packages never import tests/ (the fake GitHub, the kill hooks) and never kill their own process.

    evals/ holds benchmarks; the synthetic world they drive is evals/harness.py, whose kill hooks are the tests'.
    """
    offenders = []
    for package in PRODUCT_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if any(name == "tests" or name.startswith("tests.") for name in _imports(path)):
                offenders.append(str(path.relative_to(ROOT)))
            if re.search(r"os\.kill\(\s*os\.getpid\(\)|KILL_AFTER", path.read_text()):
                offenders.append(f"{path.relative_to(ROOT)} (kill hook)")
    assert offenders == []
    probe = (
        "import sys, sregraph.cli, sregraph.worker, sregraph.engine, tools.github; print(sorted(m for m "
        "in sys.modules if m.split('.')[0] == 'tests'))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"
