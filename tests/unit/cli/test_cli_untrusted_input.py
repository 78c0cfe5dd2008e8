"""What comes from files mfhelm did not write is validated strictly: the
settings file (no coercion of "yes" to true, Azure's naming rules) and the
deployment outputs (every value checked against what it becomes: a DNS host
in a database URL, a label in a node selector, a GUID, an https URL...)."""

from __future__ import annotations

import json

import fake_arm
import pytest
from conftest import assert_one_line_error, write_outputs

from mfhelm.azure.outputs import load_outputs_file, validate_outputs
from mfhelm.errors import MfhelmError

BASE = 'org_prefix = "acme"\nlocation = "westeurope"\n'


def _render(cli, workdir, settings_extra: str = "", **outputs):
    (workdir / "mfhelm.toml").write_text(BASE + settings_extra)
    path = write_outputs(workdir / "outputs.json", **outputs)
    return cli("render", "--outputs", str(path))


# ---------------------------------------------------------------- settings

@pytest.mark.parametrize(("extra", "field"), [
    ('deploy_argo = "yes"\n', "deploy_argo"),
    ('deploy_airflow = "false"\n', "deploy_airflow"),
    ("deploy_airflow = 1\n", "deploy_airflow"),
    ('[aks]\ntask_max_count = "5"\n', "aks.task_max_count"),
    ("[aks]\ntask_max_count = 5.0\n", "aks.task_max_count"),
    ("[aks]\ntask_max_count = true\n", "aks.task_max_count"),
    ('[postgres]\nstorage_gb = "64"\n', "postgres.storage_gb"),
    ("[postgres]\nstorage_gb = 64.5\n", "postgres.storage_gb"),
    ('[helm]\nrelease = 5\n', "helm.release"),
    ('resource_group = "my rg"\n', "resource_group"),
    ('resource_group = "rg."\n', "resource_group"),
    ('resource_group = "a/b"\n', "resource_group"),
    ('resource_group = "rg#1"\n', "resource_group"),
    (f'resource_group = "{"r" * 91}"\n', "resource_group"),
    ('deployment_name = "my deployment"\n', "deployment_name"),
    ('deployment_name = "a/b"\n', "deployment_name"),
    ('deployment_name = "d?x"\n', "deployment_name"),
    (f'deployment_name = "{"d" * 65}"\n', "deployment_name"),
])
def test_settings_are_strict(cli, workdir, extra, field):
    assert_one_line_error(_render(cli, workdir, extra), "mfhelm.toml", field)


@pytest.mark.parametrize("extra", [
    'resource_group = "My_RG-(prod).eu"\n',
    f'resource_group = "{"r" * 90}"\n',
    'resource_group = "rgé"\n',
    'deployment_name = "mf.deploy-(1)_x"\n',
    f'deployment_name = "{"d" * 64}"\n',
    "deploy_argo = false\n[aks]\ntask_max_count = 7\n[postgres]\nversion = 16\n",
])
def test_settings_that_azure_accepts(cli, workdir, extra):
    r = _render(cli, workdir, extra)
    assert r.code == 0, r.err


# ---------------------------------------------------------------- outputs

BAD_OUTPUTS = [
    ("postgresFqdn", "evil.example.com/airflow?sslmode=disable"),
    ("postgresFqdn", "user@evil.example.com"),
    ("postgresFqdn", "host:5432"),
    ("postgresFqdn", "a b.example.com"),
    ("postgresFqdn", "-pg.example.com"),
    ("postgresFqdn", "pg..example.com"),
    ("postgresFqdn", "p" * 64 + ".example.com"),
    ("taskworkersLabelKey", "mfhelm.io/pool,gpu"),
    ("taskworkersLabelKey", "pool=x"),
    ("taskworkersLabelKey", "/pool"),
    ("taskworkersLabelKey", "a/b/c"),
    ("taskworkersLabelKey", "k" * 64),
    ("taskworkersLabelValue", "taskworkers,gpu=true"),
    ("taskworkersLabelValue", "task workers"),
    ("taskworkersLabelValue", "-x"),
    ("taskworkersLabelValue", "v" * 64),
    ("serviceNamespace", "Metaflow"),
    ("serviceNamespace", "a_b"),
    ("flowNamespace", "jobs;x"),
    ("flowNamespace", "n" * 64),
    ("serviceAccountService", "Service"),
    ("serviceAccountFlows", "flows,x"),
    ("serviceAccountAirflow", "air flow"),
    ("identityClientId", "not-a-guid"),
    ("tenantId", "contoso.onmicrosoft.com"),
    ("subscriptionId", "12345"),
    ("storageBlobEndpoint", "http://acme.blob.core.windows.net/"),
    ("storageBlobEndpoint", "https://acme.blob.core.windows.net/ x"),
    ("storageBlobEndpoint", "https://user:pw@acme.blob.core.windows.net/"),
    ("storageBlobEndpoint", "https://acme.blob.core.windows.net/?sig=x"),
    ("storageBlobEndpoint", "javascript:alert(1)"),
    ("keyVaultUri", "ftp://acme-mf-kv.vault.azure.net/"),
    ("aksOidcIssuerUrl", "http://issuer.example.com/"),
    ("metaflowContainerName", "Metaflow"),
    ("metaflowContainerName", "mf"),
    ("metaflowContainerName", "mf--data"),
    ("metaflowContainerName", "-mf"),
    ("metaflowContainerName", "mf/../x"),
    ("storageAccountName", "Acme"),
    ("storageAccountName", "ab"),
    ("resourceGroupName", "rg."),
    ("resourceGroupName", "r g"),
    ("aksClusterName", "-aks"),
    ("aksClusterName", "a ks"),
    ("location", "West Europe"),
    ("postgresServerName", "PG"),
    ("postgresServerName", "pg-"),
    ("postgresDatabaseName", "db;drop"),
    ("postgresDatabaseName", "a b"),
    ("postgresAdminLogin", "admin user"),
    ("postgresAdminLogin", "pg_admin"),
    ("postgresAdminLogin", "a@b"),
    ("keyVaultName", "kv"),
    ("keyVaultName", "a--b-kv"),
    ("postgresAdminSecretName", "a_b"),
    ("postgresAdminSecretName", "s" * 128),
    ("identityName", "a b"),
]


