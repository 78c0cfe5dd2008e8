"""A kubelet for one node of the test cluster that runs its pods' containers
as processes on this host.

KWOK's nodes (tests/cluster/kwok/) only move a pod through its phases; no
container runs. That is not enough where the outcome depends on what a
container does: Argo's executor (`argoexec`, the `init` and `wait`
containers and the `emissary` that wraps the main container) reports a
step's output parameters, and since Argo 3.7 a step that declares outputs
stays Running until it has. `ProcessKubelet` owns a Node that KWOK leaves
alone (no kwok.x-k8s.io/node annotation) and plays its kubelet:

- the Node: labels and taints given by the caller, Ready, a Lease in
  kube-node-lease renewed every 10 s (a kubelet's 40 s lease, renewed at a
  quarter of it, as pkg/kubelet/nodelease does);
- each pod bound to it: its init containers one after the other, then its
  containers side by side, each a process tree on this host; the real exit
  codes go into the pod status (state.terminated), the pod ends Succeeded
  when every container exited 0, Failed otherwise (restartPolicy is treated
  as Never: what Argo and Metaflow set);
- spec.activeDeadlineSeconds from status.startTime: the pod Failed with
  reason DeadlineExceeded, as the kubelet writes it
  (pkg/kubelet/active_deadline.go), and its containers stopped as on
  deletion: SIGTERM, then after the grace period SIGKILL;
- a pod marked for deletion: its containers get SIGTERM, then after the
  grace period (at most KILL_GRACE seconds here) SIGKILL, and the kubelet
  confirms the deletion (grace 0), as a kubelet does once they are gone.
- a pod whose containers have all exited (Succeeded or Failed) has its
  volumes torn down: the directories of its emptyDir, configMap, secret,
  projected and downwardAPI volumes are removed, as a kubelet's volume
  manager does once the pod worker has terminated the pod (v1.34.4
  volumemanager/populator findAndRemoveDeletedPods with
  ShouldPodRuntimeBeRemoved; emptyDir teardownDefault is os.RemoveAll).
  What a finished pod wrote to a volume is gone; its logs stay. Each Argo
  step pod's init container copies argoexec (about 100 MB) into an emptyDir,
  so keeping them would fill the disk over a test run.

Each container runs in its own mount, PID and UTS namespace (`unshare`, we
run as root), with a root of its own: a tmpfs onto which every top-level
entry of the host's / is bound, /proc freshly mounted for the new PID
namespace, and the pod's volumes bound at the container's mount paths.
Where a mount path does not exist on the host, the directory holding it is
replaced in the private namespace by a tmpfs with the host's entries bound
into it, so the mount point is made there and never on the host (nothing
is left in the host's / or elsewhere). Volumes: emptyDir (one directory per
pod, shared by its containers), configMap, secret, projected
(serviceAccountToken from the TokenRequest API bound to the pod, configMap,
downwardAPI: what the ServiceAccount admission plugin's kube-api-access
volume holds) and hostPath.

The environment is the container's `env` (value, fieldRef,
resourceFieldRef, secretKeyRef, configMapKeyRef) and `envFrom`, plus what a
kubelet adds: HOSTNAME, and KUBERNETES_SERVICE_HOST/PORT. These name the
API server as this host reaches it (127.0.0.1 and its port), not the
`kubernetes` Service's cluster IP, which nothing routes here: the processes
share this host's network, so pod IP and host IP are 127.0.0.1.

The image is not pulled or unpacked. `images` maps an image to the host
directories put first on the container's PATH (the image's executables);
every other image gets `default_path`. So Argo's executor image runs the
`argoexec` built from the same module version as the controller, and a
Metaflow step (`bash -c "... python ..."`) the test venv's python.

Each container's stdout and stderr go to <workdir>/<namespace>/<pod>/
<container>.log (`log_path`), the script that set up its namespaces and
started it to <container>.sh beside it; the kubelet's log endpoint is not served, nor
exec. Not done: probes, restarts, resource limits, termination messages,
image pull secrets, ephemeral containers.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from .handle import Cluster

NODE_LEASE_SECONDS = 40
RENEW_EVERY = NODE_LEASE_SECONDS / 4
POLL = 0.3
KILL_GRACE = 5.0  # at most, whatever the pod's terminationGracePeriodSeconds
# What a kubelet writes on a pod it kills for its activeDeadlineSeconds
# (pkg/kubelet/active_deadline.go).
DEADLINE_REASON = "DeadlineExceeded"
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"
ROOM = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}
VOLUME_WAIT = 30.0
TOKEN_SECONDS = 3607  # what the ServiceAccount admission plugin asks for


def stop_grace(pod: client.V1Pod) -> float:
    """Seconds between SIGTERM and SIGKILL when the pod is stopped: its
    terminationGracePeriodSeconds (the API's default 30 if unset), at most
    KILL_GRACE."""
    grace = pod.spec.termination_grace_period_seconds
    return min(KILL_GRACE, grace if grace is not None else 30)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodError(Exception):
    """The pod cannot be started here (an unsupported volume, a missing key)."""


@dataclass
class _Container:
    name: str
    image: str
    proc: subprocess.Popen[bytes] | None = None
    started: str = ""
    code: int | None = None
    finished: str = ""
    reason: str = ""


@dataclass
class ProcessKubelet:
    """Node `name` and a kubelet on it that runs its pods as host processes.

    labels/taints  the Node's, e.g. a pool node's (kubernetes.io/hostname
                   and kubernetes.io/os are added)
    images         image -> directories first on its containers' PATH
    default_path   the same for every other image
    host_paths     host directories every container sees at the same path even
                   where its own /tmp hides them (a checkout, and so its venv,
                   under /tmp)
    workdir        pod directories, volumes and container logs
    admit          called with each pod before it runs, to add what admission
                   on the real cluster would have (a mutating webhook this
                   cluster does not run); changes only the kubelet's copy
    """

    cluster: Cluster
    name: str
    workdir: Path
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, str]] = field(default_factory=list)
    images: dict[str, list[Path]] = field(default_factory=dict)
    default_path: list[Path] = field(default_factory=list)
    host_paths: list[Path] = field(default_factory=list)
    capacity: dict[str, str] = field(default_factory=lambda: dict(ROOM))
    admit: Callable[[client.V1Pod], None] | None = None
    errors: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    _pods: dict[str, _PodRun] = field(default_factory=dict, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _api: client.ApiClient | None = field(default=None, repr=False)

    # --- the node -------------------------------------------------------------

    def api(self) -> client.ApiClient:
        if self._api is None:
            from kubernetes import config

            # Its own client: its threads do not share the tests' connection pool.
            self._api = config.new_client_from_config(config_file=str(self.cluster.kubeconfig))
        return self._api

    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api())

    def start(self) -> ProcessKubelet:
        core = self.core()
        core.create_node(client.V1Node(
            metadata=client.V1ObjectMeta(name=self.name, labels={
                "kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux",
                **self.labels}),
            spec=client.V1NodeSpec(taints=[client.V1Taint(**t) for t in self.taints])))
        self._renew_lease()
        self._report_ready()

        def ready() -> bool:
            node = core.read_node(self.name)
            # Ready is not enough: the node lifecycle controller lifts the
            # not-ready taint it put on at registration.
            return not [t for t in node.spec.taints or []
                        if t.key.startswith("node.kubernetes.io/")]

        self.cluster.wait_for(ready, 60, f"node {self.name} to be Ready and untainted")
        self._thread = threading.Thread(target=self._loop, name=f"kubelet-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Kill what still runs, remove the node, its Lease and its pods."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)
        for run in list(self._pods.values()):
            run.kill(0)
            run.join(10)
        core = self.core()
        with contextlib.suppress(ApiException):
            for pod in core.list_pod_for_all_namespaces(
                    field_selector=f"spec.nodeName={self.name}").items:
                with contextlib.suppress(ApiException):
                    core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace,
                                               grace_period_seconds=0)
        for delete in (lambda: core.delete_node(self.name),
                       lambda: client.CoordinationV1Api(self.api())
                       .delete_namespaced_lease(self.name, "kube-node-lease")):
            try:
                delete()
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def __enter__(self) -> ProcessKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def check(self) -> None:
        """Fail with what went wrong in the kubelet itself (not in a pod)."""
        assert not self.errors, self.errors

    def log_path(self, namespace: str, pod: str, container: str) -> Path:
        return self.workdir / namespace / pod / f"{container}.log"

    def logs(self, namespace: str, pod: str, container: str) -> str:
        path = self.log_path(namespace, pod, container)
        return path.read_text(errors="replace") if path.exists() else ""

    def _renew_lease(self) -> None:
        leases = client.CoordinationV1Api(self.api())
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": self.name,
                         "leaseDurationSeconds": NODE_LEASE_SECONDS, "renewTime": now}}
        try:
            leases.patch_namespaced_lease(self.name, "kube-node-lease", body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            leases.create_namespaced_lease("kube-node-lease", body)

    def _report_ready(self) -> None:
        now = _now()
        self.core().patch_node_status(self.name, {"status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "process kubelet (tests/cluster/process_kubelet.py)",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": self.name}],
            "capacity": self.capacity, "allocatable": self.capacity, "phase": "Running"}})

    # --- the pods -------------------------------------------------------------

    def _loop(self) -> None:
        renewed = time.monotonic()
        while not self._stop.is_set():
            try:
                if time.monotonic() - renewed > RENEW_EVERY:
                    self._renew_lease()
                    self._report_ready()
                    renewed = time.monotonic()
                self._sync()
            except Exception as exc:  # noqa: BLE001 - reported by check()
                self.errors.append(f"kubelet {self.name}: {exc!r}")
            self._stop.wait(POLL)

    def _sync(self) -> None:
        core = self.core()
        seen = set()
        for pod in core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={self.name}").items:
            uid = pod.metadata.uid
            seen.add(uid)
            run = self._pods.get(uid)
            if pod.metadata.deletion_timestamp is not None:
                if run is None or run.done.is_set():
                    self._confirm_deletion(pod)
                else:
                    run.kill(stop_grace(pod))
                continue
            if run is None and pod.status.phase not in ("Succeeded", "Failed"):
                if self.admit is not None:
                    self.admit(pod)
                run = _PodRun(self, pod)
                self._pods[uid] = run
                run.start()
        for uid, run in list(self._pods.items()):
            if uid not in seen:  # gone from the API (force-deleted): stop what runs
                run.kill(0)
                if run.done.is_set():
                    del self._pods[uid]

    def _confirm_deletion(self, pod: client.V1Pod) -> None:
        try:
            self.core().delete_namespaced_pod(
                pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0,
                body=client.V1DeleteOptions(grace_period_seconds=0,
                                            preconditions={"uid": pod.metadata.uid}))
            self.events.append(f"{pod.metadata.namespace}/{pod.metadata.name}: removed")
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def path_for(self, image: str) -> list[Path]:
        return self.images.get(image, self.default_path)


class _PodRun(threading.Thread):
    """One pod's life on the node: volumes, init containers, containers."""

    def __init__(self, kubelet: ProcessKubelet, pod: client.V1Pod) -> None:
        super().__init__(name=f"pod-{pod.metadata.name}", daemon=True)
        self.kubelet = kubelet
        self.pod = pod
        self.ns = pod.metadata.namespace
        self.pod_name = pod.metadata.name
        self.dir = kubelet.workdir / self.ns / self.pod_name
        self.done = threading.Event()
        self._kill = threading.Event()
        self._grace = 0.0
        self._deadline_hit = False
        self.start_time = ""
        self.started_at = 0.0
        self.inits = [_Container(c.name, c.image) for c in pod.spec.init_containers or []]
        self.ctrs = [_Container(c.name, c.image) for c in pod.spec.containers]
        self._lock = threading.Lock()

    def kill(self, grace: float) -> None:
        self._grace = grace
        self._kill.set()

    # --- the API ----------------------------------------------------------------

    def _patch(self, status: dict[str, Any]) -> None:
        try:
            self.kubelet.core().patch_namespaced_pod_status(
                self.pod_name, self.ns, {"status": status})
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile
                raise

    def _statuses(self, ctrs: list[_Container], ready: bool) -> list[dict[str, Any]]:
        out = []
        for c in ctrs:
            if c.code is not None:
                state: dict[str, Any] = {"terminated": {
                    "exitCode": c.code,
                    "reason": c.reason or ("Completed" if c.code == 0 else "Error"),
                    "startedAt": c.started or c.finished, "finishedAt": c.finished,
                    "containerID": f"process://{self.pod.metadata.uid}/{c.name}"}}
            elif c.started:
                state = {"running": {"startedAt": c.started}}
            else:
                state = {"waiting": {"reason": "PodInitializing"}}
            out.append({"name": c.name, "image": c.image, "imageID": "",
                        "containerID": f"process://{self.pod.metadata.uid}/{c.name}",
                        "ready": ready and c.started != "" and c.code is None,
                        "restartCount": 0, "started": c.started != "" and c.code is None,
                        "state": state})
        return out

    def _report(self, phase: str, *, reason: str = "", message: str = "") -> None:
        with self._lock:
            now = _now()
            initialized = all(c.code == 0 for c in self.inits)
            running = phase == "Running" and all(c.started and c.code is None
                                                 for c in self.ctrs)
            status: dict[str, Any] = {
                "phase": phase, "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}], "hostIPs": [{"ip": "127.0.0.1"}],
                "startTime": self.start_time,
                "conditions": [
                    {"type": t, "status": "True" if ok else "False", "lastTransitionTime": now}
                    for t, ok in (("PodScheduled", True), ("Initialized", initialized),
                                  ("ContainersReady", running), ("Ready", running))],
                "initContainerStatuses": self._statuses(self.inits, False),
                "containerStatuses": self._statuses(self.ctrs, True),
            }
            if reason:
                status |= {"reason": reason, "message": message}
            self._patch(status)

    # --- the run ------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
            # Every container has exited (or none started): the pod is
            # terminated, and its volumes go as a kubelet tears them down.
            shutil.rmtree(self.dir / "volumes", ignore_errors=True)
        except Exception as exc:  # noqa: BLE001 - reported by check()
            self.kubelet.errors.append(f"pod {self.ns}/{self.pod_name}: {exc!r}")
        finally:
            self.done.set()

    def _run(self) -> None:
        self.start_time = _now()
        self.started_at = time.monotonic()
        self._report("Pending")
        # As a kubelet, wait (here: a bounded while) for what the volumes
        # need to appear, e.g. the kube-root-ca.crt ConfigMap the
        # controller-manager publishes into a new namespace.
        waited_until = time.monotonic() + VOLUME_WAIT
        while True:
            try:
                volumes = _Volumes(self.kubelet, self.pod, self.dir).prepare()
                break
            except PodError as exc:
                if time.monotonic() < waited_until and not self._kill.is_set():
                    time.sleep(0.5)
                    continue
                self.kubelet.events.append(f"{self.ns}/{self.pod_name}: {exc}")
                self._report("Failed", reason="ProcessKubeletError", message=str(exc))
                return
        specs = {c.name: c for c in [*(self.pod.spec.init_containers or []),
                                     *self.pod.spec.containers]}
        for ctr in self.inits:
            self._launch(specs[ctr.name], ctr, volumes)
            self._report("Pending")
            self._wait([ctr])
            self._report("Pending")
            if ctr.code != 0:
                self._finish()
                return
        for ctr in self.ctrs:
            self._launch(specs[ctr.name], ctr, volumes)
        self._report("Running")
        self._wait(self.ctrs, report=True)
        self._finish()

    def _finish(self) -> None:
        for ctr in [*self.inits, *self.ctrs]:
            if ctr.code is None:  # never started (an init container failed first)
                ctr.code, ctr.reason, ctr.finished = 1, "ContainerStatusUnknown", _now()
        ok = all(c.code == 0 for c in [*self.inits, *self.ctrs])
        if self._deadline_hit:
            self._report("Failed", reason=DEADLINE_REASON, message=DEADLINE_MESSAGE)
        else:
            self._report("Succeeded" if ok else "Failed")
        self.kubelet.events.append(
            f"{self.ns}/{self.pod_name}: " + ", ".join(
                f"{c.name}={c.code}" for c in [*self.inits, *self.ctrs]))

    def _deadline_passed(self) -> bool:
        deadline = self.pod.spec.active_deadline_seconds
        return deadline is not None and time.monotonic() - self.started_at >= deadline

    def _wait(self, ctrs: list[_Container], report: bool = False) -> None:
        """Until every one of `ctrs` has exited; kills them on deletion or deadline."""
        killing_since: float | None = None
        while True:
            changed = False
            for c in ctrs:
                if c.code is None and c.proc is not None and c.proc.poll() is not None:
                    code = c.proc.returncode
                    c.code = 128 - code if code < 0 else code  # killed by a signal
                    c.finished = _now()
                    changed = True
            if all(c.code is not None for c in ctrs):
                return
            if changed and report:
                self._report("Running")
            if killing_since is None and self._deadline_passed():
                # Stopped as a kubelet stops a pod that turned Failed: with
                # the pod's grace period (pod_workers.go,
                # calculateEffectiveGracePeriod: no override, so
                # terminationGracePeriodSeconds), at most KILL_GRACE here.
                # Argo's wait container reports the step in that time.
                self._deadline_hit = True
                self.kill(stop_grace(self.pod))
            if killing_since is None and self._kill.is_set():
                killing_since = time.monotonic()
                for c in ctrs:
                    if c.proc and c.proc.poll() is None:
                        _signal_tree(c.proc, signal.SIGTERM)
            if killing_since is not None and time.monotonic() - killing_since >= self._grace:
                for c in ctrs:
                    if c.proc and c.proc.poll() is None:
                        c.proc.kill()  # unshare --kill-child: the namespace goes with it
            time.sleep(0.1)

    def _launch(self, spec: client.V1Container, ctr: _Container,
                volumes: dict[str, Path]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        env = _Env(self.kubelet, self.pod, spec).build()
        path = [str(p) for p in self.kubelet.path_for(spec.image)]
        env.setdefault("PATH", os.pathsep.join(
            [*path, "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin",
             "/sbin", "/bin"]))
        env.setdefault("HOME", "/root")
        argv = [*(spec.command or []), *(spec.args or [])]
        if not argv:
            raise PodError(f"container {spec.name}: no command (images are not read here)")
        root = self.dir / f".root-{spec.name}"
        root.mkdir(parents=True, exist_ok=True)
        # The container's /tmp is its own: what it needs from the host's /tmp
        # (the PATH directories, e.g. a venv of a checkout there) is bound back.
        needed = [*self.kubelet.host_paths, *self.kubelet.path_for(spec.image)]
        mounts = [(p, str(p), False) for p in dict.fromkeys(needed)
                  if Path(os.path.normpath(p)).is_relative_to("/tmp")]
        for m in spec.volume_mounts or []:
            src = volumes[m.name] / (m.sub_path or "")
            if m.sub_path and not src.exists():
                src.mkdir(parents=True)  # a kubelet makes a missing subPath a directory
            mounts.append((src, m.mount_path, bool(m.read_only)))
        script = _namespace_script(root, mounts, self.pod_name, spec.working_dir or "/", env,
                                   argv)
        log = self.kubelet.log_path(self.ns, self.pod_name, spec.name)
        log.with_suffix(".sh").write_text(script)
        with log.open("ab") as out:
            ctr.proc = subprocess.Popen(
                ["unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child",
                 "--propagation", "private", "/bin/sh", "-c", script, "process-kubelet"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        ctr.started = _now()


def _signal_tree(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the process namespace's init (unshare's child), as a runtime
    signals a container's PID 1."""
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    except OSError:
        return
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), sig)


# --- the container's root --------------------------------------------------------

def _namespace_script(root: Path, mounts: list[tuple[Path, str, bool]], hostname: str,
                      workdir: str, env: dict[str, str], argv: list[str]) -> str:
    """The shell run as the new namespaces' first process: builds the root,
    mounts the volumes, enters the root and execs the container's command."""
    q = shlex.quote
    lines = ["set -e"]
    if shutil.which("hostname"):
        lines.append(f"hostname {q(hostname[:63])}")
    lines.append(f"mount -t tmpfs -o mode=755 process-kubelet {q(str(root))}")
    lines += _bind_entries("/", root)
    lines += [f"mkdir {q(str(root))}/proc", f"mount -t proc proc {q(str(root))}/proc"]
    # What each directory of the root is: "host" (a tmpfs of ours with the
    # host's entries bound in), "ours" (made by us, empty), "volume" (a
    # volume's directory). A path in none of them is the host's, bound.
    kinds: dict[str, str] = {"/": "host"}
    # The container's /tmp is its own, not the host's. (Its HOME, /root
    # unless the pod sets one, is the host's: the pyenv the test venv's
    # python links to lives there.)
    lines += _open("/tmp", root, bind=False)
    kinds["/tmp"] = "ours"
    # Two passes: every directory of the root is made (or opened: a tmpfs
    # over the host's) before any volume is bound, so that opening a
    # directory for one mount point never hides a volume already bound under
    # it; mount points inside a volume are made after that volume is bound.
    binds: list[str] = []
    for src, target, read_only in sorted(mounts, key=lambda m: m[1].count("/")):
        final, ops = _materialize(target, root, kinds, src.is_dir())
        lines += [op for inside, op in ops if not inside]
        binds += [op for inside, op in ops if inside]
        binds.append(f"mount --bind {q(str(src))} {q(str(root) + final)}")
        if read_only:
            binds.append(f"mount -o remount,bind,ro {q(str(root) + final)}")
        kinds[final] = "volume"
    lines += binds
    exports = " ".join(q(f"{k}={v}") for k, v in env.items())
    command = " ".join(q(a) for a in argv)
    lines.append(f"exec chroot {q(str(root))} /usr/bin/env -i {exports} /bin/sh -c "
                 f"{q('cd ' + q(workdir) + ' && exec ' + command)}")
    return "\n".join(lines)


def _bind_entries(host_dir: str, root: Path) -> list[str]:
    """Bind every entry of host_dir into the same place under root (a tmpfs
    of ours); symlinks are copied, /proc is left for a fresh mount."""
    q = shlex.quote
    ops = []
    for name in sorted(os.listdir(host_dir)):
        src = os.path.join(host_dir, name)
        dst = str(root) + src
        if host_dir == "/" and name == "proc":
            continue
        if os.path.islink(src):
            ops.append(f"ln -s {q(os.readlink(src))} {q(dst)}")
        elif os.path.isdir(src):
            ops += [f"mkdir {q(dst)}", f"mount --rbind {q(src)} {q(dst)}"]
        elif os.path.exists(src):
            ops += [f"touch {q(dst)}", f"mount --bind {q(src)} {q(dst)}"]
    return ops


def _open(host_dir: str, root: Path, bind: bool = True) -> list[str]:
    """Replace root's view of host_dir by a tmpfs (with the host's entries
    bound into it when `bind`), so that new entries go to the tmpfs."""
    dst = shlex.quote(str(root) + host_dir)
    ops = [f"mkdir -p {dst}", f"mount -t tmpfs -o mode=755 process-kubelet {dst}"]
    return ops + (_bind_entries(host_dir, root) if bind else [])


def _materialize(target: str, root: Path, kinds: dict[str, str],
                 directory: bool) -> tuple[str, list[tuple[bool, str]]]:
    """Where `target` resolves under root, and the commands that make it
    exist there without creating anything on the host, each with whether it
    works inside a volume (and so runs after that volume is bound)."""
    q = shlex.quote
    parts = [p for p in Path(os.path.normpath(target)).parts if p != "/"]
    ops: list[tuple[bool, str]] = []
    cur = "/"
    hops = 0
    while parts:
        name = parts.pop(0)
        nxt = os.path.join(cur, name)
        kind = kinds.get(cur)
        if nxt in kinds:
            cur = nxt
            continue
        if kind in ("ours", "volume"):
            # Our tmpfs, or a volume (a kubelet, too, makes mount points in it).
            make = "mkdir -p" if parts or directory else "touch"
            ops.append((kind == "volume", f"{make} {q(str(root) + nxt)}"))
            kinds[nxt] = "ours" if kind == "ours" else "volume"
            cur = nxt
            continue
        if os.path.islink(nxt):
            hops += 1
            if hops > 40:
                raise PodError(f"{target}: too many symlinks")
            link = os.path.normpath(os.path.join(cur, os.readlink(nxt)))
            parts = [p for p in Path(link).parts if p != "/"] + parts
            cur = "/"
            continue
        if os.path.exists(nxt):
            cur = nxt  # the host's, bound
            continue
        if kind == "host":
            # An opened host directory: the new entry goes to our tmpfs.
            make = "mkdir -p" if parts or directory else "touch"
            ops.append((False, f"{make} {q(str(root) + nxt)}"))
            kinds[nxt] = "ours"
            cur = nxt
            continue
        # Missing, in a directory that is the host's: give it a tmpfs of its own.
        ops += [(False, op) for op in _open(cur, root)]
        kinds[cur] = "host"
        parts.insert(0, name)
    return cur, ops


# --- volumes and environment -----------------------------------------------------

class _Volumes:
    def __init__(self, kubelet: ProcessKubelet, pod: client.V1Pod, pod_dir: Path) -> None:
        self.kubelet = kubelet
        self.pod = pod
        self.dir = pod_dir / "volumes"

    def prepare(self) -> dict[str, Path]:
        out = {}
        for vol in self.pod.spec.volumes or []:
            if vol.host_path:
                out[vol.name] = Path(vol.host_path.path)
                continue
            path = self.dir / vol.name
            path.mkdir(parents=True, exist_ok=True)
            if vol.empty_dir is not None:
                pass
            elif vol.config_map:
                self._write(path, self._config_map(vol.config_map.name,
                                                   bool(vol.config_map.optional)),
                            vol.config_map.items)
            elif vol.secret:
                self._write(path, self._secret(vol.secret.secret_name,
                                               bool(vol.secret.optional)), vol.secret.items)
            elif vol.projected:
                for source in vol.projected.sources:
                    self._projected(path, source)
            elif vol.downward_api:
                for item in vol.downward_api.items:
                    self._file(path, item.path, self._downward(item))
            else:
                raise PodError(f"volume {vol.name}: this kind is not supported here")
            out[vol.name] = path
        return out

    def _config_map(self, name: str, optional: bool) -> dict[str, bytes]:
        try:
            cm = self.kubelet.core().read_namespaced_config_map(name, self.pod.metadata.namespace)
        except ApiException as exc:
            if exc.status == 404 and optional:
                return {}
            raise PodError(f"configmap {name}: {exc.reason}") from exc
        data = {k: v.encode() for k, v in (cm.data or {}).items()}
        data |= {k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()}
        return data

    def _secret(self, name: str, optional: bool) -> dict[str, bytes]:
        try:
            secret = self.kubelet.core().read_namespaced_secret(name, self.pod.metadata.namespace)
        except ApiException as exc:
            if exc.status == 404 and optional:
                return {}
            raise PodError(f"secret {name}: {exc.reason}") from exc
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    @staticmethod
    def _file(path: Path, name: str, data: bytes) -> None:
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def _write(self, path: Path, data: dict[str, bytes], items: list[Any] | None) -> None:
        if items:
            for item in items:
                if item.key in data:
                    self._file(path, item.path, data[item.key])
        else:
            for key, value in data.items():
                self._file(path, key, value)

    def _projected(self, path: Path, source: client.V1VolumeProjection) -> None:
        if source.service_account_token:
            sat = source.service_account_token
            request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
                audiences=[sat.audience] if sat.audience else [],
                expiration_seconds=sat.expiration_seconds or TOKEN_SECONDS,
                bound_object_ref=client.V1BoundObjectReference(
                    api_version="v1", kind="Pod", name=self.pod.metadata.name,
                    uid=self.pod.metadata.uid)))
            account = self.pod.spec.service_account_name or "default"
            try:
                token = self.kubelet.core().create_namespaced_service_account_token(
                    account, self.pod.metadata.namespace, request)
            except ApiException as exc:
                raise PodError(f"token of serviceaccount {account}: {exc.reason}") from exc
            self._file(path, sat.path, token.status.token.encode())
        elif source.config_map:
            self._write(path, self._config_map(source.config_map.name,
                                               bool(source.config_map.optional)),
                        source.config_map.items)
        elif source.secret:
            self._write(path, self._secret(source.secret.name, bool(source.secret.optional)),
                        source.secret.items)
        elif source.downward_api:
            for item in source.downward_api.items:
                self._file(path, item.path, self._downward(item))
        else:
            raise PodError("projected volume: this source is not supported here")

    def _downward(self, item: Any) -> bytes:
        if item.field_ref:
            return field_value(self.pod, item.field_ref.field_path).encode()
        raise PodError(f"downwardAPI {item.path}: only fieldRef is supported here")


