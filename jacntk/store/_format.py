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
                      K_r = K_q^T and K_pr = K_pq^T (docs/math.md §4.2, ``FIELD_TRANSPOSE``)
    manifest       (n_tiles, n_tiles, n_slots, 2) uint32, chunks (1, 1, n_slots, 2): for each
                   chunk that tile (I, J), I <= J, writes (``tile_chunks`` order: 1 slot for a
                   scalar store, 8 for a Jacobian one) its keyed CRC-32C and its byte count;
                   a scalar store's second slot holds the tile's 64-bit product digest
                   (``jacntk._digest``) as two words; all zeros = not done
                   (docs/architecture.md §5.7)

Only tiles ``I <= J`` of the symmetric Gram are computed.  The task of tile (I, J) is the only
writer of chunk (I, J) of every array, of chunk (J, I) of ``K_q`` and ``K_pq``, and of
``manifest[I, J]``, which it writes *after* its data; unwritten chunks read as NaN.  Every read
of a chunk is checked against its record (``chunk_record``): a flipped byte, a chunk swapped with
another, a deleted chunk or one left by another store's writer raises :class:`ChecksumError`
(a streamed product of a scalar store checks the product digest instead, inside the product).
A lower tile is read by mirroring the upper one.  Once every tile is recorded the group
attributes say ``complete`` and the metadata is consolidated.

Stores may live anywhere fsspec reaches (``s3://bucket/gram.zarr`` with ``storage_options``).
"""

from __future__ import annotations

import datetime
import hashlib
import math
import uuid

import numpy as np

from .._digest import split, tile_digest
from ..arch import MLP
from ..kernels._fields import FIELD_NAMES

FORMAT = "jacntk-gram"
#: A store of several kernel kinds (``assemble(kind=("nngp", "ntk"))``): a group whose
#: ``jacntk`` attributes have this format, holding one complete store of ``FORMAT`` per kind
#: in the sub-group named after the kind (docs/architecture.md §5.2).
SET_FORMAT = "jacntk-gram-set"
SET_FORMAT_VERSION = 1
FORMAT_VERSION = 3  # 3: + product digest of scalar tiles; 2: keyed CRC-32C per chunk; 1: sha256
#: Versions this jacntk opens.  A version-2 store (no product digests: its scalar manifest has
#: one slot) is read with every chunk CRC-checked, but never extended or repaired.
READABLE_VERSIONS = (2, 3)
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


def tile_chunks(i: int, j: int, jacobian: bool) -> list[tuple[str, int, int]]:
    """The chunks tile ``(i, j)``, ``i <= j``, owns, in manifest slot order: ``(array, I, J)``.

    A scalar store: ``K`` at ``(i, j)``.  A Jacobian store: the six ``STORED_FIELDS`` at
    ``(i, j)``, then (off the diagonal) ``K_q`` and ``K_pq`` at ``(j, i)``, which hold the
    tile's ``K_r`` and ``K_pr`` transposed.  ``n_slots`` is 2 (the chunk, then the product
    digest of a scalar tile) or 8.
    """
    if not jacobian:
        return [("K", i, j)]
    out = [(name, i, j) for name in STORED_FIELDS]
    if i != j:
        out += [(name, j, i) for name in FULL_FIELDS]
    return out


def n_slots(jacobian: bool) -> int:
    return len(STORED_FIELDS) + len(FULL_FIELDS) if jacobian else 2


def chunk_key(store_uuid: str, name: str, ci: int, cj: int) -> int:
    """The CRC-32C of ``"<store uuid>/<array>/<I>.<J>"``: what ties a record to its position."""
    import google_crc32c

    return int(google_crc32c.value(f"{store_uuid}/{name}/{ci}.{cj}".encode()))


def digest_record(store_uuid: str, ci: int, cj: int, values: np.ndarray) -> tuple:
    """Manifest record of a scalar tile's product digest (``jacntk._digest``): ``(low, high)``."""
    return split(tile_digest(values, chunk_key(store_uuid, "K", ci, cj)))


