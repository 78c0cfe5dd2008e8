"""Argo Workflows itself on the test cluster: the pinned release's CRDs and
workflow controller, set up as argo-helm 1.0.18 sets them up for our values
(see argo.py), running a plain two-step Workflow on the taskworkers node.

On the KWOK nodes nothing runs inside the pods: KWOK marks them finished
(tests/cluster/kwok/stages.yaml, restartPolicy Never), so Argo's executor
never reports a WorkflowTaskResult. Argo 3.6 then treats a finished pod with
no task result as complete (WorkflowStatus.IsTaskResultIncomplete is false
for a node it has no entry for), so a workflow without outputs still
advances step by step and succeeds. Each step takes about Argo's default
requeue time (10 s): the controller looks at a workflow again at most that
often.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from kubernetes import client

from . import argo
from .argo import ArgoBuild, ArgoController
from .controlplane import ROOT, _installer
from .handle import POOL_LABEL, TASKWORKERS_TAINT, Cluster, wait_for

pytestmark = pytest.mark.cluster

ARGO = {"group": "argoproj.io", "version": "v1alpha1"}
FLOWS_ACCOUNT = "metaflow-flows"
RELEASE = "metaflow"
# The CRDs argo-helm 1.0.18 installs with crds.full=false (templates/crds.yaml
# renders files/crds/minimal/, clusterworkflowtemplates only when a
# clusterWorkflowTemplates switch is on), identical to the module's
# manifests/base/crds/minimal at v4.0.7 but for Helm's keep annotation.
CRDS = {f"{p}.argoproj.io" for p in (
    "clusterworkflowtemplates", "cronworkflows", "workflowartifactgctasks",
    "workfloweventbindings", "workflows", "workflowtaskresults", "workflowtasksets",
    "workflowtemplates")}


def _custom(cluster: Cluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(cluster.api_client())


# --- pins and values: no cluster needed -------------------------------------

def test_wrapper_module_requires_the_pinned_argo_release() -> None:
    entry = _installer().load_manifest()["gobuild"]["argo"]
    gomod = (ROOT / "tests" / "tools" / "gobuild" / "argo" / "go.mod").read_text()
    assert re.search(rf"^\s*{re.escape(entry['module'])} {re.escape(entry['version'])}\b",
                     gomod, re.M)
    assert "=>" not in gomod  # v4.0.7's go.mod replaces nothing, so neither do we
    # install.py builds from a copy with the UI placeholder argo's Makefile makes.
    assert entry["empty_files"] == ["ui/dist/app/index.html"]
    # The chart's pin (argo-helm 1.0.18, appVersion v4.0.6) runs this release:
    # our values set every Argo image's tag to it.
    chart = yaml.safe_load((ROOT / "charts" / "metaflow" / "Chart.yaml").read_text())
    pinned = {d["name"]: d["version"] for d in chart["dependencies"]}
    assert (pinned["argo-workflows"], entry["version"]) == ("1.0.18", "v4.0.7")
    values = yaml.safe_load((ROOT / "charts" / "metaflow" / "values.yaml").read_text())
    assert values["argo-workflows"]["images"]["tag"] == entry["version"]
    assert values["argo-workflows"]["crds"]["full"] is False  # no CRD-download hook Job


def test_previous_release_builds_beside_the_current_one() -> None:
    """[gobuild.argo-previous]: the release the chart pinned before (v3.6.10,
    argo-helm 0.45.20, chart 0.1.0), for upgrade tests, from its own wrapper."""
    manifest = _installer().load_manifest()["gobuild"]
    entry, current = manifest["argo-previous"], manifest["argo"]
    gomod = (ROOT / "tests" / "tools" / "gobuild" / "argo-previous" / "go.mod").read_text()
    assert re.search(rf"^\s*{re.escape(entry['module'])} {re.escape(entry['version'])}\b",
                     gomod, re.M)
    assert "=>" not in gomod  # v3.6.10's go.mod replaces nothing
    assert (entry["module"], entry["version"]) == ("github.com/argoproj/argo-workflows/v3",
                                                   "v3.6.10")
    # Linked into the same .venv/bin: no binary of one may shadow the other's.
    assert not set(entry["binaries"]) & set(current["binaries"])


def test_our_values_leave_what_argo_py_writes_out_at_argo_helm_defaults() -> None:
    """argo.py writes the controller's Role, ConfigMap and flags for our
    values; a new key under `argo-workflows` must be looked at there first."""
    values = yaml.safe_load((ROOT / "charts" / "metaflow" / "values.yaml").read_text())
    ours = values["argo-workflows"]
    assert set(ours) <= argo.NEUTRAL_TOP, set(ours) - argo.NEUTRAL_TOP
    assert set(ours.get("controller") or {}) <= argo.NEUTRAL_CONTROLLER
    assert ours["singleNamespace"] is True
    assert ours["controller"]["extraArgs"] == []  # mfhelm adds --managed-namespace


# --- the build and the CRDs --------------------------------------------------

def test_controller_binary_is_the_pinned_release(argo_build: ArgoBuild) -> None:
    out = subprocess.run([str(argo_build.binary), "version"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    assert out.splitlines()[0] == f"workflow-controller: {argo_build.version}"
    assert "GitTreeState: clean" in out
    assert {p.stem.removeprefix("argoproj.io_") + ".argoproj.io"
            for p in argo_build.crd_files()} == CRDS


def test_minimal_crds_are_served_by_the_api_server(cluster: Cluster,
                                                   argo_build: ArgoBuild) -> None:
    ext = client.ApiextensionsV1Api(cluster.api_client())
    for name in sorted(CRDS):
        crd = ext.read_custom_resource_definition(name)
        conditions = {c.type: c.status for c in crd.status.conditions or []}
        assert conditions.get("Established") == "True", (name, conditions)
        assert conditions.get("NamesAccepted") == "True", (name, conditions)
        assert [v.name for v in crd.spec.versions if v.served] == ["v1alpha1"]
    # Applying again (another test module, a second release) changes nothing.
    assert set(argo.apply_crds(cluster, argo_build)) == CRDS
    # The minimal schemas still require a spec: the API server validates.
    ns = "default"
    bad = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
           "metadata": {"generateName": "no-spec-"}}
    with pytest.raises(client.ApiException) as refused:
        _custom(cluster).create_namespaced_custom_object(**ARGO, namespace=ns,
                                                         plural="workflows", body=bad)
    assert refused.value.status == 422
    assert "spec" in str(refused.value.body)


def test_full_crds_are_accepted_by_the_api_server(cluster: Cluster) -> None:
    """argo-helm 1.0's `full` CRDs (what crds.full=true installs through its hook
    Job), v4.0.7's from the module, are accepted by the Kubernetes release
    tools.toml pins: created, Established, and checking what the minimal ones
    leave to the controller (a CronWorkflow without `schedules` is refused).
    They are created under a group of their own, so they do not replace the
    minimal CRDs the other tests run on; the schemas are unchanged."""
    from .controlplane import create_crds
    from .metaflow_env import argo_module_dir

    group = f"full{uuid.uuid4().hex[:6]}.mfhelm.test"
    crds = []
    for path in sorted((argo_module_dir() / "manifests/base/crds/full").glob("argoproj.io_*.yaml")):
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        assert crd["spec"]["group"] == "argoproj.io", path
        crd["spec"]["group"] = group
        crd["metadata"] = {"name": f"{crd['spec']['names']['plural']}.{group}"}
        crds.append(crd)
    names = [crd["metadata"]["name"] for crd in crds]
    assert {n.removesuffix(group) for n in names} == {n.removesuffix("argoproj.io") for n in CRDS}
    ext = client.ApiextensionsV1Api(cluster.api_client())
    try:
        create_crds(cluster.api_client(), crds, "the full CRDs to be Established", timeout=120)
        cron = {"apiVersion": f"{group}/v1alpha1", "kind": "CronWorkflow",
                "metadata": {"generateName": "old-metaflow-"},
                "spec": {"schedule": "0 * * * *",
                         "workflowSpec": {"workflowTemplateRef": {"name": "t"}}}}
        with pytest.raises(client.ApiException) as refused:
            _custom(cluster).create_namespaced_custom_object(
                group, "v1alpha1", "default", "cronworkflows", cron)
        assert refused.value.status == 422
        assert "spec.schedules: Required value" in str(refused.value.body)
    finally:
        for name in names:  # those created before a refusal, too
            try:
                ext.delete_custom_resource_definition(name)
            except client.ApiException as exc:
                if exc.status != 404:
                    raise


# --- the controller running workflows ------------------------------------------

@contextmanager
def _controller(cluster: Cluster, build: ArgoBuild, separate: bool) -> Iterator[ArgoController]:
    release_ns = cluster.create_namespace(f"argo-{uuid.uuid4().hex[:6]}")
    flow_ns = cluster.create_namespace(f"{release_ns}-flows") if separate else release_ns
    try:
        with argo.run_controller(cluster, build, release_ns, flow_ns,
                                 release=RELEASE) as controller:
            # The flows account and its Role, as our chart renders them.
            for obj in argo.chart_objects(RELEASE, release_ns, flow_ns, "flows"):
                argo.apply(cluster, obj)
            yield controller
    finally:
        for ns in {release_ns, flow_ns}:
            try:
                cluster.core().delete_namespace(ns)
            except client.ApiException as exc:
                if exc.status != 404:
                    raise


@dataclass
class Run:
    controller: ArgoController
    workflow: str  # submitted in the controller's managed (flow) namespace
    ignored: str = ""  # submitted in its release namespace, when that is another


@pytest.fixture(scope="module")
def runs(cluster: Cluster, argo_build: ArgoBuild) -> Iterator[dict[str, Run]]:
    """Two controllers, one per layout, each given a two-step Workflow at
    once so that both run side by side (each takes ~20 s of Argo's requeues):
    "home"       flows in the release namespace, no --managed-namespace;
    "elsewhere"  flows in their own namespace: --managed-namespace=<flows>
                 and our chart's Roles for the controller there."""
    with ExitStack() as stack:
        runs = {}
        for key, separate in (("home", False), ("elsewhere", True)):
            controller = stack.enter_context(_controller(cluster, argo_build, separate))
            ignored = _submit(cluster, controller.namespace) if separate else ""
            runs[key] = Run(controller, _submit(cluster, controller.managed_namespace), ignored)
        yield runs


def two_step_workflow() -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "two-step-"},
        "spec": {
            "entrypoint": "main",
            "serviceAccountName": FLOWS_ACCOUNT,
            "nodeSelector": {POOL_LABEL: "taskworkers"},
            "tolerations": [{"key": TASKWORKERS_TAINT["key"], "operator": "Equal",
                             "value": TASKWORKERS_TAINT["value"],
                             "effect": TASKWORKERS_TAINT["effect"]}],
            "templates": [
                {"name": "main", "steps": [[{"name": "first", "template": "say"}],
                                           [{"name": "second", "template": "say"}]]},
                {"name": "say", "container": {"image": "busybox:1.36",
                                              "command": ["echo", "hello"]}},
            ],
        },
    }


