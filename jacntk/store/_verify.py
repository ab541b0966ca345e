"""``GramStore.verify``: every recorded tile checked against its records, and a sample of
tiles recomputed from the stored inputs (docs/architecture.md §5.7)."""

from __future__ import annotations

import numpy as np

from ..kernels._compute import compute_tile
from ._format import ChecksumError, upper_tiles


def verify_store(store, sample: int, seed: int | None, progress: bool | None) -> dict:
    """The report of :meth:`jacntk.store.GramStore.verify` (see there)."""
    from concurrent.futures import ThreadPoolExecutor

    from ..progress import progress_bar

    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 0:
        raise ValueError(f"sample must be a non-negative integer, got {sample!r}")
    report = {"url": store.location.url, "damaged": [], "recomputed": []}
    report["fingerprint_ok"] = False
    try:
        X = store.points
        report["fingerprint_ok"] = True
    except ChecksumError:
        problem = "inputs X do not match the stored fingerprint"
        report["damaged"].append({"tile": None, "problem": problem})
    except Exception as exc:  # noqa: BLE001 - any read failure is damage to report
        report["damaged"].append({"tile": None, "problem": f"inputs X unreadable: {exc}"})
    done = [(i, j) for i, j in upper_tiles(store.n_tiles) if store.done[i, j]]
    planned = min(sample, len(done)) if report["fingerprint_ok"] else 0
    readable = []
    with progress_bar(len(done) + planned, "verify", progress, "tile") as bar:
        bar.set_postfix_str("checksums", refresh=False)
        with ThreadPoolExecutor(max(1, min(8, len(done)))) as pool:  # reads in parallel
            for (i, j), problems in zip(
                done, pool.map(lambda t: store.tile_problems(*t), done), strict=True
            ):
                if problems:
                    report["damaged"].append({"tile": [i, j], "problem": "; ".join(problems)})
                    bar.set_postfix_str(f"checksums, {len(report['damaged'])} damaged")
                else:
                    readable.append((i, j))
                bar.update(1)
        if sample and readable and report["fingerprint_ok"]:
            bar.set_postfix_str("recomputing")
            rng = np.random.default_rng(seed)
            picks = rng.choice(len(readable), size=min(sample, len(readable)), replace=False)
            plan = store.plan()
            rtol = 1e-10 if store.dtype == "float64" else 2e-6
            for p in sorted(picks):
                i, j = readable[p]
                xj = None if i == j else X[store.tile_slice(j)]
                want = compute_tile(
                    store.arch,
                    X[store.tile_slice(i)],
                    xj,
                    kind=store.kind,
                    jacobian=store.jacobian,
                    plan=plan,
                )
                want = want.astype(store.dtype).astype(np.float64)
                got = store.upper_tile(i, j).astype(np.float64)
                err = float(np.max(np.abs(got - want)))
                scale = max(1.0, float(np.max(np.abs(want))))
                report["recomputed"].append([i, j])
                if not err <= rtol * scale:
                    report["damaged"].append(
                        {"tile": [i, j], "problem": f"recomputed values differ by {err:.3e}"}
                    )
                bar.update(1)
        bar.set_postfix_str(f"{len(report['damaged'])} damaged")
    report["tiles_total"] = store.n_tiles * (store.n_tiles + 1) // 2
    report["tiles_done"] = len(done)
    report["missing"] = [list(t) for t in store.missing_tiles()]
    claims = bool(store.meta.get("complete"))
    report["ok"] = not report["damaged"] and not (claims and report["missing"])
    return report
