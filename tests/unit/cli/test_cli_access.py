"""The entry point and sign-in through the CLI: `--signin-*` on the local
profile (off unless asked), `[access]` on azure, and the URLs `mfhelm config`
writes. Bad input: one line, nothing written, no cluster asked (the kubeconfig
points at a closed port)."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import assert_one_line_error, write_outputs

SIGNIN = ["--signin-issuer", "https://idp.example.com", "--signin-client-id", "metaflow",
          "--signin-client-secret", "mf-client",
          "--signin-host", "metaflow.localtest.me", "--signin-tls-secret", "mf-tls",
          "--signin-group", "admins", "--signin-group", "data-scientists"]
APP = "0a1b2c3d-0000-4000-8000-00000000a001"
ACCESS_TOML = ('\n[access]\nhost = "metaflow.example.com"\n'
               'tls_certificate = "https://acme-kv.vault.azure.net/certificates/metaflow"\n'
               'admin_groups = ["0a1b2c3d-0000-4000-8000-00000000a009"]\n')


def test_local_render_has_no_signin_by_default(cli, workdir):
    result = cli("render", "--local")
    assert result.code == 0, result.err
    assert "access" not in yaml.safe_load(result.out)


def test_local_render_with_signin_against_an_oidc_issuer(cli, workdir):
    result = cli("render", "--local", *SIGNIN)
    assert result.code == 0, result.err
    access = yaml.safe_load(result.out)["access"]
    assert access == {"enabled": True, "host": "metaflow.localtest.me",
                      "tls": {"keyVaultCertificateUri": "", "secretName": "mf-tls"},
                      "provider": "oidc", "issuerUrl": "https://idp.example.com",
                      "clientId": "metaflow", "clientSecretName": "mf-client",
                      "adminGroups": ["admins", "data-scientists"]}


@pytest.mark.parametrize("args, fragments", [
    (["--signin-host", "mf.localtest.me"], ["--signin-host needs --signin-issuer"]),
    (SIGNIN[:2], ["--signin-issuer needs --signin-client-id"]),
    (SIGNIN[:4], ["--signin-issuer needs --signin-client-secret"]),
    (SIGNIN[:6], ["--signin-issuer needs --signin-host"]),
    (SIGNIN[:8], ["--signin-issuer needs --signin-tls-secret"]),
    (SIGNIN[:10], ["--signin-issuer needs --signin-group"]),
    (["--signin-issuer", "idp.example.com", *SIGNIN[2:]], ["must be an http(s) URL"]),
    ([*SIGNIN[:6], "--signin-host", "https://mf.localtest.me", *SIGNIN[8:]],
     ["--signin-host 'https://mf.localtest.me' must be a lowercase DNS name"]),
    ([*SIGNIN[:4], "--signin-client-secret", "Bad_Name", *SIGNIN[6:]],
     ["--signin-client-secret 'Bad_Name' must be a Kubernetes Secret name"]),
])
def test_bad_signin_options_are_one_line(cli, workdir, args, fragments):
    assert_one_line_error(cli("render", "--local", *args), *fragments)


def test_signin_options_are_for_the_local_profile(cli, workdir):
    assert_one_line_error(cli("render", *SIGNIN), "--signin-issuer is for --local",
                          "mfhelm.toml [access]")


def test_install_refuses_bad_signin_options_before_the_cluster(cli, workdir,
                                                                closed_port_kubeconfig):
    result = cli("install", "--local", "--kubeconfig", closed_port_kubeconfig, *SIGNIN[:6])
    assert_one_line_error(result, "--signin-issuer needs --signin-host")


def test_azure_render_with_access_settings(cli, workdir):
    (workdir / "mfhelm.toml").write_text((workdir / "mfhelm.toml").read_text() + ACCESS_TOML)
    outputs = write_outputs(workdir / "outputs.json", signinClientId=APP)
    result = cli("render", "--outputs", str(outputs))
    assert result.code == 0, result.err
    access = yaml.safe_load(result.out)["access"]
    assert access["provider"] == "entra-id" and access["clientId"] == APP
    # A protected key from the settings, refused with one line.
    result = cli("render", "--outputs", str(outputs), "--set", "access.host=elsewhere.example.com")
    assert_one_line_error(result, "changes access.host, which comes from mfhelm.toml [access] host")


def test_azure_host_without_certificate_is_one_line(cli, workdir):
    (workdir / "mfhelm.toml").write_text((workdir / "mfhelm.toml").read_text()
                                         + '\n[access]\nhost = "metaflow.example.com"\n')
    outputs = write_outputs(workdir / "outputs.json", signinClientId=APP)
    assert_one_line_error(cli("render", "--outputs", str(outputs)), "host needs a certificate")


def test_config_with_access_writes_the_https_urls(cli, workdir):
    (workdir / "mfhelm.toml").write_text((workdir / "mfhelm.toml").read_text() + ACCESS_TOML)
    outputs = write_outputs(workdir / "outputs.json", signinClientId=APP)
    result = cli("config", "--print", "--outputs", str(outputs))
    assert result.code == 0, result.err
    config = json.loads(result.out)
    assert config["METAFLOW_SERVICE_URL"] == "https://metaflow.example.com/metadata"
    assert config["METAFLOW_UI_URL"] == "https://metaflow.example.com/"
    assert config["METAFLOW_SERVICE_INTERNAL_URL"].startswith("http://metaflow-metadata.")
    # --service-url still wins (e.g. an operator's port-forward).
    result = cli("config", "--print", "--outputs", str(outputs),
                 "--service-url", "http://localhost:8080")
    assert json.loads(result.out)["METAFLOW_SERVICE_URL"] == "http://localhost:8080"


def test_config_without_access_keeps_the_port_forward_url(cli, workdir):
    outputs = write_outputs(workdir / "outputs.json")
    result = cli("config", "--print", "--outputs", str(outputs))
    assert json.loads(result.out)["METAFLOW_SERVICE_URL"] == "http://localhost:8080"
