"""`mfhelm verify`'s orchestrator layers: Argo Workflows, Argo Events, Airflow.

Each check does what a data scientist does, with the user's Metaflow config
(`python flow.py argo-workflows create`, `trigger`, `airflow create`) on the
shipped flows, then looks at what the cluster did with it: the Workflow's
pods and their events, the Argo node's message, the Sensor's workload, the
DAG run's task states. A failure names what it saw and the likely fix.

Everything a check creates carries `mfhelm-verify` and a tag of this verify
run (its scratch directory), and its undo is registered before it is made.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mfhelm.verify.model import Check, Failed, Run, Stack

FLOWS_DIR = Path(__file__).resolve().parent / "flows"
FLOW_FILE, FLOW_CLASS = "mfhelm_verify_flow.py", "MfhelmVerifyFlow"
TRIGGER_FILE, TRIGGER_CLASS = "mfhelm_verify_trigger_flow.py", "MfhelmVerifyTriggerFlow"
EVENT = "mfhelm_verify"              # the trigger flow's @trigger(event=...)
LOG_LINE = "mfhelm-verify"           # the shipped flows print `mfhelm-verify <run-id>`
NAME_PREFIX = "mfhelm-verify"
ARGO = {"group": "argoproj.io", "version": "v1alpha1"}
POOL_LABEL, TASK_POOL = "mfhelm.io/pool", "taskworkers"
LOGS_CONTAINER = "airflow-logs"
# How long a flow pod may wait for a node before verify calls it stuck: an
# AKS pool scaled to zero gets a node in a few minutes, and the autoscaler
# says at once (TriggeredScaleUp) that it is getting one.
SCALE_UP_GRACE = 90.0
SENSOR_GRACE = 180.0
# An event published before the Sensor has subscribed is lost: publish a moment
# after its pod is up, and again if no run has started a while later.
SETTLE, REPUBLISH = 5.0, 60.0
POLL = 2.0


# --- names ----------------------------------------------------------------------------

def tag(run: Run) -> str:
    """Eight hex digits naming this verify run's objects (from its scratch directory)."""
    return hashlib.sha256(str(run.workdir).encode()).hexdigest()[:8]


def template_name(run: Run) -> str:
    return f"{NAME_PREFIX}-{tag(run)}"


def trigger_template_name(run: Run) -> str:
    return f"{NAME_PREFIX}-trigger-{tag(run)}"


def dag_id(run: Run) -> str:
    return f"{NAME_PREFIX}-{tag(run)}"


# --- running Metaflow as the user -------------------------------------------------------

def _left(run: Run) -> float:
    return run.deadline - time.monotonic()


def flow_path(run: Run, name: str) -> Path:
    """The shipped flow in the run's directory (copied there if not yet)."""
    target = run.workdir / name
    if not target.exists():
        run.workdir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FLOWS_DIR / name, target)
    return target


def metaflow(stack: Stack, run: Run, flow: str, *args: str, what: str
             ) -> subprocess.CompletedProcess[str]:
    """`python <flow> --no-pylint <args>` in the run's directory, as the user would."""
    from mfhelm.verify.checks_core import run_metaflow

    argv = [sys.executable, str(flow_path(run, flow)), "--no-pylint", *args]
    done: subprocess.CompletedProcess[str] = run_metaflow(stack, run, argv, what)
    return done


def python(stack: Stack, run: Run, code: str, *args: str, what: str
           ) -> subprocess.CompletedProcess[str]:
    from mfhelm.verify.checks_core import run_metaflow

    done: subprocess.CompletedProcess[str] = run_metaflow(
        stack, run, [sys.executable, "-c", code, *args], what)
    return done


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " ".join(lines[-1].split())[:300] if lines else "no output"


# "<kind> "<name>" is forbidden: User "alice" cannot create resource "sensors" in API
# group "argoproj.io" in the namespace "flows"" (the API server's 403 message).
_FORBIDDEN = re.compile(
    r'(?:User|ServiceAccount)? ?"(?P<who>[^"]+)" cannot (?P<verb>[a-z]+) resource '
    r'"(?P<resource>[^"]+)"(?: in API group "(?P<group>[^"]*)")?'
    r'(?: in the namespace "(?P<ns>[^"]+)")?')


