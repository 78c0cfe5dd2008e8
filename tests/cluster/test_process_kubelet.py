"""The process kubelet (process_kubelet.py) with plain pods, then with the
real Argo controller and its real executor.

Plain pods: real exit codes into the pod status, init containers in order
(and a failing one stops the pod), an emptyDir shared by the containers,
the environment (value, $(VAR), fieldRef, secretKeyRef, configMapKeyRef),
the ServiceAccount token where Kubernetes projects it (the API server says
whose it is), activeDeadlineSeconds, deletion killing the processes, and
a finished pod's volumes torn down (its log kept). None of it leaves a
directory in the host's /.

Argo: a Workflow whose first step writes an output parameter that the
second step fans out over (withParam). Only Argo's executor reports an
output parameter (the `wait` container, through a WorkflowTaskResult), so
the run reaches its end only if init, wait and emissary really ran,
`argoexec` built from the same module version as the controller.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from . import argo
from .handle import Cluster
from .metaflow_env import VENV_BIN
from .process_kubelet import DEADLINE_REASON, ProcessKubelet

pytestmark = pytest.mark.cluster

NODE = "process-0"
LABEL = ("mfhelm.io/test-kubelet", "process")
ARGO = {"group": "argoproj.io", "version": "v1alpha1"}


@pytest.fixture(scope="module")
def kubelet(cluster: Cluster) -> Iterator[ProcessKubelet]:
    if cluster.backend != "controlplane":
        pytest.skip("a node of its own needs the local control plane (kind runs real kubelets)")
    if not cluster.exec_mounts:
        pytest.skip("the process kubelet needs mount namespaces (unshare --mount, as root)")
    key, value = LABEL
    kubelet = ProcessKubelet(
        cluster, NODE, cluster.workdir / "process-kubelet" / NODE,
        labels={key: value}, taints=[{"key": key, "value": value, "effect": "NoSchedule"}],
        default_path=[VENV_BIN])
    with kubelet:
        yield kubelet


def _pod(name: str, containers: list[dict[str, Any]], *, init: list[dict[str, Any]] | None = None,
         volumes: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    """A pod the scheduler places on the process node (its selector and toleration)."""
    key, value = LABEL
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"test": name}},
            "spec": {"restartPolicy": "Never", "nodeSelector": {key: value},
                     "tolerations": [{"key": key, "operator": "Equal", "value": value,
                                      "effect": "NoSchedule"}],
                     "initContainers": init or [], "containers": containers,
                     "volumes": volumes or [], **spec}}


def _sh(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "busybox", "command": ["sh", "-c", script], **extra}


def _finished(cluster: Cluster, kubelet: ProcessKubelet, ns: str, name: str,
              timeout: float = 60) -> client.V1Pod:
    def done() -> client.V1Pod | None:
        kubelet.check()
        pod = cluster.core().read_namespaced_pod(name, ns)
        return pod if pod.status.phase in ("Succeeded", "Failed") else None

    return cluster.wait_for(done, timeout, f"pod {name} to finish")


def _codes(statuses: list[client.V1ContainerStatus] | None) -> dict[str, int]:
    return {s.name: s.state.terminated.exit_code for s in statuses or []}


def test_exit_codes_go_into_the_pod_status(cluster: Cluster, kubelet: ProcessKubelet,
                                           namespace: str):
    core = cluster.core()
    core.create_namespaced_pod(namespace, _pod("ok", [_sh("a", "exit 0"), _sh("b", "true")]))
    core.create_namespaced_pod(namespace, _pod("bad", [_sh("a", "exit 0"),
                                                      _sh("b", "echo failing >&2; exit 3")]))
    ok = _finished(cluster, kubelet, namespace, "ok")
    bad = _finished(cluster, kubelet, namespace, "bad")
    assert ok.spec.node_name == NODE
    assert (ok.status.phase, _codes(ok.status.container_statuses)) == (
        "Succeeded", {"a": 0, "b": 0})
    assert (bad.status.phase, _codes(bad.status.container_statuses)) == (
        "Failed", {"a": 0, "b": 3})
    reasons = {s.name: s.state.terminated.reason for s in bad.status.container_statuses}
    assert reasons == {"a": "Completed", "b": "Error"}
    assert kubelet.logs(namespace, "bad", "b") == "failing\n"


def test_init_containers_run_in_order_before_the_containers(cluster: Cluster,
                                                            kubelet: ProcessKubelet,
                                                            namespace: str):
    core = cluster.core()
    volume = [{"name": "work", "emptyDir": {}}]
    mount = [{"name": "work", "mountPath": "/work-area"}]
    core.create_namespaced_pod(namespace, _pod(
        "ordered", [_sh("main", "cat /work-area/order", volumeMounts=mount)],
        init=[_sh("first", "echo first >> /work-area/order", volumeMounts=mount),
              _sh("second", "echo second >> /work-area/order", volumeMounts=mount)],
        volumes=volume))
    core.create_namespaced_pod(namespace, _pod(
        "init-fails", [_sh("main", "echo ran > /work-area/main", volumeMounts=mount)],
        init=[_sh("first", "exit 7", volumeMounts=mount), _sh("second", "true")],
        volumes=volume))
    ordered = _finished(cluster, kubelet, namespace, "ordered")
    assert ordered.status.phase == "Succeeded"
    assert _codes(ordered.status.init_container_statuses) == {"first": 0, "second": 0}
    assert kubelet.logs(namespace, "ordered", "main") == "first\nsecond\n"
    failed = _finished(cluster, kubelet, namespace, "init-fails")
    assert failed.status.phase == "Failed"
    assert _codes(failed.status.init_container_statuses)["first"] == 7
    # Neither the second init container nor the main one started.
    assert not kubelet.log_path(namespace, "init-fails", "second").exists()
    assert not kubelet.log_path(namespace, "init-fails", "main").exists()
    assert not [s for s in failed.status.container_statuses if s.state.running]


def test_containers_share_an_empty_dir_and_get_their_environment(cluster: Cluster,
                                                                 kubelet: ProcessKubelet,
                                                                 namespace: str):
    core = cluster.core()
    before = sorted(os.listdir("/"))
    core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="creds"), string_data={"password": "s3cret"}))
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="settings"), data={"colour": "blue"}))
    # Mount paths the host does not have, under / and under an existing
    # directory reached through a symlink (/var/run -> /run), as Argo's are.
    mounts = [{"name": "shared", "mountPath": "/mfhelm-kubelet-probe/out"},
              {"name": "shared", "mountPath": "/var/run/mfhelm-kubelet-probe"}]
    env = [{"name": "PLAIN", "value": "one"},
           {"name": "DERIVED", "value": "$(PLAIN)-two $$(PLAIN)"},
           {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
           {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
           {"name": "LABEL", "valueFrom": {"fieldRef": {
               "fieldPath": "metadata.labels['test']"}}},
           {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds",
                                                               "key": "password"}}},
           {"name": "COLOUR", "valueFrom": {"configMapKeyRef": {"name": "settings",
                                                                "key": "colour"}}}]
    writer = _sh("writer", "echo \"$PLAIN|$DERIVED|$POD|$NS|$NODE|$LABEL|$PASSWORD|$COLOUR\" "
                 "> /mfhelm-kubelet-probe/out/env.txt", env=env, volumeMounts=mounts)
    # The reader waits (bounded) for the writer's file in its own view of the volume.
    reader = _sh("reader", "for i in $(seq 300); do "
                 "[ -s /var/run/mfhelm-kubelet-probe/env.txt ] && break; sleep 0.1; done; "
                 "cat /var/run/mfhelm-kubelet-probe/env.txt", volumeMounts=mounts)
    core.create_namespaced_pod(namespace, _pod("env", [writer, reader],
                                               volumes=[{"name": "shared", "emptyDir": {}}]))
    pod = _finished(cluster, kubelet, namespace, "env")
    assert pod.status.phase == "Succeeded", kubelet.logs(namespace, "env", "reader")
    assert kubelet.logs(namespace, "env", "reader").strip() == (
        f"one|one-two $(PLAIN)|env|{namespace}|{NODE}|env|s3cret|blue")
    assert sorted(os.listdir("/")) == before
    assert not Path("/run/mfhelm-kubelet-probe").exists()


def test_a_volume_stays_visible_when_a_later_mount_point_needs_its_parent(
        cluster: Cluster, kubelet: ProcessKubelet, namespace: str):
    """The first volume is mounted on a directory the host has (/var/lib/dpkg),
    the second where the host has nothing (/var/lib/mfhelm-kubelet-probe):
    making the second's mount point replaces the view of /var/lib, which must
    not hide the first (as the AKS workload-identity token directory once hid
    Kubernetes' own service-account token)."""
    core = cluster.core()
    mounts = [{"name": "first", "mountPath": "/var/lib/dpkg"},
              {"name": "second", "mountPath": "/var/lib/mfhelm-kubelet-probe/x"}]
    script = ("echo one > /var/lib/dpkg/probe && echo two > /var/lib/mfhelm-kubelet-probe/x/probe"
              " && cat /var/lib/dpkg/probe /var/lib/mfhelm-kubelet-probe/x/probe")
    core.create_namespaced_pod(namespace, _pod(
        "order", [_sh("main", script, volumeMounts=mounts)],
        volumes=[{"name": "first", "emptyDir": {}}, {"name": "second", "emptyDir": {}}]))
    pod = _finished(cluster, kubelet, namespace, "order")
    assert pod.status.phase == "Succeeded", kubelet.logs(namespace, "order", "main")
    assert kubelet.logs(namespace, "order", "main").split() == ["one", "two"]
    assert not Path("/var/lib/dpkg/probe").exists()
    assert not Path("/var/lib/mfhelm-kubelet-probe").exists()


def test_a_finished_pods_volumes_are_torn_down_and_its_logs_stay(
        cluster: Cluster, kubelet: ProcessKubelet, namespace: str):
    """While the pod runs, what it writes to its emptyDir is in the volume's
    directory on the node (the test releases it by writing there too); once
    it has finished, its volumes (the emptyDir and the projected
    kube-api-access token) are gone, as a kubelet tears down the volumes of a
    terminated pod. Its log stays."""
    core = cluster.core()
    script = ("head -c 1048576 /dev/zero > /scratch/data && echo written; "
              "for i in $(seq 600); do [ -e /scratch/release ] && exit 0; sleep 0.1; done; "
              "exit 1")
    core.create_namespaced_pod(namespace, _pod(
        "teardown", [_sh("main", script, volumeMounts=[{"name": "scratch",
                                                          "mountPath": "/scratch"}])],
        volumes=[{"name": "scratch", "emptyDir": {}}]))
    volumes = kubelet.workdir / namespace / "teardown" / "volumes"

    def written() -> bool:
        kubelet.check()
        return "written" in kubelet.logs(namespace, "teardown", "main")

    cluster.wait_for(written, 60, "the pod to write into its emptyDir")
    assert (volumes / "scratch" / "data").stat().st_size == 1048576
    names = sorted(v.name for v in core.read_namespaced_pod("teardown", namespace).spec.volumes)
    assert sorted(p.name for p in volumes.iterdir()) == names
    assert names[0].startswith("kube-api-access-")  # added by the ServiceAccount plugin
    (volumes / "scratch" / "release").touch()
    pod = _finished(cluster, kubelet, namespace, "teardown")
    assert pod.status.phase == "Succeeded", kubelet.logs(namespace, "teardown", "main")
    cluster.wait_for(lambda: not volumes.exists(), 10, "the pod's volumes to be torn down")
    assert kubelet.logs(namespace, "teardown", "main") == "written\n"


def test_the_service_account_token_is_where_kubernetes_projects_it(cluster: Cluster,
                                                                   kubelet: ProcessKubelet,
                                                                   namespace: str):
    # The ServiceAccount admission plugin adds the kube-api-access volume;
    # the process asks the API server who it is (SelfSubjectReview, allowed
    # to anyone authenticated) with that token and CA, at the address the
    # kubelet gives in KUBERNETES_SERVICE_HOST/PORT.
    script = """
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
token = open(f"{sa}/token").read()
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
req = urllib.request.Request(
    f"https://{host}:{port}/apis/authentication.k8s.io/v1/selfsubjectreviews",
    data=json.dumps({"apiVersion": "authentication.k8s.io/v1",
                     "kind": "SelfSubjectReview"}).encode(),
    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
ctx = ssl.create_default_context(cafile=f"{sa}/ca.crt")
info = json.load(urllib.request.urlopen(req, context=ctx))["status"]["userInfo"]
print(info["username"], open(f"{sa}/namespace").read(), info["extra"]["authentication.kubernetes.io/pod-name"][0])
"""
    cluster.core().create_namespaced_pod(namespace, _pod(
        "whoami", [{"name": "main", "image": "python:3.11", "command": ["python", "-c", script]}]))
    pod = _finished(cluster, kubelet, namespace, "whoami")
    out = kubelet.logs(namespace, "whoami", "main")
    assert pod.status.phase == "Succeeded", out
    assert out.split() == [f"system:serviceaccount:{namespace}:default", namespace, "whoami"]


def test_active_deadline_fails_the_pod_and_stops_it_with_its_grace(
        cluster: Cluster, kubelet: ProcessKubelet, namespace: str):
    # As a kubelet stops a pod that turned Failed: SIGTERM, and the pod's
    # grace period to act on it (Argo's wait container reports the step
    # then), SIGKILL for what is left after it.
    token = f"{3000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 1000:03d}"
    stubborn = f"{3000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 1000:03d}"
    cluster.core().create_namespaced_pod(namespace, _pod(
        "overrun", [_sh("main", f"trap 'echo stopping; exit 7' TERM; sleep {token} & wait"),
                    _sh("deaf", f"trap '' TERM; exec sleep {stubborn}")],
        activeDeadlineSeconds=3, terminationGracePeriodSeconds=2))
    started = time.monotonic()
    pod = _finished(cluster, kubelet, namespace, "overrun", timeout=60)
    assert time.monotonic() - started >= 2
    assert (pod.status.phase, pod.status.reason) == ("Failed", DEADLINE_REASON)
    assert _codes(pod.status.container_statuses) == {"main": 7, "deaf": 137}
    assert kubelet.logs(namespace, "overrun", "main").strip() == "stopping"
    assert not _running(f"sleep {token}") and not _running(f"sleep {stubborn}")


def _running(cmdline: str) -> list[int]:
    """Host processes whose command line is `cmdline`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if raw.replace(b"\0", b" ").strip() == cmdline.encode():
                found.append(int(entry))
    return found


def test_deleting_a_pod_kills_its_processes(cluster: Cluster, kubelet: ProcessKubelet,
                                            namespace: str):
    core = cluster.core()
    token = f"{4000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 1000:03d}"
    core.create_namespaced_pod(namespace, _pod("doomed", [_sh("main", f"exec sleep {token}")],
                                               terminationGracePeriodSeconds=2))
    cluster.wait_for(lambda: _running(f"sleep {token}"), 60, "the pod's process to run")
    running = core.read_namespaced_pod("doomed", namespace)
    assert running.status.phase == "Running"
    assert running.status.container_statuses[0].state.running is not None
    core.delete_namespaced_pod("doomed", namespace)

    def gone() -> bool:
        kubelet.check()
        return not [p for p in core.list_namespaced_pod(namespace).items
                    if p.metadata.name == "doomed"]

    cluster.wait_for(gone, 30, "the deleted pod to be removed by its kubelet")
    assert not _running(f"sleep {token}")


# --- Argo's executor --------------------------------------------------------------

RELEASE_NS = "metaflow"
FLOW_NS = "process-kubelet-flows"
GROUP = "ml-team"


def test_argo_runs_a_fan_out_over_an_output_parameter(cluster: Cluster, argo_build, request):
    if cluster.backend != "controlplane":
        pytest.skip("a node of its own needs the local control plane")
    if not cluster.exec_mounts:
        pytest.skip("the process kubelet needs mount namespaces (unshare --mount, as root)")
    flow_ns = FLOW_NS
    for ns in (RELEASE_NS, flow_ns):
        cluster.create_namespace(ns)
    applied = argo.apply_chart_objects(cluster, RELEASE_NS, flow_ns, GROUP)
    request.addfinalizer(lambda: [argo.delete(cluster, obj) for obj in applied])
    # A label of its own: the plain pods' node (module fixture) may still be up.
    key, value = LABEL[0], "argo"
    kubelet = argo.process_kubelet(cluster, argo_build, f"argo-{NODE}",
                                   labels={key: value},
                                   taints=[{"key": key, "value": value, "effect": "NoSchedule"}])
    custom = client.CustomObjectsApi(cluster.api_client())
    name = f"fan-out-{uuid.uuid4().hex[:6]}"
    place = {"nodeSelector": {key: value},
             "tolerations": [{"key": key, "operator": "Equal", "value": value,
                              "effect": "NoSchedule"}]}
    workflow = {
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": name, "namespace": flow_ns},
        "spec": {
            "entrypoint": "main", "serviceAccountName": "metaflow-flows", **place,
            "templates": [
                {"name": "main", "dag": {"tasks": [
                    {"name": "split", "template": "split"},
                    {"name": "each", "template": "each", "dependencies": ["split"],
                     "withParam": "{{tasks.split.outputs.parameters.items}}",
                     "arguments": {"parameters": [{"name": "item", "value": "{{item}}"}]}}]}},
                {"name": "split",
                 "container": {"image": "python:3.11", "command": ["bash", "-c"],
                               "args": ["mkdir -p /mnt/out && echo '[\"a\",\"b\",\"c\"]' "
                                        "> /mnt/out/items"],
                               "volumeMounts": [{"name": "out", "mountPath": "/mnt/out"}]},
                 "volumes": [{"name": "out", "emptyDir": {}}],
                 "outputs": {"parameters": [{"name": "items",
                                             "valueFrom": {"path": "/mnt/out/items"}}]}},
                {"name": "each", "inputs": {"parameters": [{"name": "item"}]},
                 "container": {"image": "python:3.11", "command": ["bash", "-c"],
                               "args": ["echo item {{inputs.parameters.item}} "
                                        "> /tmp/said && cat /tmp/said"]},
                 "outputs": {"parameters": [{"name": "said",
                                             "valueFrom": {"path": "/tmp/said"}}]}},
            ]}}
    with kubelet, argo.run_controller(cluster, argo_build, RELEASE_NS, flow_ns) as controller:
        custom.create_namespaced_custom_object(**ARGO, namespace=flow_ns, plural="workflows",
                                               body=workflow)

        def finished() -> dict[str, Any] | None:
            controller.check()
            kubelet.check()
            wf = custom.get_namespaced_custom_object(**ARGO, namespace=flow_ns,
                                                     plural="workflows", name=name)
            phase = (wf.get("status") or {}).get("phase")
            return wf if phase in ("Succeeded", "Failed", "Error") else None

        try:
            wf = cluster.wait_for(finished, 180, f"workflow {name} to finish")
        finally:
            custom.delete_namespaced_custom_object(**ARGO, namespace=flow_ns,
                                                   plural="workflows", name=name)
        log = controller.log_text()
    nodes = {n["displayName"]: n for n in wf["status"]["nodes"].values()}
    assert wf["status"]["phase"] == "Succeeded", (wf["status"].get("message"), kubelet.events)
    said = sorted(p["value"] for n in nodes.values() if n["templateName"] == "each"
                  and n["type"] == "Pod" for p in n["outputs"]["parameters"])
    assert said == ["item a", "item b", "item c"]
    assert nodes["split"]["outputs"]["parameters"][0]["value"] == '["a","b","c"]'
    assert "forbidden" not in log.lower()
