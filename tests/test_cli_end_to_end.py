"""The command line end to end, from the shell alone: assemble a standardised Fashion-MNIST Gram,
export its labels and test split, solve, read the accuracy; and the lazy ``jacntk --help``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jacntk.cli.main import COMMANDS, SUBCOMMAND_MODULES, build_parser
from jacntk.data import FASHION_MNIST_DIR

N, N_TEST, TILE = 300, 200, 100
SPEC = f"fashion-mnist:{N}:standardise"
#: what a user types: the installed ``jacntk`` script (``python -m jacntk`` where there is none)
_SCRIPT = Path(sys.executable).with_name("jacntk")
JACNTK = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "jacntk"]


def jacntk_cli(cwd, *args, timeout: float = 180) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [*JACNTK, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"jacntk {' '.join(map(str, args))}:\n{proc.stderr}"
    return proc


@pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason=f"needs Fashion-MNIST in {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)",
)
def test_assemble_export_solve_accuracy_from_the_shell(tmp_path):
    from jacntk.data import fashion_mnist, standardise

    jacntk_cli(tmp_path, "assemble", SPEC, "--out", "k.zarr", "--tile", TILE, "--workers", 1)
    jacntk_cli(tmp_path, "data", SPEC, "--out", "data", "--n-test", N_TEST)
    info = json.loads(jacntk_cli(tmp_path, "info", "k.zarr", "--json").stdout)
    summary = json.loads((tmp_path / "data" / "data.json").read_text())
    assert summary["fingerprint"] == info["fingerprint"]  # the store holds the exported X
    assert (info["n"], info["d"], summary["spec"]) == (N, 784, SPEC)

    # the preprocessing is the demo's, test split standardised with the training statistics
    X, y = fashion_mnist("train", N)
    Xt, yt = fashion_mnist("test", N_TEST)
    mu, sd = X.mean(axis=0), X.std(axis=0)
    np.testing.assert_array_equal(np.load(tmp_path / "data" / "X.npy"), standardise(X, mu, sd))
    np.testing.assert_array_equal(
        np.load(tmp_path / "data" / "X_test.npy"), standardise(Xt, mu, sd)
    )
    np.testing.assert_array_equal(np.load(tmp_path / "data" / "y_test.npy"), yt)

    solved = jacntk_cli(
        tmp_path,
        "solve",
        "k.zarr",
        "--targets",
        "data/y.npy",
        "--one-hot",
        "--test",
        "data/X_test.npy",
        "--test-targets",
        "data/y_test.npy",
        "--out",
        "pred.npz",
    )
    match = re.search(r"^t=inf: accuracy (\d\.\d+)$", solved.stdout, re.MULTILINE)
    assert match, solved.stdout
    accuracy = float(match.group(1))
    assert accuracy > 0.5  # ten classes: chance is 0.1
    with np.load(tmp_path / "pred.npz") as out:  # the printed accuracy is the saved predictions'
        assert float(np.mean(out["values"][-1].argmax(axis=1) == yt)) == pytest.approx(
            accuracy, abs=5e-5
        )


def test_help_lists_every_command_without_importing_them():
    code = (
        "import io, sys, contextlib\n"
        "from jacntk.cli.main import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(out.getvalue())\n"
        "print('LOADED', sorted(m for m in sys.modules if m.startswith('jacntk.cli.')))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    for name, (_, summary) in COMMANDS.items():
        assert re.search(rf"^\s+{name}\s+{re.escape(summary.split()[0])}", proc.stdout, re.M), name
    assert "LOADED ['jacntk.cli.main']" in proc.stdout, proc.stdout


def test_command_table_matches_the_modules():
    """``COMMANDS`` (what ``jacntk --help`` shows without importing) is what the modules
    register: the same commands, from the same modules, with the same summaries."""
    full = build_parser()._subparsers._group_actions[0]
    assert list(full.choices) == list(COMMANDS)
    helps = {action.dest: action.help for action in full._choices_actions}
    assert helps == {name: summary for name, (_, summary) in COMMANDS.items()}
    for module in SUBCOMMAND_MODULES:
        lazy = build_parser(next(n for n, (m, _) in COMMANDS.items() if m == module))
        choices = lazy._subparsers._group_actions[0].choices
        for name, (owner, _) in COMMANDS.items():
            registered = choices[name].get_default("func") is not None
            assert registered == (owner == module), (module, name)


def test_lazy_parser_parses_like_the_full_one():
    argv = ["data", "fashion-mnist:10:standardise", "--out", "d", "--n-test", "3"]
    lazy = build_parser("data").parse_args(argv)
    assert vars(lazy) == vars(build_parser().parse_args(argv))
    assert (lazy.data, lazy.n_test) == ("fashion-mnist:10:standardise", 3)
