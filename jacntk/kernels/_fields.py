"""The layer recursion for the scalar kernels and the eight coefficient fields (docs/math.md §5.2).

Every layer kernel of the MLP depends on a pair ``(x, x')`` only through ``p = <x, x'>``,
``q = |x|^2`` and ``r = |x'|^2`` (docs/math.md §4.1).  Its Jacobian-augmented ``(d+1) x (d+1)``
block (docs/math.md §4.2)
is therefore fixed by eight scalar *fields*

    K, K_p, K_q, K_r, K_pp, K_pq, K_pr, K_qr      (``FIELD_NAMES``, axis 0 of a field array)

evaluated at each pair.  This module computes them for a tile of pairs in one fused pass over the
layers, in Numba (``fields_tile``, ``scalar_tile``), parallel over rows, exploiting symmetry when
``X2 is X1``.  :mod:`jacntk.kernels._reference` is a plain-NumPy implementation of the same
recursion.

Recursion (``omega = sigma_w^2``; ``c = S``, ``a = v_l(q)``, ``b = v_l(r)``, ``a_q = v_l'(q)``,
``b_r = v_l'(r)``; ``F^{ij}`` from :mod:`jacntk.kernels._moments`)::

    layer 1:  S = omega p / d + sigma_b^2,  S_p = omega / d,  other jets 0,  T = S
    S'      = omega F00 + sigma_b^2
    S'_p    = omega F11 c_p
    S'_q    = omega (F11 c_q + F20 a_q / 2)                 (S'_r: q <-> r, F20 -> F02)
    S'_pp   = omega (F22 c_p^2 + F11 c_pp)
    S'_pq   = omega (F22 c_p c_q + F31 c_p a_q / 2 + F11 c_pq)     (S'_pr likewise)
    S'_qr   = omega (F22 c_q c_r + F13 c_q b_r / 2 + F31 c_r a_q / 2 + F22 a_q b_r / 4 + F11 c_qr)
    Sdot'   = the same with every moment index raised by (1, 1)
    T'      = S' + Sdot' T         (jets by the product rule; kind "ntk_truncated": T'_* =
                                    S'_* + Sdot' T_*, i.e. phi'' := 0, docs/math.md §7)

After ``L`` steps every field is multiplied by ``kappa^2``.  Diagonal chain (docs/math.md §5.3):
``v_1 = omega q / d + sigma_b^2``, ``v_{l+1} = omega V(v_l) + sigma_b^2``,
``v'_{l+1} = omega V'(v_l) v'_l`` with ``V(a) = F00(a, a, a)``, ``V'(a) = F11 + F20`` at
``(a, a, a)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from ..arch import MLP, check_kind
from ._activations import ERF, GELU, get_activation
from ._moments import (
    ALIGNED,
    ANTIPODAL,
    COLLINEAR_TOL,
    JETS,
    N_MOMENTS,
    NTK_JETS,
    SCALAR,
    asin_and_cos,
    gaussian_moments,
    gelu_layer_row,
    quadrature_step,
)

FIELD_NAMES = ("K", "K_p", "K_q", "K_r", "K_pp", "K_pq", "K_pr", "K_qr")
#: Field index under the exchange x <-> x' (K_q <-> K_r, K_pq <-> K_pr; docs/math.md §4.2).
FIELD_TRANSPOSE = (0, 1, 3, 2, 4, 6, 5, 7)
KIND_CODES = {"nngp": 0, "ntk": 1, "ntk_truncated": 2}
#: Kind codes of the one-pass tiles (docs/math.md §14): the NNGP together with the NTK
#: (``BOTH_NTK``; for scalar tiles also the truncated NTK, which equals the NTK there) or with
#: the truncated NTK (``BOTH_TRUNCATED``, fields only), from one pass over the layers.  The
#: tiles stack the two results along axis 0, the NNGP first: scalar ``(2 n1, n2)``, fields
#: ``(16, n1, n2)``.
BOTH_NTK, BOTH_TRUNCATED = 3, 4
#: Tiles with fewer pairs than this (256 times fewer for quadrature activations, whose pairs
#: cost ~100x more) are computed on the calling thread only.
SMALL_TILE_PAIRS = 16384


def transpose_fields(F: np.ndarray) -> np.ndarray:
    """The fields of the swapped pair set: ``out[k] = F[FIELD_TRANSPOSE[k]].T`` (8, tj, ti)."""
    return F[list(FIELD_TRANSPOSE)].transpose(0, 2, 1)


@dataclass(frozen=True)
class Plan:
    """Everything a tile kernel needs besides the points: compiled-kernel arguments."""

    act: int
    kind: int
    depth: int
    omega: float
    sb2: float
    kappa2: float
    h: float  # trapezoid step of quadrature activations (0 for closed forms)
    closed_form: bool  # the registry's closed_form: scalar tiles take _closed_form_scalar_tile


def make_plan(arch: MLP, kind: str, jacobian: bool) -> Plan:
    """Validate ``kind`` for ``arch`` and collect the compiled kernels' arguments.

    The quadrature of smooth activations adapts its node count to each pair's variances
    (:func:`jacntk.kernels._moments.gaussian_moments`), so a plan depends on the architecture and
    kind
    only and is shared by all tiles of a Gram matrix.
    """
    check_kind(arch, kind, jacobian)
    activation = get_activation(arch.activation)
    return Plan(
        activation.code,
        KIND_CODES[kind],
        arch.depth,
        arch.sigma_w**2,
        arch.sigma_b**2,
        arch.kappa**2,
        quadrature_step(activation.code),
        activation.closed_form,
    )


@njit(cache=True, parallel=True)
def _diag_chain(act, depth, omega, sb2, d, q, h):
    """Per-point variances ``v[i, l] = v_{l+1}(q_i)`` and derivatives ``vp`` (docs/math.md §5.3)."""
    n = q.shape[0]
    v = np.empty((n, depth))
    vp = np.empty((n, depth))
    for i in prange(n):
        F = np.empty(N_MOMENTS)
        a = omega * q[i] / d + sb2
        ap = omega / d
        for layer in range(depth):
            v[i, layer] = a
            vp[i, layer] = ap
            gaussian_moments(act, a, a, a, JETS, h, F)
            ap = omega * (F[1] + F[2]) * ap
            a = omega * F[0] + sb2
    return v, vp


@njit(cache=True)
def _pair_scalar(act, kind, depth, omega, sb2, p, d, vi, vj, h, F, diag):
    """NNGP (kind 0) or NTK value of one pair: moments F00, F11 only.  ``diag``: the pair is
    ``(x, x)``, whose covariance is the diagonal chain's variance at every layer."""
    s = omega * p / d + sb2
    t = s
    for layer in range(depth):
        if diag:
            s = vi[layer]
        gaussian_moments(act, s, vi[layer], vj[layer], SCALAR, h, F)
        s_new = omega * F[0] + sb2
        t = s_new + omega * F[1] * t
        s = s_new
    F[0] = s  # kind BOTH_NTK: the NNGP of the same pass (_store_pair_scalar)
    return t if kind != 0 else s


