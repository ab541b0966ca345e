"""Several kernel kinds from one pass over the layers (docs/math.md §14): the tuple of
``kernel`` / ``kernel_fields`` / ``compute_tile`` equals separate calls, and bad kind lists are
refused."""

import numpy as np
import pytest

import jacntk
from jacntk.kernels._compute import _tile_code, compute_tile
from jacntk.kernels._fields import BOTH_NTK, BOTH_TRUNCATED

ACTIVATIONS = ["erf", "relu", "gelu", "tanh", "softplus", "silu"]
QUADRATURE = {"tanh", "softplus", "silu"}


def rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def points(activation, seed=0):
    rng = np.random.default_rng(seed)
    n = 5 if activation in QUADRATURE else 24
    return rng.standard_normal((n, 3)), rng.standard_normal((n - 1, 3))


def jacobian_kinds(activation):
    return ("nngp", "ntk_truncated") if activation == "relu" else ("ntk", "nngp")


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("cross", [False, True])
def test_scalar_kinds_in_one_pass_equal_separate_calls(activation, cross):
    arch = jacntk.MLP(3, activation, sigma_w=1.3, sigma_b=0.2, kappa=0.9)
    X, Y = points(activation)
    X2 = Y if cross else None
    kinds = ("ntk", "nngp", "ntk_truncated")
    together = jacntk.kernel(arch, X, X2, kind=kinds)
    assert isinstance(together, tuple) and len(together) == 3
    for k, K in zip(kinds, together, strict=True):
        alone = jacntk.kernel(arch, X, X2, kind=k)
        assert K.shape == alone.shape and K.dtype == np.float64
        assert rel(K, alone) <= 1e-15, k
    assert not np.shares_memory(together[0], together[2])  # ntk, ntk_truncated: two arrays
    assert rel(together[0], together[1]) > 1e-3  # the NNGP is not the NTK


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("cross", [False, True])
def test_fields_in_one_pass_equal_separate_calls(activation, cross):
    arch = jacntk.MLP(2, activation, sigma_w=1.2, sigma_b=0.3)
    X, Y = points(activation, seed=1)
    X2 = Y if cross else None
    kinds = jacobian_kinds(activation)
    together = jacntk.kernel_fields(arch, X, X2, kind=kinds)
    # The Hermite route of the quadrature activations sums its Mehler series with the NTK's
    # table order in a shared pass, so its NNGP agrees with the separate call within that
    # route's bound, not to the last bit (docs/math.md §14).
    tol = 1e-12 if activation in QUADRATURE else 1e-15
    for k, F in zip(kinds, together, strict=True):
        alone = jacntk.kernel_fields(arch, X, X2, kind=k)
        assert F.kind == k and F.data.shape == alone.data.shape
        assert rel(F.data, alone.data) <= (tol if k == "nngp" else 1e-15), k


@pytest.mark.parametrize("activation", ["erf", "relu", "gelu", "tanh"])
def test_jacobian_kernels_in_one_call_equal_separate_calls(activation):
    arch = jacntk.MLP(2, activation, sigma_w=1.1, sigma_b=0.2)
    X, Y = points(activation, seed=2)
    X, Y = X[:4], Y[:3]
    kinds = jacobian_kinds(activation)[::-1]
    tol = 1e-12 if activation in QUADRATURE else 1e-15
    for X2 in (None, Y):
        together = jacntk.kernel(arch, X, X2, kind=kinds, jacobian=True)
        for k, G in zip(kinds, together, strict=True):
            alone = jacntk.kernel(arch, X, X2, kind=k, jacobian=True)
            assert rel(G, alone) <= (tol if k == "nngp" else 1e-15), k


def test_all_three_jacobian_fields_of_a_smooth_activation():
    """``ntk`` and ``ntk_truncated`` fields differ, so they take two passes; both right."""
    arch = jacntk.MLP(3, "erf", sigma_w=1.4, sigma_b=0.1)
    X = np.random.default_rng(3).standard_normal((7, 4))
    kinds = ("ntk_truncated", "nngp", "ntk")
    assert _tile_code(kinds, True) == [(BOTH_NTK, 2), (2, 1)]
    together = compute_tile(arch, X, kind=kinds, jacobian=True)
    for k, F in zip(kinds, together, strict=True):
        assert rel(F, compute_tile(arch, X, kind=k, jacobian=True)) <= 1e-15
    assert rel(together[0], together[2]) > 1e-6


def test_pass_plan():
    assert _tile_code(("nngp", "ntk"), False) == [(BOTH_NTK, 2)]
    assert _tile_code(("ntk_truncated", "nngp"), False) == [(BOTH_NTK, 2)]
    assert _tile_code(("nngp", "ntk_truncated"), True) == [(BOTH_TRUNCATED, 2)]
    assert _tile_code(("nngp",), True) == [(0, 1)]
    assert _tile_code(("ntk",), False) == [(1, 1)]


def test_a_single_string_still_returns_an_array():
    arch = jacntk.MLP(2, "erf")
    X = np.random.default_rng(4).standard_normal((6, 3))
    assert isinstance(jacntk.kernel(arch, X, kind="nngp"), np.ndarray)
    assert isinstance(jacntk.kernel_fields(arch, X, kind="ntk"), jacntk.KernelFields)
    one = jacntk.kernel(arch, X, kind=["nngp"])  # a sequence of one: a tuple of one
    assert isinstance(one, tuple) and len(one) == 1


@pytest.mark.parametrize(
    "kind, match",
    [
        (("nngp", "nngp"), "twice"),
        (("ntk", "nngp", "ntk"), "twice"),
        ((), "empty"),
        (("nngp", "gp"), "unknown kernel kind"),
        (("nngp", 3), "string"),
        (7, "sequence"),
    ],
)
def test_bad_kind_lists_are_refused(kind, match):
    arch = jacntk.MLP(2, "erf")
    X = np.zeros((3, 2)) + 1.0
    for call in (
        lambda: jacntk.kernel(arch, X, kind=kind),
        lambda: jacntk.kernel(arch, X, kind=kind, jacobian=True),
        lambda: jacntk.kernel_fields(arch, X, kind=kind),
    ):
        with pytest.raises(ValueError, match=match):
            call()


def test_relu_jacobian_ntk_is_refused_in_a_list_too():
    arch = jacntk.MLP(2, "relu")
    X = np.random.default_rng(5).standard_normal((3, 2))
    with pytest.raises(ValueError, match="does not exist"):
        jacntk.kernel(arch, X, kind=("nngp", "ntk"), jacobian=True)
