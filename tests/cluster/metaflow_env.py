"""Real Metaflow, run the way a data scientist runs it, against local stand-ins
for the Azure endpoints it talks to.

- `start_azurite`: the pinned Azurite (`azurite-blob`) on 127.0.0.1, HTTPS with
  a certificate from a throwaway CA, `--oauth basic` (bearer tokens checked
  for issuer, audience and lifetime, not signature), no telemetry.
- `serve_entra`: an HTTPS endpoint shaped like Entra ID's token endpoint. It
  answers the workload-identity exchange (`POST /<tenant>/oauth2/v2.0/token`
  with the federated token as `client_assertion`) with an unsigned JWT that
  Azurite's basic OAuth accepts, and records every request. fake_arm's server
  does not fit here: it wants a bearer token on every request and drops the
  request body, which is the part worth recording.
- `serve_metadata_ping`: the metadata service as far as `argo-workflows
  create` uses it (its version check, `GET /ping`); every request recorded.
- `metaflow_env`: a HOME whose `~/.metaflowconfig/config.json` is exactly
  what `mfhelm config` writes (mfhelm.metaflow_config), plus the environment a
  pod with the workload-identity webhook would have (AZURE_CLIENT_ID,
  AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE, AZURE_AUTHORITY_HOST) and the
  CA in REQUESTS_CA_BUNDLE/SSL_CERT_FILE. The one override is the Blob
  endpoint, moved from `https://<account>.blob.core.windows.net/` to Azurite's
  path-style `https://127.0.0.1:<port>/devstoreaccount1/` (an environment
  variable, which Metaflow's `from_conf` prefers to the file). No Metaflow
  code is patched.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .controlplane import ROOT, stop_group
from .pki import CertificateAuthority

FLOWS_DIR = Path(__file__).resolve().parent / "flows"
VENV_BIN = Path(sys.executable).parent

# Azurite's built-in account (Azure's documented development-storage key).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
               "K1SZFPTOtr/KBHBeksoGMGw==")
STORAGE_SCOPE = "https://storage.azure.com/.default"
STORAGE_AUDIENCE = "https://storage.azure.com"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# What the AKS webhook projects into a labelled pod: a service-account token for this audience.
FEDERATION_AUDIENCE = "api://AzureADTokenExchange"


def _chart_metadata_version() -> str:
    """The chart's metadata image tag, v-less as the service says it."""
    import yaml

    values = yaml.safe_load((ROOT / "charts" / "metaflow" / "values.yaml").read_text())
    return str(values["metadata"]["image"]["tag"]).removeprefix("v")


METADATA_SERVICE_VERSION = _chart_metadata_version()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_jwt(claims: dict[str, Any]) -> str:
    """A JWT with `alg: none` and an empty signature: Azurite's basic OAuth never checks it."""
    header = {"alg": "none", "typ": "JWT"}
    return ".".join([_b64url(json.dumps(header).encode()),
                     _b64url(json.dumps(claims).encode()), ""])


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def storage_token(tenant: str, client_id: str, *, lifetime: int = 3600,
                  audience: str = STORAGE_AUDIENCE) -> str:
    """An access token shaped like Entra ID's v1 tokens for Azure Storage."""
    now = int(time.time())
    return unsigned_jwt({
        "aud": audience,
        "iss": f"https://sts.windows.net/{tenant}/",
        "iat": now - 60, "nbf": now - 60, "exp": now + lifetime,
        "tid": tenant, "appid": client_id, "oid": client_id, "sub": client_id,
        "ver": "1.0",
    })


# --- HTTPS servers ------------------------------------------------------------------

@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    form: dict[str, str]


def _server_context(ca: CertificateAuthority, stem: str) -> ssl.SSLContext:
    pair = ca.issue(stem, "127.0.0.1", server_names=("localhost",), server_ips=("127.0.0.1",),
                    client=False)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pair.cert, pair.key)
    return ctx


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    requests: list[Request]

    def log_message(self, *args: Any) -> None:
        pass

    def _record(self) -> Request:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode(errors="replace") if length else ""
        parts = urlsplit(self.path)
        form = {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}
        req = Request(self.command, parts.path, parse_qs(parts.query),
                      dict(self.headers.items()), form)
        self.requests.append(req)
        return req

    def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


