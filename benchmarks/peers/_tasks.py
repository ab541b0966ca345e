"""The rows of the peer benchmark: which kernels, activations and sizes, their inputs, what each
side is asked for, and how the outputs are compared.

* ``scalar``: NNGP and NTK Grams (``run_scalar``), erf, relu and gelu, float64 and float32;
* ``jacobian``: the Jacobian-augmented NTK (``run_jacobian``), erf; neural-tangents by autodiff
  on a sample of pairs, extrapolated to the N(N+1)/2 pairs of the symmetric Gram;
* ``dynamics``: test predictions at 10 training times (``run_dynamics``);
* ``expm``: ``exp(-c t K) y``, jacntk's Lanczos vs SciPy's ``expm_multiply`` in this process
  (``run_expm``).

The requests go to the workers of ``_harness`` (jacntk: ``_jacntk_worker``; peer:
``nt_worker.py``); the inputs and saved outputs are ``.npy`` files in a temporary directory.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.peers._harness import WorkerError, alternate, new_record, row_workers

DEPTH = 3
#: the activations of the scalar rows (all three have closed-form kernels in jacntk)
SCALAR_ACTS = ["erf", "relu", "gelu"]
TIMES = [0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, float("inf")]
FULL = {
    # N = 20,000 is left out of the default run (issue 14's time budget): ``--sizes 20000``
    "scalar": {"sizes": [2000, 5000, 10000], "dims": [10, 784]},
    "jacobian": {"sizes": [200, 1000, 2000], "dims": [10, 100]},
    "dynamics": {"sizes": [2000, 10000, 20000], "dims": [784]},
    "expm": {"sizes": [2000, 5000], "dims": [784]},
}
QUICK = {
    "scalar": {"sizes": [60, 120], "dims": [10]},
    "jacobian": {"sizes": [20, 40], "dims": [4]},
    "dynamics": {"sizes": [60], "dims": [10]},
    "expm": {"sizes": [80], "dims": [10]},
}


# --------------------------------------------------------------------------------------------
# Inputs and comparisons (pure functions)


def points(n: int, d: int, seed: int = 0) -> np.ndarray:
    """The benchmark inputs (n, d): the first n Fashion-MNIST training images (pixels / 255) for
    d = 784, else standard normal points (seeded)."""
    if d == 784:
        from jacntk.data import fashion_mnist

        return fashion_mnist("train", n)[0]
    return np.random.default_rng(seed).standard_normal((n, d))


def targets(X: np.ndarray, seed: int = 1) -> np.ndarray:
    """Regression targets for the dynamics rows: a fixed smooth function of X plus noise."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(X.shape[1]) / np.sqrt(X.shape[1])
    return np.sin(X @ w) + 0.1 * rng.standard_normal(X.shape[0])


def compare_rows(n: int, max_rows: int) -> np.ndarray:
    """Indices of the rows of an (n, n) Gram that are saved and compared."""
    return np.unique(np.linspace(0, n - 1, min(n, max_rows)).astype(np.int64))


