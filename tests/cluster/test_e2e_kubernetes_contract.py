"""Where the behaviour is Kubernetes' own, the real API server decides: Pod
Security admission for every pod of every scenario, the namespaces mfhelm
creates, service links in the pods the API server stores, and NetworkPolicy
selectors matched against the labels real pods carry.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from chartlib import SCENARIOS, get, pod_specs, render
from kubernetes import client

from mfhelm.stack import POD_SECURITY_LEVEL

from .handle import Cluster
from .test_e2e_stack import install_local, mfhelm, one_error_line

pytestmark = pytest.mark.cluster

PSA = "pod-security.kubernetes.io/enforce"


def _labelled_namespace(cluster: Cluster, level: str) -> str:
    name = cluster.create_namespace(f"psa-{level}-{uuid.uuid4().hex[:6]}")
    cluster.core().patch_namespace(name, {"metadata": {"labels": {PSA: level}}})
    return name


def _admission(cluster: Cluster, namespace: str, scenario: Path) -> dict[str, str]:
    """Each workload's pod, created with a server-side dry run: name -> '' when
    admitted, else the API server's reason."""
    api = cluster.api_client()
    core = client.CoreV1Api(api)
    out = {}
    workloads = pod_specs(render([scenario], release="mf", namespace=namespace))
    for account in {spec.get("serviceAccountName") for _, spec in workloads} - {None}:
        try:  # the ServiceAccount admission plugin wants them to exist
            core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
        except client.ApiException as exc:
            assert exc.status == 409, exc.body
    for obj, _spec in workloads:
        if obj["metadata"].get("namespace", namespace) != namespace:
            # The NVIDIA device plugin: in kube-system, outside the stack's
            # Pod Security level (test_only_node_agents_live_outside_the_stack).
            continue
        template = obj["spec"]["template"]
        spec = dict(template["spec"])
        # A StatefulSet's pods get a PVC volume per claim template.
        claims = obj["spec"].get("volumeClaimTemplates", [])
        spec["volumes"] = list(spec.get("volumes", [])) + [
            {"name": c["metadata"]["name"], "persistentVolumeClaim": {
                "claimName": f"{c['metadata']['name']}-{obj['metadata']['name']}-0"}}
            for c in claims]
        body = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"dry-{obj['metadata']['name']}",
                             "labels": template["metadata"].get("labels", {})},
                "spec": spec}
        try:
            core.create_namespaced_pod(namespace, body, dry_run="All")
            out[obj["metadata"]["name"]] = ""
        except client.ApiException as exc:
            message = json.loads(exc.body)["message"]
            assert exc.status == 403 and "violates PodSecurity" in message, message
            out[obj["metadata"]["name"]] = message
    return out


@pytest.fixture(scope="module")
def psa_namespaces(cluster: Cluster) -> dict[str, str]:
    return {level: _labelled_namespace(cluster, level) for level in ("baseline", "restricted")}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_pod_is_admitted_at_the_stacks_level(cluster: Cluster, psa_namespaces, scenario):
    assert POD_SECURITY_LEVEL == "baseline"
    verdicts = _admission(cluster, psa_namespaces["baseline"], SCENARIOS[scenario])
    assert verdicts and not any(verdicts.values()), verdicts


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_only_the_migration_container_keeps_the_stack_from_restricted(cluster: Cluster,
                                                                      psa_namespaces, scenario):
    verdicts = _admission(cluster, psa_namespaces["restricted"], SCENARIOS[scenario])
    refused = {name: why for name, why in verdicts.items() if why}
    assert set(refused) == {"mf-metadata"}, refused
    assert 'container "migrations"' in refused["mf-metadata"]
    assert "runAsNonRoot" in refused["mf-metadata"] or "runAsUser=0" in refused["mf-metadata"]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_only_node_agents_live_outside_the_stack(scenario):
    """Every workload runs in the release namespace except the NVIDIA device
    plugin (with the GPU pool), which needs the kubelet's hostPath that the
    stack's level refuses: kube-system, as upstream installs it."""
    values = render([SCENARIOS[scenario]], release="mf", namespace="stack")
    outside = {obj["metadata"]["name"]: obj["metadata"]["namespace"]
               for obj, _ in pod_specs(values)
               if obj["metadata"].get("namespace", "stack") != "stack"}
    # ci/azure-values.yaml has the GPU pool; the local profile never does.
    gpu = scenario == "azure"
    assert outside == ({"mf-nvidia-device-plugin": "kube-system"} if gpu else {}), outside


