"""``sregraph bench``: benchmarks of sregraph's components on public data sets.

``sregraph bench nab --data DIR`` scores the observer's streaming detectors on a folder in the Numenta Anomaly
Benchmark's layout (runner and scorer: evals/nab.py; method and numbers: docs/nab.md). Exit code 2 for a
folder that is not in NAB's layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from agents.rca_confidence import ConfidenceModel
from tools.base import SregraphError

bench = typer.Typer(
    help="Benchmarks of sregraph's components on public data sets.",
    no_args_is_help=True,
    add_completion=False,
)


@bench.callback()
def _bench() -> None:
    """Benchmarks of sregraph's components on public data sets."""


def _num(x: float | None, fmt: str = "9.2f") -> str:
    return format(x, fmt) if x is not None else format("n/a", ">" + fmt.split(".")[0])


def render_text(result: dict[str, Any]) -> str:
    """Headline scores, the published scoreboards to compare with, and one line per file."""
    # Each benchmark imports its runner when it runs, so the CLI's start-up does not load them.
    from evals.nab import PUBLISHED_FULL, PUBLISHED_SUBSET

    prof = result["profiles"]
    lines = [
        (
            f"NAB: {result['files']} files, {result['rows']} rows, {result['windows']} windows, "
            f"detector: {result['detector']}"
        ),
        (
            f"{result['points_per_second']:.0f} points/s ({result['detect_seconds']:.2f} s detecting, "
            f"{result['wall_seconds']:.2f} s in all)"
        ),
        "",
        f"{'':44} {'standard':>9} {'low FP':>9} {'low FN':>9}",
        f"{'this run (thresholds optimised per profile)':44} "
        + " ".join(_num(prof[k]["score"]) for k in ("standard", "low_fp", "low_fn")),
    ]
    if result.get("fixed_threshold"):
        fixed = result["fixed_threshold"]
        th = fixed["standard"]["threshold"]
        lines.append(
            f"{f'this run at the alert level ({th:g})':44} "
            + " ".join(_num(fixed[k]["score"]) for k in ("standard", "low_fp", "low_fn"))
        )
    lines.append(
        "  thresholds: "
        + ", ".join(f"{k} {prof[k]['threshold']:.4f}" for k in ("standard", "low_fp", "low_fn"))
        + f"; standard: {prof['standard']['detected_windows']}/{prof['standard']['windows']} windows found, "
        f"{prof['standard']['false_positives']} false-positive rows"
    )
    lines += ["", "published, on NAB's 31-file subset (README):"]
    lines += [f"  {name:42} " + " ".join(f"{x:9.2f}" for x in row) for name, row in PUBLISHED_SUBSET.items()]
    lines += ["published, on the full 58-file corpus (not comparable with a subset):"]
    lines += [f"  {name:42} " + " ".join(f"{x:9.1f}" for x in row) for name, row in PUBLISHED_FULL.items()]
    lines += ["", f"{'file (standard profile)':62} {'windows':>7} {'found':>5} {'FP rows':>7} {'raw':>8}"]
    for key, row in result["per_file"].items():
        lines.append(
            f"{key:62} {row['windows']:7} {row['detected_windows']:5} {row['false_positives']:7} "
            f"{row['standard_raw']:8.3f}"
        )
    return "\n".join(lines)


@bench.command("nab")
def bench_nab(
    data: Path = typer.Option(
        ..., "--data", help="A folder in NAB's layout: data/<category>/*.csv and labels/."
    ),
    fmt: str = typer.Option("text", "--format", help="text or json"),
    limit_files: int | None = typer.Option(
        None, "--limit-files", min=1, help="Score only the first N files (by name)."
    ),
) -> None:
    """Score the default detector ensemble on a NAB-layout folder; NAB scores for the three profiles."""
    if fmt not in ("text", "json"):
        raise typer.BadParameter("use text or json", param_hint="--format")
    from evals.nab import run

    try:
        result = run(data, limit_files=limit_files).as_dict()
    except SregraphError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps(result, indent=2) if fmt == "json" else render_text(result))


def render_rca(result: dict[str, Any]) -> str:
    """The ranker next to the baselines, per system, then one line per case."""

    def pct(x: float | None) -> str:
        return f"{100 * x:6.1f}" if x is not None else "   n/a"

    def row(name: str, s: dict[str, Any]) -> str:
        return f"{name:34} {s['cases']:5} " + " ".join(pct(s.get(k)) for k in ("ac1", "ac3", "ac5", "avg5"))

    lines = [
        f"root-cause bench: {result['cases']} cases, {result['seconds_per_case']:.3f} s per case "
        f"(load + rank), confidence model {result['confidence_model'] or 'NONE'}",
    ]
    if result.get("warning"):
        lines.append(f"WARNING: {result['warning']}")
    lines += ["", f"{'method / system':34} {'cases':>5} {'AC@1':>6} {'AC@3':>6} {'AC@5':>6} {'Avg@5':>6}"]
    lines.append(row("sregraph ranker", result))
    for system, s in result["systems"].items():
        lines.append(row(f"  {system}", s))
    for subset, s in result.get("subsets", {}).items():
        lines.append(row(f"    {subset}", s))
    for name, base in result.get("baselines", {}).items():
        lines.append(row(f"baseline: {name}", base))
        for system, s in base.get("systems", {}).items():
            lines.append(row(f"  {system}", s))
    lines += [
        "",
        f"fault type right: {pct(result['fault_type_acc']).strip()} %   no answer: "
        f"{pct(result['no_answer_rate']).strip()} %"
        f"   Brier: {_num(result['brier'], '.3f').strip()}   ECE: {_num(result['ece'], '.3f').strip()}",
        "",
        f"{'case':44} {'rank':>4} {'conf':>5}  top 3",
    ]
    for c in result["per_case"]:
        conf = f"{c['confidence']:.2f}" if c["confidence"] is not None else "  n/a"
        lines.append(
            f"{c['id'][:44]:44} {c['rank'] or '-':>4} {conf:>5}  {', '.join(c['ranked'][:3])}  (truth {c['truth']})"
        )
    return "\n".join(lines)


@bench.command("rca")
def bench_rca(
    data: Path = typer.Option(..., "--data", help="A folder of cases (each with a case.json), or one case."),
    fmt: str = typer.Option("text", "--format", help="text or json"),
    no_meta: bool = typer.Option(
        False, "--no-meta", help="Ignore metrics_meta.csv: infer every metric's kind from its name."
    ),
    no_baselines: bool = typer.Option(False, "--no-baselines", help="Skip the BARO and random baselines."),
) -> None:
    """Rank root causes on every case under a folder; AC@k, fault type, calibration, and two baselines."""
    if fmt not in ("text", "json"):
        raise typer.BadParameter("use text or json", param_hint="--format")
    from evals.rca_bench import run_bench

    try:
        result = run_bench(
            data, model=ConfidenceModel.load(), use_meta=not no_meta, baselines=not no_baselines
        )
    except SregraphError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps(result, indent=2) if fmt == "json" else render_rca(result))
