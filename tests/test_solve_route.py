"""The route of a solve on a Gram store: direct when the store fits in memory, preconditioned CG
(Nystrom for a scalar Gram) when it does not, one memory rule deciding, the route stated in the
diagnostics; ``jacntk solve``'s bounded progress and ``--storage-option``."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import numpy as np
import pytest

import jacntk
from jacntk.linalg import _stored
from jacntk.linalg._stored import DIRECT_COPIES, StoredGram, fits_in_memory
from jacntk.progress import MIN_INTERVAL_S
from jacntk.store import GramStore, assemble
from jacntk.training import predict, training_system

ARCH = jacntk.MLP(2, "erf", sigma_b=0.2)


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A scalar store of 120 points in d = 4 (plain CG needs ~400 iterations at t = inf, Nystrom
    rank 100 ~40), a Jacobian store of 20 points, and a scalar store of 600 points in d = 3
    (condition ~1e11: plain CG runs thousands of iterations)."""
    from distributed import Client, LocalCluster

    root = tmp_path_factory.mktemp("route")
    rng = np.random.default_rng(3)
    X = rng.standard_normal((120, 4))
    Xj = rng.standard_normal((20, 3))
    Xl = np.random.default_rng(0).standard_normal((600, 3))
    np.save(root / "y600.npy", np.sin(Xl[:, 0]))
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        assemble(ARCH, X, root / "k.zarr", tile=40, client=client)
        assemble(ARCH, Xj, root / "j.zarr", jacobian=True, tile=8, client=client)
        assemble(ARCH, Xl, root / "l.zarr", tile=300, client=client)
    return root, X, Xj


def test_a_store_that_fits_is_solved_directly_and_says_so(stores):
    root, X, Xj = stores
    y, Xt = np.sin(X[:, 0]), X[:7] + 0.1
    store = GramStore.open(root / "k.zarr")
    p = predict(None, store, y, Xt, times=[10.0, np.inf], gradients=False)
    d = p.diagnostics
    assert d.operator == "stored" and d.solver == "cholesky" and d.cg is None
    assert d.route.startswith("t = inf: direct (cholesky); finite times: Lanczos; on the stored")
    assert "in memory (dense" in d.route and "budget" in d.route
    assert {"read", "lanczos", "direct"} <= set(d.seconds) and d.preconditioner is None
    q = predict(ARCH, X, y, Xt, times=[10.0, np.inf], gradients=False)
    assert q.diagnostics.solver == "cholesky"
    assert rel(p.values, q.values) < 1e-10
    # the Jacobian store too (block d+1, fields expanded through their routing)
    yj = np.cos(Xj[:, 1])
    Xjt = Xj[:3] + 0.2
    pj = predict(None, GramStore.open(root / "j.zarr"), yj, Xjt, times=[np.inf], jacobian_reg=0.1)
    qj = predict(ARCH, Xj, yj, Xjt, times=[np.inf], jacobian_reg=0.1)
    assert pj.diagnostics.solver == "cholesky" and "in memory (dense" in pj.diagnostics.route
    assert rel(pj.values, qj.values) < 1e-9 and rel(pj.gradients, qj.gradients) < 1e-9
    # operator="stored" keeps the tiles: CG, and the same answer
    r = predict(None, store, y, Xt, times=[np.inf], gradients=False, operator="stored", tol=1e-12)
    assert r.diagnostics.solver == "cg" and "CG" in r.diagnostics.cg
    assert "tiles cached in memory" in r.diagnostics.route
    assert rel(r.values[0], q.values[1]) < 1e-6


