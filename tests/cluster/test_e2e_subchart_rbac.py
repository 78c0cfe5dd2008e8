"""Issue 17, item 1, judged by a real API server's authorizer.

Every Role and RoleBinding a release puts on the cluster is applied to a
pair of namespaces (release and flows): ours, rendered by the real helm for
the azure profile with Airflow, Argo and Argo Events on and a separate flow
namespace (as `mfhelm install` renders it), and the subcharts' own, as their
templates at the pins render them for the same values
(tests/chart/upstream_rbac.py; the archives are not reachable from CI).
SubjectAccessReviews then ask what each account may do:

- `metaflow-airflow`, the account the scheduler runs DAG files as, may not
  create pods, exec into them, read their logs or read Secrets in the release
  namespace (where the metadata service and its database Secret live), and
  may launch and watch pods in the flow namespace;
- Argo's controller and server, and Argo Events' controller, may at home do
  only what they do there (read the controller's ConfigMap), and in the flow
  namespace what running flows takes.

The same check run on the subcharts' Roles as their default switches render
them (Airflow's pod-launcher and pod-log-reader Roles, argo-helm's) reports
the breaches: the check can fail. That the controllers need nothing more at
home is shown by running them: test_e2e_argo_controller.py and
test_e2e_argo_events.py run the real controllers with exactly these Roles.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import upstream_rbac as up
import yaml
from chartlib import CHART, SCENARIOS, render
from kubernetes.client.rest import ApiException

from . import argo
from .handle import Cluster

pytestmark = pytest.mark.cluster

RELEASE = "mf"
AIRFLOW = "metaflow-airflow"
CONTROLLER = f"{up.argo_fullname(RELEASE)}-workflow-controller"
SERVER = f"{up.argo_fullname(RELEASE)}-server"
EVENTS = up.argo_events_controller(RELEASE)
CONFIGMAP = f"{CONTROLLER}-configmap"
# The switches our values turn off, at the subcharts' defaults.
UPSTREAM_SWITCHES = {
    "airflow": {"rbac": {"create": True}, "allowPodLaunching": True,
                "webserver": {"allowPodLogReading": True}},
    "argo-workflows": {"controller": {"rbac": {"create": True}},
                       "server": {"rbac": {"create": True}}},
    "argo-events": {"controller": {"rbac": {"enabled": True}}},
}

# (account, verb, resource, subresource, group, name): never in the release namespace.
DENIED_AT_HOME = [
    *((AIRFLOW, verb, res, sub, "", "") for verb, res, sub in (
        ("create", "pods", ""), ("delete", "pods", ""), ("list", "pods", ""),
        ("create", "pods", "exec"), ("get", "pods", "log"), ("get", "secrets", ""),
        ("list", "secrets", ""), ("list", "events", ""))),
    (AIRFLOW, "create", "jobs", "", "batch", ""),
    *((CONTROLLER, verb, res, sub, "", name) for verb, res, sub, name in (
        ("create", "pods", "", ""), ("create", "pods", "exec", ""), ("get", "secrets", "", ""),
        ("get", "secrets", "", "argo-workflows-agent-ca-certificates"),
        ("list", "configmaps", "", ""), ("get", "configmaps", "", "mf-metaflow-config"),
        ("create", "persistentvolumeclaims", "", ""), ("create", "leases", "", ""))),
    (CONTROLLER, "create", "workflows", "", "argoproj.io", ""),
    *((SERVER, verb, res, sub, "", "") for verb, res, sub in (
        ("get", "secrets", ""), ("list", "pods", ""), ("get", "pods", "log"),
        ("list", "configmaps", ""), ("list", "events", ""))),
    (SERVER, "create", "workflows", "", "argoproj.io", ""),
    *((EVENTS, verb, res, sub, "", "") for verb, res, sub in (
        ("get", "secrets", ""), ("list", "secrets", ""), ("create", "pods", ""),
        ("create", "pods", "exec"), ("create", "services", ""), ("list", "configmaps", ""))),
    (EVENTS, "create", "deployments", "", "apps", ""),
    (EVENTS, "create", "leases", "", "coordination.k8s.io", ""),
    *((account, "get", "secrets", "", "", "") for account in ("metaflow-service", "default")),
]
# What each needs: (account, verb, resource, subresource, group, name, where).
NEEDED = [
    *((AIRFLOW, verb, "pods", "", "", "", "flows") for verb in
      ("create", "get", "list", "watch", "delete", "patch")),
    (AIRFLOW, "get", "pods", "log", "", "", "flows"),
    (AIRFLOW, "create", "pods", "exec", "", "", "flows"),
    (CONTROLLER, "get", "configmaps", "", "", CONFIGMAP, "home"),
    (CONTROLLER, "create", "pods", "", "", "", "flows"),
    (CONTROLLER, "watch", "workflows", "", "argoproj.io", "", "flows"),
    (CONTROLLER, "list", "workflowtaskresults", "", "argoproj.io", "", "flows"),
    (SERVER, "get", "configmaps", "", "", CONFIGMAP, "home"),
    (SERVER, "get", "pods", "log", "", "", "flows"),
    (SERVER, "create", "workflows", "", "argoproj.io", "", "flows"),
    (EVENTS, "create", "deployments", "", "apps", "", "flows"),
    (EVENTS, "create", "statefulsets", "", "apps", "", "flows"),
    (EVENTS, "get", "secrets", "", "", "", "flows"),
    (EVENTS, "watch", "sensors", "", "argoproj.io", "", "flows"),
]


def chart_values(flow_ns: str) -> dict[str, Any]:
    """What `mfhelm install` adds to the azure profile for a separate flow
    namespace, with Argo and Argo Events on."""
    flag = f"--managed-namespace={flow_ns}"
    return {"flows": {"namespace": flow_ns},
            "argo-workflows": {"enabled": True, "controller": {"extraArgs": [flag]},
                               "server": {"extraArgs": [flag]}},
            "argo-events": {"enabled": True,
                            "controller": {"rbac": {"managedNamespace": flow_ns}}}}


def umbrella_values(flow_ns: str, switches: dict[str, Any] | None) -> dict[str, Any]:
    """The values the subcharts see: values.yaml, the scenario, mfhelm's, and
    (for the counter-example) their own RBAC switches back at their defaults."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for layer in (yaml.safe_load(SCENARIOS["azure-airflow"].read_text()),
                  chart_values(flow_ns), switches or {}):
        values = up.merged(values, layer)
    return values


