"""`sregraph eval` (replay a suite of recorded incidents and score it) and `sregraph record` (make a case).

Mounted by sregraph/cli.py; also runs on its own: `python -m evals.eval_cli eval --suite evals/suite`. It loads
with `sregraph --help`, so the replay, scoring and recording machinery is imported when a command runs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape

from evals.cassette import Cassette
from sregraph.config import Settings, load_settings
from tools.base import SregraphError

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from evals.replay import CaseRun
    from evals.scoring import SuiteResult

SUITE = Path(__file__).resolve().parent / "suite"
EXIT_MODEL_NOT_REACHED = 3
"""`sregraph eval` exit status when an LLM brain's model never answered: the scores measured no model."""
PASS_RATE_BAR = 0.97
"""CI's bar for the deterministic suite: at least this share of cases must pass (docs/evals.md says why)."""
BRAINS = ("deterministic", "openai", "watsonx")

eval_app = typer.Typer(help="Replay evals of recorded incidents, and record mode.", no_args_is_help=True)
console = Console(stderr=True)


def _out() -> Console:
    return Console(width=None if sys.stdout.isatty() else 200)


def _chat_model(
    brain: str, config: Path | None, cassette: Cassette | None = None
) -> tuple[BaseChatModel | None, Settings, float]:
    """The chat model, base settings and price per million tokens for an LLM brain (exit 2 without a key)."""
    from agents.llm import make_chat_model
    from evals.scoring import PRICE_PER_MTOK

    settings = load_settings(config)
    settings = settings.model_copy(
        update={"brain": "llm", "llm": settings.llm.model_copy(update={"provider": brain})}
    )
    if brain == "watsonx" and settings.llm.model == "gpt-4o-mini":
        settings = settings.model_copy(
            update={"llm": settings.llm.model_copy(update={"model": "ibm/granite-3-8b-instruct"})}
        )
    environ: dict[str, str] = dict(os.environ)
    if cassette is not None and cassette.mode == "replay":
        # Answered from the cassette: no key is sent anywhere.
        environ.setdefault(settings.llm.api_key_env, "cassette")
    return (
        make_chat_model(settings.llm, environ, transport=cassette),
        settings,
        PRICE_PER_MTOK.get(settings.llm.model, 0.0),
    )


def run_eval(
    suite: Path,
    brain: str = "deterministic",
    only: list[str] | None = None,
    chat_model: BaseChatModel | None = None,
    base_settings: Settings | None = None,
    price_per_mtok: float = 0.0,
    min_pass_rate: float | None = PASS_RATE_BAR,
    progress: Callable[[CaseRun], None] | None = None,
    cassette: Cassette | None = None,
) -> SuiteResult:
    """Replay and score a suite; returns an evals.scoring.SuiteResult."""
    from evals.replay import load_suite, replay_suite
    from evals.scoring import score_suite

    cases = load_suite(suite, only)
    if not cases:
        raise SregraphError(f"no case folders (with a case.yaml) under {suite}")
    runs = replay_suite(cases, brain, chat_model, base_settings, on_case=progress, cassette=cassette)
    return score_suite(runs, brain, price_per_mtok, min_pass_rate)


