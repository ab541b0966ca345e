"""Options as data: ``SolverOptions`` / ``OperatorOptions``, their one mapping from the flat
keywords, ``SolveDiagnostics``, the training-point predictions and the shared checks."""

from __future__ import annotations

import ast
import copy
import dataclasses
import inspect
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

import jacntk
from jacntk.cli.main import build_parser
from jacntk.data import one_hot
from jacntk.options import DEFAULT_TILE, UNSET, resolve_options
from jacntk.training import (
    KernelRegressor,
    OperatorOptions,
    SolveDiagnostics,
    SolverOptions,
    cross_product,
    predict,
    solve_coefficients,
    training_predictions,
    training_residual,
    training_system,
)
from jacntk.validation import check_targets

ARCH = jacntk.MLP(2, "erf", sigma_b=0.3)
PACKAGE = Path(jacntk.__file__).resolve().parent


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    X = rng.standard_normal((16, 3))
    Xt = rng.standard_normal((5, 3))
    return X, np.sin(X[:, 0]) + 0.5 * X[:, 1], Xt


def solve_args():
    return build_parser().parse_args(["solve", "s.zarr", "--targets", "y.npy", "--out", "o.npz"])


# ---- defaults live in one place -------------------------------------------------------------


def test_cli_defaults_are_the_dataclass_defaults():
    from jacntk.cli.solve import operator_options, solver_options

    args = solve_args()
    assert args.tol == SolverOptions().tol == 1e-10
    assert args.maxiter == SolverOptions().maxiter
    assert args.preconditioner == SolverOptions().preconditioner
    assert args.rank == SolverOptions().rank
    assert args.operator == OperatorOptions().operator
    assert args.tile == OperatorOptions().tile == DEFAULT_TILE
    assert solver_options(args) == SolverOptions()
    assert operator_options(args) == OperatorOptions()


def test_cli_help_shows_the_defaults():
    sub = build_parser()._subparsers._group_actions[0].choices["solve"]
    text = " ".join(sub.format_help().split())
    assert f"(default {SolverOptions().tol:g})" in text
    assert f"(default {SolverOptions().rank})" in text
    assert f"(default {SolverOptions().preconditioner})" in text
    assert f"(default {OperatorOptions().tile})" in text
    assert f"(default {OperatorOptions().operator})" in text


@pytest.mark.parametrize(
    "function", [predict, training_system, solve_coefficients, KernelRegressor.__init__]
)
def test_flat_option_keywords_default_to_unset(function):
    """No flat keyword carries a default of its own: ``UNSET`` defers to the dataclasses."""
    names = {"tol", "maxiter", "preconditioner", "rank", "operator", "tile", "cache", "client"}
    params = inspect.signature(function).parameters
    flat = [name for name in params if name in names]
    assert flat, function
    for name in flat:
        assert params[name].default is UNSET, (function.__name__, name)


