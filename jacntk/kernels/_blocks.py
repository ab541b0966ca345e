"""From the eight fields to Jacobian-augmented blocks: dense assembly, the structured product,
and projected augmentation (docs/math.md §4.2, §6.1).

Block of a pair (row index from ``x``, column index from ``x'``; index 0 the value)::

    [[ K,                    (K_p x + 2 K_r x')^T                                       ],
     [ K_p x' + 2 K_q x,      K_p I + K_pp x' x^T + 2 K_pq x x^T + 2 K_pr x' x'^T + 4 K_qr x x'^T ]]

Dense matrices are point-major: row ``i*(d+1) + alpha``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from ..arch import MLP
from ..validation import as_pair
from ._fields import FIELD_NAMES


@dataclass(frozen=True)
class KernelFields:
    """The structured representation of a Jacobian-augmented kernel matrix (docs/math.md §4.2).

    Attributes
    ----------
    K, K_p, K_q, K_r, K_pp, K_pq, K_pr, K_qr : (n1, n2) float64
        Views into ``data``; ``K_bullet[i, j] = kappa^2 d_bullet Kernel(p_ij, q_i, r_j)``.
        For ``kind="ntk_truncated"`` they are the truncated recursion's fields, which enter the
        block formula the same way but are not derivatives of one scalar function.
    data : (8, n1, n2) float64
        All fields, axis 0 ordered as ``FIELD_NAMES``.
    kind : str
        ``"nngp"``, ``"ntk"`` or ``"ntk_truncated"``.
    """

    data: np.ndarray
    kind: str

    def __getattr__(self, name: str) -> np.ndarray:
        if name in FIELD_NAMES:
            return self.data[FIELD_NAMES.index(name)]
        raise AttributeError(name)

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape[1:]

    def as_dict(self) -> dict[str, np.ndarray]:
        """The eight fields by name."""
        return dict(zip(FIELD_NAMES, self.data, strict=True))


def _field_arrays(fields: KernelFields | np.ndarray) -> np.ndarray:
    data = fields.data if isinstance(fields, KernelFields) else np.asarray(fields)
    if data.ndim != 3 or data.shape[0] != 8:
        raise ValueError(f"fields must have shape (8, n1, n2), got {data.shape}")
    return data


def _routed(fields, X1, X2, arch: MLP, kind: str | None):
    """``fields`` with the routing of :func:`jacntk.kernels._routing.stable_pairs` attached."""
    from ._routing import route_fields  # _routing builds on this module

    if kind is None:
        if not isinstance(fields, KernelFields):
            raise ValueError("kind is required with arch when fields is a plain array")
        kind = fields.kind
    return route_fields(arch, kind, fields, X1, X2)


def _check_points(data: np.ndarray, X1, X2) -> tuple[np.ndarray, np.ndarray]:
    A, B, _ = as_pair(X1, X2)
    if data.shape[1:] != (A.shape[0], B.shape[0]):
        raise ValueError(
            f"fields of shape {data.shape[1:]} do not match point sets of "
            f"{A.shape[0]} and {B.shape[0]} points"
        )
    return A, B


def augment(
    fields: KernelFields | np.ndarray,
    X1,
    X2=None,
    *,
    arch: MLP | None = None,
    kind: str | None = None,
) -> np.ndarray:
    """Dense Jacobian-augmented matrix from the fields.

    Parameters
    ----------
    fields : KernelFields or (8, n1, n2) array
    X1 : (n1, d); X2 : (n2, d), defaults to X1
    arch : MLP, optional
        The architecture the fields were computed for.  Given, the pairs that
        :func:`jacntk.kernels._routing.stable_pairs` routes (near-collinear ReLU pairs, where
        the fields cancel) take their blocks from the stable ReLU route: the numbers of
        ``jacntk.kernel(arch, ..., jacobian=True)``.  Without it every block comes from the
        fields (for ReLU only ``~eps / sin(theta)^2`` accurate near ``x' = x``).
    kind : str, optional
        The fields' kind; defaults to ``fields.kind`` (needed with ``arch`` for a plain array).

    Returns
    -------
    (n1*(d+1), n2*(d+1)) float64, point-major.  Cost O(n1 n2 d^2) writes (a Numba pass, memory
    bound): use only where a dense matrix is wanted; every product goes through
    ``structured_matmul``.  :func:`jacntk.kernels._reference.reference_augment` is the same formula
    in
    NumPy.
    """
    if arch is not None:
        return _routed(fields, X1, X2, arch, kind).dense()
    data = np.ascontiguousarray(_field_arrays(fields), dtype=np.float64)
    A, B = _check_points(data, X1, X2)
    return _augment_as(data, A, B, np.float64)


def _augment_as(data: np.ndarray, A: np.ndarray, B: np.ndarray, dtype) -> np.ndarray:
    """:func:`augment` of validated ``(8, n1, n2)`` fields into a matrix of ``dtype`` (float64,
    or float32 for ``precision="float32"``, docs/math.md §14): the blocks are formed in float64
    and rounded once, without a float64 copy of the dense matrix."""
    data = np.ascontiguousarray(data, dtype=np.float64)
    n1, d = A.shape
    n2 = B.shape[0]
    G = np.empty((n1, d + 1, n2, d + 1), dtype=dtype)
    _augment_into(data, np.ascontiguousarray(A), np.ascontiguousarray(B), G)
    return G.reshape(n1 * (d + 1), n2 * (d + 1))


@njit(parallel=True, cache=True)
def _augment_into(F, A, B, G):  # pragma: no cover - compiled
    """``G[i, :, j, :]`` = the block of the module docstring for pair ``(i, j)``; the gradient
    block row ``a`` is ``(2 K_pq x_a + K_pp x'_a) x^T + (2 K_pr x'_a + 4 K_qr x_a) x'^T
    + K_p e_a^T``.  One pass writing G (memory-bound), parallel over rows."""
    n1, d = A.shape
    n2 = B.shape[0]
    for i in prange(n1):
        x = A[i]
        for j in range(n2):
            y = B[j]
            K, Kp, Kq, Kr = F[0, i, j], F[1, i, j], F[2, i, j], F[3, i, j]
            Kpp, Kpq, Kpr, Kqr = F[4, i, j], F[5, i, j], F[6, i, j], F[7, i, j]
            G[i, 0, j, 0] = K
            for b in range(d):
                G[i, 0, j, 1 + b] = Kp * x[b] + 2.0 * Kr * y[b]
            for a in range(d):
                G[i, 1 + a, j, 0] = Kp * y[a] + 2.0 * Kq * x[a]
                u = 2.0 * Kpq * x[a] + Kpp * y[a]
                w = 2.0 * Kpr * y[a] + 4.0 * Kqr * x[a]
                row = G[i, 1 + a, j]
                for b in range(d):
                    row[1 + b] = u * x[b] + w * y[b]
                row[1 + a] += Kp


def structured_matmul(
    fields: KernelFields | np.ndarray,
    X1,
    X2,
    V,
    *,
    arch: MLP | None = None,
    kind: str | None = None,
) -> np.ndarray:
    """Multiply the augmented matrix by ``V`` without forming it (docs/math.md §6.1).

    With ``u = V[point, 0]``, ``W = V[point, 1:]`` (rows ``w_j``), ``P = X1 W^T``,
    ``s_j = x'_j . w_j``::

        o = C^K u + rowsum(C^p o P) + 2 C^r s
        O = C^p W + (C^p diag(u) + C^pp o P + 2 C^pr diag(s)) X2
            + diag(2 C^q u + 2 rowsum(C^pq o P) + 4 C^qr s) X1

    Parameters
    ----------
    fields : KernelFields or (8, n1, n2) array
    X1 : (n1, d); X2 : (n2, d) or None (= X1)
    V : (n2*(d+1),) or (n2*(d+1), k), point-major
    arch, kind : optional
        As for :func:`augment`: with ``arch`` the routed pairs' fields are zeroed and their
        stable blocks added by :func:`jacntk.kernels._relu_tiles.relu_pair_matmul` (``O(d)``
        per routed pair and column).

    Returns
    -------
    (n1*(d+1),) or (n1*(d+1), k).  Cost: three (n1 x n2 x d) GEMMs per column, O(n1 n2) memory.
    """
    if arch is not None:
        return _routed(fields, X1, X2, arch, kind).matmul(V)
    K, Kp, Kq, Kr, Kpp, Kpq, Kpr, Kqr = _field_arrays(fields)
    A, B = _check_points(K[None], X1, X2)
    n1, d = A.shape
    n2 = B.shape[0]
    V = np.asarray(V, dtype=np.float64)
    vector = V.ndim == 1
    if V.shape[0] != n2 * (d + 1) or V.ndim > 2:
        raise ValueError(f"V must have {n2 * (d + 1)} rows (n2*(d+1)), got shape {V.shape}")
    V3 = V.reshape(n2, d + 1, -1)
    k = V3.shape[2]
    U = V3[:, 0, :]  # (n2, k)
    W = np.ascontiguousarray(V3[:, 1:, :].transpose(2, 0, 1))  # (k, n2, d)
    # the three GEMMs, each once for all k columns
    P = np.matmul(A, W.transpose(0, 2, 1))  # (k, n1, n2): P[m] = X1 W_m^T
    S = np.einsum("ja,mja->mj", B, W)  # (k, n2): s_j = x'_j . w_j
    out = np.empty((n1, d + 1, k))
    out[:, 0, :] = K @ U + np.einsum("ij,mij->im", Kp, P) + 2.0 * (Kr @ S.T)
    scale = 2.0 * (Kq @ U) + 2.0 * np.einsum("ij,mij->im", Kpq, P) + 4.0 * (Kqr @ S.T)
    coef = Kp[None] * U.T[:, None, :] + Kpp[None] * P + 2.0 * Kpr[None] * S[:, None, :]
    KpW = (Kp @ W.transpose(1, 0, 2).reshape(n2, k * d)).reshape(n1, k, d)
    CB = (coef.reshape(k * n1, n2) @ B).reshape(k, n1, d)
    out[:, 1:, :] = (KpW.transpose(0, 2, 1) + CB.transpose(1, 2, 0)) + (
        scale[:, None, :] * A[:, :, None]
    )
    out = out.reshape(n1 * (d + 1), -1)
    return out[:, 0] if vector else out


def coordinate_directions(n: int, coords, d: int) -> np.ndarray:
    """Directions that select input coordinates ``coords`` for every one of ``n`` points.

    Returns (n, p, d) with ``out[i, a] = e_{coords[a]}``.
    """
    coords = np.asarray(coords, dtype=np.intp)
    if coords.ndim != 1 or coords.size == 0 or coords.min() < 0 or coords.max() >= d:
        raise ValueError(f"coords must be a non-empty list of indices in [0, {d}), got {coords}")
    E = np.zeros((coords.size, d))
    E[np.arange(coords.size), coords] = 1.0
    return np.broadcast_to(E, (n, coords.size, d)).copy()


def random_directions(n: int, p: int, d: int, seed=None) -> np.ndarray:
    """``p`` independent random unit directions per point (Hoffman et al.'s Jacobian
    regulariser), shape (n, p, d)."""
    if p < 1:
        raise ValueError(f"need at least one direction per point, got p={p}")
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((n, p, d))
    return U / np.linalg.norm(U, axis=2, keepdims=True)


def per_point_directions(U, n: int) -> np.ndarray:
    """``U`` as ``(n, p, d)`` float64, unchecked: a ``(p, d)`` array (the same directions for
    every point) becomes a read-only broadcast view, which :func:`shared_directions`
    recognises."""
    U = np.asarray(U, dtype=np.float64)
    return np.broadcast_to(U, (n,) + U.shape) if U.ndim == 2 else U


def check_directions(U, n: int, d: int, name: str = "directions") -> np.ndarray:
    """Directions of ``n`` points, validated, as ``(n, p, d)`` float64
    (:func:`per_point_directions`)."""
    U = per_point_directions(U, n)
    if U.ndim != 3 or U.shape[0] != n or U.shape[2] != d:
        raise ValueError(f"{name} must have shape (p, {d}) or ({n}, p, {d}), got {U.shape}")
    if not np.isfinite(U).all():
        raise ValueError(f"{name} contains NaN or inf")
    return U


def check_direction_pair(U1, U2, symmetric: bool, n1: int, n2: int, d: int):
    """Validated ``(U1, U2)`` of shapes (n1, p, d), (n2, p, d); ``U2`` defaults to ``U1`` for
    a symmetric Gram."""
    U1 = check_directions(U1, n1, d, "U1")
    U2 = U1 if U2 is None and symmetric else check_directions(U2, n2, d, "U2")
    if U1.shape[1] != U2.shape[1]:
        raise ValueError(
            f"U1 and U2 have different numbers of directions: {U1.shape[1]}, {U2.shape[1]}"
        )
    return U1, U2


def shared_directions(U: np.ndarray) -> np.ndarray | None:
    """The ``(p, d)`` directions every point of ``U`` (``(n, p, d)``, from
    :func:`check_directions`) shares -- a broadcast view, stride 0 along the points -- else
    None."""
    return U[0] if U.shape[0] > 0 and U.strides[0] == 0 else None


def _projections(A, B, U1, U2):
    """``u_a . x``, ``u_a . x'``, ``x . v_b``, ``x' . v_b`` and ``u_a . v_b`` for every pair
    (shapes (n1, p), (n1, n2, p), (n1, n2, p), (n2, p), (n1, n2, p, p)).

    Shared directions ``U`` (p, d) cost ``O((n1 + n2) p d + p^2 d)`` (``X U^T`` and ``U U^T``,
    broadcast over the pairs); per-point directions ``O(n1 n2 p^2 d)``."""
    n1, n2 = A.shape[0], B.shape[0]
    S1, S2 = shared_directions(U1), shared_directions(U2)
    if S1 is not None and S2 is not None:
        p = S1.shape[0]
        ux, vz = A @ S1.T, B @ S2.T
        uz = np.broadcast_to((B @ S1.T)[None], (n1, n2, p))
        vx = np.broadcast_to((A @ S2.T)[:, None], (n1, n2, p))
        uv = np.broadcast_to(S1 @ S2.T, (n1, n2, p, p))
        return ux, uz, vx, vz, uv
    ux = np.einsum("iad,id->ia", U1, A)
    uz = np.einsum("iad,jd->ija", U1, B)
    vx = np.einsum("jbd,id->ijb", U2, A)
    vz = np.einsum("jbd,jd->jb", U2, B)
    uv = np.einsum("iad,jbd->ijab", U1, U2)
    return ux, uz, vx, vz, uv


def projected_kernel(
    fields: KernelFields | np.ndarray,
    X1,
    X2,
    U1,
    U2=None,
    *,
    arch: MLP | None = None,
    kind: str | None = None,
) -> np.ndarray:
    """Blocks of size (1+p) for p chosen directions per point, from the same fields.

    Entry ``(alpha, beta)`` of a pair's block is ``e_alpha^T Block(x, x') e'_beta`` with
    ``e_0 = value`` and ``e_a = (0, u_a)`` for the directions ``u_a`` of each point:

        B_00 = K,   B_0b = K_p (x . v_b) + 2 K_r (x' . v_b),
        B_a0 = K_p (u_a . x') + 2 K_q (u_a . x),
        B_ab = K_p (u_a . v_b) + K_pp (u_a . x')(x . v_b) + 2 K_pq (u_a . x)(x . v_b)
               + 2 K_pr (u_a . x')(x' . v_b) + 4 K_qr (u_a . x)(x' . v_b).

    Per-point directions cost O(p^2 d) per pair (every ``u_a . v_b``); directions shared by
    all points (a ``(p, d)`` array) are projected once, O((n1 + n2) p d), and then cost
    O(p^2) per pair -- no factor d (docs/math.md §6.3).

    Parameters
    ----------
    U1 : (n1, p, d) or (p, d) directions of the points of X1; U2 likewise for X2
        (defaults to U1 when X2 is None).
    arch, kind : optional
        As for :func:`augment`: with ``arch`` the routed pairs' blocks are the stable ones.

    Returns
    -------
    (n1*(1+p), n2*(1+p)) float64, point-major.
    """
    if arch is not None:
        return _routed(fields, X1, X2, arch, kind).projected(U1, U2)
    K, Kp, Kq, Kr, Kpp, Kpq, Kpr, Kqr = _field_arrays(fields)
    A, B = _check_points(K[None], X1, X2)
    n1, d = A.shape
    n2 = B.shape[0]
    U1, U2 = check_direction_pair(U1, U2, X2 is None, n1, n2, d)
    p = U1.shape[1]
    ux, uz, vx, vz, uv = _projections(A, B, U1, U2)
    G = np.empty((n1, 1 + p, n2, 1 + p))
    G[:, 0, :, 0] = K
    G[:, 0, :, 1:] = Kp[:, :, None] * vx + 2.0 * Kr[:, :, None] * vz[None, :, :]
    G[:, 1:, :, 0] = (Kp[:, :, None] * uz + 2.0 * Kq[:, :, None] * ux[:, None, :]).transpose(
        0, 2, 1
    )
    J = Kp[:, :, None, None] * uv
    J += Kpp[:, :, None, None] * uz[:, :, :, None] * vx[:, :, None, :]
    J += 2.0 * Kpq[:, :, None, None] * ux[:, None, :, None] * vx[:, :, None, :]
    J += 2.0 * Kpr[:, :, None, None] * uz[:, :, :, None] * vz[None, :, None, :]
    J += 4.0 * Kqr[:, :, None, None] * ux[:, None, :, None] * vz[None, :, None, :]
    G[:, 1:, :, 1:] = J.transpose(0, 2, 1, 3)
    return G.reshape(n1 * (1 + p), n2 * (1 + p))
