"""Gram stores on an S3-compatible object store: a real moto server on 127.0.0.1 (the ``s3``
fixture of conftest.py), via s3fs.

Optional extra ``jacntk[s3]`` (``s3fs``, ``moto[server]``); skipped when either is missing.
"""

from __future__ import annotations

import numpy as np
import pytest

import jacntk
from jacntk.store import GramStore, assemble

s3fs = pytest.importorskip("s3fs", reason="s3fs not installed (pip install 'jacntk[s3]')")


def test_assemble_query_resume_and_verify_on_s3(s3, client, rng):
    X = rng.standard_normal((50, 3)) / 2
    arch = jacntk.MLP(2, "erf")
    url = "s3://jacntk-test/grams/j.zarr"
    report = assemble(arch, X, url, jacobian=True, tile=16, client=client, storage_options=s3)
    assert (report.computed, report.complete) == (10, True)
    g = GramStore.open(url, storage_options=s3)
    assert g.complete and g.n == 50 and g.location.url == url
    G = jacntk.kernel(arch, X, jacobian=True)
    np.testing.assert_allclose(g.block(jacobian=True), G, rtol=0, atol=1e-12)
    again = assemble(arch, X, url, jacobian=True, client=client, storage_options=s3)
    assert (again.computed, again.skipped) == (0, 10)
    assert g.verify(sample=1)["ok"]
    fs = s3fs.S3FileSystem(**s3)
    assert fs.exists("jacntk-test/grams/j.zarr/manifest/c/0/3/0/0")
    with pytest.raises(FileNotFoundError, match="no Gram store"):
        GramStore.open("s3://jacntk-test/grams/none.zarr", storage_options=s3)
    with pytest.raises(ValueError, match="kind"):
        assemble(arch, X, url, kind="nngp", jacobian=True, client=client, storage_options=s3)


def test_one_writer_per_store_on_s3_and_damaged_objects_fail_loudly(s3, client, rng):
    """The lease object is taken by a conditional PUT (If-None-Match), so a second writer on an
    object store is refused; a flipped byte in a chunk object fails the read and is repaired."""
    from jacntk.store import ChecksumError, StoreBusyError
    from jacntk.store._lease import acquire
    from jacntk.store._location import StoreLocation

    X = rng.standard_normal((40, 3))
    arch = jacntk.MLP(2, "erf")
    url = "s3://jacntk-test/grams/lease.zarr"
    fs = s3fs.S3FileSystem(**s3)
    with acquire(StoreLocation.of(url, s3), "someone else's request"):
        assert fs.exists("jacntk-test/grams/lease.zarr.lease")
        with pytest.raises(StoreBusyError, match="for other settings"):
            assemble(arch, X, url, tile=20, client=client, storage_options=s3)
        assert not fs.exists("jacntk-test/grams/lease.zarr")
    assert not fs.exists("jacntk-test/grams/lease.zarr.lease")
    assemble(arch, X, url, tile=20, client=client, storage_options=s3)
    key = "jacntk-test/grams/lease.zarr/K/c/0/1"
    data = bytearray(fs.cat_file(key))
    data[100] ^= 1
    fs.pipe_file(key, bytes(data))
    with pytest.raises(ChecksumError, match=r"tile \(0, 1\) is damaged"):
        GramStore.open(url, storage_options=s3).block()
    report = assemble(arch, X, url, tile=20, client=client, storage_options=s3)
    assert (report.repaired, report.computed) == (1, 1)
    np.testing.assert_allclose(
        GramStore.open(url, storage_options=s3).block(), jacntk.kernel(arch, X), atol=1e-13
    )
