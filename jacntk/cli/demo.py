"""``jacntk demo``: the README's main job on the embedded default."""

from __future__ import annotations

import argparse
import time

import numpy as np


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="compute and summarise kernels on Fashion-MNIST",
        description="The main job: NNGP/NTK Gram matrices of a depth-3 erf MLP on "
        "the first N Fashion-MNIST images, and the Jacobian NTK "
        "fields of a subset, with a summary.",
    )
    p.add_argument("--n", type=int, default=2000, help="training images (default 2000)")
    p.add_argument(
        "--n-jacobian",
        type=int,
        default=200,
        help="images for the Jacobian NTK fields (default 200)",
    )
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--activation", default="erf")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from jacntk import MLP, kernel, kernel_fields
    from jacntk.data import fashion_mnist

    X, y = fashion_mnist("train", args.n)
    X = (X - X.mean(axis=0)) / (X.std(axis=0) + 1e-8) / 4.0
    arch = MLP(args.depth, args.activation)
    print(f"data: Fashion-MNIST, {X.shape[0]} images x {X.shape[1]} pixels (standardised / 4)")
    print(f"network: {arch}")
    for kind in ("nngp", "ntk"):
        t0 = time.perf_counter()
        G = kernel(arch, X, kind=kind)
        dt = time.perf_counter() - t0
        ev = np.linalg.eigvalsh(G)
        print(
            f"{kind.upper():5s} Gram {G.shape}: {dt:.2f} s ({X.shape[0] ** 2 / dt:.3g} pairs/s), "
            f"diag mean {np.diag(G).mean():.4f}, eigenvalues [{ev[0]:.3e}, {ev[-1]:.3e}], "
            f"condition {ev[-1] / max(ev[0], 1e-300):.3e}"
        )
    n_jac = min(args.n_jacobian, args.n)
    t0 = time.perf_counter()
    fields = kernel_fields(arch, X[:n_jac], kind="ntk")
    dt = time.perf_counter() - t0
    print(
        f"JNTK fields for {n_jac} images: 8 x {fields.shape} in {dt:.2f} s; the augmented "
        f"matrix would be {n_jac * (X.shape[1] + 1)}^2 "
        f"({(n_jac * (X.shape[1] + 1)) ** 2 * 8 / 1e9:.1f} GB), the fields take "
        f"{fields.data.nbytes / 1e6:.1f} MB"
    )
    for name, field in fields.as_dict().items():
        print(f"  {name:5s} range [{field.min(): .4e}, {field.max(): .4e}]")
    return 0
