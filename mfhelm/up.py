"""`mfhelm up` and `mfhelm down`: the local stack in one command, on a kind
cluster shaped like the AKS one.

`up` checks what it needs first (kind, a Docker engine that answers, helm)
and refuses in one line naming what is missing, before it runs anything
else. It then makes the kind cluster (a control plane and one worker per
pool of mfhelm.pools, labelled and tainted at registration as AKS does) or
reuses the one a previous `up` made, installs the local profile into its
context (`kind-<name>`) with the chart's pool selectors kept, so that flows
run on the taskworkers node as they do on AKS, and writes the laptop's
Metaflow config.

Interrupted (Ctrl-C, SIGTERM) while the cluster is being made, `up`
deletes what kind made so far. Should that be cut short too (a second
Ctrl-C, a kill), a marker file (state_dir()) says the cluster was left
half-made, and the next `up` deletes and remakes it instead of reusing it.
An interrupted install is the install's own business (stack.install_local
clears the revision it left pending); the next `up` upgrades.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mfhelm import pools, proc
from mfhelm.errors import MfhelmError

Progress = Callable[[str], None]

DEFAULT_NAME = "mfhelm"
# kind's own rule is [a-z0-9.-]+; the name also starts the node containers'
# host names (`<name>-control-plane`, 14 more characters: 63 at most), and
# one starting with '-' would read as an option.
_NAME_RE = re.compile(r"\A[a-z0-9][a-z0-9.-]{0,39}\Z")
RELEASE = "metaflow"
NAMESPACE = "metaflow"
# `kind get clusters`, `docker info`, `kind export kubeconfig`.
QUICK = 60.0
DELETE_TIMEOUT = 300.0
KIND_HINT = "https://kind.sigs.k8s.io; `make dev` in a checkout puts the pinned one in .venv/bin"
DOCKER_HINT = "install Docker Desktop or Docker Engine"


def _quiet(_: str) -> None:
    return None


def check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise MfhelmError(
            f"--name {name[:40]!r}: a kind cluster name is lowercase letters, digits, '.' "
            "and '-', starting with a letter or digit, at most 40 characters")
    return name


def context_name(name: str) -> str:
    """The kubeconfig context kind writes for a cluster."""
    return f"kind-{name}"


# ------------------------------------------------------------------ the pin

def tools_manifest() -> Path:
    """tools.toml: the copy the wheel carries (mfhelm/tools.toml), else the
    checkout's. Pinned there, next to the kind release its images are made
    for and the Kubernetes version the tests run."""
    here = Path(__file__).resolve().parent
    for path in (here / "tools.toml", here.parent / "tools.toml"):
        if path.is_file():
            return path
    raise MfhelmError(f"{here / 'tools.toml'} is missing: reinstall mfhelm")


def node_image() -> str:
    """The kind node image `up` runs: tools.toml [go.kind] node_image."""
    with tools_manifest().open("rb") as fh:
        return str(tomllib.load(fh)["go"]["kind"]["node_image"])


# --------------------------------------------------------- the kind config

def kind_config() -> dict[str, Any]:
    """A control plane and one worker per pool, its labels and taints set at
    registration (kubelet's --node-labels, kubeadm's JoinConfiguration
    taints), as the AKS pools have them."""

    def worker(pool: pools.Pool) -> dict[str, Any]:
        node: dict[str, Any] = {"role": "worker", "labels": dict(pool.labels)}
        if pool.taints:
            node["kubeadmConfigPatches"] = [yaml.safe_dump({
                "kind": "JoinConfiguration",
                "nodeRegistration": {"taints": [t.as_dict() for t in pool.taints]},
            })]
        return node

    return {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "networking": {"apiServerAddress": "127.0.0.1"},
        "nodes": [{"role": "control-plane"}, *(worker(p) for p in pools.POOLS)],
    }


def pool_values() -> dict[str, Any]:
    """The chart values that put the services on the services pool and flow
    pods on taskworkers, tolerating its taint: each key values.local_values()
    sets empty, set to the pools' labels and taints. (Helm keeps a default
    map under an empty one, so the local profile's selectors stay the
    chart's; but its empty tolerations list replaces the default, and flow
    pods that select taskworkers without tolerating its taint never start.)"""
    services = dict(pools.SERVICES.labels)
    return {
        "serviceNodeSelector": services,
        "flows": {"nodeSelector": dict(pools.TASKWORKERS.labels),
                  "tolerations": [t.toleration() for t in pools.TASKWORKERS.taints]},
        "argo-workflows": {"controller": {"nodeSelector": services},
                           "server": {"nodeSelector": services}},
        "argo-events": {"controller": {"nodeSelector": services}},
        "airflow": {"scheduler": {"nodeSelector": services},
                    "webserver": {"nodeSelector": services}},
    }


def values_layer() -> Any:
    """pool_values() as the layer `up` gives install_local over the local
    profile's values (where the user's -f would go)."""
    from mfhelm.uservalues import UserValues

    return UserValues(files=(("mfhelm up: the node pools", pool_values()),))


def pool_nodes(nodes: list[Any]) -> dict[str, list[str]]:
    """pool name -> the names of its nodes (V1Node objects): every pool `up`
    makes, and an optional one (GPU, Spot) only where a node of it exists."""
    found: dict[str, list[str]] = {p.name: [] for p in pools.POOLS}
    for node in nodes:
        taints = [{"key": t.key, "value": t.value or "", "effect": t.effect}
                  for t in node.spec.taints or []]
        pool = pools.pool_of(node.metadata.labels, taints)
        if pool is not None:
            found.setdefault(pool.name, []).append(node.metadata.name)
    return found


# ------------------------------------------------------------ what it needs

@dataclass(frozen=True)
class Tools:
    kind: str
    docker: str
    helm: str | None


def preflight(command: str, *, helm: bool) -> Tools:
    """kind, docker and (for up) helm on PATH, and a Docker engine that
    answers `docker info`; else one error naming everything missing."""
    missing: list[str] = []
    kind = shutil.which("kind")
    if kind is None:
        missing.append(f"kind is not on PATH ({KIND_HINT})")
    docker = shutil.which("docker")
    if docker is None:
        missing.append(f"docker is not on PATH (kind runs its nodes in Docker: {DOCKER_HINT})")
    else:
        probe = proc.run([docker, "info", "--format", "{{.ServerVersion}}"], timeout=QUICK,
                         what="docker info")
        if probe.returncode != 0 or not probe.stdout.strip():
            said = _last_line(probe.stderr) or f"exit status {probe.returncode}"
            missing.append(f"the Docker engine does not answer `docker info` ({said}): start it")
    helm_bin = None
    if helm:
        from mfhelm.helm import find_helm

        helm_bin = find_helm()
        if helm_bin is None:
            missing.append("helm is not on PATH (`make dev` puts the pinned one in .venv/bin)")
    if missing:
        needs = "kind, a running Docker engine" + (" and helm" if helm else "")
        raise MfhelmError(f"{command} needs {needs}: " + "; ".join(missing))
    assert kind is not None and docker is not None
    return Tools(kind, docker, helm_bin)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _kind_error(what: str, result: Any) -> MfhelmError:
    lines = [ln.strip() for ln in result.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    said = (errors[0] if errors else lines[-1] if lines else f"exit status {result.returncode}")
    return MfhelmError(f"{what} failed: {said}")


# ------------------------------------------------------------------ kind

def clusters(kind: str) -> list[str]:
    result = proc.run([kind, "get", "clusters"], timeout=QUICK, what="kind get clusters")
    if result.returncode != 0:
        raise _kind_error("kind get clusters", result)
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def state_dir() -> Path:
    """Where `up` marks a cluster it is making: $XDG_STATE_HOME/mfhelm."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "mfhelm"


