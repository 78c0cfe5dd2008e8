"""A real Kubernetes control plane on 127.0.0.1, with KWOK playing the nodes.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler are the
upstream binaries built from the versions pinned in tools.toml (see
tests/tools/install.py); KWOK registers no kubelets but plays them for fake
nodes: it holds and renews each node's Lease, keeps its Ready condition
fresh, moves pods through their lifecycle (tests/cluster/kwok/stages.yaml)
and serves the kubelet's exec API by running commands on this host.

`start_controlplane(workdir)` returns a `Cluster` and a `stop` callable;
everything runs in its own process group so `stop` leaves nothing behind.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import ssl
import subprocess
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from mfhelm.pools import OPTIONAL_POOLS, POOLS

from .agents import FAKE_NODE_ANNOTATION, PROVISIONER, ExecDirectories, VolumeProvisioner
from .handle import (
    STORAGE_CLASS,
    Cluster,
    wait_for,
    write_kubeconfig,
)
from .pki import CertificateAuthority, service_account_keys

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # first address of SERVICE_CIDR: the `kubernetes` Service
POD_CIDR = "10.244.0.0/16"
TOOLS = ("kubernetes", "etcd", "kwok")
EMPTY_AUTHENTICATION_CONFIG = ("apiVersion: apiserver.config.k8s.io/v1\n"
                               "kind: AuthenticationConfiguration\njwt: []\n")

# pool -> (node name, labels, taints): one KWOK node per AKS pool (mfhelm.pools),
# the optional GPU and Spot pools included (on AKS they are off by default;
# here flows can be placed on them with the config `mfhelm config` writes).
NODES: dict[str, tuple[str, dict[str, str], list[dict[str, str]]]] = {
    pool.name: (f"{pool.name}-0", dict(pool.labels), [t.as_dict() for t in pool.taints])
    for pool in (*POOLS, *OPTIONAL_POOLS)
}
# Kubernetes' own default admission plugins stay on (the flag adds to them).
# AKS's API server also runs ExtendedResourceToleration (AKS FAQ, "What
# Kubernetes admission controllers does AKS support"): it gives a pod that
# requests nvidia.com/gpu the toleration of the GPU pool's nvidia.com/gpu taint.
ADMISSION_PLUGINS = ("ExtendedResourceToleration",)


@dataclass(frozen=True)
class NodeTiming:
    """How the fake nodes show they are alive, and how long the control plane
    believes a silent one.

    lease_seconds  KWOK --node-lease-duration-seconds: KWOK holds a Lease per
                   node in kube-node-lease and renews it every quarter of this,
                   as a kubelet does (40 s, renewed every 10 s). 0 would turn
                   leases off, which is KWOK's own default.
    grace_seconds  kube-controller-manager --node-monitor-grace-period: a node
                   whose Lease and Ready heartbeat both stay unchanged this long
                   goes Unknown, and the controller marks its pods NotReady.

    The default is what Kubernetes 1.34 itself uses: a kubelet's 40 s lease and
    the controller's 50 s grace period. Five renewals (and two of the stages'
    20-25 s Ready heartbeats) fit in the grace period, so a renewal or two late
    on a loaded machine changes nothing; and a KWOK that really stopped is seen
    within a minute, named by the conftest's node watch, instead of after the
    5 minutes this used to wait, when it surfaced as a `helm --wait` timeout.
    What no heartbeat survives is the control plane itself stalling longer than
    the grace period (seen once: etcd, apiserver, controller-manager and KWOK
    all silent for 143 s with six test runs sharing 2 cores); the watch then
    names the test, and the stages bring the nodes and their pods back.
    """

    lease_seconds: int = 40
    grace_seconds: int = 50


class ToolchainMissing(Exception):
    """The binaries are not cached and cannot be built here (no Go)."""


def _installer() -> ModuleType:
    path = ROOT / "tests" / "tools" / "install.py"
    spec = importlib.util.spec_from_file_location("mfhelm_tools_install", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kubernetes_version() -> str:
    """tools.toml [kubernetes] version with a leading v, e.g. "v1.34.4"."""
    return "v" + _installer().load_manifest()["kubernetes"]["version"].lstrip("v")


def ensure_binaries() -> dict[str, Path]:
    """binary name -> path, building missing tools with Go (slow once, cached after).

    Raises ToolchainMissing when a tool is not cached and `go` is absent; a
    failed build raises RuntimeError: that is a bug to see, not a skip.
    """
    paths: dict[str, Path] = {}
    for name in TOOLS:
        home, entry = ensure_tool(name, "the local control plane")
        for binary in entry["binaries"]:
            paths[binary] = home / "bin" / binary
    return paths


def ensure_tool(name: str, purpose: str) -> tuple[Path, dict[str, Any]]:
    """One tools.toml tool's home (and its entry), built with Go if not cached.

    Raises ToolchainMissing when it is not cached and `go` is absent; a
    failed build raises RuntimeError: that is a bug to see, not a skip.
    """
    inst = _installer()
    kind, entry = inst.tool_entries(inst.load_manifest())[name]
    home = inst.tool_home(name, entry)
    if not inst.is_complete(home, entry):
        if shutil.which("go") is None:
            raise ToolchainMissing(
                f"the Go toolchain (`go`) is needed to build {name} {entry['version']} "
                f"for {purpose}; install Go or run `python3 tests/tools/install.py "
                f"--only {name}` where it exists")
        try:
            home = inst.install(name, kind, entry)
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"building {name} {entry['version']} failed: {exc}") from exc
    return home, entry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Processes:
    """Child processes, each the leader of its own process group."""

    logdir: Path
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Where each process's output begins in its log: a name's log is kept
    # across runs (a session starts the controller of release `metaflow`
    # many times), and what one run logged must not be read as the next's.
    starts: dict[str, int] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.logdir / f"{name}.log").open("ab")
        self.starts[name] = log.tell()
        self.running[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env,
        )
        log.close()

    def text(self, name: str) -> str:
        """What the process started as ``name`` has logged (not earlier runs)."""
        path = self.logdir / f"{name}.log"
        if not path.exists():
            return ""
        with path.open("rb") as fh:
            fh.seek(self.starts.get(name, 0))
            return fh.read().decode(errors="replace")

    def check(self) -> None:
        """Fail with the log tail of any component that has exited."""
        for name, proc in self.running.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode}:\n{self.tail(name)}"
                )

    def tail(self, name: str, lines: int = 30) -> str:
        return "\n".join(self.text(name).splitlines()[-lines:])

    def stop(self) -> None:
        # Reverse start order (node agent first, etcd last), each given a moment
        # to exit cleanly; the data is throwaway, so then no more patience.
        for proc in reversed(list(self.running.values())):
            stop_group(proc, grace=3)
        self.running.clear()


def _kill_group(proc: subprocess.Popen[Any], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def stop_group(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM a process started in its own session (its whole group), give it
    `grace` seconds, then SIGKILL it."""
    _kill_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _kill_group(proc, signal.SIGKILL)
        proc.wait(timeout=5)


