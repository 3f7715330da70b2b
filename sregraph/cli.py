"""The `sregraph` command line.

Commands import their machinery (the engine, the worker, the API server, the local app, memory) when they run,
so `sregraph --help` and the light commands stay fast.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Column, Table

from evals.eval_cli import eval_app
from evals.nezha_cli import nezha
from sregraph.api_auth import ApiStore
from sregraph.bench import bench
from sregraph.config import Settings, alerts_token, load_settings
from sregraph.datadir import data_dir_to_read
from sregraph.dataset_cli import dataset
from sregraph.scenario import bundled, inject, load_scenario, start_app, trigger_for
from sregraph.slo_cli import release_gate_command, slo
from sregraph.terminal import results_console
from tools.base import SregraphError
from tools.display import term, term_block
from tools.domain import ApprovalDecision, Trigger
from tools.sql import PostgresDatabase, open_database

app = typer.Typer(
    help="sregraph: a team of SRE agents that runs the incident lifecycle.", no_args_is_help=True
)
incidents_app = typer.Typer(help="Incidents the graph has handled.", no_args_is_help=True)
memory_app = typer.Typer(help="Long-term memory of post-mortems.", no_args_is_help=True)
token_app = typer.Typer(help="Tokens of the HTTP API (`sregraph worker --api-port`).", no_args_is_help=True)
app.add_typer(incidents_app, name="incidents")
app.add_typer(memory_app, name="memory")
app.add_typer(token_app, name="token")
app.add_typer(slo, name="slo")
app.command("release-gate")(release_gate_command)
bench.add_typer(nezha, name="nezha")
app.add_typer(bench, name="bench")
app.add_typer(dataset, name="dataset")
app.add_typer(eval_app)

console = Console(stderr=True)
out = results_console()

ConfigOpt = typer.Option(
    None, "--config", "-c", help="sregraph.yaml to read (default: ./sregraph.yaml if present)."
)
DataOpt = typer.Option(
    None, "--data-dir", help="Where checkpoints, incidents, memory and the local app live."
)


def _settings(config: Path | None, data_dir: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config, data_dir=data_dir, **overrides)
    except SregraphError as exc:
        console.print(f"[red]error:[/red] {term(exc)}")
        raise typer.Exit(2) from exc


def _read_settings(config: Path | None, data_dir: Path | None) -> Settings:
    """Settings of a command that only reads: without --data-dir, the data dir or the demo's, the newer."""
    settings = _settings(config, data_dir)
    if data_dir is not None:
        return settings
    choice = data_dir_to_read(settings.data_dir)
    if choice.note:
        console.print(f"[dim]{term(choice.note)}[/dim]", soft_wrap=True)
    return settings.model_copy(update={"data_dir": choice.path})


def _read_by_default() -> Path | None:
    """The data dir `incidents`, `memory` and `slo` read without a flag (None if ./sregraph.yaml is bad)."""
    try:
        return data_dir_to_read(load_settings(None).data_dir).path
    except SregraphError:
        return None


def _prog() -> str:
    """How this process was started, so a printed command can be pasted as it is (`.venv/bin/sregraph`)."""
    return sys.argv[0] if Path(sys.argv[0]).name == "sregraph" else "python -m sregraph"


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except SregraphError as exc:
        console.print(f"[red]error:[/red] {term(exc)}")
        raise typer.Exit(2) from exc


def _progress(incident_id: str, node: str, update: dict[str, Any]) -> None:
    for entry in update.get("timeline", []):
        console.print(
            f"[dim]{time.strftime('%H:%M:%S', time.localtime(entry.at))}[/dim] "
            f"[cyan]{term(incident_id)}[/cyan] [bold]{node:>13}[/bold]  {term(entry.event)}",
            soft_wrap=True,
        )


def _summary(state: dict[str, Any]) -> dict[str, Any]:
    diagnosis = state.get("diagnosis")
    top = diagnosis.top if diagnosis else None
    return {
        "incident_id": state.get("incident_id"),
        "status": state.get("status"),
        "waiting_for_approval": state.get("waiting", False),
        "issue_id": state.get("issue_id"),
        "root_cause_service": top.service if top else None,
        "fault_type": top.fault_type if top else None,
        "confidence": diagnosis.confidence if diagnosis else None,
        "actions": [f"{a.action.kind} {a.action.service}: {a.status}" for a in state.get("actions", [])],
        "recovered": bool(state.get("verification") and state["verification"].recovered),
        "escalation": state.get("escalation"),
        "similar": [s.incident_id for s in diagnosis.similar] if diagnosis else [],
        "tokens": state.get("tokens", 0),
    }


