"""Finite networks as ground truth for the infinite-width kernels
(docs/math.md §1.1, §3, §10.5, §10.3).

A :class:`FiniteMLP` is the network of docs/math.md §1.1 at a finite hidden width ``n``, with
standard-normal parameters drawn from a seed::

    z^1     = alpha_1 W^1 x + sigma_b b^1,                 alpha_1 = sigma_w / sqrt(d)
    z^{l+1} = alpha_{l+1} W^{l+1} phi(z^l) + sigma_b b^{l+1}, alpha_{l+1} = sigma_w / sqrt(n)
    f(x)    = kappa z^{L+1}                                (readout: W^{L+1} of shape (1, n))

(and, for one-hidden-layer nets under a :class:`WidthScaling`, ``alpha_2 = sigma_w n^q_sigma``
with per-layer learning-rate multipliers, docs/math.md §10.3).

Everything is computed on stacks that carry the value and the ``d`` input-derivatives together:

* forward: ``A^l = [phi(z^l); phi'(z^l) * d_1 z^l; ...; phi'(z^l) * d_d z^l]`` of shape
  ``(N, d+1, n)`` (``A^0 = [x; e_1; ...; e_d]``), so ``F = (f, grad_x f) = kappa z^{L+1}`` stacked;
* backward, reverse mode with respect to the pre-activations (docs/math.md §10.5, §12 recipe 3):
  ``u^l = df/dz^l`` and its input-derivatives ``s^l_a = d/dx_a u^l``::

      m^l   = alpha_{l+1} W^{l+1 T} u^{l+1},     u^l = phi'(z^l) m^l,       u^{L+1} = kappa
      s^l_a = phi''(z^l) (d_a z^l) m^l + phi'(z^l) alpha_{l+1} W^{l+1 T} s^{l+1}_a,  s^{L+1} = 0

  stacked as ``U^l = [u^l; s^l_1; ...; s^l_d]``.  Since ``F_0 = f`` and
  ``F_a = d_a f = u^l . d_a z^l``, the parameter gradients of layer ``l`` are
  ``dF_0/dW^l = alpha_l u (x) a``, ``dF_a/dW^l = alpha_l (s_a (x) a + u (x) d_a a)``
  (``a = A^{l-1}`` rows) and ``dF_0/db^l = sigma_b u``, ``dF_a/db^l = sigma_b s_a``.

The empirical Jacobian NTK ``Theta_hat_ab(x, x') = <d_theta F_a(x), d_theta F_b(x')>`` (docs/math.md
§3.3) therefore never needs the parameter Jacobian: with the per-layer ``(d+1) x (d+1)`` Grams
``P = U U'^T`` and ``Q = A A'^T`` of each pair,

    Theta_hat_ab += lr_l [ alpha_l^2 (P_ab Q_00 + [b>0] P_a0 Q_0b + [a>0] P_0b Q_a0
                                      + [a>0][b>0] P_00 Q_ab) + sigma_b^2 P_ab ]

summed over the layers ``l = 1..L+1`` (``lr_l`` = learning-rate multiplier, 1 in the NTK
parametrisation).  The readout layer alone (``P = kappa^2 e_0 e_0^T``) is the covariance of ``F``
conditional on the hidden layers, ``kappa^2 (alpha_{L+1}^2 A^L A'^{L T} + sigma_b^2 e_0 e_0^T)``
— the low-variance Jacobian-NNGP estimator (docs/math.md §12 recipe 3).  For ReLU ``phi'' = 0``
(autodiff semantics), so the empirical JNTK of a ReLU net follows ``kind="ntk_truncated"``
(docs/math.md §7); ``kind="ntk_truncated"`` sets ``phi'' := 0`` for any activation.

All outputs use the conventions of :func:`jacntk.kernel`: row index from the first argument,
index 0 the value, point-major ``(n1 (d+1), n2 (d+1))`` matrices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from numba import njit

from ..arch import MLP
from ..kernels._activations import RELU, get_activation
from ..kernels._moments import activation_derivatives
from ..validation import as_points, as_vector

# --------------------------------------------------------------------------------------------
# Width scalings (docs/math.md §10.3)


@dataclass(frozen=True)
class WidthScaling:
    """Width-scaling exponents of a one-hidden-layer network
    (docs/math.md §10.3, Golikov 2006.06574).

    ``f(x) = kappa sigma_w n^q_sigma sum_r v_r phi(h_r(x)) + kappa sigma_b b``: the readout
    multiplier scales as ``n^q_sigma``; gradient descent uses the learning rate
    ``eta n^q_a`` for the readout parameters and ``eta n^q_w`` for the hidden ones.

    Derived exponents (powers of the width ``n``):

    * ``logit_exponent = 2 q_sigma + 1``: variance of ``f`` at initialisation (bounded iff <= 0);
    * ``kernel_exponents = (q_a + 2 q_sigma + 1, q_w + 2 q_sigma + 1)``: learning-rate-weighted
      tangent kernels of the readout and the hidden layer;
    * ``stable``: ``max(kernel_exponents) == 0`` (per-step logit increments of order one);
    * ``stationary``: ``q_sigma > -1`` (per-neuron parameter change ``n^(-q_sigma-1)`` vanishes,
      so the tangent kernel stays constant during training).

    ``NTK_SCALING = (-1/2, 0, 0)`` is the NTK parametrisation of :class:`jacntk.MLP`;
    ``MEAN_FIELD_SCALING = (-1, 1, 1)`` is the mean-field limit (kernel moves).
    """

    q_sigma: float
    q_a: float = 0.0
    q_w: float = 0.0

    def __post_init__(self) -> None:
        for name in ("q_sigma", "q_a", "q_w"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))

    @property
    def logit_exponent(self) -> float:
        """Exponent of ``Var f_0``: ``2 q_sigma + 1``."""
        return 2.0 * self.q_sigma + 1.0

    @property
    def kernel_exponents(self) -> tuple[float, float]:
        """Exponents of the readout and hidden tangent kernels (learning-rate weighted)."""
        return (self.q_a + self.logit_exponent, self.q_w + self.logit_exponent)

    @property
    def stable(self) -> bool:
        """Dynamically stable: ``max(kernel_exponents) == 0``."""
        return math.isclose(max(self.kernel_exponents), 0.0, abs_tol=1e-12)

    @property
    def stationary(self) -> bool:
        """Tangent kernel constant in the limit: ``q_sigma > -1``."""
        return self.q_sigma > -1.0 + 1e-12

    @property
    def limit(self) -> str:
        """Name of the limit model (docs/math.md §10.3).

        ``"ntk"`` (q_sigma = -1/2), ``"ntk_vanishing_init"`` (-1 < q_sigma < -1/2: constant
        kernel, f_0 -> 0, i.e. the mean predictor), ``"mean_field"`` (q_sigma = -1),
        ``"beyond_mean_field"`` (q_sigma < -1), ``"unbounded_init"`` (q_sigma > -1/2),
        ``"unstable"`` / ``"frozen"`` off the stable manifold (increments blow up / vanish).
        """
        top = max(self.kernel_exponents)
        if not self.stable:
            return "unstable" if top > 0 else "frozen"
        if math.isclose(self.q_sigma, -0.5, abs_tol=1e-12):
            return "ntk"
        if math.isclose(self.q_sigma, -1.0, abs_tol=1e-12):
            return "mean_field"
        if self.q_sigma > -0.5:
            return "unbounded_init"
        return "ntk_vanishing_init" if self.q_sigma > -1.0 else "beyond_mean_field"

    def readout_multiplier(self, width: int) -> float:
        """``n^q_sigma`` (times ``sigma_w`` in the network): the readout's forward factor."""
        return float(width) ** self.q_sigma

    def learning_rate_multipliers(self, width: int) -> tuple[float, float]:
        """``(n^q_w, n^q_a)``: multipliers of the hidden and readout learning rates."""
        return float(width) ** self.q_w, float(width) ** self.q_a


