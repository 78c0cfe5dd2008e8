"""The real Airflow webserver running the webserver_config.py the chart
renders (airflow_signin.py: how it is set up, and the two paths that reach
it): users through the proxy get their group's role with no second login,
outsiders 403, roles follow group changes; over port-forward only the
break-glass password counts. The real proxy in front of it:
tests/access/test_airflow_signin.py."""

from __future__ import annotations

import os
import re
import secrets
import subprocess

import pytest
import requests
from airflow_signin import AIRFLOW, host_address, running_webserver
from chartlib import SCENARIOS, render
from test_chart_airflow_signin import access_values

pytestmark = pytest.mark.skipif(not AIRFLOW, reason="airflow not installed (tools.toml pins it; run `make test-tools`)")

ADMINS = "0b8a2c4e-0000-4000-8000-00000000ad01"
SCIENTISTS = "0b8a2c4e-0000-4000-8000-00000000d501"
VIEWERS = "0b8a2c4e-0000-4000-8000-00000000e101"
OTHER = "0b8a2c4e-0000-4000-8000-0000000000f1"
PASSWORD = "break-Glass-" + secrets.token_hex(8)
FORGED_ID_TOKEN = "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    address = host_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address to stand for the proxy's pod")
    values = access_values(admin_groups=[ADMINS], viewers={"groups": [VIEWERS]},
                           dataScientists={"groups": [SCIENTISTS]})
    objs = render([SCENARIOS["azure-airflow"]], values, release="mf")
    with running_webserver(objs, values, tmp_path_factory.mktemp("airflow-signin"), PASSWORD,
                           address) as ws:
        yield ws


def signed_in(user: str, *groups: str, email: str | None = None,
              name: str | None = None) -> requests.Session:
    """A browser behind the proxy: every request carries the proxy's headers."""
    s = requests.Session()
    s.headers.update({
        "X-Forwarded-User": user,
        "X-Forwarded-Email": email if email is not None else user,
        "X-Forwarded-Preferred-Username": name if name is not None else user,
        "X-Forwarded-Groups": ",".join(groups),
        "Authorization": FORGED_ID_TOKEN,  # the proxy passes the ID token on; Airflow ignores it
    })
    return s


def can_read_roles(session: requests.Session, base: str) -> int:
    """Status of an Admin-only REST call (Roles: can read)."""
    return session.get(f"{base}/api/v1/roles", timeout=30, allow_redirects=False).status_code


def test_admin_group_member_is_admin_without_a_second_login(webserver):
    s = signed_in("ada@example.com", OTHER, ADMINS)
    home = s.get(f"{webserver.proxied}/home", timeout=30, allow_redirects=False)
    assert home.status_code == 200, home.text[:500]
    assert 'name="password"' not in home.text
    assert webserver.roles("ada@example.com") == ["Admin"]
    assert can_read_roles(s, webserver.proxied) == 200


def test_data_scientist_gets_user_and_viewer_gets_viewer(webserver):
    ds = signed_in("dora@example.com", SCIENTISTS)
    assert ds.get(f"{webserver.proxied}/api/v1/dags", timeout=30).status_code == 200
    assert webserver.roles("dora@example.com") == ["User"]
    assert can_read_roles(ds, webserver.proxied) == 403

    viewer = signed_in("vic@example.com", VIEWERS)
    assert viewer.get(f"{webserver.proxied}/api/v1/dags", timeout=30).status_code == 200
    assert webserver.roles("vic@example.com") == ["Viewer"]
    # A Viewer may not pause a DAG (the User role may): the REST API says 403
    # before it looks for the DAG.
    assert viewer.patch(f"{webserver.proxied}/api/v1/dags/none", json={"is_paused": True},
                        timeout=30).status_code == 403
    assert ds.patch(f"{webserver.proxied}/api/v1/dags/none", json={"is_paused": True},
                    timeout=30).status_code == 404


def test_member_of_no_group_gets_403_naming_them_not_a_login_form(webserver):
    s = signed_in("olga@example.com", OTHER, email="olga.o@example.com")
    for path in ("/home", "/login/", "/api/v1/dags"):
        r = s.get(f"{webserver.proxied}{path}", timeout=30, allow_redirects=False)
        assert r.status_code == 403, (path, r.status_code)
        assert "olga@example.com (olga.o@example.com)" in r.text
        assert 'name="password"' not in r.text
    assert webserver.roles("olga@example.com") is None  # no account made


