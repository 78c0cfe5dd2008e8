"""End to end against a real API server: install, upgrade, rollback, status,
uninstall, dag-push and the RBAC the chart grants.

`mfhelm` runs as a separate process (`python -m mfhelm`), the way a user runs
it, with the test cluster's kubeconfig.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from .handle import Cluster

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
DAG = "from airflow import DAG\nwith DAG('pushed') as dag:\n    pass\n"


def mfhelm(cluster: Cluster, *args: str, cwd: Path | None = None,
           timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mfhelm", *args, "--kubeconfig", str(cluster.kubeconfig)],
        capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT,
        env=tool_env(cluster),
    )


def tool_env(cluster: Cluster) -> dict[str, str]:
    """The cluster's env with the venv's tools (mfhelm, the pinned helm) first."""
    env = cluster.env()
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("mfhelm: error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def install_local(cluster: Cluster, ns: str, release: str, *extra: str):
    return mfhelm(cluster, "install", "--local", "--no-argo", "-n", ns, "--release", release,
                  "--timeout", "4m", *extra)


def deployments(cluster: Cluster, ns: str, release: str) -> dict[str, Any]:
    items = cluster.apps().list_namespaced_deployment(
        ns, label_selector=f"app.kubernetes.io/instance={release}").items
    return {d.metadata.name: d for d in items}


def release_secret_revisions(cluster: Cluster, ns: str, release: str) -> list[int]:
    items = cluster.core().list_namespaced_secret(
        ns, label_selector=f"owner=helm,name={release}").items
    return sorted(int(s.metadata.labels["version"]) for s in items)


@pytest.fixture(scope="module")
def installed(cluster: Cluster) -> tuple[str, str]:
    """One local-profile release shared by the read-only checks below."""
    ns = cluster.create_namespace(f"e2e-{uuid.uuid4().hex[:6]}")
    proc = install_local(cluster, ns, "mf")
    assert proc.returncode == 0, proc.stderr
    assert "revision 1: deployed" in proc.stdout
    return ns, "mf"


# ----------------------------------------------------------------- install

def test_install_leaves_every_deployment_available(cluster: Cluster, installed):
    ns, rel = installed
    deps = deployments(cluster, ns, rel)
    assert set(deps) == {"mf-metadata", "mf-ui-backend", "mf-ui-static", "mf-azurite",
                         "mf-entra-emulator"}
    for name, d in deps.items():
        assert (d.status.available_replicas or 0) >= d.spec.replicas, name
    sts = cluster.apps().read_namespaced_stateful_set("mf-postgres", ns)
    assert sts.status.ready_replicas == 1


def test_services_have_endpoints(cluster: Cluster, installed):
    ns, rel = installed
    discovery = client.DiscoveryV1Api(cluster.api_client())
    services = cluster.core().list_namespaced_service(
        ns, label_selector=f"app.kubernetes.io/instance={rel}").items
    assert {s.metadata.name for s in services} >= {"mf-metadata", "mf-ui", "mf-ui-backend"}
    for svc in services:
        def ready_addresses(name: str = svc.metadata.name) -> list[str]:
            slices = discovery.list_namespaced_endpoint_slice(
                ns, label_selector=f"kubernetes.io/service-name={name}").items
            return [a for s in slices for e in (s.endpoints or [])
                    if e.conditions and e.conditions.ready for a in e.addresses]
        cluster.wait_for(ready_addresses, 60, f"endpoints of {svc.metadata.name}")


def test_password_secret_is_generated_once_and_never_in_values(cluster: Cluster, installed):
    ns, rel = installed
    secret = cluster.core().read_namespaced_secret("metaflow-db", ns)
    assert len(secret.data["password"]) > 20
    values = subprocess.run(
        ["helm", "get", "values", rel, "-n", ns, "-o", "yaml", "--kubeconfig",
         str(cluster.kubeconfig)], capture_output=True, text=True, check=True,
        env=tool_env(cluster)).stdout
    import base64

    password = base64.b64decode(secret.data["password"]).decode()
    assert password not in values
    assert yaml.safe_load(values)["database"]["existingSecret"] == "metaflow-db"


def test_status_reports_the_real_state(cluster: Cluster, installed):
    ns, rel = installed
    proc = mfhelm(cluster, "status", "-n", ns, "--release", rel)
    assert proc.returncode == 0, proc.stderr
    assert f"release {rel} in {ns}: revision 1, deployed" in proc.stdout
    # The chart's own versions (Helm 4's `helm status -o json` carries no chart).
    chart = yaml.safe_load((ROOT / "charts/metaflow/Chart.yaml").read_text())
    assert f", chart {chart['version']}, app {chart['appVersion']}\n" in proc.stdout
    for name in ("mf-metadata", "mf-ui-backend", "mf-ui-static", "mf-postgres"):
        assert any(name in line and "ready" in line for line in proc.stdout.splitlines()), name


def test_status_exits_nonzero_when_a_component_is_not_ready(cluster: Cluster, installed):
    ns, rel = installed
    apps = cluster.apps()
    # Steer the UI to a pool no node has: its new pod can never become ready.
    apps.patch_namespaced_deployment("mf-ui-static", ns, {"spec": {"replicas": 2, "template": {
        "spec": {"nodeSelector": {"mfhelm.io/pool": "nowhere"}}}}})
    try:
        proc = mfhelm(cluster, "status", "-n", ns, "--release", rel)
        assert proc.returncode == 1
        assert "mf-ui-static" in proc.stdout and "NOT READY" in proc.stdout
    finally:
        apps.patch_namespaced_deployment("mf-ui-static", ns, {"spec": {"replicas": 1, "template": {
            "spec": {"nodeSelector": None}}}})


def test_status_without_release(cluster: Cluster, namespace: str):
    line = one_error_line(mfhelm(cluster, "status", "-n", namespace, "--release", "nothing"))
    assert "no release 'nothing'" in line


def test_bad_values_are_refused_before_anything_is_applied(cluster: Cluster, namespace: str,
                                                           tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("metadata:\n  replicas: two\n")
    line = one_error_line(install_local(cluster, namespace, "bad", "-f", str(bad)))
    assert "replicas" in line
    assert not cluster.core().list_namespaced_secret(namespace).items
    assert not cluster.apps().list_namespaced_deployment(namespace).items


def test_enabled_dependency_without_archive_is_a_clear_error(cluster: Cluster, namespace: str):
    proc = mfhelm(cluster, "install", "--local", "-n", namespace, "--release", "argo",
                  timeout=300)
    line = one_error_line(proc)
    assert "could not fetch chart dependencies" in line and "argo-workflows" in line
    assert not cluster.core().list_namespaced_secret(namespace).items


# ------------------------------------------------------- upgrade, rollback

def test_upgrade_with_changed_values(cluster: Cluster, namespace: str, tmp_path: Path):
    assert install_local(cluster, namespace, "up").returncode == 0
    password = cluster.core().read_namespaced_secret("metaflow-db", namespace).data["password"]
    more = tmp_path / "more.yaml"
    more.write_text("metadata:\n  replicas: 2\nui:\n  backend:\n    logLevel: DEBUG\n")
    proc = install_local(cluster, namespace, "up", "-f", str(more))
    assert proc.returncode == 0, proc.stderr
    assert "revision 2: deployed" in proc.stdout
    deps = deployments(cluster, namespace, "up")
    assert deps["up-metadata"].spec.replicas == 2
    assert (deps["up-metadata"].status.available_replicas or 0) == 2
    env = {e.name: e.value for e in deps["up-ui-backend"].spec.template.spec.containers[0].env}
    assert env["LOGLEVEL"] == "DEBUG"
    # The upgrade kept the generated password (the database still has it).
    assert cluster.core().read_namespaced_secret("metaflow-db", namespace).data["password"] == password


def test_failed_upgrade_rolls_back_and_previous_objects_remain(cluster: Cluster, namespace: str,
                                                               tmp_path: Path):
    assert install_local(cluster, namespace, "rb").returncode == 0
    before = deployments(cluster, namespace, "rb")["rb-metadata"]
    # Valid for the schema, refused by the API server: a label value over 63 characters.
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"commonLabels": {"team": "x" * 70},
                                   "metadata": {"replicas": 3}}))
    line = one_error_line(install_local(cluster, namespace, "rb", "-f", str(bad)))
    assert "helm" in line
    status = mfhelm(cluster, "status", "-n", namespace, "--release", "rb")
    assert "deployed" in status.stdout, status.stdout + status.stderr
    history = subprocess.run(
        ["helm", "history", "rb", "-n", namespace, "-o", "yaml", "--kubeconfig",
         str(cluster.kubeconfig)], capture_output=True, text=True, check=True,
        env=tool_env(cluster)).stdout
    entries = yaml.safe_load(history)
    assert entries[-1]["status"] == "deployed"
    assert "Rollback to 1" in entries[-1]["description"]
    after = deployments(cluster, namespace, "rb")["rb-metadata"]
    assert after.spec.replicas == before.spec.replicas == 1
    assert after.metadata.uid == before.metadata.uid
    assert "team" not in (after.metadata.labels or {})


# ---------------------------------------------------------------- uninstall

def _pvcs(cluster: Cluster, ns: str) -> set[str]:
    return {p.metadata.name for p in
            cluster.core().list_namespaced_persistent_volume_claim(ns).items}


def test_uninstall_keeps_data_unless_purge(cluster: Cluster, namespace: str):
    assert install_local(cluster, namespace, "un").returncode == 0
    pvcs = _pvcs(cluster, namespace)
    assert {"data-un-postgres-0", "un-azurite"} <= pvcs
    proc = mfhelm(cluster, "uninstall", "-n", namespace, "--release", "un")
    assert proc.returncode == 0, proc.stderr
    assert "data kept" in proc.stdout
    assert not deployments(cluster, namespace, "un")
    assert _pvcs(cluster, namespace) >= {"data-un-postgres-0", "un-azurite"}
    assert not release_secret_revisions(cluster, namespace, "un")

    # Reinstall onto the kept data, then purge.
    assert install_local(cluster, namespace, "un").returncode == 0
    proc = mfhelm(cluster, "uninstall", "--purge", "--yes", "-n", namespace, "--release", "un")
    assert proc.returncode == 0, proc.stderr
    assert "deleted pvc/data-un-postgres-0" in proc.stdout
    cluster.wait_for(lambda: not ({"data-un-postgres-0", "un-azurite"} & _pvcs(cluster, namespace)),
                     60, "purged PVCs to go")
    with pytest.raises(client.ApiException):
        cluster.core().read_namespaced_secret("metaflow-db", namespace)


def test_uninstall_unknown_release(cluster: Cluster, namespace: str):
    line = one_error_line(mfhelm(cluster, "uninstall", "-n", namespace, "--release", "ghost"))
    assert "no release 'ghost'" in line
