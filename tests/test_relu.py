"""Stable ReLU Jacobian NNGP and truncated JNTK blocks (jacntk.kernels._relu_blocks;
docs/math.md §1.5,
§7)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jacntk import (
    MLP,
    KernelFields,
    augment,
    coordinate_directions,
    kernel,
    kernel_fields,
    random_directions,
    structured_matmul,
)
from jacntk.finite import monte_carlo_kernels
from jacntk.kernels._relu_blocks import pair_basis, relu_stable_blocks
from jacntk.kernels._relu_tiles import (
    _angle_sines_reference,
    hidden_angle_sines,
    relu_pair_blocks,
    relu_pair_matmul,
    relu_projected_kernel,
)

DEPTHS = (1, 2, 3)
SIGMAS = ((1.0, 0.0), (1.4, 0.3))
KINDS = ("nngp", "ntk_truncated")


def _block(G: np.ndarray, i: int, j: int, d: int) -> np.ndarray:
    return G[i * (d + 1) : (i + 1) * (d + 1), j * (d + 1) : (j + 1) * (d + 1)]


def _fd_blocks(arch: MLP, X: np.ndarray, h: float) -> np.ndarray:
    """Central finite differences of the scalar NNGP: (n, d+1, n, d+1) blocks."""
    n, d = X.shape
    steps = np.concatenate([np.zeros((1, d)), h * np.eye(d), -h * np.eye(d)])  # (2d+1, d)
    V = (X[:, None, :] + steps[None]).reshape(-1, d)
    K = kernel(arch, V, V.copy(), kind="nngp").reshape(n, 2 * d + 1, n, 2 * d + 1)
    plus, minus = slice(1, d + 1), slice(d + 1, 2 * d + 1)
    B = np.empty((n, d + 1, n, d + 1))
    B[:, 0, :, 0] = K[:, 0, :, 0]
    B[:, 1:, :, 0] = (K[:, plus, :, 0] - K[:, minus, :, 0]) / (2 * h)
    B[:, 0, :, 1:] = (K[:, 0, :, plus] - K[:, 0, :, minus]) / (2 * h)
    B[:, 1:, :, 1:] = (
        K[:, plus, :, plus] - K[:, plus, :, minus] - K[:, minus, :, plus] + K[:, minus, :, minus]
    ) / (4 * h * h)
    return B


def _diagonal_blocks(arch: MLP, x: np.ndarray, kind: str) -> np.ndarray:
    """docs/math.md §7: Sigma^{l+1}(x,x) = omega/2 Sigma^l(x,x) + sigma_b^2 e0 e0^T, and the
    truncated Theta^{l+1}(x,x) = Sigma^{l+1}(x,x) + omega/2 Theta^l(x,x)."""
    d = x.size
    omega, sb2 = arch.sigma_w**2, arch.sigma_b**2
    E00 = np.zeros((d + 1, d + 1))
    E00[0, 0] = 1.0
    S = omega / d * np.block([[x @ x, x[None, :]], [x[:, None], np.eye(d)]]) + sb2 * E00
    T = S.copy()
    for _ in range(arch.depth):
        S = 0.5 * omega * S + sb2 * E00
        T = S + 0.5 * omega * T
    return arch.kappa**2 * (S if kind == "nngp" else T)


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("sigmas", SIGMAS)
def test_jacobian_nngp_matches_finite_differences_of_scalar_nngp(rng, depth, sigmas):
    arch = MLP(depth, "relu", *sigmas, kappa=0.8)
    X = rng.standard_normal((4, 3))
    if sigmas[1] > 0:
        X[3] = 0.0  # the origin is a smooth point of the kernel when sigma_b > 0
    n, d = X.shape
    G = kernel(arch, X, X.copy(), kind="nngp", jacobian=True)
    fd = _fd_blocks(arch, X, h=1e-4)
    worst = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                ref = fd[i, :, j, :]
                err = np.abs(_block(G, i, j, d) - ref).max() / np.abs(ref).max()
                worst = max(worst, err)
    assert worst <= 1e-6, f"max relative error vs finite differences {worst:.2e}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("sigmas", SIGMAS)
def test_diagonal_blocks_are_exact(rng, kind, depth, sigmas):
    arch = MLP(depth, "relu", *sigmas, kappa=1.3)
    X = rng.standard_normal((3, 5))
    d = X.shape[1]
    for G in (
        kernel(arch, X, kind=kind, jacobian=True),
        kernel(arch, X, X.copy(), kind=kind, jacobian=True),
    ):
        for i in range(X.shape[0]):
            ref = _diagonal_blocks(arch, X[i], kind)
            assert np.abs(_block(G, i, i, d) - ref).max() <= 1e-14 * np.abs(ref).max()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sigmas", SIGMAS)
def test_blocks_converge_to_diagonal_block_at_rate_eps(rng, kind, sigmas):
    """x' = x + eps v, eps = 1e-3 ... 1e-9: |B(x, x') - B(x, x)| / eps tends to a finite limit
    (the one-sided directional derivative) with an O(eps) correction — no blow-up."""
    d = 4
    x = rng.standard_normal(d)
    v = rng.standard_normal(d)
    v /= np.linalg.norm(v)
    epsilons = 10.0 ** -np.arange(3, 10)
    for depth in DEPTHS:
        arch = MLP(depth, "relu", *sigmas)
        diag = _diagonal_blocks(arch, x, kind)
        scale = np.abs(diag).max()
        ratio = np.array(
            [
                np.abs(
                    kernel(arch, x[None], (x + e * v)[None], kind=kind, jacobian=True) - diag
                ).max()
                / (scale * e)
                for e in epsilons
            ]
        )
        assert np.all(np.isfinite(ratio)) and ratio.min() > 0.01, ratio
        limit = ratio[-1]
        # relative deviation from the limit shrinks like eps (constant measured <= 65)
        assert np.all(np.abs(ratio / limit - 1.0) <= 300.0 * epsilons + 1e-6), ratio


def _mp_fields_block(arch: MLP, kind: str, x: np.ndarray, y: np.ndarray, mp) -> np.ndarray:
    """The (p, q, r) jet recursion (docs/math.md §5.2) and block formula (docs/math.md §4.2) in
    60-digit
    arithmetic: an independent reference free of rounding trouble at small angles."""
    d = x.size
    X = [mp.mpf(float(t)) for t in x]
    Y = [mp.mpf(float(t)) for t in y]
    p, q, r = (
        mp.fsum(a * b for a, b in zip(U, W, strict=True)) for U, W in ((X, Y), (X, X), (Y, Y))
    )
    om, sb2 = mp.mpf(arch.sigma_w) ** 2, mp.mpf(arch.sigma_b) ** 2
    S = [om * p / d + sb2, om / d] + [mp.mpf(0)] * 6
    T = list(S)
    a, b, aq, br = om * q / d + sb2, om * r / d + sb2, om / d, om / d
    for _ in range(arch.depth):
        c, cp, cq, cr, cpp, cpq, cpr, cqr = S
        sdet = mp.sqrt(a * b - c * c)
        cos_t = c / mp.sqrt(a * b)
        theta = mp.acos(cos_t)
        F00 = (sdet + (mp.pi - theta) * c) / (2 * mp.pi)
        F11 = (mp.pi - theta) / (2 * mp.pi)
        F20, F02, F22 = sdet / (2 * mp.pi * a), sdet / (2 * mp.pi * b), 1 / (2 * mp.pi * sdet)
        F31, F13 = -c / (2 * mp.pi * a * sdet), -c / (2 * mp.pi * b * sdet)
        S = [
            om * F00 + sb2,
            om * F11 * cp,
            om * (F11 * cq + F20 * aq / 2),
            om * (F11 * cr + F02 * br / 2),
            om * (F22 * cp * cp + F11 * cpp),
            om * (F22 * cp * cq + F31 * cp * aq / 2 + F11 * cpq),
            om * (F22 * cp * cr + F13 * cp * br / 2 + F11 * cpr),
            om
            * (
                F22 * cq * cr
                + F13 * cq * br / 2
                + F31 * cr * aq / 2
                + F22 * aq * br / 4
                + F11 * cqr
            ),
        ]
        T = [S[k] + om * F11 * T[k] for k in range(8)]
        a, aq, b, br = om * a / 2 + sb2, om * aq / 2, om * b / 2 + sb2, om * br / 2
    K, Kp, Kq, Kr, Kpp, Kpq, Kpr, Kqr = [
        mp.mpf(arch.kappa) ** 2 * t for t in (S if kind == "nngp" else T)
    ]
    B = [[K] + [Kp * X[j] + 2 * Kr * Y[j] for j in range(d)]]
    for i in range(d):
        B.append(
            [Kp * Y[i] + 2 * Kq * X[i]]
            + [
                (Kp if i == j else 0)
                + Kpp * Y[i] * X[j]
                + 2 * Kpq * X[i] * X[j]
                + 2 * Kpr * Y[i] * Y[j]
                + 4 * Kqr * X[i] * Y[j]
                for j in range(d)
            ]
        )
    return np.array([[float(t) for t in row] for row in B])


@pytest.mark.parametrize("kind", KINDS)
def test_near_collinear_blocks_match_60_digit_reference(rng, kind):
    """x' = x + eps v and x' = -x + eps v, eps = 1e-1 ... 1e-9: error <= 1e-14 of the scale."""
    mp = pytest.importorskip("mpmath", reason="mpmath provides the high-precision reference")
    d = 4
    x = rng.standard_normal(d)
    v = rng.standard_normal(d)
    v /= np.linalg.norm(v)
    worst = 0.0
    with mp.workdps(60):
        for depth in DEPTHS:
            for sigmas in SIGMAS:
                arch = MLP(depth, "relu", *sigmas, kappa=0.9)
                for e in 10.0 ** -np.arange(1, 11, 2):
                    for y in (x + e * v, -x + e * v):  # near x' = x and near x' = -x
                        ref = _mp_fields_block(arch, kind, x, y, mp)
                        got = kernel(arch, x[None], y[None], kind=kind, jacobian=True)
                        # the Gram's scale: sqrt of the two diagonal blocks' sizes (near
                        # x' = -x without bias the block itself vanishes like eps)
                        scale = math.sqrt(
                            np.abs(_diagonal_blocks(arch, x, kind)).max()
                            * np.abs(_diagonal_blocks(arch, y, kind)).max()
                        )
                        worst = max(worst, np.abs(got - ref).max() / scale)
    assert worst <= 1e-14, f"max relative error vs 60-digit reference {worst:.2e}"


def _layer_one(arch: MLP, X: np.ndarray) -> np.ndarray:
    """Sigma^1 = Theta^1 for all pairs of X: (n (d+1), n (d+1)) (docs/math.md §3.2)."""
    n, d = X.shape
    s = arch.sigma_w**2 / d
    G = np.zeros((n, d + 1, n, d + 1))
    G[:, 0, :, 0] = s * X @ X.T + arch.sigma_b**2
    G[:, 0, :, 1:] = s * X[:, None, :]
    G[:, 1:, :, 0] = s * np.broadcast_to(X[None, :, :], (n, n, d)).transpose(0, 2, 1)
    G[:, 1:, :, 1:] = s * np.eye(d)[None, :, None, :]
    return G.reshape(n * (d + 1), n * (d + 1))


@pytest.mark.parametrize("depth", (1, 2))
def test_layer_step_matches_monte_carlo_over_layer_gp(depth):
    """One ReLU layer step by Monte Carlo: sample (G(x), G(x')) ~ N(0, Sigma^l) and average
    omega 1{g>0} 1{g'>0} G G'^T (+ omega 1{g>0} 1{g'>0} Theta^l for the truncated JNTK)."""
    arch = MLP(depth, "relu", 1.2, 0.4)
    prev = MLP(depth - 1, "relu", 1.2, 0.4) if depth > 1 else None
    rng = np.random.default_rng(7)
    d = 3
    X = rng.standard_normal((2, d))  # a moderate angle (~70 degrees)
    S_prev = _layer_one(arch, X) if prev is None else kernel(prev, X, kind="nngp", jacobian=True)
    T_prev = (S_prev if prev is None else kernel(prev, X, kind="ntk_truncated", jacobian=True))[
        : d + 1, d + 1 :
    ]
    w, V = np.linalg.eigh(0.5 * (S_prev + S_prev.T))
    root = V * np.sqrt(np.clip(w, 0.0, None))
    omega, sb2 = arch.sigma_w**2, arch.sigma_b**2
    n_samples, chunk = 400_000, 100_000
    s1 = {k: np.zeros((d + 1, d + 1)) for k in KINDS}
    s2 = {k: np.zeros((d + 1, d + 1)) for k in KINDS}
    for _ in range(n_samples // chunk):
        Z = rng.standard_normal((chunk, 2 * (d + 1))) @ root.T
        G, Gp = Z[:, : d + 1], Z[:, d + 1 :]
        both = (G[:, 0] > 0) & (Gp[:, 0] > 0)
        sample = omega * both[:, None, None] * (G[:, :, None] * Gp[:, None, :])
        samples = {"nngp": sample, "ntk_truncated": sample + omega * both[:, None, None] * T_prev}
        for k in KINDS:
            s1[k] += samples[k].sum(axis=0)
            s2[k] += (samples[k] ** 2).sum(axis=0)
    for kind in KINDS:
        mean = s1[kind] / n_samples
        stderr = np.sqrt((s2[kind] / n_samples - mean**2) / n_samples)
        mean[0, 0] += sb2
        got = kernel(arch, X, kind=kind, jacobian=True)[: d + 1, d + 1 :]
        z = np.abs(got - mean) / stderr
        assert z.max() <= 5.0, (kind, z.max())
        assert stderr.max() <= 0.01 * np.abs(got).max()


def test_wide_relu_networks_follow_stable_blocks():
    """Finite ReLU nets of width 2048 (jacntk.finite): the empirical Jacobian NNGP and the
    autodiff JNTK (phi'' = 0) match the stable blocks within 4 standard errors, including a
    pair at distance 1e-6 (where the field formula cancels)."""
    arch = MLP(2, "relu", 1.2, 0.3)
    rng = np.random.default_rng(3)
    d = 3
    x = rng.standard_normal(d)
    X = np.stack([x, x + 1e-6 * rng.standard_normal(d), rng.standard_normal(d)])
    mc = monte_carlo_kernels(
        arch, X, width=2048, n_networks=10, kinds=KINDS, jacobian=True, seed=11
    )
    for kind in KINDS:
        got = kernel(arch, X, kind=kind, jacobian=True)
        assert mc[kind].relative_stderr < 0.02, kind
        assert np.abs(mc[kind].zscores(got)).max() <= 4.0, kind


def test_true_relu_jntk_raises_explanatory_error():
    X = np.eye(3)
    with pytest.raises(ValueError, match="ntk_truncated"):
        kernel(MLP(2, "relu"), X, kind="ntk", jacobian=True)
    with pytest.raises(ValueError, match="infinite"):
        relu_stable_blocks(MLP(1, "relu"), X, kind="ntk")


def test_bad_input_is_rejected_with_clear_errors():
    arch = MLP(2, "relu")
    good = np.ones((2, 3))
    with pytest.raises(ValueError, match="NaN or inf"):
        kernel(arch, np.array([[1.0, np.nan, 0.0]]), kind="nngp", jacobian=True)
    with pytest.raises(ValueError, match="different input dimensions"):
        kernel(arch, good, np.ones((2, 4)), kind="nngp", jacobian=True)
    with pytest.raises(ValueError, match="empty"):
        kernel(arch, np.ones((0, 3)), kind="nngp", jacobian=True)
    with pytest.raises(ValueError, match="unknown kernel kind"):
        kernel(arch, good, kind="ntk_trunc", jacobian=True)
    with pytest.raises(ValueError, match="relu MLP"):
        relu_stable_blocks(MLP(2, "erf"), good)


@pytest.mark.parametrize("kind", KINDS)
def test_value_entries_equal_scalar_kernel_and_matrix_is_symmetric(rng, kind):
    arch = MLP(3, "relu", 1.1, 0.2, kappa=0.7)
    X = rng.standard_normal((5, 4))
    X[1] = 0.0
    X[2] = 2.5 * X[0]  # collinear pair
    d = X.shape[1]
    G = kernel(arch, X, kind=kind, jacobian=True)
    scalar = kernel(arch, X, kind="nngp" if kind == "nngp" else "ntk")
    np.testing.assert_allclose(G[:: d + 1, :: d + 1], scalar, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(G, G.T, rtol=0, atol=1e-15 * np.abs(G).max())
    Y = rng.standard_normal((2, 4))
    np.testing.assert_allclose(
        kernel(arch, X, Y, kind=kind, jacobian=True),
        kernel(arch, Y, X, kind=kind, jacobian=True).T,
        rtol=0,
        atol=1e-15 * np.abs(G).max(),
    )


def test_pair_basis_is_orthonormal_and_spans_both_points(rng):
    X1 = rng.standard_normal((3, 5))
    X2 = np.vstack([rng.standard_normal((2, 5)), 2.0 * X1[0], X1[1] + 1e-9])
    X1[2] = 0.0
    u1, u2, inv = pair_basis(X1[:, None, :], X2[None, :, :])
    u1 = u1[:, 0, :]
    for i in range(3):
        for j in range(4):
            Q = np.stack([u1[i], u2[i, j]])
            x, y = X1[i], X2[j]
            np.testing.assert_allclose(x, inv["xi1"][i, j] * u1[i], atol=1e-14)
            np.testing.assert_allclose(
                y, inv["xi1p"][i, j] * u1[i] + inv["xi2p"][i, j] * u2[i, j], atol=1e-14
            )
            norms = np.linalg.norm(Q, axis=1)
            assert np.all((np.abs(norms - 1) < 1e-15) | (norms == 0))
            assert abs(Q[0] @ Q[1]) < 1e-15
    # x' = 2x: the orthogonal part is rounding noise (u2 is then any unit vector orthogonal to u1)
    assert inv["xi2p"][0, 2] <= 1e-15 * np.linalg.norm(X2[2])
    assert np.all(u2[2] == 0.0) or np.all(inv["xi1"][2] == 0.0)


@pytest.mark.parametrize("kind", KINDS)
def test_stable_blocks_equal_field_blocks_at_moderate_angles(rng, kind):
    """Away from x' = x the (p, q, r) fields are accurate, and both routes agree."""
    X1 = rng.standard_normal((3, 4))
    X2 = rng.standard_normal((2, 4))
    for depth in DEPTHS:
        arch = MLP(depth, "relu", 1.4, 0.3, kappa=0.7)
        ref = augment(kernel_fields(arch, X1, X2, kind=kind), X1, X2)
        got = kernel(arch, X1, X2, kind=kind, jacobian=True)
        assert np.abs(got - ref).max() <= 1e-13 * np.abs(ref).max()


def test_one_hidden_layer_closed_form_of_math_md(rng):
    """docs/math.md §7: E[1{w.x>0} 1{w.x'>0} w w^T] = (pi - theta)/(2 pi) I + sin(theta)/(2 pi)
    [cos(theta) (xx^T - ee^T) + sin(theta) (xe^T + ex^T)] (unit x, x', sigma_b = 0)."""
    d = 5
    x, y = rng.standard_normal((2, d))
    x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
    theta = math.acos(x @ y)
    e = (y - math.cos(theta) * x) / math.sin(theta)
    ref = (math.pi - theta) / (2 * math.pi) * np.eye(d) + math.sin(theta) / (2 * math.pi) * (
        math.cos(theta) * (np.outer(x, x) - np.outer(e, e))
        + math.sin(theta) * (np.outer(x, e) + np.outer(e, x))
    )
    got = kernel(MLP(1, "relu", d**0.25), x[None], y[None], kind="nngp", jacobian=True)
    np.testing.assert_allclose(got[1:, 1:], ref, atol=1e-15)


def _gram_with_near_pairs(rng, d: int = 4) -> np.ndarray:
    X = rng.standard_normal((6, d))
    X[1] = X[0] + 1e-7 * rng.standard_normal(d)  # near duplicate
    X[2] = X[0].copy()  # exact duplicate
    X[3] = -X[4] + 1e-6 * rng.standard_normal(d)  # near antipodal
    return X


@pytest.mark.parametrize("kind", KINDS)
def test_field_product_with_stable_correction_of_flagged_pairs_is_accurate(rng, kind):
    """Proposed treatment for the structured product (docs/math.md §6.1): zero the fields of the
    pairs ``hidden_angle_sines`` flags and add ``relu_pair_matmul`` for them."""
    arch = MLP(3, "relu", 1.3, 0.0, kappa=0.8)
    X = _gram_with_near_pairs(rng)
    d = X.shape[1]
    V = rng.standard_normal((X.shape[0] * (d + 1), 3))
    dense = kernel(arch, X, kind=kind, jacobian=True)
    ref = dense @ V
    flagged = hidden_angle_sines(arch, X) < 1e-2
    rows, cols = np.nonzero(flagged)
    assert {(0, 1), (1, 0), (3, 4), (4, 3), (0, 2)} <= set(
        zip(rows.tolist(), cols.tolist(), strict=True)
    )
    fields = kernel_fields(arch, X, kind=kind)
    plain = structured_matmul(fields, X, X, V)
    data = fields.data.copy()
    data[:, flagged] = 0.0
    fixed = structured_matmul(KernelFields(data, kind), X, X, V) + relu_pair_matmul(
        arch, X, None, rows, cols, V, kind=kind
    )
    assert np.abs(fixed - ref).max() <= 1e-14 * np.abs(ref).max()
    # the plain field product is finite here but only accurate to ~1e-7 (reported, not tested)
    assert np.all(np.isfinite(plain))
    # every pair through relu_pair_matmul equals the dense product
    rows, cols = np.nonzero(np.ones(flagged.shape, dtype=bool))
    np.testing.assert_allclose(
        relu_pair_matmul(arch, X, None, rows, cols, V[:, 0], kind=kind),
        ref[:, 0],
        rtol=0,
        atol=1e-14 * np.abs(ref).max(),
    )


@pytest.mark.parametrize("sigma_b", (0.0, 0.3))
def test_numba_angle_sines_match_numpy_reference_for_all_and_aligned_pairs(rng, sigma_b):
    arch = MLP(3, "relu", 1.3, sigma_b)
    X = _gram_with_near_pairs(rng)
    X[5] = 0.0  # no angle without bias: sine 1
    Y = np.vstack([rng.standard_normal((3, 4)), X[:2] + 1e-9])
    for A, B in ((X, None), (X, Y)):
        ref = _angle_sines_reference(arch, A, B)
        np.testing.assert_allclose(hidden_angle_sines(arch, A, B), ref, rtol=0, atol=1e-15)
    aligned = hidden_angle_sines(arch, X[:5], Y, aligned=True)
    want = np.diag(_angle_sines_reference(arch, X[:5], Y))
    np.testing.assert_allclose(aligned, want, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="equally many points"):
        hidden_angle_sines(arch, X, Y, aligned=True)


@pytest.mark.parametrize("kind", KINDS)
def test_pair_blocks_equal_blocks_of_dense_kernel(rng, kind):
    arch = MLP(2, "relu", 1.3, 0.2, kappa=0.7)
    X = _gram_with_near_pairs(rng)
    Y = np.vstack([rng.standard_normal((2, 4)), X[3] + 1e-8])
    n, m, w = X.shape[0], Y.shape[0], X.shape[1] + 1
    dense = kernel(arch, X, Y, kind=kind, jacobian=True).reshape(n, w, m, w)
    rows, cols = np.array([0, 3, 5, 3]), np.array([2, 2, 0, 1])
    got = relu_pair_blocks(arch, X, Y, rows, cols, kind=kind)
    np.testing.assert_allclose(
        got, dense[rows, :, cols, :], rtol=0, atol=1e-15 * np.abs(dense).max()
    )
    assert relu_pair_blocks(arch, X, Y, [], [], kind=kind).shape == (0, w, w)
    with pytest.raises(ValueError, match="out of range"):
        relu_pair_blocks(arch, X, Y, [6], [0], kind=kind)


def test_relu_pair_matmul_rejects_bad_pairs_and_vectors():
    arch = MLP(2, "relu")
    X = np.eye(3)
    V = np.ones(12)
    with pytest.raises(ValueError, match="out of range"):
        relu_pair_matmul(arch, X, None, [0, 3], [0, 1], V)
    with pytest.raises(ValueError, match="differ in length"):
        relu_pair_matmul(arch, X, None, [0, 1], [0], V)
    with pytest.raises(ValueError, match="length 12"):
        relu_pair_matmul(arch, X, None, [0], [0], np.ones(11))
    with pytest.raises(ValueError, match="NaN or inf"):
        relu_pair_matmul(arch, X, None, [0], [0], np.full(12, np.nan))
    with pytest.raises(ValueError, match="ntk_truncated"):
        relu_pair_matmul(arch, X, None, [0], [0], V, kind="ntk")


@pytest.mark.parametrize("kind", KINDS)
def test_antipodal_pair_is_finite_and_continuous(rng, kind):
    """x' = -x without bias: the first hidden layer's angle is pi; the block is finite (0 at
    depth 1) and the limit of x' = -x + eps v."""
    d = 4
    x = rng.standard_normal(d)
    v = rng.standard_normal(d)
    for depth in DEPTHS:
        arch = MLP(depth, "relu", 1.3, 0.0)
        scale = np.abs(_diagonal_blocks(arch, x, kind)).max()
        at = kernel(arch, x[None], -x[None], kind=kind, jacobian=True)
        near = kernel(arch, x[None], (-x + 1e-9 * v)[None], kind=kind, jacobian=True)
        assert np.all(np.isfinite(at))
        assert np.abs(at - near).max() <= 1e-8 * scale
        if depth == 1:
            assert np.abs(at).max() <= 1e-15 * scale


@pytest.mark.parametrize("kind", KINDS)
def test_numba_kernel_matches_numpy_reference(rng, kind):
    arch = MLP(3, "relu", 1.2, 0.1, kappa=0.6)
    X = _gram_with_near_pairs(rng, d=5)
    X[5] = 0.0
    Y = np.vstack([rng.standard_normal((2, 5)), X[0] + 1e-8])
    for A, B in ((X, None), (X, Y)):
        got = kernel(arch, A, B, kind=kind, jacobian=True)
        ref = relu_stable_blocks(arch, A, B, kind=kind).dense()
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-14 * np.abs(ref).max())


@pytest.mark.parametrize("sigma_b", (0.0, 0.4))
def test_one_dimensional_inputs_match_finite_differences(sigma_b):
    """d = 1: every pair is collinear or antipodal (u2 = 0); the field route fails here
    (ZeroDivisionError at x' = -c x without bias)."""
    X = np.array([[0.7], [-1.3], [2.1]])
    for depth in DEPTHS:
        arch = MLP(depth, "relu", 1.2, sigma_b)
        G = kernel(arch, X, X.copy(), kind="nngp", jacobian=True).reshape(3, 2, 3, 2)
        fd = _fd_blocks(arch, X, 1e-4)
        for i in range(3):
            for j in range(3):
                if i != j:
                    # kernel scale: at depth 1 without bias an antipodal block is exactly 0
                    scale = math.sqrt(np.abs(G[i, :, i, :]).max() * np.abs(G[j, :, j, :]).max())
                    assert np.abs(G[i, :, j, :] - fd[i, :, j, :]).max() <= 1e-6 * scale


@pytest.mark.parametrize("kind", KINDS)
def test_projected_blocks_equal_dense_blocks_times_directions(rng, kind):
    arch = MLP(2, "relu", 1.3, 0.2, kappa=0.9)
    X = _gram_with_near_pairs(rng, d=4)
    n, d = X.shape
    U = random_directions(n, 2, d, seed=1)
    dense = kernel(arch, X, kind=kind, jacobian=True).reshape(n, d + 1, n, d + 1)
    E = np.zeros((n, d + 1, 3))  # per point: columns e0, (0, u_1), (0, u_2)
    E[:, 0, 0] = 1.0
    E[:, 1:, 1:] = U.transpose(0, 2, 1)
    ref = np.einsum("iak,iajb,jbl->ikjl", E, dense, E).reshape(n * 3, n * 3)
    got = relu_projected_kernel(arch, X, None, U, kind=kind)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-14 * np.abs(ref).max())
    Y = rng.standard_normal((3, d))
    V = coordinate_directions(3, [0, 3], d)
    cross = relu_projected_kernel(arch, X, Y, U, V, kind=kind)
    full = kernel(arch, X, Y, kind=kind, jacobian=True).reshape(n, d + 1, 3, d + 1)
    idx = [0, 1, 4]  # value, d/dx_0, d/dx_3
    np.testing.assert_allclose(
        cross.reshape(n, 3, 3, 3)[:, :, :, :],
        np.einsum("iak,iajb->ikjb", E, full)[:, :, :, idx],
        rtol=0,
        atol=1e-14 * np.abs(full).max(),
    )
    with pytest.raises(ValueError, match="different numbers of directions"):
        relu_projected_kernel(arch, X, Y, U, V[:, :1], kind=kind)
