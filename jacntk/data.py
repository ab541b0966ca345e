"""Data loading: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` and user arrays, and
centred one-hot targets for classification (``one_hot``).

``load_points(spec)`` is what every CLI command calls for its DATA argument: a ``.npy`` file,
an ``.npz`` file (array ``X``, or its only array), a Zarr array (path or URL), or a named
built-in data set ``fashion-mnist[:N]`` / ``fashion-mnist-test[:N]`` (first N rows).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from .validation import as_points

#: Where Debian's package installs the IDX files (``dpkg -L dataset-fashion-mnist``).
FASHION_MNIST_DIR = Path(
    os.environ.get("JACNTK_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped): the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, file holds {data.size} values")
    return data.reshape(shape)


def fashion_mnist(split: str = "train", n: int | None = None, *, directory=None):
    """Fashion-MNIST images as float64 rows in [0, 1] and integer labels.

    Parameters
    ----------
    split : {"train", "test"}
        60,000 training or 10,000 test images (70,000 in all), 28 x 28 = 784 pixels.
    n : int, optional
        Keep the first ``n`` rows.
    directory : path, optional
        Folder holding the IDX files; default ``FASHION_MNIST_DIR``
        (environment variable ``JACNTK_FASHION_MNIST``).

    Returns
    -------
    X : (n, 784) float64, y : (n,) int64
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(directory) if directory is not None else FASHION_MNIST_DIR
    images, labels = (folder / name for name in _FILES[split])
    if not images.exists() or not labels.exists():
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {folder}. Install Debian's package: "
            "'sudo apt-get install dataset-fashion-mnist' (it puts the IDX files in "
            "/usr/share/datasets/fashion-mnist), or point JACNTK_FASHION_MNIST at a folder "
            "holding train-images-idx3-ubyte.gz and the other three IDX files."
        )
    X = read_idx(images)
    y = read_idx(labels).astype(np.int64)
    if n is not None:
        if n < 1:
            raise ValueError(f"n must be positive, got {n}")
        X, y = X[:n], y[:n]
    return X.reshape(X.shape[0], -1).astype(np.float64) / 255.0, y


def one_hot(labels, n_classes: int | None = None) -> np.ndarray:
    """Centred one-hot regression targets ``e_y - 1/K`` (n, K) from integer class labels.

    Parameters
    ----------
    labels : (n,) non-negative integers
    n_classes : int, optional
        ``K``; default ``max(labels) + 1``.

    Returns
    -------
    (n, K) float64 whose rows sum to zero: ``1 - 1/K`` at the label, ``-1/K`` elsewhere.
    """
    labels = np.asarray(labels)
    if (
        labels.ndim != 1
        or labels.size == 0
        or not np.issubdtype(labels.dtype, np.integer)
        or labels.min() < 0
    ):
        raise ValueError(
            "labels must be a non-empty 1-D array of non-negative integer class labels, got "
            f"dtype {labels.dtype} and shape {labels.shape}"
        )
    k = int(labels.max()) + 1 if n_classes is None else int(n_classes)
    if k <= int(labels.max()):
        raise ValueError(f"n_classes={n_classes} but the labels go up to {int(labels.max())}")
    Y = np.full((labels.size, k), -1.0 / k)
    Y[np.arange(labels.size), labels] += 1.0
    return Y


def load_points(spec: str, name: str = "DATA") -> np.ndarray:
    """Load an (n, d) float64 point set from a CLI DATA argument (see module docstring)."""
    lowered = spec.lower()
    for prefix, split in (("fashion-mnist-test", "test"), ("fashion-mnist", "train")):
        if lowered == prefix or lowered.startswith(prefix + ":"):
            tail = spec[len(prefix) + 1 :]
            try:
                n = int(tail) if tail else None
            except ValueError:
                raise ValueError(f"{spec!r}: the row count after ':' must be an integer") from None
            return as_points(fashion_mnist(split, n)[0], name)
    if lowered.endswith(".npy"):
        return as_points(np.load(spec, allow_pickle=False), name)
    if lowered.endswith(".npz"):
        with np.load(spec, allow_pickle=False) as archive:
            keys = list(archive.keys())
            key = "X" if "X" in keys else (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise ValueError(f"{spec} holds arrays {keys}; name the points 'X'")
            return as_points(archive[key], name)
    if "://" in spec or lowered.rstrip("/").endswith(".zarr") or Path(spec, "zarr.json").exists():
        import zarr

        arr = zarr.open_array(spec, mode="r")
        return as_points(arr[...], name)
    if not Path(spec).exists():
        raise FileNotFoundError(f"{name} {spec!r} does not exist")
    raise ValueError(
        f"cannot tell the format of {spec!r}: use .npy, .npz, a Zarr array, or "
        "'fashion-mnist[:N]' / 'fashion-mnist-test[:N]'"
    )
