"""Edge of Chaos and the large-depth NTK (jacntk.depth, docs/math.md §9)."""

import math

import numpy as np
import pytest

from jacntk import MLP, kernel
from jacntk import depth as D


def _erf_eoc(q):
    """Closed form of docs/math.md §9.1 (derived independently of the moments module)."""
    omega = math.pi / 4 * math.sqrt(1 + 4 * q)
    sb2 = q - omega * 2 / math.pi * math.asin(2 * q / (1 + 2 * q))
    return omega, sb2


@pytest.mark.parametrize("q", [0.1, 1.0, 5.0])
def test_erf_eoc_point_matches_closed_form(q):
    sw, sb = D.eoc_point("erf", q)
    omega, sb2 = _erf_eoc(q)
    assert sw**2 == pytest.approx(omega, rel=1e-12)
    assert sb**2 == pytest.approx(sb2, rel=1e-9, abs=1e-15)


def test_erf_eoc_reference_numbers_of_math_md():
    # docs/math.md §9.1: q* = 0.1 -> (0.929, 0.00094); 1 -> (1.756, 0.184); 5 -> (3.599, 2.385).
    curve = D.eoc_curve("erf", [0.1, 1.0, 5.0])
    np.testing.assert_allclose(curve.sigma_w**2, [0.929, 1.756, 3.599], atol=6e-4)
    np.testing.assert_allclose(curve.sigma_b**2, [0.00094, 0.184, 2.385], atol=6e-4)


def test_relu_eoc_is_he_initialisation_for_every_q():
    curve = D.eoc_curve("relu", [0.3, 2.0, 7.0])
    np.testing.assert_allclose(curve.sigma_w, math.sqrt(2.0), rtol=1e-14)
    np.testing.assert_allclose(curve.sigma_b, 0.0, atol=1e-7)


def test_tanh_eoc_curve_starts_at_sigma_w_one():
    sw, sb = D.eoc_point("tanh", 1e-6)
    assert sw == pytest.approx(1.0, abs=1e-5)
    assert sb == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("activation", ["erf", "gelu", "tanh", "silu"])
def test_eoc_point_has_unit_chi_and_is_a_fixed_point(activation):
    sw, sb = D.eoc_point(activation, 1.0)
    assert D.variance_map(activation, 1.0, sw, sb) == pytest.approx(1.0, rel=1e-12)
    assert D.chi(activation, sw, sb, q0=1.0) == pytest.approx(1.0, rel=1e-10)
    assert D.phase(activation, sw, sb) == "eoc"


@pytest.mark.parametrize("activation", ["erf", "tanh"])
def test_eoc_fixed_point_attracts_for_bounded_activations(activation):
    sw, sb = D.eoc_point(activation, 1.0)
    for q0 in (0.3, 3.0):
        assert D.fixed_point(activation, sw, sb, q0=q0) == pytest.approx(1.0, rel=1e-10)


def test_gelu_eoc_fixed_point_is_unstable_from_above():
    sw, sb = D.eoc_point("gelu", 1.0)
    with pytest.raises(ValueError, match="grows without bound"):
        D.fixed_point("gelu", sw, sb, q0=3.0)
    assert D.fixed_point("gelu", sw, sb, q0=0.5) < 0.5


def test_erf_unit_weights_are_slightly_chaotic():
    # docs/math.md §9.1: sigma_w = 1, sigma_b = 0 gives q* = 0.142 and chi = 1.017.
    assert D.fixed_point("erf", 1.0, 0.0) == pytest.approx(0.142, abs=1e-3)
    assert D.chi("erf", 1.0, 0.0) == pytest.approx(1.017, abs=1e-3)
    assert D.phase("erf", 1.0, 0.0) == "chaotic"
    assert D.phase("erf", math.sqrt(0.5), math.sqrt(0.1)) == "ordered"


def test_variance_decays_to_zero_below_the_erf_threshold():
    assert D.fixed_point("erf", math.sqrt(0.7), 0.0) == 0.0
    assert math.isnan(D.ntk_correlation_limit("erf", math.sqrt(math.pi / 4), 0.0))


def test_chaotic_relu_variance_diverges():
    with pytest.raises(ValueError, match="grows without bound"):
        D.fixed_point("relu", 1.6, 0.1)


def test_correlation_map_fixes_one_with_slope_chi():
    sw, sb = 1.3, 0.2
    q = D.fixed_point("gelu", sw, sb)
    h = 1e-6
    F = D.correlation_map("gelu", [1.0 - h, 1.0], q, sw, sb)
    assert F[1] == pytest.approx(1.0, rel=1e-10)
    assert (F[1] - F[0]) / h == pytest.approx(D.chi("gelu", sw, sb), rel=1e-4)


