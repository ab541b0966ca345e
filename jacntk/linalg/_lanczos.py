"""Lanczos with full reorthogonalisation: ``f(A) v`` for many functions in one basis,
the training filters of docs/math.md §8.2 and extreme eigenvalues."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg import eigh_tridiagonal

from ._protocol import ConvergenceWarning, _operator, _operator_and_columns


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
    """``s -> phi_t(s) = (1 - exp(-c t s)) / s`` (``= c t`` at s = 0; docs/math.md §8.2)."""
    if math.isinf(t):
        raise ValueError("phi_inf is the pseudo-inverse: solve with cg instead of Lanczos")
    return lambda s: c * t * _phi1(c * t * np.asarray(s))


def pseudo_inverse_filter(w: np.ndarray) -> np.ndarray:
    """``phi_inf`` on a computed spectrum: ``1 / w`` where ``w > n eps max(w, 0)``, else 0.

    The one cutoff of every dense pseudo-inverse in jacntk (the ``t = inf`` solve of a
    semi-definite ``B`` and the predictive covariance): eigenvalues within the rounding error of
    an ``n x n`` symmetric eigendecomposition (``n eps lambda_max``) are treated as zero.

    Parameters
    ----------
    w : (n,) eigenvalues of a symmetric positive semi-definite matrix (any order)

    Returns
    -------
    (n,) ``filter(w)``
    """
    w = np.asarray(w, dtype=np.float64)
    keep = w > w.size * np.finfo(np.float64).eps * max(float(w.max(initial=0.0)), 0.0)
    return np.where(keep, 1.0 / np.where(keep, w, 1.0), 0.0)


def psi_function(c: float, k: int) -> Callable[[np.ndarray], np.ndarray]:
    """``s -> psi_k(s) = (1 - (1 - c s)^k) / s`` (``= c k`` at s = 0): ``k`` steps of gradient
    descent (docs/math.md §8.2)."""

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
