"""The core layers `mfhelm verify` checks from the user's machine, with the
Metaflow config `mfhelm config` wrote:

- "metadata service": `GET /ping` answers `pong`, and the service's version
  (`GET /version`, metaflow-service's admin API; older services and stand-ins
  only send it as the `METADATA_SERVICE_VERSION` header of /ping) is the
  release's chart appVersion.
- "local run": the shipped flow runs here (`python mfhelm_verify_flow.py
  run`), recording to the service and storing its artifacts in the Blob
  container the config names; Metaflow's Client API reads `answer == 42` back,
  and the task's metadata says where the artifacts went.
- "ui": the UI backend lists that run (`GET /api/flows/<flow>/runs/<id>`);
  skipped, with the reason, when the backend cannot be reached from here.
"""

from __future__ import annotations

import json
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from mfhelm import proc
from mfhelm.verify.model import Check, Failed, Run, Skipped, Stack

FLOW_FILE = "mfhelm_verify_flow.py"
FLOW_NAME = "MfhelmVerifyFlow"
ANSWER = 42
# One HTTP call's bound (the deadline may cut it shorter).
HTTP_TIMEOUT = 30.0
# The UI backend through `mfhelm port-forward` (mfhelm.portforward).
UI_BACKEND_PORT_FORWARD = "http://localhost:8083/api"
UI_PORT_FORWARD_PORT = 3000
SCOPE_KEY = "METAFLOW_MFHELM_SERVICE_SCOPE"
CREDENTIAL_KEY = "METAFLOW_MFHELM_SERVICE_CREDENTIAL"
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def _left(run: Run) -> float:
    left = run.deadline - time.monotonic()
    if left <= 0:
        raise Failed("no time left of --timeout", "give verify longer (--timeout)")
    return left


# ------------------------------------------------------------------ HTTP

