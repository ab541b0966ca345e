"""Smoke test of benchmarks/bench_fmnist_cluster.py in its quick mode, as a user runs it: the
shell path (data, assemble, scheduler, two memory-capped workers, a capped solve client) ends
with the Gram resident on both workers and sensible accuracies.  Needs root for the memory
cgroups (skipped otherwise, as the script itself says)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.cgroups import reason_unavailable

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(reason_unavailable() is not None, reason=str(reason_unavailable()))
def test_bench_fmnist_cluster_quick_solves_on_the_capped_workers():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_fmnist_cluster.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "RESULTS.md not written" in out
    assert "resident in the memory of 2 workers" in out, out
    rows = re.findall(r"^\| ([0-9.]+|inf) \| ([0-9.]+) \| ([0-9.]+) \|$", out, re.M)
    assert len(rows) == 10 and min(float(r[1]) for r in rows) > 0.6, out  # chance is 0.1
    diff = float(re.search(r"predictions differ by (\S+) relative", out).group(1))
    assert diff < 1e-5, out  # both solve the same system to tol 1e-6
    peaks = dict(re.findall(r"(w1|w2|client) ([0-9,]+) MiB", out))
    assert set(peaks) == {"w1", "w2", "client"}
    assert all(int(v.replace(",", "")) < 1024 for v in peaks.values()), peaks  # below the caps
