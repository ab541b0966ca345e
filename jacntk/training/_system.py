"""Training dynamics of the infinite-width network and its input gradient (docs/math.md §8.2, §8.6).

Under Jacobian-regularised gradient flow on ``L = 1/(2N) sum_i [(f(x_i) - y_i)^2 +
lam |grad_x f(x_i)|^2]`` with learning rate ``eta``, the value and input gradient at any point
``x`` follow (``D = I_N (x) diag(1, lam, ..., lam)``, ``B = D^{1/2} Theta D^{1/2}``, and
``c = eta kappa^2 / N`` for the kappa-free kernel of docs/math.md §8.2 -- i.e. ``c = eta / N`` for
jacntk's kernels, which carry ``kappa^2`` (docs/math.md §1.1); ``t`` counts gradient steps)::

    F_t(x) = F_0(x) + Theta(x, X) D^{1/2} phi_t(B) D^{1/2} (Y - F_0(X)),
    phi_t(s) = (1 - exp(-c t s)) / s,        phi_inf(B) = B^+,

and after ``k`` steps of gradient descent ``phi_t`` is replaced by
``psi_k(s) = (1 - (1 - c s)^k) / s``.  ``Y`` holds the targets in the value slots and zeros in
the gradient slots.  With ``lam = 0`` only the values enter the system (``B`` is the scalar
Gram) and the gradient predictions come from the cross blocks alone.

Solves use the symmetric ``B`` (+ optional jitter ``epsilon I``): Lanczos for all finite times
in one Krylov basis; for ``t = inf`` a direct solve when ``B`` is in memory (a dense Gram, or a
stored one that fits), else preconditioned CG.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..arch import MLP
from ..kernels._compute import kernel
from ..linalg._gram import DenseGram, GramOperator, StructuredGram
from ..linalg._scaled import ScaledGram
from ..linalg._stored import StoredGram
from ..options import UNSET, OperatorOptions, resolve_options
from ..validation import as_points, check_nonnegative, check_targets

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
    operator : str
        The operator chosen: ``"dense"``, ``"structured"`` or ``"stored"``.
    operator_options : OperatorOptions
        The options it was built with (their ``tile`` also serves the cross Gram).
    """

    B: ScaledGram
    arch: MLP
    kind: str
    points: np.ndarray
    lam: float
    jitter: float
    c: float
    operator: str
    operator_options: OperatorOptions = field(default_factory=OperatorOptions)

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
    operator_options: OperatorOptions | None = None,
    operator=UNSET,
    tile=UNSET,
    client=UNSET,
) -> TrainingSystem:
    """Build ``B`` for the training inputs ``X_train`` (an array or a ``GramStore``).

    Parameters
    ----------
    operator_options : OperatorOptions, optional
        ``operator``: ``"auto"`` (the store if given -- read into memory as one dense array
        when that fits, :class:`jacntk.linalg.StoredGram` with ``dense=None``, so that
        ``t = inf`` is a direct solve -- else dense while the matrix takes at most
        ``DENSE_BYTES``, else matrix-free), ``"dense"``, ``"structured"`` (matrix-free fields
        per tile) or ``"stored"`` (the store's tiles, cached or streamed: iterative solves);
        ``tile``, ``cache`` of the matrix-free operator; ``client`` of the stored and the
        matrix-free one.
        Default: ``OperatorOptions()``.
    operator, tile, client
        Shorthands for the fields of ``operator_options`` (see
        :func:`jacntk.options.resolve_options`).
    """
    _, options = resolve_options(
        None, operator_options, operator=operator, tile=tile, client=client
    )
    operator = options.operator
    lam = check_nonnegative(jacobian_reg, "jacobian_reg")
    jitter = check_nonnegative(jitter, "jitter")
    if not (check_nonnegative(learning_rate, "learning_rate") > 0):
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
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
            # "auto": held in memory (and solved directly at t = inf) when it fits, the one
            # decision of StoredGram; "stored": tiles, cached or streamed (iterative solves)
            base: GramOperator = StoredGram(
                store,
                client=options.client,
                values_only=not full,
                dense=None if operator == "auto" else False,
            )
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
            base = DenseGram(kernel(arch, points, kind=kind, jacobian=full), d + 1 if full else 1)
        else:
            base = StructuredGram(
                arch,
                points,
                kind=kind,
                jacobian=full,
                tile=options.tile,
                cache=options.cache,
                client=options.client,
            )
    # math.md's c = eta kappa^2 / N multiplies the kappa-free kernel; ours carries kappa^2.
    c = float(learning_rate) / n
    return TrainingSystem(
        ScaledGram(base, lam if full else 1.0, jitter),
        arch,
        kind,
        points,
        lam,
        jitter,
        c,
        operator,
        options,
    )


def training_residual(system: TrainingSystem, y, F0_train=None) -> np.ndarray:
    """``Y - F_0(X)`` point-major, shape (N * block, k): targets ``y`` (N,) or (N, k) in the
    value slots, minus the initial outputs ``F0_train`` (N, d+1) if given (gradient slots are
    ``-grad f_0`` for full augmentation)."""
    n, b = system.n, system.block
    Y = check_targets(y, n).reshape(n, -1)
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
