"""Issue 14's scalar targets and issue 7's remaining targets against the recorded rows, and
where the Jacobian-kernel time goes: two Markdown parts of the ``peers`` section (``_render``
places them), plus the run labels of the records (``run_label``, ``runs_of``)."""

from __future__ import annotations


def speedup(rec: dict, peer_key: str, jac_key: str) -> float | None:
    """neural-tangents time ``peer_key`` / jacntk time ``jac_key`` of a record (None when either
    is missing)."""
    try:
        return rec["peer"]["seconds"][peer_key] / rec["jacntk"]["seconds"][jac_key]
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def _verdict(values: list, ok) -> str:
    if not values:
        return "not measured"
    bad = sum(not ok(v) for v in values)
    return "met" if bad == 0 else f"**MISSED** in {bad} of {len(values)} rows"


def _speedups(records: list[dict], peer_key: str, jac_key: str, label) -> list[tuple]:
    """``(label(record), speed-up)`` of the records that have both times."""
    pairs = [(label(r), speedup(r, peer_key, jac_key)) for r in records]
    return [(name, v) for name, v in pairs if v is not None]


def _speedup_goal(text: str, speedups: list[tuple], target: float) -> str:
    """``- text: verdict (label: 4.2x, ...)``."""
    listed = ", ".join(f"{name}: {v:.1f}x" for name, v in speedups)
    return (
        f"- {text}: "
        + _verdict([v for _, v in speedups], lambda v: v >= target)
        + (f" ({listed})" if speedups else "")
    )


def _agreement_goal(text: str, values: list[float], tol: float) -> str:
    """``- text: verdict (worst 1.0e-12)``."""
    return (
        f"- {text}: "
        + _verdict(values, lambda v: v <= tol)
        + (f" (worst {max(values):.1e})" if values else "")
    )


#: the stamp of records written before runs were stamped (``_harness.run_stamp``)
EARLIER_RUN = (
    "2026-11-22 (issue 7 harness, before run stamps; benchmarks/peers/results.json as "
    "committed in 9122799 and earlier)"
)


def run_label(rec: dict) -> str:
    """``"<day> <start>, commit <hash>"`` of the run that measured ``rec`` (``EARLIER_RUN``
    for unstamped records)."""
    run = rec.get("run")
    return f"{run['day']} {run['start']}, commit {run['commit']}" if run else EARLIER_RUN


def runs_of(records: list[dict]) -> str:
    """The runs the records come from, with their row counts: ``"A (36 rows); B (2 rows)"``."""
    counts: dict[str, int] = {}
    for r in records:
        counts[run_label(r)] = counts.get(run_label(r), 0) + 1
    return "; ".join(f"{label} ({n} row{'s' * (n != 1)})" for label, n in counts.items())


def _row_label(r: dict) -> str:
    return f"{r['act']} d={r['d']}"


def _float32_notes(rows64: list[dict], rows32: list[dict]) -> str:
    """Both libraries' float64 and float32 one-call times of each (activation, d)."""
    f64 = {(r["act"], r["d"]): r for r in rows64}
    notes = []
    for r32 in rows32:
        try:
            r64 = f64[r32["act"], r32["d"]]
            j64, j32 = r64["jacntk"]["seconds"]["nngp+ntk"], r32["jacntk"]["seconds"]["nngp+ntk"]
            p64, p32 = r64["peer"]["seconds"]["nngp+ntk"], r32["peer"]["seconds"]["nngp+ntk"]
        except (KeyError, TypeError):
            continue
        notes.append(
            f"{_row_label(r32)}: jacntk {j64:.2f} s -> {j32:.2f} s, "
            f"neural-tangents {p64:.2f} s -> {p32:.2f} s"
        )
    return "; ".join(notes)


def _seconds_goal(text: str, rows: list[dict], key: str, limit: float) -> str:
    """``- text: verdict (label: 0.31 s, ...)`` on jacntk's absolute time ``key``."""
    times = []
    for r in rows:
        value = r.get("jacntk", {}).get("seconds", {}).get(key)
        if value is not None:
            times.append((f"{_row_label(r)} {r['dtype']}", value))
    listed = ", ".join(f"{name}: {v:.2f} s" for name, v in times)
    return (
        f"- {text}: "
        + _verdict([v for _, v in times], lambda v: v <= limit)
        + (f" ({listed})" if times else "")
    )


