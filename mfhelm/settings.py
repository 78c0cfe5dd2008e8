"""The user's settings file, `mfhelm.toml`, read by `make bicep-deploy` and the CLI.

Every field is validated here, once, so that a bad value fails on the
user's machine with a clear line instead of deep inside an ARM deployment.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mfhelm import userfiles
from mfhelm.errors import MfhelmError

SETTINGS_FILE = "mfhelm.toml"
SETTINGS_ENV = "MFHELM_SETTINGS"

# Patterns are anchored with \A and \Z, not ^ and $ (`$` also matches before a
# final newline, so "acme\n" would pass), and spell digits [0-9] (\d takes any
# Unicode digit, such as Arabic-Indic ones, which no tool downstream reads).
#
# Every Azure name is derived from the prefix in Bicep; the tightest limit is
# the storage account (3-24 chars, lowercase letters and digits), which gets
# the prefix plus 15 characters.
ORG_PREFIX_RE = re.compile(r"\A[a-z][a-z0-9]{1,7}\Z")
LOCATION_RE = re.compile(r"\A[a-z][a-z0-9]{2,39}\Z")
VM_SIZE_RE = re.compile(r"\AStandard_[A-Za-z0-9_]+\Z")
# major.minor only (used with fullmatch): AKS runs the latest patch of that
# minor and its patch upgrade channel keeps it current, so a pinned patch
# would become a downgrade on the next deploy. main.bicep checks the same.
K8S_VERSION_RE = re.compile(r"\A[0-9]+\.[0-9]+\Z")
DNS_LABEL_RE = re.compile(r"\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
# Microsoft.Resources naming rules (the REST API's pattern `^[-\w._()]+$`,
# where \w includes Unicode letters and digits, so it stays Unicode here):
# resource groups 1-90 characters, not ending in a period; deployments 1-64.
AZURE_RESOURCES_NAME_RE = re.compile(r"\A[-\w.()]+\Z")
RESOURCE_GROUP_MAX = 90
DEPLOYMENT_NAME_MAX = 64
# A Go duration as `helm --timeout` parses it (time.ParseDuration), unsigned.
GO_DURATION_PART_RE = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                    "m": 60.0, "h": 3600.0}
# Go's Duration is an int64 of nanoseconds: about 292 years.
GO_DURATION_MAX_SECONDS = (2**63 - 1) / 1e9
SUPPORTED_POSTGRES = ("14", "15", "16", "17")
POSTGRES_TIERS = ("Burstable", "GeneralPurpose", "MemoryOptimized")

PoolCount = Annotated[int, Field(ge=0, le=1000)]


def _shown(value: Any) -> str:
    """A bad value as an error line quotes it: its repr, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Strict(BaseModel):
    # strict: TOML has real booleans and integers; "yes" or "5" is a mistake
    # to report, not a value to guess at.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class AksSettings(_Strict):
    """Node pools.

    The system pool is tainted CriticalAddonsOnly (AKS's own add-ons only),
    the `services` pool runs the chart's long-lived services (metadata, UI,
    Argo, Airflow), and the tainted `taskworkers` pool runs flow pods alone.
    """

    kubernetes_version: str = ""
    system_vm_size: str = "Standard_D2s_v5"
    system_min_count: Annotated[int, Field(ge=1, le=1000)] = 1
    system_max_count: Annotated[int, Field(ge=1, le=1000)] = 3
    services_vm_size: str = "Standard_D2s_v5"
    services_min_count: Annotated[int, Field(ge=1, le=1000)] = 1
    services_max_count: Annotated[int, Field(ge=1, le=1000)] = 3
    task_vm_size: str = "Standard_D4s_v5"
    task_min_count: PoolCount = 0
    task_max_count: Annotated[int, Field(ge=1, le=1000)] = 5
    # Optional pools (mfhelm.pools GPU, SPOT); both scale from zero.
    gpu_enabled: bool = False
    gpu_vm_size: str = "Standard_NC4as_T4_v3"
    gpu_min_count: PoolCount = 0
    gpu_max_count: Annotated[int, Field(ge=1, le=1000)] = 2
    spot_enabled: bool = False
    spot_vm_size: str = "Standard_D4s_v5"
    spot_min_count: PoolCount = 0
    spot_max_count: Annotated[int, Field(ge=1, le=1000)] = 5

    @field_validator("kubernetes_version")
    @classmethod
    def _k8s_version(cls, v: str) -> str:
        if v and not K8S_VERSION_RE.fullmatch(v):
            raise ValueError(
                f"must be major.minor such as 1.33, or empty for AKS's default, not {_shown(v)} "
                "(AKS keeps the patch current; a pinned patch would be a downgrade on the next "
                "deploy)")
        return v

    @field_validator("system_vm_size", "services_vm_size", "task_vm_size", "gpu_vm_size",
                     "spot_vm_size")
    @classmethod
    def _vm_size(cls, v: str) -> str:
        if not VM_SIZE_RE.fullmatch(v):
            raise ValueError("must be an Azure VM size such as Standard_D4s_v5")
        return v

    @model_validator(mode="after")
    def _bounds(self) -> AksSettings:
        if self.system_min_count > self.system_max_count:
            raise ValueError("system_min_count must not exceed system_max_count")
        if self.services_min_count > self.services_max_count:
            raise ValueError("services_min_count must not exceed services_max_count")
        if self.task_min_count > self.task_max_count:
            raise ValueError("task_min_count must not exceed task_max_count")
        if self.gpu_min_count > self.gpu_max_count:
            raise ValueError("gpu_min_count must not exceed gpu_max_count")
        if self.spot_min_count > self.spot_max_count:
            raise ValueError("spot_min_count must not exceed spot_max_count")
        return self


