"""Finite networks as ground truth for the infinite-width kernels (math.md §0.1, §4, §5.11, §7).

A :class:`FiniteMLP` is the network of math.md §0.1 at a finite hidden width ``n``, with
standard-normal parameters drawn from a seed::

    z^1     = alpha_1 W^1 x + sigma_b b^1,                 alpha_1 = sigma_w / sqrt(d)
    z^{l+1} = alpha_{l+1} W^{l+1} phi(z^l) + sigma_b b^{l+1}, alpha_{l+1} = sigma_w / sqrt(n)
    f(x)    = kappa z^{L+1}                                (readout: W^{L+1} of shape (1, n))

(and, for one-hidden-layer nets under a :class:`WidthScaling`, ``alpha_2 = sigma_w n^q_sigma``
with per-layer learning-rate multipliers, math.md §7).

Everything is computed on stacks that carry the value and the ``d`` input-derivatives together:

* forward: ``A^l = [phi(z^l); phi'(z^l) * d_1 z^l; ...; phi'(z^l) * d_d z^l]`` of shape
  ``(N, d+1, n)`` (``A^0 = [x; e_1; ...; e_d]``), so ``F = (f, grad_x f) = kappa z^{L+1}`` stacked;
* backward, reverse mode with respect to the pre-activations (math.md §5.11, §8 recipe 3):
  ``u^l = df/dz^l`` and its input-derivatives ``s^l_a = d/dx_a u^l``::

      m^l   = alpha_{l+1} W^{l+1 T} u^{l+1},     u^l = phi'(z^l) m^l,       u^{L+1} = kappa
      s^l_a = phi''(z^l) (d_a z^l) m^l + phi'(z^l) alpha_{l+1} W^{l+1 T} s^{l+1}_a,  s^{L+1} = 0

  stacked as ``U^l = [u^l; s^l_1; ...; s^l_d]``.  Since ``F_0 = f`` and
  ``F_a = d_a f = u^l . d_a z^l``, the parameter gradients of layer ``l`` are
  ``dF_0/dW^l = alpha_l u (x) a``, ``dF_a/dW^l = alpha_l (s_a (x) a + u (x) d_a a)``
  (``a = A^{l-1}`` rows) and ``dF_0/db^l = sigma_b u``, ``dF_a/db^l = sigma_b s_a``.

The empirical Jacobian NTK ``Theta_hat_ab(x, x') = <d_theta F_a(x), d_theta F_b(x')>`` (math.md
§4.1) therefore never needs the parameter Jacobian: with the per-layer ``(d+1) x (d+1)`` Grams
``P = U U'^T`` and ``Q = A A'^T`` of each pair,

    Theta_hat_ab += lr_l [ alpha_l^2 (P_ab Q_00 + [b>0] P_a0 Q_0b + [a>0] P_0b Q_a0
                                      + [a>0][b>0] P_00 Q_ab) + sigma_b^2 P_ab ]

summed over the layers ``l = 1..L+1`` (``lr_l`` = learning-rate multiplier, 1 in the NTK
parametrisation).  The readout layer alone (``P = kappa^2 e_0 e_0^T``) is the covariance of ``F``
conditional on the hidden layers, ``kappa^2 (alpha_{L+1}^2 A^L A'^{L T} + sigma_b^2 e_0 e_0^T)``
— the low-variance Jacobian-NNGP estimator (math.md §8 recipe 3).  For ReLU ``phi'' = 0``
(autodiff semantics), so the empirical JNTK of a ReLU net follows ``kind="ntk_truncated"``
(math.md §5.9); ``kind="ntk_truncated"`` sets ``phi'' := 0`` for any activation.

All outputs use the conventions of :func:`jacntk.kernel`: row index from the first argument,
index 0 the value, point-major ``(n1 (d+1), n2 (d+1))`` matrices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from numba import njit

from .arch import MLP, check_kind
from .moments import ACT_CODES, activation_derivatives
from .validation import as_pair, as_points, as_vector

__all__ = [
    "MEAN_FIELD_SCALING",
    "NTK_SCALING",
    "FiniteMLP",
    "MonteCarloKernel",
    "TrainingRun",
    "WidthScaling",
    "empirical_kernel",
    "forward",
    "init_network",
    "loss",
    "loss_gradient",
    "monte_carlo_kernel",
    "monte_carlo_kernels",
    "parameter_vector",
    "relative_drift",
    "train",
    "with_parameters",
]


# --------------------------------------------------------------------------------------------
# Width scalings (math.md §7)


@dataclass(frozen=True)
class WidthScaling:
    """Width-scaling exponents of a one-hidden-layer network (math.md §7, Golikov 2006.06574).

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
        """Name of the limit model (math.md §7).

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
        ``NTK_SCALING`` (the parametrisation of math.md §0.1) unless set by :func:`init_network`.

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
        Width-scaling exponents (math.md §7); only for ``arch.depth == 1`` unless it is
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
            f"(math.md §7); got depth {arch.depth}"
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
    if activation == "relu":
        return np.maximum(z, 0.0), (z > 0).astype(np.float64), None
    out = np.empty((3, z.size))
    _smooth_table(ACT_CODES[activation], np.ascontiguousarray(z).ravel(), out)
    phi, dphi, ddphi = out.reshape(3, *z.shape)
    return phi, dphi, (ddphi if second else None)


@njit(cache=True)
def _smooth_table(act, z, out):
    """``out[k, i] = phi^(k)(z[i])`` for k = 0, 1, 2 (``jacntk.moments.activation_derivatives``)."""
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


def _pair_grams(S1: np.ndarray, S2: np.ndarray) -> np.ndarray:
    """``G[i, a, j, b] = <S1[i, a], S2[j, b]>`` for stacks of shape (n, k, m)."""
    n1, k, m = S1.shape
    n2 = S2.shape[0]
    return (S1.reshape(n1 * k, m) @ S2.reshape(n2 * k, m).T).reshape(n1, k, n2, k)


def _layer_term(P: np.ndarray, Q: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """One layer's contribution to the empirical (J)NTK from its Grams ``P = U U'^T`` and
    ``Q = A A'^T`` (shape (n1, k, n2, k)); formula in the module docstring."""
    T = P * Q[:, :1, :, :1]
    if P.shape[1] > 1:
        T[:, :, :, 1:] += P[:, :, :, :1] * Q[:, :1, :, 1:]
        T[:, 1:, :, :] += P[:, :1, :, :] * Q[:, 1:, :, :1]
        T[:, 1:, :, 1:] += P[:, :1, :, :1] * Q[:, 1:, :, 1:]
    T *= alpha**2
    if beta:
        T += beta**2 * P
    return T


