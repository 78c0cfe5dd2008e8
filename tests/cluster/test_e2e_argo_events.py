"""Argo Events on the test cluster, for Metaflow's @trigger and @trigger_on_finish.

- The CRDs come from the Go module github.com/argoproj/argo-events at the
  appVersion of the argo-helm `argo-events` chart the chart pins (2.4.22 ships
  v1.9.10); tools.toml [gobuild.argo-events] copies them, with the module's
  full JSON schema of the API types, out of the module version it builds the
  `argo-events` binary from. The CRDs leave `spec` open
  (x-kubernetes-preserve-unknown-fields), so every custom object here is also
  checked against that schema.
- Our chart's events objects, rendered by the real helm, are applied
  server-side; SubjectAccessReviews judge the Sensors' account.
- Real Metaflow (the `metaflow_env` fixture: exactly the config `mfhelm
  config` writes) compiles a flow with @trigger and one with
  @trigger_on_finish; `argo-workflows create`, run by a data scientist who
  holds only the chart's Role, writes their Sensors to the flow namespace.
- The real controller (`argo-events controller`, built from the module) runs
  on this host as the ServiceAccount argo-helm creates for it, with exactly
  the Roles a release grants it: in the flow namespace ours, at home none
  (our values turn argo-helm's Role off; one replica elects no leader), and
  argo-helm's flags and controller config. Its config
  path is fixed (/etc/argo-events/controller-config.yaml), so it runs in a
  private mount namespace (`unshare --mount`) with the config bound there; the
  empty mount point is created on the host, as tests/cluster/kwok/shim does
  for pod volumes. Its metrics and health ports move to free ones. It makes
  the event bus's StatefulSet, the webhook's Deployment and Service and one
  Deployment per Sensor; KWOK runs none of their containers.
- `helm upgrade --install` of our chart with the CRDs served creates the
  EventBus and EventSource as post-install/post-upgrade hooks.
- An event end to end: the bus's NATS server, the webhook and the Sensors
  run on this host as the controller specified their pods (see the section
  at the end), and Metaflow's ArgoEvent starts a flow.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from . import argo
from . import metaflow_env as mfenv
from .controlplane import ROOT, Processes, ToolchainMissing, _installer, ensure_tool, free_port
from .handle import Cluster, wait_for

pytestmark = pytest.mark.cluster

TOOL = "argo-events"
CHART_VERSION = "2.4.22"          # charts/metaflow/Chart.yaml, argo-events
APP_VERSION = "v1.9.10"           # argo-helm argo-events 2.4.22 Chart.yaml appVersion
IMAGE = f"quay.io/argoproj/argo-events:{APP_VERSION}"  # its global.image, tag = appVersion
EVENTS = {"group": "argoproj.io", "version": "v1alpha1"}
PLURALS = {"EventBus": "eventbus", "EventSource": "eventsources", "Sensor": "sensors"}
CRDS = {f"{p}.argoproj.io" for p in PLURALS.values()}
# `helm template` knows no cluster: these make the chart render its custom
# objects, as it does once the CRDs are served or the argo-events chart is in.
API_VERSIONS = ("argoproj.io/v1alpha1/EventBus", "argoproj.io/v1alpha1/EventSource")
RELEASE = "metaflow"
RELEASE_NS = "metaflow"      # the config's in-cluster URLs name the release namespace
GROUP = "ml-team"
SENSOR_ACCOUNT = "metaflow-sensors"
# Our objects, by the component label the chart gives them.
COMPONENTS = ("sensors", "eventbus", "events-webhook", "argo-events")


# --- the build ------------------------------------------------------------------

@dataclass(frozen=True)
class EventsBuild:
    binary: Path
    crds: Path
    schema_file: Path
    version: str

    def crd_files(self) -> list[Path]:
        return sorted(self.crds.glob("argoproj.io_*.yaml"))


def ensure_events() -> EventsBuild:
    home, entry = ensure_tool(TOOL, "the Argo Events cluster tests (its controller and CRDs)")
    build = EventsBuild(home / "bin" / "argo-events", home / "crds",
                        home / "jsonschema" / "schema.json", entry["version"])
    if not build.crd_files() or not build.schema_file.exists():
        raise RuntimeError(f"{home} lacks the CRDs or the schema; remove it to rebuild it")
    return build


@cache
def _definitions(schema_file: Path) -> dict[str, Any]:
    return dict(json.loads(schema_file.read_text())["definitions"])


def _inline(node: Any, defs: dict[str, Any], depth: int = 0) -> Any:
    """The schema with every `$ref` replaced by its definition, so that the
    unknown-field check of metaflow_env.schema_problems sees the properties."""
    if depth > 40:
        return {}
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(defs[node["$ref"].removeprefix("#/definitions/")], defs, depth + 1)
        return {k: _inline(v, defs, depth + 1) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs, depth + 1) for v in node]
    return node


def schema_of(build: EventsBuild, kind: str) -> dict[str, Any]:
    """Argo Events' own schema of a kind (api/jsonschema/schema.json)."""
    defs = _definitions(build.schema_file)
    return dict(_inline(defs[f"io.argoproj.events.v1alpha1.{kind}"], defs))


def problems(build: EventsBuild, obj: dict[str, Any]) -> list[str]:
    return mfenv.schema_problems(schema_of(build, obj["kind"]), obj)


@pytest.fixture(scope="module")
def events_build(cluster: Cluster) -> EventsBuild:
    """The pinned build, its CRDs applied (they stay for the session, like Argo's)."""
    try:
        build = ensure_events()
    except ToolchainMissing as exc:
        pytest.skip(reason=str(exc))
    docs = [yaml.safe_load(p.read_text()) for p in build.crd_files()]
    for doc in docs:
        argo.apply(cluster, doc)
    ext = client.ApiextensionsV1Api(cluster.api_client())

    def established() -> bool:
        return all(any(c.type == "Established" and c.status == "True"
                       for c in ext.read_custom_resource_definition(d["metadata"]["name"])
                       .status.conditions or [])
                   for d in docs)

    wait_for(established, 60, "Argo Events' CRDs to be established")
    return build


# --- our chart's objects ------------------------------------------------------------

