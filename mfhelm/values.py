"""Deployment outputs + settings -> Helm values for the chart. Pure functions.

Every Azure name comes from the Bicep outputs; nothing here re-derives one.
The values never hold a secret: the database password reaches the cluster
as a Kubernetes Secret that `mfhelm install` creates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mfhelm.azure.outputs import validate_outputs
from mfhelm.errors import MfhelmError
from mfhelm.settings import AccessSettings, Settings

# Secrets `mfhelm install` writes from Key Vault; the values only name them.
DB_SECRET = "metaflow-db"
DB_SECRET_KEY = "password"
AIRFLOW_DB_SECRET = "metaflow-airflow-db"
# The applications' own login roles on the Flexible Server (azure profile),
# made by the db-bootstrap Job; the admin login is only the Job's.
METAFLOW_DB_ROLE = "metaflow"
AIRFLOW_DB_ROLE = "airflow"
AIRFLOW_DB_NAME = "airflow"  # the database Bicep creates for Airflow
# Generated once by mfhelm install and kept; the Airflow chart reads the
# first two by name (webserverSecretKeySecretName, fernetKeySecretName, with
# these keys), our admin-user hook the third.
AIRFLOW_WEBSERVER_SECRET = "metaflow-airflow-webserver-key"
AIRFLOW_WEBSERVER_SECRET_KEY = "webserver-secret-key"
AIRFLOW_FERNET_SECRET = "metaflow-airflow-fernet-key"
AIRFLOW_FERNET_SECRET_KEY = "fernet-key"
AIRFLOW_ADMIN_SECRET = "metaflow-airflow-admin"
AIRFLOW_ADMIN_USER = "admin"
# The ConfigMap with Airflow's webserver_config.py behind the sign-in proxy
# (values.yaml airflowGlue.signin.configMapName).
AIRFLOW_SIGNIN_CONFIG = "metaflow-airflow-webserver-config"
# What `mfhelm uninstall --purge` deletes.
MFHELM_SECRETS = (DB_SECRET, AIRFLOW_DB_SECRET, AIRFLOW_WEBSERVER_SECRET, AIRFLOW_FERNET_SECRET,
                  AIRFLOW_ADMIN_SECRET)
SERVICES_POOL = "services"
ENTRA_LOGIN = "https://login.microsoftonline.com"


def entra_issuer(tenant_id: str) -> str:
    """The v2.0 issuer of one tenant: what the sign-in proxy verifies browser
    and laptop tokens against (a single tenant keeps other tenants out)."""
    return f"{ENTRA_LOGIN}/{tenant_id}/v2.0"


def azure_access(access: AccessSettings, outputs: dict[str, Any]) -> dict[str, Any]:
    """`access` values on azure: Entra ID through the proxy's workload
    identity (no client secret), the app the deployment made or was given."""
    client_id = str(outputs.get("signinClientId") or "")
    if not client_id:
        raise MfhelmError(
            "mfhelm.toml [access] host is set but the deployment has no sign-in app "
            "(output signinClientId is empty): run `mfhelm deploy` again with these settings")
    if access.client_id and client_id != access.client_id:
        raise MfhelmError(
            f"mfhelm.toml [access] client_id {access.client_id} is not the deployment's sign-in "
            f"app {client_id}: run `mfhelm deploy` again with these settings")
    return {
        "enabled": True,
        "host": access.host,
        "tls": {"keyVaultCertificateUri": access.tls_certificate,
                "secretName": access.tls_secret},
        "provider": "entra-id",
        "issuerUrl": entra_issuer(str(outputs["tenantId"])),
        "clientId": client_id,
        "adminGroups": list(access.admin_groups),
    }


@dataclass(frozen=True)
class LocalAccess:
    """Sign-in on the local profile, against any OIDC issuer (`mfhelm install
    --local --signin-issuer ...`): the same proxy and routes as on azure."""

    issuer: str
    client_id: str
    host: str
    tls_secret: str
    groups: tuple[str, ...] = field(default_factory=tuple)
    client_secret_name: str = ""

    @classmethod
    def from_options(cls, *, issuer: str | None, client_id: str | None, host: str | None,
                     tls_secret: str | None, groups: list[str] | tuple[str, ...] = (),
                     client_secret_name: str | None = None) -> LocalAccess | None:
        """From `--signin-*` (None: sign-in off); every part checked, one
        line naming the option on a bad or missing one."""
        from mfhelm.metaflow_config import is_service_url
        from mfhelm.settings import DNS_LABEL_RE, HOST_RE

        given = {"--signin-client-id": client_id, "--signin-host": host,
                 "--signin-tls-secret": tls_secret, "--signin-client-secret": client_secret_name,
                 "--signin-group": list(groups) or None}
        if not issuer:
            named = [k for k, v in given.items() if v]
            if named:
                raise MfhelmError(f"{named[0]} needs --signin-issuer (the OIDC issuer URL that "
                                  "turns sign-in on)")
            return None
        if not is_service_url(issuer):
            raise MfhelmError(f"--signin-issuer {issuer!r} must be an http(s) URL such as "
                              "https://idp.example.com")
        for option in ("--signin-client-id", "--signin-client-secret", "--signin-host",
                       "--signin-tls-secret", "--signin-group"):
            if not given[option]:
                raise MfhelmError(f"--signin-issuer needs {option}" + {
                    "--signin-client-id": " (the client id registered at that issuer)",
                    "--signin-client-secret": " (a Secret in the release namespace with key "
                                              "client-secret: oauth2-proxy needs the client's "
                                              "secret)",
                    "--signin-host": " (the host name users open, e.g. metaflow.localtest.me)",
                    "--signin-tls-secret": " (a kubernetes.io/tls Secret for that host)",
                    "--signin-group": " (a group allowed in; repeat for more)",
                }[option])
        assert host is not None and tls_secret is not None and client_id is not None
        assert client_secret_name is not None
        if not HOST_RE.fullmatch(host):
            raise MfhelmError(f"--signin-host {host!r} must be a lowercase DNS name such as "
                              "metaflow.localtest.me (no scheme, port or path)")
        for option, name in (("--signin-tls-secret", tls_secret),
                             ("--signin-client-secret", client_secret_name)):
            if name and not (DNS_LABEL_RE.fullmatch(name) and len(name) <= 63):
                raise MfhelmError(f"{option} {name!r} must be a Kubernetes Secret name "
                                  "(a DNS label)")
        return cls(issuer=issuer, client_id=client_id, host=host, tls_secret=tls_secret,
                   groups=tuple(groups), client_secret_name=client_secret_name)

    def values(self) -> dict[str, Any]:
        return {
            "enabled": True,
            "host": self.host,
            "tls": {"keyVaultCertificateUri": "", "secretName": self.tls_secret},
            "provider": "oidc",
            "issuerUrl": self.issuer,
            "clientId": self.client_id,
            "clientSecretName": self.client_secret_name,
            "adminGroups": list(self.groups),
        }


def render_values(outputs: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The azure-profile values for `charts/metaflow`."""
    outputs = validate_outputs(outputs, "deployment outputs", settings)
    if outputs["postgresAdminLogin"] in (METAFLOW_DB_ROLE, AIRFLOW_DB_ROLE):
        raise MfhelmError(
            f"the PostgreSQL admin login {outputs['postgresAdminLogin']!r} is the name of an "
            "application role mfhelm creates; deploy with another postgresAdminLogin")
    label_key, label_value = outputs["taskworkersLabelKey"], outputs["taskworkersLabelValue"]
    flow_ns = outputs["flowNamespace"]
    airflow = outputs["deployAirflow"]
    values: dict[str, Any] = {
        "profile": "azure",
        "identity": {"clientId": outputs["identityClientId"], "tenantId": outputs["tenantId"]},
        "serviceAccounts": {
            "service": {"name": outputs["serviceAccountService"]},
            "flows": {"name": outputs["serviceAccountFlows"]},
            "airflow": {"name": outputs["serviceAccountAirflow"]},
        },
        "flows": {
            "namespace": "" if flow_ns == outputs["serviceNamespace"] else flow_ns,
            "nodeSelector": {label_key: label_value},
            "tolerations": [
                {"key": label_key, "operator": "Equal", "value": label_value,
                 "effect": "NoSchedule"},
                *spot_tolerations(outputs),
            ],
        },
        "serviceNodeSelector": {label_key: SERVICES_POOL},
        "database": {
            "host": outputs["postgresFqdn"],
            "name": outputs["postgresDatabaseName"],
            "user": METAFLOW_DB_ROLE,
            "adminUser": outputs["postgresAdminLogin"],
            "sslMode": "require",
            "existingSecret": DB_SECRET,
            "existingSecretPasswordKey": DB_SECRET_KEY,
        },
        "storage": {
            "accountName": outputs["storageAccountName"],
            "blobEndpoint": _with_slash(outputs["storageBlobEndpoint"]),
            "container": outputs["metaflowContainerName"],
        },
        "argo-workflows": {"enabled": outputs["deployArgo"]},
        "argo-events": {"enabled": argo_events_enabled(outputs, settings)},
        "airflow": {"enabled": airflow},
        # The NVIDIA device plugin, on the GPU pool's nodes, once the pool exists.
        "gpu": {"enabled": output_true(outputs, "gpuPoolEnabled")},
    }
    if settings.access.enabled:
        values["access"] = azure_access(settings.access, outputs)
        values = argo_ui_behind_signin(values)
    if airflow:
        if not outputs["airflowLogsContainerName"]:
            raise MfhelmError("deployAirflow is true but the deployment has no logs container")
        values["storage"]["airflowLogsContainer"] = outputs["airflowLogsContainerName"]
        values["airflowGlue"] = {"databaseUser": AIRFLOW_DB_ROLE, "databaseName": AIRFLOW_DB_NAME}
        sa = outputs["serviceAccountAirflow"]
        pool = {label_key: SERVICES_POOL}
        values["airflow"].update({
            "scheduler": {"serviceAccount": {"create": False, "name": sa}, "nodeSelector": pool},
            "webserver": {"serviceAccount": {"create": False, "name": sa}, "nodeSelector": pool},
            "migrateDatabaseJob": {"serviceAccount": {"create": False, "name": sa}},
            "createUserJob": {"serviceAccount": {"create": False, "name": sa}},
        })
    return airflow_behind_signin(argo_watches_flow_namespace(values, outputs["serviceNamespace"]))


