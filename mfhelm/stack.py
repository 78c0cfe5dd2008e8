"""Install, status and uninstall of the whole stack: the steps behind the CLI.

Order matters for "never half-applied": the values are rendered and checked
against the chart (schema included) before anything touches the cluster;
then the Secrets; then `helm upgrade --install` with rollback on failure.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import yaml

from mfhelm import argo_upgrade, dbroles, proc
from mfhelm import helm as helm_mod
from mfhelm import values as values_mod
from mfhelm.errors import Interrupted, MfhelmError, remember_secret
from mfhelm.oci import OciChart
from mfhelm.uservalues import AZURE_PROTECTED, LOCAL_PROTECTED, UserValues

Progress = Callable[[str], None]
# Where the chart comes from: the packaged one (None), a directory, a registry.
ChartSource = Path | OciChart | None


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class Target:
    """Where the release goes."""

    release: str
    namespace: str
    kubeconfig: str | None = None
    context: str | None = None


def check_values(chart: Path, values: dict[str, Any], target: Target, helm_bin: str) -> None:
    """Render the chart client-side: schema and template errors stop us here,
    before any Secret or object is written. Bounded by proc.QUICK_TIMEOUT."""
    rendered = proc.run(
        [helm_bin, "template", target.release, str(chart), "--namespace", target.namespace,
         "-f", "-"],
        input=yaml.safe_dump(values), timeout=proc.QUICK_TIMEOUT,
        what="checking the values (helm template)")
    if rendered.returncode != 0:
        raise MfhelmError("the chart refused these values: " + _template_error(rendered.stderr))


def _template_error(stderr: str) -> str:
    """helm template's reason: a schema error whole (it spans lines), else
    its `Error:` line (helm 4 adds a "Use --debug" hint after it)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if "schema" in stderr:
        return " ".join(lines).removeprefix("Error: ")
    errors = [ln for ln in lines if ln.startswith("Error:")]
    msg = errors[0] if errors else (lines[-1] if lines else "failed")
    # `execution error at (metaflow/templates/x.yaml:1:4): <the chart's fail message>`
    return re.sub(r"^execution error at \([^)]*\): ", "", msg.removeprefix("Error: "))


def with_user_values(values: dict[str, Any], user: UserValues, protected: dict[str, str],
                     release_namespace: str, target: Target,
                     chart: Path | None = None) -> dict[str, Any]:
    """The user's -f/--set over mfhelm's values, and every check on them that
    needs no cluster: protected keys, security promises, the published
    config, the chart's schema and its guards (`helm template`). `mfhelm
    render` and `mfhelm install` both take this one path, so they refuse the
    same values with the same line, install before it prepares the chart or
    reaches Azure. Absent subchart archives are left out here, not fetched:
    install checks the prepared chart, subcharts included, again later."""
    from mfhelm.uservalues import check_schema

    merged = values_mod.airflow_behind_signin(values_mod.argo_watches_flow_namespace(
        user.apply(values, protected), release_namespace))
    source = chart or helm_mod.find_chart()
    check_schema(source, merged)
    helm_bin = helm_mod.helm_binary()
    renderable = helm_mod.drop_missing_dependencies(source)
    try:
        check_values(renderable, merged, target, helm_bin)
    finally:
        if renderable != source:
            proc.remove_tree(renderable.parent)
    return merged


