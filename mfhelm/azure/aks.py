"""The AKS cluster's user kubeconfig."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from mfhelm.azure.credentials import auth_error, error_message, status_of
from mfhelm.errors import MfhelmError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential


def aks_user_kubeconfig(
    subscription_id: str,
    resource_group: str,
    cluster: str,
    *,
    credential: TokenCredential,
    base_url: str | None = None,
    format: Literal["exec", "azure"] | None = "exec",
) -> bytes:
    """The cluster's *user* kubeconfig (never the admin one), as AKS returns it.

    On a cluster with Microsoft Entra ID integration the user kubeconfig
    carries no secret: it runs the `kubelogin` exec plugin to get a token, so
    the user needs `kubelogin` on PATH (`az aks install-cli` installs it) and
    an RBAC role on the cluster (e.g. "Azure Kubernetes Service RBAC Writer").
    `format="exec"` asks AKS for that exec form; the older "azure" form uses
    an auth-provider that kubectl removed in 1.26. AKS ignores `format` on
    clusters without Entra integration.
    """
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
    )
    from azure.mgmt.containerservice import ContainerServiceClient

    client = ContainerServiceClient(credential, subscription_id, base_url=base_url)
    where = f"AKS cluster {cluster!r} in resource group {resource_group!r}"
    try:
        result = client.managed_clusters.list_cluster_user_credentials(
            resource_group, cluster, format=format
        )
    except ResourceNotFoundError:
        raise MfhelmError(f"{where} not found; run `mfhelm deploy` first") from None
    except ClientAuthenticationError as exc:
        raise auth_error(exc) from None
    except HttpResponseError as exc:
        if status_of(exc) == 403:
            raise MfhelmError(
                f"not allowed to get credentials of {where}; you need the "
                "'Azure Kubernetes Service Cluster User Role' on it"
            ) from None
        raise MfhelmError(f"getting credentials of {where} failed: {error_message(exc)}") from None
    finally:
        client.close()
    configs = result.kubeconfigs or []
    if not configs or not configs[0].value:
        raise MfhelmError(f"{where} returned no kubeconfig; check the cluster in the portal")
    value = configs[0].value
    return value if isinstance(value, bytes) else bytes(value)
