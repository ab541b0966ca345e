"""Krylov solvers written once against the operator protocol of :mod:`jacntk.operators`.

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

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import eigh_tridiagonal
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


class BlockJacobi(LinearOperator):
    """Exact inverse of the per-point diagonal blocks of a Gram operator (math.md §5.3).

    Two representations:

    * ``inverse`` (n, b, b): explicit inverses of the diagonal blocks (any block size);
    * ``fields`` (8, n) and ``points`` (n, d) of a full Jacobian-augmented operator
      ``B = S A S + eps I``, ``S = diag(1, sqrt(lam) I)``: each block is
      ``[[K + eps, sqrt(lam) a x^T], [sqrt(lam) a x, lam (K_p I + s x x^T) + eps I]]``
      with ``a = K_p + 2 K_q`` and ``s = K_pp + 2 K_pq + 2 K_pr + 4 K_qr``; on ``x^perp`` it
      acts as ``lam K_p + eps`` and on ``span{e_0, x/|x|}`` as a 2x2 matrix, so applying its
      inverse costs O(d) per point.
    """

    def __init__(
        self,
        n_points: int,
        block: int,
        *,
        inverse=None,
        fields=None,
        points=None,
        lam: float = 1.0,
        jitter: float = 0.0,
    ):
        self.n_points, self.block = n_points, block
        super().__init__(np.dtype(np.float64), (n_points * block, n_points * block))
        self.inverse = inverse
        if fields is not None:
            K, Kp, Kq, Kr, Kpp, Kpq, Kpr, Kqr = fields
            norm = np.linalg.norm(points, axis=1)
            xhat = np.zeros_like(points)
            nz = norm > 0
            xhat[nz] = points[nz] / norm[nz, None]
            xhat[~nz, 0] = 1.0
            s = Kpp + 2 * Kpq + 2 * Kpr + 4 * Kqr
            rl = math.sqrt(lam)
            a11 = K + jitter
            a12 = rl * (Kp + 2 * Kr) * norm
            a21 = rl * (Kp + 2 * Kq) * norm
            a22 = lam * (Kp + s * norm**2) + jitter
            perp = lam * Kp + jitter
            det = a11 * a22 - a12 * a21
            bad = ~((a11 > 0) & (det > 0) & ((perp > 0) | (points.shape[1] == 1)))
            if bad.any():
                i = int(np.argmax(bad))
                raise ValueError(
                    f"block-Jacobi: the diagonal block of point {i} is not positive definite "
                    f"(K={K[i]:.3e}, lam*K_p+jitter={perp[i]:.3e}, 2x2 det={det[i]:.3e}); "
                    "increase jitter or lam"
                )
            self._fast = (xhat, a11 / det, a12 / det, a21 / det, a22 / det, perp)

    def _matvec(self, v):
        return self._matmat(np.asarray(v).reshape(-1, 1))[:, 0]

    def _adjoint(self):
        return self

    def _matmat(self, V):
        n, b = self.n_points, self.block
        V3 = np.asarray(V, dtype=np.float64).reshape(n, b, -1)
        if self.inverse is not None:
            return np.einsum("iab,ibk->iak", self.inverse, V3).reshape(n * b, -1)
        xhat, i11, i12, i21, i22, perp = self._fast
        v0 = V3[:, 0]
        W = V3[:, 1:]
        wpar = np.einsum("id,idk->ik", xhat, W)
        out = np.empty_like(V3)
        out[:, 0] = i22[:, None] * v0 - i12[:, None] * wpar
        zpar = -i21[:, None] * v0 + i11[:, None] * wpar
        out[:, 1:] = (W - xhat[:, :, None] * wpar[:, None, :]) / perp[:, None, None]
        out[:, 1:] += xhat[:, :, None] * zpar[:, None, :]
        return out.reshape(n * b, -1)


def block_jacobi(A) -> BlockJacobi:
    """Block-Jacobi preconditioner of a Gram operator: the inverse of its per-point diagonal
    blocks.

    Uses the O(d)-per-point structured inverse (math.md §5.3) when ``A`` (or the operator
    ``A`` wraps, for :class:`jacntk.operators.ScaledGram`) exposes the diagonal fields of a full
    augmentation; otherwise inverts ``A.diagonal_blocks()`` by batched Cholesky.

    Raises
    ------
    ValueError
        If a diagonal block is not positive definite (add jitter).
    """
    n, b = A.n_points, A.block
    lam, jitter = getattr(A, "lam", 1.0), getattr(A, "jitter", 0.0)
    diag = A.diagonal_fields() if b > 1 else None
    if diag is not None and diag[1].shape[1] + 1 == b:
        return BlockJacobi(n, b, fields=diag[0], points=diag[1], lam=lam, jitter=jitter)
    blocks = A.diagonal_blocks()
    try:
        L = np.linalg.cholesky(blocks)
    except np.linalg.LinAlgError:
        ev = np.linalg.eigvalsh(blocks)[:, 0]
        i = int(np.argmin(ev))
        raise ValueError(
            f"block-Jacobi: the diagonal block of point {i} is not positive definite "
            f"(smallest eigenvalue {ev[i]:.3e}); increase jitter"
        ) from None
    eye = np.broadcast_to(np.eye(b), blocks.shape)
    Linv = np.linalg.solve(L, eye)
    return BlockJacobi(n, b, inverse=np.einsum("iba,ibc->iac", Linv, Linv))


class NystromPreconditioner(LinearOperator):
    """Randomised Nystrom preconditioner (Frangella, Tropp & Udell 2023).

    With the rank-k approximation ``A ~ U diag(lhat) U^T``::

        P^{-1} = (lhat_k + mu) U (diag(lhat) + mu I)^{-1} U^T + (I - U U^T)
    """

    def __init__(self, U: np.ndarray, lhat: np.ndarray, mu: float):
        super().__init__(np.dtype(np.float64), (U.shape[0], U.shape[0]))
        self.U, self.lhat, self.mu = U, lhat, mu
        self._w = (lhat[-1] + mu) / (lhat + mu) - 1.0

    def _matvec(self, v):
        return self._matmat(np.asarray(v).reshape(-1, 1))[:, 0]

    def _adjoint(self):
        return self

    def _matmat(self, V):
        V = np.asarray(V, dtype=np.float64)
        return V + self.U @ (self._w[:, None] * (self.U.T @ V))


def nystrom(A, rank: int, *, mu: float | None = None, seed=0) -> NystromPreconditioner:
    """Randomised rank-``rank`` Nystrom preconditioner of a PSD operator (one ``matmat`` of
    ``rank`` columns).

    Parameters
    ----------
    A : PSD operator (n, n)
    rank : int
        Sketch size ``k`` (``1 <= k < n``).
    mu : float, optional
        Regularisation of the system ``A + mu I`` the preconditioner targets; default the jitter
        of ``A`` if it has one and is positive, else the smallest retained Nystrom eigenvalue.
    """
    A = _operator(A)
    n = A.shape[0]
    if not 1 <= rank < n:
        raise ValueError(f"rank must be in [1, {n}), got {rank}")
    rng = np.random.default_rng(seed)
    Omega, _ = np.linalg.qr(rng.standard_normal((n, rank)))
    Y = A.matmat(Omega)
    nu = np.sqrt(n) * np.finfo(float).eps * np.linalg.norm(Y)
    Y = Y + nu * Omega
    C = np.linalg.cholesky(Omega.T @ Y + np.eye(rank) * 0.0)
    Bm = np.linalg.solve(C, Y.T).T
    U, sv, _ = np.linalg.svd(Bm, full_matrices=False)
    lhat = np.maximum(sv**2 - nu, 0.0)
    if mu is None:
        mu = getattr(A, "jitter", 0.0) or max(lhat[-1], np.finfo(float).tiny)
    return NystromPreconditioner(U, lhat, float(mu))


# --------------------------------------------------------------------------------------------
# Conjugate gradients


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
    converged = true_res <= max(tol, 10 * tol)
    converged &= res <= tol
    if not converged.all() and not any("maxiter" in m for m in messages) and it >= maxiter:
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


def _phi1(z: np.ndarray) -> np.ndarray:
    """``(1 - exp(-z)) / z`` with the limit 1 at z = 0, accurate for small |z|."""
    z = np.asarray(z, dtype=np.float64)
    out = np.ones_like(z)
    nz = z != 0
    out[nz] = -np.expm1(-z[nz]) / z[nz]
    return out


def exp_function(c: float, t: float) -> Callable[[np.ndarray], np.ndarray]:
    """``s -> exp(-c t s)``."""
    return lambda s: np.exp(-c * t * s)


def phi_function(c: float, t: float) -> Callable[[np.ndarray], np.ndarray]:
    """``s -> phi_t(s) = (1 - exp(-c t s)) / s`` (``= c t`` at s = 0; math.md §4.4)."""
    if math.isinf(t):
        raise ValueError("phi_inf is the pseudo-inverse: solve with cg instead of Lanczos")
    return lambda s: c * t * _phi1(c * t * np.asarray(s))


def psi_function(c: float, k: int) -> Callable[[np.ndarray], np.ndarray]:
    """``s -> psi_k(s) = (1 - (1 - c s)^k) / s`` (``= c k`` at s = 0): ``k`` steps of gradient
    descent (math.md §4.4)."""

    def f(s):
        z = c * np.asarray(s, dtype=np.float64)
        out = np.full_like(z, c * k)
        small = np.abs(z) < 0.5
        nzs = small & (z != 0)
        out[nzs] = c * -np.expm1(k * np.log1p(-z[nzs])) / z[nzs]
        big = ~small
        out[big] = c * (1.0 - (1.0 - z[big]) ** k) / z[big]
        return out

    return f


@dataclass
class KrylovResult:
    """Result of ``lanczos_functions``.

    Attributes
    ----------
    values : (n_functions, n) or (n_functions, n, k) approximations of ``f_j(A) v``, one per
        start vector when ``k`` were given
    converged : (n_functions,) or (n_functions, k) bool
    error_estimates : (n_functions,) or (n_functions, k) a-posteriori relative error estimates
    iterations : int, largest Krylov dimension used (products with the operator per column)
    ritz_min, ritz_max : float, extreme Ritz values of ``A`` at the end (over all columns)
    """

    values: np.ndarray
    converged: np.ndarray
    error_estimates: np.ndarray
    iterations: int
    ritz_min: float
    ritz_max: float

    def summary(self) -> str:
        return (
            f"Lanczos: {self.iterations} iterations, converged {int(self.converged.sum())}/"
            f"{self.converged.size}, max error estimate {float(np.max(self.error_estimates)):.2e}"
            f", Ritz range [{self.ritz_min:.3e}, {self.ritz_max:.3e}]"
        )


class _Lanczos:
    """One Lanczos recurrence with full reorthogonalisation (classical Gram–Schmidt, twice); the
    caller applies the operator, so several recurrences can share one ``matmat`` per step.

    After ``m`` calls of :meth:`advance`, the rows of ``Q[:m]`` are the orthonormal basis and
    ``T_m = tridiag(beta, alpha, beta)``; ``vector`` is the next vector to multiply.
    """

    def __init__(self, v: np.ndarray, maxiter: int):
        self.Q = np.empty((maxiter + 1, v.size))  # pages are touched only as the basis grows
        self.Q[0] = v / np.linalg.norm(v)
        self._alpha = np.empty(maxiter)
        self._beta = np.empty(maxiter)
        self.m = 0
        self.invariant = False

    @property
    def vector(self) -> np.ndarray:
        return self.Q[self.m]

    @property
    def alpha(self) -> np.ndarray:
        return self._alpha[: self.m]

    @property
    def beta(self) -> np.ndarray:
        return self._beta[: max(self.m - 1, 0)]

    def advance(self, w: np.ndarray) -> None:
        """Take ``w = A q_m`` and extend the basis by one vector."""
        m, Q, alpha, beta = self.m, self.Q, self._alpha, self._beta
        alpha[m] = Q[m] @ w
        w = w - alpha[m] * Q[m] - (beta[m - 1] * Q[m - 1] if m > 0 else 0.0)
        for _ in range(2):
            w -= Q[: m + 1].T @ (Q[: m + 1] @ w)
        beta[m] = np.linalg.norm(w)
        if not (np.isfinite(alpha[m]) and np.isfinite(beta[m])):
            raise FloatingPointError(
                f"Lanczos produced NaN at step {m + 1}: the operator returned non-finite values"
            )
        scale = max(np.abs(alpha[: m + 1]).max(), beta[: m + 1].max())
        self.invariant = bool(beta[m] <= 1e-14 * scale)
        self.m = m + 1
        if not self.invariant and self.m < Q.shape[0]:
            Q[self.m] = w / beta[m]

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Ritz values ``theta`` and eigenvectors ``S`` of ``T_m``."""
        if self.m == 1:
            return self.alpha.copy(), np.ones((1, 1))
        return eigh_tridiagonal(self.alpha, self.beta)


