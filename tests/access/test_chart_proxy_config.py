"""More of the proxy as the chart configures it (chartproxy.signin_proxy:
the real helm renders the local-signin scenario, the real oauth2-proxy runs
its flags and alpha config against the test OpenID provider, in front of the
local upstream): the checks test_signin_proxy.py does not make.

Found with it, at v7.15.6: a rewriteTarget of `/$2` arrives as `/$1` (the
config loader renumbers every `$<digits>`), so the chart's routes use `$1`
only; and the proxy's own user is always the token's `sub`, so the chart
injects X-Forwarded-User from a claim (preferred_username), which access
tokens carry too.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable

import accesskit
import pytest
from accesskit import Idp, Upstream, http
from chartproxy import signin_proxy

ALLOWED = {"adminGroups": ["admins"], "dataScientists": ["data-scientists", "viewers"]}
MEMBER, VIEWER, ADMIN, OUTSIDER = ("alice@example.com", "vera@example.com", "adam@example.com",
                                   "olga@example.com")
FORGED = {"X-Forwarded-User": "adam@example.com", "X-Forwarded-Email": "adam@example.com",
          "X-Forwarded-Preferred-Username": "adam@example.com",
          "X-Forwarded-Groups": "everyone"}


@pytest.fixture
def proxy(idp: Idp, upstream: Upstream, start_proxy: Callable[..., str], tmp_path) -> str:
    chart = signin_proxy(idp, upstream.url, tmp_path / "chart", ALLOWED)
    return start_proxy(chart.args, chart.env, port=chart.port)


@pytest.fixture
def bearer(idp: Idp) -> Callable[[str], dict[str, str]]:
    def headers(user: str) -> dict[str, str]:
        token = idp.token(user, scope=f"api://{idp.client_id}/.default")["access_token"]
        return {"Authorization": f"Bearer {token}"}
    return headers


@pytest.mark.parametrize("user", [MEMBER, VIEWER, ADMIN])
def test_every_allowed_group_gets_in_named_as_a_browser_would_be(proxy, idp, bearer, user):
    resp = http(f"{proxy}/metadata/flows", headers={**bearer(user), **FORGED})
    assert resp.status == 200, resp.text
    got = resp.json()["headers"]
    assert got["X-Forwarded-Groups"].split(",") == idp.users[user].groups
    assert got["X-Forwarded-Preferred-Username"] == user
    # From access.userClaim, not the proxy's own user (`sub`), though the
    # access token has no `email`.
    assert got["X-Forwarded-User"] == user
    # The backend gets the caller's own token.
    token = got["Authorization"].removeprefix("Bearer ")
    assert accesskit.jwt_claims(token)["preferred_username"] == user


def test_an_outsider_is_refused_on_every_route(proxy, upstream, bearer):
    for path in ("/metadata/flows", "/", "/api/flows", "/argo/", "/airflow/home"):
        assert http(f"{proxy}{path}", headers=bearer(OUTSIDER)).status == 403, path
    assert upstream.requests == []


def test_a_token_with_groups_added_after_signing_is_refused(proxy, idp, upstream, bearer):
    token = bearer(OUTSIDER)["Authorization"].removeprefix("Bearer ")
    header, _, signature = token.split(".")
    claims = accesskit.jwt_claims(token) | {"groups": [idp.groups["admins"]]}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    resp = http(f"{proxy}/metadata/flows",
                headers={"Authorization": f"Bearer {header}.{payload}.{signature}"})
    assert resp.status == 403
    assert upstream.requests == []


def test_health_endpoints_answer_without_sign_in(proxy, upstream):
    # The Deployment's probes: /ping (liveness), /ready (readiness).
    assert http(f"{proxy}/ping").status == 200
    assert http(f"{proxy}/ready").status == 200
    assert upstream.requests == []


def test_a_browser_session_is_refreshed_with_its_refresh_token(
        idp, upstream, start_proxy, tmp_path, browser):
    # access.sessionRefresh short: the proxy redeems the session's refresh
    # token (scope offline_access) and forwards the new ID token.
    chart = signin_proxy(idp, upstream.url, tmp_path / "chart", ALLOWED,
                         values={"access": {"sessionRefresh": "2s"}})
    assert "--cookie-refresh=2s" in chart.args
    proxy = start_proxy(chart.args, chart.env, port=chart.port)
    accesskit.browser_sign_in(browser, idp, MEMBER, f"{proxy}/")
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in browser.get_cookies())
    first = http(f"{proxy}/api/whoami", headers={"Cookie": cookie}).json()["headers"]
    time.sleep(3)
    browser.get(f"{proxy}/")  # the refresh happens here, and sets new cookies
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in browser.get_cookies())
    second = http(f"{proxy}/api/whoami", headers={"Cookie": cookie}).json()["headers"]
    assert second["Authorization"] != first["Authorization"]
    claims = accesskit.jwt_claims(second["Authorization"].removeprefix("Bearer "))
    assert claims["iat"] > accesskit.jwt_claims(first["Authorization"].removeprefix("Bearer "))["iat"]
    assert second["X-Forwarded-User"] == MEMBER


def test_the_403_page_is_the_charts_own(proxy, upstream, bearer):
    resp = http(f"{proxy}/", headers={**bearer(OUTSIDER), "Accept": "text/html"})
    assert resp.status == 403
    # files/signin-templates/error.html, mounted by the chart, not the default page.
    assert 'id="sign-out"' in resp.text
    assert "not allowed here" in resp.text
