"""Static description of the network: the MLP of docs/math.md §1.1 / §2.1."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .validation import is_integer, is_real

__all__ = ["ACTIVATIONS", "CLOSED_FORM", "KINDS", "MLP", "QUADRATURE", "check_kind"]

#: Kernel kinds.  ``"ntk_truncated"`` is the ReLU JNTK with phi'' := 0 (docs/math.md §1.5, §7).
KINDS = ("nngp", "ntk", "ntk_truncated")


@dataclass(frozen=True)
class MLP:
    """A deep fully connected network in NTK parametrisation (docs/math.md §1.1).

    ``h1 = sigma_w W1 x / sqrt(d) + sigma_b b1``,
    ``h(l+1) = sigma_w W phi(h l) / sqrt(n) + sigma_b b``, ``f = kappa h(L+1)``,
    with all weights and biases i.i.d. N(0, 1).

    Parameters
    ----------
    depth : int
        Number of hidden layers ``L >= 1`` (the readout is linear).
    activation : str
        One of ``ACTIVATIONS``: ``"erf"``, ``"relu"``, ``"gelu"`` (exact, ``u * Phi(u)``) in
        closed form, ``"tanh"``, ``"softplus"``, ``"silu"`` (quadrature); the registry
        :mod:`jacntk.kernels._activations` says which is which (docs/activations.md).
    sigma_w, sigma_b : float
        Weight and bias scales (``sigma_w > 0``, ``sigma_b >= 0``).
    kappa : float
        Output scale; every kernel carries the factor ``kappa**2``.
    """

    depth: int
    activation: str
    sigma_w: float = 1.0
    sigma_b: float = 0.0
    kappa: float = 1.0

    def __post_init__(self) -> None:
        depth = self.depth
        if not is_integer(depth) or depth < 1:
            raise ValueError(f"depth must be a positive integer, got {depth!r}")
        object.__setattr__(self, "depth", int(depth))
        get_activation(self.activation)
        for name in ("sigma_w", "sigma_b", "kappa"):
            value = getattr(self, name)
            if not is_real(value) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            value = float(value)
            if not math.isfinite(value * value):
                raise ValueError(
                    f"{name}={value:g} is too large: {name}^2 overflows float64 (the layer "
                    "maps use the squared scales)"
                )
            object.__setattr__(self, name, value)
        if self.sigma_w <= 0:
            raise ValueError(f"sigma_w must be positive, got {self.sigma_w}")
        if self.sigma_b < 0:
            raise ValueError(f"sigma_b must be non-negative, got {self.sigma_b}")
        if self.kappa < 0:
            raise ValueError(f"kappa must be non-negative, got {self.kappa}")

    def to_dict(self) -> dict:
        """JSON-serialisable description (stored verbatim in every Gram store)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MLP:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: data[k] for k in ("depth", "activation", "sigma_w", "sigma_b", "kappa")})


def check_kind(arch: MLP, kind: str, jacobian: bool) -> None:
    """Validate a kernel kind for an architecture (docs/math.md §1.2, §1.5).

    Raises
    ------
    ValueError
        For an unknown kind, or the true JNTK of a non-smooth activation (ReLU: infinite
        diagonal blocks, docs/math.md §7).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kernel kind {kind!r}; valid: {', '.join(KINDS)}")
    if kind == "ntk" and jacobian and not get_activation(arch.activation).smooth:
        raise ValueError(
            "the Jacobian NTK of a ReLU network does not exist: its diagonal blocks are "
            "infinite, because d/dp of the NTK's Sigma-dot = (pi - theta)/(2 pi) diverges like "
            "1/sin(theta) as x' -> x (docs/math.md §7). Use kind='ntk_truncated' for the kernel "
            "that finite ReLU networks trained by autodiff follow (phi'' := 0), or a smooth "
            "activation such as 'gelu' or 'erf'."
        )


# The registry is imported last: importing it runs jacntk/kernels/__init__.py, whose modules
# import MLP and check_kind from here (defined above; they read the registry only when run).
# ACTIVATIONS (public as jacntk.ACTIVATIONS), CLOSED_FORM and QUADRATURE are re-exported.
from .kernels._activations import (  # noqa: E402
    ACTIVATIONS,
    CLOSED_FORM,
    QUADRATURE,
    get_activation,
)
