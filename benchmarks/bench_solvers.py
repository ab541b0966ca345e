"""Solver benchmarks: Lanczos vs ``scipy.sparse.linalg.expm_multiply``, CG preconditioners vs
depth, Fashion-MNIST kernel regression from a stored Gram, and a JNTK (lam > 0) solve with the
matrix-free structured operator.  Writes the ``bench_solvers`` section of RESULTS.md.

Usage::

    python benchmarks/bench_solvers.py --quick     # small sizes, about a minute
    python benchmarks/bench_solvers.py             # full: N = 60,000 scalar NTK, N = 10,000 JNTK
    python benchmarks/bench_solvers.py --parts fashion-mnist    # one part (its own section)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.sparse.linalg import LinearOperator, expm_multiply

import jacntk
from jacntk.data import fashion_mnist, one_hot
from jacntk.linalg import (
    DenseGram,
    ScaledGram,
    block_jacobi,
    cg,
    extreme_eigenvalues,
    lanczos_expm,
    nystrom,
)
from jacntk.training import (
    cross_product,
    solve_coefficients,
    training_residual,
    training_system,
)

try:
    from benchmarks.results import peak_rss_mib, table, write_section
except ModuleNotFoundError:  # run as a script from the benchmarks folder
    from results import peak_rss_mib, table, write_section


def standardised_fmnist(n: int, n_test: int = 0):
    """First ``n`` training (and ``n_test`` test) images, standardised per pixel and scaled by
    1/4 (as in ``jacntk demo``) so that |x|^2 ~ d/16."""
    X, y = fashion_mnist("train", n)
    mu, sd = X.mean(0), X.std(0) + 1e-8
    Xs = (X - mu) / sd / 4.0
    if not n_test:
        return Xs, y
    Xt, yt = fashion_mnist("test", n_test)
    return Xs, y, (Xt - mu) / sd / 4.0, yt


class Counting(LinearOperator):
    """Wraps an operator and counts products (columns)."""

    def __init__(self, A):
        super().__init__(np.dtype(np.float64), A.shape)
        self.A, self.count = A, 0

    def _matvec(self, v):
        self.count += 1
        return self.A @ v

    def _matmat(self, V):
        self.count += V.shape[1]
        return self.A @ V

    def _adjoint(self):
        return self


def bench_lanczos_vs_expm_multiply(n: int) -> str:
    """exp(-c t B) v at 10 times: one Lanczos basis vs expm_multiply's time stepping."""
    X, _ = standardised_fmnist(n)
    G = jacntk.kernel(jacntk.MLP(3, "erf"), X)
    c = 1.0 / n
    w, V = np.linalg.eigh(G)
    v = np.random.default_rng(0).standard_normal(n)
    times = np.linspace(n / w[-1], 200 * n / w[-1], 10)  # c t lambda_max from 1 to 200
    exact = np.stack([V @ (np.exp(-c * t * w) * (V.T @ v)) for t in times])

    def err(approx):
        return float(np.max(np.linalg.norm(approx - exact, axis=1) / np.linalg.norm(exact, axis=1)))

    rows = []
    op = Counting(DenseGram(G))
    t0 = time.perf_counter()
    ref = expm_multiply(
        -c * op, v, start=times[0], stop=times[-1], num=10, endpoint=True, traceA=-c * np.trace(G)
    )
    dt = time.perf_counter() - t0
    e_ref = err(ref)
    rows.append(["scipy expm_multiply", op.count, f"{dt:.3f}", f"{e_ref:.1e}"])
    for tol in (max(e_ref, 1e-14), 1e-12):
        op = Counting(DenseGram(G))
        t0 = time.perf_counter()
        res = lanczos_expm(op, v, times, c=c, tol=tol, check_every=2)
        dt = time.perf_counter() - t0
        rows.append([f"Lanczos (tol {tol:.0e})", op.count, f"{dt:.3f}", f"{err(res.values):.1e}"])
    return (
        f"### exp(-c t B) v at 10 times: Lanczos vs expm_multiply\n\nScalar NTK (erf, depth 3) "
        f"on {n} standardised Fashion-MNIST images, c = 1/N, c t lambda_max from 1 to 200; "
        "error = max over times of the relative 2-norm error against a dense eigh.\n\n"
        + table(["method", "matvecs", "time (s)", "max rel. error"], rows)
    )


