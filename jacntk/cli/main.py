"""Entry point of the ``jacntk`` command: builds the parser from the subcommand modules.

Each module in ``SUBCOMMAND_MODULES`` defines ``register(subparsers)``, which adds its
subcommands and sets ``func`` (called with the parsed arguments, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMAND_MODULES = ("jacntk.cli.demo", "jacntk.cli.store", "jacntk.cli.solve")


def build_parser() -> argparse.ArgumentParser:
    from jacntk import __version__

    parser = argparse.ArgumentParser(
        prog="jacntk",
        description="Infinite-width NNGP/NTK kernels and their Jacobian-augmented forms.",
    )
    parser.add_argument("--version", action="version", version=f"jacntk {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError) as exc:
        print(f"jacntk {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jacntk {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