def chart_values(release_ns: str, flow_ns: str, extra: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """The values mfhelm gives the chart for this flow namespace (Argo's and
    Argo Events' controllers told to watch it), plus `extra`."""
    values = argo.chart_values(release_ns, flow_ns)
    return {**values, **(extra or {})}


def render_chart(release: str, release_ns: str, flow_ns: str,
                 extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The local profile rendered by the real helm, the events CRDs known."""
    from chartlib import helm, renderable_chart

    with tempfile.TemporaryDirectory() as tmp:
        values = Path(tmp) / "values.yaml"
        values.write_text(yaml.safe_dump(chart_values(release_ns, flow_ns, extra)))
        cmd = [helm() or "helm", "template", release, str(renderable_chart()),
               "--namespace", release_ns, "-f", str(argo.CI_LOCAL_VALUES), "-f", str(values)]
        for api in API_VERSIONS:
            cmd += ["--api-versions", api]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def events_objects(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs
            if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component")
            in COMPONENTS]


APPLY = "application/apply-patch+yaml"


def apply(cluster: Cluster, obj: dict[str, Any]) -> None:
    """Server-side apply, for the kinds argo.apply does not handle too."""
    api = cluster.api_client()
    kind, name = obj["kind"], obj["metadata"]["name"]
    ns = obj["metadata"].get("namespace")
    kw: dict[str, Any] = {"field_manager": argo.FIELD_MANAGER, "force": True,
                          "_content_type": APPLY}
    # Helm's hook annotations mean nothing outside Helm.
    if kind in PLURALS:
        client.CustomObjectsApi(api).patch_namespaced_custom_object(
            **EVENTS, namespace=ns, plural=PLURALS[kind], name=name, body=obj, **kw)
    elif kind == "NetworkPolicy":
        client.NetworkingV1Api(api).patch_namespaced_network_policy(name, ns, obj, **kw)
    else:
        argo.apply(cluster, obj)


def _custom(cluster: Cluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(cluster.api_client())


def _get(cluster: Cluster, kind: str, ns: str, name: str) -> dict[str, Any]:
    return dict(_custom(cluster).get_namespaced_custom_object(
        **EVENTS, namespace=ns, plural=PLURALS[kind], name=name))


MERGE = "application/merge-patch+json"


def drop_events_objects(cluster: Cluster, ns: str) -> None:
    """Delete every EventBus, EventSource and Sensor in ``ns`` and clear the
    finalizers the controller put on them (it is not running any more)."""
    custom = _custom(cluster)
    for plural in PLURALS.values():
        for item in custom.list_namespaced_custom_object(**EVENTS, namespace=ns,
                                                         plural=plural)["items"]:
            name = item["metadata"]["name"]
            for call, kw in ((custom.delete_namespaced_custom_object, {}),
                             (custom.patch_namespaced_custom_object,
                              {"body": {"metadata": {"finalizers": None}},
                               "_content_type": MERGE})):
                try:
                    call(**EVENTS, namespace=ns, plural=plural, name=name, **kw)
                except ApiException as exc:
                    if exc.status != 404:
                        raise


def delete_objects(cluster: Cluster, objs: list[dict[str, Any]]) -> None:
    """Delete what `apply` wrote (the names other tests' releases use in the
    shared `metaflow` and `metaflow-flows` namespaces must be free again)."""
    api = cluster.api_client()
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    net = client.NetworkingV1Api(api)
    calls = {"ServiceAccount": core.delete_namespaced_service_account,
             "ConfigMap": core.delete_namespaced_config_map,
             "Role": rbac.delete_namespaced_role,
             "RoleBinding": rbac.delete_namespaced_role_binding,
             "NetworkPolicy": net.delete_namespaced_network_policy}
    for obj in objs:
        if obj["kind"] not in calls:
            continue
        try:
            calls[obj["kind"]](obj["metadata"]["name"], obj["metadata"]["namespace"])
        except ApiException as exc:
            if exc.status != 404:
                raise


def _delete_namespace(cluster: Cluster, ns: str) -> None:
    try:
        cluster.core().delete_namespace(ns)
    except ApiException as exc:
        if exc.status != 404:
            raise


@contextmanager
def _namespaces(cluster: Cluster, prefix: str) -> Iterator[tuple[str, str]]:
    release_ns = cluster.create_namespace(f"{prefix}-{uuid.uuid4().hex[:6]}")
    flow_ns = cluster.create_namespace(f"{release_ns}-flows")
    try:
        yield release_ns, flow_ns
    finally:
        drop_events_objects(cluster, flow_ns)
        for ns in (flow_ns, release_ns):
            _delete_namespace(cluster, ns)


# --- pins: no cluster needed -------------------------------------------------------

def test_the_build_is_the_chart_pins_release() -> None:
    entry = _installer().load_manifest()["gobuild"][TOOL]
    assert entry["version"] == APP_VERSION
    gomod = (ROOT / "tests" / "tools" / "gobuild" / TOOL / "go.mod").read_text()
    assert re.search(rf"^require {re.escape(entry['module'])} {re.escape(APP_VERSION)}$",
                     gomod, re.M)
    assert "=>" not in gomod  # v1.9.10's go.mod replaces nothing, so neither do we
    chart = yaml.safe_load((ROOT / "charts" / "metaflow" / "Chart.yaml").read_text())
    assert {d["name"]: d["version"] for d in chart["dependencies"]}[TOOL] == CHART_VERSION
    # The CRDs and the schema come out of the same module version.
    assert entry["files"] == {"crds": "manifests/base/crds/argoproj.io_*.yaml",
                              "jsonschema": "api/jsonschema/schema.json"}


# --- the CRDs and our objects ---------------------------------------------------------

def test_crds_are_served_and_leave_spec_to_the_schema(cluster: Cluster,
                                                      events_build: EventsBuild) -> None:
    assert {p.stem.removeprefix("argoproj.io_") + ".argoproj.io"
            for p in events_build.crd_files()} == CRDS
    ext = client.ApiextensionsV1Api(cluster.api_client())
    for name in sorted(CRDS):
        crd = ext.read_custom_resource_definition(name)
        assert [v.name for v in crd.spec.versions if v.served] == ["v1alpha1"], name
        spec = crd.spec.versions[0].schema.open_apiv3_schema.properties["spec"]
        assert spec.x_kubernetes_preserve_unknown_fields is True, name
    # The server still wants a spec; the schema is what judges its fields.
    with pytest.raises(ApiException) as refused:
        _custom(cluster).create_namespaced_custom_object(
            **EVENTS, namespace="default", plural="eventbus",
            body={"apiVersion": "argoproj.io/v1alpha1", "kind": "EventBus",
                  "metadata": {"name": "no-spec"}})
    assert refused.value.status == 422
    bad = {"apiVersion": "argoproj.io/v1alpha1", "kind": "EventBus", "metadata": {"name": "x"},
           "spec": {"jetstream": {"replicas": "three", "versoin": "2.10.10"}}}
    found = problems(events_build, bad)
    assert any("replicas" in p for p in found) and any("versoin" in p for p in found), found


def test_our_events_objects_fit_argo_events_and_the_api_server_takes_them(
        cluster: Cluster, events_build: EventsBuild) -> None:
    with _namespaces(cluster, "ev") as (release_ns, flow_ns):
        objs = events_objects(render_chart("mf", release_ns, flow_ns))
        kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
        assert {("EventBus", "mf-eventbus"), ("EventSource", "mf-webhook"),
                ("ServiceAccount", SENSOR_ACCOUNT), ("Role", "mf-sensors"),
                ("Role", "mf-argo-events-controller")} <= kinds
        for obj in objs:
            if obj["kind"] in PLURALS:
                assert problems(events_build, obj) == [], obj["kind"]
            apply(cluster, obj)
        bus = _get(cluster, "EventBus", flow_ns, "mf-eventbus")
        source = _get(cluster, "EventSource", flow_ns, "mf-webhook")
        assert bus["spec"]["jetstream"]["securityContext"]["runAsNonRoot"] is True
        assert source["spec"]["eventBusName"] == "mf-eventbus"
        assert source["spec"]["webhook"]["metaflow-event"]["endpoint"] == "/metaflow-event"
        # Both stored as rendered: what the API server keeps still fits the schema.
        for stored in (bus, source):
            assert problems(events_build, stored) == []


def test_the_sensor_account_may_create_workflows_in_the_flow_namespace_only(
        cluster: Cluster, events_build: EventsBuild) -> None:
    with _namespaces(cluster, "evrbac") as (release_ns, flow_ns):
        sensors = [obj for obj in events_objects(render_chart("mf", release_ns, flow_ns))
                   if obj["metadata"]["labels"]["app.kubernetes.io/component"] == "sensors"]
        for obj in sensors:
            apply(cluster, obj)
        cluster.wait_authorized(sensors)

        def can(verb: str, resource: str, ns: str | None, group: str = "argoproj.io") -> bool:
            return cluster.service_account_can(flow_ns, SENSOR_ACCOUNT, verb, resource,
                                               namespace=ns, group=group)

        assert can("create", "workflows", flow_ns)
        denied = [
            (verb, res, ns, group)
            for verb, res, ns, group in [
                *((v, "workflows", flow_ns, "argoproj.io")
                  for v in ("get", "list", "watch", "update", "patch", "delete")),
                ("create", "workflows", release_ns, "argoproj.io"),
                ("create", "workflows", None, "argoproj.io"),
                ("create", "workflowtemplates", flow_ns, "argoproj.io"),
                ("get", "workflowtemplates", flow_ns, "argoproj.io"),
                ("create", "sensors", flow_ns, "argoproj.io"),
                ("create", "cronworkflows", flow_ns, "argoproj.io"),
                ("create", "pods", flow_ns, ""),
                ("get", "secrets", flow_ns, ""),
                ("list", "configmaps", flow_ns, ""),
            ]
            if can(verb, res, ns, group)
        ]
        assert denied == []


# --- argo-helm's controller, written out ------------------------------------------------

def upstream_controller_rbac(release: str, release_ns: str) -> list[dict[str, Any]]:
    """The Role and RoleBinding argo-helm's controller template renders for
    our values (tests/chart/upstream_rbac.py): none, rbac.enabled is off."""
    from upstream_rbac import ARGO_EVENTS_DEFAULTS, argo_events_objects, merged

    values = yaml.safe_load((ROOT / "charts" / "metaflow" / "values.yaml").read_text())
    return argo_events_objects(merged(ARGO_EVENTS_DEFAULTS, values["argo-events"]), release,
                               release_ns)


def controller_name(release: str) -> str:
    """argo-helm's `argo-events.controller.fullname` (nameOverride argo-events)."""
    full = release if "argo-events" in release else f"{release}-argo-events"
    return f"{full[:63].rstrip('-')}-controller-manager"[:63].rstrip("-")


# templates/argo-events-controller/config.yaml rendered with argo-helm 2.4.22's
# default `configs` (our values leave them alone).
CONTROLLER_CONFIG = """\
eventBus:
  nats:
    versions:
    - version: latest
      natsStreamingImage: nats-streaming:latest
      metricsExporterImage: natsio/prometheus-nats-exporter:latest
    - version: 0.22.1
      natsStreamingImage: nats-streaming:0.22.1
      metricsExporterImage: natsio/prometheus-nats-exporter:0.8.0
  jetstream:
    settings: |
      max_memory_store: -1
      max_file_store: -1
    streamConfig: |
      maxMsgs: 1000000
      maxAge: 72h
      maxBytes: 1GB
      replicas: 3
      duplicates: 300s
      retention: 0
      discard: 0
    versions:
{versions}
"""
JETSTREAM = [("latest", "2.10.10", "0.14.0", "0.14.0", "/nats-server"),
             ("2.8.1", "2.8.1", "0.9.1", "0.7.0", "/nats-server"),
             ("2.8.1-alpine", "2.8.1-alpine", "0.9.1", "0.7.0", "nats-server"),
             ("2.8.2", "2.8.2", "0.9.1", "0.7.0", "/nats-server"),
             ("2.8.2-alpine", "2.8.2-alpine", "0.9.1", "0.7.0", "nats-server"),
             ("2.9.1", "2.9.1", "0.9.1", "0.7.0", "/nats-server"),
             ("2.9.12", "2.9.12", "0.9.1", "0.7.0", "/nats-server"),
             ("2.9.16", "2.9.16", "0.9.1", "0.7.0", "/nats-server"),
             ("2.10.10", "2.10.10", "0.14.0", "0.14.0", "/nats-server")]


def controller_config() -> str:
    versions = "\n".join(
        f"    - version: {v}\n      natsImage: nats:{nats}\n"
        f"      metricsExporterImage: natsio/prometheus-nats-exporter:{exporter}\n"
        f"      configReloaderImage: natsio/nats-server-config-reloader:{reloader}\n"
        f"      startCommand: {start}"
        for v, nats, exporter, reloader, start in JETSTREAM)
    return CONTROLLER_CONFIG.format(versions=versions)


def test_our_controller_role_in_the_flow_namespace_is_argo_helms() -> None:
    from upstream_rbac import ARGO_EVENTS_CONTROLLER_RULES

    objs = render_chart("mf", "metaflow", "metaflow-flows")
    role = next(o for o in objs if o["kind"] == "Role"
                and o["metadata"]["name"] == "mf-argo-events-controller")
    assert role["metadata"]["namespace"] == "metaflow-flows"
    assert role["rules"] == ARGO_EVENTS_CONTROLLER_RULES
    # At home, with one replica, neither argo-helm's Role nor ours.
    assert upstream_controller_rbac("mf", "metaflow") == []
    assert not [o for o in objs if o["kind"] == "Role"
                and o["metadata"]["namespace"] == "metaflow"
                and o["metadata"]["labels"]["app.kubernetes.io/component"] == "argo-events"]
    binding = next(o for o in objs if o["kind"] == "RoleBinding"
                   and o["metadata"]["name"] == "mf-argo-events-controller")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": controller_name("mf"),
                                    "namespace": "metaflow"}]
    # The version our EventBus asks for is one the controller config lists.
    bus = next(o for o in objs if o["kind"] == "EventBus")
    assert bus["spec"]["jetstream"]["version"] in {v for v, *_ in JETSTREAM}