def _checked_clients(chart: Path, values: dict[str, Any], target: Target, timeout: str,
                     helm_bin: str) -> tuple[helm_mod.Helm, Any]:
    """check_values(), the helm version check, then a checked Kubernetes client:
    errors come in that order and nothing reaches the cluster before the
    values passed, but the work overlaps: helm renders the chart and reports
    its version in their own processes while the Kubernetes client loads."""
    from mfhelm import kube

    client = helm_mod.Helm(kubeconfig=target.kubeconfig, context=target.context,
                           timeout=timeout, executable=helm_bin, check=False)
    failed: list[BaseException] = []

    def render() -> None:
        try:
            check_values(chart, values, target, helm_bin)
        except BaseException as exc:
            failed.append(exc)

    rendering = threading.Thread(target=render, name="mfhelm-check-values", daemon=True)
    rendering.start()
    try:
        kube.preload()
        rendering.join()
    except BaseException:
        # Interrupted: the check's helm (a child of the worker thread) is
        # stopped here, so that the join returns and nothing runs on.
        client.close()
        proc.stop_all()
        rendering.join()
        raise
    if failed:
        client.close()
        raise failed[0]
    client.check()
    return client, kube.api_client(target.kubeconfig, target.context)


def airflow_connection(user: str, password: str, host: str, port: int, database: str,
                       sslmode: str) -> str:
    return (f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/"
            f"{database}?sslmode={sslmode}")


# Every pod of the stack is admitted at Pod Security "baseline", not
# "restricted": the metadata image keeps run_goose.py and the migrations
# under /root (0700), so its migration container runs as uid 0 (every
# capability dropped). Namespaces mfhelm creates enforce that level.
POD_SECURITY_LEVEL = "baseline"
POD_SECURITY_LABELS = {
    "pod-security.kubernetes.io/enforce": POD_SECURITY_LEVEL,
    "pod-security.kubernetes.io/warn": POD_SECURITY_LEVEL,
}


def flow_namespace(values: dict[str, Any], target: Target) -> str:
    return (values.get("flows") or {}).get("namespace") or target.namespace


def _check_namespaces(api: Any, namespaces: list[str]) -> None:
    """Refuse, before any write, a namespace whose Pod Security would reject
    the stack's pods."""
    from mfhelm import kube

    for ns in namespaces:
        labels = kube.namespace_labels(api, ns) or {}
        if labels.get("pod-security.kubernetes.io/enforce") == "restricted":
            raise MfhelmError(
                f"namespace {ns} enforces Pod Security 'restricted'; the stack meets "
                f"'{POD_SECURITY_LEVEL}' (the DB migration container runs as uid 0): "
                "use another namespace or lower its enforce label")


def _kept(api: Any, namespace: str, name: str, key: str, make: Callable[[], str]) -> str:
    """A generated value that is made once and then kept in its Secret."""
    from mfhelm import kube

    value = kube.read_secret_value(api, namespace, name, key) or make()
    remember_secret(value)  # never printed, should a tool or server quote it
    return value


def _fernet_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def _airflow_secrets(api: Any, namespace: str, conn: str) -> dict[str, dict[str, str]]:
    """Airflow's Secrets: its DB URL, and keys generated once and kept across
    upgrades and reinstalls (the chart would otherwise regenerate the
    webserver key on every upgrade and ship admin/admin)."""
    v = values_mod
    return {
        v.AIRFLOW_DB_SECRET: {"connection": conn},
        v.AIRFLOW_WEBSERVER_SECRET: {v.AIRFLOW_WEBSERVER_SECRET_KEY: _kept(
            api, namespace, v.AIRFLOW_WEBSERVER_SECRET, v.AIRFLOW_WEBSERVER_SECRET_KEY,
            lambda: secrets.token_hex(32))},
        v.AIRFLOW_FERNET_SECRET: {v.AIRFLOW_FERNET_SECRET_KEY: _kept(
            api, namespace, v.AIRFLOW_FERNET_SECRET, v.AIRFLOW_FERNET_SECRET_KEY, _fernet_key)},
        v.AIRFLOW_ADMIN_SECRET: {
            "username": v.AIRFLOW_ADMIN_USER,
            "password": _kept(api, namespace, v.AIRFLOW_ADMIN_SECRET, "password",
                              lambda: secrets.token_urlsafe(24)),
        },
    }


def airflow_migration_job(release: str) -> str:
    """The Airflow chart's migration Job (`<release>-run-airflow-migrations`;
    its fullname is the release name)."""
    return f"{release}-run-airflow-migrations"


