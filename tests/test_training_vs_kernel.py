"""Wide networks trained for real follow the kernel ODE (issue 4; docs/math.md §3.5, §8.2, Thm 4.5).

Finite NTK-parametrised networks (jacntk.finite) are trained by full-batch gradient descent on
the Jacobian-regularised loss of docs/math.md §1.4.  Their test predictions — values *and*
input-gradients — after k steps are compared with ``jacntk.predict`` (the infinite-width JNTK
ODE) started from the network's own initial function ``F_0`` (so the comparison isolates the
kernel, not the random initial function).  The error, relative to the size of the predicted
change ``F_t - F_0``, must shrink as the width grows by 4x (theory: like ``n^-1/2``, from the
initial kernel's fluctuation and its drift during training).

Time: gradient descent with step eta is the Euler scheme of the flow
``theta' = -eta grad L``, so k steps are flow time ``t = k`` in ``jacntk.predict``'s units
(``c = eta kappa^2 / N`` multiplies t).  The networks are compared with the exact discrete
predictor ``psi_k`` (``predict(..., steps=[k])``); the test also checks that ``phi_t`` at
``t = k`` differs from it by far less than the widths' errors at this step size.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import eigh

import jacntk
from jacntk import MLP, kernel
from jacntk import finite as E

D_IN, N_TRAIN, N_TEST = 3, 6, 4
LAM, ETA, STEPS = 0.1, 0.5, 200
WIDTHS = (512, 2048, 8192)
SEEDS = range(4)


def _data():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((N_TRAIN, D_IN))
    X_test = rng.standard_normal((N_TEST, D_IN))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1]
    return X, y, X_test


def _stack(values, gradients):
    return np.concatenate([values[:, None], gradients], axis=1)


def _dense_prediction(arch, X, y, X_test, F0_train, F0_test, k):
    """docs/math.md §8.2 by dense eigendecomposition after k steps of gradient descent:
    F_k(x) = F_0(x) + Theta(x, X) D^1/2 psi_k(B) D^1/2 (Y - F_0), psi_k(s) = (1-(1-cs)^k)/s."""
    d = X.shape[1]
    sqrt_d = np.tile(np.r_[1.0, np.full(d, np.sqrt(LAM))], X.shape[0])
    theta = kernel(arch, X, kind="ntk", jacobian=True) / arch.kappa**2
    B = sqrt_d[:, None] * theta * sqrt_d[None, :]
    w, V = eigh(0.5 * (B + B.T))
    w = np.maximum(w, 0.0)
    c = ETA * arch.kappa**2 / X.shape[0]
    safe = np.where(w > 1e-14, w, 1.0)
    f = np.where(w > 1e-14, (1 - (1 - c * w) ** k) / safe, c * k)
    Y = np.zeros_like(F0_train)
    Y[:, 0] = y
    z = V @ (f * (V.T @ (sqrt_d * (Y - F0_train).ravel())))
    cross = kernel(arch, X_test, X, kind="ntk", jacobian=True) / arch.kappa**2
    return F0_test + (cross @ (sqrt_d * z)).reshape(F0_test.shape)


def _predict(arch, X, y, X_test, F0_train, F0_test, **when):
    """jacntk.predict from the network's own initial function, at ``steps=`` or ``times=``."""
    result = jacntk.predict(
        arch,
        X,
        y,
        X_test,
        kind="ntk",
        jacobian_reg=LAM,
        learning_rate=ETA,
        f0=(F0_train, F0_test),
        **when,
    )
    return _stack(np.asarray(result.values)[0], np.asarray(result.gradients)[0])


def test_trained_wide_networks_approach_the_kernel_ode_as_width_grows():
    arch = MLP(1, "erf", kappa=0.5)  # kappa != 1: the time scale must carry kappa^2 once
    X, y, X_test = _data()
    errors = []
    for width in WIDTHS:
        per_seed = []
        for seed in SEEDS:
            net = E.init_network(arch, D_IN, width, seed=seed)
            run = E.train(
                net, X, y, steps=STEPS, jacobian_reg=LAM, learning_rate=ETA, X_test=X_test
            )
            F0_train = _stack(*E.forward(net, X))
            F0_test = _stack(run.values[0], run.gradients[0])
            F_net = _stack(run.values[-1], run.gradients[-1])
            F_kernel = _predict(arch, X, y, X_test, F0_train, F0_test, steps=[STEPS])
            change = np.abs(F_kernel - F0_test).max()
            # jacntk.predict agrees with the dense reference of docs/math.md §8.2 ...
            reference = _dense_prediction(arch, X, y, X_test, F0_train, F0_test, STEPS)
            np.testing.assert_allclose(F_kernel, reference, rtol=0, atol=1e-8 * change)
            # ... and gradient flow at t = k is close to k discrete steps at this step size.
            flow = _predict(arch, X, y, X_test, F0_train, F0_test, times=[float(STEPS)])
            assert np.abs(flow - F_kernel).max() < 0.01 * change
            per_seed.append(np.abs(F_net - F_kernel).max() / change)
        errors.append(float(np.sqrt(np.mean(np.square(per_seed)))))
    # Error shrinks with every 4x in width (theory: halves), and is small at the widest.
    for narrow, wide in zip(errors, errors[1:], strict=False):
        assert wide < 0.8 * narrow, f"errors {errors} do not shrink with width {WIDTHS}"
    assert errors[-1] < 0.05, f"errors {errors}"
