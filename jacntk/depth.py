"""Signal propagation with depth: Edge of Chaos and the large-depth NTK (docs/math.md §9).

For the MLP of docs/math.md §1.1 (NTK parametrisation, ``omega = sigma_w^2``) a single input's
pre-activation variance follows the *variance map*

    q_{l+1} = sigma_b^2 + omega V(q_l),          V(q) = E[phi(sqrt(q) z)^2],  z ~ N(0, 1),

with a stable fixed point ``q*``.  Two inputs at the fixed point with correlation ``c`` follow the
*correlation map*

    c_{l+1} = F(c_l) = (sigma_b^2 + omega E[phi(u) phi(u')]) / q*,
    (u, u') ~ N(0, q* [[1, c], [c, 1]]),

whose slope at ``c = 1`` is ``chi = omega E[phi'(sqrt(q*) z)^2]``.  Phases: ordered ``chi < 1``,
chaotic ``chi > 1``, Edge of Chaos (EOC) ``chi = 1``.  Solving ``chi = 1`` and ``V``'s fixed-point
equation for ``(omega, sigma_b^2)`` at a given ``q*`` gives the EOC curve

    sigma_w^2(q*) = 1 / E[phi'(sqrt(q*) z)^2],      sigma_b^2(q*) = q* - sigma_w^2(q*) V(q*)

(a point exists where ``sigma_b^2 >= 0``); for erf this is ``sigma_w^2 = pi/4 sqrt(1 + 4 q*)``,
for ReLU the single point ``(sigma_w^2, sigma_b) = (2, 0)``.

Every Gaussian expectation here is a moment ``F^{ij}(c, a, b)`` of :mod:`jacntk.kernels._moments`
(closed
forms for erf and ReLU, the trapezoid rule for the rest); the kernels themselves come from
:func:`jacntk.kernel`, never from a second implementation.

Large depth [D] (docs/math.md §9.2): with ``depth = L`` hidden layers the NTK is a sum of ``L + 1``
layer terms, so on the EOC ``Theta(x, x) / (L + 1) -> q*`` and the normalised off-diagonal
``Theta(x, x') / sqrt(Theta(x, x) Theta(x', x'))`` tends to ``1/3`` for smooth activations and
``1/4`` for ReLU, at a rate ~ ``1/L``.  Derivation: near ``c = 1`` on the EOC,
``1 - c_{l+1} = (1 - c_l) - F''(1) (1 - c_l)^2 / 2`` so ``1 - c_l ~ 2 / (F''(1) l)`` and the layer's
``Sigma-dot`` ratio is ``1 - F''(1) (1 - c_l) ~ 1 - 2/l``; the product over the layers above ``l``
is ``(l/L)^2`` and ``sum_l q* (l/L)^2 ~ q* L / 3``.  For ReLU ``1 - c_l ~ 9 pi^2 / (2 l^2)`` and the
product is ``(l/L)^3``, giving ``1/4``.  Off the EOC the limit is reached exponentially fast:
``1`` in the ordered phase (the kernel becomes constant) and ``0`` in the chaotic phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .arch import MLP
from .kernels._activations import get_activation
from .kernels._compute import kernel
from .kernels._moments import N_MOMENTS, SCALAR, gaussian_moments, quadrature_step
from .validation import as_points

#: Relative tolerance on ``|chi - 1|`` under which :func:`phase` reports the Edge of Chaos.
EOC_TOL = 1e-6
PHASES = ("ordered", "eoc", "chaotic")
#: Largest pre-activation variance :func:`fixed_point` searches (beyond it: "grows without bound").
MAX_VARIANCE = 1e6


def _check_activation(activation: str) -> int:
    """The registry's dispatch code of ``activation`` (``ValueError`` for an unknown name)."""
    return get_activation(activation).code


def _check_scales(sigma_w: float, sigma_b: float) -> tuple[float, float]:
    # MLP validates (sigma_w > 0, sigma_b >= 0, finite) and names the bad value.
    arch = MLP(1, "erf", sigma_w=sigma_w, sigma_b=sigma_b)
    return arch.sigma_w**2, arch.sigma_b**2


def _check_variance(q: float, name: str = "q") -> float:
    if isinstance(q, bool) or not isinstance(q, (int, float, np.floating)) or not math.isfinite(q):
        raise ValueError(f"{name} must be a finite number, got {q!r}")
    if q <= 0:
        raise ValueError(f"{name} must be positive, got {q}")
    return float(q)


