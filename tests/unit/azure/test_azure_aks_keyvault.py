"""AKS user kubeconfig and Key Vault secrets through the real SDK clients."""

from __future__ import annotations

import pytest
import yaml
from fake_arm import (
    KV_SCOPE,
    SUB,
    TENANT,
    arm_error,
    kubeconfig_body,
    secret_body,
)

from mfhelm.azure.aks import aks_user_kubeconfig
from mfhelm.azure.keyvault import keyvault_secret
from mfhelm.errors import MfhelmError

RG, CLUSTER = "acme-metaflow-rg", "acme-metaflow-aks"
CREDS_PATH = (
    f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.ContainerService/"
    f"managedClusters/{CLUSTER}/listClusterUserCredential"
)
KUBECONFIG = b"""apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: LS0tLS1CRUdJTg==
    server: https://acme-metaflow-aks-dns-abc.hcp.westeurope.azmk8s.io:443
  name: acme-metaflow-aks
contexts:
- context: {cluster: acme-metaflow-aks, user: clusterUser_acme-metaflow-rg_acme-metaflow-aks}
  name: acme-metaflow-aks
current-context: acme-metaflow-aks
users:
- name: clusterUser_acme-metaflow-rg_acme-metaflow-aks
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: kubelogin
      args: [get-token, --login, azurecli, --server-id, 6dae42f8-4368-4678-94ff-3960e28e3630]
"""


def kubeconfig(fake, cred, **kw) -> bytes:
    return aks_user_kubeconfig(SUB, RG, CLUSTER, credential=cred, base_url=fake.base_url, **kw)


def test_user_kubeconfig_is_decoded_and_exec_format_requested(fake_azure, credential):
    fake_azure.route("POST", CREDS_PATH, 200, kubeconfig_body(KUBECONFIG))
    got = kubeconfig(fake_azure, credential)
    assert got == KUBECONFIG
    assert yaml.safe_load(got)["users"][0]["user"]["exec"]["command"] == "kubelogin"
    (req,) = fake_azure.calls("listClusterUserCredential")
    assert req.method == "POST"
    assert req.query["format"] == ["exec"]
    assert "api-version" in req.query


def test_kubeconfig_format_can_be_left_to_aks(fake_azure, credential):
    fake_azure.route("POST", CREDS_PATH, 200, kubeconfig_body(KUBECONFIG))
    kubeconfig(fake_azure, credential, format=None)
    assert "format" not in fake_azure.calls("listClusterUserCredential")[0].query


def test_missing_cluster_says_deploy_first(fake_azure, credential):
    fake_azure.route(
        "POST", CREDS_PATH, 404,
        arm_error("ResourceNotFound", f"The Resource 'Microsoft.ContainerService/managedClusters/"
                  f"{CLUSTER}' under resource group '{RG}' was not found."),
    )
    with pytest.raises(MfhelmError, match="not found; run `mfhelm deploy` first"):
        kubeconfig(fake_azure, credential)


def test_forbidden_kubeconfig_names_the_role(fake_azure, credential):
    fake_azure.route("POST", CREDS_PATH, 403, arm_error("AuthorizationFailed", "no"))
    with pytest.raises(MfhelmError, match="Cluster User Role"):
        kubeconfig(fake_azure, credential)


def test_empty_kubeconfig_list_is_an_error(fake_azure, credential):
    fake_azure.route("POST", CREDS_PATH, 200, {"kubeconfigs": []})
    with pytest.raises(MfhelmError, match="returned no kubeconfig"):
        kubeconfig(fake_azure, credential)


SECRET = "postgres-admin-password"


def secret(fake, cred) -> str:
    return keyvault_secret(
        fake.base_url + "/", SECRET, credential=cred, verify_challenge_resource=False
    )


def test_secret_read_after_auth_challenge(fake_azure, credential):
    fake_azure.route(
        "GET", f"/secrets/{SECRET}", 200, secret_body(fake_azure.base_url, SECRET, "s3cr3t-Pw!")
    )
    assert secret(fake_azure, credential) == "s3cr3t-Pw!"
    calls = fake_azure.calls("/secrets/")
    # first attempt carries no token; Key Vault challenges; the retry carries one
    assert "Authorization" not in calls[0].headers
    assert calls[-1].headers["Authorization"] == "Bearer fake-kv-token"
    assert ((KV_SCOPE,), TENANT) in credential.requests


def test_secret_forbidden_says_grant_role(fake_azure, credential):
    fake_azure.route(
        "GET", f"/secrets/{SECRET}", 403,
        {"error": {"code": "Forbidden", "message": "Caller is not authorized to perform action "
                   "on resource.", "innererror": {"code": "ForbiddenByRbac"}}},
    )
    with pytest.raises(MfhelmError, match=r"grant yourself 'Key Vault Secrets User' on 127"):
        secret(fake_azure, credential)


def test_secret_missing_says_redeploy(fake_azure, credential):
    fake_azure.route(
        "GET", f"/secrets/{SECRET}", 404,
        {"error": {"code": "SecretNotFound", "message": f"A secret with (name/id) {SECRET} was "
                   "not found in this key vault."}},
    )
    with pytest.raises(MfhelmError, match=rf"secret '{SECRET}' missing.*mfhelm deploy"):
        secret(fake_azure, credential)



def test_secret_blocked_by_firewall_says_add_network_rule(fake_azure, credential):
    fake_azure.route(
        "GET", f"/secrets/{SECRET}", 403,
        {"error": {"code": "Forbidden", "message": "Client address is not authorized and caller "
                   "is not a trusted service.\r\nClient address: 203.0.113.7",
                   "innererror": {"code": "ForbiddenByFirewall"}}},
    )
    with pytest.raises(MfhelmError, match=r"firewall blocks this machine.*network-rule add"):
        secret(fake_azure, credential)