def field_value(pod: client.V1Pod, path: str) -> str:
    """A fieldRef's value (the fields the downward API offers)."""
    meta = pod.metadata
    simple: dict[str, Callable[[], str | None]] = {
        "metadata.name": lambda: meta.name,
        "metadata.namespace": lambda: meta.namespace,
        "metadata.uid": lambda: meta.uid,
        "spec.nodeName": lambda: pod.spec.node_name,
        "spec.serviceAccountName": lambda: pod.spec.service_account_name,
        "status.hostIP": lambda: "127.0.0.1",
        "status.hostIPs": lambda: "127.0.0.1",
        "status.podIP": lambda: "127.0.0.1",
        "status.podIPs": lambda: "127.0.0.1",
    }
    if path in simple:
        return simple[path]() or ""
    for prefix, values in (("metadata.labels", meta.labels),
                           ("metadata.annotations", meta.annotations)):
        if path.startswith(prefix + "['") and path.endswith("']"):
            return (values or {}).get(path[len(prefix) + 2:-2], "")
        if path == prefix:
            return "\n".join(f'{k}="{v}"' for k, v in sorted((values or {}).items()))
    raise PodError(f"fieldRef {path}: not supported here")


class _Env:
    def __init__(self, kubelet: ProcessKubelet, pod: client.V1Pod,
                 spec: client.V1Container) -> None:
        self.kubelet = kubelet
        self.pod = pod
        self.spec = spec
        self._volumes = _Volumes(kubelet, pod, Path("/nonexistent"))

    def build(self) -> dict[str, str]:
        host = self.kubelet.cluster.server.split("://", 1)[-1]
        api_host, _, api_port = host.rpartition(":")
        env = {"HOSTNAME": self.pod.metadata.name,
               "KUBERNETES_SERVICE_HOST": api_host, "KUBERNETES_SERVICE_PORT": api_port,
               "KUBERNETES_SERVICE_PORT_HTTPS": api_port,
               "KUBERNETES_PORT": f"tcp://{host}"}
        for source in self.spec.env_from or []:
            prefix = source.prefix or ""
            if source.config_map_ref:
                data = self._volumes._config_map(source.config_map_ref.name,
                                                 bool(source.config_map_ref.optional))
            else:
                data = self._volumes._secret(source.secret_ref.name,
                                             bool(source.secret_ref.optional))
            env |= {prefix + k: v.decode() for k, v in data.items()}
        for var in self.spec.env or []:
            env[var.name] = self._value(var, env)
        return env

    def _value(self, var: client.V1EnvVar, env: dict[str, str]) -> str:
        if var.value_from is None:
            # $(NAME) refers to a variable defined before it; $$ escapes.
            value = var.value or ""
            out, i = [], 0
            while i < len(value):
                if value.startswith("$$", i):
                    out.append("$")
                    i += 2
                elif value.startswith("$(", i) and ")" in value[i:]:
                    end = value.index(")", i)
                    name = value[i + 2:end]
                    out.append(env.get(name, value[i:end + 1]))
                    i = end + 1
                else:
                    out.append(value[i])
                    i += 1
            return "".join(out)
        src = var.value_from
        if src.field_ref:
            return field_value(self.pod, src.field_ref.field_path)
        if src.resource_field_ref:
            return self._resource(src.resource_field_ref)
        if src.config_map_key_ref:
            ref = src.config_map_key_ref
            data = self._volumes._config_map(ref.name, bool(ref.optional))
        elif src.secret_key_ref:
            ref = src.secret_key_ref
            data = self._volumes._secret(ref.name, bool(ref.optional))
        else:
            raise PodError(f"env {var.name}: this source is not supported here")
        if ref.key not in data:
            if ref.optional:
                return ""
            raise PodError(f"env {var.name}: key {ref.key} not in {ref.name}")
        return data[ref.key].decode()

    def _resource(self, ref: client.V1ResourceFieldSelector) -> str:
        """limits.* / requests.* of the container, the node's allocatable for
        an unset limit (as the kubelet does); cpu rounded up to cores, memory
        in bytes (divisor 1)."""
        from kubernetes.utils import parse_quantity

        kind, _, resource = ref.resource.partition(".")
        resources = self.spec.resources
        values = (resources.limits if kind == "limits" else resources.requests) \
            if resources else None
        raw = (values or {}).get(resource) or self.kubelet.capacity.get(resource, "0")
        divisor = parse_quantity(ref.divisor or "1")
        amount = parse_quantity(raw) / divisor
        return str(int(-(-amount // 1)))

