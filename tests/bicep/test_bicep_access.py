"""The Azure side of the access layer (issue 18): the application-routing add-on, the
Entra app registration (Microsoft Graph Bicep), the Key Vault certificate right.

No Bicep compiler runs here. Two kinds of check:
- types: every property the new resources set is one the published type declares,
  writable, of the right kind, and every required one is set. The facts below were
  read from the published type definitions (not copied as files):
  Microsoft Graph: microsoftgraph/msgraph-bicep-types, tag v1.0.0,
  generated/microsoftgraph/microsoft.graph/v1.0/1.0.0/types.json (the types behind
  br:mcr.microsoft.com/bicep/extensions/microsoftgraph/v1.0:1.0.0, bicepconfig.json);
  AKS: Azure/bicep-types-az, generated/containerservice_1/microsoft.containerservice/
  2025-07-01/types.json (ManagedClusterIngressProfile*, ManagedClusterAddonProfile; for
  issue 20 ManagedClusterAgentPoolProfileProperties and GPUProfile);
  ACR (issue 20): Azure/bicep-types-az, generated/containerregistry_0/
  microsoft.containerregistry/2025-11-01/types.json (Registry, RegistryProperties, Sku),
  the newest version there without -preview (azure-rest-api-specs has it under
  Registry/stable/2025-11-01).
- behaviour: bicep_rules.evaluate computes main.bicep's access variables, module
  conditions, names and outputs for the cases mfhelm's settings allow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bicep_rules as R
import pytest

MAIN = R.BICEP_DIR / "main.bicep"
AKS = R.BICEP_DIR / "modules/aks.bicep"
SIGNIN = R.BICEP_DIR / "modules/signin.bicep"
SIGNIN_API = R.BICEP_DIR / "modules/signin-api.bicep"
TLS_ROLE = R.BICEP_DIR / "modules/tls-certificate-role.bicep"

AZURE_CLI_APP_ID = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
GRAPH_EXTENSION = "br:mcr.microsoft.com/bicep/extensions/microsoftgraph/v1.0:1.0.0"

# --- published types (facts) ---------------------------------------------------------------
# property -> kind; kinds: "string", "bool", "int", "string[]", an object type's name, or
# "[Name]" for an array of it. REQUIRED / READ_ONLY per type, from the same files.
TYPES: dict[str, dict[str, str]] = {
    "Microsoft.Graph/applications": {
        "addIns": "[MicrosoftGraphAddIn]", "api": "MicrosoftGraphApiApplication",
        "appRoles": "[MicrosoftGraphAppRole]",
        "authenticationBehaviors": "MicrosoftGraphAuthenticationBehaviors",
        "defaultRedirectUri": "string", "description": "string",
        "disabledByMicrosoftStatus": "string", "displayName": "string",
        "groupMembershipClaims": "string", "identifierUris": "string[]",
        "info": "MicrosoftGraphInformationalUrl", "isDeviceOnlyAuthSupported": "bool",
        "isFallbackPublicClient": "bool", "keyCredentials": "[MicrosoftGraphKeyCredential]",
        "logo": "string", "nativeAuthenticationApisEnabled": "string", "notes": "string",
        "optionalClaims": "MicrosoftGraphOptionalClaims", "owners": "MicrosoftGraphRelationship",
        "parentalControlSettings": "MicrosoftGraphParentalControlSettings",
        "passwordCredentials": "[MicrosoftGraphPasswordCredential]",
        "publicClient": "MicrosoftGraphPublicClientApplication",
        "requestSignatureVerification": "MicrosoftGraphRequestSignatureVerification",
        "requiredResourceAccess": "[MicrosoftGraphRequiredResourceAccess]",
        "samlMetadataUrl": "string", "serviceManagementReference": "string",
        "servicePrincipalLockConfiguration": "MicrosoftGraphServicePrincipalLockConfiguration",
        "signInAudience": "string", "spa": "MicrosoftGraphSpaApplication", "tags": "string[]",
        "tokenEncryptionKeyId": "string", "uniqueName": "string",
        "verifiedPublisher": "MicrosoftGraphVerifiedPublisher",
        "web": "MicrosoftGraphWebApplication",
    },
    "Microsoft.Graph/applications/federatedIdentityCredentials": {
        "audiences": "string[]", "description": "string", "issuer": "string", "name": "string",
        "subject": "string",
    },
    "Microsoft.Graph/servicePrincipals": {
        "accountEnabled": "bool", "alternativeNames": "string[]", "appDescription": "string",
        "appDisplayName": "string", "appId": "string", "appRoleAssignmentRequired": "bool",
        "description": "string", "displayName": "string", "homepage": "string",
        "loginUrl": "string", "logoutUrl": "string", "notes": "string",
        "owners": "MicrosoftGraphRelationship", "preferredSingleSignOnMode": "string",
        "replyUrls": "string[]", "servicePrincipalNames": "string[]",
        "servicePrincipalType": "string", "tags": "string[]", "tokenEncryptionKeyId": "string",
    },
    "MicrosoftGraphApiApplication": {
        "acceptMappedClaims": "bool", "knownClientApplications": "string[]",
        "oauth2PermissionScopes": "[MicrosoftGraphPermissionScope]",
        "preAuthorizedApplications": "[MicrosoftGraphPreAuthorizedApplication]",
        "requestedAccessTokenVersion": "int",
    },
    "MicrosoftGraphPermissionScope": {
        "adminConsentDescription": "string", "adminConsentDisplayName": "string", "id": "string",
        "isEnabled": "bool", "type": "string", "userConsentDescription": "string",
        "userConsentDisplayName": "string", "value": "string",
    },
    "MicrosoftGraphPreAuthorizedApplication": {
        "appId": "string", "delegatedPermissionIds": "string[]",
    },
    "MicrosoftGraphWebApplication": {
        "homePageUrl": "string", "implicitGrantSettings": "MicrosoftGraphImplicitGrantSettings",
        "logoutUrl": "string", "redirectUriSettings": "[MicrosoftGraphRedirectUriSettings]",
        "redirectUris": "string[]",
    },
    "MicrosoftGraphImplicitGrantSettings": {
        "enableAccessTokenIssuance": "bool", "enableIdTokenIssuance": "bool",
    },
    "MicrosoftGraphOptionalClaims": {
        "accessToken": "[MicrosoftGraphOptionalClaim]", "idToken": "[MicrosoftGraphOptionalClaim]",
        "saml2Token": "[MicrosoftGraphOptionalClaim]",
    },
    "MicrosoftGraphOptionalClaim": {
        "additionalProperties": "string[]", "essential": "bool", "name": "string",
        "source": "string",
    },
    "MicrosoftGraphRelationship": {
        "relationshipSemantics": "string", "relationships": "string[]",
    },
    # managedClusters@2025-07-01 (the parts this change sets)
    "ManagedClusterIngressProfile": {
        "webAppRouting": "ManagedClusterIngressProfileWebAppRouting",
    },
    "ManagedClusterIngressProfileWebAppRouting": {
        "dnsZoneResourceIds": "string[]", "enabled": "bool",
        "nginx": "ManagedClusterIngressProfileNginx",
    },
    "ManagedClusterIngressProfileNginx": {"defaultIngressControllerType": "string"},
    "ManagedClusterAddonProfile": {"config": "ManagedClusterAddonProfileConfig", "enabled": "bool"},
    # managedClusters/agentPools@2025-07-01 (issue 20: the GPU and Spot pools)
    "Microsoft.ContainerService/managedClusters/agentPools": {
        "name": "string", "properties": "ManagedClusterAgentPoolProfileProperties",
    },
    "ManagedClusterAgentPoolProfileProperties": {
        "availabilityZones": "string[]", "capacityReservationGroupID": "string", "count": "int",
        "creationData": "CreationData", "currentOrchestratorVersion": "string",
        "enableAutoScaling": "bool", "enableEncryptionAtHost": "bool", "enableFIPS": "bool",
        "enableNodePublicIP": "bool", "enableUltraSSD": "bool", "eTag": "string",
        "gatewayProfile": "AgentPoolGatewayProfile", "gpuInstanceProfile": "string",
        "gpuProfile": "GPUProfile", "hostGroupID": "string", "kubeletConfig": "KubeletConfig",
        "kubeletDiskType": "string", "linuxOSConfig": "LinuxOSConfig", "maxCount": "int",
        "maxPods": "int", "messageOfTheDay": "string", "minCount": "int", "mode": "string",
        "networkProfile": "AgentPoolNetworkProfile", "nodeImageVersion": "string",
        "nodeLabels": "ManagedClusterAgentPoolProfilePropertiesNodeLabels",
        "nodePublicIPPrefixID": "string", "nodeTaints": "string[]",
        "orchestratorVersion": "string", "osDiskSizeGB": "int", "osDiskType": "string",
        "osSKU": "string", "osType": "string", "podIPAllocationMode": "string",
        "podSubnetID": "string", "powerState": "PowerState", "provisioningState": "string",
        "proximityPlacementGroupID": "string", "scaleDownMode": "string",
        "scaleSetEvictionPolicy": "string", "scaleSetPriority": "string",
        "securityProfile": "AgentPoolSecurityProfile", "spotMaxPrice": "int",
        "status": "AgentPoolStatus", "tags": "ManagedClusterAgentPoolProfilePropertiesTags",
        "type": "string", "upgradeSettings": "AgentPoolUpgradeSettings",
        "virtualMachineNodesStatus": "[VirtualMachineNodes]",
        "virtualMachinesProfile": "VirtualMachinesProfile", "vmSize": "string",
        "vnetSubnetID": "string", "windowsProfile": "AgentPoolWindowsProfile",
        "workloadRuntime": "string",
    },
    "GPUProfile": {"driver": "string"},
    # registries@2025-11-01 (issue 20)
    "Microsoft.ContainerRegistry/registries": {
        "identity": "IdentityProperties", "location": "string", "name": "string",
        "properties": "RegistryProperties", "sku": "Sku", "tags": "TrackedResourceTags",
    },
    "RegistryProperties": {
        "adminUserEnabled": "bool", "anonymousPullEnabled": "bool", "creationDate": "string",
        "dataEndpointEnabled": "bool", "dataEndpointHostNames": "string[]",
        "encryption": "EncryptionProperty", "loginServer": "string",
        "networkRuleBypassAllowedForTasks": "bool", "networkRuleBypassOptions": "string",
        "networkRuleSet": "NetworkRuleSet", "policies": "Policies",
        "privateEndpointConnections": "[PrivateEndpointConnection]",
        "provisioningState": "string", "publicNetworkAccess": "string",
        "roleAssignmentMode": "string", "status": "Status", "zoneRedundancy": "string",
    },
    "Sku": {"name": "string", "tier": "string"},
}
REQUIRED = {
    "Microsoft.Graph/applications": {"uniqueName", "displayName"},
    "Microsoft.Graph/applications/federatedIdentityCredentials": {
        "name", "issuer", "subject", "audiences"},
    "Microsoft.Graph/servicePrincipals": {"appId"},
    "MicrosoftGraphRelationship": {"relationships"},
    "ManagedClusterAddonProfile": {"enabled"},
    "Microsoft.ContainerService/managedClusters/agentPools": {"name"},
    "Microsoft.ContainerRegistry/registries": {"name", "location", "sku"},
    "Sku": {"name"},
}
# Read-only in the published types: never set (a deployment refuses or ignores them).
READ_ONLY = {
    "Microsoft.Graph/applications": {"appId", "applicationTemplateId", "certification",
                                     "createdDateTime", "deletedDateTime", "id",
                                     "publisherDomain"},
    "Microsoft.Graph/servicePrincipals": {"appOwnerOrganizationId", "applicationTemplateId",
                                          "deletedDateTime", "id", "signInAudience",
                                          "resourceSpecificApplicationPermissions"},
    "ManagedClusterIngressProfileWebAppRouting": {"identity"},
    "ManagedClusterAddonProfile": {"identity"},
    "ManagedClusterAgentPoolProfileProperties": {
        "currentOrchestratorVersion", "eTag", "nodeImageVersion", "provisioningState"},
    "RegistryProperties": {"creationDate", "dataEndpointHostNames", "loginServer",
                           "privateEndpointConnections", "provisioningState", "status"},
    "Sku": {"tier"},
}
# Enumerations the types give as string unions or in their descriptions.
ALLOWED = {
    ("Microsoft.Graph/applications", "signInAudience"): {
        "AzureADMyOrg", "AzureADMultipleOrgs", "AzureADandPersonalMicrosoftAccount",
        "PersonalMicrosoftAccount"},
    ("Microsoft.Graph/applications", "groupMembershipClaims"): {"None", "SecurityGroup", "All"},
    ("MicrosoftGraphPermissionScope", "type"): {"User", "Admin"},
    ("MicrosoftGraphRelationship", "relationshipSemantics"): {"append", "replace"},
    ("ManagedClusterIngressProfileNginx", "defaultIngressControllerType"): {
        "AnnotationControlled", "External", "Internal", "None"},
    ("ManagedClusterAgentPoolProfileProperties", "mode"): {"Gateway", "System", "User"},
    ("ManagedClusterAgentPoolProfileProperties", "osType"): {"Linux", "Windows"},
    ("ManagedClusterAgentPoolProfileProperties", "type"): {
        "AvailabilitySet", "VirtualMachineScaleSets", "VirtualMachines"},
    ("ManagedClusterAgentPoolProfileProperties", "scaleSetPriority"): {"Regular", "Spot"},
    ("ManagedClusterAgentPoolProfileProperties", "scaleSetEvictionPolicy"): {
        "Deallocate", "Delete"},
    ("GPUProfile", "driver"): {"Install", "None"},
    ("Sku", "name"): {"Basic", "Classic", "Premium", "Standard"},
    ("RegistryProperties", "publicNetworkAccess"): {"Disabled", "Enabled"},
    ("RegistryProperties", "roleAssignmentMode"): {
        "AbacRepositoryPermissions", "LegacyRegistryPermissions"},
}
# The keys of ManagedClusterAddonProfileConfig are free-form strings; the secrets
# provider add-on reads these two (AKS's add-on documentation).
SECRETS_PROVIDER_CONFIG = {"enableSecretRotation", "rotationPollInterval"}


def _kind_ok(kind: str, value: Any, tpl: dict[str, Any]) -> bool:
    """What the parse can tell about a value against its declared kind: literals are
    checked; expressions (parameters, references, ternaries) are taken on trust."""
    if isinstance(value, bool):
        return kind == "bool"
    if isinstance(value, int):
        return kind == "int"
    if isinstance(value, str) and value not in R.symbols(tpl) and "${" not in value:
        return kind == "string"
    if isinstance(value, list):
        return kind.endswith("[]") or kind.startswith("[")
    return True


def type_problems(type_name: str, node: Any, tpl: dict[str, Any], path: str) -> list[str]:
    if not isinstance(node, dict) or "operator" in node or "function" in node:
        return []
    props = TYPES[type_name]
    bad = [f"{path}: {type_name} requires {key}"
           for key in sorted(REQUIRED.get(type_name, set()) - set(node))]
    for key, value in node.items():
        if key == "depends_on":  # pycep's record of a nested resource's parent
            continue
        where = f"{path}.{key}"
        if key in READ_ONLY.get(type_name, set()):
            bad.append(f"{where}: read-only in {type_name}")
            continue
        if key not in props:
            bad.append(f"{where}: {type_name} has no property {key}")
            continue
        kind = props[key]
        if not _kind_ok(kind, value, tpl):
            bad.append(f"{where}: {value!r} is not a {kind}")
            continue
        allowed = ALLOWED.get((type_name, key))
        if (allowed and isinstance(value, str) and value not in R.symbols(tpl)
                and value not in allowed):
            bad.append(f"{where}: {value!r} is not one of {sorted(allowed)}")
        inner = kind.strip("[]")
        if inner in TYPES:
            items = value if kind.startswith("[") and isinstance(value, list) else [value]
            for i, item in enumerate(items):
                at = f"{where}[{i}]" if kind.startswith("[") else where
                bad += type_problems(inner, item, tpl, at)
    return bad


def graph_resources() -> list[tuple[Path, str, dict[str, Any], dict[str, Any]]]:
    found = []
    for path in (SIGNIN, SIGNIN_API):
        tpl = R.parse_file(path)
        for name, res in (tpl.get("resources") or {}).items():
            found.append((path, name, res, tpl))
    return found


def test_graph_extension_is_pinned_to_the_types_checked_here():
    import json

    config = json.loads((R.BICEP_DIR / "bicepconfig.json").read_text())
    assert config["extensions"] == {"microsoftGraphV1": GRAPH_EXTENSION}
    for path in (SIGNIN, SIGNIN_API):
        assert R.parse_file(path)["extensions"] == {"microsoftGraphV1": {}}, path.name
    # Only the Graph modules declare the extension.
    others = set(R.bicep_files()) - {SIGNIN, SIGNIN_API}
    assert all(not R.parse_file(p).get("extensions") for p in others)


def test_graph_resources_match_the_published_types():
    seen = set()
    problems = []
    for path, name, res, tpl in graph_resources():
        rtype = R.resource_type(res)
        assert res["api_version"] == "v1.0", name
        seen.add(rtype)
        problems += type_problems(rtype, R.body(res), tpl, f"{path.name}:{name}")
    assert problems == []
    assert seen == {"Microsoft.Graph/applications", "Microsoft.Graph/servicePrincipals",
                    "Microsoft.Graph/applications/federatedIdentityCredentials"}


def test_aks_access_properties_match_the_published_types():
    aks = R.parse_file(AKS)
    (_, cluster), = R.resources(aks, "ContainerService/managedClusters")
    assert cluster["api_version"] == "2025-07-01"
    props = R.body(cluster)["properties"]
    assert type_problems("ManagedClusterIngressProfile", props["ingressProfile"], aks,
                         "ingressProfile") == []
    addon = props["addonProfiles"]["azureKeyvaultSecretsProvider"]
    assert type_problems("ManagedClusterAddonProfile", addon, aks, "addon") == []
    for branch in ("true_value", "false_value"):
        config = addon["config"]["operator"]["operands"][branch]
        assert config is None or (set(config) == SECRETS_PROVIDER_CONFIG
                                  and all(isinstance(v, str) for v in config.values()))
    nginx = props["ingressProfile"]["webAppRouting"]["nginx"]["operator"]["operands"]
    assert type_problems("ManagedClusterIngressProfileNginx", nginx["true_value"], aks,
                         "nginx") == []


@pytest.mark.parametrize("snippet, problem", [
    ("groupMembershipClaims: 'Groups'", "'Groups' is not one of"),
    ("appId: 'x'", "read-only in Microsoft.Graph/applications"),
    ("redirectUris: ['https://x']", "has no property redirectUris"),
    ("isFallbackPublicClient: 'yes'", "'yes' is not a bool"),
])
def test_the_type_check_catches_mistakes(snippet: str, problem: str):
    tpl = R.parse_text(f"""