def forbidden(text: str) -> dict[str, str] | None:
    m = _FORBIDDEN.search(text)
    return {k: v or "" for k, v in m.groupdict().items()} if m else None


def metaflow_failure(what: str, done: subprocess.CompletedProcess[str], stack: Stack
                     ) -> Failed:
    """Why a Metaflow command failed, and what to do."""
    out = done.stdout + "\n" + done.stderr
    refused = forbidden(out)
    if refused:
        group = f"{refused['group']}/" if refused["group"] else ""
        where = refused["ns"] or stack.flow_namespace
        return Failed(
            f"{what}: 403, {refused['who']} cannot {refused['verb']} "
            f"{group}{refused['resource']} in {where}",
            f"the data-scientist Role in {stack.flow_namespace} does not bind "
            f"{refused['who']}: `mfhelm grant --group <their group>` (or dataScientists in "
            "the values), then `mfhelm install`")
    if "Unauthorized" in out:
        return Failed(f"{what}: 401 from the API server",
                      "sign in to the cluster again (`az aks get-credentials`, kubelogin)")
    if "Metadata service" in out or "METAFLOW_SERVICE_URL" in out:
        return Failed(f"{what}: {_last_line(out)}",
                      "the metadata service is not reachable from here: "
                      "run `mfhelm port-forward` or check METAFLOW_SERVICE_URL")
    return Failed(f"{what} exited {done.returncode}: {_last_line(out)}",
                  "run it by hand in the verify directory (--keep) to see the whole output")


# --- the cluster -----------------------------------------------------------------------

def _custom(run: Run) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(run.api)


def _core(run: Run) -> Any:
    from kubernetes import client

    return client.CoreV1Api(run.api)


def _ignore_missing(call: Any, *args: Any, **kwargs: Any) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        call(*args, **kwargs)
    except ApiException as exc:
        if exc.status != 404:
            raise


def _delete_argo(run: Run, ns: str, plural: str, name: str) -> None:
    _ignore_missing(_custom(run).delete_namespaced_custom_object, **ARGO, namespace=ns,
                    plural=plural, name=name)


def workflows_of(run: Run, ns: str, template: str) -> list[dict[str, Any]]:
    items = _custom(run).list_namespaced_custom_object(**ARGO, namespace=ns,
                                                       plural="workflows")["items"]
    return [w for w in items
            if (w.get("spec", {}).get("workflowTemplateRef") or {}).get("name") == template]


def _delete_workflows(run: Run, ns: str, template: str) -> None:
    """The runs verify started. The data-scientist Role may not delete
    Workflows (runs are shared history), so as a data scientist they stay,
    and the line says who can remove them."""
    from kubernetes.client.exceptions import ApiException

    from mfhelm.errors import MfhelmError

    names = [wf["metadata"]["name"] for wf in workflows_of(run, ns, template)]
    for i, name in enumerate(names):
        try:
            _delete_argo(run, ns, "workflows", name)
        except ApiException as exc:
            if exc.status != 403:
                raise
            left = " ".join(names[i:])
            raise MfhelmError(f"you may not delete Workflows in {ns} (the data-scientist Role "
                              f"does not), so verify's runs stay: {left}; someone with the "
                              f"right removes them with `kubectl delete workflows -n {ns} "
                              f"{left}`") from None


def _undo_template(stack: Stack, run: Run, name: str, *, sensor: bool = False) -> None:
    ns = stack.flow_namespace
    run.on_cleanup(f"Workflows of {name}", lambda: _delete_workflows(run, ns, name))
    if sensor:
        run.on_cleanup(f"Sensor {name}",
                       lambda: _delete_argo(run, ns, "sensors", name.replace(".", "-")))
    run.on_cleanup(f"WorkflowTemplate {name}",
                   lambda: _delete_argo(run, ns, "workflowtemplates", name))


def _create_template(stack: Stack, run: Run, flow: str, name: str) -> str:
    done = metaflow(stack, run, flow, "argo-workflows", "--name", name, "create",
                    what="argo-workflows create")
    if done.returncode != 0:
        raise metaflow_failure("argo-workflows create", done, stack)
    from kubernetes.client.exceptions import ApiException

    try:
        _custom(run).get_namespaced_custom_object(**ARGO, namespace=stack.flow_namespace,
                                                  plural="workflowtemplates", name=name)
    except ApiException as exc:
        if exc.status != 404:
            raise
        configured = stack.config.get("METAFLOW_KUBERNETES_NAMESPACE", "")
        raise Failed(
            f"argo-workflows create succeeded but WorkflowTemplate {name} is not in "
            f"{stack.flow_namespace} (the config names {configured or 'no namespace'})",
            "write the config again with `mfhelm config`") from None
    return name


