"""Argo Workflows' workflow controller against the test cluster, set up the
way argo-helm sets it up for our values.

The controller is the upstream binary at the version tools.toml pins
([gobuild.argo], the argo-workflows.images.tag our values give the argo-helm
chart charts/metaflow pins), and the CRDs are the `minimal` ones from the
same module version, the kind argo-helm installs with our crds.full=false. The controller runs on this host, not in a pod, but as
the ServiceAccount argo-helm creates for it: its kubeconfig carries a token
of that account (TokenRequest API), so every call it makes is authorized by
exactly the Roles a release grants it: argo-helm 1.0.18's own Role when our
values leave controller.rbac.create on (tests/chart/upstream_rbac.py; they
turn it off), and the Roles our chart renders, taken from a real render:
its rules where flows run and, at home, its ConfigMap only (get, and watch:
v4.0.7 watches it by name). A controller that needed more at home would fail
here.

What differs from the pod argo-helm runs, and why:
- it reaches the API server through a kubeconfig (`--kubeconfig`) instead
  of the in-cluster config. The controller takes its own namespace from its
  client config (in a pod: the service account's namespace file), not from
  ARGO_NAMESPACE, which argo-helm sets but v4.0.7's (as v3.6.10's)
  workflow-controller never reads (cmd/workflow-controller/main.go takes
  the namespace from its client config): without a namespace in the
  kubeconfig context it used "default" and was refused its ConfigMap there.
  So the context names the release namespace (ARGO_NAMESPACE is set too,
  as argo-helm sets it);
- the metrics server listens on a free port (`metricsConfig.port` added to
  the rendered config) instead of 9090, which a host may already use and
  which two controllers cannot share; its health endpoint stays on :6060,
  hard-coded upstream (a second controller only logs that it cannot bind).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .controlplane import ROOT, Processes, ensure_tool, free_port
from .handle import Cluster, wait_for

TOOL = "argo"
PREVIOUS_TOOL = "argo-previous"
EXECUTOR_IMAGE = "quay.io/argoproj/argoexec"
FIELD_MANAGER = "mfhelm-tests"
APPLY = "application/apply-patch+yaml"
TOKEN_SECONDS = 6 * 3600
CI_LOCAL_VALUES = ROOT / "charts" / "metaflow" / "ci" / "local-values.yaml"

# argo-helm's labels on the controller's objects (_helpers.tpl), less the
# Helm-only ones: these are not made by Helm.
PART_OF = "argo-workflows"


@dataclass(frozen=True)
class ArgoBuild:
    """The cached build: the controller binary and the CRDs of the same release."""

    binary: Path
    crds: Path
    version: str
    executor_name: str = "argoexec"

    @property
    def argoexec(self) -> Path:
        """The executor, built from the same module version as the controller."""
        return self.binary.parent / self.executor_name

    @property
    def executor_image(self) -> str:
        # argo-helm: executor.image registry/repository, tag = images.tag
        # (our values: the release tools.toml pins).
        return f"{EXECUTOR_IMAGE}:{self.version}"

    def crd_files(self) -> list[Path]:
        return sorted(self.crds.glob("argoproj.io_*.yaml"))


def ensure_argo() -> ArgoBuild:
    """The pinned controller and CRDs, built with Go if not cached yet.

    Raises ToolchainMissing when they are not cached and `go` is absent; a
    failed build raises RuntimeError.
    """
    home, entry = ensure_tool(TOOL, "the Argo cluster tests (workflow-controller and its CRDs)")
    build = ArgoBuild(home / "bin" / "workflow-controller", home / "crds", entry["version"])
    if not build.argoexec.exists():
        raise RuntimeError(f"{home} has no argoexec; remove it so that it is built again")
    if not build.crd_files():
        raise RuntimeError(f"{home} has no CRDs; remove it so that it is built again")
    return build


def ensure_argo_previous() -> ArgoBuild:
    """The release the chart pinned before (tools.toml [gobuild.argo-previous],
    v3.6.10): its controller, executor and minimal CRDs, suffixed -previous."""
    home, entry = ensure_tool(PREVIOUS_TOOL, "the Argo upgrade test (the previous release)")
    build = ArgoBuild(home / "bin" / "workflow-controller-previous", home / "crds",
                      entry["version"], executor_name="argoexec-previous")
    if not build.argoexec.exists() or not build.crd_files():
        raise RuntimeError(f"{home} lacks argoexec-previous or the CRDs; remove it so that "
                           "it is built again")
    return build


def executor_dir(build: ArgoBuild) -> Path:
    """A directory holding this build's executor under the name `argoexec`:
    the controller's init container runs `argoexec init`, which copies the
    binary exec.LookPath("argoexec") finds (workflow/executor/emissary/
    binary.go), so a suffixed build is linked under that name, in the
    build's own home (the process kubelet gives each container a /tmp of its
    own, so a test's directory there would not be seen)."""
    if build.argoexec.name == "argoexec":
        return build.argoexec.parent
    found = build.argoexec.parent.parent / "executor"
    found.mkdir(exist_ok=True)
    link = found / "argoexec"
    if not link.is_symlink() or link.readlink() != build.argoexec:
        # Made aside and renamed over: two sessions may get here at once.
        fresh = found / f".argoexec-{os.getpid()}"
        fresh.unlink(missing_ok=True)
        fresh.symlink_to(build.argoexec)
        os.replace(fresh, link)
    return found


