"""Training dynamics of the infinite-width network: the training system, coefficients,
predictions and the scikit-learn estimators, with their options as data
(:class:`SolverOptions`, :class:`OperatorOptions`)."""

from ..options import OperatorOptions, SolverOptions, resolve_options
from ._coefficients import Coefficients, SolveDiagnostics, solve_coefficients
from ._estimator import KernelClassifier, KernelRegressor
from ._predict import (
    Prediction,
    cross_product,
    max_stable_learning_rate,
    predict,
    training_predictions,
)
from ._system import TrainingSystem, initial_outputs, training_residual, training_system

__all__ = [
    "Coefficients",
    "KernelClassifier",
    "KernelRegressor",
    "OperatorOptions",
    "Prediction",
    "SolveDiagnostics",
    "SolverOptions",
    "TrainingSystem",
    "cross_product",
    "initial_outputs",
    "max_stable_learning_rate",
    "predict",
    "resolve_options",
    "solve_coefficients",
    "training_predictions",
    "training_residual",
    "training_system",
]