def _prepare_namespaces(api: Any, target: Target, flow_ns: str, *, airflow: bool) -> None:
    """The namespaces (created with the stack's Pod Security level).

    With Airflow, a finished migration Job from the last run is removed: it is
    a plain release object (not a hook, see values.yaml), a Job's pod template
    is immutable, and Helm recreates a missing one, so every upgrade migrates.
    """
    from mfhelm import kube

    for ns in dict.fromkeys([target.namespace, flow_ns]):
        kube.ensure_namespace(api, ns, POD_SECURITY_LABELS)
    if airflow:
        kube.delete_finished_job(api, target.namespace, airflow_migration_job(target.release))


def _apply_secrets(api: Any, namespace: str, secret_data: dict[str, dict[str, str]]) -> None:
    from mfhelm import kube

    for name, data in secret_data.items():
        for value in data.values():
            remember_secret(value)
        kube.apply_secret(api, namespace, name, data)


def install_local(target: Target, *, argo: bool, airflow: bool, chart: ChartSource = None,
                  timeout: str = "10m", user_values: UserValues | None = None,
                  progress: Progress = _quiet,
                  access: values_mod.LocalAccess | None = None) -> helm_mod.ReleaseInfo:
    """The local profile into the current kube context: in-cluster PostgreSQL
    and Azurite. The password is generated once and kept across upgrades.
    `user_values` (-f/--set) go over mfhelm's values, protected keys kept.
    `access`: the entry point and sign-in against an OIDC issuer."""

    values = values_mod.local_values(
        argo=argo, airflow=airflow,
        flow_namespace=values_mod.flows_namespace_for(target.namespace), access=access)
    if user_values:
        values = with_user_values(values, user_values, LOCAL_PROTECTED, target.namespace, target,
                                  _local_chart(chart))
    values = values_mod.argo_watches_flow_namespace(values, target.namespace)
    helm_bin = helm_mod.helm_binary()
    fetch = _seconds(timeout)
    progress(_chart_step(chart))
    with helm_mod.chart_dir(chart, helm=helm_bin, timeout=fetch) as source, \
            helm_mod.prepared_chart(source, values, helm=helm_bin, timeout=fetch) as prepared:
        client, api = _checked_clients(prepared, values, target, timeout, helm_bin)
        flow_ns = flow_namespace(values, target)
        _check_namespaces(api, [target.namespace, flow_ns])
        _check_pending(api, target, timeout)
        # CronWorkflows off `schedule` for Argo 4, validated whole before any write.
        argo_upgrade.before_install(api, prepared, values, target.namespace, progress)
        progress("writing the namespaces and Secrets")
        password = _kept(api, target.namespace, values_mod.DB_SECRET, values_mod.DB_SECRET_KEY,
                         lambda: secrets.token_urlsafe(24))
        data = {values_mod.DB_SECRET: {values_mod.DB_SECRET_KEY: password}}
        if airflow:
            conn = airflow_connection("metaflow", password, f"{target.release}-postgres", 5432,
                                      "airflow", "disable")
            data.update(_airflow_secrets(api, target.namespace, conn))
        _prepare_namespaces(api, target, flow_ns, airflow=airflow)
        _apply_secrets(api, target.namespace, data)
        # The local CA (made once, kept), Azurite's and the emulator's serving
        # certificate, the emulator's client and the flow pods' side of it.
        from mfhelm import localca

        localca.ensure(api, target.release, target.namespace, flow_ns)
        values = _keep_grants(client, target, values, user_values)
        return _upgrade(client, api, target, prepared, values, progress)


