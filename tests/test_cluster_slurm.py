"""A real single-node SLURM (Debian's munged, slurmctld, slurmd) started by
``cluster/slurm/single-node.sh`` in a temporary directory, and jacntk through it:

- dask-jobqueue's ``SLURMCluster`` configured by ``cluster/slurm/jobqueue.yaml`` launches two
  workers as SLURM jobs; ``jacntk assemble`` and ``jacntk solve`` run through them;
- ``cluster/slurm/jacntk.sbatch`` runs scheduler, workers and ``jacntk assemble`` in one job.

Skipped, with the reason, unless running as root on Linux with SLURM installed
(``sudo bash cluster/slurm/setup.sh``) and dask-jobqueue importable (the ``cluster`` extra).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from test_cluster_scripts import (
    CLUSTER,
    assert_store_equals_kernel,
    make_points,
    run_jacntk,
    run_script,
)

SLURM_COMMANDS = (
    "munged",
    "slurmctld",
    "slurmd",
    "sbatch",
    "squeue",
    "sinfo",
    "scancel",
    "scontrol",
)


def _why_no_slurm() -> str | None:
    if not sys.platform.startswith("linux"):
        return "a single-node SLURM needs Linux"
    if shutil.which("bash") is None:
        return "bash is not installed"
    if os.geteuid() != 0:
        return "starting munged/slurmctld/slurmd needs root (CI runs as root)"
    missing = [c for c in SLURM_COMMANDS if shutil.which(c) is None]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing): run cluster/slurm/setup.sh"
    if (os.cpu_count() or 1) < 2:
        return "two SLURM worker jobs of one CPU each need at least 2 CPUs"
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        return "dask-jobqueue is not installed (pip install 'jacntk[cluster]')"
    return None


pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(_why_no_slurm() is not None, reason=str(_why_no_slurm())),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _squeue(*fmt: str) -> list[list[str]]:
    out = subprocess.run(
        ["squeue", "-h", "-o", "|".join(fmt)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return [line.split("|") for line in out.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A private single-node SLURM; ``SLURM_CONF`` points at it for this module."""
    base = tmp_path_factory.mktemp("slurm")
    state = base / "slurm"
    ports = ("--ctld-port", str(_free_port()), "--slurmd-port", str(_free_port()))
    old = os.environ.get("SLURM_CONF")
    try:
        out = run_script("slurm/single-node.sh", "start", state, *ports, "--memory", "4000")
        assert out.returncode == 0, out.stdout + out.stderr + _logs(state)
        os.environ["SLURM_CONF"] = str(state / "slurm.conf")
        yield base
    finally:
        run_script("slurm/single-node.sh", "stop", state, timeout=60)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


def _logs(state) -> str:
    logs = sorted((state / "log").glob("*.log")) if (state / "log").is_dir() else []
    return "".join(f"\n--- {p.name}\n{p.read_text()[-2000:]}" for p in logs)


@pytest.fixture(scope="class")
def jobqueue(slurm):
    """Two workers as SLURM jobs through ``SLURMCluster``; closed after ``TestJobqueueWorkers``,
    which frees the node for the batch-script test."""
    import dask
    import yaml
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    config = yaml.safe_load((CLUSTER / "slurm" / "jobqueue.yaml").read_text())
    settings = {f"jobqueue.slurm.{k}": v for k, v in config["jobqueue"]["slurm"].items()}
    # The jobs read the config whenever they are created: keep it set (as a user's
    # ~/.config/dask/jobqueue.yaml would be) while the cluster lives.
    with dask.config.set(settings):
        # Only sizes and addresses change: one CPU per job, everything on 127.0.0.1.
        cluster = SLURMCluster(
            job_cpu=1,
            memory="1GiB",
            walltime="00:10:00",
            python=sys.executable,
            log_directory=str(slurm / "jobqueue-logs"),
            local_directory=str(slurm / "worker-space"),
            worker_extra_args=["--host", "127.0.0.1"],
            scheduler_options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
        )
        client = None
        try:
            cluster.scale(jobs=2)
            client = Client(cluster)
            client.wait_for_workers(2, timeout=60)
            yield cluster, client
        finally:
            if client is not None:
                client.close()
            cluster.close()
            subprocess.run(["scancel", "--full", "--name", "jacntk-worker"], timeout=30)


