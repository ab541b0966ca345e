"""``KernelRegressor``: the trained infinite-width network as a scikit-learn-style estimator.

It follows scikit-learn's conventions (``fit`` returns ``self``, fitted attributes end in
``_``, ``get_params``/``set_params`` mirror ``__init__``, ``score`` is R^2) without depending on
scikit-learn, so it works in ``sklearn.model_selection`` tools when scikit-learn is installed.
"""

from __future__ import annotations

import inspect
import os

import numpy as np

from ..arch import MLP
from ..options import UNSET, OperatorOptions, SolverOptions, resolve_options
from ..validation import as_points, check_targets
from ._coefficients import solve_coefficients
from ._predict import cross_product
from ._system import is_store, training_residual, training_system


class KernelRegressor:
    """Kernel regression with the NTK/NNGP (or the Jacobian-regularised JNTK) of a deep MLP,
    i.e. the prediction of the infinite-width network after training time ``time``
    (docs/math.md §8.2): ``f(x) = Theta(x, X) D^{1/2} phi_t(B) D^{1/2} Y``
    (``B^+`` at ``time=None``).

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
    store : str or None
        Path or URL of a Gram store: ``fit`` assembles the training Gram there (or reuses a
        complete store holding the same points, architecture and kind) and solves from it.
    solver : SolverOptions or None
        Tolerance, iteration cap and preconditioner of the solve (default ``SolverOptions()``).
    operator_options : OperatorOptions or None
        How the Gram is applied (default ``OperatorOptions()``); its ``client`` is also used
        for assembly.
    client, tol, maxiter, preconditioner, tile, operator
        Shorthands for fields of ``solver`` / ``operator_options`` (``UNSET``: not given);
        stored as given and resolved by ``fit`` (see :func:`jacntk.options.resolve_options`).
    """

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
        store: str | None = None,
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
        """Parameters of this estimator (the ``__init__`` arguments)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> KernelRegressor:
        """Set parameters; unknown names raise ValueError."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"invalid parameter {name!r} for KernelRegressor; valid: {', '.join(valid)}"
                )
            setattr(self, name, value)
        return self

    _estimator_type = "regressor"  # scikit-learn < 1.6

    def __sklearn_tags__(self):
        """Estimator tags for scikit-learn >= 1.6 (imported only when scikit-learn asks)."""
        from sklearn.utils import RegressorTags, Tags, TargetTags

        return Tags(
            estimator_type="regressor",
            target_tags=TargetTags(required=True, single_output=False, multi_output=True),
            regressor_tags=RegressorTags(),
        )

    def __repr__(self) -> str:
        defaults = {
            p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()
        }
        changed = [
            f"{k}={v!r}"
            for k, v in self.get_params().items()
            if defaults.get(k) is not v and defaults.get(k) != v
        ]
        return f"KernelRegressor({', '.join(changed)})"

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

    def _training_input(self, X: np.ndarray, client):
        if self.store is None:
            return X
        from ..store._assembly import assemble
        from ..store._format import fingerprint
        from ..store._reader import GramStore

        jac = self.jacobian_reg > 0
        if is_store(self.store):
            store = self.store
        else:
            path = os.fspath(self.store)
            store = None
            try:
                store = GramStore.open(path)
            except FileNotFoundError:
                pass
            if store is None or not store.complete:
                assemble(
                    self.arch,
                    X,
                    path,
                    kind=self.kind,
                    jacobian=jac,
                    client=client,
                    progress=False,
                )
                store = GramStore.open(path)
        if store.meta.get("fingerprint") not in (None, fingerprint(X)):
            raise ValueError(
                f"the store {store.location.url} holds a Gram of different points than X "
                "(fingerprint mismatch); use a new store path"
            )
        if store.arch != self.arch or store.kind != self.kind:
            raise ValueError(
                f"the store {store.location.url} holds {store.kind} of {store.arch}, but the "
                f"estimator asks for {self.kind} of {self.arch}"
            )
        return store

    def fit(self, X, y) -> KernelRegressor:
        """Solve for the dual coefficients on training inputs ``X`` (n, d), targets ``y``
        (n,) or (n, k)."""
        X = as_points(X, "X")
        y = check_targets(y, X.shape[0], "y")
        solver, operator_options = self._options()
        system = training_system(
            self.arch,
            self._training_input(X, operator_options.client),
            kind=self.kind,
            jacobian_reg=self.jacobian_reg,
            jitter=self.jitter,
            learning_rate=self.learning_rate,
            operator_options=operator_options,
        )
        coef = solve_coefficients(
            system,
            training_residual(system, y),
            times=self._times(),
            learning_rate=self.learning_rate,
            solver=solver,
        )
        self.system_ = system
        self.dual_coef_ = coef.Z[0]
        self.diagnostics_ = coef.diagnostics
        self.n_features_in_ = X.shape[1]
        self._multi = y.ndim == 2
        return self

    def _check_fitted(self, X) -> np.ndarray:
        if not hasattr(self, "dual_coef_"):
            raise ValueError("this KernelRegressor is not fitted yet; call fit(X, y) first")
        X = as_points(X, "X")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, the model was fitted with {self.n_features_in_}"
            )
        return X

    def _cross(self, X, gradients: bool) -> np.ndarray:
        out = cross_product(self.system_, X, self.dual_coef_[None], gradients=gradients)[0]
        return out if self._multi else out[..., 0]

    def predict(self, X) -> np.ndarray:
        """Predicted values, (n,) or (n, k)."""
        return self._cross(self._check_fitted(X), gradients=False)[:, 0]

    def predict_gradients(self, X) -> np.ndarray:
        """Predicted input gradients, (n, d) or (n, d, k)."""
        return self._cross(self._check_fitted(X), gradients=True)[:, 1:]

    def score(self, X, y) -> float:
        """Coefficient of determination R^2 (averaged uniformly over target columns)."""
        pred = self.predict(X)
        y = check_targets(y, pred.shape[0], "y").reshape(pred.shape)
        ss_res = ((y - pred) ** 2).sum(axis=0)
        ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
        r2 = 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0)
        return float(np.mean(r2))