class PostgresSettings(_Strict):
    """PostgreSQL Flexible Server shape."""

    version: str = "16"
    tier: str = "Burstable"
    sku: str = "Standard_B1ms"
    storage_gb: Annotated[int, Field(ge=32, le=32768)] = 32

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, v: Any) -> str:
        v = str(v)
        if v not in SUPPORTED_POSTGRES:
            raise ValueError(f"must be one of {', '.join(SUPPORTED_POSTGRES)}")
        return v

    @field_validator("tier")
    @classmethod
    def _tier(cls, v: str) -> str:
        if v not in POSTGRES_TIERS:
            raise ValueError(f"must be one of {', '.join(POSTGRES_TIERS)}")
        return v

    @field_validator("sku")
    @classmethod
    def _sku(cls, v: str) -> str:
        if not VM_SIZE_RE.fullmatch(v):
            raise ValueError("must be a Flexible Server SKU such as Standard_B1ms")
        return v


class HelmSettings(_Strict):
    """Where the chart is installed."""

    release: str = "metaflow"
    namespace: str = "metaflow"
    # Flow pods run here; the default keeps them beside the services.
    # Apart from the services' Secrets: DAG code that launches pods there
    # cannot mount them.
    flow_namespace: str = "metaflow-flows"

    @field_validator("release", "namespace", "flow_namespace")
    @classmethod
    def _dns(cls, v: str) -> str:
        if not is_helm_name(v):
            raise ValueError(HELM_NAME_RULE)
        return v