def test_a_store_too_large_for_memory_runs_cg_with_nystrom(stores, monkeypatch):
    from jacntk.linalg._cg import cg
    from jacntk.linalg._gram import DenseGram
    from jacntk.linalg._scaled import ScaledGram

    root, X, _ = stores
    y = np.sin(X[:, 0])
    store = GramStore.open(root / "k.zarr")
    q = predict(ARCH, X, y, X[:5], times=[np.inf], gradients=False)
    # a budget (half of the memory available) between the upper tiles (0.07 MiB) and the two
    # dense copies of the direct route (0.22 MiB): too large to be solved directly
    monkeypatch.setattr(_stored, "available_memory_mib", lambda: 0.3)
    system = training_system(None, store)
    assert not system.B.base.dense and system.B.base.cached
    p = predict(None, store, y, X[:5], times=[np.inf], gradients=False)
    d = p.diagnostics
    assert d.solver == "cg" and d.operator == "stored"
    assert re.fullmatch(
        r"nystrom \(rank 100, mu \S+\) for block-jacobi of a scalar Gram", d.preconditioner
    )
    assert "tiles cached in memory" in d.route and "budget 0 MiB" in d.route and "mu" in d.route
    assert {"preconditioner", "cg"} <= set(d.seconds) and "direct" not in d.seconds
    assert rel(p.values, q.values) < 1e-6
    # the default of a scalar Gram (block-Jacobi: a diagonal scaling) would take > 4x more
    plain = cg(ScaledGram(DenseGram(jacntk.kernel(ARCH, X))), y, warn=False)
    assert plain.converged.all() and d.cg_result.iterations * 4 < plain.iterations
    # a given jitter is the stated regularisation of the Nystrom preconditioner
    jittered = predict(None, store, y, X[:5], times=[np.inf], jitter=1e-3, gradients=False)
    assert "mu 0.001)" in jittered.diagnostics.preconditioner
    with pytest.warns(jacntk.ConvergenceWarning, match="CG at t=inf did not converge"):
        none = predict(None, store, y, X[:5], times=[np.inf], preconditioner="none", maxiter=5)
    assert (
        none.diagnostics.preconditioner == "none" and "unpreconditioned" in none.diagnostics.route
    )


