"""cluster/ scripts, configs and manifests: real processes on 127.0.0.1, real files.

Also the helpers shared by the other ``test_cluster_*`` modules (imported from here): running the
scripts and the ``jacntk`` CLI as subprocesses, listing listening sockets, comparing a store with
``jacntk.kernel``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
SCRIPTS = sorted(CLUSTER.rglob("*.sh")) + sorted(CLUSTER.rglob("*.sbatch"))

pytestmark = pytest.mark.cluster

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


def run_script(script: str, *args: str, timeout: float = 120, env: dict | None = None):
    """``bash cluster/SCRIPT ARGS...`` -> CompletedProcess (text, never raises on exit status)."""
    full_env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(
        ["bash", str(CLUSTER / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def run_jacntk(*args: str, prefix: tuple[str, ...] = (), timeout: float = 120):
    """``[PREFIX...] python -m jacntk ARGS...`` (e.g. PREFIX = ip netns exec NS)."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "jacntk", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def make_points(path: Path, n: int = 40, d: int = 4, seed: int = 7) -> np.ndarray:
    """Random inputs saved as ``path`` (.npy); returns them."""
    X = np.random.default_rng(seed).standard_normal((n, d))
    np.save(path, X)
    return X


def assert_store_equals_kernel(store: Path, X: np.ndarray, *, jacobian: bool = False) -> None:
    """The stored Gram (CLI defaults: depth-3 erf MLP, NTK) equals ``jacntk.kernel`` to 1e-12."""
    import jacntk
    from jacntk.store import GramStore

    gram = GramStore.open(str(store))
    assert gram.complete, f"store {store} is incomplete: missing {gram.missing_tiles()}"
    want = jacntk.kernel(jacntk.MLP(3, "erf"), X, kind="ntk", jacobian=jacobian)
    got = gram.block(jacobian=jacobian)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def listening_addresses(pids: list[int]) -> set[str]:
    """IP addresses on which ``pids`` or any of their descendants listen (TCP/UDP)."""
    import psutil

    found = set()
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            try:
                conns = proc.net_connections(kind="inet")
            except psutil.NoSuchProcess:
                continue
            for conn in conns:
                if conn.status == psutil.CONN_LISTEN or conn.type == 2:  # 2: UDP
                    found.add(conn.laddr.ip)
    return found


def read_pids(run: Path) -> list[int]:
    return [int(p.read_text()) for p in sorted(run.glob("*.pid"))]


def alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def start_local(run: Path, *args: str, workers: int = 2):
    """``cluster/start-local.sh RUN --workers N --port 0 ARGS...``; fails the test if it fails."""
    out = run_script("start-local.sh", run, "--workers", str(workers), "--port", "0", *args)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads((run / "scheduler.json").read_text())["address"]


def stop_local(run: Path) -> None:
    """``cluster/stop-local.sh RUN`` if anything is left there (finalizers)."""
    if any(run.glob("*.pid")):
        run_script("stop-local.sh", run, timeout=60)


# --- the local scheduler: loopback only, stopped completely ----------------------------------


@needs_bash
def test_scheduler_started_by_script_listens_on_loopback_only_and_stops(tmp_path):
    run = tmp_path / "run"
    try:
        address = start_local(run, workers=1)
        assert address.startswith("tcp://127.0.0.1:"), address
        pids = read_pids(run)
        assert len(pids) == 2  # scheduler + one worker (nanny; its worker process is a child)
        ips = listening_addresses(pids)
        assert ips, "found no listening sockets at all"
        not_loopback = {ip for ip in ips if not ipaddress.ip_address(ip).is_loopback}
        assert not not_loopback, f"listening beyond loopback: {sorted(not_loopback)}"
        import psutil

        family = [p for pid in pids for p in [psutil.Process(pid), *psutil.Process(pid).children()]]
    finally:
        stop = run_script("stop-local.sh", run, timeout=60)
    assert stop.returncode == 0, stop.stderr
    assert not [p.pid for p in family if alive(p.pid)], "processes left after stop-local.sh"
    assert not list(run.glob("*.pid")) and not (run / "scheduler.json").exists()
    assert (run / "logs" / "scheduler.log").stat().st_size > 0  # logs are kept


