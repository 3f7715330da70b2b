"""`DockerRuntime` on a real container engine: podman serving the Docker API (scripts/container-engine.sh).

The module starts the engine once (installing podman from Debian if needed and building the services' image
from a local root filesystem; cached, so only the first run on a machine pays for the build) and stops it
afterwards unless it was already running. Every test here needs it, and all of them are skipped, saying why,
only when it cannot start.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TypeVar

import docker
import pytest
import yaml

from sregraph.config import Settings, load_settings
from sregraph.localenv.app import LocalApp
from sregraph.localenv.runtimes import APP_IMAGE
from tests.localapp import ROOT, WARMUP_S, engine_for, run_incident, write_config
from tools.base import ConfigError, NotFound, Refused, ToolError, TransientError
from tools.docker_runtime import MANAGED, PROJECT, REPLICA, ContainerSpec, DockerRuntime, connect

ENGINE_SCRIPT = ROOT / "scripts" / "container-engine.sh"
T = TypeVar("T")

# A service that says it is up, then sleeps; SIGTERM makes it exit 0 (as PID 1 it has no default handler).
SLEEPER = [
    "python3",
    "-c",
    (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "sys.stdout.write('up replica ' + os.environ.get('REPLICA', '0') + '\\n')\n"
        "time.sleep(600)\n"
    ),
]
# Allocates memory (touched, so it is resident) until the kernel's OOM killer stops it.
HOG = [
    "python3",
    "-c",
    "import time\nx = []\nwhile True:\n    x.append(b'1' * 4_000_000)\n    time.sleep(0.01)\n",
]


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 15.0) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def _engine(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ENGINE_SCRIPT), *args],
        check=False,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def engine_url() -> Iterator[str]:
    """The engine's Docker API URL; skips the module, with the script's reason, if it cannot start."""
    was_running = _engine("status", timeout=30).returncode == 0
    try:
        started = _engine("start")
    except subprocess.TimeoutExpired:
        pytest.skip("the container engine did not start within 300 s (scripts/container-engine.sh start)")
    if started.returncode != 0:
        reason = " ".join(started.stderr.strip().splitlines()[-3:]) or f"exit code {started.returncode}"
        pytest.skip(f"no container engine: scripts/container-engine.sh start failed: {reason}")
    yield "unix://" + started.stdout.strip().splitlines()[-1]
    if not was_running:
        _engine("stop", timeout=60)


@pytest.fixture
def client(engine_url: str) -> Iterator[docker.DockerClient]:
    sdk = connect(engine_url, timeout=20)
    yield sdk
    sdk.close()


@pytest.fixture
def project() -> str:
    return f"sregraph-test-{uuid.uuid4().hex[:8]}"


def sleeper_specs(**extra: ContainerSpec) -> dict[str, ContainerSpec]:
    specs = {
        "sleeper": ContainerSpec(
            name="sleeper", image=APP_IMAGE, command=SLEEPER, env={"GREETING": "hi"}, stop_grace_s=2
        )
    }
    specs.update(extra)
    return specs


@pytest.fixture
def runtime(client: docker.DockerClient, project: str) -> Iterator[DockerRuntime]:
    rt = DockerRuntime(client, sleeper_specs(), project)
    yield rt
    rt.shutdown_all()


def project_containers(client: docker.DockerClient, project: str) -> list[str]:
    names = []
    for c in client.containers.list(all=True, filters={"label": [f"{PROJECT}={project}"]}):
        assert c.name is not None  # every container has a name
        names.append(c.name)
    return sorted(names)


# --------------------------------------------------------------------------- ownership


def test_foreign_container_is_refused_and_left_untouched(
    client: docker.DockerClient, runtime: DockerRuntime
) -> None:
    name = runtime.container_name("sleeper", 0)
    # Created straight through the SDK, without our labels, on the very name our replica 0 would take.
    foreign = client.containers.run(APP_IMAGE, SLEEPER, name=name, detach=True, network_mode="host")
    other = client.containers.run(
        APP_IMAGE,
        SLEEPER,
        name=f"{runtime.project}-stranger",
        detach=True,
        network_mode="host",
        labels={MANAGED: "true", PROJECT: "someone-else"},
    )
    try:

        def foreign_running() -> bool:
            foreign.reload()
            return bool(foreign.status == "running")

        wait_for("the foreign container to run", foreign_running)
        for action in (
            runtime.restart,
            runtime.stop,
            runtime.start,
            runtime.kill,
            lambda s: runtime.scale(s, 2),
        ):
            with pytest.raises(Refused, match=f"{name}.*not"):
                action("sleeper")
        assert foreign.id is not None and other.name is not None
        for target in (foreign.id, name, other.name):
            with pytest.raises(Refused, match="does not carry the labels"):
                runtime.container(target)
        # Nothing changed: the foreign containers run as before and nothing of ours was created.
        for container, started in ((foreign, foreign.attrs["State"]["StartedAt"]), (other, None)):
            container.reload()
            assert container.status == "running"
            if started:
                assert container.attrs["State"]["StartedAt"] == started
        assert project_containers(client, runtime.project) == []
        assert runtime.status("sleeper").running is False
    finally:
        foreign.remove(force=True)
        other.remove(force=True)
    # Once the name is free, the same call works.
    assert runtime.start("sleeper").running


def test_unknown_service_bad_replicas_and_engine_errors(
    client: docker.DockerClient, project: str, runtime: DockerRuntime
) -> None:
    with pytest.raises(NotFound, match="unknown service 'nope'; known services: sleeper"):
        runtime.status("nope")
    with pytest.raises(ConfigError, match="replicas must be between 1 and 8"):
        runtime.scale("sleeper", 0)
    with pytest.raises(ConfigError, match="signal"):
        runtime.kill("sleeper", "SIGNOPE")
    with pytest.raises(ConfigError, match="project"):
        DockerRuntime(client, sleeper_specs(), "Bad Project!")
    missing = DockerRuntime(
        client, {"x": ContainerSpec(name="x", image="localhost/no-such-image:1", command=["true"])}, project
    )
    with pytest.raises(ToolError, match="image not found.*container-engine.sh"):
        missing.start("x")
    unreachable = DockerRuntime(
        connect("unix:///nonexistent/engine.sock", timeout=2), sleeper_specs(), project
    )
    with warnings.catch_warnings():
        # The SDK's unix-socket connection does not close its socket when connect() fails; collect it here
        # rather than let its ResourceWarning land in whichever test runs next.
        warnings.simplefilter("ignore", ResourceWarning)
        with pytest.raises(TransientError, match="did not answer"):
            unreachable.status("sleeper")
        unreachable.close()
        gc.collect()


# --------------------------------------------------------------------------- lifecycle and state


def test_status_kill_restart_count_logs_and_state_survive_a_new_runtime(
    client: docker.DockerClient, runtime: DockerRuntime
) -> None:
    status = runtime.start("sleeper")
    assert (
        status.running
        and status.pid
        and status.started_at
        and status.restarts == 0
        and status.exit_code is None
    )
    assert wait_for("the first log line", lambda: runtime.logs("sleeper") == ["up replica 0"])
    assert status.memory_mb is not None and status.memory_mb > 0
    [stats] = runtime.stats("sleeper")
    assert stats.running and stats.memory_mb and stats.pids

    killed = runtime.kill("sleeper")
    assert (killed.running, killed.exit_code, killed.oom_killed, killed.restarts) == (False, 137, False, 0)

    restarted = runtime.restart("sleeper")
    assert restarted.running and restarted.restarts == 1 and restarted.exit_code is None
    # The counter lives on the containers, so another runtime object (another process) reads the same.
    again = DockerRuntime(client, sleeper_specs(), runtime.project)
    assert again.status("sleeper").restarts == 1

    # The handler is installed before the first line, so SIGTERM cannot arrive before it.
    wait_for("the restarted sleeper to log", lambda: runtime.logs("sleeper") == ["up replica 0"])
    termed = runtime.kill("sleeper", "SIGTERM")
    assert (termed.running, termed.exit_code) == (False, 0)
    assert runtime.start("sleeper").restarts == 1  # starting a stopped service is not a restart
    wait_for("the started sleeper to log", lambda: runtime.logs("sleeper") == ["up replica 0"] * 2)
    stopped = runtime.stop("sleeper")
    assert (stopped.running, stopped.exit_code, stopped.replicas) == (False, 0, 1)
    assert runtime.restart("sleeper").restarts == 2


def test_scale_up_and_down_with_labelled_replicas(
    client: docker.DockerClient, runtime: DockerRuntime
) -> None:
    runtime.start("sleeper")
    status = runtime.scale("sleeper", 3)
    assert status.replicas == 3 and status.running
    names = [runtime.container_name("sleeper", i) for i in range(3)]
    assert project_containers(client, runtime.project) == names
    for i, name in enumerate(names):
        container = runtime.container(name)
        assert container.labels[REPLICA] == str(i)
        wait_for(
            f"{name} to log",
            partial(lambda c, line: c.logs().decode() == line, container, f"up replica {i}\n"),
        )
    assert [s.replica for s in runtime.stats("sleeper")] == [0, 1, 2]
    # A restart keeps the replica count and bumps the counter on every replica.
    assert runtime.restart("sleeper").replicas == 3
    down = runtime.scale("sleeper", 1)
    assert (down.replicas, down.restarts, down.running) == (1, 1, True)
    assert project_containers(client, runtime.project) == names[:1]
    # A stopped service keeps its replica count; its extra replicas start with it.
    runtime.stop("sleeper")
    assert runtime.scale("sleeper", 2).replicas == 2
    assert runtime.start("sleeper").running
    assert all(s.running for s in runtime.stats("sleeper"))


def test_memory_limit_oom_kill_is_reported(client: docker.DockerClient, project: str) -> None:
    specs = {"hog": ContainerSpec(name="hog", image=APP_IMAGE, command=HOG, mem_limit="48m")}
    rt = DockerRuntime(client, specs, project)
    try:
        rt.start("hog")
        wait_for("the kernel to kill the hog", lambda: not rt.status("hog").running)
        status = rt.status("hog")
        # OOMKilled comes from the engine (on this podman, through the hook scripts/container-engine.sh installs).
        assert (status.exit_code, status.oom_killed) == (137, True)
    finally:
        rt.shutdown_all()


# --------------------------------------------------------------------------- incident loops on containers


@contextmanager
def running_docker_app(settings: Settings, engine_url: str) -> Iterator[LocalApp]:
    """The three services as containers, with load and a baseline; always removed afterwards."""
    local = LocalApp(settings.data_dir / "app", runtime="docker", docker_url=engine_url)
    try:
        local.start()
        local.start_load()
        time.sleep(WARMUP_S)
        yield local
    finally:
        local.stop()
        local.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(write_config(tmp_path), environ={})


@pytest.fixture
def app(settings: Settings, engine_url: str) -> Iterator[LocalApp]:
    with running_docker_app(settings, engine_url) as local:
        yield local


def test_crash_is_restarted_on_containers(
    settings: Settings, app: LocalApp, client: docker.DockerClient
) -> None:
    engine = engine_for(settings, app)
    crashed = app.inject("crash", "payments")
    assert "exit_code=137" in crashed.detail
    state = run_incident(engine)
    assert state["status"] == "resolved", state.get("escalation")
    assert (state["diagnosis"].top.service, state["diagnosis"].top.fault_type) == ("payments", "crash")
    assert [(a.action.kind, a.action.service, a.status) for a in state["actions"]] == [
        ("restart", "payments", "done")
    ]
    status = app.runtime.status("payments")
    assert status.running and status.restarts == 1
    assert engine.toolbox.incidents.get(state["issue_id"]).state == "closed"
    engine.close()
    # The services really are containers, and a new LocalApp on the directory re-attaches to them.
    project = app.runtime_choice["project"]
    assert project_containers(client, project) == sorted(f"{project}-{s}-0" for s in app.services())
    again = LocalApp(app.data_dir)
    try:
        assert again.runtime_choice["kind"] == "docker"
        assert again.status("payments").restarts == 1 and again.status("payments").running
        with pytest.raises(ConfigError, match="runs on 'docker'"):
            LocalApp(app.data_dir, runtime="process")
    finally:
        again.close()


def test_memory_leak_is_restarted_on_containers(settings: Settings, app: LocalApp) -> None:
    engine = engine_for(settings, app)
    app.inject("memory_leak", "checkout", mb_per_s=40)
    state = run_incident(engine)
    assert state["status"] == "resolved", state.get("escalation")
    assert (state["diagnosis"].top.service, state["diagnosis"].top.fault_type) == ("checkout", "memory_leak")
    assert [(a.action.kind, a.action.service) for a in state["actions"]] == [("restart", "checkout")]
    assert app.runtime.status("checkout").restarts == 1
    engine.close()


def test_bad_deploy_is_rolled_back_on_containers(settings: Settings, app: LocalApp) -> None:
    engine = engine_for(settings, app)
    app.inject("bad_deploy", "payments")
    assert app.gitops.config("payments")["version"] == "2.0.0-rc1"
    assert "version=2.0.0-rc1" in app.health.check("payments").detail  # the new container read the new config
    state = run_incident(engine)
    assert state["status"] == "resolved", state.get("escalation")
    assert (state["diagnosis"].top.service, state["diagnosis"].top.fault_type) == ("payments", "bad_deploy")
    assert [a.action.kind for a in state["actions"]] == ["rollback"]
    [pr] = app.gitops.pull_requests("merged")
    assert pr.service == "payments"
    assert yaml.safe_load(app.config_path("payments").read_text())["version"] == "1.4.0"
    assert "version=1.4.0" in app.health.check("payments").detail
    engine.close()


# --------------------------------------------------------------------------- the whole demo on containers

DEMO_S = 540
"""The demo's nine loops took 1 min 54 s to 2 min 30 s on podman on a shared 2-core machine; CI may be slower."""


