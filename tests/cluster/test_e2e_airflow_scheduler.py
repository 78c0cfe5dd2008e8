"""A Metaflow flow on the real Airflow, end to end.

- Metaflow 2.19 compiles a flow with a linear step and a foreach (`airflow
  create`, with the config `mfhelm config` writes); `mfhelm dag-push` puts it
  on the release's DAG volume (the scheduler's own Airflow checks it first).
- The pinned Airflow 2.10.5 with the image's providers runs the scheduler
  with LocalExecutor, configured only from what the chart put in the cluster
  (airflow_env.py says what moves and why), its metadata in a real
  PostgreSQL migrated by `airflow db migrate`.
- A triggered run launches each step as a pod through the
  KubernetesPodOperator, in-cluster, as the Airflow service account; our pod
  mutation hook gives the pods the flows account, the workload-identity label
  and the taskworkers toleration; KWOK completes them, and the run moves on.
  No container runs, so nothing writes the XCom Metaflow's foreach expands
  from: the run goes through `start` and stops at `fan_out`, and the test
  pins that.
- Each task's log lands in the airflow-logs container of a real Azurite,
  where the Azure provider's handler puts it, and reads back through
  Airflow's log reader (what the UI calls) once the local copy is gone.

The azure profile's wasb connection (workload identity, no key) is checked
with the same handler against Azurite's bearer-token check and an
Entra-shaped token endpoint; what stays untested without Azure is said there.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chartlib import SCENARIOS, render, renderable_chart
from kubernetes import client

from mfhelm.verify.checks_orchestrators import AIRFLOW_LOG

from . import airflow_env as afenv
from . import metaflow_env as mfenv
from .handle import Cluster
from .test_e2e_airflow_rbac import scheduler_pod
from .test_e2e_stack import mfhelm

pytestmark = pytest.mark.cluster

FLOW = "linear_foreach_flow.py"
DAG_ID = "LinearForeachFlow"
RUN_ID = "mfhelm-e2e-1"
LOGS_CONTAINER = "airflow-logs"
RELEASE = "afe"

# Reads a task's log the way the webserver's log view does: the script
# `mfhelm verify` runs in the scheduler (TaskLogReader with the task from the
# serialized DAG); prints the handler's messages and the log text.
READ_LOG = AIRFLOW_LOG


# The one thing added to the chart's airflow_local_settings.py. A kubelet ends
# a log follow when the container exits; KWOK never does (its CRI stand-in
# reports every container running), so the operator's follow of a step's log
# would only end at its 5-minute read timeout. Metaflow's DAG asks for
# get_logs; this task policy turns it off, so the operator waits for the pod
# by polling its status instead. The pod mutation hook is untouched.
KWOK_LOG_POLICY = """

def task_policy(task):
    if getattr(task, "get_logs", False):
        task.get_logs = False
"""


class PodRecorder(threading.Thread):
    """Every pod seen in a namespace while it runs (the operator deletes its pods)."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        super().__init__(daemon=True)
        self.core, self.namespace = cluster.core(), namespace
        self.pods: dict[str, client.V1Pod] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for pod in self.core.list_namespaced_pod(self.namespace).items:
                if pod.spec.node_name or pod.metadata.uid not in self.pods:
                    self.pods[pod.metadata.uid] = pod
            self._halt.wait(0.3)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def _install(cluster: Cluster, ns: str, flow_ns: str, flows: dict[str, Any]) -> None:
    """The release as `mfhelm install --local` makes it with Airflow on (the
    Airflow chart archive dropped, as everywhere here), flow pods scheduled
    as the azure profile schedules them."""
    import sys

    from mfhelm import helm as helm_mod
    from mfhelm import kube, stack, values

    vals = values.local_values(argo=False, airflow=True, flow_namespace=flow_ns)
    vals["flows"] = {**flows, "namespace": flow_ns}
    api = kube.api_client(str(cluster.kubeconfig))
    target = stack.Target(RELEASE, ns, kubeconfig=str(cluster.kubeconfig))
    conn = stack.airflow_connection("metaflow", f"pw-{uuid.uuid4().hex[:12]}",
                                    f"{RELEASE}-postgres", 5432, "airflow", "disable")
    stack._prepare_namespaces(api, target, flow_ns, airflow=True)
    stack._apply_secrets(api, ns, {values.DB_SECRET: {values.DB_SECRET_KEY: "unused-here"},
                                   **stack._airflow_secrets(api, ns, conn)})
    helm = helm_mod.Helm(kubeconfig=str(cluster.kubeconfig), timeout="4m",
                         executable=str(Path(sys.executable).with_name("helm")))
    info = helm.install_or_upgrade(RELEASE, renderable_chart(), vals, namespace=ns)
    assert info.status == "deployed"


