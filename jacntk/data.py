"""Data loading: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` and user arrays, data
specs that carry their preprocessing, and centred one-hot targets for classification.

``load_points(spec)`` is what every CLI command calls for its DATA argument.  The grammar of a
DATA spec::

    DATA  := FILE | NAME[:N][:PREP]
    FILE  := a .npy file, a .npz file (array "X", or its only array), or a Zarr array (path/URL)
    NAME  := fashion-mnist | fashion-mnist-test          (60,000 / 10,000 images, 784 pixels)
    N     := positive integer: the first N rows (default: all)
    PREP  := raw | standardise   (also "standardize"; default raw)

``raw`` is the pixels divided by 255, in [0, 1].  ``standardise`` is, per pixel,

    x' = (x - mu) / (sigma + 1e-3) / 2,

with ``mu`` and ``sigma`` the mean and standard deviation over the N training rows of the spec
(the factor 1/2 gives ``|x'|^2 / d ~ 1/4``: moderate pre-activations for ``sigma_w = 1``); it is
what ``jacntk demo`` does, so ``fashion-mnist:4000:standardise`` is the demo's training set.
A test split is standardised with its *training* statistics, so ``fashion-mnist-test:...:
standardise`` alone is refused: :func:`load_labelled` (``jacntk data``) writes both splits.
Files are taken as they are (no PREP).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .validation import as_points, is_integer

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


#: Named data sets of a DATA spec -> Fashion-MNIST split.
DATASETS = {"fashion-mnist": "train", "fashion-mnist-test": "test"}
#: Preprocessings of a DATA spec (the first is the default).
PREPROCESSINGS = ("raw", "standardise")
_PREP_ALIASES = {"raw": "raw", "standardise": "standardise", "standardize": "standardise"}
_GRAMMAR = "NAME[:N][:raw|standardise] with NAME fashion-mnist or fashion-mnist-test"


def standardise(X: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Per-feature standardisation scaled so that ``|x|^2 / d ~ 1/4``.

    Parameters
    ----------
    X : (n, d) array
    mean, std : (d,) arrays
        Statistics of the *training* rows (also for test rows).

    Returns
    -------
    (n, d) float64 ``(X - mean) / (std + 1e-3) / 2``.
    """
    return (np.asarray(X, dtype=np.float64) - mean) / (std + 1e-3) / 2.0


@dataclass(frozen=True)
class DataSpec:
    """A parsed DATA spec (see the module docstring for the grammar).

    ``name`` is a key of :data:`DATASETS` (with ``n`` rows or all, and ``preprocessing`` one of
    :data:`PREPROCESSINGS`), or None for a file at ``path``.  ``str(spec)`` is the canonical
    form, e.g. ``"fashion-mnist:3000:standardise"`` (the preprocessing always spelled out).
    """

    name: str | None
    n: int | None = None
    preprocessing: str = "raw"
    path: str | None = None

    def __str__(self) -> str:
        if self.name is None:
            return str(self.path)
        count = "" if self.n is None else f":{self.n}"
        return f"{self.name}{count}:{self.preprocessing}"


