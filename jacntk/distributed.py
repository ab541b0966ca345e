"""Connecting to Dask: an existing scheduler (address or file, optionally TLS) or an embedded
``LocalCluster`` that is started and closed for the user (refused, with one paragraph saying why,
from a script's code outside the ``__main__`` guard; closed without connection-error noise).

Every computing entry point takes ``client=`` (a ``distributed.Client``) in Python; the CLI's
scheduler/TLS arguments (``jacntk.cli._arguments``) build a :class:`ClusterOptions`.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import multiprocessing
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ClusterOptions:
    """Where to run: an address, a scheduler file, or (neither) an embedded local cluster.

    ``workers`` sets the embedded cluster's process count (default: one per two cores, at least
    one); each worker gets ``cores // workers`` Numba threads and a single Dask thread, so that
    workers x threads equals the core count and nothing oversubscribes.
    ``tls_ca``, ``tls_cert``, ``tls_key`` enable TLS with mutual authentication.
    """

    scheduler: str | None = None
    scheduler_file: str | None = None
    workers: int | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def security(self):
        if not (self.tls_ca or self.tls_cert or self.tls_key):
            return None
        if not (self.tls_ca and self.tls_cert and self.tls_key):
            raise ValueError("TLS needs all three of --tls-ca, --tls-cert and --tls-key")
        for path in (self.tls_ca, self.tls_cert, self.tls_key):
            if not os.path.exists(path):
                raise FileNotFoundError(f"TLS file {path} does not exist")
        from distributed.security import Security

        return Security(
            tls_ca_file=self.tls_ca,
            tls_client_cert=self.tls_cert,
            tls_client_key=self.tls_key,
            require_encryption=True,
        )


def local_layout(workers: int | None = None, cores: int | None = None) -> tuple[int, int]:
    """``(worker processes, Numba threads per worker)`` with product equal to the core count."""
    cores = cores or os.cpu_count() or 1
    if workers is None:
        workers = max(1, cores // 2)
    if workers < 1:
        raise ValueError(f"workers must be positive, got {workers}")
    return workers, max(1, cores // workers)


def _address_in(scheduler_file: str) -> str:
    """The scheduler address recorded in a file written by ``dask scheduler --scheduler-file``."""
    import json

    try:
        with open(scheduler_file) as fh:
            address = json.load(fh)["address"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"scheduler file {scheduler_file} holds no scheduler address ({exc})"
        ) from None
    if not isinstance(address, str) or "://" not in address:
        raise ValueError(f"scheduler file {scheduler_file} holds no scheduler address")
    return address


#: Why an embedded cluster cannot start from code outside the ``__main__`` guard (one paragraph).
GUARD_MESSAGE = (
    "jacntk's embedded Dask cluster starts its workers as new Python processes, and each of them "
    "first re-runs your main script{script} from the top (multiprocessing's 'spawn' start "
    "method).  Code that starts a cluster (jacntk.assemble, verify or solve without client=) at "
    "the script's top level{line} therefore runs again in every worker, which cannot work.  Put "
    "it under\n"
    '    if __name__ == "__main__":\n'
    "(see 'Safe importing of main module' in Python's multiprocessing documentation), or pass "
    "client= / a scheduler address to use a cluster started elsewhere."
)


class MainGuardError(RuntimeError):
    """An embedded cluster was requested from a script's unguarded top-level code."""


def _spawns_main() -> bool:
    """Whether Dask's worker processes re-run the main script (start method spawn/forkserver)."""
    import dask

    return dask.config.get("distributed.worker.multiprocessing-method", "spawn") != "fork"


