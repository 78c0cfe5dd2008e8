"""The Argo UI's base path follows the sign-in: /argo/ behind it, the
chart's / (port-forward) without it (issue 18, item 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fake_arm
import yaml

from mfhelm import settings, values

CHART_DIR = Path(__file__).resolve().parents[2] / "charts" / "metaflow"

APP = "0a1b2c3d-0000-4000-8000-00000000a001"
ADMINS = "0a1b2c3d-0000-4000-8000-00000000a009"
BASE = {"org_prefix": "acme", "location": "westeurope"}
ON = settings.parse(BASE | {"access": {
    "host": "metaflow.example.com", "tls_secret": "mf-tls", "admin_groups": [ADMINS]}})
LOCAL = values.LocalAccess(issuer="https://idp.example.com", client_id="metaflow",
                           host="metaflow.localtest.me", tls_secret="mf-tls",
                           groups=("admins",), client_secret_name="mf-client")


def _outputs(**over: Any) -> dict[str, Any]:
    return fake_arm.sample_outputs() | {"signinClientId": APP} | over


def _server(v: dict[str, Any]) -> dict[str, Any]:
    return dict((v.get("argo-workflows") or {}).get("server") or {})


def test_the_chart_default_is_the_root_for_port_forward():
    chart = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert chart["argo-workflows"]["server"]["baseHref"] == "/"


def test_behind_the_sign_in_the_ui_lives_under_argo():
    v = values.render_values(_outputs(), ON)
    assert _server(v)["baseHref"] == "/argo/"
    # The flow namespace flag is still there beside it.
    assert _server(v)["extraArgs"] == ["--managed-namespace=metaflow-flows"]
    assert _server(values.local_values(flow_namespace="mf-flows", access=LOCAL))[
        "baseHref"] == "/argo/"


def test_without_the_sign_in_the_chart_default_stays():
    assert "baseHref" not in _server(values.render_values(_outputs(), settings.parse(BASE)))
    assert "baseHref" not in _server(values.local_values(flow_namespace="mf-flows"))


def test_no_argo_no_base_path():
    v = values.local_values(argo=False, flow_namespace="mf-flows", access=LOCAL)
    assert "server" not in v["argo-workflows"] or "baseHref" not in _server(v)
