"""A data scientist, not cluster-admin, deploys and triggers a Metaflow flow;
the real Argo controller (namespaced on the release namespace, watching the
separate flow namespace) runs it on the test cluster, and every step runs
for real.

The user holds exactly the chart's data-scientist Role (a client certificate
in the group `dataScientists` names). Metaflow writes the WorkflowTemplate
and the Workflow; the controller, with argo-helm's RBAC, creates the step
pods as `metaflow-flows` in the taskworkers pool. That pool is one node
played by the process kubelet (process_kubelet.py): Argo's executor
(`argoexec` built with the controller) and Metaflow's step commands run as
host processes, with what AKS adds to a step pod (the workload-identity
webhook's variables and token, metaflow_env.step_pod_admission). Each step
downloads the code package from Blob (Azurite over HTTPS, with a token
Entra issues for the pod's federated token), runs, registers its task with
the metadata service (metaflow-local-service) and writes the output
parameters the controller passes on: the foreach expands from `fan-out`'s
`num-splits`. The run ends Succeeded and the data scientist reads its
artifacts with the Metaflow client.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest
from kubernetes import client

from . import argo
from .handle import Cluster

pytestmark = pytest.mark.cluster

FLOW = "branch_foreach_flow.py"
TEMPLATE = "branchforeachflow"
ARGO = {"group": "argoproj.io", "version": "v1alpha1"}
RELEASE_NS = "metaflow"  # the config's in-cluster metadata URL names it
GROUP = "ml-team"


def _workflow(custom: Any, ns: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(**ARGO, namespace=ns, plural="workflows",
                                               name=name)


def test_a_data_scientist_runs_a_flow_on_the_real_controller(cluster: Cluster, argo_build,
                                                              metaflow_runs, metadata_service,
                                                              request):
    if cluster.backend != "controlplane":
        pytest.skip("needs the local control plane's CA to issue a user certificate "
                    "(kind keeps its CA inside its node)")
    mf = metaflow_runs
    flow_ns = mf.flow_namespace
    assert flow_ns != RELEASE_NS
    for ns in (RELEASE_NS, flow_ns):
        cluster.create_namespace(ns)
    applied = argo.apply_chart_objects(cluster, RELEASE_NS, flow_ns, GROUP)
    # A later `helm install` into these namespaces must own them.
    request.addfinalizer(lambda: [argo.delete(cluster, obj) for obj in applied])
    alice = cluster.user_kubeconfig("alice", (GROUP,))
    custom = client.CustomObjectsApi(cluster.api_client())

    with argo.run_controller(cluster, argo_build, RELEASE_NS, flow_ns) as controller, \
            argo.taskworkers_on_process_kubelet(cluster, argo_build, mf,
                                                metadata_service.url) as kubelet:
        created = mf.run_flow(FLOW, "argo-workflows", "create", kubeconfig=alice)
        assert created.returncode == 0, created.stderr[-3000:]
        run_id_file = mf.home / "work" / "run-id-on-argo"
        triggered = mf.run_flow(FLOW, "argo-workflows", "trigger", "--run-id-file",
                                str(run_id_file), kubeconfig=alice)
        assert triggered.returncode == 0, triggered.stderr[-3000:]
        name = run_id_file.read_text().strip().removeprefix("argo-")

        def finished() -> dict[str, Any] | None:
            wf = _workflow(custom, flow_ns, name)
            return wf if wf.get("status", {}).get("phase") in ("Succeeded", "Failed",
                                                               "Error") else None

        started = time.monotonic()
        wf = cluster.wait_for(finished, 1200, f"workflow {name} to finish")
        took = time.monotonic() - started
        assert "forbidden" not in controller.log_text()
        pods = cluster.core().list_namespaced_pod(
            flow_ns, label_selector=f"workflows.argoproj.io/workflow={name}").items
        logs = {p.metadata.name: kubelet.logs(flow_ns, p.metadata.name, "main")[-1500:]
                for p in pods if p.spec.node_name == kubelet.name}

    nodes = {n["displayName"]: n for n in wf["status"]["nodes"].values()}
    assert wf["status"]["phase"] == "Succeeded", (
        wf["status"].get("message"),
        [(k, v["phase"], v.get("message")) for k, v in nodes.items()], logs)
    steps = {p.metadata.annotations["workflows.argoproj.io/node-name"].split(".", 1)[1]: p
             for p in pods}
    for node, pod in steps.items():
        assert pod.spec.service_account_name == "metaflow-flows", node
        assert pod.status.phase == "Succeeded", node
    # Metaflow steers and labels its step pods; its exit hook (which only
    # reports a failed run's error) gets neither the taskworkers selector nor
    # the workload-identity label, and lands on any untainted node.
    hooks = {n for n in steps if n.startswith("onExit")}
    for node in hooks:
        assert "azure.workload.identity/use" not in steps[node].metadata.labels
        assert steps[node].spec.node_name != kubelet.name
    for node in set(steps) - hooks:
        assert steps[node].metadata.labels["azure.workload.identity/use"] == "true", node
        assert steps[node].spec.node_name == kubelet.name, node

    # Every step ran, the foreach three times over the items `start` set.
    for done in ("start", "prepare", "left", "right", "join-branch", "fan-out",
                 "join-foreach", "end"):
        assert nodes[done]["phase"] == "Succeeded", (done, nodes[done])
    squares = [n for n in wf["status"]["nodes"].values()
               if n["displayName"].startswith("square") and n["type"] == "Pod"]
    assert len(squares) == 3 and {n["phase"] for n in squares} == {"Succeeded"}
    # The data scientist reads the run in a notebook: the Metaflow client,
    # the metadata service and Blob.
    read = subprocess.run(
        [sys.executable, "-c", READ, f"BranchForeachFlow/argo-{name}"], env=mf.env,
        cwd=mf.home / "work", capture_output=True, text=True, timeout=120, check=False)
    assert read.returncode == 0, read.stderr[-3000:]
    assert json.loads(read.stdout.strip().splitlines()[-1]) == {
        "successful": True, "total": 44, "sides": ["left", "right"],
        "steps": ["end", "fan_out", "join_branch", "join_foreach", "left", "prepare", "right",
                  "square", "start"], "squares": 3}
    print(f"\nworkflow {name}: {wf['status']['phase']} after {took:.0f}s; " + ", ".join(
        f"{n['displayName']} {n['startedAt'][11:]}-{n['finishedAt'][11:]}"
        for n in sorted(wf["status"]["nodes"].values(), key=lambda n: n["startedAt"])
        if n["type"] == "Pod"))


READ = """
import json, sys
from metaflow import Run, namespace
namespace(None)
run = Run(sys.argv[1])
print(json.dumps({"successful": run.successful, "total": run.data.total,
                  "sides": run.data.sides, "steps": sorted(s.id for s in run),
                  "squares": len(list(run["square"]))}))
"""
