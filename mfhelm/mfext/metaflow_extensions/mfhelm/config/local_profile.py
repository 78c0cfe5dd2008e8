"""The local profile's Blob access (mfhelm `install --local`): where Azurite
is and which CA it is served under. Nothing here acts unless the config or
the environment has METAFLOW_MFHELM_LOCAL_CA (`mfhelm config --local` writes
it on laptops; the Secret <release>-local-flows gives it to flow pods).

Metaflow builds its BlobServiceClient without a `connection_verify`
(plugins/azure/blob_service_client_factory.py, metaflow 2.19.39), so its
transport, Python's requests, trusts what REQUESTS_CA_BUNDLE names. That
variable is set here, once per process, to a bundle of the trust the process
already had (REQUESTS_CA_BUNDLE if set, else certifi's roots) plus the local
CA: public HTTPS keeps working. Subprocesses (Metaflow's tasks) inherit it.

Flow pods get the laptop's METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT
(https://localhost:10000/..., the port-forward) from the kubernetes and
argo-workflows plugins; METAFLOW_MFHELM_LOCAL_BLOB_ENDPOINT, which only the
pods' Secret sets, is where Azurite is inside the cluster.

Runs in flow pods, whose Python may be older than mfhelm's: standard library.
"""

import contextlib
import hashlib
import os
import stat
import tempfile

PEM_BEGIN = "-----BEGIN CERTIFICATE-----"


class LocalProfileError(Exception):
    pass


def _read(path):
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


def ca_pem(value):
    """The CA certificate(s): `value` is PEM text, or the path of a PEM file
    (relative paths are taken from METAFLOW_HOME's config directory)."""
    value = (value or "").strip()
    if value.startswith(PEM_BEGIN):
        return value + "\n"
    home = os.path.expanduser(os.environ.get("METAFLOW_HOME") or "~/.metaflowconfig")
    path = os.path.join(home, os.path.expanduser(value))
    try:
        text = _read(path)
    except OSError as exc:
        raise LocalProfileError(
            f"METAFLOW_MFHELM_LOCAL_CA: cannot read {path} ({exc.strerror or exc}); "
            "re-run `mfhelm config --local`") from None
    if PEM_BEGIN not in text:
        raise LocalProfileError(f"METAFLOW_MFHELM_LOCAL_CA: {path} holds no PEM certificate; "
                                "re-run `mfhelm config --local`")
    return text.strip() + "\n"


def _base_bundle(environ):
    current = environ.get("REQUESTS_CA_BUNDLE")
    if current:
        return _read(current)
    try:
        import certifi
    except ImportError:
        return ""
    return _read(certifi.where())


def _private_dir():
    """A directory of this user's own, not a link, mode 0700."""
    base = os.path.join(tempfile.gettempdir(), f"mfhelm-{os.getuid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(base, 0o700)
    info = os.lstat(base)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() \
            or stat.S_IMODE(info.st_mode) & 0o077:
        raise LocalProfileError(f"{base} is not a private directory of this user")
    return base


def write_bundle(text):
    """`text` in a file named by its digest (written once, atomically)."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:24]
    directory = _private_dir()
    path = os.path.join(directory, f"ca-bundle-{digest}.pem")
    if os.path.isfile(path) and not os.path.islink(path):
        return path
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ca-bundle-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def trust_local_ca(value, environ=None):
    """Point REQUESTS_CA_BUNDLE at the current trust plus the local CA; returns
    the bundle's path, or None when no CA is configured. Idempotent."""
    environ = os.environ if environ is None else environ
    if not value:
        return None
    local = ca_pem(value)
    base = _base_bundle(environ)
    if local.strip() in base:
        return environ.get("REQUESTS_CA_BUNDLE")
    path = write_bundle(base.rstrip("\n") + "\n" + local)
    environ["REQUESTS_CA_BUNDLE"] = path
    return path


def blob_endpoint(metaflow_value, local_value):
    """The Blob endpoint this process uses: the pods' in-cluster one when set."""
    return local_value or metaflow_value
