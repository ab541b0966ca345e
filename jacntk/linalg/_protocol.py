"""The operator protocol the solvers of :mod:`jacntk.linalg` are written against: any
``scipy.sparse.linalg.LinearOperator`` (or an array, wrapped here) with ``matmat``; plus
:class:`ConvergenceWarning`.  The solvers built on it (in ``_cg.py``, ``_preconditioners.py`` and
``_lanczos.py``):

* ``cg``: preconditioned conjugate gradients for many right-hand sides at once (one ``matmat``
  per iteration for all unconverged columns), with diagnostics: iterations, the residual history,
  the jitter of the operator, and warnings on stagnation, loss of positive definiteness or NaN.
* preconditioners: ``block_jacobi`` (exact inverse of each point's diagonal block; O(d) per point
  for full augmentation, docs/math.md §6.2) and ``nystrom`` (randomised rank-k Nystrom).
* ``lanczos_functions``: ``f(A) v`` for many functions ``f`` (e.g. ``exp(-c t s)`` at many times
  ``t``) in one Krylov basis with full reorthogonalisation, an a-posteriori error estimate per
  function, and stopping when every function has converged.  ``lanczos_expm``, ``lanczos_phi``,
  ``lanczos_psi`` are the training-dynamics filters of docs/math.md §8.2.
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
