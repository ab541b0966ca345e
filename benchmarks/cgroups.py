"""Memory caps on real processes: cgroup-v1 memory groups below this process's own, shared by
the benchmarks and the tests that cap Dask workers and clients (``tests/conftest.py``'s
``memory_cgroup`` fixture).  Needs root and a v1 memory hierarchy; :func:`reason_unavailable`
says why not where they cannot be made."""

from __future__ import annotations

import os
import shutil
import time
import uuid


def _own_group() -> str | None:
    from jacntk.linalg._stored import memory_cgroup

    group = memory_cgroup()
    return group[0] if group is not None and group[1] == "memory.limit_in_bytes" else None


def reason_unavailable() -> str | None:
    """None if memory cgroups can be created here, else why not."""
    own = _own_group()
    if own is None or not os.access(own, os.W_OK):
        return "no writable cgroup-v1 memory hierarchy here (needs root)"
    return None


class MemoryCgroups:
    """``cap(limit_bytes) -> prefix``: a new memory cgroup limited to ``limit_bytes``;
    ``[*prefix, cmd, ...]`` runs ``cmd`` inside it (the kernel kills it past the limit).
    Used as a context manager: every group made is removed on exit (once it is empty)."""

    def __init__(self, name: str = "jacntk"):
        if reason_unavailable() is not None:
            raise RuntimeError(reason_unavailable())
        self.own, self.name, self.made = _own_group(), name, []

    def cap(self, limit_bytes: int) -> list[str]:
        group = os.path.join(self.own, f"{self.name}-{uuid.uuid4().hex[:8]}")
        os.mkdir(group)
        self.made.append(group)
        with open(os.path.join(group, "memory.limit_in_bytes"), "w") as f:
            f.write(str(int(limit_bytes)))
        procs = os.path.join(group, "cgroup.procs")
        return ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh"]

    def __enter__(self) -> MemoryCgroups:
        return self

    def __exit__(self, *exc) -> None:
        for group in self.made:
            for _ in range(50):  # the group empties once its processes are gone
                try:
                    os.rmdir(group)
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                shutil.rmtree(group, ignore_errors=True)


def peak_mib(prefix: list[str]) -> float:
    """``memory.max_usage_in_bytes`` (MiB) of the group a :meth:`MemoryCgroups.cap` prefix
    enters."""
    procs = prefix[2].split("> ", 1)[1].split(" &&", 1)[0]
    with open(procs.replace("cgroup.procs", "memory.max_usage_in_bytes")) as f:
        return int(f.read()) / 2**20
