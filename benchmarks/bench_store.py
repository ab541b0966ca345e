"""What verifying every chunk read costs: Gram-store products and queries with and without the
checksum check.

Every chunk a :class:`jacntk.store.GramStore` reads is checked against its manifest record (a
keyed CRC-32C of the chunk's values, ``jacntk.store._format.chunk_record``).  This benchmark
measures that check on stored Grams: scalar NTK stores in float64 and float32 (N = 8,192,
tile 1,024: 36 upper tiles) and a Jacobian store (N = 1,024, d = 8, tile 256), each read

* (a) streamed, ``GramStore.matvec(V)`` with ``V`` of k = 1 and k = 16 columns;
* (b) through ``StoredGram``: ``cache_mb=0`` (every product streamed from the store) and the
  first, cache-filling product of a cached ``StoredGram`` (a new operator per repeat);
* (c) ``GramStore.block()`` of the whole Gram (``jacobian=True`` for the Jacobian store) and
  ``GramStore.row(i)``;

each with ``GramStore._verify_reads`` True ("on") and False ("off"), alternating within every
repeat (the order swapped from one repeat to the next), 1 warm-up, medians over the
repeats; overhead = the median of the paired (on - off) / off, of wall and of CPU time; and,
measured directly in the "on" runs, the share of the wall time spent inside the check itself
(on a shared machine the difference of two times is noisy, this share much less).  The floor:
the CRC-32C throughput of ``google_crc32c`` on an 8 MB buffer against the page-cache read
throughput of the store's chunk files (plain ``read()`` of every chunk file, warm), and the
"CRC floor" of each case = (bytes the case verifies) / (CRC throughput) / (time off), the
overhead a check costs that does nothing but hash the bytes once.

The issue's goal is an overhead of at most 5 % of a product's time; the numbers are reported as
measured.

    .venv/bin/python benchmarks/bench_store.py            # full run (~5 min on 2 idle cores)
    .venv/bin/python benchmarks/bench_store.py --quick    # small smoke run, no RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results import peak_rss_mib, publish, table  # noqa: E402


def crc_throughput(nbytes: int = 8 * 2**20, repeats: int = 20) -> float:
    """Bytes per second of ``google_crc32c.extend`` over one ``nbytes`` buffer (best of
    ``repeats``; the buffer is warm in cache as a freshly read chunk is)."""
    import google_crc32c

    data = np.random.default_rng(0).standard_normal(nbytes // 8)
    data.setflags(write=False)
    google_crc32c.extend(0, data)
    best = min(_timed(lambda: google_crc32c.extend(0, data)) for _ in range(repeats))
    return nbytes / best


def page_cache_throughput(folder: Path, repeats: int = 3) -> tuple[float, int]:
    """Bytes per second of reading every chunk file under ``folder`` with ``read()`` (the
    files read once before, so from the page cache; best of ``repeats``), and the bytes."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "zarr.json"]
    total = sum(p.stat().st_size for p in files)

    def read_all():
        for p in files:
            with open(p, "rb") as f:
                f.read()

    read_all()
    best = min(_timed(read_all) for _ in range(repeats))
    return total / best, total


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def verified_bytes(fn: Callable[[], object]) -> int:
    """Bytes of the chunks ``fn()`` reads (``GramStore._get_chunks``: every one of them is
    checked, by its CRC-32C or by the product digest), counted in one untimed call."""
    from jacntk.store import GramStore

    original = GramStore._get_chunks
    count = [0]

    def counting(self, chunks):
        got = original(self, chunks)
        count[0] += sum(int(x.nbytes) for x in got)
        return got

    GramStore._get_chunks = counting
    try:
        fn()
    finally:
        GramStore._get_chunks = original
    return count[0]


