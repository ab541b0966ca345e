"""scikit-learn conventions of ``KernelRegressor`` and ``KernelClassifier``: the common
estimator checks, ``clone`` and cross-validation with a Dask client and with a store
directory, classification on Fashion-MNIST, and scikit-learn staying optional."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="scikit-learn is optional (test extra)")

from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import DataConversionWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import cross_val_score, cross_validate  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from jacntk import KernelClassifier, KernelRegressor  # noqa: E402
from jacntk.data import one_hot  # noqa: E402
from jacntk.options import UNSET, OperatorOptions, SolverOptions  # noqa: E402
from jacntk.training._sklearn import sklearn_expected_failed_checks  # noqa: E402

# Light settings: depth 2 and a small ridge keep every check's solve well conditioned and fast.
LIGHT = dict(depth=2, jitter=1e-6)

with warnings.catch_warnings():
    # jacntk implements the protocol duck-typed (no sklearn import at ``import jacntk``), so
    # scikit-learn notes that the estimators do not inherit from BaseEstimator.
    warnings.filterwarnings("ignore", message=".*does not inherit from .*BaseEstimator")
    _CHECKS = parametrize_with_checks(
        [KernelRegressor(**LIGHT), KernelClassifier(**LIGHT)],
        expected_failed_checks=sklearn_expected_failed_checks,
    )


@_CHECKS
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_only_the_documented_check_is_expected_to_fail():
    reasons = sklearn_expected_failed_checks(KernelRegressor())
    assert set(reasons) == {"check_parameters_default_constructible"}
    assert "UNSET" in reasons["check_parameters_default_constructible"]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    X = rng.standard_normal((36, 3))
    y = np.sin(X[:, 0]) + 0.3 * X[:, 1] * X[:, 2]
    return X, y


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=False,
            host="127.0.0.1",
            protocol="tcp://",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


def test_clone_shares_the_client_and_copies_the_rest(client):
    solver = SolverOptions(tol=1e-9)
    model = KernelRegressor(**LIGHT, client=client, solver=solver, activation="gelu")
    copy = clone(model)
    assert copy is not model and copy.client is client and copy.solver is solver
    assert copy.get_params() == model.get_params()
    boxed = KernelRegressor(operator_options=OperatorOptions(client=client))
    assert clone(boxed).operator_options.client is client
    assert clone(KernelRegressor()).client is UNSET
    fitted = KernelClassifier(**LIGHT).fit(np.eye(3), [0, 1, 1])
    assert not hasattr(clone(fitted), "classes_")  # clones are unfitted


def test_cross_val_score_with_a_client(data, client):
    X, y = data
    with_client = cross_val_score(KernelRegressor(**LIGHT, client=client), X, y, cv=3)
    plain = cross_val_score(KernelRegressor(**LIGHT), X, y, cv=3)
    assert with_client.shape == (3,) and np.all(with_client > 0.5)
    np.testing.assert_allclose(with_client, plain, rtol=1e-10)


def test_cross_validation_with_a_store_directory(data, client, tmp_path):
    """Each fold gets the store of its own training points under the directory; a second run
    reuses them (no new store, the same scores)."""
    X, y = data
    folder = tmp_path / "grams"
    settings = dict(depth=2, jitter=1e-3, time=10.0)  # Lanczos: few products on the cluster
    model = KernelRegressor(**settings, store=str(folder), client=client)
    first = cross_validate(model, X, y, cv=3, return_estimator=True)
    stores = sorted(p.name for p in folder.iterdir())
    assert len(stores) == 3, stores
    urls = {est.store_.location.url for est in first["estimator"]}
    assert urls == {str(folder / name) for name in stores}
    assert all(est.system_.operator == "stored" for est in first["estimator"])
    stamps = {name: (folder / name / "zarr.json").stat().st_mtime_ns for name in stores}
    plain = cross_val_score(KernelRegressor(**settings), X, y, cv=3)
    np.testing.assert_allclose(first["test_score"], plain, rtol=1e-8)
    again = cross_val_score(model, X, y, cv=3)
    assert sorted(p.name for p in folder.iterdir()) == stores
    assert stamps == {name: (folder / name / "zarr.json").stat().st_mtime_ns for name in stores}
    np.testing.assert_array_equal(again, first["test_score"])
    deeper = clone(model).set_params(depth=1).fit(X, y)  # other settings: another store
    assert len(list(folder.iterdir())) == 4 and deeper.store_.arch.depth == 1


def test_classifier_labels_scores_and_errors():
    rng = np.random.default_rng(3)
    centres = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    labels = rng.integers(0, 3, 60)
    X = centres[labels] + 0.4 * rng.standard_normal((60, 2))
    names = np.array(["cat", "dog", "emu"])[labels]
    by_int = KernelClassifier(**LIGHT).fit(X, labels)
    by_name = KernelClassifier(**LIGHT).fit(X, names)
    np.testing.assert_array_equal(by_int.classes_, [0, 1, 2])
    np.testing.assert_array_equal(by_name.classes_, ["cat", "dog", "emu"])
    scores = by_name.decision_function(X)
    assert scores.shape == (60, 3)
    np.testing.assert_allclose(scores.sum(axis=1), 0.0, atol=1e-8)  # centred targets
    np.testing.assert_array_equal(by_name.predict(X), by_name.classes_[scores.argmax(axis=1)])
    np.testing.assert_array_equal(
        by_name.predict(X), np.array(["cat", "dog", "emu"])[by_int.predict(X)]
    )
    ref = KernelRegressor(**LIGHT).fit(X, one_hot(labels))
    np.testing.assert_allclose(scores, ref.predict(X), rtol=1e-10, atol=1e-12)
    assert by_name.score(X, names) > 0.95
    assert not hasattr(by_name, "predict_proba")

    binary = KernelClassifier(**LIGHT).fit(X, labels == 2)
    s = binary.decision_function(X)
    assert s.shape == (60,)
    np.testing.assert_array_equal(binary.predict(X), s > 0)
    two = KernelRegressor(**LIGHT).fit(X, one_hot((labels == 2).astype(int))).predict(X)
    np.testing.assert_allclose(s, two[:, 1], rtol=1e-6, atol=1e-8)  # one column vs two

    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        KernelClassifier().fit(X, X[:, 0])
    with pytest.raises(ValueError, match="at least 2 classes"):
        KernelClassifier().fit(X, np.zeros(60, int))
    with pytest.raises(ValueError, match="multilabel"):
        KernelClassifier().fit(X, np.stack([labels, labels], axis=1))
    with pytest.warns(DataConversionWarning, match="column-vector y"):
        column = KernelClassifier(**LIGHT).fit(X, labels[:, None])
    np.testing.assert_array_equal(column.predict(X), by_int.predict(X))
    with pytest.raises(NotFittedError):
        KernelClassifier().decision_function(X)


def test_integer_targets_are_regressed_as_numbers(data):
    """Documented: KernelRegressor regresses integer labels (KernelClassifier classifies)."""
    X, _ = data
    y = np.arange(36) % 3
    pred = KernelRegressor(**LIGHT).fit(X, y).predict(X)
    assert pred.dtype == np.float64 and not np.array_equal(pred, np.round(pred))
    np.testing.assert_allclose(pred, KernelRegressor(**LIGHT).fit(X, y.astype(float)).predict(X))
    assert "KernelClassifier" in KernelRegressor.__doc__


def test_input_errors_name_the_problem():
    import scipy.sparse

    X = np.random.default_rng(0).standard_normal((10, 3))
    y = X[:, 0]
    with pytest.raises(TypeError, match="sparse input"):
        KernelRegressor().fit(scipy.sparse.csr_matrix(X), y)
    with pytest.raises(ValueError, match="Complex data not supported"):
        KernelRegressor().fit(X + 1j, y)
    with pytest.raises(ValueError, match="Complex data not supported"):
        KernelRegressor().fit(X, y + 1j)
    with pytest.raises(ValueError, match="target y is None"):
        KernelClassifier().fit(X, None)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        KernelRegressor().predict(X)
    model = KernelRegressor(**LIGHT).fit(X.astype(object), y)  # numbers held as objects
    assert model.n_features_in_ == 3
    with pytest.raises(ValueError, match="Reshape your data"):
        model.predict(X[0])


@pytest.fixture(scope="module")
def fashion():
    from jacntk.data import fashion_mnist

    try:
        X, y = fashion_mnist("train", 1000)
        Xt, yt = fashion_mnist("test", 500)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    mu, sd = X.mean(axis=0), X.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return (X - mu) / sd, y, (Xt - mu) / sd, yt


def test_classifier_on_fashion_mnist_matches_the_regressor_argmax(fashion):
    from jacntk.data import FASHION_MNIST_CLASSES

    X, y, Xt, yt = fashion
    settings = dict(depth=2, time=1000.0)
    classifier = KernelClassifier(**settings).fit(X, y)
    accuracy = classifier.score(Xt, yt)
    regressor = KernelRegressor(**settings).fit(X, one_hot(y, 10))
    reference = np.mean(regressor.predict(Xt).argmax(axis=1) == yt)
    assert abs(accuracy - reference) <= 0.01
    assert accuracy > 0.7  # ten classes: chance is 0.1
    names = np.array(FASHION_MNIST_CLASSES)
    by_name = KernelClassifier(**settings).fit(X, names[y])
    assert by_name.score(Xt, names[yt]) == pytest.approx(accuracy, abs=1e-12)


def test_scikit_learn_stays_optional():
    """``import jacntk`` does not import scikit-learn; without it fit/predict work and the
    not-fitted error is jacntk's own (same bases as scikit-learn's)."""
    code = """
import sys
import jacntk
assert "sklearn" not in sys.modules, "import jacntk imported sklearn"
sys.modules["sklearn"] = None  # from here on, 'import sklearn' raises ImportError
import numpy as np
from jacntk.training._sklearn import NotFittedError
X = np.random.default_rng(0).standard_normal((12, 2))
try:
    jacntk.KernelClassifier().predict(X)
except NotFittedError as exc:
    assert isinstance(exc, ValueError) and isinstance(exc, AttributeError)
else:
    raise AssertionError("no NotFittedError")
r = jacntk.KernelRegressor(depth=2, jitter=1e-6).fit(X, X[:, 0])
assert r.score(X, X[:, 0]) > 0.99
c = jacntk.KernelClassifier(depth=2, jitter=1e-6).fit(X, X[:, 0] > 0)
assert (c.predict(X) == (X[:, 0] > 0)).all()
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
