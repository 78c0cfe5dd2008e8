"""dag-push through the exec API, and the RBAC the chart grants, checked with
SubjectAccessReviews against the real API server.

The Apache Airflow chart archive cannot be fetched here, so the release is
installed from our chart with the missing dependencies dropped (the same
honest copy the chart tests render) and `airflow.enabled=true`: our Airflow
glue (DAG volume, service account, RBAC) is real. A pod with the scheduler's
labels and the DAG volume stands in for the Airflow chart's scheduler.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from chartlib import renderable_chart
from kubernetes import client

from mfhelm.values import flows_namespace_for

from .agents import EXEC_PATH_ANNOTATION
from .handle import Cluster
from .test_e2e_stack import DAG, mfhelm, one_error_line

pytestmark = pytest.mark.cluster

DAG_FOLDER = "/opt/airflow/dags"


def _install_with_airflow_glue(cluster: Cluster, ns: str, release: str) -> str:
    """Installs as `mfhelm install --local --airflow` does; returns the flow namespace."""
    from mfhelm import helm as helm_mod
    from mfhelm import kube, stack, values

    flow_ns = values.flows_namespace_for(ns)
    vals = values.local_values(argo=False, airflow=True, flow_namespace=flow_ns)
    api = kube.api_client(str(cluster.kubeconfig))
    target = stack.Target(release, ns, kubeconfig=str(cluster.kubeconfig))
    conn = stack.airflow_connection("metaflow", "glue-test-password", f"{release}-postgres",
                                    5432, "airflow", "disable")
    data = {values.DB_SECRET: {values.DB_SECRET_KEY: "glue-test-password"},
            **stack._airflow_secrets(api, ns, conn)}
    stack._prepare_namespaces(api, target, flow_ns, airflow=True)
    stack._apply_secrets(api, ns, data)
    helm = helm_mod.Helm(kubeconfig=str(cluster.kubeconfig), timeout="4m",
                         executable=str(Path(sys.executable).with_name("helm")))
    info = helm.install_or_upgrade(release, renderable_chart(), vals, namespace=ns)
    assert info.status == "deployed"
    return flow_ns


def airflow_bin() -> str:
    """The pinned Airflow's environment (tools.toml): the stand-in scheduler's
    `python`, as the apache/airflow image has Airflow and its providers."""
    found = shutil.which("airflow")
    if found is None:
        pytest.fail("airflow is not on PATH: tools.toml pins it, `make dev` installs it")
    return str(Path(os.path.realpath(found)).parent)


def scheduler_pod(release: str, *, claim: str = "metaflow-airflow-dags",
                  node_selector: dict[str, str] | None = None) -> client.V1Pod:
    """A stand-in with the Airflow chart's scheduler labels and DAG mount;
    commands exec'd into it find the pinned Airflow's python first."""
    return client.V1Pod(
        metadata=client.V1ObjectMeta(
            name=f"{release}-scheduler-0",
            labels={"tier": "airflow", "component": "scheduler", "release": release},
            annotations={EXEC_PATH_ANNOTATION: airflow_bin()}),
        spec=client.V1PodSpec(
            containers=[client.V1Container(
                name="scheduler", image="apache/airflow:2.10.5",
                command=["sh", "-c", "sleep 3600"],
                volume_mounts=[client.V1VolumeMount(name="dags", mount_path=DAG_FOLDER)])],
            volumes=[client.V1Volume(
                name="dags",
                persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                    claim_name=claim))],
            node_selector=node_selector,
            termination_grace_period_seconds=0,
        ),
    )


@pytest.fixture(scope="module")
def airflow_release(cluster: Cluster) -> tuple[str, str]:
    ns = cluster.create_namespace(f"af-{uuid.uuid4().hex[:6]}")
    _install_with_airflow_glue(cluster, ns, "af")
    return ns, "af"


@pytest.fixture(scope="module")
def scheduler(cluster: Cluster, airflow_release) -> tuple[str, str]:
    ns, rel = airflow_release
    if not cluster.exec_mounts:
        pytest.skip("exec onto volumes requires mount namespaces (`unshare --mount`) on this host")
    cluster.core().create_namespaced_pod(ns, scheduler_pod(rel))
    cluster.wait_pod_ready(ns, f"{rel}-scheduler-0", timeout=120)
    return ns, rel


def _dag_volume_files(cluster: Cluster, ns: str, pod: str) -> list[str]:
    code, out, err = cluster.exec(ns, pod, ["sh", "-c", f"ls -1A {DAG_FOLDER}"])
    assert code == 0, err
    return sorted(out.split())


# ----------------------------------------------------------------- dag-push

def test_dag_push_copies_lists_and_removes(cluster: Cluster, scheduler, tmp_path: Path):
    ns, rel = scheduler
    dag = tmp_path / "my_flow.py"
    dag.write_text(DAG)
    proc = mfhelm(cluster, "dag-push", str(dag), "-n", ns, "--release", rel)
    assert proc.returncode == 0, proc.stderr
    assert f"pushed my_flow.py to {rel}-scheduler-0:{DAG_FOLDER} (verified)" in proc.stdout
    code, out, err = cluster.exec(ns, f"{rel}-scheduler-0", ["cat", f"{DAG_FOLDER}/my_flow.py"])
    assert (code, out) == (0, DAG), err
    # Nothing but the DAG: the temporary name was renamed away.
    assert _dag_volume_files(cluster, ns, f"{rel}-scheduler-0") == ["my_flow.py"]

    if cluster.backend == "controlplane":  # the bytes are on the volume, not in the pod
        claim = cluster.core().read_namespaced_persistent_volume_claim("metaflow-airflow-dags", ns)
        volume = cluster.core().read_persistent_volume(claim.spec.volume_name)
        assert (Path(volume.spec.host_path.path) / "my_flow.py").read_text() == DAG

    proc = mfhelm(cluster, "dag-push", str(dag), "--name", "renamed.py", "-n", ns, "--release", rel)
    assert proc.returncode == 0, proc.stderr
    listed = mfhelm(cluster, "dag-push", "--list", "-n", ns, "--release", rel)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["my_flow.py", "renamed.py"]

    removed = mfhelm(cluster, "dag-push", "--remove", "renamed.py", "-n", ns, "--release", rel)
    assert removed.returncode == 0, removed.stderr
    assert _dag_volume_files(cluster, ns, f"{rel}-scheduler-0") == ["my_flow.py"]
    line = one_error_line(mfhelm(cluster, "dag-push", "--remove", "renamed.py", "-n", ns,
                                 "--release", rel))
    assert "not in the DAG folder" in line


def test_dag_survives_a_scheduler_restart(cluster: Cluster, scheduler, tmp_path: Path):
    ns, rel = scheduler
    dag = tmp_path / "durable.py"
    dag.write_text(DAG)
    assert mfhelm(cluster, "dag-push", str(dag), "-n", ns, "--release", rel).returncode == 0
    pod = f"{rel}-scheduler-0"
    core = cluster.core()
    core.delete_namespaced_pod(pod, ns, grace_period_seconds=0)
    cluster.wait_for(lambda: not any(p.metadata.name == pod for p in
                                     core.list_namespaced_pod(ns).items), 60, "old pod gone")
    core.create_namespaced_pod(ns, scheduler_pod(rel))
    cluster.wait_pod_ready(ns, pod, timeout=120)
    assert "durable.py" in _dag_volume_files(cluster, ns, pod)


def test_dag_with_syntax_error_is_refused_before_any_copy(cluster: Cluster, scheduler,
                                                          tmp_path: Path):
    ns, rel = scheduler
    before = _dag_volume_files(cluster, ns, f"{rel}-scheduler-0")
    broken = tmp_path / "broken.py"
    broken.write_text("from airflow import DAG\nwith DAG('x') as d\n    pass\n")
    line = one_error_line(mfhelm(cluster, "dag-push", str(broken), "-n", ns, "--release", rel))
    assert "broken.py:2" in line
    assert _dag_volume_files(cluster, ns, f"{rel}-scheduler-0") == before


def test_dag_airflow_cannot_import_is_refused_before_any_copy(cluster: Cluster, scheduler,
                                                              tmp_path: Path):
    """Valid Python that defines a DAG, so the local check passes; the
    scheduler's Airflow, loading the staged file in the pod, refuses it."""
    ns, rel = scheduler
    pod = f"{rel}-scheduler-0"
    before = _dag_volume_files(cluster, ns, pod)
    bad = tmp_path / "needs_pandas_x.py"
    bad.write_text("from airflow import DAG\nimport pandas_that_is_not_there\n"
                   "dag = DAG('needs_pandas_x')\n")
    line = one_error_line(mfhelm(cluster, "dag-push", str(bad), "-n", ns, "--release", rel))
    assert f"Airflow in {pod} cannot load it, not pushed" in line, line
    assert line.endswith("No module named 'pandas_that_is_not_there'"), line
    assert _dag_volume_files(cluster, ns, pod) == before