def bench_preconditioners(n: int, d: int, depths, maxiter: int) -> str:
    """CG iterations on B = D^1/2 Theta D^1/2 + eps I (JNTK, lam = 0.01) vs depth."""
    X, _ = standardised_fmnist(n)
    X = X[:, :: 784 // d][:, :d] * 4.0 / np.sqrt(16.0 * d / 784)
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    rhs = np.random.default_rng(1).standard_normal(n * (d + 1))
    rows = []
    for depth in depths:
        arch = jacntk.MLP(depth, "erf")
        G = jacntk.augment(jacntk.kernel_fields(arch, X), X)
        B = ScaledGram(DenseGram(G, d + 1), 0.01, 1e-5 * np.trace(G) / G.shape[0])
        ev = extreme_eigenvalues(B, maxiter=400, tol=1e-8)
        row = [depth, f"{ev.condition:.1e}"]
        for M in (None, block_jacobi(B), nystrom(B, min(100, B.shape[0] // 4))):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = cg(B, rhs, M=M, tol=1e-8, maxiter=maxiter, stagnation=maxiter)
            row.append(f"{res.iterations}{'' if res.converged.all() else ' (not conv.)'}")
        rows.append(row)
    return (
        f"### CG iterations vs depth and preconditioner\n\nJNTK (erf), N = {n} standardised "
        f"Fashion-MNIST images reduced to d = {d} pixels (N(d+1) = {n * (d + 1)}), lam = 0.01, "
        f"jitter 1e-5 x mean diagonal, tol 1e-8, maxiter {maxiter}; condition number of B by "
        "Lanczos (the smallest eigenvalue is an upper bound when not converged).\n\n"
        + table(["depth", "cond(B)", "none", "block-Jacobi", "Nystrom k=min(100, N(d+1)/4)"], rows)
    )


def bench_fashion_mnist(n: int, n_test: int, tile: int, jitter: float, rank: int) -> str:
    """Scalar NTK: assemble a float32 store on the embedded cluster, then (workers closed) read
    its upper tiles once into memory, Nystrom-preconditioned CG at t = inf and Lanczos (10
    outputs in one block Krylov space) at 9 finite times; test accuracy at all 10."""
    from jacntk.store import GramStore, assemble

    X, y, Xt, yt = standardised_fmnist(n, n_test)
    Y = one_hot(y, 10)
    arch = jacntk.MLP(3, "erf")
    root = Path(tempfile.mkdtemp(prefix="jacntk-bench-"))
    stages = {}
    try:
        t0 = time.perf_counter()
        report = assemble(arch, X, root / "g.zarr", tile=tile, dtype="float32", progress=False)
        stages["assembly"] = time.perf_counter() - t0
        store = GramStore.open(root / "g.zarr")
        system = training_system(None, store, jitter=jitter)
        t0 = time.perf_counter()
        system.B.base.matmat(np.zeros((n, 1)))  # reads the upper tiles into memory
        stages["read store"] = time.perf_counter() - t0
        # c t = t / N from 0.01 to 100 (eta = 1), and t = inf
        times = list(np.geomspace(0.01, 100.0, 9) * n) + [float("inf")]
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            coef = solve_coefficients(
                system, Y, times=times[:-1], tol=1e-6, maxiter=1000, preconditioner=None
            )
            stages["Lanczos, 9 times"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            inf = solve_coefficients(
                system, Y, times=times[-1:], tol=1e-6, preconditioner="nystrom", rank=rank
            )
            stages[f"CG t = inf (Nystrom k = {rank})"] = time.perf_counter() - t0
        Z = np.concatenate([coef.Z, inf.Z])
        t0 = time.perf_counter()
        pred = cross_product(system, Xt, Z, gradients=False, tile=tile)[:, :, 0]
        stages["test predictions"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(root, ignore_errors=True)
    acc = (pred.argmax(axis=2) == yt[None, :]).mean(axis=1)
    rows = [
        [f"{t / n:.3g}" if np.isfinite(t) else "inf", f"{a:.4f}"]
        for t, a in zip(times, acc, strict=True)
    ]
    total = sum(stages.values())
    notes = "; ".join(str(w.message)[:160] for w in caught) or "all solves converged"
    goal = "met" if total <= 1800 else "**missed**"
    return (
        f"### Fashion-MNIST kernel regression from a stored scalar NTK\n\nN = {n} training, "
        f"{n_test} test images (d = 784), erf depth 3, float32 store (tile {tile}, "
        f"{report.workers} embedded workers), jitter {jitter:g}, 10 one-hot outputs; block "
        f"Lanczos (tol 1e-6, the 10 outputs in one Krylov space: one product per step) at 9 "
        f"times c t = 0.01 ... 100 and Nystrom-preconditioned CG (tol 1e-6) at t = inf.\n\n"
        + table(["stage", "wall time (s)"], [[k, f"{v:.1f}"] for k, v in stages.items()])
        + f"\n\n**Total {total:.0f} s = {total / 60:.1f} min** (goal 30 min: {goal}); peak RSS of "
        f"this process {peak_rss_mib():.0f} MiB (the float32 upper tiles held in memory), "
        f"{report.bytes_written / 2**30:.1f} GiB of tiles written. "
        f"{'; '.join(coef.diagnostics['lanczos'])}. "
        f"{inf.diagnostics.get('cg', '')}. Solver notes: {notes}.\n\n"
        + table(["c t = t / N (eta = 1)", "test accuracy"], rows)
    )


def bench_jntk_structured(
    n: int, n_test: int, tile: int, cts, tol: float, target: int | None = None
) -> str:
    """JNTK, lam > 0, matrix-free structured operator: block Lanczos (10 outputs in one Krylov
    space) at the finite times ``c t`` in ``cts``; with ``target``, also one step (a 10-column
    product) of the operator on ``target`` points, timed."""
    X, y, Xt, yt = standardised_fmnist(n, n_test)
    d = X.shape[1]
    system = training_system(
        jacntk.MLP(3, "erf"), X, jacobian_reg=0.01, jitter=1e-6, operator="structured", tile=tile
    )
    times = [float(ct) * n for ct in cts]
    steps = []
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        coef = solve_coefficients(
            system,
            training_residual(system, one_hot(y, 10)),
            times=times,
            tol=tol,
            callback=lambda m, est: steps.append((m, time.perf_counter() - t0)),
        )
    t_solve = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = cross_product(system, Xt, coef.Z, gradients=False, tile=tile)[:, :, 0]
    t_pred = time.perf_counter() - t0
    acc = (pred.argmax(axis=2) == yt[None, :]).mean(axis=1)
    notes = "; ".join(str(w.message)[:160] for w in caught) or "all converged"
    rows = [[f"{t / n:g}", f"{a:.4f}"] for t, a in zip(times, acc, strict=True)]
    per_step = t_solve / max(steps[-1][0], 1) if steps else float("nan")
    total = t_solve + t_pred
    goal = (
        f"goal 1 h at N = {target}: see below"
        if target
        else ("goal 1 h: met" if total <= 3600 else "goal 1 h: **missed**")
    )
    at_target = ""
    if target:
        big = training_system(
            jacntk.MLP(3, "erf"),
            standardised_fmnist(target)[0],
            jacobian_reg=0.01,
            operator="structured",
            tile=tile,
        )
        V = np.random.default_rng(0).standard_normal((target * (d + 1), 10))
        t0 = time.perf_counter()
        big.B.matmat(V)
        one = time.perf_counter() - t0
        flops = 3 * 2 * target**2 * d * 10
        steps_target = (steps[-1][0] if steps else 0) * (target / n) ** 0.5
        basis_gb = 10 * steps_target * target * (d + 1) * 8 / 1e9
        at_target = (
            f"\n\nAt N = {target}: one step (fields of all pairs + the 10-column product) took "
            f"**{one:.0f} s** ({flops / one / 1e9:.0f} GFLOP/s on its {flops:.1e} GEMM flops; "
            f"the float64 GEMM peak here is about 50 GFLOP/s). The run above needed "
            f"{steps[-1][0] if steps else 0} steps at N = {n}; Lanczos steps grow like "
            f"sqrt(lambda_max(B)), and lambda_max grows like N, so N = {target} needs about "
            f"{steps_target:.0f} steps: {steps_target * one / 3600:.1f} h (an estimate from "
            f"these two measurements), and a Lanczos basis of {basis_gb:.0f} GB for the 10 "
            "outputs."
        )
    return (
        f"### JNTK (lam = 0.01) with the matrix-free structured operator\n\nN = {n} Fashion-MNIST "
        f"images (N(d+1) = {n * (d + 1)} unknowns), {n_test} test, erf depth 3, jitter 1e-6, "
        f"tile {tile}; block Lanczos (the 10 outputs in one Krylov space, tol {tol:g}) at c t = "
        f"{', '.join(f'{ct:g}' for ct in cts)}; every product recomputes the fields of all "
        f"N(N+1)/2 pairs and applies them with three GEMMs of N x N x d per column.\n\n"
        f"solve {t_solve:.1f} s ({'; '.join(coef.diagnostics['lanczos'])}; {per_step:.1f} s per "
        f"step of 10 products), test prediction {t_pred:.1f} s, **total {total:.0f} s = "
        f"{total / 60:.1f} min** ({goal}); peak RSS {peak_rss_mib():.0f} MiB. "
        f"Notes: {notes}.\n\n" + table(["c t = t / N", "test accuracy"], rows) + at_target
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="which benchmarks to run; each writes its own section of RESULTS.md",
    )
    args = parser.parse_args(argv)
    mode = "quick mode (--quick)" if args.quick else "full mode"
    for part in args.parts:
        body = f"_{mode}_\n\n" + PARTS[part][0 if args.quick else 1]()
        print(body, flush=True)
        if not args.no_write:
            write_section(f"bench_solvers: {part}", body)
    return 0


#: c t of the full JNTK run
JNTK_TIMES = [0.1, 1.0, 10.0]

#: part -> (quick, full) runs
PARTS = {
    "expm": (
        lambda: bench_lanczos_vs_expm_multiply(400),
        lambda: bench_lanczos_vs_expm_multiply(3000),
    ),
    "preconditioners": (
        lambda: bench_preconditioners(40, 8, [1, 3, 6], 3000),
        lambda: bench_preconditioners(100, 20, [1, 3, 6, 11], 10000),
    ),
    "fashion-mnist": (
        lambda: bench_fashion_mnist(600, 500, 256, 1e-2, 100),
        lambda: bench_fashion_mnist(60000, 10000, 4096, 1e-2, 500),
    ),
    "jntk": (
        lambda: bench_jntk_structured(30, 200, 64, [1.0, 10.0, 100.0], 1e-6),
        lambda: bench_jntk_structured(2000, 1000, 1024, JNTK_TIMES, 1e-6, target=10000),
    ),
}


if __name__ == "__main__":
    raise SystemExit(main())
