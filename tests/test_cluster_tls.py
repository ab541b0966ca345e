"""TLS with mutual authentication: a scheduler and two workers on 127.0.0.1 started by
``cluster/start-local.sh --tls`` with certificates from ``cluster/make-certs.sh``.

An assembly through them equals ``jacntk.kernel``; clients without a certificate, with another
CA's certificate, or over plain TCP are refused.
"""

from __future__ import annotations

import shutil

import pytest
from test_cluster_scripts import (
    assert_store_equals_kernel,
    make_points,
    run_jacntk,
    run_script,
    start_local,
    stop_local,
)

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed"),
]


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    """``(address, certs, rogue_certs, run_dir)``: a TLS scheduler + 2 TLS workers, stopped after
    the module.  ``rogue_certs`` come from a second, unrelated CA."""
    base = tmp_path_factory.mktemp("tls")
    certs, rogue, run = base / "certs", base / "rogue", base / "run"
    for target in (certs, rogue):
        out = run_script("make-certs.sh", target)
        assert out.returncode == 0, out.stderr
    try:
        address = start_local(run, "--tls", str(certs), workers=2)
        yield address, certs, rogue, run
    finally:
        stop_local(run)


def _tls_options(certs, ca=None) -> list[str]:
    return [
        "--tls-ca",
        str(ca or certs / "ca.pem"),
        "--tls-cert",
        str(certs / "client.pem"),
        "--tls-key",
        str(certs / "client.key"),
    ]


def _assemble(tmp_path, run, *options: str, n: int = 20):
    """``jacntk assemble`` of ``n`` random points through the cluster's scheduler file;
    returns ``(X, store, CompletedProcess)``."""
    X = make_points(tmp_path / "X.npy", n=n, d=4)
    store = tmp_path / "gram.zarr"
    out = run_jacntk(
        "assemble", tmp_path / "X.npy", "--out", store, "--tile", "16",
        "--scheduler-file", run / "scheduler.json", *options,
    )  # fmt: skip
    return X, store, out


def test_tls_scheduler_and_two_tls_workers_assemble_the_gram(tls_cluster, tmp_path):
    address, certs, _, run = tls_cluster
    assert address.startswith("tls://127.0.0.1:"), address
    X, store, out = _assemble(tmp_path, run, *_tls_options(certs), "--json", n=40)
    assert out.returncode == 0, out.stderr
    assert '"workers": 2' in out.stdout, out.stdout  # both TLS workers were there
    assert_store_equals_kernel(store, X)


def _security(ca, cert, key):
    from distributed.security import Security

    return Security(
        tls_ca_file=str(ca),
        tls_client_cert=None if cert is None else str(cert),
        tls_client_key=None if key is None else str(key),
        require_encryption=True,
    )


@pytest.mark.parametrize(
    "client",
    ["no certificate at all", "right CA, no client certificate", "another CA", "plain TCP"],
)
def test_client_without_a_valid_certificate_is_refused(tls_cluster, client):
    from distributed import Client

    address, certs, rogue, _ = tls_cluster
    kwargs = {}
    if client == "right CA, no client certificate":
        kwargs["security"] = _security(certs / "ca.pem", None, None)
    elif client == "another CA":
        kwargs["security"] = _security(rogue / "ca.pem", rogue / "client.pem", rogue / "client.key")
    elif client == "plain TCP":
        address = address.replace("tls://", "tcp://")
    with pytest.raises(Exception) as info:  # noqa: B017 - distributed raises several types
        with Client(address, timeout="5s", **kwargs):
            pass
    assert not isinstance(info.value, AssertionError)


def test_client_with_the_clusters_certificate_connects_and_sees_both_workers(tls_cluster):
    """The control for the refusals above: same scheduler, right certificate."""
    from distributed import Client

    address, certs, _, _ = tls_cluster
    security = _security(certs / "ca.pem", certs / "client.pem", certs / "client.key")
    with Client(address, security=security, timeout="10s") as client:
        workers = client.scheduler_info()["workers"]
    assert len(workers) == 2 and all(w.startswith("tls://127.0.0.1:") for w in workers)


def test_client_certificate_from_another_ca_is_refused_by_the_scheduler(tls_cluster):
    """Mutual authentication: the client trusts the scheduler (right CA file) but presents a
    certificate the scheduler's CA did not sign -- the scheduler hangs up.  Depending on when the
    client reads, the refusal arrives as the TLS alert ("unknown ca") or as the hang-up itself
    (an EOF in the handshake)."""
    from distributed import Client

    address, certs, rogue, _ = tls_cluster
    security = _security(certs / "ca.pem", rogue / "client.pem", rogue / "client.key")
    with pytest.raises(OSError, match="(?i)unknown ca|certificate|EOF occurred in violation"):
        with Client(address, security=security, timeout="5s"):
            pass


def test_cli_with_another_cas_certificate_is_refused_and_computes_nothing(tls_cluster, tmp_path):
    _, certs, rogue, run = tls_cluster
    _, store, out = _assemble(tmp_path, run, *_tls_options(rogue, ca=certs / "ca.pem"))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "jacntk assemble: error:" in out.stderr and "Traceback" not in out.stderr
    if store.exists():  # metadata may be written before connecting; no tile was computed
        from jacntk.store import GramStore

        assert GramStore.open(str(store)).info()["tiles_done"] == 0


def test_cli_without_certificate_gives_a_clear_error(tls_cluster, tmp_path):
    _, _, _, run = tls_cluster
    _, _, out = _assemble(tmp_path, run)
    assert out.returncode == 2, out.stderr
    assert "--tls-ca" in out.stderr and "Traceback" not in out.stderr