def _wait_ready(url: str, ca: Path, cert: Path, key: Path, procs: Processes,
                timeout: float) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))

    def ready() -> bool:
        procs.check()
        with urllib.request.urlopen(f"{url}/readyz", context=ctx, timeout=5) as resp:
            return bool(resp.status == 200)

    wait_for(ready, timeout, f"{url}/readyz")


def start_controlplane(workdir: Path, timing: NodeTiming | None = None,
                       ) -> tuple[Cluster, Callable[[], None]]:
    """Start the control plane in ``workdir``; returns (cluster, stop)."""
    timing = timing or NodeTiming()
    binaries = ensure_binaries()
    version = kubernetes_version()
    pki_dir = workdir / "pki"
    logdir = workdir / "logs"
    for d in (pki_dir, logdir):
        d.mkdir(parents=True, exist_ok=True)
    procs = Processes(logdir)
    agents: list[Any] = []

    def stop() -> None:
        for agent in agents:
            agent.stop()
        procs.stop()

    # Backstop for an interpreter that exits without running fixture finalizers.
    atexit.register(stop)
    try:
        cluster = _boot(workdir, pki_dir, binaries, version, procs, agents, timing)
    except BaseException:
        stop()
        raise
    return cluster, stop


def _boot(workdir: Path, pki_dir: Path, binaries: dict[str, Path], version: str,
          procs: Processes, agents: list[Any], timing: NodeTiming) -> Cluster:
    ca = CertificateAuthority(pki_dir)
    serving = ca.issue(
        "apiserver", "kube-apiserver",
        server_names=("localhost", "kubernetes", "kubernetes.default",
                      "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"),
        server_ips=("127.0.0.1", SERVICE_IP), client=False,
    )
    admin = ca.issue("admin", "mfhelm-admin", orgs=("system:masters",))
    kcm = ca.issue("controller-manager", "system:kube-controller-manager")
    scheduler = ca.issue("scheduler", "system:kube-scheduler")
    # KWOK authorizes no one; a kubelet would check this identity.
    kubelet_client = ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client")
    sa = service_account_keys(pki_dir)

    etcd_port, etcd_peer, api_port, kwok_port = (free_port() for _ in range(4))
    server = f"https://127.0.0.1:{api_port}"
    admin_kc = write_kubeconfig(workdir / "kubeconfig", server, ca.pair.cert, admin.cert,
                                admin.key)
    kcm_kc = write_kubeconfig(pki_dir / "controller-manager.kubeconfig", server,
                              ca.pair.cert, kcm.cert, kcm.key, user="controller-manager")
    sched_kc = write_kubeconfig(pki_dir / "scheduler.kubeconfig", server, ca.pair.cert,
                                scheduler.cert, scheduler.key, user="scheduler")

    etcd_url = f"http://127.0.0.1:{etcd_port}"
    peer_url = f"http://127.0.0.1:{etcd_peer}"
    procs.start("etcd", [
        str(binaries["etcd"]), "--name=mfhelm", f"--data-dir={workdir / 'etcd'}",
        f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
        f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=mfhelm={peer_url}",
        # Test data is disposable: skipping fsync makes every write much cheaper.
        "--unsafe-no-fsync", "--log-level=warn",
    ])

    # Structured authentication with no JWT issuer yet: a test that needs the
    # API server to accept an OIDC issuer's tokens (as AKS accepts Entra's)
    # writes one into this file, and the API server reloads it while running
    # (Cluster.trust_issuer).
    authn_config = workdir / "authentication-config.yaml"
    authn_config.write_text(EMPTY_AUTHENTICATION_CONFIG)
    procs.start("kube-apiserver", [
        str(binaries["kube-apiserver"]),
        f"--authentication-config={authn_config}",
        "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
        f"--secure-port={api_port}",
        f"--etcd-servers={etcd_url}",
        f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
        f"--client-ca-file={ca.pair.cert}",
        "--authorization-mode=Node,RBAC",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={sa.public}",
        f"--service-account-signing-key-file={sa.private}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        # exec/logs go to KWOK's kubelet port on the node's InternalIP (127.0.0.1).
        # KWOK serves a self-signed certificate, so no --kubelet-certificate-authority.
        "--kubelet-preferred-address-types=InternalIP",
        f"--kubelet-client-certificate={kubelet_client.cert}",
        f"--kubelet-client-key={kubelet_client.key}",
        f"--enable-admission-plugins={','.join(ADMISSION_PLUGINS)}",
        "--profiling=false",
    ])
    _wait_ready(server, ca.pair.cert, admin.cert, admin.key, procs, timeout=90)

    from kubernetes import config as kconfig

    api = kconfig.new_client_from_config(config_file=str(admin_kc))
    _apply_crds(api, HERE / "kwok" / "crds.yaml")
    _create_storage_class(api)
    _register_nodes(api)

    procs.start("kube-controller-manager", [
        str(binaries["kube-controller-manager"]),
        f"--kubeconfig={kcm_kc}", f"--authentication-kubeconfig={kcm_kc}",
        f"--authorization-kubeconfig={kcm_kc}",
        "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
        "--leader-elect=false", "--use-service-account-credentials=true",
        # See NodeTiming for why this value.
        f"--node-monitor-grace-period={timing.grace_seconds}s",
        f"--service-account-private-key-file={sa.private}", f"--root-ca-file={ca.pair.cert}",
        f"--cluster-signing-cert-file={ca.pair.cert}", f"--cluster-signing-key-file={ca.pair.key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--profiling=false",
    ])
    procs.start("kube-scheduler", [
        str(binaries["kube-scheduler"]),
        f"--kubeconfig={sched_kc}", f"--authentication-kubeconfig={sched_kc}",
        f"--authorization-kubeconfig={sched_kc}",
        "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
        "--leader-elect=false", "--profiling=false",
    ])
    annotation = "=".join(FAKE_NODE_ANNOTATION)
    mounts = can_mount()
    procs.start("kwok", [
        str(binaries["kwok"]),
        f"--kubeconfig={admin_kc}",
        f"--config={HERE / 'kwok' / 'stages.yaml'}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={annotation}",
        "--node-ip=127.0.0.1", f"--node-port={kwok_port}",
        f"--server-address=127.0.0.1:{kwok_port}",
        f"--cidr={POD_CIDR}",
        "--enable-crds=Exec,Logs",
        # Without it KWOK creates no Lease at all (KwokConfiguration leaves
        # nodeLeaseDurationSeconds 0; only kwokctl defaults it to 40).
        f"--node-lease-duration-seconds={timing.lease_seconds}",
    ], env=_kwok_env(workdir, mounts))

    core = _core(api)

    def nodes_ready() -> bool:
        procs.check()
        nodes = core.list_node().items
        # Ready is not enough: the scheduler also waits for the controller-manager
        # to lift the node.kubernetes.io/not-ready taint it put on at registration.
        return len(nodes) == len(NODES) and all(
            any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
            and not [t for t in n.spec.taints or [] if t.key.startswith("node.kubernetes.io/")]
            for n in nodes
        )

    wait_for(nodes_ready, 60, "the KWOK nodes to be Ready and untainted")

    pod_root = workdir / "pods"
    provisioner = VolumeProvisioner(api, workdir / "volumes", STORAGE_CLASS)
    execs = ExecDirectories(api, pod_root, {name for name, _l, _t in NODES.values()}, mounts)
    for agent in (provisioner, execs):
        agent.start()
        agents.append(agent)

    cluster = Cluster(
        kubeconfig=admin_kc, server=server, backend="controlplane",
        nodes={pool: name for pool, (name, _l, _t) in NODES.items()},
        workdir=workdir, version=version, exec_mounts=mounts, _pod_root=pod_root,
        node_agent_pid=procs.running["kwok"].pid, authentication_config=authn_config,
    )
    cluster.create_namespace("default")
    return cluster


