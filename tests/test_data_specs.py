"""DATA specs that carry their preprocessing (``NAME[:N][:raw|standardise]``), their loading
(on small synthetic IDX files, so that these tests need no Fashion-MNIST), and ``jacntk data``'s
export files."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import jacntk.data as data
from jacntk.data import DataSpec, load_labelled, load_points, parse_data_spec


def write_idx(path, array: np.ndarray) -> None:
    """An unsigned-byte IDX file (gzipped), the format of (Fashion-)MNIST."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape
    )
    with gzip.open(path, "wb") as fh:
        fh.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    """50 training and 30 test 'images' of 4 x 5 pixels, 3 classes; pixel 0 is constant."""
    root = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(5)
    for prefix, n in (("train", 50), ("t10k", 30)):
        images = rng.integers(0, 256, size=(n, 4, 5), dtype=np.uint8)
        images[:, 0, 0] = 7
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 3, n, dtype=np.uint8))
    return root


@pytest.fixture
def fake_fashion(idx_dir, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", idx_dir)
    return idx_dir


def raw(idx_dir, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    X = data.read_idx(idx_dir / f"{prefix}-images-idx3-ubyte.gz").reshape(-1, 20) / 255.0
    return X, data.read_idx(idx_dir / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)


@pytest.mark.parametrize(
    ("spec", "expected", "canonical"),
    [
        ("fashion-mnist", DataSpec("fashion-mnist"), "fashion-mnist:raw"),
        ("Fashion-MNIST:3000", DataSpec("fashion-mnist", 3000), "fashion-mnist:3000:raw"),
        (
            "fashion-mnist:3000:standardise",
            DataSpec("fashion-mnist", 3000, "standardise"),
            "fashion-mnist:3000:standardise",
        ),
        (
            "fashion-mnist:12:Standardize",
            DataSpec("fashion-mnist", 12, "standardise"),
            "fashion-mnist:12:standardise",
        ),
        (
            "fashion-mnist:standardise",
            DataSpec("fashion-mnist", None, "standardise"),
            "fashion-mnist:standardise",
        ),
        (
            "fashion-mnist-test:10:raw",
            DataSpec("fashion-mnist-test", 10),
            "fashion-mnist-test:10:raw",
        ),
        ("points.npy", DataSpec(None, path="points.npy"), "points.npy"),
        ("s3://bucket/x.zarr", DataSpec(None, path="s3://bucket/x.zarr"), "s3://bucket/x.zarr"),
    ],
)
def test_spec_grammar(spec, expected, canonical):
    parsed = parse_data_spec(spec)
    assert parsed == expected and str(parsed) == canonical
    assert parse_data_spec(canonical) == parsed  # the canonical form reads back the same


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("fashion-mnist:0", "row count must be a positive integer, got 0"),
        ("fashion-mnist:-5:raw", "row count must be a positive integer, got -5"),
        ("fashion-mnist:3x", "'3x' is neither a row count nor a preprocessing"),
        ("fashion-mnist:", "'' is neither a row count nor a preprocessing"),
        ("fashion-mnist:raw:30", "the preprocessing comes last"),
        ("fashion-mnist:30:whiten", "'whiten' is not a preprocessing"),
        ("fashion-mnist:30:raw:1", "has 4 ':'-separated parts"),
        ("mnist:30", "unknown data set 'mnist'"),
        ("  ", "non-empty"),
    ],
)
def test_bad_specs_are_clear_errors(spec, message):
    with pytest.raises(ValueError) as err:
        parse_data_spec(spec)
    assert message in str(err.value)


