"""Secrets mfhelm reads from the deployment's Key Vault (the Postgres admin password)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mfhelm.azure.credentials import auth_error, error_message, status_of
from mfhelm.errors import MfhelmError, remember_secret

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential


def _vault_name(vault_uri: str) -> str:
    host = vault_uri.split("://", 1)[-1].split("/", 1)[0]
    return host.split(".", 1)[0]


def _firewall_blocked(exc: Exception) -> bool:
    # RBAC and network denials are both 403 Forbidden; the inner code tells them apart.
    err = getattr(exc, "error", None)
    inner = getattr(err, "innererror", None) or {}
    code = inner.get("code", "") if isinstance(inner, dict) else ""
    return code == "ForbiddenByFirewall"


def keyvault_secret(
    vault_uri: str,
    name: str,
    *,
    credential: TokenCredential,
    verify_challenge_resource: bool = True,
) -> str:
    """The current value of secret `name`. Never logged, never written to disk here.

    `verify_challenge_resource` stays on for real vaults: it checks that the
    vault's auth challenge names a resource in the vault's own domain. Only a
    vault served from a non-Azure host (a test double) needs it off.
    """
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
    )
    from azure.keyvault.secrets import SecretClient

    vault = _vault_name(vault_uri)
    client = SecretClient(
        vault_uri, credential, verify_challenge_resource=verify_challenge_resource
    )
    try:
        secret = client.get_secret(name)
    except ResourceNotFoundError:
        raise MfhelmError(
            f"secret {name!r} missing from Key Vault {vault}; re-run `mfhelm deploy`"
        ) from None
    except ClientAuthenticationError as exc:
        raise auth_error(exc) from None
    except HttpResponseError as exc:
        if status_of(exc) == 403 and _firewall_blocked(exc):
            raise MfhelmError(
                f"Key Vault {vault}'s firewall blocks this machine: allow your address with "
                f"`az keyvault network-rule add -n {vault} --ip-address <your public IP>`"
            ) from None
        if status_of(exc) == 403:
            raise MfhelmError(
                f"not allowed to read secrets in Key Vault {vault}: grant yourself "
                f"'Key Vault Secrets User' on {vault} (az role assignment create --role "
                "'Key Vault Secrets User' --assignee <you> --scope <vault id>)"
            ) from None
        raise MfhelmError(f"reading secret {name!r} from {vault} failed: {error_message(exc)}") \
            from None
    except ServiceRequestError as exc:
        raise MfhelmError(f"cannot reach Key Vault {vault_uri} ({error_message(exc)})") from None
    finally:
        client.close()
    if secret.value is None:
        raise MfhelmError(f"secret {name!r} in Key Vault {vault} has no value")
    remember_secret(secret.value)
    return secret.value