def on_off(fn: Callable[[], object], repeats: int) -> dict:
    """Wall and CPU times of ``fn()`` with the read check on and off, alternating: every repeat
    runs both, the order swapped each repeat (one warm-up first).

    Returns medians ``on``/``off`` (wall s); the overhead as the median over repeats of the
    paired ratio ``(on_r - off_r) / off_r`` (the two runs of a repeat are adjacent in time, so
    they share the machine's load), the same for this process's CPU time (``cpu_overhead``);
    ``share``, the median over the "on" runs of the time spent inside the checks made apart
    from the product (``GramStore._chunk_problems``: CRC-32C and comparison;
    ``GramStore._check_digest``: comparing a digest the product computed) over the run's wall
    time, a direct measure that needs no difference of two noisy times (the digest hashed
    inside the product kernel is measured by :func:`fused_cost`); and the spread of the wall
    times."""
    from jacntk.store import GramStore

    wall = {True: [], False: []}
    cpu = {True: [], False: []}
    shares = []
    originals = {name: getattr(GramStore, name) for name in ("_chunk_problems", "_check_digest")}
    inside = [0.0]

    def timed(original):
        def check(self, *args):
            t0 = time.perf_counter()
            try:
                return original(self, *args)
            finally:
                inside[0] += time.perf_counter() - t0

        return check

    for name, original in originals.items():
        setattr(GramStore, name, timed(original))
    try:
        fn()
        for r in range(repeats):
            for flag in (True, False) if r % 2 == 0 else (False, True):
                GramStore._verify_reads = flag
                inside[0] = 0.0
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                wall[flag].append(time.perf_counter() - t0)
                cpu[flag].append(time.process_time() - c0)
                if flag:
                    shares.append(inside[0] / wall[flag][-1])
    finally:
        GramStore._verify_reads = True
        for name, original in originals.items():
            setattr(GramStore, name, original)

    def paired(series):
        return statistics.median(
            (a - b) / b for a, b in zip(series[True], series[False], strict=True)
        )

    return {
        "on": statistics.median(wall[True]),
        "off": statistics.median(wall[False]),
        "overhead": paired(wall),
        "cpu_overhead": paired(cpu),
        "share": statistics.median(shares),
        "spread": _spread(wall),
    }


def fused_cost(tile: int, repeats: int) -> tuple[list[list[str]], dict]:
    """The product digest hashed inside the product kernel: one off-diagonal ``tile x tile``
    product of an in-memory tile (no I/O) with the digest on and off, alternating; rows of
    (dtype, k, off s, on s, median paired overhead), and ``{(dtype, k): seconds the digest
    adds to one tile's product}``."""
    import numba

    from jacntk._digest import words
    from jacntk.linalg._gram import _scalar_tile_pair

    rng = np.random.default_rng(2)
    threads = numba.get_num_threads()
    out, extra = [], {}
    for dtype in ("float32", "float64"):
        T = rng.standard_normal((tile, tile)).astype(dtype)
        for k in (1, 16):
            Vt = rng.standard_normal((k, 2 * tile))
            outt = np.zeros_like(Vt)
            hs = np.zeros(threads, np.uint64)

            def run(flag, T=T, Vt=Vt, outt=outt, hs=hs):
                for _ in range(8):
                    _scalar_tile_pair(T, words(T), Vt, outt, 0, tile, True, threads, hs, flag)

            run(True), run(False)
            times = {True: [], False: []}
            for r in range(repeats * 3):
                for flag in (True, False) if r % 2 == 0 else (False, True):
                    times[flag].append(_timed(lambda f=flag: run(f)) / 8)
            ratio = statistics.median(
                (a - b) / b for a, b in zip(times[True], times[False], strict=True)
            )
            med = {f: statistics.median(t) for f, t in times.items()}
            extra[dtype, k] = max(0.0, med[True] - med[False])
            out.append([dtype, str(k), f"{med[False]:.5f}", f"{med[True]:.5f}",
                        f"{100 * ratio:+.1f}%"])  # fmt: skip
    return out, extra


def _spread(times: dict) -> float:
    """Largest (max - min) / median of the two series: how noisy the repeats were."""
    return max((max(t) - min(t)) / statistics.median(t) for t in times.values())