@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer of its own here (the sign-in page's)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def http_get(url: str, headers: dict[str, str], timeout: float) -> Answer:
    """GET without following redirects; an HTTP error is an Answer, a transport
    failure raises OSError (URLError)."""
    opener = urllib.request.build_opener(
        _NoRedirect(), urllib.request.HTTPSHandler(context=ssl.create_default_context()))
    req = urllib.request.Request(url, headers=headers, method="GET")
    try:
        with opener.open(req, timeout=timeout) as resp:
            body = resp.read(1 << 20).decode(errors="replace")
            return Answer(resp.status, {k.lower(): v for k, v in resp.headers.items()}, body)
    except urllib.error.HTTPError as exc:
        body = exc.read(1 << 16).decode(errors="replace") if exc.fp else ""
        return Answer(exc.code, {k.lower(): v for k, v in (exc.headers or {}).items()}, body)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return "no answer (timed out)"
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"TLS: {reason.verify_message or reason}"
    text = getattr(reason, "strerror", None) or str(reason)
    return " ".join(str(text).split())


def _is_local(url: str) -> bool:
    return (urlsplit(url).hostname or "") in _LOCAL_HOSTS


def service_headers(config: dict[str, str]) -> dict[str, str]:
    """What Metaflow's client sends the service: METAFLOW_SERVICE_HEADERS,
    x-api-key from METAFLOW_SERVICE_AUTH_KEY, and (behind the sign-in) an Entra
    token for the config's scope, asked the way mfhelm's Metaflow extension
    asks (mfhelm/mfext)."""
    headers: dict[str, str] = {}
    raw = config.get("METAFLOW_SERVICE_HEADERS")
    if raw:
        try:
            extra = json.loads(raw)
        except ValueError:
            extra = None
        if not isinstance(extra, dict):
            raise Failed("METAFLOW_SERVICE_HEADERS is not a JSON object",
                         "fix it in the Metaflow config")
        headers |= {str(k): str(v) for k, v in extra.items()}
    if config.get("METAFLOW_SERVICE_AUTH_KEY"):
        headers["x-api-key"] = config["METAFLOW_SERVICE_AUTH_KEY"]
    scope = config.get(SCOPE_KEY)
    if scope:
        from metaflow_extensions.mfhelm.config.service_auth import ServiceToken

        asker = ServiceToken(scope, config.get(CREDENTIAL_KEY))
        token = asker.get()
        if token is None:
            raise Failed(f"no sign-in token for {scope}: {asker.problem}",
                         "sign in with `az login` (as a member of a group `mfhelm grant` "
                         "let in)")
        headers["Authorization"] = f"Bearer {token}"
    return headers


# ------------------------------------------------------- "metadata service"

def _service_unreachable(url: str, why: str) -> Failed:
    if _is_local(url):
        fix = ("start `mfhelm port-forward` (it forwards the metadata service to "
               "localhost:8080) and leave it running")
    else:
        fix = "check the entry point and the service's pods with `mfhelm status`"
    return Failed(f"no answer from {url} ({why})", fix)


def _refused(url: str, answer: Answer, what: str) -> Failed:
    where = answer.headers.get("location", "")
    if answer.status in (401, 403) or (300 <= answer.status < 400 and where):
        told = f" to {where.split('?')[0]}" if where else ""
        return Failed(f"{answer.status}{told} from {url}{what} (the sign-in proxy)",
                      "sign in with `az login` as a member of a group `mfhelm grant` let in; "
                      f"the config's {SCOPE_KEY} names the sign-in app")
    if answer.status >= 500:
        return Failed(f"{answer.status} from {url}{what}",
                      "the service answers but fails: see `mfhelm status` and its pod's log "
                      "(kubectl logs deploy/<release>-metadata)")
    return Failed(f"{answer.status} from {url}{what}",
                  "METAFLOW_SERVICE_URL does not point at the metadata service: write the "
                  "config again with `mfhelm config`")


def _version(text: str) -> str:
    return text.strip().removeprefix("v")


def check_metadata_service(stack: Stack, run: Run) -> str:
    url = stack.config["METAFLOW_SERVICE_URL"].rstrip("/")
    headers = service_headers(stack.config)
    try:
        ping = http_get(f"{url}/ping", headers, min(HTTP_TIMEOUT, _left(run)))
    except OSError as exc:
        raise _service_unreachable(url, _reason(exc)) from None
    if ping.status != 200:
        raise _refused(url, ping, "/ping")
    if ping.body.strip() != "pong":
        raise Failed(f"{url}/ping answered {ping.body.strip()[:40]!r}, not 'pong'",
                     "METAFLOW_SERVICE_URL does not point at the metadata service: write the "
                     "config again with `mfhelm config`")
    try:
        answer = http_get(f"{url}/version", headers, min(HTTP_TIMEOUT, _left(run)))
    except OSError as exc:
        raise _service_unreachable(url, _reason(exc)) from None
    if answer.status == 200:
        version = _version(answer.body)
    elif answer.status in (404, 405):
        version = _version(ping.headers.get("metadata_service_version", ""))
    else:
        raise _refused(url, answer, "/version")
    if not version:
        raise Failed(f"{url} does not say its version (no /version, no "
                     "METADATA_SERVICE_VERSION header)",
                     "METAFLOW_SERVICE_URL does not point at the metadata service")
    expected = _version(stack.chart_app_version)
    if version != expected:
        raise Failed(f"the service is version {version}, the release's chart is appVersion "
                     f"{expected}",
                     "the metadata Deployment runs another image than the chart's: run "
                     "`mfhelm install` again, without a metadata.image override")
    return version


# ------------------------------------------------------------- "local run"

_READ_BACK = """
import json, sys
from metaflow import Run, namespace
namespace(None)
run = Run(sys.argv[1] + "/" + sys.argv[2])
task = run["end"].task
meta = task.metadata_dict
print("mfhelm-verify-read " + json.dumps({
    "answer": task.data.answer, "ds_type": meta.get("ds-type"), "ds_root": meta.get("ds-root"),
    "finished": run.finished}))
"""


def _container(stack: Stack) -> str:
    return stack.config["METAFLOW_DATASTORE_SYSROOT_AZURE"].strip("/").split("/", 1)[0]


# Run in the user's Python and Metaflow config, through Metaflow's own Blob client
# (its credential provider and endpoint): a blob written and removed again, and
# what Azure answered. Metaflow itself keeps only the last line of a Blob error
# ("</Error>"), which names neither the status nor Azure's error code.
_BLOB_PROBE = """
import json, uuid
out = {}
try:
    from metaflow.metaflow_config import DATASTORE_SYSROOT_AZURE
    from metaflow.plugins.azure.blob_service_client_factory import get_azure_blob_service_client
    container, _, prefix = DATASTORE_SYSROOT_AZURE.strip("/").partition("/")
    name = (prefix + "/" if prefix else "") + "mfhelm-verify/probe-" + uuid.uuid4().hex
    blob = get_azure_blob_service_client().get_blob_client(container, name)
    try:
        blob.upload_blob(b"mfhelm verify", overwrite=True)
        out["ok"] = True
    finally:
        try:
            blob.delete_blob()
        except Exception:
            pass
except Exception as exc:
    text = str(exc).strip()
    code = getattr(exc, "error_code", None)
    out = {"kind": type(exc).__name__, "status": getattr(exc, "status_code", None),
           "code": str(getattr(code, "value", code) or ""),
           "message": text.splitlines()[0][:300] if text else ""}
print("mfhelm-verify-probe " + json.dumps(out))
"""


def probe_blob(stack: Stack, run: Run) -> dict[str, Any]:
    """What Azure Blob answers this machine's credential for a write into the
    config's container (the probe above); {} if the probe itself could not run."""
    done = run_metaflow(stack, run, [sys.executable, "-c", _BLOB_PROBE], "probing Blob")
    found = [ln for ln in done.stdout.splitlines() if ln.startswith("mfhelm-verify-probe ")]
    try:
        return dict(json.loads(found[-1].split(" ", 1)[1])) if found else {}
    except ValueError:
        return {}


def explain_blob(stack: Stack, probe: dict[str, Any]) -> Failed | None:
    container = _container(stack)
    endpoint = stack.config["METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT"]
    status, code = probe.get("status"), str(probe.get("code") or "")
    kind, message = str(probe.get("kind") or ""), str(probe.get("message") or "")
    if not probe or probe.get("ok"):
        return None
    if code in ("AuthorizationPermissionMismatch", "AuthorizationFailure"):
        return Failed(f"{status} from Blob ({code}) writing to {container}",
                      f"the identity has no Storage Blob Data Contributor on {container} "
                      "(`mfhelm grant` gives a group that role)")
    if code in ("AuthenticationFailed", "InvalidAuthenticationInfo", "NoAuthenticationInformation"):
        return Failed(f"{status} from Blob ({code}): {endpoint} refused the token",
                      "the token is not for this storage account's tenant, or has expired: "
                      "`az login --tenant <the stack's tenant>` (local: the token emulator "
                      "must answer, `mfhelm port-forward`)")
    if code == "ContainerNotFound":
        return Failed(f"404 from Blob: no container {container} at {endpoint}",
                      "METAFLOW_DATASTORE_SYSROOT_AZURE names another container than the "
                      "deployment's: write the config again with `mfhelm config`")
    if status:
        return Failed(f"{status} from Blob ({code or kind}) writing to {container}",
                      f"see Azure's answer: {message}")
    if kind in ("ClientAuthenticationError", "CredentialUnavailableError"):
        return Failed(f"no Azure credential for Blob ({kind}: {message})",
                      "sign in with `az login` (local: `mfhelm port-forward` forwards the token "
                      "emulator)")
    if kind in ("ServiceRequestError", "ConnectionError") or "connect" in message.lower():
        return _blob_unreachable(endpoint, message)
    if "CERTIFICATE_VERIFY_FAILED" in message:
        return Failed(f"TLS to Blob at {endpoint}: {message}",
                      "the CA bundle does not match the endpoint's certificate: write the "
                      "config again (`mfhelm config --local`)")
    return Failed(f"Blob at {endpoint}: {kind}: {message}", "")


def explain_run(stack: Stack, run: Run, output: str, by_hand: str) -> Failed:
    """A failed Metaflow process's output as what it saw and the likely fix;
    an Azure failure is probed again to learn Azure's own status and code."""
    service = stack.config["METAFLOW_SERVICE_URL"]
    low = output.lower()
    if "no module named 'metaflow'" in low or "no module named metaflow" in low:
        return Failed(f"Metaflow is not installed in {sys.executable}",
                      "pip install metaflow into the Python environment that runs mfhelm")
    if any(w in low for w in ("azure", "blob", "certificate_verify_failed")):
        failed = explain_blob(stack, probe_blob(stack, run))
        if failed is not None:
            return failed
    if "metaflow service" in low or urlsplit(service).netloc.lower() in low:
        return Failed(f"the run could not record to {service}: {_last_line(output)}",
                      "see the \"metadata service\" row; `mfhelm status` shows its pods")
    return Failed(f"the run failed: {_last_line(output)}",
                  f"run it by hand to see all of its output: {by_hand}")


def _last_line(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return " ".join(lines[-1].split())[:200] if lines else "no output"


def run_metaflow(stack: Stack, run: Run, argv: list[str], what: str) -> Any:
    from mfhelm.verify.core import metaflow_env

    try:
        # In the scratch directory: Metaflow keeps .metaflow/ and its temporary
        # files in the working directory, which is not the user's to litter.
        return proc.run(argv, timeout=_left(run), what=what, env=metaflow_env(stack, run),
                        cwd=run.workdir)
    except proc.TimedOut:
        raise Failed(f"{what} did not finish before the --timeout ran out",
                     "give verify longer (--timeout), or run it by hand to see where it "
                     f"waits: {' '.join(argv)}") from None


def _blob_unreachable(endpoint: str, why: str) -> Failed:
    return Failed(f"cannot reach Blob at {endpoint} ({why})",
                  "local: start `mfhelm port-forward` (it forwards Azurite); azure: check "
                  "that the storage account's network rules let your address in")


def check_blob_reachable(stack: Stack, run: Run) -> None:
    """A TCP connection to the Blob endpoint, before Metaflow is started: its
    Azure client retries a refused connection for minutes."""
    import socket

    endpoint = stack.config["METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT"]
    parts = urlsplit(endpoint)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = 0
    if not parts.hostname or not port:
        raise Failed(f"METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT {endpoint!r} is not a URL",
                     "write the config again with `mfhelm config`")
    try:
        socket.create_connection((parts.hostname, port),
                                 timeout=min(HTTP_TIMEOUT, _left(run))).close()
    except OSError as exc:
        raise _blob_unreachable(endpoint, _reason(exc)) from None


def check_local_run(stack: Stack, run: Run) -> str:
    check_blob_reachable(stack, run)
    run_id_file = run.workdir / "local-run-id"
    flow = str(run.workdir / FLOW_FILE)
    argv = [sys.executable, flow, "--no-pylint", "run", "--run-id-file", str(run_id_file)]
    by_hand = f"cd {run.workdir} && {' '.join(argv[:-2])}"
    done = run_metaflow(stack, run, argv, "the local run")
    output = f"{done.stdout}\n{done.stderr}"
    if done.returncode != 0:
        raise explain_run(stack, run, output, by_hand)
    run_id = run_id_file.read_text().strip() if run_id_file.exists() else ""
    if not run_id:
        raise Failed("the run ended without a run id", f"run it by hand: {by_hand}")
    run.notes["local run"] = run_id
    read = run_metaflow(stack, run, [sys.executable, "-c", _READ_BACK, FLOW_NAME, run_id],
                     "reading the run back (Metaflow's Client API)")
    if read.returncode != 0:
        raise explain_run(stack, run, f"{read.stdout}\n{read.stderr}", by_hand)
    found = [ln for ln in read.stdout.splitlines() if ln.startswith("mfhelm-verify-read ")]
    got = json.loads(found[-1].split(" ", 1)[1]) if found else {}
    if got.get("answer") != ANSWER:
        raise Failed(f"the Client API read answer={got.get('answer')!r} back from run "
                     f"{run_id}, not {ANSWER}", "the datastore returned other data than the "
                     "run wrote: check METAFLOW_DATASTORE_SYSROOT_AZURE in the config")
    sysroot = stack.config["METAFLOW_DATASTORE_SYSROOT_AZURE"].strip("/")
    if got.get("ds_type") != "azure" or str(got.get("ds_root", "")).strip("/") != sysroot:
        raise Failed(f"run {run_id} stored its artifacts in {got.get('ds_type')} "
                     f"{got.get('ds_root')}, not azure {sysroot}",
                     "a METAFLOW_DEFAULT_DATASTORE or METAFLOW_DATASTORE_SYSROOT_AZURE in "
                     "your environment overrides the config: unset it")
    return f"run {run_id}, answer {ANSWER} read back from {_container(stack)}"


# ------------------------------------------------------------------- "ui"

def ui_backend_url(config: dict[str, str]) -> str:
    """The UI backend's API as this machine reaches it: through `mfhelm
    port-forward` when the config names no UI or the forwarded one
    (localhost:3000), else beside the UI (https://<host>/api behind the entry
    point, where the UI and its API share the host)."""
    ui = config.get("METAFLOW_UI_URL", "")
    if not ui or (_is_local(ui) and urlsplit(ui).port == UI_PORT_FORWARD_PORT):
        return UI_BACKEND_PORT_FORWARD
    return ui.rstrip("/") + "/api"


def check_ui(stack: Stack, run: Run) -> str:
    run_id = run.notes.get("local run")
    if not run_id:
        raise Skipped("no run to look for")
    api = ui_backend_url(stack.config)
    headers = service_headers(stack.config) if not _is_local(api) else {}
    try:
        ping = http_get(f"{api}/ping", headers, min(HTTP_TIMEOUT, _left(run)))
    except OSError as exc:
        hint = "start `mfhelm port-forward`" if _is_local(api) else "check the entry point"
        raise Skipped(f"UI backend not reachable at {api}: {_reason(exc)}; {hint}") from None
    if ping.status != 200:
        raise _refused(api, ping, "/ping")
    path = f"{api}/flows/{FLOW_NAME}/runs/{run_id}"
    try:
        answer = http_get(path, headers, min(HTTP_TIMEOUT, _left(run)))
    except OSError as exc:
        raise Failed(f"no answer from {path} ({_reason(exc)})",
                     "see the UI backend's pod: `mfhelm status`") from None
    if answer.status == 404:
        raise Failed(f"the UI backend at {api} does not list run {FLOW_NAME}/{run_id} (404)",
                     "the UI backend reads another database than the metadata service: "
                     "check its MF_METADATA_DB_* settings (`mfhelm install` sets them alike)")
    if answer.status != 200:
        raise _refused(api, answer, f"/flows/{FLOW_NAME}/runs/{run_id}")
    try:
        data = json.loads(answer.body).get("data") or {}
    except (ValueError, AttributeError):
        data = {}
    if str(data.get("run_number", data.get("run_id", ""))) not in (run_id, ""):
        raise Failed(f"the UI backend at {api} answered another run for {run_id}",
                     "the UI backend reads another database than the metadata service")
    return f"lists run {run_id}"


def check_flow_image(stack: Stack, run: Run) -> str:
    """The image the config starts task pods from (`mfhelm image build`'s,
    METAFLOW_KUBERNETES_CONTAINER_IMAGE) is in its registry: asked of the
    registry before the orchestrators' runs would wait on a pod that cannot
    pull it."""
    from mfhelm.settings import IMAGE_REFERENCE_RE

    reference = stack.config.get("METAFLOW_KUBERNETES_CONTAINER_IMAGE", "")
    if not reference:
        raise Skipped("none configured: tasks pip-install their dependencies at start")
    if not IMAGE_REFERENCE_RE.fullmatch(reference):
        raise Skipped(f"{reference} is not an image by digest from `mfhelm image build`")
    from mfhelm.azure.credentials import get_credential
    from mfhelm.image import image_check

    found = image_check(reference, get_credential())
    if not found.ok:
        raise Failed(found.detail, found.fix)
    return found.detail


CHECKS = [
    Check("metadata service", lambda stack: True, check_metadata_service),
    Check("local run", lambda stack: True, check_local_run),
    Check("flow image", lambda stack: True, check_flow_image),
    Check("ui", lambda stack: True, check_ui),
]
