"""``KernelRegressor`` and ``KernelClassifier``: the trained infinite-width network as
scikit-learn estimators.

The scikit-learn protocol is implemented duck-typed, without importing scikit-learn (an
optional dependency: the ``test`` and ``notebooks`` extras) when jacntk is imported: importing
``sklearn.base`` takes about 0.9 s, which every ``import jacntk`` and every ``jacntk`` command
would otherwise pay.  What scikit-learn >= 1.6 reads from an estimator is here: ``get_params`` /
``set_params`` mirroring ``__init__``, ``__sklearn_tags__`` (scikit-learn imported only when
scikit-learn asks), ``__sklearn_clone__``, ``__sklearn_is_fitted__``, ``n_features_in_``,
``_estimator_type`` (scikit-learn < 1.6), its error messages (sparse, complex, 1-D and empty
input, ``y=None``, a different number of features) and its ``NotFittedError`` (scikit-learn's
class when it is installed, else :class:`NotFittedError` here, with the same bases).  So the
estimators pass ``sklearn.utils.estimator_checks.check_estimator`` (with the one check listed
by :func:`sklearn_expected_failed_checks`, and why) and work in ``sklearn.model_selection``;
without scikit-learn, ``fit`` / ``predict`` / ``score`` work the same.

``clone`` shares what cannot or must not be copied (docs of ``__sklearn_clone__``): a Dask
client, a ``GramStore`` and the frozen option objects (which may hold a client) are passed to
the clone by reference; every other parameter is deep-copied, as scikit-learn does.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import numbers
import os
import posixpath
import warnings
from typing import TYPE_CHECKING

import numpy as np

from ..arch import MLP
from ..options import UNSET, OperatorOptions, SolverOptions, resolve_options
from ..validation import check_nonnegative, check_targets
from ._coefficients import solve_coefficients
from ._predict import cross_product
from ._sklearn import (
    check_X,
    check_y_given,
    data_conversion_warning,
    is_shared_handle,
    not_fitted_error,
)
from ._system import is_store, training_residual, training_system

if TYPE_CHECKING:
    from ..store._reader import GramStore


# ---- the shared estimator ----------------------------------------------------------------


def _store_name(arch: MLP, kind: str, jacobian: bool, X: np.ndarray) -> str:
    """``<kind>[-jacobian]-<settings digest 8>-<input fingerprint 16>.zarr``: one store per
    training set and kernel under a ``store=`` directory."""
    from ..store._format import fingerprint

    settings = json.dumps(
        {"arch": arch.to_dict(), "kind": kind, "jacobian": bool(jacobian)}, sort_keys=True
    )
    digest = hashlib.sha256(settings.encode()).hexdigest()[:8]
    points = fingerprint(X).split(":", 1)[1][:16]
    return f"{kind}{'-jacobian' if jacobian else ''}-{digest}-{points}.zarr"


class _KernelEstimator:
    """Parameters, options, store handling and the solve shared by the two estimators."""

    def __init__(
        self,
        depth: int = 3,
        activation: str = "erf",
        sigma_w: float = 1.0,
        sigma_b: float = 0.0,
        kappa: float = 1.0,
        kind: str = "ntk",
        jacobian_reg: float = 0.0,
        time: float | None = None,
        learning_rate: float = 1.0,
        jitter: float = 0.0,
        store: str | os.PathLike | GramStore | None = None,
        solver: SolverOptions | None = None,
        operator_options: OperatorOptions | None = None,
        client=UNSET,
        tol=UNSET,
        maxiter=UNSET,
        preconditioner=UNSET,
        tile=UNSET,
        operator=UNSET,
    ):
        self.depth = depth
        self.activation = activation
        self.sigma_w = sigma_w
        self.sigma_b = sigma_b
        self.kappa = kappa
        self.kind = kind
        self.jacobian_reg = jacobian_reg
        self.time = time
        self.learning_rate = learning_rate
        self.jitter = jitter
        self.store = store
        self.solver = solver
        self.operator_options = operator_options
        self.client = client
        self.tol = tol
        self.maxiter = maxiter
        self.preconditioner = preconditioner
        self.tile = tile
        self.operator = operator

    # ---- scikit-learn protocol -------------------------------------------------------------

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict:
        """Parameters of this estimator (the ``__init__`` arguments; none is an estimator, so
        ``deep`` changes nothing)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        """Set parameters; unknown names raise ValueError."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"invalid parameter {name!r} for {type(self).__name__}; valid: "
                    f"{', '.join(valid)}"
                )
            setattr(self, name, value)
        return self

    def __sklearn_clone__(self):
        """An unfitted copy with the same parameters (what ``sklearn.base.clone`` calls).

        As scikit-learn's own clone, every parameter is deep-copied, except the handles of
        :func:`is_shared_handle`, which are passed by reference: a ``distributed.Client``
        (``copy.deepcopy`` of a client fails: "cannot pickle '_asyncio.Task'"; and the
        clones of a cross-validation are meant to run on the same cluster), a ``GramStore``
        and the frozen ``SolverOptions`` / ``OperatorOptions``.  Process-parallel tools
        (``n_jobs > 1`` with joblib's processes) still need a picklable estimator: use
        ``n_jobs=1`` with a client, whose cluster supplies the parallelism.
        """
        params = {
            name: value if is_shared_handle(value) else copy.deepcopy(value)
            for name, value in self.get_params(deep=False).items()
        }
        return type(self)(**params)

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "dual_coef_")

    def _input_tags(self):
        from sklearn.utils import InputTags

        return InputTags(two_d_array=True, sparse=False, allow_nan=False)

    def __repr__(self) -> str:
        defaults = {
            p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()
        }
        changed = [
            f"{k}={v!r}"
            for k, v in self.get_params().items()
            if defaults.get(k) is not v and defaults.get(k) != v
        ]
        return f"{type(self).__name__}({', '.join(changed)})"

    # ---- fitting ---------------------------------------------------------------------------

    @property
    def arch(self) -> MLP:
        return MLP(self.depth, self.activation, self.sigma_w, self.sigma_b, self.kappa)

    def _times(self) -> list[float]:
        t = np.inf if self.time is None else self.time
        if isinstance(t, bool) or not isinstance(t, (int, float, np.floating)) or not t >= 0:
            raise ValueError(f"time must be a number >= 0 or None, got {self.time!r}")
        return [float(t)]

    def _options(self) -> tuple[SolverOptions, OperatorOptions]:
        return resolve_options(
            self.solver,
            self.operator_options,
            tol=self.tol,
            maxiter=self.maxiter,
            preconditioner=self.preconditioner,
            operator=self.operator,
            tile=self.tile,
            client=self.client,
        )

    def _training_store(self, X: np.ndarray, client):
        """The Gram store ``fit`` solves from (None without ``store``): the given
        ``GramStore``; the store at ``store`` if that path holds one (a ``zarr.json``); else
        ``<store>/<_store_name(...)>``, assembled unless it is complete."""
        if self.store is None:
            return None
        from ..store._assembly import assemble
        from ..store._format import fingerprint
        from ..store._location import StoreLocation
        from ..store._reader import GramStore

        jac = self.jacobian_reg > 0
        if is_store(self.store):
            store = self.store
        else:
            location = StoreLocation.of(self.store)
            fs, root = location.filesystem()
            if fs.exists(root.rstrip("/") + "/zarr.json"):
                url = location.url  # an existing store: used as it is
            else:
                join = posixpath.join if "://" in location.url else os.path.join
                url = join(location.url, _store_name(self.arch, self.kind, jac, X))
            store = None
            try:
                store = GramStore.open(url, kind=self.kind)
            except FileNotFoundError:
                pass
            if store is None or not store.complete:
                assemble(
                    self.arch, X, url, kind=self.kind, jacobian=jac, client=client, progress=False
                )
                store = GramStore.open(url, kind=self.kind)
        if store.meta.get("fingerprint") not in (None, fingerprint(X)):
            raise ValueError(
                f"the store {store.location.url} holds a Gram of different points than X "
                "(fingerprint mismatch); pass store=<a directory> to keep one store per "
                "training set (e.g. for cross-validation)"
            )
        if store.arch != self.arch or store.kind != self.kind:
            raise ValueError(
                f"the store {store.location.url} holds {store.kind} of {store.arch}, but the "
                f"estimator asks for {self.kind} of {self.arch}"
            )
        return store

    def _solve(self, X: np.ndarray, Y: np.ndarray) -> None:
        """Solve for the dual coefficients of targets ``Y`` (n,) or (n, k) and set the fitted
        attributes shared by both estimators."""
        times = self._times()
        check_nonnegative(self.jacobian_reg, "jacobian_reg")
        solver, operator_options = self._options()
        store = self._training_store(X, operator_options.client)
        system = training_system(
            self.arch,
            X if store is None else store,
            kind=self.kind,
            jacobian_reg=self.jacobian_reg,
            jitter=self.jitter,
            learning_rate=self.learning_rate,
            operator_options=operator_options,
        )
        coef = solve_coefficients(
            system,
            training_residual(system, Y),
            times=times,
            learning_rate=self.learning_rate,
            solver=solver,
        )
        self.system_ = system
        self.store_ = store
        self.dual_coef_ = coef.Z[0]
        self.diagnostics_ = coef.diagnostics
        self.n_features_in_ = X.shape[1]
        self._multi = Y.ndim == 2

    def _check_fitted(self, X) -> np.ndarray:
        name = type(self).__name__
        if not self.__sklearn_is_fitted__():
            raise not_fitted_error()(
                f"This {name} instance is not fitted yet. Call 'fit' with appropriate arguments "
                "before using this estimator."
            )
        X = check_X(X, name)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but {name} is expecting {self.n_features_in_} "
                "features as input (the number it was fitted with)"
            )
        return X

    def _cross(self, X, gradients: bool) -> np.ndarray:
        out = cross_product(self.system_, X, self.dual_coef_[None], gradients=gradients)[0]
        return out if self._multi else out[..., 0]


_PARAMETERS = """
    Parameters
    ----------
    depth, activation, sigma_w, sigma_b, kappa
        The architecture (:class:`jacntk.MLP`).
    kind : {"ntk", "nngp", "ntk_truncated"}
    jacobian_reg : float
        ``lam >= 0``; with ``lam > 0`` the JNTK system (values and zero input gradients fitted).
    time : float or None
        Training time ``t`` (gradient flow); None or ``inf`` for the converged predictor.
    learning_rate : float
        ``eta``: the time scale is ``c = eta / N`` times jacntk's kernel (which carries
        ``kappa^2``), i.e. ``eta kappa^2 / N`` times the kappa-free kernel (docs/math.md §8.2).
    jitter : float
        Explicit ridge on ``B``.
    store : str, path, GramStore or None
        Where ``fit`` keeps the training Gram (assembled on ``client``, or on an embedded
        ``LocalCluster`` without one) and solves from it:

        - a directory (path or URL; created if missing): one store per training set and
          kernel, ``<store>/<kind>[-jacobian]-<settings digest>-<fingerprint[:16]>.zarr``,
          created by the first ``fit`` on those points and reused by later ones, so
          cross-validation and grid searches work (each fold has its own store);
        - the path of an existing Gram store (a Zarr store, e.g. from ``jacntk assemble``):
          that store, which must hold ``X`` (else ValueError); an incomplete one is completed;
        - a ``GramStore``: used as it is (it must hold ``X`` and be complete).

        The store used is the fitted ``store_``.
    solver : SolverOptions or None
        Tolerance, iteration cap and preconditioner of the solve (default ``SolverOptions()``).
    operator_options : OperatorOptions or None
        How the Gram is applied (default ``OperatorOptions()``); its ``client`` is also used
        for assembly.
    client, tol, maxiter, preconditioner, tile, operator
        Shorthands for fields of ``solver`` / ``operator_options`` (``UNSET``: not given);
        stored as given and resolved by ``fit`` (see :func:`jacntk.options.resolve_options`).
        ``client`` is a ``distributed.Client``; ``clone`` shares it (see
        ``__sklearn_clone__``).
