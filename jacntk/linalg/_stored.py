"""The Gram matrix of a Zarr store as an operator, streamed tile by tile.

Tiles are read from the store (and cached while memory allows); the symmetric half
is multiplied twice, once transposed.  A Jacobian store holds the eight fields; the pairs
that :func:`jacntk.kernels._compute.stable_pairs` routes (near-collinear ReLU pairs, where the
fields cancel) are repaired from the store's own inputs ``X``, so the operator has the numbers
of ``jacntk.kernel(arch, X, kind=kind, jacobian=True)``.
"""

from __future__ import annotations

import numpy as np

from ..kernels._compute import route_fields, routed_diagonal_blocks
from ._gram import GramOperator, _as_columns, symmetric_product, tile_product


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
    route = None if X is None else (store.arch, store.kind)
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
            route=route,
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
    field tile through :func:`jacntk.structured_matmul` with its routed pairs (module
    docstring) repaired by the stable ReLU route.
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
        dtype, fields as float64 with their routing attached: ``RoutedFields``)."""
        if self._cache is None:
            n_t = self.store.n_tiles
            cache = []
            for i in range(n_t):
                for j in range(i, n_t):
                    if not self.store.jacobian:
                        data = self.store.upper_tile(i, j)
                    else:
                        data = np.asarray(self.store.tile_block(i, j), dtype=np.float64)
                        if self.values_only:
                            data = data[0]
                        else:
                            si, sj = self.store.tile_slice(i), self.store.tile_slice(j)
                            data = route_fields(
                                self.arch, self.kind, data, self.points[si], self.points[sj]
                            )
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
            return self.store.matvec(V)  # each upper tile read once, used twice (and routed)
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

    def _diagonal(self) -> np.ndarray:
        """The stored diagonal pairs: fields (8, n), or the values (n,) for block 1."""
        parts = []
        for i in range(self.store.n_tiles):
            si = self.store.tile_slice(i)
            data = np.asarray(self.store.tile_block(i, i), dtype=np.float64)
            if data.ndim == 3 and self.values_only:
                data = data[0]
            idx = np.arange(si.stop - si.start)
            parts.append(data[..., idx, idx])
        return np.concatenate(parts, axis=-1)

    def diagonal_fields(self):
        if self.values_only:
            return None
        return self._diagonal(), self.points

    def diagonal_blocks(self) -> np.ndarray:
        F = self._diagonal()
        if self.values_only:
            return F[:, None, None].copy()
        return routed_diagonal_blocks(self.arch, self.kind, F, self.points)