def test_install_creates_namespaces_at_the_stacks_level(cluster: Cluster):
    ns = f"fresh-{uuid.uuid4().hex[:6]}"
    try:
        proc = install_local(cluster, ns, "mf")
        assert proc.returncode == 0, proc.stderr
        labels = cluster.core().read_namespace(ns).metadata.labels
        assert labels[PSA] == POD_SECURITY_LEVEL
        assert labels["pod-security.kubernetes.io/warn"] == POD_SECURITY_LEVEL
        # The real pods passed that admission, and carry no service links
        # (the API server defaults enableServiceLinks to true when unset).
        pods = cluster.core().list_namespaced_pod(
            ns, label_selector="app.kubernetes.io/instance=mf").items
        assert {p.metadata.labels["app.kubernetes.io/component"] for p in pods} >= {
            "metadata", "ui-backend", "ui-static", "postgres", "azurite", "entra-emulator"}
        for pod in pods:
            assert pod.spec.enable_service_links is False, pod.metadata.name
        status = mfhelm(cluster, "status", "-n", ns, "--release", "mf")
        assert "local profile: Blob is Azurite over HTTPS" in status.stdout
        # Flow pods run apart from the services' Secrets, by default.
        flows = f"{ns}-flows"
        assert cluster.core().read_namespace(flows).metadata.labels[PSA] == POD_SECURITY_LEVEL
        cluster.core().read_namespaced_service_account("metaflow-flows", flows)
        assert cluster.service_account_can(flows, "metaflow-flows", "create",
                                           "workflowtaskresults", group="argoproj.io",
                                           namespace=flows)
        for where in (ns, flows):
            assert not cluster.service_account_can(flows, "metaflow-flows", "get", "secrets",
                                                   namespace=where)
    finally:
        cluster.core().delete_namespace(ns)
        cluster.core().delete_namespace(f"{ns}-flows")


def test_a_restricted_namespace_is_refused_before_anything_is_written(cluster: Cluster,
                                                                      psa_namespaces):
    ns = psa_namespaces["restricted"]
    line = one_error_line(install_local(cluster, ns, "mf"))
    assert f"namespace {ns} enforces Pod Security 'restricted'" in line
    assert not cluster.core().list_namespaced_secret(
        ns, label_selector="app.kubernetes.io/managed-by=mfhelm").items