def in_spawned_bootstrap() -> bool:
    """True in a new process while it re-runs the parent's main script: multiprocessing's
    bootstrapping phase, flagged by the ``_inheriting`` attribute that its own
    ``_check_not_importing_main`` tests (``parent_process()`` is only set after that phase)."""
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def _unguarded_main_line() -> tuple[str, int] | None:
    """``(script, line)`` when the caller's stack runs top-level code of a main *script* that is
    not inside an ``if __name__ == ...:`` block; None when guarded, interactive or unknown.

    The outermost frame executing the ``__main__`` module's top level is located and its current
    line is looked up in the script's syntax tree (read from disk; unreadable -> None).
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not str(path).endswith(".py"):
        return None  # python -c, the REPL, Jupyter: nothing is re-run
    frame, line = sys._getframe(1), None
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals is vars(main):
            line = frame.f_lineno
        frame = frame.f_back
    if line is None:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), path)
    except (OSError, SyntaxError, ValueError):
        return None

    def guarded(nodes, inside: bool) -> bool | None:
        for node in nodes:
            if not (node.lineno <= line <= (node.end_lineno or node.lineno)):
                continue
            names_guard = isinstance(node, ast.If) and any(
                isinstance(n, ast.Name) and n.id == "__name__" for n in ast.walk(node.test)
            )
            children = [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)]
            found = guarded(children, inside or names_guard)
            return inside or names_guard if found is None else found
        return None

    return None if guarded(tree.body, False) else (str(path), line)


def check_main_guard() -> None:
    """Refuse to start an embedded cluster from unguarded top-level code of a main script.

    In the parent: raises :class:`MainGuardError` (before any process starts) when the calling
    stack runs the main script's top level outside ``if __name__ == "__main__":``.  In a worker
    process re-running the script (the case the parent could not see): prints
    :data:`GUARD_MESSAGE` to stderr and exits with status 1, so the worker stops at once.
    Does nothing when Dask's workers are forked (nothing is re-run).
    """
    if not _spawns_main():
        return
    if in_spawned_bootstrap():
        print(GUARD_MESSAGE.format(script="", line=""), file=sys.stderr, flush=True)
        raise SystemExit(1)
    found = _unguarded_main_line()
    if found is not None:
        script, line = found
        raise MainGuardError(
            GUARD_MESSAGE.format(script=f" {os.path.basename(script)}", line=f" (line {line})")
        )


def _set_distributed_handlers(level: int) -> list[tuple[logging.Handler, int]]:
    """Set the level of the ``distributed`` logger's stream handlers (the mechanism of Dask's
    own ``silence_logs``); returns ``(handler, old level)`` pairs for restoring."""
    handlers = [
        h for h in logging.getLogger("distributed").handlers if isinstance(h, logging.StreamHandler)
    ]
    old = [(h, h.level) for h in handlers]
    for h in handlers:
        h.setLevel(level)
    return old


def _silence_closing_worker() -> None:
    """Run on each worker just before the embedded cluster closes: its shutdown is not news."""
    _set_distributed_handlers(logging.CRITICAL)


@contextlib.contextmanager
def _quiet_shutdown(client) -> Iterator[None]:
    """Silence what Dask logs while the embedded cluster it is closing tears down its connections
    (``CommClosedError`` tracebacks, "Worker process still alive after 4.0 seconds, killing"):
    the ``distributed`` handlers of the workers (via ``client.run``) and of this process (the
    scheduler and nannies) are raised to CRITICAL for the duration of the close only.  Errors of
    the computation itself reached the caller as exceptions before."""
    if client is not None:
        with contextlib.suppress(Exception):
            client.run(_silence_closing_worker)
    old = _set_distributed_handlers(logging.CRITICAL)
    try:
        yield
    finally:
        for handler, level in old:
            handler.setLevel(level)


#: glibc malloc settings for every jacntk worker process.  Dask's nanny default,
#: ``MALLOC_TRIM_THRESHOLD_=65536``, also switches off glibc's adaptive mmap threshold, so every
#: temporary array above 128 KiB is a fresh mmap, page-faulted on first touch and unmapped when
#: freed: the structured (Jacobian) product of one N = 1,500, d = 784 store ran 1.7x slower in
#: a worker than in the client for that reason alone (0.25 s against 0.14 s).  Freed memory up
#: to 256 MiB stays in the heap and arrays up to 32 MiB come from it (0.12 s).  The cluster/
#: configurations set the same values.
WORKER_MALLOC = {"MALLOC_TRIM_THRESHOLD_": "268435456", "MALLOC_MMAP_THRESHOLD_": "33554432"}


def _start_local_cluster(n_workers: int, env: dict[str, str]):
    """A ``LocalCluster`` (processes, loopback) whose workers start with ``env`` already set.

    The thread counts go into ``distributed.nanny.pre-spawn-environ`` (set in the nanny before it
    spawns the worker, Dask's documented place for ``OMP_NUM_THREADS`` and the like) as well as
    ``env`` (set in the worker after start): Numba and OpenBLAS read them when first imported,
    and the worker imports both while re-running the main script, before ``env`` is applied
    (Numba then refused to change ``NUMBA_NUM_THREADS`` once its pool was up).

    Dask lets a variable already in ``os.environ`` override that config, and its nanny writes
    the pre-spawn values into this process's ``os.environ`` without restoring them, so a
    second cluster with another layout would inherit the first one's thread counts (measured:
    2 OpenBLAS threads in each of 2 one-thread workers).  The variables are therefore set here
    for the start and this process's own environment restored afterwards.
    """
    import dask
    from distributed import LocalCluster

    pre_spawn = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **env}
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": pre_spawn}):
            return LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",  # loopback, any free port (None binds 8787)
                env=env,
                memory_limit="auto",
            )
    except RuntimeError as exc:
        if "failed to start" not in str(exc):
            raise
        raise RuntimeError(
            f"the embedded Dask cluster could not start its workers ({exc}).  If a message "
            "above explains why, follow it; the usual cause is a script that starts jacntk work "
            "outside if __name__ == '__main__': (see 'Safe importing of main module' in "
            "Python's multiprocessing documentation)."
        ) from None
    finally:
        for name in set(os.environ) - set(saved):
            del os.environ[name]
        os.environ.update({k: v for k, v in saved.items() if os.environ.get(k) != v})


@contextlib.contextmanager
def get_client(options: ClusterOptions | None = None, client=None) -> Iterator:
    """Yield a ``distributed.Client``: ``client`` itself if given, else one connected to the
    scheduler named in ``options``, else one on an embedded ``LocalCluster`` (127.0.0.1,
    processes) that is closed on exit, quietly.

    The embedded cluster's workers re-run the main script, so it is refused (``MainGuardError``,
    one paragraph) from a script's top level outside ``if __name__ == "__main__":``; see
    :func:`check_main_guard`.
    """
    if client is not None:
        yield client
        return
    from distributed import Client

    options = options or ClusterOptions()
    security = options.security()
    if options.scheduler or options.scheduler_file:
        kwargs = {"security": security} if security is not None else {}
        if options.scheduler_file:
            if not os.path.exists(options.scheduler_file):
                raise FileNotFoundError(f"scheduler file {options.scheduler_file} does not exist")
            address = _address_in(options.scheduler_file)
        else:
            address = options.scheduler
        if address.startswith("tls://") and security is None:
            raise ValueError(
                f"scheduler {address} uses TLS: give the client certificate with --tls-ca, "
                "--tls-cert and --tls-key"
            )
        c = Client(address, timeout="30s", **kwargs)
        try:
            yield c
        finally:
            c.close()
        return
    check_main_guard()
    n_workers, threads = local_layout(options.workers)
    names = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    env = {**dict.fromkeys(names, str(threads)), **WORKER_MALLOC}
    cluster = _start_local_cluster(n_workers, env)
    c = None
    try:
        c = Client(cluster)
        yield c
    finally:
        # Client first, then the cluster (workers, then the scheduler); what Dask logs about the
        # connections this tears down (a nanny kills a worker still exiting after 4 s, and the
        # scheduler then reports CommClosedError) is silenced for the close only.
        with _quiet_shutdown(c):
            if c is not None:
                c.close()
            cluster.close()
