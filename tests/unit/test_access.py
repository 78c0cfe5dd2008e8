"""The entry point and sign-in on mfhelm's side: `[access]` settings, the
`access` values mfhelm renders (azure: Entra ID from the deployment; local:
any OIDC issuer, off unless asked), the URLs `mfhelm config` writes, and the
promise that the proxy can't be opened from the values."""

from __future__ import annotations

import json
from typing import Any

import fake_arm
import pytest

from mfhelm import promises, settings, values
from mfhelm.errors import MfhelmError
from mfhelm.metaflow_config import build_config
from mfhelm.uservalues import (
    AZURE_PROTECTED,
    LOCAL_PROTECTED,
    PUBLISHED_ACCESS_ARGO_CONFIG,
    PUBLISHED_ACCESS_CONFIG,
    PUBLISHED_ARGO_CONFIG,
    PUBLISHED_CONFIG,
    PUBLISHED_EVENTS_CONFIG,
    UserValues,
    published_config_keys,
)

APP = "0a1b2c3d-0000-4000-8000-00000000a001"
ADMINS = "0a1b2c3d-0000-4000-8000-00000000a009"
CERT = "https://acme-kv.vault.azure.net/certificates/metaflow"
BASE = {"org_prefix": "acme", "location": "westeurope"}


def with_access(**access: Any) -> settings.Settings:
    return settings.parse(BASE | {"access": access})


ON = with_access(host="metaflow.example.com", tls_certificate=CERT, admin_groups=[ADMINS])


def outputs(**over: Any) -> dict[str, Any]:
    return fake_arm.sample_outputs() | {"signinClientId": APP} | over


# --- settings -----------------------------------------------------------------------------


def test_access_is_off_without_a_host():
    s = settings.parse(BASE)
    assert s.access.enabled is False and s.access.host == ""


def test_a_host_with_a_certificate_turns_it_on():
    assert ON.access.enabled is True
    assert with_access(host="mf.example.com", tls_secret="mf-tls").access.enabled is True


@pytest.mark.parametrize("access, message", [
    ({"host": "https://mf.example.com", "tls_secret": "t"}, "lowercase DNS name"),
    ({"host": "MF.example.com", "tls_secret": "t"}, "lowercase DNS name"),
    ({"host": "mf.example.com/ui", "tls_secret": "t"}, "lowercase DNS name"),
    ({"host": "mf.example.com"}, "host needs a certificate: tls_certificate"),
    ({"host": "mf.example.com", "tls_certificate": CERT, "tls_secret": "t"},
     "set tls_certificate or tls_secret, not both"),
    ({"host": "mf.example.com", "tls_certificate": "https://kv.example.com/cert"},
     "Key Vault certificate id"),
    ({"host": "mf.example.com", "tls_secret": "Not_A_Name"}, "Kubernetes Secret name"),
    ({"host": "mf.example.com", "tls_secret": "t", "client_id": "not-a-guid"},
     "Entra application \\(client\\) id"),
    ({"host": "mf.example.com", "tls_secret": "t", "admin_groups": ["Data Scientists"]},
     "Entra group object ids"),
    ({"tls_secret": "t"}, "host is required when any other access setting is set"),
    ({"admin_groups": [ADMINS]}, "host is required when any other access setting is set"),
])
def test_bad_access_settings_are_refused(access, message):
    with pytest.raises(MfhelmError, match=message):
        settings.parse(BASE | {"access": access})


def test_unknown_access_setting_is_refused():
    with pytest.raises(MfhelmError, match="hosts"):
        settings.parse(BASE | {"access": {"hosts": "x"}})


# --- azure values ---------------------------------------------------------------------------


def test_azure_access_values_come_from_settings_and_outputs():
    out = outputs()
    v = values.render_values(out, ON)["access"]
    assert v == {
        "enabled": True,
        "host": "metaflow.example.com",
        "tls": {"keyVaultCertificateUri": CERT, "secretName": ""},
        "provider": "entra-id",
        "issuerUrl": f"https://login.microsoftonline.com/{out['tenantId']}/v2.0",
        "clientId": APP,
        "adminGroups": [ADMINS],
    }
    # Nothing secret: entra-id signs in with the proxy's workload identity.
    assert "clientSecretName" not in v


