import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="module")
def client():
    """An in-process Dask cluster (threads on 127.0.0.1) for tests that need a client but not
    real processes; tests of real scheduler/worker processes start their own."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address="127.0.0.1:0"
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


def pytest_collection_modifyitems(config, items):
    """Cluster and notebook tests are slow by definition: ``-m "not slow"`` (the fast loop in
    the README) leaves them out along with the individually marked slow tests."""
    for item in items:
        if item.get_closest_marker("cluster") or item.get_closest_marker("notebooks"):
            item.add_marker(pytest.mark.slow)
