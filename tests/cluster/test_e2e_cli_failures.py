"""Clean failure through the real entry point (`python -m mfhelm`), with a
real API server beside it: a cluster that cannot be reached or used is one
line on stderr and a non-zero exit on every command that talks to it, and
an argument helm would refuse stops install before anything is written.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes.client.rest import ApiException

from .handle import Cluster

# The Airflow stand-in of the dag-push tests (our chart's DAG volume and a pod
# with the scheduler's labels mounting it), for the DAG name cases.
from .test_e2e_airflow_rbac import (
    _dag_volume_files,
    airflow_release,  # noqa: F401 (a fixture the scheduler fixture needs)
    scheduler,  # noqa: F401 (a fixture)
)

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
DAG = "from airflow import DAG\nwith DAG('x') as dag:\n    pass\n"

# Every command that talks to the cluster (`config` does not).
CLUSTER_COMMANDS = {
    "install": ["install", "--local", "--no-argo", "--timeout", "1m"],
    "status": ["status"],
    "uninstall": ["uninstall"],
    "dag-push FILE": ["dag-push", "{dag}"],
    "dag-push --list": ["dag-push", "--list"],
    "dag-push --remove": ["dag-push", "--remove", "x.py"],
    "port-forward": ["port-forward"],
}


def run_mfhelm(*args: str, cwd: Path, env_extra: dict[str, str] | None = None,
               timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["HOME"] = str(cwd)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "mfhelm", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=env)


def only_error_line(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exactly one line on stderr besides progress (`> step`): mfhelm's error.
    No traceback, no chained exceptions, no line from a library's logger."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("> ")]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mfhelm: error: "), proc.stderr
    for frag in fragments:
        assert frag in lines[0], lines[0]
    return lines[0]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kubeconfig_for(path: Path, server: str, user: dict, ca: str | None = None) -> Path:
    cluster: dict = {"server": server}
    if ca:
        cluster["certificate-authority"] = ca
    else:
        cluster["insecure-skip-tls-verify"] = True
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }))
    return path


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "d.py").write_text(DAG)
    return tmp_path


def _args(name: str, work: Path) -> list[str]:
    return [a.format(dag=work / "d.py") for a in CLUSTER_COMMANDS[name]]


# ---------------------------------------------------- unreachable or unusable

@pytest.mark.parametrize("command", CLUSTER_COMMANDS)
def test_closed_port(work: Path, command: str):
    kc = kubeconfig_for(work / "kc", f"https://127.0.0.1:{closed_port()}", {"token": "t"})
    proc = run_mfhelm(*_args(command, work), "--kubeconfig", str(kc), cwd=work)
    line = only_error_line(proc)
    assert "refused" in line or "unreachable" in line, line


@pytest.mark.parametrize("command", CLUSTER_COMMANDS)
@pytest.mark.parametrize("content", [
    "{{{{ not: yaml: [\n",
    "just a string\n",
    "apiVersion: v1\nclusters: 5\ncontexts: nope\ncurrent-context: [1]\n",
    "",
])
def test_garbage_kubeconfig(work: Path, command: str, content: str):
    kc = work / "kc"
    kc.write_text(content)
    proc = run_mfhelm(*_args(command, work), "--kubeconfig", str(kc), cwd=work)
    only_error_line(proc)


@pytest.mark.parametrize("command", CLUSTER_COMMANDS)
def test_garbage_kubeconfig_from_the_environment(work: Path, command: str):
    kc = work / "kc"
    kc.write_text("apiVersion: v1\nclusters: 5\ncontexts: nope\ncurrent-context: [1]\n")
    proc = run_mfhelm(*_args(command, work), cwd=work, env_extra={"KUBECONFIG": str(kc)})
    only_error_line(proc)


@pytest.mark.parametrize("command", CLUSTER_COMMANDS)
def test_context_that_does_not_exist(cluster: Cluster, work: Path, command: str):
    proc = run_mfhelm(*_args(command, work), "--kubeconfig", str(cluster.kubeconfig),
                      "--context", "no-such-context", cwd=work)
    only_error_line(proc, "no-such-context")


@pytest.mark.parametrize("command", CLUSTER_COMMANDS)
def test_credentials_the_server_refuses(cluster: Cluster, work: Path, command: str):
    ca = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"].get(
        "certificate-authority")
    kc = kubeconfig_for(work / "kc", cluster.server, {"token": "not-a-valid-token"}, ca)
    proc = run_mfhelm(*_args(command, work), "--kubeconfig", str(kc), cwd=work)
    line = only_error_line(proc)
    assert "credentials" in line or "Unauthorized" in line, line


def test_a_working_kubeconfig_gets_past_the_checks(cluster: Cluster, work: Path):
    """The control for the cases above: the same command with a usable
    context reaches the cluster and reports what is (not) there."""
    ns = f"none-{uuid.uuid4().hex[:6]}"
    proc = run_mfhelm("status", "-n", ns, "--kubeconfig", str(cluster.kubeconfig), cwd=work)
    only_error_line(proc, f"no release 'metaflow' in namespace '{ns}'")


# ------------------------------------------------- nothing written before a refusal

# "١٠m": Arabic-Indic digits passed a \d check, and helm refused them only
# after mfhelm had written the namespaces and the Secret (issue 17 item 6).
@pytest.mark.parametrize("timeout", ["banana", "10", "-5m", "0s", "1d", "\u0661\u0660m"])
def test_bad_timeout_creates_nothing(cluster: Cluster, work: Path, timeout: str):
    ns = f"never-{uuid.uuid4().hex[:6]}"
    proc = run_mfhelm("install", "--local", "--no-argo", "-n", ns, "--release", "t",
                      "--timeout", timeout, "--kubeconfig", str(cluster.kubeconfig), cwd=work)
    only_error_line(proc, "--timeout")
    with pytest.raises(ApiException) as exc:
        cluster.core().read_namespace(ns)
    assert exc.value.status == 404


def test_bad_timeout_writes_no_secret_in_an_existing_namespace(cluster: Cluster, work: Path,
                                                              namespace: str):
    proc = run_mfhelm("install", "--local", "--no-argo", "-n", namespace, "--timeout", "banana",
                      "--kubeconfig", str(cluster.kubeconfig), cwd=work)
    only_error_line(proc, "--timeout")
    assert not cluster.core().list_namespaced_secret(namespace).items


@pytest.mark.parametrize("name", ["../x", "/etc/passwd.py", "sub/x.py"])
def test_dag_remove_outside_the_folder_is_refused_before_the_cluster(cluster: Cluster,
                                                                      work: Path, name: str):
    proc = run_mfhelm("dag-push", "--remove", name, "--kubeconfig", str(cluster.kubeconfig),
                      cwd=work)
    only_error_line(proc, "not a plain DAG file name")


# ------------------------------------- a DAG name never reaches another file


@pytest.mark.parametrize("name", ["../victim", "/etc/victim.py", "../../victim.py", "victim"])
def test_remove_never_reduces_a_path_to_another_dag(cluster: Cluster, scheduler,  # noqa: F811
                                                    work: Path, name: str):
    ns, rel = scheduler
    pod = f"{rel}-scheduler-0"
    dag = work / "victim.py"
    dag.write_text(DAG)
    kc = ["--kubeconfig", str(cluster.kubeconfig), "-n", ns, "--release", rel]
    pushed = run_mfhelm("dag-push", str(dag), *kc, cwd=work)
    assert pushed.returncode == 0, pushed.stderr
    proc = run_mfhelm("dag-push", "--remove", name, *kc, cwd=work)
    only_error_line(proc, "not a plain DAG file name")
    assert "victim.py" in _dag_volume_files(cluster, ns, pod)


@pytest.mark.parametrize("name", ["../escaped.py", "sub/escaped.py", "escaped"])
def test_push_name_never_writes_outside_the_folder(cluster: Cluster, scheduler,  # noqa: F811
                                                   work: Path, name: str):
    ns, rel = scheduler
    pod = f"{rel}-scheduler-0"
    before = _dag_volume_files(cluster, ns, pod)
    kc = ["--kubeconfig", str(cluster.kubeconfig), "-n", ns, "--release", rel]
    proc = run_mfhelm("dag-push", str(work / "d.py"), "--name", name, *kc, cwd=work)
    only_error_line(proc, "not a plain DAG file name")
    assert _dag_volume_files(cluster, ns, pod) == before
