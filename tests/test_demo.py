"""The README's main job, ``jacntk demo``, run as a real subprocess at a small size."""

from __future__ import annotations

import re
import subprocess
import sys


def demo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jacntk", "demo", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_demo_assembles_queries_and_trains_then_reuses_its_store(tmp_path):
    args = ["--n", "400", "--n-test", "200", "--n-jacobian", "30", "--workers", "1"]
    args += ["--store", str(tmp_path / "fm.zarr"), "--times", "100", "1e4", "inf"]
    first = demo(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "0 already stored" in first.stdout and "complete=True" in first.stdout
    accuracies = [float(a) for a in re.findall(r"t = +\S+: accuracy ([0-9.]+)", first.stdout)]
    # 10 classes: chance is 0.1; 400 images already separate most of them
    assert len(accuracies) == 3 and min(accuracies) > 0.5, first.stdout
    assert "Jacobian-regularised training (lam = 0.01" in first.stdout
    second = demo(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert re.search(r": 0 tiles computed, \d+ already stored", second.stdout), second.stdout
    again = [float(a) for a in re.findall(r"t = +\S+: accuracy ([0-9.]+)", second.stdout)]
    assert again == accuracies
    # one summary line per stage, each with its time
    for run in (first, second):
        stages = {}
        for line in run.stdout.splitlines():
            label, _, rest = line.partition(": ")
            if label in ("data", "assemble", "query", "regression", "jacobian", "total"):
                assert label not in stages, run.stdout
                stages[label] = rest
        assert list(stages) == ["data", "assemble", "query", "regression", "jacobian", "total"]
        assert all(re.search(r"\d s\)?$", rest) for rest in stages.values()), stages
        # the 400-point store fits in memory: t = inf is one Cholesky, timed beside SciPy's
        regression = re.search(
            r"t = inf by cholesky ([0-9.]+) s, one SciPy Cholesky solve of the same Gram "
            r"([0-9.]+) s",
            stages["regression"],
        )
        assert regression, stages["regression"]
        assert "route: t = inf: direct (cholesky); finite times: Lanczos" in run.stdout