# A host name for the HTTPS entry point: lowercase DNS labels, at least two.
HOST_RE = re.compile(r"\A(?=.{1,253}\Z)([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+"
                     r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?\Z")
# An Entra object or client id.
GUID_RE = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
# A Key Vault certificate id, as the app routing add-on takes it.
KEYVAULT_CERT_RE = re.compile(
    r"\Ahttps://[a-z0-9][-a-z0-9]{1,22}[a-z0-9]\.vault\.azure\.net/certificates/"
    r"[A-Za-z0-9][-A-Za-z0-9]{0,126}(/[0-9a-f]{32})?\Z")


# The [access] strings, each empty or matching its pattern (DNS_LABEL_RE holds
# a Secret name to 63 characters).
_ACCESS_PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {
    "host": (HOST_RE, "must be a lowercase DNS name such as metaflow.example.com "
                      "(no scheme, port or path), or empty for no entry point"),
    "tls_certificate": (KEYVAULT_CERT_RE, "must be a Key Vault certificate id such as "
                                          "https://<vault>.vault.azure.net/certificates/<name>"),
    "tls_secret": (DNS_LABEL_RE, "must be a Kubernetes Secret name (a DNS label)"),
    "client_id": (GUID_RE, "must be an Entra application (client) id, a lowercase GUID"),
}


class AccessSettings(_Strict):
    """The HTTPS entry point and Entra ID sign-in in front of the UIs and the API.

    On the azure profile they are on when `host` is set: an Ingress on AKS's
    application-routing add-on and a sign-in proxy admitting the groups the
    release grants (`mfhelm grant`) and `admin_groups`. Empty `host`: no
    Ingress, no sign-in; everything is reached by `mfhelm port-forward`.
    """

    host: str = ""
    # The TLS certificate: a Key Vault certificate id (the add-on reads it), or
    # the name of a kubernetes.io/tls Secret in the release namespace.
    tls_certificate: str = ""
    tls_secret: str = ""
    # An existing Entra app registration's client id, for a deploying user who
    # may not create apps; empty: the Bicep creates the app registration.
    client_id: str = ""
    # Entra group object ids whose members are Airflow admins (and get in).
    admin_groups: list[str] = []

    @field_validator("host", "tls_certificate", "tls_secret", "client_id")
    @classmethod
    def _optional_pattern(cls, v: str, info: ValidationInfo) -> str:
        pattern, rule = _ACCESS_PATTERNS[str(info.field_name)]
        if v and not pattern.fullmatch(v):
            raise ValueError(rule)
        return v

    @field_validator("admin_groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        for g in v:
            if not GUID_RE.fullmatch(g):
                raise ValueError(
                    f"must be Entra group object ids (lowercase GUIDs), not {_shown(g)}")
        return v

    @model_validator(mode="after")
    def _tls(self) -> AccessSettings:
        if self.tls_certificate and self.tls_secret:
            raise ValueError("set tls_certificate or tls_secret, not both")
        if (self.tls_certificate or self.tls_secret or self.client_id
                or self.admin_groups) and not self.host:
            raise ValueError("host is required when any other access setting is set")
        if self.host and not (self.tls_certificate or self.tls_secret):
            raise ValueError("host needs a certificate: tls_certificate (a Key Vault "
                             "certificate id) or tls_secret (a kubernetes.io/tls Secret)")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.host)


class RegistrySettings(_Strict):
    """The stack's Azure Container Registry (bicep/modules/registry.bicep): where
    `mfhelm image build` builds the flow image and AKS pulls it from."""

    enabled: bool = True


# A flow image by digest, as `mfhelm image build` records it:
# <registry host>/<repository>@sha256:<64 hex digits>.
IMAGE_REFERENCE_RE = re.compile(
    r"\A[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?(:[0-9]{1,5})?"
    r"/[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*"
    r"@sha256:[0-9a-f]{64}\Z")


class ImageSettings(_Strict):
    """The flow image Metaflow's task pods start from. `mfhelm image build` sets
    `reference`; `mfhelm config` writes it as METAFLOW_KUBERNETES_CONTAINER_IMAGE.
    Empty: Metaflow's default (python:<minor>, dependencies pip-installed at
    every task start)."""

    reference: str = ""

    @field_validator("reference")
    @classmethod
    def _reference(cls, v: str) -> str:
        if v and not IMAGE_REFERENCE_RE.fullmatch(v):
            raise ValueError(
                "must be an image by digest, <registry>/<repository>@sha256:<64 hex digits>, "
                f"as `mfhelm image build` records it, not {_shown(v)}")
        return v


class Settings(_Strict):
    """The whole `mfhelm.toml`."""

    org_prefix: str
    location: str
    deploy_argo: bool = True
    # Argo Events, for @trigger and @trigger_on_finish: unset, it follows
    # deploy_argo (its Sensors submit Argo Workflows, so never without it).
    deploy_argo_events: bool = True
    deploy_airflow: bool = False
    resource_group: str = ""
    deployment_name: str = ""
    aks: AksSettings = AksSettings()
    postgres: PostgresSettings = PostgresSettings()
    helm: HelmSettings = HelmSettings()
    access: AccessSettings = AccessSettings()
    registry: RegistrySettings = RegistrySettings()
    image: ImageSettings = ImageSettings()

    @model_validator(mode="before")
    @classmethod
    def _argo_events_follows_argo(cls, data: Any) -> Any:
        if isinstance(data, dict) and "deploy_argo_events" not in data \
                and isinstance(data.get("deploy_argo", True), bool):
            data = {**data, "deploy_argo_events": data.get("deploy_argo", True)}
        return data

    @field_validator("deploy_argo_events")
    @classmethod
    def _argo_events_needs_argo(cls, v: bool, info: ValidationInfo) -> bool:
        if v and info.data.get("deploy_argo") is False:
            raise ValueError("true needs deploy_argo = true (Argo Events' Sensors submit Argo "
                             "Workflows); set deploy_argo_events = false")
        return v

    @model_validator(mode="after")
    def _airflow_flows_apart(self) -> Settings:
        # Airflow runs DAG files as an account that may launch pods in the
        # flow namespace; beside the services those pods could mount their
        # Secrets (the chart refuses the same).
        if self.deploy_airflow and self.helm.flow_namespace == self.helm.namespace:
            raise ValueError(
                f"helm.flow_namespace: with deploy_airflow = true it must differ from "
                f"helm.namespace ({self.helm.namespace}): Airflow's DAG code may launch pods "
                "in the flow namespace, and beside the services they could mount their Secrets")
        return self

    @field_validator("org_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not ORG_PREFIX_RE.fullmatch(v):
            raise ValueError(
                "must be 2-8 characters, lowercase letters and digits, starting with a "
                "letter (it becomes part of the storage account name)"
            )
        return v

    @field_validator("location")
    @classmethod
    def _location(cls, v: str) -> str:
        if not LOCATION_RE.fullmatch(v):
            raise ValueError("must be an Azure region name such as westeurope or eastus2")
        return v

    @field_validator("resource_group")
    @classmethod
    def _resource_group(cls, v: str) -> str:
        if v and (len(v) > RESOURCE_GROUP_MAX or not AZURE_RESOURCES_NAME_RE.fullmatch(v)
                  or v.endswith(".")):
            raise ValueError(
                f"must be an Azure resource group name: 1-{RESOURCE_GROUP_MAX} letters, digits, "
                "'_', '-', '.', '(' or ')', not ending in '.' (or empty for the default)")
        return v

    @field_validator("deployment_name")
    @classmethod
    def _deployment_name(cls, v: str) -> str:
        if v and (len(v) > DEPLOYMENT_NAME_MAX or not AZURE_RESOURCES_NAME_RE.fullmatch(v)):
            raise ValueError(
                f"must be an Azure deployment name: 1-{DEPLOYMENT_NAME_MAX} letters, digits, "
                "'_', '-', '.', '(' or ')' (or empty for the default)")
        return v

    @property
    def resource_group_name(self) -> str:
        return self.resource_group or f"{self.org_prefix}-metaflow-rg"

    @property
    def deployment(self) -> str:
        """The ARM deployment name at subscription scope (stable: re-runs update it)."""
        return self.deployment_name or f"{self.org_prefix}-metaflow"


HELM_NAME_RULE = "must be a lowercase DNS label (a-z, 0-9, '-'), at most 53 chars"


def is_helm_name(value: str) -> bool:
    """A release or namespace name: a DNS-1123 label, short enough for the
    names the chart derives from it."""
    return bool(DNS_LABEL_RE.fullmatch(value)) and len(value) <= 53


def check_helm_name(value: str, option: str) -> str:
    """A --release or --namespace argument, refused before any cluster call."""
    if not is_helm_name(value):
        raise MfhelmError(f"{option} {value!r}: {HELM_NAME_RULE}")
    return value


def duration_seconds(value: str, option: str = "--timeout") -> float:
    """A Go duration as helm parses it (10m, 1h30m, 90s, 1.5h), in seconds."""
    parts = GO_DURATION_PART_RE.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise MfhelmError(f"{option} {value!r}: not a duration; write it as helm does, "
                          "e.g. 10m, 1h30m or 90s (units h, m, s, ms)")
    return sum(float(n) * _GO_UNIT_SECONDS[u] for n, u in parts)


def check_timeout(value: str, option: str = "--timeout") -> str:
    """A positive Go duration as helm parses it, refused here rather than by
    helm after mfhelm has written to the cluster."""
    seconds = duration_seconds(value, option)
    if seconds <= 0:
        raise MfhelmError(f"{option} {value!r}: must be longer than zero")
    if seconds > GO_DURATION_MAX_SECONDS:
        raise MfhelmError(f"{option} {value!r}: longer than helm can wait (about 292 years)")
    return value


_TYPE_MESSAGES = {
    "bool_type": "must be true or false (a TOML boolean, without quotes)",
    "int_type": "must be a whole number (a TOML integer, without quotes)",
    "string_type": "must be a quoted string",
    "model_type": "must be a table",
}


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "settings"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling)"
    elif err["type"] == "missing":
        msg = "is required"
    elif err["type"] in _TYPE_MESSAGES:
        msg = f"{_TYPE_MESSAGES[err['type']]}, got {_shown(err['input'])}"
    return f"{where}: {msg}"


def parse(data: dict[str, Any], source: str = SETTINGS_FILE) -> Settings:
    """Validate a settings mapping; raise MfhelmError naming the first bad field."""
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise MfhelmError(f"{source}: {_first_error(exc)}") from None


def settings_path(path: str | os.PathLike[str] | None = None) -> Path:
    return Path(path or os.environ.get(SETTINGS_ENV) or SETTINGS_FILE)


def load(path: str | os.PathLike[str] | None = None) -> Settings:
    p = settings_path(path)
    data = userfiles.load_toml(p, missing="create it with `mfhelm init`")
    return parse(data, str(p))


def dump(settings: Settings) -> str:
    import tomli_w

    return tomli_w.dumps(settings.model_dump(mode="json"))


def save(settings: Settings, path: str | os.PathLike[str] | None = None) -> Path:
    p = settings_path(path)
    # The path as given: Path() would drop a final '/' (a directory, refused).
    userfiles.write_text(p if path is None else path, dump(settings))
    return p