# --- names and objects as argo-helm 1.0.18 renders them ----------------------

def fullname(release: str) -> str:
    """argo-helm's `argo-workflows.fullname` (no name or fullname override)."""
    name = release if "argo-workflows" in release else f"{release}-argo-workflows"
    return name[:63].rstrip("-")


def controller_name(release: str) -> str:
    """The controller's Deployment, ServiceAccount, Role and RoleBinding name."""
    return f"{fullname(release)}-workflow-controller"[:63].rstrip("-")


def configmap_name(release: str) -> str:
    return f"{controller_name(release)}-configmap"[:63].rstrip("-")


def _labels(release: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "argo-workflows-workflow-controller",
        "app.kubernetes.io/instance": release,
        "app.kubernetes.io/component": "workflow-controller",
        "app.kubernetes.io/part-of": PART_OF,
    }


def argo_values() -> dict[str, Any]:
    """Our values.yaml's `argo-workflows` section over argo-helm's defaults
    of the keys its RBAC templates read."""
    from upstream_rbac import ARGO_WORKFLOWS_DEFAULTS, merged

    values = yaml.safe_load((ROOT / "charts" / "metaflow" / "values.yaml").read_text())
    return merged(ARGO_WORKFLOWS_DEFAULTS, values["argo-workflows"])


def upstream_controller_rbac(release: str, namespace: str) -> list[dict[str, Any]]:
    """The controller's Role and RoleBinding argo-helm renders for our values
    (none: controller.rbac.create is off)."""
    from upstream_rbac import argo_workflows_objects

    name = controller_name(release)
    objs = argo_workflows_objects(argo_values(), release, namespace)
    return [o for o in objs if o["metadata"]["name"] == name]


# The `config` key of the controller ConfigMap (templates/controller/
# workflow-controller-config-map.yaml): with argo-helm's defaults, which our
# values leave alone, the two event switches and (1.0: its default is a
# non-empty map) failedPodRestart, off.
RENDERED_CONFIG = """\
nodeEvents:
  enabled: true
workflowEvents:
  enabled: true
failedPodRestart:
  enabled: false
  maxRestarts: 3
"""

# The executor and log flags argo-helm always renders (controller.logging defaults).
LOG_ARGS = ["--loglevel", "info", "--gloglevel", "0", "--log-format", "text"]

# Keys of our values' `argo-workflows` section (and its controller part) that
# do not change the controller's Role, ConfigMap or flags beyond what this
# module writes out; anything else must be looked at here first.
# `images` sets the tag of every Argo image: the executor image argo.py passes
# (ArgoBuild.executor_image; test_e2e_argo_controller holds the tag to the build).
NEUTRAL_TOP = {"enabled", "singleNamespace", "createAggregateRoles", "images", "crds",
               "workflow", "controller", "server"}
NEUTRAL_CONTROLLER = {"extraArgs", "clusterWorkflowTemplates", "nodeSelector", "resources",
                      "tolerations", "affinity", "podLabels", "podAnnotations", "rbac"}


