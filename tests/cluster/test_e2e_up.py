"""`mfhelm up` and `mfhelm down`.

On the test cluster (always): its KWOK nodes are the pools `up` looks for,
and a pod shaped by up's flow values is scheduled onto the taskworkers node
by the real scheduler.

On kind (only where a Docker engine answers; otherwise skipped, saying so):
`mfhelm up` makes the cluster and installs the stack, a second `up` reuses
the same nodes, Ctrl-C while the cluster is being made leaves none behind,
a kind cluster `up` did not make is refused, and `mfhelm down` deletes the
cluster and then refuses, there being none. Each runs the real CLI with its
own KUBECONFIG, state and Metaflow config directories, and a cluster name of
its own (deleted at the end whatever happens).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mfhelm import pools, up
from mfhelm.errors import MfhelmError

from .handle import Cluster, wait_for

# ------------------------------------------------------- the test cluster


def test_the_test_clusters_nodes_are_the_pools_up_checks(cluster: Cluster) -> None:
    found = up.wait_for_pools(cluster.api_client(), "test", 120)
    # One node per pool, the optional GPU and Spot pools' included.
    assert {pool: len(names) for pool, names in found.items()} == \
        {p.name: 1 for p in (*pools.POOLS, *pools.OPTIONAL_POOLS)}
    assert found["taskworkers"] == [cluster.nodes["taskworkers"]]


def test_a_flow_pod_with_ups_values_lands_on_taskworkers(cluster: Cluster,
                                                         namespace: str) -> None:
    from kubernetes import client as k8s

    flows = up.pool_values()["flows"]
    core = cluster.core()

    def pod(name: str, tolerations: list[dict[str, str]]) -> k8s.V1Pod:
        return k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(name=name),
            spec=k8s.V1PodSpec(
                node_selector=flows["nodeSelector"],
                tolerations=[k8s.V1Toleration(**t) for t in tolerations],
                containers=[k8s.V1Container(name="step", image="busybox:1.37")]))

    core.create_namespaced_pod(namespace, pod("with-values", flows["tolerations"]))
    core.create_namespaced_pod(namespace, pod("without-toleration", []))
    placed = wait_for(lambda: core.read_namespaced_pod("with-values", namespace).spec.node_name,
                      120, "the pod with up's flow values to be scheduled")
    assert placed == cluster.nodes["taskworkers"]
    # The same selector without the toleration: the taint keeps it off.
    unschedulable = wait_for(lambda: any(
        c.type == "PodScheduled" and c.reason == "Unschedulable"
        for c in core.read_namespaced_pod("without-toleration", namespace).status.conditions
        or []), 120, "the pod without the toleration to be found unschedulable")
    assert unschedulable
    assert core.read_namespaced_pod("without-toleration", namespace).spec.node_name is None


# ------------------------------------------------------------------ kind


def _docker_reason() -> str | None:
    try:
        up.preflight("mfhelm up", helm=True)
    except MfhelmError as exc:
        return f"needs Docker and kind (kind runs its nodes in Docker): {exc}"
    return None


_NO_DOCKER = _docker_reason()
needs_docker = pytest.mark.skipif(_NO_DOCKER is not None, reason=str(_NO_DOCKER))


class Laptop:
    """A user's machine for `mfhelm up`: their kubeconfig, state and Metaflow
    config in a directory of the test's; Docker and kind are the machine's."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = f"mfhelm-t{uuid.uuid4().hex[:6]}"
        self.kubeconfig = root / "kubeconfig"
        self.env = dict(os.environ, KUBECONFIG=str(self.kubeconfig),
                        XDG_STATE_HOME=str(root / "state"),
                        METAFLOW_HOME=str(root / "metaflowconfig"))
        kind = shutil.which("kind")
        assert kind is not None
        self.kind = kind

    def mfhelm(self, *args: str, timeout: float = 2400) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mfhelm", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "mfhelm", *args], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=self.root)

    def clusters(self) -> list[str]:
        out = subprocess.run([self.kind, "get", "clusters"], env=self.env, capture_output=True,
                             text=True, check=True, timeout=60).stdout
        return out.split()

    def marker(self) -> Path:
        return self.root / "state" / "mfhelm" / f"kind-{self.name}.creating"

    def api(self) -> object:
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig),
                                             context=up.context_name(self.name))

    def delete(self) -> None:
        subprocess.run([self.kind, "delete", "cluster", "--name", self.name], env=self.env,
                       capture_output=True, timeout=300, check=False)


@pytest.fixture
def laptop(tmp_path: Path) -> Iterator[Laptop]:
    machine = Laptop(tmp_path)
    try:
        yield machine
    finally:
        machine.delete()


def _node_uids(laptop: Laptop) -> dict[str, str]:
    from kubernetes import client as k8s

    return {n.metadata.name: n.metadata.uid
            for n in k8s.CoreV1Api(laptop.api()).list_node().items}


