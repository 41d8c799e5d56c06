"""Settings come from environment over .env over defaults; the CLI shows and uses them."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from imflow.cli import cli
from imflow.core.settings import Settings

runner = CliRunner()


def test_environment_beats_dotenv_beats_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("IMFLOW_PORT=9001\nIMFLOW_APP_ID=from-dotenv\n")
    monkeypatch.setenv("IMFLOW_PORT", "9002")
    settings = Settings()
    assert settings.port == 9002
    assert settings.app_id == "from-dotenv"
    assert settings.topic_partitions == 8


def test_every_setting_is_described_with_its_variable() -> None:
    for row in Settings().described():
        assert row["env"] == "IMFLOW_" + row["name"].upper()
        assert row["description"], f"{row['name']} has no description"


def test_help_lists_the_commands() -> None:
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "worker", "gateway", "config"):
        assert command in result.output


def test_config_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMFLOW_SECRET_KEY", "s3cret-value-that-is-long-enough-for-hmac")
    monkeypatch.setenv("IMFLOW_REDIS_URL", "redis://127.0.0.1:1/0")
    result = runner.invoke(cli, ["config"])
    assert result.exit_code == 0
    assert "s3cret-value-that-is-long-enough-for-hmac" not in result.output
    assert "IMFLOW_SECRET_KEY" in result.output and "********" in result.output
    assert "redis://127.0.0.1:1/0" in result.output


def test_invalid_setting_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMFLOW_PORT", "not-a-port")
    result = runner.invoke(cli, ["config"])
    assert result.exit_code == 2
    assert "port" in result.output and "not-a-port" in result.output


def test_worker_without_servers_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMFLOW_KAFKA_URL", raising=False)
    monkeypatch.delenv("IMFLOW_REDIS_URL", raising=False)
    result = runner.invoke(cli, ["worker"])
    assert result.exit_code == 2
    assert "scripts/services up" in result.output


def test_short_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMFLOW_SECRET_KEY", "short")
    result = runner.invoke(cli, ["config"])
    assert result.exit_code == 2
    assert "32 bytes" in result.output


def test_token_command_issues_a_verifiable_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from imflow.core import tokens

    monkeypatch.setenv("IMFLOW_SECRET_KEY", "k" * 40)
    result = runner.invoke(cli, ["token", "alice"])
    assert result.exit_code == 0
    assert tokens.verify("k" * 40, result.output.strip()) == "alice"
    assert runner.invoke(cli, ["token", "not valid"]).exit_code == 2
