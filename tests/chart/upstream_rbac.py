"""The Roles and RoleBindings the three subcharts' own templates render, for
given values, as facts read from those templates at the pins.

No chart repository is reachable from CI, so the subchart archives are
absent there (see chartlib). These functions restate, for the values that
decide them, what each template renders in the release namespace, so that
tests can put exactly those objects on a real API server and ask it
(SubjectAccessReview) what each account may do. Each function takes the
values the subchart sees (its defaults with ours merged over, `merged`).

Sources:
- argo-helm tag argo-workflows-1.0.18, charts/argo-workflows/templates/
  controller/workflow-controller-cluster-roles.yaml and -crb.yaml,
  server/server-cluster-roles.yaml and server-crb.yaml (with
  singleNamespace: a Role and a RoleBinding in the release namespace).
  The rules below are those templates rendered by helm for our values
  before they turned controller.rbac.create and server.rbac.create off.
  Against 0.45.20 (v3.6.10) the controller's gained `namespaces` in its
  configmaps rule and workflowtasksets/status; the server's is unchanged.
- argo-helm tag argo-events-2.4.22, charts/argo-events/templates/
  argo-events-controller/rbac.yaml (rbac.namespaced: a Role; its RoleBinding
  names no namespace, so Helm puts it in the release namespace).
- Apache Airflow's chart (pinned 1.16.0), chart/templates/rbac/*.yaml. The
  apache/airflow repository is larger than what could be fetched here; the
  templates were read from stored copies of chart/templates/rbac/ that are
  not tied to the helm-chart/1.16.0 tag. Every one of them renders only
  under `rbac.create`, which is why our values turn that off (and the two
  switches below as well). pod-launcher-role.yaml: `rbac.create and
  allowPodLaunching`, a Role `<release>-pod-launcher-role`; its RoleBinding
  binds the scheduler's account for the Local and Kubernetes executors, the
  workers' for Celery and Kubernetes, the triggerer's when it is on.
  pod-log-reader-role.yaml: `rbac.create and (webserver.allowPodLogReading
  or triggerer.enabled)`, bound to the webserver's and the triggerer's
  accounts. job-launcher-role.yaml: `rbac.create and allowJobLaunching`.
  pod-cleanup-role.yaml: `rbac.create and cleanup.enabled`. Defaults in the
  chart's values.yaml: rbac.create true, allowPodLaunching true,
  allowJobLaunching false, webserver.allowPodLogReading true,
  triggerer.enabled true, cleanup.enabled false, executor CeleryExecutor.
"""

from __future__ import annotations

import copy
from typing import Any

EVERY = ["create", "get", "list", "watch", "update", "patch", "delete"]

# Upstream defaults of the keys the RBAC templates read.
AIRFLOW_DEFAULTS: dict[str, Any] = {
    "rbac": {"create": True},
    "allowPodLaunching": True,
    "allowJobLaunching": False,
    "multiNamespaceMode": False,
    "executor": "CeleryExecutor",
    "webserver": {"allowPodLogReading": True, "serviceAccount": {"name": ""}},
    "scheduler": {"serviceAccount": {"name": ""}},
    "triggerer": {"enabled": True, "serviceAccount": {"name": ""}},
    "workers": {"serviceAccount": {"name": ""}},
    "cleanup": {"enabled": False, "serviceAccount": {"name": ""}},
}
ARGO_WORKFLOWS_DEFAULTS: dict[str, Any] = {
    "singleNamespace": False,
    "controller": {"rbac": {"create": True}, "name": "workflow-controller"},
    "server": {"enabled": True, "rbac": {"create": True}, "name": "server"},
}
ARGO_EVENTS_DEFAULTS: dict[str, Any] = {
    "controller": {"rbac": {"enabled": True, "namespaced": False},
                   "name": "controller-manager"},
}


