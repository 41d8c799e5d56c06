"""The plugin API as written down: every hookspec documented in docs/plugins.md with its exact
signature, a typed façade method per hook, and every name of imflow.plugin_api importable."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import imflow.plugin_api as plugin_api
from imflow.core import hookspecs
from imflow.core.plugin_calls import HookCalls

ROOT = Path(__file__).parent.parent
DOCS = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
SPECS = [node for node in ast.parse((ROOT / "core" / "hookspecs.py").read_text()).body
         if isinstance(node, ast.FunctionDef) and node.name.startswith("imflow_")]


def signature(node: ast.FunctionDef) -> str:
    """The hookspec as docs/plugins.md shows it: its decorator and its ``def`` line."""
    decorators = "".join(f"@{ast.unparse(decorator)}\n" for decorator in node.decorator_list)
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    return f"{decorators}def {node.name}({ast.unparse(node.args)}){returns}"


def documented_section(name: str) -> str:
    match = re.search(rf"^### {name}\n(.*?)(?=^#{{2,3}} )", DOCS, re.S | re.M)
    assert match, f"docs/plugins.md has no section '### {name}'"
    return match.group(1)


def test_the_specs_are_the_hooks() -> None:
    assert [node.name for node in SPECS] == hookspecs.names()
    assert {"imflow_startup", "imflow_shutdown", "imflow_settings"} <= set(hookspecs.names())


@pytest.mark.parametrize("node", SPECS, ids=lambda node: node.name)
def test_every_hook_is_documented_with_its_exact_signature(node: ast.FunctionDef) -> None:
    section = documented_section(node.name)
    assert f"```python\n{signature(node)}\n```" in section, (
        f"docs/plugins.md, '### {node.name}': copy the signature from core/hookspecs.py:\n{signature(node)}"
    )
    firstresult = hookspecs.is_firstresult(node.name)
    assert ("firstresult" in signature(node)) == firstresult


def test_no_documented_hook_is_missing_from_the_specs() -> None:
    documented = set(re.findall(r"^### (imflow_\w+)$", DOCS, re.M))
    assert documented == set(hookspecs.names())


@pytest.mark.parametrize("name", hookspecs.names())
def test_the_facade_has_a_method_per_hook_with_its_arguments(name: str) -> None:
    method = getattr(HookCalls, name.removeprefix("imflow_"), None)
    assert method is not None, f"HookCalls has no method for {name}"
    spec_args = list(inspect.signature(getattr(hookspecs, name)).parameters)
    method_args = [arg for arg in inspect.signature(method).parameters if arg != "self"]
    assert method_args == spec_args
    registration = name in hookspecs.REGISTRATION
    assert inspect.iscoroutinefunction(method) != registration, f"{name}: registration hooks are called, the others awaited"


def test_every_name_of_the_plugin_api_exists() -> None:
    missing = [name for name in plugin_api.__all__ if not hasattr(plugin_api, name)]
    assert not missing
    # what the built-ins need, and the one error type under both its names
    assert issubclass(plugin_api.OperationError, plugin_api.ImflowError)
    error = plugin_api.Rejection("polls.closed", "the poll is closed", 5).error()
    assert (error.code, error.message, error.retry_after_ms) == ("polls.closed", "the poll is closed", 5)
    assert plugin_api.plugin_error_code("closed") == "plugin.error"
    assert plugin_api.plugin_error_code("polls.closed") == "polls.closed"


def test_imflow_config_shows_plugin_settings_next_to_imflows(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from imflow.cli import cli

    monkeypatch.setenv("IMFLOW_RED_PACKETS_MAX_COUNT", "77")
    result = CliRunner().invoke(cli, ["config"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "# plugin red_packets" in lines and "# plugin throttling" in lines and "# plugin live_rooms" in lines
    assert lines.index("# plugin red_packets") > next(i for i, line in enumerate(lines) if line.startswith("IMFLOW_PORT "))
    count = next(line for line in lines if line.startswith("IMFLOW_RED_PACKETS_MAX_COUNT "))
    assert count.split()[1] == "77" and "Most shares one packet may be split into" in count
    monkeypatch.setenv("IMFLOW_THROTTLE_USER_RATE", "-1")
    refused = CliRunner().invoke(cli, ["config"])
    assert refused.exit_code == 2 and "user_rate" in refused.output