def test_local_postgres_policy_selects_airflow_pods_by_their_real_labels(cluster: Cluster,
                                                                         namespace: str):
    """The peers of the rendered policy, evaluated by the API server's label
    selectors against pods labelled as the Airflow chart labels them."""
    policy = get(render([SCENARIOS["local-airflow"]], release="mf", namespace=namespace),
                 "NetworkPolicy", "mf-postgres")
    # Labels from the Airflow chart's templates (scheduler, webserver and the
    # migration Job: tier/component/release), ours, and a stranger's.
    pods = {
        "af-scheduler": {"tier": "airflow", "component": "scheduler", "release": "mf"},
        "af-webserver": {"tier": "airflow", "component": "webserver", "release": "mf"},
        "af-migrations": {"tier": "airflow", "component": "run-airflow-migrations",
                          "release": "mf"},
        "ours": {"app.kubernetes.io/instance": "mf", "app.kubernetes.io/component": "metadata"},
        "other-release": {"tier": "airflow", "component": "scheduler", "release": "other"},
        "stranger": {"app": "stranger"},
    }
    core = cluster.core()
    for name, labels in pods.items():
        core.create_namespaced_pod(namespace, {
            "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    admitted: set[str] = set()
    for rule in policy["spec"]["ingress"]:
        for peer in rule["from"]:
            assert set(peer) == {"podSelector"}  # same namespace only
            selector = ",".join(f"{k}={v}" for k, v in peer["podSelector"]["matchLabels"].items())
            admitted |= {p.metadata.name for p in
                         core.list_namespaced_pod(namespace, label_selector=selector).items}
    assert admitted == {"af-scheduler", "af-webserver", "af-migrations", "ours"}


def test_argo_accounts_can_run_workflows_in_a_separate_flow_namespace(cluster: Cluster):
    """The Roles the chart renders for Argo's namespaced controller and server
    in the flow namespace, applied and judged by SubjectAccessReviews."""
    home = cluster.create_namespace(f"svc-{uuid.uuid4().hex[:6]}")
    flows = cluster.create_namespace(f"flw-{uuid.uuid4().hex[:6]}")
    flag = f"--managed-namespace={flows}"
    objs = render([SCENARIOS["azure"]], {
        "flows": {"namespace": flows},
        "argo-workflows": {"controller": {"extraArgs": [flag]}, "server": {"extraArgs": [flag]}},
        "argo-events": {"controller": {"rbac": {"managedNamespace": flows}}},
    }, release="mf", namespace=home)
    rbac = cluster.rbac()
    every = [o for o in objs if o["kind"] in ("Role", "RoleBinding")
             and o["metadata"]["labels"].get("app.kubernetes.io/component") == "argo"]
    argo = [o for o in every if o["metadata"]["namespace"] == flows]
    assert len(argo) == 4
    # The rest, at home, are the two ConfigMap-only Roles (test_e2e_subchart_rbac.py).
    assert {o["metadata"]["name"] for o in every if o not in argo} == {
        "mf-argo-workflow-controller-home", "mf-argo-server-home"}
    for o in argo:
        create = (rbac.create_namespaced_role if o["kind"] == "Role"
                  else rbac.create_namespaced_role_binding)
        create(flows, o)
    cluster.wait_authorized(argo)
    controller, server = "mf-argo-workflows-workflow-controller", "mf-argo-workflows-server"
    can = cluster.service_account_can
    for verb, resource, group in (("create", "pods", ""), ("watch", "pods", ""),
                                  ("watch", "workflows", "argoproj.io"),
                                  ("update", "workflows", "argoproj.io"),
                                  ("list", "workflowtemplates", "argoproj.io"),
                                  ("deletecollection", "workflowtaskresults", "argoproj.io"),
                                  ("create", "events", "")):
        assert can(home, controller, verb, resource, group=group, namespace=flows), (verb, resource)
        assert not can(home, controller, verb, resource, group=group, namespace="default")
    assert can(home, server, "create", "workflows", group="argoproj.io", namespace=flows)
    assert can(home, server, "get", "pods", subresource="log", namespace=flows)
    for account in (controller, server):
        assert not can(home, account, "get", "secrets", namespace=flows)


def test_install_removes_only_a_finished_migration_job(cluster: Cluster, namespace: str):
    """The Airflow chart's migration Job is a plain release object; a finished
    one is deleted before an upgrade so Helm creates it anew (a Job's pod
    template is immutable), a running one is left alone."""
    from mfhelm import kube
    from mfhelm.stack import airflow_migration_job

    batch = cluster.batch()
    name = airflow_migration_job("mf")
    assert name == "mf-run-airflow-migrations"

    def job(job_name: str, selector: dict[str, str]) -> dict:
        return {"metadata": {"name": job_name}, "spec": {"backoffLimit": 0, "template": {
            "spec": {"restartPolicy": "Never", "nodeSelector": selector,
                     "containers": [{"name": "m", "image": "apache/airflow:2.10.5"}]}}}}

    batch.create_namespaced_job(namespace, job(name, {}))
    cluster.wait_for(lambda: any(c.type == "Complete" and c.status == "True" for c in
                                 (batch.read_namespaced_job(name, namespace).status.conditions
                                  or [])), 90, "the KWOK-run Job to complete")
    running = "still-migrating"
    batch.create_namespaced_job(namespace, job(running, {"mfhelm.io/pool": "nowhere"}))
    api = kube.api_client(str(cluster.kubeconfig))
    assert kube.delete_finished_job(api, namespace, name) is True
    assert kube.delete_finished_job(api, namespace, running) is False
    assert kube.delete_finished_job(api, namespace, "never-existed") is False
    cluster.wait_for(lambda: name not in {j.metadata.name for j in
                                          batch.list_namespaced_job(namespace).items},
                     60, "the finished Job to go")
    assert batch.read_namespaced_job(running, namespace)


def test_every_policy_selects_the_pod_it_guards(cluster: Cluster, namespace: str):
    """Each rendered NetworkPolicy's podSelector, run as a label selector by
    the API server against pods labelled as they really are: ours from our
    templates, Argo's and Airflow's as argo-helm 1.0.18 and the Airflow chart
    1.16.0 label them."""
    watch = ["--managed-namespace=metaflow-flows"]  # the scenario's flow namespace
    objs = render([SCENARIOS["local-airflow"]],
                  {"argo-workflows": {"enabled": True, "controller": {"extraArgs": watch},
                                      "server": {"extraArgs": watch}}},
                  release="mf", namespace=namespace)
    pods = {o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
            for o, _ in pod_specs(objs)}
    upstream = {
        "mf-argo-workflows-server": {"app.kubernetes.io/name": "argo-workflows-server",
                                     "app.kubernetes.io/instance": "mf", "app": "server"},
        "mf-argo-workflows-workflow-controller": {
            "app.kubernetes.io/name": "argo-workflows-workflow-controller",
            "app.kubernetes.io/instance": "mf", "app": "workflow-controller"},
        "mf-webserver": {"tier": "airflow", "component": "webserver", "release": "mf"},
        "mf-scheduler": {"tier": "airflow", "component": "scheduler", "release": "mf"},
    }
    pods.update(upstream)
    core = cluster.core()
    for name, labels in pods.items():
        core.create_namespaced_pod(namespace, {
            "metadata": {"name": f"p-{name}", "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    expected = {"mf-argo-server": "mf-argo-workflows-server",
                "mf-argo-controller": "mf-argo-workflows-workflow-controller",
                "mf-airflow-webserver": "mf-webserver", "mf-airflow-scheduler": "mf-scheduler"}
    for policy in (o for o in objs if o["kind"] == "NetworkPolicy"):
        name = policy["metadata"]["name"]
        match = policy["spec"]["podSelector"]["matchLabels"]
        selector = ",".join(f"{k}={v}" for k, v in match.items())
        hits = {p.metadata.name for p in core.list_namespaced_pod(
            namespace, label_selector=selector).items}
        assert hits == {f"p-{expected.get(name, name)}"}, (name, hits)


def test_data_scientists_may_create_and_trigger_flows_and_nothing_more(cluster: Cluster):
    """The chart's data-scientist Role, granted to a group, judged for a real
    user of that group (client certificate) by the API server's authorizer."""
    home = cluster.create_namespace(f"ds-{uuid.uuid4().hex[:6]}")
    flows = cluster.create_namespace(f"dsf-{uuid.uuid4().hex[:6]}")
    flag = f"--managed-namespace={flows}"
    objs = render([SCENARIOS["azure"]], {
        "flows": {"namespace": flows}, "dataScientists": {"groups": ["ml-team"]},
        "argo-workflows": {"controller": {"extraArgs": [flag]}, "server": {"extraArgs": [flag]}},
        "argo-events": {"controller": {"rbac": {"managedNamespace": flows}}},
    }, release="mf", namespace=home)
    rbac = cluster.rbac()
    role = get(objs, "Role", "mf-data-scientists")
    binding = get(objs, "RoleBinding", "mf-data-scientists")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == flows
    rbac.create_namespaced_role(flows, role)
    rbac.create_namespaced_role_binding(flows, binding)
    cluster.wait_authorized([role, binding])

    def can(verb: str, resource: str, namespace: str = flows, group: str = "argoproj.io",
            **kw) -> bool:
        return cluster.can_i("alice", verb, resource, namespace=namespace, group=group,
                             groups=["ml-team", "system:authenticated"], **kw)

    for verb, resource in (("create", "workflowtemplates"), ("update", "workflowtemplates"),
                           ("get", "workflowtemplates"), ("create", "workflows"),
                           ("patch", "workflows"), ("create", "cronworkflows"),
                           ("delete", "sensors")):
        assert can(verb, resource), (verb, resource)
    assert not can("create", "workflowtemplates", namespace=home)
    assert not can("create", "pods", group="")
    assert not can("get", "secrets", group="")
    assert not can("create", "workflowtaskresults")
    # Outside the group, nothing.
    assert not cluster.can_i("bob", "create", "workflows", namespace=flows, group="argoproj.io",
                             groups=["system:authenticated"])


def test_a_user_kubeconfig_is_who_it_says(cluster: Cluster):
    from kubernetes import config

    api = config.new_client_from_config(
        config_file=str(cluster.user_kubeconfig("alice", ("ml-team",))))
    review = client.AuthenticationV1Api(api).create_self_subject_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    assert review.status.user_info.username == "alice"
    assert "ml-team" in review.status.user_info.groups
    with pytest.raises(client.ApiException) as denied:
        client.CoreV1Api(api).list_namespaced_secret("default")
    assert denied.value.status == 403
