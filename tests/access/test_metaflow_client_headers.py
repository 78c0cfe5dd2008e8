"""mfhelm's Metaflow extension (mfhelm/mfext) in one process: the headers
Metaflow copies per request, the token's renewal and the proxy's refusals.

The credential is azure-identity's ClientAssertionCredential against a local
HTTPS endpoint shaped like Entra's token endpoint (metaflow_client_kit.
EntraFront without an IdP: unsigned tokens of a chosen lifetime); the proxy is
a local HTTP server that refuses the tokens a test names. The real proxy and
IdP are in test_metaflow_client.py.
"""

from __future__ import annotations

import copy
import json
import pickle
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import metaflow_client_kit as kit
import pytest
import requests
from cluster import metaflow_env as mfenv
from cluster.pki import CertificateAuthority
from metaflow.exception import MetaflowInternalError
from metaflow_extensions.mfhelm.config import service_auth

TENANT = "11111111-2222-3333-4444-555555555555"
IDENTITY = "12345678-aaaa-bbbb-cccc-1234567890ab"
APP = "99999999-8888-7777-6666-555555555555"
SCOPE = f"api://{APP}/.default"
USER = "ada@example.com"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def front(ca: CertificateAuthority) -> Iterator[kit.EntraFront]:
    entra = kit.EntraFront(tenant=TENANT, client_id=IDENTITY, federated_token="assertion",
                           idp=None, user=USER, api_client_id=APP)
    with kit.serve_entra_front(ca, entra):
        yield entra


class Credential:
    """A factory for METAFLOW_MFHELM_SERVICE_CREDENTIAL: azure-identity's real
    ClientAssertionCredential, its authority the local endpoint."""

    def __init__(self, front: kit.EntraFront, ca: CertificateAuthority) -> None:
        self.front, self.ca = front, ca

    def __call__(self) -> Any:
        from azure.identity import ClientAssertionCredential

        return ClientAssertionCredential(
            TENANT, IDENTITY, lambda: self.front.federated_token,
            authority=self.front.url, connection_verify=str(self.ca.pair.cert))


