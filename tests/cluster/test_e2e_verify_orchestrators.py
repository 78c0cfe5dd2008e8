"""`mfhelm verify`'s orchestrator checks (mfhelm/verify/checks_orchestrators.py)
against the real parts: Argo's workflow controller (argo.py), Argo Events'
controller (test_e2e_argo_events.py), real Metaflow with the config `mfhelm
config` writes, Azurite over HTTPS and the Entra-shaped token endpoint
(metaflow_env.py). Each check function is called directly with a Stack and a
Run built here (the runner, mfhelm/verify/core.py, is another part's).

What stands in, and why:
- the metadata service is `metaflow-local-service` (PyPI; Netflix's service
  is on no registry), taught to keep the run id an Argo run registers
  (metaflow_env.start_metadata_service);
- the taskworkers pool is one node played by the process kubelet
  (argo.taskworkers_on_process_kubelet, KWOK's node cordoned meanwhile): the
  step pods of `argo run` really run (Argo's executor, the Metaflow step with
  what AKS adds to its pod), so the check passes end to end: the Workflow
  Succeeds, the steps are on the taskworkers pool, and the read-back finds
  the artifact and the log line the steps stored. The cases that never get a
  step running (the taskworkers node cordoned, the flows account missing)
  stay on KWOK's nodes. The read-back's refusal of a run the service does
  not know is shown on a run Metaflow ran on this host with the same config;
- the Argo Events webhook, bus and Sensor do not run (their pods are KWOK's):
  `argo events` is shown failing with the webhook down; its way to a started
  run is test_e2e_argo_events.py's delivery test.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from mfhelm.errors import MfhelmError
from mfhelm.stack import Target
from mfhelm.verify import checks_orchestrators as orch
from mfhelm.verify.model import Failed, Run, Stack

from . import argo
from . import metaflow_env as mfenv
from .handle import Cluster

pytestmark = pytest.mark.cluster

RELEASE_NS = "metaflow"     # the config's in-cluster URLs name it
GROUP = "ml-team"


# --- the stack ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory, azurite_https: mfenv.Azurite,
         entra_endpoint: mfenv.FakeEntra, metadata_service: mfenv.MetadataService,
         stack_outputs: dict[str, Any]) -> mfenv.MetaflowEnv:
    """The data scientist's machine: `mfhelm config`'s file, the metadata
    service a port-forward would give (conftest's, which the step pods on the
    process kubelet reach too), Blob on Azurite."""
    from mfhelm.settings import parse

    settings = parse({"org_prefix": "acme", "location": "westeurope"})
    return mfenv.build_metaflow_env(
        tmp_path_factory.mktemp("verify-user"), azurite=azurite_https, entra=entra_endpoint,
        metadata=mfenv.FakeMetadata(url=metadata_service.url), outputs=stack_outputs,
        settings=settings)


@pytest.fixture
def as_user(user: mfenv.MetaflowEnv, monkeypatch: pytest.MonkeyPatch) -> mfenv.MetaflowEnv:
    """The process environment is the user's shell (verify runs in it)."""
    for key in list(os.environ):
        if key not in user.env:
            monkeypatch.delenv(key)
    for key, value in user.env.items():
        monkeypatch.setenv(key, value)
    return user