@njit(cache=True, inline="always")
def _gaussian_jets(omega, c, aq, br, m00, m11, m20, m02, m22, m31, m13, out):
    """Jets of ``omega E[phi^(i) phi^(j)]`` by Price's theorem (docs/math.md §5.2), given the seven
    moments ``m_ij`` of that product and the jets ``c`` of the layer covariance."""
    cp, cq, cr, cpp, cpq, cpr, cqr = c[1], c[2], c[3], c[4], c[5], c[6], c[7]
    out[0] = omega * m00
    out[1] = omega * m11 * cp
    out[2] = omega * (m11 * cq + 0.5 * m20 * aq)
    out[3] = omega * (m11 * cr + 0.5 * m02 * br)
    out[4] = omega * (m22 * cp * cp + m11 * cpp)
    out[5] = omega * (m22 * cp * cq + 0.5 * m31 * cp * aq + m11 * cpq)
    out[6] = omega * (m22 * cp * cr + 0.5 * m13 * cp * br + m11 * cpr)
    out[7] = omega * (
        m22 * cq * cr + 0.5 * m13 * cq * br + 0.5 * m31 * cr * aq + 0.25 * m22 * aq * br + m11 * cqr
    )


@njit(cache=True, inline="always")
def _start_jets(omega, sb2, p, d, S, T):
    """The input layer's jets of a pair (``S``; ``T`` for the NTK starts equal)."""
    for k in range(8):
        S[k] = 0.0
    S[0] = omega * p / d + sb2
    S[1] = omega / d
    for k in range(8):
        T[k] = S[k]


