"""Sign-in in front of the backends, with the real parts: oauth2-proxy (the
pinned build) against the test OpenID provider, Chromium signing in through
the redirect flow, and a local upstream standing in for the UI and APIs.

The proxy runs with the flags and alpha config the chart renders
(chartproxy.py). Allowed in: the admins and data-scientists groups (the
chart's access.adminGroups and dataScientists.groups); olga signs in fine
but is in neither.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import accesskit
import pytest
from accesskit import Idp, Upstream, http, jwt_claims
from chartproxy import signin_proxy

ALLOWED = {"adminGroups": ["admins"], "dataScientists": ["data-scientists"]}
MEMBER, OUTSIDER = "alice@example.com", "olga@example.com"
FORGED = {
    "X-Forwarded-User": "adam@example.com",
    "X-Forwarded-Email": "adam@example.com",
    "X-Forwarded-Preferred-Username": "adam@example.com",
}


@pytest.fixture
def proxy(idp: Idp, upstream: Upstream, start_proxy: Callable[..., str], tmp_path) -> str:
    """oauth2-proxy with the flags and alpha config the chart renders for the
    local profile's sign-in (provider oidc), pointed at the test's parts."""
    chart = signin_proxy(idp, upstream.url, tmp_path / "chart", ALLOWED)
    return start_proxy(chart.args, chart.env, port=chart.port)


def _page_headers(browser) -> dict[str, str]:
    from selenium.webdriver.common.by import By

    return json.loads(browser.find_element(By.ID, "headers").text)


def _session_cookie(browser) -> str:
    return "; ".join(f"{c['name']}={c['value']}" for c in browser.get_cookies())


# --- the browser ---------------------------------------------------------------

def test_a_member_signs_in_and_lands_on_the_page_behind_the_proxy(idp, proxy, upstream, browser):
    accesskit.browser_sign_in(browser, idp, MEMBER, f"{proxy}/runs/42?tab=dag")

    assert browser.current_url == f"{proxy}/runs/42?tab=dag"
    headers = _page_headers(browser)
    user = idp.users[MEMBER]
    assert headers["X-Forwarded-Email"] == MEMBER
    assert headers["X-Forwarded-Preferred-Username"] == MEMBER
    assert headers["X-Forwarded-Groups"].split(",") == user.groups
    assert upstream.requests[-1][0] == "/runs/42?tab=dag"


def test_an_outsider_gets_403_and_never_reaches_the_upstream(idp, proxy, upstream, browser):
    accesskit.browser_sign_in(browser, idp, OUTSIDER, f"{proxy}/")

    assert "403" in browser.title
    assert upstream.requests == []


def test_the_websocket_upgrades_through_the_proxy(idp, proxy, upstream, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    accesskit.browser_sign_in(browser, idp, MEMBER, f"{proxy}/")
    browser.execute_script("openSocket()")

    out = browser.find_element(By.ID, "ws")
    WebDriverWait(browser, 10).until(lambda _: "echo ping" in out.text)
    path, headers = upstream.requests[-1]
    assert path == "/api/ws"
    assert headers["Upgrade"].lower() == "websocket"
    assert headers["X-Forwarded-Email"] == MEMBER
    assert out.text.splitlines() == [f"hello {headers['X-Forwarded-User']}", "echo ping"]


def test_signing_out_ends_the_session(idp, proxy, upstream, browser):
    accesskit.browser_sign_in(browser, idp, MEMBER, f"{proxy}/")
    cookie = _session_cookie(browser)
    assert http(f"{proxy}/", headers={"Cookie": cookie}).status == 200

    browser.get(f"{proxy}/oauth2/sign_out")

    assert "_oauth2_proxy" not in {c["name"] for c in browser.get_cookies()}
    seen = len(upstream.requests)
    browser.get(f"{proxy}/")  # back to the provider's login form
    assert browser.current_url.startswith(f"{idp.issuer}/login/")
    assert len(upstream.requests) == seen


def test_headers_a_signed_in_client_forges_do_not_reach_the_upstream(idp, proxy, upstream,
                                                                      browser):
    accesskit.browser_sign_in(browser, idp, MEMBER, f"{proxy}/")
    forged = {**FORGED, "X-Forwarded-Groups": idp.groups["admins"]}

    resp = http(f"{proxy}/api/whoami", headers={"Cookie": _session_cookie(browser), **forged})

    assert resp.status == 200
    got = resp.json()["headers"]
    assert got["X-Forwarded-Email"] == MEMBER
    assert got["X-Forwarded-Preferred-Username"] == MEMBER
    assert got["X-Forwarded-Groups"].split(",") == idp.users[MEMBER].groups
    assert got["X-Forwarded-User"] != FORGED["X-Forwarded-User"]


# --- API clients with a bearer token (laptops, notebooks) -------------------------

def test_a_members_access_token_passes_with_its_groups(idp, proxy, upstream):
    token = idp.token(MEMBER, scope=f"api://{idp.client_id}/.default")
    claims = jwt_claims(token["access_token"])
    assert claims["aud"] == [idp.client_id] and claims["tid"] == idp.tenant

    resp = http(f"{proxy}/metadata/flows", headers={
        "Authorization": f"Bearer {token['access_token']}", **FORGED,
        "X-Forwarded-Groups": idp.groups["admins"]})

    assert resp.status == 200
    got = resp.json()["headers"]
    assert got["X-Forwarded-Groups"].split(",") == idp.users[MEMBER].groups
    assert got["X-Forwarded-Preferred-Username"] == MEMBER
    # Entra's access tokens carry no email claim: the proxy has none to set.
    assert got.get("X-Forwarded-Email") != FORGED["X-Forwarded-Email"]
    assert got["X-Forwarded-User"] != FORGED["X-Forwarded-User"]


def test_an_outsiders_access_token_is_refused(idp, proxy, upstream):
    token = idp.token(OUTSIDER, scope=f"api://{idp.client_id}/.default")

    resp = http(f"{proxy}/metadata/flows",
                headers={"Authorization": f"Bearer {token['access_token']}"})

    assert resp.status == 403
    assert upstream.requests == []


def test_without_a_session_browsers_are_sent_to_sign_in_and_api_clients_get_401(
        idp, proxy, upstream):
    page = http(f"{proxy}/runs", headers={"Accept": "text/html"})
    api = http(f"{proxy}/metadata/flows", headers={"Accept": "text/html"})

    assert page.status == 302
    assert page.headers["Location"].startswith(f"{idp.issuer}/auth?")
    assert api.status == 401  # --api-route: no redirect a client could not follow
    assert upstream.requests == []


@pytest.mark.parametrize("path, backend_path", [
    ("/", "/"),
    ("/runs/42", "/runs/42"),
    ("/api/flows?_limit=5", "/api/flows?_limit=5"),
    ("/metadata/flows/HelloFlow/runs", "/flows/HelloFlow/runs"),
    ("/metadata", "/"),
    ("/argo/api/v1/workflows/metaflow-flows", "/api/v1/workflows/metaflow-flows"),
    ("/airflow/home", "/airflow/home"),
])
def test_each_route_reaches_its_backend_path(idp, proxy, upstream, path, backend_path):
    token = idp.token(MEMBER)["access_token"]

    resp = http(f"{proxy}{path}", headers={"Authorization": f"Bearer {token}"})

    assert resp.status == 200, resp.text
    assert resp.json()["path"] == backend_path


def test_a_post_with_a_body_reaches_the_upstream_whole(idp, proxy, upstream):
    """Laptops record runs with POSTs to the metadata service."""
    token = idp.token(MEMBER)["access_token"]
    headers = {"Authorization": f"Bearer {token}"}

    first = http(f"{proxy}/metadata/flows/HelloFlow", data={"a": "1"}, headers=headers)
    second = http(f"{proxy}/metadata/flows/HelloFlow/run", data={"b": "2"}, headers=headers)

    assert (first.status, second.status) == (200, 200)
    assert [(r.json()["method"], r.json()["path"], r.json()["body"]) for r in (first, second)] == [
        ("POST", "/flows/HelloFlow", "a=1"), ("POST", "/flows/HelloFlow/run", "b=2")]


def test_a_refreshed_token_passes_and_the_spent_refresh_token_is_refused(idp, proxy):
    first = idp.token(MEMBER)
    second = idp.refresh(first["refresh_token"])

    assert second["refresh_token"] != first["refresh_token"]
    assert jwt_claims(second["access_token"])["groups"] == idp.users[MEMBER].groups
    resp = http(f"{proxy}/metadata/flows",
                headers={"Authorization": f"Bearer {second['access_token']}"})
    assert resp.status == 200
    with pytest.raises(RuntimeError, match="400"):
        idp.refresh(first["refresh_token"])


def test_an_expired_access_token_is_refused_and_its_refreshed_successor_passes(
        start_idp, upstream, start_proxy, tmp_path):
    short = start_idp(access_token_ttl="2s")
    chart = signin_proxy(short, upstream.url, tmp_path / "chart", ALLOWED)
    proxy = start_proxy(chart.args, chart.env, port=chart.port)
    first = short.token(MEMBER)
    claims = jwt_claims(first["access_token"])
    assert claims["exp"] - claims["iat"] <= 2

    fresh = http(f"{proxy}/metadata/flows",
                 headers={"Authorization": f"Bearer {first['access_token']}"})
    time.sleep(claims["exp"] - time.time() + 1.5)
    expired = http(f"{proxy}/metadata/flows",
                   headers={"Authorization": f"Bearer {first['access_token']}"})
    second = short.refresh(first["refresh_token"])
    renewed = http(f"{proxy}/metadata/flows",
                   headers={"Authorization": f"Bearer {second['access_token']}"})

    assert (fresh.status, expired.status, renewed.status) == (200, 403, 200)
    assert len(upstream.requests) == 2
