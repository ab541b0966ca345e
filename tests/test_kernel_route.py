"""Every consumer of Jacobian kernels gets the numbers of ``jacntk.kernel(..., jacobian=True)``,
including near-duplicate ReLU points where the eight fields cancel (one routing decision,
``jacntk.kernels._routing.stable_pairs``)."""

from __future__ import annotations

import numpy as np
import pytest

import jacntk
from jacntk.kernels._routing import stable_pairs
from jacntk.linalg import CrossGram, StoredGram, StructuredGram
from jacntk.store import GramStore, assemble
from jacntk.training import cross_product, training_system

RELU = jacntk.MLP(2, "relu", sigma_w=2**0.5, sigma_b=0.1)
ERF = jacntk.MLP(2, "erf", sigma_w=2**0.5, sigma_b=0.1)
CASES = [(RELU, "nngp"), (RELU, "ntk_truncated"), (ERF, "nngp"), (ERF, "ntk_truncated")]
SEPARATIONS = (1e-3, 1e-5, 1e-7, 1e-9)
D = 4
TILE = 3  # near pairs inside a diagonal tile (1, 2) and across tiles (0, 6), (4, 7)
LAM = 0.3
#: Agreement promised by every consumer, relative to the scale of the matrix or product.
RTOL = 1e-12


def points_with_near_duplicates(separation: float) -> np.ndarray:
    """Six ordinary points and three near duplicates at ``|x' - x| = separation``."""
    rng = np.random.default_rng(11)
    X = rng.standard_normal((8, D))
    v = rng.standard_normal((3, D))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    X[2] = X[1] + separation * v[0]
    X[6] = X[0] + separation * v[1]
    X[7] = X[4] + separation * v[2]
    return X


NEAR = {(1, 2), (2, 1), (0, 6), (6, 0), (4, 7), (7, 4)}


def rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def stores(client, tmp_path_factory):
    """One real Jacobian store per (activation, kind, separation), assembled on demand."""
    root = tmp_path_factory.mktemp("route")
    made = {}

    def get(arch, kind, separation):
        key = (arch.activation, kind, separation)
        if key not in made:
            path = root / f"{arch.activation}-{kind}-{separation:.0e}.zarr"
            X = points_with_near_duplicates(separation)
            assemble(arch, X, path, kind=kind, jacobian=True, tile=TILE, client=client)
            made[key] = path
        return GramStore.open(made[key])

    return get


def test_routing_takes_near_duplicate_and_diagonal_relu_pairs_only():
    X = points_with_near_duplicates(1e-5)
    n = X.shape[0]
    diagonal = {(i, i) for i in range(n)}
    for kind in ("nngp", "ntk_truncated"):
        rows, cols = stable_pairs(RELU, kind, X)
        assert set(zip(rows.tolist(), cols.tolist(), strict=True)) == NEAR | diagonal
        np.testing.assert_array_equal(stable_pairs(RELU, kind, X, X, aligned=True), np.arange(n))
        rows, cols = stable_pairs(ERF, kind, X)
        assert rows.size == cols.size == 0
    # ordinary points: only the diagonal is routed, so matrix-free products stay O(N M d)
    Y = np.random.default_rng(5).standard_normal((40, D))
    rows, cols = stable_pairs(RELU, "nngp", Y)
    assert set(zip(rows.tolist(), cols.tolist(), strict=True)) == {(i, i) for i in range(40)}


@pytest.mark.parametrize("separation", SEPARATIONS)
@pytest.mark.parametrize(("arch", "kind"), CASES, ids=lambda c: getattr(c, "activation", c))
def test_training_operators_agree_with_kernel(stores, client, arch, kind, separation):
    X = points_with_near_duplicates(separation)
    n = X.shape[0]
    G = jacntk.kernel(arch, X, kind=kind, jacobian=True)
    s = np.tile(np.r_[1.0, np.full(D, np.sqrt(LAM))], n)
    B = s[:, None] * G * s[None, :]
    V = np.random.default_rng(2).standard_normal((n * (D + 1), 3))
    want = B @ V
    store = stores(arch, kind, separation)
    systems = {
        "dense": training_system(arch, X, kind=kind, jacobian_reg=LAM, operator="dense"),
        "structured": training_system(
            arch, X, kind=kind, jacobian_reg=LAM, operator="structured", tile=TILE
        ),
        "stored": training_system(None, store, jacobian_reg=LAM, operator="stored"),
    }
    for name, system in systems.items():
        assert rel(system.B.matmat(V), want) <= RTOL, name
        assert rel(system.B.to_dense(), B) <= RTOL, name
    # the other paths of the stored operator: streamed (GramStore.matvec) and on the workers
    for op in (StoredGram(store, cache_mb=0.0), StoredGram(store, client=client)):
        assert rel(op @ V, G @ V) <= RTOL
    idx = np.arange(n)
    blocks = G.reshape(n, D + 1, n, D + 1)[idx, :, idx, :]
    for op in (StoredGram(store), StructuredGram(arch, X, kind=kind, tile=TILE)):
        assert rel(op.diagonal_blocks(), blocks) <= RTOL