@contextlib.contextmanager
def _serve(handler: type[_Recorder], ctx: ssl.SSLContext | None) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if ctx is not None:
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    scheme = "https" if ctx is not None else "http"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass
class FakeEntra:
    """Entra ID's token endpoint for one tenant, one app and one federated token."""

    tenant: str
    client_id: str
    federated_token: str
    url: str = ""
    requests: list[Request] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    # Set while step pods run on a process kubelet: their projected
    # service-account tokens are federated too (see pod_token_check).
    pod_tokens: Callable[[str], bool] | None = None

    def accepts(self, assertion: str | None) -> bool:
        if assertion == self.federated_token:
            return True
        return bool(assertion) and self.pod_tokens is not None and self.pod_tokens(assertion)

    def token_requests(self) -> list[Request]:
        return [r for r in self.requests
                if r.method == "POST" and r.path == f"/{self.tenant}/oauth2/v2.0/token"]


def _entra_error(code: str, description: str) -> dict[str, Any]:
    return {"error": code, "error_description": description, "error_codes": [0]}


@contextlib.contextmanager
def serve_entra(ca: CertificateAuthority, entra: FakeEntra) -> Iterator[FakeEntra]:
    class H(_Recorder):
        requests = entra.requests

        def do_POST(self) -> None:
            req = self._record()
            if req.path != f"/{entra.tenant}/oauth2/v2.0/token":
                self._reply(404, _entra_error("invalid_request", f"AADSTS90002: no {req.path}"))
                return
            f = req.form
            problems = [
                name for name, ok in (
                    ("grant_type", f.get("grant_type") == "client_credentials"),
                    ("client_id", f.get("client_id") == entra.client_id),
                    ("client_assertion_type", f.get("client_assertion_type") == JWT_BEARER),
                    ("client_assertion", entra.accepts(f.get("client_assertion"))),
                    ("scope", f.get("scope") == STORAGE_SCOPE),
                ) if not ok
            ]
            if problems:
                self._reply(400, _entra_error(
                    "invalid_client", f"AADSTS700016: unexpected {', '.join(problems)}"))
                return
            token = storage_token(entra.tenant, entra.client_id)
            entra.issued.append(token)
            self._reply(200, {"token_type": "Bearer", "expires_in": 3599,
                              "ext_expires_in": 3599, "access_token": token})

        def do_GET(self) -> None:
            req = self._record()
            self._reply(404, _entra_error("invalid_request", f"AADSTS90002: no {req.path}"))

    with _serve(H, _server_context(ca, "entra")) as url:
        entra.url = url
        yield entra


@dataclass
class FakeMetadata:
    url: str = ""
    requests: list[Request] = field(default_factory=list)


@contextlib.contextmanager
def serve_metadata_ping() -> Iterator[FakeMetadata]:
    """Plain HTTP like a port-forwarded metadata service; only /ping is answered."""
    fake = FakeMetadata()

    class H(_Recorder):
        requests = fake.requests

        def _any(self) -> None:
            req = self._record()
            if req.method == "GET" and req.path.rstrip("/") == "/ping":
                self._reply(200, b"pong", {"METADATA_SERVICE_VERSION": METADATA_SERVICE_VERSION})
            else:
                self._reply(501, {"message": f"not in this stand-in: {req.method} {req.path}"})

        do_GET = do_POST = do_PUT = do_PATCH = _any

    with _serve(H, None) as url:
        fake.url = url
        yield fake


# --- Azurite ----------------------------------------------------------------------------

_AZURITE_REQUEST = re.compile(
    r"BlobStorageContextMiddleware: RequestMethod=(?P<method>\S+) RequestURL=(?P<url>\S+) "
    r"RequestHeaders:(?P<headers>\{.*?\}) ClientIP=")


_AZURITE_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<url>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) ')


# The blob names Azurite.mark uses: a HEAD of one of them is a test's own call.
MARK_PREFIX = "mfhelm-test-mark-"


