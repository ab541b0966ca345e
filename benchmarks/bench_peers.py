"""jacntk side by side with its peers: neural-tangents (JAX) and SciPy, same inputs, same machine.

One command runs every row; the peer runs in its own environment (``benchmarks/peers/setup.sh``)::

    bash benchmarks/peers/setup.sh                   # once: benchmarks/peers/.venv (~3 GB)
    .venv/bin/python benchmarks/bench_peers.py       # all rows -> RESULTS.md "peers" + PNG
    .venv/bin/python benchmarks/bench_peers.py --task scalar --sizes 2000 5000 --dims 10

How a row is run: both libraries get a fresh worker process (jacntk: this script with
``--serve``; peer: ``benchmarks/peers/nt_worker.py`` under the peer's Python), each under the same
address-space cap (``prlimit --as``), so an out-of-memory peer dies alone and is recorded as such.
Inputs and outputs are exchanged as ``.npy`` files in a temporary directory.  The harness sends the
same request to the two workers *in alternation*, ``1 + repeats`` times (the first is a warm-up
whose outputs are saved and compared; it also absorbs JIT compilation), and records the median
time of the rest, the peak resident memory of each worker (``ru_maxrss``, which includes the
libraries' import footprint, reported separately) and the machine's load average.

Rows (issue 7):

* ``scalar``: NNGP and NTK Grams, depth 3, erf and relu, N = 2,000 ... 20,000, d = 10 (Gaussian)
  and 784 (Fashion-MNIST pixels / 255), float64 and float32.  neural-tangents computes both
  kernels in one jitted ``kernel_fn(X, X, ("nngp", "ntk"))``; jacntk computes each with
  ``jacntk.kernel`` (time of NTK alone and of both are reported).  In float32 jacntk still
  computes in float64 (math.md §0.6) and returns float32; JAX runs in float32.
* ``jacobian``: the Jacobian-augmented NTK (erf), N = 200 / 1,000 / 2,000, d = 10 and 100.
  jacntk: ``kernel_fields`` (the structured representation, enough for every product) and, where
  the dense matrix fits under the cap, ``augment``.  neural-tangents has no such kernel: the
  (d+1) x (d+1) block of a pair is ``[[K, d_x' K], [d_x K, d_x d_x' K]]`` by ``jax.grad`` /
  ``jax.jacfwd`` of ``kernel_fn`` on that pair, vmapped over chunks of pairs; it is timed on a
  random sample of pairs and extrapolated to the N(N+1)/2 pairs of the symmetric Gram.
* ``dynamics``: predictions at 10 training times (NTK, lam = 0, mean predictor) with
  ``jacntk.predict`` vs ``neural_tangents.predict.gradient_descent_mse`` (kernel + ``eigh``).
  Learning-rate conventions coincide: neural-tangents evolves ``exp(-eta t K / N)`` for one
  output (it divides by ``y_train.size``); jacntk evolves ``exp(-c t Theta)`` with
  ``c = eta kappa^2 / N`` (math.md §0.4) and ``kappa^2 Theta = K``.  Same ``eta``, same ``t``.
* ``expm``: ``exp(-c t K) y`` at 10 times: jacntk's Lanczos vs ``scipy.sparse.linalg.
  expm_multiply`` on the same dense NTK Gram, both checked against ``eigh``, jacntk's tolerance
  set so its error is no larger than SciPy's.

Values: "max rel diff" is ``max |a - b| / max |b|`` over the compared entries (all of them, or
``--compare-rows`` evenly spaced rows of a large Gram, or the sampled Jacobian pairs).

Results accumulate in ``benchmarks/peers/results.json`` (one record per row, so sizes can be run
at different times) and are rendered into ``benchmarks/RESULTS.md`` (section ``peers``) and
``benchmarks/peers_scaling.png`` after each run.  ``--quick --no-peer`` runs tiny jacntk-only
rows and writes nothing unless ``--json`` is given (the smoke test uses it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run as a script: make ``benchmarks.results`` importable
    sys.path.insert(0, str(HERE.parent))

PEER_DIR = HERE / "peers"
PEER_PYTHON = PEER_DIR / ".venv" / "bin" / "python"
PEER_WORKER = PEER_DIR / "nt_worker.py"
RESULTS_JSON = PEER_DIR / "results.json"
PLOT = HERE / "peers_scaling.png"

DEPTH = 3
#: default address-space cap of a worker (GiB); rows run under another cap say so in their key
MEM_LIMIT_GIB = 12.0
TIMES = [0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, float("inf")]
FULL = {
    "scalar": {"sizes": [2000, 5000, 10000, 20000], "dims": [10, 784]},
    "jacobian": {"sizes": [200, 1000, 2000], "dims": [10, 100]},
    "dynamics": {"sizes": [2000, 10000, 20000], "dims": [784]},
    "expm": {"sizes": [2000, 5000], "dims": [784]},
}
QUICK = {
    "scalar": {"sizes": [60, 120], "dims": [10]},
    "jacobian": {"sizes": [20, 40], "dims": [4]},
    "dynamics": {"sizes": [60], "dims": [10]},
    "expm": {"sizes": [80], "dims": [10]},
}


# --------------------------------------------------------------------------------------------
# Inputs and comparisons (pure functions)


def points(n: int, d: int, seed: int = 0) -> np.ndarray:
    """The benchmark inputs (n, d): the first n Fashion-MNIST training images (pixels / 255) for
    d = 784, else standard normal points (seeded)."""
    if d == 784:
        from jacntk.data import fashion_mnist

        return fashion_mnist("train", n)[0]
    return np.random.default_rng(seed).standard_normal((n, d))


def targets(X: np.ndarray, seed: int = 1) -> np.ndarray:
    """Regression targets for the dynamics rows: a fixed smooth function of X plus noise."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(X.shape[1]) / np.sqrt(X.shape[1])
    return np.sin(X @ w) + 0.1 * rng.standard_normal(X.shape[0])


def compare_rows(n: int, max_rows: int) -> np.ndarray:
    """Indices of the rows of an (n, n) Gram that are saved and compared."""
    return np.unique(np.linspace(0, n - 1, min(n, max_rows)).astype(np.int64))