@pytest.mark.parametrize("separation", SEPARATIONS)
@pytest.mark.parametrize(("arch", "kind"), CASES, ids=lambda c: getattr(c, "activation", c))
def test_store_blocks_agree_with_kernel(stores, arch, kind, separation):
    X = points_with_near_duplicates(separation)
    n, w = X.shape[0], D + 1
    G = jacntk.kernel(arch, X, kind=kind, jacobian=True)
    store = stores(arch, kind, separation)
    assert rel(store.block(jacobian=True), G) <= RTOL
    rows, cols = [6, 2, 4], [0, 1, 7, 5]
    want = G.reshape(n, w, n, w)[rows][:, :, cols].reshape(len(rows) * w, len(cols) * w)
    assert rel(store.block(rows, cols, jacobian=True), want) <= RTOL
    assert rel(store.row(6, jacobian=True), G[6 * w : 7 * w]) <= RTOL
    assert rel(store.diag(jacobian=True), np.diag(G)) <= RTOL
    v = np.random.default_rng(4).standard_normal(n * w)
    assert rel(store.matvec(v), G @ v) <= RTOL


@pytest.mark.parametrize("separation", SEPARATIONS)
@pytest.mark.parametrize(("arch", "kind"), CASES, ids=lambda c: getattr(c, "activation", c))
def test_field_functions_given_arch_agree_with_kernel(arch, kind, separation):
    X = points_with_near_duplicates(separation)
    Y = X[[6, 3, 2]] + np.array([[1e-12], [0.5], [0.0]])  # a cross set with near pairs
    n = X.shape[0]
    G = jacntk.kernel(arch, X, kind=kind, jacobian=True)
    F = jacntk.kernel_fields(arch, X, kind=kind)
    V = np.random.default_rng(6).standard_normal((n * (D + 1), 2))
    assert rel(jacntk.structured_matmul(F, X, None, V, arch=arch), G @ V) <= RTOL
    assert rel(jacntk.augment(F, X, arch=arch), G) <= RTOL
    C = jacntk.kernel(arch, X, Y, kind=kind, jacobian=True)
    FC = jacntk.kernel_fields(arch, X, Y, kind=kind)
    W = V[: Y.shape[0] * (D + 1)]
    assert rel(jacntk.structured_matmul(FC.data, X, Y, W, arch=arch, kind=kind), C @ W) <= RTOL
    assert rel(jacntk.augment(FC, X, Y, arch=arch), C) <= RTOL
    # projected augmentation: E^T Block E with E = [e0, (0, u_1), (0, u_2)] per point
    U = jacntk.random_directions(n, 2, D, seed=1)
    E = np.zeros((n, D + 1, 3))
    E[:, 0, 0] = 1.0
    E[:, 1:, 1:] = U.transpose(0, 2, 1)
    P = np.einsum("iak,iajb,jbl->ikjl", E, G.reshape(n, D + 1, n, D + 1), E).reshape(3 * n, -1)
    assert rel(jacntk.projected_kernel(F, X, None, U, arch=arch), P) <= RTOL
    proj = StructuredGram(arch, X, kind=kind, directions=U, tile=TILE)
    assert rel(proj.to_dense(), P) <= RTOL
    idx = np.arange(n)
    assert rel(proj.diagonal_blocks(), P.reshape(n, 3, n, 3)[idx, :, idx, :]) <= RTOL


@pytest.mark.parametrize("separation", SEPARATIONS)
@pytest.mark.parametrize(("arch", "kind"), CASES, ids=lambda c: getattr(c, "activation", c))
def test_cross_gram_and_predictions_agree_with_kernel(arch, kind, separation):
    """Test points ``separation`` away from training points: the cross Gram of ``predict``
    (values and gradients, scalar and Jacobian columns) gets the numbers of ``kernel()``."""
    X = points_with_near_duplicates(separation)
    rng = np.random.default_rng(8)
    v = rng.standard_normal((3, D))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    Xt = X[[0, 3, 5]] + separation * v
    G = jacntk.kernel(arch, Xt, X, kind=kind, jacobian=True)
    V = rng.standard_normal((X.shape[0] * (D + 1), 2))
    full = CrossGram(arch, Xt, X, kind=kind, gradients=True, jacobian_columns=True, tile=TILE)
    assert rel(full @ V, G @ V) <= RTOL
    values = CrossGram(arch, Xt, X, kind=kind, gradients=False, jacobian_columns=True, tile=TILE)
    assert rel(values @ V, G[:: D + 1] @ V) <= RTOL
    # predict's route to the test points: cross_product of a Jacobian training system
    system = training_system(arch, X, kind=kind, jacobian_reg=LAM, operator="structured", tile=TILE)
    Z = V.reshape(1, *V.shape)
    got = cross_product(system, Xt, Z, gradients=True)
    assert got.shape == (1, Xt.shape[0], D + 1, 2)
    assert rel(got.reshape(-1, 2), G @ V) <= RTOL
