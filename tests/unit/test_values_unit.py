"""values.render_values: deployment outputs + settings -> chart values."""

import fake_arm
import pytest

from mfhelm import settings, values
from mfhelm.errors import MfhelmError

S = settings.parse({"org_prefix": "acme", "location": "westeurope"})


def test_every_value_comes_from_an_output():
    out = fake_arm.sample_outputs()
    v = values.render_values(out, S)
    assert v["database"]["host"] == out["postgresFqdn"]
    # The apps log in with their own role; the admin is only the bootstrap Job's.
    assert v["database"]["user"] == values.METAFLOW_DB_ROLE != out["postgresAdminLogin"]
    assert v["database"]["adminUser"] == out["postgresAdminLogin"]
    assert v["database"]["sslMode"] == "require"
    assert v["identity"] == {"clientId": out["identityClientId"], "tenantId": out["tenantId"]}
    assert v["storage"]["accountName"] == out["storageAccountName"]
    assert v["flows"]["nodeSelector"] == {"mfhelm.io/pool": "taskworkers"}
    # Flow pods apart from the services by default; Argo is told to watch there.
    assert v["flows"]["namespace"] == "metaflow-flows"
    assert v["argo-workflows"] == {"enabled": True, **{
        part: {"extraArgs": ["--managed-namespace=metaflow-flows"]}
        for part in ("controller", "server")}}
    assert v["airflow"] == {"enabled": False}


def test_airflow_on_uses_the_logs_container_and_airflow_account():
    out = fake_arm.sample_outputs() | {"deployAirflow": True,
                                       "airflowLogsContainerName": "airflow-logs"}
    v = values.render_values(out, S)
    assert v["storage"]["airflowLogsContainer"] == "airflow-logs"
    assert v["airflow"]["scheduler"]["serviceAccount"]["name"] == "metaflow-airflow"


def test_separate_flow_namespace():
    out = fake_arm.sample_outputs() | {"flowNamespace": "jobs"}
    s = settings.parse({"org_prefix": "acme", "location": "westeurope",
                        "helm": {"flow_namespace": "jobs"}})
    assert values.render_values(out, s)["flows"]["namespace"] == "jobs"


def test_airflow_on_without_logs_container_is_refused():
    out = fake_arm.sample_outputs() | {"deployAirflow": True}
    with pytest.raises(MfhelmError, match="logs container"):
        values.render_values(out, S)


def test_string_booleans_from_saved_outputs():
    out = fake_arm.sample_outputs() | {"deployArgo": "False"}
    assert values.render_values(out, S)["argo-workflows"] == {"enabled": False}


def test_argo_is_told_to_watch_a_separate_flow_namespace():
    from mfhelm.values import argo_watches_flow_namespace

    same = {"flows": {"namespace": ""}, "argo-workflows": {"enabled": True}}
    assert argo_watches_flow_namespace(same, "metaflow") == same
    off = {"flows": {"namespace": "jobs"}, "argo-workflows": {"enabled": False}}
    assert argo_watches_flow_namespace(off, "metaflow") == off
    mine = {"flows": {"namespace": "jobs"},
            "argo-workflows": {"enabled": True, "controller": {"extraArgs": ["--loglevel=debug"]}}}
    out = argo_watches_flow_namespace(mine, "metaflow")
    assert out["argo-workflows"]["controller"]["extraArgs"] == ["--loglevel=debug",
                                                                "--managed-namespace=jobs"]
    assert out["argo-workflows"]["server"]["extraArgs"] == ["--managed-namespace=jobs"]
    assert argo_watches_flow_namespace(out, "metaflow") == out
    assert mine["argo-workflows"]["controller"]["extraArgs"] == ["--loglevel=debug"]


def test_admin_login_may_not_be_an_application_role():
    out = fake_arm.sample_outputs() | {"postgresAdminLogin": "airflow"}
    with pytest.raises(MfhelmError, match="application role"):
        values.render_values(out, S)
