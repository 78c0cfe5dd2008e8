"""The Bicep deployment's outputs: the one place mfhelm learns Azure names.

`mfhelm deploy` creates a subscription-scope ARM deployment; its outputs
carry every name and endpoint the chart needs. mfhelm reads them from ARM
(or from a file saved with `az deployment sub show --query properties.outputs`)
and never re-derives a name itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit

from mfhelm import userfiles
from mfhelm.azure.credentials import (
    auth_error,
    error_code,
    error_message,
    status_of,
    text,
)
from mfhelm.errors import MfhelmError
from mfhelm.settings import (
    AZURE_RESOURCES_NAME_RE,
    DNS_LABEL_RE,
    LOCATION_RE,
    RESOURCE_GROUP_MAX,
)

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from mfhelm.settings import Settings

# The contract between bicep/main.bicep and mfhelm (shared/design CONTRACT).
STRING_OUTPUTS: tuple[str, ...] = (
    "resourceGroupName",
    "location",
    "tenantId",
    "subscriptionId",
    "aksClusterName",
    "aksOidcIssuerUrl",
    "identityName",
    "identityClientId",
    "storageAccountName",
    "storageBlobEndpoint",
    "metaflowContainerName",
    "airflowLogsContainerName",
    "postgresServerName",
    "postgresFqdn",
    "postgresDatabaseName",
    "postgresAdminLogin",
    "keyVaultName",
    "keyVaultUri",
    "postgresAdminSecretName",
    "serviceNamespace",
    "flowNamespace",
    "serviceAccountService",
    "serviceAccountFlows",
    "serviceAccountAirflow",
    "taskworkersLabelKey",
    "taskworkersLabelValue",
)
BOOL_OUTPUTS: tuple[str, ...] = ("deployArgo", "deployAirflow")
REQUIRED_OUTPUTS: tuple[str, ...] = STRING_OUTPUTS + BOOL_OUTPUTS
# Empty is a legitimate value for these (Airflow off means no logs container).
MAY_BE_EMPTY: frozenset[str] = frozenset({"airflowLogsContainerName"})
# Added with the sign-in (issue 18): absent from older deployments, empty with
# [access] off; when present, checked like the others (a client id goes into
# the proxy's ServiceAccount annotation and config).
# Issue 20 adds four more of that kind: the flow image's registry (empty with
# [registry] off; its login server becomes the host of every flow image) and
# the optional GPU and Spot pools (absent means off).
OPTIONAL_STRING_OUTPUTS: tuple[str, ...] = ("signinClientId", "registryName",
                                            "registryLoginServer")
OPTIONAL_BOOL_OUTPUTS: tuple[str, ...] = ("appRoutingEnabled", "gpuPoolEnabled",
                                          "spotPoolEnabled")

_NOT_DEPLOYED = "run `mfhelm deploy` first"


def flatten_outputs(raw: dict[str, Any]) -> dict[str, Any]:
    """ARM's `{name: {type, value}}` to `{name: value}`; flat input passes through.

    A flat value that is itself a dict with `type` and `value` keys would be
    ambiguous, but no output in the contract is an object.
    """
    flat: dict[str, Any] = {}
    for name, entry in raw.items():
        if isinstance(entry, dict) and "value" in entry and set(entry) <= {"type", "value"}:
            flat[name] = entry["value"]
        else:
            flat[name] = entry
    return flat


# ------------------------------------------------------------ value rules
#
# The outputs come from a file or an API mfhelm did not write, and each one
# lands somewhere with a syntax of its own: a host name inside Airflow's
# database URL, a label in a node selector (where a comma adds a selector),
# a namespace, a URL Metaflow calls. Each is checked against the rule of
# the place it goes (Azure's naming rules, Kubernetes' name rules).

# Anchored with \A and \Z (`$` would let a trailing newline through) and
# ASCII only: [0-9], never \d, which takes any Unicode digit.
_GUID_RE = re.compile(r"\A[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\Z")
_HOST_LABEL = r"[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"\A(?=.{{1,253}}\Z){_HOST_LABEL}(\.{_HOST_LABEL})*\Z")
_IPV4_RE = re.compile(r"\A([0-9]{1,3}\.){3}[0-9]{1,3}\Z")
_K8S_SUBDOMAIN_RE = re.compile(r"\A(?=.{1,253}\Z)[a-z0-9]([-a-z0-9]*[a-z0-9])?"
                               r"(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_LABEL_NAME_RE = re.compile(r"\A[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")
_URL_PATH_RE = re.compile(r"\A[A-Za-z0-9/._~%-]*\Z")
_CONTAINER_RE = re.compile(r"\A(?=.{3,63}\Z)[a-z0-9]+(-[a-z0-9]+)*\Z")
_STORAGE_ACCOUNT_RE = re.compile(r"\A[a-z0-9]{3,24}\Z")
_KEY_VAULT_RE = re.compile(r"\A(?=.{3,24}\Z)[A-Za-z](-?[A-Za-z0-9])*\Z")
_KV_SECRET_RE = re.compile(r"\A[0-9A-Za-z-]{1,127}\Z")
_PG_SERVER_RE = re.compile(r"\A[a-z0-9][-a-z0-9]{1,61}[a-z0-9]\Z")
_PG_DATABASE_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_-]{0,62}\Z")
_PG_LOGIN_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,62}\Z")
_PG_RESERVED_LOGINS = frozenset({"azure_superuser", "azure_pg_admin", "admin", "administrator",
                                 "root", "guest", "public"})
# Container registry names: 5-50 letters and digits (registries' published type).
_REGISTRY_RE = re.compile(r"\A[A-Za-z0-9]{5,50}\Z")
_AKS_NAME_RE = re.compile(r"\A[A-Za-z0-9]([-_A-Za-z0-9]{0,61}[A-Za-z0-9])?\Z")
_IDENTITY_RE = re.compile(r"\A[A-Za-z0-9][-_A-Za-z0-9]{2,127}\Z")


def is_host(value: str) -> bool:
    """A DNS host name (RFC 1123) or an IPv4 address."""
    if _IPV4_RE.fullmatch(value):
        return all(int(part) <= 255 for part in value.split("."))
    return bool(_HOSTNAME_RE.fullmatch(value))


def split_url(value: str) -> SplitResult | None:
    """urlsplit of a URL that is printable ASCII without spaces and whose port
    parses; None otherwise."""
    # urlsplit silently drops tabs and newlines anywhere in a URL: they are
    # refused here, before it sees them.
    if not (value.isascii() and value.isprintable()) or " " in value:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    return parts


def is_url_path(path: str) -> bool:
    """A URL path of unreserved characters, '/' and percent escapes only."""
    return bool(_URL_PATH_RE.fullmatch(path))


def is_https_url(value: str) -> bool:
    """https://host[:port][/path]: no credentials, query, fragment or spaces."""
    parts = split_url(value)
    if parts is None:
        return False
    return (parts.scheme == "https" and not parts.username and not parts.password
            and is_host(parts.hostname or "") and not parts.query and not parts.fragment
            and "?" not in value and "#" not in value and is_url_path(parts.path))