def flows_namespace_for(namespace: str) -> str:
    """The default flow namespace beside a release namespace: flow pods (and
    the DAG code that launches them) stay apart from the services' Secrets."""
    name = f"{namespace}-flows"
    if len(name) > 63:
        raise MfhelmError(f"namespace {namespace!r} is too long to derive its flow namespace "
                          f"{name!r} (63 characters at most); choose a shorter one")
    return name


def local_values(settings: Settings | None = None, *, argo: bool = True,
                 airflow: bool = False, flow_namespace: str = "",
                 argo_events: bool | None = None,
                 access: LocalAccess | None = None) -> dict[str, Any]:
    """Values for the local profile (in-cluster PostgreSQL and Azurite).

    The database password is not here: `mfhelm install --local` generates it
    into the Secret the values name, as on azure. Argo Events follows Argo
    unless `argo_events` says otherwise. Sign-in is off unless `access`.
    """
    # None, not {}: Helm merges an empty map over the chart's default map and
    # keeps the default (services on `mfhelm.io/pool: services`, which a plain
    # local cluster has no node for); null removes the key.
    values: dict[str, Any] = {
        "profile": "local",
        "database": {"existingSecret": DB_SECRET, "existingSecretPasswordKey": DB_SECRET_KEY},
        "serviceNodeSelector": None,
        "flows": {"namespace": flow_namespace, "nodeSelector": None, "tolerations": []},
        "airflowGlue": {"dags": {"accessMode": "ReadWriteOnce", "storageClassName": ""}},
        "argo-workflows": {
            "enabled": argo,
            "controller": {"nodeSelector": None},
            "server": {"nodeSelector": None},
        },
        "argo-events": {
            "enabled": argo if argo_events is None else argo_events,
            "controller": {"nodeSelector": None},
        },
        "airflow": {
            "enabled": airflow,
            "scheduler": {"nodeSelector": None},
            "webserver": {"nodeSelector": None},
        },
    }
    if access is not None:
        values["access"] = access.values()
        values = argo_ui_behind_signin(values)
    return airflow_behind_signin(values)