def creating_marker(name: str) -> Path:
    """Present while `up` makes cluster `name`: left behind, it says the
    cluster is half-made (and `up`'s own, so it may delete it)."""
    return state_dir() / f"kind-{name}.creating"


def delete(kind: str, name: str) -> None:
    result = proc.run([kind, "delete", "cluster", "--name", name], timeout=DELETE_TIMEOUT,
                      what=f"kind delete cluster --name {name}")
    if result.returncode != 0:
        raise _kind_error(f"kind delete cluster --name {name}", result)
    creating_marker(name).unlink(missing_ok=True)


def create(kind: str, name: str, image: str, timeout: float) -> None:
    """`kind create cluster` with kind_config(); the marker is there from
    before kind starts until the cluster is whole. Cut short by anything
    (an interrupt, kind's own failure, the timeout), what kind made is deleted."""
    marker = creating_marker(name)
    with proc.deferred_signals():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"kind create cluster --name {name} --image {image}\n")
    work = proc.temp_dir("mfhelm-up-")
    try:
        config = work / "kind.yaml"
        config.write_text(yaml.safe_dump(kind_config(), sort_keys=False))
        wait = max(int(timeout), 1)
        result = proc.run([kind, "create", "cluster", "--name", name, "--config", str(config),
                           "--image", image, "--wait", f"{wait}s"],
                          timeout=timeout, what=f"kind create cluster --name {name}")
        if result.returncode != 0:
            raise _kind_error(f"kind create cluster --name {name}", result)
    except BaseException:
        _remove_half_made(kind, name)
        raise
    finally:
        proc.remove_tree(work)
    marker.unlink(missing_ok=True)


