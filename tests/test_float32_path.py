"""The float32 compute path (docs/math.md §14): within its stated bound of float64 for each
activation and kind, float32 output, the diagonal exact, near-collinear pairs in float64."""

import numpy as np
import pytest

import jacntk
from jacntk.kernels._compute import compute_tile

#: The bound docs/math.md §14 states: |K32 - K64| <= BOUND sqrt(K64_ii K64_jj).
BOUND = 1e-5


def scaled_error(K32, K64, d1, d2):
    return (np.abs(K32.astype(np.float64) - K64) / np.sqrt(np.outer(d1, d2))).max()


def data(d, n, seed):
    """Gaussian points, nonnegative (MNIST-like) points, and near-duplicates and
    near-antipodes of other points at relative distances 1e-8 .. 1."""
    rng = np.random.default_rng(seed)
    m = n // 4
    base = rng.standard_normal((m, d))
    t = 10.0 ** rng.uniform(-8, 0, size=(m, 1))
    step = t * rng.standard_normal(base.shape) * np.linalg.norm(base, axis=1, keepdims=True)
    near = base + step / d**0.5
    near[: m // 2] *= -1.0
    return np.vstack([rng.standard_normal((m, d)), rng.random((m, d)), base, near])


ARCHS = [(1, 1.0, 0.0), (3, 1.3, 0.2), (8, 2**0.5, 0.0)]


@pytest.mark.parametrize("activation", ["erf", "relu", "gelu"])
@pytest.mark.parametrize("d", [10, 784])
def test_float32_within_its_bound(activation, d):
    X = data(d, 160, seed=d)
    for depth, sw, sb in ARCHS:
        arch = jacntk.MLP(depth, activation, sw, sb, kappa=0.7)
        K64 = jacntk.kernel(arch, X, kind=("nngp", "ntk"))
        K32 = jacntk.kernel(arch, X, kind=("nngp", "ntk"), precision="float32")
        for a, b in zip(K32, K64, strict=True):
            assert a.dtype == np.float32
            err = scaled_error(a, b, np.diag(b), np.diag(b))
            assert err <= BOUND, (depth, sw, sb, err)
            # float32 arithmetic was used: not merely float64 rounded
            assert np.abs(a.astype(np.float64) - b).max() > np.abs(b.astype(np.float32) - b).max()


@pytest.mark.parametrize("activation", ["erf", "relu", "gelu"])
def test_float32_cross_tile_and_diagonal(activation):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((40, 30))
    Y = np.vstack([rng.standard_normal((20, 30)), X[:5], X[5:10] * (1 + 1e-9)])
    arch = jacntk.MLP(3, activation, 1.2, 0.3)
    for kind in ("nngp", "ntk"):
        K64 = jacntk.kernel(arch, X, Y, kind=kind)
        K32 = jacntk.kernel(arch, X, Y, kind=kind, precision="float32")
        assert K32.dtype == np.float32 and K32.shape == K64.shape
        dX = np.diag(jacntk.kernel(arch, X, kind=kind))
        dY = np.diag(jacntk.kernel(arch, Y, kind=kind))
        assert scaled_error(K32, K64, dX, dY) <= BOUND
        # x' = x in a cross tile (a collinear pair): recomputed in float64
        same = K32[np.arange(5), 20 + np.arange(5)]
        np.testing.assert_allclose(same, K64[np.arange(5), 20 + np.arange(5)], rtol=1e-7)
        # the diagonal of a symmetric tile is the float64 value rounded once
        S32 = jacntk.kernel(arch, X, kind=kind, precision="float32")
        assert np.array_equal(np.diag(S32), dX.astype(np.float32))
        assert np.array_equal(S32, S32.T)


def test_relu_near_collinear_pairs_take_float64():
    """At |x' - x| = 1e-6 |x| the float32 arithmetic alone is off by ~5e-4 in the ReLU NTK
    (theta ~ 1e-6 against eps32 ~ 6e-8 on cos theta); the route recomputes those pairs."""
    rng = np.random.default_rng(8)
    X = rng.standard_normal((30, 784))
    Y = X + 1e-6 * rng.standard_normal(X.shape) * np.linalg.norm(X, axis=1, keepdims=True) / 28
    arch = jacntk.MLP(4, "relu", 2**0.5, 0.0)
    K64 = jacntk.kernel(arch, X, Y, kind="ntk")
    K32 = jacntk.kernel(arch, X, Y, kind="ntk", precision="float32")
    near = np.diag(K32).astype(np.float64)
    np.testing.assert_allclose(near, np.diag(K64), rtol=1e-7)


@pytest.mark.parametrize("activation", ["tanh", "softplus", "silu"])
def test_quadrature_activations_are_rounded_float64(activation):
    arch = jacntk.MLP(2, activation, 1.2, 0.1)
    X = np.random.default_rng(9).standard_normal((5, 3))
    for kind in ("nngp", "ntk"):
        K64 = jacntk.kernel(arch, X, kind=kind)
        K32 = jacntk.kernel(arch, X, kind=kind, precision="float32")
        assert K32.dtype == np.float32
        assert np.array_equal(K32, K64.astype(np.float32))


@pytest.mark.parametrize("activation", ["erf", "relu", "gelu"])
def test_jacobian_and_fields_in_float32(activation):
    arch = jacntk.MLP(2, activation, 1.1, 0.2)
    X = np.random.default_rng(10).standard_normal((6, 3))
    kind = "ntk_truncated" if activation == "relu" else "ntk"
    F32 = jacntk.kernel_fields(arch, X, kind=kind, precision="float32")
    F64 = jacntk.kernel_fields(arch, X, kind=kind)
    assert F32.data.dtype == np.float32 and F32.kind == kind
    assert np.array_equal(F32.data, F64.data.astype(np.float32))
    G32 = jacntk.kernel(arch, X, kind=kind, jacobian=True, precision="float32")
    G64 = jacntk.kernel(arch, X, kind=kind, jacobian=True)
    assert G32.dtype == np.float32
    assert np.abs(G32 - G64).max() <= 1e-7 * np.abs(G64).max()


def test_compute_tile_float32_tuple_and_bad_precision():
    arch = jacntk.MLP(3, "erf", 1.3, 0.1)
    X = np.random.default_rng(11).standard_normal((12, 5))
    nngp, ntk = compute_tile(arch, X, kind=("nngp", "ntk"), precision="float32")
    assert nngp.dtype == ntk.dtype == np.float32
    assert np.abs(ntk - compute_tile(arch, X, kind="ntk", precision="float32")).max() == 0.0
    with pytest.raises(ValueError, match="unknown precision"):
        jacntk.kernel(arch, X, precision="float16")
    with pytest.raises(ValueError, match="unknown precision"):
        jacntk.kernel_fields(arch, X, precision="half")
