"""The real Airflow the chart runs (tools.toml pins it with the providers the
apache/airflow image ships): our admin-account hook, exactly as the chart
ships it, against a migrated Airflow database; and Metaflow's DAG code
finding KubernetesPodOperator with those providers."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from chartlib import CHART, CI_VALUES, get, render

AIRFLOW = shutil.which("airflow")
pytestmark = pytest.mark.skipif(not AIRFLOW, reason="airflow not installed (tools.toml pins it; run `make test-tools`)")
AZURE_AIRFLOW = next(p for p in CI_VALUES if p.name == "azure-airflow-values.yaml")
# Checks a login the way the webserver's login form does (FAB's auth_user_db).
LOGIN = """
import sys
from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder
with get_application_builder() as ab, ab.app.test_request_context():
    user = ab.sm.auth_user_db(sys.argv[1], sys.argv[2])
    print("roles: " + ",".join(r.name for r in user.roles) if user else "LOGIN FAILED")
"""


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow")
    env = {**os.environ, "AIRFLOW_HOME": str(home / "home"),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    proc = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    script = home / "scripts" / "airflow_admin.py"
    script.parent.mkdir()
    objs = render([AZURE_AIRFLOW], release="mf")
    script.write_text(get(objs, "ConfigMap", "mf-airflow-admin")["data"]["airflow_admin.py"])
    return env, script


def _python() -> str:
    return str(Path(os.path.realpath(AIRFLOW)).parent / "python")


def _hook(airflow_home, password: str) -> subprocess.CompletedProcess:
    env, script = airflow_home
    env = {**env, "MFHELM_AIRFLOW_ADMIN_USER": "admin", "MFHELM_AIRFLOW_ADMIN_PASSWORD": password}
    return subprocess.run([_python(), str(script)], env=env, capture_output=True, text=True,
                          timeout=300)


def _login(airflow_home, password: str) -> str:
    env, _ = airflow_home
    proc = subprocess.run([_python(), "-c", LOGIN, "admin", password], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def test_hook_creates_the_admin_then_resets_its_password(airflow_home):
    first, second = "first-Generated-pw-0123456789", "second-Generated-pw-9876543210"
    proc = _hook(airflow_home, first)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "created Airflow user admin" in proc.stdout
    assert _login(airflow_home, first) == "roles: Admin"
    assert _login(airflow_home, "admin") == "LOGIN FAILED"

    # Re-run (every upgrade): the Secret is the truth, the account is kept.
    proc = _hook(airflow_home, second)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "password set from its Secret" in proc.stdout
    assert _login(airflow_home, second) == "roles: Admin"
    assert _login(airflow_home, first) == "LOGIN FAILED"
    for text in (proc.stdout, proc.stderr):
        assert second not in text and first not in text


def test_hook_refuses_a_short_password(airflow_home):
    proc = _hook(airflow_home, "short")
    assert proc.returncode == 1
    assert "shorter than 16" in proc.stderr


# The helpers Metaflow embeds verbatim in every DAG it writes (`airflow create`).
OPERATOR_LOOKUP = """
import sys
ns = {"__name__": "metaflow_dag"}
exec(compile(open(sys.argv[1]).read(), "airflow_utils.py", "exec"), ns)
ns["_validate_minimum_airflow_version"]()
ns["_check_foreach_compatible_kubernetes_provider"]()
operator = ns["get_metaflow_kubernetes_operator"]()
base = operator.__mro__[1]
print(base.__module__ + "." + base.__qualname__)
print(ns["get_kubernetes_provider_version"]())
"""


def test_pinned_airflow_is_the_one_the_chart_runs():
    import tomllib

    tools = tomllib.loads((CHART.parents[1] / "tools.toml").read_text())["python"]["airflow"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())["airflow"]
    assert tools["version"] == values["defaultAirflowTag"] == values["airflowVersion"]
    proc = subprocess.run([AIRFLOW, "version"], capture_output=True, text=True,
                          env={**os.environ, "AIRFLOW_HOME": "/nonexistent-airflow-home"})
    assert proc.stdout.strip().splitlines()[-1] == tools["version"]


def test_metaflow_dag_code_finds_kubernetes_pod_operator(tmp_path):
    import metaflow.plugins.airflow.airflow_utils as utils

    proc = subprocess.run([_python(), "-c", OPERATOR_LOOKUP, utils.__file__],
                          env={**os.environ, "AIRFLOW_HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    operator, provider = proc.stdout.strip().splitlines()[-2:]
    # provider 10 removed operators.kubernetes_pod; Airflow 2.10's contrib
    # shim maps the first import Metaflow tries to operators.pod.
    assert operator == "airflow.providers.cncf.kubernetes.operators.pod.KubernetesPodOperator"
    assert provider == "10.1.0"