NTK_SCALING = WidthScaling(-0.5, 0.0, 0.0)
MEAN_FIELD_SCALING = WidthScaling(-1.0, 1.0, 1.0)


# --------------------------------------------------------------------------------------------
# The finite network


@dataclass(frozen=True, eq=False)
class FiniteMLP:
    """A finite-width MLP of architecture ``arch`` with concrete parameters.

    Attributes
    ----------
    arch : MLP
    width : int
        Hidden width ``n`` (all hidden layers).
    weights : tuple of arrays
        ``W^1`` (n, d), ``W^2..W^L`` (n, n), readout ``W^{L+1}`` (1, n).
    biases : tuple of arrays
        ``b^1..b^L`` (n,), readout ``b^{L+1}`` (1,).
    scaling : WidthScaling
        ``NTK_SCALING`` (the parametrisation of docs/math.md §1.1) unless set by
        :func:`init_network`.

    Use :func:`init_network` to build one; :func:`with_parameters` and :func:`train` return new
    instances (the arrays are never modified in place).
    """

    arch: MLP
    width: int
    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    scaling: WidthScaling = field(default=NTK_SCALING)

    @property
    def d(self) -> int:
        """Input dimension."""
        return self.weights[0].shape[1]

    @property
    def multipliers(self) -> tuple[float, ...]:
        """Forward factors ``alpha_l`` of the weights, l = 1..L+1."""
        sw = self.arch.sigma_w
        hidden = [sw / math.sqrt(self.d)] + [sw / math.sqrt(self.width)] * (self.arch.depth - 1)
        return (*hidden, sw * self.scaling.readout_multiplier(self.width))

    @property
    def learning_rate_multipliers(self) -> tuple[float, ...]:
        """Per-layer learning-rate factors ``lr_l`` (all 1 under ``NTK_SCALING``)."""
        hidden, readout = self.scaling.learning_rate_multipliers(self.width)
        return (hidden,) * self.arch.depth + (readout,)

    @property
    def n_parameters(self) -> int:
        """Total number of scalar parameters."""
        return sum(w.size for w in self.weights) + sum(b.size for b in self.biases)


