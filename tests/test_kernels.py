"""Core kernels: Jacobian blocks vs finite differences, closed forms, Numba vs the NumPy
reference, the structured product and projected augmentation, and bad input."""

import numpy as np
import pytest

import jacntk
from jacntk.kernels._compute import compute_tile
from jacntk.kernels._fields import FIELD_TRANSPOSE
from jacntk.kernels._reference import reference_augment, reference_fields


def fd_jacobian_kernel(arch, X1, X2, kind, h=1e-4):
    """Dense augmented matrix by central finite differences of the scalar kernel.

    All shifted copies of both point sets go through one scalar Gram evaluation.
    """
    n1, d = X1.shape
    n2 = X2.shape[0]
    E = np.vstack([np.zeros(d), h * np.eye(d), -h * np.eye(d)])
    P1 = (X1[:, None, :] + E[None]).reshape(-1, d)
    P2 = (X2[:, None, :] + E[None]).reshape(-1, d)
    K = jacntk.kernel(arch, P1, P2, kind=kind).reshape(n1, 2 * d + 1, n2, 2 * d + 1)
    p, m = slice(1, d + 1), slice(d + 1, None)
    G = np.empty((n1, d + 1, n2, d + 1))
    G[:, 0, :, 0] = K[:, 0, :, 0]
    G[:, 0, :, 1:] = (K[:, 0, :, p] - K[:, 0, :, m]) / (2 * h)
    G[:, 1:, :, 0] = (K[:, p, :, 0] - K[:, m, :, 0]) / (2 * h)
    G[:, 1:, :, 1:] = (K[:, p, :, p] - K[:, p, :, m] - K[:, m, :, p] + K[:, m, :, m]) / (4 * h * h)
    return G.reshape(n1 * (d + 1), n2 * (d + 1))


