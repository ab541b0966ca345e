"""A stored Gram held in the Dask workers' memory for the operator's lifetime.

Each upper tile of a complete :class:`jacntk.store.GramStore` is read (and checked) once, by
one worker, and stays there; a product sends ``V`` to the workers once, each worker multiplies
its tiles (each used as itself and as its transpose, :func:`symmetric_product`), and the partial
results are summed on the workers, so the client receives one ``(N block, k)`` array.  A
product interrupted by a lost worker is run again (at most ``_ATTEMPTS`` times).

Mechanism: one *future* per worker, the result of a pure loading task
(``_load_part(store, values_only, tiles)``) submitted with ``workers=[w],
allow_other_workers=True``.  A future, unlike an actor, is recomputable: when a worker dies
the scheduler reruns the loading task of its part on a surviving worker (reading those tiles
from the store again) and the product tasks that needed it; the result is the same numbers.
With no worker left the product fails with a clear error.  Tiles are balanced across
workers by bytes (longest first).

``RecomputedTiles`` is the matrix-free variant (``StructuredGram(..., client=)``) for Grams
larger than the cluster's memory: the operator (points, plan) is sent to every worker once,
each worker's part is only its list of upper tiles, and every product recomputes their fields
there; placement, products and their reruns are the same code.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass

import numpy as np

from ..kernels._blocks import check_directions, per_point_directions
from ..kernels._routing import route_fields
from ._gram import symmetric_product

#: Products run again at most this often when workers die under them.
_ATTEMPTS = 3


@dataclass
class _Part:
    """The tiles one worker holds: ``[(i, j, data)]`` (scalar tiles in the stored dtype,
    fields as ``RoutedFields``), with what their products need."""

    tiles: list
    slices: list
    points: np.ndarray | None
    block: int
    diagonal: dict  # {i: stored diagonal of tile (i, i)}: (n_i,) values or (8, n_i) fields

    def product(self, V: np.ndarray, directions=None) -> np.ndarray:
        """``G V``; with ``directions`` (``(p, d)`` or ``(N, p, d)``, checked by the client)
        the projected blocks."""
        if directions is None:
            return symmetric_product(self.tiles, self.slices, self.points, self.block, V)
        U = per_point_directions(directions, len(self.points))
        return symmetric_product(self.tiles, self.slices, self.points, 1 + U.shape[1], V, U)


_POLL_S = 2.0  # seconds between checks that the workers holding the parts are alive


class _HolderLost(RuntimeError):
    """A worker holding a part was lost during a product (the product runs again)."""


def _load_part(store, values_only: bool, tiles: list[tuple[int, int]]) -> _Part:
    """Read (every chunk checked) the upper tiles ``tiles`` of ``store`` into memory."""
    points = np.asarray(store.points) if store.jacobian and not values_only else None
    held, diagonal = [], {}
    for i, j in tiles:
        if not store.jacobian:
            data = store.upper_tile(i, j)
        else:
            data = np.asarray(store.tile_block(i, j), dtype=np.float64)
            if values_only:
                data = data[0]
        if i == j:  # the stored diagonal, before routing (which zeroes the routed pairs)
            idx = np.arange(data.shape[-1])
            diagonal[i] = np.asarray(data[..., idx, idx], dtype=np.float64)
        if store.jacobian and not values_only:
            si, sj = store.tile_slice(i), store.tile_slice(j)
            data = route_fields(store.arch, store.kind, data, points[si], points[sj])
        held.append((i, j, data))
    slices = [store.tile_slice(i) for i in range(store.n_tiles)]
    block = 1 if values_only or not store.jacobian else store.d + 1
    return _Part(held, slices, points, block, diagonal)


@dataclass
class _ComputedPart:
    """The upper tiles one worker recomputes in every product (``RecomputedTiles``)."""

    gram: object  # a StructuredGram without client or cache
    tiles: list

    def product(self, V: np.ndarray, directions=None) -> np.ndarray:
        g = self.gram
        upper = ((i, j, g.tile_data(i, j)) for i, j in self.tiles)
        return symmetric_product(upper, g.tiles, g.points, g.block, V, g.directions)


def _computed_part(gram, tiles: list) -> _ComputedPart:
    return _ComputedPart(gram, tiles)


def _part_product(part, V: np.ndarray, directions=None) -> np.ndarray:
    return part.product(V, directions)


def _part_diagonal(part: _Part) -> dict:
    return part.diagonal


def _total(*partials: np.ndarray) -> np.ndarray:
    out = partials[0].copy()
    for p in partials[1:]:
        out += p
    return out


def balance(weights: list[int], n_bins: int) -> list[list[int]]:
    """Indices of ``weights`` in ``n_bins`` bins of nearly equal sums (longest first, each to
    the lightest bin: within 4/3 of the best split)."""
    bins: list[list[int]] = [[] for _ in range(n_bins)]
    loads = [0] * n_bins
    for k in sorted(range(len(weights)), key=lambda k: -weights[k]):
        b = loads.index(min(loads))
        bins[b].append(k)
        loads[b] += weights[k]
    return bins


def _place(client, tiles: list, weights: list, task, *args) -> tuple[list, dict]:
    """One future per worker, ``task(*args, its tiles)``, pinned to that worker (others allowed
    if it dies), the tiles balanced by ``weights``; waits, raising a part's error here.
    Returns ``(futures, {worker: its tiles})``."""
    from distributed import wait

    workers = sorted(client.scheduler_info().get("workers", {}))
    if not workers:
        raise ValueError("the Dask cluster has no workers to hold the Gram")
    token = uuid.uuid4().hex[:10]
    parts, assignment = [], {}
    for w, picks in zip(workers, balance(weights, len(workers)), strict=True):
        if not picks:
            continue
        mine = sorted(tiles[k] for k in picks)
        assignment[w] = mine
        parts.append(
            client.submit(
                task,
                *args,
                mine,
                key=f"jacntk-resident-{token}-{len(parts)}",
                workers=[w],
                allow_other_workers=True,
            )
        )
    wait(parts)
    for f in parts:
        if f.status == "error":
            f.result()  # raises the loading error (e.g. a ChecksumError) here
    return parts, assignment


def distributed_product(client, parts: list, V: np.ndarray, directions=None) -> np.ndarray:
    """``G V`` summed over the parts (``(N block, k)`` float64): ``V`` sent once, each part's
    product run where the part is held, the partial results reduced on the workers; run again
    (at most ``_ATTEMPTS`` times) when a worker dies under it."""
    last = None
    for _ in range(_ATTEMPTS):
        try:
            # V goes to one worker and from there to the others that need it; if a worker
            # dies mid-product the lost parts are rebuilt by the scheduler and the product is
            # simply run again
            fut = client.scatter(V, hash=False)
            # each part's product runs where the part is held (a strict restriction: Dask's
            # work stealing would otherwise move a part, hundreds of MiB, to an idle worker,
            # measured here); a holder lost mid-product ends the wait below
            holders = client.who_has(parts)
            partials = [
                client.submit(
                    _part_product,
                    p,
                    fut,
                    directions,
                    pure=False,
                    workers=list(holders.get(p.key, ())) or None,
                )
                for p in parts
            ]
            total = client.submit(_total, *partials, pure=False)
            return _result(client, total, holders)
        except (ValueError, TypeError):
            raise  # a bad input or a damaged tile: not a lost worker
        except Exception as exc:  # noqa: BLE001 - a lost worker or lost data: run again
            last = exc
            if not client.scheduler_info().get("workers"):
                raise RuntimeError(
                    "no Dask worker remains to hold the Gram: the product cannot run "
                    "(start workers again; their parts are rebuilt, stored tiles reloaded)"
                ) from exc
    raise RuntimeError(
        f"the distributed product failed {_ATTEMPTS} times (workers lost?): {last}"
    ) from last


def _result(client, total, holders: dict):
    """``total.result()``, checking every ``_POLL_S`` seconds that every part's holder is still
    alive (a product pinned to a lost worker would wait for it forever): raises
    ``_HolderLost`` so that :func:`distributed_product` runs again on the rebuilt parts."""
    from distributed import wait

    while True:
        try:
            wait([total], timeout=_POLL_S)
            return total.result()
        except TimeoutError:
            alive = set(client.scheduler_info().get("workers", {}))
            if any(h and not set(h) & alive for h in holders.values()):
                raise _HolderLost("a worker holding part of the Gram was lost") from None


def _upper_weights(sizes: list[int], per_entry: int) -> tuple[list, list]:
    """Upper tiles ``(i, j)`` of tiles with ``sizes`` points, and their weights (entries x
    ``per_entry``)."""
    n_t = len(sizes)
    tiles = [(i, j) for i in range(n_t) for j in range(i, n_t)]
    return tiles, [sizes[i] * sizes[j] * per_entry for i, j in tiles]


class RecomputedTiles:
    """A matrix-free Gram (:class:`jacntk.linalg.StructuredGram`) multiplied on a Dask
    cluster: the engine of ``StructuredGram(..., client=)``.

    The operator (points, quadrature plan, directions; no client, no cache) goes to every
    worker once; each worker recomputes the fields of its upper tiles (balanced by pairs) in
    every product, so the cluster holds ``O(N d)`` per worker whatever ``N``.  Products move
    ``V`` and one ``(N block, k)`` result, as for :class:`ResidentTiles`.
    """

    def __init__(self, gram, client):
        shipped = copy.copy(gram)
        shipped.client = shipped.remote = shipped.cache = None
        self.client, self.block = client, gram.block
        sizes = [t.stop - t.start for t in gram.tiles]
        tiles, weights = _upper_weights(sizes, 1)
        # kept referenced: scattered data cannot be recomputed, and a part rebuilt after a
        # worker died needs it (every worker holds a copy)
        self._gram = client.scatter(shipped, broadcast=True, hash=False)
        self.parts, self.assignment = _place(client, tiles, weights, _computed_part, self._gram)

    def product(self, V: np.ndarray) -> np.ndarray:
        """``G V`` for ``V`` of shape ``(N block, k)`` (float64)."""
        return distributed_product(self.client, self.parts, V)


class ResidentTiles:
    """The upper tiles of a complete Gram store held in the memory of a Dask cluster's workers:
    the engine of :class:`jacntk.linalg.StoredGram` with a client.

    Parameters
    ----------
    store : GramStore
        Complete (every tile recorded).
    client : distributed.Client
        The cluster whose workers hold the tiles.
    values_only : bool
        For a Jacobian store, use only the value field ``K`` (block 1).
    directions : (p, d) or (N, p, d), optional
        For a Jacobian store, products of the projected augmentation (block ``1 + p``): the
        workers hold the fields as without, the directions are sent to them once.

    Notes
    -----
    Memory: the upper tiles once across the workers (scalar tiles in the stored dtype, fields
    as float64 with their routing), balanced by bytes; on the client only vectors,
    ``O(N block k)``.  A product moves ``V`` to the workers once and one summed
    ``(N block, k)`` array back.  ``assignment`` maps each worker to the tiles it loaded.
    """

    def __init__(self, store, client, *, values_only: bool = False, directions=None):
        if not store.complete:
            raise ValueError(
                f"the Gram store {store.location.url} is incomplete: "
                f"{len(store.missing_tiles())} tiles are missing; finish the assembly first"
            )
        self.store, self.client = store, client
        self.values_only = bool(values_only) or not store.jacobian
        self.block = 1 if self.values_only else store.d + 1
        self.directions = None  # as given ((p, d) stays small), held by the workers
        if directions is not None:
            p = check_directions(directions, store.n, store.d).shape[1]
            self.block = 1 + p
            self.directions = client.scatter(np.asarray(directions, np.float64), broadcast=True)
        n_t = store.n_tiles
        sizes = [store.tile_slice(i).stop - store.tile_slice(i).start for i in range(n_t)]
        per_entry = np.dtype(store.dtype).itemsize if not store.jacobian else 8
        per_entry *= 1 if self.values_only else 8
        tiles, weights = _upper_weights(sizes, per_entry)
        fresh = type(store).open(store.location)  # no cached points travel with the handle
        self.parts, self.assignment = _place(
            client, tiles, weights, _load_part, fresh, self.values_only
        )

    def product(self, V: np.ndarray) -> np.ndarray:
        """``G V`` for ``V`` of shape ``(N block, k)`` (float64)."""
        return distributed_product(self.client, self.parts, V, self.directions)

    def diagonal(self) -> np.ndarray:
        """The stored diagonal pairs, gathered from the workers: fields (8, n), or the values
        (n,) for block 1."""
        pieces = {}
        for d in self.client.gather([self.client.submit(_part_diagonal, p) for p in self.parts]):
            pieces.update(d)
        return np.concatenate([pieces[i] for i in range(self.store.n_tiles)], axis=-1)