def parse_data_spec(spec: str) -> DataSpec:
    """Parse a DATA spec; raises ValueError naming the bad part (see the module docstring)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"DATA must be a non-empty string, got {spec!r}")
    text = spec.strip()
    head, *fields = text.split(":")
    name = head.lower()
    if name not in DATASETS:
        if fields and "://" not in text and "/" not in text and not Path(text).exists():
            known = ", ".join(DATASETS)
            raise ValueError(
                f"unknown data set {head!r} in {spec!r}: the named data sets are {known} "
                f"({_GRAMMAR}); otherwise give a .npy, .npz or Zarr path"
            )
        return DataSpec(None, path=spec)
    if len(fields) > 2:
        raise ValueError(f"{spec!r} has {len(fields) + 1} ':'-separated parts; use {_GRAMMAR}")
    n, prep = None, "raw"
    for position, field in enumerate(fields):
        word = field.strip().lower()
        if word in _PREP_ALIASES and position == len(fields) - 1:
            prep = _PREP_ALIASES[word]
            continue
        if word in _PREP_ALIASES:
            raise ValueError(f"{spec!r}: the preprocessing comes last; use {_GRAMMAR}")
        if position > 0:
            raise ValueError(
                f"{spec!r}: {field!r} is not a preprocessing (raw, standardise); use {_GRAMMAR}"
            )
        try:
            n = int(word)
        except ValueError:
            raise ValueError(
                f"{spec!r}: {field!r} is neither a row count nor a preprocessing "
                f"(raw, standardise); use {_GRAMMAR}"
            ) from None
        if n < 1:
            raise ValueError(f"{spec!r}: the row count must be a positive integer, got {n}")
    return DataSpec(name, n, prep)


def _named_split(spec: DataSpec, split: str, n: int | None, *, directory=None):
    """``(X, y)`` raw: the first ``n`` rows (all if None) of a Fashion-MNIST split, checking
    that the split has that many."""
    X, y = fashion_mnist(split, n, directory=directory)
    if n is not None and X.shape[0] < n:
        raise ValueError(
            f"{spec} asks for {n} rows; the Fashion-MNIST {split} split has {X.shape[0]}"
        )
    return X, y


@dataclass(frozen=True)
class LabelledData:
    """A named data set's training split and test split, both preprocessed as ``spec`` says.

    ``X`` (n, d) float64 and ``y`` (n,) int64 are the spec's rows (``X`` is exactly
    ``load_points(str(spec))``); ``X_test`` (m, d) float64 and ``y_test`` (m,) int64 the first
    m test rows, standardised (if asked) with the statistics of ``X``'s raw rows.
    """

    spec: DataSpec
    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


def load_labelled(spec: str, n_test: int | None = None, *, directory=None) -> LabelledData:
    """Training points, labels and test split of a named training-set spec.

    Parameters
    ----------
    spec : str
        ``fashion-mnist[:N][:raw|standardise]`` (the training split).
    n_test : int, optional
        Test rows (first ``n_test`` of the 10,000; default all; 0 for none).
    directory : path, optional
        Folder of the IDX files (see :func:`fashion_mnist`).

    Returns
    -------
    LabelledData
    """
    parsed = parse_data_spec(spec)
    if parsed.name is None:
        raise ValueError(
            f"{spec!r} is a file: only named data sets ({', '.join(DATASETS)}) have labels and a "
            "test split to export"
        )
    if DATASETS[parsed.name] != "train":
        raise ValueError(
            f"{spec!r}: give the training set (fashion-mnist[:N][:PREP]); its test split is "
            "taken from fashion-mnist-test with the same preprocessing"
        )
    if n_test is not None and (not is_integer(n_test) or n_test < 0):
        raise ValueError(f"n_test must be a non-negative integer, got {n_test!r}")
    X, y = _named_split(parsed, "train", parsed.n, directory=directory)
    if n_test == 0:
        Xt, yt = np.zeros((0, X.shape[1])), np.zeros(0, dtype=np.int64)
    else:
        Xt, yt = _named_split(parsed, "test", n_test, directory=directory)
    if parsed.preprocessing == "standardise":
        mean, std = X.mean(axis=0), X.std(axis=0)
        X, Xt = standardise(X, mean, std), standardise(Xt, mean, std)
    X = as_points(X, "X")
    Xt = np.ascontiguousarray(Xt, dtype=np.float64)
    return LabelledData(parsed, X, y, Xt, yt)


def load_points(spec: str, name: str = "DATA") -> np.ndarray:
    """Load an (n, d) float64 point set from a CLI DATA argument (grammar: module docstring).

    Raises
    ------
    ValueError
        A malformed spec, a row count above the data set's, a test split with
        ``standardise``, an unreadable or non-numeric array.
    FileNotFoundError
        A missing file, or Fashion-MNIST not installed.
    """
    parsed = parse_data_spec(spec)
    if parsed.name is not None:
        split = DATASETS[parsed.name]
        if split == "test" and parsed.preprocessing != "raw":
            raise ValueError(
                f"{spec!r}: a test split is standardised with its training set's statistics; "
                "export both with 'jacntk data fashion-mnist[:N]:standardise --out DIR' "
                "(X_test.npy)"
            )
        if parsed.preprocessing == "standardise":
            return as_points(load_labelled(str(parsed), n_test=0).X, name)
        return as_points(_named_split(parsed, split, parsed.n)[0], name)
    lowered = spec.lower()
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
        f"cannot tell the format of {spec!r}: use .npy, .npz, a Zarr array, or {_GRAMMAR}"
    )
