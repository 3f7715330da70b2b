"""``sregraph bench nezha``: the Nezha root-cause benchmark on the command line (runner: evals/nezha.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import typer

from evals.nezha import LatencyView, Replay, run_nezha
from tools.base import SregraphError

nezha = typer.Typer(help="Root-cause accuracy on Nezha's OnlineBoutique fault days.", add_completion=False)


def _pct(x: float) -> str:
    return f"{100 * x:6.2f}"


def _row(name: str, scores: dict[str, Any]) -> str:
    return f"{name:56} {_pct(scores['as1'])} {_pct(scores['as3'])} {_pct(scores['as5'])}"


def render_text(result: dict[str, Any]) -> str:
    """The summary, the published table and one line per case."""
    lines = [
        f"Nezha benchmark: {result['cases']} faults, latency view {result['replay']['latency_view']}, "
        f"{result['wall_s']:.2f} s",
        "",
        f"{'':50} {'AS@1':>6} {'AS@3':>6} {'AS@5':>6}",
        _row("sregraph deterministic analyst (this data)", result),
    ]
    for name, row in result["published"].items():
        lines.append(_row(f"{name} (paper, 56 faults)", row))
    lines += [
        "",
        f"fault-type accuracy (top hypothesis): {_pct(result['fault_type_acc']).strip()} % "
        f"of {result['fault_type_cases']}",
        f"service and fault type both right:   {_pct(result['as1_and_type']).strip()} %",
        f"cases with no hypothesis at all:     {result['no_hypothesis']}",
        "",
        f"{'injected (UTC)':19}  {'true service':22} {'nezha type':15} {'rank':>4}  {'our top 3':60} type",
    ]
    for case in result["per_case"]:
        rank = str(case["rank"]) if case["rank"] is not None else "-"
        top3 = ", ".join(case["top3"]) or "(none)"
        lines.append(
            f"{case['injected_at']}  {case['service']:22} {case['nezha_type']:15} {rank:>4}  {top3:60} "
            f"{case['top_fault']}"
        )
    return "\n".join(lines)


@nezha.callback(invoke_without_command=True)
def bench_nezha(
    data: Path = typer.Option(..., "--data", help="A Nezha day folder (rca_data/<day>) or one above it."),
    fmt: str = typer.Option("text", "--format", help="text or json"),
    latency_view: str = typer.Option(
        "server",
        "--latency-view",
        help="server: each pod's own p95 (default); client: what its callers see (added after 2022-08-22).",
    ),
) -> None:
    """Replay every labelled fault through the analyst; report AS@1/3/5 and fault-type accuracy."""
    if fmt not in ("text", "json"):
        raise typer.BadParameter("use text or json", param_hint="--format")
    if latency_view not in ("server", "client"):
        raise typer.BadParameter("use server or client", param_hint="--latency-view")
    try:
        result = run_nezha(data, Replay(latency_view=cast(LatencyView, latency_view)))
    except SregraphError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps(result, indent=2) if fmt == "json" else render_text(result))
