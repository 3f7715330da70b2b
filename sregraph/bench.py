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
