"""Where the behaviour is Kubernetes' own, the real API server decides: Pod
Security admission for every pod of every scenario, the namespaces mfhelm
creates, service links in the pods the API server stores, and NetworkPolicy
selectors matched against the labels real pods carry.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from chartlib import CI_VALUES, get, pod_specs, render
from kubernetes import client

from mfhelm.stack import POD_SECURITY_LEVEL

from .handle import Cluster
from .test_e2e_stack import install_local, mfhelm, one_error_line

pytestmark = pytest.mark.cluster

SCENARIOS = {p.name.removesuffix("-values.yaml"): p for p in CI_VALUES}
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
    for obj, _spec in pod_specs(render([scenario], release="mf", namespace=namespace)):
        template = obj["spec"]["template"]
        body = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"dry-{obj['metadata']['name']}",
                             "labels": template["metadata"].get("labels", {})},
                "spec": template["spec"]}
        try:
            core.create_namespaced_pod(namespace, body, dry_run="All")
            out[obj["metadata"]["name"]] = ""
        except client.ApiException as exc:
            assert exc.status == 403, exc.body
            out[obj["metadata"]["name"]] = exc.body
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
            "metadata", "ui-backend", "ui-static", "postgres", "azurite"}
        for pod in pods:
            assert pod.spec.enable_service_links is False, pod.metadata.name
        status = mfhelm(cluster, "status", "-n", ns, "--release", "mf")
        assert "local profile: the UI lists flows and runs but cannot show artifacts" in status.stdout
    finally:
        cluster.core().delete_namespace(ns)


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
