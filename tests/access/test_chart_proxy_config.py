"""The proxy exactly as the chart configures it (templates/signin.yaml: its
flags and alpha config, rendered by the real helm from the local-signin
scenario), run by the real oauth2-proxy against the test OpenID provider,
in front of the local upstream. Only addresses and mounted paths change:
every backend's URI points at the upstream (each keeps its route and
rewrite), the listen address at a free port, the files at temporary ones.

What it proves on the wire: each route reaches its backend with the path
the backend expects (/metadata/ and /argo/ stripped, /api/ and /airflow/
kept), laptops' bearer tokens of allowed groups pass and others get 403,
the metadata API answers 401 (not a login redirect) without a token, and
identity headers a client sends never reach a backend.

Found here, at v7.15.6: a rewriteTarget of `/$2` arrives as `/$1` (the
config loader renumbers every `$<digits>`), so the chart's routes use `$1`
only; and X-Forwarded-User is always the token's `sub`.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import accesskit
import pytest
import yaml
from accesskit import Idp, Upstream, http

sys.path.insert(0, str(accesskit.ROOT / "tests" / "chart"))
import chartlib  # noqa: E402

MEMBER, VIEWER, ADMIN, OUTSIDER = ("alice@example.com", "vera@example.com", "adam@example.com",
                                   "olga@example.com")
FORGED = {"X-Forwarded-User": "adam@example.com", "X-Forwarded-Email": "adam@example.com",
          "X-Forwarded-Preferred-Username": "adam@example.com",
          "X-Forwarded-Groups": "everyone"}


def render(idp: Idp) -> list[dict[str, Any]]:
    values = yaml.safe_load(chartlib.SCENARIOS["local-signin"].read_text())
    values["access"] |= {"issuerUrl": idp.issuer, "clientId": idp.client_id,
                         "adminGroups": [idp.groups["admins"]]}
    # (viewers.groups joins them once mfhelm grant's `viewers` values exist.)
    values["dataScientists"] = {"groups": [idp.groups["data-scientists"], idp.groups["viewers"]],
                                "users": []}
    return chartlib.render([], values, release="mf")


@pytest.fixture
def chart_proxy(idp: Idp, upstream: Upstream, oauth2_proxy_binary: Path, tmp_path: Path
                ) -> Iterator[str]:
    objs = render(idp)
    alpha = yaml.safe_load(chartlib.get(objs, "ConfigMap", "mf-signin")["data"]["oauth2-proxy.yaml"])
    port = accesskit.free_port()
    alpha["server"]["bindAddress"] = f"127.0.0.1:{port}"
    for route in alpha["upstreamConfig"]["upstreams"]:
        route["uri"] = upstream.url
    [provider] = alpha["providers"]
    (tmp_path / "client-secret").write_text(idp.client_secret)
    provider["clientSecretFile"] = str(tmp_path / "client-secret")
    (tmp_path / "alpha.yaml").write_text(yaml.safe_dump(alpha))
    secret = chartlib.get(objs, "Secret", "mf-signin-cookie")["data"]["cookie-secret"]
    (tmp_path / "cookie").write_bytes(base64.b64decode(secret))
    [container] = chartlib.get(objs, "Deployment", "mf-signin")["spec"]["template"]["spec"][
        "containers"]
    args = [a.replace("/etc/oauth2-proxy/oauth2-proxy.yaml", str(tmp_path / "alpha.yaml"))
             .replace("/etc/oauth2-proxy/cookie/cookie-secret", str(tmp_path / "cookie"))
            for a in container["args"]]
    log = tmp_path / "oauth2-proxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(oauth2_proxy_binary), *args], stdout=out,
                                stderr=subprocess.STDOUT, env={"PATH": "/usr/bin:/bin"})
    url = f"http://127.0.0.1:{port}"
    try:
        accesskit.wait_for(f"{url}/ready", proc, "oauth2-proxy", log)
        yield url
    finally:
        accesskit.stop(proc)


@pytest.fixture
def bearer(idp: Idp) -> Callable[[str], dict[str, str]]:
    def headers(user: str) -> dict[str, str]:
        token = idp.token(user, scope=f"api://{idp.client_id}/.default")["access_token"]
        return {"Authorization": f"Bearer {token}"}
    return headers


@pytest.mark.parametrize("path, backend_path", [
    ("/metadata/flows/HelloFlow/runs?_limit=5", "/flows/HelloFlow/runs?_limit=5"),
    ("/metadata/ping", "/ping"),
    ("/argo/api/v1/workflows/metaflow-flows", "/api/v1/workflows/metaflow-flows"),
    ("/api/flows/HelloFlow", "/api/flows/HelloFlow"),
    ("/airflow/home", "/airflow/home"),
    ("/runs/42", "/runs/42"),
])
def test_each_route_reaches_its_backend_with_the_path_it_expects(
        chart_proxy, upstream, bearer, path, backend_path):
    resp = http(f"{chart_proxy}{path}", headers=bearer(MEMBER))
    assert resp.status == 200, resp.text
    assert resp.json()["path"] == backend_path


@pytest.mark.parametrize("user", [MEMBER, VIEWER, ADMIN])
def test_every_allowed_group_gets_in_with_its_identity(chart_proxy, idp, bearer, user):
    resp = http(f"{chart_proxy}/metadata/flows", headers={**bearer(user), **FORGED})
    assert resp.status == 200, resp.text
    got = resp.json()["headers"]
    # The proxy's own values replace every forged one.
    assert got["X-Forwarded-Groups"].split(",") == idp.users[user].groups
    assert got["X-Forwarded-Preferred-Username"] == user
    # The user is the token's `sub`, whatever the config (v7.15.6).
    token = got["Authorization"].removeprefix("Bearer ")
    assert got["X-Forwarded-User"] == accesskit.jwt_claims(token)["sub"]
    # The backends get the caller's own token (Argo's client mode needs one).
    assert accesskit.jwt_claims(token)["preferred_username"] == user


def test_an_outsider_is_refused_and_nothing_reaches_a_backend(chart_proxy, upstream, bearer):
    for path in ("/metadata/flows", "/", "/argo/", "/airflow/home"):
        assert http(f"{chart_proxy}{path}", headers=bearer(OUTSIDER)).status == 403
    assert upstream.requests == []


def test_the_metadata_api_answers_401_without_a_token_and_the_ui_redirects(
        chart_proxy, idp, upstream):
    assert http(f"{chart_proxy}/metadata/flows").status == 401
    resp = http(f"{chart_proxy}/runs/42")
    assert resp.status == 302
    assert resp.headers["Location"].startswith(f"{idp.issuer}/auth?")
    # After sign-in the provider sends the browser back to the host's callback.
    assert "redirect_uri=https%3A%2F%2Fmetaflow.localtest.me%2Foauth2%2Fcallback" in (
        resp.headers["Location"])
    assert upstream.requests == []


def test_a_forged_or_foreign_token_is_refused(chart_proxy, idp, upstream, bearer):
    token = bearer(MEMBER)["Authorization"]
    header, payload, signature = token.removeprefix("Bearer ").split(".")
    claims = accesskit.jwt_claims(token.removeprefix("Bearer "))
    claims["groups"] = [idp.groups["admins"]]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    resp = http(f"{chart_proxy}/metadata/flows",
                headers={"Authorization": f"Bearer {header}.{forged}.{signature}"})
    assert resp.status == 403
    assert upstream.requests == []


def test_health_endpoints_answer_without_sign_in(chart_proxy):
    assert http(f"{chart_proxy}/ping").status == 200
    assert http(f"{chart_proxy}/ready").status == 200
