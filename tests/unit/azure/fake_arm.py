"""A local HTTPS stand-in for Azure's control plane and Key Vault.

It answers with payloads shaped like the Azure REST API, so the real SDK
clients (with their auth, retry and deserialization policies) run end to end
against it. Azure SDKs refuse to send bearer tokens over plain HTTP, hence
HTTPS with a certificate made per test session.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

SUB = "00000000-1111-2222-3333-444444444444"
TENANT = "99999999-8888-7777-6666-555555555555"
TOKEN = "fake-arm-token"
KV_TOKEN = "fake-kv-token"
GRAPH_TOKEN = "fake-graph-token"
ARM_SCOPE = "https://management.azure.com/.default"
KV_SCOPE = "https://vault.azure.net/.default"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"


class FakeCredential:
    """The azure-core TokenCredential protocol, handing out fixed tokens per scope."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.requests: list[tuple[tuple[str, ...], str | None]] = []

    def get_token(self, *scopes: str, tenant_id: str | None = None, **_: Any) -> AccessToken:
        self.requests.append((scopes, tenant_id))
        if self.fail:
            raise ClientAuthenticationError("AADSTS700082: The refresh token has expired")
        token = KV_TOKEN if KV_SCOPE in scopes else GRAPH_TOKEN if GRAPH_SCOPE in scopes \
            else TOKEN
        return AccessToken(token, int(time.time()) + 3600)


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any = None


Handler = Callable[[Recorded], tuple[int, Any]]


@dataclass
class FakeAzure:
    base_url: str = ""
    ca_file: Path | None = None
    # (METHOD, path) -> (status, json body) or a function of the request
    routes: dict[tuple[str, str], tuple[int, Any] | Handler] = field(default_factory=dict)
    # (METHOD, regular expression over the lower-cased path) -> handler, tried
    # in order when no exact route matches: for resources named by the caller.
    patterns: list[tuple[str, re.Pattern[str], Handler]] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)

    def route(self, method: str, path: str, status: int = 200, body: Any = None) -> None:
        self.routes[(method.upper(), path.rstrip("/").lower())] = (status, body)

    def handle(self, method: str, path: str, fn: Handler) -> None:
        self.routes[(method.upper(), path.rstrip("/").lower())] = fn

    def handle_pattern(self, method: str, pattern: str, fn: Handler) -> None:
        self.patterns.append((method.upper(), re.compile(pattern, re.IGNORECASE), fn))

    def calls(self, path_contains: str) -> list[Recorded]:
        return [r for r in self.requests if path_contains.lower() in r.path.lower()]


def arm_error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _make_handler(fake: FakeAzure) -> type[BaseHTTPRequestHandler]:
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-ms-request-id", "fake-request")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            rec = Recorded(self.command, path, parse_qs(parts.query), dict(self.headers.items()),
                           body)
            fake.requests.append(rec)
            auth = self.headers.get("Authorization", "")
            if path.startswith("/secrets/"):
                # Key Vault answers an unauthenticated request with a challenge naming
                # the tenant and resource; the SDK then asks for a token and retries.
                if auth != f"Bearer {KV_TOKEN}":
                    challenge = (
                        f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", '
                        'resource="https://vault.azure.net"'
                    )
                    self._reply(
                        401,
                        arm_error("Unauthorized", "AKV10000: Request is missing a Bearer token."),
                        {"WWW-Authenticate": challenge},
                    )
                    return
            elif path.startswith("/v1.0/"):
                # Microsoft Graph: a token for Graph's audience, never ARM's.
                if auth != f"Bearer {GRAPH_TOKEN}":
                    self._reply(401, {"error": {
                        "code": "InvalidAuthenticationToken",
                        "message": "Access token validation failure. Invalid audience."}})
                    return
            elif auth != f"Bearer {TOKEN}":
                self._reply(
                    401,
                    arm_error("AuthenticationFailed", "Authentication failed."),
                    {"WWW-Authenticate": 'Bearer authorization_uri="https://login.windows.net/", '
                     'error="invalid_token"'},
                )
                return
            entry = fake.routes.get((self.command, path.rstrip("/").lower()))
            if entry is None:
                entry = next((fn for method, regex, fn in fake.patterns
                              if method == self.command
                              and regex.fullmatch(path.rstrip("/"))), None)
            if entry is None:
                self._reply(501, arm_error("NoRouteInFake", f"{self.command} {path}"))
                return
            status, body = entry(rec) if callable(entry) else entry
            self._reply(status, body)

        do_GET = _serve
        do_POST = _serve
        do_PUT = _serve
        do_DELETE = _serve

    return H


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-azure.localhost")])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "fake-azure.pem", tmp / "fake-azure.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def serve(tmp: Path) -> Iterator[FakeAzure]:
    """Run a FakeAzure on 127.0.0.1 (random port) until the generator is closed."""
    cert_file, key_file = _self_signed(tmp)
    fake = FakeAzure(ca_file=cert_file)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(fake))
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    fake.base_url = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- payloads shaped like the Azure REST API -------------------------------------------

