"""The Metaflow flow shapes test_e2e_metaflow_on_argo.py does not cover, on
the pinned Argo (tools.toml [gobuild.argo]): compiled by the real Metaflow
with the config `mfhelm config` writes, created, triggered, suspended,
resumed and terminated by a data scientist holding exactly the chart's
data-scientist Role (client certificate, group ml-team), run by the real
workflow controller, and every step run for real.

The steps go to the taskworkers pool like any step, and that pool is one
node played by the process kubelet (argo.taskworkers_on_process_kubelet):
Argo's executor and Metaflow's step commands run as host processes, with
what AKS adds to a step pod, and the metadata service records the runs. So
the outcomes come from the flows' own code: `flaky` raises on its first
attempt, `slow` sleeps past its @timeout until the kubelet enforces the
pod's deadline, the nested foreach is expanded from the num-splits its
steps write, and `hold` waits until the test releases it: it polls a small
HTTP server the test serves on 127.0.0.1 (the process kubelet's containers
share the host's network), at a URL the flow reads when it is created
(@environment). The data scientist reads the results with the Metaflow
client.

What the process kubelet does not serve is exec, through which the
controller stops a terminated run's containers (`argoexec kill`, argo
v3.6.10 workflow/signal/signal.go); the terminate test pins that the
controller asks, and what the run shows all the same.

Runtime: ~14 min measured on a 2-core machine shared with other cluster
suites (load 7 to 15); not yet measured idle. Five `argo-workflows
create`s, then every run triggered side by side (the cron's next minute and
the 90 s @timeout overlap them); most of the time is Metaflow's step
start-up (Python, the code package) for some 30 step pods on two cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kubernetes import client

from . import argo
from .flow_stage import ARGO, HoldServer, Stage, remove_flows
from .handle import Cluster
from .process_kubelet import DEADLINE_REASON

pytestmark = pytest.mark.cluster

RELEASE_NS = "metaflow"  # the config's in-cluster metadata URL names it
GROUP = "ml-team"

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


@pytest.fixture(scope="module")
def stage(cluster: Cluster, argo_build, metaflow_runs, metadata_service) -> Iterator[Stage]:
    if cluster.backend != "controlplane":
        pytest.skip("needs the local control plane's CA to issue a user certificate "
                    "(kind keeps its CA inside its node) and a node KWOK leaves alone")
    mf = metaflow_runs
    flow_ns = mf.flow_namespace
    for ns in (RELEASE_NS, flow_ns):
        cluster.create_namespace(ns)
    applied = argo.apply_chart_objects(cluster, RELEASE_NS, flow_ns, GROUP)
    alice = cluster.user_kubeconfig("alice", (GROUP,))
    custom = client.CustomObjectsApi(cluster.api_client())
    try:
        with HoldServer() as hold, \
                argo.run_controller(cluster, argo_build, RELEASE_NS, flow_ns) as controller, \
                argo.taskworkers_on_process_kubelet(cluster, argo_build, mf,
                                                    metadata_service.url) as kubelet:
            stage = Stage(cluster, mf, alice, controller, kubelet, hold, custom, FLOWS)
            try:
                # The five creates side by side: each uploads its code package.
                with ThreadPoolExecutor(len(FLOWS)) as pool:
                    futures = {key: pool.submit(stage.run, key, "create") for key in FLOWS}
                    stage.created = {key: f.result() for key, f in futures.items()}
                # Every run started now, side by side; each test then checks its own.
                with ThreadPoolExecutor(len(RUNS)) as pool:
                    started = {run: pool.submit(stage.trigger, key) for run, key in RUNS.items()
                               if stage.created[key].returncode == 0}
                    stage.runs = {run: f.result() for run, f in started.items()}
                yield stage
            finally:
                remove_flows(custom, flow_ns, {t for _, t in FLOWS.values()})
    finally:
        for obj in applied:  # a later `helm install` into these namespaces owns them
            argo.delete(cluster, obj)


def _step_template(wt: dict[str, Any], step: str) -> dict[str, Any]:
    return next(t for t in wt["spec"]["templates"]
                if ((t.get("metadata") or {}).get("annotations") or {})
                .get("metaflow/step_name") == step)


def _on_the_node(stage: Stage, name: str) -> None:
    """Every step pod of the run ran on the process kubelet's node (the exit
    hook, which Metaflow does not steer, may land on any node)."""
    steps = [p for p in stage.pods(name)
             if "metaflow/step_name" in (p.metadata.annotations or {})]
    assert steps
    assert {p.spec.node_name for p in steps} == {stage.kubelet.name}, [
        (p.metadata.name, p.spec.node_name) for p in steps]


# --- @schedule -------------------------------------------------------------------
# First: the controller fires the CronWorkflow on every minute, so the test
# suspends it once it has its run, and the node is left to the other runs.

def test_schedule_makes_a_cron_workflow_that_the_controller_runs(stage: Stage):
    stage.template("schedule")
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
    # The controller creates the run first and records it in the
    # CronWorkflow's status after (an empty status was read in between once).
    def recorded() -> dict[str, Any] | None:
        status = stage.get("cronworkflows", name).get("status") or {}
        return status if status.get("lastScheduledTime") else None

    status = stage.wait(f"CronWorkflow {name} to record its run", recorded, timeout=60)
    # Test housekeeping (as the admin, not alice): no more runs of it.
    stage.custom.patch_namespaced_custom_object(**ARGO, namespace=stage.ns,
                                                plural="cronworkflows", name=name,
                                                body={"spec": {"suspend": True}})
    runs = {w["metadata"]["annotations"]["workflows.argoproj.io/scheduled-time"]: w
            for w in spawned() or []}
    assert status.get("lastScheduledTime") in runs, (status, sorted(runs))
    wf = runs[status["lastScheduledTime"]]
    assert all(t.endswith(":00Z") for t in runs), sorted(runs)  # on the minute
    run = wf["metadata"]["name"]
    assert run.startswith(f"{name}-")
    assert wf["spec"]["workflowTemplateRef"] == {"name": name}
    done = stage.finished(run)
    assert done["status"]["phase"] == "Succeeded", (done["status"].get("message"),
                                                    stage.describe())
    assert {n: v["phase"] for n, v in stage.nodes(done).items() if v["type"] == "Pod"
            and not n.startswith("onExit")} == {"start": "Succeeded", "end": "Succeeded"}
    _on_the_node(stage, run)
    read = stage.read('print(json.dumps({"successful": run.successful, '
                      '"steps": sorted(s.id for s in run)}))', f"ScheduleFlow/argo-{run}")
    assert read == {"successful": True, "steps": ["end", "start"]}
    print(f"\ncron {name}: {spec['schedules']!r} last scheduled {status['lastScheduledTime']}, "
          f"ran {run}: {done['status']['phase']}")


# --- @retry ----------------------------------------------------------------------

def test_retry_runs_a_failed_first_attempt_again_and_the_run_succeeds(stage: Stage):
    wt = stage.template("retry")
    flaky = _step_template(wt, "flaky")
    assert flaky["retryStrategy"] == {"retryPolicy": "Always", "limit": 1,
                                      "backoff": {"duration": "0m"}}
    assert flaky["metadata"]["annotations"]["metaflow/attempt"] == "{{retries}}"
    name = stage.runs["retry"]
    wf = stage.finished(name)
    assert wf["status"]["phase"] == "Succeeded", (wf["status"].get("message"), stage.describe())
    nodes = stage.nodes(wf)
    # A Retry node with one child per attempt.
    assert nodes["flaky"]["type"] == "Retry"
    assert nodes["flaky"]["phase"] == "Succeeded"
    attempts = sorted((n for n in nodes.values() if n["displayName"].startswith("flaky(")),
                      key=lambda n: n["displayName"])
    assert [(n["displayName"], n["phase"]) for n in attempts] == [
        ("flaky(0)", "Failed"), ("flaky(1)", "Succeeded")]
    # The failed container's name leads the message from v4 on (operator.go,
    # inferFailedReason: v3.6.10 `%s (exit code %d)`, v4.0.7 `<container>: ...`).
    prefix = "main: " if stage.argo_major >= 4 else ""
    assert attempts[0]["message"] == f"{prefix}Error (exit code 1)", attempts[0]
    pods = {p.metadata.annotations["metaflow/attempt"]: p for p in stage.step_pods(name, "flaky")}
    assert {k: p.status.phase for k, p in pods.items()} == {"0": "Failed", "1": "Succeeded"}
    # The first attempt failed in the flow's own code.
    assert "RuntimeError: the first attempt fails" in stage.main_log(pods["0"])
    assert "the first attempt fails" not in stage.main_log(pods["1"])
    assert nodes["end"]["phase"] == "Succeeded"
    _on_the_node(stage, name)
    read = stage.read('task = run["flaky"].task\n'
                      'print(json.dumps({"successful": run.successful, '
                      '"attempt": task.current_attempt, "artifact": task.data.attempt}))',
                      f"RetryFlow/argo-{name}")
    assert read == {"successful": True, "attempt": 1, "artifact": 1}
    print(f"\nretry {name}: {[(n['displayName'], n['phase'], n.get('message')) for n in attempts]}")


# --- @timeout --------------------------------------------------------------------

def test_timeout_fails_a_step_that_runs_too_long(stage: Stage):
    wt = stage.template("timeout")
    slow = _step_template(wt, "slow")
    assert slow["activeDeadlineSeconds"] == 90
    # Every other step keeps Metaflow's default limit (5 days).
    assert _step_template(wt, "start")["activeDeadlineSeconds"] == 5 * 24 * 3600
    name = stage.runs["timeout"]
    pod = stage.step_pod(name, "slow", ("Running", "Failed"))
    # Argo passes the template's deadline on to the pod, where the kubelet enforces it.
    assert pod.spec.active_deadline_seconds is not None
    assert 0 < pod.spec.active_deadline_seconds <= 90
    wf = stage.finished(name)
    nodes = stage.nodes(wf)
    assert wf["status"]["phase"] == "Failed"
    killed = stage.cluster.core().read_namespaced_pod(pod.metadata.name, stage.ns)
    assert (killed.status.phase, killed.status.reason) == ("Failed", DEADLINE_REASON)
    # The step carries the kubelet's message: its wait container, stopped
    # with the pod's grace period as a kubelet stops it, reports the step.
    # (Killed at once, as the process kubelet once did, it never reported:
    # v4.0.7 then turned the node into Error "pod deleted", and v3.7.11 left
    # the run Running.)
    assert (nodes["slow"]["phase"], nodes["slow"]["message"]) == (
        "Failed", killed.status.message)
    assert not stage.logged('msg="Workflow pod is missing"', f"workflow={name}")
    # It was the step's code that ran too long: it had begun its sleep. The
    # pod's deadline counts from the pod's start, Metaflow's own @timeout
    # alarm (timeout_decorator.py, task_pre_step) from the task's, later:
    # the kubelet ends it first.
    log = stage.main_log(killed)
    assert "slow: sleeping past the timeout" in log, log[-3000:]
    assert "timed out after" not in log
    assert nodes["end"]["phase"] == "Omitted", nodes["end"]
    _on_the_node(stage, name)
    print(f"\ntimeout {name}: workflow {wf['status']['phase']} "
          f"({wf['status'].get('message')!r}); slow: {nodes['slow']['phase']} "
          f"({nodes['slow'].get('message')!r}); pod deadline "
          f"{pod.spec.active_deadline_seconds}s")


# --- nested foreach --------------------------------------------------------------

def test_nested_foreach_runs_to_its_end(stage: Stage):
    wt = stage.template("nested")
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
    wf = stage.finished(name, timeout=420)
    assert wf["status"]["phase"] == "Succeeded", (wf["status"].get("message"), stage.describe())
    pods = [n for n in wf["status"]["nodes"].values() if n["type"] == "Pod"]
    ran: dict[str, int] = {}
    for n in pods:
        step = n["displayName"].split("(")[0]
        ran[step] = ran.get(step, 0) + 1
    # 2 outer splits, 3 inner ones in each; each join once per level.
    assert {k: v for k, v in ran.items() if not k.startswith("onExit")} == {
        "start": 1, "per-outer": 2, "per-inner": 6, "join-inner": 2, "join-outer": 1,
        "end": 1}, ran
    assert {n["phase"] for n in pods} == {"Succeeded"}
    _on_the_node(stage, name)
    read = stage.read(
        'print(json.dumps({"successful": run.successful, '
        '"groups": sorted(run.data.groups), '
        '"items": sorted(t.data.item for t in run["per_inner"]), '
        '"steps": sorted(s.id for s in run)}))', f"NestedForeachFlow/argo-{name}")
    assert read == {"successful": True,
                    "groups": [["a1", "a2", "a3"], ["b1", "b2", "b3"]],
                    "items": ["a1", "a2", "a3", "b1", "b2", "b3"],
                    "steps": ["end", "join_inner", "join_outer", "per_inner", "per_outer",
                              "start"]}
    print(f"\nnested foreach {name}: {wf['status']['phase']}, {ran}")


# --- suspend, unsuspend, terminate as the data scientist -------------------------

def test_the_data_scientist_suspends_and_resumes_a_running_flow(stage: Stage):
    stage.template("hold")
    name = stage.runs["suspend"]
    stage.held(name)
    stage.recorded(name)
    done = stage.run("hold", "suspend", f"argo-{name}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Suspended execution of argo-{name}" in done.stdout + done.stderr
    assert stage.workflow(name)["spec"]["suspend"] is True
    # Suspending lets the running step finish but starts nothing after it.
    stage.hold.release(name)

    def hold_done() -> dict[str, Any] | None:
        wf = stage.workflow(name)
        return wf if stage.nodes(wf).get("hold", {}).get("phase") == "Succeeded" else None

    wf = stage.wait("hold to finish", hold_done)
    # The pass that records `hold` Succeeded is the one that would have
    # started `end`, in the same update: it reconciles the pods, then returns
    # if the workflow is suspended, before it runs the DAG on (argo v3.6.10
    # and v4.0.7 operator.go, operate: podReconciliation, ShouldSuspend).
    assert wf["status"]["phase"] == "Running"
    assert "end" not in stage.nodes(wf)
    again = stage.run("hold", "suspend", f"argo-{name}")
    assert again.returncode != 0
    assert "already been suspended" in again.stdout + again.stderr
    assert "end" not in stage.nodes(stage.workflow(name))

    done = stage.run("hold", "unsuspend", f"argo-{name}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Unsuspended execution of argo-{name}" in done.stdout + done.stderr
    wf = stage.finished(name)
    assert wf["status"]["phase"] == "Succeeded", (wf["status"].get("message"), stage.describe())
    assert stage.nodes(wf)["end"]["phase"] == "Succeeded"
    _on_the_node(stage, name)
    read = stage.read('print(json.dumps({"successful": run.successful, '
                      '"released": run["hold"].task.data.released}))', f"HoldFlow/argo-{name}")
    assert read == {"successful": True, "released": True}


def test_the_data_scientist_terminates_a_running_flow(stage: Stage):
    stage.template("hold")
    name = stage.runs["terminate"]
    pod = stage.held(name)
    stage.recorded(name)
    done = stage.run("hold", "terminate", f"argo-{name}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Run terminated." in done.stdout + done.stderr
    assert stage.workflow(name)["spec"]["shutdown"] == "Terminate"
    shutdown = "workflow shutdown with strategy:  Terminate"  # exec_control.go

    def hold_failed() -> dict[str, Any] | None:
        node = stage.nodes(stage.workflow(name)).get("hold", {})
        return node if node.get("phase") == "Failed" else None

    assert stage.wait("hold to be failed", hold_failed)["message"] == shutdown
    # The controller stops the step's containers through exec (`argoexec
    # kill`, signal.go SignalContainer, its error only logged), which the
    # process kubelet does not serve (no kubelet port).
    assert stage.logged('msg="Terminating pod as part of workflow shutdown"',
                        f"podName={pod.metadata.name}", "shutdownStrategy=Terminate")
    stage.wait("the controller to signal hold's main container", lambda: stage.logged(
        'msg="signaled container"', "container=main", f"pod={pod.metadata.name}",
        'error="error dialing backend'))
    # So `hold` runs on (v3.6.10 ends the run meanwhile, v4.0.7 waits for the
    # pod); released, it ends as the kill would have ended it.
    asked = stage.hold.asked(name)
    stage.wait(f"step hold of {name} to ask again", lambda: stage.hold.asked(name) > asked)
    stage.hold.release(name)
    stage.step_pod(name, "hold", ("Succeeded",))
    wf = stage.finished(name, timeout=120)
    nodes = stage.nodes(wf)
    assert wf["status"]["phase"] == "Failed"
    assert wf["status"]["message"] == "Stopped with strategy 'Terminate'"
    assert nodes["hold"]["message"] == shutdown
    # v3.6.10 keeps the step Failed by the shutdown. v4.0.7 waits for the pod
    # and may then take the step's own end (exit 0 once released) as its
    # phase, keeping the shutdown's message: both seen on the same code, it
    # depends on whether the controller reads the pod's end before it marks
    # the Workflow finished.
    if stage.argo_major < 4:
        assert nodes["hold"]["phase"] == "Failed", nodes["hold"]
    else:
        assert nodes["hold"]["phase"] in ("Failed", "Succeeded"), nodes["hold"]
    # The terminated run starts nothing after it: v3.6.10 records `end` as
    # Omitted, v4.0.7 (as observed; not traced in its source) not at all.
    if stage.argo_major < 4:
        assert nodes["end"]["phase"] == "Omitted", nodes["end"]
    else:
        assert "end" not in nodes, nodes["end"]
    assert not stage.step_pods(name, "end")
    print(f"\nterminate {name}: {wf['status']['phase']} ({wf['status']['message']!r}); "
          f"hold: {nodes['hold'].get('message')!r}; kubelet: "
          f"{[e for e in stage.kubelet.events if pod.metadata.name in e]}")
    # A second terminate is refused by Metaflow, not by the API server.
    again = stage.run("hold", "terminate", f"argo-{name}")
    assert again.returncode != 0
    assert "forbidden" not in (again.stdout + again.stderr).lower()
    assert "forbidden" not in stage.controller.log_text().lower()
