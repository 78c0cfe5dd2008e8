"""Kubernetes API helpers: clients, namespaces, Secrets, pods, readiness, exec.

The kubernetes package is imported inside functions: `mfhelm --help` must
not pay for it.
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from typing import Any

from mfhelm.errors import MfhelmError


def api_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A client for the kube context, checked to answer: an unreachable server,
    a broken kubeconfig or refused credentials end here in one line, before a
    command reads or writes anything."""
    import yaml
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    env = os.environ.get("KUBECONFIG")
    where = kubeconfig or (f"$KUBECONFIG ({env})" if env else "~/.kube/config")
    try:
        if context is not None:
            contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)
            names = sorted(str(c.get("name")) for c in contexts or [])
            if context not in names:
                raise MfhelmError(f"context {context!r} is not in {where} (it has: "
                                  f"{', '.join(names) or 'none'})")
        api = config.new_client_from_config(config_file=kubeconfig, context=context)
    except ConfigException as exc:
        raise MfhelmError(f"cannot load kube context from {where}: {_one_line(exc)}") from None
    except (OSError, TypeError, ValueError, KeyError, AttributeError, yaml.YAMLError,
            RecursionError) as exc:
        raise MfhelmError(f"cannot load kube context from {where}: not a valid kubeconfig "
                          f"({_one_line(exc)})") from None
    _check_reachable(api, where)
    return api


def preload() -> None:
    """Import the Kubernetes client and the API classes an install uses (about a
    second, most of a short command's own time), so that a caller can do it
    while helm works in another process."""
    import gc

    # Thousands of classes are made here and none is garbage: collections in
    # the middle cost time, and so does walking them again at exit.
    enabled = gc.isenabled()
    gc.disable()
    try:
        from kubernetes import client, config  # noqa: F401

        for name in ("CoreV1Api", "VersionApi", "V1Namespace", "V1Secret", "V1SecretList",
                     "V1ObjectMeta"):
            getattr(client, name)  # kubernetes.client loads these on first access
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _api_error(exc: Exception, what: str) -> MfhelmError:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", "") or str(exc)
    if status == 401:
        return MfhelmError(f"{what}: the API server refused the kube credentials (401 "
                           "Unauthorized); refresh them (e.g. `az aks get-credentials`)")
    if status == 403:
        return MfhelmError(f"{what}: forbidden; your kube credentials lack the right ({reason})")
    return MfhelmError(_one_line(f"{what}: {status or ''} {reason}"))


def _core(api: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api)