def chunk_record(store_uuid: str, name: str, ci: int, cj: int, values: np.ndarray) -> tuple:
    """Manifest record of one chunk: ``(crc, nbytes)``.

    ``crc`` is the CRC-32C (Castagnoli, hardware-accelerated by ``google_crc32c``) of the key
    ``"<store uuid>/<array>/<I>.<J>"`` followed by the chunk's values in C order, so a chunk moved
    to another position, another array or another store fails its check; ``nbytes`` is the
    values' byte count (never 0, so a written record is non-zero).

    Parameters
    ----------
    values : (ti, tj) array in the stored dtype, as written / as read back
    """
    import google_crc32c

    crc = chunk_key(store_uuid, name, ci, cj)
    data = np.ascontiguousarray(values).view()
    data.setflags(write=False)  # google_crc32c reads read-only buffers (no copy)
    crc = google_crc32c.extend(crc, data)
    return int(crc), int(values.nbytes)


class ChecksumError(ValueError):
    """A stored chunk does not match its manifest record: damaged, swapped, deleted, or
    written by another store's writer."""


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


def fault_point(stage: str) -> None:
    """Fault injection for the crash tests: SIGKILL this process when the environment variable
    ``JACNTK_KILL_AT`` names ``stage`` (the creation and completion stages of a store, listed in
    docs/architecture.md §5.7).  Costs one dictionary lookup otherwise."""
    import os

    if os.environ.get("JACNTK_KILL_AT") == stage:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# Where a store lives
# --------------------------------------------------------------------------------------------


def read_manifest(manifest, n_tiles: int) -> np.ndarray:
    """Every manifest record, ``(n_tiles, n_tiles, n_slots, 2)`` uint32 (all zeros where a
    tile is not done); a record that cannot be read counts as missing (zeros)."""
    try:
        return np.asarray(manifest[...], dtype=np.uint32)
    except Exception:  # noqa: BLE001 - a damaged record: fall back to record-by-record reads
        records = np.zeros(manifest.shape, np.uint32)
        for i, j in upper_tiles(n_tiles):
            try:
                records[i, j] = manifest[i, j]
            except Exception:  # noqa: BLE001 - an unreadable record counts as missing
                pass
        return records


def done_tiles(records: np.ndarray) -> np.ndarray:
    """``done[I, J]``: tile (I, J) has a (non-zero) manifest record."""
    return records.reshape(records.shape[0], records.shape[1], -1).any(axis=2)


# --------------------------------------------------------------------------------------------
# Writing (the assembly's I/O edge)
# --------------------------------------------------------------------------------------------


def store_attributes(
    arch: MLP, X: np.ndarray, *, kind: str, jacobian: bool, tile: int, dtype: str
) -> dict:
    """The ``jacntk`` group attributes of a new store for these inputs and settings."""
    from .._version import __version__

    n, d = X.shape
    layout = {
        "X": "the inputs (n, d) float64",
        "manifest": (
            "per chunk written by tile (I, J), I <= J: CRC-32C of '<uuid>/<array>/<I>.<J>' "
            "then the values (stored dtype, C order), and the byte count; all zeros = tile "
            "not assembled"
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


def set_attributes(
    arch: MLP, X: np.ndarray, *, kinds: tuple, jacobian: bool, tile: int, dtype: str
) -> dict:
    """The ``jacntk`` group attributes of a new store of several kinds (``SET_FORMAT``): the
    settings its per-kind stores share, and ``kinds`` in ``KINDS`` order."""
    one = store_attributes(arch, X, kind=kinds[0], jacobian=jacobian, tile=tile, dtype=dtype)
    shared = ("jacntk_version", "arch", "jacobian", "n", "d", "tile", "n_tiles", "dtype")
    out = {"format": SET_FORMAT, "format_version": SET_FORMAT_VERSION, "kinds": list(kinds)}
    out.update({key: one[key] for key in shared + ("fingerprint", "uuid", "created")})
    out["complete"] = False
    out["layout"] = {
        kind: f"the {kind} store: a complete jacntk Gram store of these inputs" for kind in kinds
    }
    return out


def compare_attributes(existing: dict, wanted: dict) -> list[str]:
    """Human-readable differences that make an existing store unusable for ``wanted``."""
    if existing.get("format") != wanted.get("format"):

        def contents(meta):
            kinds = meta.get("kinds") or [meta.get("kind")]
            return "kinds " + ", ".join(map(str, kinds))

        return [f"store holds {contents(existing)}, asked {contents(wanted)}"]
    out = []
    keys = ("fingerprint", "arch", "kind", "kinds", "jacobian", "n", "d", "tile", "dtype")
    for key in keys:
        if existing.get(key) != wanted.get(key):
            what = "inputs (fingerprint)" if key == "fingerprint" else key
            out.append(f"{what}: store has {existing.get(key)!r}, asked {wanted.get(key)!r}")
    return out