def rel_err(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("activation", ["erf", "gelu", "tanh"])
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("sigmas", [(1.0, 0.0), (1.3, 0.4)])
@pytest.mark.parametrize("kind", ["nngp", "ntk"])
def test_jacobian_blocks_match_finite_differences(activation, depth, sigmas, kind):
    rng = np.random.default_rng(depth)
    X = rng.standard_normal((3, 3))
    arch = jacntk.MLP(depth, activation, *sigmas, kappa=0.8)
    G = jacntk.kernel(arch, X, kind=kind, jacobian=True)
    # every block, including the diagonal blocks x = x'
    assert rel_err(G, fd_jacobian_kernel(arch, X, X, kind)) <= 1e-6
    assert np.allclose(G, G.T, rtol=0, atol=1e-14 * np.abs(G).max())


def _relu_nngp(p, q, r, depth, sw, sb, d):
    """Arc-cosine recursion (Cho & Saul) in its textbook form, with the NTK (Jacot et al.)."""
    c, a, b = sw**2 * p / d + sb**2, sw**2 * q / d + sb**2, sw**2 * r / d + sb**2
    ntk = c
    for _ in range(depth):
        theta = np.arccos(np.clip(c / np.sqrt(a * b), -1, 1))
        c_new = (
            sw**2 * np.sqrt(a * b) / (2 * np.pi) * (np.sin(theta) + (np.pi - theta) * np.cos(theta))
        )
        ntk = c_new + sb**2 + sw**2 * (np.pi - theta) / (2 * np.pi) * ntk
        c, a, b = c_new + sb**2, sw**2 * a / 2 + sb**2, sw**2 * b / 2 + sb**2
    return c, ntk


def _erf_nngp(p, q, r, depth, sw, sb, d):
    """Williams' (1997) erf kernel, composed layer by layer, with the NTK."""
    c, a, b = sw**2 * p / d + sb**2, sw**2 * q / d + sb**2, sw**2 * r / d + sb**2
    ntk = c
    for _ in range(depth):
        A, B = 1 + 2 * a, 1 + 2 * b
        sdot = sw**2 * 4 / (np.pi * np.sqrt(A * B - 4 * c**2))
        c = sw**2 * 2 / np.pi * np.arcsin(2 * c / np.sqrt(A * B)) + sb**2
        ntk = c + sdot * ntk
        a = sw**2 * 2 / np.pi * np.arcsin(2 * a / (1 + 2 * a)) + sb**2
        b = sw**2 * 2 / np.pi * np.arcsin(2 * b / (1 + 2 * b)) + sb**2
    return c, ntk


@pytest.mark.parametrize("activation,closed_form", [("relu", _relu_nngp), ("erf", _erf_nngp)])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_scalar_kernels_match_closed_forms(activation, closed_form, depth, rng):
    X, Y = rng.standard_normal((6, 5)), rng.standard_normal((4, 5))
    arch = jacntk.MLP(depth, activation, sigma_w=1.4, sigma_b=0.3, kappa=0.9)
    q, r = (X**2).sum(1)[:, None], (Y**2).sum(1)[None, :]
    nngp, ntk = closed_form(X @ Y.T, q, r, depth, 1.4, 0.3, 5)
    np.testing.assert_allclose(jacntk.kernel(arch, X, Y, kind="nngp"), 0.81 * nngp, rtol=1e-13)
    np.testing.assert_allclose(jacntk.kernel(arch, X, Y, kind="ntk"), 0.81 * ntk, rtol=1e-13)


@pytest.mark.parametrize("activation", jacntk.ACTIVATIONS)
@pytest.mark.parametrize("kind", jacntk.KINDS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_numba_matches_numpy_reference(activation, kind, symmetric):
    rng = np.random.default_rng(7)
    X, Y = rng.standard_normal((6, 4)), rng.standard_normal((5, 4))
    X2 = None if symmetric else Y
    arch = jacntk.MLP(3, activation, sigma_w=1.2, sigma_b=0.3, kappa=0.7)
    if activation == "relu" and kind == "ntk":
        cases = [False]  # the scalar ReLU NTK only; its JNTK is refused (tested below)
    else:
        cases = [False, True]
    for jacobian in cases:
        fast = compute_tile(arch, X, X2, kind=kind, jacobian=jacobian)
        ref = reference_fields(arch, X, X2, kind=kind, jacobian=jacobian)
        fast, ref = np.atleast_3d(fast.T).T, np.atleast_3d(ref.T).T
        for k in range(fast.shape[0]):  # field by field, relative to each field's scale
            assert np.abs(fast[k] - ref[k]).max() <= 1e-12 * np.abs(ref[k]).max(), k


def test_numba_augment_matches_numpy_einsum_reference(rng):
    """The dense augmented matrix from arbitrary fields (every field exercised on its own scale),
    on square and rectangular pairs of point sets."""
    for n1, n2, d in [(5, 5, 3), (4, 7, 6), (1, 2, 1)]:
        F = rng.standard_normal((8, n1, n2)) * np.logspace(-2, 2, 8)[:, None, None]
        X, Y = rng.standard_normal((n1, d)), rng.standard_normal((n2, d))
        got, want = jacntk.augment(F, X, Y), reference_augment(F, X, Y)
        assert got.shape == (n1 * (d + 1), n2 * (d + 1))
        np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-14 * np.abs(want).max())


def test_symmetric_tile_equals_cross_tile_and_transposes(rng):
    X = rng.standard_normal((9, 4))
    arch = jacntk.MLP(2, "gelu", 1.1, 0.2)
    sym = compute_tile(arch, X, None, kind="ntk", jacobian=True)
    cross = compute_tile(arch, X, X.copy(), kind="ntk", jacobian=True)
    np.testing.assert_allclose(sym, cross, rtol=0, atol=1e-13 * np.abs(cross).max())
    off = ~np.eye(9, dtype=bool)  # mirrored entries are exact copies; the diagonal is computed
    for k, kt in enumerate(FIELD_TRANSPOSE):
        np.testing.assert_array_equal(sym[k][off], sym[kt].T[off])


def test_kernel_fields_names_and_dense_consistency(rng):
    X, Y = rng.standard_normal((4, 3)), rng.standard_normal((3, 3))
    arch = jacntk.MLP(2, "erf")
    F = jacntk.kernel_fields(arch, X, Y, kind="nngp")
    assert set(F.as_dict()) == set(jacntk.FIELD_NAMES) and F.shape == (4, 3)
    np.testing.assert_allclose(F.K, jacntk.kernel(arch, X, Y, kind="nngp"), rtol=1e-14)
    G = jacntk.kernel(arch, X, Y, kind="nngp", jacobian=True)
    assert G.shape == (4 * 4, 3 * 4)
    # point-major: value rows are 0, d+1, 2(d+1), ...
    np.testing.assert_array_equal(G[::4, ::4], F.K)


@pytest.mark.parametrize("k", [1, 3])
def test_structured_product_matches_dense(k, rng):
    X, Y = rng.standard_normal((7, 5)), rng.standard_normal((6, 5))
    arch = jacntk.MLP(3, "erf", 1.2, 0.2)
    F = jacntk.kernel_fields(arch, X, Y, kind="ntk")
    G = jacntk.augment(F, X, Y)
    V = rng.standard_normal((6 * 6, k)) if k > 1 else rng.standard_normal(6 * 6)
    out = jacntk.structured_matmul(F, X, Y, V)
    assert out.shape == ((7 * 6, k) if k > 1 else (7 * 6,))
    assert rel_err(out, G @ V) <= 1e-12


def test_projected_blocks_equal_dense_blocks_times_directions(rng):
    n1, n2, d, p = 5, 4, 6, 2
    X, Y = rng.standard_normal((n1, d)), rng.standard_normal((n2, d))
    arch = jacntk.MLP(2, "gelu", 1.0, 0.1)
    F = jacntk.kernel_fields(arch, X, Y, kind="ntk")
    U1 = jacntk.random_directions(n1, p, d, seed=1)
    U2 = jacntk.coordinate_directions(n2, [0, 4], d)

    def embedding(U):  # (n(d+1), n(1+p)) block-diagonal [[1, 0], [0, U_i^T]]
        n = U.shape[0]
        E = np.zeros((n, d + 1, n, 1 + p))
        for i in range(n):
            E[i, 0, i, 0] = 1.0
            E[i, 1:, i, 1:] = U[i].T
        return E.reshape(n * (d + 1), n * (1 + p))

    dense = embedding(U1).T @ jacntk.augment(F, X, Y) @ embedding(U2)
    assert rel_err(jacntk.projected_kernel(F, X, Y, U1, U2), dense) <= 1e-12


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_shared_directions_equal_the_per_point_route(activation, rng):
    """A (p, d) array of directions shared by all points (projected once, no factor d per
    pair) gives the blocks of the same directions repeated per point, which take the general
    per-point route; ReLU's routed pairs included (arch given)."""
    n1, n2, d, p = 6, 5, 7, 3
    X, Y = rng.standard_normal((n1, d)), rng.standard_normal((n2, d))
    X[1] = Y[2]  # a coincident pair: routed for ReLU
    arch = jacntk.MLP(2, activation, 1.0, 0.1)
    kind = "nngp" if activation == "relu" else "ntk"
    F = jacntk.kernel_fields(arch, X, Y, kind=kind)
    U = rng.standard_normal((p, d))
    each1, each2 = np.repeat(U[None], n1, 0), np.repeat(U[None], n2, 0)
    for extra in ({}, {"arch": arch, "kind": kind}):
        shared = jacntk.projected_kernel(F, X, Y, U, U, **extra)
        assert rel_err(shared, jacntk.projected_kernel(F, X, Y, each1, each2, **extra)) <= 1e-12
    FX = jacntk.kernel_fields(arch, X, kind=kind)  # symmetric: U2 defaults to U1
    assert (
        rel_err(
            jacntk.projected_kernel(FX, X, None, U), jacntk.projected_kernel(FX, X, None, each1)
        )
        <= 1e-12
    )


def test_relu_jacobian_ntk_is_refused_with_an_explanation(rng):
    X = rng.standard_normal((3, 2))
    arch = jacntk.MLP(2, "relu", sigma_w=np.sqrt(2))
    with pytest.raises(ValueError, match="infinite.*ntk_truncated"):
        jacntk.kernel(arch, X, kind="ntk", jacobian=True)
    with pytest.raises(ValueError, match="infinite"):
        jacntk.kernel_fields(arch, X, kind="ntk")
    assert jacntk.kernel(arch, X, kind="ntk").shape == (3, 3)  # the scalar NTK is fine


@pytest.mark.parametrize(
    "make_inputs,match",
    [
        (lambda: (np.array([[np.nan, 1.0]]), None), "NaN or inf"),
        (lambda: (np.array([[np.inf, 1.0]]), None), "NaN or inf"),
        (lambda: (np.ones((2, 3)), np.ones((2, 4))), "different input dimensions"),
        (lambda: (np.ones((0, 3)), None), "empty"),
        (lambda: (np.ones(3), None), "2-D"),
        (lambda: ([["a", "b"]], None), "numeric"),
    ],
)
def test_bad_inputs_raise_clear_errors(make_inputs, match):
    X1, X2 = make_inputs()
    with pytest.raises(ValueError, match=match):
        jacntk.kernel(jacntk.MLP(1, "erf"), X1, X2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"depth": 0, "activation": "erf"}, "depth"),
        ({"depth": 2.5, "activation": "erf"}, "depth"),
        ({"depth": 2, "activation": "sigmoidal"}, "unknown activation 'sigmoidal'"),
        ({"depth": 2, "activation": "erf", "sigma_w": -1.0}, "sigma_w"),
        ({"depth": 2, "activation": "erf", "sigma_b": -0.1}, "sigma_b"),
        ({"depth": 2, "activation": "erf", "kappa": float("nan")}, "kappa"),
    ],
)
def test_bad_architectures_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jacntk.MLP(**kwargs)


