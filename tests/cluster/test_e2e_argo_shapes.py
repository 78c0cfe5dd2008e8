"""The Metaflow flow shapes test_e2e_metaflow_on_argo.py does not cover, on
the pinned Argo (tools.toml [gobuild.argo]): compiled by the real Metaflow
with the config `mfhelm config` writes, created, triggered, suspended,
resumed and terminated by a data scientist holding exactly the chart's
data-scientist Role (client certificate, group ml-team), run by the real
workflow controller.

No container runs on the cluster tests' nodes. On the KWOK nodes every step
pod ends with exit 0 a second after it starts (kwok/stages.yaml), which is
all a step needs whose outcome does not depend on its code. The steps whose
outcome does (the failing first attempt, the step that overruns its
@timeout, the step the user suspends or terminates the run around) go to
one more node, `scripted-0`, that KWOK does not manage (no
kwok.x-k8s.io/node annotation) and whose kubelet this module plays
(ScriptedKubelet): it starts their pods, ends each container as the flow's
code would (`RULES`, read with the flow files next to it) and, as a kubelet
does, fails a pod that outlives its spec.activeDeadlineSeconds with reason
DeadlineExceeded. Everything else (the WorkflowTemplate and CronWorkflow
Metaflow writes, the controller's retries, deadlines, suspension,
termination and cron schedule) is the real thing.

What KWOK cannot do at all: produce a step's output parameters. Argo's
executor reports them from files the step's code writes, and a foreach is
expanded from one of them (num-splits), so the nested foreach runs up to its
first split and stops there, with the controller's message pinned.

Not yet on the process kubelet (process_kubelet.py), which Argo >= 3.7 needs
for any step with outputs: a Metaflow step run for real needs, in its pod,
the workload-identity webhook's AZURE_* variables and token, the test CA for
the HTTPS Azurite, and the metadata service at the config's in-cluster URL;
none of them exists on this cluster yet (tests/README.md).

Runtime: ~3 min on an idle 2-core machine, most of it the cron schedule's
next minute and five `argo-workflows create`s (run side by side).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from . import argo
from .argo import ArgoController
from .handle import Cluster

pytestmark = pytest.mark.cluster

ARGO = {"group": "argoproj.io", "version": "v1alpha1"}
RELEASE_NS = "metaflow"  # the config's in-cluster metadata URL names it
GROUP = "ml-team"
SCRIPTED_NODE = "scripted-0"
SCRIPTED_LABEL = ("mfhelm.io/test-kubelet", "scripted")  # the flows' node_selector/toleration
NODE_LEASE_SECONDS = 40
# What a kubelet writes on a pod it kills for its activeDeadlineSeconds
# (pkg/kubelet/active_deadline.go).
DEADLINE_REASON = "DeadlineExceeded"
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"

FLOWS = {
    "schedule": ("schedule_flow.py", "scheduleflow"),
    "retry": ("retry_flow.py", "retryflow"),
    "timeout": ("timeout_flow.py", "timeoutflow"),
    "hold": ("hold_flow.py", "holdflow"),
    "nested": ("nested_foreach_flow.py", "nestedforeachflow"),
}


# The runs the tests check (the CronWorkflow starts its own), by what they show.
RUNS = {"retry": "retry", "timeout": "timeout", "nested": "nested",
        "suspend": "hold", "terminate": "hold"}


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- a kubelet for one node, played by the test --------------------------------

HOLD = -1  # the container keeps running until released (or killed)


def _flaky(pod: client.V1Pod) -> int:
    # retry_flow.py: `if current.retry_count == 0: raise` (exit 1), else return.
    return 1 if pod.metadata.annotations["metaflow/attempt"] == "0" else 0


# step name -> exit code of the step's container (what its code does), read
# from the pod Argo made; HOLD: it does not end on its own.
RULES: dict[str, Callable[[client.V1Pod], int]] = {
    "flaky": _flaky,            # retry_flow.py
    "slow": lambda pod: HOLD,   # timeout_flow.py: time.sleep(3600)
    "hold": lambda pod: HOLD,   # hold_flow.py: until the test releases it
}


@dataclass
class ScriptedKubelet:
    """Node `scripted-0` and the kubelet on it: a Lease renewed like a
    kubelet's, pods started at once and ended per RULES, the active deadline
    enforced, deleted pods removed. Polls every 0.5 s."""

    cluster: Cluster
    released: set[str] = field(default_factory=set)   # pod names let go (exit 0)
    log: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _ip: int = 0

    def start(self) -> None:
        core = self.cluster.core()
        key, value = SCRIPTED_LABEL
        core.create_node(client.V1Node(
            metadata=client.V1ObjectMeta(name=SCRIPTED_NODE, labels={
                "kubernetes.io/hostname": SCRIPTED_NODE, "kubernetes.io/os": "linux",
                key: value}),
            spec=client.V1NodeSpec(taints=[client.V1Taint(key=key, value=value,
                                                          effect="NoSchedule")])))
        self._renew_lease()
        room = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        core.patch_node_status(SCRIPTED_NODE, {"status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "played by test_e2e_argo_shapes",
                            "lastHeartbeatTime": _now(), "lastTransitionTime": _now()}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "capacity": room, "allocatable": room, "phase": "Running"}})

        def ready() -> bool:
            node = core.read_node(SCRIPTED_NODE)
            return not [t for t in node.spec.taints or []
                        if t.key.startswith("node.kubernetes.io/")]

        self.cluster.wait_for(ready, 60, f"node {SCRIPTED_NODE} to be Ready and untainted")
        self._thread = threading.Thread(target=self._run, name="scripted-kubelet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        for delete in (lambda: self.cluster.core().delete_node(SCRIPTED_NODE),
                       lambda: client.CoordinationV1Api(self.cluster.api_client())
                       .delete_namespaced_lease(SCRIPTED_NODE, "kube-node-lease")):
            try:
                delete()
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def _renew_lease(self) -> None:
        leases = client.CoordinationV1Api(self.cluster.api_client())
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": SCRIPTED_NODE, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": SCRIPTED_NODE,
                         "leaseDurationSeconds": NODE_LEASE_SECONDS, "renewTime": now}}
        try:
            leases.patch_namespaced_lease(SCRIPTED_NODE, "kube-node-lease", body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            leases.create_namespaced_lease("kube-node-lease", body)

    def _run(self) -> None:
        renewed = time.monotonic()
        while not self._stop.is_set():
            try:
                if time.monotonic() - renewed > 10:
                    self._renew_lease()
                    renewed = time.monotonic()
                for pod in self.cluster.core().list_pod_for_all_namespaces(
                        field_selector=f"spec.nodeName={SCRIPTED_NODE}").items:
                    self._step(pod)
            except Exception as exc:  # noqa: BLE001 - reported by the tests
                self.errors.append(repr(exc))
            self._stop.wait(0.5)

    def _patch(self, pod: client.V1Pod, status: dict[str, Any]) -> None:
        self.cluster.core().patch_namespaced_pod_status(
            pod.metadata.name, pod.metadata.namespace, {"status": status})

    def _step(self, pod: client.V1Pod) -> None:
        name, ns = pod.metadata.name, pod.metadata.namespace
        if pod.metadata.deletion_timestamp is not None:
            # Its containers are stopped; the kubelet confirms the deletion.
            try:
                self.cluster.core().delete_namespaced_pod(name, ns, grace_period_seconds=0)
                self.log.append(f"{name}: removed")
            except ApiException as exc:
                if exc.status != 404:
                    raise
            return
        phase = pod.status.phase
        if phase in ("Succeeded", "Failed"):
            return
        if not pod.status.pod_ip:
            self._ip += 1
            now = _now()
            self._patch(pod, {
                "phase": "Running", "hostIP": "127.0.0.1", "podIP": f"10.250.0.{self._ip}",
                "startTime": now,
                "conditions": [{"type": t, "status": "True", "lastTransitionTime": now}
                               for t in ("PodScheduled", "Initialized", "ContainersReady",
                                         "Ready")],
                "initContainerStatuses": [self._terminated(c, 0, now)
                                          for c in pod.spec.init_containers or []],
                "containerStatuses": [
                    {"name": c.name, "image": c.image, "imageID": "", "ready": True,
                     "restartCount": 0, "started": True,
                     "state": {"running": {"startedAt": now}}}
                    for c in pod.spec.containers],
            })
            self.log.append(f"{name}: running")
            return
        started = pod.status.start_time
        ran = (dt.datetime.now(dt.UTC) - started).total_seconds()
        deadline = pod.spec.active_deadline_seconds
        if deadline is not None and ran >= deadline:
            self._end(pod, 137, reason=DEADLINE_REASON, message=DEADLINE_MESSAGE)
            self.log.append(f"{name}: killed after {ran:.0f}s (deadline {deadline}s)")
            return
        step = (pod.metadata.annotations or {}).get("metaflow/step_name", "")
        code = RULES.get(step, lambda p: 0)(pod)
        if name in self.released:
            code = 0
        if code != HOLD and ran >= 1:
            self._end(pod, code)
            self.log.append(f"{name}: exited {code}")

    @staticmethod
    def _terminated(container: client.V1Container, code: int, now: str,
                    reason: str = "") -> dict[str, Any]:
        return {"name": container.name, "image": container.image, "imageID": "",
                "ready": False, "restartCount": 0, "started": False,
                "state": {"terminated": {"exitCode": code,
                                         "reason": reason or ("Completed" if code == 0
                                                              else "Error"),
                                         "startedAt": now, "finishedAt": now}}}

    def _end(self, pod: client.V1Pod, code: int, *, reason: str = "",
             message: str = "") -> None:
        """The main container exits with `code`; Argo's wait container (its
        executor, which reports outputs) ends with 0; killed: all with 137."""
        now = _now()
        statuses = [self._terminated(c, code if (c.name == "main" or reason) else 0, now)
                    for c in pod.spec.containers]
        status: dict[str, Any] = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "conditions": [{"type": t, "status": s, "lastTransitionTime": now}
                           for t, s in (("PodScheduled", "True"), ("Initialized", "True"),
                                        ("ContainersReady", "False"), ("Ready", "False"))],
            "containerStatuses": statuses,
        }
        if reason:
            status |= {"reason": reason, "message": message}
        self._patch(pod, status)


# --- the stage: namespaces, Roles, the user, the controller, the flows --------

@dataclass
class Stage:
    cluster: Cluster
    mf: Any
    alice: Path
    controller: ArgoController
    kubelet: ScriptedKubelet
    created: dict[str, Any]   # flow key -> CompletedProcess of `argo-workflows create`
    custom: client.CustomObjectsApi
    runs: dict[str, str] = field(default_factory=dict)  # started up front, by test

    @property
    def ns(self) -> str:
        return str(self.mf.flow_namespace)

    def run(self, key: str, *args: str) -> Any:
        """`python <flow> argo-workflows <args>` as alice."""
        return self.mf.run_flow(FLOWS[key][0], "argo-workflows", *args, kubeconfig=self.alice)

    def trigger(self, key: str) -> str:
        run_id_file = self.mf.home / "work" / f"run-id-{key}-{uuid.uuid4().hex[:6]}"
        done = self.run(key, "trigger", "--run-id-file", str(run_id_file))
        assert done.returncode == 0, done.stderr[-3000:]
        return run_id_file.read_text().strip().removeprefix("argo-")

    def get(self, plural: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            **ARGO, namespace=self.ns, plural=plural, name=name)
        return obj

    def workflow(self, name: str) -> dict[str, Any]:
        return self.get("workflows", name)

    def nodes(self, wf: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Pod and Retry nodes by display name (retries: `flaky(0)`, `flaky(1)`)."""
        return {n["displayName"]: n for n in (wf.get("status") or {}).get("nodes", {}).values()}

    def describe(self) -> str:
        """Every workflow's nodes and every pod of this module's flows, for a failure."""
        out = []
        for wf in self.custom.list_namespaced_custom_object(**ARGO, namespace=self.ns,
                                                            plural="workflows")["items"]:
            status = wf.get("status") or {}
            out.append(f"{wf['metadata']['name']}: {status.get('phase')} "
                       f"{status.get('message', '')!r} " + str(sorted(
                           (n["displayName"], n["phase"], n.get("message", ""))
                           for n in status.get("nodes", {}).values())))
        for pod in self.cluster.core().list_namespaced_pod(self.ns).items:
            waiting = [c.message for c in pod.status.conditions or [] if c.status != "True"]
            out.append(f"pod {pod.metadata.name} on {pod.spec.node_name}: "
                       f"{pod.status.phase} {waiting}")
        return "\n".join(out)

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 150) -> Any:
        def probe() -> Any:
            self.controller.check()
            assert not self.kubelet.errors, self.kubelet.errors
            return check()

        try:
            return self.cluster.wait_for(probe, timeout, what)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.describe()}\nkubelet: {self.kubelet.log}\n"
                                 f"controller:\n{self.controller.tail(30)}") from None

    def finished(self, name: str, timeout: float = 150) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            wf = self.workflow(name)
            phase = (wf.get("status") or {}).get("phase")
            return wf if phase in ("Succeeded", "Failed", "Error") else None

        return dict(self.wait(f"workflow {name} to finish", done, timeout))

    def pods(self, name: str) -> list[client.V1Pod]:
        return list(self.cluster.core().list_namespaced_pod(
            self.ns, label_selector=f"workflows.argoproj.io/workflow={name}").items)

    def step_pod(self, name: str, step: str, phases: tuple[str, ...] = ("Running",)
                 ) -> client.V1Pod:
        def found() -> client.V1Pod | None:
            for pod in self.pods(name):
                if (pod.metadata.annotations or {}).get("metaflow/step_name") == step \
                        and pod.status.phase in phases:
                    return pod
            return None

        return self.wait(f"step {step} of {name} to be {'/'.join(phases)}", found)

    def recorded(self, name: str) -> dict[str, Any]:
        """Wait until the controller has written a triggered run's first record.

        Metaflow's suspend and terminate read the run's `metaflow/...`
        annotations, which the controller copies from the template's
        workflowMetadata on its first pass and persists at the end of that
        pass, after it created the first pod (argo v3.6.10,
        operator.go: updateWorkflowMetadata, persistUpdates). Until then
        Metaflow calls the run "a non-metaflow workflow"."""
        def annotated() -> dict[str, Any] | None:
            wf = self.workflow(name)
            return wf if "metaflow/owner" in (wf["metadata"].get("annotations") or {}) else None

        return dict(self.wait(f"workflow {name} to carry Metaflow's annotations", annotated))