@eval_app.command("eval")
def eval_command(
    suite: Path = typer.Option(SUITE, "--suite", help="A folder of case folders (or one case folder)."),
    brain: str = typer.Option(
        "deterministic", "--brain", help="deterministic, openai or watsonx (LLM brains need a key)."
    ),
    fmt: str = typer.Option("text", "--format", help="text (a table) or json"),
    report: Path | None = typer.Option(None, "--report", help="Also write the Markdown report here."),
    min_pass_rate: float = typer.Option(
        PASS_RATE_BAR, "--min-pass-rate", help="Exit 1 when fewer cases pass."
    ),
    case: list[str] = typer.Option(
        [], "--case", help="Only these case ids (repeatable); memory then holds only them."
    ),
    price_per_mtok: float | None = typer.Option(
        None, "--price-per-mtok", help="US$ per million tokens for the cost estimate."
    ),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="sregraph.yaml with the llm section for LLM brains."
    ),
    cassette_path: Path | None = typer.Option(
        None, "--cassette", help="LLM brains: a model cassette file (evals/cassette.py)."
    ),
    cassette_mode: str = typer.Option(
        "replay", "--cassette-mode", help="record (call the model, keep its answers) or replay (no model)."
    ),
) -> None:
    """Replay recorded incidents through the graph (tools answered from the recordings, pinned clock) and score them."""
    if brain not in BRAINS:
        raise typer.BadParameter(f"--brain must be one of {', '.join(BRAINS)}")
    if fmt not in ("text", "json"):
        raise typer.BadParameter("--format must be text or json")
    chat_model, base, price = None, None, 0.0
    cassette = None
    try:
        if cassette_path is not None:
            if brain != "openai":
                raise typer.BadParameter(
                    "--cassette needs --brain openai (it records the OpenAI-compatible HTTP answers)"
                )
            cassette = Cassette(cassette_path, cassette_mode)  # type: ignore[arg-type]
        if brain != "deterministic":
            chat_model, base, price = _chat_model(brain, config, cassette)
        started = time.perf_counter()

        def progress(run: Any) -> None:
            mark = "[red]error[/red]" if run.error else run.outcome.status
            console.print(f"[dim]{run.case.id:44}[/dim] {mark} ({run.seconds:.2f}s)", soft_wrap=True)

        result = run_eval(
            suite,
            brain,
            case or None,
            chat_model,
            base,
            price if price_per_mtok is None else price_per_mtok,
            min_pass_rate,
            progress if fmt == "text" else None,
            cassette,
        )
    except (SregraphError, FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if cassette is not None:
        result.summary.update(
            cassette=str(cassette_path),
            cassette_mode=cassette.mode,
            cassette_misses=len(cassette.misses),
            cassette_recorded=cassette.recorded,
        )
    result.summary["wall_s"] = round(time.perf_counter() - started, 2)
    from evals.scoring import markdown, model_banner, rich_table

    command = (
        "sregraph eval"
        + ("" if suite == SUITE else f" --suite {suite}")
        + (f" --brain {brain}" if brain != "deterministic" else "")
    )
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(markdown(result, command))
    if fmt == "json":
        _out().print_json(json.dumps(result.as_json()))
    else:
        _out().print(rich_table(result))
        for score in result.scores:
            if not score.passed:
                console.print(
                    f"[yellow]{score.id}[/yellow]: " + "; ".join(score.failures), soft_wrap=True, markup=False
                )
    ok = result.summary["pass_rate"] >= min_pass_rate
    if not ok:
        console.print(
            f"[red]pass rate {result.summary['pass_rate']:.0%} is under the bar {min_pass_rate:.0%}[/red]"
        )
    banner = model_banner(result.summary)
    if banner is not None:
        measured = result.summary["model_measured"]
        rule = "!" * 100
        shown = (
            f"[bold yellow]{escape(banner)}[/bold yellow]"
            if measured
            else f"[bold white on red]{rule}\n{escape(banner)}\n{rule}[/bold white on red]"
        )
        for stream in (console, _out()) if fmt == "text" else (console,):
            stream.print(shown, soft_wrap=True)
        if not measured:
            raise typer.Exit(EXIT_MODEL_NOT_REACHED)
    raise typer.Exit(0 if ok else 1)


@eval_app.command("record")
def record_command(
    fault: str | None = typer.Argument(
        None, help="A local-app fault (crash, latency, error-rate, ...); omit with --worker."
    ),
    service: str | None = typer.Argument(None, help="frontend, checkout or payments."),
    out: Path = typer.Option(
        ..., "--out", help="Case folder to write (FAULT mode) or folder of case folders (--worker)."
    ),
    worker: bool = typer.Option(
        False, "--worker", help="Record every incident a worker handles on the app under --data-dir."
    ),
    once: bool = typer.Option(False, "--once", help="With --worker: one scan, then exit."),
    interval: float = typer.Option(2.0, "--interval", help="With --worker: seconds between scans."),
    config: Path | None = typer.Option(None, "--config", "-c"),
    data_dir: Path | None = typer.Option(None, "--data-dir"),
) -> None:
    """Record an incident as an eval case: a demo fault on a fresh local app, or (--worker) every live incident."""
    from evals.live_cases import record_demo_incident
    from sregraph.demo import demo_settings, validate

    try:
        settings = load_settings(config, data_dir=data_dir)
        if worker:
            _record_worker(settings, out, once, interval)
            return
        if not fault or not service:
            raise typer.BadParameter("give FAULT and SERVICE, or --worker")
        [(name, target, _)] = validate([(fault, service, {})])
        from sregraph.demo import DEFAULT_SEQUENCE

        params = next((p for f, s, p in DEFAULT_SEQUENCE if (f, s) == (name, target)), {})
        demo = demo_settings(settings)
        case = record_demo_incident(
            demo, name, target, out, params, say=lambda text: console.print(text, soft_wrap=True)
        )
    except (SregraphError, TimeoutError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    o = case.outcome
    _out().print(
        f"recorded {case.id} into {out}: {o.status}, root cause {o.root_cause}, {o.fault_type}, actions "
        f"{', '.join(o.actions) or 'none'}"
    )


def _record_worker(settings: Any, out: Path, once: bool, interval: float) -> None:
    """`sregraph worker` with the recorder attached: every incident becomes a case under `out`."""
    from evals.live_cases import attach_recorder
    from sregraph.engine import Engine, local_toolbox
    from sregraph.localenv.app import LocalApp
    from sregraph.worker import Worker

    local = LocalApp(settings.data_dir / "app")
    engine = Engine(settings, local_toolbox(settings, local))
    attach_recorder(engine, out)
    console.print(
        f"recording every incident into {out}/<incident id>/ (ground truth unlabelled: set truth in case.yaml)"
    )
    try:
        Worker(engine).run(once=once, interval=interval)
    finally:
        local.close()


if __name__ == "__main__":
    eval_app()