def render_goals(by_task: dict[str, list[dict]]) -> list[str]:
    """Issue 14's scalar targets (from the stamped scalar rows, each ratio from one row where
    the two libraries ran alternately) and issue 7's remaining targets, each marked met /
    MISSED / not measured."""
    scalar = [r for r in by_task.get("scalar", []) if "run" in r]
    at_10k = {
        dtype: [r for r in scalar if r["N"] == 10000 and r["dtype"] == dtype]
        for dtype in ("float64", "float32")
    }
    lines = ["### Goals (issue 14, scalar kernels)", ""]
    if scalar:
        lines += [f"From the scalar rows of: {runs_of(scalar)}.", ""]
    gelu = [r for r in at_10k["float64"] if r["act"] == "gelu"]
    lines.append(
        _speedup_goal(
            "GELU: jacntk NNGP + NTK (one call) >= 4x neural-tangents at N = 10,000 (float64)",
            _speedups(gelu, "nngp+ntk", "nngp+ntk", _row_label),
            4,
        )
    )
    for dtype, target in (("float64", 4), ("float32", 2)):
        line = _speedup_goal(
            f"NNGP + NTK together (jacntk one call) >= {target}x at N = 10,000 ({dtype})",
            _speedups(at_10k[dtype], "nngp+ntk", "nngp+ntk", _row_label),
            target,
        )
        if dtype == "float32" and (notes := _float32_notes(at_10k["float64"], at_10k[dtype])):
            line += (
                ". float64 -> float32 times of the one call (jacntk's float32 path: float32 "
                "GEMM and layer maps, diagonal and near-collinear ReLU pairs in float64; JAX "
                "with x64 off): " + notes
            )
        lines.append(line)
    erf_relu = [r for r in at_10k["float64"] if r["act"] in ("erf", "relu")]
    lines.append(
        _speedup_goal(
            "erf / relu: jacntk NTK alone >= 6x neural-tangents (NNGP + NTK, its one call) at "
            "N = 10,000 (float64)",
            _speedups(erf_relu, "nngp+ntk", "ntk", _row_label),
            6,
        )
    )
    d10 = [r for r in at_10k["float64"] + at_10k["float32"] if r["d"] == 10]
    lines.append(_seconds_goal("d = 10: jacntk scalar NTK <= 0.5 s at N = 10,000", d10, "ntk", 0.5))
    gelu64 = [r for r in scalar if r["act"] == "gelu" and r["dtype"] == "float64"]
    worst = [max(r["max_rel_diff"]["nngp"], r["max_rel_diff"]["ntk"])
             for r in gelu64 if "max_rel_diff" in r]  # fmt: skip
    lines.append(
        _agreement_goal(
            "GELU values agree with neural-tangents to <= 1e-12 relative (float64, NNGP and "
            "NTK, all compared entries, every N and d)",
            worst,
            1e-12,
        )
    )
    lines += ["", "### Goals (issue 7)", ""]
    for dtype, tol, text in (
        ("float64", 1e-10, "1e-10 in float64 (off the ReLU diagonal, see above)"),
        ("float32", 1e-5, "1e-5 in float32 (off the ReLU diagonal)"),
    ):
        rows = [r for r in scalar if r["dtype"] == dtype and "max_rel_diff" in r]
        worst = [max(r["max_rel_diff"]["nngp_offdiag"], r["max_rel_diff"]["ntk_offdiag"])
                 for r in rows]  # fmt: skip
        lines.append(_agreement_goal(f"scalar values agree to <= {text}", worst, tol))
    jac = by_task.get("jacobian", [])
    for route, key in (("structured fields", "fields"), ("dense matrix", "fields+dense")):
        js = _speedups(jac, "extrapolated", key, lambda r: f"d={r['d']} N={r['N']}")
        lines.append(_speedup_goal(f">= 20x on the Jacobian-augmented kernel, {route}", js, 20))
    blocks = [r["max_rel_diff"]["blocks"] for r in jac if "max_rel_diff" in r]
    lines.append(_agreement_goal("Jacobian blocks agree to <= 1e-10 (float64)", blocks, 1e-10))
    dyn = [r["max_rel_diff"]["values"] for r in by_task.get("dynamics", []) if "max_rel_diff" in r]
    lines.append(_agreement_goal("dynamics predictions agree to <= 1e-6", dyn, 1e-6))
    others = jac + by_task.get("dynamics", [])
    if others:
        lines += ["", f"Jacobian and dynamics rows from: {runs_of(others)}."]
    return lines + [""]


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