def _net_kernels(
    net: FiniteMLP,
    X1: np.ndarray,
    X2: np.ndarray,
    symmetric: bool,
    kinds: Sequence[str],
    jacobian: bool,
    outer: bool = False,
) -> dict[str, np.ndarray]:
    """Readout-conditional (or, with ``outer``, outer-product) NNGP and/or empirical
    (truncated) NTK of one network, as 4-D arrays (n1, k, n2, k)."""
    out: dict[str, np.ndarray] = {}
    beta = net.arch.sigma_b
    alphas = net.multipliers
    lr = net.learning_rate_multipliers
    fw1 = _forward(net, X1, jacobian)
    fw2 = fw1 if symmetric else _forward(net, X2, jacobian)
    for kind in kinds:
        if kind == "nngp" and outer:
            out[kind] = np.einsum("ia,jb->iajb", fw1.outputs, fw2.outputs)
            continue
        if kind == "nngp":
            Q = _pair_grams(fw1.inputs[-1], fw2.inputs[-1])
            k2 = net.arch.kappa**2
            T = k2 * alphas[-1] ** 2 * Q
            T[:, 0, :, 0] += k2 * beta**2
            out[kind] = T
            continue
        second = kind == "ntk"
        U1 = _backward(net, fw1, second)
        U2 = U1 if symmetric else _backward(net, fw2, second)
        total = 0.0
        for layer in range(net.arch.depth + 1):
            P = _pair_grams(U1[layer], U2[layer])
            Q = _pair_grams(fw1.inputs[layer], fw2.inputs[layer])
            total = total + lr[layer] * _layer_term(P, Q, alphas[layer], beta)
        out[kind] = total
    return out


def _flatten(K4: np.ndarray, jacobian: bool) -> np.ndarray:
    n1, k, n2, _ = K4.shape
    if not jacobian:
        return K4[:, 0, :, 0].copy()
    return K4.reshape(n1 * k, n2 * k)


def _check_kinds(arch: MLP, kinds, jacobian: bool) -> tuple[str, ...]:
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if not kinds:
        raise ValueError("kinds is empty; give at least one of 'nngp', 'ntk', 'ntk_truncated'")
    for kind in kinds:
        check_kind(arch, kind, jacobian)
    return kinds