def _cleanup(custom: client.CustomObjectsApi, ns: str) -> None:
    """What the flows of this module left in the shared flow namespace; the
    CronWorkflow first, so that it starts nothing more."""
    templates = {t for _, t in FLOWS.values()}
    for plural in ("cronworkflows", "workflows", "workflowtemplates"):
        for item in custom.list_namespaced_custom_object(**ARGO, namespace=ns,
                                                         plural=plural)["items"]:
            meta = item["metadata"]
            ref = (item.get("spec") or {}).get("workflowTemplateRef", {}).get("name")
            if meta["name"] in templates or ref in templates:
                try:
                    custom.delete_namespaced_custom_object(**ARGO, namespace=ns,
                                                           plural=plural, name=meta["name"])
                except ApiException as exc:
                    if exc.status != 404:
                        raise


@pytest.fixture(scope="module")
def stage(cluster: Cluster, argo_build, metaflow_env) -> Iterator[Stage]:
    if cluster.backend != "controlplane":
        pytest.skip("needs the local control plane's CA to issue a user certificate "
                    "(kind keeps its CA inside its node) and a node KWOK leaves alone")
    mf = metaflow_env
    flow_ns = mf.flow_namespace
    for ns in (RELEASE_NS, flow_ns):
        cluster.create_namespace(ns)
    applied = argo.apply_chart_objects(cluster, RELEASE_NS, flow_ns, GROUP)
    alice = cluster.user_kubeconfig("alice", (GROUP,))
    custom = client.CustomObjectsApi(cluster.api_client())
    kubelet = ScriptedKubelet(cluster)
    kubelet.start()
    try:
        with argo.run_controller(cluster, argo_build, RELEASE_NS, flow_ns) as controller:
            # The five creates side by side: each uploads its code package.
            with ThreadPoolExecutor(len(FLOWS)) as pool:
                futures = {key: pool.submit(mf.run_flow, flow, "argo-workflows", "create",
                                            kubeconfig=alice)
                           for key, (flow, _) in FLOWS.items()}
                created = {key: f.result() for key, f in futures.items()}
            stage = Stage(cluster, mf, alice, controller, kubelet, created, custom)
            # Every run started now, side by side; each test then checks its own.
            with ThreadPoolExecutor(len(RUNS)) as pool:
                started = {run: pool.submit(stage.trigger, key) for run, key in RUNS.items()
                           if created[key].returncode == 0}
                stage.runs = {run: f.result() for run, f in started.items()}
            try:
                yield stage
            finally:
                _cleanup(custom, flow_ns)
    finally:
        kubelet.stop()
        for obj in applied:  # a later `helm install` into these namespaces owns them
            argo.delete(cluster, obj)


