"""GPU and Spot placement, end to end: the real Metaflow compiles a flow with
CPU steps, GPU steps (`@kubernetes(gpu=1)`, `@resources(gpu=1)`) and a Spot
step (`@kubernetes(node_selector="mfhelm.io/pool=spot")` with `@retry`) using
only the config `mfhelm config` writes for a stack with both pools; the real
Argo controller runs it; the real scheduler places each pod, with the API
server's ExtendedResourceToleration admission (as on AKS) giving the GPU
steps the toleration of the GPU pool's nvidia.com/gpu taint.

The three flow pools (taskworkers, GPU, Spot) are each one node played by
the process kubelet (argo.pools_on_process_kubelet), KWOK's node of each
pool cordoned meanwhile: every step runs for real (Argo's executor, the
Metaflow step with what AKS adds to its pod, the metadata service recording
it), so the run ends Succeeded under an Argo that waits for a step's
executor to report its outputs, and the data scientist reads it back. The
GPU node advertises the nvidia.com/gpu its KWOK node does.

While the taskworkers node is cordoned, the first (CPU) step stays Pending,
the scheduler naming the GPU node's untolerated taint: a CPU step never
lands on the GPU pool, even when it is the only node with room. Then the
node is uncordoned and the run completes.

The chart's NVIDIA device plugin DaemonSet, applied as rendered, gets one
pod, on the (KWOK) GPU node.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from chartlib import SCENARIOS, render
from kubernetes import client

from mfhelm import pools

from . import argo
from . import metaflow_env as mfenv
from .handle import Cluster

pytestmark = pytest.mark.cluster

FLOW = "placement_flow.py"
TEMPLATE = "placementflow"
ARGO = {"group": "argoproj.io", "version": "v1alpha1"}
RELEASE_NS = "metaflow"  # the config's in-cluster metadata URL names it
GROUP = "ml-team"
# step -> the pool its pod must land on
PLACED = {"start": pools.TASKWORKERS, "train": pools.GPU, "evaluate": pools.GPU,
          "score": pools.SPOT, "end": pools.TASKWORKERS}
GPU_TOLERATION = {"key": pools.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


@pytest.fixture(scope="module")
def placement_env(tmp_path_factory: pytest.TempPathFactory, azurite_https: mfenv.Azurite,
                  entra_endpoint: mfenv.FakeEntra, metadata_service: mfenv.MetadataService,
                  stack_outputs: dict[str, Any]) -> mfenv.MetaflowEnv:
    """A data scientist's Metaflow for a stack deployed with both optional pools,
    with a metadata service that records the run (its steps really run)."""
    from mfhelm.settings import parse

    settings = parse({"org_prefix": "acme", "location": "westeurope",
                      "aks": {"gpu_enabled": True, "spot_enabled": True}})
    outputs = {**stack_outputs, "gpuPoolEnabled": True, "spotPoolEnabled": True}
    return mfenv.build_metaflow_env(
        tmp_path_factory.mktemp("metaflow-placement"), azurite=azurite_https,
        entra=entra_endpoint, metadata=mfenv.FakeMetadata(url=metadata_service.url),
        outputs=outputs, settings=settings)


@pytest.fixture
def device_plugin(cluster: Cluster) -> Iterator[dict[str, Any]]:
    """The chart's device plugin DaemonSet, as `mfhelm install` renders it for a
    stack with the GPU pool (azure profile), applied; deleted afterwards."""
    (ds,) = [o for o in render([SCENARIOS["azure"]], release="placement", namespace=RELEASE_NS)
             if o["kind"] == "DaemonSet"
             and o["metadata"]["labels"]["app.kubernetes.io/component"] == "nvidia-device-plugin"]
    apps = cluster.apps()
    ns, name = ds["metadata"]["namespace"], ds["metadata"]["name"]
    apps.create_namespaced_daemon_set(ns, ds)
    try:
        yield ds
    finally:
        apps.delete_namespaced_daemon_set(name, ns, propagation_policy="Foreground")


def _skip_without_optional_pools(cluster: Cluster) -> None:
    if cluster.backend != "controlplane":
        pytest.skip("the GPU and Spot nodes are KWOK's (kind has no GPU node), and the user "
                    "certificate needs the local control plane's CA")


def test_the_device_plugin_runs_on_the_gpu_node_only(cluster: Cluster, device_plugin):
    _skip_without_optional_pools(cluster)
    ns = device_plugin["metadata"]["namespace"]
    selector = ",".join(f"{k}={v}" for k, v in
                        device_plugin["spec"]["selector"]["matchLabels"].items())
    core = cluster.core()

    def running() -> list[Any]:
        pods = core.list_namespaced_pod(ns, label_selector=selector).items
        return pods if pods and all(p.status.phase == "Running" for p in pods) else []

    pods = cluster.wait_for(running, 90, "the device plugin's pod to run")
    assert [p.spec.node_name for p in pods] == [cluster.nodes["gpu"]]
    ds = cluster.apps().read_namespaced_daemon_set_status(device_plugin["metadata"]["name"], ns)
    assert ds.status.desired_number_scheduled == 1
    assert pods[0].spec.priority_class_name == "system-node-critical"


def _workflow(custom: Any, ns: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(**ARGO, namespace=ns, plural="workflows",
                                               name=name)


def _pods_by_step(cluster: Cluster, ns: str, workflow: str) -> dict[str, list[Any]]:
    """Each step's pods, by step name: a step with @retry is Argo's retry node,
    whose attempts are `<step>(0)`, `<step>(1)`..."""
    pods = cluster.core().list_namespaced_pod(
        ns, label_selector=f"workflows.argoproj.io/workflow={workflow}").items
    steps: dict[str, list[Any]] = {}
    for p in pods:
        node = p.metadata.annotations["workflows.argoproj.io/node-name"].split(".", 1)[1]
        steps.setdefault(re.sub(r"\(\d+\)$", "", node), []).append(p)
    return steps


def _unschedulable(pod: Any) -> str | None:
    return next((c.message for c in pod.status.conditions or []
                 if c.type == "PodScheduled" and c.reason == "Unschedulable"), None)


def _tolerated(tolerations: list[Any], taint: Any) -> bool:
    """Kubernetes' Toleration.ToleratesTaint."""
    for t in tolerations:
        if t.effect and t.effect != taint.effect:
            continue
        if t.key and t.key != taint.key:
            continue
        if t.operator == "Exists" or (t.value or "") == (taint.value or ""):
            return True
    return False