def sample_pairs(n: int, m: int, seed: int = 2) -> np.ndarray:
    """``m`` distinct pairs ``(i, j)``, ``i <= j``, of an n-point symmetric Gram (all of them
    when there are at most m), always including a few diagonal pairs ``(i, i)``."""
    total = n * (n + 1) // 2
    if total <= m:
        i, j = np.triu_indices(n)
        return np.stack([i, j], 1).astype(np.int64)
    rng = np.random.default_rng(seed)
    diag = rng.choice(n, size=min(n, max(1, m // 16)), replace=False)
    pairs = {(int(i), int(i)) for i in diag}
    while len(pairs) < m:
        i, j = sorted(int(v) for v in rng.integers(0, n, 2))
        pairs.add((i, j))
    return np.array(sorted(pairs), dtype=np.int64)


def max_rel_diff(a, b) -> float:
    """``max |a - b| / max |b|`` (b is the reference)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare arrays of shapes {a.shape} and {b.shape}")
    scale = np.abs(b).max()
    return float(np.abs(a - b).max() / scale) if scale > 0 else float(np.abs(a - b).max())


def relu_diagonal(arch: dict, q: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact NNGP and NTK of a ReLU MLP at x = x' (theta = 0): ``E[relu(g)^2] = v / 2`` and
    ``E[relu'(g)^2] = 1 / 2`` give ``S_{l+1} = omega S_l / 2 + sigma_b^2``,
    ``T_{l+1} = S_{l+1} + omega T_l / 2`` from ``S_1 = T_1 = omega q / d + sigma_b^2``
    (times ``kappa^2``).  A reference for the diagonal, where arccos(p / sqrt(q r)) is
    ill-conditioned when p is rounded."""
    omega, sb2 = arch["sigma_w"] ** 2, arch["sigma_b"] ** 2
    S = omega * np.asarray(q, dtype=np.float64) / d + sb2
    T = S.copy()
    for _ in range(arch["depth"]):
        S = 0.5 * omega * S + sb2
        T = S + 0.5 * omega * T
    return arch["kappa"] ** 2 * S, arch["kappa"] ** 2 * T


def arch_dict(activation: str) -> dict:
    """``MLP(DEPTH, activation).to_dict()``: the architecture both workers are sent."""
    from jacntk import MLP

    return MLP(DEPTH, activation).to_dict()


# --------------------------------------------------------------------------------------------
# Rows run by the two workers


def run_scalar(args, tmp: Path, n: int, d: int, act: str, dtype: str) -> dict:
    X = points(n, d).astype(dtype)
    np.save(tmp / "x.npy", X)
    np.save(tmp / "rows.npy", compare_rows(n, args.compare_rows))
    base = {"op": "scalar", "x": str(tmp / "x.npy"), "arch": arch_dict(act)}
    base["rows"] = str(tmp / "rows.npy")
    rec = new_record("scalar", act=act, d=d, N=n, dtype=dtype)
    if args.jacntk_blas_threads:
        rec["jacntk_blas_threads"] = args.jacntk_blas_threads
    requests = {
        "jacntk": {**base, "out": str(tmp / "jac")},
        "peer": {**base, "out": str(tmp / "nt")},
    }
    with row_workers(args, dtype, rec) as workers:
        if workers is None:
            return rec
        rec.update(alternate(workers, requests, args.repeats))
        if args.profile and "error" not in rec["jacntk"]:
            try:
                reply = workers["jacntk"].call({**base, "op": "profile"})
                rec["profile"] = {"total": reply["seconds"]["total"], "parts": reply["profile"]}
            except WorkerError as exc:
                rec["profile"] = {"error": str(exc)}
    rows = compare_rows(n, args.compare_rows)
    rec["compared_rows"] = int(len(rows))
    if "seconds" in rec.get("peer", {}) and "seconds" in rec["jacntk"]:
        off = np.ones((len(rows), n), dtype=bool)
        off[np.arange(len(rows)), rows] = False
        rec["max_rel_diff"] = {}
        for kind in ("nngp", "ntk"):
            a, b = np.load(tmp / f"jac_{kind}.npy"), np.load(tmp / f"nt_{kind}.npy")
            rec["max_rel_diff"][kind] = max_rel_diff(a, b)
            rec["max_rel_diff"][kind + "_offdiag"] = max_rel_diff(a[off], b[off])
        if act == "relu":  # which library is right on the diagonal (see relu_diagonal)
            Xr = X[rows].astype(np.float64)
            nngp_diag, ntk_diag = relu_diagonal(base["arch"], (Xr**2).sum(1), d)
            exact = {"nngp": nngp_diag, "ntk": ntk_diag}
            rec["relu_diag_err"] = {
                lib: {
                    kind: max_rel_diff(
                        np.load(tmp / f"{prefix}_{kind}.npy")[np.arange(len(rows)), rows],
                        exact[kind],
                    )
                    for kind in ("nngp", "ntk")
                }
                for lib, prefix in (("jacntk", "jac"), ("peer", "nt"))
            }
    return rec


def run_jacobian(args, tmp: Path, n: int, d: int, act: str, dtype: str) -> dict:
    X = points(n, d, seed=3)
    np.save(tmp / "x.npy", X)
    total = n * (n + 1) // 2
    pairs = sample_pairs(n, args.jacobian_pairs)
    np.save(tmp / "pairs.npy", pairs)
    dense_gib = (n * (d + 1)) ** 2 * 8 / 2**30
    base = {"x": str(tmp / "x.npy"), "pairs": str(tmp / "pairs.npy"), "arch": arch_dict(act)}
    requests = {
        "jacntk": {**base, "op": "jacobian", "dense": dense_gib <= args.dense_max_gib},
        "peer": {**base, "op": "jacobian", "chunk": min(256, len(pairs))},
    }
    requests["jacntk"]["out"] = str(tmp / "jac_blocks.npy")
    requests["peer"]["out"] = str(tmp / "nt_blocks.npy")
    rec = new_record("jacobian", act=act, d=d, N=n, dtype=dtype)
    rec.update(pairs_total=total, pairs_peer=int(len(pairs)), dense_gib=dense_gib)
    with row_workers(args, dtype, rec) as workers:
        if workers is None:
            return rec
        rec.update(alternate(workers, requests, args.repeats))
    peer = rec.get("peer", {})
    if "seconds" in peer:
        peer["seconds"]["extrapolated"] = peer["seconds"]["pairs"] * total / len(pairs)
        if "error" not in rec["jacntk"]:
            jac = np.load(tmp / "jac_blocks.npy")
            rec["max_rel_diff"] = {"blocks": max_rel_diff(jac, np.load(tmp / "nt_blocks.npy"))}
    return rec


def run_dynamics(args, tmp: Path, n: int, d: int, act: str, dtype: str) -> dict:
    n_test = args.n_test
    X = points(n + n_test, d)
    Xtr, Xte = X[:n], X[n:]
    np.save(tmp / "x.npy", Xtr)
    np.save(tmp / "xt.npy", Xte)
    np.save(tmp / "y.npy", targets(Xtr))
    base = {key: str(tmp / f"{key}.npy") for key in ("x", "y", "xt")}
    base.update(op="dynamics", arch=arch_dict(act), times=args.times, learning_rate=1.0)
    requests = {"jacntk": {**base, "out": str(tmp / "jac_dyn.npy")}}
    requests["jacntk"]["operator"] = args.dynamics_operator
    requests["peer"] = {**base, "out": str(tmp / "nt_dyn.npy")}
    rec = new_record("dynamics", act=act, d=d, N=n, dtype=dtype, n_test=n_test, times=args.times)
    rec["operator"] = args.dynamics_operator
    if args.jacntk_blas_threads:
        rec["jacntk_blas_threads"] = args.jacntk_blas_threads
    with row_workers(args, dtype, rec) as workers:
        if workers is None:
            return rec
        rec.update(alternate(workers, requests, args.dynamics_repeats))
    if "seconds" in rec.get("peer", {}) and "seconds" in rec["jacntk"]:
        a, b = np.load(tmp / "jac_dyn.npy"), np.load(tmp / "nt_dyn.npy")
        rec["max_rel_diff"] = {"values": max_rel_diff(a, b)}
    return rec


TASKS = {"scalar": run_scalar, "jacobian": run_jacobian, "dynamics": run_dynamics}


def planned_rows(grid: dict, args) -> list[tuple]:
    """(task, N, d, act, dtype) for every row of the selected tasks."""
    rows = []
    for task in args.task:
        g = grid[task]
        sizes = args.sizes or g["sizes"]
        dims = args.dims or g["dims"]
        acts = args.acts or (SCALAR_ACTS if task == "scalar" else ["erf"])
        dtypes = args.dtypes or (["float64", "float32"] if task == "scalar" else ["float64"])
        for d in dims:
            for act in acts:
                for dtype in dtypes:
                    for n in sizes:
                        rows.append((task, n, d, act, dtype))
    order = {task: k for k, task in enumerate(args.task)}
    return sorted(rows, key=lambda r: (order[r[0]], r[1]))  # small sizes first


# --------------------------------------------------------------------------------------------
# The SciPy row, in this process


class CountingOperator:
    """``scale * M`` as a SciPy ``LinearOperator`` that counts products with vectors."""

    def __init__(self, M: np.ndarray, scale: float = 1.0):
        from scipy.sparse.linalg import LinearOperator

        self.matvecs = 0

        def matmat(V):
            V = np.asarray(V)
            self.matvecs += 1 if V.ndim == 1 else V.shape[1]
            return scale * (M @ V)

        self.op = LinearOperator(  # symmetric: the adjoint is the operator itself
            M.shape, matvec=matmat, rmatvec=matmat, matmat=matmat, rmatmat=matmat, dtype=M.dtype
        )


def run_expm(args, n: int, d: int) -> dict:
    """``exp(-c t K) y`` at 10 evenly spaced times: jacntk's Lanczos vs SciPy's
    ``expm_multiply`` on the same dense NTK Gram, both against ``eigh`` (in this process)."""
    from scipy.sparse.linalg import expm_multiply

    import jacntk
    from jacntk.linalg import lanczos_expm

    rec = new_record("expm", act="erf", d=d, N=n, dtype="float64")
    X = points(n, d)
    y = targets(X)
    K = jacntk.kernel(jacntk.MLP(DEPTH, "erf"), X, kind="ntk")
    c = 1.0 / n  # learning rate 1 (docs/math.md §1.4)
    times = np.linspace(args.expm_tmax / 10, args.expm_tmax, 10)
    t0 = time.perf_counter()
    lam, U = np.linalg.eigh(K)
    ref = (np.exp(-c * times[:, None] * lam[None, :]) * (U.T @ y)[None, :]) @ U.T
    rec["seconds_eigh"] = time.perf_counter() - t0
    del U

    def err(values):
        return float(
            max(np.linalg.norm(v - r) / np.linalg.norm(r) for v, r in zip(values, ref, strict=True))
        )

    op = CountingOperator(K, -c)
    scipy_s = []
    for _ in range(args.repeats or 1):
        op.matvecs = 0
        t0 = time.perf_counter()
        sp = expm_multiply(
            op.op, y, start=times[0], stop=times[-1], num=10, endpoint=True,
            traceA=-c * float(np.trace(K)),
        )  # fmt: skip
        scipy_s.append(time.perf_counter() - t0)
    rec["scipy"] = {"seconds": statistics.median(scipy_s), "matvecs": op.matvecs, "err": err(sp)}
    rec["jacntk"] = {}
    for tol in args.expm_tols:
        lan = CountingOperator(K)
        jac_s = []
        for _ in range(args.repeats or 1):
            lan.matvecs = 0
            t0 = time.perf_counter()
            res = lanczos_expm(lan.op, y, times, c=c, tol=tol, warn=False)
            jac_s.append(time.perf_counter() - t0)
        rec["jacntk"][f"{tol:g}"] = {
            "seconds": statistics.median(jac_s),
            "matvecs": lan.matvecs,
            "err": err(res.values),
        }
    return rec
