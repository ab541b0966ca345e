"""CG, preconditioners and Lanczos matrix functions against dense scipy
(docs/math.md §8.6, §6.2)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.linalg import cho_factor, cho_solve, eigh, expm

import jacntk
from jacntk.linalg import (
    ConvergenceWarning,
    DenseGram,
    ScaledGram,
    StructuredGram,
    block_jacobi,
    cg,
    extreme_eigenvalues,
    lanczos_expm,
    lanczos_functions,
    lanczos_phi,
    lanczos_psi,
    nystrom,
)


def standardised(n, d, seed):
    X = np.random.default_rng(seed).standard_normal((n, d))
    return (X - X.mean(0)) / X.std(0)


@pytest.fixture(scope="module")
def jntk_3000():
    """A JNTK system with N (d+1) = 3000: erf, depth 4, standardised inputs."""
    X = standardised(300, 9, 0)
    arch = jacntk.MLP(4, "erf")
    G = jacntk.augment(jacntk.kernel_fields(arch, X), X)
    return arch, X, G


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("n, lam, jitter", [(300, 0.01, 1e-2), (100, 1.0, 1e-2)])
def test_block_cg_matches_cho_solve_up_to_3000_unknowns(jntk_3000, rng, n, lam, jitter):
    arch, X, G = jntk_3000
    m = n * 10
    B = ScaledGram(DenseGram(G[:m, :m], 10), lam, jitter)
    Bd = B.to_dense()
    rhs = rng.standard_normal((m, 3))
    res = cg(B, rhs, M=block_jacobi(B), tol=1e-12)
    expected = cho_solve(cho_factor(Bd), rhs)
    assert res.converged.all() and res.jitter == jitter
    assert rel(res.x, expected) < 1e-8
    assert res.residuals.shape == (res.iterations + 1, 3)
    assert res.residuals[0].max() == pytest.approx(1.0)
    assert (res.true_residual < 1e-11).all()


def test_block_jacobi_reduces_cg_iterations_on_a_jntk_system(capsys):
    X = standardised(60, 6, 1)
    arch = jacntk.MLP(6, "erf")
    B = ScaledGram(DenseGram(jacntk.kernel(arch, X, jacobian=True), 7), 0.01, 1e-6)
    rhs = np.random.default_rng(2).standard_normal(B.shape[0])
    plain = cg(B, rhs, tol=1e-8, warn=False)
    pre = cg(B, rhs, M=block_jacobi(B), tol=1e-8)
    assert pre.converged.all()
    with capsys.disabled():
        print(
            f"\n[block-Jacobi] JNTK erf L=6, N=60, d=6, lam=0.01, jitter=1e-6: CG iterations "
            f"{plain.iterations} ({'converged' if plain.converged.all() else 'not converged'}) "
            f"-> {pre.iterations} with block-Jacobi ({plain.iterations / pre.iterations:.1f}x)"
        )
    assert pre.iterations < 0.7 * plain.iterations


def test_structured_block_jacobi_equals_dense_block_inverse(rng):
    X = standardised(25, 5, 3) * np.exp(rng.uniform(-1, 1, (25, 1)))
    X[3] = 0.0  # a point at the origin: x/|x| undefined, the block is diagonal
    arch = jacntk.MLP(2, "gelu", sigma_b=0.3)
    for lam, jitter in [(0.01, 0.0), (2.0, 1e-3)]:
        fast = block_jacobi(ScaledGram(StructuredGram(arch, X), lam, jitter))
        assert fast.inverse is None  # the O(d) path
        B = ScaledGram(DenseGram(jacntk.kernel(arch, X, jacobian=True), 6), lam, jitter)
        inv = np.linalg.inv(B.diagonal_blocks())
        V = rng.standard_normal((150, 2))
        expected = np.einsum("iab,ibk->iak", inv, V.reshape(25, 6, 2)).reshape(150, 2)
        assert rel(fast @ V, expected) < 1e-10
        assert rel(block_jacobi(B) @ V, expected) < 1e-10


def test_nystrom_preconditioner_reduces_iterations(jntk_3000, rng):
    arch, X, G = jntk_3000
    B = ScaledGram(DenseGram(G[:600, :600], 10), 0.01, 1e-3)
    rhs = rng.standard_normal(600)
    plain = cg(B, rhs, tol=1e-10)
    pre = cg(B, rhs, M=nystrom(B, 60), tol=1e-10)
    assert pre.converged.all() and pre.iterations < 0.5 * plain.iterations
    assert rel(pre.x, np.linalg.solve(B.to_dense(), rhs)) < 1e-8


def test_lanczos_exp_phi_psi_at_many_times_match_expm_and_eigh(jntk_3000, rng):
    arch, X, G = jntk_3000
    B = ScaledGram(DenseGram(G[:600, :600], 10), 0.05)
    Bd = B.to_dense()
    v = rng.standard_normal(600)
    w, V = eigh(Bd)
    c = 1.0 / w[-1]
    times = [0.1, 3.0, 100.0, 1000.0]
    res = lanczos_expm(B, v, times, c=c, tol=1e-12)
    assert res.converged.all() and res.values.shape == (4, 600)
    for i, t in enumerate(times):
        assert rel(res.values[i], expm(-c * t * Bd) @ v) < 1e-8
    assert (res.error_estimates <= 1e-12).all()
    phi = lanczos_phi(B, v, times, c=c, tol=1e-12)
    for i, t in enumerate(times):
        # phi_t(B) v = int_0^t c exp(-c s B) v ds, as the top-right block of one expm
        M = np.zeros((601, 601))
        M[:600, :600] = -c * t * Bd
        M[:600, 600] = c * t * v
        assert rel(phi.values[i], expm(M)[:600, 600]) < 1e-8
    steps = [1, 7, 100, 5000]
    psi = lanczos_psi(B, v, steps, c=c, tol=1e-12)
    for i, k in enumerate(steps):
        ref = V @ ((1 - (1 - c * w) ** k) / w * (V.T @ v))
        assert rel(psi.values[i], ref) < 1e-8
    # one Krylov basis for all times: far fewer products than the dimension
    assert res.iterations < 300 and phi.iterations < 300


def test_lanczos_stops_when_every_time_converged_and_reports_estimates(rng):
    A = np.diag(np.linspace(1.0, 100.0, 400))
    v = rng.standard_normal(400)
    seen = []
    res = lanczos_functions(
        A,
        v,
        [lambda s: np.exp(-0.01 * s), lambda s: np.exp(-1.0 * s)],
        tol=1e-10,
        callback=lambda m, est: seen.append((m, est)),
    )
    assert res.converged.all() and res.iterations == seen[-1][0] < 400
    exact = np.exp(-np.diag(A)[None, :] * np.array([[0.01], [1.0]])) * v
    err = np.linalg.norm(res.values - exact, axis=1) / np.linalg.norm(exact, axis=1)
    assert (err < 1e-9).all()
    with pytest.warns(ConvergenceWarning, match="maxiter=10"):
        short = lanczos_functions(A, v, [lambda s: np.exp(-s)], maxiter=10, tol=1e-14)
    assert not short.converged.all() and short.error_estimates[0] > 1e-14


def test_block_lanczos_shares_one_space_deflates_and_is_exact_when_invariant(rng):
    """k start vectors share one block Krylov space: each column equals its own single-vector
    run, every step is one matmat of at most k columns, fewer steps than the separate runs; a
    zero or dependent column is deflated from the first block; an invariant space is exact."""
    w = np.geomspace(1e-3, 50.0, 300)
    Qm, _ = np.linalg.qr(rng.standard_normal((300, 300)))
    A = (Qm * w) @ Qm.T
    V = rng.standard_normal((300, 4))
    V[:, 2] = 0.0
    V[:, 3] = V[:, 0] - 2.0 * V[:, 1]  # dependent: the first block has 2 directions
    fns = [lambda s: np.exp(-0.1 * s), lambda s: np.exp(-2.0 * s)]
    products = []

    class Counting(DenseGram):
        def _matmat(self, X):
            products.append(X.shape[1])
            return super()._matmat(X)

    res = lanczos_functions(Counting(A), V, fns, tol=1e-11)
    assert res.values.shape == (2, 300, 4) and res.converged.shape == (2, 4)
    assert res.converged.all() and np.all(res.values[:, :, 2] == 0.0)
    exact = [Qm @ (np.exp(-t * w)[:, None] * (Qm.T @ V)) for t in (0.1, 2.0)]
    separate = 0
    for i in range(2):
        assert rel(res.values[i], exact[i]) < 1e-9
        for j in (0, 1, 3):
            single = lanczos_functions(A, V[:, j], fns, tol=1e-11)
            separate = max(separate, single.iterations)
            assert np.allclose(single.values[i], res.values[i, :, j], rtol=0, atol=1e-12)
    assert len(products) == res.iterations and set(products) == {2}
    assert res.iterations < separate
    # start vectors in a 3-dimensional invariant subspace (top eigenvectors): blocks 2, 1, exact
    products.clear()
    U = Qm[:, -3:] @ rng.standard_normal((3, 2))
    inv = lanczos_functions(Counting(A), U, fns, tol=1e-14)
    assert products == [2, 1] and inv.converged.all() and (inv.error_estimates == 0).all()
    for i, t in enumerate((0.1, 2.0)):
        want = Qm[:, -3:] @ (np.exp(-t * w[-3:])[:, None] * (Qm[:, -3:].T @ U))
        assert rel(inv.values[i], want) < 1e-12


def test_two_pass_lanczos_keeps_two_blocks_and_matches_the_full_basis(jntk_3000, rng):
    """``basis="two-pass"``: the same functions to the tolerance as the full basis (and as the
    eigendecomposition) on a JNTK system of 3000 unknowns, with only two blocks held and twice
    the products; an invariant space stays exact."""
    from jacntk.linalg._lanczos import _BlockLanczos, phi_function

    arch, X, G = jntk_3000
    B = ScaledGram(DenseGram(G, 10), 0.05, 1e-3)
    Bd = B.to_dense()
    w, U = eigh(Bd)
    V = rng.standard_normal((3000, 3))
    c = 1.0 / w[-1]
    times = [1.0, 30.0, 1000.0]
    fns = [phi_function(c, t) for t in times]
    full = lanczos_functions(B, V, fns, tol=1e-10)
    two = lanczos_functions(B, V, fns, tol=1e-10, basis="two-pass")
    assert full.converged.all() and two.converged.all()
    assert full.products == full.iterations and two.products == 2 * two.iterations - 1
    for i in range(len(times)):
        exact = U @ (fns[i](w)[:, None] * (U.T @ V))
        assert rel(full.values[i], exact) < 1e-8 and rel(two.values[i], exact) < 1e-8
        assert rel(two.values[i], full.values[i]) < 1e-8
    # the window: never more than the block just multiplied and the new one
    run = _BlockLanczos(V, 200, keep=False)
    for _ in range(40):
        run.advance(B.matmat(run.block))
        assert run.Q.shape[0] <= 2 * V.shape[1] + 8 and run.size == 3 * (run.products + 1)
    with pytest.raises(ValueError, match="basis must be"):
        lanczos_functions(B, V, fns, basis="disk")
    U3 = U[:, -3:] @ rng.standard_normal((3, 2))  # an invariant subspace of dimension 3
    inv = lanczos_functions(B, U3, fns, tol=1e-14, basis="two-pass")
    for i in range(len(times)):
        want = U[:, -3:] @ (fns[i](w[-3:])[:, None] * (U[:, -3:].T @ U3))
        assert rel(inv.values[i], want) < 1e-12


def test_extreme_eigenvalues_match_eigh(jntk_3000):
    arch, X, G = jntk_3000
    B = ScaledGram(DenseGram(G[:500, :500], 10), 0.1, 1e-2)
    w = np.linalg.eigvalsh(B.to_dense())
    est = extreme_eigenvalues(B, tol=1e-10, maxiter=500)
    assert est.largest == pytest.approx(w[-1], rel=1e-8)
    assert est.smallest == pytest.approx(w[0], rel=1e-6)
    assert est.condition == pytest.approx(w[-1] / w[0], rel=1e-5)


def test_cg_reports_non_convergence_stagnation_and_indefiniteness(rng):
    A = np.diag(np.logspace(0, 8, 200))
    b = rng.standard_normal(200)
    with pytest.warns(ConvergenceWarning, match=r"did not converge for 1 of 1.*maxiter=5"):
        res = cg(A, b, maxiter=5)
    assert res.iterations == 5 and not res.converged[0] and res.true_residual[0] > 1e-3
    with pytest.warns(ConvergenceWarning, match="stagnated at relative residual"):
        stalled = cg(A, b, stagnation=3)
    assert stalled.iterations == 3 and "stagnated" in stalled.messages[0]
    indefinite = np.diag(np.r_[np.ones(10), -np.ones(10)])
    with pytest.warns(ConvergenceWarning, match="not positive definite"):
        bad = cg(indefinite, np.ones(20))
    assert any("add jitter" in m for m in bad.messages)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ok = cg(np.eye(5) * 2, np.ones(5))
    np.testing.assert_allclose(ok.x, 0.5)


def test_solver_input_errors(rng):
    with pytest.raises(ValueError, match=r"must have shape \(4,\) or \(4, k\)"):
        cg(np.eye(4), np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        cg(np.eye(2), np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="start vector must have shape"):
        lanczos_functions(np.eye(4), np.ones((3, 2)), [np.exp])
    with pytest.raises(ValueError, match="start vector contains NaN"):
        lanczos_functions(np.eye(2), np.array([[1.0], [np.inf]]), [np.exp])
    with pytest.raises(ValueError, match=">= 0"):
        lanczos_expm(np.eye(3), np.ones(3), [1.0, -2.0])
    with pytest.raises(ValueError, match="NaN"):
        lanczos_phi(np.eye(3), np.array([np.nan, 0, 0]), [1.0])
    with pytest.raises(ValueError, match="non-negative integers"):
        lanczos_psi(np.eye(3), np.ones(3), [1.5])
    with pytest.raises(ValueError, match="rank"):
        nystrom(np.eye(3), 5)
    with pytest.raises(ValueError, match="point 1 is not positive definite"):
        block_jacobi(DenseGram(np.diag([1.0, -1.0, 1.0])))


def test_cg_does_not_call_a_rounding_limited_residual_converged(rng):
    """The recurrence residual of CG keeps falling below the accuracy rounding allows for an
    ill-conditioned operator; the true residual decides, and the message says why."""
    Q, _ = np.linalg.qr(rng.standard_normal((120, 120)))
    A = (Q * np.logspace(0, 4, 120)) @ Q.T
    A = 0.5 * (A + A.T)
    b = rng.standard_normal(120)
    with pytest.warns(ConvergenceWarning, match="attainable accuracy"):
        res = cg(A, b, tol=1e-15, maxiter=5000, stagnation=5000)  # measured: 5e-13
    assert not res.converged[0] and res.true_residual[0] > 1e-14
    assert any("true residual" in m for m in res.messages)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loose = cg(A, b, tol=1e-10, maxiter=5000, stagnation=5000)
    assert loose.converged[0] and loose.true_residual[0] <= 1e-9
