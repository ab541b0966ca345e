"""Numerical guards (issue 13 item 5): kernels that overflow or underflow raise with the depth,
the scales and the advice; numpy scalars are accepted as parameters; complex, boolean, object
and overflowing inputs are refused with a message naming the problem."""

from __future__ import annotations

import numpy as np
import pytest

import jacntk

X = np.random.default_rng(0).standard_normal((5, 3))


def test_relu_overflow_at_depth_1000_raises_with_depth_and_advice():
    arch = jacntk.MLP(1000, "relu", sigma_w=3.0)
    with pytest.raises(FloatingPointError, match=r"overflowed.*depth 1000.*sigma_w=3.*Edge"):
        jacntk.kernel(arch, X, kind="nngp")


def test_relu_underflow_at_depth_2000_raises_instead_of_a_zero_gram():
    arch = jacntk.MLP(2000, "relu", sigma_w=1.0)
    with pytest.raises(FloatingPointError, match=r"underflowed.*depth 2000"):
        jacntk.kernel(arch, X, kind="ntk")
    with pytest.raises(FloatingPointError, match="underflowed"):
        jacntk.kernel(arch, X, kind="nngp", jacobian=True)


def test_guards_leave_legitimate_kernels_alone():
    # the Edge of Chaos at depth 1000, zero inputs, and kappa = 0 are not errors
    eoc = jacntk.MLP(1000, "relu", sigma_w=2**0.5)
    assert np.isfinite(jacntk.kernel(eoc, X, kind="nngp")).all()
    Z = np.vstack([X, np.zeros(3)])
    K = jacntk.kernel(jacntk.MLP(3, "erf"), Z, kind="nngp")
    assert K[-1, -1] == 0.0
    assert (jacntk.kernel(jacntk.MLP(2, "erf", kappa=0.0), X) == 0).all()


def test_inputs_that_overflow_are_refused():
    with pytest.raises(ValueError, match=r"too large.*row 0.*rescale"):
        jacntk.kernel(jacntk.MLP(2, "erf"), X * 1e300)


@pytest.mark.parametrize(
    ("bad", "word"),
    [
        (X.astype(complex), "complex"),
        (X > 0, "boolean"),
        (np.array([[1, "a"]], dtype=object), "object"),
        (np.array([["1", "2"]]), "string"),
    ],
)
def test_non_real_inputs_are_refused(bad, word):
    with pytest.raises(ValueError, match=word):
        jacntk.kernel(jacntk.MLP(2, "erf"), bad)


def test_integer_inputs_are_converted():
    Xi = np.arange(12).reshape(4, 3) - 6
    arch = jacntk.MLP(2, "erf")
    np.testing.assert_array_equal(jacntk.kernel(arch, Xi), jacntk.kernel(arch, Xi.astype(float)))


def test_numpy_scalars_are_accepted_as_parameters():
    arch = jacntk.MLP(np.int64(3), "erf", sigma_w=np.float32(1.5), sigma_b=np.float64(0.1))
    assert arch == jacntk.MLP(3, "erf", sigma_w=1.5, sigma_b=0.1)
    assert type(arch.depth) is int and type(arch.sigma_w) is float
    for bad in (True, np.bool_(True), 2.0, "3"):
        with pytest.raises(ValueError, match="depth"):
            jacntk.MLP(bad, "erf")
    with pytest.raises(ValueError, match=r"sigma_w=1e\+200 is too large"):
        jacntk.MLP(2, "erf", sigma_w=1e200)
    with pytest.raises(ValueError, match="sigma_b"):
        jacntk.MLP(2, "erf", sigma_b=np.bool_(True))
