"""Training dynamics of the infinite-width network: the training system, coefficients,
predictions and the scikit-learn-style estimator."""

from ._coefficients import Coefficients, solve_coefficients
from ._estimator import KernelRegressor
from ._predict import Prediction, max_stable_learning_rate, predict
from ._system import TrainingSystem, training_system

__all__ = [
    "Coefficients",
    "KernelRegressor",
    "Prediction",
    "TrainingSystem",
    "max_stable_learning_rate",
    "predict",
    "solve_coefficients",
    "training_system",
]
