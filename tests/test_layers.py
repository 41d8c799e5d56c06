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


def test_every_module_opens_by_saying_its_one_job() -> None:
    """Each module's opening docstring says what it is for (the issue of the service layer)."""
    lacking = [
        str(path.relative_to(ROOT))
        for folder in (*ALLOWED, "imflow")
        for path in (ROOT / folder).rglob("*.py")
        if not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert not lacking, f"modules without an opening docstring: {lacking}"


def imports_key_scheme(path: Path) -> bool:
    """Whether a module imports core/storage/keys.py, absolutely or relatively."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = {alias.name for alias in node.names}
            if module.endswith("storage.keys") or (module.endswith("storage") and "keys" in names):
                return True
        elif isinstance(node, ast.Import) and any(a.name.endswith("storage.keys") for a in node.names):
            return True
    return False


def test_only_core_storage_names_redis_keys(tmp_path: Path) -> None:
    """No module outside core/storage imports the key scheme (import-linter checks the whole
    graph in tests/test_lint.py; this is the quick check of each file)."""
    outside = [path for folder in ALLOWED for path in (ROOT / folder).rglob("*.py") if "storage" not in path.parts]
    offenders = [str(path.relative_to(ROOT)) for path in outside if imports_key_scheme(path)]
    assert not offenders, f"these name Redis keys outside core/storage: {offenders}"
    for form in ("from .storage import keys", "from imflow.core.storage.keys import inbox", "import imflow.core.storage.keys"):
        (tmp_path / "m.py").write_text(form + "\n")
        assert imports_key_scheme(tmp_path / "m.py"), f"the check must see {form!r}"