def _engine(settings: Settings, start: bool = False) -> Any:
    """An engine on the local app: started with load (`run`), or attached as it is (worker, approve)."""
    from sregraph.engine import Engine, local_toolbox
    from sregraph.localenv.app import LocalApp

    # Attaching must never start services: a stopped service is what the agents are there to notice.
    local = start_app(settings) if start else LocalApp(settings.data_dir / "app")
    return Engine(settings, local_toolbox(settings, local), progress=_progress), local


@app.command()
def run(
    scenario: str = typer.Argument("crash-payments", help="A bundled scenario name or a scenario YAML file."),
    alert: Path | None = typer.Option(
        None, help="Run on an alert JSON file (a Trigger) instead of injecting a fault."
    ),
    keep_running: bool = typer.Option(
        False, help="Leave the local app running afterwards (needed to approve later)."
    ),
    fmt: str = typer.Option("text", "--format", help="text or json"),
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataOpt,
) -> None:
    """Run one incident: start the local app, inject the scenario's fault, and let the agents handle it."""
    settings = _settings(config, data_dir)
    with _errors():
        if alert is not None:
            try:
                trigger = Trigger.model_validate_json(alert.read_text())
            except (OSError, ValueError) as exc:
                raise typer.BadParameter(f"{alert}: {exc}") from exc
            spec = None
        else:
            spec = load_scenario(scenario)
        engine, local = _engine(settings, start=True)
        if keep_running:
            # Load must outlive this process, or a later `approve` would verify against silence.
            local.start_background_load()
        try:
            if spec is not None:
                console.print(f"[bold]scenario[/bold] {term(spec.name)}: {term(spec.description)}")
                console.print(f"warming up for {spec.warmup_s:.0f}s so the observer has a baseline…")
                time.sleep(spec.warmup_s)
                inject(local, spec)
                trigger = trigger_for(spec, time.time())
            state = engine.start(trigger)
        finally:
            if not keep_running:
                local.stop()
            engine.close()
    summary = _summary(state)
    if fmt == "json":
        out.print_json(json.dumps(summary))
    else:
        _print_summary(summary)
    if summary["waiting_for_approval"]:
        console.print(
            f"waiting for approval: [bold]sregraph approve {term(summary['incident_id'])}[/bold] or reject"
        )
    ok = summary["status"] in ("resolved", "healthy") or summary["waiting_for_approval"]
    raise typer.Exit(0 if ok else 1)


def _print_summary(summary: dict[str, Any]) -> None:
    table = Table(title=f"incident {term(summary['incident_id'])}", show_header=False)
    for key, value in summary.items():
        table.add_row(key, term(", ".join(map(str, value)) if isinstance(value, list) else value))
    out.print(table)


def _decide(
    incident_id: str, approved: bool, by: str, reason: str, config: Path | None, data_dir: Path | None
) -> None:
    settings = _settings(config, data_dir)
    with _errors():
        engine, local = _engine(settings)
        try:
            state = engine.decide(incident_id, ApprovalDecision(approved=approved, by=by, reason=reason))
        finally:
            engine.close()
    _print_summary(_summary(state))


@app.command()
def approve(
    incident_id: str,
    by: str = typer.Option("cli", help="Who approves (recorded on the incident)."),
    reason: str = "",
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataOpt,
) -> None:
    """Approve the plan of an incident waiting at the approval gate; the graph resumes and acts."""
    _decide(incident_id, True, by, reason, config, data_dir)


@app.command()
def reject(
    incident_id: str,
    by: str = typer.Option("cli", help="Who rejects (recorded on the incident)."),
    reason: str = "",
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataOpt,
) -> None:
    """Reject the plan of an incident waiting at the approval gate; the incident is escalated."""
    _decide(incident_id, False, by, reason, config, data_dir)


