"""The kind backend: the same `Cluster`, on real nodes in Docker containers.

Chosen with MFHELM_TEST_KIND=1. kind brings what KWOK fakes (kubelets that
run containers, exec into them, a default `standard` StorageClass backed by
its local-path provisioner), so only the node pools need setting up: one
worker per pool, labelled and tainted like the AKS pools.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import yaml

from .controlplane import _installer, kubernetes_version
from .handle import POOL_LABEL, SYSTEM_TAINT, TASKWORKERS_TAINT, Cluster, wait_for


class KindUnavailable(Exception):
    """kind or a working Docker engine is missing."""


def _kind_entry() -> dict[str, object]:
    inst = _installer()
    entry: dict[str, object] = inst.load_manifest()["go"]["kind"]
    return entry


def kind_binary() -> str:
    inst = _installer()
    entry = _kind_entry()
    cached = inst.tool_home("kind", entry) / "bin" / "kind"
    if cached.exists():
        return str(cached)
    found = shutil.which("kind")
    if found is None:
        raise KindUnavailable(
            "kind is not installed (tests/tools/install.py --only kind builds it)"
        )
    return found


def docker_works() -> None:
    if shutil.which("docker") is None:
        raise KindUnavailable("kind needs Docker, and the docker CLI is not installed")
    probe = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        raise KindUnavailable(f"kind needs a running Docker engine: {probe.stderr.strip()}")


def _taint(t: dict[str, str]) -> str:
    return f"{t['key']}={t['value']}:{t['effect']}"


def kind_config() -> dict[str, object]:
    """Control plane plus one worker per pool, labels and taints at registration."""

    def worker(labels: dict[str, str], taints: list[dict[str, str]]) -> dict[str, object]:
        node: dict[str, object] = {"role": "worker", "labels": labels}
        if taints:
            node["kubeadmConfigPatches"] = [yaml.safe_dump({
                "kind": "JoinConfiguration",
                "nodeRegistration": {"taints": [
                    {"key": t["key"], "value": t["value"], "effect": t["effect"]}
                    for t in taints
                ]},
            })]
        return node

    return {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "networking": {"apiServerAddress": "127.0.0.1"},
        "nodes": [
            {"role": "control-plane"},
            worker({"kubernetes.azure.com/mode": "system"}, [SYSTEM_TAINT]),
            worker({POOL_LABEL: "services"}, []),
            worker({POOL_LABEL: "taskworkers"}, [TASKWORKERS_TAINT]),
        ],
    }


def kind_requested() -> bool:
    """Whether MFHELM_TEST_KIND asks for kind instead of the local control plane."""
    return os.environ.get("MFHELM_TEST_KIND", "") not in ("", "0", "false", "no")


def start_kind(workdir: Path) -> tuple[Cluster, Callable[[], None]]:
    docker_works()
    kind = kind_binary()
    name = f"mfhelm-{uuid.uuid4().hex[:6]}"
    config = workdir / "kind.yaml"
    config.write_text(yaml.safe_dump(kind_config(), sort_keys=False))
    kubeconfig = workdir / "kubeconfig"
    image = str(_kind_entry()["node_image"])

    def stop() -> None:
        subprocess.run([kind, "delete", "cluster", "--name", name,
                        "--kubeconfig", str(kubeconfig)], check=False, timeout=300)

    try:
        subprocess.run([kind, "create", "cluster", "--name", name, "--config", str(config),
                        "--image", image, "--kubeconfig", str(kubeconfig), "--wait", "180s"],
                       check=True, timeout=900)
    except BaseException:
        stop()
        raise
    server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    cluster = Cluster(kubeconfig=kubeconfig, server=server, backend="kind", nodes={},
                      workdir=workdir, version=kubernetes_version())
    try:
        cluster.nodes = _pools(cluster)
    except BaseException:
        stop()
        raise
    return cluster, stop


def _pools(cluster: Cluster) -> dict[str, str]:
    def find() -> dict[str, str] | None:
        pools: dict[str, str] = {}
        for node in cluster.core().list_node().items:
            labels = node.metadata.labels or {}
            if labels.get("kubernetes.azure.com/mode") == "system":
                pools["system"] = node.metadata.name
            elif labels.get(POOL_LABEL) in ("services", "taskworkers"):
                pools[labels[POOL_LABEL]] = node.metadata.name
        return pools if len(pools) == 3 else None

    return wait_for(find, 120, "kind's labelled worker nodes")
