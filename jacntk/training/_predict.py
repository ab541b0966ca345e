"""``predict``: values and input gradients of the trained infinite-width network."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..arch import MLP
from ..kernels._compute import kernel
from ..linalg._lanczos import phi_function, pseudo_inverse_filter, psi_function
from ..linalg._scaled import CrossGram
from ..options import UNSET, OperatorOptions, SolverOptions, resolve_options
from ..validation import as_points, check_targets
from ._coefficients import SolveDiagnostics, solve_coefficients
from ._system import (
    DENSE_LIMIT,
    TrainingSystem,
    initial_outputs,
    training_residual,
    training_system,
)


@dataclass
class Prediction:
    """Value and input-gradient predictions of the trained infinite-width network.

    Attributes
    ----------
    times : (T,)
    values : (T, n_test) or (T, n_test, k) for k target columns
    gradients : (T, n_test, d) or (T, n_test, d, k); None if not requested
    covariance : (T, n_test, n_test) predictive covariance of the values over initialisations
        (docs/math.md §8.2), or None
    diagnostics : SolveDiagnostics or None (c, jitter, operator, solver summaries)
    """

    times: np.ndarray
    values: np.ndarray
    gradients: np.ndarray | None
    covariance: np.ndarray | None = None
    diagnostics: SolveDiagnostics | None = None


def cross_product(
    system: TrainingSystem,
    X_test: np.ndarray,
    Z: np.ndarray,
    *,
    gradients: bool,
    tile: int | None = None,
) -> np.ndarray:
    """``Theta(X_test, X) Z`` for ``Z`` (T, N*block, k): (T, n_test, d+1 or 1, k).

    ``tile``: points per tile of the cross Gram; default the system's
    ``operator_options.tile``.
    """
    if tile is None:
        tile = system.operator_options.tile
    T, _, k = Z.shape
    cross = CrossGram(
        system.arch,
        X_test,
        system.points,
        kind=system.kind,
        gradients=gradients,
        jacobian_columns=system.block > 1,
        tile=tile,
    )
    out = cross.matmat(Z.transpose(1, 0, 2).reshape(Z.shape[1], T * k))
    rows = cross.rows_per
    return out.reshape(X_test.shape[0], rows, T, k).transpose(2, 0, 1, 3)


def training_predictions(system: TrainingSystem, Z: np.ndarray, *, gradients: bool) -> np.ndarray:
    """``F_t(X) - F_0(X) = Theta(X, X) Z`` at the training points for ``Z`` (T, N*block, k)
    (:attr:`Coefficients.Z`): (T, N, d+1 or 1, k), values first, then input gradients.

    With the Jacobian system (``block = d+1``) this is one product with the training operator
    itself (``Theta`` without ``D`` and jitter: dense, matrix-free or stored, no new kernel
    evaluation); with the scalar system and ``gradients=True`` the gradient rows come from
    the cross Gram of the training points with themselves (:func:`cross_product`).
    """
    n, b = system.n, system.block
    T, rows, k = Z.shape
    if rows != n * b:
        raise ValueError(f"Z must have shape (T, {n * b}, k) for this system, got {Z.shape}")
    if gradients and b == 1:
        return cross_product(system, system.points, Z, gradients=True)
    flat = system.B.base.matmat(Z.transpose(1, 0, 2).reshape(n * b, T * k))
    out = np.asarray(flat).reshape(n, b, T, k).transpose(2, 0, 1, 3)
    return out if gradients else out[:, :, :1]


def predict(
    arch: MLP | None,
    X_train,
    y_train,
    X_test,
    *,
    times=None,
    kind: str = "ntk",
    jacobian_reg: float = 0.0,
    learning_rate: float = 1.0,
    f0=None,
    steps=None,
    jitter: float = 0.0,
    gradients: bool = True,
    covariance: bool = False,
    solver: SolverOptions | None = None,
    operator_options: OperatorOptions | None = None,
    operator=UNSET,
    preconditioner=UNSET,
    rank=UNSET,
    tol=UNSET,
    maxiter=UNSET,
    tile=UNSET,
    client=UNSET,
    callback=None,
) -> Prediction:
    """Predictions of the infinite-width network trained by Jacobian-regularised gradient flow.

    ``F_t(x) = F_0(x) + Theta(x, X) D^{1/2} phi_t(B) D^{1/2} (Y - F_0(X))`` at every requested
    time (docs/math.md §8.2; ``psi_k`` for ``steps``), ``c = learning_rate * kappa^2 / N`` times the
    kappa-free kernel (= ``learning_rate / N`` times jacntk's kernel, which carries ``kappa^2``).

    Parameters
    ----------
    arch : MLP (may be None when ``X_train`` is a ``GramStore``)
    X_train : (N, d) array or ``GramStore`` (its points, architecture and kind are used)
    y_train : (N,) or (N, k) targets
    X_test : (n_test, d)
    times : list of float >= 0, may include ``float("inf")`` (gradient-flow times)
    kind : "ntk" (trained network) or "nngp" (the NNGP posterior mean at t = inf) or
        "ntk_truncated"
    jacobian_reg : lam >= 0; 0 is plain training (values only in the system)
    learning_rate : eta > 0
    f0 : None (mean predictor), callable ``f0(X)``, or ``(F0_train, F0_test)``; see
        :func:`initial_outputs`
    steps : list of int, instead of ``times``: ``k`` steps of gradient descent (``psi_k``)
    jitter : explicit ridge epsilon on B (reported in diagnostics)
    gradients : also predict input gradients (costs the fields of the cross-Gram)
    covariance : also the predictive covariance of the values over initialisations (dense;
        small problems only)
    solver : SolverOptions, optional
        ``tol``, ``maxiter`` (relative tolerance and iteration cap of Lanczos and CG),
        ``preconditioner`` ("block-jacobi", "nystrom", "none"/None or an operator; CG at
        t = inf) and ``rank`` (of "nystrom"); default ``SolverOptions()``.
    operator_options : OperatorOptions, optional
        ``operator`` ("auto", "dense", "structured", "stored"; see :func:`training_system`),
        ``tile`` (points per tile of matrix-free products), ``cache``, ``client``
        (distributed.Client for a stored Gram's products); default ``OperatorOptions()``.
    operator, preconditioner, rank, tol, maxiter, tile, client
        Shorthands for the fields of ``solver`` and ``operator_options``; giving one that
        differs from a given options object raises ValueError
        (:func:`jacntk.options.resolve_options`).
    callback : ``callback(iteration, residuals_or_error_estimates)`` progress hook

    Returns
    -------
    Prediction
        ``.values`` (T, n_test) and ``.gradients`` (T, n_test, d) (a trailing k axis for 2-D
        targets).
    """
    solver, operator_options = resolve_options(
        solver,
        operator_options,
        tol=tol,
        maxiter=maxiter,
        preconditioner=preconditioner,
        rank=rank,
        operator=operator,
        tile=tile,
        client=client,
    )
    system = training_system(
        arch,
        X_train,
        kind=kind,
        jacobian_reg=jacobian_reg,
        jitter=jitter,
        learning_rate=learning_rate,
        operator_options=operator_options,
    )
    X_test = as_points(X_test, "X_test")
    n, d = system.points.shape
    if X_test.shape[1] != d:
        raise ValueError(f"X_test has d={X_test.shape[1]} but the training points have d={d}")
    y = check_targets(y_train, n)
    multi = y.ndim == 2
    F0_train, F0_test = initial_outputs(f0, system.points, X_test)
    if f0 is not None and multi:
        raise ValueError("f0 is supported for a single target column only")
    coef = solve_coefficients(
        system,
        training_residual(system, y, F0_train),
        times=times,
        steps=steps,
        learning_rate=learning_rate,
        solver=solver,
        callback=callback,
    )
    out = cross_product(system, X_test, coef.Z, gradients=gradients)
    out[:, :, 0] += F0_test[None, :, :1]
    if gradients:
        out[:, :, 1:] += F0_test[None, :, 1:, None]
    values = out[:, :, 0]
    grads = out[:, :, 1:] if gradients else None
    if not multi:
        values = values[..., 0]
        grads = None if grads is None else grads[..., 0]
    cov = None
    if covariance:
        cov = _predictive_covariance(system, X_test, coef.times, steps)
    return Prediction(coef.times, values, grads, cov, coef.diagnostics)


def _predictive_covariance(system: TrainingSystem, X_test, times, steps) -> np.ndarray:
    """Dense ``Cov(f_t(x), f_t(x'))`` over initialisations ``F_0 ~ GP(0, Sigma)``
    (docs/math.md §8.4)::

        A_t = Theta(x, X) D^{1/2} filter_t(B) D^{1/2},
        Cov = Sigma(x, x') - A_t Sigma(X, x') - Sigma(x, X) A_t^T + A_t Sigma(X, X) A_t^T

    (values only; ``Sigma`` is the NNGP kernel, which carries ``kappa^2``).
    """
    n, d = system.points.shape
    b = system.block
    if n * b > DENSE_LIMIT:
        raise ValueError(
            f"covariance needs a dense eigendecomposition of size {n * b} > {DENSE_LIMIT}"
        )
    arch, X = system.arch, system.points
    full = b > 1
    Bd = system.B.to_dense()
    w, V = np.linalg.eigh(0.5 * (Bd + Bd.T))
    s = system.sqrt_d
    if full:
        theta_tX = kernel(arch, X_test, X, kind=system.kind, jacobian=True)[:: d + 1]
        sig_XX = kernel(arch, X, kind="nngp", jacobian=True)
        sig_tX = kernel(arch, X_test, X, kind="nngp", jacobian=True)[:: d + 1]
    else:
        theta_tX = kernel(arch, X_test, X, kind=system.kind)
        sig_XX = kernel(arch, X, kind="nngp")
        sig_tX = kernel(arch, X_test, X, kind="nngp")
    sig_tt = kernel(arch, X_test, kind="nngp")
    out = np.empty((len(times), X_test.shape[0], X_test.shape[0]))
    for i, t in enumerate(times):
        if np.isinf(t):
            fw = pseudo_inverse_filter(w)
        elif steps is not None:
            fw = psi_function(system.c, int(np.asarray(steps)[i]))(w)
        else:
            fw = phi_function(system.c, t)(w)
        A = ((theta_tX * s[None, :]) @ V * fw[None, :]) @ V.T * s[None, :]
        C = sig_tt - A @ sig_tX.T - sig_tX @ A.T + A @ sig_XX @ A.T
        out[i] = 0.5 * (C + C.T)
    return out


def max_stable_learning_rate(system: TrainingSystem, lambda_max: float | None = None) -> float:
    """Largest learning rate for which gradient descent is stable: ``c lambda_max(B) < 2``,
    i.e. ``eta < 2 N / lambda_max`` with ``B`` built from jacntk's kernel, which carries
    ``kappa^2`` (``lambda_max`` by Lanczos if not given)."""
    from ..linalg._lanczos import extreme_eigenvalues

    if lambda_max is None:
        lambda_max = extreme_eigenvalues(system.B).largest
    return 2.0 * system.n / lambda_max