@app.command()
def demo(
    fmt: str = typer.Option("text", "--format", help="text or json (the scorecard)"),
    runtime: str | None = typer.Option(
        None, help="process (default) or docker (start scripts/container-engine.sh first)"
    ),
    faults: str | None = typer.Option(
        None, help="Comma-separated FAULT:SERVICE pairs instead of the full sequence."
    ),
    dashboard: bool = typer.Option(
        True,
        help="Print where to watch the dashboard, with a read-only token (the API serves either way: "
        "payments ships its telemetry to it).",
    ),
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataOpt,
) -> None:
    """Start the app and the worker, inject every fault in turn, watch the agents handle them, print a scorecard."""
    from sregraph.demo import DEFAULT_SEQUENCE, as_rows, demo_settings, next_commands, run_demo

    settings = demo_settings(_settings(config, data_dir, runtime=runtime))
    sequence = DEFAULT_SEQUENCE
    if faults:
        defaults = {(f, s): p for f, s, p in DEFAULT_SEQUENCE}
        try:
            pairs = [tuple(item.strip().split(":")) for item in faults.split(",") if item.strip()]
            sequence = [(f, s, defaults.get((f, s), {})) for f, s in pairs]
        except ValueError as exc:
            raise typer.BadParameter("use FAULT:SERVICE pairs, e.g. crash:payments,latency:checkout") from exc
    console.print(
        "[bold]sregraph demo[/bold] — the demo policy auto-approves every allowed action (see "
        "sregraph/demo_policy.yaml)"
    )
    with _errors():
        results = run_demo(
            settings,
            sequence,
            progress=_progress,
            say=lambda text: console.print(text, soft_wrap=True),
            dashboard=dashboard,
        )
    rows = as_rows(results)
    if fmt == "json":
        out.print_json(json.dumps(rows))
    else:
        table = Table(title="sregraph demo: one incident per fault")
        for column in (
            "fault",
            "service",
            "detected",
            "root cause",
            "fault type",
            "action",
            "recovered",
            "TTD s",
            "seen by",
            "TTR s",
            "memory",
        ):
            table.add_column(column, no_wrap=column in ("fault", "service", "memory"))
        for r in rows:
            table.add_row(
                r["fault"],
                r["service"],
                _tick(r["detected"]),
                f"{r['root_cause_service'] or '–'} {_tick(r['root_cause_correct'])}",
                r["fault_type"] or "–",
                r["action"] or "–",
                _tick(r["recovered"]),
                f"{r['mttd_s']:.1f}" if r["mttd_s"] is not None else "–",
                r["detected_by"].replace("ensemble:", "") or "–",
                f"{r['mttr_s']:.1f}" if r["mttr_s"] is not None else "–",
                r["memory_hit"] or "–",
            )
        out.print(table)
    commands = next_commands(results, settings.data_dir, _read_by_default(), _prog())
    if commands:
        console.print("try next (incidents, diagnoses and post-mortems of this demo):")
        for command in commands:
            console.print(f"  {term(command)}", soft_wrap=True, highlight=False)
    raise typer.Exit(0 if results and all(r.recovered for r in results) else 1)


@app.command()
def chaos(
    fault: str = typer.Argument(
        ...,
        help="crash, latency, error-rate, memory-leak, bad-deploy, dependency-down, cpu-saturation, "
        "conversion-drop, disk-full",
    ),
    service: str = typer.Argument(..., help="frontend, checkout or payments"),
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataOpt,
) -> None:
    """Inject a fault into the running local app (started by `run --keep-running` or a worker's app)."""
    from sregraph.demo import validate
    from sregraph.localenv.app import LocalApp

    settings = _settings(config, data_dir)
    with _errors():
        [(name, target, params)] = validate([(fault, service, {})])
        if not (settings.data_dir / "app" / "app.json").exists():
            raise SregraphError(
                f"no local app under {settings.data_dir / 'app'}; start one with `sregraph run --keep-running`"
            )
        local = LocalApp(settings.data_dir / "app")
        try:
            injection = local.inject(name, target, **params)
        finally:
            local.close()
    out.print(f"injected {term(injection.fault)} into {term(injection.service)}: {term(injection.detail)}")


