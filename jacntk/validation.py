"""Input checks shared by every public entry point: clear errors that name the bad value."""

from __future__ import annotations

import math
import numbers

import numpy as np


def is_integer(value) -> bool:
    """True for a Python or NumPy integer that is not a bool (``np.int64(3)`` counts)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    """True for a Python or NumPy real number that is not a bool (``np.float32(1.0)`` counts)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def as_points(X, name: str = "X") -> np.ndarray:
    """Return ``X`` as a C-contiguous float64 array of shape (n, d), or raise ValueError.

    Rejects complex, boolean, object and string arrays (integers are converted), non-2-D input,
    empty arrays, non-finite entries (NaN/inf) and rows whose squared norm overflows, naming the
    first bad row so the user can find it in their data.
    """
    raw = np.asarray(X)
    if raw.dtype.kind not in "iuf":
        what = {"c": "complex", "b": "boolean", "O": "object", "U": "string", "S": "bytes"}
        raise ValueError(
            f"{name} must be a real numeric array (integer or float), got dtype {raw.dtype} "
            f"({what.get(raw.dtype.kind, 'non-numeric')}); convert it explicitly, e.g. "
            f"X.real or X.astype(float), if that is what you mean"
        )
    arr = np.ascontiguousarray(raw, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D with shape (n_points, d), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); need at least one point and d >= 1")
    finite = np.isfinite(arr)
    if not finite.all():
        row = int(np.argwhere(~finite.all(axis=1))[0, 0])
        raise ValueError(
            f"{name} contains NaN or inf ({int((~finite).sum())} entries; first in row {row})"
        )
    with np.errstate(over="ignore"):
        sq = np.einsum("ij,ij->i", arr, arr)
    if not np.isfinite(sq).all():
        row = int(np.argwhere(~np.isfinite(sq))[0, 0])
        raise ValueError(
            f"{name} is too large: |x|^2 overflows float64 (first in row {row}, max |entry| "
            f"{np.abs(arr).max():.3g}); rescale the inputs (e.g. standardise them)"
        )
    return arr


def as_pair(X1, X2, names: tuple[str, str] = ("X1", "X2")) -> tuple[np.ndarray, np.ndarray, bool]:
    """Validate the two point sets of a cross-kernel.

    Returns ``(X1, X2, symmetric)`` where ``symmetric`` is True when ``X2`` is None or the very
    same array object as ``X1`` (then ``X2`` is ``X1``).
    """
    A = as_points(X1, names[0])
    if X2 is None or X2 is X1:
        return A, A, True
    B = as_points(X2, names[1])
    if A.shape[1] != B.shape[1]:
        raise ValueError(
            f"{names[0]} and {names[1]} have different input dimensions d: "
            f"{A.shape[1]} vs {B.shape[1]}"
        )
    return A, B, False


def as_vector(v, n: int, name: str) -> np.ndarray:
    """Return a finite float64 array whose first axis has length ``n``, or raise ValueError."""
    arr = np.asarray(v, dtype=np.float64)
    if arr.ndim == 0 or arr.shape[0] != n:
        raise ValueError(f"{name} must have length {n} along its first axis, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def check_targets(y, n: int, name: str = "y_train") -> np.ndarray:
    """Return the targets ``y`` as a finite float64 array of shape (n,) or (n, k), or raise
    ValueError naming the expected shape or the first row holding NaN/inf."""
    arr = np.asarray(y, dtype=np.float64)
    if arr.ndim not in (1, 2) or arr.shape[0] != n:
        raise ValueError(
            f"{name} must have shape ({n},) or ({n}, k) to match {n} training points, "
            f"got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        bad = int(np.argwhere(~np.isfinite(arr.reshape(n, -1)).all(axis=1))[0, 0])
        raise ValueError(f"{name} contains NaN or inf (first at row {bad})")
    return arr


def check_nonnegative(value, name: str) -> float:
    """Return ``value`` as a float if it is a finite number >= 0 (not a bool), else raise
    ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)
