"""``jacntk assemble``, ``info``, ``query``, ``verify``: Gram stores from the command line."""

from __future__ import annotations

import argparse
import json
import sys

from ._arguments import (
    add_cluster_arguments,
    add_progress_arguments,
    add_storage_argument,
    add_store_kind_argument,
    check_output_file,
    cluster_options,
    storage_options,
)


def register(sub) -> None:
    from jacntk.arch import ACTIVATIONS, KINDS
    from jacntk.options import DEFAULT_TILE
    from jacntk.store._format import DTYPES

    p = sub.add_parser(
        "assemble",
        help="assemble a Gram matrix (or Jacobian kernel fields) into a Zarr store",
        description="Compute the Gram matrix of DATA tile by tile on a Dask cluster and write "
        "it into a Zarr v3 store. Re-running the same command resumes: only tiles missing from "
        "the store's manifest, or failing their checksums, are computed. One writer per store "
        "(a lease): a second command for the same store waits, one for other settings fails. "
        "Exit status 0 only for a complete store.",
    )
    p.add_argument(
        "data",
        metavar="DATA",
        help="points: .npy, .npz, a Zarr array, or NAME[:N][:raw|standardise] with NAME "
        "fashion-mnist or fashion-mnist-test: the first N rows, raw = pixels/255 in [0, 1] "
        "(the default), standardise = per pixel (x - mean) / (std + 1e-3) / 2 with the N "
        "training rows' statistics (as 'jacntk demo'); 'jacntk data' exports the labels and "
        "test split of the same spec",
    )
    p.add_argument("--out", required=True, metavar="STORE", help="store path or fsspec URL")
    p.add_argument(
        "--kind",
        nargs="+",
        default=["ntk"],
        choices=KINDS,
        metavar="KIND",
        help=f"kernel kind ({', '.join(KINDS)}; default ntk); several (e.g. --kind nngp ntk) "
        "are computed in one pass into one store holding a store per kind",
    )
    p.add_argument("--jacobian", action="store_true", help="store the Jacobian kernel's fields")
    p.add_argument("--activation", default="erf", choices=ACTIVATIONS)
    p.add_argument("--depth", type=int, default=3, help="hidden layers (default 3)")
    p.add_argument("--sigma-w", type=float, default=1.0)
    p.add_argument("--sigma-b", type=float, default=0.0)
    p.add_argument("--kappa", type=float, default=1.0)
    p.add_argument(
        "--tile",
        type=int,
        help=f"tile = chunk edge (default: the store's, or {DEFAULT_TILE})",
    )
    p.add_argument("--dtype", default="float64", choices=DTYPES, help="storage precision")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a store made for other inputs or settings",
    )
    add_progress_arguments(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_storage_argument(p)
    add_cluster_arguments(p)
    p.set_defaults(func=run_assemble)

    p = sub.add_parser("info", help="describe a Gram store", description="Describe a store.")
    p.add_argument("store", metavar="STORE")
    p.add_argument("--json", action="store_true", help="print the attributes as JSON")
    add_store_kind_argument(p, every=True)
    add_storage_argument(p)
    p.set_defaults(func=run_info)

    p = sub.add_parser(
        "query",
        help="read a block of a Gram store",
        description="Read rows x cols of a stored Gram (no cluster needed). SPEC: 'i', "
        "'i,j,k', 'a:b', 'a:b:step' or ':' (all).",
    )
    p.add_argument("store", metavar="STORE")
    p.add_argument("--rows", required=True, metavar="SPEC")
    p.add_argument("--cols", required=True, metavar="SPEC")
    p.add_argument(
        "--jacobian",
        action="store_true",
        help="the point-major Jacobian-augmented block (Jacobian stores)",
    )
    p.add_argument("--out", metavar="FILE.npy", help="save the block instead of printing it")
    add_store_kind_argument(p)
    add_storage_argument(p)
    p.set_defaults(func=run_query)

    p = sub.add_parser(
        "verify",
        help="check a Gram store's checksums and recompute sampled tiles",
        description="Check the input fingerprint and every recorded tile's checksums, "
        "recompute SAMPLE tiles from the inputs, and report damage (exit status 1).  The "
        "progress bar counts the tiles checked, then the tiles recomputed.",
    )
    p.add_argument("store", metavar="STORE")
    p.add_argument("--sample", type=int, default=2, metavar="K", help="tiles to recompute")
    p.add_argument("--seed", type=int, default=0, help="seed of the tile sample")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_progress_arguments(p)
    add_store_kind_argument(p, every=True)
    add_storage_argument(p)
    p.set_defaults(func=run_verify)


def parse_index_spec(spec: str, option: str):
    """``':'`` / ``'a:b[:c]'`` -> slice, ``'i'`` / ``'i,j,k'`` -> list of ints."""
    text = spec.strip()
    try:
        if ":" in text:
            parts = [int(p) if p.strip() else None for p in text.split(":")]
            if len(parts) > 3:
                raise ValueError
            if len(parts) == 3 and parts[2] == 0:
                raise ValueError
            return slice(*parts)
        return [int(p) for p in text.split(",")]
    except ValueError:
        raise ValueError(
            f"{option} {spec!r} is not an index spec: use 'i', 'i,j,k', 'a:b', 'a:b:step' or ':'"
        ) from None


def _as_cli_error(exc: OSError) -> Exception:
    """Disk-full and other I/O errors as ValueError (reported as 'error: ...', exit 2)."""
    if isinstance(exc, (FileNotFoundError, PermissionError, FileExistsError)):
        return exc
    return ValueError(exc.strerror or str(exc))


def run_assemble(args: argparse.Namespace) -> int:
    from jacntk.arch import MLP
    from jacntk.data import load_points, parse_data_spec
    from jacntk.store import LeaseLostError, StoreBusyError, assemble

    arch = MLP(args.depth, args.activation, args.sigma_w, args.sigma_b, args.kappa)
    X = load_points(args.data)
    spec = parse_data_spec(args.data)
    try:
        report = assemble(
            arch,
            X,
            args.out,
            kind=args.kind[0] if len(args.kind) == 1 else tuple(args.kind),
            jacobian=args.jacobian,
            tile=args.tile,
            dtype=args.dtype,
            cluster=cluster_options(args),
            overwrite=args.overwrite,
            progress=args.progress,
            storage_options=storage_options(args.storage_option),
            source=str(spec),
        )
    except OSError as exc:
        raise _as_cli_error(exc) from exc
    except (StoreBusyError, LeaseLostError) as exc:
        raise ValueError(str(exc)) from exc
    status = 0 if report.complete else 1  # scripts can rely on it: 0 = a complete store
    if args.json:
        print(json.dumps(report.to_dict()))
        return status
    state = "complete" if report.complete else "INCOMPLETE (re-run the command to finish it)"
    repaired = f" ({report.repaired} damaged tiles recomputed)" if report.repaired else ""
    source = f" ({spec})" if spec.name is not None else ""
    print(
        f"{report.url}{source}: computed {report.computed} tiles{repaired}, "
        f"skipped {report.skipped} already done, {report.tiles_total} in all; {state}; "
        f"{report.seconds:.2f} s, "
        f"{report.bytes_written / 1e6:.1f} MB written by {report.workers} workers"
    )
    return status


def _opened(args: argparse.Namespace) -> list:
    """The stores the command reads: the one at STORE (of ``--kind``), or with no ``--kind``
    every kind of a store of several kinds."""
    from jacntk.store import GramStore
    from jacntk.store._location import store_kinds

    options = storage_options(args.storage_option)
    held = store_kinds(args.store, options)
    if len(held) == 1:
        return [GramStore.open(args.store, options, args.kind)]
    return [GramStore.open(args.store, options, k) for k in ([args.kind] if args.kind else held)]


def run_info(args: argparse.Namespace) -> int:
    infos = [store.info() for store in _opened(args)]
    if args.json:
        print(json.dumps(infos[0] if len(infos) == 1 else infos, indent=2))
        return 0
    for k, info in enumerate(infos):
        if k:
            print()
        _print_info(info)
    return 0


def _print_info(info: dict) -> None:
    arch = info["arch"]
    what = "Jacobian kernel fields" if info["jacobian"] else "scalar Gram"
    print(f"store:       {info['url']}")
    print(f"contents:    {info['kind']} {what}, n={info['n']} points, d={info['d']}")
    print(
        f"network:     depth {arch['depth']} {arch['activation']} MLP, sigma_w={arch['sigma_w']}, "
        f"sigma_b={arch['sigma_b']}, kappa={arch['kappa']}"
    )
    print(f"storage:     {info['dtype']}, tile {info['tile']} ({info['n_tiles']} per side)")
    print(
        f"progress:    {info['tiles_done']}/{info['tiles_total']} tiles"
        f" ({'complete' if info['complete'] else 'incomplete'})"
    )
    print(f"inputs:      {info['fingerprint']}")
    if info.get("source"):
        print(f"data:        {info['source']}")
    print(f"jacntk:      {info['jacntk_version']}, created {info['created']}")


def run_query(args: argparse.Namespace) -> int:
    import numpy as np

    from jacntk.store import GramStore

    if args.out:  # a bad folder fails before the store is read
        check_output_file(args.out, overwrite=True)
    rows = parse_index_spec(args.rows, "--rows")
    cols = parse_index_spec(args.cols, "--cols")
    gram = GramStore.open(args.store, storage_options(args.storage_option), args.kind)
    block = gram.block(rows, cols, jacobian=args.jacobian)
    if args.out:
        np.save(args.out, block)
        print(f"wrote {block.shape} float64 block to {args.out}")
    else:
        np.savetxt(sys.stdout, np.atleast_2d(block), fmt="%.17g")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    reports = [
        gram.verify(sample=args.sample, seed=args.seed, progress=args.progress)
        for gram in _opened(args)
    ]
    ok = all(report["ok"] for report in reports)
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
        return 0 if ok else 1
    for report in reports:
        print(
            f"{report['url']}: {report['tiles_done']}/{report['tiles_total']} tiles recorded, "
            f"checksums checked for all of them, {len(report['recomputed'])} recomputed; inputs "
            f"{'match' if report['fingerprint_ok'] else 'DO NOT match'} the fingerprint"
        )
        for item in report["damaged"]:
            where = f"tile {tuple(item['tile'])}" if item["tile"] is not None else "store"
            print(f"DAMAGED {where}: {item['problem']}")
        if report["missing"]:
            print(f"missing {len(report['missing'])} tiles (assembly not finished)")
    print("OK" if ok else "DAMAGED")
    return 0 if ok else 1
