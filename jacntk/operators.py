"""Gram matrices as linear operators: one protocol, three storage strategies (math.md §4.5, §5.4).

Every operator here is a :class:`scipy.sparse.linalg.LinearOperator` (``shape``, ``dtype``,
``matvec``, ``matmat``, ``@``) for a *symmetric* matrix of ``n_points`` points with a block of
``block`` rows per point (point-major, math.md §0.3):

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
    :func:`jacntk.fields.compute_tile` (one quadrature ``Plan`` for all tiles) and multiplied with
    :func:`jacntk.structured_matmul`, ``O(tile^2 + N d)`` memory;
``ScaledGram``
    the symmetric training matrix ``B = D^{1/2} Theta D^{1/2} + jitter I`` with
    ``D = I_N (x) diag(1, lam, ..., lam)`` (math.md §4.4) around any of the above.

``CrossGram`` is the rectangular test-by-train product ``Theta(X_test, X) V`` used by predictions.

Besides the product, an operator can describe its diagonal blocks (``diagonal_blocks``), and the
full-augmentation operators their diagonal *fields* (``diagonal_fields``), from which the
block-Jacobi preconditioner of :mod:`jacntk.solvers` inverts each block in O(d) (math.md §5.3).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange
from scipy.sparse.linalg import LinearOperator

from .arch import MLP
from .blocks import augment, projected_kernel, structured_matmul
from .fields import compute_tile, make_plan, transpose_fields
from .validation import as_pair, as_points


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


def tile_product(tile_data: np.ndarray, X1, X2, V, directions=None) -> np.ndarray:
    """One tile of a Gram matrix times ``V``.

    Parameters
    ----------
    tile_data : (n1, n2) scalar kernel, or (8, n1, n2) fields
    X1 : (n1, d); X2 : (n2, d)
    V : (n2 * b, k), with ``b = 1`` (scalar), ``d + 1`` (fields) or ``1 + p`` (fields with
        ``directions``)
    directions : tuple (U1, U2) of (n1, p, d), (n2, p, d), optional
        Projected augmentation (:func:`jacntk.projected_kernel`).

    Returns
    -------
    (n1 * b, k)
    """
    if tile_data.ndim == 2:
        return tile_data @ V
    if directions is not None:
        return projected_kernel(tile_data, X1, X2, directions[0], directions[1]) @ V
    return structured_matmul(tile_data, X1, X2, V)


#: Up to this many columns a scalar tile is multiplied by the Numba kernel below (one pass over
#: the tile in its stored precision); more columns go through a float64 copy and BLAS.
STREAMED_COLUMNS = 32


@njit(parallel=True, fastmath=True, cache=True)
def _scalar_tile_pair(T, Vt, outt, i0, j0, mirror, nch):  # pragma: no cover - compiled
    """``outt[:, i0:i0+ti] += (T Vt[:, j0:j0+tj]^T)^T`` and, if ``mirror``,
    ``outt[:, j0:j0+tj] += (T^T Vt[:, i0:i0+ti]^T)^T``, reading ``T`` (float32 or float64) once
    and accumulating in float64; rows of ``T`` in blocks of four per thread, the mirrored sums in
    a private buffer for each of the ``nch`` threads."""
    ti, tj = T.shape
    k = Vt.shape[0]
    bufs = np.zeros((nch, k, tj if mirror else 0))
    nblk = (ti + 3) // 4
    for c in prange(nch):
        buf = bufs[c]
        for b in range(c * nblk // nch, (c + 1) * nblk // nch):
            r = 4 * b
            if r + 4 <= ti:
                T0, T1, T2, T3 = T[r], T[r + 1], T[r + 2], T[r + 3]
                for m in range(k):
                    vj = Vt[m, j0 : j0 + tj]
                    w0, w1 = Vt[m, i0 + r], Vt[m, i0 + r + 1]
                    w2, w3 = Vt[m, i0 + r + 2], Vt[m, i0 + r + 3]
                    a0 = a1 = a2 = a3 = 0.0
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
                    outt[m, i0 + r] += a0
                    outt[m, i0 + r + 1] += a1
                    outt[m, i0 + r + 2] += a2
                    outt[m, i0 + r + 3] += a3
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
    if mirror:
        for c in range(nch):
            outt[:, j0 : j0 + tj] += bufs[c]


def _scalar_symmetric_product(tiles, slices, V: np.ndarray) -> np.ndarray:
    if V.shape[1] > STREAMED_COLUMNS:  # compute-bound: BLAS on a float64 copy of each tile
        out = np.zeros_like(V)
        for i, j, data in tiles:
            T = np.asarray(data, dtype=np.float64)
            out[slices[i]] += T @ V[slices[j]]
            if j != i:
                out[slices[j]] += T.T @ V[slices[i]]
        return out
    Vt = np.ascontiguousarray(V.T)
    outt = np.zeros_like(Vt)
    threads = numba.get_num_threads()
    for i, j, data in tiles:
        T = np.ascontiguousarray(
            data if data.dtype in (np.float32, np.float64) else data.astype(np.float64)
        )
        _scalar_tile_pair(T, Vt, outt, slices[i].start, slices[j].start, j != i, threads)
    return np.ascontiguousarray(outt.T)


def symmetric_product(tiles, slices, points, block: int, V, directions=None) -> np.ndarray:
    """``G V`` for a symmetric Gram given by its upper tiles.

    ``tiles`` yields ``(i, j, data)`` for ``i <= j`` (scalar ``(ti, tj)`` or fields
    ``(8, ti, tj)``); tile ``(j, i)`` is applied as the transpose (``transpose_fields`` for
    fields), so each upper tile is used twice: ``y_i += T_ij V_j``, ``y_j += T_ij^T V_i``.
    ``slices[i]`` are the point indices of tile ``i``; ``points`` (N, d) are needed for fields.
    Scalar tiles may be float32 (a float32 store): they are read once, in their own precision,
    and the sums are accumulated in float64.
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
        out[ri] += tile_product(data, pts(si), pts(sj), V[rj], dirs(si, sj))
        if j != i:
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
        return self.matrix @ V

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
        tile: int = 1024,
        cache: bool = False,
    ):
        X = as_points(X, "X")
        n, d = X.shape
        self.arch, self.kind, self.points = arch, kind, X
        self.directions = None
        if directions is not None:
            U = np.asarray(directions, dtype=np.float64)
            if U.ndim == 2:
                U = np.broadcast_to(U, (n,) + U.shape)
            if U.ndim != 3 or U.shape[0] != n or U.shape[2] != d or not np.isfinite(U).all():
                raise ValueError(
                    f"directions must be finite with shape (p, {d}) or ({n}, p, {d}), "
                    f"got {np.shape(directions)}"
                )
            self.directions = U
            jacobian = True
        self.jacobian = bool(jacobian)
        block = 1 if not self.jacobian else (d + 1 if self.directions is None else 1 + U.shape[1])
        super().__init__(n, block)
        self.plan = make_plan(arch, kind, self.jacobian)
        self.tiles = _tiles(n, tile)
        self.cache = {} if cache else None

    def tile_data(self, i: int, j: int) -> np.ndarray:
        """Scalar kernel (ti, tj) or fields (8, ti, tj) of tiles ``i <= j``."""
        if self.cache is not None and (i, j) in self.cache:
            return self.cache[i, j]
        A = self.points[self.tiles[i]]
        B = None if i == j else self.points[self.tiles[j]]
        data = compute_tile(self.arch, A, B, kind=self.kind, jacobian=self.jacobian, plan=self.plan)
        if self.cache is not None:
            self.cache[i, j] = data
        return data

    def _matmat(self, V):
        V = _as_columns(V, self.shape[0])
        n_t = len(self.tiles)
        upper = ((i, j, self.tile_data(i, j)) for i in range(n_t) for j in range(i, n_t))
        return symmetric_product(upper, self.tiles, self.points, self.block, V, self.directions)

    def _diagonal_tiles(self, chunk: int = 64):
        """``(slice, data)`` of small symmetric tiles along the diagonal (whose own diagonals
        are the diagonal pairs): O(N chunk) pairs in N / chunk calls."""
        for s in range(0, self.n_points, chunk):
            sl = slice(s, min(self.n_points, s + chunk))
            data = compute_tile(
                self.arch, self.points[sl], kind=self.kind, jacobian=self.jacobian, plan=self.plan
            )
            yield sl, data

    def diagonal_fields(self):
        if not self.jacobian or self.directions is not None:
            return None
        F = np.empty((8, self.n_points))
        for sl, data in self._diagonal_tiles():
            idx = np.arange(sl.stop - sl.start)
            F[:, sl] = data[:, idx, idx]
        return F, self.points

    def diagonal_blocks(self) -> np.ndarray:
        n, b = self.n_points, self.block
        out = np.empty((n, b, b))
        for sl, data in self._diagonal_tiles():
            for k in range(sl.stop - sl.start):
                i = sl.start + k
                x = self.points[i : i + 1]
                if data.ndim == 2:
                    out[i] = data[k, k]
                    continue
                F = data[:, k : k + 1, k : k + 1]
                if self.directions is not None:
                    U = self.directions[i : i + 1]
                    out[i] = projected_kernel(F, x, x, U, U)
                else:
                    out[i] = augment(F, x)
        return out