def _created(stage: Stage, key: str) -> dict[str, Any]:
    done = stage.created[key]
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return stage.get("workflowtemplates", FLOWS[key][1])


def _step_template(wt: dict[str, Any], step: str) -> dict[str, Any]:
    return next(t for t in wt["spec"]["templates"]
                if ((t.get("metadata") or {}).get("annotations") or {})
                .get("metaflow/step_name") == step)


# --- @retry ----------------------------------------------------------------------

def test_retry_runs_a_failed_first_attempt_again_and_the_run_succeeds(stage: Stage):
    wt = _created(stage, "retry")
    flaky = _step_template(wt, "flaky")
    assert flaky["retryStrategy"] == {"retryPolicy": "Always", "limit": 1,
                                      "backoff": {"duration": "0m"}}
    assert flaky["metadata"]["annotations"]["metaflow/attempt"] == "{{retries}}"
    name = stage.runs["retry"]
    wf = stage.finished(name)
    assert wf["status"]["phase"] == "Succeeded", wf["status"].get("message")
    nodes = stage.nodes(wf)
    # A Retry node with one child per attempt.
    assert nodes["flaky"]["type"] == "Retry"
    assert nodes["flaky"]["phase"] == "Succeeded"
    attempts = sorted((n for n in nodes.values() if n["displayName"].startswith("flaky(")),
                      key=lambda n: n["displayName"])
    assert [(n["displayName"], n["phase"]) for n in attempts] == [
        ("flaky(0)", "Failed"), ("flaky(1)", "Succeeded")]
    assert attempts[0]["message"] == "Error (exit code 1)", attempts[0]
    pods = {p.metadata.annotations["metaflow/attempt"]: p for p in stage.pods(name)
            if p.metadata.annotations.get("metaflow/step_name") == "flaky"}
    assert {k: p.status.phase for k, p in pods.items()} == {"0": "Failed", "1": "Succeeded"}
    assert all(p.spec.node_name == SCRIPTED_NODE for p in pods.values())
    assert nodes["end"]["phase"] == "Succeeded"
    print(f"\nretry {name}: {[(n['displayName'], n['phase'], n.get('message')) for n in attempts]}")