def is_label_key(value: str) -> bool:
    """A Kubernetes label key: [DNS subdomain prefix/]name."""
    prefix, _, name = value.rpartition("/")
    if "/" in value and not prefix:
        return False
    return (not prefix or bool(_K8S_SUBDOMAIN_RE.fullmatch(prefix))) and bool(
        _LABEL_NAME_RE.fullmatch(name))


def _resource_group(value: str) -> bool:
    return (len(value) <= RESOURCE_GROUP_MAX and bool(AZURE_RESOURCES_NAME_RE.fullmatch(value))
            and not value.endswith("."))


def _pg_login(value: str) -> bool:
    return (bool(_PG_LOGIN_RE.fullmatch(value)) and not value.lower().startswith("pg_")
            and value.lower() not in _PG_RESERVED_LOGINS)


_GUID = (lambda v: bool(_GUID_RE.fullmatch(v)), "a GUID")
_HTTPS = (is_https_url, "an https URL (https://host[:port][/path], no query)")
_K8S_NAME = (lambda v: bool(DNS_LABEL_RE.fullmatch(v)),
             "a Kubernetes name: a lowercase DNS label (a-z, 0-9, '-'), at most 63 chars")
_CONTAINER = (lambda v: bool(_CONTAINER_RE.fullmatch(v)),
              "an Azure container name: 3-63 lowercase letters, digits and single hyphens, "
              "starting and ending with a letter or digit")
