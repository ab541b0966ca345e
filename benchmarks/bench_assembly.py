"""Distributed Gram assembly into a Zarr store: 1 vs 2 workers on this machine.

Scalar NTK for N = 20,000 and the JNTK fields for N = 5,000 on Fashion-MNIST (d = 784), depth-3
erf MLP, each with one and with two single-threaded worker processes of an embedded
``LocalCluster``.  Reports wall time, tiles/s, bytes written (uncompressed, and on disk), peak
memory per worker, the share of wall time spent in ``compute_tile`` (the "tile computation
alone" time is the summed per-task compute time divided by the workers), and the fraction of
this machine's GEMM peak reached by the inner-product GEMMs of the assembly.

    .venv/bin/python benchmarks/bench_assembly.py            # full run, writes RESULTS.md
    .venv/bin/python benchmarks/bench_assembly.py --quick    # small smoke run (N=2,048 / 384)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results import peak_rss_mib, publish, table  # noqa: E402


def gemm_peak_gflops(n: int = 2048, repeats: int = 3) -> float:
    """Best double-precision GEMM rate of this process's BLAS (all its threads), GFLOP/s."""
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    A @ B
    best = min(_timed(lambda: A @ B) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _worker_peak_rss_mib() -> float:
    """Peak resident memory of a worker process (VmHWM), MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _warm(arch, jacobian: bool) -> bool:
    """Load (or compile) the tile kernels in a worker before timing."""
    from jacntk.kernels._compute import compute_tile

    x = np.random.default_rng(0).standard_normal((4, 3))
    compute_tile(arch, x, kind="ntk", jacobian=jacobian)
    compute_tile(arch, x, x[:2].copy(), kind="ntk", jacobian=jacobian)
    return True


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_case(X, arch, *, jacobian: bool, tile: int, workers: int, folder: Path) -> dict:
    """Assemble once on a fresh embedded cluster of ``workers`` single-threaded processes."""
    from distributed import Client, LocalCluster

    from jacntk.store import assemble

    threads = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    path = folder / f"gram-{'fields' if jacobian else 'scalar'}-{workers}w.zarr"
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            env=threads,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(workers, timeout=120)
        client.run(_warm, arch, jacobian)  # compiled kernels loaded in every worker
        report = assemble(
            arch, X, path, jacobian=jacobian, tile=tile, client=client, progress=False
        )
        rss = client.run(_worker_peak_rss_mib)
    stored = _du(path)
    shutil.rmtree(path)
    n, d = X.shape
    edges = [min(tile, n - s) for s in range(0, n, tile)]
    gemm_flops = sum(
        2.0 * edges[i] * edges[j] * d for i in range(len(edges)) for j in range(i, len(edges))
    )
    return {
        "wall": report.seconds,
        "tiles": report.computed,
        "compute_alone": report.compute_seconds / workers,
        "write_alone": report.write_seconds / workers,
        "bytes": report.bytes_written,
        "stored": stored,
        "rss": max(rss.values()),
        "gemm_gflops": gemm_flops / report.seconds / 1e9,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run, no RESULTS.md")
    args = parser.parse_args(argv)

    import jacntk
    from jacntk.data import fashion_mnist

    if args.quick:
        cases = [("scalar NTK", False, 2048, 512), ("JNTK fields", True, 384, 128)]
    else:
        cases = [("scalar NTK", False, 20000, 1024), ("JNTK fields", True, 5000, 512)]
    arch = jacntk.MLP(3, "erf")
    X_all, _ = fashion_mnist("train", max(c[2] for c in cases))
    X_all = (X_all - X_all.mean(axis=0)) / (X_all.std(axis=0) + 1e-8) / 4.0
    peak = gemm_peak_gflops(1024 if args.quick else 2048)
    load = os.getloadavg()
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="bench-assembly-", dir=os.environ.get("TMPDIR")) as tmp:
        for label, jacobian, n, tile in cases:
            X = np.ascontiguousarray(X_all[:n])
            walls = {}
            for workers in (1, 2):
                r = run_case(
                    X, arch, jacobian=jacobian, tile=tile, workers=workers, folder=Path(tmp)
                )
                walls[workers] = r["wall"]
                rows.append(
                    [
                        label,
                        f"{n:,}",
                        tile,
                        workers,
                        f"{r['wall']:.1f}",
                        f"{r['tiles'] / r['wall']:.2f}",
                        f"{r['bytes'] / 1e9:.2f} / {r['stored'] / 1e9:.2f}",
                        f"{r['rss']:.0f}",
                        f"{r['compute_alone']:.1f}",
                        f"{r['write_alone']:.1f}",
                        f"{r['wall'] / r['compute_alone']:.2f}",
                        f"{100 * r['gemm_gflops'] / peak:.1f}%",
                    ]
                )
                print(label, n, workers, r, flush=True)
            notes.append(f"{label}: 2 workers / 1 worker speed-up {walls[1] / walls[2]:.2f}x")
    header = [
        "Gram",
        "N",
        "tile",
        "workers",
        "wall s",
        "tiles/s",
        "GB written / on disk",
        "peak RSS per worker MiB",
        "compute alone s",
        "write alone s",
        "wall / compute",
        "GEMM peak share",
    ]
    body = (
        f"Depth-3 erf MLP on Fashion-MNIST (d = 784, standardised / 4), float64 store on local "
        f"disk, embedded LocalCluster of single-threaded worker processes (NUMBA/BLAS threads "
        f"= 1). 'compute alone' = summed per-task compute_tile time / workers, "
        f"'write alone' the same for writing chunks + checksums + manifest record; 'GEMM peak "
        f"share' = inner-product GEMM flops (2 n_i n_j d per upper tile) per wall second over "
        f"this machine's measured DGEMM peak ({peak:.1f} GFLOP/s, all cores). Load average at "
        f"start: {load[0]:.1f} on {os.cpu_count()} cores; benchmark process peak RSS "
        f"{peak_rss_mib():.0f} MiB.\n\n"
        + table(header, rows)
        + "\n"
        + "\n".join(f"- {note}" for note in notes)
        + "\n"
    )
    publish("bench_assembly", body, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
