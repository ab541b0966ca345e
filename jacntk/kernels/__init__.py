"""Kernels: activations and their Gaussian moments, the eight-field recursion, the
cancellation-free ReLU route, Jacobian blocks and structured products, NumPy references."""

from ._blocks import (
    augment,
    coordinate_directions,
    projected_kernel,
    random_directions,
    structured_matmul,
)
from ._compute import KernelFields, kernel, kernel_fields
from ._fields import FIELD_NAMES

__all__ = [
    "FIELD_NAMES",
    "KernelFields",
    "augment",
    "coordinate_directions",
    "kernel",
    "kernel_fields",
    "projected_kernel",
    "random_directions",
    "structured_matmul",
]
