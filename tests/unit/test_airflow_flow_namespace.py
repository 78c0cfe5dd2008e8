"""Airflow's account may launch pods in the flow namespace, so that namespace
must not be the services' own: refused in mfhelm.toml (the chart's own
guard: tests/chart/test_chart_subchart_rbac.py)."""

from __future__ import annotations

import pytest

from mfhelm.errors import MfhelmError
from mfhelm.settings import parse

BASE = {"org_prefix": "acme", "location": "westeurope"}


def test_settings_refuse_airflow_with_flows_beside_the_services():
    with pytest.raises(MfhelmError) as err:
        parse(BASE | {"deploy_airflow": True,
                      "helm": {"namespace": "mf", "flow_namespace": "mf"}})
    msg = str(err.value)
    assert "flow_namespace" in msg and "deploy_airflow" in msg and "\n" not in msg


def test_settings_allow_flows_beside_the_services_without_airflow():
    assert parse(BASE | {"helm": {"namespace": "mf", "flow_namespace": "mf"}}).helm.namespace \
        == "mf"
    assert parse(BASE | {"deploy_airflow": True}).helm.flow_namespace == "metaflow-flows"