def deployment_outputs_path(name: str, sub: str = SUB) -> str:
    return f"/subscriptions/{sub}/providers/Microsoft.Resources/deployments/{name}"


def sample_outputs(prefix: str = "acme") -> dict[str, Any]:
    """Flat outputs as bicep/main.bicep produces them for org prefix `prefix`."""
    return {
        "resourceGroupName": f"{prefix}-metaflow-rg",
        "location": "westeurope",
        "tenantId": TENANT,
        "subscriptionId": SUB,
        "aksClusterName": f"{prefix}-metaflow-aks",
        "aksOidcIssuerUrl": "https://westeurope.oic.prod-aks.azure.com/t/i/",
        "identityName": f"{prefix}-metaflow-id",
        "identityClientId": "12345678-aaaa-bbbb-cccc-1234567890ab",
        "storageAccountName": f"{prefix}mfstore1234567",
        "storageBlobEndpoint": f"https://{prefix}mfstore1234567.blob.core.windows.net/",
        "metaflowContainerName": "metaflow-storage",
        "airflowLogsContainerName": "",
        "postgresServerName": f"{prefix}-metaflow-pg",
        "postgresFqdn": f"{prefix}-metaflow-pg.postgres.database.azure.com",
        "postgresDatabaseName": "metaflow",
        "postgresAdminLogin": "mfadmin",
        "keyVaultName": f"{prefix}-mf-kv",
        "keyVaultUri": f"https://{prefix}-mf-kv.vault.azure.net/",
        "postgresAdminSecretName": "postgres-admin-password",
        "serviceNamespace": "metaflow",
        "flowNamespace": "metaflow-flows",
        "serviceAccountService": "metaflow-service",
        "serviceAccountFlows": "metaflow-flows",
        "serviceAccountAirflow": "metaflow-airflow",
        "taskworkersLabelKey": "mfhelm.io/pool",
        "taskworkersLabelValue": "taskworkers",
        "deployArgo": True,
        "deployAirflow": False,
    }


def arm_outputs(flat: dict[str, Any]) -> dict[str, Any]:
    """Flat outputs in ARM's `{name: {type, value}}` shape."""
    return {
        k: {"type": "Bool" if isinstance(v, bool) else "String", "value": v}
        for k, v in flat.items()
    }


