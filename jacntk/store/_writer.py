"""Writing a store: create the group, write the inputs, write a tile, mark complete."""

from __future__ import annotations

import numpy as np

from ..kernels._fields import FIELD_NAMES
from ._format import (
    STORED_FIELDS,
    chunk_record,
    digest_record,
    fault_point,
    n_slots,
    run_concurrently,
    tile_chunks,
    utc_now,
)
from ._location import StoreLocation, writable_arrays


def clear_location(location: StoreLocation) -> None:
    """Remove everything at ``location`` (entry by entry; the caller holds the store's lease)."""
    fs, root = location.filesystem()
    try:
        entries = fs.ls(root, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        entries = [root] if fs.exists(root) else []
    for k, entry in enumerate(entries):
        fs.rm(entry, recursive=True)
        if k == 0:
            fault_point("clearing")


def create_store(location: StoreLocation, attrs: dict, X: np.ndarray):
    """Create (replacing anything there) the group, its arrays and the inputs.  Returns the
    group.  The attributes are written first, in the group's own ``zarr.json``, with
    ``inputs_written`` false until every array exists and ``X`` is written: a store without it
    is half-created and is replaced by the next assembly (docs/architecture.md
    §5.7).  The caller holds the lease."""
    group = create_group(location, attrs)
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
    fault_point("arrays")
    slots = n_slots(attrs["jacobian"])
    group.create_array(
        "manifest",
        shape=(nt, nt, slots, 2),
        chunks=(1, 1, slots, 2),
        dtype="uint32",
        fill_value=0,
        compressors=None,
        dimension_names=("I", "J", "slot", "record"),
        attributes={"description": attrs["layout"]["manifest"]},
    )
    fault_point("manifest")
    group.create_array(
        "X",
        shape=(n, d),
        chunks=(tile, d),
        dtype="float64",
        fill_value=np.nan,
        dimension_names=("i", "feature"),
        attributes={"description": attrs["layout"]["X"]},
    )
    fault_point("inputs-array")
    write_inputs(group, X)
    fault_point("created")
    return group


def create_group(location: StoreLocation, attrs: dict):
    """Create (replacing anything there) an empty group with these ``jacntk`` attributes: a
    store's (``create_store`` adds its arrays), or that of a store of several kinds (whose
    per-kind stores in its sub-groups are made by ``create_store``).  The caller holds the
    lease."""
    import zarr

    if location.has_entries():
        clear_location(location)
    group = zarr.open_group(
        store=location.zarr_store(read_only=False),
        mode="w",
        zarr_format=3,
        attributes={"jacntk": attrs},
    )
    fault_point("group")
    return group


def write_inputs(group, X: np.ndarray) -> None:
    """Write X, then mark it written in the attributes."""
    group["X"][...] = X
    fault_point("inputs-data")
    meta = dict(group.attrs["jacntk"])
    meta["inputs_written"] = True
    group.attrs["jacntk"] = meta


def write_tile(location: StoreLocation, store_uuid: str, i: int, j: int, values, meta) -> int:
    """Write tile ``(i, j)``, ``i <= j`` (float64 ``(ti, tj)`` or ``(8, ti, tj)``) into the
    chunks it owns (``tile_chunks``), then its manifest record (a keyed CRC-32C per chunk,
    ``chunk_record``, and a scalar tile's product digest, ``digest_record``).  Returns the
    bytes written (uncompressed)."""
    arrays = writable_arrays(location, store_uuid)
    tile, n = meta["tile"], meta["n"]
    v = np.array(values, dtype=meta["dtype"])
    index = FIELD_NAMES.index
    mirror = {"K_q": "K_r", "K_pq": "K_pr"}  # chunk (j, i) of K_q holds K_r of (i, j), transposed
    writes = []
    # A diagonal tile stores K_q and K_pq only; its K_r and K_pr are read back as their
    # transposes (equal up to rounding on the diagonal).
    for name, ci, cj in tile_chunks(i, j, v.ndim == 3):
        if v.ndim == 2:
            x = v
        elif (ci, cj) == (i, j):
            x = v[index(name)]
        else:
            x = np.ascontiguousarray(v[index(mirror[name])].T)
        sel = (slice(ci * tile, min(n, (ci + 1) * tile)), slice(cj * tile, min(n, (cj + 1) * tile)))
        writes.append((name, sel, x, chunk_record(store_uuid, name, ci, cj, x)))
    run_concurrently([arrays[name].async_array.setitem(sel, x) for name, sel, x, _ in writes])
    record = np.zeros((n_slots(v.ndim == 3), 2), np.uint32)
    record[: len(writes)] = [r for *_, r in writes]
    if v.ndim == 2:  # a scalar tile: its product digest in the second slot
        record[1] = digest_record(store_uuid, i, j, writes[0][2])
    arrays["manifest"][i, j] = record  # last: the tile is done
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
    if not meta.get("complete") or "completed" not in meta:
        meta["completed"] = utc_now()
    meta["complete"] = True
    group.attrs["jacntk"] = meta
    fault_point("marked")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(location.zarr_store(read_only=False))
