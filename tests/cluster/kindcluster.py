"""The kind backend: the same `Cluster`, on real nodes in Docker containers.

Chosen with MFHELM_TEST_KIND=1. kind brings what KWOK fakes (kubelets that
run containers, exec into them, a default `standard` StorageClass backed by
its local-path provisioner), so only the node pools need setting up: one
worker per pool, labelled and tainted like the AKS pools: the cluster
`mfhelm up` makes (mfhelm.up.kind_config).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import yaml

from mfhelm import up

from .controlplane import _installer, kubernetes_version
from .handle import Cluster, wait_for


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


def kind_config() -> dict[str, object]:
    """The cluster `mfhelm up` makes: a control plane plus one worker per pool
    of mfhelm.pools, labels and taints at registration."""
    return up.kind_config()


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
    image = up.node_image()

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
    """pool -> its node, found as `mfhelm up` finds them (mfhelm.up.pool_nodes)."""
    def find() -> dict[str, str] | None:
        found = up.pool_nodes(cluster.core().list_node().items)
        return {pool: names[0] for pool, names in found.items()} \
            if all(found.values()) else None

    return wait_for(find, 120, "kind's labelled worker nodes")
