"""The Bicep deployment's outputs: the one place mfhelm learns Azure names.

`make bicep-deploy` creates a subscription-scope ARM deployment; its outputs
carry every name and endpoint the chart needs. mfhelm reads them from ARM
(or from a file saved with `az deployment sub show --query properties.outputs`)
and never re-derives a name itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mfhelm.azure.credentials import (
    auth_error,
    error_code,
    error_message,
    status_of,
    text,
)
from mfhelm.errors import MfhelmError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

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

_NOT_DEPLOYED = "run `make bicep-deploy` first"


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


def validate_outputs(outputs: dict[str, Any], source: str) -> dict[str, Any]:
    """Check every contract output is present and well-typed; return a normalized copy."""
    missing = [n for n in REQUIRED_OUTPUTS if n not in outputs]
    if missing:
        raise MfhelmError(
            f"{source} lacks output(s) {', '.join(missing)}; the Bicep templates and mfhelm "
            "disagree: re-run `make bicep-deploy` with this checkout"
        )
    result = dict(outputs)
    for name in STRING_OUTPUTS:
        value = outputs[name]
        if not isinstance(value, str) or (not value and name not in MAY_BE_EMPTY):
            raise MfhelmError(f"{source}: output {name} must be a non-empty string, got {value!r}")
    for name in BOOL_OUTPUTS:
        value = outputs[name]
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            raise MfhelmError(f"{source}: output {name} must be true or false, got {value!r}")
        result[name] = value
    return result


def load_outputs_file(path: str | Path) -> dict[str, Any]:
    """Outputs saved to a JSON file, in ARM's shape or flat; validated."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise MfhelmError(
            f"{p}: not found; save it with `az deployment sub show -n <name> "
            "--query properties.outputs > outputs.json`"
        ) from None
    except (OSError, ValueError) as exc:
        raise MfhelmError(f"{p}: not valid JSON ({exc})") from None
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
        raise MfhelmError(f"{where} failed ({why}); fix it and re-run `make bicep-deploy`")
    if state != "Succeeded":
        raise MfhelmError(
            f"{where} is {state}, not Succeeded; wait for it to finish "
            "(or re-run `make bicep-deploy`) and try again"
        )
    raw = getattr(props, "outputs", None) or {}
    if not isinstance(raw, dict):
        raise MfhelmError(f"{where} has no outputs object; {_NOT_DEPLOYED}")
    return validate_outputs(flatten_outputs(raw), where)
