"""Operators composed from others: ``D^{1/2} A D^{1/2}`` and cross Grams.

``ScaledGram`` is the regularised training operator of docs/math.md §8.2; ``CrossGram``
the test-by-train kernel applied to coefficients.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from scipy.sparse.linalg import LinearOperator

from ..arch import MLP
from ..kernels._blocks import structured_matmul
from ..kernels._compute import compute_tile
from ..kernels._fields import make_plan
from ..options import DEFAULT_TILE
from ..validation import as_pair
from ._gram import GramOperator, _as_columns, _tiles


def scaling_vector(n_points: int, block: int, lam: float) -> np.ndarray:
    """Diagonal of ``D^{1/2}`` for ``n_points`` blocks: ``(1, sqrt(lam), ..., sqrt(lam))``."""
    s = np.full(block, np.sqrt(lam))
    s[0] = 1.0
    return np.tile(s, n_points)


class ScaledGram(GramOperator):
    """``B = D^{1/2} A D^{1/2} + jitter I`` with ``D = I_N (x) diag(1, lam, ..., lam)``.

    This is the symmetric form of the Jacobian-regularised training ODE (docs/math.md §8.2):
    ``Theta D`` is similar to ``B``.  For ``block == 1`` (scalar Gram) ``D = I``.

    Parameters
    ----------
    base : GramOperator
    lam : float
        Jacobian regularisation ``lam >= 0``.
    jitter : float
        Explicit ridge ``epsilon >= 0`` (reported by every solve, docs/math.md §8.6).
    """

    def __init__(self, base: GramOperator, lam: float = 1.0, jitter: float = 0.0):
        for name, value in (("lam", lam), ("jitter", jitter)):
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        super().__init__(base.n_points, base.block)
        self.base, self.lam, self.jitter = base, float(lam), float(jitter)
        self.scale = scaling_vector(base.n_points, base.block, self.lam)

    def _matmat(self, V):
        V = _as_columns(V, self.shape[0])
        out = self.scale[:, None] * self.base.matmat(self.scale[:, None] * V)
        if self.jitter:
            out += self.jitter * V
        return out

    def dense_copy(self) -> np.ndarray:
        """``B`` as a new ``(n, n)`` float64 array (the base's dense matrix scaled in one
        parallel pass; callers may overwrite it, e.g. factorise it in place)."""
        A = np.asarray(self.base.to_dense(), dtype=np.float64)
        out = np.empty(A.shape)
        _scaled_copy(A, self.scale, self.jitter, out)
        return out

    def diagonal_blocks(self) -> np.ndarray:
        s = self.scale[: self.block]
        out = self.base.diagonal_blocks() * s[None, :, None] * s[None, None, :]
        out[:, np.arange(self.block), np.arange(self.block)] += self.jitter
        return out

    def diagonal_fields(self):
        return self.base.diagonal_fields()


@njit(parallel=True, cache=True)
def _scaled_copy(A, s, jitter, out):  # pragma: no cover - compiled
    """``out[i, j] = s[i] A[i, j] s[j] + jitter [i == j]``."""
    n = A.shape[0]
    for i in prange(n):
        si = s[i]
        for j in range(n):
            out[i, j] = si * A[i, j] * s[j]
        out[i, i] += jitter


class CrossGram(LinearOperator):
    """Rectangular ``Theta(X_test, X_train)`` as an operator, tiled and matrix-free.

    Rows: ``n_test * (d+1)`` (value and gradient per test point) if ``gradients`` else
    ``n_test``.  Columns: ``n_train * b`` with ``b = 1`` (values only) or ``d + 1``
    (``jacobian_columns``).  A values-only product with values-only columns uses the scalar
    kernel; anything else the eight fields and :func:`jacntk.structured_matmul` (value columns
    are padded with zero gradient parts).
    """

    def __init__(
        self,
        arch: MLP,
        X_test,
        X_train,
        *,
        kind: str = "ntk",
        gradients: bool = True,
        jacobian_columns: bool = False,
        tile: int = DEFAULT_TILE,
    ):
        A, B, _ = as_pair(X_test, X_train, ("X_test", "X_train"))
        self.arch, self.kind, self.X_test, self.X_train = arch, kind, A, B
        self.d = A.shape[1]
        self.gradients, self.jacobian_columns = bool(gradients), bool(jacobian_columns)
        self.fields = self.gradients or self.jacobian_columns
        self.plan = make_plan(arch, kind, self.fields)
        self.rows_per = self.d + 1 if self.gradients else 1
        self.cols_per = self.d + 1 if self.jacobian_columns else 1
        self.test_tiles, self.train_tiles = _tiles(A.shape[0], tile), _tiles(B.shape[0], tile)
        super().__init__(
            np.dtype(np.float64),
            (A.shape[0] * self.rows_per, B.shape[0] * self.cols_per),
        )

    def _matvec(self, v):
        return self._matmat(np.asarray(v, dtype=np.float64).reshape(-1, 1))[:, 0]

    def _matmat(self, V):
        V = _as_columns(V, self.shape[1])
        d1 = self.d + 1
        out = np.zeros((self.shape[0], V.shape[1]))
        for si in self.test_tiles:
            A = self.X_test[si]
            acc = np.zeros(((si.stop - si.start) * (d1 if self.fields else 1), V.shape[1]))
            for sj in self.train_tiles:
                B = self.X_train[sj]
                Vj = V[sj.start * self.cols_per : sj.stop * self.cols_per]
                data = compute_tile(
                    self.arch, A, B, kind=self.kind, jacobian=self.fields, plan=self.plan
                )
                if not self.fields:
                    acc += data @ Vj
                    continue
                if not self.jacobian_columns:
                    padded = np.zeros((B.shape[0], d1, V.shape[1]))
                    padded[:, 0] = Vj
                    Vj = padded.reshape(B.shape[0] * d1, -1)
                acc += structured_matmul(data, A, B, Vj, arch=self.arch, kind=self.kind)
            if not self.gradients and self.fields:
                acc = acc.reshape(-1, d1, V.shape[1])[:, 0]
            out[si.start * self.rows_per : si.stop * self.rows_per] = acc
        return out