def empirical_kernel(
    net: FiniteMLP, X1, X2=None, *, kind: str = "ntk", jacobian: bool = False
) -> np.ndarray:
    """Empirical kernel of one finite network, in the layout of :func:`jacntk.kernel`.

    Parameters
    ----------
    net : FiniteMLP
    X1 : (n1, d) array_like
    X2 : (n2, d) array_like, optional
        Defaults to ``X1``.
    kind : {"ntk", "ntk_truncated", "nngp"}
        ``"ntk"``: ``Theta_hat_ab(x, x') = <d_theta F_a(x), d_theta F_b(x')>`` with
        ``F = (f, grad_x f)`` (math.md §4.1), weighted by the learning-rate multipliers of
        ``net.scaling`` (all 1 in the NTK parametrisation).  ``"ntk_truncated"``: the same with
        ``phi'' := 0`` (what autodiff gives for ReLU).  ``"nngp"``: the covariance of ``F``
        conditional on the hidden layers, ``kappa^2 (alpha_{L+1}^2 A^L(x) A^L(x')^T + sigma_b^2
        e_0 e_0^T)``, whose mean over initialisations is the finite-width Jacobian NNGP.
    jacobian : bool
        If False, only the value-value entries (the scalar empirical NTK / NNGP).

    Returns
    -------
    (n1, n2) or (n1 (d+1), n2 (d+1)) float64, point-major.

    Raises
    ------
    ValueError
        Bad points, unknown kind, or ``kind="ntk"`` with ``jacobian=True`` for ReLU (use
        ``"ntk_truncated"``: a finite ReLU net's autodiff JNTK, math.md §5.9).
    """
    X1 = _check_inputs(net, X1, "X1")
    X1, X2, symmetric = as_pair(X1, X2)
    X2 = _check_inputs(net, X2, "X2")
    (kind,) = _check_kinds(net.arch, kind, jacobian)
    return _flatten(_net_kernels(net, X1, X2, symmetric, (kind,), jacobian)[kind], jacobian)


def relative_drift(kernels, reference=None) -> np.ndarray:
    """``max|K_k - K_ref| / max|K_ref|`` for each kernel of a stack (math.md §8, Fig. 3).

    Parameters
    ----------
    kernels : (m, ...) array_like
    reference : array_like, optional
        Defaults to ``kernels[0]`` (the kernel at initialisation).

    Returns
    -------
    (m,) float64
    """
    K = np.asarray(kernels, dtype=np.float64)
    ref = K[0] if reference is None else np.asarray(reference, dtype=np.float64)
    if ref.shape != K.shape[1:]:
        raise ValueError(f"reference shape {ref.shape} does not match kernels {K.shape[1:]}")
    scale = np.abs(ref).max()
    if not scale > 0:
        raise ValueError("reference kernel is zero; the relative drift is undefined")
    return np.abs(K - ref).reshape(K.shape[0], -1).max(axis=1) / scale


# --------------------------------------------------------------------------------------------
# Monte Carlo over initialisations


