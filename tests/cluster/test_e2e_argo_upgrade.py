"""`mfhelm install` over a stack installed by the previous release of the
chart upgrades Argo Workflows in place (issue 21, point 3), tried on the
test cluster with the real controllers and executors of both releases.

Before: what chart 0.1.0 installed (argo-helm 0.45.20, Argo v3.6.10,
tools.toml [gobuild.argo-previous]): v3.6.10's minimal CRDs, its workflow
controller with the account, ConfigMap and Roles that release rendered
(the chart itself, rendered from the repository at the last commit that
pinned it, PREVIOUS_CHART_COMMIT), and a data scientist (a client
certificate in the group the chart's data-scientist Role names) who has
deployed, the way Metaflow does before METAFLOW_ARGO_WORKFLOWS_USE_SCHEDULES:
a WorkflowTemplate, a CronWorkflow with `schedule: "* * * * *"`, a Sensor
(the object only: no Argo Events controller runs), and a Workflow whose
step waits for a file the test creates, so that it is running throughout
the upgrade.

The upgrade, in the order `mfhelm install` and Helm make it: the moves
(mfhelm.argo_upgrade.before_install, with this chart and the values mfhelm
gives it), then v4.0.7's minimal CRDs applied over the old ones and the
chart's Roles as chart 0.2.0 renders them, the old controller stopped and
the v4.0.7 one started with argo-helm 1.0.18's ConfigMap.

After: the held step is released and its Workflow, begun by v3.6.10 and
carried on by v4.0.7, succeeds with the output its v3.6.10 executor
reported; the WorkflowTemplate, submitted again, runs on v4.0.7; the
CronWorkflow, now `schedules`, fires on v4.0.7 and its Workflow succeeds;
the Sensor is untouched. Every step runs for real on the process kubelet
(process_kubelet.py): pods keep the executor image they were made with,
so the held pod runs v3.6.10's `argoexec` and the later ones v4.0.7's.
"""

from __future__ import annotations

import re
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from mfhelm import argo_upgrade

from . import argo
from .controlplane import ROOT, ToolchainMissing, _installer
from .handle import Cluster

pytestmark = pytest.mark.cluster

ARGO = {"group": "argoproj.io", "version": "v1alpha1"}
GROUP = "ml-team"
RELEASE = "metaflow"
# The last commit whose chart is 0.1.0 with argo-helm 0.45.20 (Argo v3.6.10):
# main before the v4.0.7 pin was merged.
PREVIOUS_CHART_COMMIT = "4216920d674e6146c3110988f3890aa9bd168b09"
PREVIOUS_CHART = ("0.1.0", "0.45.20")
# argo-helm 0.45.20's controller ConfigMap for our values (templates/
# controller/workflow-controller-config-map.yaml with its values.yaml
# defaults: only nodeEvents and workflowEvents render; failedPodRestart came
# with 1.0), the metrics port as argo.py sets it.
PREVIOUS_CONFIG = """\
nodeEvents:
  enabled: true
workflowEvents:
  enabled: true
"""
LABEL = ("mfhelm.io/test-kubelet", "upgrade")
SCHEDULE = "* * * * *"
# v4.0.7 workflow/validate/validate.go, for a CronWorkflow without schedules.
NO_SCHEDULE = "cron workflow must have at least one schedule"
FINAL = ("Succeeded", "Failed", "Error")


# --- the previous release's objects -------------------------------------------------