def merged(defaults: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of a parent's values over a subchart's defaults."""
    out = copy.deepcopy(defaults)
    for key, value in ours.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _rule(groups: list[str], resources: list[str], verbs: list[str],
          names: list[str] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"apiGroups": groups, "resources": resources, "verbs": verbs}
    if names:
        rule["resourceNames"] = names
    return rule


def _role(name: str, namespace: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": namespace}, "rules": rules}


def _binding(name: str, namespace: str, role: str,
             accounts: list[str]) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": a, "namespace": namespace}
                         for a in accounts]}


# --- Apache Airflow chart 1.16.0 ---------------------------------------------------

AIRFLOW_POD_LAUNCHER_RULES = [
    _rule([""], ["pods"], ["create", "list", "get", "patch", "watch", "delete"]),
    _rule([""], ["pods/log"], ["get"]),
    _rule([""], ["pods/exec"], ["create", "get"]),
    _rule([""], ["events"], ["list"]),
]
AIRFLOW_POD_LOG_READER_RULES = [
    _rule([""], ["pods"], ["list", "get", "watch"]),
    _rule([""], ["pods/log"], ["get", "list"]),
]
AIRFLOW_JOB_LAUNCHER_RULES = [
    _rule(["batch"], ["jobs"], ["create", "list", "get", "patch", "watch", "delete"]),
    _rule(["batch"], ["jobs/status"], ["get", "watch"]),
]
AIRFLOW_CLEANUP_RULES = [_rule([""], ["pods"], ["list", "delete"])]


def _airflow_account(values: dict[str, Any], part: str, release: str, suffix: str) -> str:
    return str(values[part]["serviceAccount"].get("name") or f"{release}-{suffix}")


def airflow_objects(values: dict[str, Any], release: str,
                    namespace: str) -> list[dict[str, Any]]:
    """What the Airflow chart's templates/rbac/ render for ``values``."""
    if not values["rbac"]["create"]:
        return []
    assert not values["multiNamespaceMode"], "ClusterRoles are out of scope"
    executor = str(values["executor"])
    scheduler = _airflow_account(values, "scheduler", release, "scheduler")
    worker = _airflow_account(values, "workers", release, "worker")
    triggerer = _airflow_account(values, "triggerer", release, "triggerer")
    webserver = _airflow_account(values, "webserver", release, "webserver")
    launches = [a for a, on in (
        (scheduler, "LocalExecutor" in executor or "KubernetesExecutor" in executor),
        (worker, "CeleryExecutor" in executor or "KubernetesExecutor" in executor),
        (triggerer, values["triggerer"]["enabled"])) if on]
    objs: list[dict[str, Any]] = []

    def add(stem: str, rules: list[dict[str, Any]], accounts: list[str]) -> None:
        role = f"{release}-{stem}-role"
        objs.append(_role(role, namespace, rules))
        objs.append(_binding(f"{release}-{stem}-rolebinding", namespace, role,
                             list(dict.fromkeys(accounts))))

    if values["allowPodLaunching"]:
        add("pod-launcher", AIRFLOW_POD_LAUNCHER_RULES, launches)
    if values["webserver"]["allowPodLogReading"] or values["triggerer"]["enabled"]:
        readers = [a for a, on in ((webserver, values["webserver"]["allowPodLogReading"]),
                                   (triggerer, values["triggerer"]["enabled"])) if on]
        add("pod-log-reader", AIRFLOW_POD_LOG_READER_RULES, readers)
    if values["allowJobLaunching"]:
        add("job-launcher", AIRFLOW_JOB_LAUNCHER_RULES, launches[:2])
    if values["cleanup"]["enabled"]:
        add("cleanup", AIRFLOW_CLEANUP_RULES,
            [_airflow_account(values, "cleanup", release, "cleanup")])
    return objs


# --- argo-helm argo-workflows 1.0.18 -----------------------------------------------

ARGO_CONTROLLER_RULES = [
    _rule([""], ["pods"], EVERY),
    _rule([""], ["pods/exec"], ["create"]),
    # `namespaces` is cluster-scoped: in this Role it grants nothing.
    _rule([""], ["configmaps", "namespaces"], ["get", "watch", "list"]),
    _rule([""], ["persistentvolumeclaims", "persistentvolumeclaims/finalizers"],
          ["create", "update", "delete", "get"]),
    _rule(["argoproj.io"], ["workflows", "workflows/finalizers", "workflowtasksets",
                            "workflowtasksets/finalizers", "workflowtasksets/status",
                            "workflowartifactgctasks"],
          ["get", "list", "watch", "update", "patch", "delete", "create"]),
    _rule(["argoproj.io"], ["workflowtemplates", "workflowtemplates/finalizers"],
          ["get", "list", "watch"]),
    _rule(["argoproj.io"], ["workflowtaskresults", "workflowtaskresults/finalizers"],
          ["list", "watch", "deletecollection"]),
    _rule(["argoproj.io"], ["cronworkflows", "cronworkflows/finalizers"],
          ["get", "list", "watch", "update", "patch", "delete"]),
    _rule([""], ["events"], ["create", "patch"]),
    _rule([""], ["serviceaccounts"], ["get", "list"]),
    _rule(["policy"], ["poddisruptionbudgets"], ["create", "get", "delete"]),
    _rule(["coordination.k8s.io"], ["leases"], ["create"]),
    _rule(["coordination.k8s.io"], ["leases"], ["get", "watch", "update", "patch", "delete"],
          ["workflow-controller", "workflow-controller-lease"]),
    _rule([""], ["secrets"], ["get"], ["argo-workflows-agent-ca-certificates"]),
]
ARGO_SERVER_RULES = [
    _rule([""], ["configmaps", "events"], ["get", "watch", "list"]),
    _rule([""], ["pods"], ["get", "list", "watch", "delete"]),
    _rule([""], ["pods/log"], ["get", "list"]),
    _rule([""], ["secrets"], ["get"]),
    _rule([""], ["events"], ["watch", "create", "patch"]),
    _rule(["argoproj.io"], ["eventsources", "sensors", "workflows", "workfloweventbindings",
                            "workflowtemplates", "cronworkflows"],
          ["create", "get", "list", "watch", "update", "patch", "delete"]),
]


def argo_fullname(release: str) -> str:
    name = release if "argo-workflows" in release else f"{release}-argo-workflows"
    return name[:63].rstrip("-")


def argo_workflows_objects(values: dict[str, Any], release: str,
                           namespace: str) -> list[dict[str, Any]]:
    """What argo-helm's controller and server RBAC templates render."""
    assert values["singleNamespace"], "ClusterRoles are out of scope"
    objs: list[dict[str, Any]] = []
    for part, on, rules in (
            ("controller", values["controller"]["rbac"]["create"], ARGO_CONTROLLER_RULES),
            ("server", values["server"]["enabled"] and values["server"]["rbac"]["create"],
             ARGO_SERVER_RULES)):
        if on:
            name = f"{argo_fullname(release)}-{values[part]['name']}"
            objs += [_role(name, namespace, rules), _binding(name, namespace, name, [name])]
    return objs


# --- argo-helm argo-events 2.4.22 --------------------------------------------------

ARGO_EVENTS_CONTROLLER_RULES = [
    _rule([""], ["events"], ["create", "patch"]),
    _rule(["coordination.k8s.io"], ["leases"],
          ["get", "list", "watch", "create", "update", "patch", "delete"]),
    _rule(["argoproj.io"], ["sensors", "sensors/finalizers", "sensors/status", "eventsources",
                            "eventsources/finalizers", "eventsources/status", "eventbus",
                            "eventbus/finalizers", "eventbus/status"],
          ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]),
    _rule([""], ["pods", "pods/exec", "configmaps", "services", "persistentvolumeclaims"], EVERY),
    _rule([""], ["secrets"], ["create", "get", "list", "update", "patch", "delete"]),
    _rule(["apps"], ["deployments", "statefulsets"], EVERY),
]


