"""ruff, mypy and import-linter on the layers, run from the venv with the settings in pyproject.toml.

Each test fails with the tool's own report. mypy and lint-imports resolve modules by their installed
names (core/ is imflow.core), which the editable install maps with an import hook neither tool
follows, so they run on a copy of the source laid out as installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
CONFIG = ROOT / "pyproject.toml"
LINTED = ("core", "gateway", "streams")  # the folders that must pass ruff and mypy
SUBPACKAGES = ("core", "gateway", "streams", "plugins")  # folders installed as imflow.<folder>
BIN = Path(sys.executable).parent


def run(tool: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a console script of this venv; stdout and stderr are captured as one text."""
    return subprocess.run(
        [str(BIN / tool), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=150,
    )


@pytest.fixture(scope="module")
def installed_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``imflow/`` as it installs: imflow/ with core/, gateway/ ... inside it."""
    root = tmp_path_factory.mktemp("layout")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "imflow", root / "imflow", ignore=ignore)
    for folder in SUBPACKAGES:
        shutil.copytree(ROOT / folder, root / "imflow" / folder, ignore=ignore)
    return root


def as_in_repo(report: str) -> str:
    """Paths in a report on the copied layout, written as the repository's (imflow/core/x.py -> core/x.py)."""
    for folder in SUBPACKAGES:
        report = report.replace(f"imflow/{folder}/", f"{folder}/")
    return report


def test_ruff_finds_nothing() -> None:
    result = run("ruff", "check", "--config", str(CONFIG), "--output-format", "concise", "--no-cache", *LINTED, cwd=ROOT)
    if result.returncode:
        pytest.fail(f"ruff check {' '.join(LINTED)}:\n{result.stdout}", pytrace=False)


def test_mypy_finds_nothing(installed_layout: Path) -> None:
    packages = [arg for folder in LINTED for arg in ("-p", f"imflow.{folder}")]
    result = run(
        "mypy", "--config-file", str(CONFIG), "--cache-dir", str(installed_layout / ".mypy_cache"), *packages,
        cwd=installed_layout, env={"MYPYPATH": str(installed_layout)},
    )
    if result.returncode:
        pytest.fail(f"mypy {' '.join(packages)}:\n{as_in_repo(result.stdout)}", pytrace=False)


def test_import_contracts_hold(installed_layout: Path) -> None:
    # PYTHONPATH's imflow wins over the editable install's hook, which Python consults last; a contract
    # naming a module missing from the graph is an error, so the copy cannot pass by being empty
    result = run(
        "lint-imports", "--config", str(CONFIG), "--no-cache", cwd=installed_layout, env={"PYTHONPATH": str(installed_layout)},
    )
    if result.returncode:
        pytest.fail(f"lint-imports (contracts in pyproject.toml):\n{result.stdout}", pytrace=False)
