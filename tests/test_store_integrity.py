"""Store integrity under faults (issue 13): one writer per store, verified reads, crash-safe
creation, exit codes.  Real CLI subprocesses, real Zarr stores on disk, real SIGKILLs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import jacntk
from jacntk.store import ChecksumError, GramStore, LeaseLostError, StoreBusyError, assemble
from jacntk.store._lease import STALE_S, acquire
from jacntk.store._location import StoreLocation

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def cli(*args, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jacntk", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def popen(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "jacntk", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def arch_args(arch: jacntk.MLP) -> list[str]:
    return ["--activation", arch.activation, "--depth", str(arch.depth)]


def stored_gram(path: Path) -> np.ndarray:
    return GramStore.open(path).block()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """160 points in 4-D (tile 16: 55 tiles) saved for the CLI."""
    X = np.random.default_rng(7).standard_normal((160, 4))
    path = tmp_path_factory.mktemp("data") / "x.npy"
    np.save(path, X)
    return X, path


# ---- 1. one writer per store -----------------------------------------------------------------


def test_concurrent_assemblies_with_different_settings_never_mix(data, tmp_path):
    """Depth 3 and depth 4 started together on one path, five times: exactly one command exits
    0 and the store equals its kernel; the other fails naming the holder or the settings."""
    X, xpath = data
    kernels = {d: jacntk.kernel(jacntk.MLP(d, "erf"), X) for d in (3, 4)}
    for trial in range(5):
        out = tmp_path / f"g{trial}.zarr"
        procs = {
            d: popen("assemble", xpath, "--out", out, "--tile", 16, "--depth", d, "--workers", 1)
            for d in (3, 4)
        }
        done = {
            d: (p.wait(timeout=180), p.stdout.read(), p.stderr.read()) for d, p in procs.items()
        }
        winners = [d for d, (rc, _, _) in done.items() if rc == 0]
        assert len(winners) == 1, (trial, done)
        for rc, _, err in done.values():
            if rc != 0:
                assert rc == 2 and (
                    "is being written by writer" in err or "made for other settings" in err
                ), err
        np.testing.assert_allclose(stored_gram(out), kernels[winners[0]], rtol=0, atol=1e-13)
        assert GramStore.open(out).verify(sample=0)["ok"]


def test_same_settings_wait_for_each_other_and_both_succeed(data, tmp_path):
    X, xpath = data
    out = tmp_path / "g.zarr"
    cmd = ("assemble", xpath, "--out", out, "--tile", 16, "--workers", 1, "--json")
    first = popen(*cmd)
    time.sleep(0.3)
    second = popen(*cmd)
    results = [(p.wait(timeout=180), p.stdout.read(), p.stderr.read()) for p in (first, second)]
    assert [rc for rc, _, _ in results] == [0, 0], results
    reports = [json.loads(o.strip().splitlines()[-1]) for _, o, _ in results]
    assert sum(r["computed"] for r in reports) == 55 and all(r["complete"] for r in reports)
    assert any("waiting for writer" in e for _, _, e in results)
    np.testing.assert_allclose(
        stored_gram(out), jacntk.kernel(jacntk.MLP(3, "erf"), X), rtol=0, atol=1e-13
    )


def test_overwrite_during_a_running_assembly_is_refused_and_the_store_survives(tmp_path):
    X = np.random.default_rng(1).standard_normal((150, 3))
    np.save(tmp_path / "x.npy", X)
    out = tmp_path / "g.zarr"
    arch = jacntk.MLP(3, "tanh")
    first = popen("assemble", tmp_path / "x.npy", "--out", out, "--tile", 15, "--workers", 1,
                  *arch_args(arch))  # fmt: skip
    lease = Path(str(out) + ".lease")
    for _ in range(600):  # the first holds the lease and has recorded a tile
        if lease.exists() and list(out.glob("manifest/c/*/*/0/0")):
            break
        assert first.poll() is None, first.communicate()
        time.sleep(0.05)
    second = cli("assemble", tmp_path / "x.npy", "--out", out, "--tile", 15, "--depth", 2,
                 "--overwrite")  # fmt: skip
    assert second.returncode == 2, second
    assert "is being written by writer" in second.stderr and f"pid {first.pid}" in second.stderr
    assert first.wait(timeout=300) == 0, first.communicate()
    np.testing.assert_allclose(stored_gram(out), jacntk.kernel(arch, X), rtol=0, atol=1e-13)
    assert not lease.exists()


def _fake_holder(
    path: Path, *, heartbeat: float, host: str = "elsewhere", request: str = "x", pid: int = 1
) -> dict:
    """Write the lease object of another writer for the store at ``path``."""
    holder = {"writer": "f" * 32, "host": host, "pid": pid, "started": "then",
              "heartbeat": heartbeat, "command": "jacntk assemble ...", "request": request,
              "phase": "assembling"}  # fmt: skip
    Path(str(path) + ".lease").write_text(json.dumps(holder))
    return holder


def test_a_live_lease_elsewhere_blocks_and_a_stale_one_is_broken_and_reported(tmp_path, rng):
    X = rng.standard_normal((20, 3))
    arch, out = jacntk.MLP(2, "erf"), tmp_path / "g.zarr"
    _fake_holder(out, heartbeat=time.time())
    with pytest.raises(StoreBusyError, match="pid 1 on elsewhere"):
        assemble(arch, X, out, tile=10, client=None, cluster=None)
    assert not out.exists()
    _fake_holder(out, heartbeat=time.time() - STALE_S - 5)
    with pytest.warns(UserWarning, match="broke the stale lease of writer ffffffff"):
        report = assemble(arch, X, out, tile=10)
    assert report.complete and report.broke_lease == "f" * 32
    np.testing.assert_allclose(stored_gram(out), jacntk.kernel(arch, X), atol=1e-13)
    assert not Path(str(out) + ".lease").exists()


def test_a_dead_local_holder_is_stale_at_once_and_a_waiter_gives_up_when_told(tmp_path):
    loc = StoreLocation.of(tmp_path / "g.zarr")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    _fake_holder(
        tmp_path / "g.zarr",
        heartbeat=time.time(),
        host=socket.gethostname(),
        request="r",
        pid=int(dead.stdout),
    )  # a fresh heartbeat, but the process is gone
    with pytest.warns(UserWarning, match="broke the stale lease"):
        lease = acquire(loc, "r")
    with lease:
        other_t0 = time.monotonic()
        with pytest.raises(StoreBusyError, match=r"same settings; waited \d+ s"):
            acquire(loc, "r", wait_seconds=1.0)
        assert time.monotonic() - other_t0 < 10
        with pytest.raises(StoreBusyError, match="for other settings"):
            acquire(loc, "other")
        lease.check()
        _fake_holder(tmp_path / "g.zarr", heartbeat=time.time())  # someone took it over
        with pytest.raises(LeaseLostError, match="taken by writer ffffffff"):
            lease.check()


# ---- 2. verified reads ------------------------------------------------------------------------


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _damage(store: Path, how: str) -> set[tuple[int, int]]:
    """Damage chunks of K; returns the tiles damaged."""
    chunk = lambda i, j: store / "K" / "c" / str(i) / str(j)  # noqa: E731
    if how == "flip":
        _flip(chunk(0, 1))
        return {(0, 1)}
    if how == "swap":
        a, b = chunk(0, 2).read_bytes(), chunk(1, 2).read_bytes()
        chunk(0, 2).write_bytes(b), chunk(1, 2).write_bytes(a)
        return {(0, 2), (1, 2)}
    chunk(1, 1).unlink()
    return {(1, 1)}


@pytest.fixture(scope="module")
def solved_store(tmp_path_factory):
    """A complete scalar store (60 points, tile 20) and its targets, for damage tests."""
    root = tmp_path_factory.mktemp("damage")
    X = np.random.default_rng(3).standard_normal((60, 3))
    y = np.sin(X[:, 0])
    np.save(root / "y.npy", y)
    assemble(jacntk.MLP(2, "erf"), X, root / "k.zarr", tile=20)
    return root, X, y


@pytest.mark.parametrize("how", ["flip", "swap", "delete"])
def test_damaged_chunks_make_every_reader_fail_loudly_and_assemble_repairs_exactly_them(
    solved_store, tmp_path, how
):
    root, X, y = solved_store
    store = tmp_path / "k.zarr"
    shutil.copytree(root / "k.zarr", store)
    damaged = _damage(store, how)
    first = min(damaged)

    q = cli("query", store, "--rows", ":", "--cols", ":")
    assert q.returncode == 2 and q.stdout == "", q
    assert "is damaged" in q.stderr and "jacntk verify" in q.stderr and "tile (" in q.stderr
    s = cli("solve", store, "--targets", root / "y.npy", "--out", tmp_path / "o.npz")
    assert s.returncode == 2 and "is damaged" in s.stderr, s
    assert not (tmp_path / "o.npz").exists()
    g = GramStore.open(store)
    with pytest.raises(ChecksumError, match=rf"tile \({first[0]}, {first[1]}\) is damaged"):
        g.block(slice(first[0] * 20, first[0] * 20 + 1), slice(first[1] * 20, first[1] * 20 + 1))
    readers = [g.block, lambda: g.row(25), lambda: g.matvec(np.ones(60))]
    if how == "delete":  # the only damage on the diagonal: tile (1, 1)
        readers.append(g.diag)
    for read in readers:
        with pytest.raises(ChecksumError):
            read()
    with pytest.raises(ChecksumError):
        jacntk.predict(None, g, y, X[:5], times=[np.inf])
    with pytest.raises(ChecksumError):
        jacntk.cg(jacntk.StoredGram(g), y)
    report = g.verify(sample=0)
    assert not report["ok"] and {tuple(d["tile"]) for d in report["damaged"]} == damaged

    np.save(tmp_path / "x.npy", X)
    a = cli("assemble", tmp_path / "x.npy", "--out", store, "--tile", 20, "--depth", 2, "--json")
    assert a.returncode == 0, a
    rep = json.loads(a.stdout.strip().splitlines()[-1])
    assert rep["repaired"] == rep["computed"] == len(damaged) and rep["complete"]
    np.testing.assert_allclose(stored_gram(store), jacntk.kernel(jacntk.MLP(2, "erf"), X),
                               rtol=0, atol=1e-13)  # fmt: skip
    assert GramStore.open(store).verify(sample=0)["ok"]


def test_a_chunk_written_by_another_stores_writer_is_caught(rng, tmp_path):
    """The mixed-store case: tiles of a depth-3 store copied, with their own valid records,
    into a depth-4 store at the same path (chunk checksums are keyed by the store's uuid)."""
    X = rng.standard_normal((40, 3))
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    assemble(jacntk.MLP(3, "erf"), X, a, tile=20, jacobian=True)
    assemble(jacntk.MLP(4, "erf"), X, b, tile=20, jacobian=True)
    for name in ("K", "K_q", "manifest"):
        for f in (a / name / "c").rglob("*"):
            if f.is_file() and f.relative_to(a / name / "c").parts[:2] in (("0", "1"), ("1", "0")):
                shutil.copy(f, b / f.relative_to(a))
    g = GramStore.open(b)
    with pytest.raises(ChecksumError, match=r"tile \(0, 1\) is damaged: chunk K\[0, 1\]"):
        g.block(jacobian=True)
    assert [d["tile"] for d in g.verify(sample=0)["damaged"]] == [[0, 1]]
    report = assemble(jacntk.MLP(4, "erf"), X, b, tile=20, jacobian=True)
    assert (report.repaired, report.computed) == (1, 1)
    want = jacntk.kernel(jacntk.MLP(4, "erf"), X, jacobian=True)
    np.testing.assert_allclose(GramStore.open(b).block(jacobian=True), want, atol=1e-12)


# ---- 3. crash-safe creation --------------------------------------------------------------------

STAGES = ["lease", "group", "arrays", "manifest", "inputs-array", "inputs-data", "created",
          "recorded", "marked"]  # fmt: skip


@pytest.mark.parametrize("stage", [*STAGES, "clearing"])
def test_a_writer_killed_at_each_creation_stage_is_resumed_or_replaced(data, tmp_path, stage):
    X, xpath = data
    out = tmp_path / "g.zarr"
    cmd = ["assemble", xpath, "--out", out, "--tile", 40, "--workers", 1]
    if stage == "clearing":  # killed while replacing an old store with --overwrite
        assert cli(*cmd, "--depth", 2).returncode == 0
        killed = cli(*cmd, "--overwrite", env={"JACNTK_KILL_AT": stage})
    else:
        killed = cli(*cmd, env={"JACNTK_KILL_AT": stage})
    assert killed.returncode == -signal.SIGKILL, killed
    again = cli(*cmd, "--json")  # no --overwrite
    assert again.returncode == 0, again
    assert json.loads(again.stdout.strip().splitlines()[-1])["complete"]
    np.testing.assert_allclose(
        stored_gram(out), jacntk.kernel(jacntk.MLP(3, "erf"), X), rtol=0, atol=1e-13
    )
    g = GramStore.open(out)
    assert g.verify(sample=0)["ok"] and g.meta["complete"]
    assert not Path(str(out) + ".lease").exists()


# ---- 4. exit codes ------------------------------------------------------------------------------


def test_assemble_exits_non_zero_when_the_store_ends_incomplete(tmp_path):
    """A hostile neighbour deletes manifest records while the assembly runs: the store cannot
    be complete at the end, and the command says so by its exit status."""
    X = np.random.default_rng(2).standard_normal((120, 3))
    np.save(tmp_path / "x.npy", X)
    out = tmp_path / "g.zarr"
    proc = popen("assemble", tmp_path / "x.npy", "--out", out, "--tile", 12, "--workers", 1,
                 "--activation", "tanh")  # fmt: skip
    deleted = 0
    for _ in range(6000):
        if proc.poll() is not None:
            break
        for f in out.glob("manifest/c/*/*/0/0"):
            f.unlink(missing_ok=True)
            deleted += 1
        time.sleep(0.01)
    stdout, stderr = proc.communicate(timeout=60)
    assert deleted and proc.returncode == 1, (stdout, stderr)
    assert "INCOMPLETE" in stdout
    assert not GramStore.open(out).complete


def test_damaged_inputs_fail_predictions_and_assemble_rewrites_them(solved_store, tmp_path):
    root, X, y = solved_store
    store = tmp_path / "k.zarr"
    shutil.copytree(root / "k.zarr", store)
    chunk = next(p for p in (store / "X" / "c").rglob("*") if p.is_file())
    _flip(chunk)
    g = GramStore.open(store)
    with pytest.raises(ChecksumError, match="inputs X do not match the store's fingerprint"):
        jacntk.predict(None, g, y, X[:5], times=[np.inf])
    report = g.verify(sample=0)
    assert not report["ok"] and not report["fingerprint_ok"]
    again = assemble(jacntk.MLP(2, "erf"), X, store, tile=20)
    assert again.complete and again.computed == 0
    g = GramStore.open(store)
    assert g.verify(sample=1)["ok"]
    np.testing.assert_array_equal(g.points, X)