def test_roles_follow_group_changes(webserver):
    s = signed_in("gus@example.com", VIEWERS)
    assert can_read_roles(s, webserver.proxied) == 403
    assert webserver.roles("gus@example.com") == ["Viewer"]
    # Later, the proxy's session carries new groups: same Airflow session.
    s.headers["X-Forwarded-Groups"] = f"{VIEWERS},{ADMINS}"
    assert can_read_roles(s, webserver.proxied) == 200
    assert webserver.roles("gus@example.com") == ["Admin", "Viewer"]
    # A new login with fewer groups.
    fresh = signed_in("gus@example.com", SCIENTISTS)
    assert can_read_roles(fresh, webserver.proxied) == 403
    assert webserver.roles("gus@example.com") == ["User"]
    # Removed from every group: 403, and the account keeps no role, so the
    # older session (with the admin groups it last saw) gets nothing either.
    fresh.headers["X-Forwarded-Groups"] = OTHER
    assert fresh.get(f"{webserver.proxied}/home", timeout=30).status_code == 403
    assert webserver.roles("gus@example.com") == []
    s.headers["X-Forwarded-Groups"] = OTHER
    assert can_read_roles(s, webserver.proxied) == 403


def _password_login(base: str, username: str, password: str) -> requests.Session:
    s = requests.Session()
    page = s.get(f"{base}/login/", timeout=30)
    assert page.status_code == 200 and 'name="password"' in page.text, page.text[:500]
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page.text).group(1)
    s.post(f"{base}/login/", data={"username": username, "password": password,
                                   "csrf_token": token}, timeout=30)
    return s


def test_break_glass_admin_logs_in_with_the_password_over_port_forward(webserver):
    s = _password_login(webserver.local, "admin", PASSWORD)
    assert can_read_roles(s, webserver.local) == 200
    wrong = _password_login(webserver.local, "admin", PASSWORD + "x")
    assert can_read_roles(wrong, webserver.local) in (401, 403)


def test_forged_headers_over_port_forward_grant_nothing(webserver):
    s = signed_in("mallory@example.com", ADMINS)
    # X-Forwarded-For makes ProxyFix report another REMOTE_ADDR: not the peer.
    s.headers["X-Forwarded-For"] = "10.1.2.3"
    home = s.get(f"{webserver.local}/home", timeout=30, allow_redirects=False)
    assert home.status_code == 302 and "/login/" in home.headers["Location"]
    assert can_read_roles(s, webserver.local) in (401, 403)
    assert webserver.roles("mallory@example.com") is None


def test_password_form_is_refused_through_the_proxy(webserver):
    s = requests.Session()  # no proxy headers: only the probes come this way
    page = s.get(f"{webserver.proxied}/login/", timeout=30)
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page.text).group(1)
    r = s.post(f"{webserver.proxied}/login/", data={"username": "admin", "password": PASSWORD,
                                                    "csrf_token": token}, timeout=30,
               allow_redirects=False)
    assert r.status_code == 403
    assert can_read_roles(s, webserver.proxied) in (401, 403)


def test_a_signed_in_name_never_takes_over_the_admin_account(webserver):
    s = signed_in("ADMIN", ADMINS)
    r = s.get(f"{webserver.proxied}/home", timeout=30, allow_redirects=False)
    assert r.status_code == 403 and "password" in r.text
    assert webserver.roles("admin") == ["Admin"]
    assert can_read_roles(_password_login(webserver.local, "admin", PASSWORD),
                          webserver.local) == 200


def test_an_underscore_spelling_is_not_the_groups_header(webserver):
    # The proxy strips the headers it sets; a client's X_Forwarded_Groups would
    # pass it, and must not merge into X-Forwarded-Groups (gunicorn drops
    # header names with underscores since 22.0).
    s = signed_in("una@example.com", VIEWERS)
    s.headers["X_Forwarded_Groups"] = ADMINS
    assert can_read_roles(s, webserver.proxied) == 403
    assert webserver.roles("una@example.com") == ["Viewer"]