def test_no_access_values_without_a_host():
    assert "access" not in values.render_values(outputs(), settings.parse(BASE))


def test_access_without_a_signin_app_in_the_deployment_is_refused():
    with pytest.raises(MfhelmError, match="has no sign-in app \\(output signinClientId is empty\\)"):
        values.render_values(outputs(signinClientId=""), ON)
    out = fake_arm.sample_outputs()
    out.pop("signinClientId", None)
    with pytest.raises(MfhelmError, match="run `mfhelm deploy` again"):
        values.render_values(out, ON)


def test_a_client_id_the_deployment_did_not_use_is_refused():
    s = with_access(host="metaflow.example.com", tls_certificate=CERT, client_id=ADMINS)
    with pytest.raises(MfhelmError, match=f"client_id {ADMINS} is not the deployment's sign-in app {APP}"):
        values.render_values(outputs(), s)
    assert values.render_values(outputs(signinClientId=ADMINS), s)["access"]["clientId"] == ADMINS


def test_rendered_access_keys_are_protected():
    base = values.render_values(outputs(), ON)
    for expr, key in [("access.enabled=false", "access.enabled"),
                      ("access.issuerUrl=https://login.microsoftonline.com/common/v2.0",
                       "access.issuerUrl"),
                      ("access.provider=oidc", "access.provider"),
                      ("access.clientId=x", "access.clientId"),
                      ("access.adminGroups={}", "access.adminGroups")]:
        with pytest.raises(MfhelmError, match=f"changes {key}, which comes from "):
            UserValues.read(sets=[expr]).apply(base, AZURE_PROTECTED)
    # Data scientists' groups stay the user's (mfhelm grant writes them).
    merged = UserValues.read(sets=["dataScientists.groups={g1}"]).apply(base, AZURE_PROTECTED)
    assert merged["dataScientists"]["groups"] == ["g1"]


def test_every_access_value_mfhelm_renders_is_protected():
    rendered = values.render_values(outputs(), ON)["access"]

    def leaves(tree: Any, prefix: str) -> list[str]:
        if isinstance(tree, dict):
            return [x for k, v in tree.items() for x in leaves(v, f"{prefix}.{k}")]
        return [prefix]

    for leaf in leaves(rendered, "access"):
        assert any(leaf == k or leaf.startswith(k + ".") for k in AZURE_PROTECTED), leaf


# --- local values ---------------------------------------------------------------------------


def test_local_profile_has_no_signin_unless_asked():
    assert "access" not in values.local_values(flow_namespace="mf-flows")


def test_local_signin_against_any_oidc_issuer():
    access = values.LocalAccess(issuer="https://idp.example.com", client_id="metaflow",
                                host="metaflow.localtest.me", tls_secret="mf-tls",
                                groups=("admins",), client_secret_name="mf-client")
    v = values.local_values(flow_namespace="mf-flows", access=access)["access"]
    assert v == {"enabled": True, "host": "metaflow.localtest.me",
                 "tls": {"keyVaultCertificateUri": "", "secretName": "mf-tls"},
                 "provider": "oidc", "issuerUrl": "https://idp.example.com",
                 "clientId": "metaflow", "clientSecretName": "mf-client",
                 "adminGroups": ["admins"]}
    # Not protected locally: the user's own issuer, changeable with -f/--set.
    assert not [k for k in LOCAL_PROTECTED if k.startswith("access")]


# --- mfhelm config --------------------------------------------------------------------------


def test_config_with_access_points_laptops_at_the_entry_point():
    cfg = build_config(outputs(), ON)
    assert cfg["METAFLOW_SERVICE_URL"] == "https://metaflow.example.com/metadata"
    assert cfg["METAFLOW_UI_URL"] == "https://metaflow.example.com/"
    assert cfg["METAFLOW_ARGO_WORKFLOWS_UI_URL"] == "https://metaflow.example.com/argo"
    # Flow pods keep the in-cluster URL, not the proxy.
    assert cfg["METAFLOW_SERVICE_INTERNAL_URL"] == (
        "http://metaflow-metadata.metaflow.svc.cluster.local:8080")
    assert set(cfg) == set(PUBLISHED_CONFIG + PUBLISHED_ARGO_CONFIG + PUBLISHED_EVENTS_CONFIG
                           + PUBLISHED_ACCESS_CONFIG + PUBLISHED_ACCESS_ARGO_CONFIG)


