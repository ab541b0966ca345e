"""The jacntk worker of the peer benchmark (``bench_peers.py --serve``): the same protocol as
``benchmarks/peers/nt_worker.py``, computing the same quantities with jacntk.

One JSON request per line on stdin, one reply line ``@@ {json}`` on stdout; inputs and outputs
are ``.npy`` files named in the request; every reply carries ``seconds`` (the timings of that
request) and ``peak_rss_mib``.  Requests (``op``): ``scalar``, ``jacobian``, ``dynamics`` and
``profile`` (where ``jacntk.kernel`` spends its time).
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np

from benchmarks.peers._harness import PEER_WORKER


def _arch(spec: dict):
    from jacntk import MLP

    return MLP.from_dict(spec)


def pair_blocks(fields: np.ndarray, X: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """The (d+1) x (d+1) Jacobian-augmented blocks of ``pairs`` from jacntk's (8, n, n) fields,
    via ``jacntk.augment`` on the one-pair field slices: (m, d+1, d+1)."""
    from jacntk import augment

    out = np.empty((len(pairs), X.shape[1] + 1, X.shape[1] + 1))
    for k, (i, j) in enumerate(pairs):
        out[k] = augment(fields[:, i : i + 1, j : j + 1], X[i : i + 1], X[j : j + 1].copy())
    return out


def serve_scalar(req: dict, cache: dict) -> dict:
    """NNGP and NTK of ``X`` (n, d) against itself with ``jacntk.kernel``: the NTK alone
    (``kind="ntk"``, timing ``ntk``) and both kernels in one call (``kind=("nngp", "ntk")``, one
    pass over the layers, timing ``nngp+ntk``), at the precision of ``X``'s dtype
    (``precision="float32"`` for float32 inputs: jacntk's float32 compute path).  The outputs
    saved (rows ``req["rows"]`` of each (n, n) Gram) are those of the one-call run."""
    from jacntk import kernel

    arch = _arch(req["arch"])
    X = cache.setdefault(("x", req["x"]), np.load(req["x"]))
    precision = str(X.dtype)
    seconds = {}
    t0 = time.perf_counter()
    K = kernel(arch, X, kind="ntk", precision=precision)
    seconds["ntk"] = time.perf_counter() - t0
    del K
    t0 = time.perf_counter()
    both = kernel(arch, X, kind=("nngp", "ntk"), precision=precision)
    seconds["nngp+ntk"] = time.perf_counter() - t0
    if req.get("out"):
        rows = slice(None) if req.get("rows") is None else np.load(req["rows"])
        for kind, K in zip(("nngp", "ntk"), both, strict=True):
            if K.dtype != X.dtype:
                raise TypeError(f"jacntk returned {K.dtype} for precision={precision!r}")
            np.save(f"{req['out']}_{kind}.npy", K[rows])
    del both
    return {"seconds": seconds, "both": "one call", "precision": precision}


def serve_jacobian(req: dict, cache: dict) -> dict:
    """The eight NTK fields (``kernel_fields``) and, when ``dense``, the dense matrix
    (``augment``); saves the (m, d+1, d+1) blocks of the requested pairs."""
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
    """Test predictions at ``times`` with ``jacntk.predict`` (NTK, mean predictor)."""
    from jacntk import predict

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


#: Whole-call wrappers left out of the profile's parts (they are its total).
_PROFILE_TOTALS = ("compute_tile", "_compute")


def serve_profile(req: dict, cache: dict) -> dict:
    """Where ``jacntk.kernel`` spends its time: every function of ``jacntk.kernels`` that
    ``jacntk.kernels._compute`` (``compute_tile``) calls is wrapped by a timer for one NTK call
    (inclusive times; the names are looked up at run time in that module's namespace, so the
    profile follows the module as it evolves)."""
    import inspect

    import jacntk.kernels._compute as compute
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

    for name, obj in vars(compute).items():
        module = getattr(obj, "__module__", None) or ""
        own = module.startswith("jacntk.kernels.") or hasattr(obj, "py_func")
        if callable(obj) and own and not inspect.isclass(obj) and name not in ("kernel",):
            originals[name] = obj
    try:
        for name, obj in originals.items():
            setattr(compute, name, timed(name, obj))
        t0 = time.perf_counter()
        kernel(arch, X, kind="ntk")
        total = time.perf_counter() - t0
    finally:
        for name, obj in originals.items():
            setattr(compute, name, obj)
    for name in _PROFILE_TOTALS:
        timings.pop(name, None)
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
    spec.loader.exec_module(peer)  # stdlib only at import: reuse its protocol loop and VmHWM

    hello = {"library": "jacntk", "version": jacntk.__version__, "rss_mib": peer.peak_rss_mib()}
    hello["rss_method"] = "VmHWM"
    return peer.serve(hello, SERVE_OPS, memory_error="MemoryError (address-space cap reached)")
