"""The Bicep templates parse, and the project rules hold on them.

Each rule also gets a small bad snippet, so a rule that silently stopped
finding anything would fail here rather than pass forever.
"""

from __future__ import annotations

from pathlib import Path

import bicep_rules as R
import pytest

FILES = R.bicep_files()
MAIN = R.BICEP_DIR / "main.bicep"
MODULES = ("network", "aks", "postgres", "storage", "identity", "keyvault", "signin",
           "tls-certificate-role", "registry")
# Modules a module calls, by caller: a role assignment named from a principal ID that
# exists only at run time needs a deployment of its own.
SUBMODULES = {"aks": ("subnet-role",), "signin": ("signin-api",)}


@pytest.fixture(scope="module")
def parsed() -> dict[Path, dict]:
    return {f: R.parse_file(f) for f in FILES}


def _module_calls(path: Path, tpl: dict) -> list[tuple[str, Path, dict]]:
    return [(name, (path.parent / mod["detail"]["path"]).resolve(), mod)
            for name, mod in (tpl.get("modules") or {}).items()]


def test_layout_main_and_one_module_per_concern(parsed):
    assert MAIN in FILES
    helpers = {h for calls in SUBMODULES.values() for h in calls}
    assert {f.stem for f in (R.BICEP_DIR / "modules").glob("*.bicep")} == set(MODULES) | helpers
    for caller, calls in SUBMODULES.items():
        path = R.BICEP_DIR / "modules" / f"{caller}.bicep"
        assert {p.stem for _, p, _ in _module_calls(path, parsed[path])} == set(calls)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_bicep_file_parses(path: Path):
    tpl = R.parse_file(path)
    assert tpl.get("parameters"), f"{path.name}: parsed without parameters"
    assert tpl.get("outputs") or tpl.get("resources"), (
        f"{path.name}: parsed without outputs or resources")