def _moments(act: int, c: float, q: float) -> np.ndarray:
    """``F^{ij}(c, q, q)`` (F00 and F11 at least) for a pair of equal variances ``q``."""
    F = np.empty(N_MOMENTS)
    gaussian_moments(act, c, q, q, SCALAR, quadrature_step(act), F)
    return F


def gaussian_variance(activation: str, q: float) -> float:
    """``V(q) = E[phi(sqrt(q) z)^2]`` for ``z ~ N(0, 1)`` (``F^{00}(q, q, q)``)."""
    act = _check_activation(activation)
    return float(_moments(act, _check_variance(q), q)[0])


def derivative_moment(activation: str, q: float) -> float:
    """``E[phi'(sqrt(q) z)^2]`` (``F^{11}(q, q, q)``); ``chi = sigma_w^2`` times this."""
    act = _check_activation(activation)
    return float(_moments(act, _check_variance(q), q)[1])


def variance_map(activation: str, q: float, sigma_w: float = 1.0, sigma_b: float = 0.0) -> float:
    """One layer of the variance map: ``sigma_b^2 + sigma_w^2 V(q)``."""
    omega, sb2 = _check_scales(sigma_w, sigma_b)
    return sb2 + omega * gaussian_variance(activation, q)


def fixed_point(
    activation: str,
    sigma_w: float = 1.0,
    sigma_b: float = 0.0,
    *,
    q0: float = 1.0,
    xtol: float = 1e-14,
) -> float:
    """The fixed point ``q*`` of the variance map that iterating from ``q0`` approaches.

    ``V`` is increasing, so the iterates move monotonically towards the nearest root of
    ``g(q) = sigma_b^2 + sigma_w^2 V(q) - q`` in the direction of ``g(q0)``'s sign.  That root is
    bracketed on a logarithmic grid (factors of ``10^0.1``) and polished by Brent's method, which
    also handles slow (sublinear) convergence near the EOC.  Returns ``0.0`` when the variance
    decays to zero (e.g. erf with ``sigma_b = 0`` and ``sigma_w^2 <= pi/4``), and ``q0`` when
    ``q0`` is itself fixed (ReLU at ``sigma_w^2 = 2, sigma_b = 0`` fixes every ``q``).  A fixed
    point can be unstable: on GELU's and SiLU's EOC curves ``sigma_w^2 V'(q*) > 1``, so from any
    ``q0 != q*`` the iteration leaves ``q*``.

    Raises
    ------
    ValueError
        Bad arguments, or no finite fixed point: the variance grows without bound (chaotic
        ReLU-like activations).
    """
    from scipy.optimize import brentq

    act = _check_activation(activation)
    omega, sb2 = _check_scales(sigma_w, sigma_b)
    q0 = _check_variance(q0, "q0")

    def g(q: float) -> float:
        return sb2 + omega * float(_moments(act, q, q)[0]) - q

    g0 = g(q0)
    if abs(g0) <= 1e-14 * q0:
        return q0
    step = 10.0 ** (0.1 if g0 > 0 else -0.1)
    lo = q0
    for _ in range(150):  # up to a factor 1e15 below q0, or up to MAX_VARIANCE
        hi = lo * step
        if hi > MAX_VARIANCE:
            break
        if (g(hi) > 0) != (g0 > 0):
            return float(brentq(g, min(lo, hi), max(lo, hi), xtol=xtol * min(lo, hi), rtol=1e-15))
        lo = hi
    if g0 < 0:
        return 0.0
    raise ValueError(
        f"the variance map of {activation} with sigma_w={sigma_w}, sigma_b={sigma_b} has "
        f"no fixed point below {MAX_VARIANCE:g}: the pre-activation variance grows without bound"
    )


def chi(activation: str, sigma_w: float = 1.0, sigma_b: float = 0.0, *, q0: float = 1.0) -> float:
    """Slope of the correlation map at ``c = 1``: ``sigma_w^2 E[phi'(sqrt(q*) z)^2]``.

    ``q*`` is :func:`fixed_point` from ``q0``; at ``q* = 0`` it is ``sigma_w^2 phi'(0)^2``.
    """
    _check_activation(activation)
    q_star = fixed_point(activation, sigma_w, sigma_b, q0=q0)
    omega = sigma_w**2
    if q_star == 0.0:
        return omega * derivative_moment(activation, 1e-300)
    return omega * derivative_moment(activation, q_star)