def cases(store, k_big: int) -> list[tuple[str, Callable[[], object]]]:
    """The timed reads of one store: (label, callable)."""
    from jacntk.linalg import StoredGram

    rng = np.random.default_rng(1)
    size = store.shape[0]
    v1 = rng.standard_normal(size)
    vk = rng.standard_normal((size, k_big))
    streamed = StoredGram(store, cache_mb=0)
    assert not streamed.cached
    row = store.n // 2 + 1
    jac = store.jacobian
    return [
        ("matvec k=1", lambda: store.matvec(v1)),
        (f"matvec k={k_big}", lambda: store.matvec(vk)),
        ("StoredGram(cache_mb=0) @ v", lambda: streamed @ v1),
        ("StoredGram first (cache-filling) @ v", lambda: _first_cached_product(store, v1)),
        ("block() whole" + (" (jacobian=True)" if jac else ""), lambda: store.block(jacobian=jac)),
        (f"row({row})" + (" (jacobian=True)" if jac else ""), lambda: store.row(row, jacobian=jac)),
    ]


def _first_cached_product(store, v):
    from jacntk.linalg import StoredGram

    op = StoredGram(store, cache_mb=1e9)
    assert op.cached
    return op @ v


def build_store(arch, X, path: Path, *, jacobian: bool, tile: int, dtype: str, client):
    from jacntk.store import GramStore, assemble

    report = assemble(
        arch, X, path, jacobian=jacobian, tile=tile, dtype=dtype, client=client, progress=False
    )
    assert report.complete, report
    return GramStore.open(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run, no RESULTS.md")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    if repeats < 1:
        parser.error("--repeats must be >= 1")

    from distributed import Client, LocalCluster

    import jacntk

    if args.quick:
        scalar_n, scalar_tile, jac_n, jac_d, jac_tile = 1024, 256, 128, 8, 64
    else:
        scalar_n, scalar_tile, jac_n, jac_d, jac_tile = 8192, 1024, 1024, 8, 256
    arch = jacntk.MLP(3, "erf")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((scalar_n, 10)) / np.sqrt(10)
    Xj = rng.standard_normal((jac_n, jac_d)) / np.sqrt(jac_d)
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    crc = crc_throughput()
    fused_rows, extra = fused_cost(scalar_tile, repeats)
    rows, floor_rows, products = [], [], []
    threads = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="bench-store-", dir=os.environ.get("TMPDIR")) as tmp:
        folder = Path(tmp)
        with (
            LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                env=threads,
            ) as cluster,
            Client(cluster) as client,
        ):
            specs = [
                (f"scalar NTK float64, N={scalar_n:,}, tile {scalar_tile}", X, False,
                 scalar_tile, "float64"),
                (f"scalar NTK float32, N={scalar_n:,}, tile {scalar_tile}", X, False,
                 scalar_tile, "float32"),
                (f"Jacobian NTK float64, N={jac_n:,}, d={jac_d}, tile {jac_tile}", Xj, True,
                 jac_tile, "float64"),
            ]  # fmt: skip
            stores = [
                (label, build_store(arch, x, folder / f"s{k}.zarr", jacobian=jac, tile=tile,
                                    dtype=dtype, client=client))
                for k, (label, x, jac, tile, dtype) in enumerate(specs)
            ]  # fmt: skip
        for label, store in stores:
            read_rate, on_disk = page_cache_throughput(Path(store.location.url))
            rates = [f"{on_disk / 1e6:.0f}", f"{read_rate / 1e9:.2f}", f"{crc / 1e9:.2f}"]
            floor_rows.append([label, *rates, f"{read_rate / crc:.2f}"])
            for what, fn in cases(store, 16):
                nbytes = verified_bytes(fn)
                r = on_off(fn, repeats)
                floor = nbytes / crc / r["off"]
                rows.append(
                    [
                        label,
                        what,
                        f"{nbytes / 1e6:.3g}",
                        f"{r['off']:.4f}",
                        f"{r['on']:.4f}",
                        f"{100 * r['overhead']:+.1f}%",
                        f"{100 * r['cpu_overhead']:+.1f}%",
                        f"{100 * r['share']:.1f}%",
                        f"{100 * floor:.1f}%",
                        f"{100 * r['spread']:.0f}%",
                    ]
                )
                cost = r["share"]  # the checks apart from the product, measured directly
                if not store.jacobian and ("@" in what or "matvec" in what):
                    tiles = store.n_tiles * (store.n_tiles + 1) // 2
                    cost += tiles * extra[store.dtype, 16 if "k=16" in what else 1] / r["on"]
                rows[-1].insert(8, f"{100 * cost:.1f}%")
                if "@" in what or "matvec" in what:
                    products.append((r["overhead"], r["cpu_overhead"], r["share"], cost))
                print(label, what, nbytes, r, flush=True)
    load_end = os.getloadavg()
    header = [
        "store",
        "read",
        "MB verified",
        "check off s",
        "check on s",
        "overhead (wall)",
        "overhead (CPU)",
        "time in check",
        "check cost",
        "CRC floor",
        "spread",
    ]
    wall_oh = [100 * p[0] for p in products]
    cpu_oh = [100 * p[1] for p in products]
    share = [100 * p[2] for p in products]
    cost = [100 * p[3] for p in products]
    body = (
        f"Depth-3 erf MLP, Gaussian inputs (d = 10 scalar, d = {jac_d} Jacobian), stores on "
        f"local disk (uncompressed chunks, in the page cache), read in this process "
        f"(NUMBA/BLAS threads: library defaults). {repeats} repeats per case, check on and off "
        f"alternating (order swapped each repeat), 1 warm-up; times are medians. "
        f"overhead = median over repeats of the paired (on - off) / off, of wall time and of "
        f"this process's CPU time (CPU time is less inflated by other jobs on the machine); "
        f"How a read is checked: the streamed and cache-filling products of a scalar store "
        f"(matvec, StoredGram) by the product digest, hashed inside the product kernel as it "
        f"loads each row (jacntk._digest), everything else (block, row, Jacobian fields) by "
        f"the chunk's keyed CRC-32C. "
        f"'time in check' = median share of an 'on' run's wall time spent in the checks made "
        f"apart from the product (GramStore._chunk_problems: CRC-32C and comparison; "
        f"GramStore._check_digest: comparing the digest the product computed), measured "
        f"directly; the hashing inside the kernel shows only in the overhead and in the "
        f"fused-digest table below; 'check cost' = time in check plus, for the products of a "
        f"scalar store, (upper tiles) x (seconds the digest adds to one tile's product, from "
        f"that table) / time on: the whole cost of checking, from direct measurements that do "
        f"not difference two noisy end-to-end times; "
        f"'MB verified' = chunk bytes hashed per call; "
        f"'CRC floor' = MB verified / CRC-32C throughput / time off (the overhead of hashing "
        f"alone); 'spread' = the larger (max - min) / median of the two series. Load average "
        f"{load_start[0]:.1f} at start, {load_end[0]:.1f} at end, on {os.cpu_count()} cores; "
        f"whole run {time.perf_counter() - t_start:.0f} s, peak RSS {peak_rss_mib():.0f} MiB. "
        f"Goal (issue 13): overhead <= 5 % of a product's time. Over the {len(products)} "
        f"product rows (matvec, StoredGram): wall overhead median "
        f"{statistics.median(wall_oh):+.1f}% (from {min(wall_oh):+.1f}% to "
        f"{max(wall_oh):+.1f}%), CPU overhead median {statistics.median(cpu_oh):+.1f}% (from "
        f"{min(cpu_oh):+.1f}% to {max(cpu_oh):+.1f}%), time in the check median "
        f"{statistics.median(share):.1f}% (from {min(share):.1f}% to {max(share):.1f}%), "
        f"check cost median {statistics.median(cost):.1f}% (from {min(cost):.1f}% to "
        f"{max(cost):.1f}%).\n\n"
        + table(header, rows)
        + f"\nThe product digest inside the product kernel (jacntk.linalg._gram."
        f"_scalar_tile_pair): one off-diagonal {scalar_tile} x {scalar_tile} tile in memory, "
        f"no I/O, digest on and off alternating ({3 * repeats} repeats of 8 products, "
        f"medians).\n\n"
        + table(["tile dtype", "k", "digest off s", "digest on s", "overhead"], fused_rows)
        + "\nThe floor: CRC-32C (google_crc32c, 8 MB buffer) against reading the store's chunk "
        "files from the page cache.\n\n"
        + table(
            ["store", "MB on disk", "page-cache read GB/s", "CRC-32C GB/s", "read / CRC"],
            floor_rows,
        )
    )
    publish("bench_store", body, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