def deployment_body(
    name: str,
    outputs: dict[str, Any] | None,
    state: str = "Succeeded",
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    props: dict[str, Any] = {
        "templateHash": "1234567890",
        "mode": "Incremental",
        "provisioningState": state,
        "timestamp": "2026-01-05T10:00:00.0000000Z",
        "duration": "PT9M12.5S",
        "correlationId": "aaaaaaaa-0000-0000-0000-000000000000",
        "providers": [],
        "dependencies": [],
    }
    if outputs is not None:
        props["outputs"] = arm_outputs(outputs)
    if error is not None:
        props["error"] = error
    return {
        "id": deployment_outputs_path(name),
        "name": name,
        "type": "Microsoft.Resources/deployments",
        "location": "westeurope",
        "properties": props,
    }


def provider_body(namespace: str, state: str = "Registered") -> dict[str, Any]:
    return {
        "id": f"/subscriptions/{SUB}/providers/{namespace}",
        "namespace": namespace,
        "registrationState": state,
        "registrationPolicy": "RegistrationRequired",
        "resourceTypes": [],
    }


def vm_sku(
    name: str,
    family: str,
    vcpus: int,
    location: str = "westeurope",
    restrictions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "resourceType": "virtualMachines",
        "name": name,
        "tier": "Standard",
        "size": name.removeprefix("Standard_"),
        "family": family,
        "locations": [location],
        "locationInfo": [{"location": location, "zones": ["1", "2", "3"], "zoneDetails": []}],
        "capabilities": [
            {"name": "vCPUs", "value": str(vcpus)},
            {"name": "MemoryGB", "value": str(vcpus * 4)},
            {"name": "vCPUsAvailable", "value": str(vcpus)},
        ],
        "restrictions": restrictions or [],
    }


def location_restriction(location: str = "westeurope") -> dict[str, Any]:
    return {
        "type": "Location",
        "values": [location],
        "restrictionInfo": {"locations": [location]},
        "reasonCode": "NotAvailableForSubscription",
    }


def zone_restriction(zones: list[str], location: str = "westeurope") -> dict[str, Any]:
    return {
        "type": "Zone",
        "values": [location],
        "restrictionInfo": {"locations": [location], "zones": zones},
        "reasonCode": "NotAvailableForSubscription",
    }


def usage(name: str, localized: str, current: int, limit: int) -> dict[str, Any]:
    return {
        "unit": "Count",
        "currentValue": current,
        "limit": limit,
        "name": {"value": name, "localizedValue": localized},
    }


def pg_capabilities(
    versions: list[str],
    skus_by_tier: dict[str, list[str]],
    restricted: str = "Disabled",
) -> dict[str, Any]:
    editions = [
        {
            "name": tier,
            "defaultSkuName": skus[0] if skus else "",
            "supportedStorageEditions": [
                {"name": "ManagedDisk", "defaultStorageSizeMb": 32768, "status": "Default"}
            ],
            "supportedServerSkus": [
                {
                    "name": s, "vCores": 2, "supportedIops": 3200,
                    "supportedMemoryPerVcoreMb": 4096, "supportedZones": ["1", "2", "3"],
                    "supportedHaMode": ["SameZone", "ZoneRedundant"], "status": "Available",
                }
                for s in skus
            ],
            "status": "Available",
        }
        for tier, skus in skus_by_tier.items()
    ]
    return {
        "value": [
            {
                "name": "FlexibleServerCapabilities",
                "supportedServerEditions": editions,
                "supportedServerVersions": [
                    {"name": v, "supportedVersionsToUpgrade": [], "status": "Available"}
                    for v in versions
                ],
                "fastProvisioningSupported": "Enabled",
                "geoBackupSupported": "Enabled",
                "zoneRedundantHaSupported": "Enabled",
                "zoneRedundantHaAndGeoBackupSupported": "Enabled",
                "storageAutoGrowthSupported": "Enabled",
                "onlineResizeSupported": "Enabled",
                "restricted": restricted,
                "status": "Available",
            }
        ]
    }


def kubeconfig_body(kubeconfig: bytes) -> dict[str, Any]:
    return {
        "kubeconfigs": [
            {"name": "clusterUser", "value": base64.b64encode(kubeconfig).decode()}
        ]
    }


def secret_body(vault_url: str, name: str, value: str) -> dict[str, Any]:
    return {
        "value": value,
        "id": f"{vault_url.rstrip('/')}/secrets/{name}/0123456789abcdef0123456789abcdef",
        "attributes": {
            "enabled": True,
            "created": 1767607200,
            "updated": 1767607200,
            "recoveryLevel": "Recoverable+Purgeable",
            "recoverableDays": 90,
        },
        "tags": {},
    }


# --- a whole subscription, healthy unless a test changes one answer ----------------------

PROVIDERS = (
    "Microsoft.ContainerService",
    "Microsoft.DBforPostgreSQL",
    "Microsoft.Storage",
    "Microsoft.KeyVault",
    "Microsoft.ManagedIdentity",
    "Microsoft.Network",
    "Microsoft.Compute",
    "Microsoft.ContainerRegistry",
)


def skus_path(sub: str = SUB) -> str:
    return f"/subscriptions/{sub}/providers/Microsoft.Compute/skus"


def usages_path(location: str, sub: str = SUB) -> str:
    return f"/subscriptions/{sub}/providers/Microsoft.Compute/locations/{location}/usages"


def pg_capabilities_path(location: str, sub: str = SUB) -> str:
    return (
        f"/subscriptions/{sub}/providers/Microsoft.DBforPostgreSQL/locations/{location}"
        "/capabilities"
    )


def default_skus(location: str = "westeurope") -> list[dict[str, Any]]:
    return [
        vm_sku("Standard_D2s_v5", "standardDSv5Family", 2, location),
        vm_sku("Standard_D4s_v5", "standardDSv5Family", 4, location),
        vm_sku("Standard_E4s_v5", "standardESv5Family", 4, location),
        vm_sku("Standard_B2s", "standardBSFamily", 2, location),
    ]


def default_usages() -> list[dict[str, Any]]:
    return [
        usage("availabilitySets", "Availability Sets", 0, 2500),
        usage("cores", "Total Regional vCPUs", 4, 100),
        usage("standardDSv5Family", "Standard DSv5 Family vCPUs", 4, 100),
        usage("standardESv5Family", "Standard ESv5 Family vCPUs", 0, 10),
        usage("standardBSFamily", "Standard BS Family vCPUs", 0, 10),
    ]


def serve_skus(fake: FakeAzure, skus: list[dict[str, Any]]) -> None:
    """The SKU list, split over two pages the way ARM pages long lists."""
    half = len(skus) // 2

    def answer(req: Recorded) -> tuple[int, Any]:
        if req.query.get("page") == ["2"]:
            return 200, {"value": skus[half:]}
        next_link = f"{fake.base_url}{skus_path()}?api-version=2021-07-01&page=2"
        return 200, {"value": skus[:half], "nextLink": next_link}

    fake.handle("GET", skus_path(), answer)


def healthy_subscription(fake: FakeAzure, location: str = "westeurope") -> None:
    for ns in PROVIDERS:
        fake.route("GET", f"/subscriptions/{SUB}/providers/{ns}", 200, provider_body(ns))
    serve_skus(fake, default_skus(location))
    fake.route("GET", usages_path(location), 200, {"value": default_usages()})
    fake.route(
        "GET", pg_capabilities_path(location), 200,
        pg_capabilities(
            ["13", "14", "15", "16", "17"],
            {
                "Burstable": ["Standard_B1ms", "Standard_B2s"],
                "GeneralPurpose": ["Standard_D2ds_v5", "Standard_D4ds_v5"],
                "MemoryOptimized": ["Standard_E2ds_v5"],
            },
        ),
    )


# --- Microsoft Graph (issue 18: doctor's sign-in app rows) ---------------------------------
# Served from the same HTTPS server under /v1.0, shaped like Graph v1.0's answers: single
# objects with @odata.context, collections as {"value": [...]} with @odata.nextLink pages,
# errors as {"error": {"code", "message"}}.

GRAPH_CONTEXT = "https://graph.microsoft.com/v1.0/$metadata"


def graph_error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message,
                      "innerError": {"request-id": "fake-request", "date": "2026-01-01T00:00:00"}}}


