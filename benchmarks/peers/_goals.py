"""Issue 7's targets against the recorded rows, and where the Jacobian-kernel time goes: two
Markdown parts of the ``peers`` section (``_render`` places them)."""

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


def _float32_note(scalar64: list[dict], a: str, d: int, r32: dict) -> str:
    """Both libraries' float64 and float32 times of one (activation, d) at N = 10,000."""
    f64 = {(r["act"], r["d"]): r for r in scalar64}
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


def render_goals(by_task: dict[str, list[dict]]) -> list[str]:
    """Issue 7's targets, each marked met / MISSED / not measured from the recorded rows."""
    lines = ["### Goals (issue 7)", ""]
    scalar = by_task.get("scalar", [])
    at_10k = {
        dtype: [r for r in scalar if r["N"] == 10000 and r["dtype"] == dtype]
        for dtype in ("float64", "float32")
    }
    sp = _speedups(at_10k["float64"], "nngp+ntk", "ntk", lambda r: f"{r['act']} d={r['d']}")
    lines.append(
        _speedup_goal(
            "jacntk >= 4x faster than neural-tangents on the scalar NTK at N = 10,000 (float64)",
            sp,
            4,
        )
    )
    sp32 = [(r, speedup(r, "nngp+ntk", "ntk")) for r in at_10k["float32"]]
    sp32 = [(r, v) for r, v in sp32 if v is not None]
    if sp32:
        notes = (
            f"{r['act']} d={r['d']}: {v:.1f}x"
            + _float32_note(at_10k["float64"], r["act"], r["d"], r)
            for r, v in sp32
        )
        lines.append(
            "- the same in float32: "
            + _verdict([v for _, v in sp32], lambda v: v >= 4)
            + ". Where the time goes: jacntk computes in float64 and rounds the result "
            "(docs/math.md §1.6), so its float32 time is about its float64 time (plus a copy), "
            "while JAX halves its arithmetic and memory traffic in float32: " + "; ".join(notes)
        )
    jac = by_task.get("jacobian", [])
    for route, key in (("structured fields", "fields"), ("dense matrix", "fields+dense")):
        js = _speedups(jac, "extrapolated", key, lambda r: f"d={r['d']} N={r['N']}")
        lines.append(_speedup_goal(f">= 20x on the Jacobian-augmented kernel, {route}", js, 20))
    for dtype, tol, text in (
        ("float64", 1e-10, "1e-10 in float64 (off the ReLU diagonal, see above)"),
        ("float32", 1e-5, "1e-5 in float32 (off the ReLU diagonal)"),
    ):
        rows = [r for r in scalar if r["dtype"] == dtype and "max_rel_diff" in r]
        worst = [max(r["max_rel_diff"]["nngp_offdiag"], r["max_rel_diff"]["ntk_offdiag"])
                 for r in rows]  # fmt: skip
        lines.append(_agreement_goal(f"scalar values agree to <= {text}", worst, tol))
    blocks = [r["max_rel_diff"]["blocks"] for r in jac if "max_rel_diff" in r]
    lines.append(_agreement_goal("Jacobian blocks agree to <= 1e-10 (float64)", blocks, 1e-10))
    dyn = [r["max_rel_diff"]["values"] for r in by_task.get("dynamics", []) if "max_rel_diff" in r]
    lines.append(_agreement_goal("dynamics predictions agree to <= 1e-6", dyn, 1e-6))
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