def test_dag_push_without_airflow(cluster: Cluster, namespace: str, tmp_path: Path):
    dag = tmp_path / "d.py"
    dag.write_text(DAG)
    line = one_error_line(mfhelm(cluster, "dag-push", str(dag), "-n", namespace))
    assert "Airflow is not deployed" in line


def test_dag_push_to_a_scheduler_that_is_not_ready(cluster: Cluster, namespace: str,
                                                   tmp_path: Path):
    # A pool no node has: the pod stays Pending.
    cluster.core().create_namespaced_pod(
        namespace, scheduler_pod("pend", node_selector={"mfhelm.io/pool": "nowhere"}))
    dag = tmp_path / "d.py"
    dag.write_text(DAG)
    line = one_error_line(mfhelm(cluster, "dag-push", str(dag), "-n", namespace,
                                 "--release", "pend"))
    assert "not ready" in line and "Pending" in line


# --------------------------------------------------------------------- RBAC

def _can(cluster: Cluster, ns: str, account: str, verb: str, resource: str, *,
         where: str | None, group: str = "", subresource: str = "") -> bool:
    return cluster.service_account_can(ns, account, verb, resource, namespace=where,
                                       group=group, subresource=subresource)


ARGO_RULES = [
    ("create", "workflowtaskresults", ""), ("patch", "workflowtaskresults", ""),
    ("get", "workflowtaskresults", ""), ("list", "workflowtaskresults", ""),
    ("list", "workflowtasksets", ""), ("watch", "workflowtasksets", ""),
    ("patch", "workflowtasksets", "status"),
]


