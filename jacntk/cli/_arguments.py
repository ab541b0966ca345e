"""Argument groups shared by several ``jacntk`` subcommands and their conversion to library
objects: the cluster/TLS options (-> :class:`jacntk.distributed.ClusterOptions`) and the fsspec
storage options of URL stores (-> dict)."""

from __future__ import annotations

import argparse
import json


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """The scheduler/TLS options shared by every CLI command that computes."""
    group = parser.add_argument_group("cluster")
    where = group.add_mutually_exclusive_group()
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="address of a running Dask scheduler (tcp://host:port or tls://...)",
    )
    where.add_argument(
        "--scheduler-file",
        metavar="FILE",
        help="scheduler file written by 'dask scheduler --scheduler-file'",
    )
    group.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes of the embedded local cluster (default: cores/2)",
    )
    group.add_argument("--tls-ca", metavar="PEM", help="CA certificate (TLS)")
    group.add_argument("--tls-cert", metavar="PEM", help="client certificate (TLS)")
    group.add_argument("--tls-key", metavar="PEM", help="client private key (TLS)")


def cluster_options(args: argparse.Namespace):
    """The :class:`jacntk.distributed.ClusterOptions` of the arguments added by
    :func:`add_cluster_arguments`."""
    from jacntk.distributed import ClusterOptions

    return ClusterOptions(
        args.scheduler, args.scheduler_file, args.workers, args.tls_ca, args.tls_cert, args.tls_key
    )


def wants_cluster(args: argparse.Namespace) -> bool:
    """Whether the cluster arguments ask for Dask (a scheduler, a scheduler file or workers)."""
    return bool(args.scheduler or args.scheduler_file or args.workers)


def add_progress_arguments(parser: argparse.ArgumentParser) -> None:
    """``--progress`` / ``--quiet`` (``args.progress``: True, False, or None = when stderr is a
    terminal; see :func:`jacntk.progress.wants_progress`)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    group.add_argument(
        "--quiet",
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bar",
    )


def add_storage_argument(parser: argparse.ArgumentParser) -> None:
    """``--storage-option KEY=VALUE`` (repeatable): fsspec options of a URL store."""
    parser.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec option for a URL store, e.g. endpoint_url=http://127.0.0.1:9000 "
        "(repeatable; VALUE parsed as JSON when it can be)",
    )


def add_store_kind_argument(parser: argparse.ArgumentParser, every: bool = False) -> None:
    """``--kind``: which kind to read from a store of several kinds (``jacntk assemble
    --kind nngp ntk``); ``every``: without it, every kind the store holds."""
    from jacntk.arch import KINDS

    default = "every kind it holds" if every else "required for a store of several kinds"
    parser.add_argument(
        "--kind",
        choices=KINDS,
        default=None,
        help=f"the kernel kind to read from a store of several kinds ({default})",
    )


def storage_options(pairs: list[str]) -> dict | None:
    """``["key=value", ...]`` -> dict (values parsed as JSON when possible); None if empty."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--storage-option must be KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out or None


def check_output_file(path, *, overwrite: bool = False, option: str = "--out"):
    """Check an output file before any long work: its folder exists and is writable, and the file
    is absent unless ``overwrite``.  Returns the path as a ``Path``; raises
    ``FileNotFoundError``, ``PermissionError`` or ``FileExistsError`` naming the problem."""
    import os
    from pathlib import Path

    out = Path(path)
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"{option} {out}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"{option} {out}: folder {folder} is not writable")
    if out.is_dir():
        raise IsADirectoryError(f"{option} {out} is a directory; give a file name")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    return out


def write_whole(out, write) -> None:
    """Write ``out`` whole or not at all: ``write(fh)`` fills ``OUT.<pid>.partial``, which is
    then renamed over ``out``.  A run killed before the rename leaves no ``out``; two runs
    writing the same ``out`` at once each write their own file (the last rename wins, whole).
    The partial files of runs that are gone are removed after a successful write (fault stage
    ``output`` between the write and the rename, docs/architecture.md §5.7)."""
    import os
    from pathlib import Path

    from ..store._format import fault_point

    out = Path(out)
    partial = out.with_name(f"{out.name}.{os.getpid()}.partial")
    with open(partial, "wb") as fh:
        write(fh)
    fault_point("output")
    os.replace(partial, out)
    for stale in out.parent.glob(f"{out.name}.*.partial"):
        pid = stale.name[len(out.name) + 1 : -len(".partial")]
        if pid.isdigit() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)  # signal 0: existence only (PermissionError: alive, not ours)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
