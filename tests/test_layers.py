"""The import contract: sregraph/ and evals/ -> graphs/ -> agents/ -> tools/, memory/, prompts/ (README's layout).
A module may import its own package, one at its layer, or one below it, never one above, not even inside a
function or under TYPE_CHECKING. No product package imports `tests` (it is not installed). No test module imports
another: what two of them share lives in tests/support.py, tests/fakes/ or tests/fixtures/."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LAYERS = {"sregraph": 3, "evals": 3, "graphs": 2, "agents": 1, "tools": 0, "memory": 0, "prompts": 0}
"""Higher imports lower. The domain models are in tools/domain.py, at the bottom, so every layer can speak them."""

TEST_ONLY = {"tests"}
"""Packages no product module may import: the test suite is not installed with the product."""


def violations(root: Path) -> list[str]:
    """Every import of a package above the importing module's own, or of the tests, as 'file:line: a imports b'."""
    found = []
    for package, layer in LAYERS.items():
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    targets = [node.module]
                elif isinstance(node, ast.Import):
                    targets = [alias.name for alias in node.names]
                else:
                    continue
                for target in targets:
                    top = target.split(".")[0]
                    if LAYERS.get(top, -1) > layer or top in TEST_ONLY:
                        found.append(f"{path.relative_to(root)}:{node.lineno}: {package} imports {target}")
    return found


def cross_test_imports(root: Path) -> list[str]:
    """Every import of a test module by a test module (tests/test_*.py), as 'file:line: a imports b'."""
    found = []
    for path in sorted((root / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                # Relative imports resolve inside tests/; `from tests import test_x` names the module among the names.
                if node.level == 0:
                    package = node.module or ""
                else:
                    package = ".".join(["tests", *([node.module] if node.module else [])])
                targets = [package] + [f"{package}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                parts = target.split(".")
                if len(parts) >= 2 and parts[0] == "tests" and parts[1].startswith("test_"):
                    found.append(
                        f"{path.relative_to(root)}:{node.lineno}: {path.stem} imports {'.'.join(parts[:2])}"
                    )
                    break
    return found


def test_imports_point_one_way() -> None:
    assert violations(ROOT) == []


def test_a_planted_violation_is_caught(tmp_path: Path) -> None:
    for package in LAYERS:
        (tmp_path / package).mkdir()
    (tmp_path / "tools" / "ok.py").write_text("import json\nfrom tools.base import X\n")
    (tmp_path / "tools" / "slo").mkdir()  # a subpackage sits at its package's layer
    (tmp_path / "tools" / "slo" / "sub.py").write_text(
        "from tools.slo.spec import SLO\nimport agents.policy\n"
    )
    (tmp_path / "agents" / "fine.py").write_text(
        "from tools.domain import Diagnosis\nfrom agents import rca\n"
    )
    (tmp_path / "agents" / "bad.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from graphs.graph import Team\n"
        "def f():\n    import sregraph.config\n"
    )
    assert violations(tmp_path) == [
        "agents/bad.py:3: agents imports graphs.graph",
        "agents/bad.py:5: agents imports sregraph.config",
        "tools/slo/sub.py:2: tools imports agents.policy",
    ]


def test_checkpoints_written_before_the_domain_moved_still_load(tmp_path: Path) -> None:
    from graphs.checkpoint import open_checkpointer
    from tools.domain import Diagnosis, Evidence, Hypothesis

    saver = open_checkpointer(tmp_path / "checkpoints.db")
    diagnosis = Diagnosis(
        hypotheses=[
            Hypothesis(
                service="payments",
                fault_type="crash",
                evidence=[Evidence(kind="health", service="payments", summary="down", weight=2)],
            )
        ],
        confidence=0.8,
    )
    kind, data = saver.serde.dumps_typed(diagnosis)
    assert b"tools.domain" in data
    # The same bytes as a worker wrote them when the models lived in graphs/state.py (same length, so the
    # msgpack framing holds).
    legacy = data.replace(b"tools.domain", b"graphs.state")
    assert saver.serde.loads_typed((kind, legacy)) == diagnosis
    saver.conn.close()


def test_a_planted_import_of_the_tests_is_caught(tmp_path: Path) -> None:
    for package in LAYERS:
        (tmp_path / package).mkdir()
    (tmp_path / "evals" / "bench.py").write_text(
        "from evals.harness import World\ndef f():\n    from tests.worker_harness import run\n"
    )
    (tmp_path / "sregraph" / "cli.py").write_text("import tests.support\nimport testsuite\n")
    (tmp_path / "tools" / "fake.py").write_text("from tests import fakes\n")
    assert violations(tmp_path) == [
        "sregraph/cli.py:1: sregraph imports tests.support",
        "evals/bench.py:3: evals imports tests.worker_harness",
        "tools/fake.py:1: tools imports tests",
    ]


def test_no_test_module_imports_another() -> None:
    assert cross_test_imports(ROOT) == []


def test_a_planted_import_of_a_test_module_is_caught(tmp_path: Path) -> None:
    (tmp_path / "tests" / "fixtures").mkdir(parents=True)
    # not a test module
    (tmp_path / "tests" / "support.py").write_text("from tests.test_analyst import TOPOLOGY\n")
    (tmp_path / "tests" / "test_fine.py").write_text(
        "from tests.support import FakeRuntime\nfrom tests.fixtures.telemetry import write_series\n"
        "import tests.testing_helpers\nfrom tests import support\n"
    )
    (tmp_path / "tests" / "test_bad.py").write_text(
        "from tests.test_analyst import make_toolbox\ndef f():\n    import tests.test_llm as llm\n"
        "from tests import fakes, test_channels\nfrom .test_github import GraphDeployer\nfrom . import test_storm\n"
    )
    assert cross_test_imports(tmp_path) == [
        "tests/test_bad.py:1: test_bad imports tests.test_analyst",
        "tests/test_bad.py:4: test_bad imports tests.test_channels",
        "tests/test_bad.py:5: test_bad imports tests.test_github",
        "tests/test_bad.py:6: test_bad imports tests.test_storm",
        "tests/test_bad.py:3: test_bad imports tests.test_llm",
    ]
