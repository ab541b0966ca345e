"""The one place that decides how a kernel is computed (docs/math.md §1.2, §7).

Every consumer -- ``kernel``, ``kernel_fields``, the dense and structured training
operators and the assembled stores -- gets its numbers from the functions here.  Which pairs
of a Jacobian kernel take the eight fields and which the cancellation-free ReLU route is
decided by :func:`stable_pairs` alone; :func:`route_fields` attaches that decision to a tile
of fields (:class:`RoutedFields`: dense blocks, products, projected blocks) and
:func:`routed_diagonal_blocks` to the diagonal pairs.
"""

from __future__ import annotations

import numba
import numpy as np

from ..arch import MLP, check_kind
from ..validation import as_pair
from ._blocks import (
    KernelFields,
    _augment_as,
)
from ._fields import (
    BOTH_NTK,
    BOTH_TRUNCATED,
    KIND_CODES,
    SMALL_TILE_PAIRS,
    Plan,
    _closed_form_scalar_rows,
    _diag_chain,
    make_plan,
)
from ._hermite import fields_tile_routed, scalar_tile_routed
from ._relu_tiles import (
    relu_jacobian_kernel,
)
from ._routing import uses_stable_route
from ._scalar32 import F32_COLLINEAR, _closed_form_scalar_rows32

#: Row-block size of the symmetric inner products (see ``_inner_products``).
GEMM_BLOCK = 5000

#: Largest input dimension at which the closed-form scalar rows form their inner products
#: themselves (``row_inner_products``) instead of from the GEMM: below it the GEMM is memory
#: bound (it writes and the rows re-read an (n1, n2) matrix: at N = 10,000, d = 10 it took
#: 0.3-0.45 s of a 1.1 s NTK on this project's 2-core machines).
INLINE_DOT_D = 32

#: Arithmetic of the kernel computation (docs/math.md §14): ``"float64"`` (the default), or
#: ``"float32"``, float32 GEMM and layer maps where that is safe and a float32 result.
PRECISIONS = ("float64", "float32")


def _inner_products(X1: np.ndarray, X2: np.ndarray, symmetric: bool, out: np.ndarray | None = None):
    """``P = X1 X2^T`` and the squared norms, with ``P_ii = q_i`` exactly on the diagonal of a
    symmetric Gram (so x = x' is recognised as such).

    Symmetric tiles read only the upper triangle of ``P``, so only the blocks ``I <= J`` are
    computed (half the flops of a GEMM): SYRK on the diagonal blocks, GEMM off them.  The
    blocks keep each SYRK at most ``GEMM_BLOCK`` rows: OpenBLAS 0.3.31's threaded SYRK (what
    numpy uses for ``X @ X.T``) crashes for X of shape 20000 x 784 (measured here).

    ``out`` (n1, n2), optional, receives ``P``; a float32 ``out`` makes the GEMM a float32 GEMM
    of the rounded points (docs/math.md §14).  The norms ``q`` are always float64.
    """
    q1, q2 = _squared_norms(X1, X2, symmetric)
    n1, n2 = X1.shape[0], X2.shape[0]
    P = np.empty((n1, n2)) if out is None else out
    if P.dtype != X1.dtype:
        X1 = X1.astype(P.dtype)
        X2 = X1 if symmetric else X2.astype(P.dtype)
    if not symmetric:
        np.matmul(X1, X2.T, out=P)
        return P, q1, q2
    for i in range(0, n1, GEMM_BLOCK):
        j = i + GEMM_BLOCK
        rows = X1[i:j]
        P[i:j, i:j] = rows @ rows.T  # SYRK on a block small enough for OpenBLAS
        if j < n1:
            P[i:j, j:] = rows @ X1[j:].T
    np.fill_diagonal(P, q1)
    return P, q1, q1


def _squared_norms(X1: np.ndarray, X2: np.ndarray, symmetric: bool):
    """``(q1, q2)``: the squared norms of the rows (float64)."""
    q1 = np.einsum("ij,ij->i", X1, X1)
    return q1, (q1 if symmetric else np.einsum("ij,ij->i", X2, X2))


def kind_tuple(kind) -> tuple[tuple[str, ...], bool]:
    """``(kinds, single)``: the kinds asked for, and whether ``kind`` was one string.

    Raises ``ValueError`` for an empty sequence, a non-string entry or a kind asked twice
    (unknown kinds are refused by ``check_kind``)."""
    if isinstance(kind, str):
        return (kind,), True
    try:
        kinds = tuple(kind)
    except TypeError:
        raise ValueError(
            f"kind must be a kernel kind or a sequence of them, got {kind!r}"
        ) from None
    if not kinds:
        raise ValueError("kind: an empty sequence; ask for at least one kernel kind")
    for k in kinds:
        if not isinstance(k, str):
            raise ValueError(f"kind: every entry must be a kernel kind (a string), got {k!r}")
        if kinds.count(k) > 1:
            raise ValueError(f"kind: {k!r} is asked for twice in {kinds!r}")
    return kinds, False


