"""Compute for flows (issue 20) on the Azure side: the stack's container registry and the
optional GPU and Spot pools.

Checked offline, like the rest of tests/bicep: the new resources against the published
types (facts in test_bicep_access.TYPES, sources named in its docstring), the role
assignments against the built-in roles (ids and actions read from Microsoft's published
role list, MicrosoftDocs/azure-docs articles/role-based-access-control/built-in-roles/
containers.md), and what main.bicep outputs and passes, computed with bicep_rules.evaluate
for the settings mfhelm allows.
"""

from __future__ import annotations

from typing import Any

import bicep_rules as R
import pytest
from test_bicep_access import type_problems

from mfhelm import pools
from mfhelm.settings import AksSettings, RegistrySettings

MAIN = R.BICEP_DIR / "main.bicep"
AKS = R.BICEP_DIR / "modules/aks.bicep"
REGISTRY = R.BICEP_DIR / "modules/registry.bicep"

ACR_API = "2025-11-01"
AKS_API = "2025-07-01"
# Built-in roles (id -> what it grants that matters here).
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"  # registries/pull/read
# Container Registry Tasks Contributor: registries/listBuildSourceUploadUrl/action,
# registries/scheduleRun/action, registries/runs/read, registries/runs/listLogSasUrl/action
# (a quick build, its status and its log) with tasks/taskruns/agentpools and
# registries/read; no registries/write, no listCredentials, no pull/push actions.
TASKS_CONTRIBUTOR = "fb382eab-e894-4461-af04-94435c366c3f"


@pytest.fixture(scope="module")
def main() -> dict[str, Any]:
    return R.parse_file(MAIN)


@pytest.fixture(scope="module")
def aks() -> dict[str, Any]:
    return R.parse_file(AKS)


@pytest.fixture(scope="module")
def registry() -> dict[str, Any]:
    return R.parse_file(REGISTRY)


def _acr(registry: dict[str, Any]) -> dict[str, Any]:
    (_, acr), = R.resources(registry, "Microsoft.ContainerRegistry/registries")
    assert acr["api_version"] == ACR_API
    return R.body(acr)


# --- the registry ------------------------------------------------------------------------


def test_registry_matches_the_published_type(registry):
    acr = _acr(registry)
    assert type_problems("Microsoft.ContainerRegistry/registries", acr, registry, "acr") == []


def test_registry_is_entra_only_standard_and_honours_acr_pull(registry):
    acr = _acr(registry)
    assert acr["sku"] == {"name": "Standard"}
    props = acr["properties"]
    assert props["adminUserEnabled"] is False
    assert props["anonymousPullEnabled"] is False
    # AcrPull is not honoured in the ABAC mode: the mode is pinned, not left to a default.
    assert props["roleAssignmentMode"] == "LegacyRegistryPermissions"


def test_registry_name_is_a_valid_unique_acr_name(main, registry):
    """5-50 letters and digits (the published type's pattern), from the prefix and the
    stack's uniqueString, for every prefix the template accepts."""
    import re

    name = _acr(registry)["name"]
    call = R.body(main["modules"]["registry"])["params"]
    assert call["nameSuffix"] == "nameSuffix" and call["orgPrefix"] == "checkedOrgPrefix"
    for prefix in ("ab", "abcdefgh", "m1"):
        value = R.evaluate(name, registry, {"orgPrefix": prefix, "nameSuffix": "a" * 13})
        assert re.fullmatch(r"[a-zA-Z0-9]{5,50}", value), value


