"""Argo Events in the chart: the pinned argo-helm `argo-events` chart, the
values we hand it, and our objects around it (event bus, webhook, the
Sensors' account, NetworkPolicies, the published config).

Facts read in argo-helm's charts/argo-events at 2.4.22 (tag argo-events-2.4.22)
and in github.com/argoproj/argo-events v1.9.10, pinned here:
- 2.4.22's appVersion is v1.9.10; its CRDs (templates/crds/*.yml, rendered
  when `crds.install`, annotated `helm.sh/resource-policy: keep` when
  `crds.keep`) are the module's manifests/base/crds plus those two switches;
- `controller.rbac.namespaced` renders a Role and RoleBinding instead of a
  ClusterRole and ClusterRoleBinding, in the release namespace only, and the
  flag `--namespaced`; `controller.rbac.managedNamespace` becomes
  `--managed-namespace <ns>` (the controller's default is its own namespace,
  from NAMESPACE); with `controller.replicas` 1 it runs `--leader-election=false`;
- `createAggregateRoles` (ClusterRoles) and `webhook.enabled` (a ClusterRole
  and ClusterRoleBinding) are off by default; the controller's pod security
  context is `global.securityContext`, its container's
  `controller.containerSecurityContext`, both empty by default, and the
  image (FROM scratch) sets no user;
- its fullname is the release name when that contains `argo-events`, else
  `<release>-argo-events`; the controller is `<fullname>-controller-manager`,
  its pods labelled app.kubernetes.io/name argo-events-controller-manager;
- the controller config lists the JetStream version 2.10.10.
Argo Events v1.9.10: pods it makes are labelled controller=eventbus-controller
(+ eventbus-name), eventsource-controller (+ eventsource-name) and
sensor-controller (+ sensor-name); an event source's `service` becomes the
Service <name>-eventsource-svc; a JetStream bus takes 1 or 3+ replicas.
"""

import json
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from chartlib import CHART, SCENARIOS, HelmError, by_kind, dependencies, get, helm
from chartlib import render as _render
from chartlib import renderable_chart as _chart

from mfhelm import metaflow_config, values

AZURE = SCENARIOS["azure"]
LOCAL = SCENARIOS["local"]
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())
API_VERSIONS = ("argoproj.io/v1alpha1/EventBus", "argoproj.io/v1alpha1/EventSource")
SEPARATE = {"flows": {"namespace": "jobs"},
            "argo-workflows": {"controller": {"extraArgs": ["--managed-namespace=jobs"]},
                               "server": {"extraArgs": ["--managed-namespace=jobs"]}},
            "argo-events": {"controller": {"rbac": {"managedNamespace": "jobs"}}}}


