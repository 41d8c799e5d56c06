"""Every analyst notebook runs top to bottom on a simulated archive and draws its plots; the
committed notebooks carry no outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from imflow.simulate import Scenario, to_archive

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("notebooks") / "archive"
    to_archive(root, Scenario(users=5_000, messages=80_000, days=7, chunk=40_000, max_group=3_000))
    return root


def test_there_are_the_notebooks_analysts_asked_for() -> None:
    names = {path.stem for path in NOTEBOOKS}
    assert {"01-traffic-overview", "02-fan-out-economics", "03-delivery-and-latency", "04-unread",
            "05-red-packets-and-live-rooms", "06-contact-graph"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebooks_have_no_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_plots(path: Path, archive: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMFLOW_ARCHIVE", str(archive))
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    plots = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(plots) >= 3, f"{path.name} drew {len(plots)} plots"
    assert str(archive) in "".join(o.get("text", "") for o in outputs), "it opened the archive it was given"