def _remove_half_made(kind: str, name: str) -> None:
    """Best effort: what went wrong is the error the user sees; a delete that
    fails leaves the marker, and the next `up` deletes the rest."""
    with contextlib.suppress(MfhelmError):
        delete(kind, name)


# The label kind puts on a cluster's node containers (its provider's clusterLabelKey).
KIND_CLUSTER_LABEL = "io.x-k8s.kind.cluster"


def start_nodes(docker: str, name: str, progress: Progress = _quiet) -> list[str]:
    """Start the cluster's node containers that are not running (stopped by
    hand; kind's restart policy brings them back after a Docker restart)."""
    listed = proc.run([docker, "ps", "-a", "--filter", f"label={KIND_CLUSTER_LABEL}={name}",
                       "--format", "{{.Names}} {{.State}}"], timeout=QUICK, what="docker ps")
    if listed.returncode != 0:
        raise MfhelmError(f"docker ps failed: {_last_line(listed.stderr)}")
    stopped = [line.split()[0] for line in listed.stdout.splitlines()
               if line.strip() and line.split()[-1] != "running"]
    if stopped:
        progress(f"starting the stopped nodes: {', '.join(stopped)}")
        started = proc.run([docker, "start", *stopped], timeout=QUICK * 2, what="docker start")
        if started.returncode != 0:
            raise MfhelmError(f"docker start {' '.join(stopped)} failed: "
                              f"{_last_line(started.stderr)}")
    return stopped


def export_kubeconfig(kind: str, name: str) -> None:
    """The `kind-<name>` context in the user's kubeconfig, made again (kind
    create wrote it; the user may have removed it since)."""
    result = proc.run([kind, "export", "kubeconfig", "--name", name], timeout=QUICK,
                      what="kind export kubeconfig")
    if result.returncode != 0:
        raise _kind_error(f"kind export kubeconfig --name {name}", result)


def wait_for_pools(api: Any, name: str, timeout: float) -> dict[str, list[str]]:
    """Every pool has a node and every node is Ready. A cluster without the
    pools is not one `up` made: refused, not changed."""
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    while True:
        try:
            nodes: list[Any] = core.list_node().items
        except Exception:  # a reused cluster's API server may still be starting
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
            continue
        found = pool_nodes(nodes)
        if nodes:
            check_pools(name, found)
        not_ready = [str(n.metadata.name) for n in nodes if not _ready(n)]
        if nodes and not not_ready:
            return found
        if time.monotonic() > deadline:
            raise MfhelmError(f"kind cluster {name!r}: nodes not Ready within "
                              f"{proc.seconds_text(timeout)}: {', '.join(not_ready)}")
        time.sleep(2)