def phase(activation: str, sigma_w: float = 1.0, sigma_b: float = 0.0, *, tol: float = EOC_TOL):
    """``"ordered"`` (``chi < 1``), ``"eoc"`` (``|chi - 1| <= tol``) or ``"chaotic"``."""
    slope = chi(activation, sigma_w, sigma_b)
    if abs(slope - 1.0) <= tol:
        return "eoc"
    return "ordered" if slope < 1.0 else "chaotic"


def correlation_map(
    activation: str, c, q_star: float, sigma_w: float = 1.0, sigma_b: float = 0.0
) -> np.ndarray:
    """``F(c) = (sigma_b^2 + sigma_w^2 E[phi(u) phi(u')]) / q*`` with ``Cov(u, u') = q* [[1, c],
    [c, 1]]``, elementwise over ``c`` in ``[-1, 1]``.

    At ``c = 1`` and ``q*`` a fixed point, ``F(1) = 1`` and ``F'(1) = chi``.
    """
    act = _check_activation(activation)
    omega, sb2 = _check_scales(sigma_w, sigma_b)
    q = _check_variance(q_star, "q_star")
    cs = np.asarray(c, dtype=np.float64)
    if not np.isfinite(cs).all() or (np.abs(cs) > 1.0).any():
        raise ValueError(f"correlations must lie in [-1, 1], got {c!r}")
    flat = [(sb2 + omega * _moments(act, float(ci) * q, q)[0]) / q for ci in cs.ravel()]
    return np.array(flat).reshape(cs.shape)


@dataclass(frozen=True)
class EOCCurve:
    """Edge-of-Chaos initialisations parametrised by the fixed-point variance.

    Attributes
    ----------
    q_star, sigma_w, sigma_b : (m,) float64
        ``sigma_w`` and ``sigma_b`` are NaN where no EOC point with ``sigma_b^2 >= 0`` exists.
    activation : str
    """

    activation: str
    q_star: np.ndarray
    sigma_w: np.ndarray
    sigma_b: np.ndarray


def eoc_curve(activation: str, q_star) -> EOCCurve:
    """The EOC curve: ``sigma_w^2 = 1 / E[phi'(sqrt(q*) z)^2]``,
    ``sigma_b^2 = q* - sigma_w^2 V(q*)``, for each ``q*`` in ``q_star`` (array_like, > 0)."""
    act = _check_activation(activation)
    qs = np.atleast_1d(np.asarray(q_star, dtype=np.float64))
    if qs.ndim != 1 or not np.isfinite(qs).all() or (qs <= 0).any():
        raise ValueError(f"q_star must be positive finite numbers, got {q_star!r}")
    sw = np.empty_like(qs)
    sb = np.empty_like(qs)
    for k, q in enumerate(qs):
        F = _moments(act, q, q)
        omega = 1.0 / F[1]
        sb2 = q - omega * F[0]
        # Round-off: ReLU gives sb2 = 0 up to one ulp of q.
        if sb2 < 0 and sb2 > -1e-12 * q:
            sb2 = 0.0
        sw[k] = math.sqrt(omega) if sb2 >= 0 else np.nan
        sb[k] = math.sqrt(sb2) if sb2 >= 0 else np.nan
    return EOCCurve(activation, qs, sw, sb)


def eoc_point(activation: str, q_star: float) -> tuple[float, float]:
    """``(sigma_w, sigma_b)`` on the EOC with fixed-point variance ``q_star``.

    Raises
    ------
    ValueError
        When that ``q*`` would need ``sigma_b^2 < 0`` (no EOC point there).
    """
    curve = eoc_curve(activation, _check_variance(q_star, "q_star"))
    if not np.isfinite(curve.sigma_w[0]):
        raise ValueError(
            f"{activation} has no Edge-of-Chaos point with q* = {q_star}: it would need "
            "sigma_b^2 < 0"
        )
    return float(curve.sigma_w[0]), float(curve.sigma_b[0])