def test_unknown_kind_is_refused(rng):
    with pytest.raises(ValueError, match="unknown kernel kind 'tangent'"):
        jacntk.kernel(jacntk.MLP(1, "erf"), rng.standard_normal((2, 2)), kind="tangent")


def test_mlp_is_frozen_hashable_and_round_trips():
    arch = jacntk.MLP(3, "gelu", 1.5, 0.1, 0.1)
    assert hash(arch) == hash(jacntk.MLP(3, "gelu", 1.5, 0.1, 0.1))
    assert jacntk.MLP.from_dict(arch.to_dict()) == arch
    with pytest.raises(AttributeError):
        arch.depth = 4


@pytest.mark.parametrize("kind", ["nngp", "ntk_truncated"])
@pytest.mark.parametrize("sigma_b", [0.0, 0.3])
def test_relu_fields_agree_with_stable_blocks_incl_antipodal_and_near_pairs(kind, sigma_b, rng):
    """The field route (used by stores and structured products) against the cancellation-free
    ReLU blocks: exact at x' = x and x' = -x, and within 1e-6 for nearby pairs (docs/math.md §7)."""
    x = rng.standard_normal(4)
    v = rng.standard_normal(4)
    X = np.stack([x, -x, x + 1e-3 * v, x + 1e-5 * v, rng.standard_normal(4)])
    arch = jacntk.MLP(3, "relu", sigma_w=1.3, sigma_b=sigma_b)
    stable = jacntk.kernel(arch, X, kind=kind, jacobian=True)
    from_fields = jacntk.augment(jacntk.kernel_fields(arch, X, kind=kind), X)
    assert np.isfinite(from_fields).all()
    assert rel_err(from_fields, stable) <= 1e-6


