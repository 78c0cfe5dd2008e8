"""The flow image's Python environment, without Docker: its dependency set
(mfhelm's `flow-image` extra) installed from PyPI into a clean virtualenv with
no Metaflow in it, and the commands of a real Metaflow-compiled step (the
`start` step of `argo-workflows create --only-json`, with the config `mfhelm
config` writes when [image] reference is set) run by bash in it with
METAFLOW_SKIP_INSTALL_DEPENDENCIES set, as the image's ENV sets it, and pip
pointed at an index that does not answer (a cluster without PyPI: a task that
ran pip would fail). The code package, from Azurite through the
workload-identity exchange as in the cluster tests, brings Metaflow; the step
runs to its end and its task is recorded in metaflow-local-service (taught to
keep the run id Metaflow gives it, as Netflix's service does). What stands in
for the pod: Argo's placeholders filled in, the input-paths file in the
test's directory instead of the pod's /tmp, and /mnt/out (Argo's output
mount) a tmpfs in a private mount namespace where `unshare` may make one
(elsewhere the test stops at the step's end, where /mnt/out is written).
No control plane: no `cluster` marker. Also: `airflow create` puts the same
image in the DAG's task pods."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from mfhelm import image

from . import metaflow_env as mfenv

REFERENCE = "acmemetaflowacr1234.azurecr.io/metaflow-flow@sha256:" + "ab" * 32
FLOW = "linear_foreach_flow.py"


@pytest.fixture(scope="module")
def flow_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """python -m venv + pip install of the pinned set, as the Dockerfile's RUN does."""
    venv = tmp_path_factory.mktemp("flow-image") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    reqs = venv.parent / "flow-requirements.txt"
    reqs.write_text("\n".join(image.flow_requirements()) + "\n")
    done = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--no-compile",
                           "--disable-pip-version-check", "-q", "-r", str(reqs)],
                          capture_output=True, text=True, timeout=600, check=False,
                          env=mfenv.clean_environ())
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


@pytest.fixture(scope="module")
def image_env(tmp_path_factory, azurite_https, entra_endpoint, metadata_ping, stack_outputs):
    from mfhelm.settings import parse

    settings = parse({"org_prefix": "acme", "location": "westeurope",
                      "image": {"reference": REFERENCE}})
    return mfenv.build_metaflow_env(tmp_path_factory.mktemp("image-env"),
                                    azurite=azurite_https, entra=entra_endpoint,
                                    metadata=metadata_ping, outputs=stack_outputs,
                                    settings=settings)


def test_the_dependency_set_installs_clean_and_has_no_metaflow(flow_venv):
    py = str(flow_venv / "bin/python")
    has = subprocess.run([py, "-c", "import azure.identity, azure.storage.blob, "
                          "azure.keyvault.secrets, requests"], capture_output=True, text=True)
    assert has.returncode == 0, has.stderr
    assert (flow_venv / "bin/download-azure-blob").exists()
    none = subprocess.run([py, "-c", "import metaflow"], capture_output=True, text=True)
    assert none.returncode != 0 and "No module named 'metaflow'" in none.stderr


def _private_mnt_works() -> bool:
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs tmpfs /mnt"], capture_output=True, check=False) \
        if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