def available_memory_mib() -> float:
    """Memory available to new allocations, in MiB (``MemAvailable`` of ``/proc/meminfo``,
    which counts reclaimable page cache; 1024 where that cannot be read)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 1024.0


def _stored_row_product(store, i: int, V: np.ndarray, values_only: bool) -> np.ndarray:
    """Tile-row ``i`` of a stored Gram times ``V``: ``sum_J tile(i, J) V_J`` (reads row i only)."""
    X = np.asarray(store.points) if store.jacobian and not values_only else None
    b = store.d + 1 if store.jacobian and not values_only else 1
    si = store.tile_slice(i)
    out = None
    for j in range(store.n_tiles):
        sj = store.tile_slice(j)
        data = np.asarray(store.tile_block(i, j), dtype=np.float64)
        if values_only and data.ndim == 3:
            data = data[0]
        part = tile_product(
            data,
            None if X is None else X[si],
            None if X is None else X[sj],
            V[sj.start * b : sj.stop * b],
        )
        out = part if out is None else out + part
    return out


class StoredGram(GramOperator):
    """A Gram matrix held in a :class:`jacntk.store.GramStore`, read tile by tile.

    Parameters
    ----------
    store : GramStore
        Must be complete (every tile written).
    client : distributed.Client, optional
        Run each product as one task per tile-row on the workers, each reading its own tiles
        from the store (a handle scattered once); the vector is scattered (broadcast) once per
        product.
        Without a client the tiles are streamed here (``GramStore.matvec``: out-of-core).
    values_only : bool
        For a Jacobian store, use only the value field ``K`` (the scalar Gram, block 1).
    cache_mb : float, optional
        Without a client: if the stored upper tiles (scalar tiles in the stored dtype, fields
        as float64) take at most this many MiB, they are read once, on the first product, and
        kept in memory; larger Grams are streamed from the store on every product.  Default:
        half of the memory available now (``MemAvailable``), so a Gram that fits is read once.

    Notes
    -----
    A scalar store gives block 1, a Jacobian store block d+1 (point-major), the product of each
    field tile through :func:`jacntk.structured_matmul`.
    """

    def __init__(
        self, store, *, client=None, values_only: bool = False, cache_mb: float | None = None
    ):
        if not store.complete:
            missing = store.missing_tiles()
            raise ValueError(
                f"the Gram store {store.location.url} is incomplete: {len(missing)} tiles are "
                f"missing (first {missing[:3]}); finish the assembly (jacntk.assemble) first"
            )
        self.store = store
        self.client = client
        self._remote_store = None
        if client is not None:
            # a fresh handle (no cached points) is scattered once; each worker loads X lazily
            fresh = type(store).open(store.location)
            [self._remote_store] = client.scatter([fresh], broadcast=True, hash=False)
        self.values_only = bool(values_only) or not store.jacobian
        self.points = np.asarray(store.points) if store.jacobian else None
        self.arch, self.kind = store.arch, store.kind
        block = 1 if self.values_only else store.d + 1
        super().__init__(store.n, block)
        # scalar tiles are kept in the stored precision (a float32 store: half the memory)
        per_entry = np.dtype(store.dtype).itemsize if not store.jacobian else 8
        per_entry *= 1 if self.values_only else 8
        self._cache = None
        if cache_mb is None:
            cache_mb = available_memory_mib() / 2
        self.cached = client is None and store.n * (store.n + store.tile) / 2 * per_entry <= (
            cache_mb * 2**20
        )

    def _upper_tiles(self):
        """Upper tiles ``(i, j, data)``, read once into memory (scalar tiles in the stored
        dtype, fields as float64)."""
        if self._cache is None:
            n_t = self.store.n_tiles
            cache = []
            for i in range(n_t):
                for j in range(i, n_t):
                    if not self.store.jacobian:
                        data = self.store.upper_tile(i, j)
                    else:
                        data = np.asarray(self.store.tile_block(i, j), dtype=np.float64)
                        data = data[0] if self.values_only else data
                    cache.append((i, j, data))
            self._cache = cache
        return self._cache

    def _matmat(self, V):
        V = _as_columns(V, self.shape[0])
        if self.cached:
            slices = [self.store.tile_slice(i) for i in range(self.store.n_tiles)]
            points = None if self.values_only else self.points
            return symmetric_product(self._upper_tiles(), slices, points, self.block, V)
        if self.client is None and not (self.values_only and self.store.jacobian):
            return self.store.matvec(V)  # each upper tile read once, used twice
        if self.client is None:
            parts = [
                _stored_row_product(self.store, i, V, self.values_only)
                for i in range(self.store.n_tiles)
            ]
        else:
            [fut] = self.client.scatter([V], broadcast=True, hash=False)
            futures = [
                self.client.submit(
                    _stored_row_product, self._remote_store, i, fut, self.values_only, pure=False
                )
                for i in range(self.store.n_tiles)
            ]
            parts = self.client.gather(futures)
            del fut
        return np.concatenate(parts, axis=0)

    def diagonal_fields(self):
        if self.values_only:
            return None
        F = np.empty((8, self.n_points))
        for i in range(self.store.n_tiles):
            si = self.store.tile_slice(i)
            data = np.asarray(self.store.tile_block(i, i), dtype=np.float64)
            idx = np.arange(si.stop - si.start)
            F[:, si] = data[:, idx, idx]
        return F, self.points

    def diagonal_blocks(self) -> np.ndarray:
        out = np.empty((self.n_points, self.block, self.block))
        for i in range(self.store.n_tiles):
            si = self.store.tile_slice(i)
            data = np.asarray(self.store.tile_block(i, i), dtype=np.float64)
            idx = np.arange(si.stop - si.start)
            if data.ndim == 3 and self.values_only:
                data = data[0]
            if data.ndim == 2:
                out[si, 0, 0] = data[idx, idx]
            else:
                for k in idx:
                    x = self.points[si.start + k : si.start + k + 1]
                    out[si.start + k] = augment(data[:, k : k + 1, k : k + 1], x)
        return out


def scaling_vector(n_points: int, block: int, lam: float) -> np.ndarray:
    """Diagonal of ``D^{1/2}`` for ``n_points`` blocks: ``(1, sqrt(lam), ..., sqrt(lam))``."""
    s = np.full(block, np.sqrt(lam))
    s[0] = 1.0
    return np.tile(s, n_points)


class ScaledGram(GramOperator):
    """``B = D^{1/2} A D^{1/2} + jitter I`` with ``D = I_N (x) diag(1, lam, ..., lam)``.

    This is the symmetric form of the Jacobian-regularised training ODE (math.md §4.4):
    ``Theta D`` is similar to ``B``.  For ``block == 1`` (scalar Gram) ``D = I``.

    Parameters
    ----------
    base : GramOperator
    lam : float
        Jacobian regularisation ``lam >= 0``.
    jitter : float
        Explicit ridge ``epsilon >= 0`` (reported by every solve, math.md §4.5).
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

    def diagonal_blocks(self) -> np.ndarray:
        s = self.scale[: self.block]
        out = self.base.diagonal_blocks() * s[None, :, None] * s[None, None, :]
        out[:, np.arange(self.block), np.arange(self.block)] += self.jitter
        return out

    def diagonal_fields(self):
        return self.base.diagonal_fields()


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
        tile: int = 1024,
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
                acc += structured_matmul(data, A, B, Vj)
            if not self.gradients and self.fields:
                acc = acc.reshape(-1, d1, V.shape[1])[:, 0]
            out[si.start * self.rows_per : si.stop * self.rows_per] = acc
        return out
