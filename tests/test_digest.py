"""The product digest (issue 13, verified reads at <= 5 % of a product): the tile product
computes the same digest as the writer, any damage changes it, and a streamed or cache-filling
product of a damaged store raises before returning numbers."""

from __future__ import annotations

import shutil

import numba
import numpy as np
import pytest

import jacntk
from jacntk._digest import tile_digest, words
from jacntk.linalg._gram import CheckedTile, _scalar_symmetric_product
from jacntk.store import ChecksumError, GramStore, assemble

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _product_digest(T: np.ndarray, key: int, k: int) -> tuple[int, np.ndarray]:
    """(digest the product computed, product) for one off-diagonal tile."""
    ti, tj = T.shape
    got = []
    slices = [slice(0, ti), slice(ti, ti + tj)]
    V = np.random.default_rng(1).standard_normal((ti + tj, k))
    y = _scalar_symmetric_product([(0, 1, CheckedTile(T, key, got.append))], slices, V)
    full = np.zeros((ti + tj, ti + tj))
    full[:ti, ti:], full[ti:, :ti] = T, T.T
    np.testing.assert_allclose(y, full @ V, rtol=1e-12, atol=1e-12)
    return got[0], y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(64, 48), (67, 5), (3, 130), (1, 1)])
@pytest.mark.parametrize("k", [1, 7, 40])  # 40 > STREAMED_COLUMNS: the BLAS path digests apart
def test_the_product_computes_the_writers_digest(dtype, shape, k):
    T = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    want = tile_digest(T, 12345)
    assert _product_digest(T, 12345, k)[0] == want
    threads = numba.get_num_threads()
    try:  # the per-thread partial sums do not depend on the thread count
        numba.set_num_threads(1)
        assert _product_digest(T, 12345, k)[0] == want
    finally:
        numba.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_single_bit_flip_and_moved_rows_change_the_digest(dtype):
    T = np.random.default_rng(2).standard_normal((16, 24)).astype(dtype)
    want = tile_digest(T, 7)
    flat = T.reshape(-1).view(np.uint8)
    for byte in range(flat.size):  # every bit of every byte
        for bit in range(8):
            flat[byte] ^= 1 << bit
            assert tile_digest(T, 7) != want, (byte, bit)
            flat[byte] ^= 1 << bit
    assert tile_digest(T, 7) == want
    assert tile_digest(T, 8) != want  # another position / store
    assert tile_digest(T[[1, 0, *range(2, 16)]], 7) != want  # two rows swapped
    assert tile_digest(np.full_like(T, np.nan), 7) != want  # a deleted chunk reads as NaN
    assert words(T).dtype == (np.uint32 if dtype == np.float32 else np.uint64)
    assert words(T).shape == T.shape


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("digest")
    X = np.random.default_rng(3).standard_normal((50, 3))
    assemble(jacntk.MLP(2, "erf"), X, root / "k.zarr", tile=20, dtype="float32")
    return root / "k.zarr", X


def _products(g: GramStore, k: int):
    v = np.ones((g.n, k))
    return {
        "matvec": lambda: g.matvec(v),
        "streamed": lambda: jacntk.StoredGram(g, cache_mb=0) @ v,
        "cache-filling": lambda: jacntk.StoredGram(g, cache_mb=1) @ v,
    }


@pytest.mark.parametrize("k", [1, 40])
def test_streamed_and_cache_filling_products_check_the_digest(store, tmp_path, k):
    path, X = store
    want = jacntk.kernel(jacntk.MLP(2, "erf"), X) @ np.ones((50, k))
    for name, product in _products(GramStore.open(path), k).items():
        tol = 1e-6 * abs(want).max()  # float32 tiles
        np.testing.assert_allclose(product(), want, rtol=0, atol=tol, err_msg=name)

    damaged = tmp_path / "k.zarr"
    shutil.copytree(path, damaged)
    chunk = damaged / "K" / "c" / "0" / "2"
    data = bytearray(chunk.read_bytes())
    data[17] ^= 0x01  # the lowest mantissa bit of one float32: a value off by 1e-8 relative
    chunk.write_bytes(bytes(data))
    g = GramStore.open(damaged)
    for name, product in _products(g, k).items():
        with pytest.raises(ChecksumError, match=r"tile \(0, 2\) is damaged: chunk K\[0, 2\] fails"):
            product()
        assert name  # each product raised
    assert [d["tile"] for d in g.verify(sample=0)["damaged"]] == [[0, 2]]