def lanczos_functions(
    A,
    v,
    functions: Sequence[Callable[[np.ndarray], np.ndarray]],
    *,
    tol: float = 1e-10,
    maxiter: int | None = None,
    check_every: int = 5,
    callback: Callable[[int, np.ndarray], None] | None = None,
    warn: bool = True,
) -> KrylovResult:
    """``f_j(A) v`` for every function ``f_j`` in one Krylov basis per start vector (symmetric
    ``A``).

    Lanczos with full reorthogonalisation builds ``Q_m`` and the tridiagonal
    ``T_m = Q_m^T A Q_m``; then ``f(A) v ~ |v| Q_m f(T_m) e_1`` with ``f(T_m) = S f(theta) S^T``
    from ``eigh_tridiagonal``.  Every ``check_every`` steps the error of each ``f_j`` is
    estimated by the change of its coefficient vector since the previous check,
    ``|y_m - [y_prev; 0]| / |y_m|``, and a start vector stops when every estimate is at most
    ``tol`` (or its Krylov space is invariant: then the result is exact).

    With ``k`` start vectors (``v`` of shape (n, k)) the ``k`` recurrences run in lockstep: one
    ``A.matmat`` of the still-running columns per step, so an operator whose cost is reading
    the matrix (a stored or matrix-free Gram) is read once per step for all of them.

    Parameters
    ----------
    A : symmetric operator (n, n)
    v : (n,) or (n, k) start vector(s)
    functions : callables applied elementwise to Ritz values
    tol : relative tolerance on each function's error estimate
    maxiter : largest Krylov dimension, default ``min(n, 1000)``
    check_every : steps between error checks
    callback : ``callback(iteration, error_estimates)`` at each check; the estimates have the
        shape of ``KrylovResult.error_estimates``

    Returns
    -------
    KrylovResult
    """
    A, V, single = _operator_and_columns(A, v, "start vector")
    n = A.shape[0]
    nf, k = len(functions), V.shape[1]
    if nf == 0:
        raise ValueError("no functions requested")
    maxiter = min(n, 1000) if maxiter is None else min(int(maxiter), n)
    vnorm = np.linalg.norm(V, axis=0)
    est = np.full((nf, k), np.inf)
    est[:, vnorm == 0.0] = 0.0
    coeffs: list = [[None] * nf for _ in range(k)]
    runs = {j: _Lanczos(V[:, j], maxiter) for j in range(k) if vnorm[j] > 0}
    active = list(runs)
    ritz = [np.inf, -np.inf]
    while active:
        W = A.matmat(np.stack([runs[j].vector for j in active], axis=1))
        checked = False
        for col, j in enumerate(active):
            run = runs[j]
            run.advance(W[:, col])
            m = run.m
            if not (run.invariant or m == maxiter or m % check_every == 0):
                continue
            checked = True
            theta, S = run.ritz()
            for i, f in enumerate(functions):
                y = S @ (np.asarray(f(theta), dtype=np.float64) * S[0]) * vnorm[j]
                if run.invariant:
                    est[i, j] = 0.0
                elif coeffs[j][i] is not None:
                    diff = y.copy()
                    diff[: coeffs[j][i].size] -= coeffs[j][i]
                    est[i, j] = np.linalg.norm(diff) / max(np.linalg.norm(y), 1e-300)
                coeffs[j][i] = y
            if run.invariant or m == maxiter or (est[:, j] <= tol).all():
                ritz = [min(ritz[0], theta.min()), max(ritz[1], theta.max())]
        if checked and callback is not None:
            callback(max(runs[j].m for j in active), est[:, 0].copy() if single else est.copy())
        active = [
            j
            for j in active
            if not (runs[j].invariant or runs[j].m == maxiter or (est[:, j] <= tol).all())
        ]
    values = np.zeros((nf, n, k))
    for j, run in runs.items():
        for i in range(nf):
            values[i, :, j] = run.Q[: coeffs[j][i].size].T @ coeffs[j][i]
    iterations = max((run.m for run in runs.values()), default=0)
    if not runs:
        ritz = [0.0, 0.0]
    converged = est <= tol
    if single:
        values, converged, est = values[:, :, 0], converged[:, 0], est[:, 0]
    result = KrylovResult(values, converged, est, iterations, float(ritz[0]), float(ritz[1]))
    if warn and not converged.all():
        warnings.warn(
            ConvergenceWarning(
                f"Lanczos reached maxiter={maxiter} with {int((~converged).sum())} of "
                f"{converged.size} functions above tol {tol:g}: {result.summary()}"
            ),
            stacklevel=2,
        )
    return result


