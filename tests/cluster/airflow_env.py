"""The real Airflow scheduler on the test host, configured only from what our
chart put into the cluster.

The Apache Airflow chart itself can't be downloaded here, so this module does
what its templates do with our values (the facts below are read from
chart/templates/_helpers.yaml `standard_airflow_environment` and the chart's
`extraEnvFrom`, `volumes`/`volumeMounts` and `config` handling):

- every component gets AIRFLOW__CORE__FERNET_KEY, AIRFLOW__DATABASE__SQL_ALCHEMY_CONN,
  AIRFLOW_CONN_AIRFLOW_DB and AIRFLOW__WEBSERVER__SECRET_KEY from the Secrets
  our values name (`fernetKeySecretName`, `data.metadataSecretName`,
  `webserverSecretKeySecretName`);
- `extraEnvFrom` is added verbatim (our ConfigMap and Secret: remote logging
  and the wasb connection);
- `volumes`/`volumeMounts` put our airflow_local_settings.py at
  /opt/airflow/config (the image's AIRFLOW_HOME is /opt/airflow, whose
  config/ folder Airflow puts on sys.path);
- `config.core.executor` is `executor`, `load_examples` is False, and the DAG
  folder is where `dags.persistence` mounts the claim.

Each value is read from the API server, never retyped. Three things move,
because the test host is not a pod: the database URL's host and port (to a
real PostgreSQL from Debian; user, password and database kept), the wasb
connection's Blob endpoint (to a real Azurite over HTTPS, its CA trusted), and
the DAG folder (the host directory behind the DAG claim, where `mfhelm
dag-push` wrote). The scheduler runs in its own mount namespace with the
Airflow service account's token, the cluster CA and namespace at
/var/run/secrets/kubernetes.io/serviceaccount and KUBERNETES_SERVICE_HOST/PORT
set, so the KubernetesPodOperator's in-cluster configuration (what Metaflow's
DAGs ask for) works as it does in the scheduler pod, with that account's RBAC.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml
from chartlib import CHART

from .controlplane import stop_group
from .handle import Cluster

AIRFLOW_VALUES: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())["airflow"]
IMAGE_AIRFLOW_HOME = "/opt/airflow"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def airflow_bin() -> Path:
    found = shutil.which("airflow")
    if found is None:
        raise FileNotFoundError("airflow is not on PATH: tools.toml pins it, `make dev` installs it")
    return Path(os.path.realpath(found)).parent


def upstream_secret_env() -> dict[str, tuple[str, str]]:
    """Variable -> (Secret, key), as the Airflow chart's standard environment
    wires them, for the Secret names our values give it."""
    v = AIRFLOW_VALUES
    metadata = v["data"]["metadataSecretName"]
    return {
        "AIRFLOW__CORE__FERNET_KEY": (v["fernetKeySecretName"], "fernet-key"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (metadata, "connection"),
        "AIRFLOW_CONN_AIRFLOW_DB": (metadata, "connection"),
        "AIRFLOW__WEBSERVER__SECRET_KEY": (v["webserverSecretKeySecretName"],
                                           "webserver-secret-key"),
    }


def _secret(cluster: Cluster, ns: str, name: str) -> dict[str, str]:
    data = cluster.core().read_namespaced_secret(name, ns).data or {}
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def _configmap(cluster: Cluster, ns: str, name: str) -> dict[str, str]:
    return dict(cluster.core().read_namespaced_config_map(name, ns).data or {})


@dataclass
class ChartSettings:
    """What Airflow's pods get from the release, as read from the cluster."""

    env: dict[str, str]                # every variable, as the pod would see it
    from_extra_env: dict[str, str]     # the part extraEnvFrom brought
    local_settings: str                # airflow_local_settings.py, as mounted
    local_settings_path: str           # where the chart mounts it in the image


def read_chart_settings(cluster: Cluster, ns: str) -> ChartSettings:
    env: dict[str, str] = {}
    for var, (secret, key) in upstream_secret_env().items():
        env[var] = _secret(cluster, ns, secret)[key]
    extra: dict[str, str] = {}
    for ref in yaml.safe_load(AIRFLOW_VALUES["extraEnvFrom"]):
        if "configMapRef" in ref:
            extra.update(_configmap(cluster, ns, ref["configMapRef"]["name"]))
        else:
            extra.update(_secret(cluster, ns, ref["secretRef"]["name"]))
    env.update(extra)
    env["AIRFLOW__CORE__EXECUTOR"] = AIRFLOW_VALUES["executor"]
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    # Our airflow_local_settings.py (the chart also mounts the local CA, which
    # the tests give the scheduler through REQUESTS_CA_BUNDLE instead).
    (mount,) = [m for m in AIRFLOW_VALUES["volumeMounts"]
                if m["mountPath"].endswith("/airflow_local_settings.py")]
    (volume,) = [v for v in AIRFLOW_VALUES["volumes"] if v["name"] == mount["name"]]
    local = _configmap(cluster, ns, volume["configMap"]["name"])[mount["subPath"]]
    return ChartSettings(env, extra, local, mount["mountPath"])


def move_database(url: str, host: str, port: int) -> str:
    """The same URL (user, password, database, options) on another server."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}:{port}"))


def move_blob_endpoint(conn_string: str, account_url: str) -> str:
    """A storage connection string with only BlobEndpoint (and its scheme) moved."""
    fields = dict(p.split("=", 1) for p in conn_string.strip(";").split(";"))
    fields["BlobEndpoint"] = account_url.rstrip("/")
    fields["DefaultEndpointsProtocol"] = urlsplit(account_url).scheme
    return ";".join(f"{k}={v}" for k, v in fields.items()) + ";"


@dataclass
class Scheduler:
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]
    home: Path

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        stop_group(self.proc, grace=30)


def run_airflow(env: dict[str, str], *args: str, timeout: float = 300
                ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(airflow_bin() / "airflow"), *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def airflow_python(env: dict[str, str], script: str, *args: str, timeout: float = 300
                   ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(airflow_bin() / "python"), "-c", script, *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def service_account_files(cluster: Cluster, ns: str, account: str, into: Path) -> Path:
    """What the kubelet projects into a pod running as `account`."""
    from .argo import service_account_token

    into.mkdir(parents=True, exist_ok=True)
    (into / "token").write_text(service_account_token(cluster, ns, account))
    shutil.copyfile(cluster.workdir / "pki" / "ca.crt", into / "ca.crt")
    (into / "namespace").write_text(ns)
    return into


@contextlib.contextmanager
def running_scheduler(env: dict[str, str], home: Path, sa_files: Path,
                      ready_timeout: float = 120) -> Iterator[Scheduler]:
    """`airflow scheduler` in a private mount namespace: a tmpfs over /run
    (/var/run links there) holds the service account's files at the pod's
    path, seen by the scheduler and the task processes LocalExecutor starts."""
    log = home / "scheduler.log"
    mount = (f"mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -p {SA_DIR} && "
             f'cp "$1"/token "$1"/ca.crt "$1"/namespace {SA_DIR}/ && shift && exec "$@"')
    with log.open("ab") as out:
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, "sh",
             str(sa_files), str(airflow_bin() / "airflow"), "scheduler"],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    sched = Scheduler(proc, log, env, home)
    try:
        deadline = time.monotonic() + ready_timeout
        while "Starting the scheduler" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the scheduler did not start:\n{sched.tail()}")
            time.sleep(0.5)
        yield sched
    finally:
        sched.stop()
