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
    # The apps got their own role's password; the admin's is nowhere in the
    # cluster once the db-bootstrap Job (run by KWOK here) is gone.
    secret = core.read_namespaced_secret("metaflow-db", NAMESPACE)
    role_password = base64.b64decode(secret.data["password"]).decode()
    assert len(role_password) >= 24 and role_password != PASSWORD
    for s in core.list_namespaced_secret(NAMESPACE).items:
        for value in (s.data or {}).values():
            assert PASSWORD not in base64.b64decode(value).decode(errors="replace"), s.metadata.name
    assert not [j for j in cluster.batch().list_namespaced_job(NAMESPACE).items
                if j.metadata.name == "metaflow-db-bootstrap"]
    assert "metaflow-db-bootstrap" not in {c.metadata.name for c in
                                           core.list_namespaced_config_map(NAMESPACE).items}
    sa = core.read_namespaced_service_account("metaflow-service", NAMESPACE)
    assert sa.metadata.annotations["azure.workload.identity/client-id"] == \
        outputs["identityClientId"]

    metadata = apps.read_namespaced_deployment("metaflow-metadata", NAMESPACE)
    env = {e.name: e for e in metadata.spec.template.spec.containers[0].env}
    assert env["MF_METADATA_DB_SSL_MODE"].value == "require"
    assert env["MF_METADATA_DB_HOST"].value == outputs["postgresFqdn"]
    assert env["MF_METADATA_DB_USER"].value == "metaflow" != outputs["postgresAdminLogin"]
    assert env["MF_METADATA_DB_PSWD"].value_from.secret_key_ref.name == "metaflow-db"
    pods = core.list_namespaced_pod(
        NAMESPACE, label_selector="app.kubernetes.io/component=ui-backend").items
    assert pods and all(p.metadata.labels["azure.workload.identity/use"] == "true" for p in pods)
    # Services run on the services pool, as on AKS.
    assert {p.spec.node_name for p in pods} == {cluster.nodes["services"]}
    assert all((d.status.available_replicas or 0) >= 1 for d in
               apps.list_namespaced_deployment(NAMESPACE).items)


def test_db_bootstrap_that_never_finishes_leaves_nothing_behind(cluster: Cluster, namespace: str):
    """The Job is removed with its Secret and ConfigMap whatever happens; a
    Job that cannot run ends in one clear error."""
    from chartlib import CI_VALUES, renderable_chart

    from mfhelm import dbroles, kube
    from mfhelm.errors import MfhelmError

    values_file = next(p for p in CI_VALUES if p.name == "azure-values.yaml")
    import yaml

    values = yaml.safe_load(values_file.read_text()) | {
        "serviceNodeSelector": {"mfhelm.io/pool": "nowhere"}}
    configmap, job = dbroles.render(renderable_chart(), values, "stuck", namespace, "helm")
    api = kube.api_client(str(cluster.kubeconfig))
    with pytest.raises(MfhelmError, match="db-bootstrap Job did not finish in 3s"):
        dbroles.run(api, namespace, configmap, job,
                    {"admin-password": PASSWORD, "metaflow-password": "m" * 24}, timeout=3)
    core = cluster.core()
    assert "stuck-db-bootstrap" not in {s.metadata.name for s in
                                        core.list_namespaced_secret(namespace).items}
    assert "stuck-db-bootstrap" not in {c.metadata.name for c in
                                        core.list_namespaced_config_map(namespace).items}
    cluster.wait_for(lambda: not cluster.batch().list_namespaced_job(namespace).items, 60,
                     "the bootstrap Job to be deleted")
