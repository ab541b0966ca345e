"""The float32 route of the closed-form scalar tiles (docs/math.md §14): float32 arithmetic for
the inner products and the layer maps, float64 for the diagonal and the near-collinear pairs."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._activations import ERF, GELU
from ._fields import (
    _FAST,
    BOTH_NTK,
    _closed_form_layer_row,
    _mirror,
    _point_transform,
    _rows_of_task,
    _task_row,
    row_inner_products,
)

_F32 = np.float32
_ZERO32, _ONE32, _HALF32, _TWO32 = _F32(0.0), _F32(1.0), _F32(0.5), _F32(2.0)
_PIO2_32 = _F32(0.5 * math.pi)
_INV_2PI_32 = _F32(0.5 / math.pi)
_TWO_OVER_PI_32 = _F32(2.0 / math.pi)
_FOUR_OVER_PI_32 = _F32(4.0 / math.pi)
# fdlibm's float rational approximation of asin (e_asinf.c): a few float32 ulp.
_PS0_32, _PS1_32, _PS2_32 = _F32(1.6666586697e-01), _F32(-4.2743422091e-02), _F32(-8.6563630030e-03)
_QS1_32 = _F32(-7.0662963390e-01)

#: The float32 route recomputes a pair in float64 when its input correlation
#: ``|<x, x'>| / (|x| |x'|)`` -- for relu also ``|cos theta_l|`` at any hidden layer -- exceeds
#: ``1 - F32_COLLINEAR``: there the float32 GEMM's error ``~ sqrt(d) eps32`` on the correlation
#: is largest against ``1 - rho`` (relu: its layer maps grow it like ``1 / sin(theta)``), see
#: docs/math.md §14.
F32_COLLINEAR = 1e-2


@njit(cache=True, inline="always", fastmath=True, error_model="numpy")
def _asin_and_cos32(x):
    """float32 ``(asin(x), sqrt(1 - x^2))`` for ``|x| <= 1``, branch-free (``asin_and_cos``
    with fdlibm's float coefficients)."""
    ax = min(abs(x), _ONE32)
    big = ax >= _HALF32
    z = (_ONE32 - ax) * _HALF32 if big else ax * ax
    r = z * (_PS0_32 + z * (_PS1_32 + z * _PS2_32)) / (_ONE32 + z * _QS1_32)
    s = math.sqrt(z)
    val = _PIO2_32 - _TWO32 * (s + s * r) if big else ax + ax * r
    return (val if x >= _ZERO32 else -val), math.sqrt((_ONE32 - ax) * (_ONE32 + ax))


@njit(**_FAST)
def _erf_layer_row32(c, th, u2l, ui, omega, sb2):
    """``_erf_layer_row`` in float32."""
    for j in range(c.shape[0]):
        uij = ui * u2l[j]
        x = _TWO32 * c[j] * uij
        asn, cs = _asin_and_cos32(x)
        cn = omega * _TWO_OVER_PI_32 * asn + sb2
        th[j] = cn + omega * _FOUR_OVER_PI_32 * uij / cs * th[j]
        c[j] = cn


@njit(**_FAST)
def _relu_layer_row32(c, th, fl, u2l, ui, omega, sb2):
    """``_relu_layer_row`` in float32 (no collinear snap: those pairs are recomputed in float64);
    ``fl[j]`` keeps the largest ``|cos theta|`` met."""
    for j in range(c.shape[0]):
        uij = ui * u2l[j]
        cosv = min(max(c[j] / uij if uij > _ZERO32 else _ZERO32, -_ONE32), _ONE32)
        fl[j] = max(fl[j], abs(cosv))
        asn, sn = _asin_and_cos32(cosv)
        pmt = _PIO2_32 + asn  # pi - theta
        cn = omega * uij * (sn + pmt * cosv) * _INV_2PI_32 + sb2
        th[j] = cn + omega * pmt * _INV_2PI_32 * th[j]
        c[j] = cn


@njit(**_FAST)
def _gelu_layer_row32(c, th, v2l, vi, omega, sb2):
    """``gelu_layer_row`` in float32 (``_gelu_scalar``'s formulas)."""
    a = vi
    A = _ONE32 + a
    for j in range(c.shape[0]):
        cj = c[j]
        b = v2l[j]
        B = _ONE32 + b
        asn, _ = _asin_and_cos32(cj / math.sqrt(A * B))
        t = _PIO2_32 + asn
        D = (_ONE32 + a + b) + (a * b - cj * cj)
        sd = math.sqrt(D)
        r = _ONE32 / (A * B * sd)
        f00 = _INV_2PI_32 * (cj * t + (a * b * D + cj * cj) * r)
        f11 = _INV_2PI_32 * (t + cj * ((A + B) * r + _ONE32 / (D * sd)))
        cn = omega * f00 + sb2
        th[j] = cn + omega * f11 * th[j]
        c[j] = cn


@njit(cache=True, parallel=True)
def _closed_form_scalar_rows32(
    act, kind, depth, omega, sb2, kappa2, P, d, v1, v2, X1, X2, q1, q2, symmetric, tau, out,
    inline, BT,
):  # fmt: skip
    """The float32 route of ``_closed_form_scalar_rows`` (docs/math.md §14).

    ``P`` (n1, n2) float32 is the float32 GEMM ``X1 X2^T``; the layer maps run in float32
    (vectorised, twice the lanes of float64); a pair whose input correlation (relu: or any
    hidden ``|cos theta_l|``) exceeds ``1 - tau`` (``F32_COLLINEAR``), and the diagonal pair
    ``(x_i, x_i)`` of a symmetric tile,
    is recomputed in float64 from ``<x_i, x'_j>`` in float64 (``X1``, ``X2`` float64) by the
    float64 rows, so the diagonal is the float64 route's value rounded once.  ``v1``, ``v2``:
    float64 diagonal chains; ``q1``, ``q2``: the squared norms (``P_ii = q1[i]``).
    Output ``out`` (m, n1, n2) float32 as ``_closed_form_scalar_rows`` (``out[m - 1]`` may be
    ``P``).  ``inline`` (small d): ``P`` is not filled; each row forms its inner products in
    float64 from ``X1`` and ``BT = X2^T`` (``row_inner_products``) and rounds them once.
    """
    n1, n2 = P.shape
    u1 = np.ascontiguousarray(_point_transform(act, v1).T)
    u2 = np.ascontiguousarray(_point_transform(act, v2).T)
    u1f = u1.astype(np.float32)
    u2f = u2.astype(np.float32)
    om32 = np.float32(omega)
    sb32 = np.float32(sb2)
    od32 = np.float32(omega / d)
    k32 = np.float32(kappa2)
    thresh = np.float32(1.0 - tau)
    w1 = np.where(q1 > 0.0, 1.0 / np.sqrt(q1), 0.0).astype(np.float32)
    w2 = np.where(q2 > 0.0, 1.0 / np.sqrt(q2), 0.0).astype(np.float32)
    n_rows = (n1 + 1) // 2 if symmetric else n1
    for t in prange(n_rows):
        c = np.empty(n2, dtype=np.float32)
        th = np.empty(n2, dtype=np.float32)
        fl = np.empty(n2, dtype=np.float32)
        p64 = np.empty(n2 if inline else 0)
        c64 = np.empty(1)
        th64 = np.empty(1)
        for rep in range(_rows_of_task(t, n1, symmetric)):
            i, j0 = _task_row(t, rep, n1, symmetric)
            if inline:
                row_inner_products(p64[j0:], X1[i], BT, j0)
                for j in range(j0, n2):
                    fl[j] = np.float32(p64[j])
            else:
                fl[j0:] = P[i, j0:]
            for j in range(j0, n2):
                c[j] = od32 * fl[j] + sb32
                th[j] = c[j]
                fl[j] = abs(fl[j]) * w1[i] * w2[j]
            for layer in range(depth):
                ui = u1f[layer, i]
                if act == ERF:
                    _erf_layer_row32(c[j0:], th[j0:], u2f[layer, j0:], ui, om32, sb32)
                elif act == GELU:
                    _gelu_layer_row32(c[j0:], th[j0:], u2f[layer, j0:], ui, om32, sb32)
                else:
                    _relu_layer_row32(c[j0:], th[j0:], fl[j0:], u2f[layer, j0:], ui, om32, sb32)
            for j in range(j0, n2):
                if kind == BOTH_NTK:
                    out[0, i, j] = k32 * c[j]
                    out[1, i, j] = k32 * th[j]
                else:
                    out[0, i, j] = k32 * (th[j] if kind != 0 else c[j])
            for j in range(j0, n2):
                diag = symmetric and j == i
                if not (diag or fl[j] > thresh):
                    continue
                # float64 recomputation of the pair, as the float64 route computes it
                p = q1[i]  # P_ii = q_i exactly, as _inner_products sets it
                if not diag:
                    p = 0.0
                    for k in range(X1.shape[1]):
                        p += X1[i, k] * X2[j, k]
                c64[0] = omega * p / d + sb2
                th64[0] = c64[0]
                for layer in range(depth):
                    if diag:
                        c64[0] = v1[i, layer]
                    _closed_form_layer_row(
                        act, c64, th64, u2[layer, j : j + 1], u1[layer, i], omega, sb2
                    )
                if kind == BOTH_NTK:
                    out[0, i, j] = kappa2 * c64[0]
                    out[1, i, j] = kappa2 * th64[0]
                else:
                    out[0, i, j] = kappa2 * (th64[0] if kind != 0 else c64[0])
    if symmetric:
        for k in range(out.shape[0]):
            _mirror(out[k], out[k])
