"""Fashion-MNIST kernel regression solved on memory-capped Dask workers (issue 12).

The whole path from the shell, each command a real process: ``jacntk data`` writes the labels
and the test split, ``jacntk assemble`` stores the float32 scalar NTK (embedded cluster), then a
``dask scheduler`` and two ``dask worker`` processes start, each worker in its own memory
cgroup (and with the same ``--memory-limit``) below half the stored Gram, and ``jacntk solve
--scheduler-file`` runs in a third capped cgroup: the Gram lives in the workers' memory for the
whole solve (block Lanczos at 9 finite times, Nystrom-preconditioned CG at t = inf) and the
client holds vectors.  Then, with the cluster gone, the same ``jacntk solve`` runs on one
machine, uncapped (the store's tiles read into this machine's memory): the peer of the
distributed run, measured in the same run on the same store.  Reported: each stage's wall
time, the test accuracy per time of both runs, the largest relative difference of their
predictions, and each cgroup's peak memory.

Needs root (memory cgroups v1).  Usage (repository root)::

    .venv/bin/python benchmarks/bench_fmnist_cluster.py           # N = 60,000 -> RESULTS.md
    .venv/bin/python benchmarks/bench_fmnist_cluster.py --quick   # N = 1,500, no RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.cgroups import MemoryCgroups, peak_mib, reason_unavailable  # noqa: E402
from benchmarks.results import publish, table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30
#: (N, test images, tile, worker cap, client cap) per mode
SIZES = {
    "quick": (1500, 300, 512, 1 * GIB, 1 * GIB),
    "full": (60000, 10000, 4096, 5 * GIB, 3 * GIB),
}


def run(cmd: list, log: Path, env: dict | None = None, timeout: float = 3600) -> float:
    """Run ``cmd`` to completion (stdout and stderr into ``log``); its wall seconds."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(
            [str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout
        )
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:6]} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - t0


