"""Routing: which pairs' Jacobian blocks come from the eight fields and which from the stable
ReLU route (docs/architecture.md §4.3) — decided here, once, for every caller."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..arch import MLP
from ..validation import as_pair, as_points
from ._activations import RELU, get_activation
from ._blocks import (
    _field_arrays,
    augment,
    check_direction_pair,
    projected_kernel,
    structured_matmul,
)
from ._fields import transpose_fields
from ._relu_blocks import STABLE_KINDS
from ._relu_tiles import hidden_angle_sines, relu_pair_blocks, relu_pair_matmul

#: Pairs of a ReLU Jacobian kernel whose smallest hidden-layer sine is below this take the
#: cancellation-free route (see :func:`stable_pairs` for the measurement behind the value).
STABLE_ROUTE_SINE = 0.05


def uses_stable_route(arch: MLP, kind: str, jacobian: bool = True) -> bool:
    """Whether the Jacobian blocks of ``(arch, kind)`` can need the cancellation-free route:
    ReLU Jacobian kernels of kinds ``"nngp"`` and ``"ntk_truncated"``."""
    return bool(jacobian) and get_activation(arch.activation).code == RELU and kind in STABLE_KINDS


def stable_pairs(arch: MLP, kind: str, X1, X2=None, *, aligned: bool = False):
    """The routing decision: the pairs whose Jacobian blocks come from the stable ReLU route.

    Every consumer of Jacobian blocks asks this function -- :func:`kernel` (dense), the
    structured product (:class:`jacntk.StructuredGram`, :func:`jacntk.structured_matmul` with
    ``arch``), the stored operator (:class:`jacntk.StoredGram`, ``GramStore.matvec``) and the
    store's block queries -- so all of them give the numbers of ``kernel(..., jacobian=True)``.

    Rule.  For ReLU kinds ``"nngp"`` / ``"ntk_truncated"`` with ``s_ij = min_l sin(theta_l)``
    the smallest sine of the hidden layers' input angles of pair ``(x_i, x'_j)``
    (:func:`jacntk.kernels._relu_tiles.hidden_angle_sines`)::

        pair (i, j) takes the stable route   iff   s_ij < STABLE_ROUTE_SINE = 0.05

    and every other pair (all pairs of other activations and kinds) takes the eight fields.

    Why.  The ReLU fields ``K_pp, K_pq, ...`` contain the moments ``F22, F31, F13 ~ 1/sin``;
    each is accurate to ``eps_mach`` relative, but the block cancels them, so a block from the
    fields carries an absolute error ``err ~ C eps_mach / s^2`` of the kernel scale.  Measured
    (``x' = x + t v``, ``t = 10^-0.5 ... 10^-11``, depths 1, 2, 3, 5, ``sigma_b`` 0, 0.1, 0.5,
    both kinds, d = 4): ``err s^2 <= 4e-16`` (``C <= 2``) down to ``s ~ 1e-6``, below which the
    fields switch to their exact ``theta = 0`` limit and the error is ``O(s)`` instead (``1e-7``
    at ``|x' - x| = 1e-7``).  At the threshold the field route is within
    ``4e-16 / 0.05^2 = 1.6e-13`` relative, below the ``1e-12`` every consumer promises; the
    stable route is accurate to ``~1e-15`` for every pair.  The sine is computed with
    cancellation-prone formulas (absolute error ``~1e-8``), irrelevant at this threshold.
    Diagonal pairs ``x' = x`` (``s = 0``) are always routed.

    Cost.  ``O(n1 n2 (d + depth))`` for the test; the flagged pairs are those near-duplicate
    or (without bias) near-antipodal, a small fraction for ordinary data, so matrix-free
    products stay ``O(n1 n2 d)`` (the flagged pairs cost ``O(d)`` each, ``O(d^2)`` for a dense
    block).  The dense :func:`kernel` takes the stable route for *every* pair: it is accurate
    everywhere and a dense block costs ``O(d^2)`` on either route.

    Parameters
    ----------
    X1 : (n1, d); X2 : (n2, d), optional (defaults to X1)
    aligned : bool
        Decide for the pairs ``(x1_k, x2_k)`` only (equal numbers of points).

    Returns
    -------
    ``(rows, cols)``, two (k,) intp arrays of the routed pairs (row-major order), or with
    ``aligned`` one (k,) array of the routed indices ``k``.  Empty where the fields serve all
    pairs.
    """
    A, B, _ = as_pair(X1, X2)
    if not uses_stable_route(arch, kind):
        empty = np.empty(0, dtype=np.intp)
        return empty if aligned else (empty, empty.copy())
    flagged = hidden_angle_sines(arch, A, B, aligned=aligned) < STABLE_ROUTE_SINE
    if aligned:
        return np.flatnonzero(flagged)
    return tuple(np.asarray(ix, dtype=np.intp) for ix in np.nonzero(flagged))


@dataclass(frozen=True)
class RoutedFields:
    """A tile of Jacobian fields together with the routing of its pairs (:func:`route_fields`).

    Attributes
    ----------
    fields : (8, n1, n2) float64
        The eight fields, set to 0 at the routed pairs (so their field blocks vanish exactly:
        every block entry is linear in the fields).
    rows, cols : (k,) intp
        The routed pairs (:func:`stable_pairs`); their blocks come from the stable route.
    X1 : (n1, d); X2 : (n2, d)
    arch : MLP; kind : str
    """

    fields: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    X1: np.ndarray
    X2: np.ndarray
    arch: MLP
    kind: str

    @property
    def shape(self) -> tuple[int, int]:
        return self.fields.shape[1:]

    def transpose(self) -> RoutedFields:
        """The same tile for the swapped point sets (block ``(j, i)`` is block ``(i, j)^T``)."""
        return RoutedFields(
            transpose_fields(self.fields),
            self.cols,
            self.rows,
            self.X2,
            self.X1,
            self.arch,
            self.kind,
        )

    def matmul(self, V) -> np.ndarray:
        """``G V`` without forming ``G``: :func:`structured_matmul` of the fields plus
        :func:`relu_pair_matmul` of the routed pairs (``O(n1 n2 d + k d)`` per column)."""
        out = structured_matmul(self.fields, self.X1, self.X2, V)
        if self.rows.size:
            out += relu_pair_matmul(
                self.arch, self.X1, self.X2, self.rows, self.cols, V, kind=self.kind
            )
        return out

    def dense(self) -> np.ndarray:
        """The point-major ``(n1 (d+1), n2 (d+1))`` matrix (:func:`augment`, routed blocks
        overwritten by :func:`relu_pair_blocks`)."""
        G = augment(self.fields, self.X1, self.X2)
        if not self.rows.size:
            return G
        n1, n2 = self.shape
        d = self.X1.shape[1]
        G4 = G.reshape(n1, d + 1, n2, d + 1)
        G4[self.rows, :, self.cols, :] = relu_pair_blocks(
            self.arch, self.X1, self.X2, self.rows, self.cols, kind=self.kind
        )
        return G

    def projected(self, U1, U2=None) -> np.ndarray:
        """Projected blocks ``(n1 (1+p), n2 (1+p))`` (:func:`projected_kernel`, routed blocks
        projected from :func:`relu_pair_blocks`).  ``U2`` defaults to ``U1`` only for a tile
        whose two point sets are the same array."""
        n1, n2 = self.shape
        d = self.X1.shape[1]
        U1, U2 = check_direction_pair(U1, U2, self.X2 is self.X1, n1, n2, d)
        G = projected_kernel(self.fields, self.X1, self.X2, U1, U2)
        if not self.rows.size:
            return G
        p = U1.shape[1]
        blocks = relu_pair_blocks(self.arch, self.X1, self.X2, self.rows, self.cols, kind=self.kind)
        G4 = G.reshape(n1, 1 + p, n2, 1 + p)
        G4[self.rows, :, self.cols, :] = _project(blocks, U1[self.rows], U2[self.cols])
        return G


def _project(blocks: np.ndarray, U1: np.ndarray, U2: np.ndarray) -> np.ndarray:
    """``E1^T Block E2`` per pair, ``E = [e0, (0, u_1), ..., (0, u_p)]``: (k, 1+p, 1+p)."""
    k, w, _ = blocks.shape
    p = U1.shape[1]

    def frame(U):
        E = np.zeros((k, w, 1 + p))
        E[:, 0, 0] = 1.0
        E[:, 1:, 1:] = U.transpose(0, 2, 1)
        return E

    return np.einsum("kai,kab,kbj->kij", frame(U1), blocks, frame(U2))


def route_fields(arch: MLP, kind: str, fields, X1, X2=None) -> RoutedFields:
    """Attach the routing of :func:`stable_pairs` to a tile of fields of ``(arch, kind)``.

    Parameters
    ----------
    fields : KernelFields or (8, n1, n2) array, computed for ``arch, kind`` on ``X1 x X2``
        (e.g. by :func:`compute_tile`, or read from a store).  Not modified.
    X1 : (n1, d); X2 : (n2, d), optional (defaults to X1)

    Returns
    -------
    RoutedFields
    """
    data = _field_arrays(fields)
    A, B, symmetric = as_pair(X1, X2)
    if data.shape[1:] != (A.shape[0], B.shape[0]):
        raise ValueError(
            f"fields of shape {data.shape[1:]} do not match point sets of "
            f"{A.shape[0]} and {B.shape[0]} points"
        )
    B = A if symmetric else B
    rows, cols = stable_pairs(arch, kind, A, B)
    data = np.asarray(data, dtype=np.float64)
    if rows.size:
        data = data.copy()
        data[:, rows, cols] = 0.0
    return RoutedFields(data, rows, cols, A, B, arch, kind)


def routed_diagonal_blocks(arch: MLP, kind: str, fields, X, directions=None) -> np.ndarray:
    """The diagonal blocks ``Block(x_i, x_i)`` from the diagonal fields, routed like every
    other block (:func:`stable_pairs` with ``aligned=True``; for ReLU all of them are routed).

    Parameters
    ----------
    fields : (8, n) fields of the pairs ``(x_i, x_i)``
    X : (n, d)
    directions : (n, p, d) or (p, d), optional
        Projected blocks ``(1+p) x (1+p)`` instead of the full ``(d+1) x (d+1)``.

    Returns
    -------
    (n, d+1, d+1) or (n, 1+p, 1+p) float64.  At ``x' = x`` the block of the fields is
    ``[[K, (K_p + 2 K_r) x^T], [(K_p + 2 K_q) x, K_p I + (K_pp + 2 K_pq + 2 K_pr + 4 K_qr)
    x x^T]]``.
    """
    X = as_points(X, "X")
    n, d = X.shape
    F = np.asarray(fields, dtype=np.float64)
    if F.shape != (8, n):
        raise ValueError(f"diagonal fields must have shape (8, {n}), got {F.shape}")
    K, Kp, Kq, Kr, Kpp, Kpq, Kpr, Kqr = F
    out = np.zeros((n, d + 1, d + 1))
    out[:, 0, 0] = K
    out[:, 0, 1:] = (Kp + 2.0 * Kr)[:, None] * X
    out[:, 1:, 0] = (Kp + 2.0 * Kq)[:, None] * X
    out[:, 1:, 1:] = (Kpp + 2.0 * Kpq + 2.0 * Kpr + 4.0 * Kqr)[:, None, None] * (
        X[:, :, None] * X[:, None, :]
    )
    out[:, np.arange(1, d + 1), np.arange(1, d + 1)] += Kp[:, None]
    routed = stable_pairs(arch, kind, X, X, aligned=True)
    if routed.size:
        out[routed] = relu_pair_blocks(arch, X, X, routed, routed, kind=kind)
    if directions is None:
        return out
    U, _ = check_direction_pair(directions, None, True, n, n, d)
    return _project(out, U, U)
