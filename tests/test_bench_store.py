"""Smoke tests of the store-integrity benchmarks (benchmarks/bench_store.py: the cost of verified
reads; benchmarks/bench_faults.py: the faults table), each run in its quick mode as a user would
run it (``python benchmarks/bench_X.py --quick``), which never writes RESULTS.md."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jacntk
from jacntk.store import GramStore, assemble

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def _table_rows(stdout: str, header: str) -> list[list[str]]:
    """The data rows of the first Markdown table whose header line starts with ``header``."""
    lines = stdout.splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith(f"| {header}"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_on_off_restores_the_read_check_even_when_the_timed_call_fails():
    bench = _load("bench_store")
    calls = []

    def fails_when_off():
        calls.append(GramStore._verify_reads)
        if not GramStore._verify_reads:
            raise RuntimeError("boom")

    original = GramStore._chunk_problems
    with pytest.raises(RuntimeError, match="boom"):
        bench.on_off(fails_when_off, repeats=2)
    assert calls == [True, True, False]  # warm-up, then on, off in the first repeat
    assert GramStore._verify_reads is True and GramStore._chunk_problems is original


def test_verified_bytes_counts_each_chunk_a_product_reads(tmp_path, rng):
    bench = _load("bench_store")
    X = rng.standard_normal((30, 3))
    assemble(jacntk.MLP(2, "erf"), X, tmp_path / "g.zarr", tile=10, dtype="float32")
    g = GramStore.open(tmp_path / "g.zarr")
    assert bench.verified_bytes(lambda: g.matvec(np.ones(30))) == 6 * 10 * 10 * 4  # upper tiles
    assert bench.verified_bytes(lambda: g.row(12)) == 3 * 10 * 10 * 4  # one tile-row


def test_quick_store_benchmark_reports_every_case_and_the_floor():
    run = _run("bench_store.py", "--quick", "--repeats", "1")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "(quick run: RESULTS.md not written)" in run.stdout
    rows = _table_rows(run.stdout, "store | read |")
    assert len(rows) == 3 * 6
    by = {(r[0].split(",")[0], r[1]): r for r in rows}
    n, tile = 1024, 256  # the quick scalar stores: 4 tiles a side, 10 upper tiles
    want = {
        "matvec k=1": 10 * tile * tile * 8,
        "matvec k=16": 10 * tile * tile * 8,
        "block() whole": n * n * 8,
        "row(513)": 4 * tile * tile * 8,
    }
    for read, nbytes in want.items():
        assert by[("scalar NTK float64", read)][2] == f"{nbytes / 1e6:.3g}", read
        assert by[("scalar NTK float32", read)][2] == f"{nbytes / 2e6:.3g}", read
    for r in rows:
        off, on = float(r[3]), float(r[4])
        share = float(r[7].rstrip("%"))
        assert off > 0 and on > 0 and 0 < share < 100, r
    floor = _table_rows(run.stdout, "store | MB on disk | page-cache read GB/s |")
    assert len(floor) == 3
    assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in floor), floor


def test_quick_faults_benchmark_rows_end_as_required():
    run = _run("bench_faults.py", "--quick", "--only", "flip,stale-remote")
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    assert "(quick run: RESULTS.md not written)" in run.stdout
    rows = _table_rows(run.stdout, "fault injected |")
    assert len(rows) == 2
    flip, stale = rows
    assert flip[0].startswith("1 byte flipped") and stale[0].startswith("stale lease")
    for r in rows:
        assert (r[1], r[2], r[3]) == ("1", "1", "nothing"), r
    assert flip[4] == "0"  # no query / solve / predict run returned numbers
    assert "1 tile(s) repaired" in flip[5]
