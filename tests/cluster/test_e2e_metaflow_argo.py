"""Real Metaflow (the test deps' metaflow==2.19.39) deploying a flow to Argo
Workflows with exactly the config `mfhelm config` writes for the test stack.

Metaflow uploads the code package before it writes anything, through
`DefaultAzureCredential`. Here its workload-identity leg exchanges a
federated token at a local endpoint shaped like Entra ID's, and the access
token it gets is what a real Azurite (HTTPS, `--oauth basic`) checks. The
only setting moved is the Blob endpoint: `https://<account>.blob.core.windows.net/`
becomes Azurite's path-style `https://127.0.0.1:<port>/devstoreaccount1/`
(an environment variable; the config file stays as mfhelm wrote it).
No Metaflow code is patched. See metaflow_env.py for the stand-ins.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from . import argo
from . import metaflow_env as mfenv
from .handle import Cluster, wait_for

pytestmark = pytest.mark.cluster

FLOW = "branch_foreach_flow.py"
FLOW_NAME = "BranchForeachFlow"
TEMPLATE = FLOW_NAME.lower()  # Metaflow's Argo name: lower case, no underscores
# The flow's steps, as Argo template names (underscores become dashes).
STEPS = {"start", "prepare", "left", "right", "join-branch", "fan-out", "square",
         "join-foreach", "end"}
ARGO = {"group": "argoproj.io", "version": "v1alpha1"}


def _step_templates(workflow_template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in workflow_template["spec"]["templates"]
            if "metaflow/step_name" in ((t.get("metadata") or {}).get("annotations") or {})}


def _env(template: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in template["container"]["env"]}


def _check_pod_spec(mf: mfenv.MetaflowEnv, wt: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What every step's pod gets from the config, checked on each step template."""
    cfg = mf.config
    key, _, value = cfg["METAFLOW_KUBERNETES_NODE_SELECTOR"].partition("=")
    label_key, _, label_value = cfg["METAFLOW_KUBERNETES_LABELS"].partition("=")
    steps = _step_templates(wt)
    assert set(steps) == STEPS
    for name, t in steps.items():
        assert t["serviceAccountName"] == cfg["METAFLOW_KUBERNETES_SERVICE_ACCOUNT"] == \
            "metaflow-flows", name
        assert t["nodeSelector"] == {key: value} == {"mfhelm.io/pool": "taskworkers"}, name
        assert t["tolerations"] == json.loads(cfg["METAFLOW_KUBERNETES_TOLERATIONS"]), name
        assert t["metadata"]["labels"][label_key] == label_value == "true", name
        env = _env(t)
        # Pods reach the metadata service in-cluster, not at the laptop's URL.
        assert env["METAFLOW_SERVICE_URL"] == cfg["METAFLOW_SERVICE_INTERNAL_URL"] == \
            "http://metaflow-metadata.metaflow.svc.cluster.local:8080", name
        assert env["METAFLOW_DEFAULT_METADATA"] == "service"
        assert env["METAFLOW_DEFAULT_DATASTORE"] == env["METAFLOW_CODE_DS"] == "azure"
        assert env["METAFLOW_DATASTORE_SYSROOT_AZURE"] == cfg["METAFLOW_DATASTORE_SYSROOT_AZURE"]
        assert env["METAFLOW_CARD_AZUREROOT"] == f"{cfg['METAFLOW_DATASTORE_SYSROOT_AZURE']}/mf.cards"
        # The endpoint the client used travels to the pods (here: the Azurite override).
        assert env["METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT"] == mf.azurite.account_url
        assert "--datastore=azure" in json.dumps(t["container"].get("command")), name
    return steps


def _code_package_blob(mf: mfenv.MetaflowEnv, steps: dict[str, dict[str, Any]]) -> str:
    urls = {_env(t)["METAFLOW_CODE_URL"] for t in steps.values()}
    assert len(urls) == 1, urls
    container, prefix = mf.sysroot
    url = urls.pop()
    assert url.startswith(f"{container}/{prefix}/{FLOW_NAME}/data/"), url
    return url.removeprefix(f"{container}/")