def test_no_literal_tolerance_or_tile_left_in_cli_and_training():
    pattern = re.compile(r"(?<![\w.])(1e-0?8|1e-10|1024)(?![\w.])")
    hits = []
    for folder in ("cli", "training"):
        for path in sorted((PACKAGE / folder).glob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    hits.append(f"{path.name}:{number}: {line.strip()}")
    assert not hits, hits


def test_no_underscored_name_imported_across_modules_in_cli_and_training():
    hits = []
    for folder in ("cli", "training"):
        for path in sorted((PACKAGE / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    hits += [
                        f"{path.name}:{node.lineno}: {alias.name}"
                        for alias in node.names
                        if alias.name.startswith("_") and not alias.name.startswith("__")
                    ]
    assert not hits, hits


# ---- the dataclasses ------------------------------------------------------------------------


def test_options_are_frozen_hashable_comparable_and_printable():
    a = SolverOptions(tol=1e-8, preconditioner="nystrom", rank=20)
    b = SolverOptions(tol=1e-8, preconditioner="nystrom", rank=20)
    assert a == b and hash(a) == hash(b) and len({a, b, SolverOptions()}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.tol = 1.0
    assert repr(a) == (
        "SolverOptions(tol=1e-08, maxiter=None, preconditioner='nystrom', rank=20, "
        "lanczos_basis='auto')"
    )
    assert eval(repr(a), {"SolverOptions": SolverOptions}) == a
    o = OperatorOptions(operator="structured", tile=64, cache=True)
    assert o == OperatorOptions("structured", 64, True) and hash(o) in {hash(o)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.tile = 3
    assert "tile=64" in repr(o) and "operator='structured'" in repr(o)
    assert pickle.loads(pickle.dumps(o)) == o


def test_options_normalise_numbers():
    s = SolverOptions(tol=1, maxiter=np.int64(40), rank=np.int32(7))
    assert type(s.tol) is float and type(s.maxiter) is int and type(s.rank) is int
    assert OperatorOptions(tile=np.int64(32)).tile == 32


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: SolverOptions(tol=-1.0), r"tol must be a finite number > 0, got -1\.0"),
        (lambda: SolverOptions(tol=float("nan")), r"tol must be a finite number > 0, got nan"),
        (lambda: SolverOptions(tol="small"), r"tol must be a number > 0, got 'small'"),
        (lambda: SolverOptions(maxiter=0), r"maxiter must be None or an integer >= 1, got 0"),
        (lambda: SolverOptions(maxiter=2.5), r"maxiter must be None or an integer >= 1, got 2\.5"),
        (lambda: SolverOptions(preconditioner="jacobi"), r"'block-jacobi'.*got 'jacobi'"),
        (lambda: SolverOptions(rank=0), r"rank must be an integer >= 1, got 0"),
        (lambda: OperatorOptions(operator="sparse"), r"'auto', 'dense'.*got 'sparse'"),
        (lambda: OperatorOptions(tile=0), r"tile must be an integer >= 1, got 0"),
        (lambda: OperatorOptions(tile=True), r"tile must be an integer >= 1, got True"),
        (lambda: OperatorOptions(cache="yes"), r"cache must be True or False, got 'yes'"),
    ],
)
def test_options_reject_bad_values_naming_them(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_preconditioner_may_be_none_or_an_operator():
    assert SolverOptions(preconditioner=None).preconditioner is None
    assert SolverOptions(preconditioner="none").preconditioner == "none"
    M = jacntk.DenseGram(np.eye(3))
    assert SolverOptions(preconditioner=M).preconditioner is M


# ---- the one mapping from flat keywords -----------------------------------------------------


def test_resolve_options_maps_flat_keywords():
    solver, operator = resolve_options(None, None, tol=1e-6, tile=32, rank=UNSET)
    assert solver == SolverOptions(tol=1e-6) and operator == OperatorOptions(tile=32)
    given = SolverOptions(rank=9)
    assert resolve_options(given, None)[0] is given
    assert resolve_options(given, None, rank=9)[0] is given  # equal is not a conflict
    with pytest.raises(TypeError, match="unknown option keyword.*tolerance"):
        resolve_options(None, None, tolerance=1e-3)
    with pytest.raises(TypeError, match="solver must be a SolverOptions"):
        resolve_options(OperatorOptions(), None)


def test_conflicting_keyword_and_options_raise_naming_both(data):
    X, y, Xt = data
    with pytest.raises(
        ValueError, match=r"tol=1e-08 conflicts with solver=SolverOptions\(tol=1e-06"
    ):
        predict(ARCH, X, y, Xt, times=[1.0], solver=SolverOptions(tol=1e-6), tol=1e-8)
    with pytest.raises(ValueError, match=r"preconditioner=None conflicts with solver="):
        predict(ARCH, X, y, Xt, times=[1.0], solver=SolverOptions(), preconditioner=None)
    with pytest.raises(
        ValueError, match=r"tile=16 conflicts with operator_options=OperatorOptions"
    ):
        training_system(ARCH, X, operator_options=OperatorOptions(tile=8), tile=16)
    system = training_system(ARCH, X)
    with pytest.raises(ValueError, match=r"rank=3 conflicts with solver="):
        solve_coefficients(
            system, training_residual(system, y), times=[1.0], solver=SolverOptions(), rank=3
        )
    model = KernelRegressor(depth=2, solver=SolverOptions(maxiter=5), maxiter=6)
    with pytest.raises(ValueError, match=r"maxiter=6 conflicts with solver="):
        model.fit(X, y)


@pytest.mark.parametrize("times", [[0.5, 3.0], [2.0, float("inf")]])
def test_predict_with_options_equals_predict_with_keywords(data, times):
    X, y, Xt = data
    keywords = dict(tol=1e-12, maxiter=400, preconditioner="nystrom", rank=5)
    keywords |= dict(operator="structured", tile=6)
    flat = predict(ARCH, X, y, Xt, times=times, jacobian_reg=0.1, jitter=1e-4, **keywords)
    boxed = predict(
        ARCH,
        X,
        y,
        Xt,
        times=times,
        jacobian_reg=0.1,
        jitter=1e-4,
        solver=SolverOptions(tol=1e-12, maxiter=400, preconditioner="nystrom", rank=5),
        operator_options=OperatorOptions(operator="structured", tile=6),
    )
    np.testing.assert_array_equal(flat.values, boxed.values)
    np.testing.assert_array_equal(flat.gradients, boxed.gradients)
    assert flat.diagnostics == boxed.diagnostics
    assert boxed.diagnostics.operator == "structured"
    assert boxed.diagnostics.solver_options == SolverOptions(1e-12, 400, "nystrom", 5)
    default = predict(ARCH, X, y, Xt, times=times, jacobian_reg=0.1, jitter=1e-4)
    assert default.diagnostics.solver_options == SolverOptions()


def test_estimator_params_mirror_init_and_survive_clone(data):
    X, y, Xt = data
    solver = SolverOptions(tol=1e-12)
    model = KernelRegressor(depth=2, solver=solver, tile=8, jitter=1e-6)
    params = model.get_params()
    assert params["solver"] is solver and params["tile"] == 8 and params["tol"] is UNSET
    assert set(params) == set(inspect.signature(KernelRegressor).parameters)
    assert copy.deepcopy(UNSET) is UNSET and pickle.loads(pickle.dumps(UNSET)) is UNSET
    assert "solver=SolverOptions(tol=1e-12" in repr(model) and "tol=UNSET" not in repr(model)
    model.fit(X, y)
    assert model.system_.operator_options == OperatorOptions(tile=8)
    assert model.diagnostics_.solver_options == solver
    arch = jacntk.MLP(2, "erf")  # the estimator's architecture
    ref = predict(arch, X, y, Xt, times=[float("inf")], jitter=1e-6, tol=1e-12, tile=8)
    np.testing.assert_allclose(model.predict(Xt), ref.values[0], rtol=1e-10, atol=1e-13)
    sklearn = pytest.importorskip("sklearn", reason="scikit-learn is optional (test extra)")
    from sklearn.base import clone

    assert sklearn and clone(model).get_params()["tol"] is UNSET
    np.testing.assert_array_equal(clone(model).fit(X, y).predict(Xt), model.predict(Xt))


# ---- diagnostics as data --------------------------------------------------------------------


def test_solve_diagnostics_is_frozen_data_with_a_json_dict(data):
    X, y, Xt = data
    # a small ridge: without it this JNTK system is so ill-conditioned that whether CG reaches
    # tol 1e-10 depends on the machine's rounding (it stalled at 2e-9 on an AMD EPYC)
    p = predict(
        ARCH, X, y, Xt, times=[1.0, float("inf")], jacobian_reg=0.1, jitter=1e-6,
        operator="structured",
    )  # fmt: skip
    d = p.diagnostics
    assert isinstance(d, SolveDiagnostics)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.c = 0.0
    assert d.c == pytest.approx(1.0 / 16) and d.solver == "cg" and d.cg.startswith("CG:")
    assert len(d.lanczos) == 1 and d.lanczos[0].startswith("Lanczos:") and d.ritz_max > 0
    assert d.cg_result.converged.all()
    out = json.loads(json.dumps(d.as_dict()))
    assert out["operator"] == "structured" and out["lanczos"] == list(d.lanczos)
    assert out["solver_options"] == {
        "tol": 1e-10,
        "maxiter": None,
        "preconditioner": "block-jacobi",
        "rank": 100,
        "lanczos_basis": "auto",
    }
    assert "cg_result" not in out
    # the former dict's read-only access still works
    assert d["c"] == d.c and "cg" in d and d.get("missing", 7) == 7
    assert dict(d.items())["cg_result"] is d.cg_result
    finite_only = predict(ARCH, X, y, Xt, times=[1.0]).diagnostics
    assert finite_only.solver is None and "cg" not in finite_only and "solver" not in finite_only
    with pytest.raises(KeyError):
        finite_only["cg"]


# ---- predictions at the training points -----------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, 0.2])
@pytest.mark.parametrize("operator", ["dense", "structured"])
def test_training_predictions_match_a_dense_reference(data, lam, operator):
    X, y, _ = data
    n, d = X.shape
    system = training_system(ARCH, X, jacobian_reg=lam, jitter=1e-3, operator=operator, tile=5)
    Y = np.stack([y, np.cos(X[:, 2])], axis=1)
    coef = solve_coefficients(system, training_residual(system, Y), times=[0.7, float("inf")])
    full = jacntk.kernel(ARCH, X, kind="ntk", jacobian=True)  # (n (d+1), n (d+1)) point-major
    columns = full if lam > 0 else full[:, :: d + 1]  # scalar system: value columns only
    ref = np.einsum("ij,tjk->tik", columns, coef.Z).reshape(2, n, d + 1, 2)
    got = training_predictions(system, coef.Z, gradients=True)
    assert got.shape == (2, n, d + 1, 2)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())
    values = training_predictions(system, coef.Z, gradients=False)
    np.testing.assert_allclose(values, ref[:, :, :1], rtol=1e-10, atol=1e-12 * np.abs(ref).max())
    via_cross = cross_product(system, X, coef.Z, gradients=True)
    np.testing.assert_allclose(got, via_cross, rtol=1e-10, atol=1e-12 * np.abs(ref).max())
    with pytest.raises(ValueError, match=r"Z must have shape \(T, "):
        training_predictions(system, coef.Z[:, 1:], gradients=False)


# ---- shared checks and data helpers ---------------------------------------------------------


def test_check_targets_is_public_and_names_the_problem():
    assert check_targets([1.0, 2.0], 2).shape == (2,)
    with pytest.raises(ValueError, match=r"y must have shape \(3,\) or \(3, k\).*got shape \(2,\)"):
        check_targets([1.0, 2.0], 3, "y")
    with pytest.raises(ValueError, match=r"y_train contains NaN or inf \(first at row 1\)"):
        check_targets([[0.0], [np.inf]], 2)


def test_one_hot_is_centred_and_checks_labels():
    Y = one_hot(np.array([0, 2, 1, 2]))
    np.testing.assert_allclose(Y.sum(axis=1), 0.0, atol=1e-15)
    np.testing.assert_array_equal(Y.argmax(axis=1), [0, 2, 1, 2])
    assert Y[0, 0] == pytest.approx(2 / 3) and Y[0, 1] == pytest.approx(-1 / 3)
    assert one_hot(np.array([1]), 4).shape == (1, 4)
    with pytest.raises(ValueError, match="non-negative integer class labels"):
        one_hot(np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="n_classes=2 but the labels go up to 3"):
        one_hot(np.array([0, 3]), 2)
