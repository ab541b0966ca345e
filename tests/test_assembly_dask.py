"""Assembly through a real ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1:
exactness, many concurrent writers, and a worker SIGKILLed mid-assembly."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from distributed import Client, get_task_stream

import jacntk
from jacntk.store import GramStore, assemble

DASK = str(Path(sys.executable).with_name("dask"))
ENV = {
    **os.environ,
    "NUMBA_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def _wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A scheduler and two single-process workers (2 threads each, no nanny: a SIGKILL kills
    the worker for good), all on 127.0.0.1, started with the ``dask`` command line."""
    folder = tmp_path_factory.mktemp("dask")
    scheduler_file = folder / "scheduler.json"
    log = open(folder / "cluster.log", "wb")  # noqa: SIM115 - closed in teardown
    common = {"stdout": log, "stderr": subprocess.STDOUT, "env": ENV}
    procs = [
        subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
            + ["--scheduler-file", str(scheduler_file)],
            **common,
        )
    ]
    client = None
    try:
        _wait_for(scheduler_file.exists, 60, "the scheduler file")
        workers = [
            subprocess.Popen(
                [DASK, "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "2"]
                + ["--no-nanny", "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{k}"],
                **common,
            )
            for k in range(2)
        ]
        procs += workers
        client = Client(scheduler_file=str(scheduler_file), timeout="30s")
        client.wait_for_workers(2, timeout=60)
        yield SimpleNamespace(client=client, workers=workers, folder=folder)
    finally:
        if client is not None:
            client.close()
        for p in reversed(procs):
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
        log.close()


def data_digest(path: Path) -> dict[str, str]:
    """sha256 of every data chunk file (not the attributes, which hold a timestamp and a uuid,
    nor the manifest, whose checksums are keyed by that uuid)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != "zarr.json" and p.relative_to(path).parts[0] != "manifest"
    }


def test_assembly_on_scheduler_and_two_workers_equals_kernel(cluster, tmp_path, rng):
    X = rng.standard_normal((90, 6)) / 2
    arch = jacntk.MLP(3, "erf", sigma_b=0.2, kappa=0.7)
    with get_task_stream(cluster.client) as stream:
        report = assemble(arch, X, tmp_path / "g.zarr", tile=16, client=cluster.client)
    assert report.workers == 2 and report.computed == 21 and report.complete
    workers = {t["worker"] for t in stream.data if str(t["key"]).startswith("jacntk-tile")}
    assert len(workers) == 2, "both worker processes should have computed tiles"
    K = jacntk.kernel(arch, X)
    np.testing.assert_allclose(GramStore.open(tmp_path / "g.zarr").block(), K, rtol=0, atol=1e-12)

    Xs = X[:40, :3]
    assemble(arch, Xs, tmp_path / "j.zarr", jacobian=True, tile=16, client=cluster.client)
    G = jacntk.kernel(arch, Xs, jacobian=True)
    got = GramStore.open(tmp_path / "j.zarr").block(jacobian=True)
    np.testing.assert_allclose(got, G, rtol=0, atol=1e-12)


def test_many_concurrent_tile_tasks_lose_nothing(cluster, tmp_path, rng):
    """136 tasks, four at a time in two processes, each writing eight chunks it owns."""
    X = rng.standard_normal((80, 4)) / 2
    arch = jacntk.MLP(2, "gelu")
    path = tmp_path / "many.zarr"
    report = assemble(arch, X, path, jacobian=True, tile=5, client=cluster.client)
    assert (report.computed, report.tiles_total, report.complete) == (136, 136, True)
    g = GramStore.open(path)
    assert g.complete and not g.missing_tiles()
    G = jacntk.kernel(arch, X, jacobian=True)
    np.testing.assert_allclose(g.block(jacobian=True), G, rtol=0, atol=1e-12)
    report = g.verify(sample=0)
    assert report["ok"] and report["tiles_done"] == 136
    assert len(list((path / "K_q" / "c").rglob("*"))) == 16 + 16 * 16  # dirs + all chunks


def test_worker_sigkilled_mid_assembly_gives_identical_bytes(cluster, tmp_path, rng):
    X = rng.standard_normal((176, 3)) / 2
    arch = jacntk.MLP(3, "gelu")
    client = cluster.client
    ref = tmp_path / "ref.zarr"
    assemble(arch, X, ref, jacobian=True, tile=16, client=client)

    path = tmp_path / "killed.zarr"
    victim = cluster.workers[0]
    killed_at = {}

    def kill_after_some_tiles():
        records = path / "manifest" / "c"
        try:
            n = _wait_for(
                lambda: (
                    len(list(records.glob("*/*/0/0"))) >= 4 and len(list(records.glob("*/*/0/0")))
                ),
                60,
                "the first tiles",
                interval=0.005,
            )
        except TimeoutError:
            return
        os.kill(victim.pid, signal.SIGKILL)
        killed_at["tiles"] = n

    watcher = threading.Thread(target=kill_after_some_tiles, daemon=True)
    watcher.start()
    report = assemble(arch, X, path, jacobian=True, tile=16, client=client)
    watcher.join(timeout=60)
    assert victim.wait(timeout=30) == -signal.SIGKILL
    assert "tiles" in killed_at and killed_at["tiles"] < report.tiles_total, killed_at
    assert report.complete and report.computed == report.tiles_total == 66
    assert len(client.scheduler_info()["workers"]) == 1
    assert data_digest(path) == data_digest(ref)
    assert GramStore.open(path).verify(sample=1)["ok"]
