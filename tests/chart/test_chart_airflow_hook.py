"""The rendered airflow_local_settings.py, executed against the real
kubernetes client models the Airflow scheduler hands it."""

import pytest
from chartlib import CI_VALUES, get, render
from kubernetes.client import models as k8s

AZURE_AIRFLOW = next(p for p in CI_VALUES if p.name == "azure-airflow-values.yaml")


@pytest.fixture(scope="module")
def hook():
    objs = render([AZURE_AIRFLOW], {"flows": {"namespace": "jobs"}, "argo-workflows": {"enabled": False},
                                  "argo-events": {"enabled": False}},
                  release="mf")
    source = get(objs, "ConfigMap", "metaflow-airflow-local-settings")["data"]["airflow_local_settings.py"]
    namespace: dict = {}
    exec(compile(source, "airflow_local_settings.py", "exec"), namespace)  # noqa: S102
    return namespace["pod_mutation_hook"]


def metaflow_task_pod(**spec) -> k8s.V1Pod:
    # The labels Metaflow's Airflow compiler puts on every task pod.
    labels = {"app": "metaflow", "app.kubernetes.io/name": "metaflow-task",
              "app.kubernetes.io/part-of": "metaflow", "app.kubernetes.io/created-by": "alice"}
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="start-1", namespace="jobs", labels=labels),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="start", image="python:3.11")], **spec),
    )


def test_metaflow_task_pod_gets_identity_account_and_taskworkers(hook):
    pod = metaflow_task_pod(node_selector={"disk": "ssd"})
    hook(pod)
    assert pod.metadata.labels["azure.workload.identity/use"] == "true"
    assert pod.spec.service_account_name == "metaflow-flows"
    assert pod.spec.node_selector == {"mfhelm.io/pool": "taskworkers", "disk": "ssd"}
    assert [(t.key, t.value, t.effect) for t in pod.spec.tolerations] == [
        ("mfhelm.io/pool", "taskworkers", "NoSchedule")]


def test_explicit_service_account_is_kept_and_hook_is_idempotent(hook):
    pod = metaflow_task_pod(service_account_name="custom")
    hook(pod)
    hook(pod)
    assert pod.spec.service_account_name == "custom"
    assert len(pod.spec.tolerations) == 1


def test_other_pods_are_left_alone(hook):
    pod = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="x", labels={"app": "other"}),
                    spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="c")]))
    hook(pod)
    assert pod.metadata.labels == {"app": "other"}
    assert pod.spec.service_account_name is None
    assert pod.spec.tolerations is None
