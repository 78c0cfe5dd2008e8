"""Issue 17, item 1: which Roles land in the release namespace, and for whom.

The subcharts' RBAC templates are restated in upstream_rbac.py (sources
there); ours are rendered by the real helm. Our values turn every subchart
Role off: Airflow's (its pod-launcher Role would let DAG code start pods,
exec into pods and so read the metadata database's Secret in the release
namespace), Argo's controller's and server's, and Argo Events'
controller's (theirs hold, at home, the rules of a namespace where flows
run). This chart renders each controller's rules where it reconciles and,
at home, only what it uses there.
"""

from pathlib import Path

import pytest
import upstream_rbac as up
import yaml
from chartlib import CHART, SCENARIOS, HelmError, by_kind, get, render

DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())
AZURE = SCENARIOS["azure"]
AZURE_AIRFLOW = SCENARIOS["azure-airflow"]
LOCAL_AIRFLOW = SCENARIOS["local-airflow"]
FLOWS = "jobs"
# What `mfhelm install` adds for a separate flow namespace.
SEPARATE = {"flows": {"namespace": FLOWS},
            "argo-workflows": {"enabled": True,
                               "controller": {"extraArgs": [f"--managed-namespace={FLOWS}"]},
                               "server": {"extraArgs": [f"--managed-namespace={FLOWS}"]}},
            "argo-events": {"enabled": True,
                            "controller": {"rbac": {"managedNamespace": FLOWS}}}}


def umbrella_values(path: Path, extra: dict | None = None) -> dict:
    """values.yaml with a scenario file and extra values over it, as Helm merges them."""
    return up.merged(up.merged(DEFAULTS, yaml.safe_load(path.read_text())), extra or {})


def grants(role: dict) -> set[tuple[str, str, str]]:
    return {(r, v, ",".join(rule.get("resourceNames", [])))
            for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}


# -- The subcharts render no Role.

@pytest.mark.parametrize("scenario", [AZURE_AIRFLOW, LOCAL_AIRFLOW])
def test_our_values_leave_every_subchart_role_out(scenario):
    values = umbrella_values(scenario, SEPARATE)
    assert values["airflow"]["enabled"] and values["argo-events"]["enabled"]
    assert up.subchart_objects(values, "mf", "metaflow") == []


def test_airflow_pod_launcher_condition_is_off_in_our_values():
    airflow = up.merged(up.AIRFLOW_DEFAULTS, DEFAULTS["airflow"])
    # pod-launcher-role.yaml: `rbac.create and allowPodLaunching`; each alone keeps it out.
    assert airflow["rbac"]["create"] is False
    assert airflow["allowPodLaunching"] is False
    # pod-log-reader-role.yaml: `rbac.create and (webserver.allowPodLogReading
    # or triggerer.enabled)`.
    assert airflow["webserver"]["allowPodLogReading"] is False
    assert airflow["triggerer"]["enabled"] is False


def test_without_our_switches_airflow_binds_its_pod_launcher_to_our_account():
    """What the three switches prevent: with the chart's defaults for them,
    LocalExecutor binds pod creation and exec in the release namespace to the
    scheduler's account, ours."""
    airflow = up.merged(up.AIRFLOW_DEFAULTS, DEFAULTS["airflow"])
    airflow = up.merged(airflow, {"rbac": {"create": True}, "allowPodLaunching": True,
                                  "webserver": {"allowPodLogReading": True}})
    objs = up.airflow_objects(airflow, "mf", "metaflow")
    role = get(objs, "Role", "mf-pod-launcher-role")
    assert {("pods", "create", ""), ("pods/exec", "create", "")} <= grants(role)
    binding = get(objs, "RoleBinding", "mf-pod-launcher-rolebinding")
    assert binding["metadata"]["namespace"] == "metaflow"
    assert [s["name"] for s in binding["subjects"]] == ["metaflow-airflow"]
    reader = get(objs, "RoleBinding", "mf-pod-log-reader-rolebinding")
    assert [s["name"] for s in reader["subjects"]] == ["metaflow-airflow"]