def install_azure(target: Target, settings: Any, outputs: dict[str, Any], *, credential: Any,
                  subscription_id: str, chart: ChartSource = None, timeout: str = "15m",
                  user_values: UserValues | None = None,
                  progress: Progress = _quiet, arm_base_url: str | None = None,
                  verify_challenge_resource: bool = True) -> helm_mod.ReleaseInfo:
    """The azure profile: AKS credentials and the DB password come from Azure
    and go only to a temporary kubeconfig (0600, removed) and a Secret.
    `user_values` (-f/--set) go over the rendered values; the keys that come
    from the deployment are refused (uservalues.AZURE_PROTECTED) before any
    call to Azure or the cluster.

    `arm_base_url` and `verify_challenge_resource` exist for sovereign clouds
    and for tests that serve the Azure APIs locally.
    """
    from mfhelm import kube
    from mfhelm.azure.aks import aks_user_kubeconfig
    from mfhelm.azure.keyvault import keyvault_secret

    values = values_mod.render_values(outputs, settings)
    if user_values:
        values = with_user_values(values, user_values, AZURE_PROTECTED,
                                  outputs["serviceNamespace"], target, _local_chart(chart))
    helm_bin = helm_mod.helm_binary()
    fetch = _seconds(timeout)
    progress(_chart_step(chart))
    with ExitStack() as cleanup:
        source = cleanup.enter_context(helm_mod.chart_dir(chart, helm=helm_bin, timeout=fetch))
        prepared = cleanup.enter_context(helm_mod.prepared_chart(source, values, helm=helm_bin,
                                                                 timeout=fetch))
        check_values(prepared, values, target, helm_bin)
        configmap, job = dbroles.render(prepared, values, target.release, target.namespace,
                                        helm_bin)
        progress("fetching AKS user credentials")
        kubeconfig = aks_user_kubeconfig(subscription_id, outputs["resourceGroupName"],
                                         outputs["aksClusterName"], credential=credential,
                                         base_url=arm_base_url)
        progress("reading the PostgreSQL admin password from Key Vault")
        admin_password = keyvault_secret(
            outputs["keyVaultUri"], outputs["postgresAdminSecretName"], credential=credential,
            verify_challenge_resource=verify_challenge_resource)
        airflow = bool(outputs["deployAirflow"])
        path = cleanup.enter_context(_temp_kubeconfig(kubeconfig))
        local = Target(target.release, target.namespace, kubeconfig=str(path))
        client = helm_mod.Helm(kubeconfig=str(path), timeout=timeout, executable=helm_bin)
        api = kube.api_client(str(path))
        flow_ns = flow_namespace(values, target)
        _check_namespaces(api, [target.namespace, flow_ns])
        _check_pending(api, target, timeout)
        # CronWorkflows off `schedule` for Argo 4, validated whole before any write.
        argo_upgrade.before_install(api, prepared, values, target.namespace, progress)
        passwords = _role_passwords(api, target.namespace, admin_password, airflow=airflow)
        progress("writing the namespaces")
        _prepare_namespaces(api, local, flow_ns, airflow=airflow)
        dbroles.run(api, target.namespace, configmap, job,
                    {"admin-password": admin_password,
                     **{f"{app}-password": pw for app, pw in passwords.items()}},
                    progress=progress)
        # The roles exist with these passwords: only now do the apps get them.
        data = {values_mod.DB_SECRET: {values_mod.DB_SECRET_KEY: passwords["metaflow"]}}
        if airflow:
            conn = airflow_connection(values_mod.AIRFLOW_DB_ROLE, passwords["airflow"],
                                      outputs["postgresFqdn"], 5432, values_mod.AIRFLOW_DB_NAME,
                                      "require")
            data.update(_airflow_secrets(api, target.namespace, conn))
            data[values_mod.AIRFLOW_DB_SECRET]["password"] = passwords["airflow"]
        progress("writing the Secrets")
        _apply_secrets(api, target.namespace, data)
        values = _keep_grants(client, local, values, user_values)
        return _upgrade(client, api, target, prepared, values, progress)


