"""Read-only questions `mfhelm doctor` asks Azure before anything is deployed.

Each function does one ARM query and returns plain data; deciding what is
good enough is doctor's job. Errors come back as MfhelmError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

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

T = TypeVar("T")

# What the Bicep templates create, by resource provider.
REQUIRED_PROVIDERS: tuple[str, ...] = (
    "Microsoft.ContainerService",
    "Microsoft.DBforPostgreSQL",
    "Microsoft.Storage",
    "Microsoft.KeyVault",
    "Microsoft.ManagedIdentity",
    "Microsoft.Network",
    "Microsoft.Compute",
)
# Only with [registry] enabled (bicep/modules/registry.bicep).
REGISTRY_PROVIDER = "Microsoft.ContainerRegistry"


@dataclass(frozen=True)
class VmSku:
    """One VM size as the region offers it to this subscription."""

    name: str
    family: str
    vcpus: int
    zones: tuple[str, ...] = ()
    # A Location restriction means the size cannot be deployed in the region at all.
    location_restricted: bool = False
    restricted_zones: tuple[str, ...] = ()
    reason: str = ""
    gpus: int = 0
    # The SKU's LowPriorityCapable capability: whether it can run as a Spot VM
    # (None when ARM does not say).
    spot_capable: bool | None = None


@dataclass(frozen=True)
class Usage:
    """vCPU usage against a quota (`name` is ARM's usage name, e.g. standardDSv5Family)."""

    name: str
    display_name: str
    current: int
    limit: int

    @property
    def free(self) -> int:
        return self.limit - self.current


@dataclass(frozen=True)
class PostgresCapabilities:
    """What PostgreSQL Flexible Server offers in a region."""

    versions: frozenset[str]
    # tier (Burstable, GeneralPurpose, MemoryOptimized) -> SKU names
    skus_by_tier: dict[str, frozenset[str]] = field(default_factory=dict)
    restricted: bool = False


def _call(what: str, fn: Callable[[], T]) -> T:
    """Run one ARM query; turn SDK errors into one line."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    try:
        return fn()
    except ClientAuthenticationError as exc:
        raise auth_error(exc) from None
    except HttpResponseError as exc:
        if status_of(exc) == 403:
            raise MfhelmError(
                f"not allowed to {what} ({error_code(exc) or 'Forbidden'}); "
                "you need Reader on the subscription"
            ) from None
        raise MfhelmError(f"could not {what}: {error_message(exc)}") from None


def _available(status: Any) -> bool:
    # Capability status is Visible, Available, Default or Disabled.
    return (text(status) or "Available") != "Disabled"


def provider_states(
    subscription_id: str,
    namespaces: Iterable[str] = REQUIRED_PROVIDERS,
    *,
    credential: TokenCredential,
    base_url: str | None = None,
) -> dict[str, str]:
    """Registration state per resource provider: Registered, NotRegistered, Registering..."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.mgmt.resource.resources import ResourceManagementClient

    client = ResourceManagementClient(credential, subscription_id, base_url=base_url)
    states: dict[str, str] = {}

    def get(ns: str) -> Any:
        try:
            return client.providers.get(ns)
        except ResourceNotFoundError:  # a namespace this cloud does not have
            return None

    try:
        for ns in namespaces:
            provider = _call(f"read resource provider {ns}", partial(get, ns))
            states[ns] = text(provider.registration_state) if provider else "NotFound"
    finally:
        client.close()
    return states


def vm_skus(
    subscription_id: str,
    location: str,
    *,
    credential: TokenCredential,
    base_url: str | None = None,
) -> dict[str, VmSku]:
    """Virtual machine sizes in `location`, keyed by lower-cased size name."""
    from azure.mgmt.compute import ComputeManagementClient

    client = ComputeManagementClient(credential, subscription_id, base_url=base_url)
    try:
        raw = _call(
            f"list VM sizes in {location}",
            lambda: list(client.resource_skus.list(filter=f"location eq '{location}'")),
        )
    finally:
        client.close()
    result: dict[str, VmSku] = {}
    for sku in raw:
        if text(sku.resource_type).lower() != "virtualmachines" or not sku.name:
            continue
        caps = {c.name: c.value for c in sku.capabilities or [] if c.name}
        spot = str(caps.get("LowPriorityCapable") or "").lower()
        zones: tuple[str, ...] = ()
        for info in sku.location_info or []:
            if text(info.location).lower() == location.lower():
                zones = tuple(sorted(info.zones or []))
        location_restricted = False
        restricted_zones: list[str] = []
        reasons: list[str] = []
        for r in sku.restrictions or []:
            kind = text(r.type)
            if kind == "Location":
                location_restricted = True
            elif kind == "Zone" and r.restriction_info is not None:
                restricted_zones.extend(r.restriction_info.zones or [])
            if r.reason_code:
                reasons.append(text(r.reason_code))
        result[sku.name.lower()] = VmSku(
            name=sku.name,
            family=text(sku.family),
            vcpus=_count(caps.get("vCPUs")),
            zones=zones,
            location_restricted=location_restricted,
            restricted_zones=tuple(sorted(set(restricted_zones))),
            reason=", ".join(sorted(set(reasons))),
            gpus=_count(caps.get("GPUs")),
            spot_capable={"true": True, "false": False}.get(spot),
        )
    return result


def _count(value: Any) -> int:
    """A SKU capability that counts something (vCPUs, GPUs); 0 when absent or unreadable."""
    try:
        return int(value or 0)
    except ValueError:
        return 0


def compute_usage(
    subscription_id: str,
    location: str,
    *,
    credential: TokenCredential,
    base_url: str | None = None,
) -> dict[str, Usage]:
    """Compute quotas in `location`, keyed by lower-cased usage name (`cores` is the
    regional vCPU total of regular VMs; VM families look like `standarddsv5family`;
    `lowprioritycores` is the regional Spot vCPU total, which no family shares)."""
    from azure.mgmt.compute import ComputeManagementClient

    client = ComputeManagementClient(credential, subscription_id, base_url=base_url)
    try:
        raw = _call(
            f"read compute quota in {location}", lambda: list(client.usage.list(location))
        )
    finally:
        client.close()
    result: dict[str, Usage] = {}
    for u in raw:
        name = str(u.name.value or "") if u.name else ""
        if not name:
            continue
        result[name.lower()] = Usage(
            name=name,
            display_name=str(u.name.localized_value or name),
            current=int(u.current_value),
            limit=int(u.limit),
        )
    return result


def postgres_capabilities(
    subscription_id: str,
    location: str,
    *,
    credential: TokenCredential,
    base_url: str | None = None,
) -> PostgresCapabilities:
    """Server versions and SKUs per tier that Flexible Server offers in `location`."""
    from azure.mgmt.postgresqlflexibleservers import PostgreSQLManagementClient

    client = PostgreSQLManagementClient(credential, subscription_id, base_url=base_url)
    try:
        raw = _call(
            f"read PostgreSQL Flexible Server capabilities in {location}",
            lambda: list(client.capabilities_by_location.list(location)),
        )
    finally:
        client.close()
    versions: set[str] = set()
    skus: dict[str, set[str]] = {}
    restricted = False
    for cap in raw:
        if text(cap.restricted) == "Enabled":
            restricted = True
        if not _available(cap.status):
            continue
        for v in cap.supported_server_versions or []:
            if v.name and _available(v.status):
                versions.add(str(v.name))
        for edition in cap.supported_server_editions or []:
            if not edition.name or not _available(edition.status):
                continue
            bucket = skus.setdefault(str(edition.name), set())
            for sku in edition.supported_server_skus or []:
                if sku.name and _available(sku.status):
                    bucket.add(str(sku.name))
    return PostgresCapabilities(
        versions=frozenset(versions),
        skus_by_tier={k: frozenset(v) for k, v in skus.items()},
        restricted=restricted,
    )
