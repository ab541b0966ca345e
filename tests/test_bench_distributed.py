"""Smoke test of benchmarks/bench_distributed.py in its quick mode, run as a user would run it
(``python benchmarks/bench_distributed.py --quick``, which never writes RESULTS.md): every
product row is present and agrees with the in-memory product."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCTS = ["in memory, one process", "re-read, one process", "resident, 1 worker",
            "re-read on the cluster, 2 workers", "resident, 2 workers"]  # fmt: skip


def test_bench_distributed_quick_runs_every_product_and_they_agree():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_distributed.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RESULTS.md not written" in proc.stdout
    sections = proc.stdout.split("### ")[1:3]  # the scalar and the Jacobian store
    assert len(sections) == 2
    for section in sections:
        rows = {
            cells[0]: cells[1:]
            for line in section.splitlines()
            if line.startswith("| ") and "---" not in line and not line.startswith("| product")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]
        }
        assert set(PRODUCTS) <= set(rows), rows
        for name in PRODUCTS:
            assert float(rows[name][0]) > 0
            assert float(rows[name][3]) < 1e-12, (name, rows[name])
        for workers in (1, 2):  # each worker has cores / workers Numba and BLAS threads
            note = rows[f"resident, {workers} worker{'s' if workers > 1 else ''}"][4]
            counts = re.search(r"Numba/BLAS threads per worker ([0-9/, ]+)", note).group(1)
            want = max(1, (os.cpu_count() or 1) // workers)
            assert counts.split(", ") == [f"{want}/{want}"] * workers, note
    assert proc.stdout.count("goal <= 1.3x") == 2
