"""Every Gram operator agrees with the dense matrix it represents (docs/math.md §8.2, §6.1)."""

from __future__ import annotations

import numpy as np
import pytest

import jacntk
from jacntk.linalg import CrossGram, DenseGram, ScaledGram, StoredGram, StructuredGram
from jacntk.linalg._scaled import scaling_vector
from jacntk.store import GramStore, assemble

ARCH = jacntk.MLP(3, "erf", sigma_b=0.2)


@pytest.fixture(scope="module")
def points():
    X = np.random.default_rng(3).standard_normal((37, 4))
    return (X - X.mean(0)) / X.std(0)


@pytest.fixture(scope="module")
def stores(client, points, tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    assemble(ARCH, points, root / "k.zarr", kind="ntk", tile=16, client=client)
    assemble(ARCH, points, root / "j.zarr", kind="ntk", jacobian=True, tile=16, client=client)
    return GramStore.open(root / "k.zarr"), GramStore.open(root / "j.zarr")


def rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("tile", [10, 37])
def test_structured_gram_matches_dense_augmented_scalar_and_projected(points, rng, tile):
    G = jacntk.kernel(ARCH, points, jacobian=True)
    V = rng.standard_normal((G.shape[0], 3))
    full = StructuredGram(ARCH, points, tile=tile)
    assert full.shape == G.shape and full.block == 5
    assert rel(full @ V, G @ V) < 1e-13
    assert rel(full.matvec(V[:, 0]), G @ V[:, 0]) < 1e-13
    K = jacntk.kernel(ARCH, points)
    scalar = StructuredGram(ARCH, points, jacobian=False, tile=tile)
    assert rel(scalar @ V[:37], K @ V[:37]) < 1e-13
    U = jacntk.random_directions(37, 2, 4, seed=1)
    P = jacntk.projected_kernel(jacntk.kernel_fields(ARCH, points), points, None, U)
    proj = StructuredGram(ARCH, points, directions=U, tile=tile)
    assert proj.block == 3
    assert rel(proj.to_dense(), P) < 1e-13
    np.testing.assert_allclose(
        proj.diagonal_blocks(), DenseGram(P, 3).diagonal_blocks(), rtol=1e-12, atol=1e-14
    )


def test_cached_structured_gram_reuses_tiles(points, rng):
    op = StructuredGram(ARCH, points, tile=16, cache=True)
    v = rng.standard_normal(op.shape[0])
    first = op @ v
    assert len(op.cache) == 6  # tiles I <= J of a 3 x 3 tiling
    np.testing.assert_array_equal(op @ v, first)


@pytest.mark.parametrize("lam, jitter", [(0.01, 0.0), (0.3, 1e-3)])
def test_scaled_gram_is_d_half_theta_d_half_plus_jitter(points, lam, jitter):
    G = jacntk.kernel(ARCH, points, jacobian=True)
    s = np.tile(np.r_[1.0, np.full(4, np.sqrt(lam))], 37)
    expected = s[:, None] * G * s[None, :] + jitter * np.eye(G.shape[0])
    np.testing.assert_array_equal(scaling_vector(37, 5, lam), s)
    for base in (DenseGram(G, 5), StructuredGram(ARCH, points, tile=16)):
        B = ScaledGram(base, lam, jitter)
        assert rel(B.to_dense(), expected) < 1e-13
        copy = B.dense_copy()  # the one-pass copy the direct solve factorises in place
        np.testing.assert_allclose(copy, expected, rtol=1e-15, atol=1e-15 * abs(G).max())
        copy[:] = 0.0  # a new array: the base's matrix is untouched
        assert rel(B.dense_copy(), expected) < 1e-13
        blocks = expected.reshape(37, 5, 37, 5)[np.arange(37), :, np.arange(37), :]
        assert rel(B.diagonal_blocks(), blocks) < 1e-13


def test_projected_scaled_gram(points):
    U = jacntk.coordinate_directions(37, [0, 2], 4)
    P = jacntk.projected_kernel(jacntk.kernel_fields(ARCH, points), points, None, U)
    s = np.tile([1.0, 0.5, 0.5], 37)
    B = ScaledGram(StructuredGram(ARCH, points, directions=U, tile=16), 0.25)
    assert rel(B.to_dense(), s[:, None] * P * s[None, :]) < 1e-13


def test_cross_gram_matches_dense_blocks(points, rng):
    Xt = rng.standard_normal((6, 4))
    G = jacntk.kernel(ARCH, Xt, points, jacobian=True)
    V = rng.standard_normal((37 * 5, 2))
    op = CrossGram(ARCH, Xt, points, gradients=True, jacobian_columns=True, tile=8)
    assert rel(op @ V, G @ V) < 1e-13
    values_only = CrossGram(ARCH, Xt, points, gradients=False, tile=8)
    assert rel(values_only @ V[:37], G[::5, ::5] @ V[:37]) < 1e-13
    value_columns = CrossGram(ARCH, Xt, points, gradients=True, tile=8)
    assert rel(value_columns @ V[:37], G[:, ::5] @ V[:37]) < 1e-13


def test_stored_gram_matches_in_memory_operators(stores, points, rng):
    scalar, fields = stores
    G = jacntk.kernel(ARCH, points, jacobian=True)
    V = rng.standard_normal((G.shape[0], 2))
    for cache_mb in (0.0, 1024.0):  # streamed from the store / read once and kept
        op = StoredGram(fields, cache_mb=cache_mb)
        assert op.cached == (cache_mb > 0)
        assert rel(op @ V, G @ V) < 1e-13
        assert rel(op @ V, G @ V) < 1e-13
        values = G[::5, ::5] @ V[:37]
        assert rel(StoredGram(scalar, cache_mb=cache_mb) @ V[:37], values) < 1e-13
        only = StoredGram(fields, values_only=True, cache_mb=cache_mb)
        assert rel(only @ V[:37], values) < 1e-13
    dense = DenseGram(G, 5)
    np.testing.assert_allclose(
        StoredGram(fields).diagonal_blocks(), dense.diagonal_blocks(), rtol=1e-13, atol=1e-15
    )
    F, X = StoredGram(fields).diagonal_fields()
    F2, _ = StructuredGram(ARCH, points).diagonal_fields()
    np.testing.assert_allclose(F, F2, rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(X, points)


@pytest.mark.parametrize("shared", [True, False])
def test_stored_gram_with_directions_is_the_projected_gram(stores, points, rng, shared):
    """A Jacobian store multiplied as the projected augmentation (block 1 + p) in every
    residency -- dense, tiles cached, streamed -- equals projected_kernel on the fields."""
    _, fields = stores
    U = rng.standard_normal((2, 4)) if shared else jacntk.random_directions(37, 2, 4, seed=3)
    P = jacntk.projected_kernel(jacntk.kernel_fields(ARCH, points), points, None, U)
    V = rng.standard_normal((P.shape[0], 2))
    for dense, cache_mb in ((True, 1024.0), (False, 1024.0), (False, 0.0)):
        op = StoredGram(fields, directions=U, dense=dense, cache_mb=cache_mb)
        assert op.block == 3 and op.shape == P.shape and op.diagonal_fields() is None
        assert rel(op @ V, P @ V) < 1e-13, (dense, cache_mb)
    np.testing.assert_allclose(
        op.diagonal_blocks(), DenseGram(P, 3).diagonal_blocks(), rtol=1e-12, atol=1e-14
    )
    assert rel(fields.matvec(V, U), P @ V) < 1e-13  # the store's own streamed product
    with pytest.raises(ValueError, match="need a Jacobian store's fields.*a scalar store"):
        StoredGram(stores[0], directions=U)
    with pytest.raises(ValueError, match="need a Jacobian store's fields.*a scalar store"):
        stores[0].matvec(V[:37], U)
    with pytest.raises(ValueError, match=r"directions must have shape \(p, 4\) or \(37, p, 4\)"):
        StoredGram(fields, directions=np.ones((2, 3)))


@pytest.mark.parametrize("columns", [1, 3, 40])
def test_float32_store_is_multiplied_in_its_own_precision_with_float64_sums(
    client, tmp_path, rng, columns
):
    """A float32 store's tiles stay float32 in memory and in the stream (the Numba pair kernel
    up to STREAMED_COLUMNS columns, BLAS above), and the product is the float64 product of the
    rounded matrix: ragged tiles, mirrored tiles and the remainder rows all covered."""
    X = rng.standard_normal((45, 6))
    assemble(ARCH, X, tmp_path / "f.zarr", tile=14, dtype="float32", client=client)
    store = GramStore.open(tmp_path / "f.zarr")
    G32 = jacntk.kernel(ARCH, X).astype(np.float32).astype(np.float64)
    V = rng.standard_normal((45, columns))
    want = G32 @ V
    cached = StoredGram(store, cache_mb=1.0)
    assert cached.cached and all(t.dtype == np.float32 for _, _, t in cached._upper_tiles())
    for got in (cached @ V, StoredGram(store, cache_mb=0.0) @ V, store.matvec(V)):
        assert rel(got, want) < 1e-13
    assert rel(store.matvec(V[:, 0]), want[:, 0]) < 1e-13


def test_distributed_stored_gram_on_real_workers_agrees(stores, points, rng):
    from distributed import Client, LocalCluster, get_task_stream

    scalar, fields = stores
    G = jacntk.kernel(ARCH, points, jacobian=True)
    V = rng.standard_normal((G.shape[0], 3))
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as c,
    ):
        with get_task_stream(client=c) as stream:
            op = StoredGram(fields, client=c)
            out = op @ V
            out2 = op @ V
        # the tiles are loaded once, one task per worker, and stay there; each product is one
        # task per worker's part (run on the workers, not in this process) and one sum
        loads = [t for t in stream.data if "jacntk-resident" in str(t["key"])]
        products = [t for t in stream.data if "part_product" in str(t["key"])]
        assert len(loads) == len(op.resident.assignment) == 2
        assert len(products) == 2 * len(loads) and {t["worker"] for t in loads} == set(c.ncores())
        assert np.array_equal(out, out2)
        assert rel(out, StoredGram(fields) @ V) < 1e-14
        values = G[::5, ::5] @ V[:37]
        assert rel(StoredGram(scalar, client=c) @ V[:37], values) < 1e-13
        assert rel(StoredGram(fields, client=c, values_only=True) @ V[:37], values) < 1e-13
    assert rel(out, G @ V) < 1e-13


def test_incomplete_store_is_refused(client, points, tmp_path):
    path = tmp_path / "g.zarr"
    assemble(ARCH, points, path, tile=16, client=client)
    path.joinpath("manifest", "c", "0", "2", "0", "0").unlink()
    store = GramStore.open(path)
    with pytest.raises(ValueError, match=r"incomplete: 1 tiles are missing \(first \[\(0, 2\)\]"):
        StoredGram(store)


def test_bad_operator_input(points):
    with pytest.raises(ValueError, match="square"):
        DenseGram(np.ones((3, 4)))
    with pytest.raises(ValueError, match="multiple of block=2"):
        DenseGram(np.eye(3), block=2)
    with pytest.raises(ValueError, match="NaN"):
        DenseGram(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="lam must be a finite number >= 0, got -0.1"):
        ScaledGram(DenseGram(np.eye(2)), -0.1)
    with pytest.raises(ValueError, match="jitter"):
        ScaledGram(DenseGram(np.eye(2)), 1.0, float("nan"))
    with pytest.raises(ValueError, match="directions"):
        StructuredGram(ARCH, points, directions=np.ones((37, 2, 3)))
    with pytest.raises(ValueError, match="tile"):
        StructuredGram(ARCH, points, tile=0)
    with pytest.raises(ValueError, match="dimension mismatch"):
        StructuredGram(ARCH, points).matmat(np.ones((10, 1)))
