"""notebooks/quickstart.ipynb runs top to bottom in a fresh kernel, as a new user runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="install the test extra: pip install -e '.[test]'")
nbclient = pytest.importorskip("nbclient", reason="install the test extra: pip install -e '.[test]'")

pytestmark = pytest.mark.integration

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs_without_errors(tmp_path: Path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",  # ipykernel's own spec: this interpreter, whatever Jupyter knows
        timeout=120,  # per cell
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output.output_type == "error"]
    assert any("image/png" in output.get("data", {}) for output in outputs), "the throughput chart is missing"
    text = "".join(output.get("text", "") for output in outputs)
    assert "sent 20,000 messages" in text and "consumed 20,000 messages" in text
