"""Separate "hosts": the scheduler, two workers and the client each in their own Linux network
namespace, joined by veth pairs to a bridge in a fifth namespace (a virtual switch), with
addresses 10.213.0.0/24 that exist only inside those namespaces. They assemble one Jacobian Gram
together with the commands of cluster/README.md section (a).

Needs root (CAP_NET_ADMIN) and iproute2; skipped with the reason elsewhere. Every namespace and
process is removed by the fixture's finalizer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest
from test_cluster_scripts import REPO, assert_store_equals_kernel, make_points, run_jacntk

from benchmarks.cgroups import peak_mib

SUBNET = "10.213.0"
HOSTS = {"sched": 1, "w1": 2, "w2": 3, "client": 4}  # namespace role -> last address byte
PORT = 8786


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out


def _why_no_netns() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces and veth pairs needs root (CAP_NET_ADMIN)"
    probe = f"jacntk-probe-{uuid.uuid4().hex[:8]}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace here: {made.stderr.strip()}"
    try:
        pair = ("vprobe0", "type", "veth", "peer", "name", "vprobe1")
        veth = _ip("-n", probe, "link", "add", *pair, check=False)
        if veth.returncode != 0:
            return f"cannot create veth pairs here: {veth.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


_REASON = _why_no_netns()
pytestmark = [pytest.mark.cluster, pytest.mark.skipif(_REASON is not None, reason=str(_REASON))]


def _netns_exec(ns: str) -> tuple[str, ...]:
    return ("ip", "netns", "exec", ns)


def _address(role: str) -> str:
    return f"{SUBNET}.{HOSTS[role]}"


@pytest.fixture
def hosts():
    """``{role: namespace}`` for sched, w1, w2 and client, on one bridged /24; torn down after."""
    tag = uuid.uuid4().hex[:6]
    switch = f"jacntk-{tag}-switch"
    names = {role: f"jacntk-{tag}-{role}" for role in HOSTS}
    created = []
    try:
        for ns in (switch, *names.values()):
            _ip("netns", "add", ns)
            created.append(ns)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for role, ns in names.items():
            port = f"p-{role}"  # the switch port; its peer is eth0 inside the host namespace
            veth = (port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", switch, "link", "add", *veth)
            _ip("-n", switch, "link", "set", port, "master", "br0")
            _ip("-n", switch, "link", "set", port, "up")
            _ip("-n", ns, "addr", "add", f"{_address(role)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield names
    finally:
        for ns in reversed(created):  # deleting a namespace removes its veth ends too
            _ip("netns", "del", ns, check=False)


@pytest.fixture
def processes():
    """``start(args, log_path, env=None)``: a long-running process in its own process group,
    output to ``log_path``; every one is stopped (TERM, then KILL) afterwards."""
    started: list[tuple[subprocess.Popen, object]] = []

    def start(args, log_path, env=None):
        log = open(log_path, "w")  # noqa: SIM115 - closed in the finalizer
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
        started.append((proc, log))
        return proc

    try:
        yield start
    finally:
        for proc, _ in reversed(started):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, log in reversed(started):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            log.close()


def _wait_for_workers(client_ns: str, address: str, n: int, timeout: float) -> dict:
    """Inside the client namespace: wait for ``n`` workers; return the scheduler's worker info."""
    code = (
        "import json, sys\n"
        "from distributed import Client\n"
        "with Client(sys.argv[1], timeout='20s') as c:\n"
        "    c.wait_for_workers(int(sys.argv[2]), timeout=float(sys.argv[3]))\n"
        "    info = c.scheduler_info()['workers']\n"
        "    tasks = c.run(lambda dask_worker: dask_worker.state.transition_counter)\n"
        "    print(json.dumps({a: dict(host=w['host'], transitions=tasks[a])"
        " for a, w in info.items()}))\n"
    )
    out = subprocess.run(
        [*_netns_exec(client_ns), sys.executable, "-c", code, address, str(n), str(timeout)],
        capture_output=True,
        text=True,
        timeout=timeout + 60,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _start_scheduler(hosts, processes, tmp_path):
    """``dask scheduler`` in the "sched" namespace; returns ``(log folder, its address)``."""
    logs = tmp_path / "logs"
    logs.mkdir()
    processes(
        [*_netns_exec(hosts["sched"]), sys.executable, "-m", "distributed.cli.dask_scheduler",
         "--host", _address("sched"), "--port", str(PORT), "--no-dashboard",
         "--dashboard-address", f"{_address('sched')}:0"],
        logs / "scheduler.log",
    )  # fmt: skip
    return logs, f"tcp://{_address('sched')}:{PORT}"


def test_workers_in_separate_network_namespaces_assemble_one_gram(hosts, processes, tmp_path):
    # Section (a) of cluster/README.md, one "machine" per namespace.
    logs, address = _start_scheduler(hosts, processes, tmp_path)
    worker_env = {
        "NUMBA_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "DASK_CONFIG": str(REPO / "cluster" / "dask-config.yaml"),
    }
    for role in ("w1", "w2"):
        processes(
            [*_netns_exec(hosts[role]), sys.executable, "-m", "distributed.cli.dask_worker",
             address, "--host", _address(role), "--nthreads", "1", "--name", role,
             "--no-dashboard", "--dashboard-address", f"{_address(role)}:0",
             "--death-timeout", "60"],
            logs / f"{role}.log",
            env=worker_env,
        )  # fmt: skip

    # Separate hosts indeed: each namespace has only lo and its own eth0 address, and the
    # test's own network stack has no address in the subnet (no traffic leaves the namespaces).
    for role, ns in hosts.items():
        addrs = _ip("-n", ns, "-o", "-4", "addr", "show").stdout.split()
        assert sorted(a for a in addrs if "/" in a) == sorted(
            ["127.0.0.1/8", f"{_address(role)}/24"]
        )
    assert f"{SUBNET}." not in _ip("-o", "-4", "addr", "show").stdout

    before = _wait_for_workers(hosts["client"], address, 2, timeout=90)
    assert sorted(w["host"] for w in before.values()) == [_address("w1"), _address("w2")]

    X = make_points(tmp_path / "X.npy", n=24, d=3)
    store = tmp_path / "gram.zarr"  # the "shared file system": all namespaces see tmp_path
    t0 = time.monotonic()
    out = run_jacntk(
        "assemble", tmp_path / "X.npy", "--out", store, "--jacobian", "--tile", "8",
        "--scheduler", address, "--json",
        prefix=_netns_exec(hosts["client"]), timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:] + _tail(logs)
    report = json.loads(out.stdout)
    assert report["workers"] == 2 and report["computed"] == 6, report
    assert_store_equals_kernel(store, X, jacobian=True)

    after = _wait_for_workers(hosts["client"], address, 2, timeout=30)
    worked = {after[a]["host"] for a in after if after[a]["transitions"] > before[a]["transitions"]}
    assert worked == {_address("w1"), _address("w2")}, (before, after, time.monotonic() - t0)


def _tail(logs) -> str:
    return "".join(f"\n--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(logs.iterdir()))


def test_a_solve_on_memory_capped_hosts_keeps_the_gram_in_the_workers(
    hosts, processes, memory_cgroup, tmp_path
):
    """Issue 12: a scheduler and two workers on separate "hosts", each worker capped (memory
    cgroup and its own Dask memory limit) below the size of the stored Gram, and the client
    (`jacntk solve --scheduler`) capped below it too: the solve holds the Gram in the workers,
    completes, and equals the single-machine prediction to 1e-8."""
    import numpy as np

    import jacntk

    n, tile, cap = 31_000, 2_000, 1700 * 2**20
    rng = np.random.default_rng(3)
    X = rng.standard_normal((n, 3)) / np.sqrt(3)
    np.save(tmp_path / "y.npy", np.sin(2 * X[:, 0]) + X[:, 1] * X[:, 2])
    np.save(tmp_path / "Xt.npy", X[:40] + 0.01)
    store = tmp_path / "gram.zarr"
    arch = jacntk.MLP(2, "erf")
    report = jacntk.assemble(arch, X, store, tile=tile, dtype="float32", progress=False)
    assert report.complete
    stored = sum(f.stat().st_size for f in (store / "K").rglob("*") if f.is_file())
    assert stored > cap, f"the stored Gram ({stored / 2**20:.0f} MiB) must exceed the caps"

    logs, address = _start_scheduler(hosts, processes, tmp_path)
    env = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "DASK_CONFIG": str(REPO / "cluster" / "dask-config.yaml")}  # fmt: skip
    groups = {}
    for role in ("w1", "w2"):
        groups[role] = memory_cgroup(cap)
        processes(
            [*groups[role], *_netns_exec(hosts[role]), sys.executable, "-m",
             "distributed.cli.dask_worker", address, "--host", _address(role), "--nthreads",
             "1", "--name", role, "--memory-limit", str(cap), "--no-dashboard",
             "--dashboard-address", f"{_address(role)}:0", "--death-timeout", "60"],
            logs / f"{role}.log",
            env=env,
        )  # fmt: skip
    _wait_for_workers(hosts["client"], address, 2, timeout=90)

    # nsenter joins only the client's network namespace: `ip netns exec` also mounts a fresh
    # /sys, which hides the cgroup file system, so the capped client could not see its cap
    client_group = memory_cgroup(cap)
    enter = ("nsenter", f"--net=/run/netns/{hosts['client']}")
    out = run_jacntk(
        "solve", store, "--targets", tmp_path / "y.npy", "--test", tmp_path / "Xt.npy",
        "--time", "30", "--out", tmp_path / "out.npz", "--scheduler", address, "--quiet",
        prefix=(*client_group, *enter), timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, f"rc {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    assert "resident in the memory of 2 workers" in out.stderr, out.stderr[-2000:]
    peaks = {role: peak_mib(g) for role, g in {**groups, "client": client_group}.items()}
    assert all(p < cap / 2**20 for p in peaks.values()), peaks

    ref = jacntk.predict(
        None, jacntk.GramStore.open(store), np.load(tmp_path / "y.npy"),
        np.load(tmp_path / "Xt.npy"), times=[30.0], gradients=False,
    )  # fmt: skip
    with np.load(tmp_path / "out.npz") as got:
        values = got["values"]
    err = np.linalg.norm(values - ref.values) / np.linalg.norm(ref.values)
    assert err < 1e-8, (err, peaks)
