"""Connecting to Dask: an existing scheduler (address or file, optionally TLS) or an embedded
``LocalCluster`` that is started and closed for the user.

Every computing entry point takes ``client=`` (a ``distributed.Client``) in Python; the CLI's
scheduler/TLS arguments (``jacntk.cli._arguments``) build a :class:`ClusterOptions`.
"""

from __future__ import annotations

import contextlib
import os
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


@contextlib.contextmanager
def get_client(options: ClusterOptions | None = None, client=None) -> Iterator:
    """Yield a ``distributed.Client``: ``client`` itself if given, else one connected to the
    scheduler named in ``options``, else one on an embedded ``LocalCluster`` (127.0.0.1,
    processes) that is closed on exit."""
    if client is not None:
        yield client
        return
    from distributed import Client, LocalCluster

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
    n_workers, threads = local_layout(options.workers)
    env = {
        "NUMBA_NUM_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",  # loopback, any free port (None still binds 8787)
        env=env,
        memory_limit="auto",
    )
    try:
        with Client(cluster) as c:
            yield c
    finally:
        cluster.close()
