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
MODULES = ("network", "aks", "postgres", "storage", "identity", "keyvault")


@pytest.fixture(scope="module")
def parsed() -> dict[Path, dict]:
    return {f: R.parse_file(f) for f in FILES}


def test_layout_main_and_one_module_per_concern():
    assert MAIN in FILES
    assert {f.stem for f in (R.BICEP_DIR / "modules").glob("*.bicep")} == set(MODULES)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_bicep_file_parses(path: Path):
    tpl = R.parse_file(path)
    assert tpl.get("parameters"), f"{path.name}: parsed without parameters"
    assert tpl.get("outputs"), f"{path.name}: parsed without outputs"


def test_main_is_subscription_scope_and_calls_every_module(parsed):
    main = parsed[MAIN]
    assert main["globals"]["scope"]["value"] == "subscription"
    paths = {m["detail"]["path"] for m in main["modules"].values()}
    assert paths == {f"modules/{m}.bicep" for m in MODULES}
    assert [n for n, _ in R.resources(main, "Microsoft.Resources/resourceGroups")] == ["rg"]


def test_module_params_match_module_declarations(parsed):
    main = parsed[MAIN]
    for name, mod in main["modules"].items():
        target = parsed[R.BICEP_DIR / mod["detail"]["path"]]
        declared = target["parameters"]
        given = set(mod["config"]["params"])
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
    assert params["flowNamespace"]["default"] == "metaflow"
    assert params["resourceGroupName"]["default"] == "${orgPrefix}-metaflow-rg"
    assert params["postgresAdminPassword"]["default"] is None


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
    "deterministic_names": """
var suffix = newGuid()
var stamp = '${utcNow()}'
""",
    "no_hardcoded_location": """
param location string = 'westus'

resource vnet 'Microsoft.Network/virtualNetworks@2024-07-01' = {
  name: 'v'
  location: 'westus'
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
    ],
    "airflow_logs_only_with_airflow": [
        "logs: Airflow container without an `if (deployAirflow)` condition"],
    "deterministic_names": [
        "new_guid() outside a parameter default",
        "interpolated utcNow() outside a parameter default",
    ],
    "no_hardcoded_location": [
        "vnet: hard-coded location 'westus'",
        "param location: hard-coded default 'westus'",
    ],
    "descriptions_everywhere": ["parameter orgPrefix: no @description",
                                "output name: no @description"],
    "role_assignments_well_formed": ["ra: name is not guid(...)", "ra: principalType not set"],
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
    assert "pool system: sets count, which fights the autoscaler on re-deploy" in problems
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
