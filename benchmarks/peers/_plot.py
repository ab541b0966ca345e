"""``benchmarks/peers_scaling.png``: time and peak memory against N for both libraries."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: the series whose worker's peak memory is drawn (one per library and task)
MEMORY_SERIES = {("jacntk", "ntk"), ("peer", "nngp+ntk"), ("jacntk", "fields"),
                 ("peer", "extrapolated")}  # fmt: skip


def plot(records: list[dict], path: Path, cap_gib: float | None = None) -> None:
    """Time and peak memory against N for both libraries, one PNG: scalar NTK and NNGP + NTK
    (erf, float64, rows of stamped runs) on the left, Jacobian-augmented NTK on the right.  A
    neural-tangents row that failed (out of memory under the cap) is drawn as an x at the cap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    series = {
        "scalar": [
            ("jacntk", "ntk", "o-", "jacntk NTK"),
            ("jacntk", "nngp+ntk", "^:", "jacntk NNGP+NTK (one call)"),
            ("peer", "nngp+ntk", "s--", "NT NNGP+NTK"),
        ],
        "jacobian": [
            ("jacntk", "fields", "o-", "jacntk fields"),
            ("jacntk", "fields+dense", "^:", "jacntk fields+dense"),
            ("peer", "extrapolated", "s--", "NT autodiff (extrap.)"),
        ],
    }
    for col, task in enumerate(("scalar", "jacobian")):
        recs = [r for r in records if r["task"] == task and r["dtype"] == "float64"]
        recs = [r for r in recs if r["act"] == "erf"]
        if task == "scalar":  # the stamped rows only: earlier rows timed two calls for "both"
            recs = [r for r in recs if "run" in r]
        for k, d in enumerate(sorted({r["d"] for r in recs})):
            rs = sorted((r for r in recs if r["d"] == d), key=lambda r: r["N"])
            color = colors[k % len(colors)]
            for lib, key, style, name in series[task]:
                res = [(r["N"], r.get(lib, {})) for r in rs]
                pts = [(n, x["seconds"][key]) for n, x in res if key in x.get("seconds", {})]
                if pts:
                    axes[0, col].loglog(*np.transpose(pts), style, color=color,
                                        label=f"{name} d={d}")  # fmt: skip
                if (lib, key) in MEMORY_SERIES:
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
    axes[0, 0].set_title("Scalar NTK / NNGP+NTK Grams (erf, float64): time")
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
