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
import hashlib
import math
import uuid

import numpy as np

from ..arch import MLP
from ..kernels._fields import FIELD_NAMES

FORMAT = "jacntk-gram"
FORMAT_VERSION = 1
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
    from .._version import __version__

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
