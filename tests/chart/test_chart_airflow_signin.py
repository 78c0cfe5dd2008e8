"""Airflow's webserver behind the sign-in proxy, as the chart renders it:
webserver_config.py (groups to roles) only with access on, the group ids
carried as data, the values the Airflow chart needs refused when missing,
and the webserver reachable only from the proxy's pods. The rendered file
runs in the real Airflow in test_chart_airflow_signin_runtime.py."""

import ast
import json

import pytest
from chartlib import SCENARIOS, HelmError, by_kind, get, render

from mfhelm import values as values_mod

AZURE_AIRFLOW = SCENARIOS["azure-airflow"]
CONFIG = values_mod.AIRFLOW_SIGNIN_CONFIG
HOST = "metaflow.example.com"
ADMINS = "11111111-1111-1111-1111-111111111111"
SCIENTISTS = "22222222-2222-2222-2222-222222222222"
VIEWERS = "33333333-3333-3333-3333-333333333333"


def access_values(admin_groups=(ADMINS,), **extra) -> dict:
    """What mfhelm's values give the chart with [access] on and Airflow on."""
    values = {
        "airflow": {"enabled": True},
        "access": {"enabled": True, "host": HOST, "tls": {"secretName": "metaflow-tls"},
                   "issuerUrl": "https://login.microsoftonline.com/t/v2.0",
                   "clientId": "00000000-0000-0000-0000-0000000000a1",
                   "adminGroups": list(admin_groups)},
        "dataScientists": {"groups": [SCIENTISTS]},
    }
    values.update(extra)
    return values_mod.airflow_behind_signin(values)


def settings_of(source: str) -> dict:
    """MFHELM_SIGNIN, read from the file's syntax tree: the assignment must be
    json.loads of one string constant, so no value can become code."""
    tree = ast.parse(source)
    (node,) = [n for n in tree.body if isinstance(n, ast.Assign)
               and [getattr(t, "id", None) for t in n.targets] == ["MFHELM_SIGNIN"]]
    call = node.value
    assert isinstance(call, ast.Call) and ast.unparse(call.func) == "json.loads"
    (arg,) = call.args
    assert isinstance(arg, ast.Constant) and isinstance(arg.value, str)
    return json.loads(arg.value)


def webserver_config(objs) -> str:
    return get(objs, "ConfigMap", CONFIG)["data"]["webserver_config.py"]


def test_access_off_leaves_airflow_as_it_was():
    objs = render([AZURE_AIRFLOW], release="mf")
    assert not [o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"] == CONFIG]
    # mfhelm's values leave the Airflow chart's webserver alone too.
    values = values_mod.airflow_behind_signin({"airflow": {"enabled": True},
                                               "access": {"enabled": False, "host": HOST}})
    assert values == {"airflow": {"enabled": True}, "access": {"enabled": False, "host": HOST}}


def test_mfhelm_values_serve_airflow_under_the_proxy_route():
    values = access_values()
    assert values["airflow"]["config"]["webserver"]["base_url"] == f"https://{HOST}/airflow"
    assert values["airflow"]["webserver"]["webserverConfigConfigMapName"] == CONFIG
    # The name values.py uses is the chart's default.
    import yaml
    from chartlib import CHART

    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart_values["airflowGlue"]["signin"]["configMapName"] == CONFIG
    # Airflow off: nothing to set.
    off = values_mod.airflow_behind_signin({**values, "airflow": {"enabled": False}})
    assert off["airflow"] == {"enabled": False}


def test_groups_map_to_roles_with_admins_data_scientists_and_viewers():
    values = access_values(viewers={"groups": [VIEWERS, SCIENTISTS]})
    objs = render([AZURE_AIRFLOW], values, release="mf")
    settings = settings_of(webserver_config(objs))
    assert settings["rolesByGroup"] == {
        ADMINS: ["Admin"], SCIENTISTS: ["User", "Viewer"], VIEWERS: ["Viewer"]}


def test_roles_per_audience_and_the_sign_out_and_cookie_paths():
    objs = render([AZURE_AIRFLOW], access_values(
        admin_groups=[ADMINS, SCIENTISTS],
        airflowGlue={"signin": {"dataScientistRole": "Op"}}), release="mf")
    cm = get(objs, "ConfigMap", CONFIG)
    assert cm["metadata"]["namespace"] == "metaflow"
    settings = settings_of(cm["data"]["webserver_config.py"])
    assert settings == {"rolesByGroup": {ADMINS: ["Admin"], SCIENTISTS: ["Admin", "Op"]},
                        "signOutUrl": "/oauth2/sign_out", "cookiePath": "/airflow"}


def test_group_ids_stay_data_whatever_they_contain():
    nasty = ['a"b', "c\\d'''\n)\nimport os; os.system('x')  #", "{{ .Release.Name }}", "é"]
    objs = render([AZURE_AIRFLOW], access_values(admin_groups=nasty), release="mf")
    source = webserver_config(objs)
    compile(source, "webserver_config.py", "exec")
    assert settings_of(source)["rolesByGroup"] == {**{g: ["Admin"] for g in nasty},
                                                   SCIENTISTS: ["User"]}


def test_the_file_shipped_is_the_chart_file_after_the_settings_line():
    from chartlib import CHART

    source = webserver_config(render([AZURE_AIRFLOW], access_values(), release="mf"))
    assert source.endswith((CHART / "files" / "airflow_webserver_config.py").read_text())


@pytest.mark.parametrize(("change", "message"), [
    ({"airflow": {"config": {"webserver": {"base_url": ""}}}}, "airflow.config.webserver.base_url"),
    ({"airflow": {"config": {"webserver": {"base_url": "https://other.example.com/airflow"}}}},
     "airflow.config.webserver.base_url"),
    ({"airflow": {"webserver": {"webserverConfigConfigMapName": ""}}},
     "airflow.webserver.webserverConfigConfigMapName"),
    ({"networkPolicy": {"enabled": False}}, "networkPolicy.enabled"),
])
def test_chart_refuses_access_without_what_airflow_needs(change, message):
    with pytest.raises(HelmError, match=message.replace(".", r"\.")):
        render([AZURE_AIRFLOW, ], _merge(access_values(), change), release="mf")


def _merge(base: dict, change: dict) -> dict:
    out = dict(base)
    for k, v in change.items():
        out[k] = _merge(out.get(k) or {}, v) if isinstance(v, dict) and v else v
    return out


def test_only_the_sign_in_proxy_reaches_the_webserver():
    objs = render([AZURE_AIRFLOW], access_values(), release="mf")
    policy = get(objs, "NetworkPolicy", "mf-airflow-webserver")
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "tier": "airflow", "component": "webserver", "release": "mf"}
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 8080}]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}  # this namespace's pods only, no namespaceSelector
    proxy = get(objs, "Deployment", "mf-signin")
    assert peer["podSelector"]["matchLabels"].items() <= \
        proxy["spec"]["template"]["metadata"]["labels"].items()
    assert proxy["spec"]["selector"]["matchLabels"] == peer["podSelector"]["matchLabels"]


def test_without_access_the_webserver_policy_is_unchanged():
    objs = render([AZURE_AIRFLOW], release="mf")
    policy = get(objs, "NetworkPolicy", "mf-airflow-webserver")
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "app-routing-system"}}}]
