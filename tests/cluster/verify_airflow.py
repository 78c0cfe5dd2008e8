"""An Airflow release for `mfhelm verify`'s `airflow run` check: the chart
installed with Airflow on (as test_e2e_airflow_scheduler.py installs it), the
real scheduler on this host configured from what the chart put in the
cluster (airflow_env.py), its metadata in a real PostgreSQL, task logs to
Azurite's airflow-logs container.

The check works through the scheduler pod (`mfhelm dag-push`, then Airflow's
own code exec'd there). Here that pod is the stand-in of
test_e2e_airflow_rbac.scheduler_pod, whose exec runs on this host through
KWOK; what differs from the chart's pod, and why:
- the stand-in's `python` is a small script that sets the scheduler's
  environment (the values read from the cluster, the database and Blob
  endpoint moved as airflow_env.py says) and runs the pinned Airflow's
  python: KWOK's exec gives a command its own environment, not the pod's;
- the scheduler runs with the DAG volume bound at the pod's mount path
  (/opt/airflow/dags), as in the pod, so the file locations Airflow records
  are the same for the scheduler, its task processes and exec'd commands.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from . import airflow_env as afenv
from . import metaflow_env as mfenv
from .agents import EXEC_PATH_ANNOTATION
from .controlplane import stop_group
from .handle import Cluster

LOGS_CONTAINER = "airflow-logs"
DAG_FOLDER = "/opt/airflow/dags"


@dataclass
class AirflowStack:
    release: str
    namespace: str
    flow_namespace: str
    env: dict[str, str]
    user: mfenv.MetaflowEnv
    scheduler_log: Path


def _python_wrapper(into: Path, env: dict[str, str]) -> Path:
    """A `python` that runs the pinned Airflow's python in the scheduler's environment."""
    into.mkdir(parents=True, exist_ok=True)
    lines = ["#!/bin/sh"] + [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())
                             if k.isidentifier()]
    lines.append(f'exec {shlex.quote(str(afenv.airflow_bin() / "python"))} "$@"')
    wrapper = into / "python"
    wrapper.write_text("\n".join(lines) + "\n")
    wrapper.chmod(0o755)
    return into


@contextlib.contextmanager
def _scheduler(env: dict[str, str], home: Path, sa_files: Path, dags: Path
               ) -> Iterator[Path]:
    """`airflow scheduler` in a private mount namespace: the service account's
    files at the pod's path (as airflow_env.running_scheduler) and the DAG
    volume at the pod's mount path."""
    log = home / "scheduler.log"
    script = (f"mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -p {afenv.SA_DIR} && "
              f'cp "$1"/token "$1"/ca.crt "$1"/namespace {afenv.SA_DIR}/ && '
              f'mkdir -p {DAG_FOLDER} && mount --bind "$2" {DAG_FOLDER} && shift 2 && exec "$@"')
    with log.open("ab") as out:
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
             str(sa_files), str(dags), str(afenv.airflow_bin() / "airflow"), "scheduler"],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Starting the scheduler" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the scheduler did not start:\n"
                                   f"{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield log
    finally:
        stop_group(proc, grace=30)


@contextlib.contextmanager
def airflow_stack(cluster: Cluster, work: Path, *, azurite: mfenv.Azurite,
                  entra: mfenv.FakeEntra, metadata_url: str, outputs: dict[str, Any]
                  ) -> Iterator[AirflowStack]:
    import pgserver

    from mfhelm import values
    from mfhelm.settings import parse

    from .test_e2e_airflow_rbac import scheduler_pod
    from .test_e2e_airflow_scheduler import (
        KWOK_LOG_POLICY,
        RELEASE,
        _dag_folder,
        _ensure_container,
        _install,
    )

    ns = cluster.create_namespace(f"afv-{uuid.uuid4().hex[:6]}")
    try:
        flow_ns = values.flows_namespace_for(ns)
        settings = parse({"org_prefix": "acme", "location": "westeurope", "deploy_airflow": True,
                          "helm": {"release": RELEASE, "namespace": ns, "flow_namespace": flow_ns}})
        outputs = {**outputs, "serviceNamespace": ns, "flowNamespace": flow_ns,
                   "deployAirflow": True, "airflowLogsContainerName": LOGS_CONTAINER}
        _install(cluster, ns, flow_ns, values.render_values(outputs, settings)["flows"])
        user = mfenv.build_metaflow_env(work / "user", azurite=azurite, entra=entra,
                                        metadata=mfenv.FakeMetadata(url=metadata_url),
                                        outputs=outputs, settings=settings)
        dags = _dag_folder(cluster, ns)
        chart = afenv.read_chart_settings(cluster, ns)
        with pgserver.running_server() as pg:
            db_url = chart.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
            parts = urlsplit(db_url)
            db_user, password = unquote(parts.username or ""), unquote(parts.password or "")
            database = parts.path.lstrip("/")
            admin = (pgserver.ADMIN, pgserver.ADMIN_PASSWORD, "postgres")
            pg.psql(*admin, f"CREATE ROLE {db_user} LOGIN PASSWORD '{password}'")
            pg.psql(*admin, f"GRANT {db_user} TO {pgserver.ADMIN}")
            pg.psql(*admin, f"CREATE DATABASE {database} OWNER {db_user}")
            home = work / "airflow-home"
            (home / "config").mkdir(parents=True)
            (home / "config" / "airflow_local_settings.py").write_text(
                chart.local_settings + KWOK_LOG_POLICY)
            conn_var = next(k for k in chart.from_extra_env if k.startswith("AIRFLOW_CONN_"))
            conn = json.loads(chart.env[conn_var])
            conn["extra"]["connection_string"] = afenv.move_blob_endpoint(
                conn["extra"]["connection_string"], azurite.account_url)
            moved_db = afenv.move_database(db_url, pg.host, pg.port)
            env = mfenv.clean_environ() | chart.env | {
                conn_var: json.dumps(conn),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": moved_db,
                "AIRFLOW_CONN_AIRFLOW_DB": moved_db,
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__DAGS_FOLDER": DAG_FOLDER,
                "HOME": str(home),
                "PATH": f"{afenv.airflow_bin()}:/usr/bin:/bin",
                "REQUESTS_CA_BUNDLE": str(azurite.ca_file),
                "SSL_CERT_FILE": str(azurite.ca_file),
                "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": cluster.server.rsplit(":", 1)[1],
            }
            _ensure_container(azurite, LOGS_CONTAINER)
            migrated = afenv.run_airflow(env, "db", "migrate")
            if migrated.returncode != 0:
                raise RuntimeError(migrated.stderr[-3000:])
            pod = scheduler_pod(RELEASE)
            pod.metadata.annotations[EXEC_PATH_ANNOTATION] = str(
                _python_wrapper(work / "scheduler-pod-bin", env))
            cluster.core().create_namespaced_pod(ns, pod)
            cluster.wait_pod_ready(ns, pod.metadata.name, timeout=120)
            sa = afenv.service_account_files(cluster, ns, "metaflow-airflow", work / "sa")
            with _scheduler(env, home, sa, dags) as log:
                yield AirflowStack(RELEASE, ns, flow_ns, env, user, log)
        shutil.rmtree(home / "logs", ignore_errors=True)
    finally:
        cluster.delete_namespace(ns)
