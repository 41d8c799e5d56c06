"""The layering of the design brief, checked on every import statement of the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
# folder -> the imflow packages its modules may import (besides their own)
ALLOWED = {
    "core": set(),
    "streams": {"imflow.core"},
    "gateway": {"imflow.core"},
    "plugins": {"imflow.plugin_api"},  # the stable plugin API, nothing else of imflow
}


def imflow_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("imflow")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("imflow"):
            found.add(node.module)
    return found


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_each_layer_imports_only_what_is_below_it(folder: str) -> None:
    own = f"imflow.{folder}"
    for path in (ROOT / folder).rglob("*.py"):
        for module in imflow_imports(path):
            allowed = module == own or module.startswith(own + ".") or any(
                module == ok or module.startswith(ok + ".") for ok in ALLOWED[folder]
            )
            assert allowed, f"{path.relative_to(ROOT)} imports {module}: {folder}/ may use only {sorted(ALLOWED[folder]) or 'itself'}"