@njit(cache=True, inline="always")
def _advance_jets(kind, nS, D, S, T):
    """One layer of the NTK jets ``T`` from the new NNGP jets ``nS`` and their derivative
    ``D`` (kind 1; kind 2, the truncated NTK, uses ``D[0]`` only), then ``S <- nS``."""
    if kind == 1:
        t0, t1, t2, t3 = T[0], T[1], T[2], T[3]
        T[4] = nS[4] + D[4] * t0 + 2.0 * D[1] * t1 + D[0] * T[4]
        T[5] = nS[5] + D[5] * t0 + D[1] * t2 + D[2] * t1 + D[0] * T[5]
        T[6] = nS[6] + D[6] * t0 + D[1] * t3 + D[3] * t1 + D[0] * T[6]
        T[7] = nS[7] + D[7] * t0 + D[2] * t3 + D[3] * t2 + D[0] * T[7]
        T[1] = nS[1] + D[1] * t0 + D[0] * t1
        T[2] = nS[2] + D[2] * t0 + D[0] * t2
        T[3] = nS[3] + D[3] * t0 + D[0] * t3
        T[0] = nS[0] + D[0] * t0
    elif kind == 2:
        for k in range(8):
            T[k] = nS[k] + D[0] * T[k]
    for k in range(8):
        S[k] = nS[k]


@njit(cache=True)
def _pair_jets(act, kind, depth, omega, sb2, p, d, vi, vpi, vj, vpj, h, F, S, T, nS, D, diag):
    """Run the jet recursion for one pair; the result (before kappa^2) is left in S or T.

    ``diag``: the pair is ``(x, x)``; its covariance is reset to the diagonal chain's variance
    at every layer, because in the chaotic phase (chi > 1) ``c = a`` is an unstable fixed point
    of the correlation map and round-off would otherwise grow like chi^L."""
    _start_jets(omega, sb2, p, d, S, T)
    order = NTK_JETS if kind == 1 else JETS
    for layer in range(depth):
        a = vi[layer]
        b = vj[layer]
        aq = vpi[layer]
        br = vpj[layer]
        if diag:
            S[0] = a
        code = gaussian_moments(act, S[0], a, b, order, h, F)
        if code == ANTIPODAL:
            # ReLU at theta = pi: g' = -alpha g, so 1{g>0} 1{g'>0} = 0 and only the bias remains.
            for k in range(8):
                nS[k] = 0.0
                D[k] = 0.0
            nS[0] = sb2
        elif code == ALIGNED:
            # ReLU at theta = 0: (g, grad g) at x and x' are perfectly correlated with the same
            # sign, so E[1{g>0} 1{g'>0} G G'^T] = E[G G'^T] / 2 and every jet scales by omega/2.
            for k in range(8):
                nS[k] = 0.5 * omega * S[k]
                D[k] = 0.0
            nS[0] = omega * F[0] + sb2
            D[0] = 0.5 * omega
        else:
            # S' from (F00, F11, F20, F02, F22, F31, F13); Sdot' from the same with every
            # moment index raised by (1, 1): (F11, F22, F31, F13, F33, F42, F24).
            _gaussian_jets(omega, S, aq, br, F[0], F[1], F[2], F[3], F[4], F[5], F[6], nS)
            nS[0] += sb2
            if kind == 1:
                _gaussian_jets(omega, S, aq, br, F[1], F[4], F[5], F[6], F[7], F[8], F[9], D)
            else:
                D[0] = omega * F[1]
        _advance_jets(kind, nS, D, S, T)


@njit(cache=True, inline="always")
def _rows_of_task(t, n1, symmetric):
    """Rows handled by parallel task ``t``: symmetric tiles pair row ``t`` (long) with row
    ``n1 - 1 - t`` (short) so that every task does the same work over the upper triangle."""
    if not symmetric:
        return 1
    return 1 if n1 - 1 - t == t else 2


@njit(cache=True, inline="always")
def _task_row(t, rep, n1, symmetric):
    """``(row, first column)`` of the ``rep``-th row of task ``t`` (see ``_rows_of_task``)."""
    i = np.int64(t) if rep == 0 else n1 - 1 - np.int64(t)
    return i, (i if symmetric else 0)


@njit(cache=True, inline="always")
def _pass_kind(kind):
    """The kind code the per-pair recursion runs for tile kind ``kind`` (``BOTH_NTK`` -> NTK,
    ``BOTH_TRUNCATED`` -> truncated NTK; the NNGP is carried by every pass)."""
    return kind - 2 if kind >= BOTH_NTK else kind