def _check_times(times, name="times") -> np.ndarray:
    t = np.atleast_1d(np.asarray(times, dtype=np.float64))
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"{name} must be a non-empty list of numbers, got {times!r}")
    if np.isnan(t).any() or (t < 0).any():
        raise ValueError(f"{name} must be >= 0 (inf allowed), got {t.tolist()}")
    return t


def lanczos_expm(A, v, times, *, c: float = 1.0, **kwargs) -> KrylovResult:
    """``exp(-c t A) v`` for every ``t`` in ``times`` (one Krylov basis)."""
    t = _check_times(times)
    if np.isinf(t).any():
        raise ValueError("exp(-c t A) v at t = inf is the null-space projection; use finite t")
    return lanczos_functions(A, v, [exp_function(c, ti) for ti in t], **kwargs)


def lanczos_phi(A, v, times, *, c: float = 1.0, **kwargs) -> KrylovResult:
    """``phi_t(A) v = A^{-1} (I - exp(-c t A)) v`` for every finite ``t`` in ``times``."""
    t = _check_times(times)
    return lanczos_functions(A, v, [phi_function(c, ti) for ti in t], **kwargs)


def lanczos_psi(A, v, steps, *, c: float = 1.0, **kwargs) -> KrylovResult:
    """``psi_k(A) v = A^{-1} (I - (I - c A)^k) v`` for every step count ``k`` in ``steps``."""
    k = np.atleast_1d(np.asarray(steps))
    if k.ndim != 1 or k.size == 0 or not np.issubdtype(k.dtype, np.integer) or (k < 0).any():
        raise ValueError(f"steps must be non-negative integers, got {steps!r}")
    return lanczos_functions(A, v, [psi_function(c, int(ki)) for ki in k], **kwargs)