# --- argo create -------------------------------------------------------------------------

def argo_create(stack: Stack, run: Run) -> str:
    name = template_name(run)
    _undo_template(stack, run, name)
    _create_template(stack, run, FLOW_FILE, name)
    return f"WorkflowTemplate {name} in {stack.flow_namespace}"


# --- argo run ------------------------------------------------------------------------------

def _events_of(run: Run, ns: str, pod: str) -> list[Any]:
    return list(_core(run).list_namespaced_event(
        ns, field_selector=f"involvedObject.kind=Pod,involvedObject.name={pod}").items)


def pending_problem(pod: Any, events: list[Any], now: float, created: float,
                    grace: float | None = None) -> Failed | None:
    """A flow pod that will not get a node: the scheduler's reason and the fix.
    Waiting is fine while the autoscaler is adding a node (TriggeredScaleUp)."""
    from mfhelm import kube

    problem = kube._container_problem(pod)
    name = pod.metadata.name
    if problem and any(w in problem for w in ("ErrImagePull", "ImagePullBackOff",
                                              "InvalidImageName")):
        return Failed(f"flow pod {name} {problem}",
                      "the nodes cannot pull the flow image: check its name in the "
                      "Metaflow config and that the cluster may pull from its registry")
    if pod.status.phase != "Pending" or pod.spec.node_name:
        return None
    reasons = {e.reason: e for e in events}
    unschedulable = reasons.get("FailedScheduling")
    if unschedulable is None:
        return None
    said = kube._scheduler_text(unschedulable.message or "")
    fix = ("no taskworkers node can take it; check the vCPU quota with `mfhelm doctor` "
           "and the taskworkers pool (cordoned, scaled to its maximum?)")
    if "NotTriggerScaleUp" in reasons:
        why = kube._scheduler_text(reasons["NotTriggerScaleUp"].message or "")
        return Failed(f"flow pod {name} Pending: {said}; the autoscaler: {why}", fix)
    if "TriggeredScaleUp" in reasons or now - created < (grace or SCALE_UP_GRACE):
        return None
    return Failed(f"flow pod {name} Pending for {now - created:.0f}s: {said}", fix)


def node_failure(wf: dict[str, Any], stack: Stack) -> Failed:
    """A failed Workflow: the first failed node's message, and what it means."""
    name = wf["metadata"]["name"]
    nodes = list((wf.get("status") or {}).get("nodes", {}).values())
    bad = [n for n in nodes if n.get("phase") in ("Failed", "Error") and n.get("message")
           and n.get("type") in ("Pod", "Retry")]
    bad = bad or [n for n in nodes if n.get("phase") in ("Failed", "Error") and n.get("message")]
    if bad:
        # A step before Metaflow's hooks (its error-capture hook fails with the
        # same refusal in the same second).
        node = sorted(bad, key=lambda n: ("hook" in str(n.get("displayName")),
                                          n.get("startedAt") or ""))[0]
        message = " ".join(str(node["message"]).split())[:300]
        saw = f"Argo workflow {name}: {node.get('displayName')} {node['phase']}: {message}"
    else:
        message = str((wf.get("status") or {}).get("message") or "")
        saw = f"Argo workflow {name} {wf['status'].get('phase')}" + (
            f": {message}" if message else "")
    ns = stack.flow_namespace
    fix = pod_refusal_fix(message, ns, "the Argo controller") or (
        f"see the step's log: `kubectl -n {ns} logs -l "
        f"workflows.argoproj.io/workflow={name} -c main`")
    return Failed(saw, fix)


def pod_refusal_fix(message: str, ns: str, who: str) -> str | None:
    """The fix for a flow pod the API server refused to create, if that is what it says."""
    low = message.lower()
    if "serviceaccount" in low and "not found" in low:
        return f"the flows ServiceAccount is missing in {ns}; `mfhelm install` makes it again"
    if "forbidden" in low:
        return f"{who} lacks its Role in {ns}; `mfhelm install` makes it again"
    return None


