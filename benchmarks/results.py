"""Shared by every benchmark: machine description, medians, and writing one section of
``benchmarks/RESULTS.md`` (between ``<!-- begin NAME -->`` and ``<!-- end NAME -->`` markers,
under a file lock, so benchmarks can run in any order and each replaces only its own table)."""

from __future__ import annotations

import fcntl
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = "# jacntk benchmark results\n\nEach section is written by the script it names.\n"


def machine() -> str:
    """One line: CPU model, cores, memory, Python and key library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import numba
    import numpy

    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM; Python {platform.python_version()}, "
        f"numpy {numpy.__version__}, numba {numba.__version__}"
    )


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs (seconds)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_section(name: str, body: str) -> None:
    """Replace (or append) section ``name`` of RESULTS.md with ``body``, stamped with the date,
    the git commit and the machine."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=RESULTS.parent,
        ).stdout.strip()
    except OSError:
        commit = "?"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    block = (
        f"<!-- begin {name} -->\n## {name}\n\n_{stamp}, commit {commit}; {machine()}_\n\n"
        f"{body.rstrip()}\n<!-- end {name} -->\n"
    )
    with open(RESULTS.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = RESULTS.read_text() if RESULTS.exists() else HEADER
        begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->\n"
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            text = head + block + rest.split(end, 1)[1]
        else:
            text = text.rstrip() + "\n\n" + block
        RESULTS.write_text(text)


def publish(name: str, body: str, quick: bool) -> None:
    """Print a benchmark's body; a full run replaces its section ``name`` of RESULTS.md, a
    quick run says it did not (with the machine)."""
    print(body, flush=True)
    if quick:
        print(f"(quick run: RESULTS.md not written) {machine()}")
    else:
        write_section(name, body)
