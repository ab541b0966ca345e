"""Smoke tests of the peer benchmark (benchmarks/bench_peers.py and the package
benchmarks/peers/: harness, tasks, jacntk worker, rendering).

The jacntk-only paths run everywhere; the neural-tangents comparison runs only where the separate
peer environment exists (``bash benchmarks/peers/setup.sh``) and is skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jacntk

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_peers.py"
PEERS = ROOT / "benchmarks" / "peers"
PEER_PYTHON = PEERS / ".venv" / "bin" / "python"


def _load_entry_point():
    """The entry script, loaded as a file (as ``python benchmarks/bench_peers.py`` would run it);
    loading it makes the ``benchmarks`` package importable."""
    spec = importlib.util.spec_from_file_location("bench_peers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_entry_point()

from benchmarks.peers import _harness, _jacntk_worker, _render, _tasks  # noqa: E402


def run_harness(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_max_rel_diff_is_normalised_by_the_reference():
    b = np.array([[2.0, -4.0], [1.0, 0.5]])
    a = b.copy()
    a[1, 1] += 0.04
    assert _tasks.max_rel_diff(a, b) == pytest.approx(0.01)
    assert _tasks.max_rel_diff(b, b) == 0.0
    with pytest.raises(ValueError, match=r"shapes \(2, 2\) and \(4,\)"):
        _tasks.max_rel_diff(a, b.ravel())


def test_sample_pairs_are_distinct_upper_triangle_and_include_diagonal():
    pairs = _tasks.sample_pairs(500, 300)
    assert pairs.shape == (300, 2)
    assert (pairs[:, 0] <= pairs[:, 1]).all() and pairs.max() < 500
    assert len({tuple(p) for p in pairs}) == 300
    assert (pairs[:, 0] == pairs[:, 1]).any()
    everything = _tasks.sample_pairs(10, 300)  # fewer pairs than asked: all of them
    assert len(everything) == 55


def test_compare_rows_are_evenly_spaced_and_cover_the_ends():
    rows = _tasks.compare_rows(10_000, 500)
    assert len(rows) == 500 and rows[0] == 0 and rows[-1] == 9_999
    assert (np.diff(rows) > 0).all()
    assert (_tasks.compare_rows(7, 500) == np.arange(7)).all()


@pytest.mark.parametrize("dense", [True, False])
def test_jacntk_jacobian_request_saves_the_dense_blocks_of_the_pairs(tmp_path, rng, dense):
    X = rng.standard_normal((6, 3))
    pairs = np.array([[0, 0], [1, 4], [2, 5]])
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "pairs.npy", pairs)
    request = {"x": str(tmp_path / "x.npy"), "pairs": str(tmp_path / "pairs.npy")}
    request.update(arch=_tasks.arch_dict("erf"), dense=dense, out=str(tmp_path / "blocks.npy"))
    reply = _jacntk_worker.serve_jacobian(request, {})
    assert reply["seconds"]["fields"] > 0 and ("fields+dense" in reply["seconds"]) == dense
    blocks = np.load(tmp_path / "blocks.npy")
    G = jacntk.kernel(jacntk.MLP(3, "erf"), X, jacobian=True).reshape(6, 4, 6, 4)
    for (i, j), block in zip(pairs, blocks, strict=True):
        np.testing.assert_allclose(block, G[i, :, j, :], rtol=1e-12, atol=1e-14)


def test_quick_jacntk_only_rows_record_times_memory_precision_and_table(tmp_path):
    store = tmp_path / "peers.json"
    proc = run_harness(
        "--quick", "--no-peer", "--task", "scalar", "--acts", "erf", "gelu",
        "--sizes", "30", "--repeats", "1", "--json", str(store), "--no-write",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = json.loads(store.read_text())
    for act in ("erf", "gelu"):
        for dtype in ("float64", "float32"):  # both dtypes by default
            rec = records[f"scalar|{act}|10|30|{dtype}"]
            assert "peer" not in rec and rec["jacntk"]["repeats"] == 1
            # NTK alone and both kernels in one call; the float32 rows on the float32 path
            assert set(rec["jacntk"]["seconds"]) == {"ntk", "nngp+ntk"}
            assert rec["jacntk"]["both"] == "one call"
            assert rec["jacntk"]["precision"] == dtype
            assert rec["jacntk"]["peak_rss_mib"] > 50
            assert {"day", "start", "commit"} <= rec["run"].keys()
    assert "### Scalar NNGP + NTK Grams" in proc.stdout
    assert "| gelu | 10 | float32 | 30 |" in proc.stdout
    assert 'float32 rows: jacntk\'s float32 compute path (`precision="float32"`' in proc.stdout
    assert "computes in float64 and returns float32" not in proc.stdout


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_jacntk_scalar_request_times_ntk_alone_and_both_kinds_in_one_call(
    tmp_path, rng, monkeypatch, dtype
):
    X = rng.standard_normal((25, 4)).astype(dtype)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "rows.npy", np.array([0, 7, 24]))
    calls = []
    original = jacntk.kernel

    def spy(arch, X1, *a, **k):
        calls.append((k.get("kind"), k.get("precision")))
        return original(arch, X1, *a, **k)

    monkeypatch.setattr(jacntk, "kernel", spy)
    request = {"x": str(tmp_path / "x.npy"), "rows": str(tmp_path / "rows.npy")}
    request.update(arch=_tasks.arch_dict("gelu"), out=str(tmp_path / "jac"))
    reply = _jacntk_worker.serve_scalar(request, {})
    assert calls == [("ntk", dtype), (("nngp", "ntk"), dtype)]
    assert set(reply["seconds"]) == {"ntk", "nngp+ntk"} and reply["precision"] == dtype
    arch = jacntk.MLP(3, "gelu")
    X64 = X.astype(np.float64)
    rtol = 1e-13 if dtype == "float64" else 1e-5
    for kind in ("nngp", "ntk"):
        saved = np.load(tmp_path / f"jac_{kind}.npy")
        assert saved.shape == (3, 25) and saved.dtype == np.dtype(dtype)
        # the saved rows of the one call are each kind's float64 kernel (in the order asked)
        ref = original(arch, X64, kind=kind)[[0, 7, 24]]
        np.testing.assert_allclose(saved, ref, rtol=rtol, atol=rtol * np.abs(ref).max())


def test_worker_out_of_memory_is_recorded_not_fatal(tmp_path, capsys):
    store = tmp_path / "peers.json"
    code = bench.main(
        ["--quick", "--no-peer", "--task", "scalar", "--acts", "relu", "--dtypes", "float64",
         "--sizes", "20", "--mem-limit-gib", "0.05", "--json", str(store), "--no-write"]
    )  # fmt: skip
    assert code == 0
    rec = json.loads(store.read_text())["scalar|relu|10|20|float64|cap0.05"]
    assert "worker exited" in rec["jacntk"]["error"] and rec["mem_limit_gib"] == 0.05
    assert "### Failures" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sizes", "1"], "--sizes must be at least 2, got 1"),
        (["--repeats", "-1"], "--repeats must be >= 0, got -1"),
        (["--peer-python", "/nonexistent/python"], "run `bash benchmarks/peers/setup.sh`"),
        (["--task", "bogus"], "invalid choice: 'bogus'"),
    ],
)
def test_bad_arguments_are_named(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--quick", "--no-write", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(
    not PEER_PYTHON.exists(),
    reason="peer environment absent: run `bash benchmarks/peers/setup.sh` to compare with "
    "neural-tangents",
)
@pytest.mark.parametrize(("act", "tol"), [("erf", 1e-10), ("gelu", 1e-12)])
def test_neural_tangents_agrees_on_a_tiny_scalar_row(tmp_path, act, tol):
    store = tmp_path / "peers.json"
    proc = run_harness(
        "--quick", "--task", "scalar", "--acts", act, "--dtypes", "float64", "--sizes", "40",
        "--repeats", "0", "--json", str(store), "--no-write",
        timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads(store.read_text())[f"scalar|{act}|10|40|float64"]
    assert "error" not in rec["peer"], rec["peer"]
    assert rec["max_rel_diff"]["nngp"] <= tol
    assert rec["max_rel_diff"]["ntk"] <= tol


def test_relu_diagonal_reference_matches_the_kernels(rng):
    X = rng.standard_normal((5, 7))
    arch = jacntk.MLP(3, "relu", sigma_w=1.3, sigma_b=0.4, kappa=0.7)
    nngp, ntk = _tasks.relu_diagonal(arch.to_dict(), (X**2).sum(1), 7)
    np.testing.assert_allclose(np.diag(jacntk.kernel(arch, X, kind="nngp")), nngp, rtol=1e-13)
    np.testing.assert_allclose(np.diag(jacntk.kernel(arch, X, kind="ntk")), ntk, rtol=1e-13)


def test_each_module_of_the_peer_benchmark_is_at_most_500_lines():
    files = [SCRIPT, *sorted(PEERS.glob("*.py"))]
    assert len(files) >= 8  # the entry point, the peer worker and the split package
    long = {p.name: n for p in files if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f"over 500 lines: {long}"


def test_failed_worker_start_of_a_jacobian_row_is_recorded_and_rendered(tmp_path, capsys):
    store = tmp_path / "peers.json"
    code = bench.main(
        ["--quick", "--no-peer", "--task", "jacobian", "--sizes", "20", "--dims", "4",
         "--mem-limit-gib", "0.05", "--json", str(store), "--no-write"]
    )  # fmt: skip
    assert code == 0
    rec = json.loads(store.read_text())["jacobian|erf|4|20|float64|cap0.05"]
    assert "worker exited" in rec["jacntk"]["error"] and rec["pairs_total"] == 210
    out = capsys.readouterr().out
    assert "| 4 | 20 | failed | failed | 210 of 210 | not run | not run | — | — | 0.05 |" in out


def test_profile_request_times_the_functions_kernel_calls(tmp_path, rng):
    from jacntk.kernels._compute import INLINE_DOT_D

    # above INLINE_DOT_D the inner products come from the GEMM (_inner_products)
    np.save(tmp_path / "x.npy", rng.standard_normal((40, INLINE_DOT_D + 1)))
    request = {"x": str(tmp_path / "x.npy"), "arch": _tasks.arch_dict("erf")}
    reply = _jacntk_worker.serve_profile(request, {})
    parts = dict(reply["profile"])
    assert {"_inner_products", "_diag_chain"} <= parts.keys()
    assert not {"compute_tile", "_compute", "kernel"} & parts.keys()  # totals left out
    assert all(0 < t <= reply["seconds"]["total"] for t in parts.values())


def test_save_record_merges_with_the_store_and_keeps_its_metadata(tmp_path):
    store = tmp_path / "peers.json"
    store.write_text(json.dumps({"_versions": {"peer": "nt 0.6.5"}, "_not_run": "no time"}))
    first = {"task": "scalar", "act": "erf", "d": 10, "N": 30, "dtype": "float64"}
    second = {**first, "N": 60, "mem_limit_gib": 4.0}
    _harness.save_record(store, first, {"jacntk_rss": 200})
    records, versions = _harness.save_record(store, second, {"jacntk_rss": 210})
    assert list(records) == ["scalar|erf|10|30|float64", "scalar|erf|10|60|float64|cap4"]
    assert versions == {"peer": "nt 0.6.5", "jacntk_rss": 210}
    assert _harness.load_store(store) == (records, versions, "no time")


RUN = {"day": "2026-12-03", "start": "18:19", "commit": "abc1234"}


def _scalar_row(
    act: str, ntk_s: float, both_s: float, peer_s: float, diff: float, dtype: str = "float64",
    d: int = 10, run: dict | None = RUN,
) -> dict:  # fmt: skip
    """A stored scalar record at N = 10,000 with the given times (``run=None``: an earlier,
    unstamped record)."""
    lib = {"peak_rss_mib": 300.0, "rss_method": "VmHWM", "repeats": 3}
    rec = {
        "task": "scalar", "act": act, "d": d, "N": 10000, "dtype": dtype,
        "load": [1.5, 1.0, 1.0], "date": "12:00", "mem_limit_gib": 12.0,
        "jacntk": {**lib, "seconds": {"ntk": ntk_s, "nngp+ntk": both_s}},
        "peer": {**lib, "peak_rss_mib": 900.0, "seconds": {"nngp+ntk": peer_s}},
        "max_rel_diff": {k: diff for k in ("nngp", "nngp_offdiag", "ntk", "ntk_offdiag")},
    }  # fmt: skip
    if run is not None:
        rec["run"] = run
        rec["jacntk"].update(both="one call", precision=dtype)
    return rec


def test_render_of_fixed_rows_gives_their_tables_goals_and_missing_rows():
    records = [
        _scalar_row("erf", 0.4, 1.0, 5.0, 1e-15),
        _scalar_row("relu", 0.6, 2.0, 6.0, 3e-11),
        _scalar_row("gelu", 0.5, 1.0, 4.5, 2e-12, d=784),
        _scalar_row("erf", 0.3, 0.5, 1.2, 4e-7, dtype="float32"),
        _scalar_row("erf", 9.0, 19.0, 30.0, 1e-15, run=None) | {"N": 20000},
    ]
    args = bench.build_parser().parse_args([])
    body = _render.render(records, {"peer": "neural-tangents 0.6.5"}, args)
    assert "Peer: neural-tangents 0.6.5. Depth 3" in body
    current, earlier = body.split("### Scalar rows from earlier runs, not re-measured", 1)
    assert "| erf | 10 | float64 | 10000 | 0.4 | 1 | 5 | 12.5x | 5.0x | 12 | 300 | 900 |" in current
    assert "| relu | 10 | float64 | 10000 | 0.6 | 2 | 6 | 10.0x | 3.0x |" in current
    assert "Rows from: 2026-12-03 18:19, commit abc1234 (4 rows)" in current
    assert "| erf | 10 | float64 | 20000 |" not in current
    assert "| jacntk NNGP then NTK s |" in earlier
    assert "| erf | 10 | float64 | 20000 | 9 | 19 | 30 | 3.3x | 1.6x |" in earlier
    assert "2026-11-22 (issue 7 harness, before run stamps" in earlier
    goals = body.split("### Goals (issue 14, scalar kernels)", 1)[1]
    assert "From the scalar rows of: 2026-12-03 18:19, commit abc1234 (4 rows)." in goals
    assert (
        "- GELU: jacntk NNGP + NTK (one call) >= 4x neural-tangents at N = 10,000 (float64): "
        "met (gelu d=784: 4.5x)"
    ) in goals
    assert (
        "- NNGP + NTK together (jacntk one call) >= 4x at N = 10,000 (float64): **MISSED** in "
        "1 of 3 rows (erf d=10: 5.0x, relu d=10: 3.0x, gelu d=784: 4.5x)"
    ) in goals
    assert (
        "- NNGP + NTK together (jacntk one call) >= 2x at N = 10,000 (float32): met "
        "(erf d=10: 2.4x). float64 -> float32 times of the one call"
    ) in goals
    assert "erf d=10: jacntk 1.00 s -> 0.50 s, neural-tangents 5.00 s -> 1.20 s" in goals
    assert "at N = 10,000 (float64): met (erf d=10: 12.5x, relu d=10: 10.0x)" in goals
    assert (
        "- d = 10: jacntk scalar NTK <= 0.5 s at N = 10,000: **MISSED** in 1 of 3 rows "
        "(erf d=10 float64: 0.40 s, relu d=10 float64: 0.60 s, erf d=10 float32: 0.30 s)"
    ) in goals
    assert "every N and d): **MISSED** in 1 of 1 rows (worst 2.0e-12)" in goals
    assert "float64 (off the ReLU diagonal, see above): met (worst 3.0e-11)" in goals
    assert "- dynamics predictions agree to <= 1e-6: not measured" in goals
    for absent in ("### Jacobian", "### Training dynamics", "### Failures"):
        assert absent not in body
    missing = body.split("### Rows of the full grid not run", 1)[1]
    assert "Reason: not run yet" in missing
    assert "gelu d=10 N=2000 float64" in missing and "erf d=10 N=10000 float64," not in missing
