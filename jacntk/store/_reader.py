"""``GramStore``: open, query and verify a Gram store (reads only)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from .._digest import split, tile_digest
from ..arch import MLP
from ..kernels._blocks import check_directions
from ..kernels._fields import FIELD_NAMES, Plan, make_plan, transpose_fields
from ..kernels._routing import route_fields, routed_diagonal_blocks
from ..validation import as_vector
from ._format import (
    _MISSING_SHOWN,
    FULL_FIELDS,
    SET_FORMAT,
    STORED_FIELDS,
    ChecksumError,
    _indices,
    chunk_key,
    chunk_record,
    done_tiles,
    fingerprint,
    read_manifest,
    run_concurrently,
    tile_chunks,
    upper_tiles,
)
from ._location import StoreLocation, open_attributes


@dataclass
class GramStore:
    """A Gram matrix (scalar NNGP/NTK, or the Jacobian kernel's fields) kept in a Zarr store.

    Open with :meth:`open`; build with :func:`jacntk.assemble`.  Queries need no
    cluster; those that touch tiles not yet assembled raise ``ValueError`` naming the tiles.
    Every chunk read is checked against its manifest record (a keyed CRC-32C,
    :func:`jacntk.store._format.chunk_record`); a chunk that fails raises
    :class:`jacntk.store.ChecksumError` naming the tile, before any number is returned.
    """

    location: StoreLocation
    meta: dict
    done: np.ndarray = field(repr=False)  # (n_tiles, n_tiles) bool, upper triangle
    records: np.ndarray = field(default=None, repr=False)  # (n_tiles, n_tiles, n_slots, 2)
    _group: object = field(default=None, repr=False)
    _arrays: dict = field(default_factory=dict, repr=False)

    # ---- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls, path_or_url, storage_options: dict | None = None, kind: str | None = None
    ) -> GramStore:
        """Open an existing store read-only.

        Parameters
        ----------
        path_or_url : str or path
        storage_options : dict, optional
            fsspec options of a URL.
        kind : str, optional
            The kernel kind to open: needed for a store of several kinds
            (``assemble(kind=("nngp", "ntk"))``); for a store of one kind it must be that
            kind (or None).

        Raises
        ------
        FileNotFoundError
            Nothing at that location.
        ValueError
            The location is not a (readable) jacntk Gram store; ``kind`` missing for a store
            of several kinds, or not one it holds.
        """
        location = StoreLocation.of(path_or_url, storage_options)
        meta = open_attributes(location)
        if meta["format"] == SET_FORMAT:
            kinds = meta["kinds"]
            if kind is None:
                raise ValueError(
                    f"{location.url} holds the kinds {', '.join(kinds)} (one store each); "
                    "choose one: kind= (on the command line --kind)"
                )
            if kind not in kinds:
                raise ValueError(f"{location.url} holds the kinds {', '.join(kinds)}, not {kind!r}")
            location = location.child(kind)
            meta = open_attributes(location, sets=False)
        elif kind is not None and kind != meta["kind"]:
            raise ValueError(f"{location.url} holds the {meta['kind']} Gram, not {kind!r}")
        store = cls(location, meta, np.zeros((0, 0), bool))
        store.refresh()
        return store

    #: Check every chunk read against its record (switched off only by the benchmark that
    #: measures what the check costs).
    _verify_reads = True

    def refresh(self) -> GramStore:
        """Re-read the manifest (tiles written or repaired since opening)."""
        self.records = read_manifest(self._array("manifest"), self.n_tiles)
        self.done = done_tiles(self.records)
        return self

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_group"], state["_arrays"] = None, {}
        state.pop("points", None)  # cached inputs: re-read where needed, never shipped
        return state

    def _array(self, name: str):
        """A Zarr array of the store (metadata read once per array)."""
        if name not in self._arrays:
            if self._group is None:
                self._group = self.location.open_group("r")
            self._arrays[name] = self._group[name]
        return self._arrays[name]

    # ---- description -----------------------------------------------------------------------

    n = property(lambda self: int(self.meta["n"]), doc="number of points")
    d = property(lambda self: int(self.meta["d"]), doc="input dimension")
    tile = property(lambda self: int(self.meta["tile"]), doc="tile edge (chunk size)")
    n_tiles = property(lambda self: int(self.meta["n_tiles"]), doc="tiles per side")
    kind = property(lambda self: self.meta["kind"], doc='"nngp", "ntk" or "ntk_truncated"')
    jacobian = property(lambda self: bool(self.meta["jacobian"]), doc="fields stored")
    dtype = property(lambda self: self.meta["dtype"], doc="storage dtype")

    @property
    def arch(self) -> MLP:
        return MLP.from_dict(self.meta["arch"])

    @functools.cached_property
    def points(self) -> np.ndarray:
        """The inputs X, (n, d) float64, checked against the store's fingerprint
        (:class:`ChecksumError` if they do not match)."""
        X = np.ascontiguousarray(self._array("X")[...], dtype=np.float64)
        if self._verify_reads and fingerprint(X) != self.meta["fingerprint"]:
            raise ChecksumError(
                f"{self.location.url}: the stored inputs X do not match the store's fingerprint "
                "(a damaged or replaced chunk of X). Re-run the assembly with the original "
                "inputs: it rewrites X"
            )
        return X

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the operator :meth:`matvec` applies: (n, n), or (n(d+1), n(d+1)) for a
        Jacobian store (the augmented Gram, point-major)."""
        m = self.n * (self.d + 1) if self.jacobian else self.n
        return (m, m)

    @property
    def complete(self) -> bool:
        return bool(self.done[np.triu_indices(self.n_tiles)].all())

    def missing_tiles(self) -> list[tuple[int, int]]:
        """Upper tiles ``(I, J)`` not yet recorded in the manifest."""
        return [(i, j) for i, j in upper_tiles(self.n_tiles) if not self.done[i, j]]

    def tile_slice(self, i: int) -> slice:
        """Point indices of tile ``i``."""
        if not 0 <= i < self.n_tiles:
            raise ValueError(f"tile index {i} out of range (0..{self.n_tiles - 1})")
        return slice(i * self.tile, min(self.n, (i + 1) * self.tile))

    def info(self) -> dict:
        """The store's attributes plus its completion state and location."""
        out = dict(self.meta)
        out.update(
            url=self.location.url,
            tiles_total=self.n_tiles * (self.n_tiles + 1) // 2,
            tiles_done=int(self.done[np.triu_indices(self.n_tiles)].sum()),
            complete=self.complete,
            fields=list(FIELD_NAMES) if self.jacobian else ["K"],
            stored_arrays=list(STORED_FIELDS) if self.jacobian else ["K"],
        )
        return out

    # ---- tiles -----------------------------------------------------------------------------

    def _require(self, pairs) -> None:
        missing = sorted(
            {(min(i, j), max(i, j)) for i, j in pairs if not self.done[min(i, j), max(i, j)]}
        )
        if missing:
            shown = ", ".join(f"({i}, {j})" for i, j in missing[:_MISSING_SHOWN])
            more = (
                f" and {len(missing) - _MISSING_SHOWN} more"
                if len(missing) > _MISSING_SHOWN
                else ""
            )
            raise ValueError(
                f"{self.location.url} is incomplete: the query needs tiles {shown}{more} that "
                f"are not assembled yet ({int(self.done.sum())} of "
                f"{self.n_tiles * (self.n_tiles + 1) // 2} done); re-run the assembly to finish"
            )

    def _owner(self, name: str, ci: int, cj: int) -> tuple[int, int, int]:
        """``(I, J, slot)``: the tile whose manifest records chunk ``(ci, cj)`` of ``name``."""
        if not self.jacobian:
            return min(ci, cj), max(ci, cj), 0
        if ci <= cj:
            return ci, cj, STORED_FIELDS.index(name)
        return cj, ci, len(STORED_FIELDS) + FULL_FIELDS.index(name)

    def _chunk_problems(self, chunks, values) -> list[str]:
        """The chunks among ``chunks`` (``(array, ci, cj)``) whose ``values`` do not match
        their manifest records (a record that fails is re-read once: a repair may have
        rewritten it since this store was opened)."""
        uuid = self.meta["uuid"]
        problems = []
        for (name, ci, cj), x in zip(chunks, values, strict=True):
            i, j, slot = self._owner(name, ci, cj)
            if not self._matches(i, j, slot, chunk_record(uuid, name, ci, cj, x)):
                problems.append(f"chunk {name}[{ci}, {cj}] {self._what(x, 'checksum')}")
        return problems

    def _matches(self, i: int, j: int, slot: int, got: tuple) -> bool:
        """Record ``got`` equals manifest slot ``slot`` of tile ``(i, j)`` (re-read once)."""
        if got == tuple(int(r) for r in self.records[i, j, slot]):
            return True
        self.records[i, j] = np.asarray(self._array("manifest")[i, j], np.uint32)
        return got == tuple(int(r) for r in self.records[i, j, slot])

    @staticmethod
    def _what(x: np.ndarray, check: str) -> str:
        missing = x.dtype.kind == "f" and bool(np.all(np.isnan(x)))
        return "is missing (reads as fill values)" if missing else f"fails its {check}"

    def _damaged(self, i: int, j: int, problems: list[str]) -> ChecksumError:
        url = self.location.url
        return ChecksumError(
            f"{url}: tile ({i}, {j}) is damaged: {'; '.join(problems)} (a damaged, "
            "swapped or deleted chunk, or one written by another store's writer). "
            f"Run `jacntk verify {url}` to list every damaged tile, then re-run the "
            "assembly with the store's settings (jacntk assemble / jacntk.assemble), "
            "which recomputes exactly the damaged tiles"
        )

    def _get_chunks(self, chunks) -> list[np.ndarray]:
        sl = self.tile_slice
        return run_concurrently(
            [self._array(name).async_array.getitem((sl(ci), sl(cj))) for name, ci, cj in chunks]
        )

    def _read_chunks(self, chunks) -> list[np.ndarray]:
        """Read chunks ``(array, ci, cj)`` together, each checked against its record.

        Raises
        ------
        ChecksumError
            A chunk is damaged, swapped, deleted or was written by another store's writer.
        """
        got = self._get_chunks(chunks)
        if self._verify_reads:
            problems = self._chunk_problems(chunks, got)
            if problems:
                raise self._damaged(*self._owner(*chunks[0])[:2], problems)
        return got

    def _digest_problems(self, i: int, j: int, digest: int, x: np.ndarray) -> list[str]:
        """``[]`` if ``digest`` is the product digest recorded for scalar tile ``(i, j)``."""
        if self._matches(i, j, 1, split(digest)):
            return []
        return [f"chunk K[{i}, {j}] {self._what(x, 'product digest')}"]

    @property
    def _has_digests(self) -> bool:
        """Scalar tiles carry product digests (manifest slot 1; not in format-2 stores)."""
        return not self.jacobian and self.records.shape[2] > 1

    def product_tiles(self):
        """Upper tiles ``(i, j, data)`` for :func:`jacntk.linalg._gram.symmetric_product`.

        A scalar store yields each tile unchecked, as a ``CheckedTile`` whose product digest
        the product computes while it multiplies (no second pass over the bytes) and checks
        before its result is used; a Jacobian store yields CRC-checked float64 fields, a
        format-2 scalar store (no digests) CRC-checked tiles.
        """
        from ..linalg._gram import CheckedTile

        for i, j in upper_tiles(self.n_tiles):
            if self.jacobian:
                yield i, j, self.upper_tile(i, j).astype(np.float64)
            elif not self._has_digests:
                yield i, j, self.upper_tile(i, j)
            elif not self._verify_reads:
                yield i, j, self._get_chunks([("K", i, j)])[0]
            else:
                [x] = self._get_chunks([("K", i, j)])
                key = chunk_key(self.meta["uuid"], "K", i, j)
                yield i, j, CheckedTile(x, key, functools.partial(self._check_digest, i, j, x))

    def _check_digest(self, i: int, j: int, x: np.ndarray, digest: int) -> None:
        problems = self._digest_problems(i, j, digest, x)
        if problems:
            raise self._damaged(i, j, problems)

    def tile_problems(self, i: int, j: int) -> list[str]:
        """Upper tile ``i <= j``: the chunks that do not match their records (``[]`` if none;
        a chunk that cannot be read at all is reported as such); a scalar tile is checked
        against both its CRC-32C and its product digest (where the store records one)."""
        chunks = tile_chunks(i, j, self.jacobian)
        try:
            got = self._get_chunks(chunks)
        except Exception as exc:  # noqa: BLE001 - any read failure is damage to report
            return [f"unreadable chunk: {exc}"]
        problems = self._chunk_problems(chunks, got)
        if self._has_digests and not problems:
            key = chunk_key(self.meta["uuid"], "K", i, j)
            problems = self._digest_problems(i, j, tile_digest(got[0], key), got[0])
        return problems

    def upper_tile(self, i: int, j: int) -> np.ndarray:
        """Upper tile ``i <= j`` in the stored dtype (float32 stays float32): ``(ti, tj)`` or
        ``(8, ti, tj)``, every chunk checked (:class:`ChecksumError` if one fails)."""
        chunks = tile_chunks(i, j, self.jacobian)
        got = self._read_chunks(chunks)
        if not self.jacobian:
            return got[0]
        parts = dict(zip(STORED_FIELDS, got[:6], strict=True))
        mirrors = got[6:] if i != j else got[2:5:2]  # K_q, K_pq at (j, i), or the diagonal's
        parts["K_r"], parts["K_pr"] = mirrors[0].T, mirrors[1].T
        return np.stack([parts[name] for name in FIELD_NAMES])

    def tile_block(self, i: int, j: int) -> np.ndarray:
        """Tile ``(i, j)`` (any order) as float64: ``(ti, tj)`` scalar or ``(8, ti, tj)`` fields.

        A lower tile ``i > j`` is the mirror of ``(j, i)``: ``T^T`` for a scalar Gram, and
        ``F[FIELD_TRANSPOSE[k]]^T`` for field ``k``.
        """
        self.tile_slice(i), self.tile_slice(j)
        self._require([(i, j)])
        if i <= j:
            return self.upper_tile(i, j).astype(np.float64)
        T = self.upper_tile(j, i).astype(np.float64)
        return T.T.copy() if not self.jacobian else np.ascontiguousarray(transpose_fields(T))

    # ---- queries ---------------------------------------------------------------------------

    def block(self, rows=None, cols=None, jacobian: bool = False) -> np.ndarray:
        """Sub-matrix for point indices ``rows`` x ``cols`` (ints, slices, lists, masks).

        Returns
        -------
        (len(rows), len(cols)) float64, or with ``jacobian=True`` (Jacobian stores only) the
        point-major augmented block ``(len(rows)*(d+1), len(cols)*(d+1))``, materialised with
        :func:`jacntk.augment` from the gathered eight fields and the inputs; the pairs that
        :func:`jacntk.kernels._routing.stable_pairs` routes (near-collinear ReLU pairs, where
        the fields cancel) are recomputed from the stored inputs by the stable ReLU route, so
        the blocks are those of ``jacntk.kernel(arch, X, kind=kind, jacobian=True)``.
        """
        if jacobian and not self.jacobian:
            raise ValueError(
                f"{self.location.url} holds the scalar {self.kind} Gram; Jacobian blocks need "
                "a store assembled with jacobian=True"
            )
        r = _indices(rows, self.n, "rows")
        c = _indices(cols, self.n, "cols")
        F = self._gather(r, c, fields=jacobian)
        if not jacobian:
            return F
        X = self.points
        return route_fields(self.arch, self.kind, F, X[r], X[c]).dense()

    def _gather(self, r: np.ndarray, c: np.ndarray, fields: bool) -> np.ndarray:
        """Entries (or all eight fields) at rows ``r`` x cols ``c``, tile by tile."""
        tr, tc = r // self.tile, c // self.tile
        ti_set, tj_set = np.unique(tr), np.unique(tc)
        self._require([(i, j) for i in ti_set for j in tj_set])
        shape = (8, r.size, c.size) if fields else (r.size, c.size)
        out = np.empty(shape)
        for i in ti_set:
            ri = np.flatnonzero(tr == i)
            for j in tj_set:
                cj = np.flatnonzero(tc == j)
                local = np.ix_(r[ri] - i * self.tile, c[cj] - j * self.tile)
                if not fields:  # one chunk read per tile
                    out[np.ix_(ri, cj)] = self.field_tile("K", int(i), int(j))[local]
                    continue
                T = self.tile_block(int(i), int(j))
                out[:, ri[:, None], cj[None, :]] = T[:, local[0], local[1]]
        return out

    def row(self, i: int, jacobian: bool = False) -> np.ndarray:
        """Row ``i``: (n,) float64, or the (d+1, n(d+1)) augmented rows of point ``i``."""
        out = self.block([i], None, jacobian=jacobian)
        return out[0] if not jacobian else out

    def diag(self, jacobian: bool = False) -> np.ndarray:
        """Diagonal: (n,) float64, or with ``jacobian=True`` the diagonal of the augmented
        matrix, (n(d+1),) point-major.

        The augmented diagonal of point ``x`` (docs/math.md §4.2, x = x') is ``K`` for the value and
        ``K_p + (K_pp + 2 K_pq + 2 K_pr + 4 K_qr) x_a^2`` for coordinate ``a``; diagonal pairs
        that :func:`jacntk.kernels._routing.stable_pairs` routes (all of them for the ReLU
        kinds) come from the stable ReLU route (:func:`routed_diagonal_blocks`).
        """
        if jacobian and not self.jacobian:
            raise ValueError(f"{self.location.url} holds a scalar Gram: no Jacobian diagonal")
        self._require([(i, i) for i in range(self.n_tiles)])
        if not jacobian:
            return np.concatenate(
                [np.diagonal(self.field_tile("K", i, i)) for i in range(self.n_tiles)]
            )
        F = np.concatenate(
            [np.diagonal(self.tile_block(i, i), axis1=1, axis2=2) for i in range(self.n_tiles)],
            axis=1,
        )  # (8, n)
        blocks = routed_diagonal_blocks(self.arch, self.kind, F, self.points)
        return np.diagonal(blocks, axis1=1, axis2=2).reshape(-1)

    def matvec(self, v, directions=None) -> np.ndarray:
        """Gram (or augmented Gram) times ``v``, streaming one stored tile at a time.

        ``v`` is ``(n,)``/``(n, k)`` for a scalar store, ``(n(d+1),)``/``(n(d+1), k)``
        point-major for a Jacobian store (products by :func:`jacntk.structured_matmul`, the
        routed pairs repaired from the inputs as in :meth:`block`), ``(n(1+p),)``/
        ``(n(1+p), k)`` with ``directions`` ((p, d) or (n, p, d), a Jacobian store only: the
        projected augmentation of docs/math.md §6.3).
        Each upper tile ``T_IJ`` is read once and used twice: ``y_I += T_IJ v_J`` and, for
        ``I < J``, ``y_J += T_IJ^T v_I``.  Accumulates in float64.
        """
        jac = self.jacobian
        block = self.d + 1 if jac else 1
        if directions is not None:
            if not jac:
                raise ValueError(
                    "directions (projected augmentation) need a Jacobian store's fields; "
                    f"{self.location.url} is a scalar store"
                )
            directions = check_directions(directions, self.n, self.d)
            block = 1 + directions.shape[1]
        v = as_vector(v, self.n * block, "v")
        if v.ndim > 2:
            raise ValueError(f"v must be 1-D or 2-D, got shape {v.shape}")
        self._require(upper_tiles(self.n_tiles))
        from ..linalg._gram import symmetric_product

        V = v.reshape(v.shape[0], -1)
        slices = [self.tile_slice(i) for i in range(self.n_tiles)]
        y = symmetric_product(
            self.product_tiles(),
            slices,
            self.points if jac else None,
            block,
            V,
            directions,
            route=(self.arch, self.kind) if jac else None,
        )
        return y.reshape(v.shape)

    def field_tile(self, name: str, i: int, j: int) -> np.ndarray:
        """One field (``"K"`` for a scalar store) of tile ``(i, j)``, any order: (ti, tj) float64.

        Reads exactly one chunk: self-transposed fields from ``(min, max)`` (transposed below
        the diagonal), ``K_q``/``K_pq`` from ``(i, j)``, ``K_r``/``K_pr`` as the transpose of
        chunk ``(j, i)`` of ``K_q``/``K_pq``.
        """
        names = FIELD_NAMES if self.jacobian else ("K",)
        if name not in names:
            raise ValueError(f"unknown field {name!r}; this store has {', '.join(names)}")
        self.tile_slice(i), self.tile_slice(j)
        self._require([(i, j)])
        mirrored = {"K_r": "K_q", "K_pr": "K_pq"}
        if name in mirrored:
            [x] = self._read_chunks([(mirrored[name], j, i)])
            return x.T.astype(np.float64)
        if name in FULL_FIELDS or i <= j:
            [x] = self._read_chunks([(name, i, j)])
            return x.astype(np.float64)
        [x] = self._read_chunks([(name, j, i)])
        return x.T.astype(np.float64)

    def to_dask(self):
        """The scalar Gram as a dask array (n, n), or a dict of the eight (n, n) field arrays.

        Each dask chunk is one stored chunk read lazily (:meth:`field_tile`).  Raises if tiles
        are missing.
        """
        import dask
        import dask.array as da

        self._require(upper_tiles(self.n_tiles))
        sizes = [self.tile_slice(i).stop - self.tile_slice(i).start for i in range(self.n_tiles)]

        def field_array(name: str):
            read = dask.delayed(GramStore.field_tile, pure=True)
            return da.block(
                [
                    [
                        da.from_delayed(read(self, name, i, j), (sizes[i], sizes[j]), np.float64)
                        for j in range(self.n_tiles)
                    ]
                    for i in range(self.n_tiles)
                ]
            )

        if not self.jacobian:
            return field_array("K")
        return {name: field_array(name) for name in FIELD_NAMES}

    # ---- integrity -------------------------------------------------------------------------

    def plan(self) -> Plan:
        """The compiled-kernel arguments every tile of this store is computed with."""
        return make_plan(self.arch, self.kind, self.jacobian)

    def verify(self, sample: int = 2, seed: int | None = 0, progress: bool | None = None) -> dict:
        """Check the store: input fingerprint, every recorded tile's checksums, and ``sample``
        tiles recomputed from the inputs.

        Parameters
        ----------
        sample : int
            Tiles (among the recorded ones that pass their checksums) recomputed and compared.
        seed : int, optional
            Seed of the sample.
        progress : bool, optional
            One progress bar on stderr: the tiles checked, then the tiles recomputed (counted
            in one total); default: when stderr is a terminal (:mod:`jacntk.progress`).

        Returns
        -------
        dict with ``ok`` (bool), ``tiles_total``, ``tiles_done``, ``missing`` (list of tiles),
        ``damaged`` (list of ``{"tile": [I, J], "problem": str}``), ``recomputed`` (tiles) and
        ``fingerprint_ok``.  ``ok`` is False when anything is damaged, or the store claims to be
        complete while tiles are missing.
        """
        from ._verify import verify_store

        return verify_store(self, sample, seed, progress)
