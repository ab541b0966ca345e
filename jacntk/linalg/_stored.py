"""The Gram matrix of a Zarr store as an operator: held in memory when it fits, else streamed
tile by tile.

Where it lives is decided once, by :func:`fits_in_memory` against one budget (half of the memory
available, or ``cache_mb``): the whole matrix as one float64 array (``dense``: the direct route
of a ``t = inf`` solve), else its upper tiles (``cached``), else streamed from the store on every
product.  The symmetric half is multiplied twice, once transposed.  A Jacobian store holds
the eight fields; the pairs that :func:`jacntk.kernels._routing.stable_pairs` routes
(near-collinear ReLU pairs, where the fields cancel) are repaired from the store's own inputs
``X``, so the operator has the numbers of ``jacntk.kernel(arch, X, kind=kind, jacobian=True)``.
"""

from __future__ import annotations

import numpy as np

from ..kernels._blocks import check_directions
from ..kernels._routing import route_fields, routed_diagonal_blocks
from ._gram import (
    GramOperator,
    _as_columns,
    dense_symmetric_product,
    symmetric_product,
    tile_product,
)
from ._resident import ResidentTiles

#: Dense copies of the matrix the direct route holds at once: the matrix kept in memory and the
#: scaled copy that LAPACK factorises in place (``jacntk.training._coefficients``).
DIRECT_COPIES = 2


def fits_in_memory(nbytes: float, budget_mib: float | None = None) -> bool:
    """The one rule deciding whether a stored Gram is held in memory.

    Parameters
    ----------
    nbytes : float
        Bytes the in-memory form needs.
    budget_mib : float, optional
        Budget in MiB; default :func:`memory_budget_mib` (half of the memory available now).

    Returns
    -------
    bool
        ``nbytes <= budget_mib * 2**20``.
    """
    if budget_mib is None:
        budget_mib = memory_budget_mib()
    return nbytes <= budget_mib * 2**20


def memory_budget_mib() -> float:
    """Default budget of :func:`fits_in_memory`: half of :func:`available_memory_mib`."""
    return available_memory_mib() / 2


def available_memory_mib() -> float:
    """Memory available to new allocations by this process, in MiB: the smallest of
    ``MemAvailable`` (``/proc/meminfo``, which counts reclaimable page cache), the room left in
    this process's memory cgroup (v1 ``memory.limit_in_bytes - memory.usage_in_bytes``, v2
    ``memory.max - memory.current``) and the room left under its address-space limit
    (``RLIMIT_AS``, e.g. ``prlimit --as``, minus ``VmSize``); 1024 where none can be read.  A
    process capped below the machine's memory (a container, a Dask worker under a cgroup, a
    client run with ``prlimit``) so budgets by its own cap, not the machine's."""
    limits = [_meminfo_kib("/proc/meminfo", "MemAvailable:")]
    limits.append(_cgroup_room())
    limits.append(_address_space_room())
    known = [x for x in limits if x is not None]
    return min(known) / 2**20 if known else 1024.0


def _meminfo_kib(path: str, key: str) -> float | None:
    """Bytes of the ``key`` line (in kB) of a ``/proc`` status file, or None."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
        return None if text == "max" else int(text)
    except (OSError, ValueError):
        return None


def memory_cgroup() -> tuple[str, str, str] | None:
    """This process's memory cgroup: ``(directory, limit file, usage file)`` (v1
    ``memory.limit_in_bytes`` / ``memory.usage_in_bytes``, v2 ``memory.max`` /
    ``memory.current``), or None where ``/proc/self/cgroup`` names none."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = [line.strip().split(":", 2) for line in f]
    except OSError:
        return None
    for _, controllers, path in (parts for parts in lines if len(parts) == 3):
        if "memory" in controllers.split(","):  # v1
            return f"/sys/fs/cgroup/memory{path}", "memory.limit_in_bytes", "memory.usage_in_bytes"
        if controllers == "":  # v2 (unified)
            return f"/sys/fs/cgroup{path}", "memory.max", "memory.current"
    return None


def _cgroup_room() -> float | None:
    """Bytes left in this process's memory cgroup (v1 or v2), or None without a limit."""
    group = memory_cgroup()
    if group is None:
        return None
    base, limit, used = group
    cap, usage = _read_int(f"{base}/{limit}"), _read_int(f"{base}/{used}")
    if cap is not None and usage is not None and cap < 2**60:
        return float(max(cap - usage, 0))
    return None


