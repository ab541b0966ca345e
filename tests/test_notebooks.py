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


REPO_ROOT = NOTEBOOK_DIR.parent


def _common():
    """``notebooks/_common.py`` as a module (it is not part of the jacntk package)."""
    spec = importlib.util.spec_from_file_location("_notebook_common", NOTEBOOK_DIR / "_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_max_error_ci_contains_its_estimate_and_covers_the_finite_width_error():
    """Monte-Carlo samples ``K + noise`` of a kernel at max-norm distance ``theta`` from ``exact``:
    the interval contains ``max|mean - exact|`` every time and covers ``theta`` in >= 90% of 200
    repetitions, for pure noise (theta = 0, the case the old interval got wrong) and for a bias
    that dominates the noise (then the lower end is positive)."""
    import numpy as np

    C = _common()
    rng = np.random.default_rng(7)
    for bias, m in ((0.0, 10), (0.05, 10), (0.5, 10), (0.5, 4)):
        K = np.zeros((6, 6))
        K[0, :3] = bias * np.array([1.0, -0.5, 0.25])
        exact = np.zeros((6, 6))
        theta = np.abs(K - exact).max()
        covered = positive = 0
        for r in range(200):
            samples = K + 0.1 * rng.standard_normal((m, 6, 6))
            est, lo, hi = C.max_error_ci(samples, exact, seed=r)
            assert est == pytest.approx(np.abs(samples.mean(axis=0) - exact).max(), rel=1e-12)
            assert 0.0 <= lo <= est <= hi
            covered += lo <= theta <= hi
            positive += lo > 0
        assert covered >= 180, (bias, m, covered)
        if bias == 0.5:
            assert positive >= 190, (m, positive)


def test_max_error_ci_chunking_and_arguments():
    import numpy as np

    C = _common()
    samples = np.random.default_rng(0).standard_normal((5, 7, 3))
    exact = np.zeros((7, 3))
    assert C.max_error_ci(samples, exact, chunk=4) == C.max_error_ci(samples, exact)
    assert C.max_error_ci(samples, exact, seed=1) != C.max_error_ci(samples, exact, seed=2)
    with pytest.raises(ValueError, match="do not match"):
        C.max_error_ci(samples, np.zeros((7, 2)))
    with pytest.raises(ValueError, match="at least 2"):
        C.max_error_ci(samples[:1], exact)
    with pytest.raises(ValueError, match="level"):
        C.max_error_ci(samples, exact, level=1.5)


@pytest.mark.slow
def test_notebook_runs_with_the_repository_root_as_working_directory(monkeypatch, tmp_path):
    """The kernel starts in the repository root (as ``jupyter lab`` or nbclient started there
    would); the first cell still finds ``_common.py``.  A kernel started outside the repository
    fails with a message that says so."""
    monkeypatch.setenv("JACNTK_NOTEBOOK_SIZE", "small")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    name = "04_lambda_min_depth.ipynb"  # the quickest of the six at small size
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=PER_NOTEBOOK_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(REPO_ROOT)}},
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name} drew no figure"

    first = next(
        c for c in nbformat.read(NOTEBOOK_DIR / name, as_version=4).cells if c.cell_type == "code"
    )
    outside = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(first.source)])
    outside.metadata = nb.metadata
    client = nbclient.NotebookClient(
        outside, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="jacntk repository"):
        client.execute()