def _workflow_pods(run: Run, ns: str, name: str) -> list[Any]:
    return list(_core(run).list_namespaced_pod(
        ns, label_selector=f"workflows.argoproj.io/workflow={name}").items)


def wait_workflow(stack: Stack, run: Run, name: str) -> dict[str, Any]:
    """The Workflow once it has Succeeded; Failed with the reason otherwise."""
    ns = stack.flow_namespace
    first_seen: dict[str, float] = {}
    phase = "unknown"
    while True:
        wf = _custom(run).get_namespaced_custom_object(**ARGO, namespace=ns,
                                                        plural="workflows", name=name)
        phase = (wf.get("status") or {}).get("phase") or "Pending"
        if phase == "Succeeded":
            return dict(wf)
        if phase in ("Failed", "Error"):
            raise node_failure(wf, stack)
        now = time.monotonic()
        for pod in _workflow_pods(run, ns, name):
            created = first_seen.setdefault(pod.metadata.name, now)
            problem = pending_problem(pod, _events_of(run, ns, pod.metadata.name), now, created)
            if problem:
                raise problem
        if now > run.deadline:
            raise Failed(f"Argo workflow {name} still {phase} at the deadline",
                         f"see `kubectl -n {ns} get pods -l "
                         f"workflows.argoproj.io/workflow={name}`; or give it more --timeout")
        time.sleep(POLL)


def check_placement(stack: Stack, run: Run, name: str) -> list[str]:
    """The step pods (not Argo's exit hook) ran on the taskworkers pool; their nodes."""
    from kubernetes.client.exceptions import ApiException

    nodes = []
    for pod in _workflow_pods(run, stack.flow_namespace, name):
        node_name = (pod.metadata.annotations or {}).get("workflows.argoproj.io/node-name", "")
        if ".onExit" in node_name or node_name.split(".")[-1].startswith("onExit"):
            continue
        selector = (pod.spec.node_selector or {}).get(POOL_LABEL)
        pool = selector
        try:
            node = _core(run).read_node(pod.spec.node_name)
            pool = (node.metadata.labels or {}).get(POOL_LABEL)
        except ApiException as exc:  # a data scientist may not read nodes
            if exc.status not in (403, 404):
                raise
        if pool != TASK_POOL:
            raise Failed(f"step pod {pod.metadata.name} ran on {pod.spec.node_name} "
                         f"(pool {pool or 'none'}), not on the taskworkers pool",
                         "the flows' node selector and toleration come from the Metaflow "
                         "config (METAFLOW_KUBERNETES_NODE_SELECTOR, _TOLERATIONS): "
                         "write it again with `mfhelm config`")
        nodes.append(pod.spec.node_name)
    if not nodes:
        raise Failed(f"Argo workflow {name} succeeded without a step pod",
                     "the WorkflowTemplate is not Metaflow's; create it again")
    return sorted(set(nodes))


