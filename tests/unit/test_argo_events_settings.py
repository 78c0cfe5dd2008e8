"""Argo Events in mfhelm: the setting, the values, the Metaflow config keys
(read back by the real Metaflow), and what `mfhelm port-forward` plans."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import fake_arm
import pytest

from mfhelm import portforward, values
from mfhelm.errors import MfhelmError
from mfhelm.metaflow_config import build_config, write_config
from mfhelm.settings import dump, parse

BASE = {"org_prefix": "acme", "location": "westeurope"}
OUTPUTS = fake_arm.sample_outputs()
EVENT_KEYS = {
    "METAFLOW_ARGO_EVENTS_EVENT": "metaflow-event",
    "METAFLOW_ARGO_EVENTS_EVENT_BUS": "metaflow-eventbus",
    "METAFLOW_ARGO_EVENTS_EVENT_SOURCE": "metaflow-webhook",
    "METAFLOW_ARGO_EVENTS_SERVICE_ACCOUNT": "metaflow-sensors",
    "METAFLOW_ARGO_EVENTS_WEBHOOK_URL": "http://localhost:12000/metaflow-event",
    "METAFLOW_ARGO_EVENTS_INTERNAL_WEBHOOK_URL":
        "http://metaflow-webhook-eventsource-svc.metaflow-flows.svc.cluster.local:12000/"
        "metaflow-event",
}


def test_argo_events_follows_argo_unless_set():
    assert parse(BASE).deploy_argo_events is True
    assert parse(BASE | {"deploy_argo": False}).deploy_argo_events is False
    assert parse(BASE | {"deploy_argo_events": False}).deploy_argo_events is False


def test_argo_events_without_argo_is_one_clear_error():
    with pytest.raises(MfhelmError) as err:
        parse(BASE | {"deploy_argo": False, "deploy_argo_events": True})
    msg = str(err.value)
    assert msg.startswith("mfhelm.toml: deploy_argo_events: true needs deploy_argo = true")
    assert "\n" not in msg


def test_argo_events_must_be_a_toml_boolean():
    with pytest.raises(MfhelmError, match="deploy_argo_events: must be true or false"):
        parse(BASE | {"deploy_argo_events": "yes"})


def test_written_settings_round_trip():
    import tomllib

    for data in (BASE, BASE | {"deploy_argo": False}, BASE | {"deploy_argo_events": False}):
        s = parse(data)
        assert parse(tomllib.loads(dump(s))) == s


def test_values_follow_the_settings_and_the_deployment():
    on = values.render_values(OUTPUTS, parse(BASE))
    assert on["argo-events"] == {"enabled": True,
                                 "controller": {"rbac": {"managedNamespace": "metaflow-flows"}}}
    off = values.render_values(OUTPUTS, parse(BASE | {"deploy_argo_events": False}))
    assert off["argo-events"] == {"enabled": False}
    no_argo = values.render_values(OUTPUTS | {"deployArgo": False}, parse(BASE))
    assert no_argo["argo-events"] == {"enabled": False}
    # Flows beside the services: the controller watches its own namespace.
    same = values.render_values(OUTPUTS | {"flowNamespace": "metaflow"},
                                parse(BASE | {"helm": {"flow_namespace": "metaflow"}}))
    assert same["argo-events"] == {"enabled": True}


def test_local_values_follow_argo():
    assert values.local_values()["argo-events"]["enabled"] is True
    assert values.local_values(argo=False)["argo-events"]["enabled"] is False
    assert values.local_values(argo_events=False)["argo-events"]["enabled"] is False
    watched = values.argo_watches_flow_namespace(
        values.local_values(flow_namespace="mf-flows"), "mf")
    assert watched["argo-events"]["controller"]["rbac"] == {"managedNamespace": "mf-flows"}
    assert values.argo_watches_flow_namespace(watched, "mf") == watched
    off = values.argo_watches_flow_namespace(
        values.local_values(argo_events=False, flow_namespace="mf-flows"), "mf")
    assert "rbac" not in off["argo-events"]["controller"]


def test_config_has_the_event_keys_only_with_argo_events():
    assert {k: v for k, v in build_config(OUTPUTS, parse(BASE)).items()
            if k.startswith("METAFLOW_ARGO_EVENTS_")} == EVENT_KEYS
    for outputs, data in ((OUTPUTS, BASE | {"deploy_argo_events": False}),
                          (OUTPUTS | {"deployArgo": False}, BASE),
                          (OUTPUTS | {"deployArgo": "False"}, BASE)):
        cfg = build_config(outputs, parse(data))
        assert not any(k.startswith("METAFLOW_ARGO_EVENTS_") for k in cfg)


def test_release_names_the_bus_source_and_webhook():
    outputs = OUTPUTS | {"flowNamespace": "flows"}
    s = parse(BASE | {"helm": {"release": "prod", "flow_namespace": "flows"}})
    cfg = build_config(outputs, s)
    assert cfg["METAFLOW_ARGO_EVENTS_EVENT_BUS"] == "prod-eventbus"
    assert cfg["METAFLOW_ARGO_EVENTS_EVENT_SOURCE"] == "prod-webhook"
    assert cfg["METAFLOW_ARGO_EVENTS_INTERNAL_WEBHOOK_URL"] == (
        "http://prod-webhook-eventsource-svc.flows.svc.cluster.local:12000/metaflow-event")


def test_metaflow_reads_the_event_keys_as_mfhelm_writes_them(tmp_path):
    home = tmp_path / "mfhome"
    write_config(build_config(OUTPUTS, parse(BASE)), None, home=home)
    code = """
