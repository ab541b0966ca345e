"""``jacntk data``: export a named data set's points, labels and test split as ``.npy`` files.

The files a ``jacntk solve`` needs next to a store assembled from the same DATA spec::

    jacntk assemble fashion-mnist:3000:standardise --out k.zarr
    jacntk data fashion-mnist:3000:standardise --out data/
    jacntk solve k.zarr --targets data/y.npy --one-hot \\
        --test data/X_test.npy --test-targets data/y_test.npy --out pred.npz
"""

from __future__ import annotations

import argparse
import json
import sys

#: The files ``jacntk data`` writes into ``--out``.
FILES = ("X.npy", "y.npy", "X_test.npy", "y_test.npy", "data.json")


def register(sub) -> None:
    p = sub.add_parser(
        "data",
        help="export a data set's points, labels and test split (.npy) for 'solve'",
        description=(
            "Write into DIR:\n"
            "  X.npy       (n, d) float64: the points 'jacntk assemble DATA' stores (same\n"
            "              fingerprint)\n"
            "  y.npy       (n,) int64: their class labels\n"
            "  X_test.npy  (m, d) float64: the first m test images, same preprocessing\n"
            "              (standardise uses the *training* statistics)\n"
            "  y_test.npy  (m,) int64: their labels\n"
            "  data.json   the spec, shapes, dtypes and the fingerprint 'jacntk info' shows\n"
            "              as 'inputs'"
        ),
        epilog="example:" + __doc__.split("::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "data",
        metavar="DATA",
        help="fashion-mnist[:N][:raw|standardise] (training split; default raw = pixels/255)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder (created if missing)")
    p.add_argument(
        "--n-test",
        type=int,
        default=None,
        metavar="M",
        help="test images: the first M of 10,000 (default all; 0 for none)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing files in DIR")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from jacntk.data import load_labelled
    from jacntk.store._format import fingerprint

    from ._arguments import check_output_file

    if args.n_test is not None and args.n_test < 0:
        raise ValueError(f"--n-test must be >= 0, got {args.n_test}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a folder")
    if out.is_dir():  # refuse before loading anything
        for name in FILES:
            check_output_file(out / name, overwrite=args.overwrite)
    data = load_labelled(args.data, args.n_test)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {"X": data.X, "y": data.y, "X_test": data.X_test, "y_test": data.y_test}
    for key, value in arrays.items():
        np.save(out / f"{key}.npy", value, allow_pickle=False)
    summary = {
        "spec": str(data.spec),
        "preprocessing": data.spec.preprocessing,
        "fingerprint": fingerprint(data.X),
        "files": {
            f"{key}.npy": {"shape": list(value.shape), "dtype": str(value.dtype)}
            for key, value in arrays.items()
        },
        "classes": int(max(data.y.max(), data.y_test.max(initial=0))) + 1,
    }
    (out / "data.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary))
        return 0
    print(
        f"{summary['spec']}: wrote {out}/X.npy {data.X.shape}, y.npy ({data.y.size},), "
        f"X_test.npy {data.X_test.shape}, y_test.npy ({data.y_test.size},); "
        f"inputs {summary['fingerprint']}"
    )
    print(
        f"next: jacntk solve STORE --targets {out / 'y.npy'} --one-hot --test "
        f"{out / 'X_test.npy'} --test-targets {out / 'y_test.npy'} --out pred.npz",
        file=sys.stderr,
    )
    return 0
