"""Block Lanczos with full reorthogonalisation: ``f(A) V`` for many functions in one basis,
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
    iterations : int, steps taken (products with the operator, each of one block of at most
        ``k`` columns)
    ritz_min, ritz_max : float, extreme Ritz values of ``A`` at the end (over all columns)
    products : int, products with ``A`` in all (``2 iterations - 1`` for ``basis="two-pass"``)
    """

    values: np.ndarray
    converged: np.ndarray
    error_estimates: np.ndarray
    iterations: int
    ritz_min: float
    ritz_max: float
    products: int | None = None

    def summary(self) -> str:
        return (
            f"Lanczos: {self.iterations} iterations"
            + (
                f" (two passes, {self.products} products)"
                if self.products not in (None, self.iterations)
                else ""
            )
            + f", converged {int(self.converged.sum())}/"
            f"{self.converged.size}, max error estimate {float(np.max(self.error_estimates)):.2e}"
            f", Ritz range [{self.ritz_min:.3e}, {self.ritz_max:.3e}]"
        )


class _BlockLanczos:
    """Block Lanczos with full reorthogonalisation (classical Gram–Schmidt, twice) and
    deflation, on the Krylov space ``span{V, A V, A^2 V, ...}`` that the ``k`` columns of ``V``
    share; the caller applies the operator (one ``matmat`` of the current block per step).

    The basis vectors are the rows of ``Q[:size]``, one block of rows per step.  A new block
    keeps only the directions in which ``A @ block`` is not already in the basis (QR with an
    SVD of ``R``: singular values above ``DEFLATION`` times the largest column of ``A @ block``
    seen so far, an estimate of ``|A|``), so blocks never grow and an empty block means the
    space is invariant (the results are then exact).
    ``T[:m, :m] = Q[:m] A Q[:m]^T`` is filled one block column per step from the Gram–Schmidt
    coefficients (block tridiagonal up to rounding; its upper triangle is used), ``m`` being
    the rows before the newest block.  ``V = Q[:r0]^T R0``.
    """

    DEFLATION = 1e-12

    def __init__(self, V: np.ndarray, maxiter: int, keep: bool = True, ranks=None):
        n, k = V.shape
        self.capacity = min(n, (maxiter + 1) * k)
        self.keep, self.ranks = keep, [] if ranks is None else list(ranks)
        self.Q = np.empty((0, n))  # rows offset, offset + 1, ... of the basis
        self.T = np.zeros((0, 0))
        self.size, self.offset, self.products, self.single, self.scale = 0, 0, 0, True, 0.0
        self.sizes: list[int] = []
        scale = float(np.linalg.norm(V, axis=0).max(initial=0.0))
        block, self.R0 = self._orthonormal(V, scale, self._rank())
        self.current = slice(0, 0)
        self._append(block)

    def _rank(self):
        """The block size pass 1 found at this step (pass 2 repeats it), else None."""
        return self.ranks[len(self.sizes)] if len(self.sizes) < len(self.ranks) else None

    @staticmethod
    def _orthonormal(W: np.ndarray, scale: float, rank=None) -> tuple[np.ndarray, np.ndarray]:
        """``W = Qb^T R`` with ``Qb`` (r, n) orthonormal rows and ``r`` the numerical rank:
        ``W = Q_w R_w`` (Householder), ``R_w = U s V^T`` (SVD), ``Qb = (Q_w U_r)^T`` and
        ``R = s_r V_r^T`` for the singular values ``s > DEFLATION * scale``.  NumPy's LAPACK
        throughout: SciPy ships a second OpenBLAS, and alternating the two in this loop made
        both 2-3x slower (their idle threads spin against each other; measured here)."""
        if scale == 0.0 or rank == 0:
            return np.empty((0, W.shape[0])), np.zeros((0, W.shape[1]))
        Qw, Rw = np.linalg.qr(W)
        U, sv, Vt = np.linalg.svd(Rw)
        r = int((sv > _BlockLanczos.DEFLATION * scale).sum()) if rank is None else rank
        return (Qw @ U[:, :r]).T, sv[:r, None] * Vt[:r]

    def _append(self, block: np.ndarray) -> None:
        block = block[: self.capacity - self.size]  # the basis spans everything at capacity
        r = block.shape[0]
        if not self.keep:  # two-pass: only the block just multiplied stays beside the new one
            drop = self.current.start - self.offset
            kept = self.size - self.current.start
            self.Q[:kept] = self.Q[drop : drop + kept]
            self.offset = self.current.start
        rows = self.size - self.offset
        if rows + r > self.Q.shape[0]:
            grown = max(2 * self.Q.shape[0], rows + r, 8)
            Q = np.empty((min(grown, self.capacity), self.Q.shape[1]))
            Q[:rows] = self.Q[:rows]
            self.Q = Q
        if self.size + r > self.T.shape[0]:
            grown = min(self.capacity, max(2 * self.T.shape[0], self.size + r, 8))
            T = np.zeros((grown, grown))
            T[: self.size, : self.size] = self.T[: self.size, : self.size]
            self.T = T
        self.Q[rows : rows + r] = block
        self.current = slice(self.size, self.size + r)
        self.size += r
        self.sizes.append(r)
        self.single &= r <= 1

    @property
    def invariant(self) -> bool:
        return self.current.start == self.current.stop

    @property
    def block(self) -> np.ndarray:
        """The columns to multiply next, (n, r): a Fortran-order view of the newest rows."""
        return self.rows(self.current).T

    def rows(self, sl: slice) -> np.ndarray:
        """Basis rows ``sl`` (global indices; with ``keep=False`` only the last two blocks)."""
        return self.Q[sl.start - self.offset : sl.stop - self.offset]

    @property
    def m(self) -> int:
        """Basis vectors of the projected matrix (all but the newest block)."""
        return self.current.start

    def advance(self, W: np.ndarray) -> None:
        """Take ``W = A @ block`` and extend the basis by the next block."""
        self.products += 1
        if not np.isfinite(W).all():
            raise FloatingPointError(
                f"Lanczos produced NaN at step {self.products}: the operator returned "
                "non-finite values"
            )
        cur, Qs = self.current, self.Q[: self.size - self.offset]
        self.scale = max(self.scale, float(np.linalg.norm(W, axis=0).max(initial=0.0)))
        W = np.array(W, dtype=np.float64, order="F")
        for _ in range(2):
            H = Qs @ W
            W -= Qs.T @ H
            self.T[self.offset : self.size, cur] += H
        self._append(self._orthonormal(W, self.scale, self._rank())[0])

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Ritz values ``theta`` (ascending) and eigenvectors ``S`` of ``T[:m, :m]``."""
        m = self.m
        T = self.T[:m, :m]
        if m == 1:
            return T[0].copy(), np.ones((1, 1))
        if self.single:
            return eigh_tridiagonal(np.diagonal(T).copy(), np.diagonal(T, 1).copy())
        return np.linalg.eigh(np.triu(T) + np.triu(T, 1).T)


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
    basis: str = "memory",
) -> KrylovResult:
    """``f_j(A) V`` for every function ``f_j`` from one block Krylov space of the columns of
    ``V`` (symmetric ``A``).

    Block Lanczos with full reorthogonalisation and deflation builds an orthonormal basis
    ``Q_m`` of ``span{V, A V, ..., A^{s-1} V}`` (one ``A.matmat`` of the newest block per step)
    and the projected matrix ``T_m = Q_m^T A Q_m``; then, with ``V = Q_m E R0``,
    ``f(A) V ~ Q_m f(T_m) E R0`` and ``f(T_m) = S f(theta) S^T`` from the eigendecomposition
    (``eigh_tridiagonal`` for one column).  Every column draws on the whole shared space, so
    ``k`` columns need fewer steps than ``k`` separate runs (about half on the demo's Gram: 45
    against 90 for 10 outputs) and each step is one product of at most ``k`` columns.  Every
    ``check_every`` steps the error of each function and column is estimated by the change of
    its coefficients since the previous check, ``|c_s - [c_prev; 0]| / |c_s|``; the run stops
    when every estimate is at most ``tol`` or the space is invariant (the result then exact).

    Parameters
    ----------
    A : symmetric operator (n, n)
    v : (n,) or (n, k) start vector(s)
    functions : callables applied elementwise to Ritz values
    tol : relative tolerance on each function's error estimate, per column
    maxiter : most steps (products with ``A``), default ``min(n, 1000)``
    check_every : steps between error checks
    callback : ``callback(steps, error_estimates)`` at each check; the estimates have the
        shape of ``KrylovResult.error_estimates``
    basis : {"memory", "two-pass"}
        ``"memory"`` keeps the whole basis (``steps x k`` vectors of length n) and
        reorthogonalises against all of it.  ``"two-pass"`` keeps two blocks: the first pass
        runs the block recurrence orthogonalised against the previous block only and builds
        ``T``; the second repeats the same products (the same block sizes) and sums
        ``Q_m f(T_m) E R0`` block by block, so memory is O(n k) per function, independent of
        the number of steps, at twice the products (and, without full reorthogonalisation,
        somewhat more steps).

    Returns
    -------
    KrylovResult
    """
    if basis not in ("memory", "two-pass"):
        raise ValueError(f"basis must be 'memory' or 'two-pass', got {basis!r}")
    A, V, single = _operator_and_columns(A, v, "start vector")
    n = A.shape[0]
    nf, k = len(functions), V.shape[1]
    if nf == 0:
        raise ValueError("no functions requested")
    maxiter = min(n, 1000) if maxiter is None else min(int(maxiter), n)
    run = _BlockLanczos(V, maxiter, keep=basis == "memory")
    est = np.where(np.linalg.norm(V, axis=0) == 0.0, 0.0, np.inf)[None, :].repeat(nf, axis=0)
    coeffs: list = [np.zeros((0, k))] * nf
    ritz = (0.0, 0.0)
    while not run.invariant:
        run.advance(A.matmat(run.block))
        steps = run.products
        if not (run.invariant or steps == maxiter or steps % check_every == 0):
            continue
        theta, S = run.ritz()
        start = S[: run.R0.shape[0]].T @ run.R0  # E R0 in the Ritz basis, (m, k)
        for i, f in enumerate(functions):
            c = S @ (np.asarray(f(theta), dtype=np.float64)[:, None] * start)
            norm = np.linalg.norm(c, axis=0)
            if run.invariant:
                est[i] = 0.0
            elif coeffs[i].shape[0]:  # not the first check
                diff = c.copy()
                diff[: coeffs[i].shape[0]] -= coeffs[i]
                est[i] = np.where(
                    norm > 0, np.linalg.norm(diff, axis=0) / np.maximum(norm, 1e-300), 0.0
                )
            coeffs[i] = c
        ritz = (float(theta.min()), float(theta.max()))
        if callback is not None:
            callback(steps, est[:, 0].copy() if single else est.copy())
        if steps == maxiter or (est <= tol).all():
            break
    if run.invariant:
        est[:] = 0.0
    if basis == "memory":
        rows = run.Q[: coeffs[0].shape[0]]
        values = np.stack([rows.T @ c for c in coeffs])
    else:
        values = _second_pass(A, V, run, coeffs, maxiter)
    converged = est <= tol
    if single:
        values, converged, est = values[:, :, 0], converged[:, 0], est[:, 0]
    products = run.products if basis == "memory" else 2 * run.products - 1
    result = KrylovResult(values, converged, est, run.products, *ritz, products=products)
    if warn and not converged.all():
        warnings.warn(
            ConvergenceWarning(
                f"Lanczos reached maxiter={maxiter} with {int((~converged).sum())} of "
                f"{converged.size} functions above tol {tol:g}: {result.summary()}"
            ),
            stacklevel=2,
        )
    return result


def _second_pass(A, V: np.ndarray, first: _BlockLanczos, coeffs: list, maxiter: int):
    """``sum_j Q_j^T c[rows of block j]`` for every function's coefficients ``c``: the
    recurrence of ``first`` run again from ``V`` with its block sizes, each block used once it
    is made (``first.products - 1`` products; the last block ``first`` multiplied made only
    the rows beyond the coefficients)."""
    m = coeffs[0].shape[0]
    values = np.zeros((len(coeffs), V.shape[0], V.shape[1]))
    run = _BlockLanczos(V, maxiter, keep=False, ranks=first.sizes)
    while True:
        cur = run.current
        if cur.start >= m or run.invariant:
            break
        Qb = run.rows(cur)
        for i, c in enumerate(coeffs):
            values[i] += Qb.T @ c[cur]
        if cur.stop >= m:
            break
        run.advance(A.matmat(run.block))
    return values


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
    run = _BlockLanczos(np.random.default_rng(seed).standard_normal((n, 1)), maxiter)
    prev = None
    while True:
        run.advance(A.matmat(run.block))
        m = run.products
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
