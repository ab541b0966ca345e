"""The Markdown body of the ``peers`` section of ``benchmarks/RESULTS.md``: one table per task
(scalar, with the earlier runs' scalar rows apart; Jacobian, dynamics, expm), each saying which
runs (day, commit) its rows come from, the notes on the rows (BLAS threads, ReLU diagonal,
memory method, cold runs, failures, rows of the full grid not run), issue 14's and issue 7's
goals (``_goals``) and the profiles."""

from __future__ import annotations

import argparse
import os
import statistics

import numpy as np

from benchmarks.peers._goals import (
    render_goals,
    render_jacobian_profile,
    run_label,
    runs_of,
    speedup,
)
from benchmarks.peers._harness import MEM_LIMIT_GIB, row_key
from benchmarks.peers._tasks import DEPTH, FULL, TIMES, planned_rows
from benchmarks.results import table

# --------------------------------------------------------------------------------------------
# Cells


def _s(rec: dict, lib: str, key: str) -> str:
    res = rec.get(lib)
    if res is None:
        return "not run"
    if "seconds" not in res:
        return "failed"
    value = res["seconds"].get(key)
    return "—" if value is None else f"{value:.3g}"


def _ratio(rec: dict, peer_key: str, jac_key: str) -> str:
    value = speedup(rec, peer_key, jac_key)
    return "—" if value is None else f"{value:.1f}x"


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
    """Rows of the full grid (issues 7 and 14) absent from ``records``, by task; a scalar row
    counts only when measured by a stamped run (earlier scalar rows used the issue 7 API)."""
    done = {row_key(r) for r in records if r["task"] != "scalar" or "run" in r}
    grid_args = argparse.Namespace(task=list(FULL), sizes=None, dims=None, acts=None, dtypes=None)
    missing: dict[str, list[str]] = {}
    for task, n, d, act, dtype in planned_rows(FULL, grid_args):
        if "|".join(str(v) for v in (task, act, d, n, dtype)) not in done:
            missing.setdefault(task, []).append(f"{act} d={d} N={n} {dtype}")
    return missing


def _task_table(records: list[dict], columns: list[tuple]) -> str:
    """A Markdown table with one row per record; ``columns`` are ``(header, cell(record))``."""
    return table([h for h, _ in columns], [[cell(r) for _, cell in columns] for r in records])


MEMORY_COLUMNS = [
    (
        "memory cap GiB",
        lambda r: "{:g}".format(r.get("mem_limit_gib", MEM_LIMIT_GIB) or float("inf")),
    ),
    ("jacntk peak MiB", lambda r: _mem(r, "jacntk")),
    ("NT peak MiB", lambda r: _mem(r, "peer")),
]


def scalar_columns(both: str = "jacntk NNGP+NTK one call s") -> list[tuple]:
    """The scalar table's columns; ``both`` heads jacntk's both-kernels time (one call in the
    stamped rows, two calls in the earlier ones)."""
    return [
        ("act", lambda r: r["act"]),
        ("d", lambda r: r["d"]),
        ("dtype", lambda r: r["dtype"]),
        ("N", lambda r: r["N"]),
        ("jacntk NTK s", lambda r: _s(r, "jacntk", "ntk")),
        (both, lambda r: _s(r, "jacntk", "nngp+ntk")),
        ("NT NNGP+NTK s", lambda r: _s(r, "peer", "nngp+ntk")),
        ("ratio NTK", lambda r: _ratio(r, "nngp+ntk", "ntk")),
        ("ratio both", lambda r: _ratio(r, "nngp+ntk", "nngp+ntk")),
        *MEMORY_COLUMNS,
        ("max rel diff NNGP", lambda r: _diff(r, "nngp")),
        ("max rel diff NTK", lambda r: _diff(r, "ntk")),
        ("load", _load),
    ]


