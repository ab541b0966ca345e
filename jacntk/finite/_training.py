"""Training finite networks for real: loss, its gradient and gradient descent."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..kernels._activations import RELU, get_activation
from ..validation import as_vector
from ._kernels import empirical_kernel
from ._network import FiniteMLP, _backward, _check_inputs, _check_int, _forward, forward


def _check_reg(jacobian_reg) -> float:
    if isinstance(jacobian_reg, bool) or not isinstance(jacobian_reg, (int, float, np.floating)):
        raise ValueError(f"jacobian_reg must be a number >= 0, got {jacobian_reg!r}")
    if not (math.isfinite(jacobian_reg) and jacobian_reg >= 0):
        raise ValueError(f"jacobian_reg must be finite and >= 0, got {jacobian_reg!r}")
    return float(jacobian_reg)


def _loss_and_gradient(net: FiniteMLP, X: np.ndarray, y: np.ndarray, lam: float, grad: bool):
    tangents = lam > 0
    fw = _forward(net, X, tangents)
    F = fw.outputs
    N = X.shape[0]
    R = np.empty_like(F)  # residual weights r_0 = f - y, r_a = lam d_a f
    R[:, 0] = F[:, 0] - y
    R[:, 1:] = lam * F[:, 1:]
    value = 0.5 * float(np.sum(R[:, 0] ** 2) + lam * np.sum(F[:, 1:] ** 2)) / N
    if not grad:
        return value, None, None
    cotangents = _backward(net, fw)
    alphas = net.multipliers
    beta = net.arch.sigma_b
    gw, gb = [], []
    for layer in range(net.arch.depth + 1):
        U = cotangents[layer]
        A = fw.inputs[layer]
        rho = R[:, :, None] * U[:, :1, :]  # rho_a = r_a u for a >= 1
        rho[:, 0, :] = np.einsum("ik,ikn->in", R, U)  # rho_0 = r_0 u + sum_a r_a s_a
        k, n_out, n_in = A.shape[1], U.shape[2], A.shape[2]
        gw.append(alphas[layer] / N * (rho.reshape(N * k, n_out).T @ A.reshape(N * k, n_in)))
        gb.append(beta / N * rho[:, 0, :].sum(axis=0))
    return value, tuple(gw), tuple(gb)


def _check_targets(net: FiniteMLP, X, y) -> tuple[np.ndarray, np.ndarray]:
    X = _check_inputs(net, X, "X")
    y = as_vector(y, X.shape[0], "y")
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D with one target per point, got shape {y.shape}")
    return X, y


def loss(net: FiniteMLP, X, y, *, jacobian_reg: float = 0.0) -> float:
    """``L = 1/(2N) sum_i [(f(x_i) - y_i)^2 + lam |grad_x f(x_i)|^2]`` (docs/math.md §1.4)."""
    X, y = _check_targets(net, X, y)
    return _loss_and_gradient(net, X, y, _check_reg(jacobian_reg), grad=False)[0]


def loss_gradient(
    net: FiniteMLP, X, y, *, jacobian_reg: float = 0.0
) -> tuple[float, tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """The loss of docs/math.md §1.4 and its exact gradient with respect to every parameter.

    ``dL/dtheta = 1/N sum_i sum_a r_ia d_theta F_a(x_i)`` with ``r_i0 = f(x_i) - y_i`` and
    ``r_ia = lam d_a f(x_i)``.  Per layer, with ``rho_0 = r_0 u + sum_a r_a s_a`` and
    ``rho_a = r_a u`` (``u``, ``s_a`` from the backward pass; ``s_a`` carries the second-order
    ``phi''`` terms)::

        dL/dW^l = alpha_l / N sum_i sum_g rho_ig (x) A^{l-1}_ig
        dL/db^l = sigma_b / N sum_i rho_i0

    Returns
    -------
    loss : float
    weight_grads : tuple of arrays shaped like ``net.weights``
    bias_grads : tuple of arrays shaped like ``net.biases``
    """
    X, y = _check_targets(net, X, y)
    return _loss_and_gradient(net, X, y, _check_reg(jacobian_reg), grad=True)


@dataclass(frozen=True, eq=False)
class TrainingRun:
    """Result of :func:`train`.

    Attributes
    ----------
    steps : (k,) int
        The recorded steps.
    values : (k, n_test)
        ``f`` on the test points after each recorded step.
    gradients : (k, n_test, d)
        ``grad_x f`` on the test points after each recorded step.
    losses : (steps + 1,)
        Training loss before step 1, ..., after the last step.
    kernel_steps : (m,) int
    kernels : (m, n_k (d+1), n_k (d+1)) or None
        Empirical JNTK on the kernel points at ``kernel_steps`` (``"ntk_truncated"`` for ReLU).
    net : FiniteMLP
        The trained network.
    """

    steps: np.ndarray
    values: np.ndarray
    gradients: np.ndarray
    losses: np.ndarray
    kernel_steps: np.ndarray
    kernels: np.ndarray | None
    net: FiniteMLP


def _check_steps(values, steps: int, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer) and arr.size:
        raise ValueError(f"{name} must be a 1-D sequence of integers, got {values!r}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > steps):
        raise ValueError(f"{name} must lie in [0, steps={steps}], got {values!r}")
    return np.unique(arr)


def _descend(params, grads, multipliers, learning_rate: float) -> tuple[np.ndarray, ...]:
    """One gradient step per layer: ``theta_l - learning_rate lr_l g_l``."""
    return tuple(
        p - learning_rate * m * g for p, m, g in zip(params, multipliers, grads, strict=True)
    )


def train(
    net: FiniteMLP,
    X,
    y,
    *,
    steps: int,
    jacobian_reg: float = 0.0,
    learning_rate: float = 1.0,
    X_test=None,
    record_steps: Sequence[int] | None = None,
    kernel_steps: Sequence[int] = (),
    kernel_points=None,
) -> TrainingRun:
    """Full-batch gradient descent on the Jacobian-regularised loss (docs/math.md §1.4, §8.1).

    ``theta_{k+1} = theta_k - learning_rate lr_l dL/dtheta`` (``lr_l`` from ``net.scaling``, 1
    in the NTK parametrisation): the Euler scheme, with unit time step, of the gradient flow
    ``theta' = -learning_rate grad L``.  In the infinite-width limit ``k`` steps give the discrete
    predictor ``psi_k`` with ``c = learning_rate kappa^2 / N`` on the kappa-free kernel
    (docs/math.md §8.2), i.e.
    ``jacntk.predict(..., steps=[k])``, close to the flow at ``times=[k]`` for small ``c``.

    Parameters
    ----------
    net : FiniteMLP
        Initial network (not modified).
    X : (N, d); y : (N,)
        Training points and targets.
    steps : int
        Number of gradient steps (>= 0).
    jacobian_reg : float
        ``lam >= 0``.
    learning_rate : float
        ``eta > 0``.
    X_test : (n_test, d), optional
        Where to record predictions (default: the training points).
    record_steps : sequence of int, optional
        Steps in ``[0, steps]`` at which to record predictions (default ``(0, steps)``).
    kernel_steps : sequence of int
        Steps at which to record the empirical JNTK (docs/math.md §12, Fig. 3).
    kernel_points : (n_k, d), optional
        Points of the recorded kernels (default: the training points).

    Raises
    ------
    ValueError
        Bad inputs, or a non-finite loss (the learning rate is too large: GD is stable only for
        ``c lambda_max(B) < 2``, docs/math.md §8.2).
    """
    X, y = _check_targets(net, X, y)
    lam = _check_reg(jacobian_reg)
    steps = _check_int(steps, "steps", 0)
    if (
        isinstance(learning_rate, bool)
        or not isinstance(learning_rate, (int, float, np.floating))
        or not (math.isfinite(learning_rate) and learning_rate > 0)
    ):
        raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
    X_test = X if X_test is None else _check_inputs(net, X_test, "X_test")
    record = _check_steps(
        (0, steps) if record_steps is None else record_steps, steps, "record_steps"
    )
    ksteps = _check_steps(kernel_steps, steps, "kernel_steps")
    Xk = X if kernel_points is None else _check_inputs(net, kernel_points, "kernel_points")
    kind = "ntk_truncated" if get_activation(net.arch.activation).code == RELU else "ntk"
    lr = net.learning_rate_multipliers
    values, grads, kernels, losses = [], [], [], []
    for step in range(steps + 1):
        if step in record:
            v, g = forward(net, X_test)
            values.append(v)
            grads.append(g)
        if step in ksteps:
            kernels.append(empirical_kernel(net, Xk, kind=kind, jacobian=True))
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported below
            value, gw, gb = _loss_and_gradient(net, X, y, lam, grad=step < steps)
        if not math.isfinite(value):
            raise ValueError(
                f"training diverged at step {step} (loss {value}); learning_rate="
                f"{learning_rate} is too large (GD needs c lambda_max(B) < 2, docs/math.md §8.2)"
            )
        losses.append(value)
        if step < steps:
            net = replace(
                net,
                weights=_descend(net.weights, gw, lr, learning_rate),
                biases=_descend(net.biases, gb, lr, learning_rate),
            )
    return TrainingRun(
        steps=record,
        values=np.array(values),
        gradients=np.array(grads).reshape(len(record), X_test.shape[0], net.d),
        losses=np.array(losses),
        kernel_steps=ksteps,
        kernels=np.array(kernels) if kernels else None,
        net=net,
    )
