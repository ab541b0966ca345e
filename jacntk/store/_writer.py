"""Writing a store: create the group, write the inputs, write a tile, mark complete."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..kernels._fields import FIELD_NAMES
from ._format import STORED_FIELDS, field_digests, run_concurrently, utc_now
from ._location import StoreLocation, writable_arrays


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
