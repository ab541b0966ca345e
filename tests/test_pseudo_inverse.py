"""One pseudo-inverse cutoff for every dense ``t = inf`` computation (docs/math.md §8.3)."""

from __future__ import annotations

import numpy as np

import jacntk
from jacntk.linalg._lanczos import pseudo_inverse_filter

ARCH = jacntk.MLP(2, "erf", sigma_b=0.1)


def test_filter_inverts_above_n_eps_lambda_max_only():
    eps = np.finfo(np.float64).eps
    cut = 5 * eps * 3.0  # n eps lambda_max
    w = np.array([-1e-15, 0.0, cut * 0.999, cut * 1.001, 3.0])
    f = pseudo_inverse_filter(w)
    np.testing.assert_array_equal(f[:3], 0.0)
    np.testing.assert_allclose(f[3:], 1.0 / w[3:], rtol=0)
    np.testing.assert_array_equal(pseudo_inverse_filter(np.zeros(4)), 0.0)
    np.testing.assert_array_equal(pseudo_inverse_filter(-np.ones(2)), 0.0)


def test_singular_gram_values_and_covariance_use_the_same_pseudo_inverse():
    """Duplicated training points make ``B`` exactly singular (Cholesky fails): the values are
    those of the minimum-norm interpolant ``Theta(x, X) B^+ Y`` and the predictive covariance at
    the training points vanishes -- both need the same spectrum to be cut."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6, 3))
    X = np.vstack([X, X[:2]])  # two exact duplicates
    Y = rng.standard_normal((6, 1))
    Y = np.vstack([Y, Y[:2]])
    Xt = np.vstack([X[:3], rng.standard_normal((2, 3))])
    pred = jacntk.predict(
        ARCH, X, Y, Xt, times=[np.inf], operator="dense", covariance=True, gradients=False
    )
    assert pred.diagnostics["solver"] == "eigh (pseudo-inverse)"
    K = jacntk.kernel(ARCH, X)
    w, V = np.linalg.eigh(K)
    want = jacntk.kernel(ARCH, Xt, X) @ (V @ (pseudo_inverse_filter(w)[:, None] * (V.T @ Y)))
    np.testing.assert_allclose(pred.values[0, :, 0], want[:, 0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(pred.values[0, :3, 0], Y[:3, 0], rtol=1e-8)
    scale = np.abs(jacntk.kernel(ARCH, Xt, kind="nngp")).max()
    assert np.abs(np.diag(pred.covariance[0])[:3]).max() < 1e-8 * scale
