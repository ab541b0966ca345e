"""The public dense kernel: scalar NNGP/NTK or its Jacobian-augmented matrix (math.md §0.2)."""

from __future__ import annotations

import numpy as np

from .arch import MLP
from .blocks import augment
from .fields import compute_tile, kernel_fields
from .relu import relu_jacobian_kernel


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
        the blocks come from the cancellation-free recursion of :mod:`jacntk.relu` (accurate
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
