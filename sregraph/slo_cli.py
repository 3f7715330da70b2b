"""`sregraph slo status|rules` and `sregraph release-gate SERVICE`.

Exit codes: 0 when deploys may go ahead (SAFE, OBSERVE), 3 for DANGER, 4 for FREEZE, 2 for a bad SLO file,
an unknown service or a missing telemetry store. A crash exits 1, which a pipeline also reads as "stop".
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sregraph.config import load_settings
from sregraph.datadir import data_dir_to_read
from sregraph.terminal import results_console
from tools.base import ConfigError, SregraphError
from tools.slo.durations import format_duration, parse_duration
from tools.slo.evaluation import SloStatus, combine_gate, evaluate, release_gate
from tools.slo.loading import load_slo_file
from tools.slo.rules import render_rules, skipped
from tools.slo.spec import SloFile
from tools.telemetry import LocalTelemetryStore

slo = typer.Typer(
    help="Service level objectives: error budgets, burn rates, Prometheus rules.", no_args_is_help=True
)

console = Console(stderr=True)
out = results_console()

SloFileOpt = typer.Option(
    Path("slos.yaml"), "--slo-file", "-f", help="SLO file (sregraph or OpenSLO v1 YAML)."
)
DataOpt = typer.Option(None, "--data-dir", help="sregraph data dir whose app/telemetry.db holds the metrics.")
FormatOpt = typer.Option("text", "--format", help="text or json")
OutputOpt = typer.Option(None, "--output", "-o", help="Write the rule file here (default: stdout).")

_STATE_STYLE = {"SAFE": "green", "OBSERVE": "yellow", "DANGER": "red", "FREEZE": "bold red"}
_TABLE_WINDOWS = ("5m", "1h", "6h", "1d", "3d")


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except SregraphError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc


def _check_format(fmt: str) -> None:
    if fmt not in ("text", "json"):
        raise typer.BadParameter(f"--format must be text or json, not {fmt!r}")


def _telemetry_path(data_dir: Path | None) -> Path:
    """The local app's telemetry store under --data-dir, else under sregraph.yaml's `data_dir` or the demo's."""
    if data_dir is None:
        choice = data_dir_to_read(load_settings(None).data_dir)
        if choice.note:
            console.print(f"[dim]{escape(choice.note)}[/dim]", soft_wrap=True)
        data_dir = choice.path
    path = data_dir / "app" / "telemetry.db"
    if not path.exists():
        raise ConfigError(
            f"data_dir: no telemetry store at {path}; run the local app (`sregraph run --keep-running`) "
            "or point --data-dir at the data dir that has one"
        )
    return path


def _evaluate(slo_file: Path, data_dir: Path | None, service: str | None) -> tuple[SloFile, list[SloStatus]]:
    slos = load_slo_file(slo_file)
    if service is not None:
        slos.for_service(service)  # an unknown service is an error before any store is opened
    with LocalTelemetryStore(_telemetry_path(data_dir)) as store:
        return slos, evaluate(store, slos, time.time(), service=service)