def previous_chart(dest: Path) -> Path:
    """charts/metaflow at PREVIOUS_CHART_COMMIT, without its subcharts (their
    archives are not in the repository; the objects used here are ours)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", PREVIOUS_CHART_COMMIT,
         "charts/metaflow"], capture_output=True)
    if archive.returncode != 0:
        pytest.fail(f"the upgrade test renders the previous chart from the repository's "
                    f"history ({PREVIOUS_CHART_COMMIT}), which this clone lacks (fetch the "
                    f"full history): {archive.stderr.decode(errors='replace').strip()}")
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    chart = dest / "charts" / "metaflow"
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    deps = {d["name"]: d["version"] for d in meta["dependencies"]}
    assert (meta["version"], deps["argo-workflows"]) == PREVIOUS_CHART
    del meta["dependencies"]
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return chart


def render_previous(chart: Path, release_ns: str, flow_ns: str) -> list[dict[str, Any]]:
    """The previous chart's objects for the local profile and this release."""
    from chartlib import helm

    values = {**argo.chart_values(release_ns, flow_ns), "dataScientists": {"groups": [GROUP]}}
    extra = chart.parent / "upgrade-values.yaml"
    extra.write_text(yaml.safe_dump(values))
    out = subprocess.run(
        [helm() or "helm", "template", RELEASE, str(chart), "--namespace", release_ns,
         "-f", str(chart / "ci" / "local-values.yaml"), "-f", str(extra)],
        capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def component(objs: list[dict[str, Any]], *names: str) -> list[dict[str, Any]]:
    return [o for o in objs
            if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component") in names]


def previous_release_objects(rendered: list[dict[str, Any]], release_ns: str
                             ) -> Callable[[int], list[dict[str, Any]]]:
    """argo.run_controller's release_objects for the previous release: the
    controller's account and argo-helm 0.45.20's ConfigMap, and the previous
    chart's Argo Roles."""
    def objects(metrics_port: int) -> list[dict[str, Any]]:
        account, configmap, *upstream = argo.controller_objects(RELEASE, release_ns,
                                                                metrics_port)
        config = PREVIOUS_CONFIG + f"metricsConfig:\n  port: {metrics_port}\n"
        return [account, {**configmap, "data": {"config": config}}, *upstream,
                *component(rendered, "argo")]
    return objects


# --- what the data scientist deploys --------------------------------------------------

def _placed(spec: dict[str, Any]) -> dict[str, Any]:
    """A workflow spec run as the flows' account on the process node."""
    key, value = LABEL
    return {"serviceAccountName": "metaflow-flows", "nodeSelector": {key: value},
            "tolerations": [{"key": key, "operator": "Equal", "value": value,
                             "effect": "NoSchedule"}], **spec}


def _step(name: str, script: str) -> dict[str, Any]:
    """A template whose container runs `script` and reports /mnt/out/said as
    its output parameter `said` (only a real executor reports it, and since
    Argo 3.7 the step waits for it)."""
    return {"name": name,
            "container": {"image": "busybox", "command": ["sh", "-c"],
                          "args": [f"mkdir -p /mnt/out && {script}"],
                          "volumeMounts": [{"name": "out", "mountPath": "/mnt/out"}]},
            "volumes": [{"name": "out", "emptyDir": {}}],
            "outputs": {"parameters": [{"name": "said",
                                        "valueFrom": {"path": "/mnt/out/said"}}]}}


def workflow_template(name: str) -> dict[str, Any]:
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate",
            "metadata": {"name": name},
            "spec": _placed({"entrypoint": "main",
                             "templates": [_step("main", "echo template > /mnt/out/said")]})}


def cron_workflow(name: str) -> dict[str, Any]:
    """Written the v3 way, as Metaflow wrote `@schedule` flows before
    METAFLOW_ARGO_WORKFLOWS_USE_SCHEDULES."""
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "CronWorkflow",
            "metadata": {"name": name},
            "spec": {"schedule": SCHEDULE, "concurrencyPolicy": "Allow",
                     "workflowSpec": _placed({
                         "entrypoint": "main",
                         "templates": [_step("main", "echo cron > /mnt/out/said")]})}}


def held_workflow(name: str, hold: Path) -> dict[str, Any]:
    """A Workflow whose step runs until the file `release` appears in the
    host directory `hold` (at most 300 s, then it fails), so that it is
    running while the controller is replaced. The directory reaches the step
    as a hostPath volume: the process kubelet's containers have a /tmp of
    their own."""
    wait = ("i=0; while [ ! -e /mnt/hold/release ]; do i=$((i+1)); "
            "[ $i -gt 1500 ] && exit 9; sleep 0.2; done; echo held > /mnt/out/said")
    step = _step("main", wait)
    step["container"]["volumeMounts"].append({"name": "hold", "mountPath": "/mnt/hold"})
    step["volumes"].append({"name": "hold", "hostPath": {"path": str(hold),
                                                         "type": "Directory"}})
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
            "metadata": {"name": name},
            "spec": _placed({"entrypoint": "main", "templates": [step]})}


