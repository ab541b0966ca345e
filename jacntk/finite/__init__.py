"""Finite networks as ground truth: the network, empirical and Monte-Carlo kernels, training."""

from ._kernels import (
    MonteCarloKernel,
    empirical_kernel,
    monte_carlo_kernel,
    monte_carlo_kernels,
    relative_drift,
)
from ._network import (
    MEAN_FIELD_SCALING,
    NTK_SCALING,
    FiniteMLP,
    WidthScaling,
    forward,
    init_network,
    parameter_vector,
    with_parameters,
)
from ._training import TrainingRun, loss, loss_gradient, train

__all__ = [
    "FiniteMLP",
    "MEAN_FIELD_SCALING",
    "MonteCarloKernel",
    "NTK_SCALING",
    "TrainingRun",
    "WidthScaling",
    "empirical_kernel",
    "forward",
    "init_network",
    "loss",
    "loss_gradient",
    "monte_carlo_kernel",
    "monte_carlo_kernels",
    "parameter_vector",
    "relative_drift",
    "train",
    "with_parameters",
]