def _check_token_exchange(mf: mfenv.MetaflowEnv, new: list[mfenv.Request]) -> None:
    """Exactly the workload-identity exchange, nothing else (no discovery, no IMDS)."""
    entra = mf.entra
    assert [(r.method, r.path) for r in new] == \
        [("POST", f"/{entra.tenant}/oauth2/v2.0/token")], new
    form = new[0].form
    assert form["grant_type"] == "client_credentials"
    assert form["client_id"] == mf.outputs["identityClientId"] == mf.env["AZURE_CLIENT_ID"]
    assert form["client_assertion_type"] == mfenv.JWT_BEARER
    assert form["client_assertion"] == entra.federated_token
    assert form["scope"] == mfenv.STORAGE_SCOPE


@dataclass
class BlobTraffic:
    responses: list[tuple[str, str, int]]  # (method, path, status), Azurite's access log
    requests: list[mfenv.AzuriteRequest]   # the same requests with their headers
    uploaded: bool                         # False: the package was there already


def _marks(mf: mfenv.MetaflowEnv) -> tuple[int, int]:
    """Where Azurite's access and debug logs stand, past every call the test has made."""
    try:
        return mf.azurite.mark(mf.sysroot[0])
    except TimeoutError as exc:
        pytest.fail(str(exc))


def _blob_traffic(mf: mfenv.MetaflowEnv, since: tuple[int, int], blob: str) -> BlobTraffic:
    """What Metaflow asked Azurite for the code package, read before the test makes calls
    of its own. The package is content-addressed: Metaflow HEADs it and PUTs it only if
    missing. Azurite writes its logs asynchronously, hence the wait."""
    container, _ = mf.sysroot
    path = f"/{mfenv.AZURITE_ACCOUNT}/{container}/{blob}"

    def settled() -> BlobTraffic | None:
        responses = mf.azurite.responses()[since[0]:]
        requests = mf.azurite.requests()[since[1]:]
        head = [s for m, p, s in responses if (m, p) == ("HEAD", path)]
        put = [s for m, p, s in responses if (m, p) == ("PUT", path)]
        if not head or len(requests) < len(responses):
            return None
        if head[0] == 404 and not put:
            return None
        return BlobTraffic(responses, requests, uploaded=bool(put))

    # Returns as soon as both logs have it; the bound is for a loaded machine,
    # where Azurite's debug log (the headers) trails its access log by seconds.
    try:
        return wait_for(settled, 60, f"Azurite to log the code package at {path}")
    except TimeoutError:
        pytest.fail(f"Azurite's logs never settled on a HEAD/PUT of {path}: access log "
                    f"{mf.azurite.responses()[since[0]:]}, "
                    f"{len(mf.azurite.requests()[since[1]:])} requests in its debug log")


def _check_blob_traffic(mf: mfenv.MetaflowEnv, traffic: BlobTraffic
                        ) -> list[tuple[str, str, int]]:
    """Every Blob call succeeded with a token our Entra stand-in issued."""
    assert all(status < 400 or (m, status) == ("HEAD", 404)
               for m, _, status in traffic.responses), traffic.responses
    for r in traffic.requests:
        assert r.bearer in mf.entra.issued, (r.method, r.path, r.headers.get("authorization"))
        claims = mfenv.jwt_claims(r.bearer or "")
        assert claims["aud"] == mfenv.STORAGE_AUDIENCE
        assert claims["iss"] == f"https://sts.windows.net/{mf.entra.tenant}/"
    return traffic.responses


def test_written_config_is_mfhelms_and_only_the_endpoint_is_overridden(metaflow_env):
    from mfhelm.metaflow_config import build_config
    from mfhelm.settings import parse

    mf = metaflow_env
    on_disk = json.loads(mf.config_file.read_text())
    settings = parse({"org_prefix": "acme", "location": "westeurope"})
    assert on_disk == build_config(mf.outputs, settings, service_url=mf.metadata.url)
    assert mf.config_file == mf.home / ".metaflowconfig" / "config.json"
    assert on_disk["METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT"] == \
        "https://acmemfstore1234567.blob.core.windows.net/"
    overridden = {k for k in mf.env if k.startswith("METAFLOW_")}
    assert overridden == {"METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT"}


