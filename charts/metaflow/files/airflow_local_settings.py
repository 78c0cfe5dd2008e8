# Rendered by the mfhelm chart into the Airflow pods' config folder.
#
# Metaflow's generated DAGs launch task pods with fixed labels and no
# tolerations, so the workload-identity label, the flows service account and
# the taskworkers scheduling are added here, for Metaflow task pods only.
import json

_FLOW_NAMESPACE = {{ include "metaflow.flowNamespace" . | quote }}
_SERVICE_ACCOUNT = {{ .Values.serviceAccounts.flows.name | quote }}
_NODE_SELECTOR = json.loads({{ toJson (.Values.flows.nodeSelector | default dict) | quote }})
_TOLERATIONS = json.loads({{ toJson .Values.flows.tolerations | quote }})


def _is_metaflow_task(pod):
    labels = pod.metadata.labels or {}
    return (
        labels.get("app.kubernetes.io/part-of") == "metaflow"
        and labels.get("app.kubernetes.io/name") == "metaflow-task"
    )


def pod_mutation_hook(pod):
    if not _is_metaflow_task(pod):
        return
    from kubernetes.client import models as k8s

    pod.metadata.labels = dict(pod.metadata.labels or {})
    pod.metadata.labels["azure.workload.identity/use"] = "true"
    if not pod.metadata.namespace or pod.metadata.namespace == "default":
        pod.metadata.namespace = _FLOW_NAMESPACE
    if not pod.spec.service_account_name or pod.spec.service_account_name == "default":
        pod.spec.service_account_name = _SERVICE_ACCOUNT
    selector = dict(_NODE_SELECTOR)
    selector.update(pod.spec.node_selector or {})
    pod.spec.node_selector = selector
    existing = list(pod.spec.tolerations or [])
    known = {(t.key, t.value, t.effect) for t in existing}
    for tol in _TOLERATIONS:
        if (tol.get("key"), tol.get("value"), tol.get("effect")) not in known:
            existing.append(k8s.V1Toleration(**tol))
    pod.spec.tolerations = existing