def _assignments(registry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {}
    for _, res in R.resources(registry, "Microsoft.Authorization/roleAssignments"):
        props = R.body(res)["properties"]
        found[R._role_id(props["roleDefinitionId"])] = props
    return found


def test_kubelet_pulls_and_the_deployer_builds_nothing_more(registry):
    variables = {k: v["value"] for k, v in registry["variables"].items()}
    by_role = {variables[k]: v for k, v in _assignments(registry).items()}
    assert set(by_role) == {ACR_PULL, TASKS_CONTRIBUTOR}
    assert by_role[ACR_PULL]["principalId"] == "kubeletPrincipalId"
    assert by_role[ACR_PULL]["principalType"] == "ServicePrincipal"  # a managed identity
    assert by_role[TASKS_CONTRIBUTOR]["principalId"] == "deployerPrincipalId"
    assert by_role[TASKS_CONTRIBUTOR]["principalType"] == "deployerPrincipalType"
    for _, res in R.resources(registry, "Microsoft.Authorization/roleAssignments"):
        assert R.body(res)["scope"] == "registry"


def _member_path(node: Any) -> list[str]:
    """`a.b.c` as pycep renders it (right-nested accessors) -> ['a', 'b', 'c']."""
    if isinstance(node, dict) and node.get("operator", {}).get("type") == "property_accessor":
        operands = node["operator"]["operands"]
        return _member_path(operands["operand_1"]) + _member_path(operands["operand_2"])
    assert isinstance(node, str), node
    return [node]


def test_the_kubelet_identity_comes_from_the_cluster(main, aks):
    out = aks["outputs"]["kubeletPrincipalId"]["value"]
    assert _member_path(out) == ["aks", "properties", "identityProfile", "kubeletidentity",
                                 "objectId"]
    call = R.body(main["modules"]["registry"])["params"]
    assert _member_path(call["kubeletPrincipalId"]) == ["aks", "outputs",
                                                        "kubeletPrincipalId"]


def test_registry_is_on_by_default_and_off_with_the_setting(main):
    params = main["parameters"]
    assert params["registryEnabled"]["default"] is RegistrySettings().enabled is True
    assert R.condition(main["modules"]["registry"]) == "registryEnabled"


@pytest.mark.parametrize("enabled, name, server", [
    (True, "mfacrabc", "mfacrabc.azurecr.io"),
    (False, "", ""),
])
def test_registry_outputs_are_empty_when_off(main, enabled, name, server):
    # With the registry off the module is not deployed: its outputs do not exist and
    # must not be read (the evaluator fails on a name with no value).
    env: dict[str, Any] = {"registryEnabled": enabled}
    if enabled:
        env["registry"] = {"outputs": {"name": name, "loginServer": server}}
    outputs = main["outputs"]
    assert R.evaluate(outputs["registryName"]["value"], main, env) == name
    assert R.evaluate(outputs["registryLoginServer"]["value"], main, env) == server


# --- the GPU and Spot pools --------------------------------------------------------------


def _pool_resources(aks: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {R.body(res)["name"]: res
            for _, res in R.resources(aks, "managedClusters/agentPools")}


def test_optional_pools_are_child_pools_at_the_clusters_api_version(aks):
    (_, cluster), = R.resources(aks, "ContainerService/managedClusters")
    found = _pool_resources(aks)
    assert set(found) == {p.name for p in pools.OPTIONAL_POOLS}
    for name, res in found.items():
        assert res["api_version"] == cluster["api_version"] == AKS_API, name
        assert R.body(res)["parent"] == "aks", name
    assert R.condition(found["gpu"]) == "gpuPoolEnabled"
    assert R.condition(found["spot"]) == "spotPoolEnabled"
    # One pool operation at a time on the cluster: Spot waits for the GPU pool.
    assert R.body(found["spot"])["dependsOn"] == ["gpuPool"]


def test_optional_pools_match_the_published_type(aks):
    problems = []
    for name, res in _pool_resources(aks).items():
        # parent and dependsOn are Bicep's, not properties of the type.
        declared = {k: v for k, v in R.body(res).items() if k not in ("parent", "dependsOn")}
        problems += type_problems("Microsoft.ContainerService/managedClusters/agentPools",
                                  declared, aks, name)
    assert problems == []


def test_every_pool_runs_110_pods(aks):
    """checkov cannot read a conditional resource (CKV_AZURE_168 is skipped on the two
    optional pools for that reason): the maxPods it would check is checked here."""
    for name, pool in R._pools(aks).items():
        assert R.evaluate(pool["maxPods"], aks, {}) == 110, name


def test_optional_pools_are_off_by_default_with_mfhelms_defaults(main, aks):
    defaults = AksSettings()
    expected = {"gpuPoolEnabled": defaults.gpu_enabled, "gpuVmSize": defaults.gpu_vm_size,
                "gpuMinCount": defaults.gpu_min_count, "gpuMaxCount": defaults.gpu_max_count,
                "spotPoolEnabled": defaults.spot_enabled, "spotVmSize": defaults.spot_vm_size,
                "spotMinCount": defaults.spot_min_count,
                "spotMaxCount": defaults.spot_max_count}
    assert expected["gpuPoolEnabled"] is False and expected["spotPoolEnabled"] is False
    assert expected["gpuVmSize"] == "Standard_NC4as_T4_v3"
    for tpl in (main, aks):
        params = tpl["parameters"]
        assert {k: params[k]["default"] for k in expected} == expected
    call = R.body(main["modules"]["aks"])["params"]
    assert {k: call[k] for k in expected} == {k: k for k in expected}


def test_pool_outputs_follow_the_switches(main, aks):
    assert aks["outputs"]["gpuPoolEnabled"]["value"] == "gpuPoolEnabled"
    assert aks["outputs"]["spotPoolEnabled"]["value"] == "spotPoolEnabled"
    for name in ("gpuPoolEnabled", "spotPoolEnabled"):
        value = main["outputs"][name]["value"]
        assert R.evaluate(value, main, {"aks": {"outputs": {name: True}}}) is True


def test_gpu_pool_has_aks_install_the_driver_and_spot_pays_up_to_on_demand(aks):
    found = R._pools(aks)
    assert found["gpu"]["gpuProfile"] == {"driver": "Install"}
    spot = found["spot"]
    assert (spot["scaleSetPriority"], spot["scaleSetEvictionPolicy"]) == ("Spot", "Delete")
    assert R.evaluate(spot["spotMaxPrice"], aks, {}) == -1
    assert spot["nodeTaints"] == [str(pools.SPOT_TAINT)]


POOL_SNIPPET = """
resource aks 'Microsoft.ContainerService/managedClusters@2025-07-01' existing = {
  name: 'c'
}
resource p 'Microsoft.ContainerService/managedClusters/agentPools@2025-07-01' = {
  parent: aks
  name: '%(name)s'
  properties: {
    mode: 'User'
    enableAutoScaling: true
    minCount: 0
    maxCount: 1
%(body)s
  }
}
"""


@pytest.mark.parametrize("name, body, expected", [
    ("gpu", "nodeLabels: {\n'mfhelm.io/pool': 'taskworkers'\n}\n"
            "nodeTaints: [\n'mfhelm.io/pool=taskworkers:NoSchedule'\n'nvidia.com/gpu=true:NoSchedule'\n]"
            "\ngpuProfile: {\ndriver: 'Install'\n}",
     "pool gpu: labels"),
    ("gpu", "nodeLabels: {\n'mfhelm.io/pool': 'taskworkers'\n'mfhelm.io/accelerator': 'nvidia'\n}\n"
            "nodeTaints: [\n'mfhelm.io/pool=taskworkers:NoSchedule'\n]\n"
            "gpuProfile: {\ndriver: 'Install'\n}",
     "pool gpu: taints"),
    ("gpu", "nodeLabels: {\n'mfhelm.io/pool': 'taskworkers'\n'mfhelm.io/accelerator': 'nvidia'\n}\n"
            "nodeTaints: [\n'mfhelm.io/pool=taskworkers:NoSchedule'\n'nvidia.com/gpu=true:NoSchedule'\n]"
            "\ngpuProfile: {\ndriver: 'None'\n}",
     "pool gpu: gpuProfile.driver is not Install"),
    ("spot", "nodeLabels: {\n'mfhelm.io/pool': 'spot'\n}\n"
             "nodeTaints: [\n'kubernetes.azure.com/scalesetpriority=spot:NoSchedule'\n]\n"
             "scaleSetPriority: 'Spot'\nscaleSetEvictionPolicy: 'Deallocate'\nspotMaxPrice: -1",
     "pool spot: scaleSetEvictionPolicy is 'Deallocate', not 'Delete'"),
    ("spot", "nodeLabels: {\n'mfhelm.io/pool': 'spot'\n}\n"
             "nodeTaints: [\n'kubernetes.azure.com/scalesetpriority=spot:NoSchedule'\n]\n"
             "scaleSetPriority: 'Spot'\nscaleSetEvictionPolicy: 'Delete'\nspotMaxPrice: 1",
     "pool spot: spotMaxPrice is 1, not -1"),
    # Without Spot priority the label AKS would write is missing.
    ("spot", "nodeLabels: {\n'mfhelm.io/pool': 'spot'\n}\n"
             "nodeTaints: [\n'kubernetes.azure.com/scalesetpriority=spot:NoSchedule'\n]\n"
             "scaleSetEvictionPolicy: 'Delete'\nspotMaxPrice: -1",
     ("pool spot: labels", "pool spot: scaleSetPriority is None, not 'Spot'")),
])
def test_the_pool_rule_flags_each_optional_pool_mistake(name, body, expected):
    expected = (expected,) if isinstance(expected, str) else expected
    tpl = R.parse_text(POOL_SNIPPET % {"name": name, "body": body})
    problems = [p for p in R.node_pools_follow_contract(tpl) if not p.startswith("no ")]
    assert len(problems) == len(expected), problems
    assert all(p.startswith(e) for p, e in zip(problems, expected, strict=True)), problems


def test_every_output_mfhelm_reads_is_one_main_bicep_writes(main):
    """mfhelm.azure.outputs' lists (required and optional) are main.bicep's outputs, with
    their types: an output mfhelm reads but the template does not write would be 'absent',
    which for an optional one silently means off."""
    from mfhelm.azure import outputs as mo

    kinds = {**{n: "string" for n in (*mo.STRING_OUTPUTS, *mo.OPTIONAL_STRING_OUTPUTS)},
             **{n: "bool" for n in (*mo.BOOL_OUTPUTS, *mo.OPTIONAL_BOOL_OUTPUTS)}}
    assert kinds == R.CONTRACT_OUTPUTS
    assert {n: o["type"] for n, o in main["outputs"].items()} == kinds
    assert {"registryName", "registryLoginServer"} <= set(mo.OPTIONAL_STRING_OUTPUTS)
    assert {"gpuPoolEnabled", "spotPoolEnabled"} <= set(mo.OPTIONAL_BOOL_OUTPUTS)
