"""GELU's closed-form Gaussian moments (docs/activations.md, "GELU in closed form") against the
trapezoid rule over gelu's derivative table (the test code ``GELU_BY_QUADRATURE``), moment by
moment and through whole kernels: scalar NNGP and NTK, and the Jacobian fields of every kind.

The reference is the quadrature that was gelu's route before (converged to ~1e-14 relative,
tests/test_moments.py), so a wrong sign, factor or term in any closed form fails here.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import jacntk
from jacntk.kernels._activations import GELU, GELU_BY_QUADRATURE, QUADRATURE_STEP
from jacntk.kernels._compute import compute_tile
from jacntk.kernels._fields import _diag_chain, make_plan
from jacntk.kernels._moments import (
    JETS,
    NTK_JETS,
    SCALAR,
    gaussian_moments,
    gelu_layer_row,
)
from jacntk.kernels._reference import derivatives

#: ``(i, j)`` of the ten moments, in the order of the array ``F``.
ORDERS = ((0, 0), (1, 1), (2, 0), (0, 2), (2, 2), (3, 1), (1, 3), (3, 3), (4, 2), (2, 4))
VARIANCES = (0.05, 0.2, 1.0, 3.0, 10.0, 30.0)
RHOS = (-1.0, -0.999999, -0.9, -0.5, -0.1, 0.0, 0.3, 0.8, 0.999999, 1.0)
H = QUADRATURE_STEP[GELU_BY_QUADRATURE]
TOL = 1e-12


def _moments(act, c, a, b, order=NTK_JETS):
    F = np.full(10, np.nan)
    gaussian_moments(act, c, a, b, order, H, F)
    return F


def _cases():
    """Every pair of variances and correlation, exactly +-1 included (``c = +-sqrt(ab)``), plus
    the diagonal ``x' = x`` (``c = a = b``) and ``x' = -x`` (``c = -a``, ``a = b``) as the
    kernels pass them."""
    for a in VARIANCES:
        for b in VARIANCES:
            for rho in RHOS:
                yield rho * np.sqrt(a * b), a, b
        yield a, a, a
        yield -a, a, a


def _rms_table(a):
    """``sqrt(E[phi^(i)(u)^2])``, ``u ~ N(0, a)``, i = 0..4, by a fine 1-D trapezoid rule on the
    NumPy derivative table (independent of both routes under test)."""
    s = np.sqrt(a)
    u = np.linspace(-12.0 * s, 12.0 * s, 24001)
    w = np.exp(-0.5 * u * u / a)
    w /= w.sum()
    return np.sqrt([np.sum(w * g * g) for g in derivatives("gelu", u)])


def test_closed_forms_match_the_quadrature_moment_by_moment():
    """``|F_closed - F_quad| <= 1e-12 s_ij`` with the Cauchy-Schwarz scale
    ``s_ij = ||phi^(i)(u)|| ||phi^(j)(u')|| >= |F^{ij}|`` (moments that vanish, e.g. F31 at
    ``c = 0`` or F00 at its sign change, have no relative error), and ``1e-12`` relative
    wherever ``|F^{ij}| >= s_ij / 100``."""
    rms = {a: _rms_table(a) for a in VARIANCES}
    worst_scaled = worst_rel = 0.0
    for c, a, b in _cases():
        closed, quad = _moments(GELU, c, a, b), _moments(GELU_BY_QUADRATURE, c, a, b)
        assert np.isfinite(closed).all(), (c, a, b)
        scale = np.array([rms[a][i] * rms[b][j] for i, j in ORDERS])
        err = np.abs(closed - quad)
        assert (np.abs(quad) <= scale * (1 + 1e-9)).all()  # the scale bounds the moment
        worst_scaled = max(worst_scaled, (err / scale).max())
        big = np.abs(quad) >= scale / 100
        worst_rel = max(worst_rel, (err[big] / np.abs(quad[big])).max())
    assert worst_scaled <= TOL, worst_scaled
    assert worst_rel <= TOL, worst_rel


@pytest.mark.parametrize("order,count", [(SCALAR, 2), (JETS, 7), (NTK_JETS, 10)])
def test_each_order_fills_exactly_its_moments(order, count):
    F = _moments(GELU, 0.4, 1.3, 0.7, order)
    assert np.isfinite(F[:count]).all() and np.isnan(F[count:]).all()
    np.testing.assert_array_equal(F[:count], _moments(GELU, 0.4, 1.3, 0.7)[:count])


def test_closed_forms_obey_prices_theorem():
    """``d/dc F^{ij} = F^{i+1,j+1}``, ``d/da F^{ij} = F^{i+2,j} / 2`` and ``d/db F^{ij} =
    F^{i,j+2} / 2`` among the closed forms, by central differences."""
    e = 1e-5
    for c, a, b in ((0.4, 1.1, 0.9), (-2.0, 3.0, 2.5), (0.1, 0.05, 0.3)):
        F = _moments(GELU, c, a, b)
        dc = (_moments(GELU, c + e, a, b) - _moments(GELU, c - e, a, b)) / (2 * e)
        da = (_moments(GELU, c, a + e, b) - _moments(GELU, c, a - e, b)) / (2 * e)
        db = (_moments(GELU, c, a, b + e) - _moments(GELU, c, a, b - e)) / (2 * e)
        # (derivative, index differentiated, index it must equal, factor)
        relations = [
            (dc, 0, 1, 1.0), (dc, 1, 4, 1.0), (dc, 2, 5, 1.0), (dc, 3, 6, 1.0), (dc, 4, 7, 1.0),
            (dc, 5, 8, 1.0), (dc, 6, 9, 1.0), (da, 0, 2, 0.5), (db, 0, 3, 0.5), (da, 1, 5, 0.5),
            (db, 1, 6, 0.5), (da, 4, 8, 0.5), (db, 4, 9, 0.5),
        ]  # fmt: skip
        for D, i, k, f in relations:
            assert abs(D[i] - f * F[k]) <= 1e-8 * max(1.0, abs(F[k])), (c, a, b, i, k)


def test_vectorised_row_matches_the_per_pair_moments():
    """``gelu_layer_row`` (the scalar tiles' branch-free row) against ``_gelu_moments``."""
    rng = np.random.default_rng(5)
    vi, v2 = 2.7, np.concatenate([rng.uniform(0.05, 30.0, 61), [2.7, 2.7]])
    rho = np.concatenate([rng.uniform(-1.0, 1.0, 61), [1.0, -1.0]])
    c = rho * np.sqrt(vi * v2)
    th = rng.uniform(0.5, 2.0, c.size)
    omega, sb2 = 1.7, 0.1
    want_c = np.empty_like(c)
    want_th = np.empty_like(c)
    for j in range(c.size):
        F = _moments(GELU, c[j], vi, v2[j], SCALAR)
        want_c[j] = omega * F[0] + sb2
        want_th[j] = want_c[j] + omega * F[1] * th[j]
    gelu_layer_row(c, th, v2, vi, omega, sb2)
    np.testing.assert_allclose(c, want_c, rtol=1e-13)
    np.testing.assert_allclose(th, want_th, rtol=1e-13)


def _points():
    """Points whose layer variances span ~0.05..30 over the architectures below, with ``x' = x``
    (the symmetric diagonal), ``x' = -x`` and near-duplicates among the pairs."""
    rng = np.random.default_rng(17)
    d = 5
    X = rng.standard_normal((7, d)) * np.array([0.15, 0.5, 1.0, 1.0, 2.0, 3.0, 4.0])[:, None]
    X[3] = -X[2]
    X[6] = X[5] * (1 + 1e-9)
    Y = np.vstack([-X[:4], rng.standard_normal((2, d)) * 2.5])
    return X, Y


ARCHS = [
    jacntk.MLP(3, "gelu", sigma_w=1.0, sigma_b=0.0, kappa=0.9),
    jacntk.MLP(3, "gelu", sigma_w=1.6, sigma_b=0.3),
    jacntk.MLP(2, "gelu", sigma_w=2.5, sigma_b=0.8, kappa=1.3),
]


def _quadrature_tile(arch, X1, X2, kind, jacobian):
    """The same tile through the trapezoid rule: the plan of ``arch`` with gelu's code replaced
    by ``GELU_BY_QUADRATURE`` (the generic per-pair tiles)."""
    plan = dataclasses.replace(
        make_plan(arch, kind, jacobian), act=GELU_BY_QUADRATURE, h=H, closed_form=False
    )
    return compute_tile(arch, X1, X2, kind=kind, jacobian=jacobian, plan=plan)


def _assert_close(got, want):
    got, want = np.atleast_3d(got.T).T, np.atleast_3d(want.T).T
    for k in range(want.shape[0]):  # field by field, relative to each field's scale
        assert np.abs(got[k] - want[k]).max() <= TOL * np.abs(want[k]).max(), k


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"L{a.depth}-sw{a.sigma_w}")
@pytest.mark.parametrize("kind", ["nngp", "ntk"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_scalar_kernels_match_the_quadrature(arch, kind, symmetric):
    X, Y = _points()
    X2 = None if symmetric else Y
    got = jacntk.kernel(arch, X, X2, kind=kind)
    _assert_close(got, _quadrature_tile(arch, X, X2, kind, False))


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"L{a.depth}-sw{a.sigma_w}")
@pytest.mark.parametrize("kind", ["nngp", "ntk", "ntk_truncated"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_jacobian_kernels_match_the_quadrature(arch, kind, symmetric):
    X, Y = _points()
    X2 = None if symmetric else Y
    fields = _quadrature_tile(arch, X, X2, kind, True)
    _assert_close(jacntk.kernel_fields(arch, X, X2, kind=kind).data, fields)
    dense = jacntk.kernel(arch, X, X2, kind=kind, jacobian=True)
    want = jacntk.augment(fields, X, X if symmetric else Y)
    assert np.abs(dense - want).max() <= TOL * np.abs(want).max()


def test_the_layer_variances_cover_the_tested_range():
    """The kernel tests above meet layer variances from below 0.1 to above 20 (so they exercise
    the range the moment test covers), read from the diagonal chain ``v_l(|x|^2)``."""
    X, Y = _points()
    q = np.einsum("ij,ij->i", np.vstack([X, Y]), np.vstack([X, Y]))
    v = []
    for arch in ARCHS:
        plan = make_plan(arch, "ntk", False)
        v.append(_diag_chain(plan.act, plan.depth, plan.omega, plan.sb2, X.shape[1], q, 0.0)[0])
    v = np.concatenate([x.ravel() for x in v])
    assert v.min() <= 0.1 and v.max() >= 20.0, (v.min(), v.max())
