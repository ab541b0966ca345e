"""The ``jacntk assemble / info / query / verify`` commands, run as real subprocesses."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import jacntk
from jacntk.store import GramStore, assemble

ARCH = jacntk.MLP(3, "gelu", sigma_b=0.1)
ARCH_ARGS = ["--activation", "gelu", "--depth", "3", "--sigma-b", "0.1"]


def jacntk_cli(*args, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jacntk", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def data_digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != "zarr.json" and p.relative_to(path).parts[0] != "manifest"
    }


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=False,
            protocol="tcp",  # reachable from a CLI subprocess via --scheduler
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def points(tmp_path_factory):
    X = np.random.default_rng(11).standard_normal((112, 3)) / 2
    path = tmp_path_factory.mktemp("data") / "x.npy"
    np.save(path, X)
    return X, path


@pytest.fixture(scope="module")
def jacobian_store(client, points, tmp_path_factory):
    path = tmp_path_factory.mktemp("stores") / "j.zarr"
    assemble(ARCH, points[0], path, jacobian=True, tile=16, client=client)
    return path


def test_cli_assemble_killed_mid_run_resumes_only_missing_tiles(client, points, tmp_path):
    X, data = points
    out = tmp_path / "g.zarr"
    records = out / "manifest" / "c"
    args = ["assemble", data, "--out", out, "--jacobian", "--tile", 16, "--json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "jacntk", *map(str, args + ARCH_ARGS + ["--workers", 1])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the CLI and its local cluster
    )
    try:
        deadline = time.monotonic() + 120
        while len(list(records.glob("*/*/0/0"))) < 3:
            assert proc.poll() is None, "the assembly ended before it could be killed"
            assert time.monotonic() < deadline, "no tile was written within 120 s"
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the client, its scheduler and workers, at once
        proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until every process of the group is gone
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    killed = GramStore.open(out)
    total = killed.n_tiles * (killed.n_tiles + 1) // 2
    recorded = total - len(killed.missing_tiles())
    assert total == 28 and 3 <= recorded < total and not killed.complete

    # the same command, on a scheduler whose workers already have compiled kernels
    rerun = jacntk_cli(*args, *ARCH_ARGS, "--scheduler", client.scheduler.address)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert (report["computed"], report["skipped"]) == (total - recorded, recorded)
    assert report["complete"] and not report["created"]

    ref = tmp_path / "ref.zarr"
    assemble(ARCH, X, ref, jacobian=True, tile=16, client=client)
    assert data_digest(out) == data_digest(ref)
    G = jacntk.kernel(ARCH, X[:40], jacobian=True)
    np.testing.assert_allclose(
        GramStore.open(out).block(slice(0, 40), slice(0, 40), jacobian=True), G, atol=1e-12
    )


def test_cli_info_query_verify(jacobian_store, points, tmp_path):
    X = points[0]
    info = jacntk_cli("info", jacobian_store, "--json")
    assert info.returncode == 0, info.stderr
    meta = json.loads(info.stdout)
    assert (meta["n"], meta["d"], meta["tile"], meta["kind"], meta["jacobian"]) == (
        112,
        3,
        16,
        "ntk",
        True,
    )
    assert meta["complete"] and meta["tiles_done"] == 28 and meta["arch"] == ARCH.to_dict()
    text = jacntk_cli("info", jacobian_store)
    assert "Jacobian kernel fields" in text.stdout and "28/28 tiles" in text.stdout

    saved = tmp_path / "block.npy"
    q = jacntk_cli("query", jacobian_store, "--rows", "0:5", "--cols", "3,100,-1", "--out", saved)
    assert q.returncode == 0, q.stderr
    K = jacntk.kernel(ARCH, X[:5], X[[3, 100, 111]])
    np.testing.assert_allclose(np.load(saved), K, rtol=0, atol=1e-12)
    q = jacntk_cli("query", jacobian_store, "--rows", "7", "--cols", "20:22", "--jacobian")
    assert q.returncode == 0, q.stderr
    G = jacntk.kernel(ARCH, X[[7]], X[20:22], jacobian=True)
    np.testing.assert_allclose(np.loadtxt(io.StringIO(q.stdout)), G, rtol=0, atol=1e-12)

    v = jacntk_cli("verify", jacobian_store, "--sample", 1)
    assert v.returncode == 0 and v.stdout.strip().endswith("OK"), v.stdout + v.stderr
    assert v.stderr == ""  # not a terminal: no bar by default


def stderr_bytes(*args) -> tuple[subprocess.CompletedProcess, str]:
    """Run the CLI keeping stderr's carriage returns (text mode turns them into newlines)."""
    proc = subprocess.run(
        [sys.executable, "-m", "jacntk", *map(str, args)], capture_output=True, timeout=120
    )
    return proc, proc.stderr.decode()


def test_cli_verify_progress_is_one_bar_over_checks_then_recomputations(jacobian_store):
    v, err = stderr_bytes("verify", jacobian_store, "--sample", 2, "--progress")
    assert v.returncode == 0 and v.stdout.decode().strip().endswith("OK"), err
    # one bar redrawn in place: 28 tiles checked + 2 recomputed, one line once closed
    assert err.count("\n") == 1 and err.endswith("\n"), repr(err)
    final = err.strip().split("\r")[-1]
    assert final.startswith("verify") and "30/30" in final and "0 damaged" in final, final
    quiet, err = stderr_bytes("verify", jacobian_store, "--sample", 2, "--quiet")
    assert quiet.returncode == 0 and err == "" and quiet.stdout == v.stdout


def test_cli_verify_reports_a_corrupted_chunk(client, points, tmp_path):
    path = tmp_path / "g.zarr"
    assemble(ARCH, points[0], path, tile=16, client=client)
    chunk = path / "K" / "c" / "1" / "3"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    v, err = stderr_bytes("verify", path, "--sample", 0, "--progress")
    assert v.returncode == 1, err
    damaged = [line for line in v.stdout.decode().splitlines() if line.startswith("DAMAGED ")]
    assert len(damaged) == 1 and damaged[0].startswith("DAMAGED tile (1, 3)"), v.stdout
    final = err.strip().split("\r")[-1]
    assert "28/28" in final and "1 damaged" in final, repr(err)


def test_cli_bad_input_is_a_clear_error_and_leaves_store_intact(jacobian_store, points, tmp_path):
    before = data_digest(jacobian_store)
    bad = points[0].copy()
    bad[9, 0] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    r = jacntk_cli("assemble", tmp_path / "bad.npy", "--out", jacobian_store, "--overwrite")
    assert r.returncode == 2 and "NaN" in r.stderr and "row 9" in r.stderr, r.stderr
    r = jacntk_cli("assemble", points[1], "--out", jacobian_store, "--kind", "nngp", *ARCH_ARGS)
    assert r.returncode == 2 and "kind" in r.stderr and "--overwrite" in r.stderr, r.stderr
    assert data_digest(jacobian_store) == before
    r = jacntk_cli("query", jacobian_store, "--rows", "112", "--cols", "0")
    assert r.returncode == 2 and "index 112 is out of range" in r.stderr, r.stderr
    r = jacntk_cli("query", jacobian_store, "--rows", "a-b", "--cols", "0")
    assert r.returncode == 2 and "'a-b' is not an index spec" in r.stderr, r.stderr
    r = jacntk_cli("info", tmp_path / "missing.zarr")
    assert r.returncode == 2 and "no Gram store" in r.stderr, r.stderr
