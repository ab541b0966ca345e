"""Gram stores: the Zarr format, its location, reading, writing, verification and assembly."""

from ._assembly import assemble
from ._reader import GramStore

__all__ = [
    "GramStore",
    "assemble",
]
