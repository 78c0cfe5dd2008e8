"""The local profile's TLS and token emulator: what `mfhelm install --local`
makes once and keeps, and what the laptop and the flow pods are told.

Metaflow reads Blob only with an Entra access token, and the Azure SDK sends
a bearer token only over HTTPS. So on the local profile Azurite serves HTTPS
with `--oauth basic`, from a certificate issued by a CA mfhelm generates once
(Secret `<release>-local-ca`, keys ca.crt and ca.key, kept across upgrades,
removed by `uninstall --purge`), and the chart's `entra-emulator` answers
Entra's token endpoint (`POST /<tenant>/oauth2/v2.0/token`) with tokens
Azurite accepts.

Secrets (all in the release namespace except the last):
- `<release>-local-ca`: the CA (ca.crt, ca.key). Made once, never replaced.
- `<release>-local-tls`: the serving certificate of Azurite and the emulator
  (tls.crt, tls.key, ca.crt), re-issued when its names or the CA change or it
  nears its end.
- `<release>-entra-emulator`: tenant-id, client-id and client-assertion, the
  one client the emulator serves. The assertion is made once and kept.
- `metaflow-airflow-local-ca`: ca.crt alone, for the Airflow chart's pods (its
  `volumes` in values.yaml cannot name a release, like the chart's other
  Airflow objects: one Airflow-enabled release per namespace).
- `<release>-local-flows`, in the flow namespace: the environment flow pods
  get through METAFLOW_KUBERNETES_SECRETS (where their Blob endpoint and
  token endpoint are inside the cluster, and the CA).

The emulator and Azurite's shared development key guard nothing real: this
is the local profile, with no Azure behind it.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from dataclasses import dataclass
from typing import Any

AZURITE_PORT = 10000
EMULATOR_PORT = 8443
AZURITE_ACCOUNT = "devstoreaccount1"
# The tenant and client the emulator serves (Entra-shaped, not Entra's).
TENANT_ID = "mfhelm-local"
CLIENT_ID = "mfhelm-local-flows"
STORAGE_SCOPE = "https://storage.azure.com/.default"
# The name Metaflow's DEFAULT_AZURE_CLIENT_PROVIDER selects (mfhelm/mfext plugins).
CLIENT_PROVIDER = "mfhelm-local"

CA_VALIDITY = datetime.timedelta(days=3650)
SERVING_VALIDITY = datetime.timedelta(days=397)
RENEW_BEFORE = datetime.timedelta(days=30)
# A note on the serving certificate: which names it was issued for.
NAMES_ANNOTATION = "mfhelm.io/serving-names"


AIRFLOW_CA_SECRET = "metaflow-airflow-local-ca"


def ca_secret(release: str) -> str:
    return f"{release}-local-ca"


def tls_secret(release: str) -> str:
    return f"{release}-local-tls"


def emulator_secret(release: str) -> str:
    return f"{release}-entra-emulator"


def flows_secret(release: str) -> str:
    return f"{release}-local-flows"


def service_names(service: str, namespace: str) -> list[str]:
    """Every DNS name a pod may use for a Service."""
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local"]


def serving_names(release: str, namespace: str) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) of the serving certificate: the Services of
    Azurite and the emulator, and localhost/127.0.0.1 for `mfhelm port-forward`."""
    dns = (service_names(f"{release}-azurite", namespace)
           + service_names(f"{release}-entra-emulator", namespace) + ["localhost"])
    return dns, ["127.0.0.1"]


def azurite_internal_url(release: str, namespace: str) -> str:
    return (f"https://{release}-azurite.{namespace}.svc.cluster.local:{AZURITE_PORT}/"
            f"{AZURITE_ACCOUNT}/")


def emulator_internal_url(release: str, namespace: str) -> str:
    return f"https://{release}-entra-emulator.{namespace}.svc.cluster.local:{EMULATOR_PORT}"


# --- certificates -----------------------------------------------------------------------

def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _cert_pem(cert: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM).decode()