_RULES: dict[str, tuple[Any, str]] = {
    "resourceGroupName": (_resource_group, "an Azure resource group name"),
    "location": (lambda v: bool(LOCATION_RE.fullmatch(v)),
                 "an Azure region name such as westeurope"),
    "tenantId": _GUID,
    "signinClientId": _GUID,
    "subscriptionId": _GUID,
    "aksClusterName": (lambda v: bool(_AKS_NAME_RE.fullmatch(v)), "an AKS cluster name"),
    "aksOidcIssuerUrl": _HTTPS,
    "identityName": (lambda v: bool(_IDENTITY_RE.fullmatch(v)), "a managed identity name"),
    "identityClientId": _GUID,
    "storageAccountName": (lambda v: bool(_STORAGE_ACCOUNT_RE.fullmatch(v)),
                           "a storage account name: 3-24 lowercase letters and digits"),
    "storageBlobEndpoint": _HTTPS,
    "metaflowContainerName": _CONTAINER,
    "airflowLogsContainerName": _CONTAINER,
    "postgresServerName": (lambda v: bool(_PG_SERVER_RE.fullmatch(v)),
                           "a Flexible Server name: 3-63 lowercase letters, digits and '-'"),
    "postgresFqdn": (is_host, "a DNS host name (letters, digits, '-' and '.')"),
    "postgresDatabaseName": (lambda v: bool(_PG_DATABASE_RE.fullmatch(v)),
                             "a database name: letters, digits, '_' and '-', at most 63"),
    "postgresAdminLogin": (_pg_login, "a PostgreSQL login: letters, digits and '_', not "
                                      "starting with pg_ and not a reserved name"),
    "keyVaultName": (lambda v: bool(_KEY_VAULT_RE.fullmatch(v)),
                     "a Key Vault name: 3-24 letters, digits and single hyphens"),
    "keyVaultUri": _HTTPS,
    "postgresAdminSecretName": (lambda v: bool(_KV_SECRET_RE.fullmatch(v)),
                                "a Key Vault secret name: 1-127 letters, digits and '-'"),
    "serviceNamespace": _K8S_NAME,
    "flowNamespace": _K8S_NAME,
    "serviceAccountService": _K8S_NAME,
    "serviceAccountFlows": _K8S_NAME,
    "serviceAccountAirflow": _K8S_NAME,
    "registryName": (lambda v: bool(_REGISTRY_RE.fullmatch(v)),
                     "a container registry name: 5-50 letters and digits"),
    # A host, no scheme, port or path: an image reference is <host>/<repo>@sha256:...
    "registryLoginServer": (is_host, "a registry login server: a DNS host name such as "
                                     "<name>.azurecr.io"),
    "taskworkersLabelKey": (is_label_key, "a Kubernetes label key ([prefix/]name, name at most "
                                          "63 letters, digits, '-', '_', '.')"),
    "taskworkersLabelValue": (lambda v: bool(_LABEL_NAME_RE.fullmatch(v)),
                              "a Kubernetes label value: at most 63 letters, digits, '-', '_', "
                              "'.', starting and ending with a letter or digit"),
}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validate_outputs(outputs: dict[str, Any], source: str,
                     settings: Settings | None = None) -> dict[str, Any]:
    """Check every contract output is present, well-typed and valid where it
    goes; with `settings`, also that the namespaces the deployment federated
    are the ones mfhelm installs into. Returns a normalized copy."""
    missing = [n for n in REQUIRED_OUTPUTS if n not in outputs]
    if missing:
        raise MfhelmError(
            f"{source} lacks output(s) {', '.join(missing)}; the Bicep templates and mfhelm "
            "disagree: re-run `mfhelm deploy` with this checkout"
        )
    result = dict(outputs)
    for name in STRING_OUTPUTS:
        value = outputs[name]
        if not isinstance(value, str) or (not value and name not in MAY_BE_EMPTY):
            raise MfhelmError(
                f"{source}: output {name} must be a non-empty string, got {_shown(value)}")
        check, rule = _RULES[name]
        if value and not check(value):
            raise MfhelmError(f"{source}: output {name} must be {rule}, got {_shown(value)}")
    for name in OPTIONAL_STRING_OUTPUTS:
        value = outputs.get(name, "")
        if not isinstance(value, str):
            raise MfhelmError(f"{source}: output {name} must be a string, got {_shown(value)}")
        check, rule = _RULES[name]
        if value and not check(value):
            raise MfhelmError(f"{source}: output {name} must be {rule}, got {_shown(value)}")
    _check_registry_pair(outputs, source)
    for name in (*BOOL_OUTPUTS, *(n for n in OPTIONAL_BOOL_OUTPUTS if n in outputs)):
        value = outputs[name]
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            raise MfhelmError(f"{source}: output {name} must be true or false, got {value!r}")
        result[name] = value
    if settings is not None:
        check_settings(result, settings)
    return result


