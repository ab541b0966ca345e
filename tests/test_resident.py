"""The worker-resident Gram operator (issue 12 item 1): tiles live in the workers' memory, the
client holds vectors; a SIGKILLed worker's tiles are reloaded elsewhere, same result.
Real scheduler and worker processes on 127.0.0.1, real stores on disk."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import jacntk
from jacntk.linalg import ScaledGram, StoredGram, cg
from jacntk.linalg._resident import balance
from jacntk.store import ChecksumError, GramStore, assemble

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as lc,
        Client(lc) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("resident")
    rng = np.random.default_rng(11)
    X = rng.standard_normal((200, 4))
    Xj = rng.standard_normal((60, 3))
    assemble(jacntk.MLP(3, "erf"), X, root / "s.zarr", tile=40, dtype="float32")
    assemble(jacntk.MLP(2, "relu"), Xj, root / "j.zarr", tile=20, kind="nngp", jacobian=True)
    return GramStore.open(root / "s.zarr"), GramStore.open(root / "j.zarr")


def test_balance_splits_by_weight():
    bins = balance([5, 4, 3, 3, 2, 1], 2)
    loads = sorted(sum([5, 4, 3, 3, 2, 1][k] for k in b) for b in bins)
    assert loads == [9, 9] and sorted(k for b in bins for k in b) == list(range(6))


@pytest.mark.parametrize("which", ["scalar", "jacobian", "values_only"])
def test_resident_product_and_diagonal_equal_the_stored_operator(cluster, stores, which, rng):
    store = stores[0] if which == "scalar" else stores[1]
    values_only = which == "values_only"
    op = StoredGram(store, client=cluster, values_only=values_only, dense=False)
    ref = StoredGram(store, values_only=values_only, dense=False)
    assert op.shape == ref.shape and "resident in the memory of 2 workers" in op.residency
    assert len(op.resident.assignment) == 2  # both workers hold tiles
    held = sorted(t for tiles in op.resident.assignment.values() for t in tiles)
    assert held == [(i, j) for i in range(store.n_tiles) for j in range(i, store.n_tiles)]
    V = rng.standard_normal((op.shape[0], 3))
    np.testing.assert_allclose(op @ V, ref @ V, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(op.diagonal_blocks(), ref.diagonal_blocks(), rtol=1e-13)


def test_resident_projected_product_equals_the_stored_operator(cluster, stores, rng):
    """Directions (the projected augmentation) with the Gram in the workers: the workers keep
    the fields, the directions are sent once, the product equals the in-process one."""
    store = stores[1]
    U = rng.standard_normal((2, store.d))
    op = StoredGram(store, client=cluster, directions=U, dense=False)
    ref = StoredGram(store, directions=U, dense=False)
    assert op.block == ref.block == 3 and op.resident is not None
    V = rng.standard_normal((op.shape[0], 2))
    np.testing.assert_allclose(op @ V, ref @ V, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(op.diagonal_blocks(), ref.diagonal_blocks(), rtol=1e-13)


def test_products_run_where_the_parts_are_held(cluster, stores, rng):
    """Every part stays on the worker that loaded it, product after product: a part's product
    is pinned to its holder, so neither the scheduler's placement nor work stealing copies a
    part (hundreds of MiB at scale) to another worker (before, the second product of a
    24,000-point store moved one worker's 595 MiB to the other)."""
    store = stores[0]
    op = StoredGram(store, client=cluster, dense=False)
    where = {f.key: {w} for f, w in zip(op.resident.parts, op.resident.assignment, strict=True)}
    V = rng.standard_normal((op.shape[0], 2))
    for _ in range(6):
        op @ V
        held = {k: set(w) for k, w in cluster.who_has(op.resident.parts).items()}
        assert held == where


def test_a_worker_sigkilled_mid_solve_gives_the_same_solution(cluster, stores, rng):
    store = stores[0]
    y = rng.standard_normal((store.n, 2))
    A = ScaledGram(StoredGram(store, client=cluster, dense=False), 1.0, jitter=0.1)
    calm = cg(A, y, tol=1e-11).x
    pids = cluster.run(os.getpid)
    killed = []

    def kill_one(iteration, _):
        if iteration == 5 and not killed:
            victim = sorted(pids)[0]
            os.kill(pids[victim], signal.SIGKILL)
            killed.append(victim)

    A = ScaledGram(StoredGram(store, client=cluster, dense=False), 1.0, jitter=0.1)
    stormy = cg(A, y, tol=1e-11, callback=kill_one).x
    assert killed
    np.testing.assert_allclose(stormy, calm, rtol=1e-10, atol=1e-12)


def test_a_damaged_tile_fails_when_loaded(cluster, stores, tmp_path):
    import shutil

    store = stores[0]
    path = tmp_path / "bad.zarr"
    shutil.copytree(store.location.url, path)
    chunk = path / "K" / "c" / "1" / "3"
    data = bytearray(chunk.read_bytes())
    data[7] ^= 4
    chunk.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"tile \(1, 3\) is damaged"):
        StoredGram(GramStore.open(path), client=cluster, dense=False)