def test_lanczos_keeps_two_blocks_when_its_basis_would_not_fit(stores, monkeypatch):
    """``SolverOptions.lanczos_basis``: "auto" keeps the whole basis for as many steps as fit
    the memory budget and starts again with the two-pass basis (client memory O(N k)) when the
    run needs more; both give the same predictions, and the route says which ran."""
    from jacntk.options import SolverOptions
    from jacntk.training import _coefficients

    root, X, _ = stores
    Y = np.stack([np.sin(X[:, 0]), np.cos(X[:, 1])], axis=1)
    store = GramStore.open(root / "k.zarr")
    times = [10.0, 1000.0]
    full = predict(None, store, Y, X[:5], times=times, gradients=False)
    assert "finite times: Lanczos;" in full.diagnostics.route
    two = predict(
        None, store, Y, X[:5], times=times, gradients=False,
        solver=SolverOptions(lanczos_basis="two-pass"),
    )  # fmt: skip
    assert "finite times: Lanczos (two-pass basis)" in two.diagnostics.route
    assert "two passes" in two.diagnostics.lanczos[0]
    assert rel(two.values, full.values) < 1e-8
    steps = int(full.diagnostics.lanczos[0].split()[1])  # "Lanczos: S iterations, ..."
    row = 8.0 * X.shape[0] * Y.shape[1] / 2**20  # MiB of one step of the basis
    for fit, want in ((steps + 5, "finite times: Lanczos;"), (steps // 2, "two-pass basis")):
        monkeypatch.setattr(_coefficients, "memory_budget_mib", lambda fit=fit: fit * row)
        auto = predict(None, store, Y, X[:5], times=times, gradients=False)
        assert want in auto.diagnostics.route, (fit, steps, auto.diagnostics.route)
        assert rel(auto.values, full.values) < 1e-8
    with pytest.raises(ValueError, match="lanczos_basis must be one of"):
        SolverOptions(lanczos_basis="disk")


def test_fitting_in_memory_is_one_rule_against_one_budget(stores):
    root, X, Xj = stores
    store = GramStore.open(root / "k.zarr")
    dense_mib = DIRECT_COPIES * 8 * 120**2 / 2**20
    tiles_mib = 120 * (120 + 40) / 2 * 8 / 2**20
    for budget, dense, cached in [
        (1.01 * dense_mib, True, True),
        (0.99 * dense_mib, False, True),
        (0.99 * tiles_mib, False, False),
    ]:
        op = StoredGram(store, cache_mb=budget, dense=None)
        assert (op.dense, op.cached) == (dense, cached), budget
        assert op.dense == fits_in_memory(op.dense_bytes, budget)
    assert not StoredGram(store).dense  # tiles unless asked (dense=None or True)
    G = jacntk.kernel(ARCH, X)
    held = StoredGram(store, dense=True)
    assert held.to_dense() is held.load()
    np.testing.assert_allclose(held.to_dense(), G, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(StoredGram(store, cache_mb=0).to_dense(), G, rtol=1e-13, atol=1e-15)
    jstore = GramStore.open(root / "j.zarr")
    J = jacntk.kernel(ARCH, Xj, jacobian=True)
    np.testing.assert_allclose(StoredGram(jstore, dense=True).load(), J, rtol=1e-12, atol=1e-14)
    values = StoredGram(jstore, values_only=True, dense=True).load()
    np.testing.assert_allclose(values, J[::4, ::4], rtol=1e-12, atol=1e-14)


def solve(root, *args, env=None) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "jacntk", "solve", *map(str, args)],
        cwd=root,
        capture_output=True,  # bytes: a bar redraws with '\r', which text mode reads as '\n'
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return proc, time.perf_counter() - start


def test_the_memory_budget_follows_the_process_caps(memory_cgroup):
    """A process capped below the machine's memory budgets by its cap: ``prlimit --as``
    (RLIMIT_AS) and a memory cgroup each bound ``available_memory_mib``."""
    code = "from jacntk.linalg._stored import available_memory_mib as a; print(a())"
    free = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout)  # fmt: skip
    cap = 3 * 2**30
    assert free > 2 * 2**10 + 1024, "needs a few GiB free"
    limited = subprocess.run(
        ["prlimit", f"--as={cap}", sys.executable, "-c", code], capture_output=True, text=True
    )
    assert limited.returncode == 0, limited.stderr
    assert float(limited.stdout) < cap / 2**20 < free
    group = memory_cgroup(400 * 2**20)
    inside = subprocess.run([*group, sys.executable, "-c", code], capture_output=True, text=True)
    assert inside.returncode == 0, inside.stderr
    assert 0 < float(inside.stdout) < 400


def test_a_3000_iteration_cg_solve_prints_a_bounded_bar_or_nothing(stores):
    import os

    root, _, _ = stores
    # one Numba thread: on a shared 2-core machine a parallel product of a 600-point Gram waits
    # for a timeslice per product (~7 ms against ~0.4 ms serial)
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    args = ["l.zarr", "--targets", "y600.npy", "--operator", "stored"]
    args += ["--preconditioner", "none", "--maxiter", "3000", "--overwrite"]
    bar, wall = solve(root, *args, "--out", "bar.npz", "--progress", env=env)
    with np.load(root / "bar.npz") as out:
        assert '"cg": "CG: 3000 iterations' in str(out["diagnostics"])
    err = bar.stderr
    lines, redraws = err.count(b"\n"), err.count(b"\r")
    assert lines < 50, err.decode()
    assert 2 <= redraws <= wall / MIN_INTERVAL_S + 10, (redraws, wall)
    assert b"CG: 3000it" in err and b"residual" in err and b"it/s" in err
    assert b"solve: t = inf: CG, unpreconditioned; on the stored Gram tiles cached" in err
    quiet, _ = solve(root, *args, "--out", "quiet.npz", "--quiet", env=env)
    assert b"\r" not in quiet.stderr and b"it/s" not in quiet.stderr
    assert not [line for line in quiet.stderr.splitlines() if line.startswith(b"CG")]
    assert quiet.stdout == bar.stdout


def test_solve_reads_an_s3_store_with_its_storage_options(tmp_path, s3, s3_flags):
    """``--storage-option`` reaches ``GramStore.open``: a store on a moto S3 server with its own
    endpoint, solved from the shell, equals the in-memory prediction."""
    from distributed import Client, LocalCluster

    X = np.random.default_rng(5).standard_normal((40, 3))
    url = "s3://jacntk-test/solve/k.zarr"
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        assemble(ARCH, X, url, tile=16, client=client, storage_options=s3)
    np.save(tmp_path / "y.npy", np.sin(X[:, 0]))
    np.save(tmp_path / "Xt.npy", X[:6] + 0.05)
    args = [url, "--targets", "y.npy", "--test", "Xt.npy", "--out", "s3.npz", "--quiet"]
    proc, _ = solve(tmp_path, *args, *s3_flags)
    assert b"direct (cholesky)" in proc.stderr
    with np.load(tmp_path / "s3.npz") as out:
        ref = predict(ARCH, X, np.sin(X[:, 0]), X[:6] + 0.05, times=[np.inf])
        assert rel(out["values"], ref.values) < 1e-10