READ_BACK = """
import json, sys
from metaflow import Run, namespace
namespace(None)
out = {}
try:
    run = Run(sys.argv[1])
    out["answer"] = run.data.answer if run.data is not None and "answer" in run.data else None
    logs = []
    for step in run:
        for task in step:
            logs.append(task.stdout or "")
    out["stdout"] = "\\n".join(logs)
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def read_back(stack: Stack, run: Run, pathspec: str) -> str:
    """The run's artifact `answer` and its log line, read with Metaflow's Client API
    (the metadata service for the run, Blob for the artifact and the logs)."""
    done = python(stack, run, READ_BACK, pathspec, what="reading the run back")
    try:
        got = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise Failed(f"reading {pathspec} back failed: {_last_line(done.stderr)}",
                     "check the Metaflow config with `mfhelm config`") from None
    error = str(got.get("error") or "")
    if error:
        if "AuthorizationPermissionMismatch" in error or "403" in error:
            raise Failed(f"403 from Blob reading {pathspec}: {error[:200]}",
                         "your identity has no Storage Blob Data Reader/Contributor on the "
                         "Metaflow container")
        raise Failed(f"{pathspec}: {error[:300]}",
                     "its steps did not record it: see the step pods' logs "
                     "(metadata service unreachable from the flow pods? Blob refused?)")
    if got.get("answer") != 42:
        raise Failed(f"{pathspec}: artifact answer is {got.get('answer')!r}, not 42",
                     "the steps did not store their artifacts: see the step pods' logs")
    run_id = pathspec.split("/")[1]
    if f"{LOG_LINE} {run_id}" not in got.get("stdout", ""):
        raise Failed(f"{pathspec}: its task logs do not have `{LOG_LINE} {run_id}`",
                     "the step pods' logs did not reach Blob (mflog): check the flows "
                     "account's access to the Metaflow container")
    return "answer=42, log read"


def argo_run(stack: Stack, run: Run) -> str:
    name = template_name(run)
    run_id_file = run.workdir / f"{name}.run-id"
    # `trigger` makes one Workflow of the template; argo create registered their undo.
    done = metaflow(stack, run, FLOW_FILE, "argo-workflows", "--name", name, "trigger",
                    "--run-id-file", str(run_id_file), what="argo-workflows trigger")
    if done.returncode != 0:
        raise metaflow_failure("argo-workflows trigger", done, stack)
    run_id = run_id_file.read_text().strip() if run_id_file.exists() else ""
    if not run_id.startswith("argo-"):
        raise Failed(f"argo-workflows trigger wrote no run id: {_last_line(done.stderr)}",
                     "run it by hand in the verify directory (--keep) to see the whole output")
    workflow = run_id.removeprefix("argo-")
    wait_workflow(stack, run, workflow)
    nodes = check_placement(stack, run, workflow)
    detail = read_back(stack, run, f"{FLOW_CLASS}/{run_id}")
    return f"{run_id} on {', '.join(nodes)}; {detail}"


# --- argo events --------------------------------------------------------------------------

def _sensor_workload(stack: Stack, run: Run, sensor: str) -> tuple[Any, list[Any]]:
    from kubernetes import client

    selector = f"sensor-name={sensor}"
    apps = client.AppsV1Api(run.api)
    deployments = apps.list_namespaced_deployment(stack.flow_namespace,
                                                  label_selector=selector).items
    pods = _core(run).list_namespaced_pod(stack.flow_namespace, label_selector=selector).items
    return (deployments[0] if deployments else None), list(pods)


def wait_sensor(stack: Stack, run: Run, sensor: str) -> None:
    """The Sensor's pod is up: an event published before it subscribes is not seen."""
    from mfhelm import kube

    ns = stack.flow_namespace
    started = time.monotonic()
    while True:
        deployment, pods = _sensor_workload(stack, run, sensor)
        if deployment is not None and (deployment.status.available_replicas or 0) >= 1:
            return
        now = time.monotonic()
        for pod in pods:
            problem = pending_problem(pod, _events_of(run, ns, pod.metadata.name), now, started)
            if problem:
                raise Failed(f"Sensor {sensor}: {problem.saw}", problem.fix)
        if now - started > SENSOR_GRACE or now > run.deadline:
            if deployment is None:
                saw = f"Sensor {sensor} has no workload after {now - started:.0f}s"
                fix = ("the Argo Events controller does not run or does not watch "
                       f"{ns}: see `mfhelm status`")
            else:
                why = kube.pod_reason(_core(run), pods[0]) if pods else "no pod"
                saw = f"Sensor {sensor} not ready after {now - started:.0f}s: {why}"
                fix = f"see `kubectl -n {ns} describe pods -l sensor-name={sensor}`"
            raise Failed(saw, fix)
        time.sleep(POLL)


PUBLISH = """
import json, sys
from metaflow.integrations import ArgoEvent
ArgoEvent(sys.argv[1]).publish(json.loads(sys.argv[2]), ignore_errors=False)
"""


def webhook_url(stack: Stack, run: Run) -> str:
    from mfhelm.verify.core import metaflow_env

    env = metaflow_env(stack, run)
    return env.get("METAFLOW_ARGO_EVENTS_WEBHOOK_URL") or stack.config.get(
        "METAFLOW_ARGO_EVENTS_WEBHOOK_URL", "")


def publish(stack: Stack, run: Run, payload: dict[str, Any]) -> None:
    """Metaflow's own ArgoEvent, as a data scientist publishes from a laptop."""
    done = python(stack, run, PUBLISH, EVENT, json.dumps(payload), what="publishing the event")
    if done.returncode != 0:
        url = webhook_url(stack, run)
        said = _last_line(done.stderr).removeprefix("metaflow.plugins.argo.argo_events."
                                                    "ArgoEventException: ")
        raise Failed(f"the webhook {url} did not take the event: {said}",
                     "the events webhook is not reachable: from a laptop run `mfhelm "
                     "port-forward`; in the cluster see `kubectl -n "
                     f"{stack.flow_namespace} get pods -l eventsource-name` and `mfhelm status`")


