"""The documentation keeps up with the code: every hook documented and tested, every error
code and client operation in the protocol document."""

from __future__ import annotations

from pathlib import Path

from imflow.core import hookspecs
from imflow.core.errors import ErrorCode
from imflow.gateway import protocol

ROOT = Path(__file__).parent.parent
HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("imflow_"))


def test_there_are_hooks() -> None:
    assert len(HOOKS) >= 9


def test_every_hook_has_a_docstring_and_a_section_in_plugins_md() -> None:
    text = (ROOT / "docs" / "plugins.md").read_text()
    for name in HOOKS:
        assert (getattr(hookspecs, name).__doc__ or "").strip(), f"{name} has no docstring"
        assert f"### {name}" in text or f"/ {name}(" in text, f"docs/plugins.md does not document {name}"


def test_every_hook_is_exercised_by_a_test() -> None:
    tests = "\n".join(path.read_text() for path in (ROOT / "tests").glob("test_*plugin*.py"))
    for name in HOOKS:
        assert f"def {name}(" in tests, f"no test implements {name}"


def test_every_error_code_and_operation_is_in_protocol_md() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    for code in ErrorCode:
        assert f"`{code.value}`" in text, f"error code {code.value} is not documented"
    for op in protocol.OPS:
        assert f"`{op}`" in text, f"operation {op} is not documented"