def test_log_out_through_the_proxy_signs_out_of_the_proxy(webserver):
    s = signed_in("lou@example.com", SCIENTISTS)
    home = s.get(f"{webserver.proxied}/home", timeout=30)
    assert home.status_code == 200
    cookie = next(c for c in s.cookies if c.name == "session")
    assert cookie.path == "/airflow"  # not sent to the UI and the other backends
    # The navigation bar's "Log out" posts a form with the page's CSRF token.
    token = re.search(r'name="csrf_token" value="([^"]+)"', home.text).group(1)
    r = s.post(f"{webserver.proxied}/logout/", data={"csrf_token": token}, timeout=30,
               allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"].endswith("/oauth2/sign_out")


def test_the_account_is_the_user_header_shown_by_the_preferred_name(webserver):
    # On Entra the user is an opaque id; the preferred name is what people read.
    s = signed_in("AAAAAAAAAAAAAAAAAAAAAKn1a_opaque", SCIENTISTS, email="kim@example.com",
                  name="kim.lee@example.com")
    assert s.get(f"{webserver.proxied}/home", timeout=30).status_code == 200
    assert webserver.account("AAAAAAAAAAAAAAAAAAAAAKn1a_opaque") == (
        "kim.lee@example.com", "kim@example.com")
    # Renamed in the directory: the same account, its name updated.
    s.headers["X-Forwarded-Preferred-Username"] = "kim.park@example.com"
    s.headers["X-Forwarded-Email"] = "kim.park@example.com"
    assert s.get(f"{webserver.proxied}/home", timeout=30).status_code == 200
    assert webserver.account("AAAAAAAAAAAAAAAAAAAAAKn1a_opaque") == (
        "kim.park@example.com", "kim.park@example.com")


def test_airflow_answers_only_under_base_url_so_its_probes_need_the_prefix(webserver):
    # Airflow 2.10.5 mounts the app at base_url's path only
    # (init_wsgi_middlewares): the Airflow chart 1.16.0 prefixes the
    # webserver's probes with that path, which is why base_url is a value of
    # that chart and not only an environment variable of ours.
    root = webserver.local.removesuffix("/airflow")
    r = requests.get(f"{root}/health", timeout=30)
    assert r.status_code == 404 and "not at this location" in r.text
    assert requests.get(f"{webserver.local}/health", timeout=30).status_code == 200


def test_airflow_reads_webserver_config_from_airflow_home(tmp_path):
    # Where the Airflow chart mounts webserverConfigConfigMapName
    # ($AIRFLOW_HOME/webserver_config.py) is Airflow's default config_file.
    proc = subprocess.run([AIRFLOW, "config", "get-value", "webserver", "config_file"],
                          env={**os.environ, "AIRFLOW_HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == f"{tmp_path}/webserver_config.py"


def test_the_403_page_names_the_person_not_the_opaque_user_id(webserver):
    s = signed_in("AAAAAAAAAAAAAAAAAAAAAOpaque_sub", OTHER, email="pat@example.com",
                  name="pat.q@example.com")
    r = s.get(f"{webserver.proxied}/home", timeout=30)
    assert r.status_code == 403
    assert "pat.q@example.com (pat@example.com)" in r.text
    assert "Opaque_sub" not in r.text


def test_an_id_in_the_email_header_is_not_taken_for_an_address(webserver):
    # A laptop's access token has no e-mail claim: oauth2-proxy then sends the
    # user id as X-Forwarded-Email.
    browser = signed_in("kai@example.com", SCIENTISTS, email="kai@example.com")
    assert browser.get(f"{webserver.proxied}/home", timeout=30).status_code == 200
    laptop = signed_in("kai@example.com", SCIENTISTS, email="sub-1f2e3d")
    assert laptop.get(f"{webserver.proxied}/api/v1/dags", timeout=30).status_code == 200
    assert webserver.account("kai@example.com") == ("kai@example.com", "kai@example.com")
    fresh = signed_in("lin@example.com", SCIENTISTS, email="sub-9a8b7c")
    assert fresh.get(f"{webserver.proxied}/api/v1/dags", timeout=30).status_code == 200
    assert webserver.account("lin@example.com") == ("lin@example.com",
                                                    "lin@example.com@signin.invalid")


def test_without_a_user_header_the_preferred_name_is_the_user(webserver):
    s = signed_in("", VIEWERS, email="", name="max@example.com")
    assert s.get(f"{webserver.proxied}/home", timeout=30).status_code == 200
    assert webserver.roles("max@example.com") == ["Viewer"]
