"""The activation registry (jacntk/kernels/_activations.py, docs/activations.md).

* the table is consistent and every derived table (names, codes, closed forms, steps) agrees
  with it, one entry per row; the public ``ACTIVATIONS`` is unchanged;
* one function validates a name, and every entry point uses it;
* no module of jacntk compares an activation against a literal code (or, outside the ReLU
  routes listed in ``PENDING_NAME_SITES``, against a literal name), nor redefines a table;
* what the checklist of docs/activations.md asks of a new row is checked for every row: its
  derivative table (Numba and NumPy twin, against finite differences), its closed-form scalar
  row, its convergence row in tests/test_moments.py.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

import jacntk
import jacntk.arch
from jacntk import MLP, depth
from jacntk.kernels import _activations as reg
from jacntk.kernels import _moments
from jacntk.kernels._compute import compute_tile
from jacntk.kernels._fields import (
    _closed_form_scalar_tile,
    _diag_chain,
    make_plan,
    scalar_tile,
)
from jacntk.kernels._reference import derivatives

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jacntk"

#: Files allowed to compare ``arch.activation`` with a literal name (none: the registry decides).
PENDING_NAME_SITES: set[str] = set()

_ACT = r"(?<![\w.])(?:\w+\.)*act"
#: ``act == 2``, ``plan.act != 0``, ``act in (0, 1)``, ``act not in [4, 5]``.
LITERAL_CODE = re.compile(
    rf"{_ACT}\s*(?:==|!=|<=|>=|<|>)\s*\d|{_ACT}\s+(?:not\s+)?in\s*[(\[{{]\s*\d"
)
#: ``activation == "relu"``, ``arch.activation != 'erf'``, ``act in ("softplus", "silu")``.
_NAME = r"(?<![\w.])(?:\w+\.)*(?:act|activation)"
LITERAL_NAME = re.compile(rf"{_NAME}\s*(?:==|!=)\s*[\"']|{_NAME}\s+(?:not\s+)?in\s*[(\[{{]\s*[\"']")
#: A literal definition of a derived table anywhere but in the registry.
TABLE_DEFINITION = re.compile(
    r"^(?:ACT_CODES|QUADRATURE_STEP|CLOSED_FORM|QUADRATURE|ACTIVATIONS)\s*(?::[^=]*)?=\s*[(\[{]",
    re.M,
)


def _sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" not in path.parts:
            yield path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8")


def _hits(pattern, text):
    return [text[: m.start()].count("\n") + 1 for m in pattern.finditer(text)]


# ---- the table and what is derived from it ----


def test_public_activations_are_unchanged():
    names = ("erf", "relu", "gelu", "tanh", "softplus", "silu")
    assert jacntk.ACTIVATIONS == jacntk.arch.ACTIVATIONS == names
    assert jacntk.arch.CLOSED_FORM == ("erf", "relu", "gelu")
    assert jacntk.arch.QUADRATURE == ("tanh", "softplus", "silu")


def test_codes_are_unique_dense_and_distinct_from_the_test_code():
    codes = [row.code for row in reg.REGISTRY]
    assert codes == list(range(len(reg.REGISTRY)))
    assert len({row.name for row in reg.REGISTRY}) == len(reg.REGISTRY)
    assert reg.ERF_BY_QUADRATURE not in codes and reg.GELU_BY_QUADRATURE not in codes
    assert reg.ERF_BY_QUADRATURE != reg.GELU_BY_QUADRATURE


def test_derived_tables_have_one_entry_per_row_and_agree_with_it():
    rows = reg.REGISTRY
    assert reg.ACTIVATIONS == tuple(row.name for row in rows)
    assert reg.ACT_CODES == {row.name: row.code for row in rows}
    assert set(reg.CLOSED_FORM) | set(reg.QUADRATURE) == set(reg.ACTIVATIONS)
    assert not set(reg.CLOSED_FORM) & set(reg.QUADRATURE)
    assert reg.CLOSED_FORM == tuple(row.name for row in rows if row.closed_form)
    quad = {row.code: row.quadrature_step for row in rows if not row.closed_form}
    tests = {
        reg.ERF_BY_QUADRATURE: reg.ERF_BY_QUADRATURE_STEP,
        reg.GELU_BY_QUADRATURE: reg.GELU_BY_QUADRATURE_STEP,
    }
    assert reg.QUADRATURE_STEP == {**quad, **tests}
    for row in rows:
        assert reg.get_activation(row.name) is reg.BY_NAME[row.name] is row
        assert getattr(reg, row.name.upper()) == row.code  # the named Numba codes
        assert _moments.quadrature_step(row.code) == (row.quadrature_step or 0.0)
    # the modules that re-export a table hold the registry's object, not a copy
    assert jacntk.ACTIVATIONS is jacntk.arch.ACTIVATIONS is reg.ACTIVATIONS
    assert jacntk.arch.CLOSED_FORM is reg.CLOSED_FORM
    assert _moments.ACT_CODES is reg.ACT_CODES
    assert _moments.QUADRATURE_STEP is reg.QUADRATURE_STEP
    assert _moments.ERF_BY_QUADRATURE == reg.ERF_BY_QUADRATURE


@pytest.mark.parametrize("name", jacntk.ACTIVATIONS)
def test_plan_reads_the_row(name):
    row = reg.get_activation(name)
    plan = make_plan(MLP(2, name), "nngp", jacobian=False)
    assert plan.act == row.code and plan.closed_form == row.closed_form
    assert plan.h == (0.0 if row.closed_form else row.quadrature_step)


def test_a_seventh_row_is_a_valid_registry_and_bad_rows_are_refused():
    mish = reg.Activation("mish", len(reg.REGISTRY), False, quadrature_step=0.3, smooth=True)
    reg.check_registry((*reg.REGISTRY, mish))
    with pytest.raises(ValueError, match="not unique"):
        reg.check_registry((*reg.REGISTRY, reg.Activation("tanh", 6, False, 0.2, True)))
    with pytest.raises(ValueError, match="codes"):
        reg.check_registry((*reg.REGISTRY, reg.Activation("mish", 7, False, 0.3, True)))
    with pytest.raises(ValueError, match="non-smooth"):
        reg.check_registry((*reg.REGISTRY, reg.Activation("hardtanh", 6, True, None, False)))
    with pytest.raises(ValueError, match="None exactly for the closed forms"):
        reg.Activation("mish", 6, closed_form=True, quadrature_step=0.3, smooth=True)
    with pytest.raises(ValueError, match="None exactly for the closed forms"):
        reg.Activation("mish", 6, closed_form=False, quadrature_step=None, smooth=True)
    with pytest.raises(ValueError, match="smooth"):
        reg.Activation("step", 6, closed_form=False, quadrature_step=0.3, smooth=False)


# ---- validation ----


@pytest.mark.parametrize("bad", ["ReLU", "sigmoid", "", None, ["relu"]])
def test_unknown_activation_is_refused_everywhere_with_the_valid_names(bad):
    valid = "valid: erf, relu, gelu, tanh, softplus, silu"
    for call in (
        lambda: reg.get_activation(bad),
        lambda: MLP(2, bad),
        lambda: depth.gaussian_variance(bad, 1.0),
        lambda: depth.derivative_moment(bad, 1.0),
    ):
        with pytest.raises(ValueError, match=re.escape(valid)):
            call()


@pytest.mark.parametrize("name", jacntk.ACTIVATIONS)
def test_the_jacobian_ntk_is_refused_exactly_for_non_smooth_activations(name):
    arch = MLP(2, name)
    X = np.random.default_rng(0).standard_normal((2, 3))
    if reg.get_activation(name).smooth:
        assert np.isfinite(jacntk.kernel(arch, X, kind="ntk", jacobian=True)).all()
    else:
        with pytest.raises(ValueError, match="does not exist"):
            jacntk.kernel(arch, X, kind="ntk", jacobian=True)
    jacntk.kernel(arch, X, kind="ntk_truncated", jacobian=True)  # every activation


# ---- no literal codes, names or tables outside the registry ----


def test_the_patterns_catch_what_they_must():
    for line in ("if act == 2:", "plan.act in (0, 1)", "x if act != 0 else y", "act not in [4]"):
        assert LITERAL_CODE.search(line), line
    for line in ("act == ERF", "plan.closed_form", "exact == 0", "self.act_codes == 1"):
        assert not LITERAL_CODE.search(line), line
    for line in ('activation == "relu"', "arch.activation != 'erf'", 'act in ("silu", "x")'):
        assert LITERAL_NAME.search(line), line
    for line in ('activation="relu"', "act == RELU", "net.arch.activation"):
        assert not LITERAL_NAME.search(line), line
    assert TABLE_DEFINITION.search('ACT_CODES = {"erf": 0}')
    assert TABLE_DEFINITION.search('ACTIVATIONS: tuple[str, ...] = ("erf",)')
    assert not TABLE_DEFINITION.search("ACTIVATIONS = _registry.ACTIVATIONS")


def test_no_module_compares_an_activation_with_a_literal_code():
    found = [f"{rel}:{n}" for rel, text in _sources() for n in _hits(LITERAL_CODE, text)]
    assert not found, f"compare with the registry's named codes instead: {found}"


def test_no_module_compares_an_activation_with_a_literal_name():
    found, pending = [], set()
    for rel, text in _sources():
        if rel == "jacntk/kernels/_activations.py":
            continue
        hits = _hits(LITERAL_NAME, text)
        if rel in PENDING_NAME_SITES:
            pending |= {rel} if hits else set()
        else:
            found += [f"{rel}:{n}" for n in hits]
    assert not found, f"read the registry (get_activation) instead: {found}"
    assert pending == PENDING_NAME_SITES, (
        f"fixed, remove from PENDING_NAME_SITES: {PENDING_NAME_SITES - pending}"
    )


def test_only_the_registry_defines_the_activation_tables():
    found = [
        f"{rel}:{n}"
        for rel, text in _sources()
        if rel != "jacntk/kernels/_activations.py"
        for n in _hits(TABLE_DEFINITION, text)
    ]
    assert not found, found


# ---- what the checklist asks of each row ----


def _numba_table(code, u):
    out, buf = np.empty((5, u.size)), np.empty(5)
    for i, x in enumerate(u):
        _moments.activation_derivatives(code, x, buf)
        out[:, i] = buf
    return out


@pytest.mark.parametrize("name", [row.name for row in reg.REGISTRY if row.smooth])
def test_derivative_tables_agree_with_each_other_and_with_finite_differences(name):
    code = reg.get_activation(name).code
    u = np.linspace(-6.0, 6.0, 97)
    numba = _numba_table(code, u)
    twin = np.array(derivatives(name, u))
    assert np.isfinite(numba).all()
    for k in range(5):
        scale = np.abs(twin[k]).max()
        np.testing.assert_allclose(numba[k], twin[k], rtol=1e-13, atol=1e-15 * scale)
    e = 1e-5
    fd = (_numba_table(code, u + e) - _numba_table(code, u - e)) / (2 * e)
    for k in range(4):  # phi^(k+1) is the derivative of phi^(k)
        assert np.abs(fd[k] - numba[k + 1]).max() <= 1e-7 * np.abs(numba[k + 1]).max(), k


def test_non_smooth_activations_have_no_derivative_table():
    rough = [row for row in reg.REGISTRY if not row.smooth]
    assert [row.name for row in rough] == ["relu"]  # see check_registry
    for row in rough:
        assert np.isnan(_numba_table(row.code, np.array([0.5]))).all()
        with pytest.raises(ValueError, match="no derivative table"):
            derivatives(row.name, np.array([0.5]))


@pytest.mark.parametrize("name", reg.CLOSED_FORM)
@pytest.mark.parametrize("kind", [0, 1])
def test_closed_form_scalar_row_matches_the_per_pair_moments(name, kind):
    """The vectorised scalar tile of a closed-form activation against the generic per-pair
    recursion over ``gaussian_moments`` (what a quadrature activation uses)."""
    rng = np.random.default_rng(3)
    X, Y = rng.standard_normal((5, 3)), rng.standard_normal((4, 3))
    plan = make_plan(MLP(3, name, sigma_w=1.3, sigma_b=0.2), "ntk", jacobian=False)
    d = X.shape[1]
    args = (plan.act, plan.depth, plan.omega, plan.sb2, d)
    v1, _ = _diag_chain(*args, np.einsum("ij,ij->i", X, X), plan.h)  # as compute_tile
    v2, _ = _diag_chain(*args, np.einsum("ij,ij->i", Y, Y), plan.h)
    common = (plan.act, kind, plan.depth, plan.omega, plan.sb2, 1.0)
    generic = scalar_tile(*common, X @ Y.T, d, v1, v2, plan.h, False)
    vectorised = _closed_form_scalar_tile(*common, X @ Y.T, d, v1, v2, False)
    np.testing.assert_allclose(vectorised, generic, rtol=1e-13)
    np.testing.assert_array_equal(
        compute_tile(MLP(3, name, sigma_w=1.3, sigma_b=0.2), X, Y, kind=("nngp", "ntk")[kind]),
        vectorised,
    )


def test_every_quadrature_activation_has_a_step_convergence_row():
    spec = importlib.util.spec_from_file_location("_moment_tests", ROOT / "tests/test_moments.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    marks = module.test_quadrature_step_is_converged.pytestmark
    rows = {args[0] for mark in marks if mark.name == "parametrize" for args in mark.args[1]}
    assert rows == set(reg.QUADRATURE)