def authorization_policy(allowed_to_create_apps: bool) -> dict[str, Any]:
    return {
        "@odata.context": f"{GRAPH_CONTEXT}#policies/authorizationPolicy/$entity",
        "id": "authorizationPolicy",
        "displayName": "Authorization Policy",
        "allowInvitesFrom": "everyone",
        "allowedToUseSSPR": True,
        "blockMsolPowerShell": False,
        "defaultUserRolePermissions": {
            "allowedToCreateApps": allowed_to_create_apps,
            "allowedToCreateSecurityGroups": True,
            "allowedToCreateTenants": True,
            "allowedToReadBitlockerKeysForOwnedDevice": True,
            "allowedToReadOtherUsers": True,
        },
    }


def directory_role(name: str, template_id: str) -> dict[str, Any]:
    return {"@odata.type": "#microsoft.graph.directoryRole", "id": f"role-{template_id[:8]}",
            "displayName": name, "roleTemplateId": template_id}


def group_membership(name: str) -> dict[str, Any]:
    return {"@odata.type": "#microsoft.graph.group", "id": f"group-{name}", "displayName": name}


def application(app_id: str, object_id: str, name: str = "Metaflow sign-in", *,
                redirect_uris: list[str] | None = None, identifier_uris: list[str] | None = None,
                token_version: int | None = 2,
                group_claims: str | None = "SecurityGroup") -> dict[str, Any]:
    return {
        "@odata.context": f"{GRAPH_CONTEXT}#applications(id,appId,displayName,web,api,"
                          "identifierUris,groupMembershipClaims)/$entity",
        "id": object_id, "appId": app_id, "displayName": name,
        "identifierUris": identifier_uris if identifier_uris is not None
        else [f"api://{app_id}"],
        "groupMembershipClaims": group_claims,
        "web": {"homePageUrl": None, "logoutUrl": None,
                "redirectUris": redirect_uris or [],
                "implicitGrantSettings": {"enableAccessTokenIssuance": False,
                                          "enableIdTokenIssuance": False},
                "redirectUriSettings": [{"uri": u, "index": None}
                                        for u in redirect_uris or []]},
        "api": {"acceptMappedClaims": None, "knownClientApplications": [],
                "requestedAccessTokenVersion": token_version,
                "oauth2PermissionScopes": [], "preAuthorizedApplications": []},
    }


