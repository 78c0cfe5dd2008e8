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

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import accesskit
import pytest
import requests
from accesskit import Idp
from airflow_signin import AIRFLOW, Webserver, host_address, running_webserver
from chartproxy import HOST, ChartProxy, signin_proxy, start

from mfhelm.values import AIRFLOW_SIGNIN_CONFIG

pytestmark = pytest.mark.skipif(not AIRFLOW, reason="airflow not installed (tools.toml pins it; run `make test-tools`)")

ADMIN, MEMBER, VIEWER, OUTSIDER = ("adam@example.com", "alice@example.com", "vera@example.com",
                                   "olga@example.com")
ALLOWED = {"adminGroups": ["admins"], "dataScientists": ["data-scientists"]}
PASSWORD = "break-Glass-" + secrets.token_hex(8)
# What mfhelm's values give the Airflow chart for this host (the local-signin
# scenario the proxy is rendered from carries the same).
AIRFLOW_VALUES = {"airflow": {"config": {"webserver": {"base_url": f"https://{HOST}/airflow"}},
                              "webserver": {"webserverConfigConfigMapName": AIRFLOW_SIGNIN_CONFIG}}}


@dataclass
class Stack:
    proxy: str
    airflow: Webserver


@pytest.fixture(scope="module")
def rendered(idp: Idp, tmp_path_factory) -> Iterator[tuple[ChartProxy, Webserver]]:
    """The chart rendered once (proxy and Airflow from the same values), and
    the webserver running it."""
    address = host_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address to stand for the proxy's pod")
    tmp = tmp_path_factory.mktemp("airflow-behind-proxy")
    chart = signin_proxy(idp, "http://127.0.0.1:9", tmp / "chart", ALLOWED,
                         values={"viewers": {"groups": [idp.groups["viewers"]]}})
    (tmp / "airflow").mkdir()
    with running_webserver(chart.rendered, AIRFLOW_VALUES, tmp / "airflow", PASSWORD,
                           address) as ws:
        yield chart, ws


@pytest.fixture
def stack(rendered, start_proxy: Callable[..., str]) -> Stack:
    chart, ws = rendered
    # The backends are the authorize container's routes (the sign-in one has
    # one upstream, the authorize container).
    authorize = chart.sidecar
    assert authorize is not None
    routes = {r["id"]: r for r in authorize.config["upstreamConfig"]["upstreams"]}
    # The chart's route (path /airflow/, kept) to the webserver's non-loopback
    # address; every other route goes nowhere.
    routes["airflow"]["uri"] = f"http://{ws.address}"
    authorize.save()
    return Stack(start(chart, start_proxy), ws)


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


def test_a_browser_signs_in_once_and_lands_in_airflow(stack, idp, browser):
    from selenium.webdriver.common.by import By

    accesskit.browser_sign_in(browser, idp, ADMIN, f"{stack.proxy}/airflow/home")
    assert browser.current_url == f"{stack.proxy}/airflow/home"
    assert not browser.find_elements(By.NAME, "password")  # no Airflow login form
    assert "DAGs" in browser.title
    assert stack.airflow.roles(stack.airflow.username_of(ADMIN)) == ["Admin"]
