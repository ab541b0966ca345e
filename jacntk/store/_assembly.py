"""Distributed, resumable assembly of a Gram matrix into a Zarr store (see :mod:`jacntk.store`).

The task graph has two kinds of small tasks and never holds the matrix:

* ``points-I``: read input tile ``X_I`` from the store (the inputs are written first);
* ``tile-I-J`` for ``I <= J`` (symmetry: each pair of points is computed once): the pure
  function ``compute_tile(arch, X_I, X_J, plan=plan)`` (``X_J = None`` on the diagonal), then
  :func:`jacntk.store._writer.write_tile`, which writes the chunks this task alone owns and, last,
  its
  manifest record.

Order: validate everything, take the store's lease (one writer per store,
:mod:`jacntk.store._lease`), write metadata and inputs, check the tiles already recorded, run the
missing and damaged tiles, then mark the store complete and consolidate its metadata.  A re-run
computes only tiles without a valid manifest record; a worker lost mid-task is replaced by the
scheduler and its tile recomputed (same bytes).  A store half-created by a killed writer is
recognised and replaced (docs/architecture.md §5.7).
"""

from __future__ import annotations

import errno
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from ..arch import KINDS, MLP, check_kind
from ..kernels._compute import compute_tile
from ..kernels._fields import Plan, make_plan
from ..options import DEFAULT_TILE
from ..progress import progress_bar
from ..validation import as_points
from ._format import (
    FORMAT,
    FORMAT_VERSION,
    SET_FORMAT_VERSION,
    ChecksumError,
    check_dtype,
    check_tile,
    compare_attributes,
    done_tiles,
    fault_point,
    fingerprint,
    read_manifest,
    set_attributes,
    store_attributes,
    upper_tiles,
    utc_now,
)
from ._lease import Lease, acquire
from ._location import StoreLocation, read_store_attributes, writable_arrays
from ._reader import GramStore
from ._writer import create_group, create_store, mark_complete, write_inputs, write_tile


@dataclass(frozen=True)
class AssemblyReport:
    """What one call of :func:`assemble` did.

    ``computed`` tiles were run by this call, ``skipped`` were already recorded in the store's
    manifest and passed their checksums; ``computed + skipped == tiles_total`` when the call
    succeeds.  ``repaired`` of the computed tiles were recorded but damaged (recomputed);
    ``broke_lease`` names the dead writer whose stale lease this call broke, if any.
    ``seconds`` is the wall time of the call, ``compute_seconds`` and ``write_seconds`` the
    sums over tasks of the time spent in ``compute_tile`` and in writing (chunks, checksums,
    manifest record), ``bytes_written`` the uncompressed tile bytes.
    """

    url: str
    tiles_total: int
    computed: int
    skipped: int
    complete: bool
    seconds: float
    compute_seconds: float
    write_seconds: float
    bytes_written: int
    workers: int
    created: bool
    repaired: int = 0
    broke_lease: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Task functions (run on workers; module level so that they pickle by reference)
# --------------------------------------------------------------------------------------------


def _read_points(location: StoreLocation, store_uuid: str, rows: slice) -> np.ndarray:
    """Input tile ``X[rows]`` (float64) from the store."""
    return np.ascontiguousarray(writable_arrays(location, store_uuid)["X"][rows])


def _tile_task(
    parts: list[tuple[StoreLocation, dict]],
    plan: Plan,
    i: int,
    j: int,
    xi: np.ndarray,
    xj: np.ndarray | None,
) -> tuple[int, int, int, float, float] | OSError:
    """Compute tile ``(i, j)`` of every kind from its two input tiles (one pass over the
    layers) and write each kind into its store (``parts``: location and attributes per kind).
    Returns ``(i, j, bytes written, seconds computing, seconds writing)``, or the ``OSError``
    of a failed write (returned, not raised, so that a full disk is reported once by the
    client, not logged by every worker)."""
    t0 = time.perf_counter()
    meta = parts[0][1]
    values = compute_tile(
        MLP.from_dict(meta["arch"]),
        xi,
        xj,
        kind=tuple(m["kind"] for _, m in parts),
        jacobian=meta["jacobian"],
        plan=plan,
    )
    t1 = time.perf_counter()
    nbytes = 0
    try:
        for (location, m), v in zip(parts, values, strict=True):
            nbytes += write_tile(location, m["uuid"], i, j, v, m)
    except OSError as exc:
        return OSError(exc.errno, exc.strerror or str(exc))
    return i, j, nbytes, t1 - t0, time.perf_counter() - t1


# --------------------------------------------------------------------------------------------
# Client side
# --------------------------------------------------------------------------------------------


