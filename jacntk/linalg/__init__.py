"""Linear algebra: the Gram operator protocol and its operators, Krylov solvers, preconditioners."""

from ._cg import SolveResult, cg
from ._gram import DenseGram, GramOperator, StructuredGram
from ._lanczos import (
    KrylovResult,
    extreme_eigenvalues,
    lanczos_expm,
    lanczos_functions,
    lanczos_phi,
    lanczos_psi,
)
from ._preconditioners import block_jacobi, nystrom
from ._protocol import ConvergenceWarning
from ._scaled import CrossGram, ScaledGram
from ._stored import StoredGram

__all__ = [
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
]
