"""`-f/--values`, `--set` and `--allow-override` on `mfhelm render` and
`mfhelm install`, both profiles, run as a user runs them (`python -m mfhelm`,
a subprocess): the merged values come out of render, and every refusal is
one line with a non-zero exit, before anything reaches Azure or a cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fake_arm
import pytest
import yaml


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    (tmp_path / "mfhelm.toml").write_text('org_prefix = "acme"\nlocation = "westeurope"\n')
    (tmp_path / "outputs.json").write_text(json.dumps(fake_arm.arm_outputs(
        fake_arm.sample_outputs())))
    # A cluster nobody answers at: a command that got as far as the cluster
    # would fail with a connection error, not with the line under test.
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "x", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}]}))
    return tmp_path


def mfhelm(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MFHELM_SETTINGS"}
    env.update(HOME=str(work / "home"), AZURE_SUBSCRIPTION_ID=fake_arm.SUB,
               AZURE_CONFIG_DIR=str(work / "home" / ".azure"))
    return subprocess.run([sys.executable, "-m", "mfhelm", *args], capture_output=True,
                          text=True, cwd=work, env=env, timeout=120)


def one_error_line(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("> ")]
    assert len(lines) == 1 and lines[0].startswith("mfhelm: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_render_writes_the_merged_values(work: Path):
    (work / "a.yaml").write_text("metadata:\n  replicas: 2\n  resources:\n"
                                 "    requests: {cpu: 250m}\ncommonLabels: {team: ml}\n")
    (work / "b.yaml").write_text("metadata:\n  replicas: 3\n")
    proc = mfhelm(work, "render", "--outputs", "outputs.json", "-f", "a.yaml", "--values",
                  "b.yaml", "--set", "metadata.replicas=4,ui.backend.logLevel=DEBUG",
                  "-o", "values.yaml")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "wrote values.yaml\n"
    values = yaml.safe_load((work / "values.yaml").read_text())
    assert values["metadata"]["replicas"] == 4
    assert values["metadata"]["resources"] == {"requests": {"cpu": "250m"}}
    assert values["ui"]["backend"]["logLevel"] == "DEBUG"
    assert values["commonLabels"] == {"team": "ml"}
    plain = yaml.safe_load(mfhelm(work, "render", "--outputs", "outputs.json").stdout)
    assert values["database"] == plain["database"] and values["storage"] == plain["storage"]


def test_render_local_profile_with_user_values(work: Path):
    proc = mfhelm(work, "render", "--local", "--no-argo", "-n", "mf", "--set",
                  "metadata.replicas=2")
    assert proc.returncode == 0, proc.stderr
    values = yaml.safe_load(proc.stdout)
    assert values["profile"] == "local" and values["metadata"]["replicas"] == 2
    assert values["flows"]["namespace"] == "mf-flows"
    assert values["argo-workflows"]["enabled"] is False


def test_allow_override_lets_a_protected_key_through(work: Path):
    proc = mfhelm(work, "render", "--outputs", "outputs.json", "--set",
                  "database.host=pg.internal.example.com", "--allow-override", "database.host")
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["database"]["host"] == "pg.internal.example.com"


def test_render_refuses_a_protected_key_and_writes_nothing(work: Path):
    (work / "mine.yaml").write_text("identity:\n  clientId: 00000000-0000-0000-0000-000000000000\n")
    proc = mfhelm(work, "render", "--outputs", "outputs.json", "-f", "mine.yaml",
                  "-o", "values.yaml")
    one_error_line(proc, "values file mine.yaml changes identity.clientId, which comes from "
                   "the deployment (identityClientId)", "--allow-override identity.clientId")
    assert not (work / "values.yaml").exists()


def test_install_azure_refuses_a_protected_key_before_any_azure_call(work: Path):
    proc = mfhelm(work, "install", "--outputs", "outputs.json", "--set",
                  "storage.accountName=otheraccount", "--kubeconfig", "kubeconfig")
    one_error_line(proc, "--set storage.accountName=otheraccount changes storage.accountName",
                   "(storageAccountName)")


def test_install_local_refuses_a_protected_key(work: Path):
    proc = mfhelm(work, "install", "--local", "--no-argo", "--set", "airflow.enabled=true",
                  "--kubeconfig", "kubeconfig")
    one_error_line(proc, "changes airflow.enabled, which comes from --airflow/--no-airflow")


@pytest.mark.parametrize("command", [
    ["install", "--local", "--kubeconfig", "kubeconfig"],
    ["install", "--outputs", "outputs.json", "--kubeconfig", "kubeconfig"],
    ["render", "--outputs", "outputs.json"],
    ["render", "--local"],
])
def test_bad_set_syntax_is_one_line(work: Path, command: list[str]):
    one_error_line(mfhelm(work, *command, "--set", "metadata.replicas"),
                   '--set metadata.replicas: key "replicas" has no value')


def test_unknown_allow_override_is_one_line(work: Path):
    one_error_line(mfhelm(work, "render", "--local", "--allow-override", "database.host"),
                   "--allow-override database.host: not a protected key or a security switch here",
                   "airflow.enabled")


def test_schema_refusal_is_one_line_on_render_and_install(work: Path):
    rendered = one_error_line(mfhelm(work, "render", "--outputs", "outputs.json", "--set",
                                     "metadata.replicas=two"),
                              "values.schema.json refuses the values: at metadata.replicas")
    # install checks the values on the same path as render, before the cluster.
    installed = one_error_line(mfhelm(work, "install", "--local", "--no-argo", "--set",
                                      "metadata.replicas=two", "--kubeconfig", "kubeconfig"))
    assert installed == rendered


def test_missing_values_file_is_one_line(work: Path):
    one_error_line(mfhelm(work, "install", "--outputs", "outputs.json", "-f", "nope.yaml"),
                   "values file nope.yaml: no such file or directory")


# Bad values render and install must refuse alike: security switches, a
# replaced published config key, the chart's schema and the chart's guards.
SAME_REFUSALS = [
    (["--local", "--no-argo", "--airflow"], "airflow.webserver.defaultUser.enabled=true",
     "airflow.webserver.defaultUser.enabled must stay false"),
    (["--local", "--no-argo", "--airflow"], "airflow.migrateDatabaseJob.useHelmHooks=true",
     "airflow.migrateDatabaseJob.useHelmHooks must be false"),
    (["--local", "--no-argo", "--airflow"], "airflow.allowPodLaunching=true",
     "--allow-override airflow.allowPodLaunching"),
    (["--local", "--no-argo", "--airflow"], "airflow.scheduler.extraVolumes[0].hostPath.path=/",
     "--allow-override airflow.scheduler.extraVolumes"),
    (["--local", "--no-argo"], "networkPolicy.enabled=false",
     "--allow-override networkPolicy.enabled"),
    (["--local", "--no-argo"], "podSecurityContext.runAsUser=0",
     "--allow-override podSecurityContext"),
    (["--local", "--no-argo"], "argo-events.createAggregateRoles=true",
     "at argo-events.createAggregateRoles"),
    (["--local", "--no-argo"], "metaflowConfig.extra.METAFLOW_KUBERNETES_SERVICE_ACCOUNT=default",
     "is published by the stack"),
    (["--local"], "argo-workflows.server.authModes={server}",
     "--allow-override argo-workflows.server.authModes"),
    (["--local"], "argo-workflows.singleNamespace=false",
     "--allow-override argo-workflows.singleNamespace"),
    (["--outputs", "outputs.json"], "database.sslMode=disable",
     "--allow-override database.sslMode"),
    (["--outputs", "outputs.json"], "argo-workflows.createAggregateRoles=true",
     "--allow-override argo-workflows.createAggregateRoles"),
    (["--outputs", "outputs.json"],
     "metaflowConfig.extra.METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT=https://elsewhere/",
     "is published by the stack"),
    (["--outputs", "airflow-outputs.json"], "airflow.webserver.defaultUser.enabled=true",
     "airflow.webserver.defaultUser.enabled must stay false"),
    (["--outputs", "outputs.json"], "database.password=secret",
     "database.password is for the local profile only"),
    (["--local"], "argo-events.webhook.enabled=true", "at argo-events.webhook.enabled"),
]


@pytest.mark.parametrize(("profile", "expr", "fragment"), SAME_REFUSALS,
                         ids=[e for _, e, _ in SAME_REFUSALS])
def test_render_and_install_refuse_the_same_values(work: Path, profile: list[str], expr: str,
                                                   fragment: str):
    (work / "airflow-outputs.json").write_text(json.dumps(fake_arm.arm_outputs(
        fake_arm.sample_outputs() | {"deployAirflow": True,
                                     "airflowLogsContainerName": "airflow-logs"})))
    rendered = one_error_line(mfhelm(work, "render", *profile, "--set", expr,
                                     "-o", "values.yaml"), fragment)
    assert not (work / "values.yaml").exists()
    # The dead cluster in `kubeconfig` would fail any install that got further.
    installed = one_error_line(mfhelm(work, "install", *profile, "--set", expr,
                                      "--kubeconfig", "kubeconfig"))
    assert installed == rendered