def airflow_behind_signin(values: dict[str, Any]) -> dict[str, Any]:
    """With the sign-in on, Airflow serves under https://<host>/airflow (the
    proxy's /airflow/ route keeps the prefix; the Airflow chart prefixes its
    probes with base_url's path) and mounts the webserver_config.py our chart
    renders (groups to roles). Subchart values can't be derived inside the
    chart, so they are set here; the chart refuses values without them."""
    access = values.get("access") or {}
    airflow = values.get("airflow") or {}
    if not (access.get("enabled") and access.get("host") and airflow.get("enabled")):
        return values
    config = dict(airflow.get("config") or {})
    config["webserver"] = {**(config.get("webserver") or {}),
                           "base_url": f"https://{access['host']}/airflow"}
    webserver = {**(airflow.get("webserver") or {}),
                 "webserverConfigConfigMapName": AIRFLOW_SIGNIN_CONFIG}
    return {**values, "airflow": {**airflow, "config": config, "webserver": webserver}}


ARGO_SIGNIN_PATH = "/argo/"


def argo_ui_behind_signin(values: dict[str, Any]) -> dict[str, Any]:
    """The sign-in serves the Argo UI under /argo/ and strips that prefix
    (the Argo server serves everything at /), so the UI's <base href> must
    say /argo/ (argo-helm: server.baseHref). Without sign-in it stays at the
    chart's `/`, for port-forward."""
    argo = dict(values.get("argo-workflows") or {})
    if argo.get("enabled") is False:
        return values
    argo["server"] = {**(argo.get("server") or {}), "baseHref": ARGO_SIGNIN_PATH}
    return {**values, "argo-workflows": argo}


