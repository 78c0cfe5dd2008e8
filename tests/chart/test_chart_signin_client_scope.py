"""The published Metaflow config (the chart's ConfigMap) and `mfhelm config`
agree on the token scope laptops ask Entra for, with access on; without it,
neither has one. The scope is read by mfhelm's Metaflow extension."""

from __future__ import annotations

import json

import fake_arm
import pytest
from chartlib import SCENARIOS, get, render

from mfhelm import settings, values
from mfhelm.metaflow_config import SERVICE_SCOPE_KEY, build_config

APP = "0a1b2c3d-0000-4000-8000-00000000a001"
CERT = "https://acme-kv.vault.azure.net/certificates/metaflow"
OUTPUTS = fake_arm.sample_outputs() | {"signinClientId": APP}


def published(chart_values: dict) -> dict[str, str]:
    objs = render([SCENARIOS["azure"]], chart_values, release="metaflow",
                  namespace="metaflow")
    return json.loads(get(objs, "ConfigMap", "metaflow-metaflow-config")["data"]["config.json"])


@pytest.mark.parametrize("access", [{"host": "metaflow.example.com", "tls_certificate": CERT,
                                     "admin_groups": ["0a1b2c3d-0000-4000-8000-00000000a009"]},
                                    {}])
def test_the_chart_and_mfhelm_config_publish_the_same_scope(access):
    s = settings.parse({"org_prefix": "acme", "location": "westeurope", "access": access})
    config = published(values.render_values(OUTPUTS, s))
    mine = build_config(OUTPUTS, s)
    if access:
        assert config[SERVICE_SCOPE_KEY] == mine[SERVICE_SCOPE_KEY] == f"api://{APP}/.default"
    else:
        assert SERVICE_SCOPE_KEY not in config and SERVICE_SCOPE_KEY not in mine