@pytest.mark.parametrize(("name", "value"), BAD_OUTPUTS)
def test_bad_output_values_are_refused(name, value):
    outputs = fake_arm.sample_outputs() | {name: value}
    with pytest.raises(MfhelmError, match=f"output {name} "):
        validate_outputs(outputs, "outputs.json")


@pytest.mark.parametrize(("name", "value"), [
    ("postgresFqdn", "evil.example.com/airflow?sslmode=disable"),
    ("taskworkersLabelValue", "taskworkers,gpu=true"),
    ("flowNamespace", "Jobs"),
])
def test_bad_output_through_render_and_config(cli, workdir, name, value):
    path = write_outputs(workdir / "outputs.json", **{name: value})
    assert_one_line_error(cli("render", "--outputs", str(path)), name)
    assert_one_line_error(cli("config", "--outputs", str(path), "--print"), name)


def test_valid_outputs_pass_including_local_test_endpoints():
    outputs = fake_arm.sample_outputs() | {
        "keyVaultUri": "https://127.0.0.1:45678/",
        "airflowLogsContainerName": "airflow-logs",
        "postgresFqdn": "Acme-Metaflow-PG.postgres.database.azure.com",
        "aksOidcIssuerUrl": "https://westeurope.oic.prod-aks.azure.com/tenant-id/issuer-id/",
        "identityClientId": "12345678-AAAA-bbbb-cccc-1234567890AB",
    }
    assert validate_outputs(outputs, "x") == outputs


def test_empty_logs_container_is_allowed_but_a_bad_one_is_not():
    assert validate_outputs(fake_arm.sample_outputs(), "x")["airflowLogsContainerName"] == ""
    with pytest.raises(MfhelmError, match="airflowLogsContainerName"):
        validate_outputs(fake_arm.sample_outputs() | {"airflowLogsContainerName": "Logs"}, "x")


def test_bad_outputs_file_is_refused_on_load(tmp_path):
    p = tmp_path / "o.json"
    p.write_text(json.dumps(fake_arm.sample_outputs() | {"postgresFqdn": "a/b"}))
    with pytest.raises(MfhelmError, match="postgresFqdn"):
        load_outputs_file(p)


# --------------------------------------- outputs must agree with the settings

@pytest.mark.parametrize(("settings_extra", "outputs", "fragment"), [
    ("", {"flowNamespace": "jobs"}, "flow_namespace"),
    ("", {"serviceNamespace": "other"}, "namespace"),
    ('[helm]\nflow_namespace = "jobs"\n', {}, "flow_namespace"),
])
def test_outputs_disagreeing_with_settings(cli, workdir, settings_extra, outputs, fragment):
    r = _render(cli, workdir, settings_extra, **outputs)
    assert_one_line_error(r, fragment)
    path = workdir / "outputs.json"
    assert_one_line_error(cli("config", "--outputs", str(path), "--print"), fragment)
    sub = fake_arm.SUB
    r = cli("install", "--outputs", str(path), "--subscription", sub)
    assert_one_line_error(r, fragment)


def test_outputs_agreeing_with_a_separate_flow_namespace(cli, workdir):
    r = _render(cli, workdir, '[helm]\nflow_namespace = "jobs"\n', flowNamespace="jobs")
    assert r.code == 0, r.err