def test_raw_and_standardised_points(fake_fashion):
    X, _ = raw(fake_fashion, "train")
    np.testing.assert_array_equal(load_points("fashion-mnist:20"), X[:20])
    np.testing.assert_array_equal(load_points("fashion-mnist:20:raw"), X[:20])
    np.testing.assert_array_equal(load_points("fashion-mnist"), X)
    got = load_points("fashion-mnist:20:standardise")
    mu, sd = X[:20].mean(axis=0), X[:20].std(axis=0)  # the statistics of the spec's 20 rows
    np.testing.assert_allclose(got, (X[:20] - mu) / (sd + 1e-3) / 2, rtol=0, atol=1e-15)
    np.testing.assert_allclose(got[:, 0], 0, atol=1e-12)  # the constant pixel
    np.testing.assert_allclose(got[:, 1:].mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose((got**2).sum(axis=1).mean() / 20, 0.25 * 19 / 20, rtol=1e-2)


def test_standardise_is_the_demos(fake_fashion):
    """``fashion-mnist:N:standardise`` are the points the demo assembles (``standardise``,
    the demo's one formula, written out here)."""
    X, _ = raw(fake_fashion, "train")
    X = X[:30].astype(np.float64)
    want = (X - X.mean(axis=0)) / (X.std(axis=0) + 1e-3) / 2.0
    np.testing.assert_array_equal(load_points("fashion-mnist:30:standardise"), want)


def test_row_count_above_the_split_and_test_standardisation_refused(fake_fashion):
    with pytest.raises(ValueError, match="asks for 51 rows; the Fashion-MNIST train split has 50"):
        load_points("fashion-mnist:51")
    with pytest.raises(ValueError, match="training set's statistics.*jacntk data"):
        load_points("fashion-mnist-test:5:standardise")
    np.testing.assert_array_equal(
        load_points("fashion-mnist-test:5"), raw(fake_fashion, "t")[0][:5]
    )


def test_labelled_test_split_uses_the_training_statistics(fake_fashion):
    X, y = raw(fake_fashion, "train")
    Xt, yt = raw(fake_fashion, "test")
    d = load_labelled("fashion-mnist:40:standardise", n_test=25)
    np.testing.assert_array_equal(d.X, load_points("fashion-mnist:40:standardise"))
    np.testing.assert_array_equal(d.y, y[:40])
    np.testing.assert_array_equal(d.y_test, yt[:25])
    mu, sd = X[:40].mean(axis=0), X[:40].std(axis=0)
    np.testing.assert_allclose(d.X_test, (Xt[:25] - mu) / (sd + 1e-3) / 2, rtol=0, atol=1e-15)
    own = (Xt[:25] - Xt[:25].mean(axis=0)) / (Xt[:25].std(axis=0) + 1e-3) / 2
    assert not np.allclose(d.X_test, own)  # not the test split's own statistics
    assert (d.X.dtype, d.y.dtype, d.X_test.dtype, d.y_test.dtype) == (
        np.float64,
        np.int64,
        np.float64,
        np.int64,
    )
    assert load_labelled("fashion-mnist:10", n_test=0).X_test.shape == (0, 20)
    np.testing.assert_array_equal(load_labelled("fashion-mnist:10").X_test, Xt)  # default: all
    for spec, message in (
        ("points.npy", "is a file: only named data sets"),
        ("fashion-mnist-test:10", "give the training set"),
    ):
        with pytest.raises(ValueError, match=message):
            load_labelled(spec)
    with pytest.raises(ValueError, match="n_test must be a non-negative integer"):
        load_labelled("fashion-mnist:10", n_test=-1)


def data_cli(idx_dir, *args):
    env = dict(os.environ, JACNTK_FASHION_MNIST=str(idx_dir))
    return subprocess.run(
        [sys.executable, "-m", "jacntk", "data", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_data_command_writes_the_files_solve_needs(idx_dir, tmp_path):
    from jacntk.store._format import fingerprint

    out = tmp_path / "new" / "folder"  # created
    r = data_cli(idx_dir, "fashion-mnist:45:standardise", "--out", out, "--n-test", 12, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    arrays = {name: np.load(out / f"{name}.npy") for name in ("X", "y", "X_test", "y_test")}
    shapes = {name: (a.shape, a.dtype) for name, a in arrays.items()}
    assert shapes == {
        "X": ((45, 20), np.float64),
        "y": ((45,), np.int64),
        "X_test": ((12, 20), np.float64),
        "y_test": ((12,), np.int64),
    }
    X, y = raw(idx_dir, "train")
    mu, sd = X[:45].mean(axis=0), X[:45].std(axis=0)
    np.testing.assert_allclose(arrays["X"], (X[:45] - mu) / (sd + 1e-3) / 2, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(arrays["y"], y[:45])
    assert json.loads((out / "data.json").read_text()) == summary
    assert summary["spec"] == "fashion-mnist:45:standardise"
    assert summary["fingerprint"] == fingerprint(arrays["X"])  # what `jacntk info` shows
    assert summary["files"]["X_test.npy"] == {"shape": [12, 20], "dtype": "float64"}
    assert summary["classes"] == int(max(arrays["y"].max(), arrays["y_test"].max())) + 1

    again = data_cli(idx_dir, "fashion-mnist:45", "--out", out)
    assert again.returncode == 2 and "exists; pass --overwrite" in again.stderr, again.stderr
    np.testing.assert_array_equal(np.load(out / "X.npy"), arrays["X"])  # untouched
    again = data_cli(idx_dir, "fashion-mnist:45", "--out", out, "--n-test", 0, "--overwrite")
    assert again.returncode == 0, again.stderr
    np.testing.assert_array_equal(np.load(out / "X.npy"), X[:45])
    assert np.load(out / "X_test.npy").shape == (0, 20)


def test_data_command_errors(idx_dir, tmp_path):
    for args, message in (
        (("fashion-mnist:3x", "--out", tmp_path / "a"), "'3x' is neither a row count"),
        (("fashion-mnist:60", "--out", tmp_path / "b"), "asks for 60 rows"),
        (("x.npy", "--out", tmp_path / "c"), "is a file: only named data sets"),
        (("fashion-mnist:5", "--out", tmp_path / "d", "--n-test", -1), "--n-test must be >= 0"),
    ):
        r = data_cli(idx_dir, *args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
        assert not args[2].exists()  # nothing written