@dataclass(frozen=True)
class EigenvalueBounds:
    """Ritz estimates of the extreme eigenvalues of a symmetric operator."""

    smallest: float
    largest: float
    iterations: int

    @property
    def condition(self) -> float:
        return self.largest / self.smallest if self.smallest > 0 else math.inf


def extreme_eigenvalues(
    A, *, tol: float = 1e-6, maxiter: int = 300, seed=0, check_every: int = 5
) -> EigenvalueBounds:
    """Smallest and largest eigenvalue of a symmetric operator by Lanczos with full
    reorthogonalisation from a random start, stopped when both extreme Ritz values change by
    less than ``tol`` (relative to the largest) between checks.  The largest converges fast; the
    smallest of an ill-conditioned matrix converges slowly and is an upper bound until then."""
    A = _operator(A)
    n = A.shape[0]
    maxiter = min(int(maxiter), n)
    run = _Lanczos(np.random.default_rng(seed).standard_normal(n), maxiter)
    prev = None
    while True:
        run.advance(A.matvec(run.vector))
        m = run.m
        if not (run.invariant or m % check_every == 0 or m == maxiter):
            continue
        theta = run.ritz()[0]
        cur = np.array([theta[0], theta[-1]])
        if run.invariant or m == maxiter:
            break
        if prev is not None and (np.abs(cur - prev) <= tol * abs(cur[1])).all():
            break
        prev = cur
    return EigenvalueBounds(float(cur[0]), float(cur[1]), m)
