"""jacntk: infinite-width NNGP/NTK kernels and their Jacobian-augmented forms for deep MLPs.

The public API is re-exported here; the implementation lives in subpackages by concern
(``kernels``, ``linalg``, ``store``, ``training``, ``finite``; see docs/architecture.md).
"""

from ._version import __version__ as __version__
from .arch import ACTIVATIONS, KINDS, MLP
from .kernels import (
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
from .linalg import (
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
from .store import GramStore, assemble
from .training import (
    KernelClassifier,
    KernelRegressor,
    Prediction,
    max_stable_learning_rate,
    predict,
)

__all__ = [
    "ACTIVATIONS",
    "FIELD_NAMES",
    "KINDS",
    "MLP",
    "ConvergenceWarning",
    "CrossGram",
    "DenseGram",
    "GramOperator",
    "GramStore",
    "KernelClassifier",
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
]
