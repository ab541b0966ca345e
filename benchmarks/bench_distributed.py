"""Distributed products of a stored Gram: the worker-resident operator against re-reading the
store and against the single-process in-memory product (issue 12).

For a complete store, each row times one product ``G V`` (median of the repeats, 1 warm-up):

* ``in memory, one process``: ``StoredGram(store)`` with its upper tiles cached in this
  process (scalar tiles in the stored dtype, the Numba kernel; fields routed, the structured
  product) — the yardstick;
* ``in memory, dense BLAS``: the whole matrix as one float64 array (scalar store only),
  ``(V^T K)^T``;
* ``re-read, one process``: ``StoredGram(store, cache_mb=0)``: every tile read from the store
  (and checked) in every product;
* ``re-read on the cluster``: one task per tile-row, each reading its tiles from the store in
  every product and returning its rows (how products ran before the resident operator);
* ``resident, 1 worker`` and ``resident, 2 workers``: ``StoredGram(store, client=c)``: each
  upper tile loaded once into one worker's memory (:mod:`jacntk.linalg._resident`), ``V``
  sent once per product, the partial results summed on the workers.

Workers x threads = the machine's cores (1 x 2, 2 x 1), each worker a separate process on
127.0.0.1; loading the resident tiles is timed apart (once per operator).  Stores: scalar NTK,
erf depth 3, Gaussian inputs d = 10, float64, N = 20,000 (k = 10 columns); Jacobian NTK fields,
erf depth 3, Fashion-MNIST d = 784 (pixels standardised), float64, N = 3,000 (k = 1 column:
one Lanczos vector of N (d + 1) = 2.36 M entries).

Goals (issue 12): the 2-worker resident product within 1.3x of the single-process in-memory
product, and >= 5x faster than the re-reading product on the cluster.

    .venv/bin/python benchmarks/bench_distributed.py           # full run -> RESULTS.md
    .venv/bin/python benchmarks/bench_distributed.py --quick   # small smoke run, no RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results import peak_rss_mib, publish, table  # noqa: E402


def _tile_row_product(store, i: int, V: np.ndarray) -> np.ndarray:
    """Rows of tile-row ``i`` of ``G V``, every tile of the row read from the store."""
    from jacntk.kernels._routing import route_fields
    from jacntk.linalg._gram import tile_product

    b = 1 if not store.jacobian else store.d + 1
    si = store.tile_slice(i)
    out = np.zeros(((si.stop - si.start) * b, V.shape[1]))
    X = store.points if store.jacobian else None
    for j in range(store.n_tiles):
        sj = store.tile_slice(j)
        T = store.tile_block(i, j)
        if store.jacobian:
            T = route_fields(store.arch, store.kind, T, X[si], X[sj])
        rows = V[sj.start * b : sj.stop * b]
        out += tile_product(T, None if X is None else X[si], None if X is None else X[sj], rows)
    return out


def rereading_product(client, store, V: np.ndarray) -> np.ndarray:
    """``G V`` by one task per tile-row, each reading its tiles from the store."""
    fut = client.scatter(V, broadcast=True, hash=False)
    parts = client.map(
        _tile_row_product, [store] * store.n_tiles, range(store.n_tiles), [fut] * store.n_tiles,
        pure=False,
    )  # fmt: skip
    return np.concatenate(client.gather(parts), axis=0)


def timed(fn, repeats: int) -> tuple[float, np.ndarray]:
    """(median seconds over ``repeats`` after one warm-up, the warm-up's result)."""
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _thread_counts() -> tuple[int, int]:
    """(Numba threads, OpenBLAS threads) of the calling process (run in each worker)."""
    import numba
    import threadpoolctl

    blas = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    return numba.get_num_threads(), max(blas, default=0)


def _timed_part(part, V: np.ndarray, repeats: int) -> float:
    """Median seconds of one held part's product, run in its worker (a task, as products are)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        part.product(V)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(store, k: int, repeats: int, dense: bool) -> tuple[list[list[str]], dict]:
    """The rows of one store: (label, seconds, vs in memory, vs re-read on cluster, max rel
    diff) and the raw seconds."""
    from jacntk.distributed import ClusterOptions, get_client
    from jacntk.linalg import StoredGram

    V = np.random.default_rng(1).standard_normal((store.shape[0], k))
    secs, outs, notes, threads = {}, {}, {}, {}
    local = {"in memory, one process": StoredGram(store, cache_mb=1e9, dense=False)}
    if dense:
        local["in memory, dense BLAS"] = StoredGram(store, cache_mb=1e9, dense=True)
    local["re-read, one process"] = StoredGram(store, cache_mb=0)
    for label, op in local.items():
        secs[label], outs[label] = timed(lambda o=op: o @ V, repeats)
    ref = outs["in memory, one process"]
    del local, op
    for workers in (1, 2):
        # jacntk's embedded cluster: workers x threads = the cores, the thread counts set before
        # each worker imports Numba and OpenBLAS (a LocalCluster's env= comes too late for them)
        with get_client(ClusterOptions(workers=workers)) as client:
            threads[workers] = sorted(client.run(_thread_counts).values())
            if workers == 2:
                label = "re-read on the cluster, 2 workers"
                secs[label], outs[label] = timed(
                    lambda c=client: rereading_product(c, store, V), repeats
                )
            t0 = time.perf_counter()
            op = StoredGram(store, client=client)
            op @ V[:, :1]  # the tiles are loaded by the first product's dependencies
            load = time.perf_counter() - t0
            label = f"resident, {workers} worker{'s' if workers > 1 else ''}"
            secs[label], outs[label] = timed(lambda o=op: o @ V, repeats)
            counts = ", ".join(f"{a}/{b}" for a, b in threads[workers])
            holders = client.who_has(op.resident.parts)
            inside = max(
                client.submit(
                    _timed_part, part, V, repeats, workers=list(holders[part.key]), pure=False
                ).result()
                for part in op.resident.parts
            )  # each part alone (in a product they run at once)
            notes[label] = (
                f"loading the tiles + first product {load:.1f} s; Numba/BLAS threads per "
                f"worker {counts}; slowest part's product inside its worker {inside:.3f} s"
            )
            del op
    base = secs["in memory, one process"]
    cluster_base = secs["re-read on the cluster, 2 workers"]
    rows = [
        [label, f"{s:.3f}", f"{s / base:.2f}x", f"{cluster_base / s:.1f}x",
         f"{rel(outs[label], ref):.1e}", notes.get(label, "")]
        for label, s in secs.items()
    ]  # fmt: skip
    return rows, secs


def build(path: Path, X: np.ndarray, jacobian: bool, tile: int):
    import jacntk
    from jacntk.store import GramStore, assemble

    t0 = time.perf_counter()
    report = assemble(jacntk.MLP(3, "erf"), X, path, jacobian=jacobian, tile=tile, progress=False)
    assert report.complete, report
    return GramStore.open(path), time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run, no RESULTS.md")
    parser.add_argument("--repeats", type=int, default=None, help="timed products (default 5)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    if args.quick:
        specs = [("scalar", 1500, 10, 512, 10), ("jacobian", 200, 16, 64, 1)]
    else:
        specs = [("scalar", 20000, 10, 2048, 10), ("jacobian", 3000, 784, 512, 1)]
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    sections = []
    goals = []
    header = ["product", "s per product", "vs in memory", "speed-up vs re-read on cluster",
              "max rel diff", "note"]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-dist-", dir=os.environ.get("TMPDIR")) as tmp:
        for kind, n, d, tile, k in specs:
            if kind == "jacobian" and d == 784:
                from jacntk.data import fashion_mnist, standardise

                X = fashion_mnist("train", n)[0]
                X = standardise(X, X.mean(axis=0), X.std(axis=0))
            else:
                X = np.random.default_rng(0).standard_normal((n, d)) / np.sqrt(d)
            store, assembly = build(Path(tmp) / f"{kind}.zarr", X, kind == "jacobian", tile)
            mib = sum(f.stat().st_size for f in Path(tmp, f"{kind}.zarr").rglob("*")) / 2**20
            rows, secs = measure(store, k, repeats, dense=kind == "scalar")
            title = (
                f"{'scalar NTK' if kind == 'scalar' else 'Jacobian NTK fields'}, N = {n:,}, "
                f"d = {d}, tile {tile}, float64, store {mib:,.0f} MiB (assembled in "
                f"{assembly:.0f} s), V with k = {k} column{'s' if k > 1 else ''}"
            )
            sections.append(f"### {title}\n\n" + table(header, rows))
            r2 = secs["resident, 2 workers"]
            near = r2 / secs["in memory, one process"]
            fast = secs["re-read on the cluster, 2 workers"] / r2
            goals.append(
                f"{kind}: 2-worker resident product {near:.2f}x the in-memory one (goal <= 1.3x: "
                f"{'met' if near <= 1.3 else 'not met'}), {fast:.1f}x faster than re-reading on "
                f"the cluster (goal >= 5x: {'met' if fast >= 5 else 'not met'})"
            )
            print(sections[-1], flush=True)
            del store
    load_end = os.getloadavg()
    body = (
        "Per-product times of a stored Gram: the worker-resident operator (1 and 2 worker "
        "processes, workers x threads = 2 cores) against re-reading every tile from the store "
        "(in this process, and as one task per tile-row on 2 workers) and against the "
        f"single-process in-memory product. Median of {repeats} products after 1 warm-up; "
        "'max rel diff' against the in-memory product. 'slowest part's product inside its "
        "worker': each worker's held part multiplied alone, timed inside a task on that worker "
        "(median of the same repeats); the resident product's time minus it is what Dask adds "
        "(scatter V, dispatch, the reduction of the partial results) plus the parts' contention "
        "for memory bandwidth when they run at once. Stores on local disk (page cache). "
        f"Load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end, on "
        f"{os.cpu_count()} cores; whole run {time.perf_counter() - t_start:.0f} s, peak RSS of "
        f"this process {peak_rss_mib():.0f} MiB.\n\nGoals (issue 12):\n\n"
        + "\n".join(f"- {g}" for g in goals)
        + "\n\n"
        + "\n\n".join(sections)
    )
    publish("bench_distributed", body, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