def _address_space_room() -> float | None:
    """Bytes left under ``RLIMIT_AS``, or None when it is unlimited."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    size = _meminfo_kib("/proc/self/status", "VmSize:")
    return None if size is None else float(max(soft - size, 0))


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
        Hold the Gram in the workers' memory (``ResidentTiles``, :mod:`jacntk.linalg._resident`):
        each upper tile is read once by one worker and stays there; a product moves only
        vectors, and a worker that dies has its tiles reloaded from the store elsewhere.
        Without a client the tiles are streamed here (``GramStore.matvec``: out-of-core).
        Unused when the matrix is held ``dense``.
    values_only : bool
        For a Jacobian store, use only the value field ``K`` (the scalar Gram, block 1).
    cache_mb : float, optional
        Memory budget in MiB of :func:`fits_in_memory`; default half of the memory available
        now (``MemAvailable``).
    dense : bool or None, default False
        Hold the whole matrix in memory as one float64 array (read on first use; products by
        BLAS; :meth:`to_dense` returns it without a copy).  None: when ``DIRECT_COPIES`` such
        arrays, ``DIRECT_COPIES * 8 (N * block)^2`` bytes, fit the budget
        (``training_system(operator="auto")`` asks this, and a dense stored Gram is solved
        directly at ``t = inf``).  False: tiles only.
    directions : (p, d) or (N, p, d), optional
        For a Jacobian store: the projected augmentation (docs/math.md §6.3), blocks of
        ``1 + p`` rows per point (value and ``p`` directional derivatives) built from the
        stored fields; directions shared by all points (a ``(p, d)`` array) cost no factor
        ``d`` per pair.

    Attributes
    ----------
    dense : bool
        Whether the matrix is held as one dense array.
    cached : bool
        Whether products read memory only: ``dense``, or (without a client) the stored upper
        tiles -- scalar tiles in the stored dtype, fields as float64, ``N (N + tile) / 2``
        entries -- fit the budget and are read once, on the first product.  Otherwise every
        product streams the tiles from the store.
    budget_mib : float
        The budget these two decisions were made against.

    Notes
    -----
    A scalar store gives block 1, a Jacobian store block d+1 (1+p with ``directions``;
    point-major), the product of each
    field tile through :func:`jacntk.structured_matmul` with its routed pairs (module
    docstring) repaired by the stable ReLU route.
    """

    def __init__(
        self,
        store,
        *,
        client=None,
        values_only: bool = False,
        cache_mb: float | None = None,
        dense: bool | None = False,
        directions=None,
    ):
        if not store.complete:
            missing = store.missing_tiles()
            raise ValueError(
                f"the Gram store {store.location.url} is incomplete: {len(missing)} tiles are "
                f"missing (first {missing[:3]}); finish the assembly (jacntk.assemble) first"
            )
        self.store = store
        self.client = client
        self.values_only = bool(values_only) or not store.jacobian
        self.points = np.asarray(store.points) if store.jacobian else None
        self.arch, self.kind = store.arch, store.kind
        block = 1 if self.values_only else store.d + 1
        self.directions = None
        if directions is not None:
            if self.values_only:
                raise ValueError(
                    "directions (projected augmentation) need a Jacobian store's fields; "
                    f"{store.location.url} is "
                    + ("used values_only" if store.jacobian else "a scalar store")
                )
            self.directions = check_directions(directions, store.n, store.d)
            block = 1 + self.directions.shape[1]
        super().__init__(store.n, block)
        self.budget_mib = float(memory_budget_mib() if cache_mb is None else cache_mb)
        size = store.n * block
        self.dense_bytes = DIRECT_COPIES * 8.0 * size**2
        self.dense = (
            bool(dense) if dense is not None else fits_in_memory(self.dense_bytes, self.budget_mib)
        )
        # scalar tiles are kept in the stored precision (a float32 store: half the memory)
        per_entry = np.dtype(store.dtype).itemsize if not store.jacobian else 8
        per_entry *= 1 if self.values_only else 8
        self.tile_bytes = store.n * (store.n + store.tile) / 2 * per_entry
        self._cache = None
        self._dense = None
        self.cached = self.dense or (
            client is None and fits_in_memory(self.tile_bytes, self.budget_mib)
        )
        self.resident = None
        if client is not None and not self.dense:
            # every upper tile loaded once into one worker's memory, kept there (_resident.py)
            self.resident = ResidentTiles(
                store, client, values_only=self.values_only, directions=directions
            )

    @property
    def residency(self) -> str:
        """Where the products read the matrix: ``"in memory (dense)"``, ``"tiles cached in
        memory"``, ``"streamed on the cluster"`` or ``"streamed from the store"``, with the
        sizes behind the decision (MiB against :attr:`budget_mib`)."""
        mib = 2.0**20
        if self.dense:
            one = self.dense_bytes / DIRECT_COPIES / mib
            where = f"in memory (dense, {DIRECT_COPIES} x {one:,.0f} MiB"
        elif self.cached:
            where = f"tiles cached in memory ({self.tile_bytes / mib:,.0f} MiB"
        else:
            where = (
                f"resident in the memory of {len(self.resident.assignment)} workers"
                if self.resident is not None
                else "streamed from the store"
            )
            where += (
                f" (dense {self.dense_bytes / mib:,.0f} MiB, tiles {self.tile_bytes / mib:,.0f} MiB"
            )
        return where + f"; budget {self.budget_mib:,.0f} MiB)"

    def load(self) -> np.ndarray:
        """The matrix as one float64 array, read from the store once (``dense`` only; the
        array is kept and shared: do not modify it)."""
        if not self.dense:
            raise ValueError("StoredGram.load() needs dense=True (the matrix held in memory)")
        if self._dense is None:
            self._dense = self._read_dense()
        return self._dense

    def _read_dense(self) -> np.ndarray:
        """Fill the ``(N * block)^2`` matrix from the upper tiles, mirrored (fields expanded
        through their routing: ``RoutedFields.dense``)."""
        b, store = self.block, self.store
        out = np.empty(self.shape)
        for i in range(store.n_tiles):
            si = store.tile_slice(i)
            ri = slice(si.start * b, si.stop * b)
            for j in range(i, store.n_tiles):
                sj = store.tile_slice(j)
                rj = slice(sj.start * b, sj.stop * b)
                data = store.upper_tile(i, j)
                if store.jacobian and self.values_only:
                    data = data[0]
                elif store.jacobian:
                    routed = route_fields(
                        self.arch,
                        self.kind,
                        np.asarray(data, np.float64),
                        self.points[si],
                        self.points[sj],
                    )
                    U = self.directions
                    data = routed.dense() if U is None else routed.projected(U[si], U[sj])
                out[ri, rj] = data
                if j != i:
                    out[rj, ri] = data.T
        return out

    def to_dense(self) -> np.ndarray:
        """The dense matrix: the held array when ``dense`` (not a copy), else read from the
        tiles into a new array."""
        return self.load() if self.dense else self._read_dense()

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
        if self.dense:
            return dense_symmetric_product(self.load(), V)
        if self.cached:
            slices = [self.store.tile_slice(i) for i in range(self.store.n_tiles)]
            if self._cache is None and not self.store.jacobian:
                # the first product fills the cache and checks each tile as it multiplies it
                tiles = list(self.store.product_tiles())
                out = symmetric_product(tiles, slices, None, 1, V)
                self._cache = [(i, j, getattr(t, "values", t)) for i, j, t in tiles]
                return out
            points = None if self.values_only else self.points
            return symmetric_product(
                self._upper_tiles(), slices, points, self.block, V, self.directions
            )
        if self.resident is not None:
            return self.resident.product(V)
        if not (self.values_only and self.store.jacobian):
            # each upper tile read once, used twice (and routed; projected with directions)
            return self.store.matvec(V, self.directions)
        parts = [
            _stored_row_product(self.store, i, V, self.values_only)
            for i in range(self.store.n_tiles)
        ]
        return np.concatenate(parts, axis=0)

    def _diagonal(self) -> np.ndarray:
        """The stored diagonal pairs: fields (8, n), or the values (n,) for block 1."""
        if self.resident is not None:
            return self.resident.diagonal()
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
        if self.values_only or self.directions is not None:
            return None
        return self._diagonal(), self.points

    def diagonal_blocks(self) -> np.ndarray:
        F = self._diagonal()
        if self.values_only:
            return F[:, None, None].copy()
        return routed_diagonal_blocks(self.arch, self.kind, F, self.points, self.directions)