def namespace_labels(api: Any, name: str) -> dict[str, str] | None:
    """The namespace's labels, or None when it does not exist."""
    from kubernetes.client.exceptions import ApiException

    try:
        ns = _core(api).read_namespace(name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise _api_error(exc, f"reading namespace {name}") from None
    return dict(ns.metadata.labels or {})


def ensure_namespace(api: Any, name: str, labels: dict[str, str] | None = None) -> bool:
    """Create the namespace (with labels) unless it exists; True if created.
    An existing namespace's labels are left as its owner set them."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    if namespace_labels(api, name) is not None:
        return False
    meta = client.V1ObjectMeta(name=name, labels=labels or None)
    try:
        _core(api).create_namespace(client.V1Namespace(metadata=meta))
    except ApiException as exc:
        if exc.status != 409:
            raise _api_error(exc, f"creating namespace {name}") from None
        return False
    return True


def read_secret_value(api: Any, namespace: str, name: str, key: str) -> str | None:
    """A Secret's decoded value, or None when the Secret or key is absent."""
    from kubernetes.client.exceptions import ApiException

    try:
        secret = _core(api).read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise _api_error(exc, f"reading secret {namespace}/{name}") from None
    raw = (secret.data or {}).get(key)
    return base64.b64decode(raw).decode() if raw is not None else None


def apply_secret(api: Any, namespace: str, name: str, data: dict[str, str],
                 labels: dict[str, str] | None = None) -> None:
    """Create or replace an Opaque Secret. Values never leave this process
    except in the API request body."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, namespace=namespace,
                                     labels={"app.kubernetes.io/managed-by": "mfhelm",
                                             **(labels or {})}),
        type="Opaque",
        string_data=data,
    )
    core = _core(api)
    try:
        core.create_namespaced_secret(namespace, body)
    except ApiException as exc:
        if exc.status != 409:
            raise _api_error(exc, f"creating secret {namespace}/{name}") from None
        try:
            core.replace_namespaced_secret(name, namespace, body)
        except ApiException as exc2:
            raise _api_error(exc2, f"updating secret {namespace}/{name}") from None


def delete_finished_job(api: Any, namespace: str, name: str) -> bool:
    """Delete a Job that has completed or failed (its pods with it); a Job
    still running, or none, is left alone. True if one was deleted."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    batch = client.BatchV1Api(api)
    try:
        job = batch.read_namespaced_job(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise _api_error(exc, f"reading job {namespace}/{name}") from None
    finished = any(c.type in ("Complete", "Failed") and c.status == "True"
                   for c in ((job.status and job.status.conditions) or []))
    if not finished:
        return False
    try:
        batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
    except ApiException as exc:
        if exc.status != 404:
            raise _api_error(exc, f"deleting job {namespace}/{name}") from None
    return True


def delete_pvcs(api: Any, namespace: str, selector: str) -> list[str]:
    from kubernetes.client.exceptions import ApiException

    core = _core(api)
    names = [p.metadata.name for p in
             core.list_namespaced_persistent_volume_claim(namespace, label_selector=selector).items]
    for name in names:
        try:
            core.delete_namespaced_persistent_volume_claim(name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise _api_error(exc, f"deleting PVC {namespace}/{name}") from None
    return names


def list_pods(api: Any, namespace: str, selector: str) -> list[Any]:
    from kubernetes.client.exceptions import ApiException

    try:
        return list(_core(api).list_namespaced_pod(namespace, label_selector=selector).items)
    except ApiException as exc:
        raise _api_error(exc, f"listing pods in {namespace}") from None


def pod_ready(pod: Any) -> bool:
    if not pod.status or pod.status.phase != "Running" or pod.metadata.deletion_timestamp:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


@dataclass(frozen=True)
class Readiness:
    kind: str
    name: str
    ready: int
    desired: int

    @property
    def ok(self) -> bool:
        return self.ready >= self.desired


def workload_readiness(api: Any, namespace: str, selector: str) -> list[Readiness]:
    """Ready replicas of the current spec vs desired, for every Deployment and
    StatefulSet matching selector. A rollout in progress counts only the pods
    of the new revision, so old ready pods do not hide a stuck update."""
    from kubernetes import client

    apps: Any = client.AppsV1Api(api)
    out = []
    for kind, items in (
        ("Deployment", apps.list_namespaced_deployment(namespace, label_selector=selector).items),
        ("StatefulSet",
         apps.list_namespaced_stateful_set(namespace, label_selector=selector).items),
    ):
        for w in items:
            desired = w.spec.replicas if w.spec.replicas is not None else 1
            st = w.status
            current = (st.observed_generation or 0) >= (w.metadata.generation or 0)
            ready = min(st.ready_replicas or 0, st.updated_replicas or 0) if current else 0
            out.append(Readiness(kind, w.metadata.name, ready, desired))
    return sorted(out, key=lambda r: (r.kind, r.name))


@dataclass(frozen=True)
class ExecResult:
    returncode: int
    stdout: bytes
    stderr: bytes


def exec_in_pod(api: Any, namespace: str, pod: str, container: str, command: list[str],
                stdin: bytes | None = None, timeout: float = 120) -> ExecResult:
    """Run a command in a container through the exec API, streaming stdin.

    The exec protocol cannot signal end-of-input on every server version, so
    a command fed on stdin must know how many bytes to read (`head -c N`).
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from kubernetes.stream import stream
    from kubernetes.stream.ws_client import ERROR_CHANNEL

    core = client.CoreV1Api(api)
    try:
        resp = stream(core.connect_get_namespaced_pod_exec, pod, namespace, container=container,
                      command=command, stdin=stdin is not None, stdout=True, stderr=True,
                      tty=False, binary=True, _preload_content=False)
    except ApiException as exc:
        raise _api_error(exc, f"exec into {namespace}/{pod}") from None
    out, err = bytearray(), bytearray()
    try:
        if stdin is not None:
            for i in range(0, len(stdin), 64 * 1024):
                resp.write_stdin(stdin[i:i + 64 * 1024])

        deadline = time.monotonic() + timeout
        while resp.is_open():
            if time.monotonic() > deadline:
                raise MfhelmError(f"exec into {namespace}/{pod} timed out after {timeout:.0f}s")
            resp.update(timeout=1)
            if resp.peek_stdout():
                out += _bytes(resp.read_stdout())
            if resp.peek_stderr():
                err += _bytes(resp.read_stderr())
        status = resp.read_channel(ERROR_CHANNEL)
    finally:
        resp.close()
    return ExecResult(_returncode(status), bytes(out), bytes(err))


def _bytes(data: Any) -> bytes:
    return data if isinstance(data, bytes) else str(data).encode()


def _returncode(status: Any) -> int:
    """The exit code from the Status an exec stream ends with: kubelets put it
    in causes[ExitCode]; some exec servers only say "exit status N"."""
    import json
    import re

    if not status:
        return 0
    if isinstance(status, bytes):
        status = status.decode()
    try:
        doc = json.loads(status)
    except ValueError:
        return 1
    if doc.get("status") == "Success":
        return 0
    for cause in (doc.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause.get("message", 1))
    found = re.search(r"exit status ([0-9]+)", doc.get("message", ""))
    return int(found.group(1)) if found else 1


# ------------------------------------------------- clean failure helpers

# Connect and read timeouts of the reachability probe, in seconds.
PROBE_TIMEOUT = (5, 15)


def _one_line(exc: object) -> str:
    return " ".join(str(exc).split())


def _check_reachable(api: Any, where: str) -> None:
    """GET /version: any server answers it, even to anonymous callers."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        client.VersionApi(api).get_code(_request_timeout=PROBE_TIMEOUT)
    except ApiException as exc:
        if exc.status == 401:
            raise _api_error(exc, f"Kubernetes API server {_host(api)} ({where})") from None
        # Anything else means the server answered; the real call will tell.
    except Exception as exc:
        err = connection_error(exc, api, where)
        if err is None:
            raise
        raise err from None


def _host(api: Any) -> str:
    return str(getattr(getattr(api, "configuration", None), "host", "") or "?")


def _transport_reason(exc: BaseException) -> str:
    from urllib3 import exceptions as u3

    cause: BaseException = exc
    if isinstance(exc, u3.MaxRetryError) and exc.reason is not None:
        cause = exc.reason
    # NameResolutionError < NewConnectionError < ConnectTimeoutError: most specific first.
    if isinstance(cause, u3.NameResolutionError):
        return "its host name does not resolve"
    if isinstance(cause, u3.NewConnectionError):
        if "refused" in str(cause).lower():
            return "connection refused"
        return "cannot connect (" + _one_line(cause).split(": ", 1)[-1] + ")"
    if isinstance(cause, u3.ConnectTimeoutError):
        return "connection timed out"
    if isinstance(cause, u3.SSLError):
        return f"TLS failed ({_one_line(cause)})"
    if isinstance(cause, u3.ReadTimeoutError | TimeoutError):
        return "it did not answer in time"
    return _one_line(cause) or type(cause).__name__


def connection_error(exc: BaseException, api: Any = None, where: str = "") -> MfhelmError | None:
    """The one-line error for a failure to talk to the API server (refused,
    unresolvable, timed out, TLS), or None when `exc` is something else."""
    from urllib3 import exceptions as u3

    if not isinstance(exc, u3.HTTPError | ConnectionError):
        return None
    host = _host(api) if api is not None else "the Kubernetes API server"
    context = f" (kube context from {where})" if where else ""
    return MfhelmError(
        f"cannot reach {host}{context}: {_transport_reason(exc)}; check that the cluster is "
        "running and the kube context points at it"
    )


def user_error(exc: BaseException) -> MfhelmError | None:
    """A Kubernetes client failure the user can act on, met anywhere in a
    command (the connection dropped, a call refused), as one line; None for
    anything else."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        return _api_error(exc, "Kubernetes API")
    return connection_error(exc)


def check_kubeconfig(path: str) -> None:
    """The kubeconfig the user named is a readable YAML mapping, checked
    before helm or the client opens it (helm would block on a FIFO)."""
    from mfhelm import userfiles

    data = userfiles.load_yaml(path, "kubeconfig")
    if not isinstance(data, dict):
        raise MfhelmError(f"kubeconfig {path}: not a kubeconfig (expected a YAML mapping "
                          "with clusters, users and contexts)")


def api_error(exc: Exception, what: str) -> MfhelmError:
    """The one-line error for a refused Kubernetes API call, for callers
    outside this module."""
    return _api_error(exc, what)


# ------------------------------------------- why a release is not ready

# How many not-ready workloads are looked into (pods, events, nodes), how
# many different reasons a failed install tells (the rest are counted), and
# how long one reason may grow: the error stays one line.
NOT_READY_EXPLAINED = 6
REASONS_SHOWN = 3
_WHY_MAX = 300
# Container waiting reasons that are progress, not a problem.
_WAITING_FINE = ("ContainerCreating", "PodInitializing")
# Node conditions that are a problem when True (Ready is one when not True).
_NODE_PRESSURE = ("MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable")


@dataclass(frozen=True)
class NotReady:
    """A workload of the release that is not ready, and why: the pod that
    shows it best (its name in `pod`) and, in `why`, that pod's state and
    its node's conditions ("Pending on node n1, node n1 is NotReady (...)"), or
    why there is no pod; empty when not looked into."""

    kind: str
    namespace: str
    name: str
    ready: int
    desired: int
    why: str
    pod: str = ""


def _clip(text: str, limit: int = _WHY_MAX) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."


def _selector(label_selector: Any) -> str:
    """A label selector object as the string the API's list calls take."""
    parts = [f"{k}={v}" for k, v in sorted((label_selector.match_labels or {}).items())]
    for expr in label_selector.match_expressions or []:
        values = ",".join(expr.values or [])
        if expr.operator == "In":
            parts.append(f"{expr.key} in ({values})")
        elif expr.operator == "NotIn":
            parts.append(f"{expr.key} notin ({values})")
        elif expr.operator == "Exists":
            parts.append(expr.key)
        elif expr.operator == "DoesNotExist":
            parts.append(f"!{expr.key}")
    return ",".join(parts)


def _latest_warning(core: Any, namespace: str, kind: str, name: str) -> Any:
    """The newest Warning event about an object (FailedScheduling, FailedCreate,
    Unhealthy, BackOff...), or None."""
    events = core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.kind={kind},involvedObject.name={name},"
        "type=Warning").items

    def when(ev: Any) -> Any:
        import datetime

        return (ev.last_timestamp or ev.event_time or ev.metadata.creation_timestamp
                or datetime.datetime.min.replace(tzinfo=datetime.UTC))

    return max(events, key=when) if events else None


def _scheduler_text(message: str) -> str:
    """The scheduler's first sentence: "0/4 nodes are available: 1 node(s) didn't
    match Pod's node affinity/selector, 3 node(s) had untolerated taint(s)",
    without what follows (". no new claims to deallocate, preemption: ...")."""
    return message.split(". ")[0].split(" preemption:")[0].rstrip(". ,")


def _container_problem(pod: Any) -> str | None:
    st = pod.status
    for cs in (st.init_container_statuses or []) + (st.container_statuses or []):
        state = cs.state
        waiting = state.waiting if state else None
        last = cs.last_state.terminated if cs.last_state else None
        if waiting and waiting.reason and waiting.reason not in _WAITING_FINE:
            if waiting.message:
                detail = waiting.message
            elif last:
                detail = f"last exit {last.exit_code}" + (f" {last.reason}" if last.reason else "")
            else:
                detail = ""
            return f"container {cs.name} {waiting.reason}" + (f" ({detail})" if detail else "")
        terminated = state.terminated if state else None
        if terminated and terminated.exit_code:
            return (f"container {cs.name} exited {terminated.exit_code}"
                    + (f" ({terminated.reason})" if terminated.reason else ""))
    return None


def _pod_rank(pod: Any) -> int:
    """Which pod explains a workload best: a failing container, then one the
    scheduler cannot place, then any other."""
    if _container_problem(pod):
        return 0
    scheduled = [c for c in pod.status.conditions or [] if c.type == "PodScheduled"]
    if scheduled and scheduled[0].status == "False":
        return 1
    return 2


def pod_reason(core: Any, pod: Any) -> str:
    """Why a pod is not ready, in a few words: its failing container, the
    scheduler's message, or its phase and the newest Warning event."""
    st = pod.status
    phase = st.phase or "Pending"
    problem = _container_problem(pod)
    if problem:
        return f"{phase}, {problem}"
    conditions = {c.type: c for c in st.conditions or []}
    scheduled = conditions.get("PodScheduled")
    if scheduled is not None and scheduled.status == "False" and scheduled.message:
        return f"{phase} ({_scheduler_text(scheduled.message)})"
    event = _latest_warning(core, pod.metadata.namespace, "Pod", pod.metadata.name)
    seen = f" ({event.reason}: {_scheduler_text(event.message or '')})" if event else ""
    if phase == "Running":
        return "Running, not ready" + seen
    where = f" on node {pod.spec.node_name}" if pod.spec.node_name else ", not scheduled"
    return f"{phase}{where}{seen}"


def node_problem(core: Any, name: str) -> str | None:
    """What is wrong with a node (not Ready, under pressure, cordoned), or None."""
    from kubernetes.client.exceptions import ApiException

    try:
        node = core.read_node(name)
    except ApiException as exc:
        return "gone" if exc.status == 404 else None
    found = []
    for c in (node.status and node.status.conditions) or []:
        if c.type == "Ready" and c.status != "True":
            state = "NotReady" if c.status == "False" else "Ready=Unknown"
            why = ": ".join(x for x in (c.reason, (c.message or "").rstrip(".")) if x)
            found.append(f"{state}" + (f" ({why})" if why else ""))
        elif c.type in _NODE_PRESSURE and c.status == "True":
            found.append(f"under {c.type}")
    if node.spec and node.spec.unschedulable:
        found.append("cordoned")
    return ", ".join(found) or None


def _why_no_pods(core: Any, kind: str, obj: Any) -> str:
    if kind == "Deployment":
        for c in (obj.status and obj.status.conditions) or []:
            if c.type == "ReplicaFailure" and c.status == "True" and c.message:
                return f"no pods ({c.reason}: {c.message})"
    event = _latest_warning(core, obj.metadata.namespace, kind, obj.metadata.name)
    if event:
        return f"no pods ({event.reason}: {event.message})"
    return "no pods yet"


def _explain(core: Any, kind: str, obj: Any) -> tuple[str, str]:
    """Why one workload is not ready: (its worst pod, that pod's state and its
    node's conditions), or ("", why there is no pod)."""
    ns = obj.metadata.namespace
    pods = [p for p in core.list_namespaced_pod(
        ns, label_selector=_selector(obj.spec.selector)).items
        if not p.metadata.deletion_timestamp and not pod_ready(p)
        and p.status.phase != "Succeeded"]
    if not pods:
        return "", _why_no_pods(core, kind, obj)
    pod = min(pods, key=lambda p: (_pod_rank(p), -p.metadata.creation_timestamp.timestamp()))
    why = pod_reason(core, pod)
    node = pod.spec.node_name
    trouble = node_problem(core, node) if node else None
    if trouble:
        why += f", node {node} is {trouble}"
    return pod.metadata.name, why


def _job_state(job: Any) -> tuple[bool, str]:
    """(done, failure): a Job is ready once Complete; a Failed one says why."""
    for c in (job.status and job.status.conditions) or []:
        if c.status != "True":
            continue
        if c.type == "Complete":
            return True, ""
        if c.type == "Failed":
            return False, ": ".join(x for x in (c.reason, c.message) if x)
    return False, ""


def not_ready(api: Any, namespaces: list[str], selector: str,
              explain: int = NOT_READY_EXPLAINED) -> list[NotReady]:
    """The workloads matching `selector` in `namespaces` that are not ready
    (Deployments and StatefulSets short of ready replicas of the current spec,
    Jobs not complete); the first `explain` of them with why."""
    from kubernetes import client

    apps: Any = client.AppsV1Api(api)
    batch: Any = client.BatchV1Api(api)
    core = _core(api)
    found: list[tuple[str, Any, int, int, str]] = []
    for ns in namespaces:
        for kind, items in (
            ("Deployment", apps.list_namespaced_deployment(ns, label_selector=selector).items),
            ("StatefulSet", apps.list_namespaced_stateful_set(ns, label_selector=selector).items),
        ):
            for w in items:
                if w.metadata.deletion_timestamp:
                    continue
                desired = w.spec.replicas if w.spec.replicas is not None else 1
                st = w.status
                current = (st.observed_generation or 0) >= (w.metadata.generation or 0)
                ready = min(st.ready_replicas or 0, st.updated_replicas or 0) if current else 0
                if ready < desired:
                    found.append((kind, w, ready, desired, ""))
        for job in batch.list_namespaced_job(ns, label_selector=selector).items:
            done, failure = _job_state(job)
            if not done and not job.metadata.deletion_timestamp:
                found.append(("Job", job, 0, 1, failure))
    out = []
    for kind, obj, ready, desired, failure in found[:explain]:
        pod, why = _explain(core, kind, obj)
        if failure:
            why = f"failed ({failure}), " + (f"pod {pod} {why}" if pod else why)
            pod = ""
        out.append(NotReady(kind, obj.metadata.namespace, obj.metadata.name, ready, desired,
                            _clip(why), pod))
    out += [NotReady(kind, obj.metadata.namespace, obj.metadata.name, ready, desired, "")
            for kind, obj, ready, desired, _ in found[explain:]]
    return out


class ReadinessWatch:
    """Samples not_ready() in a thread while helm waits, so that what was
    not ready can be told after helm gave up, even when its rollback has
    deleted the workloads since. Samples stop at helm's own deadline; the
    last one that found something is kept."""

    def __init__(self, api: Any, namespaces: list[str], selector: str, wait: float) -> None:
        import threading

        self.api, self.namespaces, self.selector = api, namespaces, selector
        self.deadline = time.monotonic() + wait
        self.interval = max(1.0, min(5.0, wait / 4))
        self.latest: list[NotReady] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mfhelm-readiness", daemon=True)

    def start(self) -> ReadinessWatch:
        self._thread.start()
        return self

    def _sample(self) -> None:
        try:
            found = not_ready(self.api, self.namespaces, self.selector)
        except Exception:  # noqa: BLE001 - a failed sample keeps the one before
            return
        if found:
            self.latest = found

    def _loop(self) -> None:
        while not self._stop.wait(self.interval) and time.monotonic() < self.deadline:
            self._sample()

    def stop(self) -> list[NotReady]:
        """Stop sampling; the last sample that found something not ready."""
        self._stop.set()
        self._thread.join(timeout=30)
        return self.latest
