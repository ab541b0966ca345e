"""Gaussian moments: the quadrature's stated accuracy, measured against the erf closed forms
and against itself at half the step, over the variances met in deep networks."""

import numpy as np
import pytest

from jacntk.kernels._moments import (
    ACT_CODES,
    ERF_BY_QUADRATURE,
    GELU_BY_QUADRATURE,
    NTK_JETS,
    QUADRATURE_STEP,
    gaussian_moments,
)


def _cases():
    for a in (0.05, 0.3, 1.0, 3.0, 10.0, 30.0):
        for b in (0.05, 1.0, 30.0):
            for rho in (-0.9, 0.0, 0.5, 0.99, 0.999999):
                yield rho * np.sqrt(a * b), a, b
        yield a, a, a  # the diagonal x = x'


def _moments(act, c, a, b, h):
    F = np.empty(10)
    gaussian_moments(act, c, a, b, NTK_JETS, h, F)
    return F


def test_quadrature_reproduces_erf_closed_forms_to_1e_12():
    worst = 0.0
    for c, a, b in _cases():
        quad = _moments(ERF_BY_QUADRATURE, c, a, b, QUADRATURE_STEP[ERF_BY_QUADRATURE])
        exact = _moments(ACT_CODES["erf"], c, a, b, 0.0)
        worst = max(worst, np.abs(quad - exact).max() / np.abs(exact).max())
    assert worst <= 1e-12, worst


@pytest.mark.parametrize("activation,tol", [("tanh", 2e-11), ("softplus", 1e-14), ("silu", 1e-14)])
def test_quadrature_step_is_converged(activation, tol):
    act = ACT_CODES[activation]
    h = QUADRATURE_STEP[act]
    worst = 0.0
    for c, a, b in _cases():
        coarse, fine = _moments(act, c, a, b, h), _moments(act, c, a, b, h / 2)
        worst = max(worst, np.abs(coarse - fine).max() / np.abs(fine).max())
    assert worst <= tol, worst


def test_gelu_reference_quadrature_step_is_converged():
    """The trapezoid rule that is the reference of gelu's closed forms
    (tests/test_gelu_closed_form.py), against itself at half the step."""
    h = QUADRATURE_STEP[GELU_BY_QUADRATURE]
    worst = 0.0
    for c, a, b in _cases():
        coarse = _moments(GELU_BY_QUADRATURE, c, a, b, h)
        fine = _moments(GELU_BY_QUADRATURE, c, a, b, h / 2)
        worst = max(worst, np.abs(coarse - fine).max() / np.abs(fine).max())
    assert worst <= 1e-14, worst


def test_price_relations_hold_for_quadrature():
    """d/dc F00 = F11 and d/da F00 = F20 / 2 (Price's theorem), by central differences."""
    act, h = GELU_BY_QUADRATURE, QUADRATURE_STEP[GELU_BY_QUADRATURE]
    c, a, b, e = 0.4, 1.1, 0.9, 1e-5
    F = _moments(act, c, a, b, h)
    dc = (_moments(act, c + e, a, b, h)[0] - _moments(act, c - e, a, b, h)[0]) / (2 * e)
    da = (_moments(act, c, a + e, b, h)[0] - _moments(act, c, a - e, b, h)[0]) / (2 * e)
    assert abs(dc - F[1]) <= 1e-8 and abs(da - F[2] / 2) <= 1e-8