def _placeholders(text: str, values: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        key = m[1].strip()
        assert key in values, f"unexpected Argo placeholder {key}"
        return values[key]

    return re.sub(r"\{\{([^}]+)\}\}", sub, text)


def test_a_compiled_step_runs_in_that_environment_and_reaches_the_step(
        image_env, flow_venv, metadata_service, tmp_path):
    mf = image_env
    done = mf.run_flow(FLOW, "argo-workflows", "create", "--only-json")
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    wt = json.loads(done.stdout[done.stdout.index("{"):])
    (tmp_path / "workflow-template.json").write_text(json.dumps(wt, indent=1))
    steps = {t["name"]: t for t in wt["spec"]["templates"]
             if "metaflow/step_name" in ((t.get("metadata") or {}).get("annotations") or {})}
    assert steps and {t["container"]["image"] for t in steps.values()} == {REFERENCE}
    start = steps["start"]["container"]
    assert start["command"][:2] == ["bash", "-c"], start["command"][:2]
    script = _placeholders(start["command"][2], {
        "workflow.name": "linearforeachflow-abc12", "pod.name": "linearforeachflow-abc12-1",
        "workflow.creationTimestamp": "2026-12-03T16:00:00Z",
        "workflow.parameters.metaflow-run-id": "", "inputs.parameters.input-paths": "",
        "workflow.annotations.metaflow/triggered_by": "", "retries": "0",
        "inputs.parameters.task-id": "", "inputs.parameters.split-index": "0",
    }) if "{{" in start["command"][2] else start["command"][2]
    assert "METAFLOW_SKIP_INSTALL_DEPENDENCIES" in script  # Metaflow's own guard
    # A pod has a /tmp of its own; here the input-paths file goes to the test's.
    assert script.count("/tmp/mf-input-paths") == 2
    script = script.replace("/tmp/mf-input-paths", str(tmp_path / "mf-input-paths"))
    env = {e["name"]: str(e.get("value") or "") for e in start["env"] if "value" in e}
    env |= {k: v for k, v in mf.env.items() if k.startswith(("AZURE_", "REQUESTS_", "SSL_"))}
    env |= {
        # The image: its venv first on PATH, its ENV, its user's home as the cwd.
        "PATH": f"{flow_venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path),
        "METAFLOW_SKIP_INSTALL_DEPENDENCIES": "1",
        # A cluster with no route to PyPI: a pip that ran would fail the task.
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_IGNORE_INSTALLED": "1",
        "PIP_RETRIES": "0", "PIP_TIMEOUT": "2",
        # In-cluster, pods reach the service; here the real local one stands in.
        "METAFLOW_SERVICE_URL": metadata_service.url,
        "METAFLOW_USER": "ada", "USER": "ada", "PYTHONUNBUFFERED": "1",
        "MF_ARGO_WORKFLOW_NAME": "linearforeachflow-abc12",
    }
    work = tmp_path / "home"
    work.mkdir()
    # Argo mounts an emptyDir at /mnt/out for the step's outputs; a private mount
    # namespace gives the command one where the machine allows it.
    argv = ["bash", "-c", script]
    private_mnt = _private_mnt_works()
    if private_mnt:
        argv = ["unshare", "--mount", "--propagation", "private", "bash", "-c",
                'mount -t tmpfs tmpfs /mnt && mkdir /mnt/out && exec bash -c "$0"', script]
    ran = subprocess.run(argv, cwd=work, env=env, capture_output=True,
                         text=True, timeout=600, check=False)
    out = ran.stdout + ran.stderr
    assert "Task is starting." in out, out[-4000:]
    if not private_mnt:  # the step ran; only Argo's output mount was missing
        assert "No such file or directory: '/mnt/out/task_id'" in out, out[-4000:]
        return
    # Metaflow came from the code package, not the environment, and its Azure
    # datastore ran on the environment's packages (the task's logs went to Azurite).
    assert list((work / "metaflow").glob("**/metaflow/__init__.py")), \
        sorted(str(p) for p in (work / "metaflow").iterdir())
    assert "upload_success datastore=azure" in out, out[-4000:]
    assert ran.returncode == 0, out[-4000:]
    # The step ran to its end: its task is in the metadata service, finished.
    run_id = re.search(r"--run-id[= ](argo-[0-9a-z-]+)", script)
    assert run_id is not None
    with urllib.request.urlopen(f"{metadata_service.url}/flows/LinearForeachFlow/runs/"
                                f"{run_id[1]}/steps/start/tasks", timeout=10) as resp:
        tasks = json.load(resp)
    assert len(tasks) == 1, tasks


def test_airflow_task_pods_get_the_same_image(image_env, tmp_path):
    dag = tmp_path / "dag.py"
    done = image_env.run_flow(FLOW, "airflow", "create", str(dag))
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    text = dag.read_text()
    assert REFERENCE in text
    # No other image: Metaflow's default (python:<minor>) appears nowhere.
    assert not re.search(r"python:3\.[0-9]+", text), re.findall(r".{40}python:3.{20}", text)
    assert os.path.getsize(dag) > 0