def test_deep_chaotic_diagonal_stays_exact(rng):
    """Chaotic phase (erf, sigma_w = 2, chi = 1.53): x = x' is an unstable fixed point of the
    correlation map, so the diagonal must follow the variance chain exactly at every depth."""
    X = rng.standard_normal((3, 4))
    arch = jacntk.MLP(100, "erf", sigma_w=2.0)
    v = 4.0 * (X**2).sum(1) / 4  # sigma_w^2 q / d
    ntk = v.copy()
    for _ in range(100):
        A = 1 + 2 * v
        sdot = 4 * 4 / (np.pi * np.sqrt(A * A - 4 * v * v))
        v = 4 * 2 / np.pi * np.arcsin(2 * v / A)
        ntk = v + sdot * ntk
    np.testing.assert_allclose(np.diag(jacntk.kernel(arch, X, kind="ntk")), ntk, rtol=1e-10)
    np.testing.assert_allclose(
        np.diag(jacntk.kernel_fields(arch, X, kind="ntk").K), ntk, rtol=1e-10
    )


@pytest.mark.parametrize("activation", ["erf", "relu", "gelu"])
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_small_d_rows_form_their_inner_products_as_the_gemm_route(
    activation, precision, monkeypatch
):
    """At d <= INLINE_DOT_D the closed-form rows form <x, x'> themselves (no GEMM): the values
    equal the GEMM route's (the route every larger d takes) to rounding, the diagonal exactly
    as the float64 diagonal chain, and a pair's value does not depend on its tile."""
    from jacntk.kernels import _compute

    rng = np.random.default_rng(11)
    X = rng.standard_normal((300, 7)).astype(precision)
    X[5] = X[4]  # a duplicate: a collinear off-diagonal pair
    arch = jacntk.MLP(3, activation, sigma_w=1.2, sigma_b=0.2)
    kinds = ("nngp", "ntk")
    inline = jacntk.kernel(arch, X, kind=kinds, precision=precision)
    cross = jacntk.kernel(arch, X[:40], X[100:], kind=kinds, precision=precision)
    monkeypatch.setattr(_compute, "INLINE_DOT_D", 0)
    gemm = jacntk.kernel(arch, X, kind=kinds, precision=precision)
    tol = 1e-14 if precision == "float64" else 2e-6
    for a, b, c in zip(inline, gemm, cross, strict=True):
        assert a.dtype == np.dtype(precision)
        np.testing.assert_allclose(a, b, rtol=0, atol=tol * np.abs(b).max())
        np.testing.assert_array_equal(np.diagonal(a), np.diagonal(b))
        np.testing.assert_array_equal(a, a.T)
        np.testing.assert_allclose(c, a[:40, 100:], rtol=0, atol=tol * np.abs(b).max())
    if precision == "float64":  # tile-independent bit for bit (sums over k in order)
        np.testing.assert_array_equal(cross[1], inline[1][:40, 100:])
