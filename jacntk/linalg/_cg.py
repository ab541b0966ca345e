"""Preconditioned conjugate gradients for many right-hand sides at once."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ._protocol import ConvergenceWarning, _operator, _operator_and_columns


@dataclass
class SolveResult:
    """Solution and diagnostics of a (block) CG solve.

    Attributes
    ----------
    x : (n,) or (n, k) solution
    converged : (k,) bool per right-hand side
    iterations : int, iterations run (products with the operator)
    residuals : (iterations + 1, k) relative residual norms ``|r| / |b|`` (recursive)
    true_residual : (k,) ``|b - A x| / |b|`` recomputed at the end
    jitter : float, the operator's jitter (0 if none)
    messages : list of str, warnings raised (stagnation, NaN, indefinite)
    """

    x: np.ndarray
    converged: np.ndarray
    iterations: int
    residuals: np.ndarray
    true_residual: np.ndarray
    jitter: float
    messages: list = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"CG: {self.iterations} iterations, converged {int(self.converged.sum())}/"
            f"{self.converged.size}, final relative residual "
            f"{float(np.max(self.true_residual)):.2e}, jitter {self.jitter:g}"
        )


def cg(
    A,
    B,
    *,
    M=None,
    tol: float = 1e-10,
    maxiter: int | None = None,
    x0=None,
    stagnation: int = 1000,
    callback: Callable[[int, np.ndarray], None] | None = None,
    warn: bool = True,
) -> SolveResult:
    """Preconditioned conjugate gradients for ``A X = B`` with many right-hand sides.

    Each column runs the standard PCG recurrence (``alpha = r^T z / p^T A p``,
    ``beta = r_new^T z_new / r^T z``); all unconverged columns share one ``A.matmat`` and one
    ``M.matmat`` per iteration.  A column stops when ``|r| <= tol |b|``.

    Parameters
    ----------
    A : symmetric positive definite operator (n, n)
    B : (n,) or (n, k)
    M : operator approximating ``A^{-1}`` (e.g. ``block_jacobi(A)``), optional
    tol : relative residual tolerance
    maxiter : default ``min(10 n, 20000)``
    x0 : initial guess, default 0
    stagnation : stop a column whose best residual has not improved by 10% in this many
        iterations (CG residuals are not monotone: keep this generous)
    callback : called as ``callback(iteration, relative_residuals)`` after each iteration
    warn : issue a :class:`ConvergenceWarning` when a column did not converge

    Returns
    -------
    SolveResult
    """
    A, Bm, vector = _operator_and_columns(A, B, "right-hand side")
    n = A.shape[0]
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    k = Bm.shape[1]
    maxiter = min(10 * n, 20000) if maxiter is None else int(maxiter)
    bnorm = np.linalg.norm(Bm, axis=0)
    bnorm_safe = np.where(bnorm > 0, bnorm, 1.0)
    X = np.zeros_like(Bm) if x0 is None else np.array(x0, dtype=np.float64).reshape(n, k)
    R = Bm - A.matmat(X) if x0 is not None else Bm.copy()
    precond = (lambda V: V) if M is None else _operator(M).matmat
    Z = precond(R)
    P = Z.copy()
    rz = np.einsum("ij,ij->j", R, Z)
    res = np.linalg.norm(R, axis=0) / bnorm_safe
    history = [res.copy()]
    active = res > tol
    best = res.copy()
    best_it = np.zeros(k, dtype=int)
    messages: list[str] = []
    it = 0
    while active.any() and it < maxiter:
        it += 1
        cols = np.flatnonzero(active)
        AP = A.matmat(P[:, cols])
        pap = np.einsum("ij,ij->j", P[:, cols], AP)
        bad = ~(pap > 0) | ~np.isfinite(pap)
        if bad.any():
            for c in cols[bad]:
                kind = "NaN" if not np.isfinite(pap[cols == c][0]) else "p^T A p <= 0"
                messages.append(
                    f"column {c}: {kind} at iteration {it} (operator not positive definite to "
                    f"working precision: add jitter); residual {res[c]:.2e}"
                )
            active[cols[bad]] = False
            keep = ~bad
            cols, AP, pap = cols[keep], AP[:, keep], pap[keep]
            if cols.size == 0:
                break
        alpha = rz[cols] / pap
        X[:, cols] += alpha * P[:, cols]
        R[:, cols] -= alpha * AP
        res[cols] = np.linalg.norm(R[:, cols], axis=0) / bnorm_safe[cols]
        if not np.isfinite(res[cols]).all():
            bad_cols = cols[~np.isfinite(res[cols])]
            messages.append(f"columns {bad_cols.tolist()}: NaN residual at iteration {it}")
            active[bad_cols] = False
        improved = res < 0.9 * best
        best_it[improved] = it
        best = np.minimum(best, res)
        stalled = active & (it - best_it >= stagnation)
        for c in np.flatnonzero(stalled):
            messages.append(
                f"column {c}: stagnated at relative residual {best[c]:.2e} "
                f"(no 10% improvement in {stagnation} iterations, iteration {it})"
            )
        active &= ~stalled
        active &= res > tol
        history.append(res.copy())
        if callback is not None:
            callback(it, res.copy())
        cols = np.flatnonzero(active)
        if cols.size == 0:
            break
        Zc = precond(R[:, cols])
        rz_new = np.einsum("ij,ij->j", R[:, cols], Zc)
        beta = rz_new / rz[cols]
        P[:, cols] = Zc + beta * P[:, cols]
        rz[cols] = rz_new
    true_res = np.linalg.norm(Bm - A.matmat(X), axis=0) / bnorm_safe
    # The recurrence residual decides convergence; the true residual may drift above it by
    # rounding, and a column whose true residual is off by more than 10x has not converged.
    converged = (res <= tol) & (true_res <= 10 * tol)
    for c in np.flatnonzero((res <= tol) & ~converged):
        messages.append(
            f"column {c}: the recurrence residual reached {res[c]:.2e} but the true residual is "
            f"{true_res[c]:.2e} > 10 tol: rounding limits the attainable accuracy of this "
            "operator (ill-conditioned); ask for a larger tol or add jitter"
        )
    if not converged.all() and it >= maxiter:
        messages.append(f"reached maxiter={maxiter}")
    result = SolveResult(
        X[:, 0] if vector else X,
        converged,
        it,
        np.array(history),
        true_res,
        float(getattr(A, "jitter", 0.0)),
        messages,
    )
    if warn and not converged.all():
        warnings.warn(
            ConvergenceWarning(
                f"CG did not converge for {int((~converged).sum())} of {k} right-hand sides: "
                f"{result.summary()} (tol {tol:g}); " + "; ".join(messages[:5])
            ),
            stacklevel=2,
        )
    return result


# --------------------------------------------------------------------------------------------
# Lanczos matrix functions
