"""The command line of ``benchmarks/bench_peers.py`` and its run loop: plan the rows, run each
(``_tasks``) on fresh workers (``_harness``), store the records, render them (``_render``,
``_plot``) into ``benchmarks/RESULTS.md`` and ``benchmarks/peers_scaling.png``."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.peers._harness import (
    MEM_LIMIT_GIB,
    PEER_PYTHON,
    PLOT,
    RESULTS_JSON,
    load_store,
    machine_state,
    peer_versions,
    row_key,
    run_stamp,
    save_record,
)
from benchmarks.peers._jacntk_worker import serve
from benchmarks.peers._plot import plot
from benchmarks.peers._render import render
from benchmarks.peers._tasks import FULL, QUICK, TASKS, TIMES, planned_rows, run_expm
from benchmarks.results import write_section


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="jacntk vs neural-tangents and SciPy on identical inputs (issue 7)."
    )
    parser.add_argument("--task", nargs="+", choices=list(TASKS) + ["expm"], default=None)
    parser.add_argument("--sizes", nargs="+", type=int, help="override N for the chosen tasks")
    parser.add_argument("--dims", nargs="+", type=int, help="override d for the chosen tasks")
    parser.add_argument("--acts", nargs="+", choices=("erf", "relu", "gelu"))
    parser.add_argument("--dtypes", nargs="+", choices=("float64", "float32"))
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats after the warm-up")
    parser.add_argument("--dynamics-repeats", type=int, default=1)
    parser.add_argument(
        "--dynamics-operator",
        choices=("auto", "dense", "structured"),
        default="auto",
        help="jacntk.predict's operator for the dynamics rows (auto: dense up to 4 GiB)",
    )
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument(
        "--times", nargs="+", type=float, default=TIMES, help="dynamics times (inf allowed)"
    )
    parser.add_argument(
        "--jacntk-blas-threads",
        type=int,
        help="OPENBLAS_NUM_THREADS of the jacntk worker (1 avoids the threaded-SYRK crash of "
        "scipy-openblas 0.3.31 on 20000 x 784 inputs, see RESULTS.md)",
    )
    parser.add_argument("--compare-rows", type=int, default=500)
    parser.add_argument("--jacobian-pairs", type=int, default=4096)
    parser.add_argument("--dense-max-gib", type=float, default=2.0)
    parser.add_argument("--mem-limit-gib", type=float, default=MEM_LIMIT_GIB, help="0: no cap")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per request")
    parser.add_argument("--expm-tmax", type=float, default=1000.0)
    parser.add_argument(
        "--expm-tols", nargs="+", type=float, default=[1e-6, 1e-8, 1e-10, 1e-12, 1e-14]
    )
    parser.add_argument("--profile", action="store_true", help="profile jacntk's scalar rows")
    parser.add_argument("--not-run-reason", default="", help="why grid rows are missing")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--no-peer", action="store_true", help="jacntk rows only")
    parser.add_argument("--peer-python", type=Path, default=PEER_PYTHON)
    parser.add_argument("--json", type=Path, help=f"results store (default {RESULTS_JSON})")
    parser.add_argument("--no-write", action="store_true", help="leave RESULTS.md and PNG alone")
    parser.add_argument("--render-only", action="store_true", help="re-render from the JSON")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    return parser


def run_row(args, task: str, n: int, d: int, act: str, dtype: str) -> dict:
    """One row's record, stamped with the machine state when it finished."""
    if task == "expm":
        rec = run_expm(args, n, d)
    else:
        with tempfile.TemporaryDirectory(prefix="jacntk-peers-") as tmp:
            rec = TASKS[task](args, Path(tmp), n, d, act, dtype)
    rec.update(machine_state())
    rec.setdefault("mem_limit_gib", args.mem_limit_gib)
    rec["run"] = args.run
    return rec


def publish(records: dict, versions: dict, args) -> None:
    """Render ``records`` into the ``peers`` section of RESULTS.md and the PNG (or print the
    section with ``--no-write``)."""
    body = render(list(records.values()), versions, args)
    if args.no_write:
        print(body)
        return
    write_section("peers", body)
    plot(list(records.values()), PLOT, args.mem_limit_gib)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.serve:
        return serve()
    if args.repeats < 0 or args.dynamics_repeats < 0:
        parser.error(f"--repeats must be >= 0, got {args.repeats}")
    for n in args.sizes or []:
        if n < 2:
            parser.error(f"--sizes must be at least 2, got {n}")
    if args.task is None:
        args.task = list(TASKS) + ["expm"]
    if args.quick:
        args.repeats = min(args.repeats, 1)
        args.no_write = args.no_write or args.json is None
    if not args.no_peer and not args.peer_python.exists():
        parser.error(
            f"peer environment not found at {args.peer_python}: run "
            "`bash benchmarks/peers/setup.sh`, or pass --no-peer for jacntk-only rows"
        )
    store = args.json or RESULTS_JSON
    records, versions, stored_reason = load_store(store)
    args.not_run = args.not_run_reason or (stored_reason if isinstance(stored_reason, str) else "")
    grid = QUICK if args.quick else FULL
    args.run = run_stamp()
    if not args.render_only:
        rows = planned_rows(grid, args)
        for k, (task, n, d, act, dtype) in enumerate(rows):
            rec = run_row(args, task, n, d, act, dtype)
            print(json.dumps(rec), flush=True)
            records[row_key(rec)] = rec
            for lib, key in (("jacntk", "jacntk_rss"), ("peer", "peer_rss")):
                if rec.get(lib, {}).get("import_rss_mib"):
                    versions[key] = rec[lib]["import_rss_mib"]
            if "peer" in rec:
                versions["peer"] = peer_versions(args.peer_python)
            if args.json or not args.no_write:
                records, versions = save_record(store, rec, versions)
            if not args.no_write and k < len(rows) - 1:  # partial results after each row
                publish(records, versions, args)
    publish(records, versions, args)
    return 0
