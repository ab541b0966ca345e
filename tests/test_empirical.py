"""Finite networks as ground truth (jacntk.finite; docs/math.md §3.3, §7, §10.5, §10.3).

Exact checks (finite differences, small widths) validate the finite-network machinery itself;
Monte-Carlo checks over wide networks (width 2048, standard error < 1 % of the kernel's scale)
validate the analytic kernels of :func:`jacntk.kernel` against it.  Every Monte-Carlo check uses
the estimated standard errors, never a hand-picked tolerance:

* the max-norm error (the paper's metric) is within 3 standard errors (the largest entrywise
  standard error), and
* every entry is within ``z*`` standard errors, ``z*`` the two-sided Bonferroni bound at family
  level 1 % over the distinct entries (about 3.8 for 78 entries);
* a wrong reference (missing ``phi''`` terms; for ReLU the derivative of the NTK) misses by many
  standard errors, so the checks can fail.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from jacntk import MLP, kernel
from jacntk import finite as E

WIDTH = 2048


def _sphere_points(n: int, d: int, seed: int) -> np.ndarray:
    """``n`` random points with ``|x|^2 = d`` (standardised inputs, as in docs/math.md §10.5)."""
    X = np.random.default_rng(seed).standard_normal((n, d))
    return X * math.sqrt(d) / np.linalg.norm(X, axis=1, keepdims=True)


def _bonferroni_z(n_entries: int, family_level: float = 0.01) -> float:
    return float(norm.ppf(1.0 - family_level / (2.0 * n_entries)))


def _assert_matches(mc: E.MonteCarloKernel, reference: np.ndarray, label: str) -> None:
    """``mc`` agrees with ``reference`` within its Monte-Carlo error (module docstring)."""
    assert mc.relative_stderr < 0.01, f"{label}: MC standard error {mc.relative_stderr:.2%} >= 1%"
    err = np.abs(mc.mean - reference).max()
    se = mc.stderr.max()
    assert err <= 3.0 * se, f"{label}: max-norm error {err:.3g} > 3 standard errors ({se:.3g})"
    iu = np.triu_indices(reference.shape[0])  # the matrices are symmetric
    z = np.abs(mc.zscores(reference))[iu]
    bound = _bonferroni_z(z.size)
    assert z.max() <= bound, f"{label}: entry {z.argmax()} off by {z.max():.2f} > {bound:.2f} SE"


def _assert_misses(mc: E.MonteCarloKernel, wrong: np.ndarray, factor: float, label: str):
    miss = np.abs(mc.mean - wrong).max() / mc.stderr.max()
    assert miss > factor, f"{label}: a wrong kernel is only {miss:.1f} standard errors away"
    return miss


# ---------------------------------------------------------------------------------------------
# Exact properties of one finite network


def _stacked_outputs(net, X):
    values, grads = E.forward(net, X)
    return np.concatenate([values[:, None], grads], axis=1).ravel()


def _parameter_jacobian(net, X, h=1e-6):
    """d F / d theta by central differences (F = (f, grad_x f) point-major)."""
    theta = E.parameter_vector(net)
    J = np.empty((X.shape[0] * (net.d + 1), theta.size))
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = h
        J[:, i] = (
            _stacked_outputs(E.with_parameters(net, theta + e), X)
            - _stacked_outputs(E.with_parameters(net, theta - e), X)
        ) / (2 * h)
    return J


@pytest.mark.parametrize(
    "activation, sigma_b, kappa, kind",
    [
        ("erf", 0.0, 1.0, "ntk"),
        ("gelu", 0.4, 0.7, "ntk"),
        ("tanh", 0.3, 1.3, "ntk"),
        ("relu", 0.2, 1.0, "ntk_truncated"),
    ],
)
def test_empirical_jntk_equals_gram_of_the_parameter_jacobian(activation, sigma_b, kappa, kind):
    # Theta_hat = J(X1) J(X2)^T with J the full parameter Jacobian of (f, grad f), built here
    # by finite differences; empirical_kernel never forms J (per-layer reverse mode).
    arch = MLP(2, activation, sigma_w=1.2, sigma_b=sigma_b, kappa=kappa)
    rng = np.random.default_rng(1)
    X1, X2 = rng.standard_normal((3, 3)), rng.standard_normal((2, 3))
    net = E.init_network(arch, 3, 7, seed=2)
    J1, J2 = _parameter_jacobian(net, X1), _parameter_jacobian(net, X2)
    K = E.empirical_kernel(net, X1, X2, kind=kind, jacobian=True)
    assert K.shape == (3 * 4, 2 * 4)
    np.testing.assert_allclose(K, J1 @ J2.T, rtol=0, atol=1e-8 * np.abs(K).max())
    scalar = E.empirical_kernel(net, X1, X2, kind=kind)
    np.testing.assert_allclose(scalar, K[::4, ::4], rtol=1e-13)


def test_truncated_kernel_drops_exactly_the_second_derivative_terms():
    # For a smooth activation "ntk_truncated" differs from "ntk" (phi'' terms) but the value
    # block is the same; for ReLU (phi'' = 0) the two coincide wherever "ntk" is defined.
    rng = np.random.default_rng(3)
    X = rng.standard_normal((3, 2))
    net = E.init_network(MLP(2, "gelu"), 2, 16, seed=0)
    full = E.empirical_kernel(net, X, kind="ntk", jacobian=True)
    trunc = E.empirical_kernel(net, X, kind="ntk_truncated", jacobian=True)
    np.testing.assert_allclose(full[::3, ::3], trunc[::3, ::3], rtol=1e-13)
    assert np.abs(full - trunc).max() > 1e-3 * np.abs(full).max()
    relu = E.init_network(MLP(2, "relu"), 2, 16, seed=0)
    np.testing.assert_allclose(
        E.empirical_kernel(relu, X, kind="ntk"), E.empirical_kernel(relu, X, kind="ntk_truncated")
    )


def test_input_gradient_matches_finite_differences():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((4, 3))
    net = E.init_network(MLP(3, "silu", sigma_b=0.5, kappa=0.3), 3, 11, seed=5)
    _, grads = E.forward(net, X)
    h = 1e-6
    fd = np.stack(
        [
            (E.forward(net, X + h * e)[0] - E.forward(net, X - h * e)[0]) / (2 * h)
            for e in np.eye(3)
        ],
        axis=1,
    )
    np.testing.assert_allclose(grads, fd, rtol=0, atol=1e-8)


def test_readout_conditional_nngp_is_the_covariance_over_the_readout():
    # F = (f, grad f) is linear in the readout r = (v, b) ~ N(0, I): F = M r, so
    # E_r[F F'^T] = M M'^T = sum_k F(e_k) F'(e_k)^T over the basis readouts e_k, which must
    # equal kappa^2 (alpha^2 A A'^T + sigma_b^2 e0 e0^T) from empirical_kernel(kind="nngp").
    arch = MLP(2, "erf", sigma_b=0.3, kappa=0.8)
    rng = np.random.default_rng(6)
    X1, X2 = rng.standard_normal((2, 3)), rng.standard_normal((3, 3))
    net = E.init_network(arch, 3, 9, seed=7)
    hidden = E.parameter_vector(net)[: -(net.width + 1)]
    total = 0.0
    for readout in np.eye(net.width + 1):
        probe = E.with_parameters(net, np.r_[hidden, readout])
        total = total + np.outer(_stacked_outputs(probe, X1), _stacked_outputs(probe, X2))
    cond = E.empirical_kernel(net, X1, X2, kind="nngp", jacobian=True)
    np.testing.assert_allclose(cond, total, rtol=1e-12, atol=1e-14)


def test_outer_product_and_conditional_estimators_have_the_same_mean():
    # Plain Monte Carlo over initialisations of F F'^T and the readout-conditional covariance
    # estimate the same expectation at any width: their paired difference has mean zero.
    arch = MLP(2, "gelu", sigma_b=0.2)
    X = _sphere_points(2, 3, seed=8)
    common = dict(width=32, n_networks=3000, kinds=("nngp",), seed=9, keep_samples=True)
    outer = E.monte_carlo_kernels(arch, X, estimator="outer", **common)["nngp"]
    cond = E.monte_carlo_kernels(arch, X, estimator="conditional", **common)["nngp"]
    diff = outer.samples - cond.samples
    z = diff.mean(axis=0) / (diff.std(axis=0, ddof=1) / math.sqrt(diff.shape[0]))
    iu = np.triu_indices(X.shape[0] * 4)
    assert np.abs(z[iu]).max() <= _bonferroni_z(iu[0].size)
    assert cond.stderr.max() < 0.5 * outer.stderr.max()  # the point of the conditional one


def test_loss_gradient_matches_finite_differences_of_the_loss():
    arch = MLP(2, "gelu", sigma_w=1.1, sigma_b=0.3, kappa=0.6)
    rng = np.random.default_rng(10)
    X, y = rng.standard_normal((4, 3)), rng.standard_normal(4)
    net = E.init_network(arch, 3, 6, seed=11)
    theta = E.parameter_vector(net)
    for lam in (0.0, 0.7):
        value, gw, gb = E.loss_gradient(net, X, y, jacobian_reg=lam)
        grad = np.concatenate([a.ravel() for pair in zip(gw, gb, strict=True) for a in pair])
        h = 1e-6
        fd = np.empty_like(theta)
        for i in range(theta.size):
            e = np.zeros_like(theta)
            e[i] = h
            fd[i] = (
                E.loss(E.with_parameters(net, theta + e), X, y, jacobian_reg=lam)
                - E.loss(E.with_parameters(net, theta - e), X, y, jacobian_reg=lam)
            ) / (2 * h)
        assert value == pytest.approx(E.loss(net, X, y, jacobian_reg=lam), rel=1e-14)
        np.testing.assert_allclose(grad, fd, rtol=0, atol=1e-8 * np.abs(fd).max())


def test_gradient_descent_follows_the_empirical_kernel_for_one_small_step():
    # One GD step changes F by -(eta/N) Theta_hat D (F - Y) to first order in eta
    # (docs/math.md §8.2).
    arch = MLP(2, "erf", sigma_b=0.1)
    rng = np.random.default_rng(12)
    X, y = rng.standard_normal((3, 2)), rng.standard_normal(3)
    lam, eta = 0.3, 1e-5
    net = E.init_network(arch, 2, 20, seed=13)
    run = E.train(net, X, y, steps=1, jacobian_reg=lam, learning_rate=eta)
    F0 = np.concatenate([run.values[0][:, None], run.gradients[0]], axis=1).ravel()
    F1 = np.concatenate([run.values[1][:, None], run.gradients[1]], axis=1).ravel()
    Y = np.zeros((3, 3))
    Y[:, 0] = y
    D = np.tile([1.0, lam, lam], 3)
    K = E.empirical_kernel(net, X, kind="ntk", jacobian=True)
    predicted = -eta / 3 * K @ (D * (F0 - Y.ravel()))
    np.testing.assert_allclose(F1 - F0, predicted, rtol=1e-4, atol=1e-4 * np.abs(predicted).max())
    assert run.losses[1] < run.losses[0]


# ---------------------------------------------------------------------------------------------
# Wide networks against the analytic kernels


@pytest.mark.parametrize("activation, n_networks", [("erf", 24), ("gelu", 100)])
def test_wide_networks_match_jacobian_nngp_and_jntk(activation, n_networks):
    arch = MLP(2, activation)
    X = _sphere_points(3, 3, seed=14)
    mc = E.monte_carlo_kernels(
        arch, X, width=WIDTH, n_networks=n_networks, kinds=("nngp", "ntk"), seed=15
    )
    for kind in ("nngp", "ntk"):
        _assert_matches(mc[kind], kernel(arch, X, kind=kind, jacobian=True), f"{activation} {kind}")
    # The second-order (phi'') terms of the JNTK are resolved: dropping them misses by far.
    truncated = kernel(arch, X, kind="ntk_truncated", jacobian=True)
    _assert_misses(mc["ntk"], truncated, 10.0, f"{activation} JNTK without phi''")


def _fd_jacobian_blocks(arch, X, kind, h=1e-4):
    """Off-diagonal (d+1)x(d+1) blocks of the scalar kernel's input derivatives, by central
    finite differences of ``kernel(arch, ., ., kind=kind)``: a reference independent of the
    Jacobian code.  Returns (matrix, mask of the off-diagonal blocks)."""
    n, d = X.shape
    steps = np.concatenate([np.zeros((1, d)), h * np.eye(d), -h * np.eye(d)])
    G = np.zeros((n * (d + 1), n * (d + 1)))
    mask = np.zeros_like(G, dtype=bool)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            K = kernel(arch, X[i] + steps, X[j] + steps, kind=kind)
            block = np.empty((d + 1, d + 1))
            block[0, 0] = K[0, 0]
            block[1:, 0] = (K[1 : d + 1, 0] - K[d + 1 :, 0]) / (2 * h)
            block[0, 1:] = (K[0, 1 : d + 1] - K[0, d + 1 :]) / (2 * h)
            block[1:, 1:] = (
                K[1 : d + 1, 1 : d + 1]
                - K[1 : d + 1, d + 1 :]
                - K[d + 1 :, 1 : d + 1]
                + K[d + 1 :, d + 1 :]
            ) / (4 * h * h)
            rows = slice(i * (d + 1), (i + 1) * (d + 1))
            cols = slice(j * (d + 1), (j + 1) * (d + 1))
            G[rows, cols] = block
            mask[rows, cols] = True
    return G, mask


def test_relu_empirical_jntk_is_the_truncated_kernel_not_the_derivative_of_the_ntk():
    arch = MLP(2, "relu", sigma_w=math.sqrt(2.0))
    X = _sphere_points(3, 3, seed=16)
    mc = E.monte_carlo_kernels(
        arch, X, width=WIDTH, n_networks=70, kinds=("nngp", "ntk_truncated"), seed=17
    )
    _assert_matches(mc["nngp"], kernel(arch, X, kind="nngp", jacobian=True), "relu JNNGP")
    truncated = kernel(arch, X, kind="ntk_truncated", jacobian=True)
    _assert_matches(mc["ntk_truncated"], truncated, "relu truncated JNTK")
    # Theorem 3.2 holds for the NNGP (its Jacobian blocks are derivatives of the scalar NNGP)...
    fd_nngp, off = _fd_jacobian_blocks(arch, X, "nngp")
    z_nngp = np.abs(mc["nngp"].zscores(fd_nngp)[off])
    assert z_nngp.max() <= _bonferroni_z(z_nngp.size)
    # ... but the finite ReLU nets' JNTK is NOT d/dx d/dx' of the NTK (docs/math.md §7).
    fd_ntk, off = _fd_jacobian_blocks(arch, X, "ntk")
    gap = np.abs(mc["ntk_truncated"].mean - fd_ntk)[off].max()
    assert gap > 10.0 * mc["ntk_truncated"].stderr[off].max()
    assert gap > 0.03 * np.abs(fd_ntk[off]).max()


def test_monte_carlo_is_reproducible_and_keeps_samples():
    arch = MLP(1, "tanh")
    X = _sphere_points(2, 2, seed=18)
    a = E.monte_carlo_kernel(arch, X, width=8, n_networks=5, kind="ntk", seed=3, keep_samples=True)
    b = E.monte_carlo_kernel(arch, X, width=8, n_networks=5, kind="ntk", seed=3)
    np.testing.assert_array_equal(a.mean, b.mean)
    assert a.samples.shape == (5, 6, 6) and b.samples is None
    np.testing.assert_allclose(a.samples.mean(axis=0), a.mean, rtol=1e-12)
    np.testing.assert_allclose(a.samples.std(axis=0, ddof=1) / math.sqrt(5), a.stderr, rtol=1e-9)
    scalar = E.monte_carlo_kernel(
        arch, X, width=8, n_networks=5, kind="ntk", jacobian=False, seed=3
    )
    np.testing.assert_allclose(scalar.mean, a.mean[::3, ::3], rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Width scalings (docs/math.md §10.3)


def test_width_scaling_exponents_and_limits():
    assert E.NTK_SCALING.limit == "ntk" and E.NTK_SCALING.stationary
    assert E.NTK_SCALING.logit_exponent == 0.0 and E.NTK_SCALING.kernel_exponents == (0.0, 0.0)
    assert E.MEAN_FIELD_SCALING.limit == "mean_field" and not E.MEAN_FIELD_SCALING.stationary
    assert E.MEAN_FIELD_SCALING.logit_exponent == -1.0 and E.MEAN_FIELD_SCALING.stable
    assert E.WidthScaling(-0.75, 0.5, 0.5).limit == "ntk_vanishing_init"
    assert E.WidthScaling(-0.5, 1.0, 0.0).limit == "unstable"
    assert E.WidthScaling(-0.5, -1.0, -1.0).limit == "frozen"
    # NTK_SCALING is the NTK parametrisation of jacntk.MLP, at depth 1.
    net = E.init_network(MLP(1, "erf", sigma_w=1.3), 2, 64, seed=0, scaling=E.NTK_SCALING)
    assert net.multipliers == pytest.approx((1.3 / math.sqrt(2), 1.3 / 8.0))
    assert net.learning_rate_multipliers == (1.0, 1.0)
    mf = E.init_network(MLP(1, "erf"), 2, 64, seed=0, scaling=E.MEAN_FIELD_SCALING)
    assert mf.multipliers[-1] == pytest.approx(1 / 64) and mf.learning_rate_multipliers == (64, 64)


def test_ntk_scaling_keeps_its_kernel_while_mean_field_moves():
    arch = MLP(1, "erf")
    X = np.random.default_rng(19).standard_normal((6, 3))
    y = np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    drift = {}
    for scaling in (E.NTK_SCALING, E.MEAN_FIELD_SCALING):
        for width in (256, 4096):
            runs = [
                E.train(
                    E.init_network(arch, 3, width, seed=s, scaling=scaling),
                    X,
                    y,
                    steps=100,
                    jacobian_reg=0.01,
                    learning_rate=0.5,
                    kernel_steps=(0, 100),
                )
                for s in range(2)
            ]
            assert all(r.losses[-1] < 0.7 * r.losses[0] for r in runs)  # both actually train
            drift[scaling.limit, width] = np.mean([E.relative_drift(r.kernels)[-1] for r in runs])
    # NTK: drift ~ n^-1/2 (16x wider -> ~4x smaller); mean field: O(1) and not shrinking.
    assert drift["ntk", 4096] < 0.5 * drift["ntk", 256]
    assert drift["ntk", 4096] < 0.01
    assert drift["mean_field", 4096] > 1.0
    assert drift["mean_field", 4096] > 0.5 * drift["mean_field", 256]


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.fixture
def small_net():
    return E.init_network(MLP(2, "erf"), 3, 5, seed=0)


@pytest.mark.parametrize(
    "width, match",
    [(0, "width must be an integer >= 1, got 0"), (-3, "got -3"), (2.5, "got 2.5"), (True, "True")],
)
def test_bad_width_is_rejected(width, match):
    with pytest.raises(ValueError, match=match):
        E.init_network(MLP(1, "erf"), 3, width)
    with pytest.raises(ValueError, match=match):
        E.monte_carlo_kernel(MLP(1, "erf"), np.ones((2, 3)), width=width, n_networks=4)


def test_bad_points_are_rejected(small_net):
    X = np.ones((2, 3))
    bad = X.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf.*row 1"):
        E.forward(small_net, bad)
    with pytest.raises(ValueError, match="X2 contains NaN"):
        E.empirical_kernel(small_net, X, bad)
    with pytest.raises(ValueError, match="d = 4 but the network expects d = 3"):
        E.forward(small_net, np.ones((2, 4)))
    with pytest.raises(ValueError, match="2-D"):
        E.forward(small_net, np.ones(3))
    with pytest.raises(ValueError, match="empty"):
        E.empirical_kernel(small_net, np.ones((0, 3)))
    with pytest.raises(ValueError, match="different input dimensions"):
        E.monte_carlo_kernel(MLP(1, "erf"), X, np.ones((2, 4)), width=4, n_networks=2)
    with pytest.raises(ValueError, match="FiniteMLP"):
        E.forward(MLP(1, "erf"), X)


def test_bad_kernel_requests_are_rejected(small_net):
    X = np.ones((2, 3))
    with pytest.raises(ValueError, match="unknown kernel kind 'jntk'"):
        E.empirical_kernel(small_net, X, kind="jntk")
    relu = E.init_network(MLP(2, "relu"), 3, 5, seed=0)
    with pytest.raises(ValueError, match="ntk_truncated"):
        E.empirical_kernel(relu, X, kind="ntk", jacobian=True)
    with pytest.raises(ValueError, match="n_networks must be an integer >= 2, got 1"):
        E.monte_carlo_kernel(MLP(1, "erf"), X, width=4, n_networks=1)
    with pytest.raises(ValueError, match="unknown estimator 'bootstrap'"):
        E.monte_carlo_kernel(MLP(1, "erf"), X, width=4, n_networks=2, estimator="bootstrap")
    with pytest.raises(ValueError, match="kinds is empty"):
        E.monte_carlo_kernels(MLP(1, "erf"), X, width=4, n_networks=2, kinds=())
    with pytest.raises(ValueError, match="one-hidden-layer.*got depth 2"):
        E.init_network(MLP(2, "erf"), 3, 5, scaling=E.MEAN_FIELD_SCALING)
    with pytest.raises(ValueError, match="q_sigma must be a finite number"):
        E.WidthScaling(float("nan"))
    with pytest.raises(ValueError, match="theta must have length"):
        E.with_parameters(small_net, np.ones(3))
    with pytest.raises(ValueError, match=r"reference shape \(3,\) does not match kernels \(2,\)"):
        E.relative_drift(np.ones((4, 2)), reference=np.ones(3))
    with pytest.raises(ValueError, match="reference kernel is zero"):
        E.relative_drift(np.zeros((2, 3)))
    np.testing.assert_allclose(
        E.relative_drift([[1.0, 2.0], [1.0, 2.5], [0.0, 2.0]]), [0, 0.25, 0.5]
    )


def test_bad_training_input_is_rejected(small_net):
    X, y = np.ones((3, 3)), np.zeros(3)
    cases = [
        (dict(y=np.zeros(2)), "y must have length 3"),
        (dict(y=np.array([0.0, np.nan, 1.0])), "y contains NaN"),
        (dict(jacobian_reg=-0.1), "jacobian_reg must be finite and >= 0, got -0.1"),
        (dict(learning_rate=0.0), "learning_rate must be a finite number > 0, got 0.0"),
        (dict(learning_rate=float("inf")), "learning_rate"),
        (dict(steps=-1), "steps must be an integer >= 0, got -1"),
        (dict(record_steps=[0, 11]), r"record_steps must lie in \[0, steps=10\]"),
        (dict(kernel_steps=[1.5]), "kernel_steps must be a 1-D sequence of integers"),
        (dict(X_test=np.ones((2, 2))), "X_test has d = 2"),
    ]
    for override, match in cases:
        kwargs = dict(y=y, steps=10, jacobian_reg=0.1, learning_rate=0.1) | override
        with pytest.raises(ValueError, match=match):
            E.train(small_net, X, kwargs.pop("y"), **kwargs)


def test_diverging_training_names_the_learning_rate():
    rng = np.random.default_rng(20)
    X, y = rng.standard_normal((4, 2)), rng.standard_normal(4)
    net = E.init_network(MLP(2, "erf", sigma_w=1.5), 2, 64, seed=0)
    with pytest.raises(
        ValueError, match=r"diverged at step \d+ \(loss .*learning_rate=1000000.0 is too large"
    ):
        E.train(net, X, y, steps=200, learning_rate=1e6, jacobian_reg=0.1)
