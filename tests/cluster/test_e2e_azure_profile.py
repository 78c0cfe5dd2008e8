"""The azure-profile install path end to end: AKS user credentials and the
PostgreSQL password come from a local server answering like the AKS and Key
Vault REST APIs (through the real Azure SDK clients), and the chart lands in
the real test cluster whose kubeconfig that "AKS" hands out.
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

import fake_arm
import pytest

from .handle import Cluster

pytestmark = pytest.mark.cluster


PASSWORD = "kv-Only-Pw-9c1f"
NAMESPACE = "metaflow"  # the namespace the (fake) deployment federated


@pytest.fixture
def azure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster: Cluster):
    gen = fake_arm.serve(tmp_path)
    fake = next(gen)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(fake.ca_file))
    outputs = fake_arm.sample_outputs() | {"deployArgo": False,
                                           "keyVaultUri": fake.base_url + "/"}
    creds = (f"/subscriptions/{fake_arm.SUB}/resourceGroups/{outputs['resourceGroupName']}"
             f"/providers/Microsoft.ContainerService/managedClusters/{outputs['aksClusterName']}"
             "/listClusterUserCredential")
    fake.route("POST", creds, 200, fake_arm.kubeconfig_body(cluster.kubeconfig.read_bytes()))
    name = outputs["postgresAdminSecretName"]
    fake.route("GET", f"/secrets/{name}", 200, fake_arm.secret_body(fake.base_url, name, PASSWORD))
    yield fake, outputs
    gen.close()


def test_install_azure_profile_into_the_cluster_aks_hands_out(cluster: Cluster, azure):
    from mfhelm import settings, stack

    fake, outputs = azure
    before = set(Path(tempfile.gettempdir()).glob("mfhelm-*/kubeconfig"))
    s = settings.parse({"org_prefix": "acme", "location": "westeurope"})
    info = stack.install_azure(
        stack.Target("metaflow", NAMESPACE), s, outputs, credential=fake_arm.FakeCredential(),
        subscription_id=fake_arm.SUB, timeout="4m", arm_base_url=fake.base_url,
        verify_challenge_resource=False,
    )
    assert (info.revision, info.status) == (1, "deployed")
    assert fake.calls("listClusterUserCredential")
    # The temporary kubeconfig is gone.
    assert set(Path(tempfile.gettempdir()).glob("mfhelm-*/kubeconfig")) == before

    core, apps = cluster.core(), cluster.apps()
    secret = core.read_namespaced_secret("metaflow-db", NAMESPACE)
    assert base64.b64decode(secret.data["password"]).decode() == PASSWORD
    sa = core.read_namespaced_service_account("metaflow-service", NAMESPACE)
    assert sa.metadata.annotations["azure.workload.identity/client-id"] == \
        outputs["identityClientId"]

    metadata = apps.read_namespaced_deployment("metaflow-metadata", NAMESPACE)
    env = {e.name: e for e in metadata.spec.template.spec.containers[0].env}
    assert env["MF_METADATA_DB_SSL_MODE"].value == "require"
    assert env["MF_METADATA_DB_HOST"].value == outputs["postgresFqdn"]
    assert env["MF_METADATA_DB_PSWD"].value_from.secret_key_ref.name == "metaflow-db"
    pods = core.list_namespaced_pod(
        NAMESPACE, label_selector="app.kubernetes.io/component=ui-backend").items
    assert pods and all(p.metadata.labels["azure.workload.identity/use"] == "true" for p in pods)
    # Services run on the services pool, as on AKS.
    assert {p.spec.node_name for p in pods} == {cluster.nodes["services"]}
    assert all((d.status.available_replicas or 0) >= 1 for d in
               apps.list_namespaced_deployment(NAMESPACE).items)