class Proxy:
    """Answers 200 with the path, or `refuse[token]` for a refused token."""

    def __init__(self) -> None:
        self.refuse: dict[str, int] = {}
        self.seen: list[str] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                outer.seen.append(token)
                status = outer.refuse.get(token, 200) if token else 401
                body = json.dumps({"path": self.path}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metadata"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    server = Proxy()
    yield server
    server.close()


def _token(front: kit.EntraFront, ca: CertificateAuthority, url: str,
           **kw: Any) -> service_auth.ServiceToken:
    token = service_auth.ServiceToken(SCOPE, None, url, **kw)
    token.credential = Credential(front, ca)()
    return token


def _session(token: service_auth.ServiceToken) -> requests.Session:
    session = requests.Session()
    session.hooks["response"].append(token.on_response)
    return session


def test_without_a_scope_the_headers_are_metaflows_own() -> None:
    base = {"x-api-key": "k"}
    assert service_auth.service_headers(base, scope=None) is base
    assert service_auth.service_headers(base, scope="") is base


def test_each_copy_carries_the_token_and_nothing_else_does(
        front: kit.EntraFront, ca: CertificateAuthority) -> None:
    headers = service_auth.BearerHeaders({"x-api-key": "k"}, _token(front, ca, "http://x"))
    sent = headers.copy()
    assert sent == {"x-api-key": "k", "Authorization": f"Bearer {front.tokens_issued()[0]}"}
    assert mfenv.jwt_claims(sent["Authorization"][7:])["aud"] == APP
    # What Metaflow writes into pod specs and what copies/pickles carry: no token.
    assert json.loads(json.dumps(headers)) == {"x-api-key": "k"}
    for other in (pickle.loads(pickle.dumps(headers)), copy.deepcopy(headers),
                  copy.copy(headers)):
        assert other == {"x-api-key": "k"} and type(other) is dict
    after: dict[str, str] = {}
    after.update(headers)
    assert after == {"x-api-key": "k"}


def test_the_token_is_asked_for_again_only_when_due(
        front: kit.EntraFront, ca: CertificateAuthority) -> None:
    now = [time.time()]
    token = _token(front, ca, "http://x", clock=lambda: now[0])
    first = token.get()
    assert token.get() == first and token.asked == 1
    # A 3600 s token is renewed once less than 120 s of it are left.
    now[0] += 3600 - 121
    assert token.get() == first and token.asked == 1
    now[0] += 2
    token.get()
    assert token.asked == 2


# oauth2-proxy answers an expired bearer token with 403 (seen in test_metaflow_client).
@pytest.mark.parametrize("status", [401, 403])
def test_a_token_our_clock_thought_valid_is_retried_with_a_new_one(
        front: kit.EntraFront, ca: CertificateAuthority, proxy: Proxy, status: int) -> None:
    front.lifetime = 2
    # Our clock runs 30 s behind: the cached token looks valid after it expired.
    token = _token(front, ca, proxy.url, clock=lambda: time.time() - 30)
    headers = service_auth.BearerHeaders({}, token)
    stale = headers.copy()["Authorization"][7:]
    proxy.refuse[stale] = status
    time.sleep(2.5)
    resp = _session(token).get(f"{proxy.url}/flows/F", headers=headers.copy())
    assert resp.status_code == 200
    assert proxy.seen == [stale, front.tokens_issued()[1]]
    assert resp.history[0].status_code == status


def test_an_expired_token_with_no_newer_one_says_so(
        front: kit.EntraFront, ca: CertificateAuthority, proxy: Proxy) -> None:
    front.lifetime = 2
    token = _token(front, ca, proxy.url, clock=lambda: time.time() - 30)
    headers = service_auth.BearerHeaders({}, token)
    stale = headers.copy()["Authorization"][7:]
    proxy.refuse[stale] = 403
    front.refuse_api = True
    time.sleep(2.5)
    with pytest.raises(MetaflowInternalError) as err:
        _session(token).get(f"{proxy.url}/flows/F", headers=headers.copy())
    assert err.value.message == (
        f"{proxy.url} refused your Entra token as {USER} (403): it had expired and no newer one "
        "came from the credential: run `az login` and retry")


def test_a_refused_token_is_one_line_naming_the_fix(
        front: kit.EntraFront, ca: CertificateAuthority, proxy: Proxy) -> None:
    token = _token(front, ca, proxy.url)
    headers = service_auth.BearerHeaders({}, token)
    sent = headers.copy()
    proxy.refuse[sent["Authorization"][7:]] = 403
    with pytest.raises(MetaflowInternalError) as err:
        _session(token).get(f"{proxy.url}/flows/F", headers=headers.copy())
    assert err.value.headline == "Metaflow service sign-in"
    assert err.value.message == (
        f"{proxy.url} refused you as {USER} (403): you are not in a group allowed in; ask the "
        "platform team to run `mfhelm grant --group <your team's group>`")
    proxy.refuse[sent["Authorization"][7:]] = 401
    with pytest.raises(MetaflowInternalError) as err:
        _session(token).get(f"{proxy.url}/flows/F", headers=headers.copy())
    assert err.value.message.startswith(f"{proxy.url} did not accept your Entra token as {USER} "
                                        f"(401) for {SCOPE}: run `az login`")
    assert "\n" not in err.value.message


def test_no_token_says_why_and_to_run_az_login(
        front: kit.EntraFront, ca: CertificateAuthority, proxy: Proxy) -> None:
    front.refuse_api = True
    token = _token(front, ca, proxy.url)
    headers = service_auth.BearerHeaders({}, token)
    assert "Authorization" not in headers.copy()
    with pytest.raises(MetaflowInternalError) as err:
        _session(token).get(f"{proxy.url}/ping", headers=headers.copy())
    assert err.value.message.startswith(f"no Entra token for {proxy.url} (")
    assert "AADSTS700024: Client assertion is not within its valid time range." in \
        err.value.message
    assert err.value.message.endswith("run `az login` (in the deployment's tenant) and retry")
    assert "Trace ID" not in err.value.message


def test_other_hosts_responses_are_left_alone(
        front: kit.EntraFront, ca: CertificateAuthority, proxy: Proxy) -> None:
    token = _token(front, ca, "https://metaflow.example.com/metadata")
    resp = _session(token).get(f"{proxy.url}/flows/F")      # no token: 401, not ours
    assert resp.status_code == 401


def test_a_bad_credential_setting_is_explained(proxy: Proxy) -> None:
    token = service_auth.ServiceToken(SCOPE, "no_such_module", proxy.url)
    assert token.get() is None
    assert token.problem == ("SignInProblem: METAFLOW_MFHELM_SERVICE_CREDENTIAL='no_such_module': "
                             "expected module:callable, e.g. azure.identity:AzureCliCredential")


def test_the_extension_is_what_metaflow_loads(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("from metaflow import metaflow_config as c\n"
            "print(type(c.SERVICE_HEADERS).__name__, c.SERVICE_HEADERS.token.scope)\n")
    env = mfenv.clean_environ() | {"HOME": str(tmp_path), "METAFLOW_MFHELM_SERVICE_SCOPE": SCOPE,
                                   "METAFLOW_SERVICE_URL": "https://metaflow.example.com/metadata"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=False, cwd=tmp_path)
    assert done.stdout.split() == ["BearerHeaders", SCOPE], done.stderr
    del env["METAFLOW_MFHELM_SERVICE_SCOPE"]
    done = subprocess.run([sys.executable, "-c", "from metaflow import metaflow_config as c\n"
                           "print(type(c.SERVICE_HEADERS).__name__, c.SERVICE_HEADERS)"],
                          env=env, capture_output=True, text=True, check=False, cwd=tmp_path)
    assert done.stdout.split() == ["dict", "{}"], done.stderr