@dataclass
class AzuriteRequest:
    method: str
    path: str
    headers: dict[str, str]

    @property
    def bearer(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None


@dataclass
class Azurite:
    port: int
    ca_file: Path
    access_log: Path
    debug_log: Path
    proc: subprocess.Popen[bytes]

    @property
    def account_url(self) -> str:
        """Path-style, as Azurite serves an account on an IP address."""
        return f"https://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}/"

    def service(self, credential: Any = None) -> Any:
        from azure.storage.blob import BlobServiceClient

        cred = credential or {"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}
        return BlobServiceClient(self.account_url, credential=cred,
                                 connection_verify=str(self.ca_file))

    def blob_names(self, container: str, prefix: str = "") -> list[str]:
        client = self.service().get_container_client(container)
        return sorted(b.name for b in client.list_blobs(name_starts_with=prefix or None))

    def responses(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every answered request, from Azurite's access log."""
        out = []
        for line in self.access_log.read_text(errors="replace").splitlines():
            m = _AZURITE_ACCESS.search(line)
            if m:
                out.append((m["method"], urlsplit(m["url"]).path, int(m["status"])))
        return out

    def requests(self) -> list[AzuriteRequest]:
        """Every request Azurite logged (its debug log has the headers, bearer token too)."""
        out = []
        for line in self.debug_log.read_text(errors="replace").splitlines():
            m = _AZURITE_REQUEST.search(line)
            if m:
                out.append(AzuriteRequest(m["method"], urlsplit(m["url"]).path,
                                          json.loads(m["headers"])))
        return out

    def mark(self, container: str, timeout: float = 60) -> tuple[int, int]:
        """Where Azurite's two logs stand after every call made before this one.

        Azurite writes both logs asynchronously (the debug log when a request arrives, the
        access log when it is answered), so a count taken right after one's own calls can
        still miss them, in both logs alike. So the mark is a call of its own: a HEAD of a
        blob name used once. Calls made in sequence are logged in order, so once both logs
        show it, everything made before it is behind the mark and everything after ahead.
        Returns (access-log index, debug-log index) just past the mark's own request."""
        from azure.core.exceptions import ResourceNotFoundError

        path = f"/{AZURITE_ACCOUNT}/{container}/{MARK_PREFIX}{os.urandom(8).hex()}"
        blob = path.rsplit("/", 1)[1]
        with contextlib.suppress(ResourceNotFoundError):
            self.service().get_blob_client(container, blob).get_blob_properties()
        deadline = time.monotonic() + timeout
        while True:
            answered = [i for i, (_, p, _) in enumerate(self.responses()) if p == path]
            arrived = [i for i, r in enumerate(self.requests()) if r.path == path]
            if answered and arrived:
                return answered[0] + 1, arrived[0] + 1
            if time.monotonic() > deadline:
                raise TimeoutError(f"Azurite did not log the mark {path} within {timeout:.0f}s")
            time.sleep(0.2)

    def stop(self) -> None:
        stop_group(self.proc, grace=10)


def azurite_binary() -> str | None:
    path = VENV_BIN / "azurite-blob"
    return str(path) if path.exists() else None


def start_azurite(workdir: Path, ca: CertificateAuthority, *containers: str) -> Azurite:
    """Azurite on a loopback port over HTTPS with basic OAuth; `containers` created."""
    binary = azurite_binary()
    if binary is None:
        raise FileNotFoundError("azurite-blob not in .venv/bin (run `make test-tools`)")
    pair = ca.issue("azurite", "127.0.0.1", server_names=("localhost",),
                    server_ips=("127.0.0.1",), client=False)
    data = workdir / "azurite-data"
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    access_log, debug_log = workdir / "azurite-access.log", workdir / "azurite-debug.log"
    argv = [
        binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(data),
        "--cert", str(pair.cert), "--key", str(pair.key), "--oauth", "basic",
        "--disableTelemetry", "--debug", str(debug_log),
        # The SDK speaks a newer API version (2026-10-06 for azure-storage-blob 12.31)
        # than Azurite 3.35 lists; the chart's Azurite runs with the same flag.
        "--skipApiVersionCheck",
    ]
    with access_log.open("ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    azurite = Azurite(port, ca.pair.cert, access_log, debug_log, proc)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"azurite exited with {proc.returncode}: "
                               f"{access_log.read_text(errors='replace')[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                azurite.stop()
                raise TimeoutError("azurite did not listen within 30s") from None
            time.sleep(0.1)
    try:
        service = azurite.service()
        for name in containers:
            service.create_container(name)
    except Exception:
        azurite.stop()
        raise
    return azurite


# --- the data scientist's environment ---------------------------------------------------

@dataclass
class MetaflowEnv:
    home: Path
    config_file: Path
    config: dict[str, str]      # what mfhelm wrote, unmodified
    env: dict[str, str]         # the process environment Metaflow runs with
    outputs: dict[str, Any]
    azurite: Azurite
    entra: FakeEntra
    metadata: FakeMetadata

    @property
    def flow_namespace(self) -> str:
        return self.config["METAFLOW_KUBERNETES_NAMESPACE"]

    @property
    def sysroot(self) -> tuple[str, str]:
        container, _, prefix = self.config["METAFLOW_DATASTORE_SYSROOT_AZURE"].partition("/")
        return container, prefix

    def run_flow(self, flow: str, *args: str, kubeconfig: Path | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`python <flow> --no-pylint <args>` in the flows directory, as the user would."""
        env = dict(self.env)
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        return subprocess.run(
            [sys.executable, str(FLOWS_DIR / flow), "--no-pylint", *args],
            cwd=self.home / "work", env=env, capture_output=True, text=True,
            timeout=timeout, check=False,
        )


def clean_environ() -> dict[str, str]:
    """os.environ without Metaflow, Azure or Kubernetes settings of whoever runs the tests."""
    drop = ("METAFLOW_", "AZURE_", "MSI_", "IDENTITY_", "KUBE", "ARGO_")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def build_metaflow_env(workdir: Path, *, azurite: Azurite, entra: FakeEntra,
                       metadata: FakeMetadata, outputs: dict[str, Any],
                       settings: Any) -> MetaflowEnv:
    from mfhelm.metaflow_config import build_config, write_config

    home = workdir / "home"
    (home / "work").mkdir(parents=True, exist_ok=True)
    # `mfhelm config --service-url <metadata>`: the user's port-forward, here a local stand-in.
    config = build_config(outputs, settings, service_url=metadata.url)
    config_file = write_config(config, None, home=home / ".metaflowconfig")
    token_file = workdir / "azure-identity-token"
    token_file.write_text(entra.federated_token)
    env = clean_environ() | {
        "HOME": str(home),
        "USER": "ada",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        "METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT": azurite.account_url,
        # The workload-identity webhook's variables, as a labelled pod gets them.
        "AZURE_CLIENT_ID": str(outputs["identityClientId"]),
        "AZURE_TENANT_ID": str(outputs["tenantId"]),
        "AZURE_FEDERATED_TOKEN_FILE": str(token_file),
        "AZURE_AUTHORITY_HOST": entra.url + "/",
        "REQUESTS_CA_BUNDLE": str(azurite.ca_file),
        "SSL_CERT_FILE": str(azurite.ca_file),
        # A cluster only where a test gives one: never the tester's ~/.kube/config.
        "KUBECONFIG": str(workdir / "no-cluster.kubeconfig"),
    }
    return MetaflowEnv(home, config_file, config, env, outputs, azurite, entra, metadata)


def federated_token(outputs: dict[str, Any]) -> str:
    """A service-account token as the webhook projects it (contents never verified here)."""
    now = int(time.time())
    namespace, account = outputs["flowNamespace"], outputs["serviceAccountFlows"]
    return unsigned_jwt({
        "aud": [FEDERATION_AUDIENCE], "iss": outputs["aksOidcIssuerUrl"],
        "sub": f"system:serviceaccount:{namespace}:{account}",
        "iat": now, "nbf": now, "exp": now + 3600,
    })



# --- Argo's full schema, for what the minimal CRDs do not check ---------------------------
# The minimal CRDs the cluster serves (what argo-helm installs) declare a WorkflowTemplate's
# `spec` as an object with unknown fields preserved: the API server accepts any spec. The
# `full` CRDs of the same module version carry the whole schema (argo-helm 1.0 installs them
# only through a hook Job, which our values turn off), so Metaflow's template is checked
# against it here, offline.

def argo_module_dir() -> Path:
    """The pinned Argo module's source in the Go module cache, downloaded if absent."""
    import shutil
    import tempfile
    import tomllib

    tools = tomllib.loads((Path(__file__).resolve().parents[2] / "tools.toml").read_text())
    version = tools["gobuild"]["argo"]["version"]
    module = tools["gobuild"]["argo"]["module"]
    go = shutil.which("go")
    if go is None:
        raise FileNotFoundError("no `go` on PATH: Argo's schema comes from its Go module")
    env = clean_environ()
    modcache = subprocess.run([go, "env", "GOMODCACHE"], env=env, capture_output=True,
                              text=True, check=True).stdout.strip()
    root = Path(modcache) / f"{module}@{version}"
    if root.is_dir():
        return root
    with tempfile.TemporaryDirectory() as tmp:
        # Outside a module `go mod download` needs one; the exact version needs no list.
        (Path(tmp) / "go.mod").write_text("module mfhelm.test/argoschema\n\ngo 1.23\n")
        done = subprocess.run([go, "mod", "download", "-json", f"{module}@{version}"],
                              cwd=tmp, env=env, capture_output=True, text=True, timeout=600,
                              check=False)
    if done.returncode != 0:
        raise RuntimeError(f"go mod download {module}@{version}: {done.stdout[-1500:]}"
                           f"{done.stderr[-1500:]}")
    return Path(json.loads(done.stdout)["Dir"])


def argo_full_schema(plural: str) -> dict[str, Any]:
    import yaml

    path = argo_module_dir() / "manifests/base/crds/full" / f"argoproj.io_{plural}.yaml"
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def _drop_nulls(value: Any) -> Any:
    # The API server drops null fields of a custom object before validating it.
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _unknown_fields(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    """Fields a structural schema would prune: ones Argo's types do not have."""
    out: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is not None and not schema.get("x-kubernetes-preserve-unknown-fields") \
                and extra is None:
            out += [f"{path}.{k}" for k in value if k not in props]
        for k, v in value.items():
            sub = (props or {}).get(k) or (extra if isinstance(extra, dict) else None)
            if sub:
                out += _unknown_fields(sub, v, f"{path}.{k}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            out += _unknown_fields(schema["items"], v, f"{path}[{i}]")
    return out


def schema_problems(schema: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """Type and required-field errors, and fields the full schema would prune."""
    import jsonschema

    doc = _drop_nulls(obj)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message[:200]}"
              for e in jsonschema.Draft4Validator(schema).iter_errors(doc)]
    return errors + [f"{p}: unknown field" for p in _unknown_fields(schema, doc, "")]


# --- the metadata service, for runs whose steps really run -------------------------------
# metaflow-local-service (PyPI) stands in for Netflix's metaflow-service, which is on no
# registry. It numbers every run itself; Netflix's service (and so an Argo run) registers
# the run id the client gives (`argo-<workflow name>`, POSTed as run_number by Metaflow's
# `init` step). So does a task: Netflix's service keeps the task id the client gives as
# the task's name (services/metadata_service/api/task.py, create_task: `task_name =
# body.get("task_id")`, refused if numeric), and an Argo step gives its own (`t-<hash>`).
# A stand-in that numbered it recorded the task twice: its number, with the task's system
# metadata only, and `t-<hash>` (artifacts, attempt_ok) without a record of its own, so the
# client saw the numbered one alone (`run.successful` False, no artifacts). And the client
# reads one artifact by name (`task["_success"]`, so `run.successful`) at
# `.../tasks/<id>/artifacts/<name>[/attempt/<n>]`, which Netflix's service serves
# (services/metadata_service/api/artifact.py, get_artifact: the latest attempt's;
# get_artifact_with_attempt) and the stand-in does not (404: KeyError, `successful`
# False). The stand-in is taught all three.

_SERVE_METADATA = """
import sys, uvicorn
from fastapi.responses import JSONResponse
from metaflow_local_service import server, store

if sys.argv[3]:
    server._SERVICE_VERSION = sys.argv[3]  # what /ping's METADATA_SERVICE_VERSION says

_own_number = store.create_run


def create_run(flow_name, body):
    given = body.get("run_number")
    if not isinstance(given, str) or not given:
        return _own_number(flow_name, body)
    store.get_or_create_flow(flow_name, body)
    record = store._build_run_record(flow_name, given, body)
    local = store._local()
    local._save_meta(local._create_and_get_metadir(flow_name, given), {"_self": record})
    return record


_own_task_number = store.create_task


def create_task(flow_name, run_id, step_name, body):
    given = body.get("task_id")
    if not isinstance(given, str) or not given or given.isnumeric():
        return _own_task_number(flow_name, run_id, step_name, body)
    store.get_or_create_step(flow_name, run_id, step_name, body)
    record = store._build_task_record(flow_name, run_id, step_name, given, body)
    local = store._local()
    local._save_meta(local._create_and_get_metadir(flow_name, run_id, step_name, given),
                     {"_self": record})
    return record


store.create_run = create_run
store.create_task = create_task
app = server.create_app(sys.argv[1])
BY_NAME = "/flows/{flow}/runs/{run}/steps/{step}/tasks/{task}/artifacts/{name}"


def _artifact(flow, run, step, task, name, attempt=None):
    found = [a for a in store.get_artifacts(flow, run, step, task, attempt)
             if a.get("name") == name]
    if not found:
        return JSONResponse({"message": f"no artifact {name}"}, status_code=404)
    return JSONResponse(max(found, key=lambda a: int(a.get("attempt_id") or 0)))


@app.get(BY_NAME)
async def get_artifact(flow: str, run: str, step: str, task: str, name: str):
    return _artifact(flow, run, step, task, name)


@app.get(BY_NAME + "/attempt/{attempt}")
async def get_artifact_with_attempt(flow: str, run: str, step: str, task: str, name: str,
                                    attempt: int):
    return _artifact(flow, run, step, task, name, attempt)


uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


@dataclass
class MetadataService:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        stop_group(self.proc, grace=5)

    def get(self, path: str) -> tuple[int, Any]:
        """(status, JSON body) of a GET; (status, None) for an HTTP error."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, None


def start_metadata_service(workdir: Path, version: str | None = None) -> MetadataService:
    """metaflow-local-service on a free loopback port, keeping the ids it is
    given; advertising `version` if one is given (else the package's own)."""
    import urllib.request

    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "metadata-service.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE_METADATA, str(workdir), str(port), version or ""],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            stdin=subprocess.DEVNULL,
            env=clean_environ() | {"HOME": str(workdir), "USER": "metadata"})
    service = MetadataService(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"metadata service exited {proc.returncode}: "
                               f"{log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), \
                urllib.request.urlopen(f"{service.url}/ping", timeout=2) as resp:
            if resp.status == 200:
                return service
        if time.monotonic() > deadline:
            service.stop()
            raise TimeoutError(f"metadata service did not answer in 60 s: {log.read_text()}")
        time.sleep(0.2)


# --- step pods on a process kubelet (process_kubelet.py) ---------------------------------
# A Metaflow step run for real in its pod needs three things AKS gives it and this cluster
# does not:
# - the workload-identity webhook (azure-workload-identity, a mutating admission webhook)
#   adds, to a pod labelled azure.workload.identity/use=true, AZURE_CLIENT_ID,
#   AZURE_TENANT_ID, AZURE_AUTHORITY_HOST and AZURE_FEDERATED_TOKEN_FILE, and a projected
#   service-account token for the audience api://AzureADTokenExchange at that file;
# - trust for Blob's certificate (public on Azure; here the test CA of the HTTPS Azurite);
# - the metadata Service's cluster DNS name (no cluster DNS or kube-proxy here).
# `step_pod_admission` adds the first as the webhook would (the token is a real one, from
# the TokenRequest API, for the pod's ServiceAccount), and the other two as the smallest
# change: the CA mounted from the host and named by REQUESTS_CA_BUNDLE/SSL_CERT_FILE, and
# METAFLOW_SERVICE_URL set to the host's metadata service.

WI_LABEL = "azure.workload.identity/use"
WI_TOKEN_DIR = "/var/run/secrets/azure/tokens"
WI_TOKEN_PATH = "azure-identity-token"
WI_TOKEN_SECONDS = 3600
TEST_CA_PATH = "/etc/mfhelm-test-ca/ca.crt"


def step_pod_admission(mf: MetaflowEnv, *, metadata_url: str) -> Callable[[Any], None]:
    from kubernetes import client

    def admit(pod: client.V1Pod) -> None:
        labels = pod.metadata.labels or {}
        extra: list[client.V1EnvVar] = []
        mounts: list[client.V1VolumeMount] = []
        volumes: list[client.V1Volume] = []
        if labels.get(WI_LABEL) == "true":
            extra += [
                client.V1EnvVar(name="AZURE_CLIENT_ID", value=str(mf.outputs["identityClientId"])),
                client.V1EnvVar(name="AZURE_TENANT_ID", value=str(mf.outputs["tenantId"])),
                client.V1EnvVar(name="AZURE_FEDERATED_TOKEN_FILE",
                                value=f"{WI_TOKEN_DIR}/{WI_TOKEN_PATH}"),
                client.V1EnvVar(name="AZURE_AUTHORITY_HOST", value=mf.entra.url + "/"),
            ]
            mounts.append(client.V1VolumeMount(name="azure-identity-token",
                                               mount_path=WI_TOKEN_DIR, read_only=True))
            volumes.append(client.V1Volume(name="azure-identity-token", projected=(
                client.V1ProjectedVolumeSource(sources=[client.V1VolumeProjection(
                    service_account_token=client.V1ServiceAccountTokenProjection(
                        audience=FEDERATION_AUDIENCE, expiration_seconds=WI_TOKEN_SECONDS,
                        path=WI_TOKEN_PATH))]))))
        extra += [client.V1EnvVar(name="REQUESTS_CA_BUNDLE", value=TEST_CA_PATH),
                  client.V1EnvVar(name="SSL_CERT_FILE", value=TEST_CA_PATH)]
        mounts.append(client.V1VolumeMount(name="mfhelm-test-ca", mount_path=TEST_CA_PATH,
                                           read_only=True))
        volumes.append(client.V1Volume(name="mfhelm-test-ca", host_path=(
            client.V1HostPathVolumeSource(path=str(mf.azurite.ca_file), type="File"))))
        pod.spec.volumes = [*(pod.spec.volumes or []), *volumes]
        for ctr in [*(pod.spec.init_containers or []), *pod.spec.containers]:
            env = [e for e in ctr.env or [] if e.name not in {x.name for x in extra}]
            if any(e.name == "METAFLOW_SERVICE_URL" for e in env):
                env = [e for e in env if e.name != "METAFLOW_SERVICE_URL"]
                env.append(client.V1EnvVar(name="METAFLOW_SERVICE_URL", value=metadata_url))
            ctr.env = [*env, *extra]
            ctr.volume_mounts = [*(ctr.volume_mounts or []), *mounts]

    return admit


def pod_token_check(api: Any, namespace: str, account: str) -> Callable[[str], bool]:
    """Entra's check of a federated credential, for the AKS cluster's issuer: the token
    is valid for api://AzureADTokenExchange (TokenReview on the API server that issued it)
    and its subject is the ServiceAccount the identity trusts."""
    from kubernetes import client

    def check(token: str) -> bool:
        review = client.AuthenticationV1Api(api).create_token_review(
            client.V1TokenReview(spec=client.V1TokenReviewSpec(
                token=token, audiences=[FEDERATION_AUDIENCE])))
        status = review.status
        return bool(status.authenticated) and \
            status.user.username == f"system:serviceaccount:{namespace}:{account}"

    return check
