"""Each command through the real entry point, including the bad-input cases."""

from __future__ import annotations

import json
import tomllib

import jsonschema
import pytest
import yaml
from chartlib import CHART, render
from conftest import assert_one_line_error, write_outputs

SCHEMA = json.loads((CHART / "values.schema.json").read_text())


# ------------------------------------------------------------------- init

def test_init_writes_validated_settings(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("init", "--org-prefix", "acme", "--location", "eastus2", "--airflow")
    assert r.code == 0, r.err
    data = tomllib.loads((tmp_path / "mfhelm.toml").read_text())
    assert data["org_prefix"] == "acme" and data["location"] == "eastus2"
    assert data["deploy_airflow"] is True and data["deploy_argo"] is True
    assert data["aks"]["task_max_count"] >= 1


@pytest.mark.parametrize("prefix", ["ACME", "toolongprefix", "ac-me", "1acme", "a"])
def test_init_rejects_bad_prefix(cli, tmp_path, monkeypatch, prefix):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(cli("init", "--org-prefix", prefix), "org_prefix")
    assert not (tmp_path / "mfhelm.toml").exists()


def test_init_rejects_bad_location(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(cli("init", "--org-prefix", "acme", "--location", "West Europe"),
                          "location")


def test_init_refuses_to_overwrite_without_force(cli, workdir):
    before = (workdir / "mfhelm.toml").read_text()
    assert_one_line_error(cli("init", "--org-prefix", "other"), "--force")
    assert (workdir / "mfhelm.toml").read_text() == before
    assert cli("init", "--org-prefix", "other", "--force").code == 0
    assert "other" in (workdir / "mfhelm.toml").read_text()


# ----------------------------------------------------------------- render

def test_render_values_pass_schema_and_real_helm(cli, workdir):
    outputs = write_outputs(workdir / "outputs.json", deployAirflow=True,
                            airflowLogsContainerName="airflow-logs")
    r = cli("render", "--outputs", str(outputs), "-o", "values.yaml")
    assert r.code == 0, r.err
    values = yaml.safe_load((workdir / "values.yaml").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    merged = {**defaults, **values}
    jsonschema.validate(merged, SCHEMA)
    objs = render([workdir / "values.yaml"], release="metaflow")
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert ("Deployment", "metaflow-metadata") in kinds
    assert ("ConfigMap", "metaflow-airflow-env") in kinds
    cm = next(o for o in objs if o["metadata"]["name"] == "metaflow-metaflow-config")
    config = json.loads(cm["data"]["config.json"])
    assert config["METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT"] == \
        "https://acmemfstore1234567.blob.core.windows.net/"


def test_render_holds_no_secret(cli, workdir):
    outputs = write_outputs(workdir / "outputs.json")
    r = cli("render", "--outputs", str(outputs))
    assert r.code == 0, r.err
    values = yaml.safe_load(r.out)
    assert values["database"]["existingSecret"] == "metaflow-db"

    def keys(node):
        if isinstance(node, dict):
            for k, v in node.items():
                yield k
                yield from keys(v)

    assert "password" not in set(keys(values))


def test_render_missing_outputs_file(cli, workdir):
    assert_one_line_error(cli("render", "--outputs", "nope.json"), "nope.json")


def test_render_outputs_lacking_a_name(cli, workdir):
    path = workdir / "outputs.json"
    path.write_text(json.dumps({"tenantId": {"type": "String", "value": "x"}}))
    assert_one_line_error(cli("render", "--outputs", str(path)), "lacks output")


def test_render_without_settings(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MFHELM_SETTINGS", raising=False)
    assert_one_line_error(cli("render", "--outputs", "x.json"), "mfhelm.toml", "mfhelm init")


def test_render_rejects_namespace_mismatch(cli, workdir):
    outputs = write_outputs(workdir / "outputs.json", serviceNamespace="other")
    assert_one_line_error(cli("render", "--outputs", str(outputs)), "namespace")


def test_settings_typo_is_one_line(cli, workdir):
    (workdir / "mfhelm.toml").write_text('org_prefix = "acme"\nlocation = "westeurope"\n[aks]\ntsk_max_count = 3\n')
    outputs = write_outputs(workdir / "outputs.json")
    assert_one_line_error(cli("render", "--outputs", str(outputs)), "tsk_max_count", "unknown key")


# ----------------------------------------------------------------- config

def test_config_print(cli, workdir):
    outputs = write_outputs(workdir / "outputs.json")
    r = cli("config", "--outputs", str(outputs), "--print")
    assert r.code == 0, r.err
    cfg = json.loads(r.out)
    assert cfg["METAFLOW_DEFAULT_DATASTORE"] == "azure"
    assert cfg["METAFLOW_DATASTORE_SYSROOT_AZURE"] == "metaflow-storage/metaflow"
    assert not (workdir / "home" / ".metaflowconfig").exists()


def test_config_writes_profile_and_keeps_other_keys(cli, workdir):
    cfgdir = workdir / "home" / ".metaflowconfig"
    cfgdir.mkdir()
    (cfgdir / "config_prod.json").write_text(json.dumps({"MY_KEY": "kept",
                                                          "METAFLOW_DEFAULT_DATASTORE": "s3"}))
    outputs = write_outputs(workdir / "outputs.json")
    r = cli("config", "--outputs", str(outputs), "--profile", "prod",
            "--service-url", "https://metaflow.example.com")
    assert r.code == 0, r.err
    cfg = json.loads((cfgdir / "config_prod.json").read_text())
    assert cfg["MY_KEY"] == "kept"
    assert cfg["METAFLOW_DEFAULT_DATASTORE"] == "azure"
    assert cfg["METAFLOW_SERVICE_URL"] == "https://metaflow.example.com"
    assert list(cfgdir.glob("config_prod.json.bak-*"))


def test_config_bad_profile(cli, workdir):
    outputs = write_outputs(workdir / "outputs.json")
    assert_one_line_error(cli("config", "--outputs", str(outputs), "--profile", "../x"), "profile")


# ---------------------------------------------------------------- dag-push

DAG = "from airflow import DAG\nwith DAG('x') as dag:\n    pass\n"


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("missing.py", None, "no such file"),
        ("dag.txt", DAG, "not a Python file"),
        ("broken.py", "from airflow import DAG\ndef (:\n", "not valid Python"),
        ("plain.py", "print('hello')\n", "defines no Airflow DAG"),
    ],
)
def test_dag_push_refuses_bad_files_before_any_cluster_call(cli, workdir, name, content, fragment):
    if content is not None:
        (workdir / name).write_text(content)
    # An unreachable cluster: any API call would fail with a different message.
    r = cli("dag-push", name, "--kubeconfig", str(workdir / "no-kubeconfig"))
    assert_one_line_error(r, fragment)


def test_dag_push_needs_exactly_one_action(cli, workdir):
    (workdir / "d.py").write_text(DAG)
    assert_one_line_error(cli("dag-push", "d.py", "--list"), "--list")
    assert_one_line_error(cli("dag-push"), "--remove")


def test_dag_push_without_kube_context(cli, workdir, monkeypatch):
    (workdir / "d.py").write_text(DAG)
    r = cli("dag-push", "d.py", "--kubeconfig", str(workdir / "no-kubeconfig"))
    assert_one_line_error(r, "kubeconfig", "no such file")
    monkeypatch.setenv("KUBECONFIG", str(workdir / "no-kubeconfig"))
    assert_one_line_error(cli("dag-push", "d.py"), "kube context")


# ------------------------------------------------------ cluster commands

def _unreachable_kubeconfig(path):
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "x", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}],
    }))
    return path