@pytest.mark.timeout(DEMO_S + 60)
def test_the_whole_demo_recovers_every_fault_on_containers(
    tmp_path: Path, engine_url: str, client: docker.DockerClient
) -> None:
    """`sregraph demo --runtime docker`: every fault of the default sequence recovered, root cause right, exit 0."""
    from sregraph.demo import DEFAULT_SEQUENCE

    began = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sregraph",
            "demo",
            "--runtime",
            "docker",
            "--format",
            "json",
            "--data-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DEMO_S,
        env={**os.environ, "DOCKER_HOST": engine_url},
    )
    took = time.monotonic() - began
    assert result.returncode == 0, result.stderr[-4000:]
    rows = json.loads(result.stdout)
    assert [(r["fault"], r["service"]) for r in rows] == [(f, s) for f, s, _ in DEFAULT_SEQUENCE]
    wrong = [r for r in rows if not (r["detected"] and r["recovered"] and r["root_cause_correct"])]
    assert not wrong, f"after {took:.0f}s: {wrong}"
    # The bad deploy and the config change are reverted, not restarted away. Caught mid-redeploy (health refused
    # while the container is recreated), the fault reads as a crash first: the analyst allows that one restart,
    # then reverts the change it did not fix (seen once in CI: "restart payments, config_change payments").
    for row, revert in ((rows[4], "rollback payments"), (rows[7], "config_change payments")):
        assert row["action"] in (revert, f"restart payments, {revert}"), row
    # The services ran as containers, and the demo removed them all.
    runtime = json.loads((tmp_path / "demo" / "app" / "app.json").read_text())["runtime"]
    assert runtime["kind"] == "docker"
    assert project_containers(client, runtime["project"]) == []