def _check_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def init_network(
    arch: MLP, d: int, width: int, seed=0, *, scaling: WidthScaling | None = None
) -> FiniteMLP:
    """Draw a finite network with i.i.d. N(0, 1) weights and biases.

    Parameters
    ----------
    arch : MLP
    d : int
        Input dimension (>= 1).
    width : int
        Hidden width ``n`` (>= 1).
    seed : int, SeedSequence or Generator
        Passed to ``numpy.random.default_rng``; the same seed gives the same network.
    scaling : WidthScaling, optional
        Width-scaling exponents (docs/math.md §10.3); only for ``arch.depth == 1`` unless it is
        ``NTK_SCALING`` (the default).

    Returns
    -------
    FiniteMLP
    """
    if not isinstance(arch, MLP):
        raise ValueError(f"arch must be a jacntk.MLP, got {type(arch).__name__}")
    d = _check_int(d, "d")
    width = _check_int(width, "width")
    scaling = NTK_SCALING if scaling is None else scaling
    if not isinstance(scaling, WidthScaling):
        raise ValueError(f"scaling must be a WidthScaling, got {scaling!r}")
    if scaling != NTK_SCALING and arch.depth != 1:
        raise ValueError(
            f"width scalings other than NTK_SCALING are defined for one-hidden-layer networks "
            f"(docs/math.md §10.3); got depth {arch.depth}"
        )
    rng = np.random.default_rng(seed)
    fan_in = [d] + [width] * arch.depth
    fan_out = [width] * arch.depth + [1]
    weights = tuple(rng.standard_normal((o, i)) for i, o in zip(fan_in, fan_out, strict=True))
    biases = tuple(rng.standard_normal(o) for o in fan_out)
    return FiniteMLP(arch, width, weights, biases, scaling)


def parameter_vector(net: FiniteMLP) -> np.ndarray:
    """All parameters as one vector ``theta``: W^1, b^1, W^2, b^2, ..., W^{L+1}, b^{L+1}."""
    pairs = zip(net.weights, net.biases, strict=True)
    return np.concatenate([a.ravel() for pair in pairs for a in pair])


def with_parameters(net: FiniteMLP, theta) -> FiniteMLP:
    """A copy of ``net`` with the parameters of the vector ``theta`` (layout of
    :func:`parameter_vector`)."""
    theta = as_vector(theta, net.n_parameters, "theta")
    if theta.ndim != 1:
        raise ValueError(f"theta must be 1-D, got shape {theta.shape}")
    weights, biases, at = [], [], 0
    for w, b in zip(net.weights, net.biases, strict=True):
        weights.append(theta[at : at + w.size].reshape(w.shape).copy())
        at += w.size
        biases.append(theta[at : at + b.size].copy())
        at += b.size
    return replace(net, weights=tuple(weights), biases=tuple(biases))


