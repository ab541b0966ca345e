"""``jacntk solve``: kernel regression / training dynamics from a stored Gram matrix."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np

from ._arguments import (
    add_cluster_arguments,
    add_progress_arguments,
    add_storage_argument,
    add_store_kind_argument,
    check_output_file,
    cluster_options,
    storage_options,
    wants_cluster,
    write_whole,
)


def register(sub) -> None:
    from jacntk.options import OPERATORS, PRECONDITIONERS, OperatorOptions, SolverOptions

    solver, operator = SolverOptions(), OperatorOptions()
    p = sub.add_parser(
        "solve",
        help="train the infinite-width network on a stored Gram (direct / CG / Lanczos)",
        description="Predictions of the infinite-width network trained (with optional Jacobian "
        "regularisation) on the points of a Gram store, at the given training times "
        "(t = inf by default: kernel regression).  A store that fits in memory is read once "
        "and solved directly at t = inf (Cholesky); a larger one by preconditioned CG "
        "(Nystrom for a scalar Gram).  Progress: one bar per solver on stderr (iterations, "
        "residual, rate), and one summary line of the route taken.  Without --test, "
        "predictions are made at the training points.",
    )
    p.add_argument("store", metavar="STORE", help="Gram store (path or URL), complete")
    add_store_kind_argument(p)
    p.add_argument("--targets", required=True, metavar="Y.npy", help="(N,) or (N, k) targets")
    p.add_argument(
        "--one-hot",
        action="store_true",
        help="targets are integer class labels: regress on centred one-hot vectors and report "
        "accuracy",
    )
    p.add_argument("--jacobian-reg", type=float, default=0.0, metavar="LAM", help="lam >= 0")
    p.add_argument(
        "--time",
        type=float,
        nargs="+",
        default=None,
        metavar="T",
        help="training times (gradient flow; 'inf' allowed; default inf)",
    )
    p.add_argument(
        "--steps", type=int, nargs="+", default=None, metavar="K", help="gradient-descent steps"
    )
    p.add_argument("--learning-rate", type=float, default=1.0, metavar="ETA")
    p.add_argument("--jitter", type=float, default=0.0, metavar="EPS", help="ridge on B")
    p.add_argument("--test", metavar="X.npy", help="test points (default: the training points)")
    p.add_argument("--test-targets", metavar="Y.npy", help="report accuracy / RMSE on the test set")
    p.add_argument("--gradients", action="store_true", help="also predict input gradients")
    p.add_argument("--out", required=True, metavar="FILE.npz", help="where to write the results")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    group = p.add_argument_group("solver (jacntk.options.SolverOptions)")
    group.add_argument(
        "--tol",
        type=float,
        default=solver.tol,
        help="relative tolerance of CG and Lanczos (default %(default)g)",
    )
    group.add_argument(
        "--maxiter",
        type=int,
        default=solver.maxiter,
        help="iteration cap (default: the solver's own)",
    )
    group.add_argument(
        "--preconditioner",
        choices=PRECONDITIONERS,
        default=solver.preconditioner,
        help="preconditioner of CG at t = inf; 'block-jacobi' of a scalar Gram (a mere "
        "diagonal scaling) runs Nystrom instead (default %(default)s)",
    )
    group.add_argument(
        "--rank",
        type=int,
        default=solver.rank,
        metavar="K",
        help="Nystrom sketch size (default %(default)s)",
    )
    group = p.add_argument_group("operator (jacntk.options.OperatorOptions)")
    group.add_argument(
        "--operator",
        choices=OPERATORS,
        default=operator.operator,
        help="how the Gram is applied: 'auto' reads a store into memory when it fits (direct "
        "solve at t = inf), else uses its tiles; 'stored' always uses the tiles (cached or "
        "streamed: CG at t = inf) (default %(default)s)",
    )
    group.add_argument(
        "--tile",
        type=int,
        default=operator.tile,
        help="points per tile of matrix-free products (default %(default)s)",
    )
    add_storage_argument(p)
    add_progress_arguments(p)
    add_cluster_arguments(p)
    p.set_defaults(func=run)


def solver_options(args: argparse.Namespace):
    """The :class:`jacntk.options.SolverOptions` of the parsed arguments."""
    from jacntk.options import SolverOptions

    return SolverOptions(
        tol=args.tol, maxiter=args.maxiter, preconditioner=args.preconditioner, rank=args.rank
    )


def operator_options(args: argparse.Namespace, client=None):
    """The :class:`jacntk.options.OperatorOptions` of the parsed arguments (and ``client``)."""
    from jacntk.options import OperatorOptions

    return OperatorOptions(operator=args.operator, tile=args.tile, client=client)


def _load_array(path: str, name: str) -> np.ndarray:
    if not Path(path).exists():
        raise FileNotFoundError(f"{name} file {path!r} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {name} file {path!r} as .npy: {exc}") from None


class _Progress:
    """Solver progress as one tqdm bar per solver run (:func:`jacntk.progress.progress_bar`):
    iterations, the worst residual (CG) or error estimate (Lanczos), rate and elapsed time on
    one line redrawn in place.

    ``phases`` are the ``(label, measure)`` of the runs expected in order (Lanczos for finite
    times, then CG at ``t = inf``); a new run is recognised by its iteration count restarting.
    """

    def __init__(self, phases: list[tuple[str, str]], progress: bool | None):
        self.phases = phases or [("solve", "residual")]
        self.progress = progress
        self._stack = contextlib.ExitStack()
        self._bar = None
        self._phase = -1
        self._last = 0

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _next(self) -> None:
        from jacntk.progress import progress_bar

        self._stack.close()
        self._stack = contextlib.ExitStack()
        self._phase = min(self._phase + 1, len(self.phases) - 1)
        label = self.phases[self._phase][0]
        self._bar = self._stack.enter_context(progress_bar(None, label, self.progress))
        self._last = 0

    def __call__(self, iteration: int, measure) -> None:
        if self._bar is None or iteration <= self._last:
            self._next()
        worst = float(np.max(measure)) if np.size(measure) else 0.0
        self._bar.set_postfix_str(f"{self.phases[self._phase][1]} {worst:.2e}", refresh=False)
        self._bar.update(iteration - self._last)
        self._last = iteration


def _route_line(diagnostics) -> str:
    """One summary line of a solve: its route and the seconds of each step."""
    steps = ", ".join(f"{name} {sec:.2f} s" for name, sec in diagnostics.seconds.items())
    line = f"solve: {diagnostics.route}"
    if diagnostics.cg:
        line += f"; {diagnostics.cg}"
    for summary in diagnostics.lanczos:
        line += f"; {summary}"
    return line + (f" ({steps})" if steps else "")


def run(args: argparse.Namespace) -> int:
    from jacntk.data import one_hot
    from jacntk.distributed import get_client
    from jacntk.store import GramStore
    from jacntk.training import (
        cross_product,
        solve_coefficients,
        training_predictions,
        training_residual,
        training_system,
    )
    from jacntk.validation import as_points, check_nonnegative, check_targets

    out = check_output_file(args.out, overwrite=args.overwrite)
    check_nonnegative(args.jacobian_reg, "--jacobian-reg")
    if args.time is not None and args.steps is not None:
        raise ValueError("give --time or --steps, not both")
    times = args.time if args.time is not None else ([math.inf] if args.steps is None else None)
    if times is not None and any(not (t >= 0) for t in times):
        raise ValueError(f"--time values must be >= 0 (inf allowed), got {times}")
    solver = solver_options(args)
    store = GramStore.open(args.store, storage_options(args.storage_option), args.kind)
    raw = _load_array(args.targets, "--targets")
    try:
        y = one_hot(raw) if args.one_hot else np.asarray(raw, dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"--one-hot: {exc}") from None
    X_test = as_points(_load_array(args.test, "--test"), "--test") if args.test else None
    y_test = _load_array(args.test_targets, "--test-targets") if args.test_targets else None
    phases = []
    if args.steps is not None or any(0 < t < math.inf for t in times):
        phases.append(("Lanczos", "error"))
    if times is not None and math.inf in times:
        phases.append(("CG", "residual"))
    cluster = get_client(cluster_options(args)) if wants_cluster(args) else contextlib.nullcontext()
    with cluster as client:
        system = training_system(
            None,
            store,
            jacobian_reg=args.jacobian_reg,
            jitter=args.jitter,
            learning_rate=args.learning_rate,
            operator_options=operator_options(args, client),
        )
        y = check_targets(y, system.n)
        print(
            f"solve: {store.kind} of {store.arch}, N={system.n}, d={store.d}, lam={system.lam}, "
            f"jitter={system.jitter}, c={system.c:.3e}, operator {system.operator}"
            + (f" on {len(client.scheduler_info()['workers'])} workers" if client else ""),
            file=sys.stderr,
        )
        # warnings wait until the bar is closed, so that they do not break its line
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with _Progress(phases, args.progress) as progress:
                coef = solve_coefficients(
                    system,
                    training_residual(system, y),
                    times=times,
                    steps=args.steps,
                    learning_rate=args.learning_rate,
                    solver=solver,
                    callback=progress,
                )
        for w in caught:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        print(_route_line(coef.diagnostics), file=sys.stderr)
        if X_test is not None:
            pred = cross_product(system, X_test, coef.Z, gradients=args.gradients)
        else:
            pred = training_predictions(system, coef.Z, gradients=args.gradients)
    values = pred[:, :, 0]
    grads = pred[:, :, 1:] if args.gradients else None
    if not args.one_hot and y.ndim == 1:
        values = values[..., 0]
        grads = None if grads is None else grads[..., 0]
    ref = y_test if X_test is not None else (raw if args.one_hot else y)
    for i, t in enumerate(coef.times):
        line = f"t={t:g}:"
        if ref is not None:
            line += " " + _score(values[i], np.asarray(ref), args.one_hot)
        print(line)
    payload = {"times": coef.times, "values": values, "dual_coef": coef.Z}
    if grads is not None:
        payload["gradients"] = grads
    payload["diagnostics"] = np.array(json.dumps(coef.diagnostics.as_dict(), default=str))
    # written whole or not at all: a run killed here leaves no --out file (a rerun solves again)
    write_whole(out, lambda fh: np.savez(fh, **payload))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _score(values: np.ndarray, ref: np.ndarray, classification: bool) -> str:
    if classification:
        if ref.shape[0] != values.shape[0]:
            raise ValueError(f"--test-targets has {ref.shape[0]} rows for {values.shape[0]} points")
        return f"accuracy {float(np.mean(values.argmax(axis=1) == ref)):.4f}"
    ref = np.asarray(ref, dtype=np.float64)
    if ref.size != values.size:
        raise ValueError(f"--test-targets has shape {ref.shape}, predictions {values.shape}")
    ref = ref.reshape(values.shape)
    return f"rmse {float(np.sqrt(np.mean((values - ref) ** 2))):.4e}"
