"""Coefficients of the trained network: ``phi_t(B) D^{1/2} (Y - F_0)`` by Cholesky,
CG or Lanczos (docs/math.md §8.2)."""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass, field, fields

import numpy as np
from threadpoolctl import threadpool_limits

from ..linalg._cg import SolveResult, cg
from ..linalg._lanczos import (
    lanczos_functions,
    phi_function,
    pseudo_inverse_filter,
    psi_function,
)
from ..linalg._preconditioners import block_jacobi, nystrom
from ..linalg._protocol import ConvergenceWarning
from ..linalg._scaled import ScaledGram
from ..linalg._stored import memory_budget_mib
from ..options import UNSET, SolverOptions, resolve_options
from ._system import THREADED_CHOLESKY_LIMIT, TrainingSystem


@dataclass(frozen=True)
class SolveDiagnostics:
    """What a solve did: the system's constants and a summary of every solver run.

    Attributes
    ----------
    c : float
        Time scale ``learning_rate / N`` of the filters.
    jitter : float
        Ridge ``epsilon`` on ``B``.
    operator : str
        ``"dense"``, ``"structured"`` or ``"stored"``.
    route : str or None
        The route taken, in words: the solver of each kind of time and where the operator's
        products read the matrix (for a stored Gram: held in memory as one dense array, its
        tiles cached, or streamed, with the sizes and the memory budget that decided it), e.g.
        ``"t = inf: direct (cholesky); finite times: Lanczos; on the stored Gram in memory
        (dense, 2 x 122 MiB; budget 11,782 MiB)"``.
    solver : str or None
        The ``t = inf`` solve: ``"cholesky"``, ``"eigh (pseudo-inverse)"`` (``B`` in memory:
        a dense Gram or a stored one that fits) or ``"cg"``; None when no time is infinite.
    preconditioner : str or None
        The preconditioner CG ran with, e.g. ``"nystrom (rank 100, mu 6.17e-01)"`` (its
        regularisation ``mu`` stated), ``"block-jacobi"`` or ``"none"``; None without CG.
    seconds : dict
        Wall-clock seconds of each step that ran: ``"read"`` (a stored Gram read into memory),
        ``"lanczos"``, ``"direct"``, ``"preconditioner"``, ``"cg"``.
    lanczos : tuple of str
        Summary of the Lanczos run of the finite times (empty when there are none).
    ritz_max : float or None
        Largest Ritz value of ``B`` seen by Lanczos (None without finite times).
    cg : str or None
        Summary of the CG run at ``t = inf`` (None when CG did not run).
    cg_result : SolveResult or None
        CG's full result (iterates, residual histories); not part of :meth:`as_dict`.
    solver_options : SolverOptions
        The options the solve ran with.

    Notes
    -----
    Read-only mapping access (``diagnostics["c"]``, ``"cg" in diagnostics``, ``.get``,
    ``.keys()``, ``.items()``) is kept for code written against the former dict: its keys are
    the attributes that are set (not None), ``solver_options`` aside.
    """

    c: float
    jitter: float
    operator: str
    route: str | None = None
    solver: str | None = None
    lanczos: tuple[str, ...] = ()
    ritz_max: float | None = None
    cg: str | None = None
    preconditioner: str | None = None
    seconds: dict = field(default_factory=dict, compare=False)
    cg_result: SolveResult | None = field(default=None, compare=False, repr=False)
    solver_options: SolverOptions = field(default_factory=SolverOptions)

    def as_dict(self) -> dict:
        """JSON-ready dict of the attributes that are set, without ``cg_result`` (its summary is
        ``cg``); ``solver_options`` as a nested dict (an operator preconditioner as its repr)."""
        out = {name: value for name, value in self.items() if name != "cg_result"}
        out["lanczos"] = list(self.lanczos)
        out["solver_options"] = {
            f.name: _json_value(getattr(self.solver_options, f.name)) for f in fields(SolverOptions)
        }
        return out

    # ---- read-only mapping view (the former diagnostics dict) -------------------------------

    def keys(self) -> list[str]:
        return [
            f.name
            for f in fields(self)
            if f.name != "solver_options" and getattr(self, f.name) is not None
        ]

    def items(self) -> list[tuple[str, object]]:
        return [(name, getattr(self, name)) for name in self.keys()]

    def get(self, key: str, default=None):
        return getattr(self, key) if key in self else default

    def __getitem__(self, key: str):
        if key not in self:
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key) -> bool:
        return key in self.keys()

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())


def _json_value(value):
    return value if value is None or isinstance(value, (str, int, float)) else repr(value)