def sample_pairs(n: int, m: int, seed: int = 2) -> np.ndarray:
    """``m`` distinct pairs ``(i, j)``, ``i <= j``, of an n-point symmetric Gram (all of them
    when there are at most m), always including a few diagonal pairs ``(i, i)``."""
    total = n * (n + 1) // 2
    if total <= m:
        i, j = np.triu_indices(n)
        return np.stack([i, j], 1).astype(np.int64)
    rng = np.random.default_rng(seed)
    diag = rng.choice(n, size=min(n, max(1, m // 16)), replace=False)
    pairs = {(int(i), int(i)) for i in diag}
    while len(pairs) < m:
        i, j = sorted(int(v) for v in rng.integers(0, n, 2))
        pairs.add((i, j))
    return np.array(sorted(pairs), dtype=np.int64)


def max_rel_diff(a, b) -> float:
    """``max |a - b| / max |b|`` (b is the reference)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare arrays of shapes {a.shape} and {b.shape}")
    scale = np.abs(b).max()
    return float(np.abs(a - b).max() / scale) if scale > 0 else float(np.abs(a - b).max())


def relu_diagonal(arch: dict, q: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact NNGP and NTK of a ReLU MLP at x = x' (theta = 0): ``E[relu(g)^2] = v / 2`` and
    ``E[relu'(g)^2] = 1 / 2`` give ``S_{l+1} = omega S_l / 2 + sigma_b^2``,
    ``T_{l+1} = S_{l+1} + omega T_l / 2`` from ``S_1 = T_1 = omega q / d + sigma_b^2``
    (times ``kappa^2``).  A reference for the diagonal, where arccos(p / sqrt(q r)) is
    ill-conditioned when p is rounded."""
    omega, sb2 = arch["sigma_w"] ** 2, arch["sigma_b"] ** 2
    S = omega * np.asarray(q, dtype=np.float64) / d + sb2
    T = S.copy()
    for _ in range(arch["depth"]):
        S = 0.5 * omega * S + sb2
        T = S + 0.5 * omega * T
    return arch["kappa"] ** 2 * S, arch["kappa"] ** 2 * T


def pair_blocks(fields: np.ndarray, X: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """The (d+1) x (d+1) Jacobian-augmented blocks of ``pairs`` from jacntk's (8, n, n) fields,
    via ``jacntk.augment`` on the one-pair field slices: (m, d+1, d+1)."""
    from jacntk import augment

    out = np.empty((len(pairs), X.shape[1] + 1, X.shape[1] + 1))
    for k, (i, j) in enumerate(pairs):
        out[k] = augment(fields[:, i : i + 1, j : j + 1], X[i : i + 1], X[j : j + 1].copy())
    return out


# --------------------------------------------------------------------------------------------
# The jacntk worker (``--serve``): same protocol as benchmarks/peers/nt_worker.py


def _arch(spec: dict):
    from jacntk import MLP

    return MLP.from_dict(spec)


def serve_scalar(req: dict, cache: dict) -> dict:
    from jacntk import kernel

    arch = _arch(req["arch"])
    X = cache.setdefault(("x", req["x"]), np.load(req["x"]))
    dtype = X.dtype
    seconds, out = {}, {}
    for kind in ("nngp", "ntk"):
        t0 = time.perf_counter()
        K = kernel(arch, X, kind=kind).astype(dtype, copy=False)
        seconds[kind] = time.perf_counter() - t0
        if req.get("out"):
            rows = slice(None) if req.get("rows") is None else np.load(req["rows"])
            out[kind] = K[rows]
        del K
    seconds["nngp+ntk"] = seconds["nngp"] + seconds["ntk"]
    for kind, value in out.items():
        np.save(f"{req['out']}_{kind}.npy", value)
    return {"seconds": seconds}


def serve_jacobian(req: dict, cache: dict) -> dict:
    from jacntk import augment, kernel_fields

    arch = _arch(req["arch"])
    X = np.load(req["x"])
    seconds = {}
    t0 = time.perf_counter()
    fields = kernel_fields(arch, X, kind="ntk")
    seconds["fields"] = time.perf_counter() - t0
    dense = None
    if req.get("dense"):
        t0 = time.perf_counter()
        dense = augment(fields, X)
        seconds["fields+dense"] = seconds["fields"] + time.perf_counter() - t0
        # profile: the same formula written again into the (now mapped) result, without the
        # first-touch page faults of a fresh array
        from jacntk.kernels._blocks import _augment_into

        t0 = time.perf_counter()
        _augment_into(fields.data, X, X, dense.reshape(X.shape[0], -1, X.shape[0], X.shape[1] + 1))
        seconds["dense rewrite"] = time.perf_counter() - t0
    if req.get("out"):
        pairs = np.load(req["pairs"])
        if dense is not None:
            b = X.shape[1] + 1
            G = dense.reshape(X.shape[0], b, X.shape[0], b)
            blocks = G[pairs[:, 0], :, pairs[:, 1], :]
        else:
            blocks = pair_blocks(fields.data, X, pairs)
        np.save(req["out"], blocks)
    return {"seconds": seconds}


def serve_dynamics(req: dict, cache: dict) -> dict:
    import jacntk

    if hasattr(jacntk, "predict"):
        predict = jacntk.predict
    else:  # before the public re-export lands
        from jacntk.training import predict

    arch = _arch(req["arch"])
    X, y, Xt = (np.load(req[k]) for k in ("x", "y", "xt"))
    t0 = time.perf_counter()
    result = predict(
        arch,
        X,
        y,
        Xt,
        times=req["times"],
        kind="ntk",
        learning_rate=req["learning_rate"],
        gradients=False,
        operator=req.get("operator", "auto"),
    )
    values = np.asarray(result.values)
    seconds = {"total": time.perf_counter() - t0}
    if req.get("out"):
        np.save(req["out"], values)
    diag = {k: v if isinstance(v, (int, float, str)) else str(v)[:200]
            for k, v in result.diagnostics.items() if not k.endswith("_result")}  # fmt: skip
    return {"seconds": seconds, "diagnostics": diag}


def serve_profile(req: dict, cache: dict) -> dict:
    """Where ``jacntk.kernel`` spends its time: every function of ``jacntk.kernels._fields`` that
    ``compute_tile`` calls is wrapped by a timer for one NTK call (inclusive times; the names
    are looked up at run time, so the profile follows the module as it evolves)."""
    import inspect

    import jacntk.kernels._fields as fields
    from jacntk import kernel

    arch = _arch(req["arch"])
    X = np.load(req["x"])
    kernel(arch, X, kind="ntk")  # warm (compiled kernels cached)
    timings: dict[str, float] = {}
    originals = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0

        return wrapper

    for name, obj in vars(fields).items():
        own = getattr(obj, "__module__", None) == fields.__name__ or hasattr(obj, "py_func")
        if callable(obj) and own and not inspect.isclass(obj) and name != "kernel_fields":
            originals[name] = obj
    try:
        for name, obj in originals.items():
            setattr(fields, name, timed(name, obj))
        t0 = time.perf_counter()
        kernel(arch, X, kind="ntk")
        total = time.perf_counter() - t0
    finally:
        for name, obj in originals.items():
            setattr(fields, name, obj)
    timings.pop("compute_tile", None)
    return {"seconds": {"total": total}, "profile": sorted(timings.items(), key=lambda kv: -kv[1])}


SERVE_OPS = {
    "scalar": serve_scalar,
    "jacobian": serve_jacobian,
    "dynamics": serve_dynamics,
    "profile": serve_profile,
}


def serve() -> int:
    """The jacntk worker loop: JSON requests on stdin, ``@@ {json}`` replies on stdout."""
    import jacntk

    spec = importlib.util.spec_from_file_location("nt_worker", PEER_WORKER)
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)  # stdlib only at import: reuse its peak_rss_mib (VmHWM)
    rss = peer.peak_rss_mib

    hello = {"library": "jacntk", "version": jacntk.__version__, "rss_mib": rss()}
    hello["rss_method"] = "VmHWM"
    print("@@ " + json.dumps(hello), flush=True)
    cache: dict = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            reply = SERVE_OPS[req["op"]](req, cache)
        except MemoryError:
            reply = {"error": "MemoryError (address-space cap reached)"}
        except Exception as exc:  # reported to the harness, which records the failure
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        reply["peak_rss_mib"] = rss()
        print("@@ " + json.dumps(reply), flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# Worker processes


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
    jac_cmd = [sys.executable, str(Path(__file__).resolve()), "--serve"]
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
# Rows


def arch_dict(activation: str) -> dict:
    from jacntk import MLP

    return MLP(DEPTH, activation).to_dict()


def _record(task: str, **key) -> dict:
    return {"task": task, **key, "load": list(os.getloadavg()), "date": time.strftime("%H:%M")}


def run_scalar(args, tmp: Path, n: int, d: int, act: str, dtype: str) -> dict:
    X = points(n, d).astype(dtype)
    np.save(tmp / "x.npy", X)
    np.save(tmp / "rows.npy", compare_rows(n, args.compare_rows))
    base = {"op": "scalar", "x": str(tmp / "x.npy"), "arch": arch_dict(act)}
    base["rows"] = str(tmp / "rows.npy")
    rec = _record("scalar", act=act, d=d, N=n, dtype=dtype)
    if args.jacntk_blas_threads:
        rec["jacntk_blas_threads"] = args.jacntk_blas_threads
    requests = {
        "jacntk": {**base, "out": str(tmp / "jac")},
        "peer": {**base, "out": str(tmp / "nt")},
    }
    workers = start_workers(args, dtype, not args.no_peer)
    try:
        rec.update(alternate(workers, requests, args.repeats))
        if args.profile and "error" not in rec["jacntk"]:
            reply = workers["jacntk"].call({**base, "op": "profile"})
            rec["profile"] = {"total": reply["seconds"]["total"], "parts": reply["profile"]}
    except WorkerError as exc:
        rec["profile"] = {"error": str(exc)}
    finally:
        for w in workers.values():
            w.close()
    rec["compared_rows"] = int(len(compare_rows(n, args.compare_rows)))
    if "seconds" in rec.get("peer", {}) and "seconds" in rec["jacntk"]:
        rows = compare_rows(n, args.compare_rows)
        off = np.ones((len(rows), n), dtype=bool)
        off[np.arange(len(rows)), rows] = False
        rec["max_rel_diff"] = {}
        for kind in ("nngp", "ntk"):
            a, b = np.load(tmp / f"jac_{kind}.npy"), np.load(tmp / f"nt_{kind}.npy")
            rec["max_rel_diff"][kind] = max_rel_diff(a, b)
            rec["max_rel_diff"][kind + "_offdiag"] = max_rel_diff(a[off], b[off])
        if act == "relu":  # which library is right on the diagonal (see relu_diagonal)
            Xr = X[rows].astype(np.float64)
            nngp_diag, ntk_diag = relu_diagonal(base["arch"], (Xr**2).sum(1), d)
            exact = {"nngp": nngp_diag, "ntk": ntk_diag}
            rec["relu_diag_err"] = {
                lib: {
                    kind: max_rel_diff(
                        np.load(tmp / f"{prefix}_{kind}.npy")[np.arange(len(rows)), rows],
                        exact[kind],
                    )
                    for kind in ("nngp", "ntk")
                }
                for lib, prefix in (("jacntk", "jac"), ("peer", "nt"))
            }
    return rec


def run_jacobian(args, tmp: Path, n: int, d: int, act: str, dtype: str) -> dict:
    X = points(n, d, seed=3)
    np.save(tmp / "x.npy", X)
    total = n * (n + 1) // 2
    pairs = sample_pairs(n, args.jacobian_pairs)
    np.save(tmp / "pairs.npy", pairs)
    dense_gib = (n * (d + 1)) ** 2 * 8 / 2**30
    base = {"x": str(tmp / "x.npy"), "pairs": str(tmp / "pairs.npy"), "arch": arch_dict(act)}
    requests = {
        "jacntk": {**base, "op": "jacobian", "dense": dense_gib <= args.dense_max_gib},
        "peer": {**base, "op": "jacobian", "chunk": min(256, len(pairs))},
    }
    requests["jacntk"]["out"] = str(tmp / "jac_blocks.npy")
    requests["peer"]["out"] = str(tmp / "nt_blocks.npy")
    rec = _record("jacobian", act=act, d=d, N=n, dtype=dtype)
    rec.update(pairs_total=total, pairs_peer=int(len(pairs)), dense_gib=dense_gib)
    workers = start_workers(args, dtype, not args.no_peer)
    try:
        rec.update(alternate(workers, requests, args.repeats))
    finally:
        for w in workers.values():
            w.close()
    peer = rec.get("peer", {})
    if "seconds" in peer:
        peer["seconds"]["extrapolated"] = peer["seconds"]["pairs"] * total / len(pairs)
        if "error" not in rec["jacntk"]:
            jac = np.load(tmp / "jac_blocks.npy")
            rec["max_rel_diff"] = {"blocks": max_rel_diff(jac, np.load(tmp / "nt_blocks.npy"))}
    return rec


def run_dynamics(args, tmp: Path, n: int, d: int, act: str, dtype: str) -> dict:
    n_test = args.n_test
    X = points(n + n_test, d)
    Xtr, Xte = X[:n], X[n:]
    np.save(tmp / "x.npy", Xtr)
    np.save(tmp / "xt.npy", Xte)
    np.save(tmp / "y.npy", targets(Xtr))
    base = {key: str(tmp / f"{key}.npy") for key in ("x", "y", "xt")}
    base.update(op="dynamics", arch=arch_dict(act), times=args.times, learning_rate=1.0)
    requests = {"jacntk": {**base, "out": str(tmp / "jac_dyn.npy")}}
    requests["jacntk"]["operator"] = args.dynamics_operator
    requests["peer"] = {**base, "out": str(tmp / "nt_dyn.npy")}
    rec = _record("dynamics", act=act, d=d, N=n, dtype=dtype, n_test=n_test, times=args.times)
    rec["operator"] = args.dynamics_operator
    if args.jacntk_blas_threads:
        rec["jacntk_blas_threads"] = args.jacntk_blas_threads
    workers = start_workers(args, dtype, not args.no_peer)
    try:
        rec.update(alternate(workers, requests, args.dynamics_repeats))
    finally:
        for w in workers.values():
            w.close()
    if "seconds" in rec.get("peer", {}) and "seconds" in rec["jacntk"]:
        a, b = np.load(tmp / "jac_dyn.npy"), np.load(tmp / "nt_dyn.npy")
        rec["max_rel_diff"] = {"values": max_rel_diff(a, b)}
    return rec


TASKS = {"scalar": run_scalar, "jacobian": run_jacobian, "dynamics": run_dynamics}


def row_key(rec: dict) -> str:
    key = "|".join(str(rec[k]) for k in ("task", "act", "d", "N", "dtype"))
    if "times" in rec and not any(np.isinf(rec["times"])):
        key += "|finite-t"
    if rec.get("mem_limit_gib", MEM_LIMIT_GIB) != MEM_LIMIT_GIB:  # the default keeps old keys
        key += f"|cap{rec['mem_limit_gib']:g}"
    if rec.get("operator", "auto") != "auto":
        key += f"|{rec['operator']}"
    return key


def planned_rows(grid: dict, args) -> list[tuple]:
    """(task, N, d, act, dtype) for every row of the selected tasks."""
    rows = []
    for task in args.task:
        g = grid[task]
        sizes = args.sizes or g["sizes"]
        dims = args.dims or g["dims"]
        acts = args.acts or (["erf", "relu"] if task == "scalar" else ["erf"])
        dtypes = args.dtypes or (["float64", "float32"] if task == "scalar" else ["float64"])
        for d in dims:
            for act in acts:
                for dtype in dtypes:
                    for n in sizes:
                        rows.append((task, n, d, act, dtype))
    order = {task: k for k, task in enumerate(args.task)}
    return sorted(rows, key=lambda r: (order[r[0]], r[1]))  # small sizes first


# --------------------------------------------------------------------------------------------
# Report


def _s(rec: dict, lib: str, key: str) -> str:
    res = rec.get(lib)
    if res is None:
        return "not run"
    if "seconds" not in res:
        return "failed"
    value = res["seconds"].get(key)
    return "—" if value is None else f"{value:.3g}"


def _ratio(rec: dict, peer_key: str, jac_key: str) -> str:
    try:
        return f"{rec['peer']['seconds'][peer_key] / rec['jacntk']['seconds'][jac_key]:.1f}x"
    except (KeyError, TypeError, ZeroDivisionError):
        return "—"


def _mem(rec: dict, lib: str) -> str:
    res = rec.get(lib)
    if res is None or "peak_rss_mib" not in res:
        return "—"
    return f"{res['peak_rss_mib']:.0f}"


def _diff(rec: dict, key: str) -> str:
    diffs = rec.get("max_rel_diff", {})
    value, off = diffs.get(key), diffs.get(key + "_offdiag")
    if value is None:
        return "—"
    if off is not None and off < value / 10:
        return f"{value:.1e} (off-diag {off:.1e})"
    return f"{value:.1e}"


def _load(rec: dict) -> str:
    return f"{rec['load'][0]:.1f}"


def _solver_label(rec: dict) -> str:
    """'Lanczos 25 it, CG 2710 it' or 'Lanczos 25 it, Cholesky' from jacntk.predict's
    diagnostics."""
    import re

    diag = rec.get("jacntk", {}).get("diagnostics", {})
    parts = []
    for key, name in (("lanczos", "Lanczos"), ("cg", "CG")):
        found = re.search(r"(\d+) iterations", str(diag.get(key, "")))
        if found:
            parts.append(f"{name} {found.group(1)} it")
    if diag.get("solver") not in (None, "cg"):  # the direct solve at t = inf
        parts.append(str(diag["solver"]).split()[0].capitalize())
    return ", ".join(parts) or "—"


def _times_label(rec: dict) -> str:
    times = rec.get("times", TIMES)
    inf = any(np.isinf(times))
    return f"{len(times)} ({'incl. inf' if inf else 'finite only'})"


def _errors(records: list[dict]) -> list[str]:
    notes = []
    for rec in records:
        for lib in ("jacntk", "peer"):
            err = rec.get(lib, {}).get("error")
            if err:
                notes.append(f"- `{row_key(rec)}` {lib}: {err[:400]}")
    return notes


def missing_rows(records: list[dict]) -> dict[str, list[str]]:
    """Rows of the full grid (issue 7) absent from ``records``, by task."""
    done = {row_key(r) for r in records}
    grid_args = argparse.Namespace(task=list(FULL), sizes=None, dims=None, acts=None, dtypes=None)
    missing: dict[str, list[str]] = {}
    for task, n, d, act, dtype in planned_rows(FULL, grid_args):
        if "|".join(str(v) for v in (task, act, d, n, dtype)) not in done:
            missing.setdefault(task, []).append(f"{act} d={d} N={n} {dtype}")
    return missing


def _task_table(records: list[dict], columns: list[tuple]) -> str:
    """A Markdown table with one row per record; ``columns`` are ``(header, cell(record))``."""
    from benchmarks.results import table

    return table([h for h, _ in columns], [[cell(r) for _, cell in columns] for r in records])


MEMORY_COLUMNS = [
    (
        "memory cap GiB",
        lambda r: "{:g}".format(r.get("mem_limit_gib", MEM_LIMIT_GIB) or float("inf")),
    ),
    ("jacntk peak MiB", lambda r: _mem(r, "jacntk")),
    ("NT peak MiB", lambda r: _mem(r, "peer")),
]

SCALAR_COLUMNS = [
    ("act", lambda r: r["act"]),
    ("d", lambda r: r["d"]),
    ("dtype", lambda r: r["dtype"]),
    ("N", lambda r: r["N"]),
    ("jacntk NTK s", lambda r: _s(r, "jacntk", "ntk")),
    ("jacntk NNGP+NTK s", lambda r: _s(r, "jacntk", "nngp+ntk")),
    ("NT NNGP+NTK s", lambda r: _s(r, "peer", "nngp+ntk")),
    ("ratio NTK", lambda r: _ratio(r, "nngp+ntk", "ntk")),
    ("ratio both", lambda r: _ratio(r, "nngp+ntk", "nngp+ntk")),
    *MEMORY_COLUMNS,
    ("max rel diff NNGP", lambda r: _diff(r, "nngp")),
    ("max rel diff NTK", lambda r: _diff(r, "ntk")),
    ("load", _load),
]

DYNAMICS_COLUMNS = [
    ("d", lambda r: r["d"]),
    ("N", lambda r: r["N"]),
    ("n_test", lambda r: r["n_test"]),
    ("times", _times_label),
    ("jacntk operator, solver", lambda r: f"{r.get('operator', 'auto')}: {_solver_label(r)}"),
    ("jacntk total s", lambda r: _s(r, "jacntk", "total")),
    ("NT kernel s", lambda r: _s(r, "peer", "kernel")),
    ("NT eigh+predict s", lambda r: _s(r, "peer", "predict")),
    ("NT total s", lambda r: _s(r, "peer", "total")),
    ("ratio", lambda r: _ratio(r, "total", "total")),
    *MEMORY_COLUMNS,
    ("max rel diff", lambda r: _diff(r, "values")),
    ("load", _load),
]


def _jacobian_columns(args) -> list[tuple]:
    def dense(r):
        if r.get("dense_gib", 0) <= args.dense_max_gib:
            return _s(r, "jacntk", "fields+dense")
        return f"not formed ({r['dense_gib']:.0f} GiB)"

    return [
        ("d", lambda r: r["d"]),
        ("N", lambda r: r["N"]),
        ("jacntk fields s", lambda r: _s(r, "jacntk", "fields")),
        ("jacntk fields+dense s", dense),
        ("NT pairs timed", lambda r: f"{r['pairs_peer']} of {r['pairs_total']}"),
        ("NT timed s", lambda r: _s(r, "peer", "pairs")),
        ("NT all pairs s (extrap.)", lambda r: _s(r, "peer", "extrapolated")),
        ("ratio vs fields", lambda r: _ratio(r, "extrapolated", "fields")),
        ("ratio vs dense", lambda r: _ratio(r, "extrapolated", "fields+dense")),
        *MEMORY_COLUMNS,
        ("max rel diff", lambda r: _diff(r, "blocks")),
        ("load", _load),
    ]


def render(records: list[dict], versions: dict, args) -> str:
    """The Markdown body of the ``peers`` section."""

    lines = [
        "Command: `bash benchmarks/peers/setup.sh && .venv/bin/python benchmarks/bench_peers.py`"
        " (rows can be run separately; see the script's docstring).",
        "",
        f"Peer: {versions.get('peer', 'neural-tangents (not run)')}. Depth {DEPTH}, sigma_w = 1, "
        "sigma_b = 0, kappa = 1. Each library runs in its own fresh worker process per row, "
        "alternating, 1 warm-up + median of the repeats; address-space cap per worker "
        "(`prlimit --as`): the `memory cap GiB` column (12 GiB unless the row says otherwise; "
        "23 GiB is this whole 24 GiB machine less the harness); "
        "threads: NUMBA_NUM_THREADS = OMP_NUM_THREADS = 2, XLA default (all cores). "
        "Ratio = neural-tangents time / jacntk time. Peak MiB = the worker's peak RSS, including "
        "its imports (jacntk ~{:.0f} MiB, neural-tangents ~{:.0f} MiB after import: it loads "
        "TensorFlow). Max rel diff = max|a - b| / max|b| over the compared entries. `load` is "
        "the 1-minute load average when the row finished (the machine is shared; 2 cores).".format(
            versions.get("jacntk_rss", 0), versions.get("peer_rss", 0)
        ),
        "",
    ]
    loads = [r["load"][0] for r in records if "load" in r]
    if loads:
        lines += [
            f"**Machine load.** 1-minute load average {min(loads):.1f}–{max(loads):.1f} on "
            f"{os.cpu_count()} cores while these rows ran (median "
            f"{statistics.median(loads):.1f}; other jobs were running). Absolute times are "
            "inflated and noisy when the load exceeds the core count; the two libraries ran "
            "alternately under the same load, so the ratios are the numbers to read.",
            "",
        ]
    by_task: dict[str, list[dict]] = {}
    for rec in records:
        by_task.setdefault(rec["task"], []).append(rec)
    order = lambda r: (r["d"], r["act"], r["dtype"], r["N"])  # noqa: E731
    if "scalar" in by_task:
        lines += [
            "### Scalar NNGP + NTK Grams (N x N)",
            "",
            "neural-tangents computes NNGP and NTK in one call (its NTK alone costs the same); "
            "jacntk computes them one after the other, so `ratio NTK` compares NT's call with "
            "jacntk's NTK and `ratio both` with jacntk's NNGP + NTK. Values compared on "
            f"{args.compare_rows} evenly spaced rows (all columns) when N is larger. In float32, "
            "jacntk computes in float64 and returns float32; JAX computes in float32.",
            "",
            _task_table(sorted(by_task["scalar"], key=order), SCALAR_COLUMNS),
        ]
    blas1 = [r for r in records if r.get("jacntk_blas_threads")]
    if blas1:
        lines += [
            "Rows "
            + ", ".join(f"{r['task']} {r['act']} d={r['d']} N={r['N']}" for r in blas1)
            + " ran jacntk with OPENBLAS_NUM_THREADS=1 (`--jacntk-blas-threads 1`): with 2 "
            "OpenBLAS threads, numpy's `X @ X.T` (the SYRK path, scipy-openblas 0.3.31) "
            "segfaults for X of shape 20000 x 784 on this machine, reproduced outside jacntk "
            "(`X @ np.ascontiguousarray(X.T)` and 1 thread both work), and that product is "
            "jacntk's `_inner_products`, so its worker died with code -11.",
            "",
        ]
    diag = [r for r in by_task.get("scalar", []) if "relu_diag_err" in r]
    if diag:
        lines += [
            "ReLU diagonal (x = x') against its exact value (`relu_diagonal`: E[relu(g)^2] = "
            "v/2), max rel error NTK, jacntk / NT: "
            + "; ".join(
                f"d = {r['d']} N = {r['N']} {r['dtype']}: "
                f"{r['relu_diag_err']['jacntk']['ntk']:.1e} / "
                f"{r['relu_diag_err']['peer']['ntk']:.1e}"
                for r in sorted(diag, key=order)
            )
            + ". The NTK differences in the table sit on the diagonal, where neural-tangents "
            "evaluates arccos(p / sqrt(q r)) at a rounded 1 - eps (error ~ sqrt(eps)); jacntk "
            "sets p = q exactly there.",
            "",
        ]
    if "jacobian" in by_task:
        lines += [
            "### Jacobian-augmented NTK (erf), N(d+1) x N(d+1)",
            "",
            "jacntk: the eight fields (the structured representation every product uses) and "
            "the dense point-major matrix (`augment`) where it is formed. neural-tangents: the "
            "(d+1) x (d+1) block of each pair by `jax.grad`/`jax.jacfwd` of `kernel_fn`, vmapped "
            "and jitted over chunks of 256 pairs, timed on the sampled pairs and extrapolated "
            "linearly to the N(N+1)/2 pairs of the symmetric Gram (`NT all pairs s`). Values "
            "compared on the sampled blocks.",
            "",
            _task_table(sorted(by_task["jacobian"], key=order), _jacobian_columns(args)),
        ]
    if "dynamics" in by_task:
        lines += [
            "### Training dynamics: test predictions at 10 times (NTK, lam = 0, erf)",
            "",
            "Times: rows `incl. inf` use t = " + ", ".join(f"{t:g}" for t in TIMES) + "; rows "
            "`finite only` use t = 0.1, 0.3, ..., 1000, 3000 (`--times`). Learning rate 1. "
            "neural-tangents diagonalises the Gram once (`eigh`) for finite t and uses a "
            "Cholesky solve at t = inf; jacntk runs Lanczos for finite t (one Krylov basis for "
            "all times) and, at t = inf, a Cholesky solve of the in-memory Gram (CG in the rows "
            "measured before that change) (`jacntk operator, solver` column, from `predict`'s "
            "diagnostics; `auto` keeps the Gram in memory up to 4 GiB, `dense` always). Each "
            "worker runs under the address-space cap of its row (`prlimit --as`, column `memory "
            "cap GiB`); a cap of 23 GiB is this 24 GiB machine with room for the harness. "
            "Conventions coincide: neural-tangents' `gradient_descent_mse` evolves "
            "exp(-eta t K / N) for one output (it divides by `y_train.size`), jacntk "
            "exp(-c t Theta) with c = eta kappa^2 / N and kappa^2 Theta = K (math.md §0.4): "
            "same eta, same t. Both include computing the kernels.",
            "",
            _task_table(sorted(by_task["dynamics"], key=order), DYNAMICS_COLUMNS),
        ]
    if "expm" in by_task:
        lines += ["### Matrix-exponential actions vs SciPy", ""]
        lines += render_expm(by_task["expm"], args)
    lines += render_goals(by_task)
    lines += render_jacobian_profile(by_task.get("jacobian", []))
    profiled = [r for r in by_task.get("scalar", []) if "parts" in r.get("profile", {})]
    if profiled:
        lines += [
            "### Where jacntk's scalar NTK time goes",
            "",
            'One extra `jacntk.kernel(kind="ntk")` call per row with every function of '
            "`jacntk.kernels._fields` that it calls wrapped by a timer (inclusive seconds; numba "
            "kernels run on NUMBA_NUM_THREADS threads).",
            "",
        ]
        for r in sorted(profiled, key=order):
            parts = ", ".join(f"`{k}` {v:.3g}" for k, v in r["profile"]["parts"][:6])
            lines.append(
                f"- {r['act']}, d = {r['d']}, N = {r['N']}, {r['dtype']}: total "
                f"{r['profile']['total']:.3g} s: {parts} (load {_load(r)})"
            )
        lines.append("")
    old_rss = sorted(
        row_key(r)
        for r in records
        if any(
            "peak_rss_mib" in r.get(lib, {}) and r[lib].get("rss_method") != "VmHWM"
            for lib in ("jacntk", "peer")
        )
    )
    if old_rss:
        lines += [
            "Peak memory of rows measured before the switch to VmHWM (ru_maxrss, which also "
            "counts the harness's resident size at fork time, at most ~0.4 GiB here): "
            + ", ".join(f"`{k}`" for k in old_rss),
            "",
        ]
    cold = sorted(
        row_key(r)
        for r in records
        if any(r.get(lib, {}).get("repeats") == 0 for lib in ("jacntk", "peer"))
    )
    if cold:
        lines += [
            "Rows timed from a single cold run (`--repeats 0` / `--dynamics-repeats 0`, used "
            "for the largest sizes; the time includes JIT compilation or loading the compiled "
            "cache, about 1-2 s for either library): " + ", ".join(f"`{k}`" for k in cold),
            "",
        ]
    notes = _errors(records)
    if notes:
        lines += ["### Failures (recorded, not hidden)", ""] + notes + [""]
    missing = missing_rows(records)
    if missing:
        reason = getattr(args, "not_run", "") or "not run yet"
        lines += ["### Rows of the full grid not run", "", f"Reason: {reason}", ""]
        lines += [f"- {task}: " + ", ".join(keys) for task, keys in missing.items()] + [""]
    return "\n".join(lines)


def _speedup(rec: dict, peer_key: str, jac_key: str) -> float | None:
    try:
        return rec["peer"]["seconds"][peer_key] / rec["jacntk"]["seconds"][jac_key]
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def render_jacobian_profile(rows: list[dict]) -> list[str]:
    """Where the Jacobian-kernel time goes, per row: the fields' pair rate, the dense matrix's
    write rate, and the peer's pair rate (the profile behind a missed 20x goal)."""
    lines = []
    for r in sorted(rows, key=lambda r: (r["d"], r["N"])):
        try:
            js, ps = r["jacntk"]["seconds"], r["peer"]["seconds"]
        except (KeyError, TypeError):
            continue
        text = (
            f"- d = {r['d']}, N = {r['N']}: jacntk fields {r['pairs_total']} pairs in "
            f"{js['fields']:.3g} s ({r['pairs_total'] / js['fields']:.2g} pairs/s)"
        )
        if js.get("fields+dense") is not None:
            dense = js["fields+dense"] - js["fields"]
            gb = (r["N"] * (r["d"] + 1)) ** 2 * 8 / 1e9
            text += f"; `augment` wrote the {gb:.2g} GB dense matrix in {dense:.3g} s"
            text += f" ({gb / dense:.2g} GB/s)"
            if js.get("dense rewrite") is not None:
                text += (
                    f", of which the formula itself (rewriting the mapped result) "
                    f"{js['dense rewrite']:.3g} s: the rest is allocating and first touching "
                    "fresh pages"
                )
        text += (
            f"; neural-tangents {r['pairs_peer']} pairs in {ps['pairs']:.3g} s "
            f"({r['pairs_peer'] / ps['pairs']:.2g} pairs/s)."
        )
        lines.append(text)
    if not lines:
        return []
    return [
        "### Where the Jacobian-kernel time goes",
        "",
        "jacntk's dense route is the fields plus writing the N(d+1) x N(d+1) matrix, O(N^2 d^2) "
        "numbers; each line splits its time into the fields, the block formula's write into "
        "mapped memory, and the allocation and first touch of the fresh result, beside the "
        "peer's per-pair rate. At d = 10 the fields and the write each take about half; no "
        "kernel formula removes the write.",
        "",
        *lines,
        "",
    ]


def render_goals(by_task: dict[str, list[dict]]) -> list[str]:
    """Issue 7's targets, each marked met / MISSED / not measured from the recorded rows."""

    def verdict(values: list, ok) -> str:
        if not values:
            return "not measured"
        bad = sum(not ok(v) for v in values)
        return "met" if bad == 0 else f"**MISSED** in {bad} of {len(values)} rows"

    lines = ["### Goals (issue 7)", ""]
    scalar = [r for r in by_task.get("scalar", []) if r["N"] == 10000 and r["dtype"] == "float64"]
    sp = [(r["act"], r["d"], _speedup(r, "nngp+ntk", "ntk")) for r in scalar]
    sp = [x for x in sp if x[2] is not None]
    lines.append(
        "- jacntk >= 4x faster than neural-tangents on the scalar NTK at N = 10,000 (float64): "
        + verdict([x[2] for x in sp], lambda v: v >= 4)
        + ("" if not sp else " (" + ", ".join(f"{a} d={d}: {v:.1f}x" for a, d, v in sp) + ")")
    )
    f32 = [r for r in by_task.get("scalar", []) if r["N"] == 10000 and r["dtype"] == "float32"]
    sp32 = [(r["act"], r["d"], _speedup(r, "nngp+ntk", "ntk"), r) for r in f32]
    sp32 = [x for x in sp32 if x[2] is not None]
    if sp32:
        f64 = {(r["act"], r["d"]): r for r in scalar}

        def where(a, d, r32):
            try:
                t64, t32 = f64[a, d]["jacntk"]["seconds"]["ntk"], r32["jacntk"]["seconds"]["ntk"]
                peer64 = f64[a, d]["peer"]["seconds"]["nngp+ntk"]
                peer32 = r32["peer"]["seconds"]["nngp+ntk"]
            except (KeyError, TypeError):
                return ""
            return (
                f" (jacntk {t64:.2f} s in float64, {t32:.2f} s with the rounding to float32; "
                f"neural-tangents {peer64:.2f} s in float64, {peer32:.2f} s in float32)"
            )

        lines.append(
            "- the same in float32: "
            + verdict([x[2] for x in sp32], lambda v: v >= 4)
            + ". Where the time goes: jacntk computes in float64 and rounds the result "
            "(math.md §0.6), so its float32 time is about its float64 time (plus a copy), while "
            "JAX halves its arithmetic and memory traffic in float32: "
            + "; ".join(f"{a} d={d}: {v:.1f}x{where(a, d, r)}" for a, d, v, r in sp32)
        )
    jac = by_task.get("jacobian", [])
    js = [(r["d"], r["N"], _speedup(r, "extrapolated", "fields")) for r in jac]
    js = [x for x in js if x[2] is not None]
    jd = [(r["d"], r["N"], _speedup(r, "extrapolated", "fields+dense")) for r in jac]
    jd = [x for x in jd if x[2] is not None]
    lines.append(
        "- >= 20x on the Jacobian-augmented kernel, structured fields: "
        + verdict([x[2] for x in js], lambda v: v >= 20)
        + ("" if not js else " (" + ", ".join(f"d={d} N={n}: {v:.1f}x" for d, n, v in js) + ")")
    )
    lines.append(
        "- >= 20x on the Jacobian-augmented kernel, dense matrix: "
        + verdict([x[2] for x in jd], lambda v: v >= 20)
        + ("" if not jd else " (" + ", ".join(f"d={d} N={n}: {v:.1f}x" for d, n, v in jd) + ")")
    )
    f64 = [r for r in by_task.get("scalar", []) if r["dtype"] == "float64" and "max_rel_diff" in r]
    worst = [max(r["max_rel_diff"]["nngp_offdiag"], r["max_rel_diff"]["ntk_offdiag"]) for r in f64]
    lines.append(
        "- scalar values agree to <= 1e-10 in float64 (off the ReLU diagonal, see above): "
        + verdict(worst, lambda v: v <= 1e-10)
        + (f" (worst {max(worst):.1e})" if worst else "")
    )
    f32 = [r for r in by_task.get("scalar", []) if r["dtype"] == "float32" and "max_rel_diff" in r]
    worst = [max(r["max_rel_diff"]["nngp_offdiag"], r["max_rel_diff"]["ntk_offdiag"]) for r in f32]
    lines.append(
        "- scalar values agree to <= 1e-5 in float32 (off the ReLU diagonal): "
        + verdict(worst, lambda v: v <= 1e-5)
        + (f" (worst {max(worst):.1e})" if worst else "")
    )
    blocks = [r["max_rel_diff"]["blocks"] for r in jac if "max_rel_diff" in r]
    lines.append(
        "- Jacobian blocks agree to <= 1e-10 (float64): "
        + verdict(blocks, lambda v: v <= 1e-10)
        + (f" (worst {max(blocks):.1e})" if blocks else "")
    )
    dyn = [r["max_rel_diff"]["values"] for r in by_task.get("dynamics", []) if "max_rel_diff" in r]
    lines.append(
        "- dynamics predictions agree to <= 1e-6: "
        + verdict(dyn, lambda v: v <= 1e-6)
        + (f" (worst {max(dyn):.1e})" if dyn else "")
    )
    return lines + [""]


def plot(records: list[dict], path: Path, cap_gib: float | None = None) -> None:
    """Time and peak memory against N for both libraries, one PNG: scalar NTK (erf, float64)
    on the left, Jacobian-augmented NTK on the right.  A neural-tangents row that failed (out
    of memory under the cap) is drawn as an x at the cap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    series = {
        "scalar": [("jacntk", "ntk", "o-", "jacntk NTK"), ("peer", "nngp+ntk", "s--", "NT")],
        "jacobian": [
            ("jacntk", "fields", "o-", "jacntk fields"),
            ("jacntk", "fields+dense", "^:", "jacntk fields+dense"),
            ("peer", "extrapolated", "s--", "NT autodiff (extrap.)"),
        ],
    }
    for col, task in enumerate(("scalar", "jacobian")):
        recs = [r for r in records if r["task"] == task and r["dtype"] == "float64"]
        recs = [r for r in recs if r["act"] == "erf"]
        for k, d in enumerate(sorted({r["d"] for r in recs})):
            rs = sorted((r for r in recs if r["d"] == d), key=lambda r: r["N"])
            color = colors[k % len(colors)]
            for lib, key, style, name in series[task]:
                res = [(r["N"], r.get(lib, {})) for r in rs]
                pts = [(n, x["seconds"][key]) for n, x in res if key in x.get("seconds", {})]
                if pts:
                    axes[0, col].loglog(*np.transpose(pts), style, color=color,
                                        label=f"{name} d={d}")  # fmt: skip
                if key in ("ntk", "fields", "nngp+ntk", "extrapolated"):
                    mem = [(n, x["peak_rss_mib"]) for n, x in res if "peak_rss_mib" in x]
                    if mem:
                        axes[1, col].loglog(*np.transpose(mem), style, color=color,
                                            label=f"{name.split(' ')[0]} d={d}")  # fmt: skip
                failed = [n for n, x in res if "error" in x]
                if failed and cap_gib:
                    for ax, y in ((axes[1, col], cap_gib * 1024),):
                        ax.loglog(failed, [y] * len(failed), "x", color=color, markersize=10,
                                  label=f"{name.split(' ')[0]} d={d} failed (cap)")  # fmt: skip
            if task == "jacobian" and rs:
                ns = np.array([r["N"] for r in rs], dtype=float)
                axes[1, col].loglog(ns, (ns * (d + 1)) ** 2 * 8 / 2**20, ":", color=color,
                                    alpha=0.5, label=f"dense matrix size d={d}")  # fmt: skip
    axes[0, 0].set_title("Scalar NNGP+NTK Gram (erf, float64): time")
    axes[1, 0].set_title("Scalar: peak RSS of each worker")
    axes[0, 1].set_title("Jacobian-augmented NTK (erf, float64): time")
    axes[1, 1].set_title("Jacobian: peak RSS (NT: sampled pairs only)")
    for ax in axes.ravel():
        ax.set_xlabel("N")
        ax.grid(True, which="both", alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=7)
    for ax in axes[0]:
        ax.set_ylabel("seconds")
    for ax in axes[1]:
        ax.set_ylabel("MiB")
    fig.suptitle("jacntk vs neural-tangents (NT): same inputs, same machine")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="jacntk vs neural-tangents and SciPy on identical inputs (issue 7)."
    )
    parser.add_argument("--task", nargs="+", choices=list(TASKS) + ["expm"], default=None)
    parser.add_argument("--sizes", nargs="+", type=int, help="override N for the chosen tasks")
    parser.add_argument("--dims", nargs="+", type=int, help="override d for the chosen tasks")
    parser.add_argument("--acts", nargs="+", choices=("erf", "relu"))
    parser.add_argument("--dtypes", nargs="+", choices=("float64", "float32"))
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats after the warm-up")
    parser.add_argument("--dynamics-repeats", type=int, default=1)
    parser.add_argument(
        "--dynamics-operator",
        choices=("auto", "dense", "structured"),
        default="auto",
        help="jacntk.predict's operator for the dynamics rows (auto: dense up to 4 GiB)",
    )
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument(
        "--times", nargs="+", type=float, default=TIMES, help="dynamics times (inf allowed)"
    )
    parser.add_argument(
        "--jacntk-blas-threads",
        type=int,
        help="OPENBLAS_NUM_THREADS of the jacntk worker (1 avoids the threaded-SYRK crash of "
        "scipy-openblas 0.3.31 on 20000 x 784 inputs, see RESULTS.md)",
    )
    parser.add_argument("--compare-rows", type=int, default=500)
    parser.add_argument("--jacobian-pairs", type=int, default=4096)
    parser.add_argument("--dense-max-gib", type=float, default=2.0)
    parser.add_argument("--mem-limit-gib", type=float, default=MEM_LIMIT_GIB, help="0: no cap")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per request")
    parser.add_argument("--expm-tmax", type=float, default=1000.0)
    parser.add_argument(
        "--expm-tols", nargs="+", type=float, default=[1e-6, 1e-8, 1e-10, 1e-12, 1e-14]
    )
    parser.add_argument("--profile", action="store_true", help="profile jacntk's scalar rows")
    parser.add_argument("--not-run-reason", default="", help="why grid rows are missing")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--no-peer", action="store_true", help="jacntk rows only")
    parser.add_argument("--peer-python", type=Path, default=PEER_PYTHON)
    parser.add_argument("--json", type=Path, help=f"results store (default {RESULTS_JSON})")
    parser.add_argument("--no-write", action="store_true", help="leave RESULTS.md and PNG alone")
    parser.add_argument("--render-only", action="store_true", help="re-render from the JSON")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.serve:
        return serve()
    if args.repeats < 0 or args.dynamics_repeats < 0:
        parser.error(f"--repeats must be >= 0, got {args.repeats}")
    for n in args.sizes or []:
        if n < 2:
            parser.error(f"--sizes must be at least 2, got {n}")
    if args.task is None:
        args.task = list(TASKS) + ["expm"]
    if args.quick:
        args.repeats = min(args.repeats, 1)
        args.no_write = args.no_write or args.json is None
    if not args.no_peer and not args.peer_python.exists():
        parser.error(
            f"peer environment not found at {args.peer_python}: run "
            "`bash benchmarks/peers/setup.sh`, or pass --no-peer for jacntk-only rows"
        )
    store = args.json or RESULTS_JSON
    records = json.loads(store.read_text()) if store.exists() else {}
    versions = records.pop("_versions", {})
    stored_reason = records.pop("_not_run", "")
    args.not_run = args.not_run_reason or (stored_reason if isinstance(stored_reason, str) else "")
    grid = QUICK if args.quick else FULL
    if not args.render_only:
        for task, n, d, act, dtype in planned_rows(grid, args):
            if task == "expm":
                rec = run_expm(args, n, d)
            else:
                with tempfile.TemporaryDirectory(prefix="jacntk-peers-") as tmp:
                    try:
                        rec = TASKS[task](args, Path(tmp), n, d, act, dtype)
                    except WorkerError as exc:  # a worker failed to start
                        rec = _record(task, act=act, d=d, N=n, dtype=dtype)
                        rec["jacntk"] = {"error": str(exc)}
            rec.update(load=list(os.getloadavg()), date=time.strftime("%H:%M"))
            rec.setdefault("mem_limit_gib", args.mem_limit_gib)
            print(json.dumps(rec), flush=True)
            records[row_key(rec)] = rec
            for lib, key in (("jacntk", "jacntk_rss"), ("peer", "peer_rss")):
                if rec.get(lib, {}).get("import_rss_mib"):
                    versions[key] = rec[lib]["import_rss_mib"]
            if "peer" in rec:
                versions["peer"] = _peer_versions(args)
            if args.json or not args.no_write:
                records, versions = save_record(store, rec, versions)
    body = render(list(records.values()), versions, args)
    if args.no_write:
        print(body)
        return 0
    from benchmarks.results import write_section

    write_section("peers", body)
    plot(list(records.values()), PLOT, args.mem_limit_gib)
    return 0


def save_record(store: Path, rec: dict, versions: dict) -> tuple[dict, dict]:
    """Add ``rec`` to the JSON results store under a file lock, merging with what other runs
    wrote meanwhile; returns the merged records and versions."""
    import fcntl

    with open(store.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = json.loads(store.read_text()) if store.exists() else {}
        merged_versions = {**records.pop("_versions", {}), **versions}
        not_run = records.pop("_not_run", "")
        records[row_key(rec)] = rec
        body = {"_versions": merged_versions, "_not_run": not_run, **records}
        store.write_text(json.dumps(body, indent=1))
    return records, merged_versions


def _peer_versions(args) -> str:
    out = subprocess.run(
        [
            str(args.peer_python),
            "-c",
            "import importlib.metadata as m; print(', '.join("
            "f'{p} {m.version(p)}' for p in ('neural-tangents', 'jax', 'jaxlib')))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.stdout.strip() or "neural-tangents (version unknown)"


class CountingOperator:
    """``scale * M`` as a SciPy ``LinearOperator`` that counts products with vectors."""

    def __init__(self, M: np.ndarray, scale: float = 1.0):
        from scipy.sparse.linalg import LinearOperator

        self.matvecs = 0

        def matmat(V):
            V = np.asarray(V)
            self.matvecs += 1 if V.ndim == 1 else V.shape[1]
            return scale * (M @ V)

        self.op = LinearOperator(  # symmetric: the adjoint is the operator itself
            M.shape, matvec=matmat, rmatvec=matmat, matmat=matmat, rmatmat=matmat, dtype=M.dtype
        )


def run_expm(args, n: int, d: int) -> dict:
    """``exp(-c t K) y`` at 10 evenly spaced times: jacntk's Lanczos vs SciPy's
    ``expm_multiply`` on the same dense NTK Gram, both against ``eigh`` (in this process)."""
    from scipy.sparse.linalg import expm_multiply

    import jacntk
    from jacntk.linalg import lanczos_expm

    rec = _record("expm", act="erf", d=d, N=n, dtype="float64")
    X = points(n, d)
    y = targets(X)
    K = jacntk.kernel(jacntk.MLP(DEPTH, "erf"), X, kind="ntk")
    c = 1.0 / n  # learning rate 1 (math.md §0.4)
    times = np.linspace(args.expm_tmax / 10, args.expm_tmax, 10)
    t0 = time.perf_counter()
    lam, U = np.linalg.eigh(K)
    ref = (np.exp(-c * times[:, None] * lam[None, :]) * (U.T @ y)[None, :]) @ U.T
    rec["seconds_eigh"] = time.perf_counter() - t0
    del U

    def err(values):
        return float(
            max(np.linalg.norm(v - r) / np.linalg.norm(r) for v, r in zip(values, ref, strict=True))
        )

    op = CountingOperator(K, -c)
    scipy_s = []
    for _ in range(args.repeats or 1):
        op.matvecs = 0
        t0 = time.perf_counter()
        sp = expm_multiply(
            op.op, y, start=times[0], stop=times[-1], num=10, endpoint=True,
            traceA=-c * float(np.trace(K)),
        )  # fmt: skip
        scipy_s.append(time.perf_counter() - t0)
    rec["scipy"] = {"seconds": statistics.median(scipy_s), "matvecs": op.matvecs, "err": err(sp)}
    rec["jacntk"] = {}
    for tol in args.expm_tols:
        lan = CountingOperator(K)
        jac_s = []
        for _ in range(args.repeats or 1):
            lan.matvecs = 0
            t0 = time.perf_counter()
            res = lanczos_expm(lan.op, y, times, c=c, tol=tol, warn=False)
            jac_s.append(time.perf_counter() - t0)
        rec["jacntk"][f"{tol:g}"] = {
            "seconds": statistics.median(jac_s),
            "matvecs": lan.matvecs,
            "err": err(res.values),
        }
    return rec


def render_expm(records: list[dict], args) -> list[str]:
    """The expm table: SciPy's one run and jacntk's run at each tolerance, per N."""
    from benchmarks.results import table

    rows = []
    for r in sorted(records, key=lambda r: (r["d"], r["N"])):
        if "scipy" not in r:
            continue
        sp = r["scipy"]
        rows.append(
            [r["d"], r["N"], f"{r['seconds_eigh']:.3g}", "scipy expm_multiply", "—",
             f"{sp['seconds']:.3g}", sp["matvecs"], f"{sp['err']:.1e}", "1.0x", _load(r)]
        )  # fmt: skip
        for tol, j in sorted(r["jacntk"].items(), key=lambda kv: -float(kv[0])):
            rows.append(
                [r["d"], r["N"], "", "jacntk lanczos_expm", tol, f"{j['seconds']:.3g}",
                 j["matvecs"], f"{j['err']:.1e}", f"{sp['seconds'] / j['seconds']:.1f}x", ""]
            )  # fmt: skip
    head = [
        f"exp(-c t K) y with K the erf NTK Gram (depth {DEPTH}, Fashion-MNIST), c = 1/N, y the "
        f"dynamics targets, 10 times t = {args.expm_tmax / 10:g} ... {args.expm_tmax:g} (evenly "
        "spaced, so `expm_multiply` covers them in one call). Both use the same dense K as a "
        "counting `LinearOperator` (matvecs = products with vectors, SciPy's norm estimates "
        "included); error = max over t of |v - v_eigh| / |v_eigh| against `numpy.linalg.eigh` "
        "(whose own accuracy, ~1e-14 relative, is the floor of this column). Speed-up = SciPy "
        "time / jacntk time.",
        "",
    ]
    return head + [
        table(
            ["d", "N", "eigh ref s", "method", "tol", "s", "matvecs", "err vs eigh",
             "speed-up", "load"],
            rows,
        )
    ]  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
