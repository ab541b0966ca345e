"""Gram matrices as persistent Zarr v3 stores: layout, fingerprints, manifest, queries, verify.

A store is one Zarr v3 group, readable with plain ``zarr.open_group`` and explained by its own
attributes (``group.attrs["jacntk"]``).  For ``n`` points in ``d`` dimensions and tile size
``t`` (``n_tiles = ceil(n / t)``)::

    zarr.json      attributes "jacntk": format, format_version, jacntk version, arch (MLP.to_dict),
                   kind, jacobian, n, d, tile, n_tiles, dtype, fingerprint (sha256 of the inputs),
                   uuid, created, inputs_written, complete, layout (a sentence per array)
    X              (n, d) float64, chunks (t, d): the inputs, bit for bit
    K              (n, n) dtype, chunks (t, t): scalar Gram (or the field K of a Jacobian store)
    K_p, K_pp, K_qr   (Jacobian stores) further self-transposed fields, like K
    K_q, K_pq         (Jacobian stores) written in full (both triangles):
                      K_r = K_q^T and K_pr = K_pq^T (math.md §5.2, ``FIELD_TRANSPOSE``)
    manifest       (n_tiles, n_tiles, n_fields, 32) uint8, chunks (1, 1, n_fields, 32):
                   sha256 of every field of tile (I, J), I <= J (values in the stored dtype,
                   C order; ``FIELD_NAMES`` order for Jacobian stores); all zeros = not done

Only tiles ``I <= J`` of the symmetric Gram are computed.  The task of tile (I, J) is the only
writer of chunk (I, J) of every array, of chunk (J, I) of ``K_q`` and ``K_pq``, and of
``manifest[I, J]``, which it writes *after* its data; unwritten chunks read as NaN.  A lower tile
is read by mirroring the upper one.  Once every tile is recorded the group attributes say
``complete`` and the metadata is consolidated.

Stores may live anywhere fsspec reaches (``s3://bucket/gram.zarr`` with ``storage_options``).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import math
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .arch import MLP
from .fields import FIELD_NAMES, Plan, compute_tile, make_plan, transpose_fields
from .validation import as_vector

FORMAT = "jacntk-gram"
FORMAT_VERSION = 1
#: Tile edge used when none is given (a float64 chunk of 8 MiB).
DEFAULT_TILE = 1024
DTYPES = ("float64", "float32")
#: Fields kept by a Jacobian store; K_r and K_pr are the transposes of K_q and K_pq.
STORED_FIELDS = ("K", "K_p", "K_q", "K_pp", "K_pq", "K_qr")
#: Stored fields written in both triangles (the rest are self-transposed: upper tiles only).
FULL_FIELDS = ("K_q", "K_pq")
_MISSING_SHOWN = 10


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------


def fingerprint(X: np.ndarray) -> str:
    """``"sha256:<hex>"`` of the inputs: shape header plus the float64 C-order bytes.

    Parameters
    ----------
    X : (n, d) float64, C-contiguous (as returned by ``as_points``)
    """
    h = hashlib.sha256(f"{X.shape[0]}x{X.shape[1]}:float64:".encode())
    h.update(np.ascontiguousarray(X, dtype=np.float64).tobytes())
    return "sha256:" + h.hexdigest()


def field_digests(values: np.ndarray) -> np.ndarray:
    """sha256 of each field of one tile: ``(n_fields, 32)`` uint8.

    ``values`` is ``(ti, tj)`` (one field) or ``(8, ti, tj)`` in the stored dtype; each field is
    hashed as its C-order bytes.
    """
    fields = values[None] if values.ndim == 2 else values
    out = np.empty((fields.shape[0], 32), dtype=np.uint8)
    for k, f in enumerate(fields):
        out[k] = np.frombuffer(hashlib.sha256(np.ascontiguousarray(f).tobytes()).digest(), np.uint8)
    return out


def upper_tiles(n_tiles: int) -> list[tuple[int, int]]:
    """All tile pairs ``(I, J)`` with ``I <= J``, row by row."""
    return [(i, j) for i in range(n_tiles) for j in range(i, n_tiles)]


def check_dtype(dtype) -> str:
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return name


def check_tile(tile) -> int:
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
        raise ValueError(f"tile must be a positive integer, got {tile!r}")
    return int(tile)


def run_concurrently(coroutines: list) -> list:
    """Await Zarr's async reads/writes together on its event loop (one round trip per tile
    instead of one per chunk; matters on object stores)."""
    import asyncio

    from zarr.core.sync import sync

    async def gather():
        return await asyncio.gather(*coroutines)

    return sync(gather())


def _indices(sel, n: int, name: str) -> np.ndarray:
    """Point indices from an int, a slice, a boolean mask or a list/array of ints."""
    if sel is None:
        return np.arange(n)
    if isinstance(sel, slice):
        return np.arange(n)[sel]
    if isinstance(sel, range):
        sel = list(sel)
    arr = np.asarray(sel)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(f"boolean {name} mask must have shape ({n},), got {arr.shape}")
        return np.flatnonzero(arr)
    if arr.ndim > 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be an int, a slice or a 1-D list of ints, got {sel!r}")
    arr = np.atleast_1d(arr).astype(np.int64)
    bad = arr[(arr < -n) | (arr >= n)]
    if bad.size:
        raise ValueError(
            f"{name} index {int(bad[0])} is out of range for a Gram of n={n} points "
            f"(valid: 0..{n - 1}, or -{n}..-1 from the end)"
        )
    return np.where(arr < 0, arr + n, arr)


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# Where a store lives
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreLocation:
    """A store path or fsspec URL and the options of its file system (small, picklable)."""

    url: str
    storage_options: str = "{}"  # JSON, so that the location hashes and pickles

    @classmethod
    def of(cls, path_or_url, storage_options: dict | None = None) -> StoreLocation:
        if isinstance(path_or_url, StoreLocation):
            return path_or_url
        if not isinstance(path_or_url, (str, os.PathLike)):
            raise ValueError(f"store must be a path or URL, got {path_or_url!r}")
        url = os.fspath(path_or_url)
        if "://" not in url:
            if storage_options:
                raise ValueError("storage_options apply only to URLs such as s3://bucket/path")
            url = os.path.abspath(url)
        try:
            options = json.dumps(storage_options or {}, sort_keys=True)
        except TypeError as exc:
            raise ValueError(f"storage_options must be JSON-serialisable: {exc}") from None
        return cls(url, options)

    @property
    def options(self) -> dict:
        return json.loads(self.storage_options)

    def zarr_store(self, read_only: bool):
        from zarr.storage import FsspecStore, LocalStore

        if "://" not in self.url:
            return LocalStore(self.url, read_only=read_only)
        return FsspecStore.from_url(self.url, storage_options=self.options, read_only=read_only)

    def filesystem(self):
        """``(fsspec filesystem, root path)``."""
        from fsspec.core import url_to_fs

        fs, root = url_to_fs(self.url, **self.options)
        fs.invalidate_cache()  # listings may have changed (other writers)
        return fs, root

    def exists(self) -> bool:
        fs, root = self.filesystem()
        return fs.exists(root)

    def has_entries(self) -> bool:
        fs, root = self.filesystem()
        try:
            return bool(fs.ls(root, detail=False))
        except FileNotFoundError:
            return False
        except NotADirectoryError:
            return True

    def open_group(self, mode: str):
        """The Zarr group (``mode`` "r", "r+" or "w")."""
        import zarr

        return zarr.open_group(
            store=self.zarr_store(read_only=mode == "r"), mode=mode, zarr_format=3
        )


def read_store_attributes(group, url: str) -> dict:
    meta = group.attrs.get("jacntk")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(
            f"{url} is a Zarr group but not a jacntk Gram store (its attributes have no "
            f"'jacntk' entry with format {FORMAT!r})"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{url} has jacntk store format version {meta.get('format_version')!r}; this "
            f"jacntk reads version {FORMAT_VERSION}"
        )
    required = ("arch", "kind", "jacobian", "n", "d", "tile", "n_tiles", "dtype", "fingerprint")
    missing = [k for k in required if k not in meta]
    if missing:
        raise ValueError(f"{url}: store attributes are corrupt (missing {', '.join(missing)})")
    return meta


@functools.lru_cache(maxsize=8)
def writable_arrays(location: StoreLocation, store_uuid: str) -> dict:
    """Zarr arrays of a store opened for writing, cached per worker process."""
    group = location.open_group("r+")
    return {name: group[name] for name, _ in group.arrays()}


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


@dataclass
class GramStore:
    """A Gram matrix (scalar NNGP/NTK, or the Jacobian kernel's fields) kept in a Zarr store.

    Open with :meth:`open`; build with :func:`jacntk.assembly.assemble`.  Queries need no
    cluster; those that touch tiles not yet assembled raise ``ValueError`` naming the tiles.
    """

    location: StoreLocation
    meta: dict
    done: np.ndarray = field(repr=False)  # (n_tiles, n_tiles) bool, upper triangle
    _group: object = field(default=None, repr=False)
    _arrays: dict = field(default_factory=dict, repr=False)

    # ---- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path_or_url, storage_options: dict | None = None) -> GramStore:
        """Open an existing store read-only.

        Raises
        ------
        FileNotFoundError
            Nothing at that location.
        ValueError
            The location is not a (readable) jacntk Gram store.
        """
        location = StoreLocation.of(path_or_url, storage_options)
        if not location.exists():
            raise FileNotFoundError(f"no Gram store at {location.url}")
        try:
            group = location.open_group("r")
        except FileNotFoundError:
            raise ValueError(
                f"{location.url} exists but is not a Zarr v3 group (no readable zarr.json)"
            ) from None
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{location.url} is not a readable Zarr store: {exc}") from None
        meta = read_store_attributes(group, location.url)
        store = cls(location, meta, np.zeros((0, 0), bool), group)
        store.refresh()
        return store

    def refresh(self) -> GramStore:
        """Re-read the completion manifest (tiles written since opening)."""
        self.done = scan_manifest(self._array("manifest"), self.n_tiles)
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
        """The inputs X, (n, d) float64."""
        return np.ascontiguousarray(self._array("X")[...], dtype=np.float64)

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

    def upper_tile(self, i: int, j: int) -> np.ndarray:
        """Upper tile ``i <= j`` in the stored dtype (float32 stays float32): ``(ti, tj)`` or
        ``(8, ti, tj)``."""
        ri, rj = self.tile_slice(i), self.tile_slice(j)
        if not self.jacobian:
            return self._array("K")[ri, rj]
        reads = [(name, (ri, rj)) for name in STORED_FIELDS]
        reads += [("K_q", (rj, ri)), ("K_pq", (rj, ri))]
        got = run_concurrently([self._array(name).async_array.getitem(sel) for name, sel in reads])
        parts = dict(zip(STORED_FIELDS, got[:6], strict=True))
        parts["K_r"], parts["K_pr"] = got[6].T, got[7].T
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
        :func:`jacntk.augment` from the gathered eight fields and the inputs.
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
        from .blocks import augment

        X = self.points
        return augment(F, X[r], X[c])

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

        The augmented diagonal of point ``x`` (math.md §5.2, x = x') is ``K`` for the value and
        ``K_p + (K_pp + 2 K_pq + 2 K_pr + 4 K_qr) x_a^2`` for coordinate ``a``.
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
        K, Kp, Kq, Kr, Kpp, Kpq, Kpr, Kqr = F
        X2 = self.points**2
        out = np.empty((self.n, self.d + 1))
        out[:, 0] = K
        out[:, 1:] = Kp[:, None] + (Kpp + 2 * Kpq + 2 * Kpr + 4 * Kqr)[:, None] * X2
        return out.reshape(-1)

    def matvec(self, v) -> np.ndarray:
        """Gram (or augmented Gram) times ``v``, streaming one stored tile at a time.

        ``v`` is ``(n,)``/``(n, k)`` for a scalar store, ``(n(d+1),)``/``(n(d+1), k)``
        point-major for a Jacobian store (products by :func:`jacntk.structured_matmul`).
        Each upper tile ``T_IJ`` is read once and used twice: ``y_I += T_IJ v_J`` and, for
        ``I < J``, ``y_J += T_IJ^T v_I``.  Accumulates in float64.
        """
        v = as_vector(v, self.shape[0], "v")
        if v.ndim > 2:
            raise ValueError(f"v must be 1-D or 2-D, got shape {v.shape}")
        self._require(upper_tiles(self.n_tiles))
        from .operators import symmetric_product  # operators builds on the store's tiles

        V = v.reshape(v.shape[0], -1)
        jac = self.jacobian
        tiles = (
            (i, j, self.upper_tile(i, j).astype(np.float64) if jac else self.upper_tile(i, j))
            for i, j in upper_tiles(self.n_tiles)
        )
        slices = [self.tile_slice(i) for i in range(self.n_tiles)]
        y = symmetric_product(
            tiles, slices, self.points if jac else None, self.d + 1 if jac else 1, V
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
        ri, rj = self.tile_slice(i), self.tile_slice(j)
        self._require([(i, j)])
        mirrored = {"K_r": "K_q", "K_pr": "K_pq"}
        if name in mirrored:
            return self._array(mirrored[name])[rj, ri].T.astype(np.float64)
        if name in FULL_FIELDS or i <= j:
            return self._array(name)[ri, rj].astype(np.float64)
        return self._array(name)[rj, ri].T.astype(np.float64)

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

    def verify(self, sample: int = 2, seed: int | None = 0) -> dict:
        """Check the store: input fingerprint, every recorded tile's checksums, and ``sample``
        tiles recomputed from the inputs.

        Returns
        -------
        dict with ``ok`` (bool), ``tiles_total``, ``tiles_done``, ``missing`` (list of tiles),
        ``damaged`` (list of ``{"tile": [I, J], "problem": str}``), ``recomputed`` (tiles) and
        ``fingerprint_ok``.  ``ok`` is False when anything is damaged, or the store claims to be
        complete while tiles are missing.
        """
        if isinstance(sample, bool) or not isinstance(sample, int) or sample < 0:
            raise ValueError(f"sample must be a non-negative integer, got {sample!r}")
        report = {"url": self.location.url, "damaged": [], "recomputed": []}
        try:
            X = self.points
            report["fingerprint_ok"] = fingerprint(X) == self.meta["fingerprint"]
        except Exception as exc:  # noqa: BLE001 - any read failure is damage to report
            report["fingerprint_ok"] = False
            report["damaged"].append({"tile": None, "problem": f"inputs X unreadable: {exc}"})
        if not report["fingerprint_ok"] and not report["damaged"]:
            report["damaged"].append(
                {"tile": None, "problem": "inputs X do not match the stored fingerprint"}
            )
        digests = self._array("manifest")
        done = [(i, j) for i, j in upper_tiles(self.n_tiles) if self.done[i, j]]
        readable = []
        names = FIELD_NAMES if self.jacobian else ("K",)
        for i, j in done:
            try:
                T = self.upper_tile(i, j)
            except Exception as exc:  # noqa: BLE001
                report["damaged"].append({"tile": [i, j], "problem": f"unreadable chunk: {exc}"})
                continue
            bad = [
                names[k]
                for k, (a, b) in enumerate(zip(field_digests(T), digests[i, j], strict=True))
                if not np.array_equal(a, b)
            ]
            if bad:
                report["damaged"].append(
                    {"tile": [i, j], "problem": f"checksum mismatch in {', '.join(bad)}"}
                )
            else:
                readable.append((i, j))
        if sample and readable and report["fingerprint_ok"]:
            rng = np.random.default_rng(seed)
            picks = rng.choice(len(readable), size=min(sample, len(readable)), replace=False)
            plan = self.plan()
            rtol = 1e-10 if self.dtype == "float64" else 2e-6
            for p in sorted(picks):
                i, j = readable[p]
                xj = None if i == j else X[self.tile_slice(j)]
                want = compute_tile(
                    self.arch,
                    X[self.tile_slice(i)],
                    xj,
                    kind=self.kind,
                    jacobian=self.jacobian,
                    plan=plan,
                )
                want = want.astype(self.dtype).astype(np.float64)
                got = self.upper_tile(i, j).astype(np.float64)
                err = float(np.max(np.abs(got - want)))
                scale = max(1.0, float(np.max(np.abs(want))))
                report["recomputed"].append([i, j])
                if not err <= rtol * scale:
                    report["damaged"].append(
                        {"tile": [i, j], "problem": f"recomputed values differ by {err:.3e}"}
                    )
        report["tiles_total"] = self.n_tiles * (self.n_tiles + 1) // 2
        report["tiles_done"] = len(done)
        report["missing"] = [list(t) for t in self.missing_tiles()]
        claims = bool(self.meta.get("complete"))
        report["ok"] = not report["damaged"] and not (claims and report["missing"])
        return report


def scan_manifest(manifest, n_tiles: int) -> np.ndarray:
    """``done[I, J]``: manifest record of tile (I, J) present (non-zero) and readable."""
    try:
        digests = manifest[...]
        return digests.reshape(n_tiles, n_tiles, -1).any(axis=2)
    except Exception:  # noqa: BLE001 - a damaged record: fall back to record-by-record reads
        done = np.zeros((n_tiles, n_tiles), bool)
        for i, j in upper_tiles(n_tiles):
            try:
                done[i, j] = bool(manifest[i, j].any())
            except Exception:  # noqa: BLE001 - an unreadable record counts as missing
                done[i, j] = False
        return done


# --------------------------------------------------------------------------------------------
# Writing (the assembly's I/O edge)
# --------------------------------------------------------------------------------------------


def store_attributes(
    arch: MLP, X: np.ndarray, *, kind: str, jacobian: bool, tile: int, dtype: str
) -> dict:
    """The ``jacntk`` group attributes of a new store for these inputs and settings."""
    from . import __version__

    n, d = X.shape
    layout = {
        "X": "the inputs (n, d) float64",
        "manifest": (
            "sha256 per field of tile (I, J), I <= J, in the stored dtype and C order; "
            "all zeros = tile not assembled"
        ),
    }
    if jacobian:
        layout.update(
            {
                name: f"field {name}: only tiles I <= J written (self-transposed)"
                for name in STORED_FIELDS
                if name not in FULL_FIELDS
            }
        )
        layout["K_q"] = "field K_q, all tiles; K_r = K_q^T"
        layout["K_pq"] = "field K_pq, all tiles; K_pr = K_pq^T"
    else:
        layout["K"] = f"the {kind} Gram: only tiles I <= J written; K[j, i] = K[i, j]"
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "jacntk_version": __version__,
        "arch": arch.to_dict(),
        "kind": kind,
        "jacobian": bool(jacobian),
        "n": int(n),
        "d": int(d),
        "tile": int(tile),
        "n_tiles": math.ceil(n / tile),
        "dtype": dtype,
        "fingerprint": fingerprint(X),
        "fields": list(FIELD_NAMES) if jacobian else ["K"],
        "uuid": uuid.uuid4().hex,
        "created": utc_now(),
        "inputs_written": False,
        "complete": False,
        "layout": layout,
    }


def compare_attributes(existing: dict, wanted: dict) -> list[str]:
    """Human-readable differences that make an existing store unusable for ``wanted``."""
    out = []
    for key in ("fingerprint", "arch", "kind", "jacobian", "n", "d", "tile", "dtype"):
        if existing.get(key) != wanted.get(key):
            what = "inputs (fingerprint)" if key == "fingerprint" else key
            out.append(f"{what}: store has {existing.get(key)!r}, asked {wanted.get(key)!r}")
    return out


def create_store(location: StoreLocation, attrs: dict, X: np.ndarray):
    """Create (replacing anything there) the group, its arrays and the inputs.  Returns the
    group.  The attributes are written first, in the group's own ``zarr.json``."""
    import zarr

    group = zarr.open_group(
        store=location.zarr_store(read_only=False),
        mode="w",
        zarr_format=3,
        attributes={"jacntk": attrs},
    )
    n, d, tile, nt = attrs["n"], attrs["d"], attrs["tile"], attrs["n_tiles"]
    names = STORED_FIELDS if attrs["jacobian"] else ("K",)
    for name in names:
        group.create_array(
            name,
            shape=(n, n),
            chunks=(tile, tile),
            dtype=attrs["dtype"],
            fill_value=np.nan,
            compressors=None,  # kernel values do not compress (zstd saves ~6%, costs CPU)
            dimension_names=("i", "j"),
            attributes={"description": attrs["layout"][name]},
        )
    group.create_array(
        "manifest",
        shape=(nt, nt, len(attrs["fields"]), 32),
        chunks=(1, 1, len(attrs["fields"]), 32),
        dtype="uint8",
        fill_value=0,
        compressors=None,
        dimension_names=("I", "J", "field", "sha256"),
        attributes={"description": attrs["layout"]["manifest"], "fields": attrs["fields"]},
    )
    group.create_array(
        "X",
        shape=(n, d),
        chunks=(tile, d),
        dtype="float64",
        fill_value=np.nan,
        dimension_names=("i", "feature"),
        attributes={"description": attrs["layout"]["X"]},
    )
    write_inputs(group, X)
    return group


def write_inputs(group, X: np.ndarray) -> None:
    """Write X, then mark it written in the attributes."""
    group["X"][...] = X
    meta = dict(group.attrs["jacntk"])
    meta["inputs_written"] = True
    group.attrs["jacntk"] = meta


def write_tile(location: StoreLocation, store_uuid: str, i: int, j: int, values, meta) -> int:
    """Write tile ``(i, j)``, ``i <= j`` (float64 ``(ti, tj)`` or ``(8, ti, tj)``) into the
    chunks it owns, then its manifest record.  Returns the bytes written (uncompressed)."""
    arrays = writable_arrays(location, store_uuid)
    tile, n = meta["tile"], meta["n"]
    ri = slice(i * tile, min(n, (i + 1) * tile))
    rj = slice(j * tile, min(n, (j + 1) * tile))
    v = np.array(values, dtype=meta["dtype"])
    if v.ndim == 2:
        writes = [("K", (ri, rj), v)]
    else:
        index = FIELD_NAMES.index
        if i == j:
            # A diagonal tile stores K_q and K_pq only; K_r and K_pr are read back as their
            # transposes (equal up to rounding on the diagonal), so record exactly that.
            v[index("K_r")], v[index("K_pr")] = v[index("K_q")].T, v[index("K_pq")].T
        writes = [(name, (ri, rj), v[index(name)]) for name in STORED_FIELDS]
        if i != j:
            writes += [("K_q", (rj, ri), v[index("K_r")].T), ("K_pq", (rj, ri), v[index("K_pr")].T)]
    with ThreadPoolExecutor(1) as pool:  # hashing (releases the GIL) overlaps the writes
        digests = pool.submit(field_digests, v)
        run_concurrently([arrays[name].async_array.setitem(sel, x) for name, sel, x in writes])
        arrays["manifest"][i, j] = digests.result()  # last: the tile is done
    return int(v.nbytes)


def mark_complete(location: StoreLocation) -> None:
    """Set ``complete`` in the attributes and consolidate the metadata (one writer: the
    assembling client, after every tile is recorded).

    With every tile recorded no chunk is being written, so on a local disk any ``*.partial``
    file left is the temporary file of a write whose worker was killed (zarr's ``LocalStore``
    writes a temporary file and renames it); those orphans are removed here.
    """
    import warnings
    from pathlib import Path

    import zarr

    if "://" not in location.url:
        for orphan in Path(location.url).rglob("*.partial"):
            orphan.unlink(missing_ok=True)
    group = location.open_group("r+")
    meta = dict(group.attrs["jacntk"])
    meta["complete"] = True
    meta["completed"] = utc_now()
    group.attrs["jacntk"] = meta
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(location.zarr_store(read_only=False))


__all__ = [
    "DEFAULT_TILE",
    "FORMAT",
    "FORMAT_VERSION",
    "GramStore",
    "StoreLocation",
    "field_digests",
    "fingerprint",
]
