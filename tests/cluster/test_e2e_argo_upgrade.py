"""`mfhelm install` over a stack installed by the previous release of the
chart upgrades Argo Workflows in place (issue 21, point 3), tried on the
test cluster with the real controllers and executors of both releases and
flows a data scientist deployed with the real Metaflow.

Before: what chart 0.1.0 installed (argo-helm 0.45.20, Argo v3.6.10,
tools.toml [gobuild.argo-previous]): v3.6.10's minimal CRDs, its workflow
controller with the account, ConfigMap and Roles that release rendered
(the chart itself, rendered from the repository at the last commit that
pinned it, PREVIOUS_CHART_COMMIT). A data scientist (a client certificate
in the group the chart's data-scientist Role names) deploys with the
Metaflow config `mfhelm config` wrote before it turned on
METAFLOW_ARGO_WORKFLOWS_USE_SCHEDULES (commit c40988d), which is also what
a Metaflow older than 2.19.32 does with any config: `argo-workflows create`
of a @trigger
flow (a WorkflowTemplate and a Sensor: the object only, no Argo Events
controller runs), of HoldFlow, whose run they trigger and which stays
running through the upgrade (its `hold` step waits for the test's word),
and of a @schedule flow, whose CronWorkflow Metaflow writes with the
singular `schedule` Argo 4 removed.

The upgrade, in the order `mfhelm install` and Helm make it: the moves
(mfhelm.argo_upgrade.before_install, with this chart and the values mfhelm
gives it), then v4.0.7's minimal CRDs applied over the old ones and the
chart's Roles as chart 0.2.0 renders them, the old controller stopped and
the v4.0.7 one started with argo-helm 1.0.18's ConfigMap.

After: the held run, begun by v3.6.10 and carried on by v4.0.7, succeeds,
and the data scientist reads it with the Metaflow client; the @trigger
flow's WorkflowTemplate, triggered again, runs on v4.0.7; the CronWorkflow,
now `schedules`, fires on v4.0.7 and its run succeeds; the Sensor is
untouched. Every step runs for real on the taskworkers pool's process
kubelet (argo.taskworkers_on_process_kubelet): a pod keeps the executor
image it was made with, so the steps v3.6.10 started run its `argoexec`
and the later ones v4.0.7's.

Runtime: about 4.5 minutes on a 2-core host with another suite beside it,
mostly Metaflow's step start-up (some ten step pods).
"""

from __future__ import annotations

import re
import subprocess
import tarfile
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
from .flow_stage import ARGO, HoldServer, Stage, remove_flows
from .handle import Cluster

pytestmark = pytest.mark.cluster

GROUP = "ml-team"
RELEASE = "metaflow"
RELEASE_NS = "metaflow"  # the config's in-cluster metadata URL names it
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
SCHEDULE = "* * * * *"
# v4.0.7 workflow/validate/validate.go, for a CronWorkflow without schedules.
NO_SCHEDULE = "cron workflow must have at least one schedule"


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

FLOWS = {
    "trigger": ("event_triggered_flow.py", "eventtriggeredflow"),
    "hold": ("hold_flow.py", "holdflow"),
    "schedule": ("schedule_flow.py", "scheduleflow"),
}
# A Metaflow config profile without METAFLOW_ARGO_WORKFLOWS_USE_SCHEDULES.
PREVIOUS_PROFILE = "previous"


def previous_profile(mf: Any) -> dict[str, str]:
    """Write today's config without the schedules key, as `mfhelm config`
    wrote it before c40988d, as the profile PREVIOUS_PROFILE; return the
    environment that selects it. Metaflow then writes a CronWorkflow's cron
    into `schedule`, as every Metaflow before 2.19.32 does."""
    from mfhelm.metaflow_config import ARGO_SCHEDULES_KEY, write_config

    config = {k: v for k, v in mf.config.items() if k != ARGO_SCHEDULES_KEY}
    write_config(config, PREVIOUS_PROFILE, home=mf.config_file.parent)
    return {"METAFLOW_PROFILE": PREVIOUS_PROFILE}


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


def _cron_runs(custom: client.CustomObjectsApi, ns: str, cron: str) -> set[str]:
    items = custom.list_namespaced_custom_object(
        **ARGO, namespace=ns, plural="workflows",
        label_selector=f"workflows.argoproj.io/cron-workflow={cron}")["items"]
    return {w["metadata"]["name"] for w in items}


def _executor_images(stage: Stage, workflow: str) -> dict[str, set[str]]:
    """The Argo executor image of each Metaflow step's pods in a run."""
    images: dict[str, set[str]] = {}
    for pod in stage.pods(workflow):
        step = (pod.metadata.annotations or {}).get("metaflow/step_name")
        if step is None:
            continue
        images.setdefault(step, set()).update(
            c.image for c in [*(pod.spec.init_containers or []), *pod.spec.containers]
            if c.image.startswith(argo.EXECUTOR_IMAGE + ":"))
    return images


def _succeeded(stage: Stage, run: str) -> dict[str, Any]:
    done = stage.finished(run)
    assert done["status"]["phase"] == "Succeeded", (done["status"].get("message"),
                                                    stage.describe())
    return done


# --- the test -------------------------------------------------------------------------

