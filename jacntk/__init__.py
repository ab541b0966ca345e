"""jacntk: infinite-width NNGP/NTK kernels and their Jacobian-augmented forms for deep MLPs."""

from .arch import ACTIVATIONS, KINDS, MLP
from .blocks import (
    augment,
    coordinate_directions,
    projected_kernel,
    random_directions,
    structured_matmul,
)
from .fields import FIELD_NAMES, KernelFields, kernel_fields
from .kernels import kernel

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "FIELD_NAMES",
    "KINDS",
    "MLP",
    "KernelFields",
    "augment",
    "coordinate_directions",
    "kernel",
    "kernel_fields",
    "projected_kernel",
    "random_directions",
    "structured_matmul",
]