def test_azurite_checks_the_bearer_token(azurite_https, stack_outputs):
    """The stand-in is not toothless: Azurite refuses tokens Entra would not issue."""
    from azure.core.credentials import AccessToken
    from azure.core.exceptions import HttpResponseError

    class Fixed:
        def __init__(self, token: str) -> None:
            self.token = token

        def get_token(self, *scopes: str, **_: Any) -> AccessToken:
            return AccessToken(self.token, int(time.time()) + 3600)

    tenant, app = stack_outputs["tenantId"], stack_outputs["identityClientId"]
    good = azurite_https.service(Fixed(mfenv.storage_token(tenant, app)))
    assert good.get_container_client("metaflow-storage").exists()
    bad = {
        "wrong audience": mfenv.storage_token(tenant, app, audience="https://vault.azure.net"),
        "expired": mfenv.storage_token(tenant, app, lifetime=-120),
        "not a JWT": "opaque-token",
    }
    for what, token in bad.items():
        with pytest.raises(HttpResponseError) as err:
            azurite_https.service(Fixed(token)).get_container_client(
                "metaflow-storage").get_container_properties()
        assert err.value.status_code in (401, 403), what


def test_argo_create_only_json_uploads_the_package_with_a_federated_token(metaflow_env):
    mf = metaflow_env
    # Packages are content-addressed; start without this flow's so that one is uploaded.
    container, prefix = mf.sysroot
    blobs = mf.azurite.service().get_container_client(container)
    for name in mf.azurite.blob_names(container, f"{prefix}/{FLOW_NAME}/"):
        blobs.delete_blob(name)
    entra_before, blob_before = len(mf.entra.requests), _marks(mf)
    metadata_before = len(mf.metadata.requests)
    started = time.monotonic()
    proc = mf.run_flow(FLOW, "argo-workflows", "create", "--only-json")
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    wt = json.loads(proc.stdout)
    assert (wt["apiVersion"], wt["kind"]) == ("argoproj.io/v1alpha1", "WorkflowTemplate")
    assert wt["metadata"]["name"] == TEMPLATE
    assert wt["metadata"]["namespace"] == mf.flow_namespace == "metaflow-flows"
    assert wt["metadata"]["annotations"]["metaflow/owner"] == "ada"
    assert mfenv.schema_problems(mfenv.argo_full_schema("workflowtemplates"), wt) == []
    steps = _check_pod_spec(mf, wt)
    blob = _code_package_blob(mf, steps)
    blob_traffic = _blob_traffic(mf, blob_before, blob)
    assert blob_traffic.uploaded

    # The code package is in the Blob container under the sysroot prefix, and is the flow.
    assert blob in mf.azurite.blob_names(container, f"{prefix}/")
    data = mf.azurite.service().get_blob_client(container, blob).download_blob().readall()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert FLOW in tar.getnames()

    _check_token_exchange(mf, mf.entra.requests[entra_before:])
    calls = _check_blob_traffic(mf, blob_traffic)
    assert mf.metadata.requests[metadata_before:] == [], "--only-json contacted the metadata service"
    print(f"\nonly-json create: {took:.1f}s; Entra: "
          f"{[(r.method, r.path) for r in mf.entra.requests[entra_before:]]}; Azurite: {calls}")


# --- against the test cluster --------------------------------------------------------------

