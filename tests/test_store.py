"""GramStore layout, queries, resume, refusal and bad input, on an in-process Dask cluster."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zarr

import jacntk
from jacntk.kernels import FIELD_NAMES
from jacntk.store import GramStore, assemble

ARCH = jacntk.MLP(2, "erf", sigma_b=0.3)


@pytest.fixture(scope="module")
def points():
    return np.random.default_rng(7).standard_normal((45, 3)) / 1.5


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (to show a store was left byte-for-byte intact)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def chunk_file(store: Path, array: str, *index: int) -> Path:
    return store.joinpath(array, "c", *map(str, index))


def test_scalar_store_queries_match_dense_kernel(client, points, tmp_path, rng):
    report = assemble(ARCH, points, tmp_path / "g.zarr", kind="ntk", tile=16, client=client)
    assert (report.computed, report.skipped, report.tiles_total) == (6, 0, 6)
    assert report.complete and report.created
    K = jacntk.kernel(ARCH, points, kind="ntk")
    g = GramStore.open(tmp_path / "g.zarr")
    assert (g.n, g.d, g.tile, g.n_tiles, g.kind, g.jacobian, g.dtype) == (
        45,
        3,
        16,
        3,
        "ntk",
        False,
        "float64",
    )
    assert g.arch == ARCH and g.complete and g.shape == (45, 45)
    np.testing.assert_array_equal(g.points, points)
    np.testing.assert_allclose(g.block(), K, rtol=0, atol=1e-12)
    rows, cols = [44, 0, 17, -1], slice(3, 40, 4)
    np.testing.assert_allclose(g.block(rows, cols), K[rows][:, cols], rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.tile_block(2, 0), K[32:, :16], rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.diag(), np.diag(K), rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.row(20), K[20], rtol=0, atol=1e-12)
    V = rng.standard_normal((45, 3))
    np.testing.assert_allclose(g.matvec(V), K @ V, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g.matvec(V[:, 0]), K @ V[:, 0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g.to_dask().compute(), K, rtol=0, atol=1e-12)
    assert g.tile_slice(2) == slice(32, 45)


def test_jacobian_store_materialises_point_major_blocks(client, points, tmp_path, rng):
    assemble(ARCH, points, tmp_path / "j.zarr", jacobian=True, tile=16, client=client)
    g = GramStore.open(tmp_path / "j.zarr")
    G = jacntk.kernel(ARCH, points, jacobian=True)
    w = points.shape[1] + 1
    assert g.shape == G.shape == (45 * w, 45 * w)
    rows, cols = [40, 2, 33], [15, 16, 44, 0]
    want = G.reshape(45, w, 45, w)[rows][:, :, cols].reshape(len(rows) * w, len(cols) * w)
    np.testing.assert_allclose(g.block(rows, cols, jacobian=True), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.block(jacobian=True), G, rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.diag(jacobian=True), np.diag(G), rtol=0, atol=1e-12)
    v = rng.standard_normal(45 * w)
    np.testing.assert_allclose(g.matvec(v), G @ v, rtol=1e-11, atol=1e-11)
    F = jacntk.kernel_fields(ARCH, points).data
    np.testing.assert_allclose(g.tile_block(2, 1), F[:, 32:, 16:32], rtol=0, atol=1e-12)
    fields = g.to_dask()
    assert list(fields) == list(FIELD_NAMES)
    for k, name in enumerate(FIELD_NAMES):
        np.testing.assert_allclose(fields[name].compute(), F[k], rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.block(rows, cols), F[0][rows][:, cols], rtol=0, atol=1e-12)


def test_layout_is_plain_zarr_explained_by_attributes(client, points, tmp_path):
    assemble(ARCH, points, tmp_path / "j.zarr", jacobian=True, tile=16, client=client)
    group = zarr.open_group(tmp_path / "j.zarr", mode="r")
    meta = group.attrs["jacntk"]
    assert meta["format"] == "jacntk-gram" and meta["complete"] and meta["inputs_written"]
    assert meta["arch"] == ARCH.to_dict() and meta["kind"] == "ntk" and meta["jacobian"]
    assert meta["fingerprint"].startswith("sha256:") and meta["jacntk_version"]
    assert sorted(group.array_keys()) == sorted(
        ["X", "manifest", "K", "K_p", "K_q", "K_pp", "K_pq", "K_qr"]
    )
    assert set(meta["layout"]) == set(group.array_keys())
    assert group["K"].chunks == (16, 16) and group["manifest"].shape == (3, 3, 8, 2)
    F = jacntk.kernel_fields(ARCH, points).data
    # K_q is written in full (its lower triangle holds K_r^T); K only in upper tiles
    np.testing.assert_allclose(group["K_q"][...], F[2], rtol=0, atol=1e-12)
    assert np.isnan(group["K"][32:, :16]).all()
    raw = json.loads((tmp_path / "j.zarr" / "zarr.json").read_text())
    assert "consolidated_metadata" in raw


def test_rerun_computes_only_missing_tiles_and_incomplete_store_names_them(
    client, points, tmp_path
):
    path = tmp_path / "g.zarr"
    assemble(ARCH, points, path, tile=16, client=client)
    before = tree_digest(path)
    for i, j in [(0, 2), (1, 1)]:
        chunk_file(path, "manifest", i, j, 0, 0).unlink()
        chunk_file(path, "K", i, j).unlink()
    g = GramStore.open(path)
    assert not g.complete and g.missing_tiles() == [(0, 2), (1, 1)]
    assert not g.verify(sample=0)["ok"]  # its attributes still claim it is complete
    with pytest.raises(ValueError, match=r"tiles \(0, 2\), \(1, 1\)"):
        g.block([0, 20], [40, 17])
    with pytest.raises(ValueError, match=r"\(0, 2\)"):
        g.tile_block(2, 0)
    with pytest.raises(ValueError, match="incomplete"):
        g.matvec(np.ones(45))
    np.testing.assert_allclose(
        g.block([0], [0, 20]), jacntk.kernel(ARCH, points[[0]], points[[0, 20]])
    )
    report = assemble(ARCH, points, path, client=client)  # tile taken from the store
    assert (report.computed, report.skipped, report.complete) == (2, 4, True)
    assert GramStore.open(path).verify(sample=0)["ok"]
    after = tree_digest(path)
    data = {k: v for k, v in before.items() if k.startswith(("K/", "manifest/c", "X/"))}
    assert data == {k: after[k] for k in data}
    again = assemble(ARCH, points, path, tile=16, client=client)
    assert (again.computed, again.skipped) == (0, 6)


def test_store_for_other_inputs_or_settings_is_refused_and_left_intact(client, points, tmp_path):
    path = tmp_path / "g.zarr"
    assemble(ARCH, points, path, tile=16, client=client)
    before = tree_digest(path)
    other = points.copy()
    other[3, 1] += 1e-9
    cases = [
        (dict(X=other), "fingerprint"),
        (dict(kind="nngp"), "kind"),
        (dict(arch=jacntk.MLP(3, "erf", sigma_b=0.3)), "arch"),
        (dict(dtype="float32"), "dtype"),
        (dict(tile=8), "tile"),
        (dict(jacobian=True), "jacobian"),
    ]
    for change, word in cases:
        args = dict(arch=ARCH, X=points, kind="ntk", jacobian=False, tile=16, dtype="float64")
        args.update(change)
        arch, X = args.pop("arch"), args.pop("X")
        with pytest.raises(ValueError, match=rf"{word}.*overwrite"):
            assemble(arch, X, path, client=client, **args)
        assert tree_digest(path) == before
    report = assemble(ARCH, points, path, kind="nngp", tile=16, client=client, overwrite=True)
    assert report.created and report.computed == 6
    np.testing.assert_allclose(
        GramStore.open(path).block(), jacntk.kernel(ARCH, points, kind="nngp"), atol=1e-12
    )


def test_bad_input_gives_clear_errors_and_leaves_store_intact(client, points, tmp_path):
    path = tmp_path / "g.zarr"
    assemble(ARCH, points, path, tile=16, client=client)
    before = tree_digest(path)
    bad = points.copy()
    bad[5, 2] = np.nan
    for kwargs in (dict(overwrite=False), dict(overwrite=True)):
        with pytest.raises(ValueError, match="NaN.*row 5"):
            assemble(ARCH, bad, path, tile=16, client=client, **kwargs)
    with pytest.raises(ValueError, match="dtype"):
        assemble(ARCH, points, path, dtype="float16", client=client, overwrite=True)
    with pytest.raises(ValueError, match="tile"):
        assemble(ARCH, points, path, tile=0, client=client, overwrite=True)
    with pytest.raises(ValueError, match="does not exist"):
        assemble(jacntk.MLP(2, "relu"), points, path, jacobian=True, client=client)
    assert tree_digest(path) == before
    g = GramStore.open(path)
    with pytest.raises(ValueError, match="index 45 is out of range.*n=45"):
        g.block([0, 45], [1])
    with pytest.raises(ValueError, match="index -46"):
        g.row(-46)
    with pytest.raises(ValueError, match="scalar"):
        g.block([0], [1], jacobian=True)
    with pytest.raises(ValueError, match="length 45"):
        g.matvec(np.ones(44))
    with pytest.raises(ValueError, match="tile index 3"):
        g.tile_block(3, 0)
    with pytest.raises(FileNotFoundError, match="no Gram store"):
        GramStore.open(tmp_path / "nothing.zarr")
    # a Zarr group that is not a jacntk store, and a corrupt one
    zarr.open_group(tmp_path / "foreign.zarr", mode="w").attrs["x"] = 1
    with pytest.raises(ValueError, match="not a jacntk Gram store"):
        GramStore.open(tmp_path / "foreign.zarr")
    with pytest.raises(ValueError, match="overwrite"):
        assemble(ARCH, points, tmp_path / "foreign.zarr", tile=16, client=client)
    corrupt = tmp_path / "corrupt.zarr"
    shutil.copytree(path, corrupt)
    (corrupt / "zarr.json").write_text("{ not json")
    with pytest.raises(ValueError, match="corrupt.zarr"):
        GramStore.open(corrupt)
    # a folder that is not a Zarr store is never replaced, even with overwrite
    folder = tmp_path / "my-results"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a Zarr store"):
        assemble(ARCH, points, folder, client=client, overwrite=True)
    assert (folder / "notes.txt").read_text() == "keep me"


def test_verify_reports_corrupted_chunk_and_inputs(client, points, tmp_path):
    path = tmp_path / "j.zarr"
    assemble(ARCH, points, path, jacobian=True, tile=16, dtype="float32", client=client)
    g = GramStore.open(path)
    F = jacntk.kernel_fields(ARCH, points).data
    np.testing.assert_allclose(g.tile_block(0, 1), F[:, :16, 16:32], rtol=1e-6, atol=1e-7)
    report = g.verify(sample=2)
    assert report["ok"] and len(report["recomputed"]) == 2 and not report["damaged"]
    # the lower chunk (2, 0) of K_pq holds K_pr of tile (0, 2): flip one byte in it
    target = chunk_file(path, "K_pq", 2, 0)
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    target.write_bytes(bytes(raw))
    report = GramStore.open(path).verify(sample=0)
    assert not report["ok"]
    assert [d["tile"] for d in report["damaged"]] == [[0, 2]]
    assert (
        "K_pq[2, 0]" in report["damaged"][0]["problem"]
        or "unreadable" in report["damaged"][0]["problem"]
    )
    # a corrupted input chunk breaks the fingerprint
    x_chunk = chunk_file(path, "X", 1, 0)
    raw = bytearray(x_chunk.read_bytes())
    raw[-3] ^= 0x01
    x_chunk.write_bytes(bytes(raw))
    report = GramStore.open(path).verify(sample=0)
    assert not report["fingerprint_ok"] and not report["ok"]


# ---- read-only locations and full disks (real mounts when root) ------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A small tmpfs at ``path`` (root only), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs (full-disk / read-only mount test)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        timeout=30,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def test_read_only_location_is_a_clear_error_and_store_stays_queryable(client, points, tmp_path):
    with tmpfs(tmp_path / "ro", "4m") as mnt:
        path = mnt / "g.zarr"
        assemble(ARCH, points, path, tile=16, client=client)
        chunk_file(path, "manifest", 1, 2, 0, 0).unlink()
        before = tree_digest(path)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, timeout=30)
        with pytest.raises(PermissionError, match="read-only"):
            assemble(ARCH, points, mnt / "new.zarr", tile=16, client=client)
        with pytest.raises(PermissionError, match="g.zarr"):
            assemble(ARCH, points, path, tile=16, client=client)
        with pytest.raises(PermissionError):
            assemble(ARCH, points, path, kind="nngp", tile=16, client=client, overwrite=True)
        assert tree_digest(path) == before
        g = GramStore.open(path)
        K = jacntk.kernel(ARCH, points)
        np.testing.assert_allclose(g.block(slice(0, 16)), K[:16], atol=1e-12)


def test_full_disk_is_a_clear_error_and_other_stores_stay_intact(client, points, tmp_path):
    with tmpfs(tmp_path / "small", "512k") as mnt:
        keep = mnt / "keep.zarr"
        assemble(ARCH, points, keep, tile=16, client=client)
        before = tree_digest(keep)
        X = np.random.default_rng(3).standard_normal((400, 3))
        with pytest.raises(OSError, match="no space left") as info:
            assemble(ARCH, X, mnt / "big.zarr", jacobian=True, tile=40, client=client)
        assert info.value.errno == errno.ENOSPC
        assert tree_digest(keep) == before
        assert GramStore.open(keep).verify(sample=1)["ok"]
        partial = GramStore.open(mnt / "big.zarr")
        report = partial.verify(sample=0)
        assert report["ok"] and report["missing"] and not partial.complete


def test_completing_a_store_removes_orphaned_temporary_chunk_files(client, points, tmp_path):
    """A worker killed while zarr writes a chunk leaves ``<chunk>.<uuid>.partial``; once every
    tile is recorded no write is in flight, so marking the store complete removes them (and
    nothing else)."""
    from jacntk.store._writer import mark_complete

    assemble(ARCH, points, tmp_path / "g.zarr", tile=16, client=client)
    root = tmp_path / "g.zarr"
    before = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "zarr.json")
    orphan = root / "K" / "c" / "0" / "1.0123456789abcdef.partial"
    orphan.write_bytes(b"\x00" * 10)
    mark_complete(GramStore.open(root).location)
    assert not orphan.exists()
    after = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "zarr.json")
    assert after == before
    assert GramStore.open(root).verify()["ok"]