def _refusals(cluster: Cluster, pod: Any) -> tuple[set[str], set[str]]:
    """The uncordoned nodes the scheduler refuses this pod for an untolerated
    taint (its TaintToleration filter runs before NodeAffinity), and the
    others, refused for its node selector."""
    tainted, elsewhere = set(), set()
    for node in cluster.core().list_node().items:
        if node.spec.unschedulable:
            continue
        labels = node.metadata.labels or {}
        if not all(_tolerated(pod.spec.tolerations or [], t) for t in node.spec.taints or []
                   if t.effect in ("NoSchedule", "NoExecute")):
            tainted.add(node.metadata.name)
        elif any(labels.get(k) != v for k, v in (pod.spec.node_selector or {}).items()):
            elsewhere.add(node.metadata.name)
        else:
            raise AssertionError(f"{node.metadata.name} could take {pod.metadata.name}")
    return tainted, elsewhere


def test_each_step_lands_on_its_pool(cluster: Cluster, argo_build, placement_env,
                                     metadata_service, request):
    _skip_without_optional_pools(cluster)
    mf = placement_env
    flow_ns = mf.flow_namespace
    # Only the config `mfhelm config` writes: the Spot toleration is there, no GPU one.
    tolerations = mf.config["METAFLOW_KUBERNETES_TOLERATIONS"]
    assert pools.SPOT_TAINT.key in tolerations and pools.GPU_RESOURCE not in tolerations
    for ns in (RELEASE_NS, flow_ns):
        cluster.create_namespace(ns)
    applied = argo.apply_chart_objects(cluster, RELEASE_NS, flow_ns, GROUP)
    # A later `helm install` into these namespaces must own them.
    request.addfinalizer(lambda: [argo.delete(cluster, obj) for obj in applied])
    alice = cluster.user_kubeconfig("alice", (GROUP,))
    custom = client.CustomObjectsApi(cluster.api_client())
    core = cluster.core()

    with argo.run_controller(cluster, argo_build, RELEASE_NS, flow_ns) as controller, \
            argo.pools_on_process_kubelet(cluster, argo_build, mf, metadata_service.url,
                                          (pools.TASKWORKERS, pools.GPU, pools.SPOT)
                                          ) as kubelets:
        # The GPU pool's node advertises the GPU as its KWOK node does; the others none.
        gpus = {p: core.read_node(k.name).status.allocatable.get(pools.GPU_RESOURCE)
                for p, k in kubelets.items()}
        assert gpus == {"taskworkers": None, "gpu": "1", "spot": None}
        created = mf.run_flow(FLOW, "argo-workflows", "create", kubeconfig=alice)
        assert created.returncode == 0, created.stderr[-3000:]
        template = custom.get_namespaced_custom_object(
            **ARGO, namespace=flow_ns, plural="workflowtemplates", name=TEMPLATE)
        steps = {t["name"]: t for t in template["spec"]["templates"] if t["name"] in PLACED}
        assert set(steps) == set(PLACED)
        for name in ("train", "evaluate"):
            limits = steps[name]["container"]["resources"]["limits"]
            assert limits[pools.GPU_RESOURCE] == "1", name
            # Nothing in the compiled template tolerates the GPU taint...
            assert GPU_TOLERATION["key"] not in str(steps[name].get("tolerations")), name
        assert steps["score"]["nodeSelector"] == {pools.POOL_LABEL: "spot"}
        assert "retryStrategy" in steps["score"]
        assert steps["start"]["nodeSelector"] == {pools.POOL_LABEL: "taskworkers"}

        taskworkers = kubelets["taskworkers"].name
        core.patch_node(taskworkers, {"spec": {"unschedulable": True}})
        try:
            run_id_file = mf.home / "work" / "run-id-placement"
            triggered = mf.run_flow(FLOW, "argo-workflows", "trigger", "--run-id-file",
                                    str(run_id_file), kubeconfig=alice)
            assert triggered.returncode == 0, triggered.stderr[-3000:]
            name = run_id_file.read_text().strip().removeprefix("argo-")

            def start_refused() -> str | None:
                pods = _pods_by_step(cluster, flow_ns, name).get("start")
                return _unschedulable(pods[0]) if pods else None

            message = cluster.wait_for(start_refused, 120, "the start step to be refused")
            # The GPU node has room and the taskworkers label: only its taint keeps
            # it off. The scheduler (1.34) counts nodes per reason without naming
            # the taint: the counts are the proof, the GPU node among the tainted.
            (start,) = _pods_by_step(cluster, flow_ns, name)["start"]
            tainted, elsewhere = _refusals(cluster, start)
            assert kubelets["gpu"].name in tainted
            # Every pool's KWOK node, and the taskworkers node the step could take.
            cordoned = [n.metadata.name for n in core.list_node().items
                        if n.spec.unschedulable]
            assert taskworkers in cordoned
            assert f"{len(cordoned)} node(s) were unschedulable" in message, message
            assert f"{len(tainted)} node(s) had untolerated taint(s)" in message, message
            assert (f"{len(elsewhere)} node(s) didn't match Pod's node affinity/selector"
                    in message), message
            time.sleep(3)
            assert [p.spec.node_name for p in _pods_by_step(cluster, flow_ns, name)["start"]
                    ] == [None]
        finally:
            core.patch_node(taskworkers, {"spec": {"unschedulable": None}})

        def finished() -> dict[str, Any] | None:
            wf = _workflow(custom, flow_ns, name)
            return wf if wf.get("status", {}).get("phase") in ("Succeeded", "Failed",
                                                               "Error") else None

        started = time.monotonic()
        wf = cluster.wait_for(finished, 600, f"workflow {name} to finish")
        took = time.monotonic() - started
        assert "forbidden" not in controller.log_text()
        pods = _pods_by_step(cluster, flow_ns, name)
        # The process nodes go with their kubelets: read them while they are here.
        nodes = {n.metadata.name: n for n in core.list_node().items}
        logs = {p.metadata.name: kubelets[pool].logs(flow_ns, p.metadata.name, "main")[-1500:]
                for pool in kubelets for attempts in pods.values() for p in attempts
                if p.spec.node_name == kubelets[pool].name}

    phases = {n["displayName"]: n["phase"] for n in wf["status"]["nodes"].values()}
    assert wf["status"]["phase"] == "Succeeded", (phases, logs)
    placed: dict[str, str | None] = {}
    for step_name in PLACED:
        # One attempt each (every step ran and exited 0): none was retried.
        (pod,) = pods[step_name]
        assert pod.status.phase == "Succeeded", step_name
        node = nodes[pod.spec.node_name]
        taints = [t.to_dict() for t in node.spec.taints or []]
        found = pools.pool_of(node.metadata.labels, taints)
        placed[step_name] = found.name if found else None
    assert placed == {k: v.name for k, v in PLACED.items()}
    # Each on its pool's process node, where it really ran (KWOK's are cordoned).
    assert {s: pods[s][0].spec.node_name for s in PLACED} == {
        s: kubelets[pool.name].name for s, pool in PLACED.items()}
    # ...the API server added it to the GPU steps' pods, and to no other.
    for step_name, attempts in pods.items():
        for pod in attempts:
            added = [t.to_dict() for t in pod.spec.tolerations or []
                     if t.key == pools.GPU_RESOURCE]
            expected = ([{**GPU_TOLERATION, "value": None, "toleration_seconds": None}]
                        if PLACED.get(step_name) == pools.GPU else [])
            assert added == expected, step_name
    # The data scientist reads the run back: each step's one task, in the pod
    # Argo made for it, recorded its first attempt as done and ok (the metadata
    # Metaflow's task writes when its step succeeded).
    read = subprocess.run(
        [sys.executable, "-c", READ, f"PlacementFlow/argo-{name}"], env=mf.env,
        cwd=mf.home / "work", capture_output=True, text=True, timeout=120, check=False)
    assert read.returncode == 0, read.stderr[-3000:]
    assert json.loads(read.stdout.strip().splitlines()[-1]) == {
        step_name: {"tasks": 1, "attempt": "0", "attempt_ok": "True",
                    "pod": pods[step_name][0].metadata.name} for step_name in PLACED}
    print(f"\nworkflow {name}: {placed}, {took:.0f}s from the trigger's return")


READ = """
import json, sys
from metaflow import Run, namespace
namespace(None)
out = {}
for step in Run(sys.argv[1]):
    tasks = list(step)
    meta = tasks[0].metadata_dict
    out[step.id] = {"tasks": len(tasks), "attempt": meta.get("attempt"),
                    "attempt_ok": meta.get("attempt_ok"),
                    "pod": meta.get("kubernetes-pod-name")}
print(json.dumps(out))
"""
