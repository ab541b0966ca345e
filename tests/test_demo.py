"""The README's main job, ``jacntk demo``, run as a real subprocess at a small size."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


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
    labels = [
        "data",
        "assemble",
        "query",
        "regression (t = inf)",
        "dynamics (finite t)",
        "test predictions",
        "jacobian",
        "total",
    ]
    for run in (first, second):
        stages = {}
        for line in run.stdout.splitlines():
            label, _, rest = line.partition(": ")
            if label in labels:
                assert label not in stages, run.stdout
                stages[label] = rest
        assert list(stages) == labels
        assert all(re.search(r"\d s\b", rest) for rest in stages.values()), stages
        # the 400-point store fits in memory: t = inf is one Cholesky, timed beside SciPy's
        regression = re.search(
            r"Gram read into memory ([0-9.]+) s \+ cholesky ([0-9.]+) s = ([0-9.]+) s; one "
            r"SciPy Cholesky solve of the same Gram ([0-9.]+) s \(([0-9.]+)x\)",
            stages["regression (t = inf)"],
        )
        assert regression, stages["regression (t = inf)"]
        read, solve, total, cholesky, ratio = map(float, regression.groups())
        assert total == pytest.approx(read + solve, abs=0.011) and ratio > 0
        assert "Lanczos: " in stages["dynamics (finite t)"]
        assert "regression step in all" in stages["test predictions"]
        assert "route: t = inf: direct (cholesky); finite times: Lanczos" in run.stdout

    # another network on the same store: refused by name, replaced with --overwrite
    deeper = [*args[:-4], "--times", "inf", "--depth", "2"]
    refused = demo(*deeper)
    assert refused.returncode != 0
    assert "made for other settings: arch" in refused.stderr and "--overwrite" in refused.stderr
    replaced = demo(*deeper, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert "0 already stored" in replaced.stdout


def test_demo_on_an_s3_store_with_storage_options(tmp_path, s3, s3_flags):
    """``demo --store s3://... --storage-option ...``: assembled into, and reused from, an
    object store with its own endpoint; the same accuracies as a local store."""
    args = ["--n", "200", "--n-test", "100", "--n-jacobian", "20", "--times", "inf"]
    local = demo(*args, "--store", str(tmp_path / "local.zarr"), "--workers", "1")
    assert local.returncode == 0, local.stderr[-3000:]
    remote = [*args, "--store", "s3://jacntk-test/demo/fm.zarr", "--workers", "1", *s3_flags]
    first = demo(*remote)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "s3://jacntk-test/demo/fm.zarr" in first.stdout
    second = demo(*remote)
    assert second.returncode == 0, second.stderr[-3000:]
    assert re.search(r": 0 tiles computed, \d+ already stored", second.stdout), second.stdout
    pattern = r"t = +\S+: accuracy ([0-9.]+)"
    assert re.findall(pattern, first.stdout) == re.findall(pattern, local.stdout)
    assert re.findall(pattern, second.stdout) == re.findall(pattern, local.stdout)
