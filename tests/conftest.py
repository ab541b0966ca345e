import socket
import subprocess
import sys
import time

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


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real moto S3 server in its own process on 127.0.0.1 with the bucket ``jacntk-test``:
    yields the fsspec storage options that reach it (skipped without ``jacntk[s3]``)."""
    pytest.importorskip("s3fs", reason="s3fs not installed (pip install 'jacntk[s3]')")
    pytest.importorskip(
        "moto.server", reason="moto[server] not installed (pip install 'jacntk[s3]')"
    )
    boto3 = pytest.importorskip("boto3")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert server.poll() is None, "moto server exited"
            assert time.monotonic() < deadline, "moto server did not start within 60 s"
            time.sleep(0.1)
        options = {
            "endpoint_url": f"http://127.0.0.1:{port}",
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"region_name": "us-east-1"},
        }
        boto3.client(
            "s3",
            endpoint_url=options["endpoint_url"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket="jacntk-test")
        yield options
    finally:
        server.kill()
        server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="session")
def s3_flags(s3) -> list[str]:
    """The ``s3`` storage options as the CLI's ``--storage-option KEY=VALUE`` flags."""
    import json

    return [
        f"--storage-option={k}={json.dumps(v) if isinstance(v, dict) else v}" for k, v in s3.items()
    ]


@pytest.fixture
def memory_cgroup():
    """``cap(limit_bytes) -> prefix``: a new cgroup-v1 memory cgroup below this process's own,
    limited to ``limit_bytes``; ``[*prefix, cmd, ...]`` runs ``cmd`` inside it (the kernel
    kills it past the limit).  Skipped where memory cgroups v1 cannot be created (not root, no
    v1 hierarchy); every cgroup is removed afterwards (``benchmarks/cgroups.py``)."""
    from benchmarks.cgroups import MemoryCgroups, reason_unavailable

    if reason_unavailable() is not None:
        pytest.skip(reason_unavailable())
    with MemoryCgroups("jacntk-test") as groups:
        yield groups.cap


def pytest_collection_modifyitems(config, items):
    """Cluster and notebook tests are slow by definition: ``-m "not slow"`` (the fast loop in
    the README) leaves them out along with the individually marked slow tests."""
    for item in items:
        if item.get_closest_marker("cluster") or item.get_closest_marker("notebooks"):
            item.add_marker(pytest.mark.slow)
