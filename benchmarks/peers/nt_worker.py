"""Peer side of ``benchmarks/bench_peers.py``: neural-tangents (JAX) computing the same quantities
as jacntk, run in the separate peer environment (``benchmarks/peers/setup.sh``).

Protocol (shared with ``bench_peers.py --serve``, the jacntk side): one JSON request per line on
stdin, one reply line ``@@ {json}`` on stdout (other output is ignored).  Inputs and outputs are
``.npy`` files named in the request.  Every reply carries ``seconds`` (a dict of timings of this
request) and ``peak_rss_mib`` (the peak resident memory of this process so far).  Requests:

``{"op": "scalar", "x": X.npy, "arch": {...}, "rows": R.npy | null, "out": prefix | null}``
    NNGP and NTK of ``X`` against itself in one ``kernel_fn(X, X, ("nngp", "ntk"))`` call
    (jitted).  Saves ``{out}_nngp.npy`` / ``{out}_ntk.npy`` (rows ``R`` only).
``{"op": "jacobian", "x": X.npy, "pairs": P.npy, "arch": {...}, "chunk": int, "out": path}``
    Jacobian-augmented NTK blocks ``(m, d+1, d+1)`` of the pairs ``P`` (m, 2) by autodiff of the
    per-pair ``kernel_fn``: ``[[K, d_x' K], [d_x K, d_x d_x' K]]`` (``jax.grad`` and
    ``jax.jacfwd(jax.grad)``), vmapped and jitted over chunks of pairs.
``{"op": "dynamics", "x": Xtr.npy, "y": ytr.npy, "xt": Xte.npy, "times": [...], "arch": {...},
"learning_rate": eta, "out": path}``
    ``kernel_fn`` for train/train and test/train, then
    ``neural_tangents.predict.gradient_descent_mse(k, y, learning_rate=eta, diag_reg=0)`` at all
    times (one ``eigh``), mean predictor (``fx_train_0 = fx_test_0 = 0``).  Saves (T, n_test).
    Timings: ``kernel``, ``predict``, ``total``.

The architecture is jacntk's ``MLP.to_dict()``: ``depth`` hidden layers
``stax.Dense(width, W_std=sigma_w, b_std=sigma_b, parameterization="ntk")`` + activation
(``stax.Erf()``, ``stax.Relu()`` or ``stax.Gelu(approximate=False)``, the exact GELU), then
``stax.Dense(1, ...)``; the kernels are multiplied by ``kappa**2`` (docs/math.md §1.1).

Run as ``python nt_worker.py --dtype float64|float32``; ``float64`` enables ``jax_enable_x64``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def peak_rss_mib() -> float:
    """Peak resident memory of this process image (VmHWM; ``ru_maxrss`` would include the
    parent's resident size at fork time)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_kernel_fn(arch: dict):
    """The jitted ``kernel_fn`` of jacntk's MLP in neural-tangents' stax (docs/math.md §1.1)."""
    from neural_tangents import stax

    # jacntk's "gelu" is the exact u * Phi(u): stax.Gelu(approximate=False), not the tanh form
    acts = {"erf": stax.Erf, "relu": stax.Relu, "gelu": lambda: stax.Gelu(approximate=False)}
    if arch["activation"] not in acts:
        raise ValueError(f"activation {arch['activation']!r} has no neural-tangents counterpart")
    sw, sb = arch["sigma_w"], arch["sigma_b"]
    layers = []
    for _ in range(arch["depth"]):
        layers += [stax.Dense(512, W_std=sw, b_std=sb, parameterization="ntk")]
        layers += [acts[arch["activation"]]()]
    layers += [stax.Dense(1, W_std=sw, b_std=sb, parameterization="ntk")]
    _, _, kernel_fn = stax.serial(*layers)
    return kernel_fn, arch["kappa"] ** 2


def scalar(req: dict, cache: dict) -> dict:
    import jax
    import numpy as np

    key = ("scalar", req["x"], json.dumps(req["arch"], sort_keys=True))
    if key not in cache:
        kernel_fn, k2 = build_kernel_fn(req["arch"])
        fn = jax.jit(lambda a: kernel_fn(a, a, ("nngp", "ntk")))
        cache.clear()
        cache[key] = (fn, k2, jax.numpy.asarray(np.load(req["x"])))
    fn, k2, X = cache[key]
    t0 = time.perf_counter()
    nngp, ntk = fn(X)
    nngp.block_until_ready()
    ntk.block_until_ready()
    seconds = time.perf_counter() - t0
    if req.get("out"):
        rows = slice(None) if req.get("rows") is None else np.load(req["rows"])
        np.save(req["out"] + "_nngp.npy", k2 * np.asarray(nngp)[rows])
        np.save(req["out"] + "_ntk.npy", k2 * np.asarray(ntk)[rows])
    return {"seconds": {"nngp+ntk": seconds}}


def jacobian(req: dict, cache: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    key = ("jacobian", req["x"], json.dumps(req["arch"], sort_keys=True), req["chunk"])
    if key not in cache:
        kernel_fn, k2 = build_kernel_fn(req["arch"])

        def k_pair(x, y):
            return k2 * kernel_fn(x[None], y[None], "ntk")[0, 0]

        def block(x, y):
            top = jnp.concatenate([k_pair(x, y)[None], jax.grad(k_pair, 1)(x, y)])
            gx = jax.grad(k_pair, 0)(x, y)
            h = jax.jacfwd(jax.grad(k_pair, 0), 1)(x, y)
            return jnp.concatenate([top[None], jnp.concatenate([gx[:, None], h], 1)], 0)

        fn = jax.jit(jax.vmap(block))
        cache.clear()
        cache[key] = (fn, np.load(req["x"]))
    fn, X = cache[key]
    pairs = np.load(req["pairs"])
    chunk = req["chunk"]
    out = np.empty((len(pairs), X.shape[1] + 1, X.shape[1] + 1), dtype=X.dtype)
    t0 = time.perf_counter()
    for s in range(0, len(pairs), chunk):
        idx = pairs[s : s + chunk]
        m = len(idx)
        if m < chunk:  # pad the last chunk so that one compiled shape serves every chunk
            idx = np.concatenate([idx, np.repeat(idx[-1:], chunk - m, axis=0)])
        out[s : s + m] = np.asarray(fn(X[idx[:, 0]], X[idx[:, 1]]))[:m]
    seconds = time.perf_counter() - t0
    if req.get("out"):
        np.save(req["out"], out)
    return {"seconds": {"pairs": seconds}}


def dynamics(req: dict, cache: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import neural_tangents as nt
    import numpy as np

    key = ("dynamics", json.dumps(req["arch"], sort_keys=True))
    if key not in cache:  # one compiled kernel_fn across repetitions
        kernel_fn, k2 = build_kernel_fn(req["arch"])
        cache.clear()
        cache[key] = (jax.jit(kernel_fn, static_argnames="get"), k2)
    kfn, k2 = cache[key]
    X, y, Xt = (jnp.asarray(np.load(req[k])) for k in ("x", "y", "xt"))
    t0 = time.perf_counter()
    k_train = k2 * kfn(X, X, "ntk")
    k_test = k2 * kfn(Xt, X, "ntk")
    k_test.block_until_ready()
    t1 = time.perf_counter()
    predict_fn = nt.predict.gradient_descent_mse(
        k_train, y[:, None], learning_rate=req["learning_rate"], diag_reg=0.0
    )
    times = jnp.asarray(req["times"], dtype=k_train.dtype)
    finite = jnp.isfinite(times)
    parts = []
    if bool(finite.any()):
        parts.append(predict_fn(times[finite], None, 0.0, k_test)[..., 0])
    if not bool(finite.all()):
        parts.append(predict_fn(None, None, 0.0, k_test)[None, :, 0])
    pred = jnp.concatenate(parts, 0).block_until_ready()
    t2 = time.perf_counter()
    if req.get("out"):
        np.save(req["out"], np.asarray(pred))
    return {"seconds": {"kernel": t1 - t0, "predict": t2 - t1, "total": t2 - t0}}


OPS = {"scalar": scalar, "jacobian": jacobian, "dynamics": dynamics}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    args = parser.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", args.dtype == "float64")
    import neural_tangents

    hello = {"library": "neural-tangents", "version": neural_tangents.__version__}
    hello.update(jax=jax.__version__, rss_mib=peak_rss_mib(), rss_method="VmHWM")
    return serve(hello, OPS)


def serve(hello: dict, ops: dict, *, memory_error: str | None = None) -> int:
    """The worker protocol of both sides: print ``hello``, then answer one JSON request per stdin
    line with ``ops[req["op"]](req, cache)`` (an exception becomes ``{"error": ...}``;
    ``memory_error``, if given, is the reply's error text for a MemoryError), each reply with the
    peak RSS, every line prefixed ``@@ ``."""
    print("@@ " + json.dumps(hello), flush=True)
    cache: dict = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            reply = ops[req["op"]](req, cache)
        except MemoryError as exc:
            reply = {"error": memory_error or f"{type(exc).__name__}: {exc}"}
        except Exception as exc:  # reported to the harness, which records the failure
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        reply["peak_rss_mib"] = peak_rss_mib()
        print("@@ " + json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