def render_with_crds(values_files, extra=None, *, release="mf", namespace="metaflow"):
    """As `render`, with the argo-events CRDs known to the cluster (the chart
    renders its EventBus and EventSource only then, or with the subchart)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [helm() or "helm", "template", release, str(_chart()), "--namespace", namespace]
        for f in values_files:
            cmd += ["-f", str(f)]
        if extra:
            path = Path(tmp) / "extra.yaml"
            path.write_text(yaml.safe_dump(extra))
            cmd += ["-f", str(path)]
        for api in API_VERSIONS:
            cmd += ["--api-versions", api]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise HelmError(proc.stderr.strip())
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def render(values_files, extra=None, *, release="mf", namespace="metaflow"):
    return _render(values_files, extra, release=release, namespace=namespace)


def _config(objs, release="mf"):
    return json.loads(get(objs, "ConfigMap", f"{release}-metaflow-config")["data"]["config.json"])


def test_argo_events_chart_is_pinned_with_its_condition():
    dep = {d["name"]: d for d in dependencies()}["argo-events"]
    # 2.4.22: the newest argo-helm argo-events chart, shipping v1.9.10.
    assert dep["version"] == "2.4.22"
    assert dep["condition"] == "argo-events.enabled"
    assert dep["repository"] == "https://argoproj.github.io/argo-helm"


def test_values_we_hand_argo_events_keep_it_namespaced():
    ours = DEFAULTS["argo-events"]
    assert ours["enabled"] is True
    assert ours["crds"] == {"install": True, "keep": True}
    assert ours["createAggregateRoles"] is False
    assert ours["webhook"]["enabled"] is False
    # rbac.enabled off: this chart renders the controller's Roles (test_chart_subchart_rbac.py).
    assert ours["controller"]["rbac"] == {"enabled": False, "namespaced": True,
                                          "managedNamespace": ""}
    assert ours["global"]["securityContext"]["runAsNonRoot"] is True
    assert ours["controller"]["containerSecurityContext"]["readOnlyRootFilesystem"] is True
    assert set(ours["controller"]["resources"]) == {"requests", "limits"}


def test_python_constants_are_the_chart_defaults():
    glue = DEFAULTS["argoEventsGlue"]
    assert glue["event"] == metaflow_config.ARGO_EVENTS_EVENT
    assert glue["sensorServiceAccount"] == metaflow_config.ARGO_EVENTS_SENSOR_SERVICE_ACCOUNT
    assert glue["webhook"]["port"] == metaflow_config.ARGO_EVENTS_WEBHOOK_PORT
    assert glue["webhook"]["url"] == metaflow_config.ARGO_EVENTS_WEBHOOK_URL


@pytest.mark.parametrize(("extra", "flow_ns"), [({}, "metaflow"), (SEPARATE, "jobs")])
def test_published_config_has_the_keys_mfhelm_config_writes(extra, flow_ns):
    config = _config(render([AZURE], extra))
    events = {k: v for k, v in config.items() if k.startswith("METAFLOW_ARGO_EVENTS_")}
    assert events == metaflow_config.argo_events_config("mf", flow_ns)
    assert config["METAFLOW_KUBERNETES_NAMESPACE"] == flow_ns


def test_events_off_leaves_no_events_objects_or_keys():
    objs = render_with_crds([AZURE], {"argo-events": {"enabled": False}})
    assert not any(k.startswith("METAFLOW_ARGO_EVENTS_") for k in _config(objs))
    assert not [o for o in objs if o["kind"] in ("EventBus", "EventSource")]
    assert not [o for o in objs if "events" in o["metadata"]["name"]
                or o["metadata"]["name"] in ("metaflow-sensors", "mf-sensors")]


def test_events_without_argo_is_refused_with_one_line():
    with pytest.raises(HelmError) as err:
        render([AZURE], {"argo-workflows": {"enabled": False}})
    assert "argo-events.enabled needs argo-workflows.enabled" in str(err.value)
    # Both off renders.
    render([SCENARIOS["argo-off"]])


@pytest.mark.parametrize(("extra", "message"), [
    ({"flows": {"namespace": "jobs"},
      "argo-workflows": SEPARATE["argo-workflows"]},
     "Argo Events must watch the flow namespace jobs"),
    ({"argo-events": {"controller": {"rbac": {"managedNamespace": "elsewhere"}}}},
     "Argo Events must watch the flow namespace metaflow"),
])
def test_a_controller_not_watching_the_flow_namespace_is_refused(extra, message):
    with pytest.raises(HelmError, match=message):
        render([AZURE], extra)


@pytest.mark.parametrize(("extra", "message"), [
    ({"argo-events": {"controller": {"rbac": {"namespaced": False}}}}, "namespaced"),
    ({"argo-events": {"webhook": {"enabled": True}}}, "webhook"),
    ({"argo-events": {"createAggregateRoles": True}}, "createAggregateRoles"),
    ({"argoEventsGlue": {"eventBus": {"replicas": 2}}}, "replicas"),
])
def test_cluster_wide_or_invalid_settings_are_refused(extra, message):
    with pytest.raises(HelmError, match=message):
        render([AZURE], extra)


def test_a_release_name_too_long_for_the_webhook_service_is_refused():
    with pytest.raises(HelmError, match="longer than 63 characters"):
        render([AZURE], release="a" * 40)


def test_custom_objects_render_only_with_the_crds_and_as_ordered_hooks():
    assert not [o for o in render([LOCAL]) if o["kind"] in ("EventBus", "EventSource")]
    objs = render_with_crds([LOCAL])
    bus, source = get(objs, "EventBus", "mf-eventbus"), get(objs, "EventSource", "mf-webhook")
    for obj in (bus, source):
        ann = obj["metadata"]["annotations"]
        assert ann["helm.sh/hook"] == "post-install,post-upgrade"
        # Helm 4 (the pinned one) applies hooks server-side: upgrades update
        # them in place; Helm 3 would have to delete them first.
        assert ann["helm.sh/hook-delete-policy"] == "hook-failed"
    assert int(bus["metadata"]["annotations"]["helm.sh/hook-weight"]) < \
        int(source["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert source["spec"]["eventBusName"] == bus["metadata"]["name"]


def test_bus_and_webhook_run_non_root_with_requests_and_limits():
    objs = render_with_crds([AZURE], SEPARATE)
    js = get(objs, "EventBus", "mf-eventbus")["spec"]["jetstream"]
    assert js["version"] == "2.10.10" and js["replicas"] == 3
    assert yaml.safe_load(js["streamConfig"]) == {"replicas": 3}
    assert js["securityContext"]["runAsNonRoot"] is True
    assert js["nodeSelector"] == {"mfhelm.io/pool": "services"}
    for part in ("containerTemplate", "reloaderContainerTemplate", "metricsContainerTemplate"):
        assert set(js[part]["resources"]) == {"requests", "limits"}, part
        sc = js[part]["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    source = get(objs, "EventSource", "mf-webhook")
    assert source["metadata"]["namespace"] == "jobs"
    template = source["spec"]["template"]
    assert template["securityContext"]["runAsNonRoot"] is True
    assert set(template["container"]["resources"]) == {"requests", "limits"}
    assert template["container"]["securityContext"]["readOnlyRootFilesystem"] is True
    assert source["spec"]["service"]["ports"] == [{"name": "http", "port": 12000,
                                                   "targetPort": 12000}]
    hook = source["spec"]["webhook"]["metaflow-event"]
    assert (hook["port"], hook["endpoint"], hook["method"]) == ("12000", "/metaflow-event", "POST")
    # One JetStream server: streams keep one copy.
    one = render_with_crds([AZURE], {"argoEventsGlue": {"eventBus": {"replicas": 1}}})
    assert yaml.safe_load(get(one, "EventBus", "mf-eventbus")["spec"]["jetstream"]
                          ["streamConfig"]) == {"replicas": 1}


def test_the_sensor_account_gets_workflow_creation_in_the_flow_namespace_only():
    objs = render([AZURE], SEPARATE)
    sa = get(objs, "ServiceAccount", "metaflow-sensors")
    assert sa["metadata"]["namespace"] == "jobs"
    assert "annotations" not in sa["metadata"]  # no Azure identity for Sensors
    role = get(objs, "Role", "mf-sensors")
    assert role["metadata"]["namespace"] == "jobs"
    assert role["rules"] == [{"apiGroups": ["argoproj.io"], "resources": ["workflows"],
                              "verbs": ["create"]}]
    assert get(objs, "RoleBinding", "mf-sensors")["subjects"] == [
        {"kind": "ServiceAccount", "name": "metaflow-sensors", "namespace": "jobs"}]


def test_the_controller_gets_its_role_where_it_reconciles():
    # argo-helm's own Role is off (controller.rbac.enabled): ours is rendered
    # in the watched namespace, the release namespace when flows share it.
    role = get(render([AZURE]), "Role", "mf-argo-events-controller")
    assert role["metadata"]["namespace"] == "metaflow"
    objs = render([AZURE], SEPARATE, release="argo-events-prod")
    binding = get(objs, "RoleBinding", "argo-events-prod-argo-events-controller")
    assert binding["metadata"]["namespace"] == "jobs"
    # argo-helm's fullname is the release name when it contains the chart name.
    assert binding["subjects"] == [{"kind": "ServiceAccount",
                                    "name": "argo-events-prod-controller-manager",
                                    "namespace": "metaflow"}]
    # One replica runs --leader-election=false: nothing at home.
    assert "argo-events-prod-argo-events-controller-home" not in {
        o["metadata"]["name"] for o in by_kind(objs, "Role")}


def _policy(objs, name):
    return get(objs, "NetworkPolicy", name)["spec"]


def test_network_policies_for_the_events_pods():
    objs = render([AZURE], SEPARATE)
    webhook = _policy(objs, "mf-events-webhook")
    assert webhook["podSelector"]["matchLabels"] == {"controller": "eventsource-controller",
                                                     "eventsource-name": "mf-webhook"}
    [rule] = webhook["ingress"]
    assert rule["ports"] == [{"port": 12000}]
    # Flow pods publish from the flow namespace; the ingress controller's too.
    sources = {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
               for p in rule["from"]}
    assert sources == {"jobs", "metaflow", "app-routing-system"}
    bus = _policy(objs, "mf-eventbus")
    assert bus["podSelector"]["matchLabels"] == {"controller": "eventbus-controller",
                                                 "eventbus-name": "mf-eventbus"}
    clients, routes = bus["ingress"]
    assert clients["ports"] == [{"port": 4222}]
    [expr] = clients["from"][0]["podSelector"]["matchExpressions"]
    assert set(expr["values"]) == {"eventsource-controller", "sensor-controller"}
    assert routes["ports"] == [{"port": 6222}]
    assert _policy(objs, "mf-sensors")["ingress"] == []
    controller = _policy(objs, "mf-argo-events-controller")
    assert controller["ingress"] == []
    assert controller["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "argo-events-controller-manager",
        "app.kubernetes.io/instance": "mf"}
    assert get(objs, "NetworkPolicy", "mf-argo-events-controller")["metadata"]["namespace"] \
        == "metaflow"


def test_mfhelms_values_render(tmp_path):
    """What `mfhelm install --local` and `mfhelm render` hand the chart."""
    local = values.argo_watches_flow_namespace(
        values.local_values(flow_namespace="metaflow-flows"), "metaflow")
    assert local["argo-events"]["controller"]["rbac"]["managedNamespace"] == "metaflow-flows"
    objs = render([LOCAL], local, release="metaflow")
    assert _config(objs, "metaflow")["METAFLOW_ARGO_EVENTS_EVENT_BUS"] == "metaflow-eventbus"
    no_argo = values.local_values(argo=False, flow_namespace="metaflow-flows")
    assert no_argo["argo-events"]["enabled"] is False
    render([LOCAL], values.argo_watches_flow_namespace(no_argo, "metaflow"), release="metaflow")