def _mount_namespaces_work() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    probe = subprocess.run([unshare, "--mount", "--propagation", "private", "true"],
                           capture_output=True, check=False)
    return probe.returncode == 0


@dataclass
class EventsController:
    release_ns: str
    flow_ns: str
    log: Path
    procs: Processes
    name: str

    def text(self) -> str:
        return self.procs.text(self.name)

    def tail(self) -> str:
        return self.procs.tail(self.name, 40)


@contextmanager
def run_controller(cluster: Cluster, build: EventsBuild, release: str, release_ns: str,
                   flow_ns: str) -> Iterator[EventsController]:
    """argo-helm's controller for ``release``: its account and config in the
    release namespace, and there the Roles argo-helm and our chart render at
    home for our values (none with one replica), its flags (replicas 1:
    --leader-election=false; rbac.namespaced; our managedNamespace), run on
    this host. Our Role in the flow namespace is the callers' to apply."""
    if not _mount_namespaces_work():
        pytest.skip(reason="the Argo Events controller reads its config only from "
                    "/etc/argo-events; running it on this host needs a private mount "
                    "namespace (`unshare --mount`), which this host refuses")
    name = controller_name(release)
    labels = {"app.kubernetes.io/name": "argo-events-controller-manager",
              "app.kubernetes.io/instance": release,
              "app.kubernetes.io/component": "controller-manager",
              "app.kubernetes.io/part-of": "argo-events"}
    meta = {"name": name, "namespace": release_ns, "labels": labels}
    home = [o for o in events_objects(render_chart(release, release_ns, flow_ns))
            if o["kind"] in ("Role", "RoleBinding")
            and o["metadata"]["namespace"] == release_ns
            and o["metadata"]["labels"]["app.kubernetes.io/component"] == "argo-events"]
    objs = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
         "data": {"controller-config.yaml": controller_config()}},
        *upstream_controller_rbac(release, release_ns),
        *home,
    ]
    for obj in objs:
        argo.apply(cluster, obj)
    workdir = cluster.workdir / "argo-events" / f"{release_ns}-{release}"
    config_dir = workdir / "etc-argo-events"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "controller-config.yaml").write_text(controller_config())
    kubeconfig = argo.token_kubeconfig(
        cluster, workdir / "kubeconfig", argo.service_account_token(cluster, release_ns, name),
        release_ns, f"system:serviceaccount:{release_ns}:{name}")
    health = free_port()
    args = ["controller", "--leader-election=false", "--namespaced",
            "--managed-namespace", flow_ns,
            "--metrics-port", str(free_port()), "--health-port", str(health)]
    mount = ('mkdir -p /etc/argo-events && mount --bind "$1" /etc/argo-events && shift '
             '&& exec "$@"')
    argv = [shutil.which("unshare") or "unshare", "--mount", "--propagation", "private",
            "/bin/sh", "-c", mount, "sh", str(config_dir), str(build.binary), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARGO_", "KUBE"))}
    env.update(ARGO_EVENTS_IMAGE=IMAGE, NAMESPACE=release_ns, KUBECONFIG=str(kubeconfig))
    logdir = cluster.workdir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    proc_name = f"argo-events-controller-{release_ns}-{release}"
    procs = Processes(logdir)
    procs.start(proc_name, argv, env=env)
    controller = EventsController(release_ns, flow_ns, logdir / f"{proc_name}.log", procs,
                                  proc_name)
    try:
        # Its probe server answers once the manager (and so every controller) runs.
        deadline = time.monotonic() + 60
        while not _ready(health):
            procs.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"argo-events controller not started:\n{controller.tail()}")
            time.sleep(0.2)
        yield controller
    finally:
        procs.stop()
        delete_objects(cluster, objs)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


