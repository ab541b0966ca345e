""".ci/setup prints one line per stage and shows errors without the known noise.

The real script runs in a copy of the repository's skeleton whose external commands are fakes:
``.venv/bin/python`` (pip prints what a real editable install prints on this machine, then exits
with a chosen status), ``cluster/slurm/setup.sh`` (debconf's notes, then success or an apt error)
and ``apt-get`` first on PATH, so nothing is installed.
"""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason=".ci/setup is a bash script")

#: What pip -q -e . printed to stderr here (setuptools' warning block at every editable install).
EDITABLE_BLOCK = (
    (
        "  /tmp/pip-build-env-x7dnmd7n/overlay/lib/python3.11/site-packages/setuptools/command/"
        "editable_wheel.py:354: BuildBackendWarning: Editable installation.\n"
    )
    + """\
  !!

          ********************************************************************************
          Please be careful with folders in your working directory with the same
          name as your package as they may take precedence during imports.
          ********************************************************************************

  !!
    with strategy, WheelFile(wheel_path, "w") as wheel_obj:
"""
)
DEBCONF = """\
debconf: unable to initialize frontend: Dialog
debconf: (TERM is not set, so the dialog frontend is not usable.)
debconf: delaying package configuration, since apt-utils is not installed
dpkg-preconfigure: unable to re-open stdin: No such file or directory
"""


def _executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def skeleton(tmp_path):
    root = tmp_path / "repo"
    (root / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "setup", root / ".ci" / "setup")
    _executable(
        root / ".venv" / "bin" / "python",
        """#!/usr/bin/env bash
case "$*" in
  -V) echo "Python 3.11.0" ;;
  *"pip install"*)
    echo "$*" >> "$FAKE_CALLS"
    cat "$FAKE_PIP_STDERR" >&2
    exit "${FAKE_PIP_STATUS:-0}" ;;
  "-c "*) echo "python $*" >> "$FAKE_CALLS" ;;
esac
""",
    )
    _executable(
        root / "cluster" / "slurm" / "setup.sh",
        """#!/usr/bin/env bash
printf '%s' "$FAKE_DEBCONF" >&2
echo "Selecting previously unselected package munge."
if [ "${FAKE_SLURM_STATUS:-0}" != 0 ]; then
  echo "E: Unable to locate package slurmd" >&2; exit "$FAKE_SLURM_STATUS"
fi
echo "SLURM 22.05.8 ready: sudo bash single-node.sh start DIR"
""",
    )
    bin_dir = tmp_path / "bin"
    _executable(bin_dir / "apt-get", '#!/usr/bin/env bash\necho "apt-get $*" >> "$FAKE_CALLS"\n')
    pip_stderr = tmp_path / "pip.stderr"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_CALLS": str(tmp_path / "calls"),
        "FAKE_PIP_STDERR": str(pip_stderr),
        "FAKE_DEBCONF": DEBCONF,
    }
    return root, env, pip_stderr


def _setup(root: Path, env: dict, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BASH, str(root / ".ci" / "setup")],
        env={**env, **extra},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _root() -> bool:
    return os.geteuid() == 0


def test_success_prints_one_line_per_stage_and_no_noise(skeleton):
    root, env, pip_stderr = skeleton
    pip_stderr.write_text(
        EDITABLE_BLOCK + "WARNING: Location 'x' is ignored\nWARNING: a real pip warning\n"
    )
    result = _setup(root, env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(line.startswith("setup: ") for line in lines), lines
    stages = [line.split(":")[1].split()[0] for line in lines]
    assert stages == ["dataset", "venv", "installing", "SLURM", "ready"], lines
    assert "jacntk[test,cluster,s3]" in lines[2]
    # pip's own warning comes through; the editable-install block, the pip-configuration note,
    # debconf and apt's progress do not
    assert result.stderr.count("WARNING: a real pip warning") == 2  # pip upgrade + install
    for noise in ("Editable installation", "****", "!!", "with strategy", "Location", "debconf"):
        assert noise not in result.stderr + result.stdout, noise
    assert "Selecting previously" not in result.stdout + result.stderr
    if _root():
        assert "cluster/slurm/setup.sh" in lines[3]
    else:
        assert "skipped" in lines[3]


def test_pip_failure_is_shown_and_decides_the_exit_status(skeleton):
    root, env, pip_stderr = skeleton
    pip_stderr.write_text(EDITABLE_BLOCK + "ERROR: No matching distribution found for zarr>=3\n")
    result = _setup(root, env, FAKE_PIP_STATUS="3")
    assert result.returncode == 3
    assert "ERROR: No matching distribution found for zarr>=3" in result.stderr
    assert "Editable installation" not in result.stderr
    assert "setup: ready" not in result.stdout
    assert not any(line.startswith("setup: SLURM") for line in result.stdout.splitlines())


@pytest.mark.skipif(not _root(), reason="the SLURM stage runs only as root")
def test_slurm_failure_shows_the_apt_error_without_debconf_and_carries_on(skeleton):
    root, env, pip_stderr = skeleton
    pip_stderr.write_text("")
    result = _setup(root, env, FAKE_SLURM_STATUS="100")
    assert result.returncode == 0, result.stderr
    assert "E: Unable to locate package slurmd" in result.stderr
    assert "SLURM could not be installed" in result.stderr
    assert "debconf" not in result.stderr and "dpkg-preconfigure" not in result.stderr
    assert "setup: ready" in result.stdout


def test_second_run_prints_the_same_stages(skeleton):
    """Idempotent: a second run finds what the first left and prints the same lines."""
    root, env, pip_stderr = skeleton
    pip_stderr.write_text("")
    first, second = _setup(root, env), _setup(root, env)
    assert first.returncode == second.returncode == 0
    strip = [line for line in first.stdout.splitlines() if not line.startswith("setup: ready")]
    again = [line for line in second.stdout.splitlines() if not line.startswith("setup: ready")]
    assert strip == again and len(strip) == 4
    assert second.stderr == ""
