"""The peer comparison behind ``benchmarks/bench_peers.py`` (jacntk vs neural-tangents and SciPy).

Modules, one concern each:

* ``_harness``: worker processes (``prlimit --as`` cap, the ``@@ json`` line protocol),
  alternating timed requests and their medians, the load/date stamp of a row, row keys and the
  JSON results store;
* ``_tasks``: the rows: grids of kernels, activations and sizes, their inputs and comparisons,
  what each side is asked for (``run_scalar``, ``run_jacobian``, ``run_dynamics``) and the
  in-process SciPy row (``run_expm``);
* ``_jacntk_worker``: the jacntk side of the protocol (``bench_peers.py --serve``); the peer side
  is ``nt_worker.py``, run under the peer environment's Python (``setup.sh``);
* ``_render``: the Markdown body of the ``peers`` section of ``benchmarks/RESULTS.md``;
  ``_goals``: issue 7's targets and the Jacobian time profile in it; ``_plot``: the PNG;
* ``_cli``: the command line and the run loop.
"""
