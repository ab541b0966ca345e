"""Shared helpers of the validation notebooks: sizes, data on S^3, bootstrap CIs, data sets.

Notebooks find this file from the notebooks directory or the repository root (their first cell
puts this directory on ``sys.path``), so they run with either as the working directory.

``JACNTK_NOTEBOOK_SIZE=small`` (CI: every notebook in well under a minute) or ``full`` (default:
the sizes the committed outputs show).  Plots use matplotlib's Agg backend.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SIZES = ("small", "full")
SIZE = os.environ.get("JACNTK_NOTEBOOK_SIZE", "full")
if SIZE not in SIZES:
    raise ValueError(f"JACNTK_NOTEBOOK_SIZE must be 'small' or 'full', got {SIZE!r}")


def pick(small, full):
    """The value for the current size."""
    return small if SIZE == "small" else full


def show(fig, dpi: int = 90) -> None:
    """Display a figure in the notebook as a PNG (the Agg backend draws nothing by itself) and
    close it."""
    import io

    from IPython.display import Image, display

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    display(Image(buf.getvalue()))


def sphere_points(n: int, d: int = 4, *, seed: int = 0, iters: int = 200) -> np.ndarray:
    """``n`` quasi-uniform points on the unit sphere ``S^{d-1}`` (Riesz-energy relaxation).

    Start from Gaussian directions, then take ``iters`` projected gradient steps on
    ``sum_{i != j} 1 / |x_i - x_j|^(d-1)`` (step normalised per point), renormalising each time.
    Returns (n, d) float64 with unit rows.
    """
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    s = d - 1
    step = 0.5 / n ** (1.0 / s)
    for _ in range(iters):
        diff = X[:, None, :] - X[None, :, :]
        dist2 = np.einsum("ijk,ijk->ij", diff, diff)
        np.fill_diagonal(dist2, np.inf)
        force = np.einsum("ij,ijk->ik", dist2 ** (-(s + 2) / 2), diff)
        force -= np.einsum("ik,ik->i", force, X)[:, None] * X  # tangential part
        force /= np.linalg.norm(force, axis=1, keepdims=True) + 1e-300
        X = X + step * force
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        step *= 0.99
    return X


def min_distance(X: np.ndarray) -> float:
    """Smallest pairwise Euclidean distance."""
    diff = X[:, None, :] - X[None, :, :]
    dist = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    np.fill_diagonal(dist, np.inf)
    return float(dist.min())


def bootstrap_ci(samples: np.ndarray, statistic, *, n_boot: int = 200, level=0.95, seed=0):
    """Percentile bootstrap CI of ``statistic(samples[idx])`` over the first axis.

    Returns ``(low, high)``.
    """
    rng = np.random.default_rng(seed)
    m = samples.shape[0]
    stats = np.array([statistic(samples[rng.integers(0, m, m)]) for _ in range(n_boot)])
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1.0 - alpha))


def max_error_ci(
    samples: np.ndarray,
    exact: np.ndarray,
    *,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
    chunk: int = 1 << 16,
) -> tuple[float, float, float]:
    """Max-norm error of a Monte-Carlo mean and a bootstrap CI that contains it.

    ``samples`` (m, ...) are m independent estimates of a kernel whose expectation is ``K``;
    ``exact`` (...) is the analytic kernel ``Sigma``.  The estimand is ``theta = max|K - Sigma|``
    (entrywise), the point estimate ``theta_hat = max|mean - Sigma|``.

    Method (percentile bootstrap of the sup-norm deviation, i.e. a simultaneous confidence band for
    ``K``): resample the m estimates with replacement ``n_boot`` times, take
    ``D*_b = max|mean*_b - mean|`` and its ``level`` quantile ``q``.  Then ``|K - mean| <= q`` in
    every entry with probability ~``level``, and by the reverse triangle inequality
    ``|theta - theta_hat| <= max|K - mean|``, so

        theta in [max(theta_hat - q, 0), theta_hat + q]

    with coverage at least ``level``; the interval always contains ``theta_hat``.  (Resampling the
    error ``max|mean* - Sigma|`` itself instead adds the resampling noise on top of the noise
    already in ``mean``; its percentile interval is biased upwards and often excludes
    ``theta_hat``.)

    Replicate b's mean is ``counts_b / m @ samples``, computed as matrix products in column chunks.

    Returns ``(theta_hat, low, high)``.
    """
    samples = np.asarray(samples, dtype=np.float64)
    exact = np.asarray(exact, dtype=np.float64)
    m = samples.shape[0]
    if samples.shape[1:] != exact.shape:
        raise ValueError(f"samples {samples.shape} do not match exact {exact.shape}")
    if m < 2:
        raise ValueError(f"the bootstrap needs at least 2 samples, got {m}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    W = np.stack([np.bincount(rng.integers(0, m, m), minlength=m) for _ in range(n_boot)]) / m
    flat = samples.reshape(m, -1)
    mean = flat.mean(axis=0)
    theta_hat = float(np.abs(mean - exact.ravel()).max())
    deviation = np.zeros(n_boot)
    for a in range(0, mean.size, chunk):
        block = np.abs(W @ flat[:, a : a + chunk] - mean[a : a + chunk]).max(axis=1)
        deviation = np.maximum(deviation, block)
    q = float(np.quantile(deviation, level))
    return theta_hat, max(theta_hat - q, 0.0), theta_hat + q


def loglog_slope(x, y) -> float:
    """Least-squares slope of ``log y`` against ``log x``."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def breast_cancer(n: int | None = None, *, features: int = 10, seed: int = 0):
    """scikit-learn's Wisconsin breast-cancer data (569 x 30, ships offline): the first
    ``features`` columns (the "mean" measurements), standardised per column; labels mapped to
    +-1 (malignant = -1, benign = +1).

    Returns ``X (n, features), y (n,)`` for a random subset of ``n`` rows (all when None).
    """
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    X = data.data[:, :features].astype(np.float64)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    y = np.where(data.target == 1, 1.0, -1.0)
    if n is not None:
        idx = np.random.default_rng(seed).choice(X.shape[0], n, replace=False)
        X, y = X[idx], y[idx]
    return X, y


def binary_fashion_mnist(n_train: int, n_test: int, *, classes=(0, 6), pool: int = 4, seed=0):
    """Two Fashion-MNIST classes (default T-shirt/top vs Shirt), average-pooled ``pool x pool``
    (28/pool squared pixels), centred and scaled to ``|x|^2 = d`` per image; labels +-1.

    Returns ``X_train, y_train, X_test, y_test``.
    """
    from jacntk.data import fashion_mnist

    out = []
    for split, n in (("train", n_train), ("test", n_test)):
        X, y = fashion_mnist(split)
        keep = np.isin(y, classes)
        X, y = X[keep], y[keep]
        idx = np.random.default_rng(seed).choice(X.shape[0], n, replace=False)
        X, y = X[idx], y[idx]
        side = 28 // pool
        X = X.reshape(n, side, pool, side, pool).mean(axis=(2, 4)).reshape(n, side * side)
        X = X - X.mean(axis=1, keepdims=True)
        X *= np.sqrt(X.shape[1]) / np.linalg.norm(X, axis=1, keepdims=True)
        out += [X, np.where(y == classes[0], 1.0, -1.0)]
    return tuple(out)


__all__ = [
    "SIZE",
    "binary_fashion_mnist",
    "bootstrap_ci",
    "breast_cancer",
    "loglog_slope",
    "max_error_ci",
    "min_distance",
    "pick",
    "plt",
    "show",
    "sphere_points",
]