@dataclass(frozen=True, eq=False)
class MonteCarloKernel:
    """Monte-Carlo estimate of a finite-width kernel over independent initialisations.

    Attributes
    ----------
    mean, stderr : arrays of the kernel's shape
        Sample mean and its standard error ``std(ddof=1) / sqrt(n_networks)``, entrywise.
    samples : (n_networks, ...) array or None
        Per-network estimates when ``keep_samples=True`` (e.g. for bootstrap CIs).
    """

    mean: np.ndarray
    stderr: np.ndarray
    n_networks: int
    width: int
    kind: str
    jacobian: bool
    estimator: str
    samples: np.ndarray | None = None

    @property
    def relative_stderr(self) -> float:
        """``max(stderr) / max|mean|``: the Monte-Carlo error relative to the kernel's scale."""
        return float(self.stderr.max() / np.abs(self.mean).max())

    def zscores(self, reference) -> np.ndarray:
        """``(mean - reference) / stderr`` entrywise (0 where both difference and stderr are 0)."""
        diff = self.mean - np.asarray(reference, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = diff / self.stderr
        return np.where((self.stderr == 0) & (diff == 0), 0.0, z)


ESTIMATORS = ("conditional", "outer")


def monte_carlo_kernels(
    arch: MLP,
    X1,
    X2=None,
    *,
    width: int,
    n_networks: int,
    kinds: Sequence[str] = ("nngp", "ntk"),
    jacobian: bool = True,
    seed: int = 0,
    estimator: str = "conditional",
    keep_samples: bool = False,
) -> dict[str, MonteCarloKernel]:
    """Several Monte-Carlo kernel estimates from the same ``n_networks`` random networks.

    Network ``i`` is ``init_network(arch, d, width, s_i)`` with ``s_i`` the ``i``-th child of
    ``numpy.random.SeedSequence(seed)``.  Per network, ``"ntk"``/``"ntk_truncated"`` use
    :func:`empirical_kernel`; ``"nngp"`` uses the readout-conditional covariance
    (``estimator="conditional"``, low variance) or the outer product ``F(x) F(x')^T`` of the
    network's own ``F = (f, grad_x f)`` (``estimator="outer"``, the plain Monte Carlo over
    initialisations; both have the same expectation at any width).

    Returns
    -------
    dict kind -> MonteCarloKernel, each of shape (n1, n2) or (n1 (d+1), n2 (d+1)).
    """
    A = as_points(X1, "X1")
    A, B, symmetric = as_pair(A, X2)
    width = _check_int(width, "width")
    n_networks = _check_int(n_networks, "n_networks", 2)
    kinds = _check_kinds(arch, kinds, jacobian)
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")
    d = A.shape[1]
    mean: dict[str, np.ndarray] = {}
    m2: dict[str, np.ndarray] = {}  # Welford: sum of squared deviations from the running mean
    kept: dict[str, list] = {kind: [] for kind in kinds}
    for count, child in enumerate(np.random.SeedSequence(seed).spawn(n_networks), start=1):
        net = init_network(arch, d, width, child)
        est = _net_kernels(net, A, B, symmetric, kinds, jacobian, estimator == "outer")
        for kind, value in est.items():
            value = _flatten(value, jacobian)
            if count == 1:
                mean[kind] = value.copy()
                m2[kind] = np.zeros_like(value)
            else:
                delta = value - mean[kind]
                mean[kind] += delta / count
                m2[kind] += delta * (value - mean[kind])
            if keep_samples:
                kept[kind].append(value)
    result = {}
    m = n_networks
    for kind in kinds:
        result[kind] = MonteCarloKernel(
            mean=mean[kind],
            stderr=np.sqrt(m2[kind] / (m - 1) / m),
            n_networks=m,
            width=width,
            kind=kind,
            jacobian=jacobian,
            estimator=estimator if kind == "nngp" else "empirical",
            samples=np.stack(kept[kind]) if keep_samples else None,
        )
    return result


def monte_carlo_kernel(
    arch: MLP,
    X1,
    X2=None,
    *,
    width: int,
    n_networks: int,
    kind: str = "ntk",
    jacobian: bool = True,
    seed: int = 0,
    estimator: str = "conditional",
    keep_samples: bool = False,
) -> MonteCarloKernel:
    """One Monte-Carlo kernel estimate; see :func:`monte_carlo_kernels`."""
    if not isinstance(kind, str):
        raise ValueError(f"kind must be a string, got {kind!r}")
    return monte_carlo_kernels(
        arch,
        X1,
        X2,
        width=width,
        n_networks=n_networks,
        kinds=(kind,),
        jacobian=jacobian,
        seed=seed,
        estimator=estimator,
        keep_samples=keep_samples,
    )[kind]


# --------------------------------------------------------------------------------------------
# Jacobian-regularised loss and full-batch gradient descent (math.md §0.4, §3)


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
    """``L = 1/(2N) sum_i [(f(x_i) - y_i)^2 + lam |grad_x f(x_i)|^2]`` (math.md §0.4)."""
    X, y = _check_targets(net, X, y)
    return _loss_and_gradient(net, X, y, _check_reg(jacobian_reg), grad=False)[0]


def loss_gradient(
    net: FiniteMLP, X, y, *, jacobian_reg: float = 0.0
) -> tuple[float, tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """The loss of math.md §0.4 and its exact gradient with respect to every parameter.

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
    """Full-batch gradient descent on the Jacobian-regularised loss (math.md §0.4, §3).

    ``theta_{k+1} = theta_k - learning_rate lr_l dL/dtheta`` (``lr_l`` from ``net.scaling``, 1
    in the NTK parametrisation): the Euler scheme, with unit time step, of the gradient flow
    ``theta' = -learning_rate grad L``.  In the infinite-width limit ``k`` steps give the discrete
    predictor ``psi_k`` with ``c = learning_rate kappa^2 / N`` on the kappa-free kernel
    (math.md §4.4), i.e.
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
        Steps at which to record the empirical JNTK (math.md §8, Fig. 3).
    kernel_points : (n_k, d), optional
        Points of the recorded kernels (default: the training points).

    Raises
    ------
    ValueError
        Bad inputs, or a non-finite loss (the learning rate is too large: GD is stable only for
        ``c lambda_max(B) < 2``, math.md §4.4).
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
    kind = "ntk_truncated" if net.arch.activation == "relu" else "ntk"
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
                f"{learning_rate} is too large (GD needs c lambda_max(B) < 2, math.md §4.4)"
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
