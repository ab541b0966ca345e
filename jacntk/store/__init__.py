"""Gram stores: the Zarr format, its location, reading, writing, verification and assembly."""

from ._assembly import assemble
from ._format import ChecksumError
from ._lease import LeaseLostError, StoreBusyError
from ._reader import GramStore

__all__ = [
    "ChecksumError",
    "GramStore",
    "LeaseLostError",
    "StoreBusyError",
    "assemble",
]
