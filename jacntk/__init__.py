"""jacntk: infinite-width NNGP/NTK kernels and their Jacobian-augmented forms for deep MLPs."""

from .arch import ACTIVATIONS, KINDS, MLP
from .assembly import assemble
from .blocks import (
    augment,
    coordinate_directions,
    projected_kernel,
    random_directions,
    structured_matmul,
)
from .dynamics import Prediction, predict
from .estimator import KernelRegressor
from .fields import FIELD_NAMES, KernelFields, kernel_fields
from .kernels import kernel
from .store import GramStore

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "FIELD_NAMES",
    "KINDS",
    "MLP",
    "GramStore",
    "KernelFields",
    "KernelRegressor",
    "Prediction",
    "assemble",
    "augment",
    "coordinate_directions",
    "kernel",
    "kernel_fields",
    "predict",
    "projected_kernel",
    "random_directions",
    "structured_matmul",
]
