"""Entry point of the ``jacntk`` command: builds the parser from the subcommand modules.

Each module in ``SUBCOMMAND_MODULES`` defines ``register(subparsers)``, which adds its
subcommands and sets ``func`` (called with the parsed arguments, returning an exit code).

Start-up is lazy: :data:`COMMANDS` names every subcommand, its module and its one-line summary,
so ``jacntk --help`` imports no subcommand module (nor NumPy, Numba, Dask or Zarr), and
``jacntk COMMAND ...`` imports and registers only the module of ``COMMAND``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand -> (module that registers it, summary shown by ``jacntk --help``).  Each module's
#: commands are listed together, in the order the module registers them.
COMMANDS = {
    "demo": (
        "jacntk.cli.demo",
        "the main job: Fashion-MNIST Gram -> store -> query -> kernel regression",
    ),
    "assemble": (
        "jacntk.cli.store",
        "assemble a Gram matrix (or Jacobian kernel fields) into a Zarr store",
    ),
    "info": ("jacntk.cli.store", "describe a Gram store"),
    "query": ("jacntk.cli.store", "read a block of a Gram store"),
    "verify": ("jacntk.cli.store", "check a Gram store's checksums and recompute sampled tiles"),
    "data": (
        "jacntk.cli.data",
        "export a data set's points, labels and test split (.npy) for 'solve'",
    ),
    "solve": (
        "jacntk.cli.solve",
        "train the infinite-width network on a stored Gram (direct / CG / Lanczos)",
    ),
}
SUBCOMMAND_MODULES = tuple(dict.fromkeys(module for module, _ in COMMANDS.values()))


def _version() -> str:
    from jacntk._version import __version__

    return f"jacntk {__version__}"


class _VersionAction(argparse.Action):
    """``--version``, reading the version only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, **kw):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version())
        parser.exit()


def _register(sub, name: str) -> bool:
    """Register the subcommands of module ``name``; False if the module is not installed."""
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return False
    module.register(sub)
    return True


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``jacntk`` parser.

    Parameters
    ----------
    command : str, optional
        Register only the module of this subcommand; the others get placeholder parsers that
        carry their summary (enough for ``jacntk --help`` and for argparse's choice check).
        Default: register every module (the complete parser).
    """
    parser = argparse.ArgumentParser(
        prog="jacntk",
        description="Infinite-width NNGP/NTK kernels and their Jacobian-augmented forms.",
        epilog="'jacntk COMMAND --help' describes a command.  DATA arguments: a .npy/.npz "
        "file, a Zarr array, or NAME[:N][:raw|standardise] with NAME fashion-mnist or "
        "fashion-mnist-test (first N rows; default raw = pixels/255; see jacntk.data).",
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = SUBCOMMAND_MODULES if command is None else (COMMANDS.get(command, ("",))[0],)
    registered: set[str] = set()
    for name, (module, summary) in COMMANDS.items():
        if module in wanted and module not in registered:
            registered.add(module)
            _register(sub, module)
        if command is not None and name not in sub.choices:
            sub.add_parser(name, help=summary, add_help=False)  # placeholder: never run
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (its first argument that is not an option)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_of(argv)
    parser = build_parser(command if command is not None else "")
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):  # its module is not installed
        parser.error(f"command {args.command!r} is not available in this installation")
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