def _chart_objects(cluster: Cluster, flow_ns: str, *components: str,
                   extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    from .test_e2e_argo_events import apply, render_chart

    objs = [o for o in render_chart("metaflow", RELEASE_NS, flow_ns,
                                    {"dataScientists": {"groups": [GROUP]}, **(extra or {})})
            if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component")
            in components]
    for obj in objs:
        apply(cluster, obj)
    return objs


@pytest.fixture
def release(cluster: Cluster, user: mfenv.MetaflowEnv) -> Iterator[str]:
    """The release's flows account and data-scientist Role in the flow namespace."""
    if cluster.backend != "controlplane":
        pytest.skip("needs the local control plane's CA to issue a user certificate "
                    "(kind keeps its CA inside its node)")
    from .test_e2e_argo_events import delete_objects

    flow_ns = user.flow_namespace
    for ns in (RELEASE_NS, flow_ns):
        cluster.create_namespace(ns)
    objs = _chart_objects(cluster, flow_ns, "flows", "data-scientists")
    yield flow_ns
    delete_objects(cluster, objs)


def make_stack(user: mfenv.MetaflowEnv, kubeconfig: Path, *, events: bool = False) -> Stack:
    return Stack(target=Target("metaflow", RELEASE_NS, kubeconfig=str(kubeconfig)),
                 profile="local", flow_namespace=user.flow_namespace,
                 chart_app_version="test", argo=True, argo_events=events, airflow=False,
                 config=user.config, config_file=user.config_file)


@contextlib.contextmanager
def verify_run(cluster: Cluster, tmp_path: Path, timeout: float = 600) -> Iterator[Run]:
    """A Run as the runner makes one; its cleanups run at the end (as without --keep)."""
    run = Run(workdir=tmp_path / f"verify-{uuid.uuid4().hex[:6]}",
              deadline=time.monotonic() + timeout, api=cluster.api_client())
    run.workdir.mkdir(parents=True)
    try:
        yield run
    finally:
        for _what, undo in reversed(run.cleanups):
            undo()


def _templates(cluster: Cluster, ns: str) -> list[str]:
    items = client.CustomObjectsApi(cluster.api_client()).list_namespaced_custom_object(
        **orch.ARGO, namespace=ns, plural="workflowtemplates")["items"]
    return [t["metadata"]["name"] for t in items]


# --- argo create -------------------------------------------------------------------------

def test_argo_create_lands_the_template_in_the_flow_namespace_and_cleans_up(
        cluster: Cluster, argo_build: argo.ArgoBuild, release: str, as_user, tmp_path: Path):
    alice = cluster.user_kubeconfig("alice", (GROUP,))
    stack = make_stack(as_user, alice)
    with verify_run(cluster, tmp_path) as run:
        detail = orch.argo_create(stack, run)
        name = orch.template_name(run)
        assert name.startswith("mfhelm-verify-")
        assert detail == f"WorkflowTemplate {name} in {release}"
        assert name in _templates(cluster, release)
        # The undo was registered before the template was made.
        assert [w for w, _ in run.cleanups] == [f"Workflows of {name}",
                                                f"WorkflowTemplate {name}"]
    assert name not in _templates(cluster, release)


def test_argo_create_without_the_data_scientist_role_fails_with_the_403(
        cluster: Cluster, argo_build: argo.ArgoBuild, release: str, as_user, tmp_path: Path):
    bob = cluster.user_kubeconfig("bob", ("another-team",))  # no Role binds this group
    stack = make_stack(as_user, bob)
    with verify_run(cluster, tmp_path) as run, pytest.raises(Failed) as failed:
        orch.argo_create(stack, run)
    saw, fix = failed.value.saw, failed.value.fix
    print(f"\nargo create as bob: {failed.value}")
    assert saw.startswith("argo-workflows create: 403, bob cannot "), saw
    assert "argoproj.io/workflowtemplates" in saw and release in saw, saw
    assert "data-scientist Role" in fix and "mfhelm grant" in fix, fix


# --- argo run ------------------------------------------------------------------------------

@pytest.fixture
def controller(cluster: Cluster, argo_build: argo.ArgoBuild, release: str
               ) -> Iterator[argo.ArgoController]:
    with argo.run_controller(cluster, argo_build, RELEASE_NS, release) as ctl:
        yield ctl


def test_argo_run_passes_end_to_end_on_taskworkers_with_the_read_back(
        cluster: Cluster, argo_build: argo.ArgoBuild, controller: argo.ArgoController,
        release: str, as_user, metadata_service: mfenv.MetadataService, tmp_path: Path):
    alice = cluster.user_kubeconfig("alice", (GROUP,))
    stack = make_stack(as_user, alice)
    with verify_run(cluster, tmp_path) as run:
        orch.argo_create(stack, run)
        with argo.taskworkers_on_process_kubelet(cluster, argo_build, as_user,
                                                 metadata_service.url) as kubelet:
            try:
                detail = orch.argo_run(stack, run)
            except Failed:
                print("\n".join(kubelet.logs(release, d.name, "main")[-1500:]
                                for d in sorted((kubelet.workdir / release).glob("*"))))
                raise
        name = orch.template_name(run)
        [wf] = orch.workflows_of(run, release, name)
        workflow = wf["metadata"]["name"]
        # The real controller ran the flow to its end, each step for real on
        # the taskworkers pool's node; the steps stored the artifact and the
        # log line the read-back found.
        print(f"\nargo run: {detail}")
        assert detail == f"argo-{workflow} on {kubelet.name}; answer=42, log read"
        assert wf["status"]["phase"] == "Succeeded", wf["status"]
        nodes = {n["displayName"]: n["phase"] for n in wf["status"]["nodes"].values()
                 if n["type"] == "Pod"}
        assert nodes == {"start": "Succeeded", "end": "Succeeded"}, nodes
        # As alice (the data-scientist Role: no delete on Workflows) the run
        # stays, and the cleanup's line names it and who can remove it.
        from kubernetes import config as kube_config

        as_alice = Run(workdir=run.workdir, deadline=run.deadline,
                       api=kube_config.new_client_from_config(config_file=str(alice)))
        with pytest.raises(MfhelmError) as refused:
            orch._delete_workflows(as_alice, release, name)
        assert str(refused.value).startswith(
            f"you may not delete Workflows in {release} (the data-scientist Role does not), "
            f"so verify's runs stay: {workflow}; "), refused.value
        assert orch.workflows_of(run, release, name) != []
    assert orch.workflows_of(run, release, name) == []
    assert name not in _templates(cluster, release)


def test_read_back_reads_the_artifact_and_log_of_a_run_metaflow_ran(
        cluster: Cluster, as_user, tmp_path: Path, azurite_https: mfenv.Azurite):
    """The read-back on a run Metaflow ran on this host with the same config
    (service, Blob over HTTPS with the Entra token), and its refusal of a run
    the service does not know."""
    stack = make_stack(as_user, cluster.kubeconfig)
    with verify_run(cluster, tmp_path) as run:
        done = orch.metaflow(stack, run, orch.FLOW_FILE, "run", what="a local run")
        assert done.returncode == 0, done.stderr[-3000:]
        run_id = next(line.split()[-1] for line in (done.stdout + done.stderr).splitlines()
                      if " mfhelm-verify " in f" {line}")
        assert orch.read_back(stack, run, f"MfhelmVerifyFlow/{run_id}") == "answer=42, log read"
        # A run the service does not know fails with what was looked for.
        with pytest.raises(Failed) as failed:
            orch.read_back(stack, run, "MfhelmVerifyFlow/argo-nosuchrun")
        assert failed.value.saw.startswith("MfhelmVerifyFlow/argo-nosuchrun: "), failed.value
    container, _ = as_user.sysroot
    assert any("/MfhelmVerifyFlow/" in b for b in azurite_https.blob_names(container))


# --- argo schedules ------------------------------------------------------------------------

def test_argo_schedules_names_what_argo_never_starts_and_what_would_deploy_it(
        cluster: Cluster, argo_build: argo.ArgoBuild, release: str, as_user, tmp_path: Path,
        metaflow_seen_as):
    """As alice (the data-scientist Role): a CronWorkflow with only `schedule`
    (what Metaflow before 2.19.32 writes) fails the check by name; once it is
    gone the check passes; then a config without the schedules key, and a
    Metaflow too old to read it, fail with their fixes."""
    import dataclasses

    from kubernetes import config as kube_config

    from mfhelm.metaflow_config import ARGO_SCHEDULES_KEY

    admin = client.CustomObjectsApi(cluster.api_client())
    alice = cluster.user_kubeconfig("alice", (GROUP,))
    stack = make_stack(as_user, alice)
    assert stack.config[ARGO_SCHEDULES_KEY] == "true"  # as `mfhelm config` writes it
    crons = {"nightly": {"schedules": ["0 2 * * *"]}, "old-nightly": {"schedule": "0 3 * * *"}}
    for name, fields in crons.items():
        admin.create_namespaced_custom_object(
            "argoproj.io", "v1alpha1", release, "cronworkflows",
            {"apiVersion": "argoproj.io/v1alpha1", "kind": "CronWorkflow",
             "metadata": {"name": name},
             "spec": {**fields, "workflowSpec": {"workflowTemplateRef": {"name": name}}}})
    try:
        with verify_run(cluster, tmp_path) as run:
            run.api = kube_config.new_client_from_config(str(alice))
            with pytest.raises(Failed) as failed:
                orch.argo_schedules(stack, run)
            assert failed.value.saw == (f"1 CronWorkflow in {release} has no schedules, "
                                        "so Argo never starts it: old-nightly")
            assert "`mfhelm install` moves" in failed.value.fix, failed.value.fix
            admin.delete_namespaced_custom_object("argoproj.io", "v1alpha1", release,
                                                  "cronworkflows", "old-nightly")
            assert orch.argo_schedules(stack, run) == (
                f"1 CronWorkflow in {release}, each with schedules")
            admin.delete_namespaced_custom_object("argoproj.io", "v1alpha1", release,
                                                  "cronworkflows", "nightly")
            assert orch.argo_schedules(stack, run) == (
                f"no CronWorkflows in {release}; new ones will have schedules")

            stale = dataclasses.replace(stack, config={
                k: v for k, v in stack.config.items() if k != ARGO_SCHEDULES_KEY})
            with pytest.raises(Failed) as failed:
                orch.argo_schedules(stale, run)
            assert failed.value.saw == (
                f"{stack.config_file} lacks {ARGO_SCHEDULES_KEY}=true, so Metaflow deploys "
                "@schedule flows with `schedule`, which Argo 4 never starts")
            assert failed.value.fix == "run `mfhelm config` again"

            metaflow_seen_as("2.19.31")
            with pytest.raises(Failed) as failed:
                orch.argo_schedules(stack, run)
            assert failed.value.saw.startswith(
                f"metaflow 2.19.31 here ignores {ARGO_SCHEDULES_KEY}"), failed.value.saw
            assert failed.value.fix == "pip install 'metaflow>=2.19.32'"
    finally:
        for name in crons:
            try:
                admin.delete_namespaced_custom_object("argoproj.io", "v1alpha1", release,
                                                      "cronworkflows", name)
            except ApiException as exc:
                if exc.status != 404:
                    raise


@contextlib.contextmanager
def cordoned(cluster: Cluster, node: str) -> Iterator[None]:
    core = cluster.core()
    core.patch_node(node, {"spec": {"unschedulable": True}})
    try:
        yield
    finally:
        core.patch_node(node, {"spec": {"unschedulable": None}})


def test_argo_run_with_the_taskworkers_node_cordoned_names_the_scheduler_and_quota(
        cluster: Cluster, controller: argo.ArgoController, release: str, as_user,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # No autoscaler here to say TriggeredScaleUp or not: the grace runs out.
    monkeypatch.setattr(orch, "SCALE_UP_GRACE", 15.0)
    alice = cluster.user_kubeconfig("alice", (GROUP,))
    stack = make_stack(as_user, alice)
    with verify_run(cluster, tmp_path) as run:
        orch.argo_create(stack, run)
        with cordoned(cluster, cluster.nodes["taskworkers"]), pytest.raises(Failed) as failed:
            orch.argo_run(stack, run)
    saw, fix = failed.value.saw, failed.value.fix
    print(f"\nargo run, taskworkers cordoned: {failed.value}")
    assert saw.startswith("flow pod mfhelm-verify-"), saw
    assert "Pending for" in saw and "nodes are available" in saw, saw
    assert "unschedulable" in saw, saw
    assert fix.startswith("no taskworkers node can take it; check the vCPU quota with "
                          "`mfhelm doctor`"), fix


@contextlib.contextmanager
def without_account(cluster: Cluster, ns: str, account: str) -> Iterator[None]:
    """The release's flows ServiceAccount deleted while inside, put back after."""
    core = cluster.core()
    kept = core.read_namespaced_service_account(account, ns)
    core.delete_namespaced_service_account(account, ns)
    try:
        yield
    finally:
        core.create_namespaced_service_account(ns, client.V1ServiceAccount(
            metadata=client.V1ObjectMeta(name=account, labels=kept.metadata.labels,
                                         annotations=kept.metadata.annotations)))


def test_argo_run_without_the_flows_account_reports_the_argo_node_message(
        cluster: Cluster, controller: argo.ArgoController, release: str, as_user,
        tmp_path: Path):
    alice = cluster.user_kubeconfig("alice", (GROUP,))
    stack = make_stack(as_user, alice)
    account = as_user.config["METAFLOW_KUBERNETES_SERVICE_ACCOUNT"]
    with verify_run(cluster, tmp_path) as run:
        orch.argo_create(stack, run)
        with without_account(cluster, release, account), pytest.raises(Failed) as failed:
            orch.argo_run(stack, run)
    saw, fix = failed.value.saw, failed.value.fix
    print(f"\nargo run without {account}: {failed.value}")
    assert saw.startswith("Argo workflow mfhelm-verify-"), saw
    assert ": start Error: " in saw and f'serviceaccount "{account}" not found' in saw, saw
    assert fix == (f"the flows ServiceAccount is missing in {release}; "
                   "`mfhelm install` makes it again"), fix


# --- argo events -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def events_tools(cluster: Cluster) -> tuple[Any, Path]:
    """Argo Events' build and the bus's NATS server, found in the tool cache
    (under the tester's HOME) before a test makes HOME the user's."""
    from .controlplane import ToolchainMissing, ensure_tool
    from .test_e2e_argo_events import NATS_TOOL, ensure_events

    try:
        build = ensure_events()
        nats_home, _ = ensure_tool(NATS_TOOL, "the Argo Events delivery test (the bus's server)")
    except ToolchainMissing as exc:
        pytest.skip(reason=str(exc))
    return build, nats_home


@contextlib.contextmanager
def events_release(cluster: Cluster, build: Any, flow_ns: str, extra: dict[str, Any]
                   ) -> Iterator[Any]:
    """Argo Events' CRDs, the chart's events objects and the real controller."""
    import yaml

    from .test_e2e_argo_events import (
        COMPONENTS,
        RELEASE,
        delete_objects,
        drop_events_objects,
        run_controller,
    )

    for doc in build.crd_files():
        argo.apply(cluster, yaml.safe_load(doc.read_text()))
    cluster.wait_for(lambda: _served(cluster, "sensors.argoproj.io") or None, 60,
                     "the Sensor CRD to be served")
    objs = _chart_objects(cluster, flow_ns, *COMPONENTS, extra=extra)
    try:
        with run_controller(cluster, build, RELEASE, RELEASE_NS, flow_ns) as ctl:
            yield ctl
    finally:
        drop_events_objects(cluster, flow_ns)
        delete_objects(cluster, objs)


def _sensor_names(cluster: Cluster, ns: str) -> list[str]:
    return [s["metadata"]["name"] for s in client.CustomObjectsApi(cluster.api_client())
            .list_namespaced_custom_object(**orch.ARGO, namespace=ns, plural="sensors")["items"]]


def test_argo_events_with_the_webhook_down_fails_at_publishing(
        cluster: Cluster, argo_build: argo.ArgoBuild, events_tools: tuple[Any, Path],
        release: str, as_user, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Nothing listens where the config's webhook URL (a port-forward) points.
    down = f"http://127.0.0.1:{mfenv.free_port()}/metaflow-event"
    monkeypatch.setenv("METAFLOW_ARGO_EVENTS_WEBHOOK_URL", down)
    alice = cluster.user_kubeconfig("alice", (GROUP,))
    stack = make_stack(as_user, alice, events=True)
    extra = {"argoEventsGlue": {"eventBus": {"replicas": 1}}}
    with events_release(cluster, events_tools[0], release, extra), \
            verify_run(cluster, tmp_path) as run:
        with pytest.raises(Failed) as failed:
            orch.argo_events(stack, run)
        name = orch.trigger_template_name(run)
        assert name in _sensor_names(cluster, release)
        assert name in _templates(cluster, release)
    assert name not in _sensor_names(cluster, release)
    saw, fix = failed.value.saw, failed.value.fix
    print(f"\nargo events, webhook down: {failed.value}")
    assert saw.startswith(f"the webhook {down} did not take the event: "), saw
    assert "Connection refused" in saw, saw
    assert "mfhelm port-forward" in fix, fix


def test_argo_events_an_event_published_to_the_webhook_starts_the_trigger_flow(
        cluster: Cluster, argo_build: argo.ArgoBuild, events_tools: tuple[Any, Path],
        release: str, as_user, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The bus's NATS server, the webhook and the Sensor run on this host as
    the controller specified their pods (test_e2e_argo_events.py's delivery
    test does the same); the check publishes with Metaflow's ArgoEvent."""
    from .controlplane import Processes

    build, nats_home = events_tools
    port = mfenv.free_port()
    url = f"http://127.0.0.1:{port}/metaflow-event"
    monkeypatch.setenv("METAFLOW_ARGO_EVENTS_WEBHOOK_URL", url)
    alice = cluster.user_kubeconfig("alice", (GROUP,))
    stack = make_stack(as_user, alice, events=True)
    extra = {"argoEventsGlue": {"eventBus": {"replicas": 1},
                                "webhook": {"port": port, "url": url}}}
    procs = Processes(cluster.workdir / "logs")
    try:
        with events_release(cluster, build, release, extra), \
                verify_run(cluster, tmp_path) as run:
            host = HostEvents(cluster, release, build, nats_home, procs,
                              tmp_path / "host-pods")
            host.start_bus()
            delivery = threading.Thread(target=host.deliver,
                                        args=(orch.trigger_template_name(run),), daemon=True)
            delivery.start()
            try:
                detail = orch.argo_events(stack, run)
            except Failed:
                print("\n".join(f"{n}:\n{procs.tail(n, 15)}" for n in procs.running))
                raise
            finally:
                delivery.join(timeout=30)
            assert host.errors == []
            name = orch.trigger_template_name(run)
            [wf] = orch.workflows_of(run, release, name)
            assert detail == f"argo-{wf['metadata']['name']} started by event mfhelm_verify"
            assert json.loads(wf["metadata"]["annotations"]["metaflow/triggered_by"]) == \
                [{"name": "mfhelm_verify", "type": "event"}]
        assert orch.workflows_of(run, release, name) == []
    finally:
        procs.stop()
    print(f"\nargo events: {detail}")


class HostEvents:
    """The bus, webhook and a Sensor of the flow namespace as host processes,
    from the pod specs the real controller wrote (see test_e2e_argo_events.py)."""

    def __init__(self, cluster: Cluster, ns: str, build: Any, nats_home: Path,
                 procs: Any, workdir: Path) -> None:
        self.cluster, self.ns, self.build, self.procs = cluster, ns, build, procs
        self.nats_home, self.workdir = nats_home, workdir
        self.service = f"eventbus-metaflow-eventbus-js-svc.{ns}.svc"
        self.client_port = mfenv.free_port()
        self.errors: list[BaseException] = []

    def _spec(self, kind: str, selector: str) -> dict[str, Any]:
        apps, api = self.cluster.apps(), self.cluster.api_client()

        def found() -> Any:
            if kind == "bus":
                items = apps.list_namespaced_stateful_set(self.ns, label_selector=selector).items
                items = [s for s in items if s.spec.replicas == 1]
            else:
                items = apps.list_namespaced_deployment(self.ns, label_selector=selector).items
            return items[0] if items else None

        workload = self.cluster.wait_for(found, 120, f"the controller's {kind} ({selector})")
        return dict(api.sanitize_for_serialization(workload.spec.template.spec))

    def _events_pod(self, spec: dict[str, Any], pod_name: str, sensor: bool) -> Any:
        from .test_e2e_argo_events import SA_DIR, SENSOR_ACCOUNT, _host_pod

        pod = _host_pod(self.cluster, self.ns, pod_name, spec, "main", self.workdir,
                        {"/bin/argo-events": self.build.binary})
        bus = json.loads(base64.b64decode(pod.env["EVENTBUS_CONFIG"]))
        bus["jetstream"]["url"] = f"nats://{self.service}:{self.client_port}"
        pod.env["EVENTBUS_CONFIG"] = base64.b64encode(json.dumps(bus).encode()).decode()
        hosts = self.workdir / "hosts"
        hosts.write_text(f"127.0.0.1 localhost {self.service} {self.service}.cluster.local\n")
        pod.binds.append((hosts, "/etc/hosts"))
        if sensor:
            sa_dir = self.workdir / "sensor-account"
            sa_dir.mkdir(parents=True, exist_ok=True)
            (sa_dir / "token").write_text(
                argo.service_account_token(self.cluster, self.ns, SENSOR_ACCOUNT))
            (sa_dir / "namespace").write_text(self.ns)
            shutil.copyfile(self.cluster.workdir / "pki" / "ca.crt", sa_dir / "ca.crt")
            host, _, api_port = self.cluster.server.removeprefix("https://").rpartition(":")
            pod.binds.append((sa_dir, SA_DIR))
            pod.env.update(KUBERNETES_SERVICE_HOST=host, KUBERNETES_SERVICE_PORT=api_port)
        return pod

    def start_bus(self) -> None:
        from .test_e2e_argo_events import _host_pod, _log_has, _start_host_pod

        nats = _host_pod(self.cluster, self.ns, "eventbus-metaflow-eventbus-js-0",
                         self._spec("bus", "controller=eventbus-controller"), "main",
                         self.workdir, {"/nats-server": self.nats_home / "bin" / "nats-server"})
        conf = next(src for src, dst in nats.binds if dst == "/etc/nats-config") / "nats-js.conf"
        conf.write_text(conf.read_text().replace("port: 4222", f"port: {self.client_port}")
                        .replace("http: 8222", f"http: {mfenv.free_port()}"))
        _start_host_pod(self.procs, "verify-nats", nats, self.workdir)
        _log_has(self.procs, "verify-nats", "Server is ready", 30)

    def deliver(self, sensor: str) -> None:
        """The webhook and the Sensor bind the same metrics port (:7777), so on
        one host they take turns, as in the delivery test: the Sensor once (its
        durable consumer then exists on the bus), the webhook until it has put
        the check's event on the bus, the Sensor again to take it off."""
        from .test_e2e_argo_events import _log_has, _start_host_pod, _stop

        try:
            pod = self._events_pod(self._spec("sensor", f"sensor-name={sensor}"),
                                   f"{sensor}-sensor-host", sensor=True)
            _start_host_pod(self.procs, "verify-sensor", pod, self.workdir)
            _log_has(self.procs, "verify-sensor", "started subscribing to events for trigger", 60)
            _stop(self.procs, "verify-sensor")
            webhook = self._events_pod(
                self._spec("webhook", "eventsource-name=metaflow-webhook"),
                "metaflow-webhook-host", sensor=False)
            _start_host_pod(self.procs, "verify-webhook", webhook, self.workdir)
            _log_has(self.procs, "verify-webhook", "Succeeded to publish an event", 120)
            _stop(self.procs, "verify-webhook")
            _start_host_pod(self.procs, "verify-sensor-again", pod, self.workdir)
        except BaseException as exc:  # the check then fails; the test shows this too
            self.errors.append(exc)
            raise


def _served(cluster: Cluster, crd: str) -> bool:
    ext = client.ApiextensionsV1Api(cluster.api_client())
    try:
        got = ext.read_custom_resource_definition(crd)
    except ApiException:
        return False
    return any(c.type == "Established" and c.status == "True"
               for c in got.status.conditions or [])


# --- which layers run --------------------------------------------------------------------

def test_the_layers_in_order_and_when_they_run():
    assert [c.name for c in orch.CHECKS] == ["argo create", "argo run", "argo events",
                                             "argo schedules", "airflow run"]
    stack = Stack(target=Target("metaflow", RELEASE_NS), profile="local",
                  flow_namespace="metaflow-flows", chart_app_version="test", argo=True,
                  argo_events=False, airflow=False, config={},
                  config_file=Path("config.json"))
    on = {c.name: c.enabled(stack) for c in orch.CHECKS}
    assert on == {"argo create": True, "argo run": True, "argo events": False,
                  "argo schedules": True, "airflow run": False}


def test_the_shipped_flows_are_metaflow_flows():
    for name, cls in ((orch.FLOW_FILE, orch.FLOW_CLASS),
                      (orch.TRIGGER_FILE, orch.TRIGGER_CLASS)):
        done = subprocess.run([sys.executable, str(orch.FLOWS_DIR / name), "--no-pylint",
                               "show"], capture_output=True, text=True, check=False,
                              env=mfenv.clean_environ() | {"USER": "ada"}, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"executing {cls}" in done.stderr, done.stderr
        assert "Step start" in done.stdout and "Step end" in done.stdout, done.stdout


# --- airflow run ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def airflow(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory,
            azurite_https: mfenv.Azurite, entra_endpoint: mfenv.FakeEntra,
            metadata_service: mfenv.MetadataService, stack_outputs: dict[str, Any]
            ) -> Iterator[Any]:
    import shutil

    import pgserver

    from .verify_airflow import airflow_stack

    if pgserver.pg_bin() is None or not shutil.which("psql"):
        pytest.skip("PostgreSQL server not installed (Debian package postgresql)")
    if not cluster.exec_mounts:
        pytest.skip("exec onto volumes requires mount namespaces (`unshare --mount`) on this host")
    with airflow_stack(cluster, tmp_path_factory.mktemp("verify-airflow"),
                       azurite=azurite_https, entra=entra_endpoint,
                       metadata_url=metadata_service.url, outputs=stack_outputs) as stack:
        yield stack


def airflow_stack_of(af: Any) -> Stack:
    return Stack(target=Target(af.release, af.namespace), profile="local",
                 flow_namespace=af.flow_namespace, chart_app_version="test", argo=False,
                 argo_events=False, airflow=True, config=af.user.config,
                 config_file=af.user.config_file)


@pytest.fixture
def as_airflow_user(airflow: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    for key in list(os.environ):
        if key not in airflow.user.env:
            monkeypatch.delenv(key)
    for key, value in airflow.user.env.items():
        monkeypatch.setenv(key, value)
    return airflow


def _dag_files(cluster: Cluster, af: Any) -> list[str]:
    from .test_e2e_airflow_scheduler import _dag_folder

    return sorted(p.name for p in _dag_folder(cluster, af.namespace).glob("*.py"))


def test_airflow_run_succeeds_and_reads_the_task_log_from_blob(
        cluster: Cluster, as_airflow_user: Any, tmp_path: Path, azurite_https: mfenv.Azurite):
    af = as_airflow_user
    stack = airflow_stack_of(af)
    with verify_run(cluster, tmp_path) as run:
        try:
            detail = orch.airflow_run(stack, run)
        except Failed:
            print(af.scheduler_log.read_text(errors="replace")[-4000:])
            raise
        dag = orch.dag_id(run)
        assert f"{dag}.py" in _dag_files(cluster, af)
    print(f"\nairflow run: {detail}")
    assert detail == (f"{dag}/{dag} success; start's log read from airflow-logs")
    blobs = azurite_https.blob_names("airflow-logs", f"wasb-logs/dag_id={dag}/")
    assert f"wasb-logs/dag_id={dag}/run_id={dag}/task_id=start/attempt=1.log" in blobs, blobs
    assert f"{dag}.py" not in _dag_files(cluster, af)  # cleaned up


def test_airflow_run_whose_dag_fails_names_the_task_and_its_error(
        cluster: Cluster, as_airflow_user: Any, tmp_path: Path):
    af = as_airflow_user
    stack = airflow_stack_of(af)
    account = af.user.config["METAFLOW_KUBERNETES_SERVICE_ACCOUNT"]
    with without_account(cluster, af.flow_namespace, account), \
            verify_run(cluster, tmp_path) as run, pytest.raises(Failed) as failed:
        orch.airflow_run(stack, run)
    saw, fix = failed.value.saw, failed.value.fix
    print(f"\nairflow run without {account}: {failed.value}")
    dag = orch.dag_id(run)
    assert saw.startswith(f"DAG run {dag}/{dag} failed (end upstream_failed, start failed): "), saw
    assert "is forbidden: error looking up service account" in saw, saw
    assert f'serviceaccount "{account}" not found' in saw, saw
    assert fix == (f"the flows ServiceAccount is missing in {af.flow_namespace}; "
                   "`mfhelm install` makes it again"), fix


# --- a Pending flow pod, with what the cluster autoscaler says -----------------------------
# No autoscaler runs here: these are the shapes of its events (reasons and
# messages of cluster-autoscaler's TriggeredScaleUp and NotTriggerScaleUp)
# on a pod the scheduler refused, as the API returns them.

def _pending_pod(waiting: str | None = None) -> client.V1Pod:
    statuses = None
    if waiting:
        statuses = [client.V1ContainerStatus(
            name="main", image="x", image_id="", ready=False, restart_count=0,
            state=client.V1ContainerState(waiting=client.V1ContainerStateWaiting(
                reason=waiting, message='failed to pull image "acr.example/x:1"')))]
    return client.V1Pod(metadata=client.V1ObjectMeta(name="wf-start-1"),
                        spec=client.V1PodSpec(containers=[]),
                        status=client.V1PodStatus(phase="Pending",
                                                  container_statuses=statuses))


def _event(reason: str, message: str) -> client.CoreV1Event:
    return client.CoreV1Event(involved_object=client.V1ObjectReference(name="wf-start-1"),
                              metadata=client.V1ObjectMeta(), reason=reason, message=message)


SCHEDULER = ("0/3 nodes are available: 1 node(s) had untolerated taint(s), 2 node(s) didn't "
             "match Pod's node affinity/selector. preemption: 0/3 nodes are available")


def test_a_pending_flow_pod_waits_while_the_autoscaler_adds_a_node():
    pod = _pending_pod()
    refused = _event("FailedScheduling", SCHEDULER)
    assert orch.pending_problem(pod, [refused], now=10, created=0, grace=90) is None
    scaling = _event("TriggeredScaleUp", "pod triggered scale-up: [{taskworkers 0->1 (max: 3)}]")
    assert orch.pending_problem(pod, [refused, scaling], now=500, created=0, grace=90) is None
    late = orch.pending_problem(pod, [refused], now=120, created=0, grace=90)
    assert late is not None and late.saw == (
        "flow pod wf-start-1 Pending for 120s: 0/3 nodes are available: 1 node(s) had "
        "untolerated taint(s), 2 node(s) didn't match Pod's node affinity/selector")


def test_a_flow_pod_the_autoscaler_will_not_place_fails_at_once_with_its_reason():
    pod = _pending_pod()
    events = [_event("FailedScheduling", SCHEDULER),
              _event("NotTriggerScaleUp", "pod didn't trigger scale-up: 1 max node group "
                     "size reached")]
    failed = orch.pending_problem(pod, events, now=5, created=0, grace=90)
    assert failed is not None
    assert failed.saw.endswith("; the autoscaler: pod didn't trigger scale-up: 1 max node "
                               "group size reached"), failed.saw
    assert "check the vCPU quota with `mfhelm doctor`" in failed.fix


def test_a_flow_pod_whose_image_cannot_be_pulled_says_so():
    failed = orch.pending_problem(_pending_pod("ErrImagePull"), [], now=1, created=0)
    assert failed is not None
    assert failed.saw == ('flow pod wf-start-1 container main ErrImagePull (failed to pull '
                          'image "acr.example/x:1")'), failed.saw
    assert "cannot pull the flow image" in failed.fix