def argo_events(stack: Stack, run: Run) -> str:
    name = trigger_template_name(run)
    _undo_template(stack, run, name, sensor=True)
    _create_template(stack, run, TRIGGER_FILE, name)
    sensor = name.replace(".", "-")
    wait_sensor(stack, run, sensor)
    before = {w["metadata"]["name"] for w in workflows_of(run, stack.flow_namespace, name)}
    # A Sensor takes events from the bus once it has subscribed, a moment after
    # its pod is up (no readiness tells when): an event that came first is not
    # seen, so it is published again until a run starts.
    time.sleep(SETTLE)
    waited = time.monotonic()
    published = 0
    while True:
        if time.monotonic() >= waited + published * REPUBLISH:
            publish(stack, run, {"mfhelm_verify": tag(run)})
            published += 1
        started = [w for w in workflows_of(run, stack.flow_namespace, name)
                   if w["metadata"]["name"] not in before]
        if started:
            return f"argo-{started[0]['metadata']['name']} started by event {EVENT}"
        if time.monotonic() > min(run.deadline, waited + SENSOR_GRACE):
            raise Failed(
                f"the webhook took event {EVENT} ({published}x) but Sensor {sensor} started "
                f"no run in {time.monotonic() - waited:.0f}s",
                f"see the Sensor's log: `kubectl -n {stack.flow_namespace} logs -l "
                f"sensor-name={sensor}` (event bus down? the sensors account's Role?)")
        time.sleep(POLL)


# --- airflow -------------------------------------------------------------------------------

def _scheduler(stack: Stack, run: Run) -> Any:
    from mfhelm import dags

    return dags.find_dag_target(run.api, stack.target.namespace, stack.target.release)


def airflow_exec(stack: Stack, run: Run, argv: list[str], what: str) -> tuple[int, str, str]:
    from mfhelm import kube

    target = _scheduler(stack, run)
    result = kube.exec_in_pod(run.api, stack.target.namespace, target.pod, target.container,
                              argv, timeout=max(10.0, min(300.0, _left(run))))
    return (result.returncode, result.stdout.decode(errors="replace"),
            result.stderr.decode(errors="replace"))


def _remove_dag(stack: Stack, run: Run, name: str) -> None:
    from mfhelm import dags
    from mfhelm.errors import MfhelmError

    try:
        dags.remove_dag(run.api, stack.target.namespace, stack.target.release, name)
    except MfhelmError as exc:
        if "is not in the DAG folder" not in str(exc):
            raise


# Airflow's own code in the scheduler pod: the DAG loaded into its database
# (what the DAG processor does on its next pass), unpaused, one run triggered.
AIRFLOW_TRIGGER = """
import sys
from airflow.api.common.trigger_dag import trigger_dag
from airflow.models.dag import DagModel
from airflow.models.dagbag import DagBag
from airflow.utils.session import create_session
folder, dag_id, run_id = sys.argv[1:4]
bag = DagBag(dag_folder=folder + "/" + dag_id + ".py", include_examples=False)
if bag.import_errors:
    sys.exit("import error: " + str(list(bag.import_errors.values())[0]).strip().splitlines()[-1])
bag.sync_to_db()
with create_session() as session:
    session.query(DagModel).filter(DagModel.dag_id == dag_id).update({"is_paused": False})
trigger_dag(dag_id, run_id=run_id)
print("triggered", run_id)
"""

AIRFLOW_STATE = """
import json, sys
from airflow.models import DagRun, TaskInstance
from airflow.utils.session import create_session
dag_id, run_id = sys.argv[1:3]
with create_session() as session:
    run = session.query(DagRun).filter_by(dag_id=dag_id, run_id=run_id).one()
    tasks = {ti.task_id: ti.state for ti in session.query(TaskInstance)
             .filter_by(dag_id=dag_id, run_id=run_id)}
print(json.dumps({"state": run.state, "tasks": tasks}))
"""

