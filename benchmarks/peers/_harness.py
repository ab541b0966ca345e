"""The harness of the peer benchmark: worker processes, alternating timed requests, medians,
the machine-load stamp of a row, row keys and the JSON results store.

Both libraries get a fresh worker process per row (jacntk: ``bench_peers.py --serve``; peer:
``nt_worker.py`` under the peer's Python), each under the same address-space cap
(``prlimit --as``), so an out-of-memory worker dies alone and is recorded as such.  Workers speak
a line protocol: one JSON request per line on stdin, one ``@@ {json}`` reply line on stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent.parent
ENTRY = BENCHMARKS / "bench_peers.py"
PEER_DIR = BENCHMARKS / "peers"
PEER_PYTHON = PEER_DIR / ".venv" / "bin" / "python"
PEER_WORKER = PEER_DIR / "nt_worker.py"
RESULTS_JSON = PEER_DIR / "results.json"
PLOT = BENCHMARKS / "peers_scaling.png"

#: default address-space cap of a worker (GiB); rows run under another cap say so in their key
MEM_LIMIT_GIB = 12.0


class WorkerError(RuntimeError):
    """A worker died, timed out or reported an error."""


class Worker:
    """A long-lived worker subprocess speaking the ``@@ json`` line protocol.

    Parameters
    ----------
    name : str
        ``"jacntk"`` or ``"neural-tangents"`` (for messages).
    cmd : list of str
        The command; it is run under ``prlimit --as=mem_limit`` when ``mem_limit`` is given.
    mem_limit : int or None
        Address-space cap in bytes.
    timeout : float
        Seconds allowed for the start and for each request.
    """

    def __init__(self, name: str, cmd: list[str], mem_limit: int | None, timeout: float, env=None):
        self.name = name
        self.timeout = timeout
        if mem_limit:
            cmd = ["prlimit", f"--as={int(mem_limit)}", "--"] + cmd
        env = {**os.environ, **(env or {})}
        for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env.setdefault(var, "2")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
        )
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.hello = self._reply()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("@@ "):
                self._lines.put(line[3:])
        self._lines.put(None)

    def _stderr_tail(self, n: int = 600) -> str:
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()
        lines = [s for s in text.splitlines() if not s.startswith(("W0000", "I0000", "WARNING"))]
        return " | ".join(lines)[-n:]

    def _reply(self) -> dict:
        try:
            line = self._lines.get(timeout=self.timeout)
        except queue.Empty:
            self.close()
            raise WorkerError(f"{self.name}: no reply within {self.timeout:.0f} s") from None
        if line is None:
            rc = self.proc.wait(timeout=30)
            raise WorkerError(f"{self.name} worker exited (code {rc}): {self._stderr_tail()}")
        reply = json.loads(line)
        if "error" in reply:
            raise WorkerError(f"{self.name}: {reply['error']}")
        return reply

    def call(self, request: dict) -> dict:
        """Send one request and wait for its reply (raises WorkerError)."""
        if self.proc.poll() is not None:
            raise WorkerError(f"{self.name} worker is not running")
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


def start_workers(args, dtype: str, peer: bool) -> dict:
    """Fresh jacntk (and peer) workers for one row (fresh, so peak memory is per row)."""
    cap = int(args.mem_limit_gib * 2**30) if args.mem_limit_gib else None
    workers = {}
    jac_cmd = [sys.executable, str(ENTRY), "--serve"]
    env = {}
    if args.jacntk_blas_threads:
        env["OPENBLAS_NUM_THREADS"] = str(args.jacntk_blas_threads)
    workers["jacntk"] = Worker("jacntk", jac_cmd, cap, args.timeout, env)
    if peer:
        peer_cmd = [str(args.peer_python), str(PEER_WORKER), "--dtype", dtype]
        try:
            workers["peer"] = Worker("neural-tangents", peer_cmd, cap, args.timeout)
        except WorkerError:
            workers["jacntk"].close()
            raise
    return workers


@contextlib.contextmanager
def row_workers(args, dtype: str, rec: dict) -> Iterator[dict | None]:
    """``start_workers`` for the row ``rec`` (the peer unless ``--no-peer``), closed on leaving.

    A worker that fails to start (dies on import under the cap, times out) is recorded as
    ``rec["jacntk"] = {"error": ...}`` and ``None`` is yielded instead of the workers.
    """
    try:
        workers = start_workers(args, dtype, not args.no_peer)
    except WorkerError as exc:
        rec["jacntk"] = {"error": str(exc)}
        yield None
        return
    try:
        yield workers
    finally:
        for w in workers.values():
            w.close()


def alternate(workers: dict, requests: dict, repeats: int) -> dict:
    """Send ``requests[lib]`` to each worker in alternation, ``1 + repeats`` times; the first
    call is the warm-up (saving outputs).  Returns per library the median of each timing, the
    peak memory, or the error that stopped it."""
    out = {lib: {"times": []} for lib in workers}
    for rep in range(1 + repeats):
        for lib, worker in workers.items():
            if "error" in out[lib]:
                continue
            req = dict(requests[lib])
            if rep > 0:
                req["out"] = None
            try:
                reply = worker.call(req)
            except WorkerError as exc:
                out[lib]["error"] = str(exc)
                worker.close()
                continue
            out[lib]["peak_rss_mib"] = reply["peak_rss_mib"]
            extra = {k: v for k, v in reply.items() if k not in ("seconds", "peak_rss_mib")}
            out[lib].update(extra)
            out[lib]["import_rss_mib"] = worker.hello.get("rss_mib")
            out[lib]["rss_method"] = worker.hello.get("rss_method", "ru_maxrss")
            if rep > 0 or repeats == 0:
                out[lib]["times"].append(reply["seconds"])
    for res in out.values():
        times = res.pop("times")
        if times:
            res["seconds"] = {k: statistics.median(t[k] for t in times) for k in times[0]}
            res["repeats"] = len(times) if repeats > 0 else 0  # 0: the cold warm-up run only
    return out


# --------------------------------------------------------------------------------------------
# Records: metadata, keys, the JSON store


def machine_state() -> dict:
    """The 1-, 5- and 15-minute load averages and the time of day (the machine is shared)."""
    return {"load": list(os.getloadavg()), "date": time.strftime("%H:%M")}


def run_stamp() -> dict:
    """The stamp of one benchmark run, stored in each of its records: the day (UTC), the time
    it started and the git commit of the working tree (``+local`` when ``jacntk/`` or
    ``benchmarks/`` have uncommitted changes), so rows of different runs can be told apart."""
    root = BENCHMARKS.parent

    def git(*cmd: str) -> str:
        try:
            out = subprocess.run(
                ["git", *cmd], capture_output=True, text=True, cwd=root, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "?"
    if git("status", "--porcelain", "--", "jacntk", "benchmarks"):
        commit += "+local"
    return {"day": time.strftime("%Y-%m-%d", time.gmtime()), "start": time.strftime("%H:%M"),
            "commit": commit}  # fmt: skip


def new_record(task: str, **key) -> dict:
    """A row's record: its task, its key fields (act, d, N, dtype, ...) and ``machine_state``."""
    return {"task": task, **key, **machine_state()}


