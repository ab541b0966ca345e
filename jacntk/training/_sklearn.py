"""The scikit-learn protocol of jacntk's estimators, without importing scikit-learn at import
time: ``NotFittedError``, scikit-learn's warning and error classes when it is installed, the
input checks with the messages ``check_estimator`` expects, the checks that cannot apply, and
what ``clone`` shares by reference."""

from __future__ import annotations

import sys

import numpy as np

from ..options import OperatorOptions, SolverOptions
from ..validation import as_points
from ._system import is_store


class NotFittedError(ValueError, AttributeError):
    """Raised by ``predict`` & co. before ``fit`` when scikit-learn is not installed (then
    ``sklearn.exceptions.NotFittedError``, which has the same two bases, is raised instead)."""


def not_fitted_error() -> type[Exception]:
    try:
        from sklearn.exceptions import NotFittedError as SklearnNotFittedError
    except ImportError:
        return NotFittedError
    return SklearnNotFittedError


def data_conversion_warning() -> type[Warning]:
    try:
        from sklearn.exceptions import DataConversionWarning
    except ImportError:
        return UserWarning
    return DataConversionWarning


def sklearn_expected_failed_checks(estimator) -> dict[str, str]:
    """The ``check_estimator`` checks that cannot apply to jacntk's estimators, with the reason
    (pass as ``check_estimator(est, expected_failed_checks=...)`` or to
    ``parametrize_with_checks``)."""
    return {
        "check_parameters_default_constructible": (
            "the flat option shorthands (client, tol, maxiter, preconditioner, tile, operator) "
            "default to the sentinel jacntk.options.UNSET, 'not given: use the value in "
            "solver / operator_options'; None cannot stand for that, because None is a value "
            "of its own there (maxiter=None: the solver's cap, preconditioner=None: plain CG, "
            "client=None: no client) and would conflict with an options object that says "
            "otherwise (see jacntk.options.resolve_options)"
        ),
    }


# ---- input checks with scikit-learn's messages --------------------------------------------


def _is_sparse(a) -> bool:
    import scipy.sparse

    return scipy.sparse.issparse(a)


def check_X(X, owner: str) -> np.ndarray:
    """``X`` as (n, d) float64 (:func:`jacntk.validation.as_points`), refusing sparse, complex,
    1-D and empty input with the messages scikit-learn's checks expect."""
    if X is None:
        raise ValueError(f"{owner} needs an input array X of shape (n_samples, n_features)")
    if _is_sparse(X):
        raise TypeError(
            f"{owner} does not accept sparse input (got a {type(X).__name__}): the kernel is "
            "computed from dense rows; convert it with X.toarray() if it fits in memory"
        )
    raw = np.asarray(X)
    if raw.dtype.kind == "c":
        raise ValueError(
            f"Complex data not supported: X has dtype {raw.dtype}; {owner} needs real inputs "
            "(X.real or np.abs(X) if that is what you mean)"
        )
    if raw.dtype.kind == "O":  # numbers held as objects (NumPy names a non-number)
        raw = raw.astype(np.float64)
    if raw.ndim == 1:
        raise ValueError(
            f"Expected a 2-D array X (n_samples, n_features), got a 1-D array of shape "
            f"{raw.shape}. Reshape your data either using X.reshape(-1, 1) if it has a single "
            "feature or X.reshape(1, -1) if it is a single sample."
        )
    if raw.ndim == 2 and raw.shape[1] == 0:
        raise ValueError(f"0 feature(s) (shape={raw.shape}) while a minimum of 1 is required.")
    if raw.ndim == 2 and raw.shape[0] == 0:
        raise ValueError(f"0 sample(s) (shape={raw.shape}) while a minimum of 1 is required.")
    return as_points(raw, "X")


def check_y_given(y, owner: str):
    if y is None:
        raise ValueError(f"{owner} requires y to be passed, but the target y is None")
    if _is_sparse(y):
        raise TypeError(f"{owner} does not accept sparse targets; pass y.toarray()")
    raw = np.asarray(y)
    if raw.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: y has dtype {raw.dtype}")
    return raw


def is_shared_handle(value) -> bool:
    """Parameters ``clone`` passes by reference: a Dask client (a connection, not data; it
    cannot be copied), a Gram store and the frozen option objects (immutable values that may
    hold a client)."""
    if isinstance(value, (SolverOptions, OperatorOptions)) or is_store(value):
        return True
    distributed = sys.modules.get("distributed")  # no client exists unless it is imported
    return distributed is not None and isinstance(value, distributed.Client)
