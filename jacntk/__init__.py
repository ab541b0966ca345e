"""jacntk: infinite-width NNGP/NTK kernels and their Jacobian-augmented forms for deep MLPs.

The public API is re-exported here; the implementation lives in subpackages by concern
(``kernels``, ``linalg``, ``store``, ``training``, ``finite``; see docs/architecture.md).
Names are imported on first use (PEP 562), so that ``import jacntk`` (and ``jacntk --help``)
does not load Numba, SciPy, Dask or Zarr until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__ as __version__

#: public name -> submodule that defines it
_EXPORTS = {
    **dict.fromkeys(("ACTIVATIONS", "KINDS", "MLP"), "arch"),
    **dict.fromkeys(
        (
            "FIELD_NAMES",
            "KernelFields",
            "augment",
            "coordinate_directions",
            "kernel",
            "kernel_fields",
            "projected_kernel",
            "random_directions",
            "structured_matmul",
        ),
        "kernels",
    ),
    **dict.fromkeys(
        (
            "ConvergenceWarning",
            "CrossGram",
            "DenseGram",
            "GramOperator",
            "KrylovResult",
            "ScaledGram",
            "SolveResult",
            "StoredGram",
            "StructuredGram",
            "block_jacobi",
            "cg",
            "extreme_eigenvalues",
            "lanczos_expm",
            "lanczos_functions",
            "lanczos_phi",
            "lanczos_psi",
            "nystrom",
        ),
        "linalg",
    ),
    **dict.fromkeys(("GramStore", "assemble"), "store"),
    **dict.fromkeys(
        (
            "KernelClassifier",
            "KernelRegressor",
            "Prediction",
            "max_stable_learning_rate",
            "predict",
        ),
        "training",
    ),
}

__all__ = sorted(_EXPORTS)


#: subpackages and modules reachable as attributes (``jacntk.store.GramStore``) without an import
_SUBMODULES = frozenset(
    ("arch", "cli", "data", "depth", "distributed", "finite", "kernels", "linalg", "options")
    + ("progress", "store", "training", "validation")
)


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'jacntk' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from .arch import ACTIVATIONS, KINDS, MLP  # noqa: F401
    from .kernels import (  # noqa: F401
        FIELD_NAMES,
        KernelFields,
        augment,
        coordinate_directions,
        kernel,
        kernel_fields,
        projected_kernel,
        random_directions,
        structured_matmul,
    )
    from .linalg import (  # noqa: F401
        ConvergenceWarning,
        CrossGram,
        DenseGram,
        GramOperator,
        KrylovResult,
        ScaledGram,
        SolveResult,
        StoredGram,
        StructuredGram,
        block_jacobi,
        cg,
        extreme_eigenvalues,
        lanczos_expm,
        lanczos_functions,
        lanczos_phi,
        lanczos_psi,
        nystrom,
    )
    from .store import GramStore, assemble  # noqa: F401
    from .training import (  # noqa: F401
        KernelClassifier,
        KernelRegressor,
        Prediction,
        max_stable_learning_rate,
        predict,
    )