def controller_objects(release: str, namespace: str, metrics_port: int) -> list[dict[str, Any]]:
    """ServiceAccount and ConfigMap argo-helm creates for the controller, in
    the release namespace, and its Role and RoleBinding if our values let it
    render them."""
    name = controller_name(release)
    meta = {"name": name, "namespace": namespace, "labels": _labels(release)}
    config = RENDERED_CONFIG + f"metricsConfig:\n  port: {metrics_port}\n"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {**meta, "name": configmap_name(release)}, "data": {"config": config}},
        *upstream_controller_rbac(release, namespace),
    ]


def chart_values(release_namespace: str, flow_namespace: str) -> dict[str, Any]:
    """The values `mfhelm install` gives the chart for this flow namespace:
    with a separate one, Argo's controller and server get
    --managed-namespace=<flow namespace> as extraArgs."""
    from mfhelm.values import argo_watches_flow_namespace

    flows = "" if flow_namespace == release_namespace else flow_namespace
    return argo_watches_flow_namespace({"flows": {"namespace": flows}}, release_namespace)


def chart_objects(release: str, release_namespace: str, flow_namespace: str,
                  component: str) -> list[dict[str, Any]]:
    """Our chart's objects labelled app.kubernetes.io/component=<component>,
    rendered by the real helm for this release and flow namespace (local
    profile: the profile does not change these objects)."""
    from chartlib import render

    objs = render([CI_LOCAL_VALUES], chart_values(release_namespace, flow_namespace),
                  release=release, namespace=release_namespace)
    return [o for o in objs
            if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component")
            == component]


def controller_args(build: ArgoBuild, release: str, release_namespace: str,
                    flow_namespace: str) -> list[str]:
    """The container args argo-helm renders (workflow-controller-
    deployment.yaml) with singleNamespace and our values' extraArgs."""
    argo = chart_values(release_namespace, flow_namespace).get("argo-workflows", {})
    extra = argo.get("controller", {}).get("extraArgs", [])
    return ["--configmap", configmap_name(release), "--executor-image", build.executor_image,
            *LOG_ARGS, "--namespaced", *extra]


def process_kubelet(cluster: Cluster, build: ArgoBuild, name: str, *,
                    labels: dict[str, str] | None = None,
                    taints: list[dict[str, str]] | None = None,
                    also: tuple[ArgoBuild, ...] = (),
                    admit: Any = None,
                    capacity: dict[str, str] | None = None) -> Any:
    """A ProcessKubelet for node `name` whose pods run Argo's executor image
    as this build's `argoexec` (init, wait, and the emissary the init
    container copies to /var/run/argo) and every other image with the test
    venv first on PATH (a Metaflow step's `python`).

    Why a PATH is enough (argo v3.6.10 and v4.0.7 alike): the controller
    gives the init and wait containers the executor image and the commands
    `argoexec init` / `argoexec wait` (workflow/controller/workflowpod.go,
    newInitContainer/standardInitContainer and newWaitContainer), and
    prefixes every other container's command with `/var/run/argo/argoexec
    emissary ... --`; `argoexec init` copies the binary it finds with
    exec.LookPath("argoexec") into that shared emptyDir
    (workflow/executor/emissary/binary.go, copyBinary).

    `also`: further builds whose executor images the node runs too, each as
    its own `argoexec` (a pod keeps the executor image it was made with,
    through an upgrade of the controller). `capacity`: what the node
    advertises (ProcessKubelet's default room if not given)."""
    from .metaflow_env import VENV_BIN
    from .process_kubelet import ProcessKubelet

    extra: dict[str, Any] = {} if capacity is None else {"capacity": dict(capacity)}
    return ProcessKubelet(cluster, name, cluster.workdir / "process-kubelet" / name,
                          labels=dict(labels or {}), taints=list(taints or []),
                          images={b.executor_image: [executor_dir(b)]
                                  for b in (build, *also)},
                          default_path=[VENV_BIN], host_paths=[VENV_BIN.parent],
                          admit=admit, **extra)


PROCESS_TASKWORKER = "taskworkers-process"
# What every node advertises whatever its VM (process_kubelet.ROOM covers these);
# anything else a pool's KWOK node has is an extended resource (the GPU pool's
# nvidia.com/gpu, as the NVIDIA device plugin advertises it).
_BASIC_RESOURCES = {"cpu", "memory", "pods", "ephemeral-storage"}