def _burn(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _h(hours: float | None) -> str:
    if hours is None:
        return "never"
    return f"{hours:.0f}h" if hours < 72 else f"{hours / 24:.0f}d"


def _eta(s: SloStatus) -> str:
    fc = s.forecast
    if fc.exhausted:
        return "now"
    eta = _h(fc.hours)
    low, high = _h(fc.earliest_h), _h(fc.latest_h)
    return eta if low == high == eta else f"{eta} ({low}-{high})"


def _status_table(statuses: list[SloStatus]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("service", no_wrap=True)
    table.add_column("SLO", no_wrap=True)
    table.add_column("gate", no_wrap=True)
    table.add_column("budget left", justify="right", no_wrap=True)
    table.add_column("gone in", min_width=6)
    table.add_column("burn " + " ".join(_TABLE_WINDOWS), min_width=10)
    table.add_column("alerts", no_wrap=True)
    table.add_column("objective", no_wrap=True)
    previous = None
    for s in statuses:
        burns = {b.window: b.burn_rate for b in s.burn_rates}
        firing = list(dict.fromkeys(a.severity for a in s.alerts if a.firing))
        if previous is not None and s.service != previous:
            table.add_section()
        table.add_row(
            s.service if s.service != previous else "",
            s.name,
            f"[{_STATE_STYLE[s.state]}]{s.state}[/]",
            "-" if s.budget_remaining is None else f"{s.budget_remaining:.0%}",
            _eta(s),
            " ".join(_burn(burns.get(w)) for w in _TABLE_WINDOWS),
            "+".join(firing) or "-",
            f"{s.target * 100:g}%/{s.window}",
        )
        previous = s.service
    return table


@slo.command("status")
def status(
    service: str | None = typer.Option(None, "--service", "-s", help="Only this service's SLOs."),
    slo_file: Path = SloFileOpt,
    data_dir: Path | None = DataOpt,
    fmt: str = FormatOpt,
) -> None:
    """Error budgets, burn rates, alert pairs, exhaustion forecasts and release-gate states."""
    _check_format(fmt)
    with _errors():
        slos, statuses = _evaluate(slo_file, data_dir, service)
    services = [s for s in slos.services() if any(x.service == s for x in statuses)]
    gates = {name: combine_gate(name, [x for x in statuses if x.service == name]) for name in services}
    if fmt == "json":
        payload = {
            "slos": [s.model_dump(mode="json") for s in statuses],
            "gates": {k: g.model_dump(mode="json", exclude={"slos"}) for k, g in gates.items()},
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    out.print(_status_table(statuses))
    short = [s for s in statuses if s.budget_remaining is not None and s.coverage < 0.99]
    if short:
        least = min(short, key=lambda s: s.coverage)
        span = format_duration(least.coverage * parse_duration(least.window))
        out.print(
            f"[dim]note: telemetry covers only {span} of the {least.window} SLO window; budgets are computed "
            "over the data there is, so a short history makes any incident look large (docs/slo.md)[/dim]"
        )
    for name, gate in gates.items():
        out.print(f"[bold]{name}[/bold]: [{_STATE_STYLE[gate.state]}]{gate.state}[/]")
        if gate.state != "SAFE":
            for reason in gate.reasons:
                out.print(f"  - {escape(reason)}")


@slo.command("rules")
def rules(
    slo_file: Path = SloFileOpt,
    output: Path | None = OutputOpt,
) -> None:
    """Prometheus recording and alerting rules for every SLO with a `prometheus:` section."""
    with _errors():
        slos = load_slo_file(slo_file)
        text = render_rules(slos, str(slo_file))
    for name in skipped(slos):
        console.print(f"[yellow]skipped[/yellow] {name}: no prometheus: section")
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        console.print(
            f"wrote {output} ({text.count('- record:')} recording rules, {text.count('- alert:')} alerts)"
        )


def release_gate_command(
    service: str = typer.Argument(..., help="Service to gate (as named in the SLO file)."),
    slo_file: Path = SloFileOpt,
    data_dir: Path | None = DataOpt,
    fmt: str = FormatOpt,
) -> None:
    """Deploy gate for CI/CD: exit 0 for SAFE or OBSERVE, 3 for DANGER, 4 for FREEZE (2: bad input)."""
    _check_format(fmt)
    with _errors():
        slos = load_slo_file(slo_file)
        slos.for_service(service)
        with LocalTelemetryStore(_telemetry_path(data_dir)) as store:
            decision = release_gate(store, slos, service, time.time())
    if fmt == "json":
        typer.echo(json.dumps(decision.model_dump(mode="json"), indent=2))
    else:
        verdict = "deploys may proceed" if decision.exit_code == 0 else "deploys should stop"
        out.print(f"[bold]{service}[/bold]: [{_STATE_STYLE[decision.state]}]{decision.state}[/] ({verdict})")
        for reason in decision.reasons:
            out.print(f"  - {escape(reason)}")
    raise typer.Exit(decision.exit_code)