def _io_error(exc: OSError, location: StoreLocation, what: str) -> Exception:
    """A clear error for a failed write: read-only location, full disk, or other."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionError(f"cannot {what} at {location.url}: {reason} (read-only location?)")
    if exc.errno == errno.ENOSPC:
        return OSError(
            errno.ENOSPC,
            f"no space left on the device holding {location.url} while trying to {what}; "
            "tiles already recorded in its manifest are intact: free space and re-run to resume",
        )
    return OSError(exc.errno, f"cannot {what} at {location.url}: {reason}")


def _check_writable(location: StoreLocation) -> None:
    """Fail fast, before starting any cluster, when the store cannot be written: the client
    (the attributes' only writer) stamps the time of this run and clears ``complete`` until
    every tile is recorded again."""
    try:
        group = location.open_group("r+")
        meta = dict(group.attrs["jacntk"])
        meta["last_run"] = utc_now()
        meta["complete"] = False
        group.attrs["jacntk"] = meta
    except OSError as exc:
        raise _io_error(exc, location, "write the store") from exc


def _existing_meta(location: StoreLocation) -> dict | None:
    """Attributes of a jacntk store at ``location``; None if nothing (or an empty folder) is
    there.  Raises :class:`_NotUsable` for a Zarr store that is not a usable jacntk store, and
    ``ValueError`` for something else (kept intact)."""
    if not location.exists() or not location.has_entries():
        return None
    fs, root = location.filesystem()
    if not fs.exists(root.rstrip("/") + "/zarr.json"):
        raise ValueError(
            f"{location.url} exists and is not a Zarr store; refusing to write into or replace "
            "it (choose another --out, or remove it yourself)"
        )
    try:
        return read_store_attributes(location.open_group("r"), location.url, sets=True)
    except (ValueError, TypeError, KeyError, FileNotFoundError) as exc:
        raise _NotUsable(str(exc)) from None


class _NotUsable(ValueError):
    """A Zarr store is there but it is not a usable jacntk store (replaceable with overwrite)."""


def prepare_store(
    location: StoreLocation,
    arch: MLP,
    X: np.ndarray,
    *,
    kind: str | tuple[str, ...],
    jacobian: bool,
    tile: int | None,
    dtype: str,
    overwrite: bool,
    lease: Lease,
    source: str | None = None,
) -> tuple[dict, bool]:
    """Open a compatible store for resuming, or create one.  Returns ``(attributes, created)``.

    ``kind`` a tuple of several kinds: the group of a store of several kinds (``SET_FORMAT``,
    without its per-kind stores, which :func:`prepare_parts` prepares).  A store of an older
    readable format is used as is, or re-created with ``overwrite``.  Replaced without
    ``overwrite``: a store half-created by a writer that was killed (its attributes lack
    ``inputs_written``, or the stale lease this writer broke says it was ``creating``).  Raises
    ``ValueError`` for a store made for other inputs / settings (unless ``overwrite``), and for
    a location holding something that is not a Zarr store (always).  The caller holds
    ``lease``.
    """
    several = not isinstance(kind, str)
    half_made = lease.broke is not None and lease.broke.get("phase") == "creating"
    existing, problem = None, None
    if not half_made:
        try:
            existing = _existing_meta(location)
        except _NotUsable as exc:
            problem = str(exc)
        if existing is not None and existing["format"] == FORMAT:
            if not existing.get("inputs_written"):
                existing, half_made = None, True  # killed while creating: nothing recorded yet
    if tile is None:
        tile = existing["tile"] if existing else DEFAULT_TILE
    tile = min(check_tile(tile), X.shape[0])
    settings = dict(jacobian=jacobian, tile=tile, dtype=dtype)
    if several:
        wanted = set_attributes(arch, X, kinds=kind, **settings)
    else:
        wanted = store_attributes(arch, X, kind=kind, **settings)
    if source is not None:
        wanted["source"] = str(source)  # where the inputs came from (not compared on resume)
    if existing is not None:
        differences = compare_attributes(existing, wanted)
        current = SET_FORMAT_VERSION if several else FORMAT_VERSION
        older = existing["format_version"] != current  # read as is; overwrite renews
        if not differences and not (older and overwrite):
            return existing, False
        problem = f"{location.url} holds a Gram store made for other settings: " + "; ".join(
            differences
        )
    if problem is not None and not overwrite and not half_made:
        raise ValueError(f"{problem}. Use overwrite=True (--overwrite) to replace it")
    try:
        lease.set_phase("creating")
        if several:
            create_group(location, wanted)
        else:
            create_store(location, wanted, X)
        lease.set_phase("assembling")
    except OSError as exc:
        raise _io_error(exc, location, "create the store") from exc
    return wanted, True


def prepare_parts(
    location: StoreLocation, arch: MLP, X: np.ndarray, *, kinds: tuple[str, ...], **options
) -> tuple[list[tuple[StoreLocation, dict]], bool]:
    """``prepare_store`` for every kind: ``([(location, attributes) per kind], created)``.

    One kind: the store at ``location``.  Several: the group at ``location``, then one store
    per kind in its sub-group ``<location>/<kind>``, all with the group's tile."""
    if len(kinds) == 1:
        meta, created = prepare_store(location, arch, X, kind=kinds[0], **options)
        return [(location, meta)], created
    root, created = prepare_store(location, arch, X, kind=kinds, **options)
    options["tile"] = root["tile"]
    parts = []
    for kind in kinds:
        child = location.child(kind)
        meta, _ = prepare_store(child, arch, X, kind=kind, **options)
        parts.append((child, meta))
    return parts, created


def store_kinds(arch: MLP, kind, jacobian: bool) -> tuple[str, ...]:
    """The kinds a store is asked for (a kind, or a sequence of them), checked, in ``KINDS``
    order (so that the same kinds asked in another order find the same store)."""
    from ..kernels._compute import kind_tuple

    kinds, _ = kind_tuple(kind)
    for k in kinds:
        check_kind(arch, k, jacobian)
    return tuple(sorted(kinds, key=KINDS.index))


def _request(arch: MLP, X: np.ndarray, kinds, jacobian, tile, dtype) -> str:
    """What a writer asks for, as the key two writers compare (same key: same store)."""
    kind = kinds[0] if len(kinds) == 1 else list(kinds)
    return json.dumps(
        [fingerprint(X), arch.to_dict(), kind, bool(jacobian), tile, dtype], sort_keys=True
    )


def _damaged_tiles(gram: GramStore, tiles: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The recorded tiles whose chunks fail their checksums (read and checked in parallel)."""
    if not tiles:
        return []
    with ThreadPoolExecutor(min(8, len(tiles))) as pool:
        problems = list(pool.map(lambda t: gram.tile_problems(*t), tiles))
    return [t for t, p in zip(tiles, problems, strict=True) if p]


def assemble(
    arch: MLP,
    X,
    store,
    *,
    kind: str | tuple[str, ...] = "ntk",
    jacobian: bool = False,
    tile: int | None = None,
    dtype: str = "float64",
    client=None,
    cluster=None,
    overwrite: bool = False,
    progress: bool | None = None,
    storage_options: dict | None = None,
    source: str | None = None,
) -> AssemblyReport:
    """Assemble the Gram matrix of ``X`` (or the Jacobian kernel's fields) into a Zarr store.

    Parameters
    ----------
    arch : MLP
    X : (n, d) array_like
        Finite inputs.
    store : str or path
        Local path or fsspec URL of the store (created, resumed, or refused: see below).
    kind : {"ntk", "nngp", "ntk_truncated"} or a sequence of them
        Several kinds (e.g. ``("nngp", "ntk")``) are computed together, one pass over the
        layers per tile (docs/math.md §14), into one store of several kinds: a group holding
        one complete store per kind in its sub-group ``<store>/<kind>``
        (``GramStore.open(store, kind=...)`` opens one; docs/architecture.md §5.2).
    jacobian : bool
        Store the eight coefficient fields (as six arrays, docs/math.md §4.2) instead of the
        scalar Gram; Jacobian blocks are then materialised on query.
    tile : int, optional
        Tile edge = chunk edge; default: the existing store's, else ``DEFAULT_TILE``.
    dtype : {"float64", "float32"}
        Storage precision (computation is float64).
    client : distributed.Client, optional
        Run on this client; else ``cluster`` (a :class:`jacntk.distributed.ClusterOptions`) says
        where, and with neither an embedded ``LocalCluster`` is started and closed.
    overwrite : bool
        Replace a store made for other inputs or settings (default: refuse).
    progress : bool, optional
        Progress bar on stderr; default: when stderr is a terminal.
    storage_options : dict, optional
        fsspec options for a URL store (e.g. ``endpoint_url``, ``key``, ``secret`` for S3).
    source : str, optional
        Where ``X`` came from (e.g. the CLI's data spec ``fashion-mnist:3000:standardise``),
        recorded in a new store's attributes as ``source``.

    Returns
    -------
    AssemblyReport
        ``computed`` and ``skipped`` tile counts, timing, bytes written.

    Raises
    ------
    ValueError
        Bad inputs (NaN, shapes), kind, dtype or tile; an incompatible existing store.
    PermissionError
        A read-only location.
    OSError
        ENOSPC (disk full) and other write failures; recorded tiles stay intact.
    """
    t0 = time.perf_counter()
    if not isinstance(arch, MLP):
        raise ValueError(f"arch must be a jacntk.MLP, got {arch!r}")
    kinds = store_kinds(arch, kind, jacobian)
    X = as_points(X, "X")
    dtype = check_dtype(dtype)
    if tile is not None:
        check_tile(tile)
    if client is None:  # an embedded cluster may start: a script needs its __main__ guard
        from ..distributed import check_main_guard

        check_main_guard()
    location = StoreLocation.of(store, storage_options)
    plan = make_plan(arch, kinds[0], jacobian)
    try:
        lease = acquire(location, _request(arch, X, kinds, jacobian, tile, dtype))
    except OSError as exc:
        raise _io_error(exc, location, "take the store's lease") from exc
    with lease:
        parts, created = prepare_parts(
            location,
            arch,
            X,
            kinds=kinds,
            jacobian=jacobian,
            tile=tile,
            dtype=dtype,
            overwrite=overwrite,
            lease=lease,
            source=source,
        )
        grams = [GramStore.open(part) for part, _ in parts]
        todo, damaged = set(), set()
        for gram in grams:
            try:
                gram.points  # noqa: B018 - the stored inputs, checked against the fingerprint
            except ChecksumError:  # damaged: these inputs have the store's fingerprint
                write_inputs(gram.location.open_group("r+"), X)
            recorded = [t for t in upper_tiles(gram.n_tiles) if gram.done[t]]
            damaged.update(_damaged_tiles(gram, recorded))
            todo.update(gram.missing_tiles())
        todo = sorted(todo | damaged)
        total = len(upper_tiles(grams[0].n_tiles))
        nbytes, workers, compute_seconds, write_seconds = 0, 0, 0.0, 0.0
        for gram in grams:
            if todo and gram.meta["format_version"] != FORMAT_VERSION:
                raise ValueError(
                    f"{gram.location.url} is a format-{gram.meta['format_version']} store (an "
                    f"older jacntk) with {len(todo)} of {total} tiles to write; this jacntk "
                    f"writes only format {FORMAT_VERSION}. Use overwrite=True (--overwrite) "
                    "to re-assemble it"
                )
        if todo:
            for part in [location] + [p for p, _ in parts if p != location]:
                _check_writable(part)
            nbytes, workers, compute_seconds, write_seconds = _run_tiles(
                parts, plan, todo, client, cluster, progress, lease
            )
        complete = all(
            done_tiles(read_manifest(g._array("manifest"), g.n_tiles))[
                np.triu_indices(g.n_tiles)
            ].all()
            for g in grams
        )
        if complete:  # (again: a run killed while marking left it unconsolidated)
            fault_point("recorded")
            lease.check()
            try:
                for part in [p for p, _ in parts if p != location] + [location]:
                    mark_complete(part)  # the group of several kinds last
            except OSError as exc:
                raise _io_error(exc, location, "mark the store complete") from exc
    broke = lease.broke
    return AssemblyReport(
        url=location.url,
        tiles_total=total,
        computed=len(todo),
        skipped=total - len(todo),
        complete=complete,
        seconds=time.perf_counter() - t0,
        compute_seconds=compute_seconds,
        write_seconds=write_seconds,
        bytes_written=nbytes,
        workers=workers,
        created=created,
        repaired=len(damaged),
        broke_lease=None if broke is None else broke.get("writer"),
    )


def _run_tiles(parts, plan, todo, client, cluster, progress, lease: Lease):
    """Submit one task per missing tile (writing every kind of ``parts``) and wait; returns
    (bytes written, workers, seconds spent computing tiles, seconds spent writing them)."""
    from distributed import as_completed

    from ..distributed import get_client

    location, meta = parts[0]
    tile, n = meta["tile"], meta["n"]
    token = uuid.uuid4().hex[:10]
    with (
        get_client(cluster, client) as c,
        progress_bar(len(todo), "assemble", progress, "tile") as bar,
    ):
        workers = len(c.scheduler_info().get("workers", {}))
        needed = sorted({i for i, _ in todo} | {j for _, j in todo})
        points = {
            i: c.submit(
                _read_points,
                location,
                meta["uuid"],
                slice(i * tile, min(n, (i + 1) * tile)),
                key=f"jacntk-points-{token}-{i}",
            )
            for i in needed
        }
        futures = [
            c.submit(
                _tile_task,
                parts,
                plan,
                i,
                j,
                points[i],
                None if i == j else points[j],
                key=f"jacntk-tile-{token}-{i}-{j}",
            )
            for i, j in todo
        ]
        del points
        nbytes, compute_seconds, write_seconds = 0, 0.0, 0.0
        try:
            for future in as_completed(futures):
                result = future.result()
                if isinstance(result, OSError):
                    raise result
                if lease.lost is not None:
                    lease.check()  # raises LeaseLostError
                nbytes += result[2]
                compute_seconds += result[3]
                write_seconds += result[4]
                bar.update(1)
        except OSError as exc:
            c.cancel(futures)
            raise _io_error(exc, location, "write tiles") from exc
        except BaseException:
            c.cancel(futures)
            raise
    return nbytes, workers, compute_seconds, write_seconds
