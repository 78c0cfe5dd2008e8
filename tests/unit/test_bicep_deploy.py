"""`make bicep-deploy`: parameters, the az command lines, password handling, failures.

The Azure CLI is not installed here, so a small fake `az` goes first on PATH.
It records its argv, stdin, environment and the parameters it reads from the
`@/dev/fd/N` pipe, and answers with ARM-shaped JSON. Its records live outside
the test's tmp_path (which is the deploy's cwd, HOME and TMPDIR), so the test
can prove the password reached no file there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser

from mfhelm import bicep_deploy as bd
from mfhelm.bicep_errors import QUOTA as QUOTA_KIND
from mfhelm.bicep_errors import classify, explain_failure
from mfhelm.errors import MfhelmError
from mfhelm.settings import parse

PRINCIPAL = "3f2b8c1e-6a4d-4e1f-9b7a-2c5d8e9f0a1b"
SUB = "00000000-1111-2222-3333-444444444444"
RG_TARGET = f"/subscriptions/{SUB}/resourceGroups/acme-metaflow-rg/providers"

FAKE_AZ = r'''#!{python}
import json, os, sys, pathlib
state = pathlib.Path(os.environ["FAKE_AZ_STATE"])
argv = sys.argv[1:]
record = {"argv": argv, "env": dict(os.environ), "stdin": sys.stdin.read() if sys.stdin else ""}
for a in argv:
    if a.startswith("@/dev/fd/"):
        n = len(list(state.glob("params-*.json")))
        # The one place the password is written: the recorder's own directory.
        (state / f"params-{n}.json").write_text(open(a[1:]).read())
        record["params_file"] = f"params-{n}.json"
with (state / "calls.jsonl").open("a") as fh:
    fh.write(json.dumps(record) + "\n")
scenario = json.loads((state / "scenario.json").read_text())

def fail(text, rc=1):
    sys.stderr.write(text + "\n")
    sys.exit(rc)

head = argv[:3]
if argv[:2] == ["account", "show"]:
    print(json.dumps(scenario["account"]))
elif argv[:3] == ["ad", "signed-in-user", "show"]:
    print(json.dumps({"id": scenario["principal"], "userPrincipalName": "ada@example.com"}))
elif argv[:3] == ["ad", "sp", "show"]:
    print(json.dumps({"id": scenario["principal"], "appId": argv[4]}))
elif head == ["deployment", "sub", "show"]:
    if scenario.get("previous_outputs") is None:
        fail("ERROR: (DeploymentNotFound) Deployment 'acme-metaflow' could not be found.", 3)
    print(json.dumps(scenario["previous_outputs"]))
elif head == ["deployment", "group", "show"]:
    name = argv[argv.index("--name") + 1]
    by_name = scenario.get("modules")
    outputs = by_name.get(name) if by_name is not None else scenario.get("module_outputs")
    if outputs is None:
        fail("ERROR: (ResourceGroupNotFound) Resource group 'acme-metaflow-rg' could not be "
             "found.", 3)
    print(json.dumps(outputs))
elif head == ["aks", "nodepool", "list"]:
    if scenario.get("pools") is None:
        fail(scenario.get("pools_error") or "ERROR: (ResourceNotFound) The Resource "
             "'Microsoft.ContainerService/managedClusters/acme-aks' under resource group "
             "'acme-metaflow-rg' was not found.", 3)
    print(json.dumps(scenario["pools"]))
elif head == ["keyvault", "show", "--name"]:
    vaults = scenario.get("vaults") or {}
    if argv[3] not in vaults:
        fail(f"ERROR: The Vault '{argv[3]}' not found within subscription.", 3)
    print(json.dumps(vaults[argv[3]]))
elif head == ["keyvault", "secret", "show"]:
    if scenario.get("secret") is None:
        fail(scenario["secret_error"])
    print(scenario["secret"])
elif head == ["deployment", "sub", "create"]:
    counter = state / "deploys"
    n = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(n + 1))
    result = scenario["deploy_results"][n]
    if result == "success":
        print(json.dumps(scenario["success"]))
    else:
        fail("ERROR: " + json.dumps(scenario["errors"][result]))
elif head == ["deployment", "sub", "what-if"]:
    if scenario.get("whatif_error"):
        fail(scenario["whatif_error"])
    print("Resource and property changes are indicated with these symbols:\n  + Create")
elif argv[:2] == ["bicep", "build"]:
    print(json.dumps({"$schema": "https://schema.management.azure.com/schemas/2018-05-01/subscriptionDeploymentTemplate.json#"}))
else:
    fail("ERROR: fake az does not know " + " ".join(argv), 2)
'''


def _deployment_failed(*inner: dict[str, Any], module: str) -> dict[str, Any]:
    """The shape az prints: DeploymentFailed > module ResourceDeploymentFailure > ... > cause."""
    return {
        "status": "Failed",
        "error": {
            "code": "DeploymentFailed",
            "target": f"/subscriptions/{SUB}/providers/Microsoft.Resources/deployments/"
            "acme-metaflow",
            "message": "At least one resource deployment operation failed. Please list deployment "
            "operations for details. Please see https://aka.ms/arm-deployment-operations for "
            "usage details.",
            "details": [{
                "code": "ResourceDeploymentFailure",
                "target": f"{RG_TARGET}/Microsoft.Resources/deployments/{module}",
                "message": "The resource write operation failed to complete successfully, because "
                "it reached terminal provisioning state 'Failed'.",
                "details": [{
                    "code": "DeploymentFailed",
                    "target": f"{RG_TARGET}/Microsoft.Resources/deployments/{module}",
                    "message": "At least one resource deployment operation failed.",
                    "details": list(inner),
                }],
            }],
        },
    }


POSTGRES_INTERNAL = _deployment_failed({
    "code": "ResourceDeploymentFailure",
    "target": f"{RG_TARGET}/Microsoft.DBforPostgreSQL/flexibleServers/acme-pg-4kq2n7x3vbmze",
    "message": "The resource write operation failed to complete successfully, because it "
    "reached terminal provisioning state 'Failed'.",
    "details": [{
        "code": "InternalServerError",
        "message": "An unexpected error occured while processing the request. Tracking ID: "
        "'75b89c5c-186a-448e-9e5f-82c02fe639e2'",
    }],
}, module="mfhelm-postgres")

ALLOCATION = _deployment_failed({
    "code": "ResourceDeploymentFailure",
    "target": f"{RG_TARGET}/Microsoft.ContainerService/managedClusters/acme-aks",
    "message": "The resource write operation failed to complete successfully, because it "
    "reached terminal provisioning state 'Failed'.",
    "details": [{
        "code": "AllocationFailed",
        "message": "Allocation failed. We do not have sufficient capacity for the requested VM "
        "size Standard_D4s_v5 in this region. Read more about improving likelihood of "
        "allocation success at http://aka.ms/allocation-guidance",
    }],
}, module="mfhelm-aks")

QUOTA = _deployment_failed({
    "code": "QuotaExceeded",
    "target": f"{RG_TARGET}/Microsoft.ContainerService/managedClusters/acme-aks",
    "message": "Operation could not be completed as it results in exceeding approved "
    "standardDSv5Family Cores quota. Additional details - Deployment Model: Resource Manager, "
    "Location: westeurope, Current Limit: 10, Current Usage: 8, Additional Required: 4, "
    "(Minimum) New Limit Required: 12. Submit a request for Quota increase at "
    "https://aka.ms/ProdportalCRP by specifying parameters listed in the 'Details' section "
    "for deployment to succeed.",
}, module="mfhelm-aks")

OTHER = _deployment_failed({
    "code": "InvalidTemplateDeployment",
    "message": "The template deployment failed because of policy violation 'require-tags'.",
}, module="mfhelm-storage")

SUCCESS_OUTPUTS = {
    "resourceGroupName": {"type": "String", "value": "acme-metaflow-rg"},
    "aksClusterName": {"type": "String", "value": "acme-aks"},
    "postgresFqdn": {"type": "String",
                     "value": "acme-pg-4kq2n7x3vbmze.postgres.database.azure.com"},
    "storageAccountName": {"type": "String", "value": "acmemf4kq2n7x3vbmze"},
    "keyVaultName": {"type": "String", "value": "acme-kv-4kq2n7x3vb"},
    "postgresAdminSecretName": {"type": "String", "value": "postgres-admin-password"},
    "deployAirflow": {"type": "Bool", "value": False},
}
SUCCESS = {
    "id": f"/subscriptions/{SUB}/providers/Microsoft.Resources/deployments/acme-metaflow",
    "name": "acme-metaflow",
    "properties": {"provisioningState": "Succeeded", "outputs": SUCCESS_OUTPUTS},
}
SETTINGS_TOML = 'org_prefix = "acme"\nlocation = "westeurope"\n'


@dataclass
class Fake:
    work: Path
    state: Path
    settings_path: Path

    def scenario(self, **kw: Any) -> None:
        doc = {
            "account": {"id": SUB, "user": {"name": "ada@example.com", "type": "user"}},
            "principal": PRINCIPAL,
            "secret_error": "ERROR: (SecretNotFound) A secret with (name/id) "
            "postgres-admin-password was not found in this key vault.",
            "deploy_results": ["success"],
            "success": SUCCESS,
            "errors": {"internal": POSTGRES_INTERNAL, "allocation": ALLOCATION,
                       "quota": QUOTA, "other": OTHER},
        }
        doc.update(kw)
        (self.state / "scenario.json").write_text(json.dumps(doc))

    def calls(self) -> list[dict[str, Any]]:
        path = self.state / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def deploy_calls(self) -> list[dict[str, Any]]:
        return [c for c in self.calls() if c["argv"][:3] == ["deployment", "sub", "create"]]

    def params(self, call: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = json.loads((self.state / call["params_file"]).read_text())
        return result


@pytest.fixture
def fake(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> Fake:
    state = tmp_path_factory.mktemp("fake-az-state")
    bindir = tmp_path_factory.mktemp("fake-az-bin")
    az = bindir / "az"
    az.write_text(FAKE_AZ.replace("{python}", sys.executable))
    az.chmod(0o755)
    work = tmp_path
    (work / "home").mkdir()
    (work / "tmp").mkdir()
    settings_path = work / "mfhelm.toml"
    settings_path.write_text(SETTINGS_TOML)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_AZ_STATE", str(state))
    monkeypatch.setenv("HOME", str(work / "home"))
    monkeypatch.setenv("TMPDIR", str(work / "tmp"))
    monkeypatch.chdir(work)
    f = Fake(work, state, settings_path)
    f.scenario()
    return f


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def _no_preflight(err: Any) -> None:
    return None


def _run(fake: Fake, *args: str, sleep: Sleeps | None = None) -> int:
    return bd.main([*args, "--settings", str(fake.settings_path)],
                   preflight_loader=_no_preflight, sleep=sleep or Sleeps())


def _assert_secret_kept(password: str, fake: Fake, captured: Any) -> None:
    assert len(password) >= 16
    for call in fake.calls():
        assert all(password not in a for a in call["argv"]), call["argv"]
        assert password not in json.dumps(call["env"])
        assert password not in call["stdin"]
    assert password not in captured.out
    assert password not in captured.err
    for path in fake.work.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path


# --- parameters (pure) ---------------------------------------------------------------------


def test_build_parameters_shape_and_values():
    s = parse({"org_prefix": "acme", "location": "westeurope", "deploy_airflow": True,
               "aks": {"task_vm_size": "Standard_D8s_v5", "task_max_count": 9},
               "postgres": {"version": "17", "storage_gb": 64},
               "helm": {"namespace": "mf", "flow_namespace": "flows"}})
    doc = bd.build_parameters(s, PRINCIPAL)
    assert doc["$schema"] == bd.PARAMETERS_SCHEMA
    assert doc["contentVersion"] == "1.0.0.0"
    values = {k: v["value"] for k, v in doc["parameters"].items()}
    assert values["orgPrefix"] == "acme"
    assert values["location"] == "westeurope"
    assert values["resourceGroupName"] == "acme-metaflow-rg"
    assert values["deployArgo"] is True
    assert values["deployAirflow"] is True
    assert values["taskVmSize"] == "Standard_D8s_v5"
    assert values["taskMaxCount"] == 9
    assert values["taskMinCount"] == 0
    assert values["postgresVersion"] == "17"
    assert values["postgresStorageGB"] == 64
    assert values["kubernetesVersion"] == ""
    assert values["serviceNamespace"] == "mf"
    assert values["flowNamespace"] == "flows"
    assert values["deployerPrincipalId"] == PRINCIPAL
    assert values["deployerPrincipalType"] == "User"
    assert values[bd.POOL_COUNTS_PARAMETER] == {}
    assert bd.PASSWORD_PARAMETER not in values
    counted = bd.build_parameters(s, PRINCIPAL, pool_counts={"system": 2, "taskworkers": 0})
    assert counted["parameters"][bd.POOL_COUNTS_PARAMETER] == {
        "value": {"system": 2, "taskworkers": 0}}


def test_compute_defaults_send_the_registry_on_and_both_optional_pools_off():
    values = {k: v["value"] for k, v in bd.build_parameters(
        parse({"org_prefix": "acme", "location": "westeurope"}), PRINCIPAL)["parameters"].items()}
    assert values["registryEnabled"] is True
    assert values["gpuPoolEnabled"] is False and values["spotPoolEnabled"] is False
    assert (values["gpuVmSize"], values["gpuMinCount"], values["gpuMaxCount"]) == (
        "Standard_NC4as_T4_v3", 0, 2)
    assert (values["spotVmSize"], values["spotMinCount"], values["spotMaxCount"]) == (
        "Standard_D4s_v5", 0, 5)


def test_compute_settings_become_parameters():
    s = parse({"org_prefix": "acme", "location": "westeurope", "registry": {"enabled": False},
               "aks": {"gpu_enabled": True, "gpu_vm_size": "Standard_NC8as_T4_v3",
                       "gpu_min_count": 1, "gpu_max_count": 4, "spot_enabled": True,
                       "spot_vm_size": "Standard_D8s_v5", "spot_min_count": 2,
                       "spot_max_count": 7}})
    values = {k: v["value"] for k, v in bd.build_parameters(s, PRINCIPAL)["parameters"].items()}
    assert {k: values[k] for k in values if k.startswith(("gpu", "spot", "registry"))} == {
        "gpuPoolEnabled": True, "gpuVmSize": "Standard_NC8as_T4_v3", "gpuMinCount": 1,
        "gpuMaxCount": 4, "spotPoolEnabled": True, "spotVmSize": "Standard_D8s_v5",
        "spotMinCount": 2, "spotMaxCount": 7, "registryEnabled": False}
    # The current sizes of the optional pools travel like the others.
    counted = bd.build_parameters(s, PRINCIPAL, pool_counts={"gpu": 3, "spot": 0})
    assert counted["parameters"][bd.POOL_COUNTS_PARAMETER] == {"value": {"gpu": 3, "spot": 0}}


CERT = "https://acmecerts.vault.azure.net/certificates/metaflow-tls"
VAULT_ID = f"/subscriptions/{SUB}/resourceGroups/certs/providers/Microsoft.KeyVault/vaults/acmecerts"


def test_access_settings_become_parameters():
    s = parse({"org_prefix": "acme", "location": "westeurope",
               "helm": {"release": "prod", "namespace": "mf"},
               "access": {"host": "metaflow.example.com", "tls_certificate": CERT,
                          "client_id": "0a1b2c3d-0000-4000-8000-00000000abcd"}})
    values = {k: v["value"] for k, v in bd.build_parameters(
        s, PRINCIPAL, tls_vault_id=VAULT_ID)["parameters"].items()}
    assert {k: values[k] for k in values if k.startswith("access")} == {
        "accessHost": "metaflow.example.com",
        "accessClientId": "0a1b2c3d-0000-4000-8000-00000000abcd",
        "accessTlsCertificateId": CERT, "accessTlsVaultId": VAULT_ID}
    assert values["releaseName"] == "prod"
    with pytest.raises(MfhelmError, match="its Key Vault was not looked up"):
        bd.build_parameters(s, PRINCIPAL)


def test_access_off_sends_empty_access_parameters():
    s = parse({"org_prefix": "acme", "location": "westeurope"})
    values = {k: v["value"] for k, v in bd.build_parameters(s, PRINCIPAL)["parameters"].items()}
    assert [values[k] for k in ("accessHost", "accessClientId", "accessTlsCertificateId",
                                "accessTlsVaultId")] == ["", "", "", ""]
    assert values["releaseName"] == "metaflow"


def test_parameters_match_main_bicep():
    main = BicepParser().parse(file_path=bd.TEMPLATE)
    declared = main["parameters"]
    s = parse({"org_prefix": "acme", "location": "westeurope"})
    given = set(bd.with_password(bd.build_parameters(s, PRINCIPAL), "x")["parameters"])
    assert given <= set(declared), given - set(declared)
    required = {n for n, p in declared.items() if p.get("default") is None}
    assert required <= given, required - given
    # Every setting-backed parameter is sent, not left to the template's default.
    settings_backed = {"gpuPoolEnabled", "gpuVmSize", "gpuMinCount", "gpuMaxCount",
                       "spotPoolEnabled", "spotVmSize", "spotMinCount", "spotMaxCount",
                       "registryEnabled"}
    assert settings_backed <= given, settings_backed - given


def test_resource_group_override_is_passed():
    s = parse({"org_prefix": "acme", "location": "eastus2", "resource_group": "rg-ml"})
    assert bd.build_parameters(s, PRINCIPAL)["parameters"]["resourceGroupName"] == {
        "value": "rg-ml"}


@pytest.mark.parametrize("prefix", ["toolongprefix", "Acme", "ac-me", "ac_me", "1acme", "a", ""])
def test_bad_org_prefix_is_refused(prefix: str):
    with pytest.raises(MfhelmError, match="org_prefix"):
        parse({"org_prefix": prefix, "location": "westeurope"})


def test_build_parameters_rechecks_the_prefix():
    from mfhelm.settings import Settings

    unchecked = Settings.model_construct(org_prefix="Bad!", location="westeurope")
    with pytest.raises(MfhelmError, match="org_prefix"):
        bd.build_parameters(unchecked, PRINCIPAL)


def test_build_parameters_refuses_a_non_guid_principal():
    s = parse({"org_prefix": "acme", "location": "westeurope"})
    with pytest.raises(MfhelmError, match="object ID"):
        bd.build_parameters(s, "ada@example.com")


def test_with_password_does_not_touch_the_original():
    s = parse({"org_prefix": "acme", "location": "westeurope"})
    plain = bd.build_parameters(s, PRINCIPAL)
    full = bd.with_password(plain, "Secret_123")
    assert full["parameters"][bd.PASSWORD_PARAMETER] == {"value": "Secret_123"}
    assert bd.PASSWORD_PARAMETER not in plain["parameters"]


def test_generated_passwords_meet_postgres_rules_and_differ():
    pws = {bd.generate_password() for _ in range(50)}
    assert len(pws) == 50
    for pw in pws:
        assert len(pw) == 32
        assert any(c.islower() for c in pw) and any(c.isupper() for c in pw)
        assert any(c.isdigit() for c in pw)
        assert set(pw) <= set(bd._PASSWORD_ALPHABET)


def test_command_lines():
    s = parse({"org_prefix": "acme", "location": "westeurope", "deployment_name": "mf-prod"})
    assert bd.build_command(Path("bicep/main.bicep")) == [
        "az", "bicep", "build", "--file", "bicep/main.bicep", "--stdout"]
    assert bd.deploy_command(s, "@/dev/fd/7", Path("bicep/main.bicep")) == [
        "az", "deployment", "sub", "create", "--name", "mf-prod", "--location", "westeurope",
        "--template-file", "bicep/main.bicep", "--parameters", "@/dev/fd/7",
        "--only-show-errors", "--output", "json"]
    assert bd.whatif_command(s, "@/dev/fd/7", Path("bicep/main.bicep"))[:4] == [
        "az", "deployment", "sub", "what-if"]


# --- explanations (pure) -------------------------------------------------------------------


def _one_paragraph(text: str | None) -> str:
    assert text is not None
    assert "\n" not in text
    assert "Fix:" in text
    assert "{" not in text  # no raw ARM JSON
    return text


def test_explain_postgres_internal_server_error():
    text = _one_paragraph(explain_failure(POSTGRES_INTERNAL))
    assert "PostgreSQL" in text and "InternalServerError" in text
    assert "mfhelm deploy" in text


def test_explain_allocation_failed_names_the_size_and_the_setting():
    text = _one_paragraph(explain_failure(ALLOCATION))
    assert "Standard_D4s_v5" in text
    assert "task_vm_size" in text and "location" in text


def test_explain_quota_names_family_region_and_fix():
    text = _one_paragraph(explain_failure(QUOTA))
    assert "standardDSv5Family" in text and "westeurope" in text
    assert "quota" in text.lower() and "[aks]" in text


def test_explain_spot_quota_names_the_spot_quota_not_a_family():
    # The message ARM gives when a Spot pool's VMs exceed the regional Spot quota.
    spot = {"code": "DeploymentFailed", "message": "At least one resource deployment failed.",
            "details": [{"code": "QuotaExceeded", "message": "Operation could not be completed "
                         "as it results in exceeding approved LowPriorityCores quota. Additional "
                         "details - Deployment Model: Resource Manager, Location: westeurope, "
                         "Current Limit: 0, Current Usage: 0, Additional Required: 20."}]}
    failure = classify(spot)
    assert failure is not None and failure.kind == QUOTA_KIND
    text = _one_paragraph(explain_failure(spot))
    assert "Spot" in text and "spot_max_count" in text and "westeurope" in text
    assert "family" not in text


def test_explain_accepts_az_stderr_text_and_embedded_json_messages():
    stderr = "ERROR: " + json.dumps(ALLOCATION)
    assert explain_failure(stderr) == explain_failure(ALLOCATION)
    # Older ARM paths embed the inner error as a JSON *string* in `message`.
    legacy = {"code": "DeploymentFailed", "message": "At least one resource deployment failed.",
              "details": [{"code": "Conflict", "message": json.dumps(
                  {"error": {"code": "OperationNotAllowed", "message": "Operation results in "
                             "exceeding quota limits of Core. Maximum allowed: 10, Current in "
                             "use: 10, Additional requested: 2."}})}]}
    assert "regional vCPU quota" in _one_paragraph(explain_failure(legacy))
    text_form = ("ERROR: (DeploymentFailed) At least one resource deployment operation failed.\n"
                 "Code: DeploymentFailed\nException Details:\t(ZonalAllocationFailed) "
                 "Allocation failed.\n\tCode: ZonalAllocationFailed")
    assert "no free capacity" in _one_paragraph(explain_failure(text_form))


def test_explain_soft_deleted_vault():
    err = _deployment_failed({
        "code": "ConflictError",
        "target": f"{RG_TARGET}/Microsoft.KeyVault/vaults/acme-kv-4kq2n7x3vb",
        "message": "A vault with the same name already exists in deleted state. You need to "
        "either recover or purge existing key vault.",
    }, module="mfhelm-keyvault")
    text = _one_paragraph(explain_failure(err))
    assert "az keyvault recover --name acme-kv-4kq2n7x3vb" in text


def test_explain_role_assignment_left_by_an_earlier_name():
    subnet = (f"/subscriptions/{SUB}/resourceGroups/acme-metaflow-rg/providers/"
              "Microsoft.Network/virtualNetworks/acme-metaflow-vnet/subnets/aks-nodes")
    err = _deployment_failed({
        "code": "RoleAssignmentExists",
        "target": f"{subnet}/providers/Microsoft.Authorization/roleAssignments/"
                  "1f0b7f3a-7c4e-5d1e-9a51-2f7e2b4c9d10",
        "message": "The role assignment already exists.",
    }, module="mfhelm-aks-subnet-role")
    text = _one_paragraph(explain_failure(err))
    assert f"on {subnet}" in text
    assert "az role assignment delete" in text and "Network Contributor" in text


def test_unknown_errors_are_not_explained():
    assert explain_failure(OTHER) is None
    assert explain_failure("ERROR: something unrelated") is None
    internal_elsewhere = _deployment_failed(
        {"code": "InternalServerError", "message": "boom"}, module="mfhelm-storage")
    assert explain_failure(internal_elsewhere) is None


# --- the flows, through the fake az ------------------------------------------------------


def test_first_deploy_generates_a_password_that_reaches_only_the_pipe(fake: Fake, capfd):
    fake.scenario(previous_outputs=None, module_outputs=None)
    assert _run(fake, "deploy") == 0
    captured = capfd.readouterr()
    (call,) = fake.deploy_calls()
    argv = call["argv"]
    assert argv[argv.index("--parameters") + 1].startswith("@/dev/fd/")
    assert argv[argv.index("--name") + 1] == "acme-metaflow"
    assert argv[argv.index("--location") + 1] == "westeurope"
    assert argv[argv.index("--template-file") + 1] == str(bd.TEMPLATE)
    params = fake.params(call)
    password = params["parameters"].pop(bd.PASSWORD_PARAMETER)["value"]
    expected = bd.build_parameters(parse({"org_prefix": "acme", "location": "westeurope"}),
                                   PRINCIPAL)
    assert params == expected
    assert "generated a new PostgreSQL administrator password" in captured.err
    assert "acme-aks" in captured.out and "mfhelm install" in captured.out
    assert not any(c["argv"][:3] == ["keyvault", "secret", "show"] for c in fake.calls())
    assert not any(c["argv"][:3] == ["aks", "nodepool", "list"] for c in fake.calls())
    assert params["parameters"][bd.POOL_COUNTS_PARAMETER] == {"value": {}}
    _assert_secret_kept(password, fake, captured)


def test_redeploy_reuses_the_key_vault_password(fake: Fake, capfd):
    existing = "Kept_In_Vault_4711xyzABC"
    fake.scenario(previous_outputs=SUCCESS_OUTPUTS, secret=existing)
    assert _run(fake, "deploy") == 0
    captured = capfd.readouterr()
    (read,) = [c for c in fake.calls() if c["argv"][:3] == ["keyvault", "secret", "show"]]
    assert read["argv"][read["argv"].index("--vault-name") + 1] == "acme-kv-4kq2n7x3vb"
    assert read["argv"][read["argv"].index("--name") + 1] == "postgres-admin-password"
    (call,) = fake.deploy_calls()
    assert fake.params(call)["parameters"][bd.PASSWORD_PARAMETER] == {"value": existing}
    assert "reusing the PostgreSQL administrator password" in captured.err
    _assert_secret_kept(existing, fake, captured)


def test_after_a_failed_first_run_the_keyvault_module_outputs_locate_the_secret(fake: Fake,
                                                                                 capfd):
    existing = "From_Module_Outputs_9876qwe"
    fake.scenario(previous_outputs=None, secret=existing, module_outputs={
        "vaultName": {"type": "String", "value": "acme-kv-4kq2n7x3vb"},
        "postgresAdminSecretName": {"type": "String", "value": "postgres-admin-password"}})
    assert _run(fake, "deploy") == 0
    (call,) = fake.deploy_calls()
    assert fake.params(call)["parameters"][bd.PASSWORD_PARAMETER] == {"value": existing}
    groups = [c["argv"] for c in fake.calls() if c["argv"][:3] == ["deployment", "group", "show"]]
    assert [g[g.index("--name") + 1] for g in groups] == [
        bd.AKS_MODULE_DEPLOYMENT, bd.KEYVAULT_MODULE_DEPLOYMENT]
    _assert_secret_kept(existing, fake, capfd.readouterr())


POOLS = [{"name": "system", "count": 2}, {"name": "services", "count": 3},
         {"name": "taskworkers", "count": 0}]


def test_redeploy_sends_the_current_pool_sizes(fake: Fake, capfd):
    fake.scenario(previous_outputs=SUCCESS_OUTPUTS, secret="Kept_In_Vault_4711xyzABC",
                  pools=POOLS)
    assert _run(fake, "deploy") == 0
    (listed,) = [c["argv"] for c in fake.calls() if c["argv"][:3] == ["aks", "nodepool", "list"]]
    assert listed[listed.index("--resource-group") + 1] == "acme-metaflow-rg"
    assert listed[listed.index("--cluster-name") + 1] == "acme-aks"
    (call,) = fake.deploy_calls()
    assert fake.params(call)["parameters"][bd.POOL_COUNTS_PARAMETER] == {
        "value": {"system": 2, "services": 3, "taskworkers": 0}}
    assert "keeping the current AKS pool sizes (services 3, system 2, taskworkers 0)" in (
        capfd.readouterr().err)


def test_after_a_failed_first_run_the_aks_module_outputs_locate_the_cluster(fake: Fake):
    fake.scenario(previous_outputs=None, pools=POOLS[:1], modules={
        bd.AKS_MODULE_DEPLOYMENT: {"clusterName": {"type": "String", "value": "acme-aks"}}})
    assert _run(fake, "deploy") == 0
    (listed,) = [c["argv"] for c in fake.calls() if c["argv"][:3] == ["aks", "nodepool", "list"]]
    assert listed[listed.index("--resource-group") + 1] == "acme-metaflow-rg"
    assert listed[listed.index("--cluster-name") + 1] == "acme-aks"
    (call,) = fake.deploy_calls()
    assert fake.params(call)["parameters"][bd.POOL_COUNTS_PARAMETER] == {"value": {"system": 2}}


def test_a_cluster_that_is_gone_is_deployed_as_new(fake: Fake):
    fake.scenario(previous_outputs=SUCCESS_OUTPUTS, secret="Kept_In_Vault_4711xyzABC",
                  pools=None)
    assert _run(fake, "deploy") == 0
    (call,) = fake.deploy_calls()
    assert fake.params(call)["parameters"][bd.POOL_COUNTS_PARAMETER] == {"value": {}}


def test_unreadable_pool_sizes_stop_instead_of_resetting_the_autoscaler(fake: Fake, capfd):
    fake.scenario(previous_outputs=SUCCESS_OUTPUTS, secret="Kept_In_Vault_4711xyzABC",
                  pools=None, pools_error="ERROR: (AuthorizationFailed) The client does not "
                  "have authorization to perform action "
                  "'Microsoft.ContainerService/managedClusters/agentPools/read'")
    assert _run(fake, "deploy") == 1
    err = capfd.readouterr().err
    assert "AuthorizationFailed" in err and "autoscaler" in err
    assert fake.deploy_calls() == []


def test_unreadable_secret_stops_instead_of_resetting_the_password(fake: Fake, capfd):
    fake.scenario(previous_outputs=SUCCESS_OUTPUTS, secret=None,
                  secret_error="ERROR: (Forbidden) Caller is not authorized to perform action "
                  "on resource. Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'")
    assert _run(fake, "deploy") == 1
    err = capfd.readouterr().err
    assert "Key Vault Secrets User" in err
    assert fake.deploy_calls() == []


def test_postgres_internal_server_error_is_retried_then_succeeds(fake: Fake, capfd):
    fake.scenario(deploy_results=["internal", "success"])
    sleeps = Sleeps()
    assert _run(fake, "deploy", sleep=sleeps) == 0
    captured = capfd.readouterr()
    assert sleeps.calls == [bd.POSTGRES_RETRY_WAIT_SECONDS]
    first, second = fake.deploy_calls()
    assert fake.params(first) == fake.params(second)  # same password on the retry
    assert "retrying" in captured.err
    assert "deployed acme-metaflow" in captured.out
    _assert_secret_kept(fake.params(first)["parameters"][bd.PASSWORD_PARAMETER]["value"],
                        fake, captured)


def test_postgres_internal_server_error_gives_up_after_bounded_attempts(fake: Fake, capfd):
    fake.scenario(deploy_results=["internal"] * 5)
    sleeps = Sleeps()
    assert _run(fake, "deploy", sleep=sleeps) == 1
    err = capfd.readouterr().err
    assert len(fake.deploy_calls()) == bd.POSTGRES_RETRY_ATTEMPTS
    assert len(sleeps.calls) == bd.POSTGRES_RETRY_ATTEMPTS - 1
    (last,) = [line for line in err.splitlines() if line.startswith("mfhelm: error:")]
    _one_paragraph(last)
    assert "InternalServerError" in last


@pytest.mark.parametrize(("result", "needle"), [
    ("allocation", "Standard_D4s_v5"),
    ("quota", "standardDSv5Family"),
])
def test_capacity_failures_are_explained_not_dumped(fake: Fake, capfd, result: str, needle: str):
    fake.scenario(deploy_results=[result])
    sleeps = Sleeps()
    assert _run(fake, "deploy", sleep=sleeps) == 1
    err = capfd.readouterr().err
    assert sleeps.calls == [] and len(fake.deploy_calls()) == 1
    assert "DeploymentFailed" not in err and "{" not in err
    (last,) = [line for line in err.splitlines() if line.startswith("mfhelm: error:")]
    assert needle in _one_paragraph(last)


def test_unknown_failures_show_the_az_error(fake: Fake, capfd):
    fake.scenario(deploy_results=["other"])
    assert _run(fake, "deploy") == 1
    err = capfd.readouterr().err
    assert "require-tags" in err
    assert "az deployment operation sub list --name acme-metaflow" in err


ACCESS_TOML = SETTINGS_TOML + f'[access]\nhost = "metaflow.example.com"\ntls_certificate = "{CERT}"\n'


def test_a_key_vault_certificate_sends_its_vault_id(fake: Fake):
    fake.settings_path.write_text(ACCESS_TOML)
    fake.scenario(vaults={"acmecerts": {"id": VAULT_ID, "rbac": True}})
    assert _run(fake, "deploy") == 0
    (call,) = fake.deploy_calls()
    params = fake.params(call)["parameters"]
    assert params["accessTlsVaultId"] == {"value": VAULT_ID}
    assert params["accessTlsCertificateId"] == {"value": CERT}
    assert params["accessHost"] == {"value": "metaflow.example.com"}


@pytest.mark.parametrize("vaults, needle", [
    ({}, "Key Vault acmecerts ([access] tls_certificate) is not in the current subscription"),
    ({"acmecerts": {"id": VAULT_ID, "rbac": False}},
     "uses access policies; the application-routing add-on is granted the certificate by an "
     "Azure role"),
])
def test_an_unusable_certificate_vault_stops_before_deploying(fake: Fake, capfd, vaults, needle):
    fake.settings_path.write_text(ACCESS_TOML)
    fake.scenario(vaults=vaults)
    assert _run(fake, "deploy") == 1
    err = capfd.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("mfhelm: error:")]
    assert needle in line
    assert "Traceback" not in err
    assert fake.deploy_calls() == []


def test_whatif_pipes_the_parameters_too(fake: Fake, capfd):
    assert _run(fake, "whatif") == 0
    captured = capfd.readouterr()
    (call,) = [c for c in fake.calls() if c["argv"][:3] == ["deployment", "sub", "what-if"]]
    assert call["argv"][call["argv"].index("--parameters") + 1].startswith("@/dev/fd/")
    assert "+ Create" in captured.out
    password = fake.params(call)["parameters"][bd.PASSWORD_PARAMETER]["value"]
    assert fake.deploy_calls() == []
    _assert_secret_kept(password, fake, captured)


def test_build_runs_az_bicep_build(fake: Fake, capfd):
    assert _run(fake, "build") == 0
    (call,) = fake.calls()
    assert call["argv"] == bd.build_command()[1:]
    assert "$schema" in capfd.readouterr().out


def test_service_principal_login_uses_its_object_id(fake: Fake):
    fake.scenario(account={"id": SUB, "user": {"name": "11111111-2222-3333-4444-555555555555",
                                               "type": "servicePrincipal"}})
    assert _run(fake, "deploy") == 0
    (call,) = fake.deploy_calls()
    params = fake.params(call)["parameters"]
    assert params["deployerPrincipalType"] == {"value": "ServicePrincipal"}
    assert params["deployerPrincipalId"] == {"value": PRINCIPAL}


@pytest.mark.parametrize("prefix", ["toolongprefix", "Acme", "ac$me"])
def test_bad_settings_fail_before_anything_reaches_azure(fake: Fake, capfd, prefix: str):
    fake.settings_path.write_text(f'org_prefix = "{prefix}"\nlocation = "westeurope"\n')
    assert _run(fake, "deploy") == 1
    err = capfd.readouterr().err.strip()
    assert err.count("\n") == 0 and "org_prefix" in err
    assert fake.calls() == []


# --- preflight -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def test_failed_preflight_stops_the_deploy(fake: Fake, capfd):
    def loader(err: Any):
        return lambda s: [_Check("helm", True, "v4"),
                          _Check("vCPU quota", False, "Standard_D4s_v5 needs 20", "az quota")]

    code = bd.main(["deploy", "--settings", str(fake.settings_path)], preflight_loader=loader,
                   sleep=Sleeps())
    err = capfd.readouterr().err
    assert code == 1
    assert "preflight: vCPU quota: Standard_D4s_v5 needs 20 (fix: az quota)" in err
    assert fake.calls() == []


def test_passing_preflight_lets_the_deploy_run(fake: Fake):
    seen: list[str] = []

    def loader(err: Any):
        return lambda s: seen.append(s.org_prefix) or [_Check("helm", True, "v4")]

    assert bd.main(["deploy", "--settings", str(fake.settings_path)], preflight_loader=loader,
                   sleep=Sleeps()) == 0
    assert seen == ["acme"] and len(fake.deploy_calls()) == 1


def test_missing_doctor_module_is_skipped_with_a_note(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mfhelm.doctor", None)  # import raises ImportError
    assert bd.load_preflight(sys.stderr) is None
    assert "skipping the preflight checks" in capsys.readouterr().err


def test_doctor_run_preflight_is_found_when_present():
    pytest.importorskip("mfhelm.doctor")
    from mfhelm import doctor

    assert bd.load_preflight(sys.stderr) is doctor.run_preflight


# --- the entry point ---------------------------------------------------------------------------


def test_missing_az_is_one_line_and_exit_1(tmp_path: Path):
    (tmp_path / "mfhelm.toml").write_text(SETTINGS_TOML)
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "mfhelm.bicep_deploy", "deploy", "--settings",
         str(tmp_path / "mfhelm.toml")],
        capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "PATH": str(empty)},
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("mfhelm: error: the Azure CLI `az` is not on PATH")
    assert "Traceback" not in proc.stderr


def test_module_help_lists_the_commands():
    proc = subprocess.run([sys.executable, "-m", "mfhelm.bicep_deploy", "--help"],
                          capture_output=True, text=True)
    assert proc.returncode == 0
    assert textwrap.dedent("{build,whatif,deploy}") in proc.stdout


def test_redeploy_keeps_the_optional_pools_sizes_too(fake: Fake, capfd):
    """A GPU node the autoscaler started is sent back as the pool's count, so turning
    another setting on does not scale it away (aks.bicep clamps it into the bounds)."""
    fake.scenario(previous_outputs=SUCCESS_OUTPUTS, secret="Kept_In_Vault_4711xyzABC",
                  pools=[*POOLS, {"name": "gpu", "count": 1}, {"name": "spot", "count": 4}])
    assert _run(fake, "deploy") == 0
    (call,) = fake.deploy_calls()
    assert fake.params(call)["parameters"][bd.POOL_COUNTS_PARAMETER] == {
        "value": {"system": 2, "services": 3, "taskworkers": 0, "gpu": 1, "spot": 4}}
    assert "(gpu 1, services 3, spot 4, system 2, taskworkers 0)" in capfd.readouterr().err
