"""Deployment outputs, read from a fake ARM through the real deployments SDK."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_arm import (
    SUB,
    FakeAzure,
    FakeCredential,
    arm_error,
    arm_outputs,
    deployment_body,
    deployment_outputs_path,
    sample_outputs,
)

from mfhelm.azure.outputs import REQUIRED_OUTPUTS, deployment_outputs, load_outputs_file
from mfhelm.errors import MfhelmError

NAME = "acme-metaflow"


def read(fake: FakeAzure, cred: FakeCredential) -> dict:
    return deployment_outputs(SUB, NAME, credential=cred, base_url=fake.base_url)


def test_outputs_are_flattened_and_request_is_arm_shaped(fake_azure, credential):
    outputs = sample_outputs()
    fake_azure.route("GET", deployment_outputs_path(NAME), 200, deployment_body(NAME, outputs))

    got = read(fake_azure, credential)

    assert got == outputs
    assert got["deployArgo"] is True
    (req,) = fake_azure.calls("/deployments/")
    assert req.path == f"/subscriptions/{SUB}/providers/Microsoft.Resources/deployments/{NAME}"
    assert req.query["api-version"][0] >= "2020-01-01"
    assert req.headers["Authorization"] == "Bearer fake-arm-token"
    assert credential.requests[0][0] == ("https://management.azure.com/.default",)


def test_deployment_not_found_says_run_bicep_deploy(fake_azure, credential):
    fake_azure.route(
        "GET", deployment_outputs_path(NAME), 404,
        arm_error("DeploymentNotFound", f"Deployment '{NAME}' could not be found."),
    )
    with pytest.raises(MfhelmError, match=r"not found; run `mfhelm deploy` first"):
        read(fake_azure, credential)


def test_failed_deployment_reports_the_inner_error(fake_azure, credential):
    error = {
        "code": "DeploymentFailed",
        "message": "At least one resource deployment operation failed.",
        "details": [
            {"code": "QuotaExceeded", "message": "Operation could not be completed as it "
             "results in exceeding approved standardDSv5Family Cores quota."}
        ],
    }
    fake_azure.route(
        "GET", deployment_outputs_path(NAME), 200,
        deployment_body(NAME, None, state="Failed", error=error),
    )
    with pytest.raises(MfhelmError) as exc:
        read(fake_azure, credential)
    msg = str(exc.value)
    assert "failed" in msg and "QuotaExceeded" in msg and "standardDSv5Family" in msg
    assert "\n" not in msg


def test_running_deployment_says_wait(fake_azure, credential):
    fake_azure.route(
        "GET", deployment_outputs_path(NAME), 200,
        deployment_body(NAME, None, state="Running"),
    )
    with pytest.raises(MfhelmError, match=r"is Running, not Succeeded; wait"):
        read(fake_azure, credential)


def test_missing_outputs_are_named(fake_azure, credential):
    outputs = sample_outputs()
    del outputs["keyVaultUri"], outputs["deployAirflow"]
    fake_azure.route("GET", deployment_outputs_path(NAME), 200, deployment_body(NAME, outputs))
    with pytest.raises(MfhelmError, match=r"lacks output\(s\) keyVaultUri, deployAirflow"):
        read(fake_azure, credential)


def test_empty_required_output_is_rejected(fake_azure, credential):
    outputs = sample_outputs() | {"aksClusterName": ""}
    fake_azure.route("GET", deployment_outputs_path(NAME), 200, deployment_body(NAME, outputs))
    with pytest.raises(MfhelmError, match="aksClusterName must be a non-empty string"):
        read(fake_azure, credential)


def test_credential_that_cannot_log_in_says_az_login(fake_azure):
    with pytest.raises(MfhelmError, match=r"Azure login failed .*AADSTS700082.*run `az login`"):
        read(fake_azure, FakeCredential(fail=True))
    assert fake_azure.requests == []


def test_forbidden_says_which_role(fake_azure, credential):
    fake_azure.route(
        "GET", deployment_outputs_path(NAME), 403,
        arm_error("AuthorizationFailed", "The client does not have authorization to perform "
                  "action 'Microsoft.Resources/deployments/read'."),
    )
    with pytest.raises(MfhelmError, match=r"AuthorizationFailed.*Reader"):
        read(fake_azure, credential)


def test_contract_names_every_output_once():
    assert len(REQUIRED_OUTPUTS) == len(set(REQUIRED_OUTPUTS)) == 28
    assert set(REQUIRED_OUTPUTS) == set(sample_outputs())


@pytest.mark.parametrize("shape", ["arm", "flat", "show"])
def test_outputs_file_accepts_arm_flat_and_full_show(tmp_path: Path, shape: str):
    flat = sample_outputs()
    doc = {
        "arm": arm_outputs(flat),
        "flat": flat,
        "show": {"name": NAME, "properties": {"outputs": arm_outputs(flat)}},
    }[shape]
    p = tmp_path / "outputs.json"
    # az on Windows writes a byte-order mark; accept it.
    p.write_text("\ufeff" + json.dumps(doc), encoding="utf-8")
    assert load_outputs_file(p) == flat


def test_outputs_file_bool_strings_become_bools(tmp_path: Path):
    p = tmp_path / "o.json"
    p.write_text(json.dumps(sample_outputs() | {"deployAirflow": "True"}))
    assert load_outputs_file(p)["deployAirflow"] is True


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file or directory; save it with `az deployment sub show"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"location": {"type": "String", "value": "x"}}), "lacks output"),
        (json.dumps(sample_outputs() | {"deployArgo": "yes"}), "deployArgo must be true or false"),
    ],
)
def test_outputs_file_errors(tmp_path: Path, content: str | None, message: str):
    p = tmp_path / "outputs.json"
    if content is not None:
        p.write_text(content)
    with pytest.raises(MfhelmError, match=message):
        load_outputs_file(p)


@pytest.mark.parametrize("extra, ok", [
    ({}, True),                                                    # an older deployment
    ({"signinClientId": "", "appRoutingEnabled": False}, True),    # [access] off
    ({"signinClientId": "0a1b2c3d-0000-4000-8000-000000000001", "appRoutingEnabled": "true"}, True),
    ({"signinClientId": "metaflow\ninjected: true"}, False),       # goes into annotations
    ({"signinClientId": 7}, False),
    ({"appRoutingEnabled": "yes"}, False),
])
def test_sign_in_outputs_are_optional_but_checked(tmp_path, extra, ok):
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps({**sample_outputs(), **extra}))
    if ok:
        out = load_outputs_file(path)
        assert out.get("appRoutingEnabled", False) in (True, False)
    else:
        with pytest.raises(MfhelmError, match="signinClientId|appRoutingEnabled"):
            load_outputs_file(path)


@pytest.mark.parametrize("extra, ok", [
    ({}, True),                                                  # deployed before issue 20
    ({"registryName": "", "registryLoginServer": "", "gpuPoolEnabled": False,
      "spotPoolEnabled": False}, True),                          # registry and pools off
    ({"registryName": "acmeacrx7", "registryLoginServer": "acmeacrx7.azurecr.io",
      "gpuPoolEnabled": True, "spotPoolEnabled": "true"}, True),
    ({"registryName": "AcmeAcr7", "registryLoginServer": "acmeacr7.azurecr.cn"}, True),
    ({"registryName": "acme-acr"}, False),                       # not an ACR name
    ({"registryName": "acr", "registryLoginServer": "acr.azurecr.io"}, False),
    ({"registryName": "acmeacrx7", "registryLoginServer": "https://acmeacrx7.azurecr.io"},
     False),                                                     # a host, not a URL
    ({"registryName": "acmeacrx7", "registryLoginServer": "acmeacrx7.azurecr.io/x"}, False),
    ({"registryName": "acmeacrx7", "registryLoginServer": "other.azurecr.io"}, False),
    ({"registryName": "acmeacrx7", "registryLoginServer": ""}, False),
    ({"registryName": "", "registryLoginServer": "acmeacrx7.azurecr.io"}, False),
    ({"registryLoginServer": 7}, False),
    ({"gpuPoolEnabled": "yes"}, False),
    ({"spotPoolEnabled": 1}, False),
])
def test_compute_outputs_are_optional_but_checked(tmp_path, extra, ok):
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps({**sample_outputs(), **extra}))
    if ok:
        out = load_outputs_file(path)
        for name in ("gpuPoolEnabled", "spotPoolEnabled"):
            assert out.get(name, False) is (str(extra.get(name)).lower() == "true")
    else:
        with pytest.raises(MfhelmError, match="registry|PoolEnabled"):
            load_outputs_file(path)