@pytest.mark.parametrize(("values", "key"), [
    ({"airflow": {"rbac": {"create": True}}}, "airflow.rbac.create"),
    ({"airflow": {"allowPodLaunching": True}}, "airflow.allowPodLaunching"),
    ({"airflow": {"webserver": {"allowPodLogReading": True}}},
     "airflow.webserver.allowPodLogReading"),
    ({"argo-workflows": {"controller": {"rbac": {"create": True}}}},
     "argo-workflows.controller.rbac.create"),
    ({"argo-workflows": {"server": {"rbac": {"create": True}}}},
     "argo-workflows.server.rbac.create"),
    ({"argo-events": {"controller": {"rbac": {"enabled": True}}}},
     "argo-events.controller.rbac.enabled"),
])
def test_turning_a_subchart_role_back_on_is_refused(values, key):
    with pytest.raises(HelmError) as err:
        render([AZURE_AIRFLOW], values)
    assert key.split(".")[-1] in str(err.value)
    assert key.split(".")[0] in str(err.value)


# -- Ours: where flows run, everything the controllers need; at home, little.

def _home(objs, name):
    role = get(objs, "Role", name)
    assert role["metadata"]["namespace"] == "metaflow"
    return grants(role)


@pytest.mark.parametrize("extra", [{}, SEPARATE])
def test_argo_controller_and_server_read_only_their_configmap_at_home(extra):
    objs = render([AZURE], extra, release="mf")
    config = "mf-argo-workflows-workflow-controller-configmap"
    # The controller also watches it by name (v4.0.7 workflow/controller/
    # controller.go runConfigMapWatcher); the server only gets it at start
    # (server/apiserver/argoserver.go, config/controller.go).
    assert _home(objs, "mf-argo-workflow-controller-home") == {
        ("configmaps", "get", config), ("configmaps", "watch", config)}
    assert _home(objs, "mf-argo-server-home") == {("configmaps", "get", config)}
    for part in ("workflow-controller", "server"):
        binding = get(objs, "RoleBinding", f"mf-argo-{part}-home")
        assert binding["subjects"] == [{"kind": "ServiceAccount",
                                        "name": f"mf-argo-workflows-{part}",
                                        "namespace": "metaflow"}]
    # Where flows run, the controller may still run them.
    flows = get(objs, "Role", "mf-argo-workflow-controller")
    assert flows["metadata"]["namespace"] == (FLOWS if extra else "metaflow")
    assert ("pods", "create", "") in grants(flows)


def test_argo_home_roles_name_the_configmap_argo_helm_names():
    objs = render([AZURE], {"argo-workflows": {"controller": {"configMap": {"name": "wfc"}}}},
                  release="argo-workflows-prod")
    assert _home(objs, "argo-workflows-prod-argo-server-home") == {("configmaps", "get", "wfc")}
    objs = render([AZURE], release="argo-workflows-prod")
    assert _home(objs, "argo-workflows-prod-argo-server-home") == {
        ("configmaps", "get", "argo-workflows-prod-workflow-controller-configmap")}


def test_replicated_controllers_also_get_their_leader_lease_at_home():
    objs = render([AZURE], {**SEPARATE,
                            "argo-workflows": {**SEPARATE["argo-workflows"],
                                               "controller": {
                                                   **SEPARATE["argo-workflows"]["controller"],
                                                   "replicas": 2}},
                            "argo-events": {**SEPARATE["argo-events"],
                                            "controller": {
                                                **SEPARATE["argo-events"]["controller"],
                                                "replicas": 2}}}, release="mf")
    home = _home(objs, "mf-argo-workflow-controller-home")
    assert ("leases", "create", "") in home
    assert ("leases", "update", "workflow-controller,workflow-controller-lease") in home
    assert not {g for g in home if g[0] in ("pods", "secrets", "pods/exec")}
    events_home = _home(objs, "mf-argo-events-controller-home")
    assert {r for r, _, _ in events_home} == {"leases", "events"}


def test_nothing_of_ours_in_the_release_namespace_reads_secrets_or_starts_pods():
    objs = render([AZURE_AIRFLOW], SEPARATE, release="mf")
    for role in by_kind(objs, "Role"):
        if role["metadata"]["namespace"] != "metaflow":
            continue
        resources = {r for r, _, _ in grants(role)}
        assert not resources & {"secrets", "pods", "pods/exec", "pods/log"}, \
            role["metadata"]["name"]


def test_chart_refuses_airflow_with_flows_in_the_release_namespace():
    # Airflow's account launches pods in the flow namespace; in the release
    # namespace they could mount the services' Secrets.
    with pytest.raises(HelmError, match="airflow.enabled needs flows.namespace"):
        render([LOCAL_AIRFLOW], {"flows": {"namespace": ""}})
    with pytest.raises(HelmError, match="airflow.enabled needs flows.namespace"):
        render([LOCAL_AIRFLOW], {"flows": {"namespace": "default"}}, namespace="default")
    assert render([LOCAL_AIRFLOW])
