"""``predict``: values and input gradients of the trained infinite-width network."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..arch import MLP
from ..kernels._compute import kernel
from ..linalg._lanczos import phi_function, psi_function
from ..linalg._scaled import CrossGram
from ..validation import as_points
from ._coefficients import solve_coefficients
from ._system import (
    DENSE_LIMIT,
    TrainingSystem,
    _check_targets,
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
        (math.md §4.4), or None
    diagnostics : dict (c, jitter, operator, solver summaries)
    """

    times: np.ndarray
    values: np.ndarray
    gradients: np.ndarray | None
    covariance: np.ndarray | None = None
    diagnostics: dict = field(default_factory=dict)


def cross_product(
    system: TrainingSystem, X_test: np.ndarray, Z: np.ndarray, *, gradients: bool, tile: int = 1024
) -> np.ndarray:
    """``Theta(X_test, X) Z`` for ``Z`` (T, N*block, k): (T, n_test, d+1 or 1, k)."""
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
    operator: str = "auto",
    preconditioner="block-jacobi",
    rank: int = 100,
    tol: float = 1e-10,
    maxiter: int | None = None,
    tile: int = 1024,
    client=None,
    callback=None,
) -> Prediction:
    """Predictions of the infinite-width network trained by Jacobian-regularised gradient flow.

    ``F_t(x) = F_0(x) + Theta(x, X) D^{1/2} phi_t(B) D^{1/2} (Y - F_0(X))`` at every requested
    time (math.md §4.4; ``psi_k`` for ``steps``), ``c = learning_rate * kappa^2 / N`` times the
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
    operator : "auto", "dense", "structured", "stored" (see :func:`training_system`)
    preconditioner : "block-jacobi", "nystrom", None or an operator (CG at t = inf)
    rank : sketch size of the "nystrom" preconditioner
    tol, maxiter : solver tolerances (relative)
    tile : points per tile of matrix-free products
    client : distributed.Client for a stored Gram's products
    callback : ``callback(iteration, residuals_or_error_estimates)`` progress hook

    Returns
    -------
    Prediction
        ``.values`` (T, n_test) and ``.gradients`` (T, n_test, d) (a trailing k axis for 2-D
        targets).
    """
    system = training_system(
        arch,
        X_train,
        kind=kind,
        jacobian_reg=jacobian_reg,
        jitter=jitter,
        learning_rate=learning_rate,
        operator=operator,
        tile=tile,
        client=client,
    )
    X_test = as_points(X_test, "X_test")
    n, d = system.points.shape
    if X_test.shape[1] != d:
        raise ValueError(f"X_test has d={X_test.shape[1]} but the training points have d={d}")
    y = _check_targets(y_train, n)
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
        tol=tol,
        maxiter=maxiter,
        preconditioner=preconditioner,
        rank=rank,
        callback=callback,
    )
    out = cross_product(system, X_test, coef.Z, gradients=gradients, tile=tile)
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
    """Dense ``Cov(f_t(x), f_t(x'))`` over initialisations ``F_0 ~ GP(0, Sigma)`` (math.md §4.4)::

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
    cutoff = max(w.max(), 0.0) * 1e-13 * w.size
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
            fw = np.where(w > cutoff, 1.0 / np.where(w > cutoff, w, 1.0), 0.0)
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