resource app 'Microsoft.Graph/applications@v1.0' = {{
  uniqueName: 'u'
  displayName: 'd'
  {snippet}
}}
""")
    problems = type_problems("Microsoft.Graph/applications", R.body(tpl["resources"]["app"]),
                             tpl, "app")
    assert len(problems) == 1 and problem in problems[0], problems
    missing = R.parse_text("resource sp 'Microsoft.Graph/servicePrincipals@v1.0' = {\n}\n")
    assert type_problems("Microsoft.Graph/servicePrincipals",
                         R.body(missing["resources"]["sp"]), missing, "sp") == [
        "sp: Microsoft.Graph/servicePrincipals requires appId"]


# --- the app registration ------------------------------------------------------------------


def _graph(path: Path, name: str = "app") -> tuple[dict[str, Any], dict[str, Any]]:
    tpl = R.parse_file(path)
    return tpl, R.body(tpl["resources"][name])


def test_app_is_single_tenant_with_the_proxy_redirect_and_security_groups():
    tpl, app = _graph(SIGNIN)
    assert app["signInAudience"] == "AzureADMyOrg"
    assert app["groupMembershipClaims"] == "SecurityGroup"
    (uri,) = app["web"]["redirectUris"]
    assert R.evaluate(uri, tpl, {"host": "metaflow.example.com"}) == (
        "https://metaflow.example.com/oauth2/callback")
    assert app["web"]["implicitGrantSettings"] == {
        "enableIdTokenIssuance": False, "enableAccessTokenIssuance": False}
    assert "passwordCredentials" not in app and "keyCredentials" not in app
    assert app["owners"]["relationships"] == ["ownerPrincipalId"]


AKS_SERVER_APP = "6dae42f8-4368-4678-94ff-3960e28e3630"  # Azure Kubernetes Service AAD Server
AKS_USER_READ = "34a47c2f-cd0d-47b4-a93c-2c41130c671c"   # its delegated scope user.read


def test_app_declares_the_aks_scope_the_proxy_asks_for():
    """The chart's entra-id proxy asks for <AKS server app>/user.read (the Argo server acts
    with that token); the app declares it so an admin can consent once for the tenant."""
    tpl, app = _graph(SIGNIN)
    declared = R.evaluate(app["requiredResourceAccess"], tpl, {})
    access = {r["resourceAppId"]: r["resourceAccess"] for r in declared}
    assert {"id": AKS_USER_READ, "type": "Scope"} in access[AKS_SERVER_APP]
    assert all(a["type"] == "Scope" for rs in access.values() for a in rs)  # delegated only
    chart_values = (R.BICEP_DIR.parent / "charts/metaflow/values.yaml").read_text()
    assert f"{AKS_SERVER_APP}/user.read" in chart_values


def test_proxy_service_account_is_the_federated_credential():
    tpl, fic = _graph(SIGNIN, "app__proxyCredential")
    assert R.nested("app__proxyCredential", tpl)
    assert fic["audiences"] == ["api://AzureADTokenExchange"]
    assert (fic["issuer"], fic["subject"]) == ("oidcIssuerUrl", "serviceAccountSubject")
    assert fic["name"] == "${app.uniqueName}/metaflow-signin"
    _, sp = _graph(SIGNIN, "servicePrincipal")
    assert sp["appId"] == R._property("app", "appId")


def test_api_is_exposed_on_api_app_id_with_v2_tokens_and_the_cli_preauthorized():
    tpl, app = _graph(SIGNIN_API)
    # The same app as signin.bicep's (same uniqueName), written a second time once its
    # appId exists; displayName is required in every declaration.
    assert (app["uniqueName"], app["displayName"]) == ("uniqueName", "displayName")
    env = {"uniqueName": "acme-metaflow-signin-abc123", "displayName": "d",
           "appId": "11111111-2222-3333-4444-555555555555"}
    assert R.evaluate(app["identifierUris"], tpl, env) == [
        "api://11111111-2222-3333-4444-555555555555"]
    api = app["api"]
    assert api["requestedAccessTokenVersion"] == 2
    (scope,) = api["oauth2PermissionScopes"]
    assert (scope["value"], scope["type"], scope["isEnabled"]) == (
        "user_impersonation", "User", True)
    (pre,) = api["preAuthorizedApplications"]
    assert R.evaluate(pre["appId"], tpl, env) == AZURE_CLI_APP_ID
    assert pre["delegatedPermissionIds"] == [scope["id"]]
    # The scope id is derived from the immutable unique name: the same on every deploy.
    guid = tpl["variables"][scope["id"]]["value"]["function"]
    assert guid["type"] == "guid" and guid["parameters"] == {
        "base_string": "uniqueName", "extra_string_1": "user_impersonation"}


def test_first_declaration_leaves_the_api_to_the_second():
    """Graph upserts by uniqueName and writes only what a declaration names: the first
    declaration must not name api/identifierUris, or a re-deploy would briefly send an
    api without the enabled scope, which Graph refuses."""
    _, first = _graph(SIGNIN)
    assert "api" not in first and "identifierUris" not in first
    tpl = R.parse_file(SIGNIN)
    (call,) = tpl["modules"].values()
    params = R.body(call)["params"]
    assert params["appId"] == R._property("app", "appId")
    assert params["uniqueName"] == "uniqueName"
    assert tpl["outputs"]["clientId"]["value"] == R._property("app", "appId")


# --- main.bicep: which case applies ----------------------------------------------------------

HOST = "metaflow.example.com"
CLIENT = "0a1b2c3d-0000-4000-8000-00000000abcd"
VAULT_ID = ("/subscriptions/aaaaaaaa-1111-2222-3333-444444444444/resourceGroups/certs-rg/"
            "providers/Microsoft.KeyVault/vaults/AcmeCerts")
CERT = "https://acmecerts.vault.azure.net/certificates/metaflow-tls"


@pytest.fixture(scope="module")
def main() -> dict[str, Any]:
    return R.parse_file(MAIN)


def env(**over: Any) -> dict[str, Any]:
    params = R.parse_file(MAIN)["parameters"]
    base = {name: p.get("default") for name, p in params.items()
            if name.startswith("access") or name in ("releaseName", "serviceNamespace")}
    return base | over


def ev(main: dict[str, Any], node: Any, **over: Any) -> Any:
    return R.evaluate(node, main, env(**over))


def test_access_parameters_default_to_off(main):
    params = main["parameters"]
    assert {n: params[n]["default"] for n in params if n.startswith("access")} == {
        "accessHost": "", "accessClientId": "", "accessTlsCertificateId": "",
        "accessTlsVaultId": ""}
    assert params["releaseName"]["default"] == "metaflow"
    assert ev(main, "accessEnabled") is False
    assert ev(main, "createSigninApp") is False
    assert ev(main, "tlsFromKeyVault") is False
    assert ev(main, main["outputs"]["signinClientId"]["value"]) == ""
    assert ev(main, main["outputs"]["appRoutingEnabled"]["value"]) is False
    aks = R.body(main["modules"]["aks"])["params"]
    assert aks["appRoutingEnabled"] == "accessEnabled"
    assert aks["keyVaultSecretsProviderEnabled"] == "tlsFromKeyVault"


def test_a_host_alone_creates_the_app(main):
    assert ev(main, "createSigninApp", accessHost=HOST) is True
    assert R.condition(main["modules"]["signin"]) == "createSigninApp"
    out = main["outputs"]["signinClientId"]["value"]["operator"]["operands"]
    assert out["condition"] == "createSigninApp"
    assert out["true_value"] == R._property("signin", R._property("outputs", "clientId"))
    assert ev(main, main["outputs"]["appRoutingEnabled"]["value"], accessHost=HOST) is True
    assert ev(main, "tlsFromKeyVault", accessHost=HOST) is False


def test_an_existing_client_id_passes_through_and_creates_nothing(main):
    over = {"accessHost": HOST, "accessClientId": CLIENT}
    assert ev(main, "createSigninApp", **over) is False
    assert ev(main, main["outputs"]["signinClientId"]["value"], **over) == CLIENT


def test_signin_module_gets_host_issuer_subject_and_a_per_stack_unique_name(main):
    params = R.body(main["modules"]["signin"])["params"]
    assert params["host"] == "checkedAccessHost"
    assert params["oidcIssuerUrl"] == R._property("aks", R._property("outputs",
                                                                     "oidcIssuerUrl"))
    assert ev(main, params["serviceAccountSubject"], serviceNamespace="mf",
              releaseName="prod") == "system:serviceaccount:mf:prod-signin"
    assert params["ownerPrincipalId"] == "deployerPrincipalId"
    # The same orgPrefix in two subscriptions must not share (and take over) one app.
    assert "${take(nameSuffix, 6)}" in params["uniqueName"]
    assert params["uniqueName"].startswith("${checkedOrgPrefix}-")


def test_a_key_vault_certificate_grants_the_add_on_that_one_secret(main):
    over = {"accessHost": HOST, "accessTlsCertificateId": CERT, "accessTlsVaultId": VAULT_ID}
    assert ev(main, "tlsFromKeyVault", **over) is True
    mod = main["modules"]["tlsCertificateRole"]
    assert R.condition(mod) == "tlsFromKeyVault"
    cfg = R.body(mod)
    scope = cfg["scope"]["function"]
    assert scope["type"] == "resource_group"
    assert ev(main, scope["parameters"]["subscription_id"], **over) == (
        "aaaaaaaa-1111-2222-3333-444444444444")
    assert ev(main, scope["parameters"]["resource_group_name"], **over) == "certs-rg"
    assert ev(main, cfg["params"]["vaultName"], **over) == "acmecerts"
    assert ev(main, cfg["params"]["certificateName"], **over) == "metaflow-tls"
    versioned = over | {"accessTlsCertificateId": CERT + "/" + "0" * 32}
    assert ev(main, cfg["params"]["certificateName"], **versioned) == "metaflow-tls"
    assert cfg["params"]["principalId"] == R._property(
        "aks", R._property("outputs", "appRoutingPrincipalId"))


def test_the_add_on_identity_is_read_only_while_the_add_on_is_on():
    aks = R.parse_file(AKS)
    out = aks["outputs"]["appRoutingPrincipalId"]["value"]["operator"]["operands"]
    assert out["condition"] == "appRoutingEnabled" and out["false_value"] == ""
    for enabled in (True, False):
        props = R.body(dict(R.resources(aks, "managedClusters"))["aks"])["properties"]
        routing = R.evaluate(props["ingressProfile"], aks, {"appRoutingEnabled": enabled})
        assert routing["webAppRouting"]["enabled"] is enabled
        assert routing["webAppRouting"]["nginx"] == (
            {"defaultIngressControllerType": "External"} if enabled else None)
        addon = R.evaluate(props["addonProfiles"]["azureKeyvaultSecretsProvider"], aks,
                           {"keyVaultSecretsProviderEnabled": enabled})
        assert addon["enabled"] is enabled
        assert (addon["config"] is not None) is enabled


def test_the_role_is_key_vault_secrets_user_on_the_certificate_secret_only():
    tpl = R.parse_file(TLS_ROLE)
    (name, ra), = R.resources(tpl, "Microsoft.Authorization/roleAssignments")
    cfg = R.body(ra)
    assert cfg["scope"] == "certificateSecret"
    secret = tpl["resources"]["certificateSecret"]
    assert secret["existing"] and R.resource_type(secret) == "Microsoft.KeyVault/vaults/secrets"
    assert R.body(secret) == {"parent": "vault", "name": "certificateName"}
    assert tpl["variables"]["secretsUserRoleId"]["value"] == KEY_VAULT_SECRETS_USER
    assert cfg["properties"]["principalType"] == "ServicePrincipal"
    assert cfg["properties"]["principalId"] == "principalId"


@pytest.mark.parametrize("over, message", [
    ({"accessClientId": CLIENT}, "accessClientId and accessTlsCertificateId need accessHost"),
    ({"accessTlsCertificateId": CERT, "accessTlsVaultId": VAULT_ID},
     "accessClientId and accessTlsCertificateId need accessHost"),
    ({"accessHost": HOST, "accessTlsCertificateId": CERT}, 'accessTlsCertificateId "'),
    ({"accessHost": HOST, "accessTlsCertificateId": CERT,
      "accessTlsVaultId": VAULT_ID.replace("AcmeCerts", "othervault")},
     'accessTlsCertificateId "'),
    ({"accessHost": HOST, "accessTlsCertificateId": "https://acmecerts.vault.azure.net/keys/k",
      "accessTlsVaultId": VAULT_ID}, 'accessTlsCertificateId "'),
    ({"accessHost": HOST, "accessTlsCertificateId": CERT,
      "accessTlsVaultId": VAULT_ID.replace("Microsoft.KeyVault/vaults", "Microsoft.Web/sites")},
     'accessTlsCertificateId "'),
])
def test_inconsistent_access_parameters_fail_before_anything_is_created(main, over, message):
    with pytest.raises(R.Failed) as failed:
        ev(main, "accessEnabled", **over)
    assert failed.value.message.startswith(message)


def test_every_certificate_id_mfhelm_accepts_the_template_accepts(main):
    from mfhelm.settings import KEYVAULT_CERT_RE

    ids = [CERT, CERT + "/" + "a1" * 16, "https://a-b.vault.azure.net/certificates/X-1",
           "https://abc.vault.azure.net/certificates/" + "c" * 127]
    for cert in ids:
        assert KEYVAULT_CERT_RE.fullmatch(cert), cert
        vault = cert.split("/")[2].split(".")[0]
        vault_id = VAULT_ID.replace("AcmeCerts", vault)
        assert ev(main, "checkedAccessHost", accessHost=HOST, accessTlsCertificateId=cert,
                  accessTlsVaultId=vault_id) == HOST, cert


def test_nothing_reads_access_host_without_the_check(main):
    readers = {f"{kind} {name}" for kind, name, parts in R._declarations(main)
               if "accessHost" in set(R.refs(parts)) and name != "accessHost"}
    assert readers == {"variables accessHostGiven", "variables checkedAccessHost"}


# --- the offline linter twins and the new resource shapes ----------------------------------


def test_parent_property_rule_exempts_nested_and_graph_resources():
    tpl = R.parse_text("""