def can_mount() -> bool:
    """Whether exec commands can get the pod's volumes in a private mount namespace."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         "mount -t tmpfs none /mnt"],
        capture_output=True, timeout=10,
    )
    return probe.returncode == 0


def _kwok_env(workdir: Path, mounts: bool) -> dict[str, str]:
    env = dict(os.environ, HOME=str(workdir))
    if mounts:
        # KWOK looks a pod's command up on its own PATH: point every name there
        # at the shim that mounts the pod's volumes before running the real one.
        host_path = env.get("PATH", os.defpath)
        env["MFHELM_HOST_PATH"] = host_path
        env["PATH"] = str(_shim_links(workdir / "exec-path", host_path))
    return env


def _shim_links(links: Path, host_path: str) -> Path:
    shim = HERE / "kwok" / "shim" / "run-in-pod"
    links.mkdir(parents=True, exist_ok=True)
    for directory in host_path.split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            link = links / entry.name
            if not link.is_symlink() and entry.is_file() and os.access(entry.path, os.X_OK):
                link.symlink_to(shim)
    return links


def _core(api: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api)


def create_crds(api: Any, docs: list[dict[str, Any]], what: str, timeout: float = 30) -> None:
    """Create the CustomResourceDefinitions `docs` and wait until each is Established."""
    from kubernetes import client

    ext = client.ApiextensionsV1Api(api)
    for doc in docs:
        ext.create_custom_resource_definition(doc)

    def established() -> bool:
        return all(
            any(c.type == "Established" and c.status == "True"
                for c in ext.read_custom_resource_definition(
                    d["metadata"]["name"]).status.conditions or [])
            for d in docs
        )

    wait_for(established, timeout, what)


def _apply_crds(api: Any, path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    # KWOK lists these at start-up and gives up if the API does not serve them yet.
    create_crds(api, docs, f"the CRDs in {path.name}")


def _create_storage_class(api: Any) -> None:
    from kubernetes import client

    client.StorageV1Api(api).create_storage_class(client.V1StorageClass(
        metadata=client.V1ObjectMeta(
            name=STORAGE_CLASS,
            annotations={"storageclass.kubernetes.io/is-default-class": "true"},
        ),
        provisioner=PROVISIONER,
        reclaim_policy="Delete",
        volume_binding_mode="Immediate",
    ))


# The system and services pools' one fake node each stands for an autoscaled
# pool that holds, here, the releases of every test at once (each test installs
# its own stack and many stay up until the session ends; 8 CPUs filled up once the
# local profile gained its token emulator and verify's tests came): sized as one VM, the
# services node filled up and later installs waited out their --timeout with
# pods Pending. What one VM bounds is a single pod, and the pods that come near
# that bound are flow steps: the taskworkers node is one VM of its size.
SERVICE_POOL_ROOM = {
    "capacity": {"cpu": "16", "memory": "64Gi", "pods": "250", "ephemeral-storage": "256Gi"},
    "allocatable": {"cpu": "16", "memory": "64Gi", "pods": "250", "ephemeral-storage": "236Gi"},
}


# The pools whose fake node is one VM of the pool's default size (the
# AksSettings field naming it): what bounds a flow step is one node.
VM_SIZE_SETTING = {"taskworkers": "task_vm_size", "gpu": "gpu_vm_size", "spot": "spot_vm_size"}


def _node_resources(pool: str) -> dict[str, dict[str, str]]:
    """capacity/allocatable of a flow pool's node (taskworkers, GPU, Spot): one
    node of the pool's default VM size on AKS, GPUs included as the device
    plugin advertises them; the other pools' room (SERVICE_POOL_ROOM)."""
    from mfhelm.pools import GPU_RESOURCE
    from mfhelm.settings import AksSettings
    from mfhelm.sizing import BICEP_MAX_PODS, allocatable, vm_size

    if pool not in VM_SIZE_SETTING:
        return SERVICE_POOL_ROOM
    # The default main.bicep is deployed with.
    name = getattr(AksSettings(), VM_SIZE_SETTING[pool])
    size, alloc = vm_size(name), allocatable(name, BICEP_MAX_PODS)
    assert size is not None and alloc is not None, f"{name} is not in mfhelm.sizing"
    pods = str(BICEP_MAX_PODS)
    gpus = {GPU_RESOURCE: str(size.gpus)} if size.gpus else {}
    return {
        "capacity": {"cpu": str(size.vcpus), "memory": f"{size.memory_gib}Gi",
                     "pods": pods, "ephemeral-storage": "128Gi", **gpus},
        "allocatable": {"cpu": f"{alloc[0]}m", "memory": f"{alloc[1]}Mi",
                        "pods": pods, "ephemeral-storage": "118Gi", **gpus},
    }


def _register_nodes(api: Any) -> None:
    from kubernetes import client

    core = _core(api)
    for pool, (name, labels, taints) in NODES.items():
        core.create_node(client.V1Node(
            metadata=client.V1ObjectMeta(
                name=name,
                annotations={FAKE_NODE_ANNOTATION[0]: FAKE_NODE_ANNOTATION[1],
                             "node.alpha.kubernetes.io/ttl": "0"},
                labels={
                    "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64", "type": "kwok",
                    "kubernetes.azure.com/agentpool": pool, **labels,
                },
            ),
            spec=client.V1NodeSpec(taints=[client.V1Taint(**t) for t in taints]),
            # The flow pools' nodes are shaped like an AKS node of the pool's
            # default VM size: capacity is the VM's vCPUs and memory,
            # allocatable what AKS's reservation leaves (mfhelm.sizing), so a
            # step too big for the real pool stays Pending here too (the other
            # pools: SERVICE_POOL_ROOM). The 128 GB OS disk is AKS's default: Metaflow's step pods
            # request ephemeral storage (@kubernetes disk, 10 GiB by default) and
            # a node without any never schedules them.
            status=client.V1NodeStatus(**_node_resources(pool)),
        ))