def sensor(name: str, template: str) -> dict[str, Any]:
    """Shaped as Metaflow writes one for @trigger: a dependency on an event
    and a trigger that creates a Workflow from the WorkflowTemplate."""
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Sensor",
            "metadata": {"name": name},
            "spec": {"template": {"serviceAccountName": "metaflow-sensors"},
                     "dependencies": [{"name": "data-ready",
                                       "eventSourceName": "argo-events-webhook",
                                       "eventName": "metaflow-event"}],
                     "triggers": [{"template": {"name": template, "k8s": {
                         "operation": "create",
                         "source": {"resource": {
                             "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
                             "metadata": {"generateName": f"{template}-"},
                             "spec": {"workflowTemplateRef": {"name": template}}}}}}}]}}


def submitted(name: str, template: str) -> dict[str, Any]:
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
            "metadata": {"name": name}, "spec": {"workflowTemplateRef": {"name": template}}}


# --- fixtures and helpers -----------------------------------------------------------

@pytest.fixture
def previous_build(cluster: Cluster, argo_build: argo.ArgoBuild) -> Iterator[argo.ArgoBuild]:
    """The previous release's build, its CRDs applied in place of the
    current ones; the current ones are back afterwards whatever happened (the
    session's other tests expect them)."""
    if cluster.backend != "controlplane":
        pytest.skip("a node of its own and a user certificate need the local control plane")
    if not cluster.exec_mounts:
        pytest.skip("the process kubelet needs mount namespaces (unshare --mount, as root)")
    try:
        build = argo.ensure_argo_previous()
    except ToolchainMissing as exc:
        pytest.skip(reason=str(exc))
    try:
        yield build
    finally:
        argo.apply_crds(cluster, argo_build)


def _events_crds(cluster: Cluster) -> None:
    """Argo Events' CRDs, so that a Sensor can be stored (they stay for the
    session, as test_e2e_argo_events leaves them)."""
    from .test_e2e_argo_events import ensure_events

    try:
        build = ensure_events()
    except ToolchainMissing as exc:
        pytest.skip(reason=str(exc))
    names = []
    for path in build.crd_files():
        doc = yaml.safe_load(path.read_text())
        argo.apply(cluster, doc)
        names.append(doc["metadata"]["name"])
    ext = client.ApiextensionsV1Api(cluster.api_client())
    cluster.wait_for(lambda: all(
        any(c.type == "Established" and c.status == "True"
            for c in ext.read_custom_resource_definition(n).status.conditions or [])
        for n in names), 60, "Argo Events' CRDs to be established")


def _create(custom: client.CustomObjectsApi, ns: str, plural: str,
            body: dict[str, Any]) -> dict[str, Any]:
    return dict(custom.create_namespaced_custom_object(**ARGO, namespace=ns, plural=plural,
                                                       body=body))


def _get(custom: client.CustomObjectsApi, ns: str, plural: str, name: str) -> dict[str, Any]:
    return dict(custom.get_namespaced_custom_object(**ARGO, namespace=ns, plural=plural,
                                                    name=name))


def _cron_runs(custom: client.CustomObjectsApi, ns: str, cron: str) -> dict[str, dict[str, Any]]:
    items = custom.list_namespaced_custom_object(
        **ARGO, namespace=ns, plural="workflows",
        label_selector=f"workflows.argoproj.io/cron-workflow={cron}")["items"]
    return {w["metadata"]["name"]: w for w in items}


def _said(wf: dict[str, Any]) -> list[str]:
    return [p["value"] for n in (wf["status"].get("nodes") or {}).values()
            if n["type"] == "Pod" for p in (n.get("outputs") or {}).get("parameters") or []]


def _executor_images(cluster: Cluster, ns: str, workflow: str) -> set[str]:
    pods = cluster.core().list_namespaced_pod(
        ns, label_selector=f"workflows.argoproj.io/workflow={workflow}").items
    assert pods, f"no pods of {workflow}"
    return {c.image for p in pods for c in [*(p.spec.init_containers or []), *p.spec.containers]
            if c.image.startswith(argo.EXECUTOR_IMAGE + ":")}


