"""The installed wheel is a complete tool: built from this checkout,
installed into a fresh venv outside it (tests/packaging/wheelkit.py), its
`mfhelm install --local` deploys the chart it carries, with the pinned helm
(MFHELM_HELM), from a directory that is not the checkout."""

from __future__ import annotations

import pytest
from wheelkit import InstalledWheel, pinned_helm

from .handle import Cluster

pytestmark = pytest.mark.cluster


def test_install_local_from_the_wheel_deploys(cluster: Cluster, namespace: str,
                                              installed_wheel: InstalledWheel,
                                              tmp_path_factory: pytest.TempPathFactory):
    if pinned_helm() is None:
        pytest.skip(reason="no pinned helm in .venv/bin (run `make dev`)")
    work = tmp_path_factory.mktemp("wheel-user")
    (work / "home").mkdir()
    proc = installed_wheel.run(
        "install", "--local", "--no-argo", "-n", namespace, "--release", "wh",
        "--timeout", "4m", "--kubeconfig", str(cluster.kubeconfig),
        cwd=work, timeout=600, HOME=str(work / "home"))
    assert proc.returncode == 0, proc.stderr
    assert "revision 1: deployed" in proc.stdout, proc.stdout

    items = cluster.apps().list_namespaced_deployment(
        namespace, label_selector="app.kubernetes.io/instance=wh").items
    deps = {d.metadata.name: d for d in items}
    assert set(deps) == {"wh-metadata", "wh-ui-backend", "wh-ui-static", "wh-azurite",
                         "wh-entra-emulator"}
    for name, d in deps.items():
        assert (d.status.available_replicas or 0) >= d.spec.replicas, name
    sts = cluster.apps().read_namespaced_stateful_set("wh-postgres", namespace)
    assert sts.status.ready_replicas == 1