def _preconditioner(B: ScaledGram, preconditioner, rank: int):
    """The CG preconditioner and its description (:attr:`SolveDiagnostics.preconditioner`).

    ``"block-jacobi"`` on a block-1 (scalar) Gram would be a diagonal scaling, which does not
    help these kernel matrices (their diagonal is nearly constant; 3,650 iterations on the
    demo's Gram): the randomised Nystrom preconditioner of rank ``rank`` runs instead (about 3x
    fewer iterations at rank 100 on that Gram), with its regularisation ``mu`` -- the jitter
    when it is positive, else the smallest retained Nystrom eigenvalue -- stated.
    """
    if preconditioner is None or preconditioner == "none":
        return None, "none"
    if preconditioner == "block-jacobi" and B.block > 1:
        return block_jacobi(B), "block-jacobi"
    if preconditioner in ("nystrom", "block-jacobi"):
        k = min(rank, B.shape[0] - 1)
        M = nystrom(B, k)
        note = "" if preconditioner == "nystrom" else " for block-jacobi of a scalar Gram"
        return M, f"nystrom (rank {k}, mu {M.mu:.3g}){note}"
    if hasattr(preconditioner, "matmat"):
        return preconditioner, repr(preconditioner)
    raise ValueError(
        "preconditioner must be 'block-jacobi', 'nystrom', None or an operator, got "
        f"{preconditioner!r}"
    )


def _where(system: TrainingSystem) -> str:
    """Where the products of ``system.B`` read the matrix, in words."""
    base = system.B.base
    if system.operator == "stored":
        return f"the stored Gram {base.residency}"
    if system.operator == "dense":
        return "the Gram in memory (dense)"
    return "the matrix-free Gram (fields recomputed per product)"


@dataclass
class Coefficients:
    """``Z[j] = D^{1/2} filter_j(B) D^{1/2} (Y - F_0(X))``: prediction = ``Theta(x, X) Z[j]``.

    Attributes
    ----------
    times : (T,) times (``steps`` * learning_rate for discrete GD)
    Z : (T, N * block, k)
    diagnostics : SolveDiagnostics or None
    """

    times: np.ndarray
    Z: np.ndarray
    diagnostics: SolveDiagnostics | None = None


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