def process_node_name(pool: Any) -> str:
    """The process-kubelet node standing in for `pool` (an mfhelm.pools.Pool)."""
    return f"{pool.name}-process"


@contextmanager
def pools_on_process_kubelet(cluster: Cluster, build: ArgoBuild, mf: Any, metadata_url: str,
                             pools: tuple[Any, ...], *, also: tuple[ArgoBuild, ...] = ()
                             ) -> Iterator[dict[str, Any]]:
    """Each of these pools (mfhelm.pools.Pool) as one node whose pods run for
    real (process kubelet), yielded by pool name: the pool's labels and
    taints, ProcessKubelet's room plus the extended resources the pool's KWOK
    node advertises (a GPU step's nvidia.com/gpu request fits only on the GPU
    pool's), and what AKS adds to a step pod (metaflow_env.step_pod_admission).
    KWOK's node of each pool is cordoned meanwhile, so every step scheduled to
    the pool lands on its process node. Entra accepts the federated token of
    the flows ServiceAccount's pods (a TokenReview), as the identity's
    federated credential does on Azure. `also`: as for process_kubelet."""
    from contextlib import ExitStack

    from .metaflow_env import pod_token_check, step_pod_admission
    from .process_kubelet import ROOM

    core = cluster.core()
    admit = step_pod_admission(mf, metadata_url=metadata_url)
    kwok_nodes = [cluster.nodes[pool.name] for pool in pools]
    kubelets = {}
    for pool, kwok_node in zip(pools, kwok_nodes, strict=True):
        advertised = core.read_node(kwok_node).status.allocatable or {}
        extended = {k: v for k, v in advertised.items() if k not in _BASIC_RESOURCES}
        kubelets[pool.name] = process_kubelet(
            cluster, build, process_node_name(pool), labels=dict(pool.labels),
            taints=[t.as_dict() for t in pool.taints], admit=admit, also=also,
            capacity={**ROOM, **extended})
    mf.entra.pod_tokens = pod_token_check(cluster.api_client(), mf.flow_namespace,
                                          str(mf.config["METAFLOW_KUBERNETES_SERVICE_ACCOUNT"]))
    try:
        for kwok_node in kwok_nodes:
            core.patch_node(kwok_node, {"spec": {"unschedulable": True}})
        with ExitStack() as running:
            for kubelet in kubelets.values():
                running.enter_context(kubelet)
            yield kubelets
            for kubelet in kubelets.values():
                kubelet.check()
    finally:
        for kwok_node in kwok_nodes:
            core.patch_node(kwok_node, {"spec": {"unschedulable": None}})
        mf.entra.pod_tokens = None


@contextmanager
def taskworkers_on_process_kubelet(cluster: Cluster, build: ArgoBuild, mf: Any,
                                   metadata_url: str, *, pool: Any = None,
                                   also: tuple[ArgoBuild, ...] = ()) -> Iterator[Any]:
    """The taskworkers pool (or `pool`) as one node whose pods run for real:
    pools_on_process_kubelet for that one pool, its kubelet yielded. The
    taskworkers node is named PROCESS_TASKWORKER."""
    from mfhelm.pools import TASKWORKERS

    pool = pool or TASKWORKERS
    with pools_on_process_kubelet(cluster, build, mf, metadata_url, (pool,),
                                  also=also) as kubelets:
        yield kubelets[pool.name]


# --- applying objects --------------------------------------------------------

def apply(cluster: Cluster, obj: dict[str, Any]) -> None:
    """Server-side apply one object (create or update; idempotent)."""
    from kubernetes import client

    api = cluster.api_client()
    kind = obj["kind"]
    name = obj["metadata"]["name"]
    ns = obj["metadata"].get("namespace")
    kw: dict[str, Any] = {"field_manager": FIELD_MANAGER, "force": True,
                          "_content_type": APPLY}
    if kind == "CustomResourceDefinition":
        client.ApiextensionsV1Api(api).patch_custom_resource_definition(name, obj, **kw)
    elif kind == "ServiceAccount":
        client.CoreV1Api(api).patch_namespaced_service_account(name, ns, obj, **kw)
    elif kind == "ConfigMap":
        client.CoreV1Api(api).patch_namespaced_config_map(name, ns, obj, **kw)
    elif kind == "Role":
        client.RbacAuthorizationV1Api(api).patch_namespaced_role(name, ns, obj, **kw)
    elif kind == "RoleBinding":
        client.RbacAuthorizationV1Api(api).patch_namespaced_role_binding(name, ns, obj, **kw)
    else:
        raise ValueError(f"apply does not handle {kind}")