"""


class KernelRegressor(_KernelEstimator):
    __doc__ = (
        """Kernel regression with the NTK/NNGP (or the Jacobian-regularised JNTK) of a deep MLP,
    i.e. the prediction of the infinite-width network after training time ``time``
    (docs/math.md §8.2): ``f(x) = Theta(x, X) D^{1/2} phi_t(B) D^{1/2} Y``
    (``B^+`` at ``time=None``).
"""
        + _PARAMETERS
        + """
    Attributes
    ----------
    dual_coef_ : (N * block, k) or (N * block,)
        ``D^{1/2} phi_t(B) D^{1/2} Y``, ``block = d + 1`` with ``jacobian_reg > 0``, else 1.
    system_ : TrainingSystem
    store_ : GramStore or None
    diagnostics_ : SolveDiagnostics
    n_features_in_ : int

    Notes
    -----
    Targets are always regressed as numbers, integer class labels included: for
    classification use :class:`KernelClassifier` (centred one-hot targets, argmax).
"""
    )

    _estimator_type = "regressor"  # scikit-learn < 1.6

    def __sklearn_tags__(self):
        """Estimator tags for scikit-learn >= 1.6 (imported only when scikit-learn asks)."""
        from sklearn.utils import RegressorTags, Tags, TargetTags

        return Tags(
            estimator_type="regressor",
            target_tags=TargetTags(required=True, single_output=True, multi_output=True),
            regressor_tags=RegressorTags(),
            input_tags=self._input_tags(),
        )

    def fit(self, X, y) -> KernelRegressor:
        """Solve for the dual coefficients on training inputs ``X`` (n, d), targets ``y``
        (n,) or (n, k)."""
        name = type(self).__name__
        X = check_X(X, name)
        raw = check_y_given(y, name)
        self._solve(X, check_targets(raw.astype(np.float64), X.shape[0], "y"))
        return self

    def predict(self, X) -> np.ndarray:
        """Predicted values, (n,) or (n, k)."""
        return self._cross(self._check_fitted(X), gradients=False)[:, 0]

    def predict_gradients(self, X) -> np.ndarray:
        """Predicted input gradients, (n, d) or (n, d, k)."""
        return self._cross(self._check_fitted(X), gradients=True)[:, 1:]

    def score(self, X, y) -> float:
        """Coefficient of determination ``R^2 = 1 - SS_res / SS_tot``, averaged uniformly over
        target columns (a constant column scores 1 if predicted exactly, else 0, as in
        ``sklearn.metrics.r2_score``)."""
        pred = self.predict(X)
        y = check_targets(y, pred.shape[0], "y").reshape(pred.shape)
        ss_res = ((y - pred) ** 2).sum(axis=0)
        ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
        constant = np.where(ss_res == 0, 1.0, 0.0)
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), constant)
        return float(np.mean(r2))


class KernelClassifier(_KernelEstimator):
    __doc__ = (
        """Classification by kernel regression on centred one-hot targets with the NTK/NNGP
    (or JNTK) of a deep MLP: the infinite-width network trained on ``e_y - 1/K`` for ``K``
    classes (:func:`jacntk.data.one_hot`), predicting the class of the largest output.

    For ``K`` classes the scores are ``F(x) = Theta(x, X) D^{1/2} phi_t(B) D^{1/2} Y``,
    ``Y = one_hot(labels) (N, K)``, and ``predict`` returns ``classes_[argmax_k F(x)_k]``.
    With two classes the two centred columns are ``-/+ 1/2`` (one the negative of the other),
    so one column (the second class's) is solved for and the score is a single number per
    point, positive for ``classes_[1]``, as scikit-learn's binary convention has it.
    ``predict_proba`` is not offered: the scores are regression outputs, not probabilities.
"""
        + _PARAMETERS
        + """
    Attributes
    ----------
    classes_ : (K,) the sorted class labels (any sortable labels: integers, strings, ...)
    dual_coef_ : (N * block, K) (or (N * block,) for two classes)
    system_, store_, diagnostics_, n_features_in_
        As for :class:`KernelRegressor`.
"""
    )

    _estimator_type = "classifier"  # scikit-learn < 1.6

    def __sklearn_tags__(self):
        """Estimator tags for scikit-learn >= 1.6 (imported only when scikit-learn asks)."""
        from sklearn.utils import ClassifierTags, Tags, TargetTags

        return Tags(
            estimator_type="classifier",
            target_tags=TargetTags(required=True, single_output=True, multi_output=False),
            classifier_tags=ClassifierTags(multi_class=True, multi_label=False),
            input_tags=self._input_tags(),
        )

    def _labels(self, y, n: int) -> np.ndarray:
        """Class labels as a 1-D array of length ``n``, refusing continuous and multi-output
        targets (with scikit-learn's "Unknown label type")."""
        name = type(self).__name__
        raw = check_y_given(y, name)
        if raw.ndim == 2 and raw.shape[1] == 1:
            warnings.warn(
                "A column-vector y was passed when a 1d array was expected. Please change "
                "the shape of y to (n_samples,), for example using ravel().",
                data_conversion_warning(),
                stacklevel=3,
            )
            raw = raw[:, 0]
        if raw.ndim != 1:
            raise ValueError(
                f"{name} takes one label per point, y of shape ({n},); got shape {raw.shape} "
                "(multi-output and multilabel targets are not supported)"
            )
        if raw.shape[0] != n:
            raise ValueError(f"y has {raw.shape[0]} labels for {n} points in X")
        if raw.dtype.kind == "O" and all(
            isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) for v in raw
        ):
            raw = raw.astype(np.float64)
        if raw.dtype.kind == "f":
            if not np.isfinite(raw).all():
                raise ValueError("y contains NaN or inf")
            if not np.array_equal(raw, np.round(raw)):
                raise ValueError(
                    f"Unknown label type: continuous values in y; {name} needs class labels "
                    "(use KernelRegressor for regression)"
                )
        return raw

    def fit(self, X, y) -> KernelClassifier:
        """Fit on inputs ``X`` (n, d) and class labels ``y`` (n,) (at least two classes)."""
        from ..data import one_hot

        X = check_X(X, type(self).__name__)
        labels = self._labels(y, X.shape[0])
        try:
            classes, index = np.unique(labels, return_inverse=True)
        except TypeError as exc:  # e.g. strings mixed with numbers
            raise ValueError(f"Unknown label type: labels that do not sort ({exc})") from None
        if classes.size < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes; y has only one "
                f"class ({classes[0]!r})"
            )
        Y = one_hot(index.reshape(-1), classes.size)
        self._solve(X, Y[:, 1] if classes.size == 2 else Y)
        self.classes_ = classes
        return self

    def decision_function(self, X) -> np.ndarray:
        """Scores: (n, K) network outputs on the centred one-hot targets, or (n,) for two
        classes (the output of ``classes_[1]``, positive where it is predicted)."""
        return self._cross(self._check_fitted(X), gradients=False)[:, 0]

    def predict(self, X) -> np.ndarray:
        """Predicted labels (n,): ``classes_[argmax(decision_function(X))]`` (for two classes,
        ``classes_[1]`` where the score is positive)."""
        scores = self.decision_function(X)
        index = (scores > 0).astype(np.intp) if scores.ndim == 1 else np.argmax(scores, axis=1)
        return self.classes_[index]

    def score(self, X, y) -> float:
        """Accuracy: the fraction of points whose label is predicted."""
        pred = self.predict(X)
        y = np.asarray(y).reshape(-1)
        if y.shape != pred.shape:
            raise ValueError(f"y must hold {pred.shape[0]} labels, got shape {y.shape}")
        return float(np.mean(pred == y))
