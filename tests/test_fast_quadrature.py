"""The Hermite (Mehler) route of the quadrature activations (docs/activations.md, "The Hermite
route") against its reference, the per-pair 2-D trapezoid rule (``trapezoid_reference``, at
half the registry step, converged to ~1e-14): the
ten moments within the stated bound ``HERMITE_TOL s_ij`` (+ the 1-D quadrature error) over
variances 0.05..30 and correlations up to +-1, and whole kernels (scalar NNGP/NTK, the eight
Jacobian fields of every kind) with the diagonal, duplicates, x' = -x and large variances."""

import dataclasses

import numpy as np
import pytest

import jacntk
from jacntk.kernels._activations import (
    ACT_CODES,
    ERF,
    ERF_BY_QUADRATURE,
    QUADRATURE,
    QUADRATURE_STEP,
    trapezoid_reference,
)
from jacntk.kernels._compute import compute_tile
from jacntk.kernels._fields import _diag_chain, fields_tile, make_plan, scalar_tile
from jacntk.kernels._hermite import (
    HERMITE_TOL,
    MOMENT_ORDERS,
    _hermite_fields_tile,
    _hermite_scalar_tile,
    fields_tile_routed,
    hermite_moments,
    hermite_order,
    hermite_tables,
    scalar_tile_routed,
)
from jacntk.kernels._moments import NTK_JETS, activation_derivatives, gaussian_moments

VARIANCES = (0.05, 0.3, 1.0, 3.0, 10.0, 30.0)
RHOS = (-1.0, -0.999999, -0.9, -0.5, 0.0, 0.3, 0.9, 0.99, 0.999999, 1.0)
#: The stated bound per moment: HERMITE_TOL s_ij plus the 1-D trapezoid error of the
#: coefficients and of the reference itself (measured <= 1e-13 s_ij).
BOUND = HERMITE_TOL + 2e-13


def _norms(act, a, h):
    """``S_o = ||phi^(o)(u)||``, ``u ~ N(0, a)``, o = 0..4, by a fine 1-D trapezoid rule."""
    z = np.arange(-13.0, 13.0, min(h / np.sqrt(a), 0.05) / 4)
    w = np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi) * (z[1] - z[0])
    out = np.empty(5)
    vals = np.empty((z.size, 5))
    for k, zk in enumerate(z):
        activation_derivatives(act, np.sqrt(a) * zk, out)
        vals[k] = out
    return np.sqrt(w @ vals**2)


@pytest.mark.parametrize("name", QUADRATURE)
def test_moments_within_the_stated_bound(name):
    act = ACT_CODES[name]
    h = QUADRATURE_STEP[act]
    norms = {a: _norms(act, a, h) for a in VARIANCES}
    worst, covered, moderate = 0.0, 0, 0
    for a in VARIANCES:
        va = np.array([[a]])
        for b in VARIANCES:
            vb = np.array([[b]])
            K = hermite_order(act, va, vb, h, NTK_JETS)
            ca, ta, _ = hermite_tables(act, va, h, NTK_JETS, K)
            cb, tb, _ = hermite_tables(act, vb, h, NTK_JETS, K)
            s = np.array([norms[a][i] * norms[b][j] for i, j in MOMENT_ORDERS])
            for rho in RHOS:
                c = rho * np.sqrt(a * b)
                F, R = np.empty(10), np.empty(10)
                ok = hermite_moments(c, a, b, ca[0, 0], ta[0, 0], cb[0, 0], tb[0, 0], NTK_JETS, F)
                if abs(rho) <= 0.9:
                    moderate += 1
                    assert ok, (a, b, rho)  # the fast path covers every moderate correlation
                if not ok:
                    continue  # the tiles then take the trapezoid rule itself
                covered += 1
                gaussian_moments(trapezoid_reference(act), c, a, b, NTK_JETS, h / 2, R)
                worst = max(worst, (np.abs(F - R) / s).max())
    assert worst <= BOUND, worst
    assert covered >= moderate + 2 * len(VARIANCES)  # and the diagonal rho = +-1 at small a


@pytest.mark.parametrize("name", QUADRATURE)
def test_diagonal_tables_are_the_exact_moments(name):
    act = ACT_CODES[name]
    h = QUADRATURE_STEP[act]
    v = np.array([VARIANCES])
    _, _, diag = hermite_tables(act, v, h, NTK_JETS, 16)
    for layer, a in enumerate(VARIANCES):
        R = np.empty(10)
        gaussian_moments(trapezoid_reference(act), a, a, a, NTK_JETS, h / 2, R)
        s = np.abs(R).max()
        np.testing.assert_allclose(diag[0, layer], R, rtol=0, atol=1e-13 * s)


