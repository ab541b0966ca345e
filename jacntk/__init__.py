"""jacntk: infinite-width NNGP/NTK kernels and their Jacobian-augmented forms for deep MLPs."""

from .arch import ACTIVATIONS, KINDS, MLP
from .assembly import assemble
from .blocks import (
    augment,
    coordinate_directions,
    projected_kernel,
    random_directions,
    structured_matmul,
)
from .dynamics import Prediction, max_stable_learning_rate, predict
from .estimator import KernelRegressor
from .fields import FIELD_NAMES, KernelFields, kernel_fields
from .kernels import kernel
from .operators import CrossGram, DenseGram, GramOperator, ScaledGram, StoredGram, StructuredGram
from .solvers import (
    ConvergenceWarning,
    KrylovResult,
    SolveResult,
    block_jacobi,
    cg,
    extreme_eigenvalues,
    lanczos_expm,
    lanczos_functions,
    lanczos_phi,
    lanczos_psi,
    nystrom,
)
from .store import GramStore

__version__ = "0.1.0"

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