def eoc_mlp(activation: str, depth: int, q_star: float = 1.0, kappa: float = 1.0) -> MLP:
    """An :class:`MLP` initialised on the Edge of Chaos at fixed-point variance ``q_star``."""
    sigma_w, sigma_b = eoc_point(activation, q_star)
    return MLP(depth, activation, sigma_w=sigma_w, sigma_b=sigma_b, kappa=kappa)


def scale_to_variance(arch: MLP, X, q: float) -> np.ndarray:
    """Rescale every row of ``X`` so its first-layer variance ``sigma_w^2 |x|^2 / d + sigma_b^2``
    equals ``q`` (e.g. ``q*``, so the variance map starts at its fixed point).

    Returns (n, d) float64.  Raises ValueError for a zero row or ``q <= sigma_b^2``.
    """
    A = as_points(X)
    q = _check_variance(q)
    if q <= arch.sigma_b**2:
        raise ValueError(f"q = {q} must exceed sigma_b^2 = {arch.sigma_b**2}")
    norms = np.linalg.norm(A, axis=1)
    if (norms == 0).any():
        raise ValueError(f"X has a zero row (row {int(np.argmin(norms))}) that cannot be rescaled")
    target = math.sqrt((q - arch.sigma_b**2) * A.shape[1]) / arch.sigma_w
    return A * (target / norms)[:, None]


def _check_depths(depths) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(depths))
    if arr.ndim != 1 or arr.size == 0 or arr.dtype.kind not in "iu" or (arr < 1).any():
        raise ValueError(f"depths must be a non-empty list of positive integers, got {depths!r}")
    return arr.astype(np.int64)


@dataclass(frozen=True)
class DepthProfile:
    """Scalar kernel Grams of one architecture at several depths.

    Attributes
    ----------
    depths : (m,) int64
        Numbers of hidden layers ``L``.
    grams : (m, n, n) float64
        ``grams[k] = jacntk.kernel(replace(arch, depth=depths[k]), X, kind=kind)``.
    kind : str
    """

    depths: np.ndarray
    grams: np.ndarray
    kind: str

    def per_layer(self) -> np.ndarray:
        """``grams / (L + 1)``: the NTK divided by its number of layer terms, (m, n, n)."""
        return self.grams / (self.depths + 1.0)[:, None, None]

    def correlation(self) -> np.ndarray:
        """``G_ij / sqrt(G_ii G_jj)`` at each depth, (m, n, n)."""
        diag = np.sqrt(np.einsum("mii->mi", self.grams))
        return self.grams / (diag[:, :, None] * diag[:, None, :])

    def limit_gap(self, limit: float) -> np.ndarray:
        """``max_{i != j} |correlation_ij - limit|`` at each depth, (m,)."""
        corr = self.correlation()
        n = corr.shape[1]
        off = ~np.eye(n, dtype=bool)
        return np.abs(corr[:, off] - limit).max(axis=1) if n > 1 else np.zeros(len(corr))


def depth_profile(arch: MLP, X, depths, *, kind: str = "ntk") -> DepthProfile:
    """Scalar Gram ``kernel(replace(arch, depth=L), X)`` for each ``L`` in ``depths``.

    Cost: ``sum(depths)`` layer steps per pair; use a few points (2-8) for depths in the hundreds.
    """
    ds = _check_depths(depths)
    A = as_points(X)
    grams = np.stack([kernel(replace(arch, depth=int(L)), A, kind=kind) for L in ds])
    return DepthProfile(ds, grams, kind)


def ntk_correlation_limit(activation: str, sigma_w: float = 1.0, sigma_b: float = 0.0) -> float:
    """Large-depth limit of the NTK's off-diagonal correlation for distinct inputs (module
    docstring): ``1`` ordered, ``0`` chaotic, ``1/3`` smooth EOC, ``1/4`` ReLU EOC.

    Returns NaN on the degenerate EOC at ``q* = 0`` (e.g. erf at ``sigma_w^2 = pi/4, sigma_b =
    0``), where the variance decays and the network becomes near-linear.
    """
    state = phase(activation, sigma_w, sigma_b)
    if state == "ordered":
        return 1.0
    if state == "chaotic":
        return 0.0
    if fixed_point(activation, sigma_w, sigma_b) == 0.0:
        return float("nan")
    # 1/3 needs F''(1) finite (a smooth activation); the registry's only non-smooth one is ReLU.
    return 1.0 / 3.0 if get_activation(activation).smooth else 0.25
