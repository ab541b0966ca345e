"""Tunables of a training solve as data: small frozen dataclasses with documented defaults.

Two concerns, composed by field (no inheritance):

- :class:`SolverOptions`: how the dual coefficients are solved for (Lanczos for finite times,
  preconditioned CG at ``t = inf`` when ``B`` is not dense in memory).
- :class:`OperatorOptions`: how the training Gram is applied (dense, matrix-free, stored), the
  tile edge of matrix-free products and the Dask client of stored products.

Every default lives here and only here: ``training_system``, ``solve_coefficients``,
``predict``, ``KernelRegressor`` and ``jacntk solve`` take these objects (``solver=``,
``operator_options=``), and their older flat keywords (``tol=``, ``maxiter=``,
``preconditioner=``, ``rank=``, ``operator=``, ``tile=``, ``cache=``, ``client=``) are mapped onto
them by :func:`resolve_options`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, fields, replace

import numpy as np

from .validation import is_integer

#: Points per tile edge of matrix-free products, and the chunk edge of a new Gram store
#: (a float64 chunk of 8 MiB).
DEFAULT_TILE = 1024

#: Values of :attr:`OperatorOptions.operator`.
OPERATORS = ("auto", "dense", "structured", "stored")
#: Named preconditioners of :attr:`SolverOptions.preconditioner` (``"none"``: plain CG).
PRECONDITIONERS = ("block-jacobi", "nystrom", "none")
LANCZOS_BASES = ("auto", "memory", "two-pass")


class _Unset(enum.Enum):
    """Type of :data:`UNSET` (an enum member survives ``copy.deepcopy`` and pickling as the
    same object, which scikit-learn's ``clone`` relies on)."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


#: Default of the flat option keywords: "not given, use the options object's value".
UNSET = _Unset.UNSET


@dataclass(frozen=True)
class SolverOptions:
    """How the dual coefficients ``phi_t(B) D^{1/2} (Y - F_0)`` are solved for.

    Finite times run block Lanczos (one Krylov space for all columns and times); ``t = inf``
    runs a direct solve (Cholesky, pseudo-inverse fallback) when ``B`` is in memory — a dense
    Gram, or a stored one that fits (``jacntk.linalg._stored.fits_in_memory``) — else
    preconditioned CG.

    Parameters
    ----------
    tol : float, default 1e-10
        Relative tolerance (> 0): CG's relative residual, Lanczos' error estimate.
    maxiter : int or None, default None
        Iteration cap (>= 1) of either solver; None: the solver's own cap (CG: ``min(10 N * block,
        20000)``, Lanczos: ``min(N * block, 1000)``).
    preconditioner : {"block-jacobi", "nystrom", "none"}, None or operator, default "block-jacobi"
        Preconditioner of CG at ``t = inf``; None and ``"none"`` both mean plain CG; an object
        with ``matmat`` is applied as it is.  ``"block-jacobi"`` on a scalar (block-1) Gram, a
        mere diagonal scaling there, runs ``"nystrom"`` instead (its ``mu`` is reported).
    rank : int, default 100
        Sketch size (>= 1) of the ``"nystrom"`` preconditioner (at most ``N * block - 1`` is
        used).
    lanczos_basis : {"auto", "memory", "two-pass"}, default "auto"
        Where Lanczos keeps its basis (``jacntk.linalg.lanczos_functions``): ``"memory"`` (all
        of it, full reorthogonalisation), ``"two-pass"`` (two blocks; the products run twice)
        or ``"auto"``: the full basis for as many steps as fit the memory budget
        (``jacntk.linalg._stored.memory_budget_mib``), and a run that needs more starts again
        with ``"two-pass"``, so the client's memory stays O(N * block * k).

    Examples
    --------
    >>> SolverOptions(tol=1e-8, preconditioner="nystrom", rank=50)
    SolverOptions(tol=1e-08, maxiter=None, preconditioner='nystrom', rank=50, lanczos_basis='auto')
    """

    tol: float = 1e-10
    maxiter: int | None = None
    preconditioner: object = "block-jacobi"
    rank: int = 100
    lanczos_basis: str = "auto"

    def __post_init__(self):
        tol = self.tol
        if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)):
            raise ValueError(f"SolverOptions.tol must be a number > 0, got {tol!r}")
        if not (math.isfinite(tol) and tol > 0):
            raise ValueError(f"SolverOptions.tol must be a finite number > 0, got {tol!r}")
        object.__setattr__(self, "tol", float(tol))
        if self.maxiter is not None:
            if not is_integer(self.maxiter) or self.maxiter < 1:
                raise ValueError(
                    f"SolverOptions.maxiter must be None or an integer >= 1, got {self.maxiter!r}"
                )
            object.__setattr__(self, "maxiter", int(self.maxiter))
        p = self.preconditioner
        if not (p is None or hasattr(p, "matmat") or (isinstance(p, str) and p in PRECONDITIONERS)):
            raise ValueError(
                "SolverOptions.preconditioner must be one of "
                f"{', '.join(map(repr, PRECONDITIONERS))}, None or an operator with matmat, "
                f"got {p!r}"
            )
        if not is_integer(self.rank) or self.rank < 1:
            raise ValueError(f"SolverOptions.rank must be an integer >= 1, got {self.rank!r}")
        object.__setattr__(self, "rank", int(self.rank))
        if self.lanczos_basis not in LANCZOS_BASES:
            raise ValueError(
                f"SolverOptions.lanczos_basis must be one of {', '.join(map(repr, LANCZOS_BASES))}"
                f", got {self.lanczos_basis!r}"
            )


