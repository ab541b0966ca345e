"""Where a store lives (local path or object-store URL) and how to open it."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass

from ._format import FORMAT, READABLE_VERSIONS, SET_FORMAT, SET_FORMAT_VERSION


@dataclass(frozen=True)
class StoreLocation:
    """A store path or fsspec URL and the options of its file system (small, picklable)."""

    url: str
    storage_options: str = "{}"  # JSON, so that the location hashes and pickles

    @classmethod
    def of(cls, path_or_url, storage_options: dict | None = None) -> StoreLocation:
        if isinstance(path_or_url, StoreLocation):
            return path_or_url
        if not isinstance(path_or_url, (str, os.PathLike)):
            raise ValueError(f"store must be a path or URL, got {path_or_url!r}")
        url = os.fspath(path_or_url)
        if "://" not in url:
            if storage_options:
                raise ValueError("storage_options apply only to URLs such as s3://bucket/path")
            url = os.path.abspath(url)
        try:
            options = json.dumps(storage_options or {}, sort_keys=True)
        except TypeError as exc:
            raise ValueError(f"storage_options must be JSON-serialisable: {exc}") from None
        return cls(url, options)

    def child(self, name: str) -> StoreLocation:
        """The location of ``name`` inside this one (the per-kind store of a set)."""
        return StoreLocation(self.url.rstrip("/") + "/" + name, self.storage_options)

    @property
    def options(self) -> dict:
        return json.loads(self.storage_options)

    def zarr_store(self, read_only: bool):
        from zarr.storage import FsspecStore, LocalStore

        if "://" not in self.url:
            return LocalStore(self.url, read_only=read_only)
        return FsspecStore.from_url(self.url, storage_options=self.options, read_only=read_only)

    def filesystem(self):
        """``(fsspec filesystem, root path)``."""
        from fsspec.core import url_to_fs

        fs, root = url_to_fs(self.url, **self.options)
        fs.invalidate_cache()  # listings may have changed (other writers)
        return fs, root

    def exists(self) -> bool:
        fs, root = self.filesystem()
        return fs.exists(root)

    def has_entries(self) -> bool:
        fs, root = self.filesystem()
        try:
            return bool(fs.ls(root, detail=False))
        except FileNotFoundError:
            return False
        except NotADirectoryError:
            return True

    def open_group(self, mode: str):
        """The Zarr group (``mode`` "r", "r+" or "w")."""
        import zarr

        return zarr.open_group(
            store=self.zarr_store(read_only=mode == "r"), mode=mode, zarr_format=3
        )


def read_store_attributes(group, url: str, sets: bool = False) -> dict:
    """The ``jacntk`` attributes of a Gram store (and, with ``sets``, of a store of several
    kinds, ``SET_FORMAT``), checked; ``ValueError`` naming what is wrong otherwise."""
    meta = group.attrs.get("jacntk")
    if sets and isinstance(meta, dict) and meta.get("format") == SET_FORMAT:
        return _set_attributes(meta, url)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(
            f"{url} is a Zarr group but not a jacntk Gram store (its attributes have no "
            f"'jacntk' entry with format {FORMAT!r})"
        )
    if meta.get("format_version") not in READABLE_VERSIONS:
        readable = " and ".join(map(str, READABLE_VERSIONS))
        raise ValueError(
            f"{url} has jacntk store format version {meta.get('format_version')!r}; this "
            f"jacntk reads versions {readable}"
        )
    required = ("arch", "kind", "jacobian", "n", "d", "tile", "n_tiles", "dtype", "fingerprint")
    missing = [k for k in required if k not in meta]
    if missing:
        raise ValueError(f"{url}: store attributes are corrupt (missing {', '.join(missing)})")
    return meta


def _set_attributes(meta: dict, url: str) -> dict:
    if meta.get("format_version") != SET_FORMAT_VERSION:
        raise ValueError(
            f"{url} has jacntk store-set format version {meta.get('format_version')!r}; this "
            f"jacntk reads version {SET_FORMAT_VERSION}"
        )
    required = ("arch", "kinds", "jacobian", "n", "d", "tile", "dtype", "fingerprint")
    missing = [k for k in required if k not in meta]
    if missing or not isinstance(meta["kinds"], list) or not meta["kinds"]:
        what = ", ".join(missing) or "kinds"
        raise ValueError(f"{url}: store attributes are corrupt (missing {what})")
    return meta


def open_attributes(location: StoreLocation, sets: bool = True) -> dict:
    """The checked attributes of the store (or, with ``sets``, store of several kinds) at
    ``location``; ``FileNotFoundError`` / ``ValueError`` saying what is there instead."""
    if not location.exists():
        raise FileNotFoundError(f"no Gram store at {location.url}")
    try:
        group = location.open_group("r")
    except FileNotFoundError:
        raise ValueError(
            f"{location.url} exists but is not a Zarr v3 group (no readable zarr.json)"
        ) from None
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{location.url} is not a readable Zarr store: {exc}") from None
    return read_store_attributes(group, location.url, sets=sets)


def store_kinds(path_or_url, storage_options: dict | None = None) -> list[str]:
    """The kernel kinds a store holds: ``[kind]``, or every kind of a store of several."""
    meta = open_attributes(StoreLocation.of(path_or_url, storage_options))
    return list(meta["kinds"]) if meta["format"] == SET_FORMAT else [meta["kind"]]


@functools.lru_cache(maxsize=8)
def writable_arrays(location: StoreLocation, store_uuid: str) -> dict:
    """Zarr arrays of a store opened for writing, cached per worker process."""
    group = location.open_group("r+")
    return {name: group[name] for name, _ in group.arrays()}


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------