def federated_credential(subject: str, issuer: str = "https://oidc.example/abc/") -> dict[str, Any]:
    return {"id": f"fic-{abs(hash(subject)) % 10_000}", "name": "metaflow-signin",
            "issuer": issuer, "subject": subject, "description": None,
            "audiences": ["api://AzureADTokenExchange"]}


def serve_graph(fake: FakeAzure, *, allowed_to_create_apps: bool | None = True,
                roles: list[dict[str, Any]] | None = None, service_principal: bool = False,
                applications: list[dict[str, Any]] | None = None,
                credentials: dict[str, list[dict[str, Any]]] | None = None,
                missing: list[str] | None = None) -> None:
    """Graph as `mfhelm doctor` reads it. `allowed_to_create_apps=None` answers the policy
    with 403 (a user Graph will not show it to); `service_principal` answers /me with the
    400 Graph gives an app-only token; memberOf comes back in two pages; ids in `missing`
    get Graph's 404 by client id and by object id."""
    memberships = [group_membership("data-science"), *(roles or [])]

    def member_of(req: Recorded) -> tuple[int, Any]:
        if service_principal:
            return 400, graph_error("BadRequest", "/me request is only valid with delegated "
                                    "authentication flow.")
        if req.query.get("$skiptoken") == ["page2"]:
            return 200, {"@odata.context": f"{GRAPH_CONTEXT}#directoryObjects",
                         "value": memberships[1:]}
        return 200, {"@odata.context": f"{GRAPH_CONTEXT}#directoryObjects",
                     "value": memberships[:1],
                     "@odata.nextLink": f"{fake.base_url}/v1.0/me/memberOf?$skiptoken=page2"}

    fake.handle("GET", "/v1.0/me/memberOf", member_of)
    if allowed_to_create_apps is None:
        fake.route("GET", "/v1.0/policies/authorizationPolicy", 403,
                   graph_error("Authorization_RequestDenied",
                               "Insufficient privileges to complete the operation."))
    else:
        fake.route("GET", "/v1.0/policies/authorizationPolicy", 200,
                   authorization_policy(allowed_to_create_apps))
    apps = applications or []
    not_found = graph_error("Request_ResourceNotFound", "Resource does not exist or one of its "
                            "queried reference-property objects are not present.")
    for key in missing or []:
        fake.route("GET", f"/v1.0/applications(appId='{key}')", 404, not_found)
        fake.route("GET", f"/v1.0/applications/{key}", 404, not_found)
    for app in apps:
        fake.route("GET", f"/v1.0/applications(appId='{app['appId']}')", 200, app)
        fake.route("GET", f"/v1.0/applications/{app['id']}", 200,
                   {"id": app["id"], "appId": app["appId"]})
        fics = (credentials or {}).get(app["appId"], [])
        fake.route("GET", f"/v1.0/applications/{app['id']}/federatedIdentityCredentials", 200,
                   {"@odata.context": f"{GRAPH_CONTEXT}#applications('{app['id']}')/"
                    "federatedIdentityCredentials", "value": fics})