def _check_registry_pair(outputs: dict[str, Any], source: str) -> None:
    """Both registry outputs or neither: the login server is the registry's own host,
    <name>.<registry DNS suffix> (Azure lowercases the name in it)."""
    name = str(outputs.get("registryName") or "")
    server = str(outputs.get("registryLoginServer") or "")
    if bool(name) != bool(server) or (
            name and not server.lower().startswith(f"{name.lower()}.")):
        raise MfhelmError(
            f"{source}: outputs registryName {_shown(name)} and registryLoginServer "
            f"{_shown(server)} do not name the same registry; re-run `mfhelm deploy`")


def check_settings(outputs: dict[str, Any], settings: Settings) -> None:
    """The namespaces the deployment federated for workload identity are the
    ones the settings install into: anywhere else, pods get no Azure access."""
    helm = settings.helm
    for key, setting, name in (
        ("serviceNamespace", helm.namespace, "namespace"),
        ("flowNamespace", helm.flow_namespace, "flow_namespace"),
    ):
        if outputs[key] != setting:
            raise MfhelmError(
                f"mfhelm.toml [helm] {name} = {setting!r} but the deployment federated "
                f"{outputs[key]!r}; set {name} = {outputs[key]!r} or re-run `mfhelm deploy`"
            )


def load_outputs_file(path: str | Path) -> dict[str, Any]:
    """Outputs saved to a JSON file, in ARM's shape or flat; validated."""
    p = Path(path)
    data = userfiles.load_json(p, missing="save it with `az deployment sub show -n <name> "
                               "--query properties.outputs > outputs.json`")
    if isinstance(data, dict) and isinstance(data.get("properties"), dict):
        # The whole `az deployment sub show` document rather than its outputs.
        data = data["properties"].get("outputs") or {}
    if not isinstance(data, dict):
        raise MfhelmError(f"{p}: expected a JSON object of deployment outputs")
    return validate_outputs(flatten_outputs(data), str(p))


def _failure_reason(err: Any) -> str:
    """ARM's top message is usually "at least one operation failed"; the detail says which."""
    if err is None:
        return "see the deployment's operations in the Azure portal"
    parts = [str(getattr(err, "message", "") or "")]
    for detail in (getattr(err, "details", None) or [])[:1]:
        parts.append(f"{getattr(detail, 'code', '')}: {getattr(detail, 'message', '')}")
    return "; ".join(p.replace("\n", " ").strip() for p in parts if p.strip()) or "unknown"


def deployment_outputs(
    subscription_id: str,
    deployment_name: str,
    *,
    credential: TokenCredential,
    base_url: str | None = None,
) -> dict[str, Any]:
    """Read, flatten and validate the outputs of a subscription-scope deployment."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
    )
    try:
        # Deployments left azure-mgmt-resource (26.x) for their own package.
        from azure.mgmt.resource.deployments import DeploymentsMgmtClient
    except ImportError:
        raise MfhelmError(
            "azure-mgmt-resource-deployments is not installed; reinstall mfhelm (`make dev`)"
        ) from None

    client = DeploymentsMgmtClient(credential, subscription_id, base_url=base_url)
    where = f"deployment {deployment_name!r} in subscription {subscription_id}"
    try:
        deployment = client.deployments.get_at_subscription_scope(deployment_name)
    except ResourceNotFoundError:
        raise MfhelmError(f"{where} not found; {_NOT_DEPLOYED}") from None
    except ClientAuthenticationError as exc:
        raise auth_error(exc) from None
    except HttpResponseError as exc:
        if status_of(exc) == 403:
            raise MfhelmError(
                f"not allowed to read {where} ({error_code(exc) or 'Forbidden'}); you need "
                "Reader on the subscription: `az role assignment create --role Reader ...`"
            ) from None
        raise MfhelmError(f"reading {where} failed: {error_message(exc)}") from None
    finally:
        client.close()

    props = deployment.properties
    state = text(getattr(props, "provisioning_state", None)) or "Unknown"
    if state == "Failed":
        why = _failure_reason(getattr(props, "error", None))
        raise MfhelmError(f"{where} failed ({why}); fix it and re-run `mfhelm deploy`")
    if state != "Succeeded":
        raise MfhelmError(
            f"{where} is {state}, not Succeeded; wait for it to finish "
            "(or re-run `mfhelm deploy`) and try again"
        )
    raw = getattr(props, "outputs", None) or {}
    if not isinstance(raw, dict):
        raise MfhelmError(f"{where} has no outputs object; {_NOT_DEPLOYED}")
    return validate_outputs(flatten_outputs(raw), where)
