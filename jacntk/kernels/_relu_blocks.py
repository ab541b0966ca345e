"""Numerically stable ReLU Jacobian kernels near ``x' = x`` (docs/math.md §1.5, §7, §5.6).

For ReLU the eight ``(p, q, r)`` fields of :mod:`jacntk.kernels._fields` contain the moments
``F22, F31, F13 ~ 1/sin(theta)``; the Jacobian NNGP block assembled from them is finite, but
only after a cancellation between divergent terms that loses ``~eps_mach / theta^3`` of
accuracy (docs/math.md §7: 30x wrong at ``|x - x'| ~ 1e-4``).  This module computes the blocks of
the Jacobian NNGP (``kind="nngp"``) and of the truncated JNTK (``kind="ntk_truncated"``) in a
basis in which nothing diverges.

**Basis.**  For a pair ``(x, x')`` let ``u1 = x/|x|`` and ``u2`` the unit vector of
``w = x' - (u1 . x') u1`` (``u2 = 0`` when ``x'`` is parallel to ``x``, ``u1 = 0`` when
``x = 0``).  Every layer's cross block ``Sigma^l(x, x')`` and the auto blocks
``Sigma^l(x, x)``, ``Sigma^l(x', x')`` are invariant under rotations fixing ``x`` and ``x'``, so
each is a ``3 x 3`` matrix ``C`` on ``(e0, u1, u2)`` plus ``iota * I`` on the orthogonal
complement of ``span{x, x'}`` (whose components are independent of everything else)::

    Block = E C E^T + iota (I_d - u1 u1^T - u2 u2^T)   on the gradient part,
    E = [e0, (0, u1), (0, u2)]                          ((d+1) x 3).

**Layer step** (``omega = sigma_w^2``, ``G = (g, grad g . u1, grad g . u2)`` at ``x``, ``G'`` at
``x'``; ``a, b, c`` the variances and covariance of ``g, g'``; ``A0 = Cov(G, g)``,
``B0 = Cov(G', g')``).  ReLU gives ``psi = 1{g > 0} G``, so
``C^{l+1} = omega E[1{g>0} 1{g'>0} G G'^T] + sigma_b^2 e0 e0^T``.  With
``g = sqrt(a) z1``, ``g' = sqrt(b) (cos(theta) z1 + sin(theta) z2)`` (``z`` standard normal) and
``G = K z + eps`` (``eps`` independent of ``z``), the truncated Gaussian moments of the wedge
``{g > 0, g' > 0}`` give, exactly::

    E[1 1 G G'^T] = P C + K N K'^T,    P = (pi - theta) / (2 pi),
    N = E[1 1 z z^T] - P I = sin(theta)/(2 pi) [[cos(theta), sin(theta)], [sin(theta), -cos(theta)]]

    K  = [k1,  n2  / sin(theta)],   k1  = A0 / sqrt(a),      n2  = C[:, 0] / sqrt(b) - cos(theta) k1
    K' = [k1', n2' / sin(theta)],   k1' = C[0, :] / sqrt(a), n2' = B0 / sqrt(b) - cos(theta) k1'

    C^{l+1} = omega (P C + (sin cos k1 k1'^T + sin (k1 n2'^T + n2 k1'^T)
                            - (cos / sin) n2 n2'^T) / (2 pi)) + sigma_b^2 e0 e0^T
    iota^{l+1} = omega P iota,    A0 <- omega/2 A0 + sigma_b^2 e0  (sign symmetry, docs/math.md §7)

``n2 = sin(theta) Cov(G, z2)`` is ``O(theta)`` and is computed with absolute error
``O(eps_mach)``, so every term is accurate to ``O(eps_mach)`` absolutely for all ``theta``
(``n2 n2'^T / sin`` is dropped below ``sin(theta) = 1e-14``, an ``O(1e-14)`` truncation).
The angle itself is tracked without cancellation: with ``J = (sin + (pi - theta) cos) / pi``,
``m = 1 - J = (2 pi sin^2(theta/2) - (sin - theta cos)) / pi`` (series for small ``theta``),
``alpha = omega / 2``::

    a' b' - c'^2 = alpha^2 a b m (2 - m) + alpha sigma_b^2 (a - b)^2 / (sqrt a + sqrt b)^2
                   + 2 alpha sigma_b^2 sqrt(ab) m,
    a' - b' = alpha (a - b),       theta' = atan2(sqrt(a' b' - c'^2), c'),

starting from ``a1 b1 - c1^2 = (omega/d)^2 |x|^2 |w|^2 + (omega/d) sigma_b^2 |x - x'|^2`` and
``a1 - b1 = -(omega/d) (x - x') . (x + x')``.  The truncated JNTK (docs/math.md §7) is
``T^{l+1} = C^{l+1} + omega P T^l`` (3x3 and ``iota`` alike), ``T^1 = C^1``.

``P`` is evaluated as ``atan2(sqrt(a b - c^2), -c) / (2 pi)``, accurate near ``theta = pi`` too
(``x' ~ -x`` without bias, where the first layer's angle is ``pi``).

At ``x' = x`` this reduces exactly to ``Sigma^{l+1}(x, x) = omega/2 Sigma^l(x, x) +
sigma_b^2 e0 e0^T``.  Cost per pair: ``O(d)`` for the basis plus ``O(depth)``; writing a dense
block costs ``O(d^2)``.

Measured (tests/test_relu.py): against a 60-digit evaluation of the ``(p, q, r)`` recursion,
``<= 6e-16`` of the kernel scale for ``x' = +-x + eps v``, ``eps = 1e-1 ... 1e-10``, depths 1-3
(the field route: up to ``4e-7`` at ``eps ~ 1e-5``, and NaN / ZeroDivisionError at ``x' = -x``).

Public pieces: :func:`relu_jacobian_kernel` (Numba ``dense_tile``, used by
:func:`jacntk.kernel`), :func:`relu_stable_blocks` (NumPy reference, per-pair representation
:class:`StableBlocks`), :func:`pair_basis`, :func:`stable_recursion`,
:func:`hidden_angle_sines` (flags the pairs where the fields cancel),
:func:`relu_pair_matmul` (stable per-pair product, to correct the structured product of
flagged pairs), :func:`relu_pair_blocks` (stable blocks of listed pairs) and
:func:`relu_projected_kernel` (stable projected blocks); which pairs are flagged is decided in
one place, :func:`jacntk.kernels._routing.stable_pairs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..arch import MLP, check_kind
from ..validation import as_pair
from ._activations import RELU, get_activation

#: Kinds computed here for ReLU with ``jacobian=True`` (the true ReLU JNTK does not exist).
STABLE_KINDS = ("nngp", "ntk_truncated")
#: Below this ``sin(theta)`` the ``n2 n2'^T / sin(theta)`` term (true size ``O(sin(theta))``)
#: is dropped.
_SIN_FLOOR = 1e-14
#: Below this angle ``sin(theta) - theta cos(theta)`` is summed from its Taylor series.
_SERIES_THETA = 0.5
#: Row chunk target (elements of the per-pair ``(rows, n2, d)`` temporaries).
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class StableBlocks:
    """ReLU Jacobian-augmented blocks in the per-pair orthonormal basis (module docstring).

    Attributes
    ----------
    coef : (n1, n2, 3, 3) float64
        Block restricted to ``(e0, u1, u2)``; row index from ``x``, column index from ``x'``.
    iso : (n1, n2) float64
        Coefficient of the identity on the complement of ``span{x_i, x'_j}``.
    u1 : (n1, d) float64
        ``x_i / |x_i|`` (zero rows for ``x_i = 0``).
    u2 : (n1, n2, d) float64
        Unit vector of ``x'_j`` orthogonal to ``u1_i`` (zero when ``x'_j`` is parallel to ``x_i``).
    kind : str
        ``"nngp"`` or ``"ntk_truncated"``.
    """

    coef: np.ndarray
    iso: np.ndarray
    u1: np.ndarray
    u2: np.ndarray
    kind: str

    def dense(self) -> np.ndarray:
        """The point-major ``(n1 (d+1), n2 (d+1))`` matrix (``O(d^2)`` per pair)."""
        n1, n2 = self.iso.shape
        d = self.u1.shape[1]
        out = np.empty((n1, d + 1, n2, d + 1))
        for lo in range(0, n1, _row_chunk(n2, d * d)):
            hi = min(n1, lo + _row_chunk(n2, d * d))
            out[lo:hi] = _assemble(
                self.coef[lo:hi], self.iso[lo:hi], self.u1[lo:hi], self.u2[lo:hi]
            )
        return out.reshape(n1 * (d + 1), n2 * (d + 1))


def _check_relu(arch: MLP, kind: str, name: str) -> None:
    if get_activation(arch.activation).code != RELU:
        raise ValueError(f"{name} needs a relu MLP, got activation {arch.activation!r}")
    check_kind(arch, kind, True)
    if kind not in STABLE_KINDS:
        raise ValueError(f"kind must be one of {STABLE_KINDS} for the ReLU blocks, got {kind!r}")


def _row_chunk(n2: int, per_pair: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, n2 * per_pair))


def _assemble(coef: np.ndarray, iso: np.ndarray, u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    """``(m, d+1, n2, d+1)`` blocks ``E C E^T + iso (I - u1 u1^T - u2 u2^T)``.

    ``coef`` (m, n2, 3, 3), ``iso`` (m, n2), ``u1`` (m, d), ``u2`` (m, n2, d).
    """
    m, n2 = iso.shape
    d = u1.shape[1]
    G = np.empty((m, d + 1, n2, d + 1))
    G[:, 0, :, 0] = coef[..., 0, 0]
    U1 = np.broadcast_to(u1[:, None, :], u2.shape)
    G[:, 0, :, 1:] = coef[..., 0, 1, None] * U1 + coef[..., 0, 2, None] * u2
    G[:, 1:, :, 0] = (coef[..., 1, 0, None] * U1 + coef[..., 2, 0, None] * u2).transpose(0, 2, 1)
    J = np.einsum("ij,ia,ib->iajb", coef[..., 1, 1] - iso, u1, u1)
    J += np.einsum("ij,ija,ijb->iajb", coef[..., 2, 2] - iso, u2, u2)
    J += np.einsum("ij,ia,ijb->iajb", coef[..., 1, 2], u1, u2)
    J += np.einsum("ij,ija,ib->iajb", coef[..., 2, 1], u2, u1)
    idx = np.arange(d)
    J[:, idx, :, idx] += iso[None, :, :]
    G[:, 1:, :, 1:] = J
    return G


def pair_basis(X: np.ndarray, Y: np.ndarray):
    """Per-pair orthonormal basis of ``span{x, x'}`` and the pair invariants it needs.

    Parameters
    ----------
    X, Y : (..., d) float64, broadcastable against each other (validated points): all pairs
        with ``X1[:, None, :], X2[None, :, :]``, aligned pairs with two (k, d) arrays.

    Returns
    -------
    u1 : X.shape             ``x / |x|`` (0 for ``x = 0``)
    u2 : broadcast shape     unit ``w = delta - (u1 . delta) u1``, ``delta = x' - x``
                             (0 where ``w = 0``)
    inv : dict of arrays of the broadcast shape without the last axis
        ``q, r, p`` (``|x|^2, |x'|^2, <x, x'> = q + x . delta``), ``dd = |delta|^2``,
        ``qmr = q - r = -(2 x . delta + dd)``, ``xi1 = |x|``, ``xi1p = u1 . x'``,
        ``xi2p = |w|`` (so ``x = (xi1, 0)``, ``x' = (xi1p, xi2p)`` in the basis and
        ``q r - p^2 = q xi2p^2`` without cancellation).
    """
    q = np.einsum("...a,...a->...", X, X)
    r = np.einsum("...a,...a->...", Y, Y)
    nx = np.sqrt(q)
    u1 = np.divide(X, nx[..., None], out=np.zeros_like(X), where=nx[..., None] > 0)
    delta = Y - X
    xd = np.einsum("...a,...a->...", X, delta)
    dd = np.einsum("...a,...a->...", delta, delta)
    ud = np.einsum("...a,...a->...", u1, delta)
    w = delta - ud[..., None] * u1
    w -= np.einsum("...a,...a->...", u1, w)[..., None] * u1  # re-orthogonalise
    nw = np.sqrt(np.einsum("...a,...a->...", w, w))
    u2 = np.divide(w, nw[..., None], out=np.zeros_like(w), where=nw[..., None] > 0)
    shape = dd.shape
    inv = {
        "q": np.broadcast_to(q, shape),
        "r": np.broadcast_to(r, shape),
        "p": q + xd,
        "dd": dd,
        "qmr": -(2.0 * xd + dd),
        "xi1": np.broadcast_to(nx, shape),
        "xi1p": nx + ud,
        "xi2p": nw,
    }
    return u1, u2, inv


def _one_minus_j(theta: np.ndarray) -> np.ndarray:
    """``m(theta) = 1 - (sin + (pi - theta) cos) / pi``, accurate to relative eps for all theta.

    ``m = (2 pi sin^2(theta/2) - (sin(theta) - theta cos(theta))) / pi`` with
    ``sin - theta cos = sum_k (-1)^(k+1) 2k theta^(2k+1) / (2k+1)!`` below ``_SERIES_THETA``.
    """
    t = np.asarray(theta, dtype=np.float64)
    small = t < _SERIES_THETA
    ts = np.where(small, t, 0.0)
    t2 = ts * ts
    series = np.zeros_like(ts)
    term = ts  # theta^(2k+1) / (2k+1)! built incrementally
    for k in range(1, 10):
        term = term * t2 / ((2 * k) * (2 * k + 1))
        series += (-1) ** (k + 1) * 2 * k * term
    direct = np.sin(t) - t * np.cos(t)
    s3 = np.where(small, series, direct)
    return (2.0 * math.pi * np.sin(0.5 * t) ** 2 - s3) / math.pi


def stable_recursion(arch: MLP, kind: str, inv: dict, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Run the cancellation-free layer recursion (module docstring) for arrays of pairs.

    Parameters
    ----------
    arch : MLP with ``activation="relu"``
    kind : ``"nngp"`` or ``"ntk_truncated"``
    inv : dict of equally shaped arrays ``q, r, p, dd, qmr, xi1, xi1p, xi2p`` (``pair_basis``)
    d : input dimension

    Returns
    -------
    coef : (..., 3, 3) and iso : (...), multiplied by ``kappa^2``: the block of the Jacobian
    NNGP ``kappa^2 Sigma^{L+1}`` or of the truncated JNTK ``kappa^2 Theta_tr^{L+1}``.
    """
    omega, sb2, alpha = arch.sigma_w**2, arch.sigma_b**2, 0.5 * arch.sigma_w**2
    q, r, p, dd = inv["q"], inv["r"], inv["p"], inv["dd"]
    xi1, xi1p, xi2p = inv["xi1"], inv["xi1p"], inv["xi2p"]
    shape = np.shape(p)
    s = omega / d
    zero = np.zeros(shape)
    A0 = np.stack([s * q + sb2, s * xi1, zero], axis=-1)
    B0 = np.stack([s * r + sb2, s * xi1p, s * xi2p], axis=-1)
    C = np.zeros(shape + (3, 3))
    C[..., 0, 0] = s * p + sb2
    C[..., 0, 1] = s * xi1
    C[..., 1, 0] = s * xi1p
    C[..., 2, 0] = s * xi2p
    C[..., 1, 1] = s
    C[..., 2, 2] = s
    iso = np.full(shape, s)
    det = s * s * q * xi2p * xi2p + s * sb2 * dd
    amb = s * inv["qmr"]
    truncated = kind == "ntk_truncated"
    T, tiso = (C.copy(), iso.copy()) if truncated else (None, None)
    for _ in range(arch.depth):
        a, b, c = A0[..., 0], B0[..., 0], C[..., 0, 0]
        degenerate = a * b <= 0.0  # only for x = 0 or x' = 0 with sigma_b = 0
        sdet = np.sqrt(np.maximum(det, 0.0))
        theta = np.arctan2(sdet, c)
        sin_t, cos_t = np.sin(theta), np.cos(theta)
        # pi - theta = atan2(sdet, -c): accurate near theta = pi as well
        P = np.where(degenerate, 0.25, np.arctan2(sdet, -c) / (2.0 * math.pi))
        ra = np.sqrt(np.where(degenerate, 1.0, a))
        rb = np.sqrt(np.where(degenerate, 1.0, b))
        k1 = A0 / ra[..., None]
        k1p = C[..., 0, :] / ra[..., None]
        n2 = C[..., :, 0] / rb[..., None] - cos_t[..., None] * k1
        n2[..., 0] = 0.0  # Cov(g, z2) = 0 exactly
        n2p = B0 / rb[..., None] - cos_t[..., None] * k1p
        cot = np.divide(cos_t, sin_t, out=np.zeros(shape), where=sin_t > _SIN_FLOOR)
        N = (sin_t * cos_t)[..., None, None] * (k1[..., :, None] * k1p[..., None, :])
        N += sin_t[..., None, None] * (k1[..., :, None] * n2p[..., None, :])
        N += sin_t[..., None, None] * (n2[..., :, None] * k1p[..., None, :])
        N -= cot[..., None, None] * (n2[..., :, None] * n2p[..., None, :])
        N[degenerate] = 0.0
        C = omega * (P[..., None, None] * C + N / (2.0 * math.pi))
        C[..., 0, 0] += sb2
        iso = omega * P * iso
        if truncated:
            T = C + (omega * P)[..., None, None] * T
            tiso = iso + omega * P * tiso
        m = _one_minus_j(theta)
        sab = ra * rb
        det = np.where(
            degenerate,
            0.0,
            alpha * alpha * a * b * m * (2.0 - m)
            + alpha * sb2 * amb * amb / (ra + rb) ** 2
            + 2.0 * alpha * sb2 * sab * m,
        )
        amb = alpha * amb
        A0 = alpha * A0
        A0[..., 0] += sb2
        B0 = alpha * B0
        B0[..., 0] += sb2
    kappa2 = arch.kappa**2
    if truncated:
        return kappa2 * T, kappa2 * tiso
    return kappa2 * C, kappa2 * iso


def relu_stable_blocks(arch: MLP, X1, X2=None, *, kind: str = "nngp") -> StableBlocks:
    """Stable per-pair representation of the ReLU Jacobian NNGP or truncated JNTK.

    Parameters
    ----------
    arch : MLP with ``activation="relu"``
    X1 : (n1, d) array_like; X2 : (n2, d) array_like, optional (defaults to ``X1``)
    kind : ``"nngp"`` or ``"ntk_truncated"`` (``"ntk"`` raises the explanatory ValueError)

    Returns
    -------
    StableBlocks
        ``.dense()`` is the point-major ``(n1 (d+1), n2 (d+1))`` matrix of ``jacntk.kernel``.
    """
    _check_relu(arch, kind, "relu_stable_blocks")
    A, B, _ = as_pair(X1, X2)
    n1, d = A.shape
    n2 = B.shape[0]
    coef = np.empty((n1, n2, 3, 3))
    iso = np.empty((n1, n2))
    u1 = np.empty((n1, d))
    u2 = np.empty((n1, n2, d))
    step = _row_chunk(n2, d)
    for lo in range(0, n1, step):
        hi = min(n1, lo + step)
        b1, u2[lo:hi], inv = pair_basis(A[lo:hi, None, :], B[None, :, :])
        u1[lo:hi] = b1[:, 0, :]
        coef[lo:hi], iso[lo:hi] = stable_recursion(arch, kind, inv, d)
    return StableBlocks(coef, iso, u1, u2, kind)


# ---------------------------------------------------------------------------------------------
# Numba kernels: the same recursion per pair (``stable_recursion`` is their NumPy reference)