# --- Microsoft Graph: a tenant's directory ---------------------------------------------

@dataclass
class Directory:
    """The objects of one Entra tenant as Graph v1.0 returns them."""

    tenant: str = TENANT
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    denied: bool = False  # a guest whom the tenant does not let read the directory

    def add_group(self, gid: str, name: str, security: bool = True) -> None:
        self.objects[gid.lower()] = {"@odata.type": "#microsoft.graph.group", "id": gid,
                                     "displayName": name, "securityEnabled": security,
                                     "mailEnabled": not security}

    def add_user(self, uid: str, name: str) -> None:
        self.objects[uid.lower()] = {"@odata.type": "#microsoft.graph.user", "id": uid,
                                     "displayName": name}


def _selected(obj: dict[str, Any], req: Recorded) -> dict[str, Any]:
    fields = (req.query.get("$select") or [""])[0]
    if not fields:
        return dict(obj)
    return {k: v for k, v in obj.items() if k in fields.split(",") or k == "@odata.type"}


def serve_directory(fake: FakeAzure, directory: Directory) -> None:
    """/v1.0/organization, /v1.0/groups/{id}, /v1.0/groups?$filter=displayName eq '...',
    /v1.0/directoryObjects/{id}: what Graph answers, 403 Authorization_RequestDenied
    when `directory.denied`."""
    ctx = "https://graph.microsoft.com/v1.0/$metadata"

    def guard(fn: Handler) -> Handler:
        def wrapped(req: Recorded) -> tuple[int, Any]:
            if directory.denied:
                return 403, graph_error("Authorization_RequestDenied",
                                        "Insufficient privileges to complete the operation.")
            return fn(req)
        return wrapped

    def organization(req: Recorded) -> tuple[int, Any]:
        return 200, {"@odata.context": f"{ctx}#organization",
                     "value": [{"id": directory.tenant, "displayName": "Contoso"}]}

    def not_found(oid: str) -> tuple[int, Any]:
        return 404, graph_error("Request_ResourceNotFound",
                                f"Resource '{oid}' does not exist or one of its queried "
                                "reference-property objects are not present.")

    def group(req: Recorded) -> tuple[int, Any]:
        oid = req.path.rstrip("/").rsplit("/", 1)[-1]
        obj = directory.objects.get(oid.lower())
        if obj is None or obj["@odata.type"] != "#microsoft.graph.group":
            return not_found(oid)
        return 200, {"@odata.context": f"{ctx}#groups/$entity", **_selected(obj, req)}

    def directory_object(req: Recorded) -> tuple[int, Any]:
        oid = req.path.rstrip("/").rsplit("/", 1)[-1]
        obj = directory.objects.get(oid.lower())
        if obj is None:
            return not_found(oid)
        return 200, {"@odata.context": f"{ctx}#directoryObjects/$entity", **_selected(obj, req)}

    def groups(req: Recorded) -> tuple[int, Any]:
        flt = (req.query.get("$filter") or [""])[0]
        m = re.fullmatch(r"displayName eq '((?:[^']|'')*)'", flt)
        if m is None:
            return 400, graph_error("Request_UnsupportedQuery", f"Unsupported query: {flt}")
        name = m[1].replace("''", "'")
        found = [_selected(o, req) for o in directory.objects.values()
                 if o["@odata.type"] == "#microsoft.graph.group"
                 and o["displayName"].lower() == name.lower()]
        return 200, {"@odata.context": f"{ctx}#groups", "value": found}

    fake.handle("GET", "/v1.0/organization", guard(organization))
    fake.handle("GET", "/v1.0/groups", guard(groups))
    fake.handle_pattern("GET", r"/v1\.0/groups/[^/]+", guard(group))
    fake.handle_pattern("GET", r"/v1\.0/directoryObjects/[^/]+", guard(directory_object))


