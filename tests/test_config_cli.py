"""Configuration loading and the CLI's handling of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sregraph.cli import app
from sregraph.config import load_settings
from sregraph.scenario import bundled, load_scenario
from tools.base import ConfigError

runner = CliRunner()


def test_file_then_environment_then_defaults(tmp_path: Path) -> None:
    config = tmp_path / "sregraph.yaml"
    config.write_text("brain: llm\nobserver:\n  window_s: 9\nllm:\n  model: my-model\n")
    settings = load_settings(
        config, environ={"SREGRAPH_OBSERVER__WINDOW_S": "12", "SREGRAPH_LLM__PROVIDER": "none"}
    )
    assert settings.brain == "llm"
    assert settings.observer.window_s == 12  # environment beats the file
    assert settings.llm.model == "my-model" and settings.llm.provider == "none"
    assert settings.observer.baseline_s == 30  # default


def test_the_scripts_own_variables_are_not_settings_but_a_typo_still_is_an_error(tmp_path: Path) -> None:
    """SREGRAPH_ENGINE_DIR, SREGRAPH_VENV, ... steer the project's scripts; set in the shell, they must not break
    every command. Any other SREGRAPH_* variable must name a setting."""
    from sregraph.config import NOT_SETTINGS

    settings = load_settings(
        None,
        environ={name: "x" for name in NOT_SETTINGS if name != "SREGRAPH_CONFIG"}
        | {"SREGRAPH_HOME": str(tmp_path)},
    )
    assert settings.brain == "deterministic"
    with pytest.raises(ConfigError, match="brian"):
        load_settings(None, environ={"SREGRAPH_BRIAN": "llm"})


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("brain: clever\n", "brain"),
        ("observer:\n  window_s: soon\n", "observer.window_s"),
        ("engineer:\n  max_attemps: 3\n", "engineer.max_attemps"),
        ("llm:\n  provider: skynet\n", "llm.provider"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    config = tmp_path / "sregraph.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_settings(config, environ={})


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    config = tmp_path / "sregraph.yaml"
    config.write_text("brain: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(config, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_cli_reports_bad_config_cleanly(tmp_path: Path) -> None:
    config = tmp_path / "sregraph.yaml"
    config.write_text("observer:\n  z_threshold: high\n")
    result = runner.invoke(app, ["incidents", "list", "--config", str(config)])
    assert result.exit_code == 2
    assert "observer.z_threshold" in result.output


def test_unknown_scenario_is_a_clear_error_before_anything_starts(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "no-such-fault", "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 2
    assert "no scenario 'no-such-fault'" in result.output
    assert not (tmp_path / "d" / "app").exists()  # nothing was started


def test_bundled_scenarios_load() -> None:
    names = bundled()
    assert {"crash-payments", "bad-deploy-payments", "memory-leak-checkout", "healthy"} <= set(names)
    for name in names:
        assert load_scenario(name).name == name


def test_approve_unknown_incident_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["approve", "inc-nope", "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 2
    assert "not waiting for an approval" in result.output


def test_incidents_list_on_empty_data_dir(tmp_path: Path) -> None:
    result = runner.invoke(app, ["incidents", "list", "--data-dir", str(tmp_path / "d"), "--format", "json"])
    assert result.exit_code == 0
    assert result.output.strip() == "[]"