def _keep_grants(client: helm_mod.Helm, target: Target, values: dict[str, Any],
                 user_values: UserValues | None) -> dict[str, Any]:
    """The groups `mfhelm grant` put in the installed release
    (dataScientists.groups, viewers.groups) carried into this install, unless
    the user's -f/--set set that list: then theirs is the list."""
    from mfhelm import grant

    if client.status(target.release, namespace=target.namespace) is None:
        return values
    previous = client.user_values(target.release, namespace=target.namespace)
    return grant.keep_granted(previous, values,
                              lambda key: user_values is not None and user_values.writes(key))


def _local_chart(chart: ChartSource) -> Path | None:
    """The chart directory given with --chart; None for the packaged one or
    a registry's (checked once pulled)."""
    return helm_mod.find_chart(chart) if isinstance(chart, Path) else None


def _seconds(timeout: str) -> float:
    """--timeout in seconds: the bound of the chart's fetch (pull, dependencies)."""
    from mfhelm.settings import duration_seconds

    return duration_seconds(timeout)


def _chart_step(chart: ChartSource) -> str:
    if isinstance(chart, OciChart):
        return f"pulling the chart {chart.ref} {chart.version}"
    return "preparing the chart"


def _upgrade(client: helm_mod.Helm, api: Any, target: Target, chart: Path,
             values: dict[str, Any], progress: Progress) -> helm_mod.ReleaseInfo:
    """helm upgrade --install, with the release's workloads watched meanwhile:
    if helm's wait fails, the error names what was not ready and why."""
    from mfhelm import kube

    progress("helm upgrade --install (waiting for the pods)")
    namespaces = list(dict.fromkeys([target.namespace, flow_namespace(values, target)]))
    watch = kube.ReadinessWatch(api, namespaces, f"app.kubernetes.io/instance={target.release}",
                                _seconds(client.timeout)).start()
    try:
        try:
            return client.install_or_upgrade(target.release, chart, values,
                                             namespace=target.namespace)
        finally:
            seen = watch.stop()
    except helm_mod.HelmWaitFailed as exc:
        if not seen:  # helm failed before a sample found anything: look now
            try:
                seen = kube.not_ready(api, namespaces,
                                      f"app.kubernetes.io/instance={target.release}")
            except Exception:  # noqa: BLE001 - helm's own words are still said
                seen = []
        raise MfhelmError(wait_failure(exc.stderr, seen, client.timeout, target)) from None
    except (KeyboardInterrupt, Interrupted, proc.TimedOut):
        # helm is stopped (its process group); the revision it left pending
        # is ours, so clear it now rather than block the next install.
        _clear_pending(api, target)
        raise


def wait_failure(stderr: str, seen: list[Any], timeout: str, target: Target) -> str:
    """One line for a failed wait: what helm waited for and why each is not
    ready (kube.not_ready: the workload, its pod's state, that pod's node),
    workloads with the same reason told together, at most kube.REASONS_SHOWN
    reasons; and what helm did about it."""
    from mfhelm import kube

    timed_out = "context deadline exceeded" in stderr or "timed out waiting" in stderr
    head = f"install timed out after {timeout}" if timed_out else "install failed"
    named = helm_mod.waited_for(stderr)
    order = {key: i for i, key in enumerate(named)}
    seen = sorted(seen, key=lambda r: (r.why == "", order.get((r.kind, r.namespace, r.name),
                                                              len(order))))

    def label(kind: str, ns: str, name: str) -> str:
        return f"{kind} {name if ns == target.namespace else f'{ns}/{name}'}"

    groups: dict[tuple[bool, str], list[Any]] = {}
    for r in seen:
        if r.why:
            groups.setdefault((bool(r.pod), r.why), []).append(r)
    parts = []
    for (has_pod, why), members in list(groups.items())[:kube.REASONS_SHOWN]:
        names = [f"{label(r.kind, r.namespace, r.name)} {r.ready}/{r.desired}" for r in members]
        listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        if not has_pod:
            parts.append(f"{listed} ready: {why}")
        elif len(members) == 1:
            parts.append(f"{listed} ready: pod {members[0].pod} {why}")
        else:
            parts.append(f"{listed} ready: their pods {why}")
    told = sum(len(m) for m in list(groups.values())[:kube.REASONS_SHOWN])
    known = {(r.kind, r.namespace, r.name) for r in seen}
    more = len(seen) - told + len([k for k in named if k not in known])
    if not parts and named:  # helm named them, but they were gone before mfhelm looked
        parts = [label(*k) for k in named[:kube.REASONS_SHOWN]]
        more = len(named) - len(parts)
    if more > 0:
        parts.append(f"{more} more not ready")
    if "has been uninstalled" in stderr:
        after = "helm removed the release again (rollback on failure)"
    elif "has been rolled back" in stderr:
        after = "helm rolled back to the previous revision"
    else:
        after = helm_mod.HelmWaitFailed(stderr).args[0]
    if not parts:
        return f"{head}; mfhelm found no workload of the release not ready; {after}"
    return f"{head} waiting for {'; '.join(parts)}; {after}"