# The task's log as the UI shows it (TaskLogReader), from the remote handler.
AIRFLOW_LOG = """
import sys
from airflow.models import TaskInstance
from airflow.models.dagbag import DagBag
from airflow.utils.log.log_reader import TaskLogReader
from airflow.utils.session import create_session
dag_id, run_id, task_id = sys.argv[1:4]
dag = DagBag(read_dags_from_db=True).get_dag(dag_id)
with create_session() as session:
    ti = session.query(TaskInstance).filter_by(
        dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=-1).one()
    ti.task = dag.get_task(task_id)
    chunks, _ = TaskLogReader().read_log_chunks(ti, ti.try_number, {})
for host, text in chunks[0]:
    print(text)
"""


def task_log(stack: Stack, run: Run, dag: str, run_id: str, task: str) -> str:
    code, out, err = airflow_exec(stack, run, ["python", "-c", AIRFLOW_LOG, dag, run_id, task],
                                  "reading the task log")
    if code != 0:
        raise Failed(f"reading the log of {dag}/{run_id}/{task} failed: {_last_line(err)}",
                     "see `mfhelm status` for the scheduler")
    return out


# The API server's reason in a task log: the Kubernetes client logs the
# response body ({"kind":"Status",...,"message":"pods \"x\" is forbidden: ..."}).
_STATUS_MESSAGE = re.compile(r'"message":\s*"((?:[^"\\]|\\.)*)"', re.ASCII)


def log_reason(log: str) -> str:
    """What a failed task's log says went wrong, in one line."""
    for line in reversed(log.splitlines()):
        m = _STATUS_MESSAGE.search(line)
        if m and ("HTTP response body" in line or '"kind":"Status"' in line):
            return " ".join(json.loads(f'"{m.group(1)}"').split())[:300]
    for line in reversed(log.splitlines()):
        if " ERROR - " in line or "Exception" in line or "Error:" in line:
            return " ".join(line.split(" ERROR - ")[-1].split())[:300]
    return ""


def dag_failure(dag: str, run_id: str, tasks: dict[str, str | None], log: str,
                flow_ns: str) -> Failed:
    failed = sorted(t for t, s in tasks.items() if s in ("failed", "upstream_failed"))
    first = next((t for t in failed if tasks[t] == "failed"), failed[0] if failed else "")
    states = ", ".join(f"{t} {s}" for t, s in sorted(tasks.items()))
    said = log_reason(log)
    fix = pod_refusal_fix(said, flow_ns, "the Airflow scheduler's account") or (
        f"read task {first}'s log in the Airflow UI; a step pod that cannot start is "
        f"shown by `kubectl -n {flow_ns} get events`")
    return Failed(f"DAG run {dag}/{run_id} failed ({states})" + (f": {said}" if said else ""),
                  fix)


def airflow_run(stack: Stack, run: Run) -> str:
    from mfhelm import dags
    from mfhelm.errors import MfhelmError

    dag = dag_id(run)
    dag_file = run.workdir / f"{dag}.py"
    done = metaflow(stack, run, FLOW_FILE, "airflow", "--name", dag, "create", str(dag_file),
                    what="airflow create")
    if done.returncode != 0:
        raise metaflow_failure("airflow create", done, stack)
    run.on_cleanup(f"DAG file {dag_file.name}", lambda: _remove_dag(stack, run, dag_file.name))
    try:
        target, _ = dags.push(run.api, stack.target.namespace, stack.target.release, dag_file)
    except MfhelmError as exc:
        raise Failed(f"mfhelm dag-push: {exc}", "see `mfhelm status` for the scheduler") from None
    run_id = f"{NAME_PREFIX}-{tag(run)}"
    code, out, err = airflow_exec(stack, run, ["python", "-c", AIRFLOW_TRIGGER, target.folder,
                                               dag, run_id], "triggering the DAG")
    if code != 0:
        raise Failed(f"triggering DAG {dag} failed: {_last_line(err)}",
                     "the DAG loads in the scheduler but Airflow refused it; see the "
                     "scheduler's log")
    while True:
        code, out, err = airflow_exec(stack, run, ["python", "-c", AIRFLOW_STATE, dag, run_id],
                                      "reading the DAG run")
        if code != 0:
            raise Failed(f"reading DAG run {dag}/{run_id} failed: {_last_line(err)}",
                         "see `mfhelm status` for the scheduler")
        try:
            state = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise Failed(f"reading DAG run {dag}/{run_id}: no answer from the scheduler pod "
                         f"({_last_line(err)})", "see `mfhelm status` for the scheduler") from None
        if state["state"] == "success":
            break
        if state["state"] == "failed":
            failed = [t for t, s in state["tasks"].items() if s == "failed"]
            log = task_log(stack, run, dag, run_id, failed[0]) if failed else ""
            raise dag_failure(dag, run_id, state["tasks"], log, stack.flow_namespace)
        if time.monotonic() > run.deadline:
            raise Failed(f"DAG run {dag}/{run_id} still {state['state']} at the deadline "
                         f"({state['tasks']})",
                         "is the scheduler running its tasks? see `mfhelm status`")
        time.sleep(POLL)
    log = task_log(stack, run, dag, run_id, "start")
    if "Found remote logs" not in log or f"{LOGS_CONTAINER}." not in log:
        raise Failed(f"the log of {dag}/{run_id}/start is not in the {LOGS_CONTAINER} "
                     f"container: {_last_line(log)}",
                     "remote logging is off or cannot write: check the scheduler's wasb "
                     "connection (`mfhelm status`) and its identity's access to "
                     f"{LOGS_CONTAINER}")
    return f"{dag}/{run_id} success; start's log read from {LOGS_CONTAINER}"


