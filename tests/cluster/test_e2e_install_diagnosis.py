"""An install whose pods cannot become ready: when helm's --timeout runs out,
mfhelm's one error line names what helm waited for and why it is not ready:
the workload, its pod's state (the scheduler's reason, or the node it is
stuck on) and that node's condition; helm's bare "context deadline
exceeded" was all it said before.

The NotReady node is a Node object of the test's own with no kubelet and no
KWOK behind it: the scheduler binds the services' pods to it while it says
Ready, then the test reports it NotReady, as a node whose kubelet stopped
would be. Its taint keeps every other test's pods off it.
"""

from __future__ import annotations

import datetime
import threading
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from .handle import POOL_LABEL, Cluster
from .test_e2e_stack import mfhelm, one_error_line

pytestmark = pytest.mark.cluster

DIAG_TAINT_KEY = "mfhelm.io/diag"


def _ready_condition(status: str, reason: str, message: str) -> dict:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"type": "Ready", "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": now}


@pytest.fixture
def lone_node(cluster: Cluster):
    """A schedulable node that nothing runs pods on, removed afterwards."""
    name = f"diag-{uuid.uuid4().hex[:6]}"
    core = cluster.core()
    core.create_node(k8s.V1Node(
        metadata=k8s.V1ObjectMeta(name=name, labels={
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", POOL_LABEL: name}),
        spec=k8s.V1NodeSpec(taints=[k8s.V1Taint(key=DIAG_TAINT_KEY, value=name,
                                                effect="NoSchedule")])))
    try:
        capacity = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "128Gi"}
        core.patch_node_status(name, {"status": {
            "capacity": capacity, "allocatable": capacity,
            "conditions": [_ready_condition("True", "KubeletReady", "kubelet is posting ready "
                                            "status")]}})

        def schedulable() -> bool:
            node = core.read_node(name)
            # The controller-manager lifts its not-ready taint once it sees Ready.
            return not [t for t in node.spec.taints or []
                        if t.key.startswith("node.kubernetes.io/")]

        cluster.wait_for(schedulable, 120, f"node {name} to be schedulable")
        yield name
    finally:
        core.delete_node(name)


def _values(tmp_path: Path, selector: str, toleration: str | None = None) -> Path:
    doc: dict = {"serviceNodeSelector": {POOL_LABEL: selector}}
    if toleration:
        doc["serviceTolerations"] = [{"key": DIAG_TAINT_KEY, "operator": "Equal",
                                      "value": toleration, "effect": "NoSchedule"}]
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_timed_out_install_names_the_pod_and_its_notready_node(cluster: Cluster,
                                                                  namespace: str,
                                                                  lone_node: str,
                                                                  tmp_path: Path):
    core = cluster.core()
    stop = threading.Event()
    reported: list[str] = []

    def fail_the_node_once_pods_are_on_it() -> None:
        """Once the release's pods are bound to the node, it reports NotReady,
        and keeps reporting it (as a kubelet whose runtime is down would), so
        the node controller does not turn it into Unknown."""
        while not stop.wait(0.5 if not reported else 5):
            if not reported and not core.list_namespaced_pod(
                    namespace, field_selector=f"spec.nodeName={lone_node}").items:
                continue
            core.patch_node_status(lone_node, {"status": {"conditions": [_ready_condition(
                "False", "KubeletNotReady", "container runtime network not ready")]}})
            reported.append(lone_node)

    watcher = threading.Thread(target=fail_the_node_once_pods_are_on_it, daemon=True)
    watcher.start()
    try:
        proc = mfhelm(cluster, "install", "--local", "--no-argo", "-n", namespace,
                      "--release", "diag", "--timeout", "45s",
                      "-f", str(_values(tmp_path, lone_node, toleration=lone_node)))
    finally:
        stop.set()
        watcher.join()
    assert reported, "no pod of the release was bound to the node"
    line = one_error_line(proc)
    assert proc.returncode == 1
    assert line.startswith("mfhelm: error: install timed out after 45s waiting for "), line
    # The workload, its pod's state, and the condition of the node it is stuck on.
    assert "Deployment diag-metadata 0/1" in line, line
    assert (f"Pending on node {lone_node}, node {lone_node} is NotReady (KubeletNotReady: "
            "container runtime network not ready)") in line, line
    assert line.endswith("helm removed the release again (rollback on failure)"), line
    assert "context deadline exceeded" not in line, line


def test_a_timed_out_install_says_why_the_scheduler_cannot_place_the_pods(cluster: Cluster,
                                                                         namespace: str,
                                                                         tmp_path: Path):
    proc = mfhelm(cluster, "install", "--local", "--no-argo", "-n", namespace,
                  "--release", "nowhere", "--timeout", "20s",
                  "-f", str(_values(tmp_path, "nowhere")))
    line = one_error_line(proc)
    assert line.startswith("mfhelm: error: install timed out after 20s waiting for "), line
    assert "Deployment nowhere-metadata 0/1" in line, line
    # The scheduler's own words (its first sentence), from the pod's PodScheduled condition.
    assert "Pending (0/" in line and "didn't match Pod's node affinity/selector" in line, line
    assert "preemption" not in line and "claims" not in line, line
    assert len(line) < 1200, line