def _wait_for_job(job: str, timeout: float) -> tuple[str, str]:
    """Poll ``scontrol show job`` until the job ends (``sbatch --wait`` polls too slowly);
    returns ``(JobState, ExitCode)``; cancels the job and fails on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30
        )
        fields = dict(re.findall(r"(\w+)=(\S+)", out.stdout))
        if fields.get("JobState") not in (None, "PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
            return fields["JobState"], fields.get("ExitCode", "")
        time.sleep(0.3)
    subprocess.run(["scancel", job], timeout=30)
    pytest.fail(f"SLURM job {job} did not end within {timeout} s")


class TestJobqueueWorkers:
    """Assembly and solve through the class-scoped ``jobqueue`` workers."""

    def test_workers_are_slurm_jobs_configured_by_jobqueue_yaml(self, jobqueue):
        cluster, client = jobqueue
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        running = {job for job, name, state in _squeue("%i", "%j", "%T") if state == "RUNNING"}
        env = client.run(
            lambda: {k: os.environ.get(k) for k in ("SLURM_JOB_ID", "NUMBA_NUM_THREADS")}
        )
        assert len(env) == 2
        job_ids = {e["SLURM_JOB_ID"] for e in env.values()}
        assert len(job_ids) == 2 and job_ids <= running, (env, running)
        # The prologue of jobqueue.yaml: Numba threads = the job's CPUs (1 here).
        assert {e["NUMBA_NUM_THREADS"] for e in env.values()} == {"1"}
        names = {name for _, name, _ in _squeue("%i", "%j", "%T")}
        assert names == {"jacntk-worker"}

    def test_assemble_and_solve_through_slurm_workers(self, jobqueue, tmp_path):
        cluster, _ = jobqueue
        X = make_points(tmp_path / "X.npy", n=24, d=3)
        store = tmp_path / "gram.zarr"
        where = ("--scheduler", cluster.scheduler_address)
        out = run_jacntk(
            "assemble", tmp_path / "X.npy", "--out", store, "--tile", "8", *where, "--json"
        )
        assert out.returncode == 0, out.stderr
        assert '"workers": 2' in out.stdout, out.stdout
        assert_store_equals_kernel(store, X)
        _solve_and_check(store, X, where, tmp_path)


def _solve_and_check(store, X, where, tmp_path) -> None:
    """``jacntk solve STORE --targets Y.npy --test T.npy`` through the same scheduler: the
    kernel-regression predictions K(T, X) K(X, X)^{-1} y."""
    import jacntk

    y = np.sin(X @ np.arange(1.0, X.shape[1] + 1))
    T = X[:5] + 0.05
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "T.npy", T)
    out_file = tmp_path / "solve.npz"
    out = run_jacntk(
        "solve", store, "--targets", tmp_path / "y.npy", "--test", tmp_path / "T.npy",
        "--out", out_file, *where,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "on 2 workers" in out.stderr, out.stderr[-3000:]
    arch = jacntk.MLP(3, "erf")
    want = jacntk.kernel(arch, T, X, kind="ntk") @ np.linalg.solve(
        jacntk.kernel(arch, X, kind="ntk"), y
    )
    with np.load(out_file) as result:
        got = result["values"][0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_sbatch_script_runs_scheduler_workers_and_jacntk_assemble_in_one_job(slurm, tmp_path):
    X = make_points(tmp_path / "X.npy", n=30, d=3)
    store = tmp_path / "gram.zarr"
    env = {
        **os.environ,
        "JACNTK_PYTHON": sys.executable,
        "JACNTK_RUN_DIR": str(tmp_path / "run"),
        "JACNTK_SCHEDULER_HOST": "127.0.0.1",
        "JACNTK_WORKER_HOST": "127.0.0.1",
    }
    submit = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--nodes=1",
            "--ntasks-per-node=2",
            "--cpus-per-task=1",
            "--time=00:05:00",
            f"--output={tmp_path}/job-%j.log",
            str(CLUSTER / "slurm" / "jacntk.sbatch"),
            "assemble",
            str(tmp_path / "X.npy"),
            "--out",
            str(store),
            "--tile",
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=tmp_path,
    )
    assert submit.returncode == 0, submit.stderr
    job = submit.stdout.strip().split(";")[0]
    state = _wait_for_job(job, timeout=120)
    logs = "".join(p.read_text() for p in tmp_path.glob("job-*.log"))
    assert state == ("COMPLETED", "0:0"), (state, logs)
    # 2 x 2 tiles: the upper half is 3 tasks, run by both SLURM tasks' workers.
    assert "computed 3 tiles" in logs and "complete" in logs and "by 2 workers" in logs, logs
    scheduler_log = (tmp_path / "run" / "scheduler.log").read_text()
    assert scheduler_log.count("Register worker") == 2, scheduler_log
    assert_store_equals_kernel(store, X)