# --- the test -------------------------------------------------------------------------

def test_install_upgrades_argo_under_running_flows(cluster: Cluster, argo_build: argo.ArgoBuild,
                                                    previous_build: argo.ArgoBuild,
                                                    release_namespaces: tuple[str, str],
                                                    tmp_path: Path):
    from mfhelm import kube

    release_ns, flow_ns = release_namespaces
    prev, new = previous_build, argo_build
    assert (prev.version, new.version) == ("v3.6.10", "v4.0.7")
    _events_crds(cluster)
    suffix = uuid.uuid4().hex[:6]
    names = {k: f"{k}-{suffix}" for k in ("template", "nightly", "trigger", "held", "again")}
    hold = tmp_path / "hold"
    hold.mkdir()

    # --- before: the previous release, as chart 0.1.0 installed it
    rendered = render_previous(previous_chart(tmp_path / "previous"), release_ns, flow_ns)
    argo.apply_crds(cluster, prev)
    previous_access = component(rendered, "flows", "data-scientists")
    for obj in previous_access:
        argo.apply(cluster, obj)
    cluster.wait_authorized(previous_access)
    alice = client.CustomObjectsApi(kube.api_client(
        str(cluster.user_kubeconfig("alice", (GROUP,)))))
    admin = client.CustomObjectsApi(cluster.api_client())

    key, value = LABEL
    kubelet = argo.process_kubelet(
        cluster, new, f"upgrade-{suffix}", labels={key: value},
        taints=[{"key": key, "value": value, "effect": "NoSchedule"}], also=(prev,))
    with kubelet:
        with argo.run_controller(
                cluster, prev, release_ns, flow_ns,
                release_objects=previous_release_objects(rendered, release_ns)) as old:
            _create(alice, flow_ns, "workflowtemplates", workflow_template(names["template"]))
            _create(alice, flow_ns, "cronworkflows", cron_workflow(names["nightly"]))
            the_sensor = _create(alice, flow_ns, "sensors",
                                 sensor(names["trigger"], names["template"]))
            _create(alice, flow_ns, "workflows", held_workflow(names["held"], hold))

            def held_running() -> dict[str, Any] | None:
                old.check()
                kubelet.check()
                wf = _get(admin, flow_ns, "workflows", names["held"])
                if (wf.get("status") or {}).get("phase") in FINAL:
                    return wf  # too early: fails below
                pods = cluster.core().list_namespaced_pod(
                    flow_ns, label_selector=f"workflows.argoproj.io/workflow={names['held']}")
                return wf if any(p.status.phase == "Running" for p in pods.items) else None

            wf = cluster.wait_for(held_running, 90, "the held step to run under v3.6.10")
            assert wf["status"]["phase"] == "Running", (wf["status"], kubelet.events)
            assert _executor_images(cluster, flow_ns, names["held"]) == {prev.executor_image}

            # --- the upgrade: mfhelm install's moves, with the old controller still up
            lines: list[str] = []
            values = argo.chart_values(release_ns, flow_ns)
            moved = argo_upgrade.before_install(cluster.api_client(), ROOT / "charts" / "metaflow",
                                                values, release_ns, lines.append)
            assert [m.name for m in moved] == [names["nightly"]]
            assert lines[0] == (f'moved CronWorkflow {flow_ns}/{names["nightly"]} schedule '
                                f'"{SCHEDULE}" to schedules (Argo 4 reads only schedules)')
            # The held one, and any run the cron made meanwhile and not finished.
            running = re.match(rf"(\d+) Argo workflows? still running in {flow_ns}: ",
                               lines[1])
            assert running and int(running.group(1)) >= 1, lines
            assert len(lines) == 2, lines
            old.check()
            assert "forbidden" not in old.log_text().lower()
        # --- Helm: the new CRDs and Roles; the old controller is gone, the new one starts
        argo.apply_crds(cluster, new)
        access = argo.apply_chart_objects(cluster, release_ns, flow_ns, GROUP)
        assert access
        before_v4 = set(_cron_runs(admin, flow_ns, names["nightly"]))
        with argo.run_controller(cluster, new, release_ns, flow_ns) as ctl:
            started = time.monotonic()
            # --- after: the held step goes on under v4.0.7
            (hold / "release").write_text("go\n")

            def finished(name: str) -> Any:
                def check() -> dict[str, Any] | None:
                    ctl.check()
                    kubelet.check()
                    wf = _get(admin, flow_ns, "workflows", name)
                    return wf if (wf.get("status") or {}).get("phase") in FINAL else None
                return check

            held = cluster.wait_for(finished(names["held"]), 90, "the held workflow to finish")
            assert held["status"]["phase"] == "Succeeded", (held["status"].get("message"),
                                                            kubelet.events)
            assert _said(held) == ["held"]
            assert _executor_images(cluster, flow_ns, names["held"]) == {prev.executor_image}

            # The WorkflowTemplate the data scientist deployed under v3.6.10 runs on v4.0.7.
            _create(alice, flow_ns, "workflows", submitted(names["again"], names["template"]))
            again = cluster.wait_for(finished(names["again"]), 90,
                                     "the template's workflow to finish")
            assert again["status"]["phase"] == "Succeeded", again["status"].get("message")
            assert _said(again) == ["template"]
            assert _executor_images(cluster, flow_ns, names["again"]) == {new.executor_image}

            # The moved CronWorkflow fires on v4.0.7 (at the next minute).
            def fired() -> str | None:
                ctl.check()
                fresh = set(_cron_runs(admin, flow_ns, names["nightly"])) - before_v4
                return sorted(fresh)[0] if fresh else None

            run = cluster.wait_for(fired, 75, "the CronWorkflow to fire under v4.0.7")
            cron_run = cluster.wait_for(finished(run), 90, "the CronWorkflow's run to finish")
            assert cron_run["status"]["phase"] == "Succeeded", cron_run["status"].get("message")
            assert _said(cron_run) == ["cron"]
            assert _executor_images(cluster, flow_ns, run) == {new.executor_image}
            log = ctl.log_text()
            took = time.monotonic() - started

    cron = _get(admin, flow_ns, "cronworkflows", names["nightly"])
    assert cron["spec"]["schedules"] == [SCHEDULE] and "schedule" not in cron["spec"]
    assert NO_SCHEDULE not in log
    assert "forbidden" not in log.lower()
    after = _get(admin, flow_ns, "sensors", names["trigger"])
    assert after["metadata"]["resourceVersion"] == the_sensor["metadata"]["resourceVersion"]
    assert after["spec"] == the_sensor["spec"]
    print(f"\nafter the upgrade: held {held['status']['phase']}, template "
          f"{again['status']['phase']}, cron run {run} {cron_run['status']['phase']} "
          f"within {took:.0f}s of v4.0.7's start")


