"""Every analyst notebook runs top to bottom on a simulated lake and draws its plots; the
committed notebooks carry no outputs. Under scripts/test the lake is the production kind
(PostgreSQL catalog, data on S3), named to the notebooks by its catalog string; else an
embedded one, named by its folder."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from stacks import archive_lake_config, drop_archive

from imflow.simulate import Scenario, to_archive

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment that points a notebook at the simulated lake (IMFLOW_ARCHIVE first)."""
    folder = tmp_path_factory.mktemp("notebooks") / "archive"
    config = archive_lake_config(folder, f"notebooks_{uuid.uuid4().hex[:10]}")
    to_archive(config, Scenario(users=5_000, messages=80_000, days=7, chunk=40_000, max_group=3_000))
    if config.catalog_kind == "sqlite":
        yield {"IMFLOW_ARCHIVE": str(folder)}
    else:
        s3 = {"IMFLOW_S3_ENDPOINT": config.s3_endpoint, "IMFLOW_S3_KEY_ID": config.s3_key_id, "IMFLOW_S3_SECRET": config.s3_secret,
              "IMFLOW_S3_REGION": config.s3_region, "IMFLOW_S3_USE_SSL": str(config.s3_use_ssl).lower()}
        yield {"IMFLOW_ARCHIVE": config.catalog, "IMFLOW_ARCHIVE_SCHEMA": config.schema or "",
               "IMFLOW_ARCHIVE_DATA_PATH": config.data_path, **{name: value for name, value in s3.items() if value}}
    drop_archive(config)


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
def test_notebook_runs_and_plots(path: Path, archive: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in archive.items():
        monkeypatch.setenv(name, value)
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    plots = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(plots) >= 3, f"{path.name} drew {len(plots)} plots"
    assert archive["IMFLOW_ARCHIVE"] in "".join(o.get("text", "") for o in outputs), "it opened the archive it was given"
