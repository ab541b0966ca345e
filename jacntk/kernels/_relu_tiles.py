"""Numba tiles of the cancellation-free ReLU Jacobian blocks (docs/math.md §7).

The per-pair recursion of :mod:`jacntk.kernels._relu_blocks` in the pair basis, for
dense tiles, the structured product and projected augmentation.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..arch import MLP
from ..validation import as_pair, as_vector
from ._relu_blocks import (
    _SERIES_THETA,
    _SIN_FLOOR,
    _assemble,
    _check_relu,
    pair_basis,
    relu_stable_blocks,
    stable_recursion,
)


@njit(cache=True)
def _one_minus_j_scalar(t):
    """Scalar ``_one_minus_j``."""
    if t < _SERIES_THETA:
        t2 = t * t
        term = t
        s3 = 0.0
        sign = 1.0
        for k in range(1, 10):
            term = term * t2 / ((2 * k) * (2 * k + 1))
            s3 += sign * 2 * k * term
            sign = -sign
    else:
        s3 = math.sin(t) - t * math.cos(t)
    sh = math.sin(0.5 * t)
    return (2.0 * math.pi * sh * sh - s3) / math.pi


@njit(cache=True)
def _pair_recursion(
    depth, omega, sb2, truncated, d, q, r, p, dd, qmr, xi1, xi1p, xi2p, C, T, A0, B0, W
):
    """One pair: fill ``C`` (NNGP) or ``T`` (truncated JNTK) with the 3x3 block on
    ``(e0, u1, u2)``, return the isotropic coefficient (before ``kappa^2``).  ``W`` is a
    (4, 3) work array for ``k1, k1', n2, n2'``."""
    s = omega / d
    alpha = 0.5 * omega
    A0[0] = s * q + sb2
    A0[1] = s * xi1
    A0[2] = 0.0
    B0[0] = s * r + sb2
    B0[1] = s * xi1p
    B0[2] = s * xi2p
    for i in range(3):
        for j in range(3):
            C[i, j] = 0.0
    C[0, 0] = s * p + sb2
    C[0, 1] = s * xi1
    C[1, 0] = s * xi1p
    C[2, 0] = s * xi2p
    C[1, 1] = s
    C[2, 2] = s
    iso = s
    det = s * s * q * xi2p * xi2p + s * sb2 * dd
    amb = s * qmr
    tiso = iso
    if truncated:
        for i in range(3):
            for j in range(3):
                T[i, j] = C[i, j]
    two_pi = 2.0 * math.pi
    for _ in range(depth):
        a = A0[0]
        b = B0[0]
        c = C[0, 0]
        degenerate = a * b <= 0.0
        sdet = math.sqrt(max(det, 0.0))
        theta = math.atan2(sdet, c)
        st = math.sin(theta)
        ct = math.cos(theta)
        if degenerate:
            P = 0.25
            ra = 1.0
            rb = 1.0
        else:
            P = math.atan2(sdet, -c) / two_pi
            ra = math.sqrt(a)
            rb = math.sqrt(b)
        w = omega * P
        if degenerate:
            for i in range(3):
                for j in range(3):
                    C[i, j] = w * C[i, j]
        else:
            for i in range(3):
                W[0, i] = A0[i] / ra
                W[1, i] = C[0, i] / ra
            for i in range(3):
                W[2, i] = C[i, 0] / rb - ct * W[0, i]
                W[3, i] = B0[i] / rb - ct * W[1, i]
            W[2, 0] = 0.0
            cot = ct / st if st > _SIN_FLOOR else 0.0
            for i in range(3):
                for j in range(3):
                    n = st * ct * (W[0, i] * W[1, j])
                    n += st * (W[0, i] * W[3, j])
                    n += st * (W[2, i] * W[1, j])
                    n -= cot * (W[2, i] * W[3, j])
                    C[i, j] = omega * (P * C[i, j] + n / two_pi)
        C[0, 0] += sb2
        iso = w * iso
        if truncated:
            for i in range(3):
                for j in range(3):
                    T[i, j] = C[i, j] + w * T[i, j]
            tiso = iso + w * tiso
        if degenerate:
            det = 0.0
        else:
            m = _one_minus_j_scalar(theta)
            det = (
                alpha * alpha * a * b * m * (2.0 - m)
                + alpha * sb2 * amb * amb / (ra + rb) ** 2
                + 2.0 * alpha * sb2 * (ra * rb) * m
            )
        amb = alpha * amb
        for i in range(3):
            A0[i] = alpha * A0[i]
            B0[i] = alpha * B0[i]
        A0[0] += sb2
        B0[0] += sb2
    return tiso if truncated else iso


@njit(cache=True, parallel=True)
def dense_tile(depth, omega, sb2, kappa2, truncated, X1, X2, symmetric):
    """Point-major ``(n1 (d+1), n2 (d+1))`` ReLU Jacobian NNGP / truncated JNTK of a tile.

    Per pair: the basis of ``pair_basis`` in ``O(d)``, ``_pair_recursion`` in ``O(depth)``, and
    the block ``E R E^T + iota (I - u1 u1^T - u2 u2^T)`` written in ``O(d^2)`` as
    ``J_ab = u1_a s_b + u2_a t_b + iota delta_ab`` with ``s = (R11 - iota) u1 + R12 u2``,
    ``t = R21 u1 + (R22 - iota) u2``.  ``symmetric`` (``X2 is X1``): only ``j >= i`` is computed
    and block ``(j, i)`` is the transpose of block ``(i, j)``.
    """
    n1, d = X1.shape
    n2 = X2.shape[0]
    k = d + 1
    out = np.empty((n1 * k, n2 * k))
    for i in prange(n1):
        u1 = np.empty(d)
        u2 = np.empty(d)
        delta = np.empty(d)
        sv = np.empty(d)
        tv = np.empty(d)
        C = np.empty((3, 3))
        T = np.empty((3, 3))
        A0 = np.empty(3)
        B0 = np.empty(3)
        W = np.empty((4, 3))
        q = 0.0
        for a in range(d):
            q += X1[i, a] * X1[i, a]
        nx = math.sqrt(q)
        for a in range(d):
            u1[a] = X1[i, a] / nx if nx > 0.0 else 0.0
        for j in range(i if symmetric else 0, n2):
            r = 0.0
            xd = 0.0
            dd = 0.0
            ud = 0.0
            for a in range(d):
                r += X2[j, a] * X2[j, a]
                delta[a] = X2[j, a] - X1[i, a]
                xd += X1[i, a] * delta[a]
                dd += delta[a] * delta[a]
                ud += u1[a] * delta[a]
            proj = 0.0
            for a in range(d):
                u2[a] = delta[a] - ud * u1[a]
                proj += u1[a] * u2[a]
            nw2 = 0.0
            for a in range(d):
                u2[a] -= proj * u1[a]
                nw2 += u2[a] * u2[a]
            nw = math.sqrt(nw2)
            for a in range(d):
                u2[a] = u2[a] / nw if nw > 0.0 else 0.0
            iso = _pair_recursion(
                depth,
                omega,
                sb2,
                truncated,
                d,
                q,
                r,
                q + xd,
                dd,
                -(2.0 * xd + dd),
                nx,
                nx + ud,
                nw,
                C,
                T,
                A0,
                B0,
                W,
            )
            R = T if truncated else C
            iso *= kappa2
            for a in range(3):
                for b in range(3):
                    R[a, b] *= kappa2
            r0 = i * k
            c0 = j * k
            out[r0, c0] = R[0, 0]
            for a in range(d):
                out[r0, c0 + 1 + a] = R[0, 1] * u1[a] + R[0, 2] * u2[a]
                out[r0 + 1 + a, c0] = R[1, 0] * u1[a] + R[2, 0] * u2[a]
                sv[a] = (R[1, 1] - iso) * u1[a] + R[1, 2] * u2[a]
                tv[a] = R[2, 1] * u1[a] + (R[2, 2] - iso) * u2[a]
            for a in range(d):
                for b in range(d):
                    out[r0 + 1 + a, c0 + 1 + b] = u1[a] * sv[b] + u2[a] * tv[b]
                out[r0 + 1 + a, c0 + 1 + a] += iso
            if symmetric and j > i:
                for a in range(k):
                    for b in range(k):
                        out[c0 + b, r0 + a] = out[r0 + a, c0 + b]
    return out


def relu_jacobian_kernel(arch: MLP, X1, X2=None, *, kind: str = "nngp") -> np.ndarray:
    """Dense ReLU Jacobian NNGP / truncated JNTK, accurate for all pairs including ``x' ~ x``.

    Numba (``dense_tile``; ``relu_stable_blocks(...).dense()`` is the NumPy reference).

    Returns
    -------
    (n1 (d+1), n2 (d+1)) float64, point-major (docs/math.md §1.3).
    """
    _check_relu(arch, kind, "relu_jacobian_kernel")
    A, B, symmetric = as_pair(X1, X2)
    return dense_tile(
        arch.depth,
        arch.sigma_w**2,
        arch.sigma_b**2,
        arch.kappa**2,
        kind == "ntk_truncated",
        A,
        B,
        symmetric,
    )


def hidden_angle_sines(arch: MLP, X1, X2=None, *, aligned: bool = False) -> np.ndarray:
    """``min_l sin(theta_l)`` over the hidden layers' input angles of every pair.

    ``cos(theta_l) = c_l / sqrt(a_l b_l)`` with ``c_1 = omega p / d + sigma_b^2``,
    ``c_{l+1} = omega F00(c_l, a_l, b_l) + sigma_b^2``, ``a_{l+1} = omega a_l / 2 + sigma_b^2``
    (docs/math.md §7).  Pairs with a small value (near ``x' = x``, near ``x' = -x`` without bias,
    or any pair a bias makes nearly collinear) are those where the ``(p, q, r)`` fields cancel:
    the field route loses about ``eps_mach / sin^2`` relative accuracy there.  Computed with
    plain cancellation-prone formulas (absolute error ``~sqrt(eps_mach)`` in the sine): good
    enough to *flag* pairs, not to evaluate them.

    Parameters
    ----------
    aligned : bool
        If True, ``X1`` and ``X2`` have the same number of points and only the pairs
        ``(x1_k, x2_k)`` are evaluated.

    Returns
    -------
    (n1, n2) float64 in ``[0, 1]`` (``(n,)`` when ``aligned``); 1 where a pre-activation
    variance is 0 (no angle).
    """
    A, B, _ = as_pair(X1, X2)
    if aligned and A.shape[0] != B.shape[0]:
        raise ValueError(f"aligned pairs need equally many points, got {A.shape[0]}, {B.shape[0]}")
    d = A.shape[1]
    omega, sb2 = arch.sigma_w**2, arch.sigma_b**2
    qa = omega * np.einsum("ia,ia->i", A, A) / d + sb2
    qb = omega * np.einsum("ja,ja->j", B, B) / d + sb2
    if aligned:
        c = omega * np.einsum("ka,ka->k", A, B) / d + sb2
        return _angle_sines(c[:, None], qa, qb[:, None], arch.depth, omega, sb2, True)[:, 0]
    c = omega * (A @ B.T) / d + sb2
    return _angle_sines(c, qa, qb[None, :], arch.depth, omega, sb2, False)


@njit(cache=True, parallel=True)
def _angle_sines(c, qa, qb, depth, omega, sb2, aligned):  # pragma: no cover - compiled
    """``min_l sin(theta_l)`` for the first-layer covariances ``c`` (n1, n2) and variances
    ``qa`` (n1,), ``qb`` (1, n2) or, ``aligned``, (n1, 1) (one pair per row); in place of the
    NumPy loop of :func:`_angle_sines_reference`."""
    n1, n2 = c.shape
    out = np.empty((n1, n2))
    for i in prange(n1):
        for j in range(n2):
            ci = c[i, j]
            a = qa[i]
            b = qb[i, 0] if aligned else qb[0, j]
            smallest = 1.0
            for _ in range(depth):
                ab = a * b
                if ab > 0.0:
                    cos_t = min(1.0, max(-1.0, ci / math.sqrt(ab)))
                    sin_t = math.sqrt(max(1.0 - cos_t * cos_t, 0.0))
                    theta = math.acos(cos_t)
                else:
                    cos_t, sin_t, theta = 0.0, 1.0, 0.5 * math.pi
                smallest = min(smallest, sin_t)
                ci = omega * math.sqrt(ab) * (sin_t + (math.pi - theta) * cos_t) / (2 * math.pi)
                ci += sb2
                a = 0.5 * omega * a + sb2
                b = 0.5 * omega * b + sb2
            out[i, j] = smallest
    return out


def _angle_sines_reference(arch: MLP, X1, X2=None) -> np.ndarray:
    """NumPy reference of :func:`hidden_angle_sines` (all pairs)."""
    A, B, _ = as_pair(X1, X2)
    d = A.shape[1]
    omega, sb2 = arch.sigma_w**2, arch.sigma_b**2
    c = omega * (A @ B.T) / d + sb2
    a = (omega * np.einsum("ia,ia->i", A, A) / d + sb2)[:, None]
    b = (omega * np.einsum("ja,ja->j", B, B) / d + sb2)[None, :]
    smallest = np.ones(c.shape)
    for _ in range(arch.depth):
        ab = a * b
        cos_t = np.clip(np.divide(c, np.sqrt(ab), out=np.zeros(c.shape), where=ab > 0), -1, 1)
        sin_t = np.where(ab > 0, np.sqrt(np.maximum(1.0 - cos_t * cos_t, 0.0)), 1.0)
        smallest = np.minimum(smallest, sin_t)
        theta = np.arccos(cos_t)
        c = omega * np.sqrt(ab) * (sin_t + (math.pi - theta) * cos_t) / (2 * math.pi) + sb2
        a, b = 0.5 * omega * a + sb2, 0.5 * omega * b + sb2
    return smallest


def _check_pairs(rows, cols, n1: int, n2: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.asarray(rows, dtype=np.intp).ravel()
    cols = np.asarray(cols, dtype=np.intp).ravel()
    if rows.shape != cols.shape:
        raise ValueError(f"rows and cols differ in length: {rows.size} vs {cols.size}")
    if rows.size and (rows.min() < 0 or rows.max() >= n1 or cols.min() < 0 or cols.max() >= n2):
        raise ValueError(f"pair indices out of range for {n1} x {n2} points")
    return rows, cols


def relu_pair_blocks(arch: MLP, X1, X2, rows, cols, *, kind: str = "nngp") -> np.ndarray:
    """The stable ``(d+1) x (d+1)`` blocks of the listed pairs ``(x_rows[k], x'_cols[k])``.

    Same numbers as the corresponding blocks of :func:`relu_jacobian_kernel`; cost ``O(d^2)``
    per listed pair (the per-pair repair of dense blocks assembled from fields).

    Parameters
    ----------
    rows, cols : (k,) int arrays of pair indices into X1 and X2 (X2 None: X1)

    Returns
    -------
    (k, d+1, d+1) float64; row index from ``x``, column index from ``x'``.
    """
    _check_relu(arch, kind, "relu_pair_blocks")
    A, B, _ = as_pair(X1, X2)
    rows, cols = _check_pairs(rows, cols, A.shape[0], B.shape[0])
    d = A.shape[1]
    if not rows.size:
        return np.empty((0, d + 1, d + 1))
    u1, u2, inv = pair_basis(A[rows], B[cols])
    coef, iso = stable_recursion(arch, kind, inv, d)
    blocks = _assemble(coef[:, None], iso[:, None], u1, u2[:, None])
    return blocks[:, :, 0, :]


def relu_pair_matmul(arch: MLP, X1, X2, rows, cols, V, *, kind: str = "nngp") -> np.ndarray:
    """``sum_{(i, j) listed} Block(x_i, x'_j) V_j`` from the stable blocks, ``O(d k)`` per pair.

    Meant as the near-collinear correction of the structured product (docs/math.md §6.1): zero the
    fields of the listed pairs, run the field product, add this.  With ``y = E^T v`` (``E`` of
    the module docstring), ``Block v = E (C - iota diag(0, 1, 1)) y + iota (0, v_grad)``.

    Parameters
    ----------
    rows, cols : (k,) int arrays of pair indices into X1 and X2 (X2 None: X1)
    V : (n2 (d+1),) or (n2 (d+1), m), point-major

    Returns
    -------
    (n1 (d+1),) or (n1 (d+1), m) float64.
    """
    _check_relu(arch, kind, "relu_pair_matmul")
    A, B, _ = as_pair(X1, X2)
    n1, d = A.shape
    n2 = B.shape[0]
    rows, cols = _check_pairs(rows, cols, n1, n2)
    V = as_vector(V, n2 * (d + 1), "V")
    vector = V.ndim == 1
    if V.ndim > 2:
        raise ValueError(f"V must be 1-D or 2-D, got shape {V.shape}")
    V3 = V.reshape(n2, d + 1, -1)
    out = np.zeros((n1, d + 1, V3.shape[2]))
    if rows.size:
        u1, u2, inv = pair_basis(A[rows], B[cols])
        coef, iso = stable_recursion(arch, kind, inv, d)
        M = coef.copy()
        M[:, 1, 1] -= iso
        M[:, 2, 2] -= iso
        Vp = V3[cols]  # (k, d+1, m)
        y = np.stack(
            [
                Vp[:, 0, :],
                np.einsum("ka,kam->km", u1, Vp[:, 1:, :]),
                np.einsum("ka,kam->km", u2, Vp[:, 1:, :]),
            ],
            axis=1,
        )  # (k, 3, m)
        My = np.einsum("kst,ktm->ksm", M, y)
        contrib = np.empty((rows.size, d + 1, V3.shape[2]))
        contrib[:, 0, :] = My[:, 0, :]
        contrib[:, 1:, :] = (
            u1[:, :, None] * My[:, None, 1, :]
            + u2[:, :, None] * My[:, None, 2, :]
            + iso[:, None, None] * Vp[:, 1:, :]
        )
        np.add.at(out, rows, contrib)
    out = out.reshape(n1 * (d + 1), -1)
    return out[:, 0] if vector else out


def relu_projected_kernel(arch: MLP, X1, X2, U1, U2=None, *, kind: str = "nngp") -> np.ndarray:
    """Projected ReLU blocks of size ``(1+p)`` (value and ``p`` directional derivatives per
    point), stable for every pair: the ReLU counterpart of :func:`jacntk.projected_kernel`.

    Entry ``(alpha, beta)`` of a pair's block is ``e_alpha^T Block e'_beta`` with ``e_0`` the
    value and ``e_a = (0, u_a)``.  With ``y(u) = (u . u1, u . u2)``::

        (0, u)^T Block (0, v) = iota u . v + y(u)^T (R[1:, 1:] - iota I_2) y(v)
        (0, u)^T Block e0     = y(u) . R[1:, 0],        e0^T Block (0, v) = R[0, 1:] . y(v)

    Parameters
    ----------
    U1 : (n1, p, d) or (p, d) directions of the points of X1; U2 likewise for X2 (defaults to
        U1 when X2 is None).

    Returns
    -------
    (n1 (1+p), n2 (1+p)) float64, point-major.  Cost O(n1 n2 p (d + p d)).
    """
    from ._blocks import check_direction_pair

    blocks = relu_stable_blocks(arch, X1, X2, kind=kind)
    A, B, _ = as_pair(X1, X2)
    n1, d = A.shape
    n2 = B.shape[0]
    U1, U2 = check_direction_pair(U1, U2, X2 is None, n1, n2, d)
    p = U1.shape[1]
    R, iso, u1, u2 = blocks.coef, blocks.iso, blocks.u1, blocks.u2
    y1 = np.stack(
        [
            np.broadcast_to(np.einsum("iad,id->ia", U1, u1)[:, None, :], (n1, n2, p)),
            np.einsum("iad,ijd->ija", U1, u2),
        ],
        axis=-1,
    )  # (n1, n2, p, 2): y(u_a) for the directions at x_i
    y2 = np.stack(
        [np.einsum("jbd,id->ijb", U2, u1), np.einsum("jbd,ijd->ijb", U2, u2)], axis=-1
    )  # (n1, n2, p, 2): y(v_b) for the directions at x'_j
    M = R[..., 1:, 1:] - iso[..., None, None] * np.eye(2)
    G = np.empty((n1, 1 + p, n2, 1 + p))
    G[:, 0, :, 0] = R[..., 0, 0]
    G[:, 0, :, 1:] = np.einsum("ijs,ijbs->ijb", R[..., 0, 1:], y2)
    G[:, 1:, :, 0] = np.einsum("ijas,ijs->iaj", y1, R[..., 1:, 0])
    J = iso[:, :, None, None] * np.einsum("iad,jbd->ijab", U1, U2)
    J += np.einsum("ijas,ijst,ijbt->ijab", y1, M, y2)
    G[:, 1:, :, 1:] = J.transpose(0, 2, 1, 3)
    return G.reshape(n1 * (1 + p), n2 * (1 + p))