def test_a_damaged_digest_record_is_found_and_repaired(store, tmp_path):
    """The digest slot of one tile's manifest record altered (the chunk itself intact): the
    product refuses the tile, verify lists it, assemble recomputes exactly that tile."""
    path, X = store
    damaged = tmp_path / "k.zarr"
    shutil.copytree(path, damaged)
    import zarr

    manifest = zarr.open_array(damaged / "manifest", mode="r+")
    record = manifest[1, 2]
    record[1, 0] ^= 1
    manifest[1, 2] = record
    g = GramStore.open(damaged)
    with pytest.raises(ChecksumError, match=r"tile \(1, 2\).*fails its product digest"):
        g.matvec(np.ones(50))
    assert [d["tile"] for d in g.verify(sample=0)["damaged"]] == [[1, 2]]
    report = assemble(jacntk.MLP(2, "erf"), X, damaged, tile=20, dtype="float32")
    assert (report.repaired, report.computed) == (1, 1)
    np.testing.assert_array_equal(GramStore.open(damaged).block(), GramStore.open(path).block())


def _as_format_2(path) -> None:
    """Rewrite a store as the previous jacntk wrote it: format 2, one manifest slot (the
    keyed CRC-32C; no product digests)."""
    import zarr

    group = zarr.open_group(path, mode="r+")
    records = np.asarray(group["manifest"][...])
    old = group["manifest"]
    manifest = group.create_array(
        "manifest",
        shape=records.shape[:2] + (1, 2),
        chunks=(1, 1, 1, 2),
        dtype="uint32",
        fill_value=0,
        dimension_names=old.metadata.dimension_names,
        overwrite=True,
    )
    manifest[...] = records[:, :, :1]
    meta = dict(group.attrs["jacntk"])
    meta["format_version"] = 2
    group.attrs["jacntk"] = meta
    zarr.consolidate_metadata(path)


def test_a_format_2_store_is_read_crc_checked_and_never_extended(store, tmp_path):
    """A store of the previous format (no digests) opens, multiplies right and still detects
    a flipped bit (by its CRC); assemble uses it when complete, refuses to add tiles to it
    with a clear error, and ``overwrite`` re-assembles it in the current format."""
    path, X = store
    old = tmp_path / "old.zarr"
    shutil.copytree(path, old)
    _as_format_2(old)
    g = GramStore.open(old)
    assert g.meta["format_version"] == 2 and not g._has_digests
    want = jacntk.kernel(jacntk.MLP(2, "erf"), X) @ np.ones((50, 3))
    for name, product in _products(g, 3).items():
        np.testing.assert_allclose(
            product(), want, rtol=0, atol=1e-6 * abs(want).max(), err_msg=name
        )
    assert g.verify(sample=0)["damaged"] == []
    report = assemble(jacntk.MLP(2, "erf"), X, old, tile=20, dtype="float32")
    assert (report.created, report.computed) == (False, 0)  # complete: used as is

    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(old, damaged)
    chunk = damaged / "K" / "c" / "0" / "2"
    data = bytearray(chunk.read_bytes())
    data[17] ^= 0x01
    chunk.write_bytes(bytes(data))
    g = GramStore.open(damaged)
    for name, product in _products(g, 3).items():
        with pytest.raises(ChecksumError, match=r"tile \(0, 2\) is damaged: chunk K\[0, 2\] fails"):
            product()
        assert name
    with pytest.raises(ValueError, match=r"format-2 store .* 1 of 6 tiles to write.*overwrite"):
        assemble(jacntk.MLP(2, "erf"), X, damaged, tile=20, dtype="float32")
    report = assemble(jacntk.MLP(2, "erf"), X, damaged, tile=20, dtype="float32", overwrite=True)
    assert report.created and GramStore.open(damaged).meta["format_version"] == 3
    np.testing.assert_array_equal(GramStore.open(damaged).block(), GramStore.open(path).block())


@pytest.mark.parametrize("version", [1, 4, None])
def test_an_unreadable_format_version_is_named(store, tmp_path, version):
    import zarr

    path, _ = store
    other = tmp_path / "other.zarr"
    shutil.copytree(path, other)
    group = zarr.open_group(other, mode="r+")
    meta = dict(group.attrs["jacntk"])
    meta["format_version"] = version
    group.attrs["jacntk"] = meta
    zarr.consolidate_metadata(other)
    with pytest.raises(
        ValueError, match=rf"format version {version}; this jacntk reads versions 2 and 3"
    ):
        GramStore.open(other)