import json
from metaflow import metaflow_config as c
from metaflow.plugins.argo import argo_events
print(json.dumps({
    "event": c.ARGO_EVENTS_EVENT, "bus": c.ARGO_EVENTS_EVENT_BUS,
    "source": c.ARGO_EVENTS_EVENT_SOURCE, "account": c.ARGO_EVENTS_SERVICE_ACCOUNT,
    "webhook": c.ARGO_EVENTS_WEBHOOK_URL, "internal": c.ARGO_EVENTS_INTERNAL_WEBHOOK_URL,
    "sensor_namespace": c.ARGO_EVENTS_SENSOR_NAMESPACE, "auth": c.ARGO_EVENTS_WEBHOOK_AUTH,
    "publish_url": argo_events.ArgoEvent("x")._url,
}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAFLOW_")}
    env |= {"METAFLOW_HOME": str(home), "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {
        "event": "metaflow-event", "bus": "metaflow-eventbus", "source": "metaflow-webhook",
        "account": "metaflow-sensors",
        "webhook": "http://localhost:12000/metaflow-event",
        "internal": EVENT_KEYS["METAFLOW_ARGO_EVENTS_INTERNAL_WEBHOOK_URL"],
        # Sensors go where the flows go; no auth on the in-cluster webhook.
        "sensor_namespace": "metaflow-flows", "auth": "none",
        # ArgoEvent(...).publish() on a laptop posts to the port-forwarded webhook.
        "publish_url": "http://localhost:12000/metaflow-event",
    }


def test_port_forward_plans_the_webhook_in_its_namespace():
    plan = portforward.plan("mf", {"mf-metadata", "mf-flows/mf-webhook-eventsource-svc",
                                   "other/x-webhook-eventsource-svc"})
    assert [(f.label, f.service, f.local, f.remote, f.namespace) for f in plan] == [
        ("metadata service", "mf-metadata", 8080, 8080, ""),
        ("Argo Events webhook", "mf-webhook-eventsource-svc", 12000, 12000, "mf-flows"),
    ]
    assert plan[1].url == EVENT_KEYS["METAFLOW_ARGO_EVENTS_WEBHOOK_URL"]