# --- Microsoft.Authorization: role assignments and the caller's permissions -------------

_RA = "/providers/Microsoft.Authorization/roleAssignments"


@dataclass
class Authorization:
    """Role assignments of a subscription, kept as ARM keeps them (api-version
    2022-04-01): one per (scope, role, principal); a second is 409
    RoleAssignmentExists, whatever its name. `actions`/`not_actions` are the
    caller's permissions everywhere; `deny_writes_on` scopes (prefixes) answer
    403 AuthorizationFailed to a PUT or DELETE, as an ABAC condition would."""

    directory: Directory
    sub: str = SUB
    assignments: dict[str, dict[str, Any]] = field(default_factory=dict)  # id.lower() -> body
    actions: list[str] = field(default_factory=lambda: ["*"])
    not_actions: list[str] = field(default_factory=list)
    deny_writes_on: list[str] = field(default_factory=list)

    def held(self, principal: str) -> set[tuple[str, str]]:
        """(scope, role GUID) the principal holds."""
        return {(a["properties"]["scope"], a["properties"]["roleDefinitionId"].rsplit("/", 1)[-1])
                for a in self.assignments.values()
                if a["properties"]["principalId"] == principal}

    def add(self, scope: str, role: str, principal: str, name: str) -> str:
        """An assignment made outside mfhelm (the portal, az)."""
        aid = f"{scope}{_RA}/{name}"
        self.assignments[aid.lower()] = self._body(aid, scope, name, {
            "roleDefinitionId": f"/subscriptions/{self.sub}/providers/Microsoft.Authorization/"
                                f"roleDefinitions/{role}",
            "principalId": principal, "principalType": "Group"})
        return aid

    def _body(self, aid: str, scope: str, name: str, props: dict[str, Any]) -> dict[str, Any]:
        return {"id": aid, "type": "Microsoft.Authorization/roleAssignments", "name": name,
                "properties": {**props, "scope": scope, "condition": None,
                               "conditionVersion": None,
                               "createdOn": "2026-01-05T10:00:00.0000000Z",
                               "updatedOn": "2026-01-05T10:00:00.0000000Z",
                               "createdBy": None, "updatedBy": "fake-caller",
                               "delegatedManagedIdentityResourceId": None,
                               "description": None}}

    def _denied(self, scope: str, action: str) -> tuple[int, Any] | None:
        if any(scope.lower().startswith(d.lower()) for d in self.deny_writes_on):
            return 403, arm_error(
                "AuthorizationFailed",
                "The client 'me@contoso.example' with object id 'caller' does not have "
                f"authorization to perform action '{action}' over scope '{scope}{_RA}' or "
                "the scope is invalid. If access was recently granted, please refresh your "
                "credentials.")
        return None


