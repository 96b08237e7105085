"""The notebooks in examples/: each runs top to bottom with nbclient on a tiny random model,
and each is committed without outputs (so a diff shows what changed in the code, not in the
numbers a run printed)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))
# What each notebook must have printed: the step that shows its point worked.
EXPECTED = {
    "01-getting-started.ipynb": ["completed", "adapter_model.safetensors", "after: "],
    "02-training-from-python.ipynb": [
        "max_steps after 2 steps",
        "mlx-run/adapter",
        "torch-run/adapter",
    ],
    "03-preparing-data.ipynb": ["sharegpt", "3 examples", "left out:"],
    "04-exporting-and-serving.ipynb": ["merged", "completion_tokens"],
}


def test_the_notebooks_are_the_ones_expected() -> None:
    assert [p.name for p in NOTEBOOKS] == sorted(EXPECTED)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)
    for number, cell in enumerate(book.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.name}: cell {number} holds outputs; clear them before committing "
                "(Jupyter: Edit > Clear All Outputs)"
            )


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory, tiny_model_factory) -> Iterator[Any]:
    """One kernel for every notebook (torch, transformers and MLX imported once), its names
    cleared before each: the tiny model, two steps, offline, and folders of its own."""
    from nbclient import NotebookClient

    work = tmp_path_factory.mktemp("notebooks")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env |= {
        "FT_EXAMPLE_MODEL": str(tiny_model_factory("llama")),
        "FT_EXAMPLE_STEPS": "2",
        "FT_HOME": str(work / "home"),
        "HF_HOME": str(work / "hf"),
        "HF_HUB_OFFLINE": "1",
    }
    client = NotebookClient(
        nbformat.v4.new_notebook(), timeout=600, kernel_name="python3",
        resources={"metadata": {"path": str(work)}},
    )  # fmt: skip
    with client.setup_kernel(env=env):
        yield client


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, kernel: Any) -> None:
    book = nbformat.read(path, as_version=4)
    kernel.nb = book
    # Nothing a notebook defined is seen by the next: each runs as if alone.
    kernel.execute_cell(nbformat.v4.new_code_cell("%reset -f"), 0)
    for index, cell in enumerate(book.cells):
        if cell.cell_type == "code":
            kernel.execute_cell(cell, index)
    printed = "\n".join(
        output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
        for cell in book.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    for expected in EXPECTED[path.name]:
        assert expected in printed, f"{path.name} did not print {expected!r}:\n{printed[-3000:]}"
