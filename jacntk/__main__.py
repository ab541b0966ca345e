"""``python -m jacntk``: the ``jacntk`` command."""

import sys

from jacntk.cli.main import main

if __name__ == "__main__":  # the guard Dask's spawned workers need (they import __main__)
    sys.exit(main())
