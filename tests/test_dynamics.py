"""``jacntk.predict`` against the dense solution of the training ODE (docs/math.md §8.2)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import cho_factor, cho_solve, expm

import jacntk
from jacntk.linalg import ConvergenceWarning
from jacntk.store import GramStore, assemble
from jacntk.training import predict

ARCH = jacntk.MLP(3, "erf", sigma_b=0.1, kappa=0.7)
N, D = 14, 3


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    X = rng.standard_normal((N, D))
    X = (X - X.mean(0)) / X.std(0)
    Xt = rng.standard_normal((4, D))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1]
    return X, y, Xt


def dense_reference(arch, X, y, Xt, lam, jitter, lr, times, F0=None, F0t=None):
    """F_t(x) = F0(x) + Theta(x,X) D^1/2 phi_t(B) D^1/2 (Y - F0(X)) by scipy expm / cho_solve.

    phi_t(B) r = int_0^t c exp(-c s B) r ds is the top-right block of expm([[-ctB, ctr],[0,0]]).
    """
    n, d = X.shape
    G = jacntk.kernel(arch, X, jacobian=True)
    Gt = jacntk.kernel(arch, Xt, X, jacobian=True)
    Y = np.zeros((n, d + 1))
    Y[:, 0] = y
    F0 = np.zeros((n, d + 1)) if F0 is None else F0
    F0t = np.zeros((Xt.shape[0], d + 1)) if F0t is None else F0t
    R = (Y - F0).ravel()
    if lam == 0:
        G, Gt, R, s = G[:: d + 1, :: d + 1], Gt[:, :: d + 1], R[:: d + 1], np.ones(n)
    else:
        s = np.tile(np.r_[1.0, np.full(d, np.sqrt(lam))], n)
    B = s[:, None] * G * s[None, :] + jitter * np.eye(s.size)
    c = lr / n  # jacntk's kernel carries kappa^2
    out = []
    for t in times:
        if np.isinf(t):
            z = cho_solve(cho_factor(B), s * R)
        else:
            M = np.zeros((s.size + 1, s.size + 1))
            M[:-1, :-1] = -c * t * B
            M[:-1, -1] = c * t * s * R
            z = expm(M)[:-1, -1]
        out.append(F0t + (Gt @ (s * z)).reshape(-1, d + 1))
    return np.array(out)


def rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


TIMES = [0.0, 0.5, 5.0, 50.0, float("inf")]


@pytest.mark.parametrize("lam, jitter", [(0.0, 0.0), (0.01, 1e-4), (1.0, 1e-2)])
@pytest.mark.parametrize("operator", ["dense", "structured"])
def test_predict_matches_dense_ode_solution(data, lam, jitter, operator):
    X, y, Xt = data
    ref = dense_reference(ARCH, X, y, Xt, lam, jitter, 3.0, TIMES)
    p = predict(
        ARCH,
        X,
        y,
        Xt,
        times=TIMES,
        jacobian_reg=lam,
        learning_rate=3.0,
        jitter=jitter,
        operator=operator,
        tol=1e-13,
        tile=8,
    )
    assert p.values.shape == (5, 4) and p.gradients.shape == (5, 4, D)
    np.testing.assert_array_equal(p.times, TIMES)
    assert np.all(p.values[0] == 0) and np.all(p.gradients[0] == 0)  # mean predictor at t=0
    assert rel(p.values, ref[..., 0]) < 1e-8
    assert rel(p.gradients, ref[..., 1:]) < 1e-8
    assert p.diagnostics.jitter == jitter
    assert p.diagnostics.c == pytest.approx(3.0 / N)  # eta / N: the kernel carries kappa^2


def test_predict_steps_follow_explicit_gradient_descent_with_initial_outputs(data, rng):
    """psi_k: k steps of F <- F - c Theta D (F - Y) on train and test points jointly."""
    X, y, Xt = data
    lam, lr, d1 = 0.1, 2.0, D + 1
    F0 = rng.standard_normal((N, d1)) * 0.1
    F0t = rng.standard_normal((4, d1)) * 0.1
    G = jacntk.kernel(ARCH, X, jacobian=True)
    Gt = jacntk.kernel(ARCH, Xt, X, jacobian=True)
    Dg = np.tile(np.r_[1.0, np.full(D, lam)], N)
    Y = np.zeros((N, d1))
    Y[:, 0] = y
    c = lr / N  # jacntk's kernel carries kappa^2
    F, Ft, snapshots = F0.ravel(), F0t.ravel(), {}
    for k in range(1, 301):
        step = Dg * (F - Y.ravel())
        F, Ft = F - c * G @ step, Ft - c * Gt @ step
        snapshots[k] = Ft.reshape(4, d1)
    steps = [1, 20, 300]
    p = predict(
        ARCH,
        X,
        y,
        Xt,
        times=None,
        steps=steps,
        jacobian_reg=lam,
        learning_rate=lr,
        f0=((F0[:, 0], F0[:, 1:]), F0t),
        tol=1e-13,
    )
    np.testing.assert_allclose(p.times, np.array(steps) * lr)
    for i, k in enumerate(steps):
        assert rel(p.values[i], snapshots[k][:, 0]) < 1e-8
        assert rel(p.gradients[i], snapshots[k][:, 1:]) < 1e-8
    # f0 as a callable gives the same
    lookup = {X.tobytes(): F0, Xt.tobytes(): F0t}
    q = predict(
        ARCH,
        X,
        y,
        Xt,
        steps=steps,
        jacobian_reg=lam,
        learning_rate=lr,
        f0=lambda Z: (lookup[Z.tobytes()][:, 0], lookup[Z.tobytes()][:, 1:]),
        tol=1e-13,
    )
    np.testing.assert_allclose(q.values, p.values, rtol=1e-12, atol=1e-14)


def test_predict_from_gram_stores_equals_in_memory(data, tmp_path):
    from distributed import Client, LocalCluster

    X, y, Xt = data
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        assemble(ARCH, X, tmp_path / "k.zarr", kind="ntk", tile=6, client=client)
        assemble(ARCH, X, tmp_path / "j.zarr", kind="ntk", jacobian=True, tile=6, client=client)
    times = [1.0, float("inf")]
    for path, lam in [("k.zarr", 0.0), ("j.zarr", 0.05)]:
        store = GramStore.open(tmp_path / path)
        p = predict(None, store, y, Xt, times=times, jacobian_reg=lam, jitter=1e-2, tol=1e-12)
        q = predict(ARCH, X, y, Xt, times=times, jacobian_reg=lam, jitter=1e-2, tol=1e-12)
        assert p.diagnostics.operator == "stored"
        assert rel(p.values, q.values) < 1e-8 and rel(p.gradients, q.gradients) < 1e-8
        r = predict(
            None,
            store,
            y,
            Xt,
            times=times,
            jacobian_reg=lam,
            jitter=1e-2,
            tol=1e-12,
            preconditioner="nystrom",
            rank=5,
            operator="stored",  # the tiles and CG, although this store fits in memory
        )
        assert rel(r.values, q.values) < 1e-8 and "CG" in r.diagnostics.cg
    with pytest.raises(ValueError, match="holds the scalar ntk Gram"):
        predict(None, GramStore.open(tmp_path / "k.zarr"), y, Xt, times=[1.0], jacobian_reg=0.1)
    with pytest.raises(ValueError, match="differs from the store"):
        predict(jacntk.MLP(2, "erf"), GramStore.open(tmp_path / "k.zarr"), y, Xt, times=[1.0])


def test_predictive_covariance_is_prior_at_zero_and_vanishes_on_training_points(data):
    X, y, _ = data
    Xt = X[:3]
    p = predict(ARCH, X, y, Xt, times=[0.0, 10.0, float("inf")], covariance=True, tol=1e-13)
    prior = jacntk.kernel(ARCH, Xt, kind="nngp")
    np.testing.assert_allclose(p.covariance[0], prior, rtol=1e-10, atol=1e-14)
    assert np.abs(p.covariance[2]).max() < 1e-6 * np.abs(prior).max()
    assert np.all(np.diag(p.covariance[1]) < np.diag(prior)) and np.all(
        np.diag(p.covariance[1]) > np.diag(p.covariance[2])
    )
    np.testing.assert_allclose(p.values[2], y[:3], rtol=1e-7)  # interpolation at t = inf


def test_multiple_target_columns_match_single_columns(data):
    X, y, Xt = data
    Y = np.stack([y, np.cos(X[:, 2])], axis=1)
    p = predict(ARCH, X, Y, Xt, times=[2.0, float("inf")], jacobian_reg=0.1, jitter=1e-3)
    assert p.values.shape == (2, 4, 2) and p.gradients.shape == (2, 4, D, 2)
    for j in range(2):
        q = predict(ARCH, X, Y[:, j], Xt, times=[2.0, float("inf")], jacobian_reg=0.1, jitter=1e-3)
        np.testing.assert_allclose(p.values[..., j], q.values, rtol=1e-8, atol=1e-12)


def test_predict_rejects_bad_input(data):
    X, y, Xt = data
    with pytest.raises(ValueError, match=r"shape \(14,\) or \(14, k\).*got shape \(13,\)"):
        predict(ARCH, X, y[:13], Xt, times=[1.0])
    y_nan = y.copy()
    y_nan[5] = np.nan
    with pytest.raises(ValueError, match="NaN or inf \\(first at row 5\\)"):
        predict(ARCH, X, y_nan, Xt, times=[1.0])
    with pytest.raises(ValueError, match=r"times must be >= 0.*-1.0"):
        predict(ARCH, X, y, Xt, times=[1.0, -1.0])
    with pytest.raises(ValueError, match="jacobian_reg must be a finite number >= 0, got -0.5"):
        predict(ARCH, X, y, Xt, times=[1.0], jacobian_reg=-0.5)
    with pytest.raises(ValueError, match="exactly one of times"):
        predict(ARCH, X, y, Xt, times=[1.0], steps=[3])
    with pytest.raises(ValueError, match="X_test has d=2"):
        predict(ARCH, X, y, Xt[:, :2], times=[1.0])
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        predict(ARCH, X, y, Xt, times=[1.0], learning_rate=0.0)
    with pytest.raises(ValueError, match=r"f0 train part must have shape \(14,\)"):
        predict(ARCH, X, y, Xt, times=[1.0], f0=(np.zeros(3), np.zeros(4)))


def test_non_converging_solve_warns_with_diagnostics(data):
    X, y, Xt = data
    with pytest.warns(
        ConvergenceWarning, match=r"CG at t=inf did not converge.*iterations.*jitter 0"
    ):
        p = predict(
            ARCH,
            X,
            y,
            Xt,
            times=[float("inf")],
            jacobian_reg=0.01,
            maxiter=3,
            operator="structured",  # a dense B is solved directly; CG runs matrix-free
        )
    assert p.diagnostics.cg is not None and not p.diagnostics.cg_result.converged.all()
    with pytest.warns(ConvergenceWarning, match="Lanczos did not reach tol"):
        predict(ARCH, X, y, Xt, times=[1e4], jacobian_reg=0.01, maxiter=4)


def test_max_stable_learning_rate_is_2n_over_lambda_max(data):
    from jacntk.training import max_stable_learning_rate, training_system

    X, y, Xt = data
    system = training_system(ARCH, X, jacobian_reg=0.1)
    lam_max = np.linalg.eigvalsh(system.B.to_dense())[-1]
    eta = max_stable_learning_rate(system)
    assert eta == pytest.approx(2 * N / lam_max, rel=1e-8)
    with pytest.warns(RuntimeWarning, match="gradient descent is unstable"):
        predict(ARCH, X, y, Xt, steps=[5], jacobian_reg=0.1, learning_rate=1.5 * eta)


def test_dense_t_inf_is_a_direct_solve_and_matches_cg(data):
    X, y, Xt = data
    direct = predict(ARCH, X, y, Xt, times=[float("inf")], jacobian_reg=0.01, jitter=1e-8)
    iterative = predict(
        ARCH,
        X,
        y,
        Xt,
        times=[float("inf")],
        jacobian_reg=0.01,
        jitter=1e-8,
        operator="structured",
    )
    assert direct.diagnostics.solver == "cholesky" and iterative.diagnostics.solver == "cg"
    assert rel(direct.values, iterative.values) < 1e-6


def test_dense_t_inf_solve_factorises_in_place():
    """Peak memory of a dense t = inf prediction: the Gram plus one scaled copy that LAPACK
    factorises in place (a C-ordered copy handed to ``cho_factor`` would be copied once more to
    Fortran order: one Gram more).  Measured in a fresh process (VmHWM)."""
    import subprocess
    import sys

    script = """
import numpy as np, jacntk
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
X = np.random.default_rng(0).standard_normal((4000, 20))
jacntk.predict(jacntk.MLP(2, "erf"), X[:50], X[:50, 0], X[:5], times=[float("inf")])  # warm up
base = hwm()
p = jacntk.predict(jacntk.MLP(2, "erf"), X, np.sin(X[:, 0]), X[:5], times=[float("inf")],
                   gradients=False, jitter=1e-6)
assert p.diagnostics.solver == "cholesky"
print((hwm() - base) / (8 * 4000**2))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    copies = float(out.stdout.split()[-1])
    assert copies < 2.7, f"peak {copies:.2f} Gram-sized arrays (2.2 measured in place, 3.2 not)"
