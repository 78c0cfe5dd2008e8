"""`mfhelm config` with [access] on: the key mfhelm's Metaflow extension reads
(mfhelm/mfext); no token or secret."""

from __future__ import annotations

import fake_arm
import pytest

from mfhelm.errors import MfhelmError
from mfhelm.metaflow_config import SERVICE_SCOPE_KEY, access_client_config, build_config
from mfhelm.settings import parse

APP = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
OUTPUTS = fake_arm.sample_outputs() | {"signinClientId": APP}
ON = parse({"org_prefix": "acme", "location": "westeurope",
            "access": {"host": "metaflow.example.com", "tls_secret": "metaflow-tls"}})
OFF = parse({"org_prefix": "acme", "location": "westeurope"})


def test_access_on_writes_the_scope_beside_the_entry_points_urls() -> None:
    assert access_client_config(OUTPUTS, ON) == {
        "METAFLOW_MFHELM_SERVICE_SCOPE": f"api://{APP}/.default"}
    config = build_config(OUTPUTS, ON)
    assert config[SERVICE_SCOPE_KEY] == f"api://{APP}/.default"
    assert config["METAFLOW_SERVICE_URL"] == "https://metaflow.example.com/metadata"
    assert not any("TOKEN" in k or "SECRET" in k or "AUTH" in k for k in config)


def test_access_off_adds_nothing() -> None:
    assert access_client_config(OUTPUTS, OFF) == {}
    assert SERVICE_SCOPE_KEY not in build_config(OUTPUTS, OFF)


def test_an_existing_app_named_in_the_settings_is_used_when_outputs_lack_it() -> None:
    settings = parse({"org_prefix": "acme", "location": "westeurope",
                      "access": {"host": "metaflow.example.com", "client_id": APP,
                                 "tls_secret": "metaflow-tls"}})
    outputs = fake_arm.sample_outputs()
    assert access_client_config(outputs, settings)[SERVICE_SCOPE_KEY] == f"api://{APP}/.default"


def test_no_sign_in_app_at_all_is_one_line_naming_the_fix() -> None:
    with pytest.raises(MfhelmError) as err:
        build_config(fake_arm.sample_outputs() | {"signinClientId": ""}, ON)
    assert str(err.value) == ("the deployment outputs have no signinClientId (the sign-in app): "
                              "re-run `mfhelm deploy` with [access] host set, or set [access] "
                              "client_id in mfhelm.toml")