def _pending(api: Any, target: Target) -> list[Any]:
    """Helm's release records (Secrets) of this release left pending-*."""
    from kubernetes import client

    core: Any = client.CoreV1Api(api)
    found = core.list_namespaced_secret(
        target.namespace, label_selector=f"owner=helm,name={target.release}").items
    return [s for s in found if (s.metadata.labels or {}).get("status", "").startswith("pending-")]


def _clear_pending(api: Any, target: Target) -> None:
    """Delete pending revisions: the last finished revision becomes current
    again (none after an interrupted first install, whose objects the next
    install adopts: they carry the release's ownership annotations)."""
    from kubernetes import client

    core: Any = client.CoreV1Api(api)
    for s in _pending(api, target):
        core.delete_namespaced_secret(s.metadata.name, target.namespace)


def _check_pending(api: Any, target: Target, timeout: str) -> None:
    """A revision left pending by an interrupted or killed install blocks
    every later one ("another operation is in progress"). One older than this
    install's --timeout cannot belong to a live install: clear it. A younger
    one may: refuse with one line."""
    import datetime

    from mfhelm.settings import duration_seconds

    now = datetime.datetime.now(datetime.UTC)
    for s in _pending(api, target):
        age = (now - s.metadata.creation_timestamp).total_seconds()
        if age <= duration_seconds(timeout):
            raise MfhelmError(
                f"release {target.release} is {s.metadata.labels.get('status')} "
                f"(revision {s.metadata.labels.get('version')}, started {age:.0f}s ago): another "
                f"install may be running; wait for it, or re-run after --timeout {timeout}")
    _clear_pending(api, target)


def _role_passwords(api: Any, namespace: str, admin_password: str, *,
                    airflow: bool) -> dict[str, str]:
    """The application roles' passwords: generated once and kept in the apps'
    Secrets. A Secret still holding the admin's password (installs before the
    roles existed) gets a new one."""
    def kept(name: str, key: str) -> str:
        value = _kept(api, namespace, name, key, lambda: secrets.token_urlsafe(24))
        return secrets.token_urlsafe(24) if value == admin_password else value

    out = {"metaflow": kept(values_mod.DB_SECRET, values_mod.DB_SECRET_KEY)}
    if airflow:
        out["airflow"] = kept(values_mod.AIRFLOW_DB_SECRET, "password")
    for value in out.values():
        remember_secret(value)
    return out


@contextmanager
def _temp_kubeconfig(content: bytes) -> Iterator[Path]:
    tmp = proc.temp_dir("mfhelm-")
    try:
        path = tmp / "kubeconfig"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        yield path
    finally:
        proc.remove_tree(tmp)