def _submit(cluster: Cluster, namespace: str) -> str:
    created = _custom(cluster).create_namespaced_custom_object(
        **ARGO, namespace=namespace, plural="workflows", body=two_step_workflow())
    return str(created["metadata"]["name"])


def _workflow(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    wf: dict[str, Any] = _custom(cluster).get_namespaced_custom_object(
        **ARGO, namespace=namespace, plural="workflows", name=name)
    return wf


def _wait_finished(cluster: Cluster, controller: ArgoController, name: str) -> dict[str, Any]:
    ns = controller.managed_namespace
    timeout = 90 if cluster.backend == "controlplane" else 300

    def finished() -> dict[str, Any] | None:
        controller.check()
        wf = _workflow(cluster, ns, name)
        phase = (wf.get("status") or {}).get("phase")
        return wf if phase in ("Succeeded", "Failed", "Error") else None

    try:
        return wait_for(finished, timeout, f"workflow {ns}/{name} to finish")
    except TimeoutError as exc:
        status = (_workflow(cluster, ns, name).get("status") or {})
        raise AssertionError(f"{exc}\nstatus: {yaml.safe_dump(status)}\n"
                             f"controller log:\n{controller.tail()}") from None


def _check_two_steps_ran_on_taskworkers(cluster: Cluster, controller: ArgoController,
                                        name: str) -> None:
    ns = controller.managed_namespace
    wf = _wait_finished(cluster, controller, name)
    status = wf["status"]
    assert status["phase"] == "Succeeded", yaml.safe_dump(status)
    steps = sorted((n for n in status["nodes"].values() if n["type"] == "Pod"),
                   key=lambda n: n["startedAt"])
    assert [(n["displayName"], n["phase"]) for n in steps] == [
        ("first", "Succeeded"), ("second", "Succeeded")]
    assert steps[1]["startedAt"] >= steps[0]["finishedAt"]  # one after the other
    assert {n["hostNodeName"] for n in steps} == {cluster.nodes["taskworkers"]}

    pods = cluster.core().list_namespaced_pod(
        ns, label_selector=f"workflows.argoproj.io/workflow={name}").items
    assert len(pods) == 2
    for pod in pods:
        assert pod.status.phase == "Succeeded"
        assert pod.spec.node_name == cluster.nodes["taskworkers"]
        assert pod.spec.service_account_name == FLOWS_ACCOUNT
        assert pod.spec.restart_policy == "Never"
        images = {c.name: c.image for c in [*pod.spec.init_containers, *pod.spec.containers]}
        assert images == {"init": controller.executor_image,
                          "wait": controller.executor_image, "main": "busybox:1.36"}

    results = _custom(cluster).list_namespaced_custom_object(
        **ARGO, namespace=ns, plural="workflowtaskresults",
        label_selector=f"workflows.argoproj.io/workflow={name}")["items"]
    if cluster.backend == "controlplane":
        # Nothing ran in the pods, so no executor reported; the controller
        # completed the steps from the pods' state alone.
        assert results == []
        assert not status.get("taskResultsCompletionStatus")
    else:
        assert len(results) == 2
    assert "forbidden" not in controller.log_text().lower(), controller.tail()


def test_two_step_workflow_succeeds_in_the_release_namespace(
        cluster: Cluster, runs: dict[str, Run]) -> None:
    run = runs["home"]
    controller = run.controller
    assert controller.managed_namespace == controller.namespace
    assert not [a for a in controller.argv if a.startswith("--managed-namespace")]
    _check_two_steps_ran_on_taskworkers(cluster, controller, run.workflow)


def test_two_step_workflow_succeeds_in_a_separate_flow_namespace(
        cluster: Cluster, runs: dict[str, Run]) -> None:
    run = runs["elsewhere"]
    controller = run.controller
    assert f"--managed-namespace={controller.managed_namespace}" in controller.argv
    _check_two_steps_ran_on_taskworkers(cluster, controller, run.workflow)


def test_a_controller_ignores_workflows_outside_its_managed_namespace(
        cluster: Cluster, runs: dict[str, Run]) -> None:
    """Namespaced on the flow namespace, the controller leaves a Workflow in
    its own (release) namespace alone: no status, no pods."""
    run = runs["elsewhere"]
    away = run.controller
    # Submitted before the flow namespace's workflow, which is done by now.
    assert _wait_finished(cluster, away, run.workflow)["status"]["phase"] == "Succeeded"
    assert not _workflow(cluster, away.namespace, run.ignored).get("status")
    assert cluster.core().list_namespaced_pod(away.namespace).items == []


def test_controller_acts_with_the_releases_rbac_only(
        cluster: Cluster, runs: dict[str, Run]) -> None:
    """The token in the controller's kubeconfig is its ServiceAccount's: it
    may do its work where flows run, read its ConfigMap at home, and nothing
    else there or cluster-wide; with that it ran the workflows above."""
    c = runs["elsewhere"].controller
    can = cluster.service_account_can
    sa = c.service_account
    assert can(c.namespace, sa, "create", "pods", namespace=c.managed_namespace)
    assert can(c.namespace, sa, "update", "workflows", group="argoproj.io",
               namespace=c.managed_namespace)
    assert not can(c.namespace, sa, "create", "pods", namespace=c.namespace)
    assert not can(c.namespace, sa, "update", "workflows", group="argoproj.io",
                   namespace=c.namespace)
    assert not can(c.namespace, sa, "list", "configmaps", namespace=c.namespace)
    assert can(c.namespace, sa, "get", "configmaps", namespace=c.namespace,
               name=argo.configmap_name(c.release))
    assert can(c.namespace, sa, "watch", "configmaps", namespace=c.namespace,
               name=argo.configmap_name(c.release))
    # argo-helm 1.0.18's Role names `namespaces`, cluster-scoped: no Role grants it.
    assert not can(c.namespace, sa, "list", "namespaces")
    assert not can(c.namespace, sa, "create", "pods", namespace="default")
    assert not can(c.namespace, sa, "list", "clusterworkflowtemplates", group="argoproj.io")
    assert not can(c.namespace, sa, "get", "secrets", namespace=c.managed_namespace)
    # The controller found that out too, through its own credentials; without
    # `namespaces` (v4.0.7 workflow/controller/ns_watcher.go) it runs with
    # per-namespace parallelism off.
    assert "Controller doesn't have RBAC access for ClusterWorkflowTemplates" in c.log_text()
    assert "per-namespace parallelism will not work" in c.log_text()
    kubeconfig = yaml.safe_load(c.kubeconfig.read_text())
    assert [list(u["user"]) for u in kubeconfig["users"]] == [["token"]]


# v4.0.7 workflow/controller/controller.go runConfigMapWatcher: the
# controller watches its ConfigMap by name in its own namespace and logs
# this for every change; refused the watch, it logs CONFIG_WATCH_BROKEN
# without end instead (what argo-helm's Role grants is get+watch+list; our
# home Role grants get+watch on that one name).
CONFIG_UPDATE = "Received Workflow Controller config map update"
CONFIG_WATCH_BROKEN = "invalid config map object received in config watcher"


def test_controller_picks_up_a_change_to_its_configmap(
        cluster: Cluster, runs: dict[str, Run]) -> None:
    """With flows elsewhere, only our home Role lets the controller watch its
    ConfigMap; a change to it reaches the running controller."""
    c = runs["elsewhere"].controller
    # The workflow ran first: the controller has been up and watching a while.
    _wait_finished(cluster, c, runs["elsewhere"].workflow)
    before = c.log_text().count(CONFIG_UPDATE)
    name = argo.configmap_name(c.release)
    # Same settings, one more line: a change the watch must deliver.
    body = {"data": {"config": c.config + "# touched by the tests\n"}}
    cluster.core().patch_namespaced_config_map(name, c.namespace, body)

    def seen() -> bool:
        c.check()
        return c.log_text().count(CONFIG_UPDATE) > before

    try:
        wait_for(seen, 30, f"the controller to log {CONFIG_UPDATE!r}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\ncontroller log:\n{c.tail()}") from None
    log = c.log_text()
    assert CONFIG_WATCH_BROKEN not in log, c.tail()
    assert "forbidden" not in log.lower(), c.tail()