def test_flow_account_can_report_argo_task_results(cluster: Cluster, airflow_release):
    ns, _ = airflow_release
    flows = flows_namespace_for(ns)
    for verb, resource, sub in ARGO_RULES:
        assert _can(cluster, flows, "metaflow-flows", verb, resource, where=flows,
                    group="argoproj.io", subresource=sub), (verb, resource, sub)


def test_flow_account_cannot_create_pods_or_act_elsewhere(cluster: Cluster, airflow_release):
    ns, _ = airflow_release
    flows = flows_namespace_for(ns)
    for where in (flows, ns):
        assert not _can(cluster, flows, "metaflow-flows", "create", "pods", where=where)
        assert not _can(cluster, flows, "metaflow-flows", "get", "secrets", where=where)
    # Nothing cluster-wide, nothing in another namespace.
    assert not _can(cluster, flows, "metaflow-flows", "list", "namespaces", where=None)
    assert not _can(cluster, flows, "metaflow-flows", "get", "nodes", where=None)
    for where in ("default", ns):
        assert not _can(cluster, flows, "metaflow-flows", "create", "workflowtaskresults",
                        where=where, group="argoproj.io")
    assert not _can(cluster, flows, "metaflow-flows", "list", "workflowtaskresults", where=None,
                    group="argoproj.io")