# --- @timeout --------------------------------------------------------------------

def test_timeout_fails_a_step_that_runs_too_long(stage: Stage):
    wt = _created(stage, "timeout")
    slow = _step_template(wt, "slow")
    assert slow["activeDeadlineSeconds"] == 60
    # Every other step keeps Metaflow's default limit (5 days).
    assert _step_template(wt, "start")["activeDeadlineSeconds"] == 5 * 24 * 3600
    name = stage.runs["timeout"]
    pod = stage.step_pod(name, "slow", ("Running", "Failed"))
    # Argo passes the template's deadline on to the pod, where the kubelet enforces it.
    assert pod.spec.active_deadline_seconds is not None
    assert 0 < pod.spec.active_deadline_seconds <= 60
    wf = stage.finished(name)
    nodes = stage.nodes(wf)
    assert wf["status"]["phase"] == "Failed"
    assert nodes["slow"]["phase"] == "Failed"
    killed = stage.cluster.core().read_namespaced_pod(pod.metadata.name, stage.ns)
    assert (killed.status.phase, killed.status.reason) == ("Failed", DEADLINE_REASON)
    assert nodes["end"]["phase"] == "Omitted", nodes["end"]
    print(f"\ntimeout {name}: workflow {wf['status']['phase']} "
          f"({wf['status'].get('message')!r}); slow: {nodes['slow']['phase']} "
          f"({nodes['slow'].get('message')!r}); pod deadline "
          f"{pod.spec.active_deadline_seconds}s")