def _custom(cluster: Cluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(cluster.api_client())


@pytest.fixture
def flow_namespace(cluster: Cluster, metaflow_env) -> Any:
    """The namespace the config sends flows to, with Argo's CRDs served; what this test
    deploys there is removed afterwards."""
    ns = cluster.create_namespace(metaflow_env.flow_namespace)
    # Argo's minimal CRDs at the pinned version, as argo-helm installs them.
    argo.apply_crds(cluster, argo.ensure_argo())
    yield ns
    custom = _custom(cluster)
    for plural in ("workflows", "workflowtemplates"):
        for item in custom.list_namespaced_custom_object(**ARGO, namespace=ns,
                                                         plural=plural)["items"]:
            if item["metadata"].get("annotations", {}).get("metaflow/flow_name") == FLOW_NAME \
                    or item["spec"].get("workflowTemplateRef", {}).get("name") == TEMPLATE:
                try:
                    custom.delete_namespaced_custom_object(
                        **ARGO, namespace=ns, plural=plural, name=item["metadata"]["name"])
                except ApiException as exc:
                    if exc.status != 404:
                        raise


def test_argo_create_and_trigger_write_argo_objects_in_the_flow_namespace(
        cluster, metaflow_env, flow_namespace):
    mf = metaflow_env
    custom = _custom(cluster)
    entra_before, blob_before = len(mf.entra.requests), _marks(mf)
    metadata_before = len(mf.metadata.requests)

    started = time.monotonic()
    created = mf.run_flow(FLOW, "argo-workflows", "create", kubeconfig=cluster.kubeconfig)
    took_create = time.monotonic() - started
    assert created.returncode == 0, created.stdout[-3000:] + created.stderr[-3000:]

    wt = custom.get_namespaced_custom_object(**ARGO, namespace=flow_namespace,
                                             plural="workflowtemplates", name=TEMPLATE)
    annotations = wt["metadata"]["annotations"]
    assert annotations["metaflow/flow_name"] == FLOW_NAME
    assert annotations["metaflow/owner"] == "ada"
    # A real production token this time (only-json prints a placeholder), kept in the HOME.
    assert annotations["metaflow/production_token"] != "__PLACEHOLDER_PRODUCTION_TOKEN__"
    # What the API server stored (the minimal CRD accepts any spec) still fits Argo's types.
    assert mfenv.schema_problems(mfenv.argo_full_schema("workflowtemplates"), wt) == []
    steps = _check_pod_spec(mf, wt)
    blob = _code_package_blob(mf, steps)
    traffic = _blob_traffic(mf, blob_before, blob)
    calls = _check_blob_traffic(mf, traffic)
    _check_token_exchange(mf, mf.entra.requests[entra_before:])
    # Outside --only-json Metaflow checks the metadata service's version, nothing more.
    seen = [(r.method, r.path) for r in mf.metadata.requests[metadata_before:]]
    assert seen == [("GET", "/ping")], seen

    run_id_file = mf.home / "work" / f"run-id-{uuid.uuid4().hex[:6]}"
    before_trigger = (len(mf.entra.requests), len(mf.metadata.requests), _marks(mf))
    started = time.monotonic()
    triggered = mf.run_flow(FLOW, "argo-workflows", "trigger", "--run-id-file",
                            str(run_id_file), kubeconfig=cluster.kubeconfig)
    took_trigger = time.monotonic() - started
    assert triggered.returncode == 0, triggered.stdout[-3000:] + triggered.stderr[-3000:]
    # Triggering talks to the API server only: no token, no Blob, no metadata service.
    after_trigger = (len(mf.entra.requests), len(mf.metadata.requests), _marks(mf))
    assert after_trigger[:2] == before_trigger[:2]
    # Between the two marks Azurite saw nothing but the second mark itself.
    (responses_from, requests_from), (responses_to, requests_to) = \
        before_trigger[2], after_trigger[2]
    assert mf.azurite.responses()[responses_from:responses_to - 1] == []
    assert mf.azurite.requests()[requests_from:requests_to - 1] == []
    run_id = run_id_file.read_text().strip()
    assert run_id.startswith(f"argo-{TEMPLATE}-"), run_id
    workflow = custom.get_namespaced_custom_object(
        **ARGO, namespace=flow_namespace, plural="workflows", name=run_id.removeprefix("argo-"))
    assert workflow["spec"]["workflowTemplateRef"] == {"name": TEMPLATE}
    assert mfenv.schema_problems(mfenv.argo_full_schema("workflows"), workflow) == []
    assert json.loads(workflow["metadata"]["annotations"]["metaflow/triggered_by_user"]) == \
        {"type": "user", "name": "ada"}
    print(f"\ncreate: {took_create:.1f}s, trigger: {took_trigger:.1f}s; run {run_id}; "
          f"metadata service: {seen}; Azurite (package uploaded: {traffic.uploaded}): {calls}")
