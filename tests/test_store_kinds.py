"""A store of several kernel kinds (issue 14, item 3): ``assemble(kind=("nngp", "ntk"))``
computes both kinds in one pass per tile into one store -- a group holding one complete store
per kind.  Real Zarr stores on disk, a real in-process Dask cluster, the real CLI as a
subprocess, real SIGKILLs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jacntk
from jacntk.store import GramStore, assemble
from jacntk.store._location import store_kinds

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ARCH = jacntk.MLP(3, "erf")


def cli(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jacntk", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def points():
    return np.random.default_rng(3).standard_normal((70, 4))


def test_both_kinds_in_one_store_equal_separate_stores(points, tmp_path, client):
    both = tmp_path / "both.zarr"
    report = assemble(ARCH, points, both, kind=("ntk", "nngp"), tile=25, client=client)
    assert report.complete and report.computed == report.tiles_total == 6
    assert store_kinds(both) == ["nngp", "ntk"]  # KINDS order, whatever order was asked
    for kind in ("nngp", "ntk"):
        alone = tmp_path / f"{kind}.zarr"
        assemble(ARCH, points, alone, kind=kind, tile=25, client=client)
        got = GramStore.open(both, kind=kind)
        assert got.kind == kind and got.complete
        np.testing.assert_allclose(got.block(), GramStore.open(alone).block(), rtol=1e-15, atol=0)
        np.testing.assert_allclose(got.block(), jacntk.kernel(ARCH, points, kind=kind), atol=1e-14)
        assert got.verify(sample=1)["ok"]
    # the same kinds asked in the other order resume the same store: nothing to compute
    again = assemble(ARCH, points, both, kind=["nngp", "ntk"], client=client)
    assert (again.computed, again.skipped, again.complete) == (0, 6, True)


def test_opening_a_store_of_several_kinds_names_them(points, tmp_path, client):
    both = tmp_path / "both.zarr"
    assemble(ARCH, points, both, kind=("nngp", "ntk"), tile=40, client=client)
    with pytest.raises(ValueError, match=r"holds the kinds nngp, ntk .*kind="):
        GramStore.open(both)
    with pytest.raises(ValueError, match=r"holds the kinds nngp, ntk, not 'ntk_truncated'"):
        GramStore.open(both, kind="ntk_truncated")
    one = tmp_path / "one.zarr"
    assemble(ARCH, points, one, kind="ntk", tile=40, client=client)
    assert GramStore.open(one, kind="ntk").kind == "ntk"
    with pytest.raises(ValueError, match=r"holds the ntk Gram, not 'nngp'"):
        GramStore.open(one, kind="nngp")
    # one store asked for other kinds than it holds is refused, and replaced on request
    with pytest.raises(ValueError, match=r"store holds kinds ntk, asked kinds nngp, ntk"):
        assemble(ARCH, points, one, kind=("nngp", "ntk"), client=client)
    with pytest.raises(ValueError, match=r"store holds kinds nngp, ntk, asked kinds ntk"):
        assemble(ARCH, points, both, kind="ntk", client=client)
    report = assemble(ARCH, points, one, kind=("nngp", "ntk"), overwrite=True, client=client)
    assert report.created and report.complete and store_kinds(one) == ["nngp", "ntk"]
    with pytest.raises(ValueError, match=r"'ntk' is asked for twice"):
        assemble(ARCH, points, tmp_path / "x.zarr", kind=("ntk", "ntk"), client=client)
    with pytest.raises(ValueError, match=r"empty sequence"):
        assemble(ARCH, points, tmp_path / "x.zarr", kind=(), client=client)


def test_jacobian_fields_of_two_kinds_in_one_store(points, tmp_path, client):
    relu = jacntk.MLP(2, "relu")
    X = points[:30]
    both = tmp_path / "fields.zarr"
    kinds = ("nngp", "ntk_truncated")
    report = assemble(relu, X, both, kind=kinds, jacobian=True, tile=16, client=client)
    assert report.complete
    for kind in kinds:
        want = jacntk.kernel(relu, X, kind=kind, jacobian=True)
        got = GramStore.open(both, kind=kind).block(jacobian=True)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())


def test_a_damaged_chunk_of_one_kind_is_found_and_only_its_tile_recomputed(
    points, tmp_path, client
):
    both = tmp_path / "both.zarr"
    assemble(ARCH, points, both, kind=("nngp", "ntk"), tile=25, client=client)
    chunk = both / "ntk" / "K" / "c" / "0" / "1"
    raw = bytearray(chunk.read_bytes())
    raw[100] ^= 0x40
    chunk.write_bytes(bytes(raw))
    report = GramStore.open(both, kind="ntk").verify(sample=0)
    assert [d["tile"] for d in report["damaged"]] == [[0, 1]]
    assert GramStore.open(both, kind="nngp").verify(sample=0)["ok"]
    again = assemble(ARCH, points, both, kind=("nngp", "ntk"), client=client)
    assert (again.repaired, again.computed, again.complete) == (1, 1, True)
    np.testing.assert_allclose(
        GramStore.open(both, kind="ntk").block(), jacntk.kernel(ARCH, points), atol=1e-14
    )


@pytest.mark.parametrize("stage", ["group", "arrays", "created", "recorded", "marked"])
def test_a_writer_of_several_kinds_killed_mid_creation_is_resumed_or_replaced(
    points, tmp_path, stage
):
    np.save(tmp_path / "x.npy", points)
    out = tmp_path / "both.zarr"
    cmd = ["assemble", tmp_path / "x.npy", "--out", out, "--kind", "nngp", "ntk"]
    cmd += ["--tile", 30, "--workers", 1]
    killed = cli(*cmd, env={"JACNTK_KILL_AT": stage})
    assert killed.returncode == -signal.SIGKILL, killed
    again = cli(*cmd, "--json")
    assert again.returncode == 0, again
    assert json.loads(again.stdout.strip().splitlines()[-1])["complete"]
    for kind in ("nngp", "ntk"):
        g = GramStore.open(out, kind=kind)
        assert g.verify(sample=0)["ok"] and g.meta["complete"]
        np.testing.assert_allclose(g.block(), jacntk.kernel(ARCH, points, kind=kind), atol=1e-13)
    assert not Path(str(out) + ".lease").exists()


def test_the_cli_reads_each_kind_of_a_store_of_several(points, tmp_path):
    np.save(tmp_path / "x.npy", points)
    np.save(tmp_path / "y.npy", np.sin(points[:, 0]))
    out = tmp_path / "both.zarr"
    made = cli("assemble", tmp_path / "x.npy", "--out", out, "--kind", "ntk", "nngp",
               "--tile", 35, "--workers", 1)  # fmt: skip
    assert made.returncode == 0, made
    info = cli("info", out)
    assert info.returncode == 0 and "contents:    nngp" in info.stdout
    assert "contents:    ntk" in info.stdout
    one = json.loads(cli("info", out, "--kind", "ntk", "--json").stdout)
    assert one["kind"] == "ntk" and one["complete"]
    verify = cli("verify", out, "--sample", 1)
    assert verify.returncode == 0 and verify.stdout.count("tiles recorded") == 2, verify
    refused = cli("query", out, "--rows", "0:3", "--cols", "0:3")
    assert refused.returncode != 0 and "holds the kinds nngp, ntk" in refused.stderr
    for kind in ("nngp", "ntk"):
        q = cli("query", out, "--rows", "0:3", "--cols", ":", "--kind", kind, "--out",
                tmp_path / f"{kind}.npy")  # fmt: skip
        assert q.returncode == 0, q
        want = jacntk.kernel(ARCH, points[:3], points, kind=kind)
        np.testing.assert_allclose(np.load(tmp_path / f"{kind}.npy"), want, atol=1e-14)
    solved = cli("solve", out, "--kind", "nngp", "--targets", tmp_path / "y.npy", "--out",
                 tmp_path / "p.npz")  # fmt: skip
    assert solved.returncode == 0, solved
    assert "solve: nngp" in solved.stdout + solved.stderr
