"""The one place that decides how a kernel is computed (docs/math.md §7).

Every consumer -- ``kernel``, ``kernel_fields``, the dense and structured training
operators and the assembled stores -- gets its numbers from the functions here.
"""

from __future__ import annotations

import numba
import numpy as np

from ..arch import MLP, check_kind
from ..validation import as_pair
from ._blocks import augment
from ._fields import (
    SMALL_TILE_PAIRS,
    KernelFields,
    Plan,
    _closed_form_scalar_tile,
    _diag_chain,
    fields_tile,
    make_plan,
    scalar_tile,
)
from ._relu_tiles import relu_jacobian_kernel

#: Row-block size of the symmetric inner products (see ``_inner_products``).
GEMM_BLOCK = 5000


def _inner_products(X1: np.ndarray, X2: np.ndarray, symmetric: bool):
    """``P = X1 X2^T`` and the squared norms, with ``P_ii = q_i`` exactly on the diagonal of a
    symmetric Gram (so x = x' is recognised as such).

    Symmetric tiles read only the upper triangle of ``P``, so only the blocks ``I <= J`` are
    computed (half the flops of a GEMM): SYRK on the diagonal blocks, GEMM off them.  The
    blocks keep each SYRK at most ``GEMM_BLOCK`` rows: OpenBLAS 0.3.31's threaded SYRK (what
    numpy uses for ``X @ X.T``) crashes for X of shape 20000 x 784 (measured here).
    """
    q1 = np.einsum("ij,ij->i", X1, X1)
    if not symmetric:
        return X1 @ X2.T, q1, np.einsum("ij,ij->i", X2, X2)
    n = X1.shape[0]
    P = np.empty((n, n))
    for i in range(0, n, GEMM_BLOCK):
        j = i + GEMM_BLOCK
        rows = X1[i:j]
        P[i:j, i:j] = rows @ rows.T  # SYRK on a block small enough for OpenBLAS
        if j < n:
            P[i:j, j:] = rows @ X1[j:].T
    np.fill_diagonal(P, q1)
    return P, q1, q1


def compute_tile(
    arch: MLP, X1, X2=None, *, kind: str = "ntk", jacobian: bool = False, plan: Plan | None = None
) -> np.ndarray:
    """Scalar kernel ``(n1, n2)`` or field array ``(8, n1, n2)`` for one tile of pairs.

    This is the pure function that distributed assembly runs per tile; ``X2=None`` (or
    ``X2 is X1``) computes a symmetric diagonal tile.  ``plan`` (``make_plan``) may be passed
    to validate the architecture and kind once for many tiles.
    """
    A, B, symmetric = as_pair(X1, X2)
    plan = make_plan(arch, kind, jacobian) if plan is None else plan
    check_kind(arch, kind, jacobian)
    # Small tiles run on the calling thread: waking Numba's pool costs more than the work (and
    # tens of ms on a loaded machine).
    pairs = A.shape[0] * B.shape[0]
    small = pairs < (SMALL_TILE_PAIRS if plan.act in (0, 1) else SMALL_TILE_PAIRS // 256)
    previous = numba.get_num_threads()
    if small:
        numba.set_num_threads(1)
    try:
        return _compute(plan, A, B, symmetric, jacobian)
    finally:
        numba.set_num_threads(previous)


def _compute(plan: Plan, A: np.ndarray, B: np.ndarray, symmetric: bool, jacobian: bool):
    P, q1, q2 = _inner_products(A, B, symmetric)
    d = A.shape[1]
    v1, vp1 = _diag_chain(plan.act, plan.depth, plan.omega, plan.sb2, d, q1, plan.h)
    v2, vp2 = (
        (v1, vp1)
        if symmetric
        else _diag_chain(plan.act, plan.depth, plan.omega, plan.sb2, d, q2, plan.h)
    )
    common = (plan.act, plan.kind, plan.depth, plan.omega, plan.sb2, plan.kappa2, P, d)
    if jacobian:
        return fields_tile(*common, v1, vp1, v2, vp2, plan.h, symmetric)
    if plan.act in (0, 1):
        return _closed_form_scalar_tile(*common, v1, v2, symmetric)
    return scalar_tile(*common, v1, v2, plan.h, symmetric)


def kernel_fields(arch: MLP, X1, X2=None, *, kind: str = "ntk") -> KernelFields:
    """The eight coefficient fields of the Jacobian-augmented kernel between two point sets.

    Parameters
    ----------
    arch : MLP
    X1 : (n1, d) array_like
    X2 : (n2, d) array_like, optional
        Defaults to ``X1`` (symmetric Gram; only half the pairs are computed).
    kind : {"ntk", "nngp", "ntk_truncated"}

    Returns
    -------
    KernelFields
        ``K_bullet[i, j] = kappa^2 d_bullet K(p, q, r)`` at ``p = <x_i, x'_j>``, ``q = |x_i|^2``,
        ``r = |x'_j|^2`` (math.md §5.2, §5.5).  Cost O(n1 n2 (d + depth)).
    """
    return KernelFields(compute_tile(arch, X1, X2, kind=kind, jacobian=True), kind)


def kernel(arch: MLP, X1, X2=None, *, kind: str = "ntk", jacobian: bool = False) -> np.ndarray:
    """Dense infinite-width kernel matrix of the MLP ``arch``.

    Parameters
    ----------
    arch : MLP
    X1 : (n1, d) array_like
    X2 : (n2, d) array_like, optional
        Defaults to ``X1``.
    kind : {"ntk", "nngp", "ntk_truncated"}
        ``"nngp"`` is ``kappa^2 Sigma^{L+1}``, ``"ntk"`` is ``kappa^2 Theta^{L+1}``;
        ``"ntk_truncated"`` is the ReLU JNTK with ``phi'' := 0`` (math.md §5.9).
    jacobian : bool
        If True, return the Jacobian-augmented matrix: a (d+1) x (d+1) block per pair (value and
        input-gradient of the output at ``x`` against those at ``x'``), point-major.  For ReLU
        the blocks come from the cancellation-free recursion of :mod:`jacntk.kernels._relu_blocks`
        (accurate
        to ~1e-15 relative for every pair, including ``x' = x + tiny``); for the other
        activations from the eight fields (:func:`kernel_fields`, :func:`augment`).

    Returns
    -------
    (n1, n2) float64, or (n1*(d+1), n2*(d+1)) float64 when ``jacobian=True``.

    Raises
    ------
    ValueError
        Bad inputs (NaN/inf, empty, mismatched d), an unknown kind, or the true ReLU JNTK
        (infinite diagonal blocks).
    """
    if not jacobian:
        return compute_tile(arch, X1, X2, kind=kind, jacobian=False)
    if arch.activation == "relu":
        return relu_jacobian_kernel(arch, X1, X2, kind=kind)
    return augment(kernel_fields(arch, X1, X2, kind=kind), X1, X2)
