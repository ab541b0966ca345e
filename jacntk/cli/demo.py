"""``jacntk demo``: the README's main job on the embedded default.

Fashion-MNIST -> NTK Gram assembled by Dask into a Zarr store -> queried -> kernel regression
(the infinite-width network trained by gradient flow) evaluated at several training times, plus
the Jacobian-NTK fields of a subset and a Jacobian-regularised prediction on them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from jacntk.data import one_hot

from ._arguments import (
    add_cluster_arguments,
    add_progress_arguments,
    add_storage_argument,
    cluster_options,
    storage_options,
)


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: Fashion-MNIST Gram -> store -> query -> kernel regression",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--n", type=int, default=4000, help="training images (default 4000)")
    p.add_argument("--n-test", type=int, default=2000, help="test images (default 2000)")
    p.add_argument(
        "--n-jacobian",
        type=int,
        default=300,
        help="training images for the Jacobian-regularised part (default 300)",
    )
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--activation", default="erf")
    p.add_argument(
        "--store",
        default="fashion-mnist-ntk.zarr",
        help="Gram store path or URL (default ./fashion-mnist-ntk.zarr; reused "
        "when it matches, so a second run only queries and solves)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a --store made for other settings or by an older jacntk",
    )
    p.add_argument(
        "--times",
        type=float,
        nargs="+",
        default=[1e2, 1e3, 1e4, 1e5, float("inf")],
        help="training times t (learning rate x steps); 'inf' for convergence",
    )
    add_cluster_arguments(p)
    add_storage_argument(p)
    add_progress_arguments(p)
    p.set_defaults(func=run)


def _cholesky_seconds(store, Y: np.ndarray) -> float:
    """Seconds of one SciPy Cholesky solve of the stored Gram (factorisation in place and the
    two triangular solves for ``Y``), the yardstick of the regression step: the Gram is read
    first, outside the timing."""
    from scipy.linalg import cho_factor, cho_solve

    K = store.block()
    start = time.perf_counter()
    factor = cho_factor(K, lower=True, overwrite_a=True, check_finite=False)
    cho_solve(factor, Y, check_finite=False)
    return time.perf_counter() - start


def _regression_lines(diagnostics, seconds: float, cholesky: float) -> list[str]:
    """The regression step in three lines: the kernel regression itself (``t = inf``: the Gram
    read into memory and its solve, against one SciPy Cholesky solve of the same Gram), the
    training dynamics at the finite times (Lanczos), and the test predictions (the test kernel
    and its products with the coefficients)."""
    s = diagnostics.seconds
    read = s.get("read", 0.0)
    lines = []
    if "direct" in s:
        solve = read + s["direct"]
        how = f"{diagnostics.solver} {s['direct']:.2f} s"
    else:
        solve = read + s.get("cg", 0.0) + s.get("preconditioner", 0.0)
        how = f"CG {solve - read:.2f} s ({diagnostics.cg}; {diagnostics.preconditioner})"
    if diagnostics.solver is not None:
        lines.append(
            f"regression (t = inf): Gram read into memory {read:.2f} s + {how} = {solve:.2f} s; "
            f"one SciPy Cholesky solve of the same Gram {cholesky:.2f} s ({solve / cholesky:.1f}x)"
        )
    if "lanczos" in s:
        lines.append(
            f"dynamics (finite t): {diagnostics.lanczos[0]}; {s['lanczos']:.2f} s "
            f"({s['lanczos'] / cholesky:.1f}x the Cholesky solve)"
        )
    rest = seconds - sum(s.values())
    lines.append(
        f"test predictions: test kernel and its products with the coefficients {rest:.2f} s; "
        f"regression step in all {seconds:.2f} s ({seconds / cholesky:.1f}x the Cholesky solve)"
    )
    return lines


def run(args: argparse.Namespace) -> int:
    from jacntk import MLP, GramStore, assemble, kernel_fields, predict
    from jacntk.data import fashion_mnist, standardise

    t_start = time.perf_counter()
    X_raw, y = fashion_mnist("train", args.n)
    Xt_raw, yt = fashion_mnist("test", args.n_test)
    mean, std = X_raw.mean(axis=0), X_raw.std(axis=0)
    X, Xt = standardise(X_raw, mean, std), standardise(Xt_raw, mean, std)
    arch = MLP(args.depth, args.activation)
    print(
        f"data: Fashion-MNIST, {len(X)} training and {len(Xt)} test images x {X.shape[1]} px "
        f"({time.perf_counter() - t_start:.1f} s)"
    )
    print(f"network: {arch}, NTK parametrisation")

    t0 = time.perf_counter()
    options = storage_options(args.storage_option)
    report = assemble(
        arch,
        X,
        args.store,
        kind="ntk",
        cluster=cluster_options(args),
        storage_options=options,
        progress=args.progress,
        overwrite=args.overwrite,
    )
    where = args.store if "://" in args.store else Path(args.store).resolve()
    print(
        f"assemble: NTK Gram into {where}: "
        f"{report.computed} tiles computed, {report.skipped} already stored, "
        f"{report.workers} Dask workers, {time.perf_counter() - t0:.1f} s"
    )

    t0 = time.perf_counter()
    store = GramStore.open(args.store, options)
    info = store.info()
    diag = store.diag()
    corner = store.block(slice(0, 3), slice(0, 3))
    print(
        f"query: n={info['n']}, d={info['d']}, tile={info['tile']}, kind={info['kind']}, "
        f"complete={info['complete']}, diag mean {diag.mean():.4f}, K[:3, :3] = "
        f"{np.array2string(corner, precision=4, separator=', ').replace(chr(10), '')} "
        f"({time.perf_counter() - t0:.2f} s)"
    )

    Y = one_hot(y, 10)  # centred one-hot targets
    t0 = time.perf_counter()
    pred = predict(None, store, Y, Xt, times=args.times, gradients=False)
    seconds = time.perf_counter() - t0
    cholesky = _cholesky_seconds(store, Y)
    print("\n".join(_regression_lines(pred.diagnostics, seconds, cholesky)))
    print(f"  route: {pred.diagnostics.route}")
    print(
        "  test accuracy of the infinite-width network trained by gradient flow "
        "(learning rate 1), by time t:"
    )
    for t, values in zip(args.times, pred.values, strict=True):
        acc = float((values.argmax(axis=1) == yt).mean())
        print(f"  t = {t:>8g}: accuracy {acc:.4f}")

    n_j = min(args.n_jacobian, args.n)
    t0 = time.perf_counter()
    fields = kernel_fields(arch, X[:n_j], kind="ntk")
    t_fields = time.perf_counter() - t0
    t0 = time.perf_counter()
    jpred = predict(arch, X[:n_j], Y[:n_j], Xt[:200], times=[1e3], jacobian_reg=0.01)
    g = jpred.gradients[0]
    acc = float((jpred.values[0].argmax(axis=1) == yt[:200]).mean())
    print(
        f"jacobian: JNTK fields for {n_j} images, 8 x {fields.shape} in {t_fields:.2f} s "
        f"({fields.data.nbytes / 1e6:.1f} MB; the dense augmented matrix would take "
        f"{(n_j * (X.shape[1] + 1)) ** 2 * 8 / 1e9:.1f} GB); "
        f"Jacobian-regularised training (lam = 0.01, t = 1e3) on them: test accuracy "
        f"{acc:.3f} on 200 test images, mean |input gradient| "
        f"{np.linalg.norm(g, axis=1).mean():.4f} ({time.perf_counter() - t0:.1f} s)"
    )
    print(f"total: {time.perf_counter() - t_start:.1f} s")
    return 0