@contextmanager
def release_rbac(cluster: Cluster, switches: dict[str, Any] | None = None
                 ) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
    """A release namespace and a flow namespace holding every Role and
    RoleBinding a release makes; yields them and the subcharts' objects."""
    home = cluster.create_namespace(f"sr-{uuid.uuid4().hex[:6]}")
    flows = cluster.create_namespace(f"{home}-flows")
    try:
        ours = [o for o in render([SCENARIOS["azure-airflow"]], chart_values(flows),
                                  release=RELEASE, namespace=home)
                if o["kind"] in ("Role", "RoleBinding")]
        assert {o["metadata"]["namespace"] for o in ours} == {home, flows}
        theirs = up.subchart_objects(umbrella_values(flows, switches), RELEASE, home)
        for obj in ours + theirs:
            argo.apply(cluster, obj)
        cluster.wait_authorized(ours + theirs)
        yield home, flows, theirs
    finally:
        for ns in (home, flows):
            try:
                cluster.core().delete_namespace(ns)
            except ApiException as exc:
                if exc.status != 404:
                    raise


def breaches(cluster: Cluster, home: str) -> list[tuple[str, ...]]:
    """What an account may do in the release namespace that it must not."""
    return [check for check in DENIED_AT_HOME
            if cluster.service_account_can(home, check[0], check[1], check[2], namespace=home,
                                           subresource=check[3], group=check[4],
                                           name=check[5])]


def missing(cluster: Cluster, home: str, flows: str) -> list[tuple[str, ...]]:
    """What an account needs and may not do."""
    return [need for need in NEEDED
            if not cluster.service_account_can(
                home, need[0], need[1], need[2], subresource=need[3], group=need[4],
                name=need[5], namespace=home if need[6] == "home" else flows)]


def test_no_account_gets_more_in_the_release_namespace_than_it_uses(cluster: Cluster):
    with release_rbac(cluster) as (home, flows, theirs):
        assert breaches(cluster, home) == []
        assert missing(cluster, home, flows) == []
        assert theirs == []  # our values: no subchart renders a Role
        # Nothing reaches past the two namespaces.
        for account in (AIRFLOW, CONTROLLER, SERVER, EVENTS):
            assert not cluster.service_account_can(home, account, "create", "pods",
                                                   namespace="default"), account
            assert not cluster.service_account_can(home, account, "list", "pods",
                                                   namespace=None), account


def test_the_check_reports_the_subcharts_own_roles(cluster: Cluster):
    """The subcharts' switches at their defaults: Airflow's pod-launcher and
    pod-log-reader Roles bound to our Airflow account, argo-helm's Roles as
    if flows ran at home. The same check lists what they grant."""
    with release_rbac(cluster, UPSTREAM_SWITCHES) as (home, _flows, theirs):
        names = {o["metadata"]["name"] for o in theirs if o["kind"] == "Role"}
        assert {f"{RELEASE}-pod-launcher-role", f"{RELEASE}-pod-log-reader-role",
                CONTROLLER, SERVER, EVENTS} == names
        found = {check[:4] for check in breaches(cluster, home)}
        assert {(AIRFLOW, "create", "pods", ""), (AIRFLOW, "create", "pods", "exec"),
                (AIRFLOW, "get", "pods", "log"),
                (CONTROLLER, "create", "pods", ""),
                (SERVER, "get", "secrets", ""), (SERVER, "get", "pods", "log"),
                (EVENTS, "get", "secrets", ""), (EVENTS, "create", "pods", "")} <= found
