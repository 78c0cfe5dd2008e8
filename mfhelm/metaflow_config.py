"""The end user's Metaflow configuration (`~/.metaflowconfig/config.json`).

`build_config` is pure: deployment outputs + settings in, the config keys out,
matching what the chart publishes in its `<release>-metaflow-config` ConfigMap.
`write_config` merges them into the user's file without losing keys mfhelm
does not own, and keeps a backup of what it replaced.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mfhelm import userfiles
from mfhelm.errors import MfhelmError

if TYPE_CHECKING:
    from mfhelm.settings import Settings

DEFAULT_SERVICE_URL = "http://localhost:8080"  # `kubectl port-forward svc/...-metadata 8080`
METADATA_PORT = 8080
SYSROOT_PREFIX = "metaflow"
# Pods labelled so get the workload-identity webhook's token; Metaflow's labels are k=v,k=v.
WORKLOAD_IDENTITY_LABEL = "azure.workload.identity/use=true"
_PROFILE_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
# A path as Metaflow joins endpoints to it: ASCII, no spaces, query or fragment.


def metadata_internal_url(release: str, namespace: str) -> str:
    """The metadata Service as pods reach it; the chart names it `<release>-metadata`."""
    return f"http://{release}-metadata.{namespace}.svc.cluster.local:{METADATA_PORT}"


# Argo Events, as the chart names its objects (values.yaml argoEventsGlue and
# templates/argo-events-glue.yaml; a chart test compares the published config).
ARGO_EVENTS_EVENT = "metaflow-event"
ARGO_EVENTS_SENSOR_SERVICE_ACCOUNT = "metaflow-sensors"
ARGO_EVENTS_WEBHOOK_PORT = 12000
# The webhook through `mfhelm port-forward`.
ARGO_EVENTS_WEBHOOK_URL = f"http://localhost:{ARGO_EVENTS_WEBHOOK_PORT}/{ARGO_EVENTS_EVENT}"


def argo_events_config(release: str, flow_namespace: str) -> dict[str, str]:
    """The METAFLOW_ARGO_EVENTS_* keys `argo-workflows create` compiles Sensors
    from (event, bus, source, the Sensors' account) and that `ArgoEvent.publish`
    and @trigger_on_finish post to (the webhook: from laptops, from pods)."""
    source = f"{release}-webhook"
    return {
        "METAFLOW_ARGO_EVENTS_EVENT": ARGO_EVENTS_EVENT,
        "METAFLOW_ARGO_EVENTS_EVENT_BUS": f"{release}-eventbus",
        "METAFLOW_ARGO_EVENTS_EVENT_SOURCE": source,
        "METAFLOW_ARGO_EVENTS_SERVICE_ACCOUNT": ARGO_EVENTS_SENSOR_SERVICE_ACCOUNT,
        "METAFLOW_ARGO_EVENTS_WEBHOOK_URL": ARGO_EVENTS_WEBHOOK_URL,
        "METAFLOW_ARGO_EVENTS_INTERNAL_WEBHOOK_URL":
            f"http://{source}-eventsource-svc.{flow_namespace}.svc.cluster.local:"
            f"{ARGO_EVENTS_WEBHOOK_PORT}/{ARGO_EVENTS_EVENT}",
    }


# The client side of sign-in (README: "From a laptop or notebook"). With this key
# set, mfhelm's Metaflow extension (mfhelm/mfext) sends an Entra access token for
# the scope with every request to METAFLOW_SERVICE_URL; flow pods never get it.
SERVICE_SCOPE_KEY = "METAFLOW_MFHELM_SERVICE_SCOPE"


def signin_scope(client_id: str) -> str:
    """What a laptop asks Entra for: the sign-in app's API, every scope it was granted."""
    return f"api://{client_id}/.default"


def access_client_config(outputs: dict[str, Any], settings: Settings) -> dict[str, str]:
    """The laptop's key for the sign-in proxy in front of the metadata API: the
    scope its Entra access tokens are for (the URLs are access_urls')."""
    access = settings.access
    if not access.enabled:
        return {}
    client_id = str(outputs.get("signinClientId") or access.client_id or "")
    if not client_id:
        raise MfhelmError("the deployment outputs have no signinClientId (the sign-in app): "
                          "re-run `mfhelm deploy` with [access] host set, or set [access] "
                          "client_id in mfhelm.toml")
    return {SERVICE_SCOPE_KEY: signin_scope(client_id)}


def is_service_url(url: str) -> bool:
    """http(s)://host[:port][/path]: a DNS name, IPv4 or [IPv6] host, ASCII
    throughout, no credentials, query or fragment, and nothing after it."""
    import ipaddress

    from mfhelm.azure.outputs import is_host, is_url_path, split_url

    parts = split_url(url)
    if parts is None:
        return False
    host = parts.hostname or ""
    try:
        ip_host = ":" in host and bool(ipaddress.IPv6Address(host))
    except ValueError:
        ip_host = False
    return (parts.scheme in ("http", "https") and url.startswith(f"{parts.scheme}://")
            and parts.username is None and not parts.query and not parts.fragment
            and "?" not in url and "#" not in url
            and (is_host(host) or ip_host) and is_url_path(parts.path))


def check_service_url(service_url: str) -> str:
    if not is_service_url(service_url):
        raise MfhelmError(
            f"service URL {service_url!r} must look like http://host[:port] "
            f"(default {DEFAULT_SERVICE_URL} for a port-forward)"
        )
    return service_url


def access_urls(host: str, *, argo: bool) -> dict[str, str]:
    """With the entry point on, what laptops reach through https://<host> (the
    chart's ConfigMap publishes the same): the metadata API, and the UIs
    Metaflow links to (`argo-workflows create` prints Argo's)."""
    config = {
        "METAFLOW_SERVICE_URL": f"https://{host}/metadata",
        "METAFLOW_UI_URL": f"https://{host}/",
    }
    if argo:
        config["METAFLOW_ARGO_WORKFLOWS_UI_URL"] = f"https://{host}/argo"
    return config


# Metaflow (2.19.32+) writes a CronWorkflow's cron expression into `schedules`
# (a list, Argo 3.6+) with this key on, else into `schedule`, which Argo 4
# removed: its controller ignores it ("cron workflow must have at least one
# schedule") and its full CRD refuses the object. Every Argo the chart has
# pinned (3.6.10 on) reads `schedules`, so the key is on wherever Argo runs.
ARGO_SCHEDULES_KEY = "METAFLOW_ARGO_WORKFLOWS_USE_SCHEDULES"


# The first Metaflow that reads the key: 2.19.32's metaflow_config.py and
# plugins/argo/argo_client.py; 2.19.31 has neither, so it writes `schedule`.
SCHEDULES_SINCE = (2, 19, 32)


def schedules_note(config: dict[str, str], metaflow_version: str | None) -> str | None:
    """One line for the user when the config turns the schedules key on but
    the Metaflow beside mfhelm (`metaflow_version`, None if not installed)
    is too old to read it: its @schedule flows would get CronWorkflows that
    Argo 4 never starts."""
    if config.get(ARGO_SCHEDULES_KEY) != "true" or metaflow_version is None:
        return None
    found = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", metaflow_version)
    if found is None:
        return None
    if tuple(int(n or 0) for n in found.groups()) >= SCHEDULES_SINCE:
        return None
    since = ".".join(map(str, SCHEDULES_SINCE))
    return (f"note: metaflow {metaflow_version} here ignores {ARGO_SCHEDULES_KEY}, so its "
            f"@schedule flows get CronWorkflows Argo 4 never starts; install "
            f"metaflow>={since} before `argo-workflows create`")


def installed_metaflow() -> str | None:
    """The version of the Metaflow importable beside mfhelm, if any."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("metaflow")
    except PackageNotFoundError:
        return None


def _deploys_argo(outputs: dict[str, Any]) -> bool:
    argo = outputs["deployArgo"]
    return argo.lower() == "true" if isinstance(argo, str) else argo is True


def build_config(
    outputs: dict[str, Any], settings: Settings, *, service_url: str | None = None
) -> dict[str, str]:
    """Metaflow client settings for this stack, every value a string as Metaflow reads them.

    `service_url` unset: https://<host>/metadata with the entry point on
    (mfhelm.toml [access] host), else the port-forward's URL. Pods keep the
    in-cluster URL either way."""
    access = settings.access
    urls = access_urls(access.host, argo=_deploys_argo(outputs)) if access.enabled else {}
    if service_url is None:
        service_url = urls.get("METAFLOW_SERVICE_URL", DEFAULT_SERVICE_URL)
    check_service_url(service_url)
    from mfhelm.azure.outputs import check_settings
    from mfhelm.values import spot_tolerations

    helm = settings.helm
    check_settings(outputs, settings)
    container = str(outputs["metaflowContainerName"]).strip("/")
    label_key, label_value = outputs["taskworkersLabelKey"], outputs["taskworkersLabelValue"]
    toleration = {
        "key": label_key,
        "operator": "Equal",
        "value": label_value,
        "effect": "NoSchedule",
    }
    config = {
        "METAFLOW_DEFAULT_DATASTORE": "azure",
        "METAFLOW_DATASTORE_SYSROOT_AZURE": f"{container}/{SYSROOT_PREFIX}",
        "METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT": str(outputs["storageBlobEndpoint"]),
        "METAFLOW_DEFAULT_METADATA": "service",
        "METAFLOW_SERVICE_URL": service_url,
        "METAFLOW_SERVICE_INTERNAL_URL": metadata_internal_url(helm.release, helm.namespace),
        "METAFLOW_KUBERNETES_NAMESPACE": str(outputs["flowNamespace"]),
        "METAFLOW_KUBERNETES_SERVICE_ACCOUNT": str(outputs["serviceAccountFlows"]),
        "METAFLOW_KUBERNETES_LABELS": WORKLOAD_IDENTITY_LABEL,
        "METAFLOW_KUBERNETES_NODE_SELECTOR": f"{label_key}={label_value}",
        # Metaflow json.loads this one: a JSON list of Kubernetes tolerations.
        "METAFLOW_KUBERNETES_TOLERATIONS": json.dumps(
            [toleration, *spot_tolerations(outputs)], separators=(",", ":")),
    }
    if settings.image.reference:
        # The image sets METAFLOW_SKIP_INSTALL_DEPENDENCIES itself (ENV): the
        # pod's shell reads it, and Metaflow forwards no such config key.
        config["METAFLOW_KUBERNETES_CONTAINER_IMAGE"] = settings.image.reference
    from mfhelm.values import argo_events_enabled

    if _deploys_argo(outputs):
        config[ARGO_SCHEDULES_KEY] = "true"
    if argo_events_enabled(outputs, settings):
        config |= argo_events_config(helm.release, str(outputs["flowNamespace"]))
    config |= {k: v for k, v in urls.items() if k != "METAFLOW_SERVICE_URL"}
    config |= access_client_config(outputs, settings)
    return config


def config_home(home: str | os.PathLike[str] | None = None) -> Path:
    """Metaflow's config directory: `home`, else $METAFLOW_HOME, else ~/.metaflowconfig."""
    return Path(home or os.environ.get("METAFLOW_HOME") or "~/.metaflowconfig").expanduser()


def config_path(profile: str | None = None, *, home: str | os.PathLike[str] | None = None) -> Path:
    """`config.json`, or `config_<profile>.json` for METAFLOW_PROFILE=<profile>."""
    if profile is None or profile == "":
        return config_home(home) / "config.json"
    if not _PROFILE_RE.fullmatch(profile):
        raise MfhelmError(
            f"profile {profile!r} is not usable as a file name: use letters, digits, '.', '_', "
            "'-' (at most 63 characters)"
        )
    return config_home(home) / f"config_{profile}.json"


def config_json(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=4, sort_keys=True) + "\n"


def _read_existing(path: Path) -> dict[str, Any]:
    if not os.path.lexists(path):
        return {}
    data = userfiles.load_json(path, invalid="fix or move it, then retry")
    if not isinstance(data, dict):
        raise MfhelmError(f"{path}: not a JSON object; fix or move it, then retry")
    return data


def _backup(path: Path) -> Path:
    """A private copy beside `path`, under a name nothing (not even a dangling
    symlink) holds yet: created exclusively, never written through a link."""
    data = userfiles.read_bytes(path)
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    backup = path.with_name(f"{path.name}.bak-{stamp}")
    n = 1
    while True:
        try:
            userfiles.create_exclusive(backup, data, "backup")
            return backup
        except FileExistsError:
            backup = path.with_name(f"{path.name}.bak-{stamp}-{n}")
            n += 1


def write_config(
    config: dict[str, Any],
    profile: str | None = None,
    *,
    home: str | os.PathLike[str] | None = None,
    print_only: bool = False,
) -> Path:
    """Merge `config` into the profile's file and return its path.

    Keys already in the file that `config` does not set are kept; the file
    being replaced is copied to `<name>.bak-<timestamp>` first. The write is
    atomic and the file is private (0600): users keep tokens in it. With
    `print_only`, nothing is touched and only the path is returned.
    """
    path = config_path(profile, home=home)
    if print_only:
        return path
    if path.is_symlink():
        # Read, chmod and replace would each follow it somewhere else.
        raise MfhelmError(f"{path}: is a symbolic link; mfhelm does not write through links "
                          "(remove it, or copy the file it points to in its place)")
    existing = _read_existing(path)
    merged = existing | config
    if path.exists() and merged == existing:
        try:  # O_NOFOLLOW: a link put there meanwhile is not followed
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
        except OSError as exc:
            raise userfiles.os_error(path, exc) from None
        return path
    userfiles.ensure_dir(path.parent)
    if path.exists():
        _backup(path)
    userfiles.write_text(path, config_json(merged), private=True)
    return path


# --- the local profile, from a laptop through `mfhelm port-forward` ----------------------
# The ports are portforward.plan's; what the keys mean is mfhelm/localca.py's and
# mfhelm/mfext's (config/local_profile.py, plugins/local_azure.py).
LOCAL_BLOB_URL = "https://localhost:10000/devstoreaccount1/"
LOCAL_AUTHORITY = "https://localhost:8443"
LOCAL_UI_URL = "http://localhost:3000"
LOCAL_ARGO_UI_URL = "http://localhost:2746"
LOCAL_CA_KEY = "METAFLOW_MFHELM_LOCAL_CA"


def local_ca_path(config_file: Path) -> Path:
    """The CA bundle beside the config it belongs to (config.json: config.ca.pem)."""
    return config_file.with_name(f"{config_file.stem}.ca.pem")


def build_local_config(published: dict[str, Any], *, release: str, ca_file: Path,
                       client: dict[str, str], argo: bool) -> dict[str, str]:
    """A laptop's config for a local-profile release: the release's published
    config (`<release>-metaflow-config`) with the port-forwarded URLs, the
    mfhelm-local Azure client provider and its emulator client, the CA bundle
    file and the Secret that gives flow pods their side of it.

    `client`: the Secret <release>-entra-emulator (tenant-id, client-id,
    client-assertion)."""
    from mfhelm import localca

    missing = [k for k in ("tenant-id", "client-id", "client-assertion") if not client.get(k)]
    if missing:
        raise MfhelmError(f"Secret {localca.emulator_secret(release)} lacks {', '.join(missing)}: "
                          "re-run `mfhelm install --local`")
    config = {str(k): str(v) for k, v in published.items()}
    urls = {"METAFLOW_UI_URL": LOCAL_UI_URL}
    if argo:
        urls["METAFLOW_ARGO_WORKFLOWS_UI_URL"] = LOCAL_ARGO_UI_URL
    for key, url in urls.items():  # with the sign-in in front, the published ones stand
        config.setdefault(key, url)
    config.setdefault("METAFLOW_SERVICE_URL", DEFAULT_SERVICE_URL)
    config |= {
        "METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT": LOCAL_BLOB_URL,
        "METAFLOW_DEFAULT_AZURE_CLIENT_PROVIDER": localca.CLIENT_PROVIDER,
        "METAFLOW_MFHELM_LOCAL_AUTHORITY": LOCAL_AUTHORITY,
        "METAFLOW_MFHELM_LOCAL_TENANT_ID": client["tenant-id"],
        "METAFLOW_MFHELM_LOCAL_CLIENT_ID": client["client-id"],
        "METAFLOW_MFHELM_LOCAL_CLIENT_ASSERTION": client["client-assertion"],
        LOCAL_CA_KEY: str(ca_file),
        "METAFLOW_KUBERNETES_SECRETS": localca.flows_secret(release),
    }
    return config


def read_local_release(api: Any, release: str,
                       namespace: str) -> tuple[dict[str, Any], dict[str, str], str, bool]:
    """(published config, emulator client, CA certificate, Argo's server is
    there) of a local-profile release, or a one-line error saying what is missing."""
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    from mfhelm import kube, localca

    name = f"{release}-metaflow-config"
    try:
        cm = k8s.CoreV1Api(api).read_namespaced_config_map(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            raise MfhelmError(f"no ConfigMap {name} in namespace {namespace!r}: is release "
                              f"{release!r} installed there (`mfhelm install --local`)?") from None
        raise kube.api_error(exc, f"reading ConfigMap {namespace}/{name}") from None
    try:
        published = json.loads((cm.data or {}).get("config.json") or "")
    except ValueError:
        published = None
    if not isinstance(published, dict):
        raise MfhelmError(f"ConfigMap {namespace}/{name} has no config.json object; re-run "
                          "`mfhelm install --local`")
    ca = kube.read_secret_value(api, namespace, localca.ca_secret(release), "ca.crt")
    if not ca:
        raise MfhelmError(f"release {release!r} has no local CA (Secret "
                          f"{localca.ca_secret(release)}): it is not a local-profile install, "
                          "or predates it; run `mfhelm install --local`")
    client = {k: kube.read_secret_value(api, namespace, localca.emulator_secret(release), k) or ""
              for k in ("tenant-id", "client-id", "client-assertion")}
    try:
        k8s.CoreV1Api(api).read_namespaced_service(f"{release}-argo-workflows-server", namespace)
        argo = True
    except ApiException:
        argo = False
    return published, client, ca, argo


def local_config(api: Any, release: str, namespace: str,
                 profile: str | None = None) -> tuple[dict[str, str], str]:
    """(the laptop's config, the CA certificate it trusts) for a local-profile
    release, read from the cluster: what `mfhelm config --local` and `mfhelm up` write."""
    published, client, ca, argo = read_local_release(api, release, namespace)
    cfg = build_local_config(published, release=release,
                             ca_file=local_ca_path(config_path(profile)),
                             client=client, argo=argo)
    return cfg, ca


def write_local_config(config: dict[str, str], ca: str, profile: str | None = None, *,
                       home: str | os.PathLike[str] | None = None) -> Path:
    """The CA bundle first (the config names it), then the config."""
    path = config_path(profile, home=home)
    userfiles.ensure_dir(path.parent)
    userfiles.write_text(Path(config[LOCAL_CA_KEY]), ca if ca.endswith("\n") else ca + "\n",
                         "CA bundle")
    return write_config(config, profile, home=home)
