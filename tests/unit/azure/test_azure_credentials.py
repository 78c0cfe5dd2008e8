"""Subscription discovery from the az CLI profile, and the default credential."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fake_arm import SUB, FakeCredential

from mfhelm.azure.credentials import (
    default_subscription_id,
    get_credential,
    resolve_subscription_id,
)
from mfhelm.errors import MfhelmError

OTHER = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


def profile(tmp_path: Path, subs: list[dict]) -> Path:
    # az writes azureProfile.json with a UTF-8 byte-order mark
    (tmp_path / "azureProfile.json").write_text(
        "\ufeff" + json.dumps({"installationId": "x", "subscriptions": subs}), encoding="utf-8"
    )
    return tmp_path


def sub(id_: str, default: bool) -> dict:
    return {"id": id_, "name": "n", "state": "Enabled", "isDefault": default,
            "tenantId": "t", "environmentName": "AzureCloud", "user": {"name": "u", "type": "user"}}


def test_default_subscription_is_the_one_marked_default(tmp_path):
    d = profile(tmp_path, [sub(OTHER, False), sub(SUB, True)])
    assert default_subscription_id(d) == SUB


def test_no_default_subscription(tmp_path):
    d = profile(tmp_path, [sub(OTHER, False)])
    with pytest.raises(MfhelmError, match="az account set"):
        default_subscription_id(d)


def test_no_profile_says_az_login(tmp_path):
    with pytest.raises(MfhelmError, match="run `az login` or set AZURE_SUBSCRIPTION_ID"):
        default_subscription_id(tmp_path)


def test_env_wins_over_profile_and_config_dir_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(profile(tmp_path, [sub(SUB, True)])))
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    assert resolve_subscription_id() == SUB
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", OTHER)
    assert resolve_subscription_id() == OTHER
    assert resolve_subscription_id(SUB) == SUB


def test_subscription_must_be_a_guid(monkeypatch):
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", "my-subscription")
    with pytest.raises(MfhelmError, match="not a GUID"):
        resolve_subscription_id()


def test_default_credential_never_opens_a_browser():
    from azure.identity import DefaultAzureCredential, InteractiveBrowserCredential

    cred = get_credential()
    assert isinstance(cred, DefaultAzureCredential)
    assert not any(isinstance(c, InteractiveBrowserCredential) for c in cred.credentials)
    given = FakeCredential()
    assert get_credential(given) is given


def test_importing_the_azure_layer_loads_no_sdk():
    code = (
        "import sys\n"
        "import mfhelm.azure.outputs, mfhelm.azure.aks, mfhelm.azure.keyvault\n"
        "import mfhelm.azure.preflight, mfhelm.doctor, mfhelm.metaflow_config\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('azure', 'rich')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