@njit(cache=True, inline="always")
def _n_results(kind):
    """Results per tile: 2 for the one-pass codes ``BOTH_NTK``, ``BOTH_TRUNCATED``, else 1."""
    return 2 if kind >= BOTH_NTK else 1


@njit(cache=True, inline="always")
def _store_pair_fields(out, i, j, kappa2, kind, S, T):
    """Write the jets of pair ``(i, j)``: ``S`` (NNGP) or ``T`` (NTK kinds) into ``out[0:8]``,
    for the one-pass codes ``S`` into ``out[0:8]`` and ``T`` into ``out[8:16]``."""
    res = S if kind == 0 or kind >= BOTH_NTK else T
    for k in range(8):
        out[k, i, j] = kappa2 * res[k]
    if kind >= BOTH_NTK:
        for k in range(8):
            out[8 + k, i, j] = kappa2 * T[k]


@njit(cache=True)
def _mirror_fields(out):
    """Mirror every block of eight fields of a symmetric tile (``FIELD_TRANSPOSE``)."""
    for k in range(out.shape[0]):
        _mirror(out[8 * (k // 8) + FIELD_TRANSPOSE[k % 8]], out[k])


@njit(cache=True, inline="always")
def _store_pair_scalar(out, n1, i, j, kappa2, kind, value, F):
    """Write ``value`` (what ``_pair_scalar`` returned) for pair ``(i, j)``; for ``BOTH_NTK``
    the NNGP (left in ``F[0]``) into row ``i`` and the NTK into row ``n1 + i``."""
    if kind == BOTH_NTK:
        out[i, j] = kappa2 * F[0]
        out[n1 + i, j] = kappa2 * value
    else:
        out[i, j] = kappa2 * value


@njit(cache=True)
def _mirror_scalar(out, n1):
    """Mirror the upper triangle of each ``(n1, n1)`` result of a symmetric scalar tile."""
    for r in range(0, out.shape[0], n1):
        _mirror(out[r : r + n1], out[r : r + n1])


@njit(cache=True, parallel=True)
def fields_tile(act, kind, depth, omega, sb2, kappa2, P, d, v1, vp1, v2, vp2, h, symmetric):
    """The eight fields for all pairs of a tile.

    Parameters
    ----------
    P : (n1, n2) float64
        Inner products ``<x_i, x'_j>``.
    v1, vp1 : (n1, depth); v2, vp2 : (n2, depth)
        Diagonal chains of the two point sets (``_diag_chain``).
    symmetric : bool
        ``X2 is X1``: only ``j >= i`` is computed, the rest mirrored with ``FIELD_TRANSPOSE``.

    Returns
    -------
    (8, n1, n2) float64, axis 0 ordered as ``FIELD_NAMES``, multiplied by ``kappa2``; for the
    one-pass codes ``BOTH_NTK`` / ``BOTH_TRUNCATED`` (16, n1, n2): the NNGP's eight fields, then
    the NTK's (docs/math.md §14).
    """
    n1, n2 = P.shape
    out = np.empty((8 * _n_results(kind), n1, n2))
    n_rows = (n1 + 1) // 2 if symmetric else n1
    pk = _pass_kind(kind)
    for t in prange(n_rows):
        F = np.empty(N_MOMENTS)
        S = np.empty(8)
        T = np.empty(8)
        nS = np.empty(8)
        D = np.empty(8)
        for rep in range(_rows_of_task(t, n1, symmetric)):
            i, j0 = _task_row(t, rep, n1, symmetric)
            for j in range(j0, n2):
                _pair_jets(
                    act,
                    pk,
                    depth,
                    omega,
                    sb2,
                    P[i, j],
                    d,
                    v1[i],
                    vp1[i],
                    v2[j],
                    vp2[j],
                    h,
                    F,
                    S,
                    T,
                    nS,
                    D,
                    symmetric and j == i,
                )
                _store_pair_fields(out, i, j, kappa2, kind, S, T)
    if symmetric:
        _mirror_fields(out)
    return out


_FAST = {"cache": True, "fastmath": True, "error_model": "numpy"}


@njit(**_FAST)
def _erf_layer_row(c, th, u2l, ui, omega, sb2):
    """One erf layer for a row of pairs: a branch-free loop, so that LLVM vectorises it."""
    for j in range(c.shape[0]):  # (a loop from 0: LLVM does not vectorise range(j0, n))
        uij = ui * u2l[j]
        asn, cs = asin_and_cos(2.0 * c[j] * uij)
        cn = omega * (2.0 / math.pi) * asn + sb2
        th[j] = cn + omega * (4.0 / math.pi) * uij / cs * th[j]  # unused by the NNGP
        c[j] = cn


@njit(**_FAST)
def _relu_layer_row(c, th, u2l, ui, omega, sb2):
    """One relu layer for a row of pairs: a branch-free loop, so that LLVM vectorises it."""
    snap = 1.0 - 0.5 * COLLINEAR_TOL  # theta = 0 within COLLINEAR_TOL, as the field recursion
    for j in range(c.shape[0]):  # (a loop from 0: LLVM does not vectorise range(j0, n))
        uij = ui * u2l[j]
        cosv = c[j] / uij if uij > 0.0 else 0.0
        asn, sn = asin_and_cos(1.0 if cosv > snap else cosv)
        pmt = 0.5 * math.pi + asn  # pi - theta
        cn = omega * uij * (sn + pmt * cosv) / (2.0 * math.pi) + sb2
        th[j] = cn + omega * pmt / (2.0 * math.pi) * th[j]  # unused by the NNGP
        c[j] = cn


@njit(cache=True)
def _point_transform(act, v):
    """The per-point quantity ``u_l`` of the closed-form scalar rows (``_closed_form_scalar_tile``):
    ``1/sqrt(1 + 2 v)`` (erf), ``v`` (gelu), ``sqrt(v)`` (relu)."""
    if act == ERF:
        return 1.0 / np.sqrt(1.0 + 2.0 * v)
    if act == GELU:
        return v.copy()
    return np.sqrt(v)


def _closed_form_scalar_tile(act, kind, depth, omega, sb2, kappa2, P, d, v1, v2, symmetric):
    """Scalar NNGP/NTK for erf (``act == ERF``), gelu (``act == GELU``) or relu (otherwise),
    vectorised along rows (``_closed_form_scalar_rows``).

    erf:  with ``u_l = 1/sqrt(1 + 2 v_l)`` per point and ``x = 2 c u_l(i) u_l(j)``:
          ``F00 = 2/pi asin(x)``, ``F11 = 4/pi u_l(i) u_l(j) / sqrt(1 - x^2)``.
    gelu: with ``u_l = v_l``: ``F00``, ``F11`` of ``jacntk.kernels._moments._gelu_scalar``
          (``gelu_layer_row``).
    relu: with ``u_l = sqrt(v_l)`` and ``cos(theta) = c / (u_l(i) u_l(j))``:
          ``F00 = u_l(i) u_l(j) (sin(theta) + (pi - theta) cos(theta)) / (2 pi)``,
          ``F11 = (pi - theta) / (2 pi)``.
    Then ``S' = omega F00 + sigma_b^2`` and ``T' = S' + omega F11 T`` per layer.
    A single kind is written into ``P`` (so memory is the output plus O(n d)) and returned;
    ``BOTH_NTK`` returns a new (2, n1, n2) array, the NNGP then the NTK (docs/math.md §14).
    """
    out = np.empty((2,) + P.shape) if kind == BOTH_NTK else P[None]
    no = np.empty((0, 0))
    _closed_form_scalar_rows(act, kind, depth, omega, sb2, kappa2, P, d, v1, v2, symmetric, out,
                             False, no, no)  # fmt: skip
    return out if kind == BOTH_NTK else out[0]


@njit(**_FAST)
def row_inner_products(p, a, BT, j0):
    """``p[j] = <a, x'_{j0 + j}>``, ``BT`` (d, n2) the transposed points: the closed-form rows'
    inputs at small d (``INLINE_DOT_D``), summed over k in order (tile-independent)."""
    m = p.shape[0]
    for j in range(m):
        p[j] = a[0] * BT[0, j0 + j]
    for k in range(1, BT.shape[0]):
        ak = a[k]
        row = BT[k, j0:]
        for j in range(m):
            p[j] += ak * row[j]


@njit(cache=True, parallel=True)
def _closed_form_scalar_rows(
    act, kind, depth, omega, sb2, kappa2, P, d, v1, v2, symmetric, out, inline, A, BT
):  # fmt: skip
    """The rows of ``_closed_form_scalar_tile`` into ``out`` (m, n1, n2): ``out[0]`` the NNGP
    (kind 0), the NTK (kinds 1, 2), or for ``BOTH_NTK`` the NNGP and ``out[1]`` the NTK of the
    same pass.  ``out[m - 1]`` may be ``P`` itself: each row reads ``P[i, j0:]`` before it
    writes that row.  ``inline``: ``P`` is not filled; each row forms its inner products from
    ``A`` (n1, d) and ``BT`` (d, n2) (``row_inner_products``; the diagonal pair of a symmetric
    tile from the diagonal chain ``v1[i, 0] = omega q_i / d + sb2``)."""
    n1, n2 = P.shape
    u1 = np.ascontiguousarray(_point_transform(act, v1).T)
    u2 = np.ascontiguousarray(_point_transform(act, v2).T)
    n_rows = (n1 + 1) // 2 if symmetric else n1
    for t in prange(n_rows):
        c = np.empty(n2)
        th = np.empty(n2)
        for rep in range(_rows_of_task(t, n1, symmetric)):
            i, j0 = _task_row(t, rep, n1, symmetric)
            if inline:
                row_inner_products(c[j0:], A[i], BT, j0)
            else:
                c[j0:] = P[i, j0:]
            for j in range(j0, n2):
                c[j] = omega * c[j] / d + sb2
            if inline and symmetric:
                c[i] = v1[i, 0]
            for j in range(j0, n2):
                th[j] = c[j]
            for layer in range(depth):
                if symmetric:  # the pair (x_i, x_i): covariance = variance (see _pair_jets)
                    c[i] = v1[i, layer]
                _closed_form_layer_row(
                    act, c[j0:], th[j0:], u2[layer, j0:], u1[layer, i], omega, sb2
                )
            _store_closed_form_row(out, i, j0, kappa2, kind, c, th)
    if symmetric:
        for k in range(out.shape[0]):
            _mirror(out[k], out[k])


@njit(cache=True, inline="always")
def _closed_form_layer_row(act, c, th, u2l, ui, omega, sb2):
    """One float64 layer of a closed-form scalar row (erf, gelu, relu)."""
    if act == ERF:
        _erf_layer_row(c, th, u2l, ui, omega, sb2)
    elif act == GELU:
        gelu_layer_row(c, th, u2l, ui, omega, sb2)
    else:
        _relu_layer_row(c, th, u2l, ui, omega, sb2)


@njit(cache=True, inline="always")
def _store_closed_form_row(out, i, j0, kappa2, kind, c, th):
    """Row ``i`` (columns ``j0:``) of the NNGP ``c`` and/or NTK ``th`` into ``out``."""
    n2 = c.shape[0]
    if kind == BOTH_NTK:
        for j in range(j0, n2):
            out[0, i, j] = kappa2 * c[j]
            out[1, i, j] = kappa2 * th[j]
    else:
        res = th if kind != 0 else c
        for j in range(j0, n2):
            out[0, i, j] = kappa2 * res[j]


@njit(cache=True, parallel=True)
def scalar_tile(act, kind, depth, omega, sb2, kappa2, P, d, v1, v2, h, symmetric):
    """NNGP (kind 0) or NTK (kinds 1, 2) values for all pairs of a tile: shape (n1, n2); for
    ``BOTH_NTK`` (2 n1, n2), the NNGP rows over the NTK rows (docs/math.md §14)."""
    n1, n2 = P.shape
    out = np.empty((_n_results(kind) * n1, n2))
    n_rows = (n1 + 1) // 2 if symmetric else n1
    for t in prange(n_rows):
        F = np.empty(N_MOMENTS)
        for rep in range(_rows_of_task(t, n1, symmetric)):
            i, j0 = _task_row(t, rep, n1, symmetric)
            for j in range(j0, n2):
                value = _pair_scalar(
                    act,
                    kind,
                    depth,
                    omega,
                    sb2,
                    P[i, j],
                    d,
                    v1[i],
                    v2[j],
                    h,
                    F,
                    symmetric and j == i,
                )
                _store_pair_scalar(out, n1, i, j, kappa2, kind, value, F)
    if symmetric:
        _mirror_scalar(out, n1)
    return out


@njit(cache=True, parallel=True)
def _mirror(src, dst):
    """``dst[j, i] = src[i, j]`` for ``j > i`` (blocked transpose of the upper triangle)."""
    n = src.shape[0]
    bs = 64
    nb = (n + bs - 1) // bs
    for bi in prange(nb):
        for bj in range(bi, nb):
            for i in range(bi * bs, min(n, (bi + 1) * bs)):
                for j in range(max(i + 1, bj * bs), min(n, (bj + 1) * bs)):
                    dst[j, i] = src[i, j]
