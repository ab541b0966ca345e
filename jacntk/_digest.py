"""The product digest of a scalar tile: a checksum the tile product computes as it reads the tile.

A scalar store records, beside each chunk's keyed CRC-32C, this digest of its values
(docs/architecture.md §5.7).  A streamed product checks a tile against it *inside* the product
kernel (:func:`jacntk.linalg._gram._scalar_tile_pair`), summing each value's bits in the loop
that multiplies it, so checking costs no second pass over the tile's bytes; everything else
(queries, ``verify``, field tiles) checks the CRC-32C.

For a tile ``T`` of ``ti`` rows, with ``u[a, q]`` the bit pattern of ``T[a, q]`` (a ``uint32``
word for float32, a ``uint64`` word for float64) and all sums modulo ``2**64``::

    s[a] = sum_q u[a, q]
    digest = mix(sum_a mix(s[a] + a * G) + key * G)

``mix`` is the SplitMix64 finaliser (a bijection of 64-bit words), ``G`` an odd constant and
``key`` the CRC-32C of ``"<store uuid>/<array>/<I>.<J>"``.  A change of a single word always
changes ``s`` of its row (every flipped bit is caught); random damage to a row leaves ``s``
unchanged with probability below ``2**-32``, as for a CRC-32C; rows and tiles moved elsewhere
meet other position terms and another key.  Words permuted *within* a row are not seen (the
CRC-32C, which ``verify`` checks, sees them).  One vectorised add per value, in the loop that
multiplies it, is the point: the product kernel pays no second pass over the bytes.  A checksum
against damage, not a cryptographic hash.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_G = np.uint64(0x9E3779B97F4A7C15)


@njit(inline="always")
def mix(z):  # pragma: no cover - compiled
    """SplitMix64 finaliser of a ``uint64``."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


# row_value is inlined into jacntk.linalg._gram._scalar_tile_pair, whose Numba cache (cache=True)
# does not notice edits here: after changing it, delete jacntk/linalg/__pycache__/*.nb[ic].
@njit(inline="always")
def row_value(s, a):  # pragma: no cover - compiled
    """``mix(s[a] + a * G)`` of the module docstring, from the word sum ``s`` of row ``a``."""
    return mix(s + np.uint64(a) * _G)


@njit(inline="always")
def row_hash(u, a):  # pragma: no cover - compiled
    """``row_value`` of the words ``u`` (1-D) of row ``a``."""
    s = np.uint64(0)
    for q in range(u.shape[0]):
        s += np.uint64(u[q])
    return row_value(s, a)


@njit(parallel=True, cache=True)
def _rows_sum(U):  # pragma: no cover - compiled
    rows = np.empty(U.shape[0], np.uint64)
    for a in prange(U.shape[0]):
        rows[a] = row_hash(U[a], a)
    total = np.uint64(0)
    for a in range(U.shape[0]):
        total += rows[a]
    return total


def words(T: np.ndarray) -> np.ndarray:
    """The bit patterns of a C-contiguous float32/float64 tile, same shape (no copy): one
    ``uint32`` word per float32 value, one ``uint64`` per float64 value."""
    return T.view(np.uint32 if T.dtype == np.float32 else np.uint64)


def finish(rows_total: int, key: int) -> int:
    """``digest`` from ``sum_a row[a]`` (mod ``2**64``) and the chunk's key."""
    z = (int(rows_total) + int(key) * int(_G)) % 2**64
    return int(mix(np.uint64(z)))


def tile_digest(T: np.ndarray, key: int) -> int:
    """The product digest of tile ``T`` ((ti, tj) float32 or float64) under ``key``.

    Parameters
    ----------
    T : (ti, tj) float32 or float64 array (made C-contiguous if it is not)
    key : int
        The chunk's key (the CRC-32C of ``"<store uuid>/<array>/<I>.<J>"``).

    Returns
    -------
    int in ``[0, 2**64)``
    """
    T = np.ascontiguousarray(T)
    if T.dtype not in (np.float32, np.float64) or T.ndim != 2:
        raise TypeError(
            f"a product digest needs a 2-D float32/float64 tile, got {T.dtype} {T.shape}"
        )
    return finish(int(_rows_sum(words(T))), key)


def split(digest: int) -> tuple[int, int]:
    """A 64-bit digest as two ``uint32`` (low, high): its manifest record."""
    return digest & 0xFFFFFFFF, digest >> 32


def join(low: int, high: int) -> int:
    """The digest of a manifest record ``(low, high)``."""
    return int(low) | int(high) << 32