# --- nested foreach --------------------------------------------------------------

def test_nested_foreach_compiles_and_runs_up_to_its_first_split(stage: Stage):
    wt = _created(stage, "nested")
    names = {t["name"] for t in wt["spec"]["templates"]}
    steps = {"start", "per-outer", "per-inner", "join-inner", "join-outer", "end"}
    assert steps <= names, names
    # Each foreach level is expanded by Argo from the num-splits output of the
    # step before it (withParam); the inner one inside the outer's template.
    with_params = [t for tpl in wt["spec"]["templates"]
                   for t in (tpl.get("dag") or {}).get("tasks", []) if t.get("withParam")]
    assert {t["withParam"] for t in with_params} >= {
        "{{tasks.start.outputs.parameters.num-splits}}",
        "{{tasks.per-outer.outputs.parameters.num-splits}}"}, with_params
    name = stage.runs["nested"]
    wf = stage.finished(name)
    nodes = stage.nodes(wf)
    # How far it gets on KWOK: `start` completes, but no executor wrote its
    # num-splits, so the outer foreach cannot be expanded.
    assert nodes["start"]["phase"] == "Succeeded"
    stuck = [n for n in nodes.values()
             if "tasks.start.outputs.parameters.num-splits" in (n.get("message") or "")]
    assert stuck, {k: (v["phase"], v.get("message")) for k, v in nodes.items()}
    assert wf["status"]["phase"] == "Error"
    assert not [n for n in nodes if n.startswith(("per-inner", "join-"))
                and nodes[n]["phase"] == "Succeeded"]
    print(f"\nnested foreach {name}: {wf['status']['phase']}: {stuck[0]['message']}")