def argo_watches_flow_namespace(values: dict[str, Any], release_namespace: str) -> dict[str, Any]:
    """With flow pods outside the release namespace, Argo's namespaced
    controller and server must be told to watch that namespace (argo-helm
    passes extraArgs verbatim; the chart refuses the values without them),
    and so must the Argo Events controller (its managedNamespace)."""
    flow_ns = (values.get("flows") or {}).get("namespace") or release_namespace
    argo = values.get("argo-workflows") or {}
    if flow_ns == release_namespace or argo.get("enabled") is False:
        return values
    values = _argo_events_watch(values, flow_ns)
    flag = f"--managed-namespace={flow_ns}"
    argo = dict(argo)
    for part in ("controller", "server"):
        section = dict(argo.get(part) or {})
        args = list(section.get("extraArgs") or [])
        if flag not in args:
            args.append(flag)
        section["extraArgs"] = args
        argo[part] = section
    return {**values, "argo-workflows": argo}


def spot_tolerations(outputs: dict[str, Any]) -> list[dict[str, str]]:
    """The Spot pool's taint, tolerated by every step once the pool exists (the
    Metaflow config, the chart's published config and Airflow's pod hook, which
    adds tolerations to the task pods Metaflow's DAGs launch without any): only
    a step that selects the pool (mfhelm.pools.SPOT_NODE_SELECTOR) goes there.
    The GPU pool needs none (ExtendedResourceToleration; mfhelm.pools.GPU)."""
    from mfhelm import pools

    return [pools.SPOT_TAINT.toleration()] if output_true(outputs, "spotPoolEnabled") else []


def output_true(outputs: dict[str, Any], name: str) -> bool:
    """An optional boolean output: absent (a stack deployed before it existed)
    is false; saved outputs may carry it as a string, as ARM shows it."""
    value = outputs.get(name)
    return value.lower() == "true" if isinstance(value, str) else value is True


def argo_events_enabled(outputs: dict[str, Any], settings: Settings) -> bool:
    """Argo Events is deployed with Argo Workflows unless mfhelm.toml turns it off.
    (Saved outputs may carry the boolean as a string, as ARM shows it.)"""
    argo = outputs["deployArgo"]
    if isinstance(argo, str):
        argo = argo.lower() == "true"
    return argo is True and settings.deploy_argo_events


def _argo_events_watch(values: dict[str, Any], flow_ns: str) -> dict[str, Any]:
    """The Argo Events controller, namespaced, watches one namespace: the
    flow namespace, where the event bus, the webhook and the Sensors live
    (argo-helm passes managedNamespace as --managed-namespace)."""
    events = values.get("argo-events") or {}
    if events.get("enabled") is False:
        return values
    controller = dict(events.get("controller") or {})
    controller["rbac"] = {**(controller.get("rbac") or {}), "managedNamespace": flow_ns}
    return {**values, "argo-events": {**events, "controller": controller}}


def _with_slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"
