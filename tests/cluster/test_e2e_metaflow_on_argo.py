"""A data scientist, not cluster-admin, deploys and triggers a Metaflow flow;
the real Argo controller (namespaced on the release namespace, watching the
separate flow namespace) runs it on the test cluster.

The user holds exactly the chart's data-scientist Role (a client certificate
in the group `dataScientists` names). Metaflow writes the WorkflowTemplate
and the Workflow; the controller, with argo-helm's RBAC, creates the step
pods as `metaflow-flows` on the taskworkers node; KWOK completes them. No
container runs, so no step writes the output parameters Metaflow's templates
pass on: the run goes exactly as far as that allows (through the linear
steps and the branch, up to the foreach), and the test pins how far.

Not yet on the process kubelet (process_kubelet.py), which Argo >= 3.7 needs
for any step with outputs: a Metaflow step run for real needs, in its pod,
the workload-identity webhook's AZURE_* variables and token, the test CA for
the HTTPS Azurite, and the metadata service at the config's in-cluster URL;
none of them exists on this cluster yet (tests/README.md).
"""

from __future__ import annotations

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
                                                              metaflow_env, request):
    if cluster.backend != "controlplane":
        pytest.skip("needs the local control plane's CA to issue a user certificate "
                    "(kind keeps its CA inside its node)")
    mf = metaflow_env
    flow_ns = mf.flow_namespace
    assert flow_ns != RELEASE_NS
    for ns in (RELEASE_NS, flow_ns):
        cluster.create_namespace(ns)
    applied = argo.apply_chart_objects(cluster, RELEASE_NS, flow_ns, GROUP)
    # A later `helm install` into these namespaces must own them.
    request.addfinalizer(lambda: [argo.delete(cluster, obj) for obj in applied])
    alice = cluster.user_kubeconfig("alice", (GROUP,))
    custom = client.CustomObjectsApi(cluster.api_client())

    with argo.run_controller(cluster, argo_build, RELEASE_NS, flow_ns) as controller:
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
        wf = cluster.wait_for(finished, 180, f"workflow {name} to finish")
        took = time.monotonic() - started
        assert "forbidden" not in controller.log_text()

    pods = cluster.core().list_namespaced_pod(
        flow_ns, label_selector=f"workflows.argoproj.io/workflow={name}").items
    steps = {p.metadata.annotations["workflows.argoproj.io/node-name"].split(".", 1)[1]: p
             for p in pods}
    for node, pod in steps.items():
        assert pod.spec.service_account_name == "metaflow-flows", node
        assert pod.status.phase == "Succeeded", node
    # Metaflow steers and labels its step pods; its exit hook (which only
    # reports a failed run's error) gets neither the taskworkers selector nor
    # the workload-identity label, and lands on any untainted node.
    hooks = {n for n in steps if n.startswith("onExit")}
    assert hooks
    for node in hooks:
        assert "azure.workload.identity/use" not in steps[node].metadata.labels
        assert steps[node].spec.node_name != cluster.nodes["taskworkers"]
    for node in set(steps) - hooks:
        assert steps[node].metadata.labels["azure.workload.identity/use"] == "true", node
        assert steps[node].spec.node_name == cluster.nodes["taskworkers"], node

    # How far it gets: the linear steps and the branch run (their pods
    # complete, their dependents do not need values the containers write),
    # until the foreach: Argo expands it from fan-out's num-splits output
    # parameter, which only Metaflow's code in the container would write.
    nodes = {n["displayName"]: n for n in wf["status"]["nodes"].values()}
    for done in ("start", "prepare", "left", "right", "join-branch", "fan-out"):
        assert nodes[done]["phase"] == "Succeeded", (done, nodes[done])
    foreach = nodes["fan-out-foreach-items"]
    assert foreach["phase"] == "Error"
    assert "tasks.fan-out.outputs.parameters.num-splits" in foreach["message"]
    assert {nodes["join-foreach"]["phase"], nodes["end"]["phase"]} == {"Omitted"}
    assert wf["status"]["phase"] == "Error"
    print(f"\nworkflow {name}: {wf['status']['phase']} after {took:.0f}s; "
          f"{[(k, v['phase']) for k, v in nodes.items() if v['type'] == 'Pod']}")