# --- suspend, unsuspend, terminate as the data scientist -------------------------

def test_the_data_scientist_suspends_and_resumes_a_running_flow(stage: Stage):
    _created(stage, "hold")
    name = stage.runs["suspend"]
    pod = stage.step_pod(name, "hold")
    stage.recorded(name)
    done = stage.run("hold", "suspend", f"argo-{name}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Suspended execution of argo-{name}" in done.stdout + done.stderr
    assert stage.workflow(name)["spec"]["suspend"] is True
    # Suspending lets the running step finish but starts nothing after it.
    stage.kubelet.released.add(pod.metadata.name)
    stage.wait("hold to finish", lambda: stage.nodes(stage.workflow(name))["hold"]["phase"]
               == "Succeeded" or None)
    time.sleep(25)  # a few of the controller's requeues (10 s)
    wf = stage.workflow(name)
    assert wf["status"]["phase"] == "Running"
    assert "end" not in stage.nodes(wf)
    again = stage.run("hold", "suspend", f"argo-{name}")
    assert again.returncode != 0
    assert "already been suspended" in again.stdout + again.stderr

    done = stage.run("hold", "unsuspend", f"argo-{name}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Unsuspended execution of argo-{name}" in done.stdout + done.stderr
    wf = stage.finished(name)
    assert wf["status"]["phase"] == "Succeeded", wf["status"].get("message")
    assert stage.nodes(wf)["end"]["phase"] == "Succeeded"


def test_the_data_scientist_terminates_a_running_flow(stage: Stage):
    _created(stage, "hold")
    name = stage.runs["terminate"]
    pod = stage.step_pod(name, "hold")
    stage.recorded(name)
    done = stage.run("hold", "terminate", f"argo-{name}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Run terminated." in done.stdout + done.stderr
    assert stage.workflow(name)["spec"]["shutdown"] == "Terminate"
    wf = stage.finished(name, timeout=120)
    nodes = stage.nodes(wf)
    assert wf["status"]["phase"] == "Failed"
    assert wf["status"]["message"] == "Stopped with strategy 'Terminate'"
    assert nodes["hold"]["phase"] == "Failed", nodes["hold"]
    assert nodes["end"]["phase"] == "Omitted", nodes["end"]
    assert not [p for p in stage.pods(name)
                if p.metadata.annotations.get("metaflow/step_name") == "end"]
    # The controller stops the step's containers through exec (argoexec kill);
    # the scripted node serves no exec, so the pod itself stays as it was.
    log = stage.controller.log_text()
    assert (f'msg="Terminating pod as part of workflow shutdown" namespace={stage.ns} '
            f'podName={pod.metadata.name} shutdownStrategy=Terminate') in log
    after = [p for p in stage.pods(name) if p.metadata.name == pod.metadata.name]
    print(f"\nterminate {name}: {wf['status']['phase']} ({wf['status']['message']!r}); "
          f"hold: {nodes['hold'].get('message')!r}; its pod: "
          f"{[(p.status.phase, p.metadata.deletion_timestamp) for p in after]}; "
          f"kubelet: {[e for e in stage.kubelet.log if pod.metadata.name in e]}")
    # A second terminate is refused by Metaflow, not by the API server.
    again = stage.run("hold", "terminate", f"argo-{name}")
    assert again.returncode != 0
    assert "forbidden" not in (again.stdout + again.stderr).lower()
    assert "forbidden" not in stage.controller.log_text().lower()


# --- @schedule -------------------------------------------------------------------

def test_schedule_makes_a_cron_workflow_that_the_controller_runs(stage: Stage):
    _created(stage, "schedule")
    name = FLOWS["schedule"][1]
    cron = stage.get("cronworkflows", name)
    spec = cron["spec"]
    # mfhelm's config turns METAFLOW_ARGO_WORKFLOWS_USE_SCHEDULES on, so
    # Metaflow 2.19.39 writes the list `schedules` (read by Argo 3.6 on), not
    # the singular `schedule` Argo 4 removed: a CronWorkflow made today keeps
    # running after the upgrade.
    assert stage.mf.config["METAFLOW_ARGO_WORKFLOWS_USE_SCHEDULES"] == "true"
    assert spec["schedules"] == ["* * * * *"]
    assert "schedule" not in spec
    assert spec["suspend"] is False
    assert spec["workflowSpec"] == {"workflowTemplateRef": {"name": name}}

    # The controller starts a Workflow at the next minute.
    label = f"workflows.argoproj.io/cron-workflow={name}"

    def spawned() -> list[dict[str, Any]] | None:
        items = stage.custom.list_namespaced_custom_object(
            **ARGO, namespace=stage.ns, plural="workflows", label_selector=label)["items"]
        return items or None

    stage.wait(f"CronWorkflow {name} to start a Workflow", spawned, timeout=150)
    # Read the status first: the controller creates a run before it records it.
    status = stage.get("cronworkflows", name).get("status") or {}
    runs = {w["metadata"]["annotations"]["workflows.argoproj.io/scheduled-time"]: w
            for w in spawned() or []}
    assert status.get("lastScheduledTime") in runs, (status, sorted(runs))
    wf = runs[status["lastScheduledTime"]]
    assert all(t.endswith(":00Z") for t in runs), sorted(runs)  # on the minute
    run = wf["metadata"]["name"]
    assert run.startswith(f"{name}-")
    assert wf["spec"]["workflowTemplateRef"] == {"name": name}
    done = stage.finished(run)
    assert done["status"]["phase"] == "Succeeded", done["status"].get("message")
    assert {n: v["phase"] for n, v in stage.nodes(done).items() if v["type"] == "Pod"
            and not n.startswith("onExit")} == {"start": "Succeeded", "end": "Succeeded"}
    print(f"\ncron {name}: {spec['schedules']!r} last scheduled {status['lastScheduledTime']}, "
          f"ran {run}: {done['status']['phase']}")