extension microsoftGraphV1

resource app 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: 'u'
  displayName: 'd'

  resource fic 'federatedIdentityCredentials@v1.0' = {
    name: '${app.uniqueName}/x'
    issuer: 'i'
    subject: 's'
    audiences: [
      'a'
    ]
  }
}

resource fic2 'Microsoft.Graph/applications/federatedIdentityCredentials@v1.0' = {
  name: '${app.uniqueName}/y'
  issuer: 'i'
  subject: 's'
  audiences: [
    'a'
  ]
}

resource sub 'Microsoft.Network/virtualNetworks/subnets@2025-09-01' = {
  name: 'v/s'
}
""")
    assert R.nested("app__fic", tpl) and not R.nested("fic2", tpl)
    assert R.parent_property_for_children(tpl) == [
        "sub: child named 'v/s'; use parent: and the child's own name"]


def test_secure_inputs_rule_knows_the_graph_types():
    for path, name, res, _ in graph_resources():
        assert R.resource_type(res).lower() in R.SECURE_INPUTS, (path.name, name)


def test_the_subject_is_the_same_in_bicep_mfhelm_deploy_and_doctor(main):
    """main.bicep builds the federated credential's subject from the parameters mfhelm
    deploy sends; doctor looks for the same subject on an existing app."""
    from mfhelm import doctor
    from mfhelm.bicep_deploy import build_parameters
    from mfhelm.settings import HelmSettings, parse

    assert main["parameters"]["releaseName"]["default"] == HelmSettings().release
    s = parse({"org_prefix": "acme", "location": "westeurope",
               "helm": {"release": "prod", "namespace": "mf"},
               "access": {"host": HOST, "tls_secret": "metaflow-tls"}})
    sent = {k: v["value"] for k, v in build_parameters(
        s, "3f2b8c1e-6a4d-4e1f-9b7a-2c5d8e9f0a1b")["parameters"].items()}
    subject = R.body(main["modules"]["signin"])["params"]["serviceAccountSubject"]
    assert R.evaluate(subject, main, sent) == doctor.signin_subject(s) == (
        "system:serviceaccount:mf:prod-signin")
    assert R.evaluate("createSigninApp", main, sent) is True