@dataclass(frozen=True)
class OperatorOptions:
    """How the training Gram ``Theta(X, X)`` (and the cross Gram of predictions) is applied.

    Parameters
    ----------
    operator : {"auto", "dense", "structured", "stored"}, default "auto"
        ``"auto"``: a ``GramStore`` read into memory when it fits (else its tiles), else dense
        while the matrix fits ``DENSE_BYTES`` (jacntk.training), else matrix-free;
        ``"dense"``: the kernel matrix in memory; ``"structured"``: matrix-free, the fields of
        every tile recomputed per product; ``"stored"``: tiles read from a ``GramStore`` (always,
        and CG at ``t = inf``).
    tile : int, default ``DEFAULT_TILE`` (1024)
        Points per tile (>= 1) of matrix-free products (training and cross Gram); memory is
        ``O(tile^2)`` fields per tile.
    cache : bool, default False
        ``"structured"`` only: keep every computed tile in memory (``8 N^2 / 2`` floats), for
        faster repeated products when that fits.
    client : distributed.Client or None, default None
        Runs the products on the cluster's workers: a stored Gram held in their memory, a
        matrix-free (``"structured"``) one recomputed there; None: in this process.
    """

    operator: str = "auto"
    tile: int = DEFAULT_TILE
    cache: bool = False
    client: object = None

    def __post_init__(self):
        if not (isinstance(self.operator, str) and self.operator in OPERATORS):
            raise ValueError(
                f"operator must be one of {', '.join(map(repr, OPERATORS))}, got {self.operator!r}"
            )
        if not is_integer(self.tile) or self.tile < 1:
            raise ValueError(f"OperatorOptions.tile must be an integer >= 1, got {self.tile!r}")
        object.__setattr__(self, "tile", int(self.tile))
        if not isinstance(self.cache, (bool, np.bool_)):
            raise ValueError(f"OperatorOptions.cache must be True or False, got {self.cache!r}")
        object.__setattr__(self, "cache", bool(self.cache))


_SOLVER_FIELDS = tuple(f.name for f in fields(SolverOptions))
_OPERATOR_FIELDS = tuple(f.name for f in fields(OperatorOptions))


def _same(a, b) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # e.g. arrays
        return False


def _merged(given, cls, keywords: dict, argument: str):
    if given is None:
        return cls(**keywords)
    if not isinstance(given, cls):
        raise TypeError(f"{argument} must be a {cls.__name__} or None, got {given!r}")
    probe = replace(given, **keywords)  # validates and normalises the keywords
    for name, value in keywords.items():
        current = getattr(given, name)
        if not _same(getattr(probe, name), current):
            raise ValueError(
                f"{name}={value!r} conflicts with {argument}={given!r} "
                f"({argument}.{name} is {current!r}): give the value in one place only"
            )
    return given


def resolve_options(
    solver: SolverOptions | None = None,
    operator_options: OperatorOptions | None = None,
    **keywords,
) -> tuple[SolverOptions, OperatorOptions]:
    """The options a call runs with: ``solver`` and ``operator_options`` (their defaults when
    None), with the flat keywords that were given (not :data:`UNSET`) filled in.

    The one place where the flat keywords of ``predict`` and friends (``tol``, ``maxiter``,
    ``preconditioner``, ``rank``; ``operator``, ``tile``, ``cache``, ``client``) meet the option
    objects.  A keyword that differs from the value in a given options object is an error that
    names both; an equal one is accepted.

    Returns
    -------
    (SolverOptions, OperatorOptions)

    Examples
    --------
    >>> resolve_options(None, None, tol=1e-8, tile=UNSET)[0].tol
    1e-08
    """
    given = {name: value for name, value in keywords.items() if value is not UNSET}
    unknown = sorted(set(given) - set(_SOLVER_FIELDS) - set(_OPERATOR_FIELDS))
    if unknown:
        raise TypeError(
            f"unknown option keyword(s) {', '.join(unknown)}; solver options: "
            f"{', '.join(_SOLVER_FIELDS)}; operator options: {', '.join(_OPERATOR_FIELDS)}"
        )
    solver_kw = {k: v for k, v in given.items() if k in _SOLVER_FIELDS}
    operator_kw = {k: v for k, v in given.items() if k in _OPERATOR_FIELDS}
    return (
        _merged(solver, SolverOptions, solver_kw, "solver"),
        _merged(operator_options, OperatorOptions, operator_kw, "operator_options"),
    )