def generate_ca(release: str) -> tuple[str, str]:
    """A new CA: (certificate PEM, key PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mfhelm local profile"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"mfhelm local CA ({release})")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return _cert_pem(cert), _key_pem(key)


def issue_serving(ca_cert_pem: str, ca_key_pem: str, dns: list[str],
                  ips: list[str]) -> tuple[str, str]:
    """A server certificate for `dns` and `ips` from the CA: (certificate PEM, key PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca_key_pem.encode(), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the local CA's key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    alt = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + SERVING_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _cert_pem(cert), _key_pem(key)


def serving_is_current(cert_pem: str, ca_cert_pem: str, dns: list[str], ips: list[str]) -> bool:
    """Whether a serving certificate was issued by this CA for exactly these
    names and stays valid beyond RENEW_BEFORE."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        ca = x509.load_pem_x509_certificate(ca_cert_pem.encode())
        cert.verify_directly_issued_by(ca)  # ValueError, TypeError or InvalidSignature
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except Exception:
        return False
    have_dns = sorted(alt.get_values_for_type(x509.DNSName))
    have_ips = sorted(str(i) for i in alt.get_values_for_type(x509.IPAddress))
    return (have_dns == sorted(dns) and have_ips == sorted(ips)
            and cert.not_valid_after_utc - _now() > RENEW_BEFORE)


# --- what install writes ------------------------------------------------------------------

@dataclass(frozen=True)
class LocalTls:
    ca_cert: str
    ca_key: str
    serving_cert: str
    serving_key: str


def new_assertion() -> str:
    return secrets.token_urlsafe(32)


def flows_env(release: str, namespace: str, ca_cert: str, assertion: str) -> dict[str, str]:
    """The environment of flow pods (Secret `<release>-local-flows`, named by
    METAFLOW_KUBERNETES_SECRETS): Metaflow's own Azure client provider setting
    picks mfhelm's, which reads the rest. A pod cannot mount a file through
    Metaflow, so the CA travels as PEM text."""
    return {
        "METAFLOW_DEFAULT_AZURE_CLIENT_PROVIDER": CLIENT_PROVIDER,
        "METAFLOW_MFHELM_LOCAL_AUTHORITY": emulator_internal_url(release, namespace),
        "METAFLOW_MFHELM_LOCAL_TENANT_ID": TENANT_ID,
        "METAFLOW_MFHELM_LOCAL_CLIENT_ID": CLIENT_ID,
        "METAFLOW_MFHELM_LOCAL_CLIENT_ASSERTION": assertion,
        "METAFLOW_MFHELM_LOCAL_CA": ca_cert,
        "METAFLOW_MFHELM_LOCAL_BLOB_ENDPOINT": azurite_internal_url(release, namespace),
    }


def emulator_data(assertion: str) -> dict[str, str]:
    return {"tenant-id": TENANT_ID, "client-id": CLIENT_ID, "client-assertion": assertion}


def ensure(api: Any, release: str, namespace: str, flow_namespace: str) -> LocalTls:
    """Make or keep the CA, the serving certificate, the emulator's client and
    the flow pods' Secret. Run by `install --local` after its checks."""
    from mfhelm import kube
    from mfhelm.errors import remember_secret

    labels = {"app.kubernetes.io/instance": release}
    ca_cert = kube.read_secret_value(api, namespace, ca_secret(release), "ca.crt")
    ca_key = kube.read_secret_value(api, namespace, ca_secret(release), "ca.key")
    if not ca_cert or not ca_key:
        ca_cert, ca_key = generate_ca(release)
        kube.apply_secret(api, namespace, ca_secret(release),
                          {"ca.crt": ca_cert, "ca.key": ca_key}, labels)
    remember_secret(ca_key)
    dns, ips = serving_names(release, namespace)
    cert = kube.read_secret_value(api, namespace, tls_secret(release), "tls.crt")
    key = kube.read_secret_value(api, namespace, tls_secret(release), "tls.key")
    if not cert or not key or not serving_is_current(cert, ca_cert, dns, ips):
        cert, key = issue_serving(ca_cert, ca_key, dns, ips)
        kube.apply_secret(api, namespace, tls_secret(release),
                          {"tls.crt": cert, "tls.key": key, "ca.crt": ca_cert}, labels)
    remember_secret(key)
    kube.apply_secret(api, namespace, AIRFLOW_CA_SECRET, {"ca.crt": ca_cert}, labels)
    assertion = (kube.read_secret_value(api, namespace, emulator_secret(release),
                                        "client-assertion") or new_assertion())
    remember_secret(assertion)
    kube.apply_secret(api, namespace, emulator_secret(release), emulator_data(assertion), labels)
    kube.apply_secret(api, flow_namespace, flows_secret(release),
                      flows_env(release, namespace, ca_cert, assertion), labels)
    return LocalTls(ca_cert, ca_key, cert, key)


def purge(api: Any, release: str, namespace: str, flow_namespace: str) -> list[str]:
    """Delete what `ensure` made; returns `secret/<name>` of each one deleted."""
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    from mfhelm.errors import MfhelmError

    core = k8s.CoreV1Api(api)
    deleted = []
    for ns, name in ((namespace, ca_secret(release)), (namespace, tls_secret(release)),
                     (namespace, emulator_secret(release)), (namespace, AIRFLOW_CA_SECRET),
                     (flow_namespace, flows_secret(release))):
        try:
            core.delete_namespaced_secret(name, ns)
            deleted.append(f"secret/{name}")
        except ApiException as exc:
            if exc.status != 404:
                raise MfhelmError(f"deleting secret {name}: {exc.status} {exc.reason}") from None
    return deleted
