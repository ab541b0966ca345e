"""Gram matrices as linear operators: one protocol, three storage strategies
(docs/math.md §8.6, §6.1).

Every operator here is a :class:`scipy.sparse.linalg.LinearOperator` (``shape``, ``dtype``,
``matvec``, ``matmat``, ``@``) for a *symmetric* matrix of ``n_points`` points with a block of
``block`` rows per point (point-major, docs/math.md §1.3):

* ``block == 1``: the scalar NNGP/NTK Gram;
* ``block == d + 1``: the Jacobian-augmented Gram (value and input gradient per point);
* ``block == 1 + p``: projected augmentation with ``p`` directions per point.

Implementations

``DenseGram``
    an in-memory matrix;
``StoredGram``
    a :class:`jacntk.store.GramStore` read tile by tile (out-of-core); with a Dask client the
    product runs as one task per tile-row on the workers, each reading its own tiles, the vector
    scattered once per product;
``StructuredGram``
    matrix-free: the kernel fields of each tile are recomputed on the fly with
    :func:`jacntk.kernels._compute.compute_tile` (one quadrature ``Plan`` for all tiles) and
    multiplied with
    :func:`jacntk.structured_matmul`, ``O(tile^2 + N d)`` memory;
``ScaledGram``
    the symmetric training matrix ``B = D^{1/2} Theta D^{1/2} + jitter I`` with
    ``D = I_N (x) diag(1, lam, ..., lam)`` (docs/math.md §8.2) around any of the above.

``CrossGram`` is the rectangular test-by-train product ``Theta(X_test, X) V`` used by predictions.

Besides the product, an operator can describe its diagonal blocks (``diagonal_blocks``), and the
full-augmentation operators their diagonal *fields* (``diagonal_fields``), from which the
block-Jacobi preconditioner of :mod:`jacntk.linalg` inverts each block in O(d) (docs/math.md §6.2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numba
import numpy as np
from numba import njit, prange
from scipy.sparse.linalg import LinearOperator

from .._digest import finish, row_hash, row_value, tile_digest, words
from ..arch import MLP
from ..kernels._blocks import check_directions, projected_kernel, structured_matmul
from ..kernels._compute import compute_tile
from ..kernels._fields import make_plan, transpose_fields
from ..kernels._routing import RoutedFields, route_fields, routed_diagonal_blocks
from ..options import DEFAULT_TILE
from ..validation import as_points


def _tiles(n: int, tile: int) -> list[slice]:
    if tile < 1:
        raise ValueError(f"tile must be a positive integer, got {tile}")
    return [slice(s, min(n, s + tile)) for s in range(0, n, tile)]


def _as_columns(V: np.ndarray, rows: int) -> np.ndarray:
    V = np.asarray(V, dtype=np.float64)
    if V.ndim == 1:
        V = V[:, None]
    if V.ndim != 2 or V.shape[0] != rows:
        raise ValueError(f"expected {rows} rows, got an array of shape {V.shape}")
    return V


def dense_symmetric_product(K: np.ndarray, V: np.ndarray) -> np.ndarray:
    """``K @ V`` for a symmetric in-memory ``K`` (n, n) and ``V`` (n, k), computed as
    ``(V^T K)^T``: the same numbers, about 1.6x faster in OpenBLAS for k >= 2 (n = 4,000:
    13.8 ms against 25.3 ms for k = 10, measured here) and never slower."""
    return (V.T @ K).T


def tile_product(tile_data, X1, X2, V, directions=None, route=None) -> np.ndarray:
    """One tile of a Gram matrix times ``V``.

    Parameters
    ----------
    tile_data : (n1, n2) scalar kernel, (8, n1, n2) fields, or RoutedFields
    X1 : (n1, d); X2 : (n2, d)
    V : (n2 * b, k), with ``b = 1`` (scalar), ``d + 1`` (fields) or ``1 + p`` (fields with
        ``directions``)
    directions : tuple (U1, U2) of (n1, p, d), (n2, p, d), optional
        Projected augmentation (:func:`jacntk.projected_kernel`).
    route : tuple (arch, kind), optional
        The architecture and kind of field tiles: their near-collinear pairs are routed by
        :func:`jacntk.kernels._routing.route_fields` (the numbers of ``jacntk.kernel``).
        Without it field tiles are multiplied as they are.

    Returns
    -------
    (n1 * b, k)
    """
    if isinstance(tile_data, np.ndarray) and tile_data.ndim == 3 and route is not None:
        tile_data = route_fields(route[0], route[1], tile_data, X1, X2)
    if isinstance(tile_data, RoutedFields):
        if directions is not None:
            return tile_data.projected(directions[0], directions[1]) @ V
        return tile_data.matmul(V)
    if tile_data.ndim == 2:
        return tile_data @ V
    if directions is not None:
        return projected_kernel(tile_data, X1, X2, directions[0], directions[1]) @ V
    return structured_matmul(tile_data, X1, X2, V)


#: Up to this many columns a scalar tile is multiplied by the Numba kernel below (one pass over
#: the tile in its stored precision); more columns go through a float64 copy and BLAS.
STREAMED_COLUMNS = 32


@njit(parallel=True, fastmath=True, cache=True)
def _scalar_tile_pair(T, U, Vt, outt, i0, j0, mirror, nch, hs, digest):  # pragma: no cover
    """``outt[:, i0:i0+ti] += (T Vt[:, j0:j0+tj]^T)^T`` and, if ``mirror``,
    ``outt[:, j0:j0+tj] += (T^T Vt[:, i0:i0+ti]^T)^T``, reading ``T`` (float32 or float64) once
    and accumulating in float64; rows of ``T`` in blocks of four per thread, the mirrored sums in
    a private buffer for each of the ``nch`` threads.  If ``digest``, thread ``c`` also adds the
    row hashes (:func:`jacntk._digest.row_hash` of ``U``, the words of ``T``) of its rows into
    ``hs[c]``, the words of each row summed in the loop of its first product, as it loads
    them (no second pass over the tile)."""
    ti, tj = T.shape
    k = Vt.shape[0]
    bufs = np.zeros((nch, k, tj if mirror else 0))
    nblk = (ti + 3) // 4
    for c in prange(nch):
        buf = bufs[c]
        h = np.uint64(0)
        for b in range(c * nblk // nch, (c + 1) * nblk // nch):
            r = 4 * b
            if r + 4 <= ti:
                T0, T1, T2, T3 = T[r], T[r + 1], T[r + 2], T[r + 3]
                U0, U1, U2, U3 = U[r], U[r + 1], U[r + 2], U[r + 3]
                for m in range(k):
                    vj = Vt[m, j0 : j0 + tj]
                    w0, w1 = Vt[m, i0 + r], Vt[m, i0 + r + 1]
                    w2, w3 = Vt[m, i0 + r + 2], Vt[m, i0 + r + 3]
                    a0 = a1 = a2 = a3 = 0.0
                    hashing = digest and m == 0  # the words summed in the first pass
                    s0 = s1 = s2 = s3 = np.uint64(0)
                    for q in range(tj):
                        t0, t1 = np.float64(T0[q]), np.float64(T1[q])
                        t2, t3 = np.float64(T2[q]), np.float64(T3[q])
                        v = vj[q]
                        a0 += t0 * v
                        a1 += t1 * v
                        a2 += t2 * v
                        a3 += t3 * v
                        if mirror:
                            buf[m, q] += t0 * w0 + t1 * w1 + t2 * w2 + t3 * w3
                        if hashing:
                            s0 += np.uint64(U0[q])
                            s1 += np.uint64(U1[q])
                            s2 += np.uint64(U2[q])
                            s3 += np.uint64(U3[q])
                    outt[m, i0 + r] += a0
                    outt[m, i0 + r + 1] += a1
                    outt[m, i0 + r + 2] += a2
                    outt[m, i0 + r + 3] += a3
                    if hashing:
                        h += row_value(s0, r) + row_value(s1, r + 1)
                        h += row_value(s2, r + 2) + row_value(s3, r + 3)
            else:
                for a in range(r, ti):
                    Ta = T[a]
                    for m in range(k):
                        w = Vt[m, i0 + a]
                        acc = 0.0
                        for q in range(tj):
                            t = np.float64(Ta[q])
                            acc += t * Vt[m, j0 + q]
                            if mirror:
                                buf[m, q] += t * w
                        outt[m, i0 + a] += acc
                    if digest:
                        h += row_hash(U[a], a)
        hs[c] = h
    if mirror:
        for c in range(nch):
            outt[:, j0 : j0 + tj] += bufs[c]


class CheckedTile(NamedTuple):
    """A scalar tile read without its check, and the check: the product computes the tile's
    product digest (:mod:`jacntk._digest`) as it reads the values and calls ``check(digest)``
    (which raises if the tile is damaged) before its result is used."""

    values: np.ndarray
    key: int
    check: Callable[[int], None]


def _scalar_symmetric_product(tiles, slices, V: np.ndarray) -> np.ndarray:
    blas = V.shape[1] > STREAMED_COLUMNS  # compute-bound: BLAS on a float64 copy of each tile
    Vt = None if blas else np.ascontiguousarray(V.T)
    out = np.zeros_like(V) if blas else np.zeros_like(Vt)
    threads = numba.get_num_threads()
    hs = np.zeros(threads, np.uint64)
    for i, j, data in tiles:
        checked = data if isinstance(data, CheckedTile) else None
        if checked is not None:
            data = checked.values
        if blas:
            if checked is not None:
                checked.check(tile_digest(data, checked.key))
            T = np.asarray(data, dtype=np.float64)
            out[slices[i]] += T @ V[slices[j]]
            if j != i:
                out[slices[j]] += T.T @ V[slices[i]]
            continue
        T = np.ascontiguousarray(
            data if data.dtype in (np.float32, np.float64) else data.astype(np.float64)
        )
        i0, j0 = slices[i].start, slices[j].start
        _scalar_tile_pair(T, words(T), Vt, out, i0, j0, j != i, threads, hs, checked is not None)
        if checked is not None:
            checked.check(finish(int(hs.sum(dtype=np.uint64)), checked.key))
    return out if blas else np.ascontiguousarray(out.T)


def symmetric_product(
    tiles, slices, points, block: int, V, directions=None, route=None
) -> np.ndarray:
    """``G V`` for a symmetric Gram given by its upper tiles.

    ``tiles`` yields ``(i, j, data)`` for ``i <= j`` (scalar ``(ti, tj)``, fields
    ``(8, ti, tj)`` or ``RoutedFields``); tile ``(j, i)`` is applied as the transpose
    (``transpose_fields`` for fields), so each upper tile is used twice: ``y_i += T_ij V_j``,
    ``y_j += T_ij^T V_i``.  ``slices[i]`` are the point indices of tile ``i``; ``points``
    (N, d) are needed for fields.  ``route = (arch, kind)`` routes the pairs of field tiles
    (:func:`jacntk.kernels._routing.route_fields`, decided once per upper tile).  Scalar tiles
    may be float32 (a float32 store): they are read once, in their own precision, and the sums
    are accumulated in float64.
    """
    if block == 1 and directions is None:
        return _scalar_symmetric_product(tiles, slices, V)
    out = np.zeros_like(V)

    def pts(sl):
        return None if points is None else points[sl]

    def dirs(a, b):
        return None if directions is None else (directions[a], directions[b])

    for i, j, data in tiles:
        si, sj = slices[i], slices[j]
        ri = slice(si.start * block, si.stop * block)
        rj = slice(sj.start * block, sj.stop * block)
        if isinstance(data, np.ndarray) and data.ndim == 3 and route is not None:
            data = route_fields(route[0], route[1], data, pts(si), pts(sj))
        out[ri] += tile_product(data, pts(si), pts(sj), V[rj], dirs(si, sj))
        if j != i:
            if isinstance(data, RoutedFields):
                dataT = data.transpose()
            else:
                dataT = data.T if data.ndim == 2 else transpose_fields(data)
            out[rj] += tile_product(dataT, pts(sj), pts(si), V[ri], dirs(sj, si))
    return out


class GramOperator(LinearOperator):
    """A symmetric Gram operator of ``n_points`` points with ``block`` rows per point.

    Subclasses implement ``_matmat(V)`` for ``V`` of shape (n_points * block, k).
    """

    def __init__(self, n_points: int, block: int):
        self.n_points = int(n_points)
        self.block = int(block)
        size = self.n_points * self.block
        super().__init__(np.dtype(np.float64), (size, size))

    def _matvec(self, v):
        return self._matmat(np.asarray(v, dtype=np.float64).reshape(-1, 1))[:, 0]

    def _adjoint(self):
        return self

    def diagonal_blocks(self) -> np.ndarray:
        """The per-point diagonal blocks, shape (n_points, block, block)."""
        raise NotImplementedError(f"{type(self).__name__} does not provide its diagonal blocks")

    def diagonal_fields(self):
        """``(fields (8, n), points (n, d))`` of the diagonal pairs, for full augmentation only;
        None where not available."""
        return None

    def to_dense(self) -> np.ndarray:
        """The dense matrix (by products with the identity in column chunks; small sizes only)."""
        n = self.shape[0]
        out = np.empty((n, n))
        for s in range(0, n, 512):
            E = np.zeros((n, min(512, n - s)))
            E[np.arange(s, s + E.shape[1]), np.arange(E.shape[1])] = 1.0
            out[:, s : s + E.shape[1]] = self.matmat(E)
        return out


class DenseGram(GramOperator):
    """An in-memory symmetric matrix ``G`` of shape (n*block, n*block), point-major."""

    def __init__(self, G, block: int = 1):
        G = np.asarray(G, dtype=np.float64)
        if G.ndim != 2 or G.shape[0] != G.shape[1]:
            raise ValueError(f"a Gram matrix must be square, got shape {G.shape}")
        if block < 1 or G.shape[0] % block:
            raise ValueError(f"matrix size {G.shape[0]} is not a multiple of block={block}")
        if not np.isfinite(G).all():
            raise ValueError("the Gram matrix contains NaN or inf")
        super().__init__(G.shape[0] // block, block)
        self.matrix = G

    def _matmat(self, V):
        return dense_symmetric_product(self.matrix, V)

    def diagonal_blocks(self) -> np.ndarray:
        n, b = self.n_points, self.block
        idx = np.arange(n)
        return self.matrix.reshape(n, b, n, b)[idx, :, idx, :]

    def to_dense(self) -> np.ndarray:
        return self.matrix


class StructuredGram(GramOperator):
    """Matrix-free Gram of ``arch`` on the points ``X``: fields recomputed per tile per product.

    Parameters
    ----------
    arch : MLP
    X : (N, d) points
    kind : {"ntk", "nngp", "ntk_truncated"}
    jacobian : bool
        Full augmentation (block d+1) if True, the scalar Gram (block 1) if False.
    directions : (N, p, d) or (p, d), optional
        Projected augmentation (block 1+p); implies ``jacobian``.
    tile : int
        Points per tile; memory is O(tile^2) fields per tile.
    cache : bool
        Keep every computed tile in memory (``8 N^2 / 2`` floats): faster repeated products when
        that fits; the default recomputes (the matrix-free mode).
    client : distributed.Client, optional
        Run the products on the cluster's workers (``RecomputedTiles``,
        :mod:`jacntk.linalg._resident`): each worker recomputes its share of the upper tiles in
        every product, so no worker holds more than the points and one tile's fields -- for
        Grams larger than the cluster's memory.  Not with ``cache``.

    Notes
    -----
    Only tiles ``I <= J`` are computed; tile ``(J, I)`` is applied as the transpose of ``(I, J)``
    (for fields: ``transpose_fields``).  A product costs one field evaluation per pair,
    ``O(N^2 (depth + d))`` time per right-hand side.
    """

    def __init__(
        self,
        arch: MLP,
        X,
        *,
        kind: str = "ntk",
        jacobian: bool = True,
        directions=None,
        tile: int = DEFAULT_TILE,
        cache: bool = False,
        client=None,
    ):
        X = as_points(X, "X")
        n, d = X.shape
        self.arch, self.kind, self.points = arch, kind, X
        self.directions = None
        if directions is not None:
            self.directions = check_directions(directions, n, d)
            jacobian = True
        self.jacobian = bool(jacobian)
        block = 1 if not self.jacobian else d + 1
        if self.directions is not None:
            block = 1 + self.directions.shape[1]
        super().__init__(n, block)
        self.plan = make_plan(arch, kind, self.jacobian)
        self.tiles = _tiles(n, tile)
        self.cache = {} if cache else None
        self.client = client
        self.remote = None
        if client is not None:
            if cache:
                raise ValueError(
                    "cache=True keeps the tiles in this process; with a client the workers "
                    "recompute them (choose one)"
                )
            from ._resident import RecomputedTiles

            self.remote = RecomputedTiles(self, client)

    def tile_data(self, i: int, j: int):
        """Tile ``i <= j``: the scalar kernel (ti, tj), or for the Jacobian Gram its fields
        with the routing of :func:`jacntk.kernels._routing.route_fields` attached
        (``RoutedFields``: near-collinear ReLU pairs come from the stable route)."""
        if self.cache is not None and (i, j) in self.cache:
            return self.cache[i, j]
        A = self.points[self.tiles[i]]
        B = None if i == j else self.points[self.tiles[j]]
        data = compute_tile(self.arch, A, B, kind=self.kind, jacobian=self.jacobian, plan=self.plan)
        if self.jacobian:
            data = route_fields(self.arch, self.kind, data, A, B)
        if self.cache is not None:
            self.cache[i, j] = data
        return data

    def _matmat(self, V):
        V = _as_columns(V, self.shape[0])
        if self.remote is not None:
            return self.remote.product(V)
        n_t = len(self.tiles)
        upper = ((i, j, self.tile_data(i, j)) for i in range(n_t) for j in range(i, n_t))
        return symmetric_product(upper, self.tiles, self.points, self.block, V, self.directions)

    def _diagonal_fields(self, chunk: int = 64) -> np.ndarray:
        """Fields (8, N) (or the scalar kernel (N,)) of the diagonal pairs ``(x_i, x_i)``, from
        small symmetric tiles along the diagonal: O(N chunk) pairs in N / chunk calls."""
        F = np.empty((8, self.n_points) if self.jacobian else (self.n_points,))
        for s in range(0, self.n_points, chunk):
            sl = slice(s, min(self.n_points, s + chunk))
            data = compute_tile(
                self.arch, self.points[sl], kind=self.kind, jacobian=self.jacobian, plan=self.plan
            )
            idx = np.arange(sl.stop - sl.start)
            F[..., sl] = data[..., idx, idx]
        return F

    def diagonal_fields(self):
        if not self.jacobian or self.directions is not None:
            return None
        return self._diagonal_fields(), self.points

    def diagonal_blocks(self) -> np.ndarray:
        F = self._diagonal_fields()
        if not self.jacobian:
            return F[:, None, None].copy()
        return routed_diagonal_blocks(self.arch, self.kind, F, self.points, self.directions)
