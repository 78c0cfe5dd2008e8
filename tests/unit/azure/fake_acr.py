"""Azure Container Registry at the HTTP boundary, for `mfhelm image build` and
the flow-image check.

- The ARM side (on fake_arm's FakeAzure): the registry, listBuildSourceUploadUrl,
  scheduleRun, runs/{id} and runs/{id}/listLogSasUrl, in the shapes of the
  2019-06-01-preview API that azure-mgmt-containerregistry 14.0.0 speaks.
  scheduleRun answers as ACR does: the run, queued (provisioningState
  Succeeded, so the SDK's poller is done at once). Each runs.get moves the run
  one step through its script; each step appends its lines to the run's log.
- The blobs are real: the pinned Azurite (HTTPS with the fake's certificate),
  reached with SAS URLs signed with Azurite's account key, as ACR hands out.
  The build context is uploaded there by the real azure-storage-blob, and the
  log blob grows there, marked `Complete` (metadata, the run's status) at the
  end, as ACR marks it.
- The registry's data plane (its login server): the challenge, /oauth2/exchange
  (an Entra token for ACR's audience for a refresh token), /oauth2/token (for an
  access token scoped to the repository), and /acr/v1/{repo}/_manifests/{digest}.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import fake_arm
from azure.core.credentials import AccessToken

AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
               "K1SZFPTOtr/KBHBeksoGMGw==")
ACR_SCOPE = "https://containerregistry.azure.net/.default"
ACR_AAD_TOKEN = "fake-entra-token-for-acr"
RG = "acme-metaflow-rg"
REGISTRY = "acmemetaflowacr1234"
REPOSITORY = "metaflow-flow"
VENV_BIN = Path(sys.executable).parent


class AcrCredential(fake_arm.FakeCredential):
    """fake_arm's credential, with a token of its own for ACR's audience."""

    def get_token(self, *scopes: str, tenant_id: str | None = None, **kw: Any) -> AccessToken:
        if ACR_SCOPE in scopes:
            self.requests.append((scopes, tenant_id))
            return AccessToken(ACR_AAD_TOKEN, int(time.time()) + 3600)
        return super().get_token(*scopes, tenant_id=tenant_id, **kw)


# --- Azurite ------------------------------------------------------------------------

@dataclass
class Azurite:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def account_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"

    def service(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(self.account_url, credential={
            "account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY})

    def sas_url(self, container: str, blob: str, permission: str) -> str:
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        sas = generate_blob_sas(AZURITE_ACCOUNT, container, blob, account_key=AZURITE_KEY,
                                permission=BlobSasPermissions.from_string(permission),
                                expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
        return f"{self.account_url}/{container}/{blob}?{sas}"

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            import os
            import signal

            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            import os
            import signal

            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def azurite_binary() -> Path | None:
    path = VENV_BIN / "azurite-blob"
    return path if path.exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_azurite(workdir: Path, cert: Path, key: Path) -> Azurite:
    binary = azurite_binary()
    if binary is None:
        raise FileNotFoundError("azurite-blob not in .venv/bin (run `make test-tools`)")
    data = workdir / "azurite-data"
    data.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log = workdir / "azurite.log"
    argv = [str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port),
            "--location", str(data), "--cert", str(cert), "--key", str(key),
            "--disableTelemetry", "--skipApiVersionCheck"]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    azurite = Azurite(port, proc, log)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"azurite exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                azurite.stop()
                raise TimeoutError("azurite did not listen within 60s") from None
            time.sleep(0.1)
    for name in ("source", "logs"):
        azurite.service().create_container(name)
    return azurite


# --- ACR Tasks on the ARM side ----------------------------------------------------------

@dataclass
class Step:
    status: str
    lines: list[str]


def succeeding_script(digest: str) -> list[Step]:
    return [
        Step("Queued", []),
        Step("Running", ["2026/12/03 16:00:00 Downloading source code...",
                         "Step 1/6 : ARG PYTHON_VERSION=3.12"]),
        Step("Running", ["Step 5/6 : USER 1000:1000", "Successfully built 0123456789ab"]),
        Step("Succeeded", [f"- image:\n    registry: {REGISTRY}.azurecr.io\n"
                           f"    repository: {REPOSITORY}\n    digest: {digest}",
                           "Run ID: cb1 was successful after 1m30s"]),
    ]


def failing_script() -> list[Step]:
    return [
        Step("Running", ["Step 4/6 : RUN pip install --no-compile -r ..."]),
        Step("Running", [f"noise line {i}" for i in range(30)]),
        Step("Failed", ["ERROR: No matching distribution found for nosuchpkg==1.0",
                        "The command '/bin/sh -c pip install' returned a non-zero code: 1",
                        "Run ID: cb1 failed after 41s. Error: failed during run, err: exit "
                        "status 1"]),
    ]


@dataclass
class Run:
    run_id: str
    image: str
    script: list[Step]
    position: int = -1
    log: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.script[max(self.position, 0)].status


@dataclass
class FakeAcr:
    fake: fake_arm.FakeAzure
    azurite: Azurite
    login_server: str = f"{REGISTRY}.azurecr.io"
    digest: str = "sha256:" + "ab" * 32
    fail: bool = False
    runs: dict[str, Run] = field(default_factory=dict)
    uploads: list[str] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def base(self) -> str:
        return (f"/subscriptions/{fake_arm.SUB}/resourceGroups/{RG}/providers/"
                f"Microsoft.ContainerRegistry/registries/{REGISTRY}")

    def uploaded(self, relative_path: str) -> bytes:
        blob = self.azurite.service().get_blob_client("source", relative_path)
        return bytes(blob.download_blob().readall())

    def _write_log(self, run: Run, done: bool) -> None:
        blob = self.azurite.service().get_blob_client("logs", f"{run.run_id}/rawtext.log")
        blob.upload_blob(("\n".join(run.log) + "\n").encode() if run.log else b"",
                         overwrite=True,
                         metadata={"Complete": run.status} if done else None)


def serve_acr(fake: fake_arm.FakeAzure, azurite: Azurite) -> FakeAcr:
    acr = FakeAcr(fake, azurite)
    base = acr.base.lower()

    def check_version(req: fake_arm.Recorded) -> tuple[int, Any] | None:
        if req.query.get("api-version") != ["2019-06-01-preview"]:
            return 400, fake_arm.arm_error("InvalidApiVersionParameter",
                                           f"api-version {req.query.get('api-version')} "
                                           "does not have ACR Tasks' runs")
        return None

    def upload_url(req: fake_arm.Recorded) -> tuple[int, Any]:
        bad = check_version(req)
        if bad:
            return bad
        relative = f"source/{time.strftime('%Y%m%d%H')}/{uuid.uuid4().hex}.tar.gz"
        acr.uploads.append(relative)
        return 200, {"uploadUrl": azurite.sas_url("source", relative, "cw"),
                     "relativePath": relative}

    def schedule(req: fake_arm.Recorded) -> tuple[int, Any]:
        bad = check_version(req)
        if bad:
            return bad
        body = req.body if isinstance(req.body, dict) else {}
        acr.requests.append(body)
        if body.get("type") != "DockerBuildRequest" or \
                body.get("sourceLocation") not in acr.uploads:
            return 400, fake_arm.arm_error("InvalidRequest", "unknown source location")
        run_id = f"cb{len(acr.runs) + 1}"
        script = failing_script() if acr.fail else succeeding_script(acr.digest)
        run = Run(run_id, body["imageNames"][0], script)
        acr.runs[run_id] = run
        return 200, run_body(acr, run)

    def get_run(req: fake_arm.Recorded) -> tuple[int, Any]:
        bad = check_version(req)
        if bad:
            return bad
        run = acr.runs.get(req.path.rstrip("/").rsplit("/", 1)[-1])
        if run is None:
            return 404, fake_arm.arm_error("ResourceNotFound", "run not found")
        if run.position < len(run.script) - 1:
            run.position += 1
            run.log += run.script[run.position].lines
            acr._write_log(run, done=run.position == len(run.script) - 1)
        return 200, run_body(acr, run)

    def log_sas(req: fake_arm.Recorded) -> tuple[int, Any]:
        bad = check_version(req)
        if bad:
            return bad
        run_id = req.path.rstrip("/").split("/")[-2]
        if run_id not in acr.runs:
            return 404, fake_arm.arm_error("ResourceNotFound", "run not found")
        return 200, {"logLink": azurite.sas_url("logs", f"{run_id}/rawtext.log", "r")}

    fake.handle("POST", f"{base}/listBuildSourceUploadUrl", upload_url)
    fake.handle("POST", f"{base}/scheduleRun", schedule)
    fake.handle_pattern("GET", rf"{acr.base}/runs/[^/]+", get_run)
    fake.handle_pattern("POST", rf"{acr.base}/runs/[^/]+/listLogSasUrl", log_sas)
    return acr


def run_body(acr: FakeAcr, run: Run) -> dict[str, Any]:
    props: dict[str, Any] = {
        "runId": run.run_id, "status": run.status, "runType": "QuickRun",
        "createTime": "2026-12-03T16:00:00Z", "provisioningState": "Succeeded",
        "platform": {"os": "linux", "architecture": "amd64"}, "isArchiveEnabled": False,
        "outputImages": [], "lastUpdatedTime": "2026-12-03T16:01:00Z",
    }
    if run.status == "Succeeded":
        repo, _, tag = run.image.partition(":")
        props["outputImages"] = [{"registry": acr.login_server, "repository": repo,
                                  "tag": tag, "digest": acr.digest}]
        props["finishTime"] = "2026-12-03T16:01:30Z"
    if run.status == "Failed":
        props["runErrorMessage"] = "failed during run, err: exit status 1"
    return {"id": f"{acr.base}/runs/{run.run_id}", "name": run.run_id,
            "type": "Microsoft.ContainerRegistry/registries/runs", "properties": props}


def registry_outputs(prefix: str = "acme") -> dict[str, Any]:
    return fake_arm.sample_outputs(prefix) | {"resourceGroupName": RG,
                                               "registryName": REGISTRY,
                                               "registryLoginServer": f"{REGISTRY}.azurecr.io"}


# --- the registry's data plane ----------------------------------------------------------

@dataclass
class Registry:
    """A login server: manifests by (repository, digest), and the token exchange."""

    host: str = ""
    manifests: set[tuple[str, str]] = field(default_factory=set)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    refresh_tokens: set[str] = field(default_factory=set)
    access_tokens: dict[str, str] = field(default_factory=dict)  # token -> scope


@contextlib.contextmanager
def serve_registry(cert: Path, key: Path) -> Iterator[Registry]:
    reg = Registry()

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = {k: v[-1] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            path = urlsplit(self.path).path
            reg.requests.append(("POST", path, form))
            if path == "/oauth2/exchange":
                if form.get("grant_type") != "access_token" or \
                        form.get("access_token") != ACR_AAD_TOKEN or \
                        form.get("service") != reg.host:
                    self._reply(401, {"errors": [{"code": "UNAUTHORIZED",
                                                  "message": "invalid AAD token"}]})
                    return
                token = f"refresh-{uuid.uuid4().hex}"
                reg.refresh_tokens.add(token)
                self._reply(200, {"refresh_token": token})
            elif path == "/oauth2/token":
                if form.get("grant_type") != "refresh_token" or \
                        form.get("refresh_token") not in reg.refresh_tokens:
                    self._reply(401, {"errors": [{"code": "UNAUTHORIZED",
                                                  "message": "invalid refresh token"}]})
                    return
                token = f"access-{uuid.uuid4().hex}"
                reg.access_tokens[token] = form.get("scope", "")
                self._reply(200, {"access_token": token})
            else:
                self._reply(404, {"errors": [{"code": "NOT_FOUND", "message": path}]})

        def do_GET(self) -> None:
            path = unquote(urlsplit(self.path).path)
            reg.requests.append(("GET", path, {}))
            parts = path.strip("/").split("/")
            if len(parts) < 4 or parts[:2] != ["acr", "v1"] or parts[-2] != "_manifests":
                self._reply(404, {"errors": [{"code": "NOT_FOUND", "message": path}]})
                return
            repo, digest = "/".join(parts[2:-2]), parts[-1]
            scope = f"repository:{repo}:metadata_read"
            auth = self.headers.get("Authorization", "")
            if reg.access_tokens.get(auth.removeprefix("Bearer ")) != scope:
                self._reply(401, {"errors": [{"code": "UNAUTHORIZED",
                                              "message": "authentication required"}]},
                            {"WWW-Authenticate": f'Bearer realm="https://{reg.host}/oauth2/'
                             f'token",service="{reg.host}",scope="{scope}"'})
                return
            if (repo, digest) not in reg.manifests:
                self._reply(404, {"errors": [{"code": "MANIFEST_UNKNOWN",
                                              "message": "manifest unknown"}]})
                return
            self._reply(200, {"registry": reg.host, "imageName": repo, "manifest": {
                "digest": digest, "imageSize": 123456, "createdTime": "2026-12-03T16:01:30Z",
                "lastUpdateTime": "2026-12-03T16:01:30Z", "architecture": "amd64",
                "os": "linux", "mediaType": "application/vnd.docker.distribution.manifest.v2"
                "+json", "tags": ["py3.12"], "changeableAttributes": {
                    "deleteEnabled": True, "writeEnabled": True, "readEnabled": True,
                    "listEnabled": True}}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    reg.host = f"127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield reg
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