# --- argo schedules --------------------------------------------------------------------------

def unscheduled(cronworkflows: list[dict[str, Any]]) -> list[str]:
    """The names of the CronWorkflows Argo 4 never starts: those without a
    non-empty `schedules` (an older Metaflow writes only `schedule`, which
    Argo 4 removed; its controller says "cron workflow must have at least
    one schedule" in its log and nowhere a data scientist looks)."""
    return sorted(obj["metadata"]["name"] for obj in cronworkflows
                  if not (obj.get("spec") or {}).get("schedules"))


def argo_schedules(stack: Stack, run: Run) -> str:
    """Every @schedule flow in the flow namespace will fire, and this
    machine's Metaflow and config deploy new ones so that they do."""
    from mfhelm import metaflow_config as mc

    ns = stack.flow_namespace
    items = _custom(run).list_namespaced_custom_object(
        **ARGO, namespace=ns, plural="cronworkflows")["items"]
    left = unscheduled(items)
    if left:
        more = f" and {len(left) - 5} more" if len(left) > 5 else ""
        count, verb, them = (("1 CronWorkflow", "has", "it") if len(left) == 1 else
                             (f"{len(left)} CronWorkflows", "have", "them"))
        raise Failed(
            f"{count} in {ns} {verb} no schedules, so Argo never starts {them}: "
            f"{', '.join(left[:5])}{more}",
            "`mfhelm install` moves a CronWorkflow's `schedule` to `schedules`; or "
            "deploy the flow again with metaflow>=2.19.32 and the config `mfhelm "
            "config` writes (`python flow.py argo-workflows create`)")
    if stack.config.get(mc.ARGO_SCHEDULES_KEY) != "true":
        raise Failed(
            f"{stack.config_file} lacks {mc.ARGO_SCHEDULES_KEY}=true, so Metaflow "
            "deploys @schedule flows with `schedule`, which Argo 4 never starts",
            "run `mfhelm config` again")
    installed = mc.installed_metaflow()
    if mc.schedules_note(stack.config, installed):
        since = ".".join(map(str, mc.SCHEDULES_SINCE))
        raise Failed(
            f"metaflow {installed} here ignores {mc.ARGO_SCHEDULES_KEY} and deploys "
            "@schedule flows with `schedule`, which Argo 4 never starts",
            f"pip install 'metaflow>={since}'")
    if not items:
        return f"no CronWorkflows in {ns}; new ones will have schedules"
    count = "1 CronWorkflow" if len(items) == 1 else f"{len(items)} CronWorkflows"
    return f"{count} in {ns}, each with schedules"


CHECKS: list[Check] = [
    Check("argo create", lambda s: s.argo, argo_create),
    Check("argo run", lambda s: s.argo, argo_run),
    Check("argo events", lambda s: s.argo and s.argo_events, argo_events),
    Check("argo schedules", lambda s: s.argo, argo_schedules),
    Check("airflow run", lambda s: s.airflow, airflow_run),
]
