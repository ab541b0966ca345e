"""The Hermite (Mehler) route of the smooth quadrature activations (docs/activations.md, "The
Hermite route").

``F^{ij}(c, a, b) = sum_k rho^k alpha_k^(i)(a) alpha_k^(j)(b)`` with ``rho = c / sqrt(ab)``: the
per-point coefficients ``alpha_k`` are tabulated once per tile (``hermite_tables``, a 1-D
trapezoid rule), a pair costs O(K) per layer (``hermite_moments``), its series stops when the
Cauchy-Schwarz tail bound is met (``HERMITE_TOL``), and a pair whose bound cannot be met within
``HERMITE_KMAX`` terms falls back to the 2-D trapezoid rule of :mod:`jacntk.kernels._moments`.
``scalar_tile_routed`` / ``fields_tile_routed`` decide, per activation code, between this route
and the per-pair tiles of :mod:`jacntk.kernels._fields`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._activations import N_ACTIVATIONS
from ._fields import (
    _advance_jets,
    _gaussian_jets,
    _mirror_fields,
    _mirror_scalar,
    _n_results,
    _pass_kind,
    _rows_of_task,
    _start_jets,
    _store_pair_fields,
    _store_pair_scalar,
    _task_row,
    fields_tile,
    scalar_tile,
)
from ._moments import (
    _INV_SQRT_2PI,
    JETS,
    N_MOMENTS,
    NTK_JETS,
    SCALAR,
    activation_derivatives,
    gaussian_moments,
)

# ---------------------------------------------------------------------------------------------
# The Hermite (Mehler) route of the quadrature activations (docs/activations.md, "The Hermite
# route"): per-point coefficient vectors, O(K) per pair, with a bound checked per pair.
# ---------------------------------------------------------------------------------------------

#: Bound per moment and pair: ``|F_hermite - F| <= HERMITE_TOL s_ij`` with the Cauchy-Schwarz
#: scale ``s_ij = ||phi^(i)(u)|| ||phi^(j)(u')||`` (plus the 1-D trapezoid error of the
#: coefficients, ~1e-15 s_ij); a pair whose bound is not met within the tile's order falls back
#: to the 2-D trapezoid rule.
HERMITE_TOL = 1e-12
#: The same bound for the scalar kernels (F00, F11 only, so cheap): 100x tighter, so that the
#: scalar NNGP/NTK are smooth in the inputs to ~1e-14 (finite differences of them, as in
#: tests/test_kernels.py, divide its jumps by h^2); near-collinear pairs then fall back.
HERMITE_SCALAR_TOL = 1e-14
#: Largest series order per tile; beyond it pairs fall back to the trapezoid rule.
HERMITE_KMAX = 1024
#: The tile's order is chosen so that the widest-variance point's normalised tail is below this
#: (then every pair, |rho| = 1 included, meets the bound: tau^2 <= HERMITE_TOL), for the
#: fields and for the scalar kernels (tau^2 <= HERMITE_SCALAR_TOL).
_POINT_TAIL = 7e-7
_POINT_TAIL_SCALAR = 7e-8
#: Half-width of the 1-D grid in z = u / sqrt(a): |phi(sqrt(a) z)| e^{-z^2/4} < 1e-18 beyond.
_RZ = 13.0
#: Relative floor added to each squared tail: ~10 ulp, against the round-off of the one
#: difference ``||phi||^2 - sum_{k <= K} alpha_k^2`` (tails below it are summed backwards).
_TAIL_FLOOR = 2e-15
#: (i, j) of the ten moments F00, F11, F20, F02, F22, F31, F13, F33, F42, F24.
MOMENT_ORDERS = ((0, 0), (1, 1), (2, 0), (0, 2), (2, 2), (3, 1), (1, 3), (3, 3), (4, 2), (2, 4))
_MI = np.array([ij[0] for ij in MOMENT_ORDERS], dtype=np.int64)
_MJ = np.array([ij[1] for ij in MOMENT_ORDERS], dtype=np.int64)


@njit(cache=True, inline="always")
def hermite_max_order(order):
    """Highest derivative the moments of ``order`` use: 1 (SCALAR), 3 (JETS), 4 (NTK_JETS)."""
    if order == SCALAR:
        return 1
    if order == JETS:
        return 3
    return 4


@njit(cache=True)
def hermite_point(act, a, h, K, max_order, coef, tau, diag):
    """Hermite coefficients of one point at variance ``a`` (docs/activations.md, "The Hermite
    route").

    ``coef[o, k] = E[phi^(o)(sqrt(a) z) h_k(z)]``, ``z ~ N(0, 1)``, ``h_k = He_k / sqrt(k!)``
    (orders ``o <= max_order``, ``k <= K``), by the trapezoid rule in ``z`` (step
    ``min(1 / (sqrt(a) / h + (sqrt(2K + 1) + 9) / (2 pi)), 1/2)``, ``|z| <= 13``) with the
    normalised Hermite functions by their three-term recurrence;
    ``tau[k] = max_o T_o(k) / S_o``, the normalised tail
    ``T_o(k)^2 = S_o^2 - sum_{m <= k} coef[o, m]^2`` (plus a floor ``2e-15 S_o^2``),
    ``S_o^2 = E[phi^(o)(u)^2]``; ``diag`` the ten moments at ``c = a = b`` (1-D, exact).
    Shapes: coef (>= max_order + 1, K + 1), tau (K + 1,), diag (10,).
    """
    for o in range(max_order + 1):
        for k in range(K + 1):
            coef[o, k] = 0.0
    for m in range(N_MOMENTS):
        diag[m] = 0.0
    S2 = np.zeros(5)
    sa = math.sqrt(a)
    # The integrand's strip of analyticity shrinks to delta / sqrt(a) in z while |h_k| grows
    # like exp(|Im z| sqrt(2k + 1)) off the axis: the step keeps the registry's margin h in u
    # on top of the Hermite functions' own (Gaussian) band limit sqrt(2K + 1) + 9.
    hz = min(1.0 / (sa / h + (math.sqrt(2.0 * K + 1.0) + 9.0) / (2.0 * math.pi)), 0.5)
    M = int(_RZ / hz) + 1
    sq = np.empty(K + 2)
    for k in range(K + 2):
        sq[k] = math.sqrt(k)
    fp = np.empty(5)
    fm = np.empty(5)
    ev = np.empty(5)
    od = np.empty(5)
    for n in range(M + 1):
        z = n * hz
        w = hz * _INV_SQRT_2PI * math.exp(-0.5 * z * z)
        activation_derivatives(act, sa * z, fp)
        if n == 0:
            for o in range(5):
                ev[o] = fp[o]
                od[o] = 0.0
                fm[o] = 0.0
        else:
            activation_derivatives(act, -sa * z, fm)
            for o in range(5):
                ev[o] = fp[o] + fm[o]
                od[o] = fp[o] - fm[o]
        for o in range(5):
            S2[o] += w * (fp[o] * fp[o] + fm[o] * fm[o])
        for m in range(N_MOMENTS):
            diag[m] += w * (fp[_MI[m]] * fp[_MJ[m]] + fm[_MI[m]] * fm[_MJ[m]])
        # p_k = w h_k(z): h_{k+1} = (z h_k - sqrt(k) h_{k-1}) / sqrt(k + 1); h_k(-z) = (-1)^k h_k(z)
        pm = 0.0
        pk = w
        for k in range(K + 1):
            if k % 2 == 0:
                for o in range(max_order + 1):
                    coef[o, k] += pk * ev[o]
            else:
                for o in range(max_order + 1):
                    coef[o, k] += pk * od[o]
            pn = (z * pk - sq[k] * pm) / sq[k + 1]
            pm = pk
            pk = pn
    for k in range(K + 1):
        tau[k] = 0.0
    for o in range(max_order + 1):
        if S2[o] <= 0.0:
            continue
        # T(K)^2 = S^2 - sum_{m <= K} alpha_m^2 (the one cancelling difference, floored), then
        # T(k)^2 = T(K)^2 + sum_{k < m <= K} alpha_m^2 summed backwards (no cancellation).
        rem = S2[o]
        for k in range(K + 1):
            rem -= coef[o, k] * coef[o, k]
        tail = max(rem, 0.0) + _TAIL_FLOOR * S2[o]
        for k in range(K, -1, -1):
            t = math.sqrt(tail / S2[o])
            if t > tau[k]:
                tau[k] = t
            tail += coef[o, k] * coef[o, k]


@njit(cache=True, parallel=True)
def hermite_tables(act, v, h, order, K):
    """``hermite_point`` for every point and layer of a diagonal chain ``v`` (n, depth):
    coef (n, depth, m + 1, K + 1) with ``m = hermite_max_order(order)``, tau (n, depth, K + 1),
    diag (n, depth, 10)."""
    n, depth = v.shape
    mo = hermite_max_order(order)
    coef = np.zeros((n, depth, mo + 1, K + 1))
    tau = np.ones((n, depth, K + 1))
    diag = np.zeros((n, depth, N_MOMENTS))
    for i in prange(n):
        for layer in range(depth):
            if v[i, layer] > 0.0:  # a = 0: tau stays 1, every pair of it falls back
                hermite_point(
                    act, v[i, layer], h, K, mo, coef[i, layer], tau[i, layer], diag[i, layer]
                )
    return coef, tau, diag


@njit(cache=True)
def hermite_order(act, v1, v2, h, order):
    """The tile's series order ``K``: the smallest power of two (>= 16, <= HERMITE_KMAX) at which
    the normalised tail of the widest-variance point of every layer (over both point sets) is
    below ``_POINT_TAIL`` (``_POINT_TAIL_SCALAR`` for ``order == SCALAR``).
    Only a cost choice: each pair checks its own bound."""
    depth = v1.shape[1]
    mo = hermite_max_order(order)
    target = _POINT_TAIL_SCALAR if order == SCALAR else _POINT_TAIL
    K = 16
    diag = np.empty(N_MOMENTS)
    for layer in range(depth):
        a = 0.0
        for i in range(v1.shape[0]):
            a = max(a, v1[i, layer])
        for i in range(v2.shape[0]):
            a = max(a, v2[i, layer])
        if a <= 0.0:
            continue
        while True:
            coef = np.empty((5, K + 1))
            tau = np.empty(K + 1)
            hermite_point(act, a, h, K, mo, coef, tau, diag)
            if tau[K] <= target or K >= HERMITE_KMAX:
                break
            K = min(2 * K, HERMITE_KMAX)
    return K


@njit(cache=True, fastmath=True, error_model="numpy")
def hermite_moments(c, a, b, ca, ta, cb, tb, order, F):
    """The moments of ``order`` by the Mehler series
    ``F^{ij}(c, a, b) = sum_k rho^k coef_a[i, k] coef_b[j, k]``, ``rho = c / sqrt(ab)``,
    summed until ``|rho|^(k+1) tau_a[k] tau_b[k] <= tol``, which bounds the rest by
    Cauchy-Schwarz: ``|sum_{m > k}| <= |rho|^(k+1) T_i^a(k) T_j^b(k) <= tol s_ij``
    (``tol = HERMITE_SCALAR_TOL`` for ``order == SCALAR``, else ``HERMITE_TOL``).
    ``ca, cb``: (m + 1, K + 1) coefficients of the two points, ``ta, tb``: (K + 1,) tails.
    Returns False (F undefined) when the bound is not met within ``K`` terms."""
    if not (a > 0.0 and b > 0.0):
        return False
    K = ta.shape[0] - 1
    tol = HERMITE_TOL if order >= JETS else HERMITE_SCALAR_TOL
    rho = c / math.sqrt(a * b)
    rho = min(1.0, max(-1.0, rho))
    f0 = f1 = f2 = f3 = f4 = f5 = f6 = f7 = f8 = f9 = 0.0
    r = 1.0
    for k in range(K + 1):
        b0 = r * cb[0, k]
        b1 = r * cb[1, k]
        f0 += ca[0, k] * b0
        f1 += ca[1, k] * b1
        if order >= JETS:
            b2 = r * cb[2, k]
            b3 = r * cb[3, k]
            f2 += ca[2, k] * b0
            f3 += ca[0, k] * b2
            f4 += ca[2, k] * b2
            f5 += ca[3, k] * b1
            f6 += ca[1, k] * b3
            if order >= NTK_JETS:
                b4 = r * cb[4, k]
                f7 += ca[3, k] * b3
                f8 += ca[4, k] * b2
                f9 += ca[2, k] * b4
        r *= rho
        if abs(r) * ta[k] * tb[k] <= tol:
            F[0] = f0
            F[1] = f1
            if order >= JETS:
                F[2] = f2
                F[3] = f3
                F[4] = f4
                F[5] = f5
                F[6] = f6
                if order >= NTK_JETS:
                    F[7] = f7
                    F[8] = f8
                    F[9] = f9
            return True
    return False


# The Hermite route of the quadrature activations (docs/activations.md, "The Hermite route"):
# per-point coefficient tables (``hermite_tables``) once per tile, then O(K) per pair and
# layer (``hermite_moments``); a pair whose stated bound is not met falls back to the per-pair
# trapezoid rule, the diagonal pair (x, x) takes the exact 1-D moments of its point.


@njit(cache=True)
def _hermite_pair_scalar(
    act, kind, depth, omega, sb2, p, d, vi, vj, h, ci, ti, gi, cj, tj, F, diag
):
    """``_pair_scalar`` with the moments of ``hermite_moments``; ``ci, ti, gi``: the tables of
    the first point (depth, ...), ``cj, tj`` of the second."""
    s = omega * p / d + sb2
    t = s
    for layer in range(depth):
        a = vi[layer]
        b = vj[layer]
        if diag:
            F[0] = gi[layer, 0]
            F[1] = gi[layer, 1]
        elif not hermite_moments(s, a, b, ci[layer], ti[layer], cj[layer], tj[layer], SCALAR, F):
            gaussian_moments(act, s, a, b, SCALAR, h, F)
        s_new = omega * F[0] + sb2
        t = s_new + omega * F[1] * t
        s = s_new
    F[0] = s  # kind BOTH_NTK: the NNGP of the same pass (_store_pair_scalar)
    return t if kind != 0 else s


@njit(cache=True)
def _tile_tables(act, v1, v2, h, order, symmetric):
    """The Hermite tables of both sides of a tile at one common order (``hermite_order``):
    ``(c1, t1, g1, c2, t2)``, the second side shared with the first when ``symmetric``."""
    K = hermite_order(act, v1, v2, h, order)
    c1, t1, g1 = hermite_tables(act, v1, h, order, K)
    if symmetric:
        return c1, t1, g1, c1, t1
    c2, t2, _ = hermite_tables(act, v2, h, order, K)
    return c1, t1, g1, c2, t2


@njit(cache=True, parallel=True)
def _hermite_scalar_tile(act, kind, depth, omega, sb2, kappa2, P, d, v1, v2, h, symmetric):
    """``scalar_tile`` of a smooth quadrature activation by the Hermite route."""
    c1, t1, g1, c2, t2 = _tile_tables(act, v1, v2, h, SCALAR, symmetric)
    n1, n2 = P.shape
    out = np.empty((_n_results(kind) * n1, n2))  # BOTH_NTK: NNGP rows over NTK rows
    n_rows = (n1 + 1) // 2 if symmetric else n1
    for t in prange(n_rows):
        F = np.empty(N_MOMENTS)
        for rep in range(_rows_of_task(t, n1, symmetric)):
            i, j0 = _task_row(t, rep, n1, symmetric)
            for j in range(j0, n2):
                value = _hermite_pair_scalar(
                    act, kind, depth, omega, sb2, P[i, j], d, v1[i], v2[j], h,
                    c1[i], t1[i], g1[i], c2[j], t2[j], F, symmetric and j == i,
                )  # fmt: skip
                _store_pair_scalar(out, n1, i, j, kappa2, kind, value, F)
    if symmetric:
        _mirror_scalar(out, n1)
    return out


@njit(cache=True)
def _hermite_pair_jets(
    act, kind, depth, omega, sb2, p, d, vi, vpi, vj, vpj, h, ci, ti, gi, cj, tj, F, S, T, nS, D,
    diag,
):  # fmt: skip
    """``_pair_jets`` of a smooth activation (no collinear ReLU cases) with the moments of
    ``hermite_moments``; ``ci, ti, gi``: the first point's tables, ``cj, tj`` the second's."""
    _start_jets(omega, sb2, p, d, S, T)
    order = NTK_JETS if kind == 1 else JETS
    for layer in range(depth):
        a = vi[layer]
        b = vj[layer]
        aq = vpi[layer]
        br = vpj[layer]
        if diag:
            S[0] = a
            for m in range(N_MOMENTS):
                F[m] = gi[layer, m]
        elif not hermite_moments(S[0], a, b, ci[layer], ti[layer], cj[layer], tj[layer], order, F):
            gaussian_moments(act, S[0], a, b, order, h, F)
        _gaussian_jets(omega, S, aq, br, F[0], F[1], F[2], F[3], F[4], F[5], F[6], nS)
        nS[0] += sb2
        if kind == 1:
            _gaussian_jets(omega, S, aq, br, F[1], F[4], F[5], F[6], F[7], F[8], F[9], D)
        elif kind == 2:
            D[0] = omega * F[1]
        _advance_jets(kind, nS, D, S, T)


@njit(cache=True, parallel=True)
def _hermite_fields_tile(
    act, kind, depth, omega, sb2, kappa2, P, d, v1, vp1, v2, vp2, h, symmetric
):
    """``fields_tile`` of a smooth quadrature activation by the Hermite route."""
    pk = _pass_kind(kind)  # one-pass codes: (16, n1, n2), the NNGP's fields first
    order = NTK_JETS if pk == 1 else JETS
    c1, t1, g1, c2, t2 = _tile_tables(act, v1, v2, h, order, symmetric)
    n1, n2 = P.shape
    out = np.empty((8 * _n_results(kind), n1, n2))
    n_rows = (n1 + 1) // 2 if symmetric else n1
    for t in prange(n_rows):
        F = np.empty(N_MOMENTS)
        S = np.empty(8)
        T = np.empty(8)
        nS = np.empty(8)
        D = np.empty(8)
        for rep in range(_rows_of_task(t, n1, symmetric)):
            i, j0 = _task_row(t, rep, n1, symmetric)
            for j in range(j0, n2):
                _hermite_pair_jets(
                    act, pk, depth, omega, sb2, P[i, j], d, v1[i], vp1[i], v2[j], vp2[j], h,
                    c1[i], t1[i], g1[i], c2[j], t2[j], F, S, T, nS, D, symmetric and j == i,
                )  # fmt: skip
                _store_pair_fields(out, i, j, kappa2, kind, S, T)
    if symmetric:
        _mirror_fields(out)
    return out


def uses_hermite(act: int, h: float) -> bool:
    """Whether activation code ``act`` (trapezoid step ``h``) takes this route: a registered
    smooth activation without a closed form (reference codes keep the per-pair trapezoid)."""
    return h > 0.0 and act < N_ACTIVATIONS


def scalar_tile_routed(act, kind, depth, omega, sb2, kappa2, P, d, v1, v2, h, symmetric):
    """``scalar_tile`` of :mod:`jacntk.kernels._fields`, or this route's (same arguments)."""
    tile = _hermite_scalar_tile if uses_hermite(act, h) else scalar_tile
    return tile(act, kind, depth, omega, sb2, kappa2, P, d, v1, v2, h, symmetric)


def fields_tile_routed(act, kind, depth, omega, sb2, kappa2, P, d, v1, vp1, v2, vp2, h, symmetric):
    """``fields_tile`` of :mod:`jacntk.kernels._fields`, or this route's (same arguments)."""
    tile = _hermite_fields_tile if uses_hermite(act, h) else fields_tile
    return tile(act, kind, depth, omega, sb2, kappa2, P, d, v1, vp1, v2, vp2, h, symmetric)
