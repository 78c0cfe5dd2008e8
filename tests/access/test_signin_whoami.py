"""The 403 page and who the user is signed in as.

oauth2-proxy v7.15.6 cannot say it by itself: its error template gets only
the status, title, message, proxy prefix, redirect, request id, footer and
version (pkg/app/pagewriter/error_page.go), and a user outside the allowed
groups has no session in a proxy that checks the groups (the callback
refuses to save one; a later refusal clears it), so its /oauth2/userinfo
answers 401. So the chart runs two: a sign-in container that keeps every
signed-in user's session, in front of an authorize container that checks
the groups on the ID token the first passes (--skip-jwt-bearer-tokens).
The chart's template (charts/metaflow/files/signin-templates/error.html),
on the authorize container's 403, asks /oauth2/userinfo of the sign-in
container and names the user.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import accesskit
import pytest
from accesskit import Idp, Upstream, http
from chartproxy import signin_proxy, start

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
def proxy(idp: Idp, upstream: Upstream, start_proxy: Callable[..., str],
          tmp_path: Path) -> str:
    """The chart's pod: the sign-in container in front of the authorize one."""
    return start(signin_proxy(idp, upstream.url, tmp_path / "chart", ALLOWED), start_proxy)


def test_the_sign_in_session_outlives_the_group_check(idp, proxy, upstream, browser):
    accesskit.browser_sign_in(browser, idp, OUTSIDER, f"{proxy}/")

    # /oauth2/ is the sign-in container's own: it answers who is signed in.
    info = http(f"{proxy}/oauth2/userinfo", headers={"Cookie": _cookies(browser)})
    assert info.status == 200 and info.json()["preferredUsername"] == OUTSIDER
    assert upstream.requests == []


def test_the_403_page_says_who_is_signed_in(
        idp, proxy, upstream, browser):
    accesskit.browser_sign_in(browser, idp, OUTSIDER, f"{proxy}/runs")

    assert browser.title == "403 Forbidden"
    assert _who(browser) == (f"You are signed in as {OUTSIDER}, "
                             "which is not in a group allowed here.")
    assert upstream.requests == []


def test_members_get_through_with_their_headers(
        idp, proxy, upstream, browser):
    accesskit.browser_sign_in(browser, idp, MEMBER, f"{proxy}/runs")

    assert browser.current_url == f"{proxy}/runs"
    path, headers = upstream.requests[-1]
    assert path == "/runs"
    assert headers["X-Forwarded-Email"] == MEMBER
    assert headers["X-Forwarded-Groups"].split(",") == idp.users[MEMBER].groups


def test_bearer_tokens_are_checked_by_group(idp, proxy, upstream):
    member = idp.token(MEMBER)["access_token"]
    outsider = idp.token(OUTSIDER)["access_token"]

    ok = http(f"{proxy}/metadata/flows", headers={"Authorization": f"Bearer {member}"})
    refused = http(f"{proxy}/metadata/flows",
                   headers={"Authorization": f"Bearer {outsider}"})

    assert ok.status == 200 and ok.json()["path"] == "/flows"
    assert refused.status == 403
    assert [p for p, _ in upstream.requests] == ["/flows"]


def _cookies(browser) -> str:
    return "; ".join(f"{c['name']}={c['value']}" for c in browser.get_cookies())