def serve_authorization(fake: FakeAzure, authz: Authorization) -> None:
    def split(path: str) -> tuple[str, str]:
        scope, _, name = path.rstrip("/").partition(_RA)
        return scope, name.lstrip("/")

    def put(req: Recorded) -> tuple[int, Any]:
        scope, name = split(req.path)
        denied = authz._denied(scope, "Microsoft.Authorization/roleAssignments/write")
        if denied:
            return denied
        props = (req.body or {}).get("properties") if isinstance(req.body, dict) else None
        if not isinstance(props, dict) or not props.get("roleDefinitionId") \
                or not props.get("principalId"):
            return 400, arm_error("InvalidRequestFormat", "Cannot parse the request.")
        principal = props["principalId"]
        if principal.lower() not in authz.directory.objects:
            return 400, arm_error("PrincipalNotFound",
                                  f"Principal {principal} does not exist in the directory "
                                  f"{authz.directory.tenant}.")
        role = props["roleDefinitionId"].rsplit("/", 1)[-1]
        aid = f"{scope}{_RA}/{name}"
        existing = authz.assignments.get(aid.lower())
        if existing is not None and (existing["properties"]["principalId"] != principal or
                                     not existing["properties"]["roleDefinitionId"]
                                     .endswith(role)):
            return 400, arm_error("RoleAssignmentUpdateNotPermitted",
                                  "Tenant ID, application ID, principal ID, and scope are not "
                                  "allowed to be updated.")
        if (scope, role) in authz.held(principal):
            return 409, arm_error("RoleAssignmentExists", "The role assignment already exists.")
        body = authz._body(aid, scope, name, {
            "roleDefinitionId": props["roleDefinitionId"], "principalId": principal,
            "principalType": props.get("principalType", "User")})
        authz.assignments[aid.lower()] = body
        return 201, body

    def delete(req: Recorded) -> tuple[int, Any]:
        scope, _ = split(req.path)
        denied = authz._denied(scope, "Microsoft.Authorization/roleAssignments/delete")
        if denied:
            return denied
        body = authz.assignments.pop(req.path.rstrip("/").lower(), None)
        return (200, body) if body is not None else (204, None)

    def listing(req: Recorded) -> tuple[int, Any]:
        scope, _ = split(req.path)
        flt = (req.query.get("$filter") or [""])[0]
        m = re.fullmatch(r"principalId eq '([^']*)'", flt)
        if flt and m is None:
            return 400, arm_error("UnsupportedQuery", f"The filter '{flt}' is not supported.")
        here = scope.lower()
        found = [a for a in authz.assignments.values()
                 if (m is None or a["properties"]["principalId"] == m[1])
                 and (here.startswith(a["properties"]["scope"].lower())
                      or a["properties"]["scope"].lower().startswith(here))]
        return 200, {"value": found}

    def permissions(req: Recorded) -> tuple[int, Any]:
        return 200, {"value": [{"actions": authz.actions, "notActions": authz.not_actions,
                                "dataActions": [], "notDataActions": []}]}

    fake.handle_pattern("PUT", rf"/subscriptions/.+{_RA}/[^/]+", put)
    fake.handle_pattern("DELETE", rf"/subscriptions/.+{_RA}/[^/]+", delete)
    fake.handle_pattern("GET", rf"/subscriptions/.+{_RA}", listing)
    fake.handle_pattern("GET", r"/subscriptions/.+/providers/Microsoft\.Authorization/permissions",
                        permissions)


# --- GPU and Spot pools (issue 20: doctor's SKU and quota rows) -----------------------------
# ARM's resource SKU list names a GPU size's family (standardNCASv3_T4Family for NCasT4_v3)
# and gives `GPUs` and `LowPriorityCapable` (whether it can run as a Spot VM) among its
# capabilities; the Compute usage list counts Spot vCPUs in `lowPriorityCores`.

def with_capabilities(sku: dict[str, Any], **caps: str) -> dict[str, Any]:
    """The SKU with these capabilities added or replaced (values as ARM sends them: strings)."""
    kept = [c for c in sku["capabilities"] if c["name"] not in caps]
    return sku | {"capabilities": kept + [{"name": k, "value": v} for k, v in caps.items()]}


def t4_sku(location: str = "westeurope", **over: Any) -> dict[str, Any]:
    """Standard_NC4as_T4_v3 (4 vCPUs, 28 GiB, 1 T4) as ARM lists it."""
    sku = vm_sku("Standard_NC4as_T4_v3", "standardNCASv3_T4Family", 4, location, **over)
    return with_capabilities(sku, MemoryGB="28", GPUs="1", LowPriorityCapable="True")


def optional_pool_usages(t4_family: tuple[int, int] = (0, 8),
                         spot: tuple[int, int] = (0, 20)) -> list[dict[str, Any]]:
    """default_usages() plus the T4 family and Spot quotas, each (current, limit)."""
    return default_usages() + [
        usage("standardNCASv3_T4Family", "Standard NCASv3_T4 Family vCPUs", *t4_family),
        usage("lowPriorityCores", "Total Regional Low-priority vCPUs", *spot),
    ]