def _when(at: Any, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A stored timestamp for display; a damaged one shows as `?` instead of crashing the listing."""
    try:
        return time.strftime(fmt, time.localtime(float(at)))
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def _tick(value: bool) -> str:
    return "✔" if value else "✘"


@app.command()
def worker(
    once: bool = typer.Option(False, help="Resume unfinished incidents, scan once, and exit."),
    interval: float | None = typer.Option(
        None, help="Seconds between scans (default: worker.interval_s, 2)."
    ),
    http_port: int | None = typer.Option(None, help="Serve /metrics and /healthz on 127.0.0.1:PORT."),
    alerts_port: int | None = typer.Option(
        None,
        help="Take Alertmanager webhooks on POST /alerts at this port (0: any free port); enables alerts.",
    ),
    insecure_no_auth: bool = typer.Option(
        False, "--insecure-no-auth", help="Take webhooks without a bearer token (loopback host only; warned)."
    ),
    api_port: int | None = typer.Option(
        None,
        help="Serve the HTTP API (incidents, approvals, memory; docs at /docs) on this port (0: any free port).",
    ),
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataOpt,
) -> None:
    """Long-lived loop: resume unfinished incidents, watch telemetry and alerts, open and handle new ones."""
    from sregraph.observability import HealthState, configure_logging, serve
    from sregraph.worker import Worker

    # Flags go through the same validated settings as the file and the environment.
    alerts_flags: dict[str, Any] = {"enabled": True, "port": alerts_port} if alerts_port is not None else {}
    if insecure_no_auth:
        alerts_flags["insecure_no_auth"] = True
    settings = _settings(
        config,
        data_dir,
        worker={"interval_s": interval, "http_port": http_port, "api_port": api_port},
        alerts=alerts_flags or None,
    )
    configure_logging(logging.INFO)
    with _errors():
        engine, _ = _engine(settings)
        interval_s = settings.worker.interval_s
        health = HealthState(stale_after_s=max(60.0, 10 * interval_s))
        if settings.worker.http_port is not None:
            server = serve(engine.metrics, health, port=settings.worker.http_port)
            console.print(
                f"metrics and health on http://127.0.0.1:{server.server_address[1]}/metrics, /healthz"
            )
        the_worker = Worker(engine, health)
        alerts = settings.alerts
        if alerts.enabled:
            receiver = the_worker.serve_alerts(alerts, token=alerts_token())
            if receiver.token:
                console.print(f"Alertmanager webhook on {term(receiver.url)} (bearer token required)")
            else:
                console.print(
                    f"[bold red]warning:[/bold red] Alertmanager webhook on {term(receiver.url)} takes alerts WITHOUT "
                    "authentication (--insecure-no-auth); set SREGRAPH_ALERTS_TOKEN instead"
                )
        api = None
        if settings.worker.api_port is not None:
            from sregraph.server import ApiServer, create_app

            store = ApiStore(settings.data_dir / "api.db")
            api = ApiServer(
                create_app(the_worker, store), settings.worker.api_host, settings.worker.api_port
            ).start()
            console.print(
                f"HTTP API on {term(api.url)} (docs at {term(api.url)}/docs; tokens: sregraph token create)"
            )
            if not store.tokens():
                console.print("[yellow]no API tokens yet:[/yellow] every call but /healthz will answer 401")
        try:
            the_worker.run(once=once, interval=interval_s)
        finally:
            if api is not None:
                api.stop()


@app.command()
def scenarios() -> None:
    """List the bundled scenarios."""
    for name in bundled():
        out.print(f"{term(name):24} {term(load_scenario(name).description)}")


@incidents_app.command("list")
def incidents_list(
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataOpt,
    fmt: str = typer.Option("text", "--format"),
) -> None:
    """Incidents with their status."""
    from sregraph.engine import RunRegistry

    settings = _read_settings(config, data_dir)
    registry = RunRegistry(open_database(settings.storage, settings.data_dir, "runs"))
    try:
        runs = registry.list()
    finally:
        registry.close()
    if fmt == "json":
        out.print_json(json.dumps(runs))
        return
    table = Table(Column("incident", no_wrap=True), "status", "started", "trigger")
    for r in runs:
        trigger = r["trigger"] if isinstance(r["trigger"], dict) else {}
        table.add_row(
            term(r["incident_id"]),
            term(r["status"]),
            _when(r["created_at"]),
            term(trigger.get("summary", "")),
        )
    out.print(table)


@incidents_app.command("show")
def incidents_show(
    incident_id: str, config: Path | None = ConfigOpt, data_dir: Path | None = DataOpt
) -> None:
    """One incident: status, diagnosis, actions and post-mortem."""
    from graphs.checkpoint import open_checkpointer, open_postgres_checkpointer
    from graphs.graph import build_graph

    settings = _read_settings(config, data_dir)
    if settings.storage.backend == "postgres":
        db = open_database(settings.storage, settings.data_dir, "checkpoints")
        assert isinstance(db, PostgresDatabase)
        try:
            snapshot = (
                build_graph()
                .compile(checkpointer=open_postgres_checkpointer(db))
                .get_state({"configurable": {"thread_id": incident_id}})
            )
        finally:
            db.close()
    else:
        graph = build_graph().compile(checkpointer=open_checkpointer(settings.checkpoint_db))
        snapshot = graph.get_state({"configurable": {"thread_id": incident_id}})
    if not snapshot.values:
        console.print(f"[red]error:[/red] no incident {term(incident_id)}")
        raise typer.Exit(2)
    state = dict(snapshot.values)
    state["waiting"] = any(t.interrupts for t in snapshot.tasks)
    _print_summary(_summary(state))
    for entry in state.get("timeline", []):
        out.print(f"{_when(entry.at, '%H:%M:%S')}  {term(entry.event)}")
    if state.get("postmortem"):
        out.print(term_block(state["postmortem"].markdown))


@memory_app.command("search")
def memory_search(
    text: str, k: int = 3, config: Path | None = ConfigOpt, data_dir: Path | None = DataOpt
) -> None:
    """Past incidents whose post-mortems resemble TEXT."""
    from memory.store import PostMortemStore

    settings = _read_settings(config, data_dir)
    with _errors():
        found = PostMortemStore(settings.data_dir / "memory").search(text, k=k)
    if not found:
        out.print("no similar incidents")
    for s in found:
        out.print(
            f"{s.similarity:.2f}  {term(s.incident_id)}  {term(s.fault_type)} on {term(s.service)} "
            f"({term(s.outcome)}): {term(s.summary[:120])}"
        )


@token_app.command("create")
def token_create(
    name: str,
    role: str = typer.Option(
        "viewer",
        help="viewer (reads), operator (also approves, rejects, sends alerts), admin (also reads the audit log).",
    ),
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataOpt,
) -> None:
    """Create an API token; it is printed once and only its hash is kept."""
    settings = _settings(config, data_dir)
    with _errors():
        token = ApiStore(settings.data_dir / "api.db").create_token(name, role)
    console.print(f"token {term(name)} ({term(role)}); shown once, keep it in a secret store:")
    out.print(token, highlight=False)


@token_app.command("list")
def token_list(config: Path | None = ConfigOpt, data_dir: Path | None = DataOpt) -> None:
    """API tokens: name, role, created, revoked (never the tokens themselves)."""
    settings = _settings(config, data_dir)
    table = Table("name", "role", "created", "revoked")
    for t in ApiStore(settings.data_dir / "api.db").tokens():
        table.add_row(
            term(t["name"]),
            t["role"],
            _when(t["created_at"]),
            _when(t["revoked_at"]) if t["revoked_at"] else "",
        )
    out.print(table)


@token_app.command("revoke")
def token_revoke(name: str, config: Path | None = ConfigOpt, data_dir: Path | None = DataOpt) -> None:
    """Revoke an API token at once."""
    settings = _settings(config, data_dir)
    with _errors():
        ApiStore(settings.data_dir / "api.db").revoke(name)
    console.print(f"token {term(name)} revoked")


@app.command("app-stop")
def app_stop(config: Path | None = ConfigOpt, data_dir: Path | None = DataOpt) -> None:
    """Stop the local application left running by `run --keep-running`."""
    from sregraph.localenv.app import LocalApp

    settings = _settings(config, data_dir)
    LocalApp(settings.data_dir / "app").stop()


def main() -> None:
    """Entry point for `python -m sregraph`."""
    app(prog_name="sregraph")


if __name__ == "__main__":
    main()
