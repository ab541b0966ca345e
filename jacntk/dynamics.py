"""Training dynamics of the infinite-width network and its input gradient (math.md §4.4, §4.5).

Under Jacobian-regularised gradient flow on ``L = 1/(2N) sum_i [(f(x_i) - y_i)^2 +
lam |grad_x f(x_i)|^2]`` with learning rate ``eta``, the value and input gradient at any point
``x`` follow (``D = I_N (x) diag(1, lam, ..., lam)``, ``B = D^{1/2} Theta D^{1/2}``, and
``c = eta kappa^2 / N`` for the kappa-free kernel of math.md §4.4 -- i.e. ``c = eta / N`` for
jacntk's kernels, which carry ``kappa^2`` (math.md §0.1); ``t`` counts gradient steps)::

    F_t(x) = F_0(x) + Theta(x, X) D^{1/2} phi_t(B) D^{1/2} (Y - F_0(X)),
    phi_t(s) = (1 - exp(-c t s)) / s,        phi_inf(B) = B^+,

and after ``k`` steps of gradient descent ``phi_t`` is replaced by
``psi_k(s) = (1 - (1 - c s)^k) / s``.  ``Y`` holds the targets in the value slots and zeros in
the gradient slots.  With ``lam = 0`` only the values enter the system (``B`` is the scalar
Gram) and the gradient predictions come from the cross blocks alone.

Solves use the symmetric ``B`` (+ optional jitter ``epsilon I``): Lanczos for all finite times
in one Krylov basis, preconditioned CG for ``t = inf``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from .arch import MLP
from .blocks import augment
from .fields import kernel_fields
from .kernels import kernel
from .operators import (
    CrossGram,
    DenseGram,
    GramOperator,
    ScaledGram,
    StoredGram,
    StructuredGram,
)
from .solvers import (
    ConvergenceWarning,
    block_jacobi,
    cg,
    lanczos_functions,
    nystrom,
    phi_function,
    psi_function,
)
from .validation import as_points

#: Largest matrix factorised by threaded LAPACK (see ``_dense_pinv_solve``).
THREADED_CHOLESKY_LIMIT = 12000
#: Largest system size ``N * block`` for the dense eigendecomposition of ``covariance=True``.
DENSE_LIMIT = 6000
#: ``operator='auto'`` keeps the scalar Gram / the augmented Gram dense in memory up to these
#: sizes (bytes; assembling the augmented one needs a few times its size): a dense product is
#: ~100x cheaper than recomputing the kernel for every product.
DENSE_BYTES = {False: 4 * 2**30, True: 2**30}


def is_store(obj) -> bool:
    """Whether ``obj`` is a Gram store (duck-typed: ``tile_block`` and ``points``)."""
    return hasattr(obj, "tile_block") and hasattr(obj, "missing_tiles")


def _check_nonneg(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


@dataclass
class TrainingSystem:
    """The symmetric training operator ``B = D^{1/2} Theta(X, X) D^{1/2} + jitter I``.

    Attributes
    ----------
    B : ScaledGram
    arch : MLP; kind : str
    points : (N, d) training inputs
    lam, jitter : float
    c : float, ``learning_rate / N`` (the kernel ``Theta`` here carries ``kappa^2``)
    """

    B: ScaledGram
    arch: MLP
    kind: str
    points: np.ndarray
    lam: float
    jitter: float
    c: float
    operator: str

    @property
    def n(self) -> int:
        return self.points.shape[0]

    @property
    def block(self) -> int:
        return self.B.block

    @property
    def sqrt_d(self) -> np.ndarray:
        """Diagonal of ``D^{1/2}``, (N * block,)."""
        return self.B.scale


def training_system(
    arch: MLP | None,
    X_train,
    *,
    kind: str = "ntk",
    jacobian_reg: float = 0.0,
    jitter: float = 0.0,
    learning_rate: float = 1.0,
    operator: str = "auto",
    tile: int = 1024,
    client=None,
) -> TrainingSystem:
    """Build ``B`` for the training inputs ``X_train`` (an array or a ``GramStore``).

    ``operator``: ``"auto"`` (the store if given, else dense while the matrix takes at most
    ``DENSE_BYTES``, else matrix-free), ``"dense"``, ``"structured"`` (matrix-free fields per
    tile) or ``"stored"``.
    """
    lam = _check_nonneg(jacobian_reg, "jacobian_reg")
    jitter = _check_nonneg(jitter, "jitter")
    if not (_check_nonneg(learning_rate, "learning_rate") > 0):
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    if operator not in ("auto", "dense", "structured", "stored"):
        raise ValueError(
            f"operator must be 'auto', 'dense', 'structured' or 'stored', got {operator!r}"
        )
    full = lam > 0
    if is_store(X_train):
        store = X_train
        if arch is not None and arch != store.arch:
            raise ValueError(f"arch {arch} differs from the store's {store.arch}")
        arch, kind = store.arch, store.kind
        if full and not store.jacobian:
            raise ValueError(
                f"jacobian_reg={lam} needs the Jacobian fields, but the store "
                f"{store.location.url} holds the scalar {kind} Gram (assemble with jacobian=True)"
            )
        points = store.points
        if operator in ("auto", "stored"):
            base: GramOperator = StoredGram(store, client=client, values_only=not full)
            operator = "stored"
        else:
            StoredGram(store, values_only=True)  # completeness check
    else:
        if arch is None:
            raise ValueError("arch is required unless X_train is a GramStore")
        if operator == "stored":
            raise ValueError("operator='stored' needs a GramStore as X_train")
        points = as_points(X_train, "X_train")
    n, d = points.shape
    if operator != "stored":
        size = n * (d + 1) if full else n
        if operator == "auto":
            operator = "dense" if 8 * size**2 <= DENSE_BYTES[full] else "structured"
        if operator == "dense":
            G = augment(kernel_fields(arch, points, kind=kind), points) if full else None
            if G is None:
                G = kernel(arch, points, kind=kind)
            base = DenseGram(G, d + 1 if full else 1)
        else:
            base = StructuredGram(arch, points, kind=kind, jacobian=full, tile=tile)
    # math.md's c = eta kappa^2 / N multiplies the kappa-free kernel; ours carries kappa^2.
    c = float(learning_rate) / n
    return TrainingSystem(
        ScaledGram(base, lam if full else 1.0, jitter), arch, kind, points, lam, jitter, c, operator
    )


def _check_targets(y, n: int) -> np.ndarray:
    arr = np.asarray(y, dtype=np.float64)
    if arr.ndim not in (1, 2) or arr.shape[0] != n:
        raise ValueError(
            f"y_train must have shape ({n},) or ({n}, k) to match {n} training points, "
            f"got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        bad = int(np.argwhere(~np.isfinite(arr.reshape(n, -1)).all(axis=1))[0, 0])
        raise ValueError(f"y_train contains NaN or inf (first at row {bad})")
    return arr


def training_residual(system: TrainingSystem, y, F0_train=None) -> np.ndarray:
    """``Y - F_0(X)`` point-major, shape (N * block, k): targets ``y`` (N,) or (N, k) in the
    value slots, minus the initial outputs ``F0_train`` (N, d+1) if given (gradient slots are
    ``-grad f_0`` for full augmentation)."""
    n, b = system.n, system.block
    Y = _check_targets(y, n).reshape(n, -1)
    R = np.zeros((n, b, Y.shape[1]))
    R[:, 0] = Y
    if F0_train is not None:
        R[:, 0] -= F0_train[:, :1]
        if b > 1:
            R[:, 1:] = -F0_train[:, 1:, None]
    return R.reshape(n * b, -1)


def _augmented_f0(part, n: int, d: int, name: str) -> np.ndarray:
    """``F_0`` at ``n`` points as (n, d+1): values and gradients (zeros where not given)."""
    out = np.zeros((n, d + 1))
    if isinstance(part, tuple):
        if len(part) != 2:
            raise ValueError(f"{name}: expected (values, gradients), got {len(part)} items")
        out[:, 0] = _augmented_f0(part[0], n, d, name)[:, 0]
        g = np.asarray(part[1], dtype=np.float64)
        if g.shape != (n, d) or not np.isfinite(g).all():
            raise ValueError(
                f"{name} gradients must be finite with shape ({n}, {d}), got {g.shape}"
            )
        out[:, 1:] = g
        return out
    a = np.asarray(part, dtype=np.float64)
    if a.shape == (n,):
        out[:, 0] = a
    elif a.shape == (n, d + 1):
        out[:] = a
    else:
        raise ValueError(
            f"{name} must have shape ({n},) (values) or ({n}, {d + 1}) (value and gradient), "
            f"or be a (values, gradients) pair; got shape {a.shape}"
        )
    if not np.isfinite(out).all():
        raise ValueError(f"{name} contains NaN or inf")
    return out


def initial_outputs(f0, X_train: np.ndarray, X_test: np.ndarray):
    """``F_0`` at the training and test points as (N, d+1) and (n_test, d+1) arrays.

    ``f0`` is None (the mean predictor: zero), a callable ``f0(X)`` returning values ``(n,)``
    or ``(values (n,), gradients (n, d))``, or a pair ``(F0_train, F0_test)`` whose parts are
    values ``(n,)``, augmented ``(n, d+1)`` or ``(values, gradients)`` pairs.
    """
    n, d = X_train.shape
    m = X_test.shape[0]
    if f0 is None:
        return np.zeros((n, d + 1)), np.zeros((m, d + 1))
    if callable(f0):
        return (
            _augmented_f0(f0(X_train), n, d, "f0(X_train)"),
            _augmented_f0(f0(X_test), m, d, "f0(X_test)"),
        )
    if isinstance(f0, (tuple, list)) and len(f0) == 2:
        return (
            _augmented_f0(f0[0], n, d, "f0 train part"),
            _augmented_f0(f0[1], m, d, "f0 test part"),
        )
    raise ValueError(
        "f0 must be None, a callable f0(X) -> values or (values, gradients), or a pair "
        f"(F0_train, F0_test); got {type(f0).__name__}"
    )


def _preconditioner(B: ScaledGram, preconditioner, rank: int):
    if preconditioner is None or preconditioner == "none":
        return None
    if preconditioner == "block-jacobi":
        return block_jacobi(B)
    if preconditioner == "nystrom":
        return nystrom(B, min(rank, B.shape[0] - 1))
    if hasattr(preconditioner, "matmat"):
        return preconditioner
    raise ValueError(
        "preconditioner must be 'block-jacobi', 'nystrom', None or an operator, got "
        f"{preconditioner!r}"
    )


@dataclass
class Coefficients:
    """``Z[j] = D^{1/2} filter_j(B) D^{1/2} (Y - F_0(X))``: prediction = ``Theta(x, X) Z[j]``.

    Attributes
    ----------
    times : (T,) times (``steps`` * learning_rate for discrete GD)
    Z : (T, N * block, k)
    diagnostics : dict
    """

    times: np.ndarray
    Z: np.ndarray
    diagnostics: dict = field(default_factory=dict)


def _check_schedule(times, steps, learning_rate: float):
    if (times is None) == (steps is None):
        raise ValueError("give exactly one of times= (gradient flow) or steps= (gradient descent)")
    if steps is not None:
        k = np.atleast_1d(np.asarray(steps))
        if k.ndim != 1 or k.size == 0 or not np.issubdtype(k.dtype, np.integer) or (k < 0).any():
            raise ValueError(f"steps must be a list of integers >= 0, got {steps!r}")
        return k.astype(float) * learning_rate, k.astype(np.int64)
    t = np.atleast_1d(np.asarray(times, dtype=np.float64))
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"times must be a non-empty list of numbers, got {times!r}")
    if np.isnan(t).any() or (t < 0).any():
        raise ValueError(f"times must be >= 0 (float('inf') allowed), got {t.tolist()}")
    return t, None


def _dense_pinv_solve(B: ScaledGram, rhs: np.ndarray) -> tuple[np.ndarray, str]:
    """``phi_inf(B) rhs = B^+ rhs`` for a dense ``B``: Cholesky when ``B`` is numerically
    positive definite, else the eigendecomposition with eigenvalues below
    ``n eps lambda_max`` treated as zero (the pseudo-inverse of math.md §4.4)."""
    from scipy.linalg import LinAlgError, cho_factor, cho_solve, eigh

    def scaled_copy() -> np.ndarray:
        """``D^{1/2} Theta D^{1/2} + jitter I`` as one new array."""
        A = B.base.to_dense() * B.scale[:, None]
        A *= B.scale[None, :]
        A.flat[:: A.shape[0] + 1] += B.jitter
        return A

    A = scaled_copy()  # factorised in place below
    # OpenBLAS 0.3.31's threaded Cholesky segfaults from n ~ 16000 (measured here); one BLAS
    # thread is safe there.
    threads = 1 if A.shape[0] > THREADED_CHOLESKY_LIMIT else None
    try:
        # A is exactly symmetric, so its transpose is the same matrix in Fortran order: LAPACK
        # factorises that view in place (A itself would be copied to Fortran order first).
        with threadpool_limits(limits=threads, user_api="blas"):
            factor = cho_factor(A.T, lower=True, overwrite_a=True, check_finite=False)
        return cho_solve(factor, rhs), "cholesky"
    except LinAlgError:
        A = scaled_copy()  # the failed factorisation overwrote A
        with threadpool_limits(limits=threads, user_api="blas"):
            w, V = eigh(0.5 * (A + A.T), check_finite=False)
        keep = w > A.shape[0] * np.finfo(float).eps * max(w[-1], 0.0)
        return V[:, keep] @ ((V[:, keep].T @ rhs) / w[keep, None]), "eigh (pseudo-inverse)"


def solve_coefficients(
    system: TrainingSystem,
    residual: np.ndarray,
    *,
    times=None,
    steps=None,
    learning_rate: float = 1.0,
    tol: float = 1e-10,
    maxiter: int | None = None,
    preconditioner="block-jacobi",
    rank: int = 100,
    callback=None,
) -> Coefficients:
    """Dual coefficients for every time: Lanczos for finite times (one Krylov basis per target
    column); for ``t = inf`` a direct solve when ``B`` is dense in memory, else preconditioned
    CG on ``B`` (+ jitter).

    Parameters
    ----------
    residual : (N * block, k)
        ``Y - F_0(X)``, point-major.
    """
    t, k = _check_schedule(times, steps, learning_rate)
    B, c = system.B, system.c
    rs = system.sqrt_d[:, None] * residual
    Z = np.zeros((t.size, rs.shape[0], rs.shape[1]))
    diag: dict = {"c": c, "jitter": system.jitter, "operator": system.operator, "lanczos": []}
    finite = [i for i in range(t.size) if np.isfinite(t[i]) and t[i] > 0]
    if finite:
        fns = [
            psi_function(c, int(k[i])) if k is not None else phi_function(c, t[i]) for i in finite
        ]
        # one Krylov basis per target column, all advanced by one product per step
        res = lanczos_functions(B, rs, fns, tol=tol, maxiter=maxiter, callback=callback, warn=False)
        Z[finite] = res.values
        ritz_max = res.ritz_max
        diag["lanczos"].append(res.summary())
        for j in np.flatnonzero(~res.converged.all(axis=0)):
            warnings.warn(
                ConvergenceWarning(
                    f"Lanczos did not reach tol {tol:g} for output {j}: max error estimate "
                    f"{float(res.error_estimates[:, j].max()):.2e} ({res.summary()})"
                ),
                stacklevel=3,
            )
        diag["ritz_max"] = ritz_max
        if k is not None and c * ritz_max >= 2.0:
            warnings.warn(
                f"gradient descent is unstable: c * lambda_max(B) = {c * ritz_max:.3g} >= 2 "
                f"(learning rate below {2 * learning_rate / (c * ritz_max):.3g} is stable)",
                RuntimeWarning,
                stacklevel=3,
            )
    inf = [i for i in range(t.size) if np.isinf(t[i])]
    if inf and system.operator == "dense":
        # In memory: a direct solve beats CG on these ill-conditioned matrices (math.md §6.4).
        x, diag["solver"] = _dense_pinv_solve(B, rs)
        Z[inf] = x
    elif inf:
        diag["solver"] = "cg"
        M = _preconditioner(B, preconditioner, rank)
        cg_cb = None if callback is None else (lambda it, r: callback(it, r))
        res = cg(B, rs, M=M, tol=tol, maxiter=maxiter, callback=cg_cb, warn=False)
        diag["cg"] = res.summary()
        diag["cg_result"] = res
        if not res.converged.all():
            warnings.warn(
                ConvergenceWarning(
                    f"CG at t=inf did not converge: {res.summary()} (tol {tol:g}); "
                    + "; ".join(res.messages[:3])
                    + ". B is likely numerically singular: use jitter > 0, a finite time, "
                    "or more depth / standardised inputs (math.md §6.4)"
                ),
                stacklevel=3,
            )
        Z[inf] = res.x.reshape(rs.shape)
    Z *= system.sqrt_d[None, :, None]
    return Coefficients(t, Z, diag)


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
    from .solvers import extreme_eigenvalues

    if lambda_max is None:
        lambda_max = extreme_eigenvalues(system.B).largest
    return 2.0 * system.n / lambda_max


__all__ = [
    "Coefficients",
    "Prediction",
    "TrainingSystem",
    "cross_product",
    "initial_outputs",
    "max_stable_learning_rate",
    "predict",
    "solve_coefficients",
    "training_residual",
    "training_system",
]