def bench(mode: str, keep: Path | None = None) -> str:
    n, n_test, tile, worker_cap, client_cap = SIZES[mode]
    jacntk = [sys.executable, "-m", "jacntk"]
    spec = f"fashion-mnist:{n}:standardise"
    root = Path(tempfile.mkdtemp(prefix="jacntk-fmnist-cluster-", dir=os.environ.get("TMPDIR")))
    logs, stages, procs = root / "logs", {}, []
    logs.mkdir()
    load_start = os.getloadavg()
    try:
        stages["jacntk data (labels, test split)"] = run(
            [*jacntk, "data", spec, "--out", root / "data", "--n-test", n_test], logs / "data"
        )
        stages["jacntk assemble (embedded cluster)"] = run(
            [*jacntk, "assemble", spec, "--out", root / "g.zarr", "--dtype", "float32",
             "--tile", tile, "--quiet"], logs / "assemble",
        )  # fmt: skip
        stored = sum(f.stat().st_size for f in (root / "g.zarr" / "K").rglob("*") if f.is_file())
        threads = dict.fromkeys(
            ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"), "1"
        )
        config = str(REPO / "cluster" / "dask-config.yaml")  # the cluster/ settings
        env = {**os.environ, **threads, "DASK_CONFIG": config}
        sched_file = root / "scheduler.json"
        with MemoryCgroups("jacntk-bench") as groups:
            t0 = time.perf_counter()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                 "--port", "0", "--scheduler-file", sched_file, "--no-dashboard"],
                stdout=open(logs / "scheduler", "w"), stderr=subprocess.STDOUT, env=env,
            ))  # fmt: skip
            caps = {}
            for w in ("w1", "w2"):
                caps[w] = groups.cap(worker_cap)
                procs.append(subprocess.Popen(
                    [*caps[w], sys.executable, "-m", "distributed.cli.dask_worker",
                     "--scheduler-file", str(sched_file), "--nthreads", "1", "--name", w,
                     "--memory-limit", str(worker_cap), "--no-dashboard", "--host", "127.0.0.1"],
                    stdout=open(logs / w, "w"), stderr=subprocess.STDOUT, env=env,
                ))  # fmt: skip
            _wait_for_workers(sched_file, 2, logs)
            stages["scheduler + 2 workers up"] = time.perf_counter() - t0
            caps["client"] = groups.cap(client_cap)
            times = [f"{t:.6g}" for t in np.geomspace(0.01, 100.0, 9) * n] + ["inf"]
            d = root / "data"
            solve = [*jacntk, "solve", root / "g.zarr", "--targets", d / "y.npy", "--one-hot",
                     "--test", d / "X_test.npy", "--test-targets", d / "y_test.npy", "--time",
                     *times, "--jitter", "0.01", "--tol", "1e-6", "--maxiter", "1000",
                     "--preconditioner", "nystrom", "--rank", "500" if mode == "full" else "100",
                     "--operator", "stored", "--quiet"]  # fmt: skip
            stages["jacntk solve on the 2 capped workers"] = run(
                [*caps["client"], *solve, "--scheduler-file", sched_file,
                 "--out", root / "cluster.npz"], logs / "solve", env={**os.environ},
            )  # fmt: skip
            peaks = {role: peak_mib(prefix) for role, prefix in caps.items()}
            for p in procs[::-1]:
                p.terminate()
            for p in procs:
                p.wait(timeout=60)
        stages["jacntk solve on one machine (uncapped, no cluster)"] = run(
            [*solve, "--out", root / "one.npz"], logs / "solve-one-machine"
        )
        with np.load(root / "cluster.npz") as a, np.load(root / "one.npz") as b:
            diff = float(np.abs(a["values"] - b["values"]).max() / np.abs(b["values"]).max())
        logs_text = {k: (logs / k).read_text() for k in ("solve", "solve-one-machine")}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if keep is not None:
            shutil.copytree(logs, keep, dirs_exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)

    acc = {k: _accuracies(text, n) for k, text in logs_text.items()}
    routes = {k: "; ".join(re.findall(r"^solve: (.*)$", t, re.M)) for k, t in logs_text.items()}
    rows = [
        [ct, f"{a:.4f}", f"{acc['solve-one-machine'].get(ct, float('nan')):.4f}"]
        for ct, a in acc["solve"].items()
    ]
    cluster_s = stages["jacntk solve on the 2 capped workers"]
    one_s = stages["jacntk solve on one machine (uncapped, no cluster)"]
    same = acc["solve"] == acc["solve-one-machine"]
    cap_line = (
        f"workers capped at {worker_cap / GIB:.0f} GiB each (memory cgroup and --memory-limit), "
        f"the client at {client_cap / GIB:.0f} GiB; stored Gram {stored / GIB:.2f} GiB"
    )
    peak_line = ", ".join(f"{r} {v:,.0f} MiB" for r, v in peaks.items())
    goal = "met" if cluster_s <= 1.3 * one_s else "not met"
    compare = (
        f"The distributed solve took {cluster_s:.0f} s against {one_s:.0f} s on one machine "
        f"= {cluster_s / one_s:.2f}x (goal <= 1.3x: {goal}); the two runs' predictions differ "
        f"by {diff:.1e} relative (max over all times and outputs); accuracies "
        f"{'identical at every time' if same else 'differ (table)'}."
    )
    load_end = os.getloadavg()
    return (
        f"N = {n} training, {n_test} test images (d = 784, standardised), erf depth 3 NTK, "
        f"float32 store (tile {tile}); {cap_line}. Solve: 10 one-hot outputs, block Lanczos "
        f"(tol 1e-6) at 9 times c t = 0.01 ... 100, Nystrom-preconditioned CG (tol 1e-6, jitter "
        f"0.01) at t = inf. Load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end, "
        f"on {os.cpu_count()} cores.\n\n"
        + table(["stage", "wall time (s)"], [[k, f"{v:.1f}"] for k, v in stages.items()])
        + f"\n\n{compare} Peak memory per cgroup of the distributed run: {peak_line}.\n\n"
        f"Route on the cluster: {routes['solve']}.\n\nRoute on one machine: "
        f"{routes['solve-one-machine']}.\n\n"
        + table(["c t", "test accuracy (cluster)", "test accuracy (one machine)"], rows)
    )


def _accuracies(solve_log: str, n: int) -> dict[str, float]:
    """``{c t: accuracy}`` from the ``t=...: accuracy ...`` lines of ``jacntk solve``."""
    out = {}
    for t, a in re.findall(r"^t=(\S+): accuracy ([0-9.]+)$", solve_log, re.M):
        out["inf" if t == "inf" else f"{float(t) / n:.3g}"] = float(a)
    return out


def _wait_for_workers(sched_file: Path, n: int, logs: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not sched_file.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the scheduler did not start:\n" + (logs / "scheduler").read_text())
        time.sleep(0.2)
    from distributed import Client

    with Client(scheduler_file=str(sched_file), timeout="30s") as c:
        c.wait_for_workers(n, timeout=max(1.0, deadline - time.monotonic()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 1,500; no RESULTS.md")
    parser.add_argument("--logs", type=Path, help="copy every process's log here")
    args = parser.parse_args(argv)
    why = reason_unavailable()
    if why is not None:
        print(f"bench_fmnist_cluster: skipped: {why}")
        return 0
    body = bench("quick" if args.quick else "full", args.logs)
    publish("bench_fmnist_cluster", body, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
