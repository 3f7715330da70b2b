"""``sregraph dataset``: public datasets turned into sregraph's root-cause cases (evals/rca_convert.py).

``sregraph dataset convert nezha|petshop SRC DEST`` writes one folder per case under DEST and prints, per day
or traffic level, the cases written, the seconds taken and the bytes written. Exit code 2 for a source that
is not in the dataset's layout; a case folder is only ever replaced whole.
"""

from __future__ import annotations

from pathlib import Path

import typer

from tools.base import SregraphError

dataset = typer.Typer(
    help="Public datasets as sregraph root-cause cases.", no_args_is_help=True, add_completion=False
)


@dataset.callback()
def _dataset() -> None:
    """Public datasets as sregraph root-cause cases."""


@dataset.command("convert")
def convert(
    kind: str = typer.Argument(..., help="nezha or petshop"),
    src: Path = typer.Argument(
        ..., help="The dataset as shared (a Nezha root, rca_data/ or day; PetShop's root)."
    ),
    dest: Path = typer.Argument(
        ..., help="Where the case folders go (created; same-named cases are replaced)."
    ),
    no_meta: bool = typer.Option(
        False, "--no-meta", help="Write no metrics_meta.csv (kinds and directions)."
    ),
    notes: bool = typer.Option(False, "--notes", help="Also print what was noticed in the data."),
) -> None:
    """Write every labelled fault of a Nezha or PetShop dataset as one case folder under DEST."""
    # Imported when a conversion runs, so the CLI's start-up does not load it.
    from evals.rca_convert import CONVERTERS

    converter = CONVERTERS.get(kind.lower())
    if converter is None:
        typer.echo(f"error: unknown dataset {kind!r}; use one of {', '.join(CONVERTERS)}", err=True)
        raise typer.Exit(2)
    try:
        results = converter(src, dest, meta=not no_meta)
    except SregraphError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    for result in results:
        typer.echo(result.line())
        if notes:
            for note in result.notes:
                typer.echo(f"  {note}")
    if len(results) > 1:
        total_bytes = sum(r.bytes for r in results)
        typer.echo(
            f"{kind} in all: {sum(r.cases for r in results)} cases, {sum(r.seconds for r in results):.2f} s, "
            f"{total_bytes} bytes ({total_bytes / 1e6:.1f} MB) -> {dest}"
        )
