"""The 403 page and who the user is signed in as.

oauth2-proxy v7.15.6 cannot say it by itself: its error template gets only
the status, title, message, proxy prefix, redirect, request id, footer and
version (pkg/app/pagewriter/error_page.go), and a user outside the allowed
groups has no session (the callback refuses to save one; a later refusal
clears it), so /oauth2/userinfo answers 401. The chart's template
(charts/metaflow/files/signin-templates/error.html) asks /oauth2/userinfo
from the page; these tests show what each layout gives:

- the chart's one proxy (sign-in and group check in one): a 403 page with
  the general sentence and a sign-out link, no name;
- a sign-in proxy that keeps every signed-in user's session, in front of a
  second oauth2-proxy that checks the groups on the ID token the first one
  passes (--skip-jwt-bearer-tokens): the 403 page names the user.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import accesskit
import pytest
from accesskit import Idp, Upstream, http
from chartproxy import signin_proxy

TEMPLATES = accesskit.ROOT / "charts" / "metaflow" / "files" / "signin-templates"
ALLOWED = {"adminGroups": ["admins"], "dataScientists": ["data-scientists"]}
MEMBER, OUTSIDER = "alice@example.com", "olga@example.com"


def _who(browser) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    who = browser.find_element(By.ID, "who")
    # The page's userinfo request has been answered (its answer may change the text).
    WebDriverWait(browser, 10).until(lambda _: who.get_attribute("data-asked") == "yes")
    return str(who.text)


@pytest.fixture
def one_proxy(idp: Idp, upstream: Upstream, start_proxy: Callable[..., str],
              tmp_path: Path) -> str:
    chart = signin_proxy(idp, upstream.url, tmp_path / "chart", ALLOWED)
    return start_proxy([*chart.args, f"--custom-templates-dir={TEMPLATES}"], chart.env,
                       port=chart.port)


@pytest.fixture
def two_proxies(idp: Idp, upstream: Upstream, start_proxy: Callable[..., str],
                tmp_path: Path) -> str:
    """The sign-in proxy (the chart's, without allowed groups: any user of
    the issuer keeps a session) in front of the authorizing one (the chart's
    as it is, with the template), which gets the user's ID token as the
    bearer token the chart's config already passes on."""
    authz = signin_proxy(idp, upstream.url, tmp_path / "authz", ALLOWED)
    signin = signin_proxy(idp, authz.url, tmp_path / "signin", ALLOWED)
    [provider] = signin.config["providers"]
    del provider["allowedGroups"]
    signin.config["upstreamConfig"]["upstreams"] = [
        {"id": "authz", "path": "/", "uri": authz.url}]
    signin.save()
    # Its own cookie name: refusing a user, it clears its (never set)
    # session cookie, which must not be the sign-in proxy's.
    start_proxy([*authz.args, f"--custom-templates-dir={TEMPLATES}",
                 "--cookie-name=_oauth2_proxy_authz"], authz.env, port=authz.port)
    return start_proxy(signin.args, signin.env, port=signin.port)


def test_the_one_proxys_403_page_offers_sign_out_but_cannot_name_the_user(
        idp, one_proxy, upstream, browser):
    accesskit.browser_sign_in(browser, idp, OUTSIDER, f"{one_proxy}/")

    assert browser.title == "403 Forbidden"
    assert _who(browser) == "You are signed in with an account that is not allowed here."
    assert http(f"{one_proxy}/oauth2/userinfo",
                headers={"Cookie": _cookies(browser)}).status == 401
    assert upstream.requests == []


def test_behind_a_sign_in_proxy_the_403_page_says_who_is_signed_in(
        idp, two_proxies, upstream, browser):
    accesskit.browser_sign_in(browser, idp, OUTSIDER, f"{two_proxies}/runs")

    assert browser.title == "403 Forbidden"
    assert _who(browser) == (f"You are signed in as {OUTSIDER}, "
                             "which is not in a group allowed here.")
    assert upstream.requests == []


def test_behind_a_sign_in_proxy_members_get_through_with_their_headers(
        idp, two_proxies, upstream, browser):
    accesskit.browser_sign_in(browser, idp, MEMBER, f"{two_proxies}/runs")

    assert browser.current_url == f"{two_proxies}/runs"
    path, headers = upstream.requests[-1]
    assert path == "/runs"
    assert headers["X-Forwarded-Email"] == MEMBER
    assert headers["X-Forwarded-Groups"].split(",") == idp.users[MEMBER].groups


def test_behind_a_sign_in_proxy_bearer_tokens_are_checked_by_group(idp, two_proxies, upstream):
    member = idp.token(MEMBER)["access_token"]
    outsider = idp.token(OUTSIDER)["access_token"]

    ok = http(f"{two_proxies}/metadata/flows", headers={"Authorization": f"Bearer {member}"})
    refused = http(f"{two_proxies}/metadata/flows",
                   headers={"Authorization": f"Bearer {outsider}"})

    assert ok.status == 200 and ok.json()["path"] == "/flows"
    assert refused.status == 403
    assert [p for p, _ in upstream.requests] == ["/flows"]


def _cookies(browser) -> str:
    return "; ".join(f"{c['name']}={c['value']}" for c in browser.get_cookies())