@needs_docker
def test_up_makes_a_cluster_with_the_pools_and_reuses_it(laptop: Laptop) -> None:
    from kubernetes import client as k8s

    first = laptop.mfhelm("up", "--name", laptop.name, "--timeout", "20m")
    assert first.returncode == 0, first.stderr
    context = up.context_name(laptop.name)
    assert f"kind cluster {laptop.name}: created (kubeconfig context {context})" in first.stdout
    assert "revision 1: deployed" in first.stdout
    assert f"mfhelm port-forward --context {context}" in first.stdout
    assert f"mfhelm verify --local --context {context}" in first.stdout
    assert laptop.name in laptop.clusters() and not laptop.marker().exists()
    # The laptop's config, as `mfhelm config --local` writes it, and the CA it trusts.
    written = laptop.root / "metaflowconfig" / "config.json"
    assert f"wrote {written}" in first.stdout
    config = json.loads(written.read_text())
    assert config["METAFLOW_DEFAULT_AZURE_CLIENT_PROVIDER"] == "mfhelm-local"
    assert Path(config["METAFLOW_MFHELM_LOCAL_CA"]).read_text().startswith(
        "-----BEGIN CERTIFICATE-----")

    core = k8s.CoreV1Api(laptop.api())
    found = up.pool_nodes(core.list_node().items)
    assert all(len(names) == 1 for names in found.values()), found
    pods = core.list_namespaced_pod(up.NAMESPACE).items
    running = [p for p in pods if p.status.phase == "Running"]
    assert running and {p.spec.node_name for p in running} == set(found["services"])
    nodes = _node_uids(laptop)

    second = laptop.mfhelm("up", "--name", laptop.name, "--timeout", "20m")
    assert second.returncode == 0, second.stderr
    assert f"kind cluster {laptop.name}: reused" in second.stdout
    assert "revision 2: deployed" in second.stdout
    assert _node_uids(laptop) == nodes  # the same nodes, not a new cluster


@needs_docker
def test_down_deletes_the_cluster_then_refuses(laptop: Laptop) -> None:
    made = subprocess.run([laptop.kind, "create", "cluster", "--name", laptop.name,
                           "--image", up.node_image()], env=laptop.env, capture_output=True,
                          text=True, timeout=900)
    assert made.returncode == 0, made.stderr
    gone = laptop.mfhelm("down", "--name", laptop.name)
    assert gone.returncode == 0, gone.stderr
    assert gone.stdout == f"deleted kind cluster {laptop.name}\n"
    assert laptop.name not in laptop.clusters()
    again = laptop.mfhelm("down", "--name", laptop.name)
    assert again.returncode == 1
    assert again.stderr.startswith(f"mfhelm: error: no kind cluster '{laptop.name}' to delete")
    assert len(again.stderr.splitlines()) == 1


@needs_docker
def test_up_refuses_a_kind_cluster_it_did_not_make(laptop: Laptop) -> None:
    made = subprocess.run([laptop.kind, "create", "cluster", "--name", laptop.name,
                           "--image", up.node_image()], env=laptop.env, capture_output=True,
                          text=True, timeout=900)
    assert made.returncode == 0, made.stderr
    result = laptop.mfhelm("up", "--name", laptop.name)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"mfhelm: error: kind cluster '{laptop.name}' has no system node "
        "(kubernetes.azure.com/mode=system, taint CriticalAddonsOnly=true:NoSchedule): it was "
        f"not made by mfhelm up; delete it with `mfhelm down --name {laptop.name}`, or use "
        "another --name")
    assert laptop.name in laptop.clusters()  # refused, not changed


@needs_docker
def test_ctrl_c_while_the_cluster_is_made_leaves_none(laptop: Laptop) -> None:
    running = laptop.start("up", "--name", laptop.name)
    try:
        # kind has begun: its node containers exist.
        wait_for(lambda: subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=io.x-k8s.kind.cluster={laptop.name}"],
            capture_output=True, text=True, timeout=60).stdout.strip(), 600,
            "kind to create the node containers")
        assert laptop.marker().exists()
        running.send_signal(signal.SIGINT)
        _, err = running.communicate(timeout=600)
    finally:
        if running.poll() is None:
            running.kill()
    assert running.returncode == 128 + signal.SIGINT, err
    assert err.splitlines()[-1].startswith("mfhelm: error: interrupted (SIGINT)")
    assert laptop.name not in laptop.clusters()
    assert not laptop.marker().exists()
    leftover = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=io.x-k8s.kind.cluster={laptop.name}"],
        capture_output=True, text=True, timeout=60).stdout.strip()
    assert leftover == ""


@needs_docker
def test_a_cluster_left_half_made_is_made_again(laptop: Laptop) -> None:
    """The marker of an `up` killed outright (no cleanup ran): the next `up`
    deletes what is there and makes the cluster, rather than reuse it."""
    made = subprocess.run([laptop.kind, "create", "cluster", "--name", laptop.name,
                           "--image", up.node_image()], env=laptop.env, capture_output=True,
                          text=True, timeout=900)
    assert made.returncode == 0, made.stderr
    laptop.marker().parent.mkdir(parents=True)
    laptop.marker().write_text("killed\n")
    started = time.time()
    result = laptop.mfhelm("up", "--name", laptop.name, "--no-argo", "--timeout", "20m")
    assert result.returncode == 0, result.stderr
    assert f"kind cluster {laptop.name}: created" in result.stdout
    assert not laptop.marker().exists()
    from kubernetes import client as k8s

    nodes = k8s.CoreV1Api(laptop.api()).list_node().items
    assert all(n.metadata.creation_timestamp.timestamp() >= started - 5 for n in nodes)