def _activation_table(activation: str, z: np.ndarray, second: bool):
    """``phi(z), phi'(z), phi''(z)`` elementwise (``phi'' = 0`` for ReLU and when not
    ``second``)."""
    code = get_activation(activation).code
    if code == RELU:
        return np.maximum(z, 0.0), (z > 0).astype(np.float64), None
    out = np.empty((3, z.size))
    _smooth_table(code, np.ascontiguousarray(z).ravel(), out)
    phi, dphi, ddphi = out.reshape(3, *z.shape)
    return phi, dphi, (ddphi if second else None)


@njit(cache=True)
def _smooth_table(act, z, out):
    """``out[k, i] = phi^(k)(z[i])`` for k = 0, 1, 2
    (``jacntk.kernels._moments.activation_derivatives``)."""
    buf = np.empty(5)
    for i in range(z.shape[0]):
        activation_derivatives(act, z[i], buf)
        out[0, i] = buf[0]
        out[1, i] = buf[1]
        out[2, i] = buf[2]


@dataclass
class _Pass:
    """Forward stacks of one point set (see the module docstring)."""

    inputs: list  # A^{l-1}, l = 1..L+1: (N, k, n_{l-1}), k = d+1 or 1
    outputs: np.ndarray  # (N, k): kappa z^{L+1} stacked = (f, grad f)
    tables: list  # hidden layers: (phi', phi'' or None, tangents d z^l (N, k-1, n))


def _forward(net: FiniteMLP, X: np.ndarray, tangents: bool) -> _Pass:
    N, d = X.shape
    k = d + 1 if tangents else 1
    A = np.zeros((N, k, d))
    A[:, 0, :] = X
    if tangents:
        A[:, 1:, :] = np.eye(d)
    inputs, tables = [], []
    alphas = net.multipliers
    beta = net.arch.sigma_b
    for layer, (W, b) in enumerate(zip(net.weights, net.biases, strict=True)):
        inputs.append(A)
        Z = (alphas[layer] * (A.reshape(N * k, -1) @ W.T)).reshape(N, k, W.shape[0])
        Z[:, 0, :] += beta * b
        if layer == net.arch.depth:
            return _Pass(inputs, net.arch.kappa * Z[:, :, 0], tables)
        phi, dphi, ddphi = _activation_table(net.arch.activation, Z[:, 0, :], tangents)
        A = np.empty_like(Z)
        A[:, 0, :] = phi
        A[:, 1:, :] = dphi[:, None, :] * Z[:, 1:, :]
        tables.append((dphi, ddphi, Z[:, 1:, :]))
    raise AssertionError("unreachable")


def _backward(net: FiniteMLP, fw: _Pass, second: bool = True) -> list[np.ndarray]:
    """Cotangent stacks ``U^l = [u^l; s^l_1..s^l_d]``, l = 1..L+1 (module docstring);
    ``second=False`` drops the ``phi''`` term (the truncated kernel)."""
    N, k = fw.outputs.shape
    U = np.zeros((N, k, 1))
    U[:, 0, 0] = net.arch.kappa
    cot = [U]
    alphas = net.multipliers
    for layer in range(net.arch.depth, 0, -1):
        W = net.weights[layer]
        M = (alphas[layer] * (U.reshape(N * k, -1) @ W)).reshape(N, k, W.shape[1])
        dphi, ddphi, G = fw.tables[layer - 1]
        U = dphi[:, None, :] * M
        if second and ddphi is not None and k > 1:
            U[:, 1:, :] += (ddphi * M[:, 0, :])[:, None, :] * G
        cot.append(U)
    return cot[::-1]


def forward(net: FiniteMLP, X) -> tuple[np.ndarray, np.ndarray]:
    """Outputs and input-gradients of the network.

    Parameters
    ----------
    net : FiniteMLP
    X : (N, d) array_like

    Returns
    -------
    values : (N,) float64
        ``f(x_i)``.
    gradients : (N, d) float64
        ``grad_x f(x_i)`` (forward-mode tangents, exact).
    """
    X = _check_inputs(net, X, "X")
    out = _forward(net, X, tangents=True).outputs
    return out[:, 0].copy(), out[:, 1:].copy()


def _check_inputs(net: FiniteMLP, X, name: str) -> np.ndarray:
    if not isinstance(net, FiniteMLP):
        raise ValueError(f"net must be a FiniteMLP (see init_network), got {type(net).__name__}")
    X = as_points(X, name)
    if X.shape[1] != net.d:
        raise ValueError(f"{name} has d = {X.shape[1]} but the network expects d = {net.d}")
    return X


# --------------------------------------------------------------------------------------------
# Empirical kernels