@pytest.mark.parametrize("which", ["scalar", "jacobian", "projected"])
def test_matrix_free_products_on_the_workers_equal_the_local_ones(cluster, which, rng):
    """StructuredGram(..., client=): every worker recomputes its share of the upper tiles in
    each product (nothing held but the points); same numbers as the local matrix-free product."""
    from jacntk.linalg import StructuredGram

    X = rng.standard_normal((45, 3))
    arch = jacntk.MLP(2, "gelu", sigma_b=0.1)
    kwargs = {"jacobian": which != "scalar", "tile": 10}
    if which == "projected":
        kwargs["directions"] = rng.standard_normal((2, 3))
    remote = StructuredGram(arch, X, client=cluster, **kwargs)
    local = StructuredGram(arch, X, **kwargs)
    assert len(remote.remote.assignment) == 2  # both workers recompute tiles
    held = sorted(t for tiles in remote.remote.assignment.values() for t in tiles)
    assert held == [(i, j) for i in range(5) for j in range(i, 5)]
    V = rng.standard_normal((local.shape[0], 3))
    np.testing.assert_allclose(remote @ V, local @ V, rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError, match="with a client the workers recompute them"):
        StructuredGram(arch, X, client=cluster, cache=True, **kwargs)


def test_matrix_free_solve_survives_a_sigkilled_worker_and_predict_uses_it(cluster, rng):
    """A worker killed mid-CG: its tile list is placed again and the product rerun, same
    solution; ``predict(..., operator="structured", client=)`` equals the local run."""
    from jacntk.linalg import StructuredGram

    X = rng.standard_normal((60, 3))
    arch = jacntk.MLP(2, "erf")
    y = rng.standard_normal((60 * 4, 1))
    calm = cg(ScaledGram(StructuredGram(arch, X, tile=15), 0.5, 0.1), y, tol=1e-11).x
    pids = cluster.run(os.getpid)
    killed = []

    def kill_one(iteration, _):
        if iteration == 3 and not killed:
            victim = sorted(pids)[-1]
            os.kill(pids[victim], signal.SIGKILL)
            killed.append(victim)

    A = ScaledGram(StructuredGram(arch, X, tile=15, client=cluster), 0.5, 0.1)
    stormy = cg(A, y, tol=1e-11, callback=kill_one).x
    assert killed
    np.testing.assert_allclose(stormy, calm, rtol=1e-10, atol=1e-12)

    Xt, targets = rng.standard_normal((7, 3)), rng.standard_normal((60, 2))
    args = (arch, X, targets, Xt)
    here = jacntk.predict(*args, times=[10.0, float("inf")], operator="structured")
    there = jacntk.predict(*args, times=[10.0, float("inf")], operator="structured", client=cluster)
    np.testing.assert_allclose(there.values, here.values, rtol=1e-9, atol=1e-12)