SCALAR_COLUMNS = scalar_columns()

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
    """The Markdown body of the ``peers`` section from the stored ``records`` (any order),
    the ``versions`` of the store and the command-line ``args`` (``compare_rows``,
    ``dense_max_gib``, ``expm_tmax``, ``not_run``)."""
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
    by_run: dict[str, list[float]] = {}
    for r in records:
        if "load" in r:
            by_run.setdefault(run_label(r), []).append(r["load"][0])
    if by_run:
        spans = "; ".join(
            f"{label}: {min(v):.1f}–{max(v):.1f} (median {statistics.median(v):.1f})"
            for label, v in by_run.items()
        )
        lines += [
            f"**Machine load.** 1-minute load average on {os.cpu_count()} cores while the rows "
            f"ran, per run: {spans}. Other jobs were running. Absolute times are inflated and "
            "noisy when the load exceeds the core count; the two libraries ran alternately "
            "under the same load, so the ratios are the numbers to read.",
            "",
        ]
    by_task: dict[str, list[dict]] = {}
    for rec in records:
        by_task.setdefault(rec["task"], []).append(rec)
    order = lambda r: (r["d"], r["act"], r["dtype"], r["N"])  # noqa: E731
    scalar = [r for r in by_task.get("scalar", []) if "run" in r]
    earlier = [r for r in by_task.get("scalar", []) if "run" not in r]
    if scalar:
        lines += [
            "### Scalar NNGP + NTK Grams (N x N)",
            "",
            f"Rows from: {runs_of(scalar)}. neural-tangents computes NNGP and NTK in one "
            "jitted call (its NTK alone costs the same); jacntk is timed on the NTK alone (`kind="
            '"ntk"`) and on both kernels in one call (`kind=("nngp", "ntk")`, one pass over the '
            "layers, returning the tuple): `ratio NTK` = NT's call / jacntk's NTK, `ratio both` "
            "= NT's call / jacntk's one call. Activations erf, relu and gelu (neural-tangents: "
            "`stax.Gelu(approximate=False)`, the exact GELU, as jacntk's closed form). Values "
            f"(of jacntk's one call) compared on {args.compare_rows} evenly spaced rows (all "
            "columns) when N is larger. float32 rows: jacntk's float32 compute path "
            '(`precision="float32"`: float32 GEMM and float32 layer maps, with the diagonal and '
            "near-collinear ReLU pairs in float64, docs/math.md §14) on float32 inputs; JAX "
            "computes in float32 (x64 off).",
            "",
            _task_table(sorted(scalar, key=order), SCALAR_COLUMNS),
        ]
    if earlier:
        lines += [
            "### Scalar rows from earlier runs, not re-measured",
            "",
            f"Rows from: {runs_of(earlier)}. Measured with the issue 7 harness: jacntk's "
            "both-kernels time there is two separate `jacntk.kernel` calls (NNGP, then NTK), "
            "and its float32 rows were computed in float64 and rounded (no float32 path then). "
            "Not comparable with the table above for `ratio both` or float32.",
            "",
            _task_table(sorted(earlier, key=order), scalar_columns("jacntk NNGP then NTK s")),
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
    diag = [r for r in scalar if "relu_diag_err" in r]
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
            f"compared on the sampled blocks. Rows from: {runs_of(by_task['jacobian'])}.",
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
            "exp(-c t Theta) with c = eta kappa^2 / N and kappa^2 Theta = K (docs/math.md §1.4): "
            "same eta, same t. Both include computing the kernels. Rows from: "
            f"{runs_of(by_task['dynamics'])}.",
            "",
            _task_table(sorted(by_task["dynamics"], key=order), DYNAMICS_COLUMNS),
        ]
    if "expm" in by_task:
        lines += ["### Matrix-exponential actions vs SciPy", ""]
        lines += [f"Rows from: {runs_of(by_task['expm'])}.", ""]
        lines += render_expm(by_task["expm"], args)
    lines += render_goals(by_task)
    lines += render_jacobian_profile(by_task.get("jacobian", []))
    profiled = [r for r in by_task.get("scalar", []) if "parts" in r.get("profile", {})]
    if profiled:
        lines += [
            "### Where jacntk's scalar NTK time goes",
            "",
            'One extra `jacntk.kernel(kind="ntk")` call per row with every function of '
            "`jacntk.kernels` that `jacntk.kernels._compute` calls wrapped by a timer (inclusive "
            "seconds; numba kernels run on NUMBA_NUM_THREADS threads).",
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


def render_expm(records: list[dict], args) -> list[str]:
    """The expm table: SciPy's one run and jacntk's run at each tolerance, per N."""
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
