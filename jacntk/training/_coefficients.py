"""Coefficients of the trained network: ``phi_t(B) D^{1/2} (Y - F_0)`` by Cholesky,
CG or Lanczos (docs/math.md §5)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from ..linalg._cg import cg
from ..linalg._lanczos import lanczos_functions, phi_function, psi_function
from ..linalg._preconditioners import block_jacobi, nystrom
from ..linalg._protocol import ConvergenceWarning
from ..linalg._scaled import ScaledGram
from ._system import THREADED_CHOLESKY_LIMIT, TrainingSystem


def _preconditioner(B: ScaledGram, preconditioner, rank: int):
    if preconditioner is None or preconditioner == "none":
        return None
    if preconditioner == "block-jacobi":
        return block_jacobi(B)
    if preconditioner == "nystrom":
        return nystrom(B, min(rank, B.shape[0] - 1))
    if hasattr(preconditioner, "matmat"):
        return preconditioner
    raise ValueError(
        "preconditioner must be 'block-jacobi', 'nystrom', None or an operator, got "
        f"{preconditioner!r}"
    )


@dataclass
class Coefficients:
    """``Z[j] = D^{1/2} filter_j(B) D^{1/2} (Y - F_0(X))``: prediction = ``Theta(x, X) Z[j]``.

    Attributes
    ----------
    times : (T,) times (``steps`` * learning_rate for discrete GD)
    Z : (T, N * block, k)
    diagnostics : dict
    """

    times: np.ndarray
    Z: np.ndarray
    diagnostics: dict = field(default_factory=dict)


def _check_schedule(times, steps, learning_rate: float):
    if (times is None) == (steps is None):
        raise ValueError("give exactly one of times= (gradient flow) or steps= (gradient descent)")
    if steps is not None:
        k = np.atleast_1d(np.asarray(steps))
        if k.ndim != 1 or k.size == 0 or not np.issubdtype(k.dtype, np.integer) or (k < 0).any():
            raise ValueError(f"steps must be a list of integers >= 0, got {steps!r}")
        return k.astype(float) * learning_rate, k.astype(np.int64)
    t = np.atleast_1d(np.asarray(times, dtype=np.float64))
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"times must be a non-empty list of numbers, got {times!r}")
    if np.isnan(t).any() or (t < 0).any():
        raise ValueError(f"times must be >= 0 (float('inf') allowed), got {t.tolist()}")
    return t, None


def _dense_pinv_solve(B: ScaledGram, rhs: np.ndarray) -> tuple[np.ndarray, str]:
    """``phi_inf(B) rhs = B^+ rhs`` for a dense ``B``: Cholesky when ``B`` is numerically
    positive definite, else the eigendecomposition with eigenvalues below
    ``n eps lambda_max`` treated as zero (the pseudo-inverse of math.md §4.4)."""
    from scipy.linalg import LinAlgError, cho_factor, cho_solve, eigh

    def scaled_copy() -> np.ndarray:
        """``D^{1/2} Theta D^{1/2} + jitter I`` as one new array."""
        A = B.base.to_dense() * B.scale[:, None]
        A *= B.scale[None, :]
        A.flat[:: A.shape[0] + 1] += B.jitter
        return A

    A = scaled_copy()  # factorised in place below
    # OpenBLAS 0.3.31's threaded Cholesky segfaults from n ~ 16000 (measured here); one BLAS
    # thread is safe there.
    threads = 1 if A.shape[0] > THREADED_CHOLESKY_LIMIT else None
    try:
        # A is exactly symmetric, so its transpose is the same matrix in Fortran order: LAPACK
        # factorises that view in place (A itself would be copied to Fortran order first).
        with threadpool_limits(limits=threads, user_api="blas"):
            factor = cho_factor(A.T, lower=True, overwrite_a=True, check_finite=False)
        return cho_solve(factor, rhs), "cholesky"
    except LinAlgError:
        A = scaled_copy()  # the failed factorisation overwrote A
        with threadpool_limits(limits=threads, user_api="blas"):
            w, V = eigh(0.5 * (A + A.T), check_finite=False)
        keep = w > A.shape[0] * np.finfo(float).eps * max(w[-1], 0.0)
        return V[:, keep] @ ((V[:, keep].T @ rhs) / w[keep, None]), "eigh (pseudo-inverse)"


def solve_coefficients(
    system: TrainingSystem,
    residual: np.ndarray,
    *,
    times=None,
    steps=None,
    learning_rate: float = 1.0,
    tol: float = 1e-10,
    maxiter: int | None = None,
    preconditioner="block-jacobi",
    rank: int = 100,
    callback=None,
) -> Coefficients:
    """Dual coefficients for every time: Lanczos for finite times (one Krylov basis per target
    column); for ``t = inf`` a direct solve when ``B`` is dense in memory, else preconditioned
    CG on ``B`` (+ jitter).

    Parameters
    ----------
    residual : (N * block, k)
        ``Y - F_0(X)``, point-major.
    """
    t, k = _check_schedule(times, steps, learning_rate)
    B, c = system.B, system.c
    rs = system.sqrt_d[:, None] * residual
    Z = np.zeros((t.size, rs.shape[0], rs.shape[1]))
    diag: dict = {"c": c, "jitter": system.jitter, "operator": system.operator, "lanczos": []}
    finite = [i for i in range(t.size) if np.isfinite(t[i]) and t[i] > 0]
    if finite:
        fns = [
            psi_function(c, int(k[i])) if k is not None else phi_function(c, t[i]) for i in finite
        ]
        # one Krylov basis per target column, all advanced by one product per step
        res = lanczos_functions(B, rs, fns, tol=tol, maxiter=maxiter, callback=callback, warn=False)
        Z[finite] = res.values
        ritz_max = res.ritz_max
        diag["lanczos"].append(res.summary())
        for j in np.flatnonzero(~res.converged.all(axis=0)):
            warnings.warn(
                ConvergenceWarning(
                    f"Lanczos did not reach tol {tol:g} for output {j}: max error estimate "
                    f"{float(res.error_estimates[:, j].max()):.2e} ({res.summary()})"
                ),
                stacklevel=3,
            )
        diag["ritz_max"] = ritz_max
        if k is not None and c * ritz_max >= 2.0:
            warnings.warn(
                f"gradient descent is unstable: c * lambda_max(B) = {c * ritz_max:.3g} >= 2 "
                f"(learning rate below {2 * learning_rate / (c * ritz_max):.3g} is stable)",
                RuntimeWarning,
                stacklevel=3,
            )
    inf = [i for i in range(t.size) if np.isinf(t[i])]
    if inf and system.operator == "dense":
        # In memory: a direct solve beats CG on these ill-conditioned matrices (math.md §6.4).
        x, diag["solver"] = _dense_pinv_solve(B, rs)
        Z[inf] = x
    elif inf:
        diag["solver"] = "cg"
        M = _preconditioner(B, preconditioner, rank)
        cg_cb = None if callback is None else (lambda it, r: callback(it, r))
        res = cg(B, rs, M=M, tol=tol, maxiter=maxiter, callback=cg_cb, warn=False)
        diag["cg"] = res.summary()
        diag["cg_result"] = res
        if not res.converged.all():
            warnings.warn(
                ConvergenceWarning(
                    f"CG at t=inf did not converge: {res.summary()} (tol {tol:g}); "
                    + "; ".join(res.messages[:3])
                    + ". B is likely numerically singular: use jitter > 0, a finite time, "
                    "or more depth / standardised inputs (math.md §6.4)"
                ),
                stacklevel=3,
            )
        Z[inf] = res.x.reshape(rs.shape)
    Z *= system.sqrt_d[None, :, None]
    return Coefficients(t, Z, diag)