def test_main_is_subscription_scope_and_calls_every_module(parsed):
    main = parsed[MAIN]
    assert main["globals"]["scope"]["value"] == "subscription"
    paths = {m["detail"]["path"] for m in main["modules"].values()}
    assert paths == {f"modules/{m}.bicep" for m in MODULES}
    assert [n for n, _ in R.resources(main, "Microsoft.Resources/resourceGroups")] == ["rg"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_module_params_match_module_declarations(path: Path, parsed):
    for name, target_path, mod in _module_calls(path, parsed[path]):
        declared = parsed[target_path]["parameters"]
        given = set(R.body(mod)["params"])
        assert given <= set(declared), f"module {name}: unknown params {given - set(declared)}"
        required = {p for p, d in declared.items() if d.get("default") is None}
        assert required <= given, f"module {name}: missing params {required - given}"


def test_org_prefix_parameter_is_bounded(parsed):
    decorators = {d["type"]: d.get("argument") for d in
                  parsed[MAIN]["parameters"]["orgPrefix"]["decorators"]}
    assert decorators["min_length"] == 2 and decorators["max_length"] == 8


def test_main_parameter_defaults(parsed):
    params = parsed[MAIN]["parameters"]
    assert params["deployArgo"]["default"] is True
    assert params["deployAirflow"]["default"] is False
    assert params["postgresVersion"]["default"] == "16"
    assert params["postgresTier"]["default"] == "Burstable"
    assert params["kubernetesVersion"]["default"] == ""
    assert params["serviceNamespace"]["default"] == "metaflow"
    # Flow pods apart from the services' Secrets; the same default as mfhelm.toml's.
    from mfhelm.settings import HelmSettings

    assert params["flowNamespace"]["default"] == HelmSettings().flow_namespace == "metaflow-flows"
    assert params["resourceGroupName"]["default"] == "${orgPrefix}-metaflow-rg"
    assert params["postgresAdminPassword"]["default"] is None
    assert params["existingPoolCounts"]["default"] == {}


def test_main_outputs_are_exactly_the_contract(parsed):
    assert R.contract_outputs(parsed[MAIN]) == []


def test_contract_constants_in_main(parsed):
    variables = {k: v["value"] for k, v in parsed[MAIN]["variables"].items()}
    assert variables["metaflowContainerName"] == "metaflow-storage"
    assert variables["airflowLogsContainerName"] == "airflow-logs"
    assert variables["postgresDatabaseName"] == "metaflow"
    assert variables["serviceAccountService"] == "metaflow-service"
    assert variables["serviceAccountFlows"] == "metaflow-flows"
    assert variables["serviceAccountAirflow"] == "metaflow-airflow"
    assert variables["taskworkersLabelKey"] == R.POOL_LABEL
    assert variables["taskworkersLabelValue"] == "taskworkers"


def test_keyvault_module_deployment_name_matches_the_deployer(parsed):
    from mfhelm.bicep_deploy import KEYVAULT_MODULE_DEPLOYMENT, PASSWORD_PARAMETER

    main = parsed[MAIN]
    assert main["modules"]["keyvault"]["config"]["name"] == KEYVAULT_MODULE_DEPLOYMENT
    assert PASSWORD_PARAMETER in main["parameters"]


def test_postgres_sets_tls_on_and_orders_child_writes(parsed):
    pg = parsed[R.BICEP_DIR / "modules/postgres.bicep"]
    (name, conf), = R.resources(pg, "flexibleServers/configurations")
    assert R.body(conf)["properties"]["value"] == "ON"
    dbs = dict(R.resources(pg, "flexibleServers/databases"))
    assert set(dbs) == {"database", "airflowDatabase"}
    # One child write at a time: TLS setting, then metaflow, then airflow.
    assert name in R.body(dbs["database"])["dependsOn"]
    assert "database" in R.body(dbs["airflowDatabase"])["dependsOn"]


def test_airflow_database_only_with_airflow(parsed):
    pg = parsed[R.BICEP_DIR / "modules/postgres.bicep"]
    dbs = dict(R.resources(pg, "flexibleServers/databases"))
    assert "deployAirflow" in set(R.strings(R.condition(dbs["airflowDatabase"])))
    assert R.condition(dbs["database"]) is None


def test_postgres_dns_zone_is_privatelink_and_linked(parsed):
    net = parsed[R.BICEP_DIR / "modules/network.bicep"]
    (zname, zone), = R.resources(net, "Microsoft.Network/privateDnsZones")
    assert R.body(zone)["name"] == "privatelink.postgres.database.azure.com"
    (_, link), = R.resources(net, "privateDnsZones/virtualNetworkLinks")
    assert R.body(link)["parent"] == zname
    subnets = R.body(next(iter(dict(R.resources(net, "virtualNetworks")).values())))
    delegations = [d["properties"]["serviceName"] for s in subnets["properties"]["subnets"]
                   for d in s["properties"].get("delegations", [])]
    assert delegations == ["Microsoft.DBforPostgreSQL/flexibleServers"]


def test_storage_account_hardening(parsed):
    st = parsed[R.BICEP_DIR / "modules/storage.bicep"]
    (_, acct), = R.resources(st, "Microsoft.Storage/storageAccounts")
    cfg = R.body(acct)
    props = cfg["properties"]
    assert cfg["kind"] == "StorageV2"
    assert props["supportsHttpsTrafficOnly"] is True
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["allowBlobPublicAccess"] is False
    assert props["allowSharedKeyAccess"] is False


def test_keyvault_rbac_mode_with_soft_delete_and_purge_protection(parsed):
    kv = parsed[R.BICEP_DIR / "modules/keyvault.bicep"]
    (_, vault), = R.resources(kv, "Microsoft.KeyVault/vaults")
    props = R.body(vault)["properties"]
    assert props["enableRbacAuthorization"] is True
    assert props["enableSoftDelete"] is True
    assert props["enablePurgeProtection"] is True


def test_aks_identity_features(parsed):
    aks = parsed[R.BICEP_DIR / "modules/aks.bicep"]
    (_, cluster), = R.resources(aks, "ContainerService/managedClusters")
    props = R.body(cluster)["properties"]
    assert props["oidcIssuerProfile"]["enabled"] is True
    assert props["securityProfile"]["workloadIdentity"]["enabled"] is True
    assert props["disableLocalAccounts"] is True
    assert props["aadProfile"]["enableAzureRBAC"] is True
    assert props["networkProfile"]["networkPlugin"] == "azure"
    assert props["networkProfile"]["networkPluginMode"] == "overlay"


def test_federated_credentials_cover_the_three_service_accounts(parsed):
    ident = parsed[R.BICEP_DIR / "modules/identity.bicep"]
    subjects = [s["subject"] for s in ident["variables"]["federatedSubjects"]["value"]]
    assert subjects == [
        "system:serviceaccount:${serviceNamespace}:${serviceAccountService}",
        "system:serviceaccount:${flowNamespace}:${serviceAccountFlows}",
        "system:serviceaccount:${serviceNamespace}:${serviceAccountAirflow}",
    ]
    (_, fic), = R.resources(ident, "federatedIdentityCredentials")
    assert R.body(fic)["properties"]["audiences"] == ["api://AzureADTokenExchange"]


def test_storage_has_an_airflow_container_to_guard(parsed):
    st = parsed[R.BICEP_DIR / "modules/storage.bicep"]
    guarded = [n for n, r in R.resources(st, "blobServices/containers")
               if R.condition(r) == "deployAirflow"]
    assert guarded == ["airflowLogsContainer"]


@pytest.mark.parametrize("rule", R.RULES, ids=lambda r: r.__name__)
def test_rule_holds_on_every_template(rule, parsed):
    problems = {f.name: rule(tpl) for f, tpl in parsed.items()}
    assert {k: v for k, v in problems.items() if v} == {}


# --- each rule catches a bad snippet --------------------------------------------------------

FIC_TYPE = (
    "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2024-11-30"
)

NESTED_DEPLOYMENT = """
@secure()
param password string

resource nested 'Microsoft.Resources/deployments@2025-04-01' = {
  name: 'nested'
  properties: {
    mode: 'Incremental'
    template: {
      resources: []
      outputs: {
        p: {
          type: 'string'
          value: password
        }
      }
    }
  }
}
"""

BAD = {
    "tls_not_disabled": """
resource tls 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2025-08-01' = {
  parent: server
  name: 'require_secure_transport'
  properties: {
    value: 'OFF'
    source: 'user-override'
  }
}
""",
    "no_open_postgres_network": """
resource azure 'Microsoft.DBforPostgreSQL/flexibleServers/firewallRules@2025-08-01' = {
  parent: server
  name: 'AllowAllAzureServices'
  properties: {
    startIpAddress: '0.0.0.0'
    endIpAddress: '0.0.0.0'
  }
}
""",
    "secure_params_have_no_default": """
@secure()
param password string = 'metaflow'
""",
    "no_secret_outputs": """
@secure()
param password string

resource sa 'Microsoft.Storage/storageAccounts@2025-01-01' existing = {
  name: 'x'
}

output leaked string = password
output conn string = 'postgres://admin:${password}@host'
output key string = sa.listKeys().keys[0].value
output key2 string = listKeys(sa.id, '2025-01-01').keys[0].value
output adminPasswordSecretName string = 'only the name, still flagged'
""",
    "airflow_logs_only_with_airflow": """
param deployAirflow bool = false

resource logs 'Microsoft.Storage/storageAccounts/blobServices/containers@2025-01-01' = {
  parent: blob
  name: 'airflow-logs'
}
""",
    "node_pools_follow_contract": """
resource aks 'Microsoft.ContainerService/managedClusters@2025-07-01' = {
  name: 'x'
  location: location
  properties: {
    agentPoolProfiles: [
      {
        name: 'system'
        mode: 'System'
        count: 3
        enableAutoScaling: true
        minCount: 1
        maxCount: 3
      }
      {
        name: 'taskworkers'
        mode: 'User'
        count: 1
        nodeLabels: {
          'mfhelm.io/pool': 'taskworkers'
        }
      }
    ]
  }
}
""",
    "secrets_in_params_are_secure": """
param adminPassword string
param storageAccountKey string
param keyVaultSecretName string
param poolSize int

@secure()
param token string

param copied string = token
""",
    "pool_counts_valid": """
@minValue(1)
@maxValue(1000)
param minNodes int

@minValue(1)
@maxValue(1000)
param maxNodes int

resource aks 'Microsoft.ContainerService/managedClusters@2025-07-01' = {
  name: 'x'
  location: location
  properties: {
    agentPoolProfiles: [
      {
        name: 'system'
        mode: 'System'
        enableAutoScaling: true
        minCount: minNodes
        maxCount: maxNodes
      }
      {
        name: 'services'
        mode: 'User'
        enableAutoScaling: true
        count: 1
        minCount: minNodes
        maxCount: maxNodes
      }
      {
        name: 'taskworkers'
        mode: 'User'
        enableAutoScaling: true
        count: minNodes
        minCount: minNodes
        maxCount: maxNodes
      }
    ]
  }
}
""",
    "no_location_expr_outside_params": """
param location string = resourceGroup().location

var here = deployment().location

resource vnet 'Microsoft.Network/virtualNetworks@2025-09-01' = {
  name: 'v'
  location: resourceGroup().location
}

output where string = 'in ${resourceGroup().location}'
""",
    "no_deployments_resources": NESTED_DEPLOYMENT,
    "secure_params_in_nested_deploy": NESTED_DEPLOYMENT,
    "secure_inputs_get_secure_values": """
param adminPassword string = 'not-secure'

resource pg 'Microsoft.DBforPostgreSQL/flexibleServers@2025-08-01' = {
  name: 'pg'
  location: location
  properties: {
    administratorLoginPassword: adminPassword
  }
}

resource pg2 'Microsoft.DBforPostgreSQL/flexibleServers@2025-08-01' = {
  name: 'pg2'
  location: location
  properties: {
    administratorLoginPassword: 'Literal-Password-1'
  }
}

resource web 'Microsoft.Web/sites@2024-04-01' = {
  name: 'w'
  location: location
}
""",
    "admin_username_not_literal": """
var admin = 'azureuser'

resource vm 'Microsoft.Compute/virtualMachines@2024-07-01' = {
  name: 'vm'
  location: location
  properties: {
    osProfile: {
      adminUsername: 'azureuser'
    }
  }
}

resource vm2 'Microsoft.Compute/virtualMachines@2024-07-01' = {
  name: 'vm2'
  location: location
  properties: {
    osProfile: {
      adminUsername: admin
    }
  }
}
""",
    "protect_command_to_execute": """
@secure()
param password string

resource ext 'Microsoft.Compute/virtualMachines/extensions@2024-07-01' = {
  parent: vm
  name: 'script'
  location: location
  properties: {
    publisher: 'Microsoft.Azure.Extensions'
    type: 'CustomScript'
    typeHandlerVersion: '2.1'
    settings: {
      commandToExecute: 'setup.sh ${password}'
    }
  }
}
""",
    "stable_resource_identifiers": """
param suffix string = newGuid()

resource sa 'Microsoft.Storage/storageAccounts@2025-01-01' = {
  name: 'sa${suffix}'
  location: location
}
""",
    "resource_ids_from_functions": """
param subnetName string

var subnetId = '/subscriptions/${subscription().subscriptionId}/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/${subnetName}'

resource nic 'Microsoft.Network/networkInterfaces@2025-09-01' = {
  name: 'nic'
  location: location
  properties: {
    ipConfigurations: [
      {
        name: 'ip'
        properties: {
          subnet: {
            id: subnetId
          }
        }
      }
    ]
    networkSecurityGroup: {
      id: '/subscriptions/x/resourceGroups/rg/providers/Microsoft.Network/networkSecurityGroups/n'
    }
  }
}
""",
    "parent_property_for_children": """
resource vnet 'Microsoft.Network/virtualNetworks@2025-09-01' existing = {
  name: 'v'
}

resource sub 'Microsoft.Network/virtualNetworks/subnets@2025-09-01' = {
  name: 'v/s'
  properties: {
    addressPrefix: '10.0.0.0/24'
  }
}
""",
    "resource_symbol_references": """
resource sa 'Microsoft.Storage/storageAccounts@2025-01-01' existing = {
  name: 'x'
}

var endpoint = reference(sa.id, '2025-01-01').primaryEndpoints.blob
var keys = listKeys(sa.id, '2025-01-01')
var fine = sa.listKeys()
""",
    "no_unused_params": """
param used string
param unused string

output o string = used
""",
    "no_unused_vars": """
var a = 'x'
var b = '${a}-y'

output o string = 'z'
""",
    "no_unused_existing_resources": """
resource kv 'Microsoft.KeyVault/vaults@2026-02-01' existing = {
  name: 'kv'
}

resource sa 'Microsoft.Storage/storageAccounts@2025-01-01' existing = {
  name: 'sa'
}

output o string = sa.id
""",
    "no_hardcoded_env_urls": """
var blob = 'https://acct.blob.core.windows.net/'
var schema = 'https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#'
var lookalike = 'https://example.com/notcore.windows.netx'

@description('Key Vault URI, like https://x.vault.azure.net/')
output vaultUri string = 'x'
""",
    "template_limits": "\n".join(
        [f"param p{i} string" for i in range(257)]
        + [f"output o{i} string = 'x'" for i in range(65)]),
    "deterministic_names": """
var suffix = newGuid()
var stamp = '${utcNow()}'
""",
    "no_hardcoded_location": """
param location string = 'westus'

var region = 'eastus'

resource vnet 'Microsoft.Network/virtualNetworks@2025-09-01' = {
  name: 'v'
  location: 'westus'
}

resource zone 'Microsoft.Network/privateDnsZones@2024-06-01' = {
  name: 'privatelink.postgres.database.azure.com'
  location: 'global'
}

resource nsg 'Microsoft.Network/networkSecurityGroups@2025-09-01' = {
  name: 'n'
  location: region
}
""",
    "descriptions_everywhere": """
param orgPrefix string

output name string = orgPrefix
""",
    "role_assignments_well_formed": """
resource ra 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: 'fixed-name'
  properties: {
    principalId: principalId
    roleDefinitionId: roleId
  }
}
""",
    # aksSubnetRole as aks.bicep had it (issue 17, item 13), and two more ways to get it wrong.
    "role_assignment_names_from_scope_principal_role": """
resource aksSubnetRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(nodeSubnet.id, aks.id, networkContributorRoleId)
  scope: nodeSubnet
  properties: {
    principalId: aks.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', networkContributorRoleId)
  }
}

resource noScope 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, principalId, roleId)
  scope: vault
  properties: {
    principalId: principalId
    principalType: 'User'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
  }
}

resource noRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId)
  scope: vault
  properties: {
    principalId: principalId
    principalType: 'User'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
  }
}

resource fine 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, roleId)
  scope: vault
  properties: {
    principalId: principalId
    principalType: 'User'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
  }
}
""",
    "federated_credentials_serialised": """
resource fics 'FIC' = [for s in subjects: {
  parent: identity
  name: s.name
}]

resource a 'FIC' = {
  parent: identity
  name: 'a'
}

resource b 'FIC' = {
  parent: identity
  name: 'b'
}
""".replace("FIC", FIC_TYPE),
}

EXPECTED = {
    "tls_not_disabled": ["tls: require_secure_transport is off"],
    "no_open_postgres_network": ["azure: firewall rule opens the server to 0.0.0.0"],
    "secure_params_have_no_default": ["param password: @secure() with a default value"],
    "no_secret_outputs": [
        "output leaked: references a @secure() parameter",
        "output conn: references a @secure() parameter",
        "output key: calls ['listkeys']",
        "output key2: calls ['listkeys']",
        "output adminPasswordSecretName: the name contains 'password'",
    ],
    "airflow_logs_only_with_airflow": [
        "logs: Airflow container without an `if (deployAirflow)` condition"],
    "deterministic_names": [
        "new_guid() outside a parameter default",
        "interpolated utcNow() outside a parameter default",
    ],
    "no_hardcoded_location": [
        "vnet: hard-coded location 'westus'",
        "nsg: hard-coded location 'eastus'",
        "param location: hard-coded default 'westus'",
    ],
    "secrets_in_params_are_secure": [
        "param adminPassword: the name suggests a secret but it is not @secure()",
        "param storageAccountKey: the name suggests a secret but it is not @secure()",
        "param copied: its default reads a @secure() parameter",
    ],
    "pool_counts_valid": [
        "pool system: no count (AKS then assumes 1, and refuses a minCount above 1)",
        "pool services: count does not read the pool's current size, so a re-deploy resets "
        "what the autoscaler chose",
        "pool services: count 1 outside [2, 2] (maxNodes=2, minNodes=2, new pool)",
        "pool taskworkers: count does not read the pool's current size, so a re-deploy "
        "resets what the autoscaler chose",
    ],
    "no_location_expr_outside_params": [
        "variable here: resourceGroup()/deployment().location outside a parameter default",
        "resource vnet: resourceGroup()/deployment().location outside a parameter default",
        "output where: resourceGroup()/deployment().location outside a parameter default",
    ],
    "no_deployments_resources": [
        "nested: a Microsoft.Resources/deployments resource; use a module"],
    "secure_params_in_nested_deploy": [
        "nested: outer-scoped nested deployment reads a @secure() parameter"],
    "secure_inputs_get_secure_values": [
        "pg: properties.administratorLoginPassword is not a @secure() parameter",
        "pg2: properties.administratorLoginPassword is not a @secure() parameter",
        "web: secure properties of Microsoft.Web/sites not reviewed (add it to SECURE_INPUTS)",
    ],
    "admin_username_not_literal": ["vm: adminUsername is the literal 'azureuser'",
                                   "vm2: adminUsername is the literal 'azureuser'"],
    "protect_command_to_execute": [
        "ext: settings.commandToExecute carries a secret; use protectedSettings"],
    "stable_resource_identifiers": ["sa: name depends on new_guid"],
    "resource_ids_from_functions": [
        "nic: properties.ipConfigurations[0].properties.subnet.id is not built with a "
        "resource symbol or a resourceId() function",
        "nic: properties.networkSecurityGroup.id is not built with a resource symbol or a "
        "resourceId() function",
    ],
    "parent_property_for_children": [
        "sub: child named 'v/s'; use parent: and the child's own name"],
    "resource_symbol_references": [
        "variable endpoint: calls reference(); use the resource symbol",
        "variable keys: calls listKeys(); use the resource symbol",
    ],
    "no_unused_params": ["param unused: never used"],
    "no_unused_vars": ["var b: never used"],
    "no_unused_existing_resources": ["existing resource kv: never used"],
    "no_hardcoded_env_urls": ["output vaultUri: hard-coded host vault.azure.net",
                              "variable blob: hard-coded host core.windows.net"],
    "template_limits": ["65 outputs, more than ARM's 64",
                        "257 parameters, more than ARM's 256"],
    "descriptions_everywhere": ["parameter orgPrefix: no @description",
                                "output name: no @description"],
    "role_assignments_well_formed": ["ra: name is not guid(...)", "ra: principalType not set"],
    "role_assignment_names_from_scope_principal_role": [
        "aksSubnetRole: name is not built from the principalId it assigns",
        "noScope: name is not built from its scope's id",
        "noRole: name is not built from the role it grants",
    ],
    "federated_credentials_serialised": [
        "fics: loop without @batchSize(1)",
        "b: not chained with dependsOn to another federated credential",
    ],
}


@pytest.mark.parametrize("rule", R.RULES, ids=lambda r: r.__name__)
def test_rule_flags_a_bad_snippet(rule, tmp_path):
    path = tmp_path / f"{rule.__name__}.bicep"
    path.write_text(BAD[rule.__name__])
    problems = rule(R.parse_file(path))
    if rule.__name__ in EXPECTED:
        assert problems == EXPECTED[rule.__name__]
    else:
        assert problems


def test_node_pool_rule_names_each_problem(tmp_path):
    path = tmp_path / "pools.bicep"
    path.write_text(BAD["node_pools_follow_contract"])
    problems = R.node_pools_follow_contract(R.parse_file(path))
    assert "no services pool" in problems
    assert "pool taskworkers: enableAutoScaling is not true" in problems
    assert "pool taskworkers: minCount/maxCount not set" in problems
    assert f"pool system: missing taint {R.SYSTEM_TAINT}" in problems
    assert f"pool taskworkers: missing taint {R.TASK_TAINT}" in problems


def test_postgres_network_rule_flags_a_public_server(tmp_path):
    path = tmp_path / "pg.bicep"
    path.write_text("""
resource pg 'Microsoft.DBforPostgreSQL/flexibleServers@2025-08-01' = {
  name: 'x'
  location: location
  properties: {
    network: {
      publicNetworkAccess: 'Enabled'
    }
  }
}
""")
    assert R.no_open_postgres_network(R.parse_file(path)) == [
        "pg: not VNet-integrated (no delegatedSubnetResourceId)",
        "pg: publicNetworkAccess is not Disabled",
    ]


def test_contract_rule_flags_missing_extra_and_mistyped_outputs(tmp_path):
    path = tmp_path / "out.bicep"
    path.write_text("""
@description('x')
output deployArgo string = 'true'

@description('x')
output postgresPassword string = 'nope'
""")
    problems = R.contract_outputs(R.parse_file(path))
    assert "missing output aksClusterName" in problems
    assert "output postgresPassword is not in the contract" in problems
    assert "output deployArgo has type string, contract says bool" in problems


# --- every linter rule at level error has an offline check ----------------------------------


def test_every_error_level_linter_rule_has_an_offline_check():
    """`bicep build` writes nothing when an error-level rule fires; no compiler runs here,
    so a rule raised to error without a check below would let a broken template pass."""
    errors = R.error_level_rules()
    assert errors, "bicepconfig.json raises no rule to error: the parse found nothing"
    assert set(errors) - set(R.LINTER_CHECKS) == set()
    for code, checks in R.LINTER_CHECKS.items():
        assert checks, code
        assert all(c in R.RULES or c in R.MODULE_RULES for c in checks), code


@pytest.mark.parametrize("rule", R.MODULE_RULES, ids=lambda r: r.__name__)
def test_module_rule_holds_on_every_caller(rule, parsed):
    assert any(tpl.get("modules") for f, tpl in parsed.items() if f != MAIN)
    problems = {f.name: rule(tpl, f.parent) for f, tpl in parsed.items()}
    assert {k: v for k, v in problems.items() if v} == {}


MODULE = """
param location string = resourceGroup().location
param region string = 'westeurope'

@secure()
param secret string

resource sa 'Microsoft.Storage/storageAccounts@2025-01-01' = {
  name: 'x'
  location: region
}
"""

CALLER = """
param plain string

module m1 'm.bicep' = {
  name: 'm1'
  params: {
    secret: plain
  }
}

module m2 'm.bicep' = {
  name: 'm2'
  params: {
    location: 'westus'
    region: 'global'
    secret: ''
  }
}
"""


def test_module_rules_flag_bad_module_calls(tmp_path: Path):
    (tmp_path / "m.bicep").write_text(MODULE)
    caller = R.parse_text(CALLER)
    assert R.module_location_params(caller, tmp_path) == [
        "module m1: no explicit value for location parameter location",
        "module m1: no explicit value for location parameter region",
        "module m2: location parameter location is the literal 'westus'",
    ]
    assert R.module_secure_params(caller, tmp_path) == [
        "module m1: @secure() parameter secret gets an insecure value"]


def test_bicepconfig_stays_plain_json_with_known_levels():
    import json

    rules = json.loads((R.BICEP_DIR / "bicepconfig.json").read_text())["analyzers"]["core"]
    levels = {cfg["level"] for cfg in rules["rules"].values()}
    assert levels <= {"error", "warning", "info", "off"}


# --- AKS pool counts (issue 8, item 15) ------------------------------------------------------

AKS = R.BICEP_DIR / "modules/aks.bicep"


def _pool_env(aks: dict, **values) -> dict:
    params = aks["parameters"]
    env = {name: values.get(name, p.get("default")) for name, p in params.items()
           if p.get("type") in ("int", "object")}
    return env


def _counts(aks: dict, env: dict) -> dict[str, int]:
    pools = R._pools(aks)
    return {name: R.evaluate(pool["count"], aks, env) for name, pool in pools.items()}


def test_first_deploy_starts_every_pool_at_its_minimum(parsed):
    aks = parsed[AKS]
    env = _pool_env(aks, systemMinCount=3, systemMaxCount=5, servicesMinCount=2,
                    servicesMaxCount=4, taskMinCount=0, taskMaxCount=9, gpuMinCount=1,
                    gpuMaxCount=2, spotMinCount=0, spotMaxCount=5, existingPoolCounts={})
    assert _counts(aks, env) == {"system": 3, "services": 2, "taskworkers": 0, "gpu": 1,
                                 "spot": 0}


def test_redeploy_keeps_the_autoscalers_choice_and_clamps_to_new_bounds(parsed):
    aks = parsed[AKS]
    env = _pool_env(aks, systemMinCount=2, systemMaxCount=5, servicesMinCount=1,
                    servicesMaxCount=3, taskMinCount=0, taskMaxCount=4, gpuMinCount=0,
                    gpuMaxCount=2, spotMinCount=0, spotMaxCount=5,
                    existingPoolCounts={"system": 4, "services": 7, "taskworkers": 0,
                                        "gpu": 1, "spot": 9})
    # The optional pools too: a GPU node the autoscaler started stays; Spot clamps to 5.
    assert _counts(aks, env) == {"system": 4, "services": 3, "taskworkers": 0, "gpu": 1,
                                 "spot": 5}
    env["existingPoolCounts"] = {"system": 1}
    assert _counts(aks, env)["system"] == 2


def test_pool_count_rule_on_the_template_before_the_fix():
    """The pools as they were (no count): AKS assumes 1 and refuses minCount >= 2."""
    before = R.parse_text(AKS.read_text().replace("        count: systemCount\n", ""))
    assert R.pool_counts_valid(before) == [
        "pool system: no count (AKS then assumes 1, and refuses a minCount above 1)"]


def test_pool_count_rule_flags_a_count_that_is_not_clamped():
    text = AKS.read_text().replace(
        "var systemCount = min(max(contains(existingPoolCounts, 'system') ? "
        "int(existingPoolCounts.system) : systemMinCount, systemMinCount), systemMaxCount)",
        "var systemCount = contains(existingPoolCounts, 'system') ? "
        "int(existingPoolCounts.system) : systemMinCount")
    assert text != AKS.read_text()
    (problem,) = R.pool_counts_valid(R.parse_text(text))
    assert problem.startswith("pool system: count 0 outside [1, 1]")


def test_pool_count_rule_flags_count_fixed_to_the_minimum():
    """`count: minCount` makes the first create valid but resets the pool on re-deploy."""
    text = AKS.read_text().replace("count: servicesCount", "count: servicesMinCount")
    assert R.pool_counts_valid(R.parse_text(text)) == [
        "pool services: count does not read the pool's current size, so a re-deploy "
        "resets what the autoscaler chose"]


def test_every_pool_size_mfhelm_accepts_is_a_size_the_templates_accept(parsed):
    """The bounds main.bicep and aks.bicep declare cover mfhelm's settings, so the pool
    rule's sweep over the template bounds covers every value mfhelm lets through."""
    from mfhelm.settings import AksSettings

    main, aks = parsed[MAIN]["parameters"], parsed[AKS]["parameters"]
    fields = {"system_min_count": "systemMinCount", "system_max_count": "systemMaxCount",
              "services_min_count": "servicesMinCount", "services_max_count": "servicesMaxCount",
              "task_min_count": "taskMinCount", "task_max_count": "taskMaxCount",
              "gpu_min_count": "gpuMinCount", "gpu_max_count": "gpuMaxCount",
              "spot_min_count": "spotMinCount", "spot_max_count": "spotMaxCount"}
    for field, param in fields.items():
        meta = AksSettings.model_fields[field].metadata
        low = next(m.ge for m in meta if hasattr(m, "ge"))
        high = next(m.le for m in meta if hasattr(m, "le"))
        for declared in (main[param], aks[param]):
            d_low, d_high = R._int_bounds(declared)
            assert d_low <= low and high <= d_high, (param, (low, high), (d_low, d_high))
    assert parsed[MAIN]["modules"]["aks"]["config"]["params"]["existingPoolCounts"] == (
        "existingPoolCounts")


def test_refs_reads_identifiers_not_property_or_function_names():
    tpl = R.parse_text("""
var a = network.outputs.vnetName
var b = '${take(nameSuffix, 6)}-${vnet.properties.addressSpace}-x'
var c = items[index].name
""")
    found = {name: set(R.refs(v["value"])) for name, v in tpl["variables"].items()}
    assert found == {"a": {"network"}, "b": {"nameSuffix", "vnet"}, "c": {"items", "index"}}
