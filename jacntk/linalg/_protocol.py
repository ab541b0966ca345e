"""Krylov solvers written once against the operator protocol of :mod:`jacntk.linalg`.

* ``cg``: preconditioned conjugate gradients for many right-hand sides at once (one ``matmat``
  per iteration for all unconverged columns), with diagnostics: iterations, the residual history,
  the jitter of the operator, and warnings on stagnation, loss of positive definiteness or NaN.
* preconditioners: ``block_jacobi`` (exact inverse of each point's diagonal block; O(d) per point
  for full augmentation, math.md §5.3) and ``nystrom`` (randomised rank-k Nystrom).
* ``lanczos_functions``: ``f(A) v`` for many functions ``f`` (e.g. ``exp(-c t s)`` at many times
  ``t``) in one Krylov basis with full reorthogonalisation, an a-posteriori error estimate per
  function, and stopping when every function has converged.  ``lanczos_expm``, ``lanczos_phi``,
  ``lanczos_psi`` are the training-dynamics filters of math.md §4.4.
* ``extreme_eigenvalues``: Ritz estimates of the smallest and largest eigenvalue.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse.linalg import LinearOperator, aslinearoperator


class ConvergenceWarning(RuntimeWarning):
    """A solve stopped before reaching its tolerance; the message carries the diagnostics."""


def _operator(A) -> LinearOperator:
    op = A if isinstance(A, LinearOperator) else aslinearoperator(np.asarray(A, dtype=np.float64))
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"the operator must be square, got shape {op.shape}")
    return op


def _operator_and_columns(A, V, name: str) -> tuple[LinearOperator, np.ndarray, bool]:
    """The operator, ``V`` as finite float64 columns (n, k), and whether ``V`` was 1-D."""
    A = _operator(A)
    n = A.shape[0]
    M = np.asarray(V, dtype=np.float64)
    single = M.ndim == 1
    if single:
        M = M[:, None]
    if M.ndim != 2 or M.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) or ({n}, k), got {np.shape(V)}")
    if not np.isfinite(M).all():
        raise ValueError(f"{name} contains NaN or inf")
    return A, M, single


# --------------------------------------------------------------------------------------------
# Preconditioners