def argo_events_controller(release: str, values: dict[str, Any] | None = None) -> str:
    """argo-helm's `argo-events.controller.fullname` (nameOverride argo-events)."""
    name = (values or ARGO_EVENTS_DEFAULTS)["controller"]["name"]
    full = release if "argo-events" in release else f"{release}-argo-events"
    return f"{full[:63].rstrip('-')}-{name}"[:63].rstrip("-")


def argo_events_objects(values: dict[str, Any], release: str,
                        namespace: str) -> list[dict[str, Any]]:
    """What argo-helm's argo-events controller RBAC template renders."""
    rbac = values["controller"]["rbac"]
    if not rbac["enabled"]:
        return []
    assert rbac["namespaced"], "ClusterRoles are out of scope"
    name = argo_events_controller(release, values)
    return [_role(name, namespace, ARGO_EVENTS_CONTROLLER_RULES),
            _binding(name, namespace, name, [name])]


def subchart_objects(values: dict[str, Any], release: str,
                     namespace: str) -> list[dict[str, Any]]:
    """Every Role and RoleBinding the three subcharts render for the
    umbrella's values ``values`` (each section merged over its defaults)."""
    objs: list[dict[str, Any]] = []
    for key, defaults, render in (("airflow", AIRFLOW_DEFAULTS, airflow_objects),
                                  ("argo-workflows", ARGO_WORKFLOWS_DEFAULTS,
                                   argo_workflows_objects),
                                  ("argo-events", ARGO_EVENTS_DEFAULTS, argo_events_objects)):
        section = values.get(key) or {}
        if section.get("enabled"):
            objs += render(merged(defaults, section), release, namespace)
    return objs