def test_variance_map_matches_monte_carlo(rng):
    from scipy.special import erf

    u = np.sqrt(0.7) * rng.standard_normal(400_000)
    gelu = u * 0.5 * (1.0 + erf(u / math.sqrt(2.0)))
    mc = 0.3**2 + 1.2**2 * np.mean(gelu**2)
    assert D.variance_map("gelu", 0.7, 1.2, 0.3) == pytest.approx(mc, rel=1e-2)
    assert D.gaussian_variance("erf", 0.7) == pytest.approx(2 / math.pi * math.asin(1.4 / 2.4))


def test_depth_profile_equals_kernel_at_each_depth():
    arch = MLP(1, "erf", sigma_w=1.2, sigma_b=0.3)
    X = np.array([[1.0, 0.0, 0.5], [0.2, 1.0, -0.3], [0.0, 0.4, 1.0]])
    prof = D.depth_profile(arch, X, [1, 3, 7])
    for k, L in enumerate([1, 3, 7]):
        ref = kernel(MLP(L, "erf", sigma_w=1.2, sigma_b=0.3), X)
        np.testing.assert_allclose(prof.grams[k], ref, rtol=1e-14)
    corr = prof.correlation()
    np.testing.assert_allclose(np.einsum("mii->mi", corr), 1.0)


def test_relu_eoc_ntk_approaches_quarter_at_rate_one_over_depth():
    # |x|^2 = d with sigma_w^2 = 2 gives q = 2 in every layer: Theta(x, x) = 2 (L + 1) exactly.
    arch = MLP(1, "relu", sigma_w=math.sqrt(2.0))
    X = np.sqrt(4.0) * np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0.9, math.sqrt(0.19), 0, 0]])
    prof = D.depth_profile(arch, X, [30, 300])
    np.testing.assert_allclose(np.einsum("mii->mi", prof.per_layer()), 2.0, rtol=1e-12)
    gap = prof.limit_gap(D.ntk_correlation_limit("relu", math.sqrt(2.0), 0.0))
    assert gap[1] < 0.03
    assert 5 < gap[0] / gap[1] < 20  # ~ 1/L


def test_smooth_eoc_third_and_off_eoc_exponential_limits():
    X = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0.9, math.sqrt(0.19), 0, 0]])
    eoc = D.eoc_mlp("erf", 1, q_star=1.0)
    assert D.ntk_correlation_limit("erf", eoc.sigma_w, eoc.sigma_b) == pytest.approx(1 / 3)
    prof = D.depth_profile(eoc, D.scale_to_variance(eoc, X, 1.0), [20, 200])
    gap = prof.limit_gap(1.0 / 3.0)
    assert gap[1] < 0.05 and gap[1] < gap[0] / 4
    ordered = MLP(1, "erf", sigma_w=math.sqrt(0.5), sigma_b=math.sqrt(0.1))
    assert D.ntk_correlation_limit("erf", ordered.sigma_w, ordered.sigma_b) == 1.0
    assert D.depth_profile(ordered, X, [40]).limit_gap(1.0)[0] < 1e-6
    chaotic = MLP(1, "erf", sigma_w=2.0)
    assert D.ntk_correlation_limit("erf", 2.0, 0.0) == 0.0
    assert D.depth_profile(chaotic, X, [60]).limit_gap(0.0)[0] < 1e-3


def test_bad_inputs_name_the_value():
    with pytest.raises(ValueError, match="unknown activation 'sigmoid'"):
        D.eoc_point("sigmoid", 1.0)
    with pytest.raises(ValueError, match="q_star must be positive"):
        D.eoc_point("erf", -1.0)
    with pytest.raises(ValueError, match="q_star must be positive"):
        D.eoc_curve("erf", [1.0, np.nan])
    with pytest.raises(ValueError, match="sigma_w must be positive"):
        D.chi("erf", 0.0, 0.0)
    with pytest.raises(ValueError, match="correlations must lie in"):
        D.correlation_map("erf", [0.5, 1.5], 1.0)
    with pytest.raises(ValueError, match="depths must be"):
        D.depth_profile(MLP(1, "erf"), np.eye(2), [0, 3])
    with pytest.raises(ValueError, match="depths must be"):
        D.depth_profile(MLP(1, "erf"), np.eye(2), [1.5])
    with pytest.raises(ValueError, match="no Edge-of-Chaos point"):
        D.eoc_point("softplus", 1.0)
    with pytest.raises(ValueError, match="zero row"):
        D.scale_to_variance(MLP(1, "erf"), np.array([[1.0, 0.0], [0.0, 0.0]]), 1.0)
    with pytest.raises(ValueError, match="must exceed sigma_b"):
        D.scale_to_variance(MLP(1, "erf", sigma_b=2.0), np.eye(2), 1.0)