def test_airflow_account_can_launch_and_watch_pods(cluster: Cluster, airflow_release):
    ns, _ = airflow_release
    flows = flows_namespace_for(ns)
    for verb in ("create", "get", "list", "watch", "delete"):
        assert _can(cluster, ns, "metaflow-airflow", verb, "pods", where=flows), verb
    assert _can(cluster, ns, "metaflow-airflow", "get", "pods", where=flows, subresource="log")
    # Where the services' Secrets are, DAG code can start nothing.
    for verb in ("create", "delete"):
        assert not _can(cluster, ns, "metaflow-airflow", verb, "pods", where=ns), verb
    assert not _can(cluster, ns, "metaflow-airflow", "create", "pods", where=ns,
                    subresource="exec")
    assert not _can(cluster, ns, "metaflow-airflow", "get", "secrets", where=ns)
    assert not _can(cluster, ns, "metaflow-airflow", "create", "pods", where="default")
    assert not _can(cluster, ns, "metaflow-airflow", "list", "pods", where=None)


@pytest.mark.parametrize("account", ["metaflow-service", "default"])
def test_service_accounts_can_do_none_of_that(cluster: Cluster, airflow_release, account: str):
    ns, _ = airflow_release
    checks: list[tuple[str, str, str, str]] = [
        ("create", "pods", "", ""), ("list", "pods", "", ""), ("create", "pods", "", "exec"),
        *[(v, r, "argoproj.io", s) for v, r, s in ARGO_RULES],
    ]
    for verb, resource, group, sub in checks:
        assert not _can(cluster, ns, account, verb, resource, where=ns, group=group,
                        subresource=sub), (account, verb, resource, sub)


def test_identity_objects_exist_as_rendered(cluster: Cluster, airflow_release):
    ns, rel = airflow_release
    core = cluster.core()
    names = {sa.metadata.name for sa in core.list_namespaced_service_account(ns).items}
    assert {"metaflow-service", "metaflow-airflow"} <= names
    flows = flows_namespace_for(ns)
    assert "metaflow-flows" in {sa.metadata.name for sa in
                                core.list_namespaced_service_account(flows).items}
    pvc: Any = core.read_namespaced_persistent_volume_claim("metaflow-airflow-dags", ns)
    assert pvc.status.phase == "Bound"
    assert pvc.metadata.annotations["helm.sh/resource-policy"] == "keep"


def test_airflow_keys_are_generated_once_and_kept(cluster: Cluster, airflow_release):
    """The webserver key, fernet key and admin password mfhelm keeps in
    Secrets survive the next install unchanged; the admin hook ran."""
    import base64

    from mfhelm import kube, stack, values

    ns, rel = airflow_release
    core = cluster.core()

    def read(name: str) -> dict[str, str]:
        data = core.read_namespaced_secret(name, ns).data
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    first = {name: read(name) for name in (values.AIRFLOW_WEBSERVER_SECRET,
                                           values.AIRFLOW_FERNET_SECRET,
                                           values.AIRFLOW_ADMIN_SECRET)}
    fernet = first[values.AIRFLOW_FERNET_SECRET][values.AIRFLOW_FERNET_SECRET_KEY]
    assert len(base64.urlsafe_b64decode(fernet)) == 32
    assert len(first[values.AIRFLOW_WEBSERVER_SECRET]["webserver-secret-key"]) == 64
    assert first[values.AIRFLOW_ADMIN_SECRET]["username"] == "admin"
    assert len(first[values.AIRFLOW_ADMIN_SECRET]["password"]) >= 24
    api = kube.api_client(str(cluster.kubeconfig))
    again = stack._airflow_secrets(api, ns, "postgresql://x")
    for name, data in first.items():
        assert again[name] == data, name
    # The admin hook (post-install) ran to completion and was cleaned up.
    assert f"{rel}-airflow-admin" not in {j.metadata.name for j in
                                          cluster.batch().list_namespaced_job(ns).items}