def _ensure_container(azurite: mfenv.Azurite, name: str) -> None:
    """The container the chart's Azurite init (or Bicep, on azure) creates."""
    if name not in [c.name for c in azurite.service().list_containers()]:
        azurite.service().create_container(name)


def _dag_folder(cluster: Cluster, ns: str) -> Path:
    claim = cluster.core().read_namespaced_persistent_volume_claim("metaflow-airflow-dags", ns)
    volume = cluster.core().read_persistent_volume(claim.spec.volume_name)
    return Path(volume.spec.host_path.path)


def _states(pg: Any, user: str, password: str) -> dict[str, str]:
    out = pg.psql(user, password, "airflow",
                  f"SELECT task_id, coalesce(state, 'none') FROM task_instance "
                  f"WHERE dag_id = '{DAG_ID}' AND run_id = '{RUN_ID}'").stdout
    return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)


@pytest.fixture(scope="module")
def airflow_run(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory,
                azurite_https: mfenv.Azurite, entra_endpoint: mfenv.FakeEntra,
                metadata_ping: mfenv.FakeMetadata, stack_outputs: dict[str, Any]
                ) -> Iterator[dict[str, Any]]:
    import pgserver

    from mfhelm import values
    from mfhelm.settings import parse

    if pgserver.pg_bin() is None or not shutil.which("psql"):
        pytest.skip("PostgreSQL server not installed (Debian package postgresql)")
    if not cluster.exec_mounts:
        pytest.skip("exec onto volumes requires mount namespaces (`unshare --mount`) on this host")
    work = tmp_path_factory.mktemp("airflow-e2e")
    ns = cluster.create_namespace(f"afe-{uuid.uuid4().hex[:6]}")
    flow_ns = values.flows_namespace_for(ns)
    settings = parse({"org_prefix": "acme", "location": "westeurope", "deploy_airflow": True,
                      "helm": {"release": RELEASE, "namespace": ns, "flow_namespace": flow_ns}})
    outputs = {**stack_outputs, "serviceNamespace": ns, "flowNamespace": flow_ns,
               "deployAirflow": True, "airflowLogsContainerName": LOGS_CONTAINER}
    _install(cluster, ns, flow_ns, values.render_values(outputs, settings)["flows"])

    # The data scientist: `airflow create` with the config `mfhelm config` writes.
    mf = mfenv.build_metaflow_env(work / "user", azurite=azurite_https, entra=entra_endpoint,
                                  metadata=metadata_ping, outputs=outputs, settings=settings)
    dag_file = mf.home / "work" / "linear_foreach_dag.py"
    created = mf.run_flow(FLOW, "airflow", "create", str(dag_file))
    assert created.returncode == 0, created.stderr[-3000:]

    # The platform engineer: `mfhelm dag-push` onto the release's DAG volume.
    cluster.core().create_namespaced_pod(ns, scheduler_pod(RELEASE))
    cluster.wait_pod_ready(ns, f"{RELEASE}-scheduler-0", timeout=120)
    pushed = mfhelm(cluster, "dag-push", str(dag_file), "-n", ns, "--release", RELEASE)
    assert pushed.returncode == 0, pushed.stderr
    dags = _dag_folder(cluster, ns)
    assert (dags / dag_file.name).read_bytes() == dag_file.read_bytes()

    chart = afenv.read_chart_settings(cluster, ns)
    with pgserver.running_server() as pg:
        db_url = chart.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        from urllib.parse import unquote, urlsplit
        parts = urlsplit(db_url)
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        database = parts.path.lstrip("/")
        # What the local PostgreSQL's init (or, on azure, the db-bootstrap Job) provides.
        admin = (pgserver.ADMIN, pgserver.ADMIN_PASSWORD, "postgres")
        pg.psql(*admin, f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
        pg.psql(*admin, f"GRANT {user} TO {pgserver.ADMIN}")
        pg.psql(*admin, f"CREATE DATABASE {database} OWNER {user}")

        home = work / "airflow-home"
        (home / "config").mkdir(parents=True)
        assert chart.local_settings_path == f"{afenv.IMAGE_AIRFLOW_HOME}/config/airflow_local_settings.py"
        (home / "config" / "airflow_local_settings.py").write_text(
            chart.local_settings + KWOK_LOG_POLICY)
        conn_var = next(k for k in chart.from_extra_env if k.startswith("AIRFLOW_CONN_"))
        conn = json.loads(chart.env[conn_var])
        conn["extra"]["connection_string"] = afenv.move_blob_endpoint(
            conn["extra"]["connection_string"], azurite_https.account_url)
        moved_db = afenv.move_database(db_url, pg.host, pg.port)
        env = mfenv.clean_environ() | chart.env | {
            conn_var: json.dumps(conn),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": moved_db,
            "AIRFLOW_CONN_AIRFLOW_DB": moved_db,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "HOME": str(home),
            "PATH": f"{afenv.airflow_bin()}:/usr/bin:/bin",
            "REQUESTS_CA_BUNDLE": str(azurite_https.ca_file),
            "SSL_CERT_FILE": str(azurite_https.ca_file),
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": cluster.server.rsplit(":", 1)[1],
        }
        _ensure_container(azurite_https, LOGS_CONTAINER)
        migrated = afenv.run_airflow(env, "db", "migrate")
        assert migrated.returncode == 0, migrated.stderr[-3000:]

        sa = afenv.service_account_files(cluster, ns, "metaflow-airflow", work / "sa")
        recorder = PodRecorder(cluster, flow_ns)
        recorder.start()
        started = time.monotonic()
        with afenv.running_scheduler(env, home, sa) as scheduler:
            def serialized() -> bool:
                return DAG_ID in pg.psql(user, password, database,
                                         "SELECT dag_id FROM serialized_dag").stdout
            cluster.wait_for(serialized, 120, f"the scheduler to load {DAG_ID}")
            import_errors = pg.psql(user, password, database,
                                    "SELECT filename, stacktrace FROM import_error").stdout
            triggered = afenv.run_airflow(env, "dags", "trigger", DAG_ID, "--run-id", RUN_ID)
            assert triggered.returncode == 0, triggered.stderr[-3000:]

            def settled() -> dict[str, str] | None:
                states = _states(pg, user, password)
                done = states.get("fan_out") in ("failed", "success")
                return states if done else None
            try:
                states = cluster.wait_for(settled, 240, "the run to reach fan_out's end")
                # The task's state is written before its log handler uploads the
                # log to Blob, as the task process exits: stopping the scheduler
                # now could kill that upload. Wait for both logs first.
                wanted = {_blob("start"), _blob("fan_out")}
                cluster.wait_for(
                    lambda: wanted <= set(azurite_https.blob_names(LOGS_CONTAINER, "wasb-logs/")),
                    120, "the task logs to reach the airflow-logs container")
            except Exception:
                print(scheduler.tail())
                for pod in recorder.pods.values():
                    print("POD", pod.metadata.name, pod.status.phase, pod.spec.node_name,
                          pod.status.container_statuses)
                raise
            took = time.monotonic() - started
        recorder.stop()
        yield {"ns": ns, "flow_ns": flow_ns, "env": env, "home": home, "pg": pg,
               "db": (user, password, database), "states": states, "pods": recorder.pods,
               "import_errors": import_errors, "scheduler_log": scheduler.log,
               "azurite": azurite_https, "took": took}


def test_the_dag_loads_without_import_errors(airflow_run):
    assert airflow_run["import_errors"].strip() == ""


def test_the_run_moves_on_through_kwok_and_stops_at_the_foreach(airflow_run):
    states = airflow_run["states"]
    print(f"\nrun {RUN_ID}: {states} after {airflow_run['took']:.0f}s")
    assert states["start"] == "success"
    # fan_out's pod ran and completed, but no container wrote the foreach
    # cardinality, so the operator returned nothing to expand `shout` over.
    assert states["fan_out"] == "failed"
    assert states.get("shout", "none") in ("none", "upstream_failed")


def test_step_pods_carry_what_our_mutation_hook_adds(airflow_run, cluster: Cluster):
    pods = [p for p in airflow_run["pods"].values()
            if (p.metadata.labels or {}).get("app.kubernetes.io/name") == "metaflow-task"]
    steps = {p.metadata.labels.get("task_id") for p in pods}
    assert {"start", "fan_out"} <= steps, steps
    for pod in pods:
        name = pod.metadata.name
        assert pod.metadata.namespace == airflow_run["flow_ns"], name
        assert pod.spec.service_account_name == "metaflow-flows", name
        # Metaflow's operator sets neither of these two; the hook does.
        assert pod.metadata.labels.get("azure.workload.identity/use") == "true", name
        assert {"key": "mfhelm.io/pool", "operator": "Equal", "value": "taskworkers",
                "effect": "NoSchedule"} in [
            {"key": t.key, "operator": t.operator, "value": t.value, "effect": t.effect}
            for t in pod.spec.tolerations or []], name
        assert pod.spec.node_selector == {"mfhelm.io/pool": "taskworkers"}, name
        # Tainted: only the toleration lets it land there.
        assert pod.spec.node_name == cluster.nodes["taskworkers"], name


def _blob(task_id: str) -> str:
    return f"wasb-logs/dag_id={DAG_ID}/run_id={RUN_ID}/task_id={task_id}/attempt=1.log"


def test_task_logs_land_in_the_airflow_logs_container(airflow_run):
    names = airflow_run["azurite"].blob_names(LOGS_CONTAINER, "wasb-logs/")
    assert _blob("start") in names, names
    assert _blob("fan_out") in names, names
    text = (airflow_run["azurite"].service().get_blob_client(LOGS_CONTAINER, _blob("fan_out"))
            .download_blob().readall().decode())
    assert "XComForMappingNotPushed" in text or "did not push" in text, text[-2000:]


def test_logs_read_back_through_airflow_from_blob(airflow_run):
    local = airflow_run["home"] / "logs" / f"dag_id={DAG_ID}"
    shutil.rmtree(local, ignore_errors=True)  # only Blob has them now
    read = afenv.airflow_python(airflow_run["env"], READ_LOG, DAG_ID, RUN_ID, "start")
    assert read.returncode == 0, read.stderr[-3000:]
    # The handler names its source as https://<container>.blob.core.windows.net/<blob>
    # whatever the endpoint (its display only; it read from Azurite).
    assert "Found remote logs" in read.stdout, read.stdout[-3000:]
    assert f"{LOGS_CONTAINER}.blob.core.windows.net/{_blob('start')}" in read.stdout, read.stdout[:3000]
    assert "Marking task as SUCCESS" in read.stdout, read.stdout[-3000:]


# Writes and reads a log with the task handler Airflow configures from the
# environment (remote logging on), exactly the calls it makes when a task
# ends and when the UI shows its log.
WASB_ROUNDTRIP = """
import logging, sys
import airflow  # noqa: F401  (configures logging)
handler = next(h for h in logging.getLogger("airflow.task").handlers
               if type(h).__name__ == "WasbTaskHandler")
location = f"{handler.remote_base}/{sys.argv[1]}"
if not handler.wasb_write(sys.argv[2], location, append=False):
    sys.exit("wasb_write returned False")
print(handler.wasb_read(location, return_error=True))
"""


def test_azure_profile_log_connection_works_with_workload_identity(
        tmp_path: Path, azurite_https: mfenv.Azurite, metaflow_ca):
    """The azure profile's wasb connection names the account and the managed
    identity and carries no key: the handler gets a token through workload
    identity. Checked against Azurite's bearer-token check and an
    Entra-shaped endpoint that accepts only the federated token of the
    Airflow service account. Not checked without Azure: that AKS's webhook
    injects the AZURE_* variables into the scheduler pod (its label is
    asserted in the chart tests) and that Entra trusts the federation Bicep
    creates."""
    objs = render([SCENARIOS["azure-airflow"]], release="mf", namespace="metaflow")
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    env_cm = by_name[("ConfigMap", "metaflow-airflow-env")]["data"]
    secret = by_name[("Secret", "metaflow-airflow-conn")]["stringData"]
    (conn_var, conn_json), = secret.items()
    conn = json.loads(conn_json)
    assert conn["conn_type"] == "wasb"
    assert set(conn["extra"]) == {"managed_identity_client_id", "workload_identity_tenant_id"}
    assert "password" not in conn and "connection_string" not in conn["extra"]
    tenant = conn["extra"]["workload_identity_tenant_id"]
    client_id = conn["extra"]["managed_identity_client_id"]
    account = conn["login"]
    assert conn["host"] == f"https://{account}.blob.core.windows.net/"
    sa = by_name[("ServiceAccount", "metaflow-airflow")]
    assert sa["metadata"]["annotations"]["azure.workload.identity/client-id"] == client_id
    # Only the endpoint moves (Azurite serves its one account, path-style).
    conn["host"], conn["login"] = azurite_https.account_url, mfenv.AZURITE_ACCOUNT
    federated = mfenv.unsigned_jwt({
        "aud": [mfenv.FEDERATION_AUDIENCE], "iss": "https://oidc.example/",
        "sub": "system:serviceaccount:metaflow:metaflow-airflow",
        "iat": int(time.time()), "exp": int(time.time()) + 3600})
    entra = mfenv.FakeEntra(tenant=tenant, client_id=client_id, federated_token=federated)
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(federated)
    assert env_cm["AIRFLOW__AZURE_REMOTE_LOGGING__REMOTE_WASB_LOG_CONTAINER"] == LOGS_CONTAINER
    _ensure_container(azurite_https, LOGS_CONTAINER)
    with mfenv.serve_entra(metaflow_ca, entra):
        env = mfenv.clean_environ() | env_cm | {
            conn_var: json.dumps(conn),
            "AIRFLOW_HOME": str(tmp_path / "home"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/airflow.db",
            # What the workload-identity webhook injects into a labelled pod.
            "AZURE_CLIENT_ID": client_id, "AZURE_TENANT_ID": tenant,
            "AZURE_FEDERATED_TOKEN_FILE": str(token_file),
            "AZURE_AUTHORITY_HOST": entra.url + "/",
            "REQUESTS_CA_BUNDLE": str(azurite_https.ca_file),
            "SSL_CERT_FILE": str(azurite_https.ca_file),
        }
        blob = "dag_id=azure_form/run_id=r1/task_id=t/attempt=1.log"
        text = f"written with workload identity {uuid.uuid4().hex}"
        proc = afenv.airflow_python(env, WASB_ROUNDTRIP, blob, text)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert text in proc.stdout, proc.stdout[-2000:]
    assert len(entra.token_requests()) >= 1 and entra.issued
    # Every request the handler made carried the Entra token, never a key.
    # (Azurite writes its debug log behind the responses: wait for the lines.)
    deadline = time.monotonic() + 15
    while True:
        tokens = [r.bearer for r in azurite_https.requests()
                  if r.path.startswith(f"/{mfenv.AZURITE_ACCOUNT}/{LOGS_CONTAINER}/wasb-logs/")
                  and "azure_form" in r.path]
        if len(tokens) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(tokens) >= 2 and set(tokens) <= set(entra.issued), tokens
    stored = (azurite_https.service().get_blob_client(LOGS_CONTAINER, f"wasb-logs/{blob}")
              .download_blob().readall().decode())
    assert stored == text