@pytest.mark.parametrize("command", [["status"], ["uninstall"]])
def test_cluster_commands_report_unreachable_cluster(cli, workdir, command):
    kc = _unreachable_kubeconfig(workdir / "kubeconfig")
    r = cli(*command, "--kubeconfig", str(kc))
    assert_one_line_error(r, "helm")


def test_install_local_rejects_bad_values_before_touching_the_cluster(cli, workdir):
    kc = _unreachable_kubeconfig(workdir / "kubeconfig")
    (workdir / "bad.yaml").write_text("metadata:\n  replicas: two\n")
    r = cli("install", "--local", "--no-argo", "-f", "bad.yaml", "--kubeconfig", str(kc))
    assert_one_line_error(r, "refuses the values", "replicas")


def test_install_values_file_errors(cli, workdir):
    assert_one_line_error(cli("install", "--local", "-f", "nope.yaml"), "nope.yaml")
    (workdir / "list.yaml").write_text("- a\n")
    assert_one_line_error(cli("install", "--local", "-f", "list.yaml"), "mapping")


def test_uninstall_purge_asks_first(cli, workdir, monkeypatch):
    import os

    # A real terminal (a pty) answering "n": without one, mfhelm refuses to
    # ask (tests/unit/cli/test_cli_bad_input.py).
    master, slave = os.openpty()
    os.write(master, b"n\n")
    kc = _unreachable_kubeconfig(workdir / "kubeconfig")
    with open(slave) as tty:
        monkeypatch.setattr("sys.stdin", tty)
        r = cli("uninstall", "--purge", "--kubeconfig", str(kc))
    os.close(master)
    assert "Delete the data volumes" in r.out
    assert_one_line_error(r, "aborted; nothing was changed")
