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
        "METAFLOW_KUBERNETES_TOLERATIONS": json.dumps([toleration], separators=(",", ":")),
    }
    from mfhelm.values import argo_events_enabled

    if argo_events_enabled(outputs, settings):
        config |= argo_events_config(helm.release, str(outputs["flowNamespace"]))
    config |= {k: v for k, v in urls.items() if k != "METAFLOW_SERVICE_URL"}
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
