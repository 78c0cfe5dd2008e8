"""The fake nodes stay alive as a kubelet's would, and come back as one would.

KWOK holds and renews a Lease per node and refreshes each node's Ready
heartbeat; after a silence (here KWOK is stopped outright) the node lifecycle
controller marks the nodes Unknown and their pods NotReady, and once KWOK
runs again both nodes and pods are Ready again.

These tests start a control plane of their own with a short grace period
(20 s instead of 50 s): a missing heartbeat shows in seconds, and stopping
KWOK does not touch the session's cluster.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from .controlplane import NodeTiming, ToolchainMissing, start_controlplane
from .handle import Cluster
from .kindcluster import kind_requested
from .nodewatch import NodeReadyWatch

pytestmark = pytest.mark.cluster

# A quarter of the lease is 4 s between renewals: five renewals per grace period.
TIMING = NodeTiming(lease_seconds=16, grace_seconds=20)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, NodeReadyWatch]]:
    if kind_requested():
        pytest.skip(reason="KWOK's fake nodes only: kind runs real kubelets")
    workdir = tmp_path_factory.mktemp("quick-grace")
    try:
        cluster, stop = start_controlplane(workdir, TIMING)
    except ToolchainMissing as exc:
        pytest.skip(reason=str(exc))
    watch = NodeReadyWatch(cluster.kubeconfig, set(cluster.nodes.values()),
                           workdir / "logs" / "node-ready.log")
    try:
        watch.start()
        yield cluster, watch
    finally:
        watch.stop()
        stop()


def _leases(cluster: Cluster) -> dict[str, Any]:
    leases = client.CoordinationV1Api(cluster.api_client()).list_namespaced_lease(
        "kube-node-lease").items
    return {lease.metadata.name: lease for lease in leases}


def _ready(conditions: list[Any] | None) -> Any:
    return next((c for c in conditions or [] if c.type == "Ready"), None)


def test_nodes_stay_ready_on_leases_kwok_renews(
        quick: tuple[Cluster, NodeReadyWatch]) -> None:
    cluster, watch = quick
    names = sorted(cluster.nodes.values())
    seen_before = len(watch.transitions())
    nodes = {n.metadata.name: n for n in cluster.core().list_node().items}
    first_beat = {name: _ready(nodes[name].status.conditions).last_heartbeat_time
                  for name in names}
    # KWOK plays a node only once it holds the node's lease, so they exist by now.
    first_renewal = {name: lease.spec.renew_time for name, lease in _leases(cluster).items()}

    # Three grace periods: a node with no heartbeat would go Unknown in each.
    time.sleep(3 * TIMING.grace_seconds)

    left = watch.transitions()[seen_before:]
    assert not left, "fake nodes left Ready although KWOK was running:\n" + "\n".join(
        str(t) for t in left)
    now = datetime.datetime.now(datetime.UTC)
    leases = _leases(cluster)
    assert sorted(leases) == names, "not one Lease per fake node in kube-node-lease"
    nodes = {n.metadata.name: n for n in cluster.core().list_node().items}
    for name in names:
        lease = leases[name]
        assert lease.spec.lease_duration_seconds == TIMING.lease_seconds
        assert lease.spec.holder_identity, f"lease {name} has no holder"
        # Owned by its node, as a kubelet's is, so it goes with the node.
        owners = lease.metadata.owner_references or []
        assert [(o.kind, o.name) for o in owners] == [("Node", name)]
        assert lease.spec.renew_time > first_renewal[name], f"lease {name} was not renewed"
        assert (now - lease.spec.renew_time).total_seconds() < TIMING.lease_seconds, \
            f"lease {name} has expired (renewed {lease.spec.renew_time})"
        ready = _ready(nodes[name].status.conditions)
        assert ready.status == "True"
        # The Ready condition is kept fresh too, for whatever reads it.
        assert ready.last_heartbeat_time > first_beat[name], \
            f"node {name}'s Ready heartbeat did not move"


def _stopped(pid: int) -> contextlib.AbstractContextManager[None]:
    @contextlib.contextmanager
    def pause() -> Iterator[None]:
        os.killpg(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(pid, signal.SIGCONT)
    return pause()


def test_nodes_and_their_pods_are_ready_again_after_kwok_was_stopped(
        quick: tuple[Cluster, NodeReadyWatch]) -> None:
    cluster, watch = quick
    assert cluster.node_agent_pid is not None
    core = cluster.core()
    namespace = cluster.create_namespace("comeback")
    core.create_namespaced_pod(namespace, client.V1Pod(
        metadata=client.V1ObjectMeta(name="server"),
        spec=client.V1PodSpec(
            containers=[client.V1Container(name="main", image="busybox:1.37")],
            termination_grace_period_seconds=0,
        ),
    ))
    pod = cluster.wait_pod_ready(namespace, "server", timeout=90)
    node = pod.spec.node_name
    seen_before = len(watch.transitions())

    def node_ready(name: str = node) -> str:
        return str(_ready(core.read_node(name).status.conditions).status)

    def pod_ready() -> str:
        return str(_ready(core.read_namespaced_pod("server", namespace).status.conditions).status)

    with _stopped(cluster.node_agent_pid):
        # What a node whose kubelet went quiet gets from the node lifecycle
        # controller: Unknown after the grace period, its pods NotReady.
        # Every node, not just the pod's: their last renewals were up to a
        # renewal interval apart, so one may go Unknown seconds after another,
        # and once KWOK runs again a node not yet Unknown never goes.
        cluster.wait_for(lambda: all(node_ready(n) == "Unknown" for n in cluster.nodes.values()),
                         TIMING.grace_seconds + 60, "every node to go Unknown while KWOK is stopped")
        cluster.wait_for(lambda: pod_ready() == "False", 60,
                         "the node lifecycle controller to mark the pod NotReady")

    cluster.wait_for(lambda: node_ready() == "True", 60, f"node {node} to be Ready again")
    cluster.wait_for(lambda: pod_ready() == "True", 60,
                     "the pod on the node to be Ready again")
    restored = core.read_namespaced_pod("server", namespace).status
    assert restored.phase == "Running"
    assert [c.ready for c in restored.container_statuses] == [True]

    # Every node went and came back (KWOK plays all three), and the watch saw it.
    def all_back() -> bool:
        seen = {(t.node, t.after) for t in watch.transitions()[seen_before:]}
        return {(name, ready) for name in cluster.nodes.values()
                for ready in ("Unknown", "True")} <= seen

    cluster.wait_for(all_back, 60, "every node to go Unknown and come back Ready")


def test_the_watch_names_a_node_that_leaves_ready(tmp_path: Path,
                                                  quick: tuple[Cluster, NodeReadyWatch]) -> None:
    # The conftest fails a test on what NodeReadyWatch reports: here it must
    # report a node that went Unknown and back, once, with the test it was in.
    cluster, _quick_watch = quick
    node = cluster.nodes["services"]
    watch = NodeReadyWatch(cluster.kubeconfig, {node}, tmp_path / "node-ready.log")
    watch.during = "this test"
    watch.start()
    try:
        core = cluster.core()
        conditions = core.read_node(node).status.conditions
        ready = _ready(conditions)
        # What the node lifecycle controller writes; KWOK puts Ready back.
        core.patch_node_status(node, {"status": {"conditions": [{
            "type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
            "message": "Kubelet stopped posting node status.",
            "lastHeartbeatTime": ready.last_heartbeat_time.isoformat(),
            "lastTransitionTime": datetime.datetime.now(datetime.UTC).isoformat()}]}})
        cluster.wait_for(lambda: len(watch.transitions()) >= 2, 60,
                         "the watch to see the node leave Ready and come back")
    finally:
        watch.stop()
    went, back = watch.unreported()[:2]
    assert (went.node, went.before, went.after, went.during) == (node, "True", "Unknown",
                                                                 "this test")
    assert "NodeStatusUnknown" in went.reason
    assert (back.node, back.before, back.after) == (node, "Unknown", "True")
    assert watch.unreported() == []
    assert "TRANSITION from True" in (tmp_path / "node-ready.log").read_text()
