"""mfhelm.localca: the local CA and the serving certificate it issues, as
Python's ssl (the Azure SDK's transport underneath) verifies them; and
mfhelm's Metaflow extension's side of the CA (mfext config/local_profile.py)."""

from __future__ import annotations

import contextlib
import datetime
import os
import ssl
import sys
from pathlib import Path

import pytest
from cryptography import x509

from mfhelm import localca

sys.path.insert(0, str(Path(localca.__file__).parent / "mfext"))
from metaflow_extensions.mfhelm.config import local_profile  # noqa: E402


def _handshake(c: ssl.SSLObject, s: ssl.SSLObject, bios: tuple) -> None:
    c_in, c_out, s_in, s_out = bios
    for _ in range(10):
        for side, out, peer_in in ((c, c_out, s_in), (s, s_out, c_in)):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
            peer_in.write(out.read())
    c.do_handshake()  # raises unless verified


def _context(tmp_path: Path, ca: str, cert: str, key: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    (tmp_path / "ca.pem").write_text(ca)
    (tmp_path / "c.pem").write_text(cert)
    (tmp_path / "k.pem").write_text(key)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    return server, client


@pytest.mark.parametrize("host", ["mf-azurite.ns.svc.cluster.local", "mf-entra-emulator.ns",
                                  "localhost", "127.0.0.1"])
def test_the_serving_certificate_verifies_for_every_name(tmp_path: Path, host: str):
    ca, ca_key = localca.generate_ca("mf")
    dns, ips = localca.serving_names("mf", "ns")
    cert, key = localca.issue_serving(ca, ca_key, dns, ips)
    server, client = _context(tmp_path, ca, cert, key)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=host)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    _handshake(c, s, (c_in, c_out, s_in, s_out))


def test_a_name_outside_the_certificate_fails(tmp_path: Path):
    ca, ca_key = localca.generate_ca("mf")
    cert, key = localca.issue_serving(ca, ca_key, ["localhost"], [])
    server, client = _context(tmp_path, ca, cert, key)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname="mf-azurite.other")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(c, s, (c_in, c_out, s_in, s_out))


def test_serving_is_current_only_for_this_ca_these_names_and_time_left():
    ca, ca_key = localca.generate_ca("mf")
    other, _ = localca.generate_ca("mf")
    dns, ips = localca.serving_names("mf", "ns")
    cert, _ = localca.issue_serving(ca, ca_key, dns, ips)
    assert localca.serving_is_current(cert, ca, dns, ips)
    assert not localca.serving_is_current(cert, other, dns, ips)
    assert not localca.serving_is_current(cert, ca, [*dns, "extra"], ips)
    assert not localca.serving_is_current("not a pem", ca, dns, ips)
    parsed = x509.load_pem_x509_certificate(cert.encode())
    life = parsed.not_valid_after_utc - parsed.not_valid_before_utc
    assert life <= localca.SERVING_VALIDITY + datetime.timedelta(minutes=5)
    ca_cert = x509.load_pem_x509_certificate(ca.encode())
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_flow_pods_get_the_in_cluster_names():
    env = localca.flows_env("mf", "ns", "PEM", "a")
    assert env["METAFLOW_MFHELM_LOCAL_BLOB_ENDPOINT"] == \
        "https://mf-azurite.ns.svc.cluster.local:10000/devstoreaccount1/"
    assert env["METAFLOW_MFHELM_LOCAL_AUTHORITY"] == \
        "https://mf-entra-emulator.ns.svc.cluster.local:8443"
    assert env["METAFLOW_DEFAULT_AZURE_CLIENT_PROVIDER"] == "mfhelm-local"
    assert env["METAFLOW_MFHELM_LOCAL_CA"] == "PEM"


# --- mfext's config/local_profile.py ------------------------------------------------------

def test_trust_adds_the_local_ca_to_the_current_bundle(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(local_profile.tempfile, "gettempdir", lambda: str(tmp_path))
    ca, _ = localca.generate_ca("mf")
    base = tmp_path / "corporate.pem"
    other, _ = localca.generate_ca("corp")
    base.write_text(other)
    ca_file = tmp_path / "config.ca.pem"
    ca_file.write_text(ca)
    environ = {"REQUESTS_CA_BUNDLE": str(base)}
    path = local_profile.trust_local_ca(str(ca_file), environ)
    assert environ["REQUESTS_CA_BUNDLE"] == path
    bundle = Path(path).read_text()
    assert other.strip() in bundle and ca.strip() in bundle
    assert os.stat(os.path.dirname(path)).st_mode & 0o077 == 0
    # Again (a task subprocess inherits it): the same bundle, not a longer one.
    assert local_profile.trust_local_ca(str(ca_file), environ) == path
    # PEM text (the flow pods' Secret) works the same.
    environ2: dict[str, str] = {}
    pem_path = local_profile.trust_local_ca(ca, environ2)
    assert ca.strip() in Path(pem_path).read_text()
    import certifi

    assert Path(certifi.where()).read_text().strip()[:200] in Path(pem_path).read_text()


def test_trust_without_a_ca_changes_nothing():
    environ: dict[str, str] = {}
    assert local_profile.trust_local_ca(None, environ) is None
    assert environ == {}


def test_an_unreadable_ca_file_names_the_fix(tmp_path: Path):
    with pytest.raises(local_profile.LocalProfileError, match="mfhelm config --local"):
        local_profile.trust_local_ca(str(tmp_path / "missing.pem"), {})


def test_the_pods_blob_endpoint_wins_where_set():
    assert local_profile.blob_endpoint("https://localhost:10000/x/", None) == \
        "https://localhost:10000/x/"
    assert local_profile.blob_endpoint("https://localhost:10000/x/", "https://in/x/") == \
        "https://in/x/"