def _run_lanczos(B, rs: np.ndarray, fns, opts: SolverOptions, maxiter, callback):
    """Lanczos on ``B`` from ``rs`` with the basis ``opts.lanczos_basis`` asks for; returns
    ``(result, basis used)``.

    ``"auto"``: the full basis for as many steps as fit the memory budget
    (:func:`jacntk.linalg._stored.memory_budget_mib`, ``8 n k`` bytes per step); a run that has
    not converged by then starts again with the two-pass basis (client memory O(n k)), so the
    extra cost is at most the steps that fit, and only for runs longer than the budget.
    """
    n, k = rs.shape
    steps = min(n, 1000 if maxiter is None else int(maxiter))
    run = functools.partial(
        lanczos_functions, B, rs, fns, tol=opts.tol, callback=callback, warn=False
    )
    if opts.lanczos_basis != "auto":
        return run(maxiter=maxiter, basis=opts.lanczos_basis), opts.lanczos_basis
    fit = int(memory_budget_mib() * 2**20 // (8.0 * n * k))
    if fit >= steps:
        return run(maxiter=maxiter, basis="memory"), "memory"
    if fit >= 1:
        res = run(maxiter=fit, basis="memory")
        if res.converged.all():
            return res, "memory"
    return run(maxiter=maxiter, basis="two-pass"), "two-pass"


def _dense_pinv_solve(B: ScaledGram, rhs: np.ndarray) -> tuple[np.ndarray, str]:
    """``phi_inf(B) rhs = B^+ rhs`` for a dense ``B``: Cholesky when ``B`` is numerically
    positive definite, else the eigendecomposition with eigenvalues below
    ``n eps lambda_max`` treated as zero (:func:`jacntk.linalg._lanczos.pseudo_inverse_filter`;
    the pseudo-inverse of docs/math.md §8.3)."""
    from scipy.linalg import LinAlgError, cho_factor, cho_solve, eigh

    A = B.dense_copy()  # factorised in place below
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
        A = B.dense_copy()  # the failed factorisation overwrote A
        with threadpool_limits(limits=threads, user_api="blas"):
            w, V = eigh(0.5 * (A + A.T), check_finite=False)
        return V @ (pseudo_inverse_filter(w)[:, None] * (V.T @ rhs)), "eigh (pseudo-inverse)"


def solve_coefficients(
    system: TrainingSystem,
    residual: np.ndarray,
    *,
    times=None,
    steps=None,
    learning_rate: float = 1.0,
    solver: SolverOptions | None = None,
    tol=UNSET,
    maxiter=UNSET,
    preconditioner=UNSET,
    rank=UNSET,
    callback=None,
) -> Coefficients:
    """Dual coefficients for every time: block Lanczos for finite times (one Krylov space shared
    by the target columns and all times); for ``t = inf`` a direct solve (Cholesky, the
    pseudo-inverse by eigendecomposition where ``B`` is not numerically positive definite) when
    ``B`` is in memory -- a dense Gram, or a stored one that :class:`jacntk.linalg.StoredGram`
    holds dense because it fits -- else preconditioned CG on ``B`` (+ jitter): a scalar Gram
    with the default ``"block-jacobi"`` runs the Nystrom preconditioner instead (see
    ``_preconditioner``). The route taken is :attr:`SolveDiagnostics.route`.

    Parameters
    ----------
    system : TrainingSystem
    residual : (N * block, k)
        ``Y - F_0(X)``, point-major.
    times, steps, learning_rate
        Gradient-flow times or gradient-descent step counts (exactly one), see
        :func:`jacntk.predict`.
    solver : SolverOptions, optional
        Tolerance, iteration cap, preconditioner and its rank; default ``SolverOptions()``.
    tol, maxiter, preconditioner, rank
        Shorthands for the fields of ``solver`` (see :func:`jacntk.options.resolve_options`).
    callback : ``callback(iteration, residuals_or_error_estimates)``, optional

    Returns
    -------
    Coefficients
        ``.diagnostics`` is a :class:`SolveDiagnostics`.
    """
    opts, _ = resolve_options(
        solver, None, tol=tol, maxiter=maxiter, preconditioner=preconditioner, rank=rank
    )
    tol, maxiter = opts.tol, opts.maxiter
    t, k = _check_schedule(times, steps, learning_rate)
    B, c = system.B, system.c
    rs = system.sqrt_d[:, None] * residual
    Z = np.zeros((t.size, rs.shape[0], rs.shape[1]))
    diag: dict = {"lanczos": ()}
    seconds: dict[str, float] = {}
    if system.operator == "stored" and B.base.dense:
        start = time.perf_counter()
        B.base.load()  # read once, timed on its own; every later product is in memory
        seconds["read"] = time.perf_counter() - start
    finite = [i for i in range(t.size) if np.isfinite(t[i]) and t[i] > 0]
    if finite:
        fns = [
            psi_function(c, int(k[i])) if k is not None else phi_function(c, t[i]) for i in finite
        ]
        # one block Krylov space for all target columns and times: one product per step
        start = time.perf_counter()
        res, basis = _run_lanczos(B, rs, fns, opts, maxiter, callback)
        seconds["lanczos"] = time.perf_counter() - start
        Z[finite] = res.values
        ritz_max = res.ritz_max
        diag["lanczos"] = (res.summary(),)
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
    route = []
    if inf and (system.operator == "dense" or getattr(B.base, "dense", False)):
        # In memory: a direct solve beats CG on these ill-conditioned matrices (docs/math.md §9.4).
        # A stored Gram is held in memory when StoredGram decided it fits (its one rule).
        start = time.perf_counter()
        x, diag["solver"] = _dense_pinv_solve(B, rs)
        seconds["direct"] = time.perf_counter() - start
        route.append(f"t = inf: direct ({diag['solver']})")
        Z[inf] = x
    elif inf:
        diag["solver"] = "cg"
        start = time.perf_counter()
        M, diag["preconditioner"] = _preconditioner(B, opts.preconditioner, opts.rank)
        seconds["preconditioner"] = time.perf_counter() - start
        route.append(
            "t = inf: CG, unpreconditioned"
            if diag["preconditioner"] == "none"
            else f"t = inf: CG with the {diag['preconditioner']} preconditioner"
        )
        cg_cb = None if callback is None else (lambda it, r: callback(it, r))
        start = time.perf_counter()
        res = cg(B, rs, M=M, tol=tol, maxiter=maxiter, callback=cg_cb, warn=False)
        seconds["cg"] = time.perf_counter() - start
        diag["cg"] = res.summary()
        diag["cg_result"] = res
        if not res.converged.all():
            warnings.warn(
                ConvergenceWarning(
                    f"CG at t=inf did not converge: {res.summary()} (tol {tol:g}); "
                    + "; ".join(res.messages[:3])
                    + ". B is likely numerically singular: use jitter > 0, a finite time, "
                    "or more depth / standardised inputs (docs/math.md §9.4)"
                ),
                stacklevel=3,
            )
        Z[inf] = res.x.reshape(rs.shape)
    if finite:
        route.append("finite times: Lanczos" + (" (two-pass basis)" if basis == "two-pass" else ""))
    Z *= system.sqrt_d[None, :, None]
    diag["route"] = "; ".join(route + [f"on {_where(system)}"])
    diagnostics = SolveDiagnostics(
        c, system.jitter, system.operator, **diag, seconds=seconds, solver_options=opts
    )
    return Coefficients(t, Z, diagnostics)
