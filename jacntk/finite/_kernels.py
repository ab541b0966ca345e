"""Empirical and Monte-Carlo kernels of finite networks (docs/math.md §3.3, §10.5)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..arch import MLP, check_kind
from ..validation import as_pair, as_points
from ._network import FiniteMLP, _backward, _check_inputs, _check_int, _forward, init_network


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
        ``F = (f, grad_x f)`` (docs/math.md §3.3), weighted by the learning-rate multipliers of
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
        ``"ntk_truncated"``: a finite ReLU net's autodiff JNTK, docs/math.md §7).
    """
    X1 = _check_inputs(net, X1, "X1")
    X1, X2, symmetric = as_pair(X1, X2)
    X2 = _check_inputs(net, X2, "X2")
    (kind,) = _check_kinds(net.arch, kind, jacobian)
    return _flatten(_net_kernels(net, X1, X2, symmetric, (kind,), jacobian)[kind], jacobian)


def relative_drift(kernels, reference=None) -> np.ndarray:
    """``max|K_k - K_ref| / max|K_ref|`` for each kernel of a stack (docs/math.md §12, Fig. 3).

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
# Jacobian-regularised loss and full-batch gradient descent (docs/math.md §1.4, §8.1)
