"""Fashion-MNIST kernel regression solved on memory-capped Dask workers (issue 12).

The whole path from the shell, each command a real process: ``jacntk data`` writes the labels
and the test split, ``jacntk assemble`` stores the float32 scalar NTK (embedded cluster), then a
``dask scheduler`` and two ``dask worker`` processes start, each worker in its own memory
cgroup (and with the same ``--memory-limit``) below half the stored Gram, and ``jacntk solve
--scheduler-file`` runs in a third capped cgroup: the Gram lives in the workers' memory for the
whole solve (block Lanczos at 9 finite times, Nystrom-preconditioned CG at t = inf) and the
client holds vectors.  Reported: each stage's wall time, the test accuracy per time, each
cgroup's peak memory, and the single-machine run recorded in RESULTS.md (section
``bench_solvers: fashion-mnist``) beside them.

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
from benchmarks.results import RESULTS, publish, table  # noqa: E402

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


def recorded_single_machine() -> tuple[str, dict[str, float], float] | None:
    """(stamp line, accuracy by c t, total seconds) of the recorded single-machine run."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    m = re.search(
        r"<!-- begin bench_solvers: fashion-mnist -->(.*?)<!-- end bench_solvers: fashion-mnist",
        text,
        re.S,
    )
    if not m or "N = 60000" not in m.group(1):
        return None
    body = m.group(1)
    stamp = re.search(r"^_(\d{4}-.*?)_$", body, re.M)
    total = re.search(r"\*\*Total (\d+) s", body)
    acc = dict(re.findall(r"^\| ([0-9.]+|inf) \| ([0-9.]+) \|$", body, re.M))
    if not (stamp and total and acc):
        return None
    return stamp.group(1), {k: float(v) for k, v in acc.items()}, float(total.group(1))


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
            stages["jacntk solve (on the 2 capped workers)"] = run(
                [*caps["client"], *jacntk, "solve", root / "g.zarr", "--targets", d / "y.npy",
                 "--one-hot", "--test", d / "X_test.npy", "--test-targets", d / "y_test.npy",
                 "--time", *times, "--jitter", "0.01", "--tol", "1e-6", "--maxiter", "1000",
                 "--preconditioner", "nystrom", "--rank", "500" if mode == "full" else "100",
                 "--operator", "stored", "--scheduler-file", sched_file, "--quiet",
                 "--out", root / "pred.npz"],
                logs / "solve", env={**os.environ},
            )  # fmt: skip
            peaks = {role: peak_mib(prefix) for role, prefix in caps.items()}
            for p in procs[::-1]:
                p.terminate()
            for p in procs:
                p.wait(timeout=60)
        solve_log = (logs / "solve").read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if keep is not None:
            shutil.copytree(logs, keep, dirs_exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)

    acc = {}
    for t, a in re.findall(r"^t=(\S+): accuracy ([0-9.]+)$", solve_log, re.M):
        ct = "inf" if t == "inf" else f"{float(t) / n:.3g}"
        acc[ct] = float(a)
    route = "; ".join(re.findall(r"^solve: (.*)$", solve_log, re.M)) or "not reported"
    recorded = recorded_single_machine() if mode == "full" else None
    rows = []
    for ct, a in acc.items():
        ref = recorded[1].get(ct) if recorded else None
        rows.append([ct, f"{a:.4f}", "" if ref is None else f"{ref:.4f}",
                     "" if ref is None else f"{a - ref:+.4f}"])  # fmt: skip
    total = sum(stages.values())
    cap_line = (
        f"workers capped at {worker_cap / GIB:.0f} GiB each (memory cgroup and --memory-limit), "
        f"the client at {client_cap / GIB:.0f} GiB; stored Gram {stored / GIB:.2f} GiB"
    )
    peak_line = ", ".join(f"{r} {v:,.0f} MiB" for r, v in peaks.items())
    compare = ""
    if recorded:
        goal = "met" if total <= 1.3 * recorded[2] else "not met"
        same = all(abs(acc.get(k, -1) - v) <= 0.002 for k, v in recorded[1].items())
        compare = (
            f"\n\nAgainst the single-machine run recorded in RESULTS.md (`bench_solvers: "
            f"fashion-mnist`, {recorded[0]}; same machine kind, 2 cores): total {total:.0f} s "
            f"against {recorded[2]:.0f} s = {total / recorded[2]:.2f}x (goal <= 1.3x: {goal}); "
            f"accuracies {'within 0.002 at every time' if same else 'differ (table)'}."
        )
    load_end = os.getloadavg()
    return (
        f"N = {n} training, {n_test} test images (d = 784, standardised), erf depth 3 NTK, "
        f"float32 store (tile {tile}); {cap_line}. Solve: 10 one-hot outputs, block Lanczos "
        f"(tol 1e-6) at 9 times c t = 0.01 ... 100, Nystrom-preconditioned CG (tol 1e-6, jitter "
        f"0.01) at t = inf. Load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end, "
        f"on {os.cpu_count()} cores.\n\n"
        + table(["stage", "wall time (s)"], [[k, f"{v:.1f}"] for k, v in stages.items()])
        + f"\n\n**Total {total:.0f} s = {total / 60:.1f} min**; peak memory per cgroup: "
        f"{peak_line}. Route: {route}.{compare}\n\n"
        + table(["c t", "test accuracy (cluster)", "single machine (recorded)", "difference"], rows)
    )


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