# --- Metaflow's Sensors and the controller at work ----------------------------------------

TRIGGERED = ("event_triggered_flow.py", "eventtriggeredflow")
FINISHED = ("finish_triggered_flow.py", "finishtriggeredflow")


def _apply_components(cluster: Cluster, flow_ns: str, *components: str,
                      extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    values = {"dataScientists": {"groups": [GROUP]}, **(extra or {})}
    applied = []
    for obj in render_chart(RELEASE, RELEASE_NS, flow_ns, values):
        if (obj["metadata"].get("labels") or {}).get("app.kubernetes.io/component") \
                in components:
            apply(cluster, obj)
            applied.append(obj)
    return applied


def _sensor_checks(mf: mfenv.MetaflowEnv, sensor: dict[str, Any], template: str,
                   event: str) -> None:
    cfg = mf.config
    spec = sensor["spec"]
    assert sensor["metadata"]["namespace"] == mf.flow_namespace
    assert spec["eventBusName"] == cfg["METAFLOW_ARGO_EVENTS_EVENT_BUS"] == "metaflow-eventbus"
    assert spec["template"]["serviceAccountName"] == \
        cfg["METAFLOW_ARGO_EVENTS_SERVICE_ACCOUNT"] == SENSOR_ACCOUNT
    [dep] = spec["dependencies"]
    assert dep["eventSourceName"] == cfg["METAFLOW_ARGO_EVENTS_EVENT_SOURCE"] == \
        "metaflow-webhook"
    assert dep["eventName"] == cfg["METAFLOW_ARGO_EVENTS_EVENT"] == "metaflow-event"
    assert f"name == '{event}'" in json.dumps(dep["filters"])
    [trigger] = spec["triggers"]
    k8s = trigger["template"]["k8s"]
    assert k8s["operation"] == "create"
    workflow = k8s["source"]["resource"]
    assert (workflow["apiVersion"], workflow["kind"]) == ("argoproj.io/v1alpha1", "Workflow")
    assert workflow["metadata"]["namespace"] == mf.flow_namespace
    assert workflow["spec"]["workflowTemplateRef"] == {"name": template}


def test_metaflow_sensors_name_our_bus_source_and_account_and_the_controller_runs_them(
        cluster: Cluster, argo_build: argo.ArgoBuild, events_build: EventsBuild,
        metaflow_env: mfenv.MetaflowEnv) -> None:
    if cluster.backend != "controlplane":
        pytest.skip("needs the local control plane's CA to issue a user certificate "
                    "(kind keeps its CA inside its node)")
    mf = metaflow_env
    flow_ns = mf.flow_namespace
    for ns in (RELEASE_NS, flow_ns):
        cluster.create_namespace(ns)
    custom = _custom(cluster)
    created: list[tuple[str, str]] = []
    applied: list[dict[str, Any]] = []
    try:
        applied = _apply_components(cluster, flow_ns, *COMPONENTS, "flows", "data-scientists")
        alice = cluster.user_kubeconfig("alice", (GROUP,))
        with run_controller(cluster, events_build, RELEASE, RELEASE_NS, flow_ns) as ctl:
            for flow, template in (TRIGGERED, FINISHED):
                done = mf.run_flow(flow, "argo-workflows", "create", kubeconfig=alice)
                assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
                created.append(("workflowtemplates", template))
                created.append(("sensors", template))
            sensors = {t: _get(cluster, "Sensor", flow_ns, t) for _, t in (TRIGGERED, FINISHED)}
            _sensor_checks(mf, sensors[TRIGGERED[1]], TRIGGERED[1], "data_ready")
            _sensor_checks(mf, sensors[FINISHED[1]], FINISHED[1],
                           "metaflow.EventTriggeredFlow.end")
            for sensor in sensors.values():
                assert problems(events_build, sensor) == [], sensor["metadata"]["name"]
            # The triggered flow's payload becomes its `table` parameter.
            params = sensors[TRIGGERED[1]]["spec"]["triggers"][0]["template"]["k8s"]
            assert any(p["dest"] == "spec.arguments.parameters.#(name=table).value"
                       for p in params["parameters"])
            # Flow pods publish to the webhook inside the cluster.
            wt = custom.get_namespaced_custom_object(
                **EVENTS, namespace=flow_ns,
                plural="workflowtemplates", name=TRIGGERED[1])
            envs = [{e["name"]: e.get("value") for e in t["container"]["env"]}
                    for t in wt["spec"]["templates"]
                    if "metaflow/step_name" in ((t.get("metadata") or {}).get("annotations")
                                                or {})]
            internal = mf.config["METAFLOW_ARGO_EVENTS_INTERNAL_WEBHOOK_URL"]
            assert internal == ("http://metaflow-webhook-eventsource-svc.metaflow-flows"
                                ".svc.cluster.local:12000/metaflow-event")
            assert envs and all(e["METAFLOW_ARGO_EVENTS_WEBHOOK_URL"] == internal
                                for e in envs)
            report = _what_the_controller_did(cluster, ctl, flow_ns, list(sensors))
    finally:
        for plural, name in created:
            if plural == "workflowtemplates":
                try:
                    custom.delete_namespaced_custom_object(
                        **EVENTS, namespace=flow_ns, plural=plural, name=name)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
        drop_events_objects(cluster, flow_ns)
        delete_objects(cluster, applied)
    print("\n" + report)


def _labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    match = selector.get("matchLabels") or {}
    if any(labels.get(k) != v for k, v in match.items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def _what_the_controller_did(cluster: Cluster, ctl: EventsController, flow_ns: str,
                             sensors: list[str]) -> str:
    apps, core = cluster.apps(), cluster.core()

    def bus_deployed() -> dict[str, Any] | None:
        bus = _get(cluster, "EventBus", flow_ns, "metaflow-eventbus")
        conditions = {c["type"]: c["status"]
                      for c in (bus.get("status") or {}).get("conditions") or []}
        return bus if conditions.get("Deployed") == "True" else None

    wait_for(bus_deployed, 60, f"the EventBus to be deployed:\n{ctl.tail()}")
    sts = apps.read_namespaced_stateful_set("eventbus-metaflow-eventbus-js", flow_ns)
    pod = sts.spec.template.spec
    assert pod.security_context.run_as_non_root is True
    assert sts.spec.replicas == 3
    nats = next(c for c in pod.containers if c.name == "main")
    assert nats.resources.limits == {"cpu": "500m", "memory": "512Mi"}
    assert nats.security_context.read_only_root_filesystem is True
    assert all(c.resources.limits for c in pod.containers), [c.name for c in pod.containers]
    bus_labels = sts.spec.template.metadata.labels
    assert bus_labels["app.kubernetes.io/component"] == "eventbus"

    def webhook() -> client.V1Deployment | None:
        found = apps.list_namespaced_deployment(
            flow_ns, label_selector="eventsource-name=metaflow-webhook").items
        return found[0] if found else None

    deploy = wait_for(webhook, 60, f"the webhook Deployment:\n{ctl.tail()}")
    svc = wait_for(lambda: _service(core, flow_ns, "metaflow-webhook-eventsource-svc"), 60,
                   "the webhook Service")
    assert [(p.port, p.target_port) for p in svc.spec.ports] == [(12000, 12000)]
    pod_labels = deploy.spec.template.metadata.labels
    assert all(pod_labels.get(k) == v for k, v in svc.spec.selector.items())
    assert deploy.spec.template.spec.security_context.run_as_non_root is True
    main = deploy.spec.template.spec.containers[0]
    assert main.image == IMAGE and main.args == ["eventsource-service"]
    assert main.resources.limits == {"cpu": "250m", "memory": "128Mi"}

    def sensor_deployments() -> list[client.V1Deployment] | None:
        found = apps.list_namespaced_deployment(
            flow_ns, label_selector="controller=sensor-controller").items
        return found if len(found) == len(sensors) else None

    sensor_deploys = wait_for(sensor_deployments, 60, f"the Sensors' Deployments:\n{ctl.tail()}")
    for d in sensor_deploys:
        assert d.spec.template.spec.service_account_name == SENSOR_ACCOUNT

    # Our NetworkPolicies pick these pods by the labels the controller gave them.
    net = client.NetworkingV1Api(cluster.api_client())
    policies = {p.metadata.name: cluster.api_client().sanitize_for_serialization(p.spec)
                for p in net.list_namespaced_network_policy(flow_ns).items}
    assert _labels_match(policies["metaflow-events-webhook"]["podSelector"], pod_labels)
    assert _labels_match(policies["metaflow-eventbus"]["podSelector"], bus_labels)
    clients = policies["metaflow-eventbus"]["ingress"][0]["from"][0]["podSelector"]
    assert _labels_match(clients, pod_labels)
    for d in sensor_deploys:
        labels = d.spec.template.metadata.labels
        assert _labels_match(policies["metaflow-sensors"]["podSelector"], labels)
        assert _labels_match(clients, labels)
    return (f"argo-events controller {APP_VERSION}: StatefulSet {sts.metadata.name} "
            f"({sts.spec.replicas} NATS servers), Deployment {deploy.metadata.name} + Service "
            f"{svc.metadata.name}:12000 for the webhook, Deployments "
            f"{sorted(d.metadata.name for d in sensor_deploys)} for the Sensors")


def _service(core: client.CoreV1Api, ns: str, name: str) -> client.V1Service | None:
    try:
        return core.read_namespaced_service(name, ns)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def test_controller_log_names_the_pinned_release(cluster: Cluster,
                                                 events_build: EventsBuild) -> None:
    with _namespaces(cluster, "evctl") as (release_ns, flow_ns), \
            run_controller(cluster, events_build, "mf", release_ns, flow_ns) as ctl:
        text = ctl.text()
    started = next(json.loads(line) for line in text.splitlines()
                   if "Starting controller manager" in line)
    # Unstamped, the binary says "latest" (version.go); tools.toml stamps it.
    assert started["version"] == APP_VERSION, started


# --- Helm: the custom objects are hooks -------------------------------------------------------

def _helm(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    from chartlib import helm

    return subprocess.run([helm() or "helm", *args], env=cluster.env(), capture_output=True,
                          text=True, timeout=300, check=False)


def _mfhelm(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = cluster.env()
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return subprocess.run([sys.executable, "-m", "mfhelm", *args, "--kubeconfig",
                           str(cluster.kubeconfig)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env, check=False)


def test_helm_makes_the_bus_and_webhook_hooks_and_status_and_port_forward_find_them(
        cluster: Cluster, events_build: EventsBuild) -> None:
    from chartlib import renderable_chart

    from mfhelm import portforward

    with _namespaces(cluster, "evhelm") as (release_ns, flow_ns), \
            tempfile.TemporaryDirectory() as tmp:
        values = Path(tmp) / "values.yaml"
        values.write_text(yaml.safe_dump(chart_values(release_ns, flow_ns)))
        install = ["upgrade", "--install", "ev", str(renderable_chart()), "-n", release_ns,
                   "-f", str(argo.CI_LOCAL_VALUES), "-f", str(values)]
        first = _helm(cluster, *install)
        assert first.returncode == 0, first.stderr
        bus = _get(cluster, "EventBus", flow_ns, "ev-eventbus")
        source = _get(cluster, "EventSource", flow_ns, "ev-webhook")
        assert bus["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
        assert source["spec"]["eventBusName"] == "ev-eventbus"

        with run_controller(cluster, events_build, "ev", release_ns, flow_ns) as ctl:
            def bus_ready() -> bool:
                try:
                    sts = cluster.apps().read_namespaced_stateful_set(
                        "eventbus-ev-eventbus-js", flow_ns)
                except ApiException:
                    return False
                return (sts.status.ready_replicas or 0) == 3

            wait_for(bus_ready, 90, f"the event bus's 3 pods (KWOK):\n{ctl.tail()}")
            webhook = "ev-webhook-eventsource-svc"
            wait_for(lambda: _service(cluster.core(), flow_ns, webhook), 60,
                     "the webhook Service")
            status = _mfhelm(cluster, "status", "--release", "ev", "-n", release_ns)
            lines = status.stdout.splitlines()
            assert any(re.search(rf"StatefulSet +{flow_ns}/eventbus-ev-eventbus-js +3/3 ready",
                                 ln) for ln in lines), status.stdout + status.stderr
            assert any(re.search(rf"Deployment +{flow_ns}/ev-webhook-eventsource-", ln)
                       for ln in lines), status.stdout
            # `mfhelm port-forward` finds the webhook through the published config.
            present = portforward.services(cluster.api_client(), release_ns)
            assert f"{flow_ns}/{webhook}" in present
            forward = next(f for f in portforward.plan("ev", present)
                           if f.label == "Argo Events webhook")
            assert (forward.namespace, forward.service, forward.local) == (flow_ns, webhook,
                                                                           12000)

        # An upgrade applies them again, in place (Helm 4: server-side apply).
        one = Path(tmp) / "one.yaml"
        one.write_text(yaml.safe_dump({"argoEventsGlue": {"eventBus": {"replicas": 1}}}))
        second = _helm(cluster, *install, "-f", str(one))
        assert second.returncode == 0, second.stderr
        again = _get(cluster, "EventBus", flow_ns, "ev-eventbus")
        assert again["metadata"]["uid"] == bus["metadata"]["uid"]
        assert again["spec"]["jetstream"]["replicas"] == 1
        assert "deletionTimestamp" not in again["metadata"]
        # Hooks are not release objects: `helm uninstall` would leave them;
        # `mfhelm uninstall` removes them by the release's label.
        gone = _mfhelm(cluster, "uninstall", "--release", "ev", "-n", release_ns)
        assert gone.returncode == 0, gone.stderr
        assert "deleted eventsources/" in gone.stdout and "deleted eventbus/ev-eventbus" in \
            gone.stdout, gone.stdout
        custom = client.CustomObjectsApi(cluster.api_client())
        for plural in ("eventbus", "eventsources"):
            left = custom.list_namespaced_custom_object("argoproj.io", "v1alpha1", flow_ns,
                                                        plural)["items"]
            assert all("deletionTimestamp" in o["metadata"] for o in left), left


# --- an event through the webhook, the bus and a Sensor ------------------------------------
# The pods the controller specifies run on this host: the bus's NATS server
# (the pinned nats-server, tools.toml [go.nats-server]), the webhook and the
# Sensors (the argo-events binary), each with the command, environment and
# volumes of its pod spec, volumes bound at their mount paths in a private
# mount namespace (as tests/cluster/kwok/shim/run-in-pod does), the bus's
# Service name resolved to 127.0.0.1 through a bound /etc/hosts, and a Sensor
# reaching the API server in-cluster style with a token of its account.
# What differs: NATS listens on free ports (its client and monitor ports, in
# the generated config and in the bus address the others get), and the
# webhook and Sensors all serve metrics on the fixed port 7777, so they run
# one after the other: each Sensor once to create its durable consumer, the
# webhook to take the events, then each Sensor again to consume them.

NATS_TOOL = "nats-server"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), value)


@dataclass
class HostPod:
    """One container of a pod spec, ready to run on this host."""

    argv: list[str]
    env: dict[str, str]
    binds: list[tuple[Path, str]]


def _host_pod(cluster: Cluster, ns: str, pod_name: str, spec: dict[str, Any], container: str,
              workdir: Path, executable: dict[str, Path]) -> HostPod:
    core = cluster.core()
    root = workdir / pod_name
    root.mkdir(parents=True, exist_ok=True)

    def secret(name: str) -> dict[str, str]:
        data = core.read_namespaced_secret(name, ns).data or {}
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    def configmap(name: str) -> dict[str, str]:
        return dict(core.read_namespaced_config_map(name, ns).data or {})

    def write(target: Path, data: dict[str, str], items: list[dict[str, Any]] | None) -> None:
        target.mkdir(parents=True, exist_ok=True)
        for key, path in ([(i["key"], i["path"]) for i in items] if items else
                          [(k, k) for k in data]):
            (target / path).write_text(data[key])

    volumes: dict[str, Path] = {}
    for vol in spec.get("volumes") or []:
        path = root / "volumes" / vol["name"]
        if "emptyDir" in vol:
            path.mkdir(parents=True, exist_ok=True)
        elif "secret" in vol:
            write(path, secret(vol["secret"]["secretName"]), vol["secret"].get("items"))
        elif "configMap" in vol:
            write(path, configmap(vol["configMap"]["name"]), vol["configMap"].get("items"))
        elif "projected" in vol:
            for src in vol["projected"]["sources"]:
                if "secret" in src:
                    write(path, secret(src["secret"]["name"]), src["secret"].get("items"))
                if "configMap" in src:
                    write(path, configmap(src["configMap"]["name"]), src["configMap"].get("items"))
        else:
            raise ValueError(f"volume kind not handled here: {vol}")
        volumes[vol["name"]] = path
    c = next(x for x in spec["containers"] if x["name"] == container)
    env: dict[str, str] = {}
    for e in c.get("env") or []:
        if "valueFrom" not in e:  # an empty value is left out when serialized
            env[e["name"]] = _expand(e.get("value", ""), env)
            continue
        ref = e["valueFrom"]
        if "fieldRef" in ref:
            env[e["name"]] = {"metadata.name": pod_name,
                              "metadata.namespace": ns}[ref["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in ref:
            env[e["name"]] = secret(ref["secretKeyRef"]["name"])[ref["secretKeyRef"]["key"]]
        else:
            raise ValueError(f"env source not handled here: {e}")
    command = list(c.get("command") or ["/bin/argo-events"]) + list(c.get("args") or [])
    argv = [str(executable[command[0]]), *(_expand(a, env) for a in command[1:])]
    binds = [(volumes[m["name"]], m["mountPath"]) for m in c.get("volumeMounts") or []]
    return HostPod(argv, env, binds)


def _start_host_pod(procs: Processes, name: str, pod: HostPod, cwd: Path) -> None:
    # A volume mounted over a parent of the sources (an emptyDir at /tmp) goes last.
    binds = sorted(pod.binds, key=lambda b: str(cwd).startswith(b[1].rstrip("/") + "/"))
    mounts = "\n".join(f"{src}\t{dst}" for src, dst in binds)
    # The executable is opened before the mounts and run through that open
    # file: a volume mounted over a parent of its path (the Sensor's emptyDir
    # at /tmp, with MFHELM_CACHE under /tmp) would hide it otherwise.
    script = ('set -e\ncd "$0"\nexec 9<"$1"\nshift\ntab=$(printf "\\t")\n'
              'while IFS="$tab" read -r src dst; do\n'
              '  [ -n "$dst" ] || continue\n'
              '  if [ -d "$src" ]; then mkdir -p "$dst"; else mkdir -p "$(dirname "$dst")"; '
              '[ -e "$dst" ] || : > "$dst"; fi\n'
              '  mount --bind "$src" "$dst"\n'
              'done <<MOUNTS\n' + mounts + '\nMOUNTS\nexec /proc/self/fd/9 "$@"\n')
    argv = [shutil.which("unshare") or "unshare", "--mount", "--propagation", "private",
            "/bin/sh", "-c", script, str(cwd), pod.argv[0], *pod.argv[1:]]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ARGO_", "KUBE", "EVENT", "SENSOR", "NATS"))}
    procs.start(name, argv, env={**env, **pod.env})


def _log_has(procs: Processes, name: str, text: str, timeout: float) -> None:
    path = procs.logdir / f"{name}.log"

    def seen() -> bool:
        procs.check()
        return path.exists() and text in path.read_text(errors="replace")

    wait_for(seen, timeout, f"{name} to log {text!r}:\n{procs.tail(name, 40)}")


def _stop(procs: Processes, name: str) -> None:
    proc = procs.running.pop(name)
    os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=5)


def _workflows_from(cluster: Cluster, ns: str, template: str) -> list[dict[str, Any]]:
    items = _custom(cluster).list_namespaced_custom_object(
        **EVENTS, namespace=ns, plural="workflows")["items"]
    return [w for w in items if w["spec"].get("workflowTemplateRef") == {"name": template}]


def _publish(mf: mfenv.MetaflowEnv, url: str, name: str, payload: dict[str, Any], *,
             added: dict[str, Any] | None = None) -> None:
    """The real Metaflow code publishing an event: `ArgoEvent(name).publish(payload)`
    as on a laptop; `added` fields go in through `add_to_payload` first, as
    the Argo step decorator adds them (it makes every value a string). Only
    the webhook URL points at this host's port."""
    code = ("import json, sys\nfrom metaflow.integrations import ArgoEvent\n"
            "event = ArgoEvent(sys.argv[1])\n"
            "for key, value in json.loads(sys.argv[3]).items():\n"
            "    event.add_to_payload(key, value)\n"
            "event.publish(json.loads(sys.argv[2]), ignore_errors=False)\n")
    env = {**mf.env, "METAFLOW_ARGO_EVENTS_WEBHOOK_URL": url}
    done = subprocess.run([sys.executable, "-c", code, name, json.dumps(payload),
                           json.dumps(added or {})], env=env, cwd=mf.home / "work",
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"Argo Event ({name}) published." in done.stderr


def test_a_published_event_goes_through_webhook_and_bus_to_a_sensor_that_starts_the_flow(
        cluster: Cluster, argo_build: argo.ArgoBuild, events_build: EventsBuild,
        metaflow_env: mfenv.MetaflowEnv) -> None:
    if cluster.backend != "controlplane":
        pytest.skip("runs the bus, webhook and Sensor pods on the test host (KWOK only)")
    try:
        nats_home, _ = ensure_tool(NATS_TOOL, "the Argo Events delivery test (the bus's server)")
    except ToolchainMissing as exc:
        pytest.skip(reason=str(exc))
    mf = metaflow_env
    flow_ns = mf.flow_namespace
    for ns in (RELEASE_NS, flow_ns):
        cluster.create_namespace(ns)
    # Earlier tests' bus and Sensors in this shared namespace are deleted as
    # they finish, but what the controller made for them goes by garbage
    # collection; a Sensor started against a leftover 3-server bus config
    # fails ("replicas > 1"). Start once they are gone.
    def cleared() -> bool:
        apps_api = cluster.apps()
        return not (apps_api.list_namespaced_stateful_set(
                        flow_ns, label_selector="controller=eventbus-controller").items
                    or [d for d in apps_api.list_namespaced_deployment(flow_ns).items
                        if (d.metadata.labels or {}).get("controller") in
                        ("sensor-controller", "eventsource-controller")])
    wait_for(cleared, 120, "earlier tests' Argo Events workloads to be collected")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metaflow-event"
    extra = {"argoEventsGlue": {"eventBus": {"replicas": 1},
                                "webhook": {"port": port, "url": url}}}
    applied = _apply_components(cluster, flow_ns, *COMPONENTS, "flows", "data-scientists",
                                extra=extra)
    alice = cluster.user_kubeconfig("alice", (GROUP,))
    custom, apps, api = _custom(cluster), cluster.apps(), cluster.api_client()
    workdir = cluster.workdir / "argo-events" / f"delivery-{uuid.uuid4().hex[:6]}"
    procs = Processes(cluster.workdir / "logs")
    templates = (TRIGGERED[1], FINISHED[1])
    try:
        with run_controller(cluster, events_build, RELEASE, RELEASE_NS, flow_ns) as ctl:
            for flow, _template in (TRIGGERED, FINISHED):
                done = mf.run_flow(flow, "argo-workflows", "create", kubeconfig=alice)
                assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

            def specs() -> dict[str, Any] | None:
                found = {d.metadata.labels.get("sensor-name") or
                         d.metadata.labels.get("eventsource-name"): d
                         for d in apps.list_namespaced_deployment(flow_ns).items
                         if d.metadata.labels.get("controller") in
                         ("sensor-controller", "eventsource-controller")}
                try:
                    found["bus"] = apps.read_namespaced_stateful_set(
                        "eventbus-metaflow-eventbus-js", flow_ns)
                except ApiException:
                    return None
                # An earlier test's 3-server bus may still be on its way out
                # (garbage collection): wait for this test's one-server bus.
                if found["bus"].spec.replicas != 1 or found["bus"].metadata.deletion_timestamp:
                    return None
                return found if {*templates, "metaflow-webhook", "bus"} <= set(found) else None

            workloads = wait_for(specs, 90, f"the controller's workloads:\n{ctl.tail()}")
        spec = {k: api.sanitize_for_serialization(w.spec.template.spec)
                for k, w in workloads.items()}
        assert workloads["bus"].spec.replicas == 1

        # The bus: the pod's NATS server, its client and monitor ports moved.
        nats = _host_pod(cluster, flow_ns, "eventbus-metaflow-eventbus-js-0", spec["bus"],
                         "main", workdir, {"/nats-server": nats_home / "bin" / "nats-server"})
        client_port, monitor_port = free_port(), free_port()
        conf = next(src for src, dst in nats.binds if dst == "/etc/nats-config") / "nats-js.conf"
        text = conf.read_text()
        assert "port: 4222" in text and "http: 8222" in text, text
        conf.write_text(text.replace("port: 4222", f"port: {client_port}")
                        .replace("http: 8222", f"http: {monitor_port}"))
        _start_host_pod(procs, "nats", nats, workdir)
        _log_has(procs, "nats", "Server is ready", 30)

        hosts = workdir / "hosts"
        service = f"eventbus-metaflow-eventbus-js-svc.{flow_ns}.svc"
        hosts.write_text(f"127.0.0.1 localhost {service} {service}.cluster.local\n")
        token = argo.service_account_token(cluster, flow_ns, SENSOR_ACCOUNT)
        sa_dir = workdir / "sensor-account"
        sa_dir.mkdir(parents=True)
        (sa_dir / "token").write_text(token)
        (sa_dir / "namespace").write_text(flow_ns)
        shutil.copyfile(cluster.workdir / "pki" / "ca.crt", sa_dir / "ca.crt")
        host, _, api_port = cluster.server.removeprefix("https://").rpartition(":")

        def events_pod(key: str, pod_name: str) -> HostPod:
            pod = _host_pod(cluster, flow_ns, pod_name, spec[key], "main", workdir,
                            {"/bin/argo-events": events_build.binary})
            bus = json.loads(base64.b64decode(pod.env["EVENTBUS_CONFIG"]))
            assert bus["jetstream"]["url"] == f"nats://{service}:4222", bus
            bus["jetstream"]["url"] = f"nats://{service}:{client_port}"
            pod.env["EVENTBUS_CONFIG"] = base64.b64encode(json.dumps(bus).encode()).decode()
            pod.binds.append((hosts, "/etc/hosts"))
            if key in templates:  # a Sensor talks to the API server as its account
                pod.binds.append((sa_dir, SA_DIR))
                pod.env.update(KUBERNETES_SERVICE_HOST=host, KUBERNETES_SERVICE_PORT=api_port)
            return pod

        sensors = {t: events_pod(t, f"{t}-sensor-host") for t in templates}
        # Each Sensor once: its durable consumers exist before any event.
        for t, pod in sensors.items():
            _start_host_pod(procs, f"sensor-{t}", pod, workdir)
            _log_has(procs, f"sensor-{t}", "started subscribing to events for trigger", 60)
            _stop(procs, f"sensor-{t}")
        # The webhook takes what a laptop publishes, and what a flow's end step does.
        _start_host_pod(procs, "webhook", events_pod("metaflow-webhook", "metaflow-webhook-host"),
                        workdir)
        _log_has(procs, "webhook", "route is activated", 60)
        _publish(mf, url, "data_ready", {"table": "sales"})
        run = "argo-eventtriggeredflow-abc12"
        pathspec = f"EventTriggeredFlow/{run}/end/t-1"
        _publish(mf, url, "metaflow.EventTriggeredFlow.end", {}, added={
            "id": pathspec, "pathspec": pathspec, "flow_name": "EventTriggeredFlow",
            "run_id": run, "step_name": "end", "task_id": "t-1",
            "auto-generated-by-metaflow": True})
        wait_for(lambda: (procs.logdir / "webhook.log").read_text().count(
            "Succeeded to publish an event") >= 2 or None, 30,
            f"the webhook to put both events on the bus:\n{procs.tail('webhook', 30)}")
        _stop(procs, "webhook")
        # Each Sensor again: it takes its event off the bus and starts its flow.
        started = {}
        for t, pod in sensors.items():
            _start_host_pod(procs, f"sensor-{t}", pod, workdir)
            started[t] = wait_for(lambda t=t: _workflows_from(cluster, flow_ns, t) or None, 60,
                                  f"a Workflow from {t}:\n{procs.tail(f'sensor-{t}', 40)}")
            _stop(procs, f"sensor-{t}")
        [triggered] = started[TRIGGERED[1]]
        params = {p["name"]: p.get("value") for p in triggered["spec"]["arguments"]["parameters"]}
        assert json.loads(params["table"]) == "sales"
        assert json.loads(triggered["metadata"]["annotations"]["metaflow/triggered_by"]) == \
            [{"name": "data_ready", "type": "event"}]
        [finished] = started[FINISHED[1]]
        assert finished["metadata"]["namespace"] == flow_ns
        print(f"\nevent delivery: data_ready -> {triggered['metadata']['name']} "
              f"(table={params['table']}), metaflow.EventTriggeredFlow.end -> "
              f"{finished['metadata']['name']}")
    finally:
        procs.stop()
        for t in templates:
            for w in _workflows_from(cluster, flow_ns, t):
                custom.delete_namespaced_custom_object(**EVENTS, namespace=flow_ns,
                                                       plural="workflows",
                                                       name=w["metadata"]["name"])
            try:
                custom.delete_namespaced_custom_object(**EVENTS, namespace=flow_ns,
                                                       plural="workflowtemplates", name=t)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        drop_events_objects(cluster, flow_ns)
        delete_objects(cluster, applied)
