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

Rows (issues 7 and 14):

* ``scalar``: NNGP and NTK Grams, depth 3, erf, relu and gelu (exact; neural-tangents
  ``stax.Gelu(approximate=False)``), N = 2,000 / 5,000 / 10,000 (20,000 with ``--sizes``),
  d = 10 (Gaussian) and 784 (Fashion-MNIST pixels / 255), float64 and float32.  neural-tangents
  computes both kernels in one jitted ``kernel_fn(X, X, ("nngp", "ntk"))``; jacntk is timed on
  ``jacntk.kernel(kind="ntk")`` (NTK alone) and ``jacntk.kernel(kind=("nngp", "ntk"))`` (both in
  one call, one pass over the layers).  float32 rows use jacntk's float32 compute path
  (``precision="float32"``, docs/math.md §14) on float32 inputs; JAX runs with x64 off.
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
  ``c = eta kappa^2 / N`` (docs/math.md §1.4) and ``kappa^2 Theta = K``.  Same ``eta``, same ``t``.
* ``expm``: ``exp(-c t K) y`` at 10 times: jacntk's Lanczos vs ``scipy.sparse.linalg.
  expm_multiply`` on the same dense NTK Gram, both checked against ``eigh``, jacntk's tolerance
  set so its error is no larger than SciPy's.

Values: "max rel diff" is ``max |a - b| / max |b|`` over the compared entries (all of them, or
``--compare-rows`` evenly spaced rows of a large Gram, or the sampled Jacobian pairs).

Results accumulate in ``benchmarks/peers/results.json`` (one record per row, so sizes can be run
at different times; each record carries its run's stamp: day, start time, git commit) and are
rendered into ``benchmarks/RESULTS.md`` (section ``peers``) and ``benchmarks/peers_scaling.png``
after each row, so a long run leaves its partial results.  ``--quick --no-peer`` runs tiny
jacntk-only rows and writes nothing unless ``--json`` is given (the smoke test uses it).

This file is the entry point; the code lives in the package ``benchmarks/peers/``: ``_harness``
(workers, timing, medians, records), ``_tasks`` (the rows), ``_jacntk_worker`` (``--serve``),
``_render``, ``_goals`` and ``_plot`` (RESULTS.md and the PNG), ``_cli`` (flags, run loop).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the ``benchmarks`` package importable
    ROOT = str(Path(__file__).resolve().parent.parent)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)

from benchmarks.peers._cli import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
