"""Bivariate Gaussian moments of an activation and its derivatives (docs/math.md §5.1–§5.4, §7.1).

``F^{ij}(c, a, b) = E[phi^(i)(u) phi^(j)(u')]`` with ``(u, u') ~ N(0, [[a, c], [c, b]])``.
Price's theorem gives ``d/dc F^{ij} = F^{i+1,j+1}``, ``d/da F^{ij} = F^{i+2,j} / 2`` and
``d/db F^{ij} = F^{i,j+2} / 2``; the layer recursion in :mod:`jacntk.kernels._fields` uses the ten
moments

    F00, F11, F20, F02, F22, F31, F13, F33, F42, F24     (indices 0..9 of the array ``F``).

* erf: closed forms obtained by Price differentiation of
  ``F00 = 2/pi asin(2c / sqrt((1+2a)(1+2b)))`` and ``F11 = 4 / (pi sqrt(Delta))``,
  ``Delta = (1+2a)(1+2b) - 4c^2`` (always > 0).
* gelu (``phi(u) = u Phi(u)``): closed forms (docs/activations.md, "GELU in closed form") in
  ``A = 1 + a``, ``B = 1 + b``, ``D = AB - c^2 >= 1 + a + b`` and ``acos(-c / sqrt(AB))``, valid
  for all variances and every correlation, ``|c| = sqrt(ab)`` included.  The trapezoid rule over
  its derivative table stays reachable as the test code ``GELU_BY_QUADRATURE``.
* relu: closed forms with ``cos(theta) = c / sqrt(ab)`` (docs/math.md §7); F22, F31, F13 diverge
  like ``1/sin(theta)`` at ``theta = 0``, which the caller handles (collinear pairs).
* tanh, softplus, silu (and the test codes): a 2-D trapezoid rule in the original Gaussian
  variables with the analytic derivative tables of ``phi`` up to order 4 — never autodiff through
  quadrature.  In the tiles the registry's quadrature activations take the Hermite (Mehler)
  route instead (``hermite_tables`` and ``hermite_moments`` of :mod:`jacntk.kernels._hermite`;
  per-point
  coefficient vectors, O(K) per pair, a Cauchy-Schwarz bound checked per pair, the trapezoid
  rule as fallback; docs/activations.md, "The Hermite route"); the reference codes
  ``trapezoid_reference(code)`` keep the trapezoid rule everywhere.
  (Tensor Gauss–Hermite, docs/math.md §5.4, was measured here to need > 400 nodes
  per axis for tanh at variance 2 and to fail for gelu at variance 25; the trapezoid rule reaches
  ~1e-14 at every variance because the cost adapts to sqrt(variance) / step.)

Which activation takes which route, its integer code and its trapezoid step are read from the
registry, :mod:`jacntk.kernels._activations` (docs/activations.md).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._activations import ACT_CODES as ACT_CODES  # re-exported: codes come from the registry
from ._activations import (
    ERF,
    ERF_BY_QUADRATURE,
    GELU,
    GELU_BY_QUADRATURE,
    QUADRATURE_STEP,
    RELU,
    SILU,
    SOFTPLUS,
    TANH,
    TRAPEZOID_REFERENCE,
)

N_MOMENTS = 10
# What gaussian_moments returns: a generic pair, or a ReLU pair at theta = 0 or theta = pi.
GENERIC, ALIGNED, ANTIPODAL = 0, 1, 2

# ``order`` argument: which moments are needed.
SCALAR = 0  # F00, F11
JETS = 1  # + F20, F02, F22, F31, F13   (NNGP jets, truncated NTK)
NTK_JETS = 2  # + F33, F42, F24         (JNTK jets)

#: Relative threshold on ``(ab - c^2) / ab`` below which a ReLU pair is treated as collinear
#: (the exact theta = 0 recursion is used; its error is O(sqrt(COLLINEAR_TOL)) per layer).
COLLINEAR_TOL = 1e-12


_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


@njit(cache=True, inline="always")
def _sigmoid(u):
    if u >= 0.0:
        return 1.0 / (1.0 + math.exp(-u))
    e = math.exp(u)
    return e / (1.0 + e)


@njit(cache=True)
def activation_derivatives(act, u, out):
    """Fill ``out[0..4]`` with ``phi(u), phi'(u), ..., phi''''(u)`` for activation code ``act``
    (the smooth activations of :mod:`jacntk.kernels._activations` and the test codes
    ``ERF_BY_QUADRATURE``, ``GELU_BY_QUADRATURE``;
    NaN for a code without a derivative table)."""
    if act == GELU or act == GELU_BY_QUADRATURE:  # u * Phi(u)
        pdf = _INV_SQRT_2PI * math.exp(-0.5 * u * u)
        cdf = 0.5 * math.erfc(-u / math.sqrt(2.0))
        u2 = u * u
        out[0] = u * cdf
        out[1] = cdf + u * pdf
        out[2] = (2.0 - u2) * pdf
        out[3] = (u2 * u - 4.0 * u) * pdf
        out[4] = (-u2 * u2 + 7.0 * u2 - 4.0) * pdf
    elif act == TANH:
        t = math.tanh(u)
        s = 1.0 - t * t
        out[0] = t
        out[1] = s
        out[2] = -2.0 * t * s
        out[3] = s * (6.0 * t * t - 2.0)
        out[4] = 8.0 * t * s * (2.0 - 3.0 * t * t)
    elif act == SOFTPLUS or act == SILU:
        sg = _sigmoid(u)
        g = sg * (1.0 - sg)
        s2 = g * (1.0 - 2.0 * sg)
        s3 = g * (1.0 - 6.0 * sg + 6.0 * sg * sg)
        s4 = s2 * (1.0 - 12.0 * sg + 12.0 * sg * sg)
        if act == SOFTPLUS:
            out[0] = max(u, 0.0) + math.log1p(math.exp(-abs(u)))
            out[1] = sg
            out[2] = g
            out[3] = s2
            out[4] = s3
        else:
            out[0] = u * sg
            out[1] = u * g + sg
            out[2] = u * s2 + 2.0 * g
            out[3] = u * s3 + 3.0 * s2
            out[4] = u * s4 + 4.0 * s3
    elif act == ERF or act == ERF_BY_QUADRATURE:
        e = _TWO_OVER_SQRT_PI * math.exp(-u * u)
        out[0] = math.erf(u)
        out[1] = e
        out[2] = -2.0 * u * e
        out[3] = (4.0 * u * u - 2.0) * e
        out[4] = (-8.0 * u * u * u + 12.0 * u) * e
    else:  # relu, or an activation registered without its derivative table
        for k in range(5):
            out[k] = math.nan


# fdlibm's rational approximation of asin (e_asin.c), written branch-free so that loops over
# pairs vectorise (SIMD) in the closed-form scalar tiles; accurate to a few ulp.
_PS = (
    1.66666666666666657415e-01,
    -3.25565818622400915405e-01,
    2.01212532134862925881e-01,
    -4.00555345006794114027e-02,
    7.91534994289814532176e-04,
    3.47933107596021167570e-05,
)
_QS = (
    -2.40339491173441421878e00,
    2.02094576023350569471e00,
    -6.88283971605453293030e-01,
    7.70381505559019352791e-02,
)


@njit(cache=True, inline="always", fastmath=True, error_model="numpy")
def asin_and_cos(x):
    """``(asin(x), sqrt(1 - x^2))`` for ``|x| <= 1`` without branches (vectorisable).

    ``|x| < 1/2``: ``asin x = x + x R(x^2)``; otherwise with ``z = (1 - |x|)/2``, ``s = sqrt z``:
    ``asin |x| = pi/2 - 2 (s + s R(z))``, where ``R`` is fdlibm's rational minimax function.
    The cosine ``sqrt((1 - x)(1 + x))`` is cancellation-free near ``|x| = 1``.
    """
    ax = min(abs(x), 1.0)
    big = ax >= 0.5
    z = (1.0 - ax) * 0.5 if big else ax * ax
    p = z * (_PS[0] + z * (_PS[1] + z * (_PS[2] + z * (_PS[3] + z * (_PS[4] + z * _PS[5])))))
    q = 1.0 + z * (_QS[0] + z * (_QS[1] + z * (_QS[2] + z * _QS[3])))
    r = p / q
    s = math.sqrt(z)
    small_val = ax + ax * r
    big_val = 0.5 * math.pi - 2.0 * (s + s * r)
    val = big_val if big else small_val
    return (val if x >= 0.0 else -val), math.sqrt((1.0 - ax) * (1.0 + ax))


@njit(cache=True)
def _erf_moments(c, a, b, order, F):
    A = 1.0 + 2.0 * a
    B = 1.0 + 2.0 * b
    delta = A * B - 4.0 * c * c
    sd = math.sqrt(delta)
    k = 4.0 / math.pi
    F[0] = (2.0 / math.pi) * math.asin(min(1.0, max(-1.0, 2.0 * c / math.sqrt(A * B))))
    F[1] = k / sd
    if order >= JETS:
        d32 = delta * sd
        F[2] = -2.0 * k * c / (A * sd)
        F[3] = -2.0 * k * c / (B * sd)
        F[4] = 4.0 * k * c / d32
        F[5] = -2.0 * k * B / d32
        F[6] = -2.0 * k * A / d32
        if order >= NTK_JETS:
            d52 = d32 * delta
            F[7] = 4.0 * k * (1.0 / d32 + 12.0 * c * c / d52)
            F[8] = -24.0 * k * c * B / d52
            F[9] = -24.0 * k * c * A / d52


@njit(cache=True)
def _relu_moments(c, a, b, order, F):
    """ReLU closed forms (docs/math.md §7).  Returns ``ALIGNED`` (theta = 0) or ``ANTIPODAL``
    (theta = pi)
    when ``sin(theta)`` vanishes within ``COLLINEAR_TOL``: then F00, F11, F20, F02 hold their
    limits, the rest zeros, and the caller must use the exact collinear recursion, because
    F22, F31, F13 are infinite there; otherwise ``GENERIC``."""
    ab = a * b
    if ab <= 0.0:
        F[0] = 0.0
        F[1] = 0.25
        for i in range(2, N_MOMENTS):
            F[i] = 0.0
        return GENERIC
    sab = math.sqrt(ab)
    det = ab - c * c
    cos_t = min(1.0, max(-1.0, c / sab))
    if det <= COLLINEAR_TOL * ab:
        for i in range(N_MOMENTS):
            F[i] = 0.0  # F20 = F02 = 0 at theta = 0 or pi; the divergent ones are not used
        if cos_t > 0.0:  # theta = 0
            F[0] = 0.5 * sab
            F[1] = 0.5
            return ALIGNED
        return ANTIPODAL  # theta = pi: 1{u > 0} 1{u' > 0} = 0 almost surely
    sdet = math.sqrt(max(det, 0.0))
    theta = math.acos(cos_t)
    F[0] = (sdet + (math.pi - theta) * c) / (2.0 * math.pi)
    F[1] = (math.pi - theta) / (2.0 * math.pi)
    if order >= JETS:
        sin_t = sdet / sab
        F[2] = sdet / (2.0 * math.pi * a)
        F[3] = sdet / (2.0 * math.pi * b)
        F[4] = 1.0 / (2.0 * math.pi * sdet)
        F[5] = -cos_t / (2.0 * math.pi * a * sin_t)
        F[6] = -cos_t / (2.0 * math.pi * b * sin_t)
    return False


_INV_2PI = 0.5 / math.pi


@njit(cache=True, inline="always")
def _gelu_scalar(c, a, b, t):
    """GELU's ``(F00, F11, D, sqrt(D))`` given ``t = acos(-c / sqrt((1 + a)(1 + b)))`` (the
    caller's arccosine: libm in ``_gelu_moments``, branch-free in ``gelu_layer_row``)::

        F00 = [c t + (ab D + c^2) / (AB sqrt(D))] / (2 pi)
        F11 = [t + c (A + B) / (AB sqrt(D)) + c / D^(3/2)] / (2 pi)

    with ``A = 1 + a``, ``B = 1 + b``, ``D = AB - c^2 = 1 + a + b + (ab - c^2)``."""
    A = 1.0 + a
    B = 1.0 + b
    D = (1.0 + a + b) + (a * b - c * c)
    sd = math.sqrt(D)
    r = 1.0 / (A * B * sd)
    f00 = _INV_2PI * (c * t + (a * b * D + c * c) * r)
    f11 = _INV_2PI * (t + c * ((A + B) * r + 1.0 / (D * sd)))
    return f00, f11, D, sd


@njit(cache=True)
def _gelu_moments(c, a, b, order, F):
    """GELU closed forms (docs/activations.md, "GELU in closed form"), ``phi(u) = u Phi(u)``.

    With ``A = 1 + a``, ``B = 1 + b``, ``D = AB - c^2``, ``alpha = A/D``, ``beta = B/D``,
    ``gamma = c/D`` and ``w = 1 / (2 pi sqrt(D))``::

        F20 = [b (a + 2) - c^2 (1 + 2/A + 1/D)] / (2 pi A sqrt(D))        (F02: a <-> b)
        F22 = w [(1 + alpha)(1 + beta) + 2 gamma^2]
        F31 = -w c [(A + 2)/A^2 + (A + B)/(A D) + 3 B/D^2]                 (F13: a <-> b)
        F33 = w gamma [1 + 3 (alpha + beta) + 9 alpha beta + 6 gamma^2]
        F42 = -w [beta (1 + alpha)(1 + 3 beta) + 2 gamma^2 (1 + 6 beta)]  (F24: a <-> b)

    (F00, F11: ``_gelu_scalar``).  ``D >= 1 + a + b`` for every admissible pair, so nothing is
    singular, at ``c^2 = ab`` neither; every moment but F00, F11, F20, F02 is a sum of terms of
    one sign.
    """
    A = 1.0 + a
    B = 1.0 + b
    x = min(1.0, max(-1.0, c / math.sqrt(A * B)))
    F[0], F[1], D, sd = _gelu_scalar(c, a, b, 0.5 * math.pi + math.asin(x))
    if order >= JETS:
        c2 = c * c
        iD = 1.0 / D
        w = _INV_2PI / sd
        F[2] = w * (b * (a + 2.0) - c2 * (1.0 + 2.0 / A + iD)) / A
        F[3] = w * (a * (b + 2.0) - c2 * (1.0 + 2.0 / B + iD)) / B
        al = A * iD
        be = B * iD
        ga = c * iD
        g2 = ga * ga
        F[4] = w * ((1.0 + al) * (1.0 + be) + 2.0 * g2)
        F[5] = -w * c * ((A + 2.0) / (A * A) + (A + B) * iD / A + 3.0 * B * iD * iD)
        F[6] = -w * c * ((B + 2.0) / (B * B) + (A + B) * iD / B + 3.0 * A * iD * iD)
        if order >= NTK_JETS:
            F[7] = w * ga * (1.0 + 3.0 * (al + be) + 9.0 * al * be + 6.0 * g2)
            F[8] = -w * (be * (1.0 + al) * (1.0 + 3.0 * be) + 2.0 * g2 * (1.0 + 6.0 * be))
            F[9] = -w * (al * (1.0 + be) * (1.0 + 3.0 * al) + 2.0 * g2 * (1.0 + 6.0 * al))


@njit(cache=True, fastmath=True, error_model="numpy")
def gelu_layer_row(c, th, v2l, vi, omega, sb2):
    """One GELU layer of the scalar recursion for a row of pairs, branch-free (vectorised):
    ``c[j] <- omega F00 + sigma_b^2`` and ``th[j] <- c[j] + omega F11 th[j]`` (the NTK; unused
    by the NNGP) at ``(c[j], a = vi, b = v2l[j])``, the variances ``v_l`` of the two points.
    The row of ``jacntk.kernels._fields._closed_form_scalar_tile`` (per-point transform: the
    variance itself), equal to ``_gelu_moments`` up to the last bits of ``asin``."""
    A = 1.0 + vi
    for j in range(c.shape[0]):
        cj = c[j]
        asn, _ = asin_and_cos(cj / math.sqrt(A * (1.0 + v2l[j])))
        f00, f11, _, _ = _gelu_scalar(cj, vi, v2l[j], 0.5 * math.pi + asn)
        cn = omega * f00 + sb2
        th[j] = cn + omega * f11 * th[j]
        c[j] = cn


#: Truncation of the Gaussian weights at R standard deviations (exp(-R^2/2) ~ 3e-18).
_R = 9.0
# The trapezoid step per activation (QUADRATURE_STEP) is a column of the registry,
# jacntk/kernels/_activations.py, which states its accuracy.


@njit(cache=True)
def _quadrature_moments(act, c, a, b, order, h, F):
    """Trapezoid rule in the original variables (docs/math.md §5.4, derivative tables, no autodiff).

    ``u ~ N(0, a)`` on the grid ``u_k = k h_u`` (``h_u = min(h / max(1, |c/a|), sqrt(a)/2)``,
    ``|u| <= R sqrt(a)``: the inner integral is a function of ``(c/a) u``)
    and, given ``u``, ``u' = (c/a) u + s t`` with ``s^2 = b - c^2/a`` and ``t ~ N(0, 1)`` on the
    grid ``t_l = l h_t`` (``h_t = min(h/s, 1/2)``).  For analytic integrands this converges
    exponentially in ``1/h``, uniformly in the variances, and it is exact in the limit ``s -> 0``
    (the diagonal ``x = x'``) where tensor Gauss–Hermite in ``(c, a, b)`` is not differentiable.
    """
    for i in range(N_MOMENTS):
        F[i] = 0.0
    sa = math.sqrt(max(a, 0.0))
    if sa > 0.0:
        slope = c / a
        hu = min(h / max(1.0, abs(slope)), 0.5 * sa)
        nk = int(_R * sa / hu) + 1
        s = math.sqrt(max(b - c * c / a, 0.0))
    else:
        hu = 1.0
        nk = 0
        slope = 0.0
        s = math.sqrt(max(b, 0.0))
    ht = min(h / s, 0.5) if s > 0.0 else 0.5
    nl = int(_R / ht) + 1
    wt = np.empty(2 * nl + 1)
    total = 0.0
    for l in range(-nl, nl + 1):
        t = l * ht
        wt[l + nl] = math.exp(-0.5 * t * t)
        total += wt[l + nl]
    for l in range(2 * nl + 1):
        wt[l] /= total
    du = np.empty(5)
    dv = np.empty(5)
    g = np.empty(5)
    wsum = 0.0
    for k in range(-nk, nk + 1):
        u = k * hu
        wk = math.exp(-0.5 * u * u / a) if nk > 0 else 1.0
        wsum += wk
        activation_derivatives(act, u, du)
        m = slope * u
        for j in range(5):
            g[j] = 0.0
        for l in range(2 * nl + 1):
            activation_derivatives(act, m + s * (l - nl) * ht, dv)
            for j in range(5):
                g[j] += wt[l] * dv[j]
        F[0] += wk * du[0] * g[0]
        F[1] += wk * du[1] * g[1]
        if order >= JETS:
            F[2] += wk * du[2] * g[0]
            F[3] += wk * du[0] * g[2]
            F[4] += wk * du[2] * g[2]
            F[5] += wk * du[3] * g[1]
            F[6] += wk * du[1] * g[3]
            if order >= NTK_JETS:
                F[7] += wk * du[3] * g[3]
                F[8] += wk * du[4] * g[2]
                F[9] += wk * du[2] * g[4]
    for i in range(N_MOMENTS):
        F[i] /= wsum


@njit(cache=True)
def gaussian_moments(act, c, a, b, order, h, F):
    """Fill ``F`` (length 10) with the moments needed at ``order``; return ``GENERIC``, or for
    ReLU ``ALIGNED`` / ``ANTIPODAL`` at theta = 0 / pi (see ``_relu_moments``).

    ``act`` is an activation code from ``ACT_CODES`` (or a test code ``ERF_BY_QUADRATURE``,
    ``GELU_BY_QUADRATURE``: the trapezoid rule over that derivative table); ``h`` is the
    trapezoid step of quadrature activations (``QUADRATURE_STEP``; ignored by the closed forms).
    """
    if act == ERF:
        _erf_moments(c, a, b, order, F)
        return GENERIC
    if act == RELU:
        return _relu_moments(c, a, b, order, F)
    if act == GELU:
        _gelu_moments(c, a, b, order, F)
        return GENERIC
    if act >= TRAPEZOID_REFERENCE:  # a reference code: the same table, the same rule
        _quadrature_moments(act - TRAPEZOID_REFERENCE, c, a, b, order, h, F)
        return GENERIC
    _quadrature_moments(act, c, a, b, order, h, F)
    return GENERIC


def quadrature_step(act: int) -> float:
    """Trapezoid step for activation code ``act`` (0.0 for closed-form activations): the
    registry's ``quadrature_step``."""
    return QUADRATURE_STEP.get(act, 0.0)