def _points(rng, scale):
    X = rng.standard_normal((9, 4))
    X[1] = X[0]  # a duplicate: rho = 1 off the diagonal
    X[3] = -X[2]  # x' = -x
    X[5] = X[4] * (1 + 1e-7)  # near-collinear
    X[8] *= scale  # a large layer variance
    Y = np.vstack([X[:3], -X[3:6], rng.standard_normal((2, 4))])
    return X, Y


def _relative(fast, ref):
    if fast.ndim == 3:
        return max(np.abs(fast[k] - ref[k]).max() / np.abs(ref[k]).max() for k in range(8))
    return np.abs(fast - ref).max() / np.abs(ref).max()


@pytest.mark.parametrize("name", QUADRATURE)
@pytest.mark.parametrize(
    "kind,jacobian",
    [("nngp", False), ("ntk", False), ("nngp", True), ("ntk", True), ("ntk_truncated", True)],
)
def test_kernels_match_the_trapezoid_reference(name, kind, jacobian):
    """Whole kernels: layer variances up to ~30 (sigma_w = 1.5, the scaled point), symmetric
    tiles with the diagonal, a duplicate and x' = -x, and a cross tile."""
    rng = np.random.default_rng(7)
    X, Y = _points(rng, 4.0)
    arch = jacntk.MLP(3, name, sigma_w=1.5, sigma_b=0.1)
    plan = make_plan(arch, kind, jacobian)
    # the reference at half its step: tanh's registry step is converged to 2e-11 only
    ref_plan = dataclasses.replace(plan, act=trapezoid_reference(plan.act), h=plan.h / 2)
    for A, B in ((X, None), (X, Y)):
        fast = compute_tile(arch, A, B, kind=kind, jacobian=jacobian)
        ref = compute_tile(arch, A, B, kind=kind, jacobian=jacobian, plan=ref_plan)
        assert _relative(fast, ref) <= 1e-10, (name, kind, _relative(fast, ref))


def _tile_args(act, X, Y, h, sigma_w=1.3, sigma_b=0.2):
    d = X.shape[1]
    omega, sb2 = sigma_w**2, sigma_b**2
    v1, vp1 = _diag_chain(act, 3, omega, sb2, d, np.einsum("ij,ij->i", X, X), h)
    v2, vp2 = _diag_chain(act, 3, omega, sb2, d, np.einsum("ij,ij->i", Y, Y), h)
    return (3, omega, sb2, 1.0, X @ Y.T, d), (v1, vp1, v2, vp2)


def test_registered_activations_take_the_hermite_route():
    """The public tiles of a registry quadrature code are the Hermite tiles (bit for bit); the
    reference code is not."""
    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((6, 3)), rng.standard_normal((5, 3))
    act = ACT_CODES["tanh"]
    h = QUADRATURE_STEP[act]
    common, (v1, vp1, v2, vp2) = _tile_args(act, X, Y, h)
    for kind in (0, 1):
        np.testing.assert_array_equal(
            scalar_tile_routed(act, kind, *common, v1, v2, h, False),
            _hermite_scalar_tile(act, kind, *common, v1, v2, h, False),
        )
        np.testing.assert_array_equal(
            fields_tile_routed(act, kind, *common, v1, vp1, v2, vp2, h, False),
            _hermite_fields_tile(act, kind, *common, v1, vp1, v2, vp2, h, False),
        )
    ref = scalar_tile(trapezoid_reference(act), 1, *common, v1, v2, h, False)
    assert not np.array_equal(ref, scalar_tile_routed(act, 1, *common, v1, v2, h, False))


def test_hermite_route_reproduces_erf_closed_forms():
    """An independent exact reference: erf's derivative table (``ERF_BY_QUADRATURE``) by the
    Hermite route against erf's closed forms, symmetric and cross, all field kinds."""
    rng = np.random.default_rng(2)
    X, Y = _points(rng, 3.0)
    h = QUADRATURE_STEP[ERF_BY_QUADRATURE]
    for A, B, sym in ((X, X, True), (X, Y, False)):
        common, (v1, vp1, v2, vp2) = _tile_args(ERF, A, B, 0.0)
        for kind in (0, 1, 2):
            exact = fields_tile(ERF, kind, *common, v1, vp1, v2, vp2, 0.0, sym)
            fast = _hermite_fields_tile(ERF_BY_QUADRATURE, kind, *common, v1, vp1, v2, vp2, h, sym)
            assert _relative(fast, exact) <= 1e-11, (kind, _relative(fast, exact))
        for kind in (0, 1):
            exact = scalar_tile(ERF, kind, *common, v1, v2, 0.0, sym)
            fast = _hermite_scalar_tile(ERF_BY_QUADRATURE, kind, *common, v1, v2, h, sym)
            assert _relative(fast, exact) <= 1e-11, (kind, _relative(fast, exact))
