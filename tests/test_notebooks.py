"""Every validation notebook runs top to bottom at small size with a real Jupyter kernel.

The notebooks in ``notebooks/`` are executed by nbclient in the ``python3`` kernel of this
environment with ``JACNTK_NOTEBOOK_SIZE=small`` (the executed copy is discarded; the committed
files keep their full-size outputs).  A cell that raises fails the test with the cell's traceback.
"""

import importlib.util
import os
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.notebooks

nbformat = pytest.importorskip("nbformat", reason="nbformat is needed to read the notebooks")
nbclient = pytest.importorskip("nbclient", reason="nbclient is needed to execute the notebooks")
pytest.importorskip("ipykernel", reason="ipykernel provides the notebooks' python3 kernel")
pytest.importorskip("matplotlib", reason="the notebooks plot with matplotlib")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
#: Wall-clock limit per notebook at small size (the six together should take <= 240 s).
PER_NOTEBOOK_TIMEOUT = 200


def _missing_requirement(name: str) -> str | None:
    """Why a notebook cannot run here (an optional dependency or data set), or None."""
    if name.startswith("02_") and importlib.util.find_spec("sklearn") is None:
        return "notebook 02 needs scikit-learn (breast-cancer data): pip install scikit-learn"
    if name.startswith("03_"):
        from jacntk.data import FASHION_MNIST_DIR

        if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
            return f"notebook 03 needs Fashion-MNIST in {FASHION_MNIST_DIR}"
    return None


def test_all_six_notebooks_are_present():
    prefixes = sorted(name[:2] for name in NOTEBOOKS)
    assert prefixes == ["01", "02", "03", "04", "05", "06"], NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_carries_full_size_figures(name):
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"], f"{name} has error outputs"
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{name} was committed without its figures (execute it at full size)"
    text = "".join(o.get("text", "") for o in outputs)
    assert "size=small" not in text, f"{name} was committed with small-size outputs"
    assert nb.cells[-1].cell_type == "markdown" and "onclusion" in nb.cells[-1].source, (
        f"{name} must end with a conclusion in words"
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_at_small_size(name, monkeypatch):
    reason = _missing_requirement(name)
    if reason:
        pytest.skip(reason)
    monkeypatch.setenv("JACNTK_NOTEBOOK_SIZE", "small")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=PER_NOTEBOOK_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError with the traceback of a failing cell
    elapsed = time.perf_counter() - start
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name} drew no figure"
    assert elapsed < PER_NOTEBOOK_TIMEOUT
    assert os.environ["JACNTK_NOTEBOOK_SIZE"] == "small"
