"""The node-side duties KWOK does not do, run as threads beside the tests.

- `VolumeProvisioner` plays a dynamic volume provisioner for the `standard`
  StorageClass: for each claim waiting on it, it creates a hostPath
  PersistentVolume under the cluster's scratch directory, bound to that
  claim, as a cloud disk driver would; released volumes are removed.
- `ExecDirectories` gives every pod on a fake node its own host directory
  and tells KWOK (an `Exec` object named after the pod) to run `exec`
  requests for that pod there (with the pod's volumes mounted where the
  host allows it, see kwok/shim/sh), and (a `Logs` object) to serve the
  pod's logs from the file `<directory>.log` beside it.

Both follow the API with watches and reconnect on any error, so a restart
of the apiserver or an expired watch costs only a moment.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)

PROVISIONER = "mfhelm.io/hostpath"
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
# A test's stand-in pod may name host directories to put first on the PATH of
# commands exec'd into it (os.pathsep-separated), as its image would have
# them: the Airflow scheduler's stand-in gets the pinned Airflow's `python`.
EXEC_PATH_ANNOTATION = "mfhelm.io/test-exec-path"


class _WatchThread(threading.Thread):
    """Runs ``handle`` for every event of a list/watch until stopped."""

    def __init__(self, name: str, api: client.ApiClient) -> None:
        super().__init__(name=name, daemon=True)
        self.api = api
        self._stop_event = threading.Event()
        self.errors: list[str] = []

    def stop(self) -> None:
        self._stop_event.set()

    def list_func(self) -> Callable[..., Any]:
        raise NotImplementedError

    def handle(self, event_type: str, obj: Any) -> None:
        raise NotImplementedError

    def _events(self) -> Iterator[tuple[str, Any]]:
        w = watch.Watch()
        # Short server-side timeouts let the thread notice stop() promptly.
        for event in w.stream(self.list_func(), timeout_seconds=5):
            yield event["type"], event["object"]
            if self._stop_event.is_set():
                w.stop()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                for event_type, obj in self._events():
                    try:
                        self.handle(event_type, obj)
                    except ApiException as exc:
                        if exc.status not in (404, 409):
                            self._record(f"{self.name}: {exc.status} {exc.reason}")
            except Exception as exc:  # keep serving: the next watch starts fresh
                if not self._stop_event.is_set():
                    self._record(f"{self.name}: {exc!r}")
                    self._stop_event.wait(0.5)

    def _record(self, message: str) -> None:
        log.warning(message)
        self.errors.append(message)
        del self.errors[:-20]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


class VolumeProvisioner(_WatchThread):
    """Binds each pending claim of `storage_class` to a new hostPath volume."""

    def __init__(self, api: client.ApiClient, root: Path, storage_class: str) -> None:
        super().__init__("volume-provisioner", api)
        self.root = root
        self.storage_class = storage_class
        self.core = client.CoreV1Api(api)

    def list_func(self) -> Callable[..., Any]:
        return self.core.list_persistent_volume_claim_for_all_namespaces

    def handle(self, event_type: str, claim: client.V1PersistentVolumeClaim) -> None:
        if event_type == "DELETED":
            self._reclaim(claim)
            return
        if claim.spec.storage_class_name != self.storage_class:
            return
        if claim.spec.volume_name or (claim.status and claim.status.phase != "Pending"):
            return
        ns, name = claim.metadata.namespace, claim.metadata.name
        path = self.root / _safe(ns) / _safe(name)
        path.mkdir(parents=True, exist_ok=True)
        size = (claim.spec.resources.requests or {}).get("storage", "1Gi")
        volume = client.V1PersistentVolume(
            metadata=client.V1ObjectMeta(
                name=f"pvc-{claim.metadata.uid}",
                annotations={"pv.kubernetes.io/provisioned-by": PROVISIONER},
                labels={"mfhelm.io/claim-namespace": ns[:63]},
            ),
            spec=client.V1PersistentVolumeSpec(
                capacity={"storage": size},
                access_modes=claim.spec.access_modes or ["ReadWriteOnce"],
                volume_mode=claim.spec.volume_mode or "Filesystem",
                storage_class_name=self.storage_class,
                # Retain: the controller-manager cannot delete hostPath volumes;
                # _reclaim does it when the claim goes.
                persistent_volume_reclaim_policy="Retain",
                host_path=client.V1HostPathVolumeSource(path=str(path), type="Directory"),
                claim_ref=client.V1ObjectReference(
                    api_version="v1", kind="PersistentVolumeClaim", namespace=ns, name=name,
                    uid=claim.metadata.uid,
                ),
            ),
        )
        self.core.create_persistent_volume(volume)

    def _reclaim(self, claim: client.V1PersistentVolumeClaim) -> None:
        try:
            self.core.delete_persistent_volume(f"pvc-{claim.metadata.uid}")
        except ApiException as exc:
            if exc.status != 404:
                raise
        shutil.rmtree(
            self.root / _safe(claim.metadata.namespace) / _safe(claim.metadata.name),
            ignore_errors=True,
        )


class ExecDirectories(_WatchThread):
    """One host directory and one KWOK `Exec` per pod on a fake node.

    With ``mounts`` (the host can make mount namespaces), each container's
    Exec also carries MFHELM_POD_MOUNTS for tests/cluster/kwok/shim/sh: its
    claim, hostPath and emptyDir volumes as "<host dir><TAB><mount path>".
    """

    def __init__(self, api: client.ApiClient, root: Path, fake_nodes: set[str],
                 mounts: bool) -> None:
        super().__init__("exec-directories", api)
        self.root = root
        self.fake_nodes = fake_nodes
        self.mounts = mounts
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self._done: dict[tuple[str, str], str] = {}  # (namespace, pod) -> uid served

    def list_func(self) -> Callable[..., Any]:
        return self.core.list_pod_for_all_namespaces

    def handle(self, event_type: str, pod: client.V1Pod) -> None:
        ns, name, uid = pod.metadata.namespace, pod.metadata.name, pod.metadata.uid
        workdir = self.root / ns / name
        if event_type == "DELETED":
            # The Exec goes with the pod (owner reference); the directory is ours.
            if self._done.pop((ns, name), None) == uid:
                shutil.rmtree(workdir, ignore_errors=True)
                shutil.rmtree(workdir.with_name(f".{name}.volumes"), ignore_errors=True)
                workdir.with_name(name + ".log").unlink(missing_ok=True)
            return
        if self._done.get((ns, name)) == uid:
            return
        if pod.spec.node_name and pod.spec.node_name not in self.fake_nodes:
            return
        claims = [v for v in pod.spec.volumes or [] if v.persistent_volume_claim]
        if self.mounts and claims and not pod.spec.node_name:
            return  # claims are bound by the time the pod is scheduled: come back then
        # Otherwise registered as soon as the pod exists, so the Exec is in
        # place by the time KWOK reports the pod Running.
        workdir.mkdir(parents=True, exist_ok=True)
        logfile = workdir.with_name(name + ".log")
        owner = [{"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}]
        base_env = [{"name": "HOME", "value": str(workdir)},
                    {"name": "POD_NAME", "value": name},
                    {"name": "POD_NAMESPACE", "value": ns}]
        exec_path = (pod.metadata.annotations or {}).get(EXEC_PATH_ANNOTATION)
        if exec_path:
            # The shim runs the command with PATH=$MFHELM_HOST_PATH; KWOK adds
            # these after its own environment, so this value wins.
            base_env.append({"name": "MFHELM_HOST_PATH",
                             "value": os.pathsep.join([exec_path, os.environ["PATH"]])})
        sources = self._volume_sources(pod, workdir) if self.mounts else {}
        targets = []
        for container in [*(pod.spec.init_containers or []), *pod.spec.containers]:
            env = list(base_env)
            lines = []
            for m in sorted(container.volume_mounts or [], key=lambda m: m.mount_path):
                if m.name in sources:
                    src = sources[m.name] / (m.sub_path or "")
                    src.mkdir(parents=True, exist_ok=True)  # a kubelet creates subPaths too
                    lines.append(f"{src}\t{m.mount_path}")
            if lines:
                env.append({"name": "MFHELM_POD_MOUNTS", "value": "\n".join(lines)})
            targets.append({"containers": [container.name],
                            "local": {"workDir": str(workdir), "envs": env}})
        self._put(ns, "execs", {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Exec",
            "metadata": {"name": name, "namespace": ns, "ownerReferences": owner},
            "spec": {"execs": targets},
        })
        self._put(ns, "logs", {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Logs",
            "metadata": {"name": name, "namespace": ns, "ownerReferences": owner},
            # A kubelet ends a follow when the container exits; KWOK, following
            # a file, never would. Pods that run to completion (which KWOK
            # finishes within a second) get the log as it is instead, as a
            # kubelet gives a finished container's; a follow would hang the
            # KubernetesPodOperator for its 5-minute read timeout.
            "spec": {"logs": [{"logsFile": str(logfile),
                               "follow": (pod.spec.restart_policy or "Always") == "Always"}]},
        })
        # Created last: its presence tells Cluster.wait_pod_ready the pod is wired up.
        logfile.touch()
        self._done[(ns, name)] = uid

    def _volume_sources(self, pod: client.V1Pod, workdir: Path) -> dict[str, Path]:
        """volume name -> host directory standing in for it."""
        sources: dict[str, Path] = {}
        for volume in pod.spec.volumes or []:
            if volume.persistent_volume_claim:
                claim = self.core.read_namespaced_persistent_volume_claim(
                    volume.persistent_volume_claim.claim_name, pod.metadata.namespace)
                if not claim.spec.volume_name:
                    continue
                pv = self.core.read_persistent_volume(claim.spec.volume_name)
                if pv.spec.host_path:
                    sources[volume.name] = Path(pv.spec.host_path.path)
            elif volume.host_path:
                sources[volume.name] = Path(volume.host_path.path)
            elif volume.empty_dir is not None:
                path = workdir.with_name(f".{workdir.name}.volumes") / volume.name
                path.mkdir(parents=True, exist_ok=True)
                sources[volume.name] = path
        return sources

    def _put(self, ns: str, plural: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        try:
            self.custom.create_namespaced_custom_object(
                "kwok.x-k8s.io", "v1alpha1", ns, plural, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            # A pod re-created under the same name (a StatefulSet's) finds the
            # previous pod's object still waiting for garbage collection: take it over.
            old = self.custom.get_namespaced_custom_object(
                "kwok.x-k8s.io", "v1alpha1", ns, plural, name)
            body["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            self.custom.replace_namespaced_custom_object(
                "kwok.x-k8s.io", "v1alpha1", ns, plural, name, body)