def check_precision(precision: str) -> np.dtype:
    """The output dtype of ``precision`` (``PRECISIONS``), or ``ValueError``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    return np.dtype(precision)


def compute_tile(
    arch: MLP,
    X1,
    X2=None,
    *,
    kind="ntk",
    jacobian: bool = False,
    plan: Plan | None = None,
    precision: str = "float64",
):
    """Scalar kernel ``(n1, n2)`` or field array ``(8, n1, n2)`` for one tile of pairs.

    This is the pure function that distributed assembly runs per tile; ``X2=None`` (or
    ``X2 is X1``) computes a symmetric diagonal tile.  ``plan`` (``make_plan``) may be passed
    to validate the architecture once for many tiles; the kinds computed are those of ``kind``.

    ``kind`` may be a sequence of kinds (docs/math.md §14): then a tuple of arrays in the order
    asked, all from one pass over the layers (the NTK recursion carries the NNGP).
    ``precision="float32"`` (docs/math.md §14) returns float32 arrays: closed-form scalar tiles
    (erf, relu, gelu) take the float32 GEMM and float32 layer maps, with near-collinear pairs
    and the diagonal in float64; every other tile is computed in float64 and rounded.
    """
    kinds, single = kind_tuple(kind)
    dtype = check_precision(precision)
    for k in kinds:
        check_kind(arch, k, jacobian)
    A, B, symmetric = as_pair(X1, X2)
    plan = make_plan(arch, kinds[0], jacobian) if plan is None else plan
    # Small tiles run on the calling thread: waking Numba's pool costs more than the work (and
    # tens of ms on a loaded machine).
    pairs = A.shape[0] * B.shape[0]
    small = pairs < (SMALL_TILE_PAIRS if plan.closed_form else SMALL_TILE_PAIRS // 256)
    previous = numba.get_num_threads()
    if small:
        numba.set_num_threads(1)
    try:
        outs = _compute(plan, A, B, symmetric, jacobian, kinds, dtype)
    finally:
        numba.set_num_threads(previous)
    for k, out in zip(kinds, outs, strict=True):
        check_kernel_range(out, arch, k, A if symmetric else None)
    return outs[0] if single else tuple(outs)


def check_kernel_range(values: np.ndarray, arch: MLP, kind: str, X: np.ndarray | None = None):
    """Raise ``FloatingPointError`` for a kernel tile that overflowed or underflowed.

    ``values`` is a scalar tile ``(n1, n2)`` or a field tile ``(8, n1, n2)``.  NaN or inf
    anywhere means the layer recursion overflowed (variances growing like ``sigma_w^(2L)``);
    with ``X`` (the points of a symmetric tile) a diagonal entry that is exactly zero for a point
    ``x != 0`` (with ``kappa > 0``) means the variances underflowed to zero -- a zero kernel
    there would be garbage, not a result.  The message names the depth, the scales and the way
    out (docs/math.md §9: the Edge of Chaos keeps the variance map bounded).
    """
    where = (
        f"depth {arch.depth}, activation {arch.activation!r}, sigma_w={arch.sigma_w:g}, "
        f"sigma_b={arch.sigma_b:g}, kind {kind!r}"
    )
    advice = (
        "choose (sigma_w, sigma_b) at the Edge of Chaos (jacntk.depth.eoc_mlp; "
        "docs/math.md §9), fewer layers, or standardised inputs"
    )
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise FloatingPointError(
            f"the kernel overflowed ({bad} NaN/inf entries) at {where}: the layer variances "
            f"exceed the float64 range; {advice}"
        )
    if X is None or arch.kappa == 0:
        return
    K = values[0] if values.ndim == 3 else values
    dead = (np.diagonal(K) == 0) & (np.abs(X).max(axis=1) > 0)
    if dead.any():
        raise FloatingPointError(
            f"the kernel underflowed to exactly 0 on the diagonal ({int(dead.sum())} of "
            f"{dead.size} points) at {where}: the layer variances vanish below the float64 range; "
            f"{advice}"
        )


def _tile_code(kinds: tuple[str, ...], jacobian: bool) -> list[tuple[int, int]]:
    """The passes that compute ``kinds``: ``(tile kind code, how many results)`` each.

    The NNGP rides along with any NTK kind (``BOTH_NTK`` / ``BOTH_TRUNCATED``); scalar NTK and
    truncated NTK are one number; only the fields of ``"ntk"`` and ``"ntk_truncated"`` together
    need two passes (their ``Theta`` jets differ)."""
    names = set(kinds)
    if not jacobian and names & {"ntk", "ntk_truncated"}:
        names -= {"ntk_truncated"}
        names |= {"ntk"}
    codes = []
    ntks = sorted(names - {"nngp"}, key=KIND_CODES.get)
    for k in ntks:
        if "nngp" in names and not codes:
            codes.append((BOTH_NTK if k == "ntk" else BOTH_TRUNCATED, 2))
        else:
            codes.append((KIND_CODES[k], 1))
    if not ntks:
        codes.append((KIND_CODES["nngp"], 1))
    return codes


def _results_of(code: int, jacobian: bool) -> tuple[str, ...]:
    """The kinds a pass of tile code ``code`` returns, in its output order."""
    if code == BOTH_NTK:
        return ("nngp", "ntk")
    if code == BOTH_TRUNCATED:
        return ("nngp", "ntk_truncated")
    return (("nngp", "ntk", "ntk_truncated")[code],)


def _compute(plan: Plan, A, B, symmetric: bool, jacobian: bool, kinds, dtype) -> list:
    """The arrays of ``kinds`` (in that order) for one tile, ``dtype`` float64 or float32."""
    n1, n2 = A.shape[0], B.shape[0]
    d = A.shape[1]
    fast32 = dtype == np.float32 and plan.closed_form and not jacobian
    passes = _tile_code(kinds, jacobian)
    inline = plan.closed_form and not jacobian and d <= INLINE_DOT_D
    if plan.closed_form and not jacobian:  # one pass of the vectorised rows, P in the output
        code, m = passes[0]
        buf = np.empty((m, n1, n2), dtype=np.float32 if fast32 else np.float64)
        if inline:  # the rows form <x_i, x'_j> themselves
            P, (q1, q2) = buf[m - 1], _squared_norms(A, B, symmetric)
        else:
            P, q1, q2 = _inner_products(A, B, symmetric, out=buf[m - 1])
    else:
        P, q1, q2 = _inner_products(A, B, symmetric)
    v1, vp1 = _diag_chain(plan.act, plan.depth, plan.omega, plan.sb2, d, q1, plan.h)
    v2, vp2 = (
        (v1, vp1)
        if symmetric
        else _diag_chain(plan.act, plan.depth, plan.omega, plan.sb2, d, q2, plan.h)
    )
    common = (plan.depth, plan.omega, plan.sb2, plan.kappa2, P, d)
    BT = np.ascontiguousarray(B.T) if inline else np.empty((0, 0))
    results: dict[str, np.ndarray] = {}
    for code, m in passes:
        if plan.closed_form and not jacobian:
            if fast32:
                _closed_form_scalar_rows32(
                    plan.act, code, *common, v1, v2, A, B, q1, q2, symmetric, F32_COLLINEAR, buf,
                    inline, BT,
                )  # fmt: skip
            else:
                _closed_form_scalar_rows(
                    plan.act, code, *common, v1, v2, symmetric, buf, inline, A, BT
                )
            out = buf
        elif jacobian:
            out = fields_tile_routed(plan.act, code, *common, v1, vp1, v2, vp2, plan.h, symmetric)
            out = out.reshape(m, 8, n1, n2)
        else:
            out = scalar_tile_routed(plan.act, code, *common, v1, v2, plan.h, symmetric)
            out = out.reshape(m, n1, n2)
        for name, values in zip(_results_of(code, jacobian), out, strict=True):
            results[name] = values
    if not jacobian and "ntk" in results:
        results.setdefault("ntk_truncated", results["ntk"])  # one number for scalar kernels
    outs, seen = [], set()
    for k in kinds:
        values = results[k]
        if id(values) in seen:  # scalar "ntk" and "ntk_truncated" both asked: two arrays
            values = values.copy()
        seen.add(id(values))
        outs.append(values if values.dtype == dtype else values.astype(dtype))
    return outs


def kernel_fields(
    arch: MLP, X1, X2=None, *, kind="ntk", precision: str = "float64"
) -> KernelFields | tuple[KernelFields, ...]:
    """The eight coefficient fields of the Jacobian-augmented kernel between two point sets.

    Parameters
    ----------
    arch : MLP
    X1 : (n1, d) array_like
    X2 : (n2, d) array_like, optional
        Defaults to ``X1`` (symmetric Gram; only half the pairs are computed).
    kind : {"ntk", "nngp", "ntk_truncated"} or a sequence of them
        A sequence, e.g. ``("nngp", "ntk")``, returns a tuple of fields in the order asked,
        from one pass over the layers (docs/math.md §14; ``"ntk"`` with ``"ntk_truncated"``
        takes two).
    precision : {"float64", "float32"}
        ``"float32"``: the float64 fields rounded to float32 (docs/math.md §14).

    Returns
    -------
    KernelFields, or a tuple of them
        ``K_bullet[i, j] = kappa^2 d_bullet K(p, q, r)`` at ``p = <x_i, x'_j>``, ``q = |x_i|^2``,
        ``r = |x'_j|^2`` (docs/math.md §4.2, §5.2).  Cost O(n1 n2 (d + depth)).
    """
    kinds, single = kind_tuple(kind)
    data = compute_tile(arch, X1, X2, kind=kinds, jacobian=True, precision=precision)
    fields = tuple(KernelFields(F, k) for F, k in zip(data, kinds, strict=True))
    return fields[0] if single else fields


def kernel(
    arch: MLP,
    X1,
    X2=None,
    *,
    kind="ntk",
    jacobian: bool = False,
    precision: str = "float64",
) -> np.ndarray | tuple[np.ndarray, ...]:
    """Dense infinite-width kernel matrix of the MLP ``arch``.

    Parameters
    ----------
    arch : MLP
    X1 : (n1, d) array_like
    X2 : (n2, d) array_like, optional
        Defaults to ``X1``.
    kind : {"ntk", "nngp", "ntk_truncated"} or a sequence of them
        ``"nngp"`` is ``kappa^2 Sigma^{L+1}``, ``"ntk"`` is ``kappa^2 Theta^{L+1}``;
        ``"ntk_truncated"`` is the ReLU JNTK with ``phi'' := 0`` (docs/math.md §7).  A
        sequence, e.g. ``("nngp", "ntk")``, returns a tuple in the order asked, computed in
        one pass over the layers, since ``Theta_{l+1} = Sigma_{l+1} + Sigma'_{l+1} Theta_l``
        carries the NNGP (docs/math.md §14; the ReLU Jacobian route runs once per kind).
    jacobian : bool
        If True, return the Jacobian-augmented matrix: a (d+1) x (d+1) block per pair (value and
        input-gradient of the output at ``x`` against those at ``x'``), point-major.  For ReLU
        the blocks come from the cancellation-free recursion of :mod:`jacntk.kernels._relu_blocks`
        (accurate to ~1e-15 relative for every pair, including ``x' = x + tiny``); for the
        other activations from the eight fields (:func:`kernel_fields`, :func:`augment`).
        This is the reference every other consumer matches (:func:`stable_pairs`).
    precision : {"float64", "float32"}
        ``"float32"`` (docs/math.md §14): float32 output; scalar erf, relu and gelu kernels use
        the float32 GEMM and float32 layer maps (within ``1e-5`` relative of float64 measured,
        with the diagonal and near-collinear ReLU pairs computed in float64); every other case
        is computed in float64 and rounded.

    Returns
    -------
    (n1, n2), or (n1*(d+1), n2*(d+1)) when ``jacobian=True``; float64 or float32 as
    ``precision``.  A tuple of them when ``kind`` is a sequence.

    Raises
    ------
    ValueError
        Bad inputs (NaN/inf, empty, mismatched d), an unknown kind, or the true ReLU JNTK
        (infinite diagonal blocks).
    """
    if not jacobian:
        return compute_tile(arch, X1, X2, kind=kind, jacobian=False, precision=precision)
    kinds, single = kind_tuple(kind)
    dtype = check_precision(precision)
    for k in kinds:
        check_kind(arch, k, True)
    A, B, symmetric = as_pair(X1, X2)
    out: dict[str, np.ndarray] = {}
    by_fields = [k for k in kinds if not uses_stable_route(arch, k)]
    if by_fields:
        fields = kernel_fields(arch, A, B, kind=tuple(by_fields))
        for k, F in zip(by_fields, fields, strict=True):
            out[k] = _augment_as(F.data, A, B, dtype)
    for k in kinds:
        if k in out:
            continue
        G = relu_jacobian_kernel(arch, A, B, kind=k)  # every pair routed (stable_pairs, "Cost")
        w = A.shape[1] + 1
        check_kernel_range(G, arch, k)
        check_kernel_range(G[::w, ::w], arch, k, A if symmetric else None)
        out[k] = G if G.dtype == dtype else G.astype(dtype)
    results = tuple(out[k] for k in kinds)
    return results[0] if single else results
