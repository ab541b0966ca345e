"""Training dynamics on an in-memory Gram: block Lanczos against separate single-column runs,
SciPy's ``expm_multiply`` and the floor of its products.

The Gram is the demo's: the depth-3 erf NTK of ``N`` standardised Fashion-MNIST training images
(``jacntk demo``'s preprocessing), ``B = Theta`` (no jitter), the targets its centred one-hot
labels (k = 10 columns, ``c = 1 / N``), at the demo's four finite times t = 1e2 ... 1e5.  Rows:

* ``phi_t(B) Y`` (the trained network's coefficients, docs/math.md §8.6) by block Lanczos
  (``lanczos_functions``: one Krylov space for the 10 columns) and by 10 single-column runs
  of the same function (the former route), tol 1e-10, with the largest relative error of any
  column against ``f(B) Y`` from the full eigendecomposition;
* the same by block Lanczos with ``basis="two-pass"`` (two blocks held, the products run
  twice: the client-memory-bounded scheme), against the full basis;
* ``exp(-c t B) Y`` at t = 1e2 and 1e3 by block Lanczos and by SciPy's
  ``scipy.sparse.linalg.expm_multiply`` (one call per time, on the dense matrix; its cost
  grows with ``|c t B|``, so the larger times are left out);
* the products: ``K @ V`` against ``(V^T K)^T`` (``dense_symmetric_product``) for k = 1 and
  10, and the floor of the block run = its products x one product's time;
* the yardstick of the demo's log: one SciPy Cholesky solve (``cho_factor`` + ``cho_solve``).

Medians over the repeats (1 warm-up).  ``--quick``: N = 600, no RESULTS.md.

    .venv/bin/python benchmarks/bench_lanczos.py            # ~1 min on 2 idle cores
    .venv/bin/python benchmarks/bench_lanczos.py --quick
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results import median_time, publish, table  # noqa: E402

TIMES = (1e2, 1e3, 1e4, 1e5)
#: expm_multiply's cost grows with |c t B| (about 35 s per call at t = 1e4, N = 4,000): the exp
#: comparison runs at the two smaller times only, once each (no warm-up).
EXP_TIMES = (1e2, 1e3)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """Largest relative error of any column of ``a`` against ``b`` (n, k)."""
    return float((np.linalg.norm(a - b, axis=0) / np.linalg.norm(b, axis=0)).max())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 600, no RESULTS.md")
    parser.add_argument("--n", type=int, default=None, help="training images (default 4000)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5)")
    args = parser.parse_args(argv)
    n = args.n or (600 if args.quick else 4000)
    repeats = args.repeats or (3 if args.quick else 5)

    from scipy.linalg import cho_factor, cho_solve
    from scipy.sparse.linalg import expm_multiply

    import jacntk
    from jacntk.data import fashion_mnist, one_hot, standardise
    from jacntk.linalg import DenseGram
    from jacntk.linalg._gram import dense_symmetric_product
    from jacntk.linalg._lanczos import exp_function, lanczos_functions, phi_function

    load_start = os.getloadavg()
    t_start = time.perf_counter()
    X_raw, y = fashion_mnist("train", n)
    X = standardise(X_raw, X_raw.mean(axis=0), X_raw.std(axis=0))
    K = jacntk.kernel(jacntk.MLP(3, "erf"), X, kind="ntk")
    Y = one_hot(y, 10)
    B, c = DenseGram(K), 1.0 / n
    phis = [phi_function(c, t) for t in TIMES]
    exps = [exp_function(c, t) for t in EXP_TIMES]

    w, U = np.linalg.eigh(K)  # the reference: f(B) Y from the full eigendecomposition
    UY = U.T @ Y

    def exact(f) -> np.ndarray:
        return U @ (np.asarray(f(w))[:, None] * UY)

    ref = [exact(f) for f in phis]
    block = lanczos_functions(B, Y, phis, tol=1e-10)
    singles = [lanczos_functions(B, Y[:, j], phis, tol=1e-10) for j in range(Y.shape[1])]
    two = lanczos_functions(B, Y, phis, tol=1e-10, basis="two-pass")
    t_two = median_time(lambda: lanczos_functions(B, Y, phis, tol=1e-10, basis="two-pass"), repeats)
    err_two = max(rel(two.values[i], ref[i]) for i in range(len(TIMES)))
    err_two_full = max(rel(two.values[i], block.values[i]) for i in range(len(TIMES)))
    t_block = median_time(lambda: lanczos_functions(B, Y, phis, tol=1e-10), repeats)
    t_single = median_time(
        lambda: [lanczos_functions(B, Y[:, j], phis, tol=1e-10) for j in range(Y.shape[1])],
        repeats,
    )
    err_block = max(rel(block.values[i], ref[i]) for i in range(len(TIMES)))
    err_single = max(
        rel(np.stack([s.values[i] for s in singles], axis=1), ref[i]) for i in range(len(TIMES))
    )

    exp_ref = [exact(f) for f in exps]
    exp_block = lanczos_functions(B, Y, exps, tol=1e-10)
    t_exp = median_time(lambda: lanczos_functions(B, Y, exps, tol=1e-10), repeats)
    start = time.perf_counter()
    scipy_exp = [expm_multiply(-c * t * K, Y) for t in EXP_TIMES]
    t_scipy = time.perf_counter() - start
    err_exp = max(rel(exp_block.values[i], exp_ref[i]) for i in range(len(EXP_TIMES)))
    err_scipy = max(rel(scipy_exp[i], exp_ref[i]) for i in range(len(EXP_TIMES)))

    product = {}
    for k in (1, 10):
        V = np.ascontiguousarray(Y[:, :k]) + 0.0
        product[k] = (
            median_time(lambda V=V: K @ V, 3 * repeats),
            median_time(lambda V=V: dense_symmetric_product(K, V), 3 * repeats),
        )

    def cholesky():
        factor = cho_factor(K + 1e-6 * np.eye(n), lower=True, overwrite_a=True)
        cho_solve(factor, Y)

    t_chol = median_time(cholesky, repeats)
    floor = block.iterations * product[10][1]

    rows = [
        ["phi_t(B) Y, block Lanczos (10 columns, one space)", block.iterations,
         f"{t_block:.3f}", "1.00x", f"{err_block:.1e}"],
        ["phi_t(B) Y, 10 single-column Lanczos runs",
         f"{sum(s.iterations for s in singles)} (max {max(s.iterations for s in singles)})",
         f"{t_single:.3f}", f"{t_single / t_block:.2f}x", f"{err_single:.1e}"],
        ["phi_t(B) Y, block Lanczos with the two-pass basis (two blocks held; error against "
         f"the full basis {err_two_full:.1e})", f"{two.products} ({two.iterations} steps)",
         f"{t_two:.3f}", f"{t_two / t_block:.2f}x", f"{err_two:.1e}"],
        [f"exp(-c t B) Y at t = {', '.join(f'{t:g}' for t in EXP_TIMES)}, block Lanczos",
         exp_block.iterations, f"{t_exp:.3f}", "1.00x",
         f"{err_exp:.1e}"],
        ["the same by scipy.sparse.linalg.expm_multiply (one call per time, one run)", "-",
         f"{t_scipy:.3f}", f"{t_scipy / t_exp:.2f}x", f"{err_scipy:.1e}"],
        ["floor of the block phi run: its products x one (V^T K)^T product", block.iterations,
         f"{floor:.3f}", f"{floor / t_block:.2f}x", "-"],
        ["one SciPy Cholesky solve (cho_factor + cho_solve, 10 columns)", "-",
         f"{t_chol:.3f}", f"{t_chol / t_block:.2f}x", "-"],
    ]  # fmt: skip
    prod_rows = [
        [k, f"{a * 1e3:.2f}", f"{b * 1e3:.2f}", f"{a / b:.2f}x"] for k, (a, b) in product.items()
    ]
    load_end = os.getloadavg()
    body = (
        f"Depth-3 erf NTK of N = {n} standardised Fashion-MNIST images (the demo's Gram, "
        f"float64, in memory), B = Theta, 10 centred one-hot columns, c = 1/N, times t = "
        f"{', '.join(f'{t:g}' for t in TIMES)}; tol 1e-10; error = the largest relative error "
        f"of any column and time against f(B) Y from the full eigendecomposition "
        f"(numpy.linalg.eigh). Medians "
        f"of {repeats} repeats after 1 warm-up; 'time ratio' = the row's time / the block "
        f"Lanczos row above it (the two-pass, floor and Cholesky rows: / the block phi row). "
        f"Load "
        f"average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end, on "
        f"{os.cpu_count()} cores; whole run {time.perf_counter() - t_start:.0f} s.\n\n"
        + table(["computation", "products", "time (s)", "time ratio", "max rel. error"], rows)
        + "\nDense products K V (n = "
        f"{n}): NumPy's `K @ V` against `(V^T K)^T` (`dense_symmetric_product`, the form "
        "DenseGram and an in-memory StoredGram use).\n\n"
        + table(["k", "K @ V (ms)", "(V^T K)^T (ms)", "speed-up"], prod_rows)
    )
    publish("bench_lanczos", body, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