def check_pools(name: str, found: dict[str, list[str]]) -> None:
    """Refuse a cluster with a pool that has no node: not one `up` made."""
    lacking = [p for p in pools.POOLS if not found.get(p.name)]
    if lacking:
        pool = lacking[0]
        shape = ", ".join([f"{k}={v}" for k, v in pool.labels.items()]
                          + [f"taint {t}" for t in pool.taints])
        raise MfhelmError(
            f"kind cluster {name!r} has no {pool.name} node ({shape}): it was not made by "
            f"mfhelm up; delete it with `mfhelm down --name {name}`, or use another --name")


def _ready(node: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


# ------------------------------------------------------------- up and down

@dataclass(frozen=True)
class Outcome:
    name: str
    context: str
    reused: bool
    release: Any  # helm.ReleaseInfo
    config: Path

    def lines(self) -> list[str]:
        r = self.release
        how = "reused" if self.reused else "created"
        named = "" if self.name == DEFAULT_NAME else f" --name {self.name}"
        out = [f"kind cluster {self.name}: {how} (kubeconfig context {self.context})",
               f"release {r.name} revision {r.revision}: {r.status} "
               f"(chart {r.chart_version}, app {r.app_version})"]
        out.append(f"wrote {self.config}")
        out += ["next: mfhelm port-forward --context " + self.context,
                "      (leave it running), then in another terminal:",
                "      mfhelm verify --local --context " + self.context,
                f"done with it: mfhelm down{named}"]
        return out


def up(name: str, *, argo: bool, airflow: bool, timeout: str,
       progress: Progress = _quiet) -> Outcome:
    from mfhelm import kube, settings, stack

    check_name(name)
    settings.check_timeout(timeout)
    seconds = settings.duration_seconds(timeout)
    tools = preflight("mfhelm up", helm=True)
    image = node_image()
    present = name in clusters(tools.kind)
    if present and creating_marker(name).exists():
        progress(f"deleting kind cluster {name}: an earlier mfhelm up was cut short making it")
        delete(tools.kind, name)
        present = False
    if present:
        progress(f"reusing kind cluster {name}")
        try:
            start_nodes(tools.docker, name, progress)
            export_kubeconfig(tools.kind, name)
        except MfhelmError as exc:
            raise MfhelmError(f"{exc}; if kind cluster {name!r} is broken, `mfhelm down --name "
                              f"{name}` deletes it and mfhelm up makes it again") from None
    else:
        progress(f"creating kind cluster {name} ({image}; nodes: control plane, "
                 f"{', '.join(p.name for p in pools.POOLS)})")
        create(tools.kind, name, image, seconds)
    context = context_name(name)
    progress("waiting for the nodes of every pool to be Ready")
    wait_for_pools(kube.api_client(None, context), name, seconds)
    target = stack.Target(RELEASE, NAMESPACE, None, context)
    info = stack.install_local(target, argo=argo, airflow=airflow, timeout=timeout,
                               user_values=values_layer(), progress=progress)
    return Outcome(name, context, present, info, write_config(target, progress))


def write_config(target: Any, progress: Progress = _quiet) -> Path:
    """What `mfhelm config --local --context kind-<name>` writes: the laptop's
    Metaflow config for this release and the local CA bundle it names."""
    from mfhelm import kube
    from mfhelm import metaflow_config as mc

    progress("writing the Metaflow config (mfhelm config --local)")
    api = kube.api_client(target.kubeconfig, target.context)
    cfg, ca = mc.local_config(api, target.release, target.namespace)
    return mc.write_local_config(cfg, ca, None)


def down(name: str, *, progress: Progress = _quiet) -> None:
    check_name(name)
    tools = preflight("mfhelm down", helm=False)
    known = clusters(tools.kind)
    if name not in known:
        raise MfhelmError(f"no kind cluster {name!r} to delete (kind has "
                          f"{', '.join(known) if known else 'none'})")
    progress(f"deleting kind cluster {name}")
    delete(tools.kind, name)