def test_previous_chart_is_the_release_before_the_pin(tmp_path: Path) -> None:
    """PREVIOUS_CHART_COMMIT holds chart 0.1.0 on argo-helm 0.45.20, and
    tools.toml's [gobuild.argo-previous] is that chart's appVersion."""
    chart = previous_chart(tmp_path)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    assert meta["version"] == PREVIOUS_CHART[0]
    entry = _installer().load_manifest()["gobuild"]["argo-previous"]
    assert entry["version"] == "v3.6.10"  # argo-helm 0.45.20's appVersion
    # What the upgrade changes in the Roles it renders, so the test's
    # "before" is really the old chart's: at home v3.6.10's controller only
    # read its ConfigMap; v4.0.7's watches it too.
    name = argo.configmap_name(RELEASE)

    def home_verbs(objs: list[dict[str, Any]]) -> list[list[str]]:
        return [rule["verbs"] for o in component(objs, "argo")
                if o["kind"] == "Role" and o["metadata"]["namespace"] == "upg"
                and o["metadata"]["name"] == f"{RELEASE}-argo-workflow-controller-home"
                for rule in o["rules"] if name in rule.get("resourceNames", [])]

    assert home_verbs(render_previous(chart, "upg", "upg-flows")) == [["get"]]
    assert home_verbs(argo.chart_objects(RELEASE, "upg", "upg-flows", "argo")) == [
        ["get", "watch"]]