def apply_chart_objects(cluster: Cluster, release_ns: str, flow_ns: str, group: str,
                        components: tuple[str, ...] = ("flows", "data-scientists")
                        ) -> list[dict[str, Any]]:
    """The local chart's objects of these components (flow pods' account and
    Roles, the data scientists' Role for `group`), applied; returned so the
    test deletes them when done (`delete`)."""
    from chartlib import SCENARIOS, render

    values = {**chart_values(release_ns, flow_ns), "dataScientists": {"groups": [group]}}
    applied = []
    for obj in render([SCENARIOS["local"]], values, release="metaflow", namespace=release_ns):
        if (obj["metadata"].get("labels") or {}).get("app.kubernetes.io/component") in components:
            apply(cluster, obj)
            applied.append(obj)
    cluster.wait_authorized(applied)
    return applied


def delete(cluster: Cluster, obj: dict[str, Any]) -> None:
    """Delete one object `apply` made (gone already is fine). A test that
    applies the chart's objects into the shared release and flow namespaces
    deletes them when done: a later `helm install` there refuses objects it
    does not own ("exists and cannot be imported into the current release")."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    api = cluster.api_client()
    kind = obj["kind"]
    name = obj["metadata"]["name"]
    ns = obj["metadata"].get("namespace")
    calls = {
        "ServiceAccount": lambda: client.CoreV1Api(api).delete_namespaced_service_account(
            name, ns),
        "ConfigMap": lambda: client.CoreV1Api(api).delete_namespaced_config_map(name, ns),
        "Role": lambda: client.RbacAuthorizationV1Api(api).delete_namespaced_role(name, ns),
        "RoleBinding": lambda: client.RbacAuthorizationV1Api(api).delete_namespaced_role_binding(
            name, ns),
    }
    if kind not in calls:
        raise ValueError(f"delete does not handle {kind}")
    try:
        calls[kind]()
    except ApiException as exc:
        if exc.status != 404:
            raise


def apply_crds(cluster: Cluster, build: ArgoBuild) -> list[str]:
    """Apply the release's minimal CRDs and wait until they are served.

    They are cluster-wide and stay for the session: deleting them would
    delete every Workflow in the cluster.
    """
    from kubernetes import client

    docs = [yaml.safe_load(path.read_text()) for path in build.crd_files()]
    for doc in docs:
        apply(cluster, doc)
    ext = client.ApiextensionsV1Api(cluster.api_client())
    names = [d["metadata"]["name"] for d in docs]

    def established() -> bool:
        return all(
            any(c.type == "Established" and c.status == "True"
                for c in ext.read_custom_resource_definition(n).status.conditions or [])
            for n in names
        )

    wait_for(established, 60, "Argo's CRDs to be established")
    return names


def service_account_token(cluster: Cluster, namespace: str, account: str) -> str:
    from kubernetes import client

    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=TOKEN_SECONDS))
    resp = cluster.core().create_namespaced_service_account_token(account, namespace, request)
    return str(resp.status.token)


def token_kubeconfig(cluster: Cluster, path: Path, token: str, namespace: str,
                     user: str) -> Path:
    """A kubeconfig for the cluster (same server and CA as the admin's) that
    authenticates with ``token`` and defaults to ``namespace``."""
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    context = next(c["context"] for c in admin["contexts"]
                   if c["name"] == admin["current-context"])
    entry = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [entry],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": entry["name"], "user": user,
                                                 "namespace": namespace}}],
        "current-context": user,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


# --- the running controller --------------------------------------------------

@dataclass
class ArgoController:
    """A workflow controller running on this host for one release.

    namespace          the release (install) namespace: ConfigMap, account, Roles
    managed_namespace  the flow namespace it watches for Workflows and makes pods in
    """

    release: str
    namespace: str
    managed_namespace: str
    argv: list[str]
    env: dict[str, str]
    config: str
    kubeconfig: Path
    executor_image: str
    log: Path
    _procs: Processes = field(repr=False)
    _name: str = field(repr=False)

    @property
    def service_account(self) -> str:
        return controller_name(self.release)

    def check(self) -> None:
        """Fail with the log tail if the controller has exited."""
        self._procs.check()

    def tail(self, lines: int = 40) -> str:
        return self._procs.tail(self._name, lines)

    def log_text(self) -> str:
        """This run's log (the file also holds earlier runs of the release)."""
        return self._procs.text(self._name)

    def stop(self) -> None:
        self._procs.stop()


def prepare_release(cluster: Cluster, release: str, release_namespace: str,
                    flow_namespace: str, metrics_port: int) -> None:
    """Create what argo-helm and our chart give the controller, without
    Helm: its account and ConfigMap in the release namespace, and our
    chart's Argo Roles (where flows run, and at home)."""
    for obj in controller_objects(release, release_namespace, metrics_port):
        apply(cluster, obj)
    for obj in chart_objects(release, release_namespace, flow_namespace, "argo"):
        apply(cluster, obj)


@contextmanager
def run_controller(cluster: Cluster, build: ArgoBuild, release_namespace: str,
                   flow_namespace: str, *, release: str = "metaflow",
                   timeout: float = 60,
                   release_objects: Callable[[int], list[dict[str, Any]]] | None = None
                   ) -> Iterator[ArgoController]:
    """Set up and run a workflow controller for ``release`` installed in
    ``release_namespace`` running flows in ``flow_namespace``; stopped on exit.

    Both namespaces must exist. Returns once the controller has synced its
    caches and started its workers. ``release_objects`` (given the metrics
    port) replaces what this release gives the controller (account,
    ConfigMap, Roles: prepare_release), e.g. another chart version's.
    """
    metrics_port = free_port()
    if release_objects is None:
        prepare_release(cluster, release, release_namespace, flow_namespace, metrics_port)
        config = controller_objects(release, release_namespace, metrics_port)[1]["data"]["config"]
    else:
        objs = release_objects(metrics_port)
        for obj in objs:
            apply(cluster, obj)
        config = next(o["data"]["config"] for o in objs if o["kind"] == "ConfigMap"
                      and o["metadata"]["name"] == configmap_name(release))
    account = controller_name(release)
    workdir = cluster.workdir / "argo" / f"{release_namespace}-{release}"
    kubeconfig = token_kubeconfig(
        cluster, workdir / "kubeconfig",
        service_account_token(cluster, release_namespace, account),
        release_namespace, f"system:serviceaccount:{release_namespace}:{account}")
    argv = [str(build.binary), *controller_args(build, release, release_namespace,
                                                flow_namespace),
            "--kubeconfig", str(kubeconfig)]
    # As in argo-helm's pod (replicas 1); nothing inherited that the binary
    # reads (ARGO_* are its flags, KUBECONFIG a second kubeconfig).
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ARGO_") and k != "KUBECONFIG"}
    env.update(ARGO_NAMESPACE=release_namespace, LEADER_ELECTION_DISABLE="true")
    logdir = cluster.workdir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    name = f"workflow-controller-{release_namespace}-{release}"
    procs = Processes(logdir)
    controller = ArgoController(
        release=release, namespace=release_namespace, managed_namespace=flow_namespace,
        argv=argv, env=env,
        config=config,
        kubeconfig=kubeconfig, executor_image=build.executor_image,
        log=logdir / f"{name}.log", _procs=procs, _name=name,
    )
    procs.start(name, argv, env=env)
    try:
        _wait_started(controller, timeout)
        yield controller
    finally:
        procs.stop()


# Logged by the controller once its informers have synced and the cron
# controller (started after the sync, with the workflow workers) runs.
STARTED = "Starting CronWorkflow controller"


def _wait_started(controller: ArgoController, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while STARTED not in controller.log_text():
        controller.check()
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"workflow controller for {controller.namespace} not started after "
                f"{timeout:.0f}s:\n{controller.tail()}")
        time.sleep(0.2)
