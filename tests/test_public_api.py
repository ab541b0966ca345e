"""The public API: ``import jacntk`` exposes exactly these names, each from its subpackage."""

from __future__ import annotations

import importlib
import pkgutil

import jacntk

#: The top-level names of jacntk 0.1 (before the move into subpackages); they must not change.
PUBLIC = {
    "ACTIVATIONS",
    "FIELD_NAMES",
    "KINDS",
    "MLP",
    "ConvergenceWarning",
    "CrossGram",
    "DenseGram",
    "GramOperator",
    "GramStore",
    "KernelFields",
    "KernelRegressor",
    "KrylovResult",
    "Prediction",
    "ScaledGram",
    "SolveResult",
    "StoredGram",
    "StructuredGram",
    "assemble",
    "augment",
    "block_jacobi",
    "cg",
    "coordinate_directions",
    "extreme_eigenvalues",
    "kernel",
    "kernel_fields",
    "lanczos_expm",
    "lanczos_functions",
    "lanczos_phi",
    "lanczos_psi",
    "max_stable_learning_rate",
    "nystrom",
    "predict",
    "projected_kernel",
    "random_directions",
    "structured_matmul",
}
#: Names added since 0.1 (the 0.1 names above stay).
ADDED = {"KernelClassifier"}

SUBPACKAGES = ("kernels", "linalg", "store", "training", "finite")


def test_top_level_exports_exactly_the_public_names():
    assert set(jacntk.__all__) == PUBLIC | ADDED
    for name in PUBLIC | ADDED:
        assert getattr(jacntk, name) is not None
    assert isinstance(jacntk.__version__, str)


def test_every_public_name_is_reexported_from_its_subpackage():
    """The top level only re-exports: each name is the same object as in a subpackage."""
    for name in (PUBLIC | ADDED) - {"ACTIVATIONS", "KINDS", "MLP"}:
        owners = [p for p in SUBPACKAGES if name in importlib.import_module(f"jacntk.{p}").__all__]
        assert owners, f"{name} is not exported by any of {SUBPACKAGES}"
        assert getattr(importlib.import_module(f"jacntk.{owners[0]}"), name) is getattr(
            jacntk, name
        )


def test_subpackage_all_lists_resolve_and_modules_are_private():
    for p in SUBPACKAGES:
        pkg = importlib.import_module(f"jacntk.{p}")
        for name in pkg.__all__:
            assert hasattr(pkg, name), f"jacntk.{p}.__all__ names missing {name}"
        mods = [m.name for m in pkgutil.iter_modules(pkg.__path__)]
        assert mods and all(m.startswith("_") for m in mods), (p, mods)


def test_version_has_a_single_source():
    from importlib.metadata import version

    from jacntk._version import __version__

    assert jacntk.__version__ is __version__
    assert version("jacntk") == __version__
