"""The sign-in proxy exactly as the chart configures it (the real
oauth2-proxy, its alpha config rendered from the local-signin scenario, the
test OpenID provider) in front of the real Airflow webserver running the
chart's webserver_config.py (tests/chart/airflow_signin.py). The proxy
reaches the webserver from a non-loopback address, as its pod does.

What it proves end to end: the proxy's headers give each allowed group its
Airflow role with no Airflow login; identity headers a client sends through
the proxy change nothing; someone outside the groups never reaches Airflow.
"""

from __future__ import annotations

import base64
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import accesskit
import pytest
import requests
import yaml
from accesskit import Idp

sys.path.insert(0, str(accesskit.ROOT / "tests" / "chart"))
import chartlib  # noqa: E402
from airflow_signin import AIRFLOW, Webserver, host_address, running_webserver  # noqa: E402

from mfhelm.values import airflow_behind_signin  # noqa: E402

pytestmark = pytest.mark.skipif(not AIRFLOW, reason="airflow not installed (tools.toml pins it; run `make test-tools`)")

ADMIN, MEMBER, VIEWER, OUTSIDER = ("adam@example.com", "alice@example.com", "vera@example.com",
                                   "olga@example.com")
PASSWORD = "break-Glass-" + secrets.token_hex(8)


def chart_values(idp: Idp) -> dict:
    values = yaml.safe_load(chartlib.SCENARIOS["local-signin"].read_text())
    values["access"] |= {"issuerUrl": idp.issuer, "clientId": idp.client_id,
                         "adminGroups": [idp.groups["admins"]]}
    values["dataScientists"] = {"groups": [idp.groups["data-scientists"]], "users": []}
    values["viewers"] = {"groups": [idp.groups["viewers"]], "users": []}
    return airflow_behind_signin(values)


@dataclass
class Stack:
    proxy: str
    airflow: Webserver


@pytest.fixture(scope="module")
def stack(idp: Idp, oauth2_proxy_binary: Path, tmp_path_factory) -> Iterator[Stack]:
    address = host_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address to stand for the proxy's pod")
    values = chart_values(idp)
    objs = chartlib.render([], values, release="mf")
    tmp = tmp_path_factory.mktemp("airflow-behind-proxy")
    (tmp / "airflow").mkdir()
    with running_webserver(objs, values, tmp / "airflow", PASSWORD, address) as ws:
        alpha = yaml.safe_load(chartlib.get(objs, "ConfigMap", "mf-signin")["data"][
            "oauth2-proxy.yaml"])
        port = accesskit.free_port()
        alpha["server"]["bindAddress"] = f"127.0.0.1:{port}"
        routes = {r["id"]: r for r in alpha["upstreamConfig"]["upstreams"]}
        for route in routes.values():
            route["uri"] = "http://127.0.0.1:9"  # only Airflow answers here
        # The chart's route (path /airflow/, kept), to the webserver's address.
        routes["airflow"]["uri"] = f"http://{ws.address}"
        [provider] = alpha["providers"]
        (tmp / "client-secret").write_text(idp.client_secret)
        provider["clientSecretFile"] = str(tmp / "client-secret")
        (tmp / "alpha.yaml").write_text(yaml.safe_dump(alpha))
        secret = chartlib.get(objs, "Secret", "mf-signin-cookie")["data"]["cookie-secret"]
        (tmp / "cookie").write_bytes(base64.b64decode(secret))
        [container] = chartlib.get(objs, "Deployment", "mf-signin")["spec"]["template"]["spec"][
            "containers"]
        args = [a.replace("/etc/oauth2-proxy/oauth2-proxy.yaml", str(tmp / "alpha.yaml"))
                 .replace("/etc/oauth2-proxy/cookie/cookie-secret", str(tmp / "cookie"))
                for a in container["args"]]
        log = tmp / "oauth2-proxy.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([str(oauth2_proxy_binary), *args], stdout=out,
                                    stderr=subprocess.STDOUT, env={"PATH": "/usr/bin:/bin"})
        url = f"http://127.0.0.1:{port}"
        try:
            accesskit.wait_for(f"{url}/ready", proc, "oauth2-proxy", log)
            yield Stack(url, ws)
        finally:
            accesskit.stop(proc)


def laptop(idp: Idp, user: str) -> requests.Session:
    """A client holding `user`'s token for the app, as a laptop does."""
    token = idp.token(user, scope=f"api://{idp.client_id}/.default")["access_token"]
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token}"
    return s


@pytest.mark.parametrize(("user", "role", "roles_api"), [
    (ADMIN, "Admin", 200), (MEMBER, "User", 403), (VIEWER, "Viewer", 403)])
def test_each_group_gets_its_airflow_role_through_the_proxy(stack, idp, user, role, roles_api):
    s = laptop(idp, user)
    home = s.get(f"{stack.proxy}/airflow/home", timeout=60, allow_redirects=False)
    assert home.status_code == 200, home.text[:500]
    assert 'name="password"' not in home.text
    assert s.get(f"{stack.proxy}/airflow/api/v1/roles", timeout=60).status_code == roles_api
    username = stack.airflow.username_of(user)
    assert username is not None
    assert stack.airflow.roles(username) == [role]


def test_identity_headers_sent_through_the_proxy_change_nothing(stack, idp):
    s = laptop(idp, MEMBER)
    s.headers.update({"X-Forwarded-User": "admin", "X-Forwarded-Email": ADMIN,
                      "X-Forwarded-Preferred-Username": "admin",
                      "X-Forwarded-Groups": idp.groups["admins"],
                      "X_Forwarded_Groups": idp.groups["admins"],
                      "X-Forwarded-For": "127.0.0.1"})
    assert s.get(f"{stack.proxy}/airflow/api/v1/roles", timeout=60).status_code == 403
    assert stack.airflow.roles(stack.airflow.username_of(MEMBER)) == ["User"]
    assert stack.airflow.roles("admin") == ["Admin"]
    # The break-glass account still opens with its password, over loopback only.
    assert stack.airflow.account("admin") == ("Airflow", "admin@localhost")


def test_someone_outside_the_groups_never_reaches_airflow(stack, idp):
    s = laptop(idp, OUTSIDER)
    assert s.get(f"{stack.proxy}/airflow/home", timeout=60).status_code == 403
    assert stack.airflow.username_of(OUTSIDER) is None