def test_config_without_argo_links_no_argo_ui():
    cfg = build_config(outputs(deployArgo=False), ON)
    assert "METAFLOW_ARGO_WORKFLOWS_UI_URL" not in cfg
    assert cfg["METAFLOW_UI_URL"] == "https://metaflow.example.com/"


def test_config_without_access_keeps_the_port_forward_url():
    cfg = build_config(outputs(), settings.parse(BASE))
    assert cfg["METAFLOW_SERVICE_URL"] == "http://localhost:8080"
    assert "METAFLOW_UI_URL" not in cfg


def test_an_explicit_service_url_wins():
    cfg = build_config(outputs(), ON, service_url="http://localhost:18080")
    assert cfg["METAFLOW_SERVICE_URL"] == "http://localhost:18080"


def test_published_keys_follow_access_and_argo():
    assert published_config_keys({}) == (PUBLISHED_CONFIG + PUBLISHED_ARGO_CONFIG
                                         + PUBLISHED_EVENTS_CONFIG)
    on = {"access": {"enabled": True}}
    access_keys = PUBLISHED_ACCESS_CONFIG + PUBLISHED_ACCESS_ARGO_CONFIG
    assert published_config_keys(on)[-len(access_keys):] == access_keys
    no_argo = on | {"argo-workflows": {"enabled": False}, "argo-events": {"enabled": False}}
    assert published_config_keys(no_argo) == PUBLISHED_CONFIG + PUBLISHED_ACCESS_CONFIG


def test_extra_may_not_replace_the_ui_url_with_access_on():
    base = values.render_values(outputs(), ON)
    with pytest.raises(MfhelmError, match="METAFLOW_UI_URL is published by the stack"):
        UserValues.read(sets=["metaflowConfig.extra.METAFLOW_UI_URL=https://x/"]).apply(
            base, AZURE_PROTECTED)
    # Without access it is free.
    base = values.render_values(outputs(), settings.parse(BASE))
    merged = UserValues.read(sets=["metaflowConfig.extra.METAFLOW_UI_URL=https://x/"]).apply(
        base, AZURE_PROTECTED)
    assert merged["metaflowConfig"]["extra"]["METAFLOW_UI_URL"] == "https://x/"


# --- the promise: no flag opens the proxy ---------------------------------------------------


@pytest.mark.parametrize("flag", promises.SIGNIN_OPENING_FLAGS)
@pytest.mark.parametrize("profile", ["azure", "local"])
def test_a_flag_that_opens_the_proxy_is_refused(profile, flag):
    base = (values.render_values(outputs(), ON) if profile == "azure"
            else values.local_values(flow_namespace="mf-flows"))
    protected = AZURE_PROTECTED if profile == "azure" else LOCAL_PROTECTED
    expr = f"access.proxy.extraArgs={{{flag}=x}}"
    with pytest.raises(MfhelmError) as err:
        UserValues.read(sets=[expr]).apply(base, protected)
    msg = str(err.value)
    assert f"sets access.proxy.extraArgs[0] to {json.dumps(flag + '=x')}" in msg
    assert promises.SIGNIN in msg
    assert "--allow-override access.proxy.extraArgs" in msg
    merged = UserValues.read(sets=[expr], allow=["access.proxy.extraArgs"]).apply(base, protected)
    assert merged["access"]["proxy"]["extraArgs"] == [f"{flag}=x"]


def test_harmless_proxy_flags_pass():
    base = values.render_values(outputs(), ON)
    merged = UserValues.read(sets=["access.proxy.extraArgs={--cookie-name=_metaflow}"]).apply(
        base, AZURE_PROTECTED)
    assert merged["access"]["proxy"]["extraArgs"] == ["--cookie-name=_metaflow"]