# --- bad input: clear errors naming the value, nothing started or lost ----------------------


@needs_bash
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "--workers must be a positive integer, got '0'"),
        (["--workers", "two"], "--workers must be a positive integer, got 'two'"),
        (["--numba-threads", "-1"], "--numba-threads must be a positive integer, got '-1'"),
        (["--port", "70000"], "--port must be 0..65535, got '70000'"),
        (["--host", "1.2.3.4; rm -rf /"], "--host must be an IP address or host name"),
        (["--tls", "/nonexistent/certs"], "'/nonexistent/certs/ca.pem' is missing"),
        (["--config", "/nonexistent.yaml"], "--config: no such file '/nonexistent.yaml'"),
        (["--python", "/nonexistent/python"], "--python: '/nonexistent/python' not found"),
        (["--bogus", "1"], "unknown option '--bogus'"),
        (["--workers"], "option '--workers' needs a value"),
    ],
)
def test_start_local_rejects_bad_options(tmp_path, args, message):
    out = run_script("start-local.sh", tmp_path / "run", *args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr
    assert "start-local.sh: error:" in out.stderr
    assert not (tmp_path / "run").exists()  # nothing started, nothing written


@needs_bash
def test_start_local_warns_off_loopback_and_cleans_up_when_the_scheduler_cannot_start(tmp_path):
    """192.0.2.1 (TEST-NET-1) is no address of this machine: the bind fails, no packet is sent.
    Asking for a non-loopback address prints the warning; the failure leaves no process."""
    run = tmp_path / "run"
    out = run_script(
        "start-local.sh", run, "--host", "192.0.2.1", "--port", "0", "--workers", "1",
        "--timeout", "30",
    )  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    assert "warning: listening on 192.0.2.1, not loopback" in out.stderr
    assert "WITHOUT TLS" in out.stderr and "failed; logs are in" in out.stderr
    assert "Cannot assign requested address" in (run / "logs" / "scheduler.log").read_text()
    assert not list(run.glob("*.pid")), "PID files left behind"


@needs_bash
def test_stop_local_refuses_a_directory_without_a_cluster(tmp_path):
    out = run_script("stop-local.sh", tmp_path / "missing")
    assert out.returncode == 2 and "no such directory" in out.stderr
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("data")
    out = run_script("stop-local.sh", tmp_path / "other")
    assert out.returncode == 2 and "holds no cluster started by start-local.sh" in out.stderr
    assert (tmp_path / "other" / "keep.txt").read_text() == "data"


@needs_bash
def test_stop_local_never_kills_a_process_it_did_not_start(tmp_path):
    """A stale PID file naming someone else's process (PID reuse) leaves that process alone."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = tmp_path / "run"
        run.mkdir()
        (run / "scheduler.pid").write_text(str(bystander.pid))
        out = run_script("stop-local.sh", run)
        assert out.returncode == 0, out.stderr
        assert bystander.poll() is None, "stop-local.sh killed a process it had not started"
        assert not (run / "scheduler.pid").exists()
    finally:
        bystander.kill()
        bystander.wait(timeout=10)


# --- certificates ---------------------------------------------------------------------------


def _openssl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)


@needs_bash
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_make_certs_issues_a_ca_and_role_certificates_and_never_overwrites(tmp_path):
    certs = tmp_path / "certs"
    out = run_script("make-certs.sh", certs, "--names", "node7,10.1.2.3", "--days", "30")
    assert out.returncode == 0, out.stderr
    for role in ("scheduler", "worker", "client"):
        cert = str(certs / f"{role}.pem")
        check = _openssl("verify", "-CAfile", str(certs / "ca.pem"), cert)
        assert check.returncode == 0 and ": OK" in check.stdout, check.stdout + check.stderr
        san = _openssl("x509", "-in", cert, "-noout", "-ext", "subjectAltName")
        for name in ("127.0.0.1", "localhost", "node7", "10.1.2.3"):
            assert name in san.stdout
        assert (certs / f"{role}.key").stat().st_mode & 0o077 == 0  # private keys: owner only
    # Rerun: existing files untouched; a deleted certificate is reissued from the same CA.
    before = {p.name: p.read_bytes() for p in certs.iterdir()}
    (certs / "client.pem").unlink()
    (certs / "client.key").unlink()
    out = run_script("make-certs.sh", certs)
    assert out.returncode == 0, out.stderr
    after = {p.name: p.read_bytes() for p in certs.iterdir()}
    assert after.keys() == before.keys()
    assert all(after[k] == before[k] for k in before if not k.startswith("client."))
    assert after["client.pem"] != before["client.pem"]
    check = _openssl("verify", "-CAfile", str(certs / "ca.pem"), str(certs / "client.pem"))
    assert check.returncode == 0, check.stderr


@needs_bash
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--days", "0"], "--days must be a positive integer, got '0'"),
        (["--names", "bad name"], "--names: 'bad name' is neither a host name nor an IP address"),
        (["--what", "x"], "unknown option '--what'"),
    ],
)
def test_make_certs_rejects_bad_options(tmp_path, args, message):
    out = run_script("make-certs.sh", tmp_path / "certs", *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert not (tmp_path / "certs").exists()


@needs_bash
def test_make_certs_refuses_a_file_in_place_of_the_directory(tmp_path):
    target = tmp_path / "certs"
    target.write_text("not a directory")
    out = run_script("make-certs.sh", target)
    assert out.returncode == 2 and "exists and is not a directory" in out.stderr
    assert target.read_text() == "not a directory"


# --- the SLURM helper's argument checks (the real SLURM runs in test_cluster_slurm.py) ------


@needs_bash
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["start", "{dir}", "--cpus", "two"], "--cpus must be a positive integer, got 'two'"),
        (["restart", "{dir}"], "unknown action 'restart'"),
        (["stop", "{dir}/missing"], "no such directory"),
    ],
)
def test_single_node_slurm_rejects_bad_arguments(tmp_path, args, message):
    out = run_script("slurm/single-node.sh", *[a.format(dir=tmp_path) for a in args])
    assert out.returncode == 2 and message in out.stderr, out.stderr


@needs_bash
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(CLUSTER)))
def test_shell_scripts_parse(script):
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


# --- configuration files: every key is one Dask / dask-jobqueue knows -----------------------


def _key_paths(tree: dict, prefix: tuple = (), free_form: tuple = ()) -> list[tuple]:
    """All key paths of a nested dict, not descending below keys named in ``free_form``."""
    paths = []
    for key, value in tree.items():
        path = (*prefix, key)
        paths.append(path)
        if isinstance(value, dict) and key not in free_form:
            paths += _key_paths(value, path, free_form)
    return paths


def _has_path(tree: dict, path: tuple) -> bool:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


def test_dask_config_uses_only_keys_dask_knows():
    import dask
    import distributed  # noqa: F401  (registers distributed's defaults)
    import yaml

    ours = yaml.safe_load((CLUSTER / "dask-config.yaml").read_text())
    defaults = dask.config.merge(*dask.config.defaults)
    paths = _key_paths(ours, free_form=("pre-spawn-environ", "environ"))
    unknown = [".".join(p) for p in paths if not _has_path(defaults, p)]
    assert not unknown, f"keys Dask does not define: {unknown}"
    env = ours["distributed"]["nanny"]["pre-spawn-environ"]
    assert {"NUMBA_NUM_THREADS", "OMP_NUM_THREADS"} <= env.keys()
    from jacntk.distributed import WORKER_MALLOC  # the embedded cluster's malloc settings

    assert {k: str(env.get(k)) for k in WORKER_MALLOC} == WORKER_MALLOC


def test_jobqueue_config_uses_only_keys_dask_jobqueue_knows():
    dask_jobqueue = pytest.importorskip(
        "dask_jobqueue", reason="dask-jobqueue is not installed (pip install jacntk[cluster])"
    )
    import yaml

    ours = yaml.safe_load((CLUSTER / "slurm" / "jobqueue.yaml").read_text())
    known = yaml.safe_load((Path(dask_jobqueue.__file__).parent / "jobqueue.yaml").read_text())
    paths = _key_paths(ours, free_form=("scheduler-options",))
    unknown = [".".join(p) for p in paths if not _has_path(known, p)]
    assert not unknown, f"keys dask-jobqueue does not define: {unknown}"
    slurm = ours["jobqueue"]["slurm"]
    assert slurm["cores"] == 1 and slurm["processes"] == 1  # one Dask thread per worker
    assert any("NUMBA_NUM_THREADS=${SLURM_CPUS_PER_TASK" in s for s in slurm["job-script-prologue"])


# --- Kubernetes: the manifests parse and agree with the docs --------------------------------


def _k8s_documents() -> list[dict]:
    import yaml

    docs = []
    for path in sorted((CLUSTER / "kubernetes").rglob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _documented(name: str) -> str:
    """The value the README states as ``<!-- NAME: value -->`` (checked against manifests)."""
    text = (CLUSTER / "README.md").read_text()
    found = re.findall(rf"<!-- {name}: (.+?) -->", text)
    assert len(found) == 1, f"README.md must state {name} exactly once, found {found}"
    return found[0].strip()


def test_kubernetes_manifests_parse_and_name_the_documented_image_command_and_config():
    import yaml

    import jacntk

    docs = _k8s_documents()
    kinds = {d["kind"] for d in docs}
    assert {"DaskCluster", "ConfigMap", "Job"} <= kinds, kinds
    image = _documented("image")
    assert image.endswith(f":{jacntk.__version__}"), image
    readme = (CLUSTER / "README.md").read_text()

    (cluster,) = [d for d in docs if d["kind"] == "DaskCluster"]
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1"
    worker = cluster["spec"]["worker"]["spec"]["containers"][0]
    scheduler = cluster["spec"]["scheduler"]["spec"]["containers"][0]
    (job,) = [d for d in docs if d["kind"] == "Job"]
    client = job["spec"]["template"]["spec"]["containers"][0]
    for container in (worker, scheduler, client):
        assert container["image"] == image, container["name"]

    # The commands are the documented ones, and the README shows them verbatim (besides the
    # marker comment).
    worker_cmd = " ".join(worker["args"])
    assert worker_cmd == _documented("worker-command")
    client_cmd = " ".join(client["command"] + client["args"])
    assert client_cmd == _documented("job-command")
    for cmd in (worker_cmd, client_cmd):
        assert readme.count(cmd) >= 2, cmd

    # The config mounted into every pod is cluster/dask-config.yaml, byte for byte.
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert config_map["metadata"]["name"] == _documented("config-map")
    text = config_map["data"]["dask-config.yaml"]
    assert text == (CLUSTER / "dask-config.yaml").read_text()
    assert yaml.safe_load(text) == yaml.safe_load((CLUSTER / "dask-config.yaml").read_text())
    for pod_spec in (
        cluster["spec"]["worker"]["spec"],
        cluster["spec"]["scheduler"]["spec"],
        job["spec"]["template"]["spec"],
    ):
        container = pod_spec["containers"][0]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod_spec["volumes"]}
        assert volumes["dask-config"]["configMap"]["name"] == config_map["metadata"]["name"]
        assert env["DASK_CONFIG"] == f"{mounts['dask-config']}/dask-config.yaml"
        assert "store" in mounts, "every pod must mount the shared store volume"

    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"docker build -t {image} -f cluster/Dockerfile ." in readme
    assert "dask-config.yaml" in dockerfile