# What the local profile is, said by `mfhelm status` and the README.
LOCAL_PROFILE_LIMITS = (
    "local profile: Blob is Azurite over HTTPS (mfhelm's local CA) with tokens from the "
    "entra-emulator; from this machine: `mfhelm config --local`, then `mfhelm port-forward`")


@dataclass(frozen=True)
class Status:
    release: helm_mod.ReleaseInfo | None
    components: list[Any]
    profile: str = "azure"


def status(target: Target) -> Status:
    from mfhelm import kube

    client = helm_mod.Helm(kubeconfig=target.kubeconfig, context=target.context)
    info = client.status(target.release, namespace=target.namespace)
    if info is None:
        return Status(None, [])
    user_values = client.user_values(target.release, namespace=target.namespace)
    profile = str(user_values.get("profile", "azure"))
    api = kube.api_client(target.kubeconfig, target.context)
    selector = f"app.kubernetes.io/instance={target.release}"
    components = kube.workload_readiness(api, target.namespace, selector)
    # Argo Events' bus and webhook run in the flow namespace; the controller
    # that makes them passes on our labels (Sensors carry Metaflow's).
    flow_ns = flow_namespace(user_values, target)
    if flow_ns != target.namespace:
        components += [kube.Readiness(r.kind, f"{flow_ns}/{r.name}", r.ready, r.desired)
                       for r in kube.workload_readiness(api, flow_ns, selector)]
    return Status(info, components, profile)


# The Argo Events bus and webhook are Helm hooks (their CRDs come with the same
# release), so `helm uninstall` leaves them: removed here, by the release's label.
EVENT_HOOK_PLURALS = ("eventsources", "eventbus")


def _delete_event_hooks(api: Any, namespace: str, release: str) -> list[str]:
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    custom = k8s.CustomObjectsApi(api)
    deleted = []
    for plural in EVENT_HOOK_PLURALS:
        try:
            listed = cast(dict[str, Any], custom.list_namespaced_custom_object(
                "argoproj.io", "v1alpha1", namespace, plural,
                label_selector=f"app.kubernetes.io/instance={release}"))
            for item in listed["items"]:
                name = item["metadata"]["name"]
                custom.delete_namespaced_custom_object(
                    "argoproj.io", "v1alpha1", namespace, plural, name)
                deleted.append(f"{plural}/{name}")
        except ApiException as exc:
            if exc.status != 404:  # no such CRD (Argo Events never installed), or gone
                raise MfhelmError(f"deleting the Argo Events {plural} of {release!r} in "
                                  f"{namespace!r}: {exc.status} {exc.reason}") from None
    return deleted


def uninstall(target: Target, *, purge: bool) -> list[str]:
    """Remove the release. Data (PVCs, Secrets from mfhelm) stays unless purge;
    returns what purge deleted."""
    from mfhelm import kube

    client = helm_mod.Helm(kubeconfig=target.kubeconfig, context=target.context)
    if client.status(target.release, namespace=target.namespace) is None:
        raise MfhelmError(f"no release {target.release!r} in namespace {target.namespace!r}")
    flow_ns = flow_namespace(client.user_values(target.release, namespace=target.namespace),
                             target)
    client.uninstall(target.release, namespace=target.namespace)
    api = kube.api_client(target.kubeconfig, target.context)
    deleted = _delete_event_hooks(api, flow_ns, target.release)
    if not purge:
        return deleted
    deleted += [f"pvc/{n}" for n in kube.delete_pvcs(
        api, target.namespace, f"app.kubernetes.io/instance={target.release}")]
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    from mfhelm import localca

    deleted += localca.purge(api, target.release, target.namespace, flow_ns)
    core = k8s.CoreV1Api(api)
    for name in values_mod.MFHELM_SECRETS:
        try:
            core.delete_namespaced_secret(name, target.namespace)
            deleted.append(f"secret/{name}")
        except ApiException as exc:
            if exc.status != 404:
                raise MfhelmError(f"deleting secret {name}: {exc.status} {exc.reason}") from None
    return deleted

