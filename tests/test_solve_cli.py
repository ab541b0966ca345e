"""``jacntk solve`` run as a real subprocess on real Gram stores."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import jacntk
from jacntk.store import GramStore, assemble
from jacntk.training import predict

ARCH = jacntk.MLP(2, "erf", sigma_b=0.2)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from distributed import Client, LocalCluster

    root = tmp_path_factory.mktemp("solve")
    rng = np.random.default_rng(21)
    X = rng.standard_normal((30, 3))
    Xt = rng.standard_normal((8, 3))
    labels = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)
    np.save(root / "X.npy", X)
    np.save(root / "Xt.npy", Xt)
    np.save(root / "y.npy", np.sin(X[:, 0]))
    np.save(root / "labels.npy", labels)
    np.save(root / "labels_t.npy", (Xt[:, 0] > 0).astype(np.int64) + (Xt[:, 1] > 0))
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        assemble(ARCH, X, root / "k.zarr", tile=12, client=client)
        assemble(ARCH, X, root / "j.zarr", jacobian=True, tile=12, client=client)
    return root


def solve(root, *args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "jacntk", "solve", *map(str, args)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=240,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_solve_matches_predict_with_a_progress_bar_and_its_route(workdir):
    proc = solve(
        workdir,
        "j.zarr",
        "--targets",
        "y.npy",
        "--jacobian-reg",
        "0.1",
        "--time",
        "1",
        "10",
        "inf",
        "--test",
        "Xt.npy",
        "--gradients",
        "--jitter",
        "1e-3",
        "--tol",
        "1e-12",
        "--out",
        "out.npz",
        "--progress",
    )
    # one bar for the Lanczos run of the finite times (redrawn in place; text mode reads each
    # '\r' as a line), then the route: the 120 x 120 stored system fits, so t = inf is direct
    bar = [line for line in proc.stderr.splitlines() if line.startswith("Lanczos: ")]
    assert 1 <= len(bar) < 50 and "error" in bar[-1] and "it/s" in bar[-1], proc.stderr
    assert (
        "solve: t = inf: direct (cholesky); finite times: Lanczos; on the stored Gram in memory"
        in proc.stderr
    )
    assert "solve: iteration" not in proc.stderr
    with np.load(workdir / "out.npz") as out:
        values, grads, times = out["values"], out["gradients"], out["times"]
        assert "jitter" in str(out["diagnostics"])
    ref = predict(
        None,
        GramStore.open(workdir / "j.zarr"),
        np.load(workdir / "y.npy"),
        np.load(workdir / "Xt.npy"),
        times=[1, 10, np.inf],
        jacobian_reg=0.1,
        jitter=1e-3,
        tol=1e-12,
    )
    np.testing.assert_array_equal(times, [1, 10, np.inf])
    np.testing.assert_allclose(values, ref.values, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(grads, ref.gradients, rtol=1e-8, atol=1e-12)
    assert [line.split(":")[0] for line in proc.stdout.splitlines()] == ["t=1", "t=10", "t=inf"]


@pytest.mark.parametrize("store, lam", [("j.zarr", "0.1"), ("k.zarr", "0")])
def test_solve_at_the_training_points_matches_predict_there(workdir, store, lam):
    """Without --test: values and input gradients at the training points (the stored operator
    itself for the Jacobian store, the cross Gram's gradient rows for the scalar one)."""
    out = f"train-{store}.npz"
    args = [store, "--targets", "y.npy", "--jacobian-reg", lam, "--time", "3", "inf"]
    proc = solve(workdir, *args, "--gradients", "--jitter", "1e-3", "--tol", "1e-12", "--out", out)
    assert proc.stdout.splitlines()[0].startswith("t=3: rmse ")
    X = np.load(workdir / "X.npy")
    ref = predict(
        None,
        GramStore.open(workdir / store),
        np.load(workdir / "y.npy"),
        X,
        times=[3, np.inf],
        jacobian_reg=float(lam),
        jitter=1e-3,
        tol=1e-12,
    )
    with np.load(workdir / out) as result:
        assert result["values"].shape == (2, 30) and result["gradients"].shape == (2, 30, 3)
        np.testing.assert_allclose(result["values"], ref.values, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(result["gradients"], ref.gradients, rtol=1e-8, atol=1e-12)
        assert '"solver_options": {"tol": 1e-12' in str(result["diagnostics"])


def test_solve_classification_on_a_distributed_cluster_reports_accuracy(workdir):
    args = "k.zarr --targets labels.npy --one-hot --time 5 inf --test Xt.npy".split()
    args += "--test-targets labels_t.npy --jitter 1e-4 --tol 1e-12".split()
    local = solve(workdir, *args, "--out", "local.npz")
    assert "direct (cholesky)" in local.stderr  # the store fits: read once, solved directly
    # --operator stored: the tiles' products on the cluster's workers, CG at t = inf
    dist = solve(workdir, *args, "--out", "dist.npz", "--workers", "1", "--operator", "stored")
    assert "on 1 workers" in dist.stderr and "resident in the memory of 1 workers" in dist.stderr
    lines = local.stdout.splitlines()
    assert lines[0].startswith("t=5: accuracy ") and lines[1].startswith("t=inf: accuracy ")
    assert dist.stdout == local.stdout
    nys = solve(
        workdir,
        *args,
        *"--out nys.npz --operator stored --preconditioner nystrom --rank 5".split(),
    )
    assert "CG with the nystrom (rank 5, mu 0.0001) preconditioner" in nys.stderr
    assert nys.stdout == local.stdout
    with np.load(workdir / "local.npz") as a, np.load(workdir / "dist.npz") as b:
        assert a["values"].shape == (2, 8, 3)
        np.testing.assert_allclose(a["values"], b["values"], rtol=1e-8, atol=1e-12)
        with np.load(workdir / "nys.npz") as c:
            np.testing.assert_allclose(a["values"], c["values"], rtol=1e-8, atol=1e-12)


def test_solve_refuses_bad_input_with_clear_errors(workdir):
    np.save(workdir / "short.npy", np.zeros(29))
    y_nan = np.sin(np.arange(30.0))
    y_nan[4] = np.nan
    np.save(workdir / "nan.npy", y_nan)
    cases = [
        (["k.zarr", "--targets", "short.npy"], r"y_train must have shape \(30,\)"),
        (["k.zarr", "--targets", "nan.npy"], r"NaN or inf \(first at row 4\)"),
        (["k.zarr", "--targets", "y.npy", "--time", "-1"], "--time values must be >= 0"),
        (
            ["k.zarr", "--targets", "y.npy", "--jacobian-reg", "-2"],
            "--jacobian-reg must be a finite number >= 0",
        ),
        (["k.zarr", "--targets", "y.npy", "--jacobian-reg", "0.1"], "holds the scalar ntk Gram"),
        (["missing.zarr", "--targets", "y.npy"], "no Gram store"),
    ]
    for args, message in cases:
        proc = solve(workdir, *args, "--out", "bad.npz", check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "jacntk solve: error:" in proc.stderr
        assert __import__("re").search(message, proc.stderr), (message, proc.stderr)
    assert not (workdir / "bad.npz").exists()


def test_solve_refuses_incomplete_store_and_existing_output(workdir, tmp_path):
    import shutil

    broken = tmp_path / "broken.zarr"
    shutil.copytree(workdir / "k.zarr", broken)
    broken.joinpath("manifest", "c", "0", "1", "0", "0").unlink()
    proc = solve(workdir, broken, "--targets", "y.npy", "--out", tmp_path / "o.npz", check=False)
    assert proc.returncode == 2 and "incomplete" in proc.stderr and "(0, 1)" in proc.stderr
    (tmp_path / "exists.npz").write_bytes(b"keep me")
    proc = solve(
        workdir, "k.zarr", "--targets", "y.npy", "--out", tmp_path / "exists.npz", check=False
    )
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert (tmp_path / "exists.npz").read_bytes() == b"keep me"


def test_solve_checks_the_output_folder_before_solving(workdir, tmp_path):
    missing = tmp_path / "missing_dir" / "x.npz"
    proc = solve(workdir, "k.zarr", "--targets", "y.npy", "--out", missing, check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "missing_dir" in proc.stderr
    assert "CG" not in proc.stderr and "iteration" not in proc.stderr  # no solve ran
    assert not missing.parent.exists()


def test_a_solve_killed_while_writing_leaves_no_output_and_reruns(workdir, tmp_path):
    """SIGKILL at the last moment (the --out file being written, JACNTK_KILL_AT=output): no
    --out file appears (only its .partial), and the same command rerun writes the result of an
    undisturbed run."""
    import os
    import signal

    out, ref = tmp_path / "z.npz", tmp_path / "ref.npz"
    args = ["k.zarr", "--targets", "y.npy", "--test", "Xt.npy"]
    env = {**os.environ, "JACNTK_KILL_AT": "output"}
    killed = subprocess.run(
        [sys.executable, "-m", "jacntk", "solve", *args, "--out", str(out)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists() and len(list(tmp_path.glob("z.npz.*.partial"))) == 1
    solve(workdir, *args, "--out", out)
    solve(workdir, *args, "--out", ref)
    np.testing.assert_array_equal(np.load(out)["values"], np.load(ref)["values"])
    assert not list(tmp_path.glob("z.npz.*.partial"))  # the dead run's partial file removed


def test_two_solves_writing_one_output_at_once_leave_it_whole(workdir, tmp_path):
    """Two ``jacntk solve --overwrite`` on the same --out at once: both exit 0 and the file is
    one run's whole result (each writes its own partial file), with no partial file left."""
    out, ref = tmp_path / "z.npz", tmp_path / "ref.npz"
    args = ["k.zarr", "--targets", "y.npy", "--test", "Xt.npy", "--quiet"]
    cmd = [sys.executable, "-m", "jacntk", "solve", *args, "--out", str(out), "--overwrite"]
    for _ in range(3):
        procs = [
            subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(2)
        ]
        assert [p.wait(timeout=240) for p in procs] == [0, 0]
    solve(workdir, *args, "--out", ref)
    np.testing.assert_array_equal(np.load(out)["values"], np.load(ref)["values"])
    assert not list(tmp_path.glob("z.npz.*.partial"))