def test_install_upgrades_argo_under_running_flows(cluster: Cluster, argo_build: argo.ArgoBuild,
                                                    previous_build: argo.ArgoBuild,
                                                    metaflow_runs: Any, metadata_service: Any,
                                                    tmp_path: Path):
    mf = metaflow_runs
    release_ns, flow_ns = RELEASE_NS, mf.flow_namespace
    prev, new = previous_build, argo_build
    assert (prev.version, new.version) == ("v3.6.10", "v4.0.7")
    for ns in (release_ns, flow_ns):
        cluster.create_namespace(ns)
    _events_crds(cluster)
    admin = client.CustomObjectsApi(cluster.api_client())
    cron = FLOWS["schedule"][1]

    # --- before: the previous release, as chart 0.1.0 installed it
    rendered = render_previous(previous_chart(tmp_path / "previous"), release_ns, flow_ns)
    argo.apply_crds(cluster, prev)
    previous_access = component(rendered, "flows", "data-scientists")
    applied = list(previous_access)
    try:
        for obj in previous_access:
            argo.apply(cluster, obj)
        cluster.wait_authorized(previous_access)
        alice = cluster.user_kubeconfig("alice", (GROUP,))
        with HoldServer() as hold, argo.taskworkers_on_process_kubelet(
                cluster, new, mf, metadata_service.url, also=(prev,)) as kubelet:
            with argo.run_controller(
                    cluster, prev, release_ns, flow_ns,
                    release_objects=previous_release_objects(rendered, release_ns)) as old:
                stage = Stage(cluster, mf, alice, old, kubelet, hold, admin, FLOWS,
                              env=previous_profile(mf))
                stage.create("trigger")
                stage.create("hold")
                the_sensor = stage.get("sensors", FLOWS["trigger"][1])
                held = stage.trigger("hold")
                stage.held(held)  # its `hold` step runs under v3.6.10
                # Last, so that few of its runs (one a minute) start before the upgrade.
                stage.create("schedule")
                spec = stage.get("cronworkflows", cron)["spec"]
                assert spec["schedule"] == SCHEDULE and "schedules" not in spec, spec

                # --- the upgrade: mfhelm install's moves, with the old controller still up
                lines: list[str] = []
                moved = argo_upgrade.before_install(
                    cluster.api_client(), ROOT / "charts" / "metaflow",
                    argo.chart_values(release_ns, flow_ns), release_ns, lines.append)
                assert [m.name for m in moved] == [cron]
                assert lines[0] == (f'moved CronWorkflow {flow_ns}/{cron} schedule '
                                    f'"{SCHEDULE}" to schedules (Argo 4 reads only schedules)')
                # The held run, and any run the cron started meanwhile.
                running = re.match(rf"(\d+) Argo workflows? still running in {flow_ns}: ",
                                   lines[1])
                assert running and int(running.group(1)) >= 1, lines
                assert len(lines) == 2, lines
                old.check()
                assert "forbidden" not in old.log_text().lower()
            # --- Helm: the new CRDs and Roles; the old controller is gone, the new one starts
            argo.apply_crds(cluster, new)
            applied += argo.apply_chart_objects(cluster, release_ns, flow_ns, GROUP)
            before_v4 = _cron_runs(admin, flow_ns, cron)
            with argo.run_controller(cluster, new, release_ns, flow_ns) as ctl:
                stage.controller = ctl
                # --- after: the held run goes on under v4.0.7
                hold.release(held)
                _succeeded(stage, held)
                images = _executor_images(stage, held)
                assert images == {"start": {prev.executor_image}, "hold": {prev.executor_image},
                                  "end": {new.executor_image}}, images
                assert stage.read(
                    'print(json.dumps({"successful": run.successful, '
                    '"released": run["hold"].task.data.released}))',
                    f"HoldFlow/argo-{held}") == {"successful": True, "released": True}

                # The WorkflowTemplate deployed under v3.6.10, triggered again.
                again = stage.trigger("trigger")
                _succeeded(stage, again)
                assert set().union(*_executor_images(stage, again).values()) == {
                    new.executor_image}
                assert stage.read('print(json.dumps(run["start"].task.data.rows))',
                                  f"EventTriggeredFlow/argo-{again}") == len("raw")

                # The moved CronWorkflow fires on v4.0.7 (at a next minute).
                def fired() -> str | None:
                    fresh = _cron_runs(admin, flow_ns, cron) - before_v4
                    return sorted(fresh)[0] if fresh else None

                run = stage.wait("the CronWorkflow to fire under v4.0.7", fired, timeout=150)
                admin.patch_namespaced_custom_object(**ARGO, namespace=flow_ns,
                                                     plural="cronworkflows", name=cron,
                                                     body={"spec": {"suspend": True}})
                _succeeded(stage, run)
                assert set().union(*_executor_images(stage, run).values()) == {
                    new.executor_image}
                assert stage.read('print(json.dumps(run.successful))',
                                  f"ScheduleFlow/argo-{run}") is True
                log = ctl.log_text()
        spec = stage.get("cronworkflows", cron)["spec"]
        assert spec["schedules"] == [SCHEDULE] and "schedule" not in spec
        assert NO_SCHEDULE not in log
        assert "forbidden" not in log.lower()
        after = stage.get("sensors", FLOWS["trigger"][1])
        assert after["metadata"]["resourceVersion"] == the_sensor["metadata"]["resourceVersion"]
        assert after["spec"] == the_sensor["spec"]
    finally:
        remove_flows(admin, flow_ns, {t for _, t in FLOWS.values()})
        seen = set()
        for obj in applied:  # a later `helm install` into these namespaces owns them
            key = (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
            if key not in seen:
                seen.add(key)
                argo.delete(cluster, obj)


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