def row_key(rec: dict) -> str:
    """The key of a record in the results store: ``task|act|d|N|dtype`` and, where they differ
    from the defaults, ``|finite-t``, ``|cap<GiB>`` and ``|<operator>``."""
    key = "|".join(str(rec[k]) for k in ("task", "act", "d", "N", "dtype"))
    if "times" in rec and not any(np.isinf(rec["times"])):
        key += "|finite-t"
    if rec.get("mem_limit_gib", MEM_LIMIT_GIB) != MEM_LIMIT_GIB:  # the default keeps old keys
        key += f"|cap{rec['mem_limit_gib']:g}"
    if rec.get("operator", "auto") != "auto":
        key += f"|{rec['operator']}"
    return key


def load_store(store: Path) -> tuple[dict, dict, str]:
    """The records of the JSON results store (by row key), its versions and its not-run reason
    (``{}``, ``{}``, ``""`` when it does not exist)."""
    records = json.loads(store.read_text()) if store.exists() else {}
    versions = records.pop("_versions", {})
    not_run = records.pop("_not_run", "")
    return records, versions, not_run


def save_record(store: Path, rec: dict, versions: dict) -> tuple[dict, dict]:
    """Add ``rec`` to the JSON results store under a file lock, merging with what other runs
    wrote meanwhile; returns the merged records and versions."""
    import fcntl

    with open(store.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records, stored_versions, not_run = load_store(store)
        merged_versions = {**stored_versions, **versions}
        records[row_key(rec)] = rec
        body = {"_versions": merged_versions, "_not_run": not_run, **records}
        store.write_text(json.dumps(body, indent=1))
    return records, merged_versions


def peer_versions(peer_python: Path) -> str:
    """``neural-tangents X, jax Y, jaxlib Z`` as installed in the peer environment."""
    out = subprocess.run(
        [
            str(peer_python),
            "-c",
            "import importlib.metadata as m; print(', '.join("
            "f'{p} {m.version(p)}' for p in ('neural-tangents', 'jax', 'jaxlib')))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.stdout.strip() or "neural-tangents (version unknown)"
