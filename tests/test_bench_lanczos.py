"""Smoke test of benchmarks/bench_lanczos.py in its quick mode, run as a user would run it
(``python benchmarks/bench_lanczos.py --quick``, which never writes RESULTS.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_lanczos_quick_reports_every_row_with_small_errors():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_lanczos.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RESULTS.md not written" in proc.stdout
    rows = {
        cells[0]: cells[1:]
        for line in proc.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| computation") and "---" not in line
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    block = rows["phi_t(B) Y, block Lanczos (10 columns, one space)"]
    single = rows["phi_t(B) Y, 10 single-column Lanczos runs"]
    # one shared space: fewer products than the longest single-column run, both accurate
    assert int(block[0]) < int(re.search(r"max (\d+)", single[0]).group(1))
    assert float(block[3]) < 1e-9 and float(single[3]) < 1e-9
    scipy = next(v for k, v in rows.items() if k.startswith("the same by scipy"))
    assert float(scipy[3]) < 1e-8
    assert any(k.startswith("floor of the block phi run") for k in rows)
    assert {"1", "10"} <= set(rows)  # the product table
