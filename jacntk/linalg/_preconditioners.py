"""Preconditioners for the Krylov solvers: block Jacobi and randomised Nystrom."""

from __future__ import annotations

import math

import numpy as np
from scipy.sparse.linalg import LinearOperator

from ._protocol import _operator


class BlockJacobi(LinearOperator):
    """Exact inverse of the per-point diagonal blocks of a Gram operator (docs/math.md §6.2).

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

    Uses the O(d)-per-point structured inverse (docs/math.md §6.2) when ``A`` (or the operator
    ``A`` wraps, for :class:`jacntk.ScaledGram`) exposes the diagonal fields of a full
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
