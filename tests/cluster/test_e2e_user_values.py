"""User values (-f, --set) land in the installed objects on both profiles,
and a key that must come from the deployment is refused before anything is
written to the cluster.

Local profile: `python -m mfhelm install --local` as a user runs it. Azure
profile: stack.install_azure, as in test_e2e_azure_profile.py, with AKS and
Key Vault served by the local Azure stand-in (the CLI has no switch to point
at it); the user values go through the same UserValues the CLI builds.
"""

from __future__ import annotations

import base64
from pathlib import Path

import fake_arm
import pytest
from kubernetes.client.rest import ApiException

from mfhelm.errors import MfhelmError
from mfhelm.uservalues import UserValues

from .handle import Cluster
from .test_e2e_stack import deployments, install_local, one_error_line

pytestmark = pytest.mark.cluster

USER_FILE = """\
metadata:
  replicas: 3
  resources:
    requests: {cpu: 300m, memory: 640Mi}
    limits: {cpu: "2", memory: 2Gi}
commonLabels:
  team: ml-platform
"""
SETS = ["metadata.replicas=2",
        "ui.backend.extraEnv[0].name=FEATURE_RUN_GROUPS,ui.backend.extraEnv[0].value=yes-please"]


def _user_file(tmp_path: Path) -> Path:
    path = tmp_path / "mine.yaml"
    path.write_text(USER_FILE)
    return path


def _check_user_values_landed(cluster: Cluster, namespace: str, release: str) -> None:
    deps = deployments(cluster, namespace, release)
    meta = deps[f"{release}-metadata"]
    assert meta.spec.replicas == 2  # --set wins over the file's 3
    (service,) = [c for c in meta.spec.template.spec.containers if c.name == "metadata"]
    assert service.resources.requests == {"cpu": "300m", "memory": "640Mi"}
    assert service.resources.limits == {"cpu": "2", "memory": "2Gi"}
    assert meta.metadata.labels["team"] == "ml-platform"
    backend = deps[f"{release}-ui-backend"].spec.template.spec.containers[0]
    env = {e.name: e.value for e in backend.env}
    assert env["FEATURE_RUN_GROUPS"] == "yes-please"
    cluster.wait_for(lambda: (cluster.apps().read_namespaced_deployment(
        f"{release}-metadata", namespace).status.available_replicas or 0) == 2, 120,
        "both metadata pods to be available")


def test_local_install_applies_files_then_sets(cluster: Cluster, namespace: str,
                                               tmp_path: Path):
    extra = ["-f", str(_user_file(tmp_path))]
    for expr in SETS:
        extra += ["--set", expr]
    proc = install_local(cluster, namespace, "uv", *extra)
    assert proc.returncode == 0, proc.stderr
    _check_user_values_landed(cluster, namespace, "uv")


def test_local_protected_key_is_refused_before_anything_is_written(cluster: Cluster,
                                                                  namespace: str):
    line = one_error_line(install_local(cluster, namespace, "uvp", "--set",
                                        "database.existingSecret=my-own"))
    assert "changes database.existingSecret" in line and "--allow-override" in line
    assert not cluster.core().list_namespaced_secret(namespace).items
    assert not cluster.apps().list_namespaced_deployment(namespace).items
    flows = cluster.core().list_namespace().items
    assert f"{namespace}-flows" not in {n.metadata.name for n in flows}


# --- azure profile ----------------------------------------------------------------------------

PASSWORD = "kv-Only-Pw-7d2e"


@pytest.fixture
def azure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster: Cluster):
    """Outputs of a deployment federated for its own namespace (so this
    release stays apart from test_e2e_azure_profile.py's), AKS handing out
    the test cluster's kubeconfig, Key Vault holding the admin password."""
    gen = fake_arm.serve(tmp_path)
    fake = next(gen)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(fake.ca_file))
    outputs = fake_arm.sample_outputs() | {
        "deployArgo": False, "keyVaultUri": fake.base_url + "/",
        "serviceNamespace": "mfuser", "flowNamespace": "mfuser-flows"}
    creds = (f"/subscriptions/{fake_arm.SUB}/resourceGroups/{outputs['resourceGroupName']}"
             f"/providers/Microsoft.ContainerService/managedClusters/{outputs['aksClusterName']}"
             "/listClusterUserCredential")
    fake.route("POST", creds, 200, fake_arm.kubeconfig_body(cluster.kubeconfig.read_bytes()))
    name = outputs["postgresAdminSecretName"]
    fake.route("GET", f"/secrets/{name}", 200, fake_arm.secret_body(fake.base_url, name, PASSWORD))
    yield fake, outputs
    gen.close()


def _install_azure(fake, outputs, user: UserValues, release: str):
    from mfhelm import settings, stack

    s = settings.parse({"org_prefix": "acme", "location": "westeurope",
                        "helm": {"namespace": outputs["serviceNamespace"],
                                 "flow_namespace": outputs["flowNamespace"]}})
    return stack.install_azure(
        stack.Target(release, outputs["serviceNamespace"]), s, outputs,
        credential=fake_arm.FakeCredential(), subscription_id=fake_arm.SUB, timeout="4m",
        user_values=user, arm_base_url=fake.base_url, verify_challenge_resource=False)


def test_azure_install_applies_user_values_over_the_deployment(cluster: Cluster, azure,
                                                               tmp_path: Path):
    fake, outputs = azure
    user = UserValues.read([_user_file(tmp_path)], SETS)
    info = _install_azure(fake, outputs, user, "mfu")
    assert info.status == "deployed"
    ns = outputs["serviceNamespace"]
    _check_user_values_landed(cluster, ns, "mfu")
    # What the deployment decides is still what the deployment said.
    meta = cluster.apps().read_namespaced_deployment("mfu-metadata", ns)
    env = {e.name: e for e in meta.spec.template.spec.containers[0].env}
    assert env["MF_METADATA_DB_HOST"].value == outputs["postgresFqdn"]
    sa = cluster.core().read_namespaced_service_account(outputs["serviceAccountService"], ns)
    assert sa.metadata.annotations["azure.workload.identity/client-id"] == \
        outputs["identityClientId"]
    secret = cluster.core().read_namespaced_secret("metaflow-db", ns)
    assert base64.b64decode(secret.data["password"]).decode() != PASSWORD


def test_azure_protected_key_is_refused_before_azure_or_the_cluster(cluster: Cluster, azure):
    fake, outputs = azure
    outputs = outputs | {"serviceNamespace": "mfuser-refused",
                         "flowNamespace": "mfuser-refused-flows"}
    user = UserValues.read(sets=["metadata.replicas=2",
                                 "database.host=attacker.example.com"])
    with pytest.raises(MfhelmError, match=r"^--set database.host=attacker.example.com changes "
                       r"database.host, which comes from the deployment \(postgresFqdn\)"):
        _install_azure(fake, outputs, user, "mfr")
    assert fake.requests == []  # neither AKS credentials nor Key Vault were asked
    for ns in ("mfuser-refused", "mfuser-refused-flows"):
        with pytest.raises(ApiException) as err:
            cluster.core().read_namespace(ns)
        assert err.value.status == 404
