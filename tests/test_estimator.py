"""``KernelRegressor``: scikit-learn conventions without a scikit-learn dependency."""

from __future__ import annotations

import numpy as np
import pytest

import jacntk
from jacntk.training import KernelRegressor, predict


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((40, 3))
    Xt = rng.standard_normal((15, 3))

    def f(Z):
        return np.sin(Z[:, 0]) + 0.3 * Z[:, 1] * Z[:, 2]

    return X, f(X), Xt, f(Xt)


@pytest.mark.parametrize("lam, t", [(0.0, None), (0.0, 25.0), (0.1, 5.0), (0.1, None)])
def test_fit_predict_equals_the_dynamics_api(data, lam, t):
    X, y, Xt, _ = data
    model = KernelRegressor(depth=2, activation="gelu", jacobian_reg=lam, time=t, jitter=1e-3)
    assert model.fit(X, y) is model
    ref = predict(
        jacntk.MLP(2, "gelu"),
        X,
        y,
        Xt,
        times=[np.inf if t is None else t],
        jacobian_reg=lam,
        jitter=1e-3,
    )
    np.testing.assert_allclose(model.predict(Xt), ref.values[0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.predict_gradients(Xt), ref.gradients[0], rtol=1e-9, atol=1e-12)
    assert model.dual_coef_.shape[0] == 40 * (4 if lam > 0 else 1)


def test_score_is_r2_and_fits_a_smooth_function(data):
    X, y, Xt, yt = data
    model = KernelRegressor(depth=3, kind="nngp", jitter=1e-6).fit(X, y)
    assert model.score(X, y) == pytest.approx(1.0, abs=1e-4)
    r2 = model.score(Xt, yt)
    pred = model.predict(Xt)
    assert r2 == pytest.approx(1 - ((yt - pred) ** 2).sum() / ((yt - yt.mean()) ** 2).sum())
    assert r2 > 0.5


def test_get_set_params_round_trip_and_errors(data):
    model = KernelRegressor(depth=4, time=3.0)
    params = model.get_params()
    assert params["depth"] == 4 and params["time"] == 3.0 and "store" in params
    clone = KernelRegressor(**params)
    assert clone.get_params() == params
    assert model.set_params(jacobian_reg=0.5, activation="tanh") is model
    assert model.jacobian_reg == 0.5 and model.arch == jacntk.MLP(4, "tanh")
    assert "jacobian_reg=0.5" in repr(model)
    with pytest.raises(ValueError, match="invalid parameter 'lam'"):
        model.set_params(lam=1.0)
    X, y, _, _ = data
    with pytest.raises(ValueError, match="not fitted") as raised:
        KernelRegressor().predict(X)
    assert isinstance(raised.value, AttributeError)  # NotFittedError's two bases
    with pytest.raises(ValueError, match="time must be a number >= 0"):
        KernelRegressor(time=-1.0).fit(X, y)
    with pytest.raises(ValueError, match="jacobian_reg"):
        KernelRegressor(jacobian_reg=-1.0).fit(X, y)
    with pytest.raises(ValueError, match="shape \\(40,\\)"):
        KernelRegressor().fit(X, y[:-1])
    fitted = KernelRegressor(jitter=1e-6).fit(X, y)
    with pytest.raises(ValueError, match="X has 2 features, but KernelRegressor is expecting 3"):
        fitted.predict(X[:, :2])


def test_works_with_scikit_learn_tools_when_installed(data):
    sklearn = pytest.importorskip("sklearn", reason="scikit-learn is optional (test extra)")
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_score

    X, y, _, _ = data
    model = KernelRegressor(depth=2, jitter=1e-4)
    assert clone(model).get_params() == model.get_params()
    scores = cross_val_score(model, X, y, cv=3)
    assert scores.shape == (3,) and np.all(scores > 0.0)
    assert sklearn.__version__


def test_fit_from_a_gram_store(data, tmp_path):
    """``store=`` a directory: one store per training set under it, created then reused;
    ``store=`` an existing store (path or GramStore): that store, which must hold X."""
    from distributed import Client, LocalCluster

    X, y, Xt, _ = data
    folder = tmp_path / "grams"
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        model = KernelRegressor(depth=2, store=str(folder), client=client, time=10.0)
        model.fit(X, y)
        other = KernelRegressor(depth=2, store=folder, client=client, time=10.0).fit(X[::-1], y)
    assert model.system_.operator == "stored"
    stores = sorted(p.name for p in folder.iterdir())
    assert len(stores) == 2 and all(name.startswith("ntk-") for name in stores), stores
    assert model.store_.location.url in {str(folder / name) for name in stores}
    ref = KernelRegressor(depth=2, time=10.0).fit(X, y)
    np.testing.assert_allclose(model.predict(Xt), ref.predict(Xt), rtol=1e-9, atol=1e-12)
    ref_other = KernelRegressor(depth=2, time=10.0).fit(X[::-1], y)
    np.testing.assert_allclose(other.predict(Xt), ref_other.predict(Xt), rtol=1e-9, atol=1e-12)
    reuse = KernelRegressor(depth=2, store=str(folder), time=10.0).fit(X, y)  # no cluster
    assert reuse.store_.location.url == model.store_.location.url
    np.testing.assert_allclose(reuse.predict(Xt), ref.predict(Xt), rtol=1e-9, atol=1e-12)
    single = model.store_.location.url  # the path of one store: used as that store
    again = KernelRegressor(depth=2, store=single, time=10.0).fit(X, y)
    assert again.store_.location.url == single
    assert sorted(p.name for p in folder.iterdir()) == stores
    np.testing.assert_allclose(again.predict(Xt), ref.predict(Xt), rtol=1e-9, atol=1e-12)
    for fixed in (single, model.store_):
        with pytest.raises(ValueError, match="different points"):
            KernelRegressor(depth=2, store=fixed).fit(X[::-1], y)
