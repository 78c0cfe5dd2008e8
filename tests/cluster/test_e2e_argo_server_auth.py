"""The Argo UI behind sign-in acts as the signed-in user, never as the
Argo server's own account (issue 18, item 3).

The real `argo server` (v4.0.7, built from the Go module) runs with the
auth mode our values give it (`client` only, tests/cluster/argo_server.py),
the real OIDC server of tests/access issues the users' tokens, and the test
control plane's API server trusts that issuer the way AKS's API server
trusts Entra (audience, `groups` claim unprefixed). A data scientist's
group is bound to our chart's data-scientists Role in the flow namespace,
rendered by the real helm.

Shown here: a member lists and submits workflows in the flow namespace and
is refused in another; a non-member is refused everything; a request with
no token is refused; and the refusals name the user, not the server's
account, which could have done all of it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from kubernetes import client

from . import argo, argo_server
from .controlplane import ROOT
from .handle import Cluster
from .pki import CertificateAuthority

pytestmark = pytest.mark.cluster

RELEASE = "metaflow"
ARGO = {"group": "argoproj.io", "version": "v1alpha1"}
ACCESS = ROOT / "tests" / "access"
VALUES = yaml.safe_load((ROOT / "charts" / "metaflow" / "values.yaml").read_text())


# --- values: no cluster needed ---------------------------------------------------

def test_server_values_allow_only_the_callers_own_token() -> None:
    server = VALUES["argo-workflows"]["server"]
    assert server["authModes"] == ["client"]
    assert not server.get("authMode")  # argo-helm's deprecated single mode
    assert "sso" not in server  # no OIDC client (v4.0.7 sso.go requires a secret)
    args = argo_server.server_args(RELEASE, argo_server.server_values())
    assert [a for a in args if a.startswith("--auth-mode")] == ["--auth-mode=client"]
    # Port-forward reaches the UI at /; mfhelm sets /argo/ behind sign-in.
    assert server["baseHref"] == "/"


def test_cli_binary_is_the_pinned_release() -> None:
    binary, version = argo_server.ensure_cli()
    out = subprocess.run([str(binary), "version"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    assert out.splitlines()[0] == f"argo: {version}"
    assert "GitTreeState: clean" in out


# --- the running server --------------------------------------------------------

def _request(url: str, token: str | None = None, body: dict[str, Any] | None = None,
             ) -> tuple[int, dict[str, Any]]:
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers,
                                 method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text or b"{}")
        except json.JSONDecodeError:
            return exc.code, {"message": text.decode(errors="replace")}


def _workflow(name: str) -> dict[str, Any]:
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
            "metadata": {"name": name},
            "spec": {"entrypoint": "main",
                     "templates": [{"name": "main",
                                    "container": {"image": "busybox", "command": ["true"]}}]}}


@pytest.fixture(scope="module")
def namespaces(cluster: Cluster) -> Iterator[dict[str, str]]:
    release_ns = cluster.create_namespace(f"argosrv-{uuid.uuid4().hex[:6]}")
    names = {"release": release_ns,
             "flows": cluster.create_namespace(f"{release_ns}-flows"),
             "other": cluster.create_namespace(f"{release_ns}-other")}
    try:
        yield names
    finally:
        for ns in names.values():
            try:
                cluster.core().delete_namespace(ns)
            except client.ApiException as exc:
                if exc.status != 404:
                    raise


@pytest.fixture(scope="module")
def server(cluster: Cluster, argo_build: argo.ArgoBuild,
           namespaces: dict[str, str]) -> Iterator[argo_server.ArgoServer]:
    from mfhelm.values import ARGO_SIGNIN_PATH  # what mfhelm sets with sign-in on

    binary, _ = argo_server.ensure_cli()
    with argo_server.run_server(cluster, binary, namespaces["release"], namespaces["flows"],
                                release=RELEASE, base_href=ARGO_SIGNIN_PATH) as srv:
        yield srv


def test_server_runs_client_mode_only_under_the_base_href(
        server: argo_server.ArgoServer) -> None:
    # v4.0.7 cmd/argo/commands/server.go logs its settings at start as
    # structured fields (slog text: `authModes=[client]`; v3.6 quoted it).
    starting = next((line for line in server.log_text().splitlines()
                     if 'msg="Starting Argo Server"' in line and "authModes=" in line), "")
    assert " authModes=[client] " in f"{starting} ", server.tail()
    assert " baseHRef=/argo/ " in f"{starting} ", server.tail()


def test_no_token_no_access_though_the_servers_account_could(
        cluster: Cluster, server: argo_server.ArgoServer, namespaces: dict[str, str]) -> None:
    flows = namespaces["flows"]
    # The server's own account may list and create workflows there (our
    # chart's Role, as argo-helm's) ...
    for verb in ("list", "create"):
        assert cluster.service_account_can(server.namespace, server.service_account, verb,
                                           "workflows", group="argoproj.io", namespace=flows)
    # ... yet a caller without a token gets nothing out of it.
    status, body = _request(f"{server.url}/api/v1/workflows/{flows}")
    assert status == 401, body
    status, body = _request(f"{server.url}/api/v1/workflows/{flows}",
                            body={"workflow": _workflow("anonymous")})
    assert status == 401, body


# --- users signed in at the OIDC provider ---------------------------------------

def _accesskit() -> ModuleType:
    """tests/access/accesskit.py: the test OIDC provider and oauth2-proxy."""
    if "accesskit" not in sys.modules:
        spec = importlib.util.spec_from_file_location("accesskit", ACCESS / "accesskit.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules["accesskit"] = module
        spec.loader.exec_module(module)
    return sys.modules["accesskit"]


@dataclass
class Signin:
    idp: Any            # accesskit.Idp, serving HTTPS
    ca: Path            # the CA its certificate chains to
    api_scope: str      # the scope of the API server's tokens (AKS: 6dae42f8-.../user.read)
    member: str         # in data-scientists: bound to our data-scientists Role in flows
    outsider: str       # in others: let through by the sign-in, bound to nothing here

    def access_token(self, user: str) -> str:
        return str(self.idp.token(user, scope=self.api_scope)["access_token"])


@pytest.fixture(scope="module")
def signin(cluster: Cluster, namespaces: dict[str, str],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signin]:
    """The OIDC provider on HTTPS (Kubernetes trusts https issuers only),
    trusted by the API server as AKS's trusts Entra: only access tokens for
    the API server's own audience. AKS's API server takes tokens whose `aud`
    is its server app (6dae42f8-4368-4678-94ff-3960e28e3630), which the
    sign-in's ID token (aud: the sign-in app) never is; the test provider
    gives ID and access tokens one audience, so its stand-in for "a token
    for the API server" is an access token with a `scp` (asked for with the
    `api://<client>/.default` scope, as Entra's AKS token is with
    `6dae42f8-.../user.read`). Users are named by preferred_username, their
    groups unprefixed. Our chart's data-scientists Role and binding for the
    data-scientists group, as `mfhelm grant` leaves them, in the flow
    namespace."""
    if cluster.authentication_config is None:
        pytest.skip("the API server must be told to trust the test OIDC issuer: "
                    "local control plane only")
    kit = _accesskit()
    try:
        binary = kit.tool_binary("oidc-server")
    except kit.ToolUnavailable as exc:
        pytest.skip(reason=str(exc))
    work = tmp_path_factory.mktemp("argo-signin")
    (work / "pki").mkdir()
    ca = CertificateAuthority(work / "pki", name="mfhelm-test-idp-ca")
    serving = ca.issue("idp", "127.0.0.1", server_ips=("127.0.0.1",), client=False)
    member, outsider = "alice@example.com", "otto@example.com"
    with pytest.MonkeyPatch.context() as mp:
        # The test's own HTTPS calls to the provider (accesskit uses urllib).
        mp.setenv("SSL_CERT_FILE", str(ca.pair.cert))
        idp = kit.start_idp(binary, work / "idp",
                            {member: ["data-scientists"], outsider: ["others"]},
                            ["data-scientists", "others"], tls=(serving.cert, serving.key))
        try:
            values = {**argo.chart_values(namespaces["release"], namespaces["flows"]),
                      "dataScientists": {"groups": [idp.groups["data-scientists"]]}}
            for obj in _chart_objects(values, namespaces["release"], "data-scientists"):
                argo.apply(cluster, obj)
            with cluster.trust_issuer(idp.issuer, ca.pair.cert.read_text(), idp.client_id,
                                      username_claim="preferred_username",
                                      required_claims=("scp",)):
                yield Signin(idp=idp, ca=ca.pair.cert, api_scope=f"api://{idp.client_id}/.default",
                             member=member, outsider=outsider)
        finally:
            kit.stop(idp.proc)


def _chart_objects(values: dict[str, Any], release_namespace: str,
                   component: str) -> list[dict[str, Any]]:
    from chartlib import render

    objs = render([argo.CI_LOCAL_VALUES], values, release=RELEASE, namespace=release_namespace)
    return [o for o in objs
            if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component")
            == component]


def _forbidden_for(body: dict[str, Any], user: str, verb: str) -> bool:
    """The API server's own refusal, naming who it judged."""
    return f'User "{user}" cannot {verb} resource "workflows"' in str(body.get("message"))


def test_member_lists_and_submits_workflows_in_the_flow_namespace(
        cluster: Cluster, server: argo_server.ArgoServer, namespaces: dict[str, str],
        signin: Signin) -> None:
    flows = namespaces["flows"]
    seeded = f"seeded-{uuid.uuid4().hex[:6]}"
    client.CustomObjectsApi(cluster.api_client()).create_namespaced_custom_object(
        **ARGO, namespace=flows, plural="workflows", body=_workflow(seeded))
    token = signin.access_token(signin.member)

    def listed() -> bool:
        status, body = _request(f"{server.url}/api/v1/workflows/{flows}", token)
        assert status == 200, body
        return seeded in {w["metadata"]["name"] for w in body.get("items") or []}

    cluster.wait_for(listed, 30, f"{seeded} in the member's list")
    name = f"by-member-{uuid.uuid4().hex[:6]}"
    status, body = _request(f"{server.url}/api/v1/workflows/{flows}", token,
                            body={"workflow": _workflow(name)})
    assert status == 200, body
    assert body["metadata"]["name"] == name


def test_member_is_refused_in_another_namespace(
        server: argo_server.ArgoServer, namespaces: dict[str, str], signin: Signin) -> None:
    other = namespaces["other"]
    token = signin.access_token(signin.member)
    status, body = _request(f"{server.url}/api/v1/workflows/{other}", token)
    assert status == 403, body
    status, body = _request(f"{server.url}/api/v1/workflows/{other}", token,
                            body={"workflow": _workflow("elsewhere")})
    assert status == 403, body
    assert _forbidden_for(body, signin.member, "create"), body


def test_non_member_can_do_nothing(
        cluster: Cluster, server: argo_server.ArgoServer, namespaces: dict[str, str],
        signin: Signin) -> None:
    flows = namespaces["flows"]
    token = signin.access_token(signin.outsider)
    status, body = _request(f"{server.url}/api/v1/workflows/{flows}", token)
    assert status == 403, body
    status, body = _request(f"{server.url}/api/v1/workflows/{flows}", token,
                            body={"workflow": _workflow("outsider")})
    assert status == 403, body
    # Refused by the API server as the outsider, though the server's own
    # account may create workflows there.
    assert _forbidden_for(body, signin.outsider, "create"), body
    assert cluster.service_account_can(server.namespace, server.service_account, "create",
                                       "workflows", group="argoproj.io", namespace=flows)


def test_member_acts_with_their_own_rights_not_the_servers(
        cluster: Cluster, server: argo_server.ArgoServer, namespaces: dict[str, str],
        signin: Signin) -> None:
    """With every right of the server's account in the flow namespace taken
    away, the member still submits a workflow there: the call was theirs."""
    flows = namespaces["flows"]
    binding = next(o for o in _chart_objects(
        argo.chart_values(namespaces["release"], flows), namespaces["release"], "argo")
        if o["kind"] == "RoleBinding" and o["metadata"]["namespace"] == flows
        and o["metadata"]["name"].endswith("-argo-server"))
    rbac = cluster.rbac()
    rbac.delete_namespaced_role_binding(binding["metadata"]["name"], flows)
    try:
        cluster.wait_for(lambda: not cluster.service_account_can(
            server.namespace, server.service_account, "create", "workflows",
            group="argoproj.io", namespace=flows), 30, "the server's account to lose its rights")
        name = f"own-rights-{uuid.uuid4().hex[:6]}"
        status, body = _request(f"{server.url}/api/v1/workflows/{flows}",
                                signin.access_token(signin.member),
                                body={"workflow": _workflow(name)})
        assert status == 200, body
        got = client.CustomObjectsApi(cluster.api_client()).get_namespaced_custom_object(
            **ARGO, namespace=flows, plural="workflows", name=name)
        assert got["metadata"]["name"] == name
    finally:
        argo.apply(cluster, binding)


def test_the_sign_ins_id_token_is_not_a_kubernetes_credential(
        server: argo_server.ArgoServer, namespaces: dict[str, str], signin: Signin) -> None:
    """On AKS the sign-in's ID token is for the sign-in app, not the API
    server: forwarded to Argo it gets nobody anywhere."""
    tokens = signin.idp.token(signin.member, scope=signin.api_scope)
    status, body = _request(f"{server.url}/api/v1/workflows/{namespaces['flows']}",
                            tokens["id_token"])
    assert status == 401, body
    # ... while the access token of the same sign-in is.
    status, body = _request(f"{server.url}/api/v1/workflows/{namespaces['flows']}",
                            tokens["access_token"])
    assert status == 200, body


# --- through the sign-in proxy, as the chart configures it --------------------------

def _chartproxy() -> ModuleType:
    _accesskit()
    if "chartproxy" not in sys.modules:
        spec = importlib.util.spec_from_file_location("chartproxy", ACCESS / "chartproxy.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules["chartproxy"] = module
        spec.loader.exec_module(module)
    return sys.modules["chartproxy"]


@pytest.fixture(scope="module")
def proxy(server: argo_server.ArgoServer, signin: Signin,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """oauth2-proxy v7.15.6 with the flags and alpha config our chart renders
    for sign-in on the local profile (tests/access/chartproxy.py), every
    route pointed at this Argo server; `access.scope` asks for the API
    server's scope too, as the entra-id default asks for AKS's. The
    data-scientists group and `others` (as access.adminGroups) get through
    the sign-in; only the first holds Kubernetes rights here."""
    kit, chartproxy = _accesskit(), _chartproxy()
    try:
        binary = kit.tool_binary("oauth2-proxy")
    except kit.ToolUnavailable as exc:
        pytest.skip(reason=str(exc))
    work = tmp_path_factory.mktemp("argo-proxy")
    chart = chartproxy.signin_proxy(
        signin.idp, server.url, work / "chart",
        {"adminGroups": ["others"], "dataScientists": ["data-scientists"]},
        values={"access": {"scope": f"openid email profile groups {signin.api_scope}",
                           # As on entra-id: the access token is the credential
                           # the API server takes (the test issuer's are JWTs).
                           "forwardToken": "access_token"}})
    # The pod's two containers: the authorize one first, then the sign-in one in
    # front of it. Both reach the provider over HTTPS: Go reads SSL_CERT_FILE.
    authorize = chart.sidecar
    assert authorize is not None
    inner = kit.start_proxy(binary, work / "authorize", authorize.args,
                            {**authorize.env, "SSL_CERT_FILE": str(signin.ca)},
                            port=authorize.port)
    try:
        started = kit.start_proxy(binary, work / "run", chart.args,
                                  {**chart.env, "SSL_CERT_FILE": str(signin.ca)},
                                  port=chart.port)
        try:
            yield started.url
        finally:
            kit.stop(started.proc)
    finally:
        kit.stop(inner.proc)


def _sign_in(proxy: str, signin: Signin, user: str) -> str:
    """Sign in through the proxy as a browser does (the provider's login
    form posted over HTTP); returns the Cookie header the browser then sends.
    Cookies are kept by hand: the chart's are Secure, which urllib's jar
    keeps from http://127.0.0.1."""
    kit = signin.idp
    jar: dict[str, str] = {}

    def get(url: str, data: dict[str, str] | None = None) -> str:
        headers = {"Accept": "text/html"}
        if url.startswith(proxy) and jar:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in jar.items())
        resp = _accesskit().http(url, data=data, headers=headers)
        if url.startswith(proxy):
            for cookie in resp.headers.get_all("Set-Cookie") or []:
                name, _, value = cookie.split(";", 1)[0].partition("=")
                jar[name] = value
        assert resp.status in (302, 303), (url, resp.status, resp.text[:500])
        return urllib.parse.urljoin(url, resp.headers["Location"])

    login = get(get(f"{proxy}/oauth2/start?rd=/argo/"))
    request_id = urllib.parse.parse_qs(urllib.parse.urlparse(login).query)["authRequestID"][0]
    callback = get(f"{kit.issuer}/login/username",
                   {"id": request_id, "username": user, "password": kit.users[user].password})
    landing = get(get(callback))
    assert landing == f"{proxy}/argo/", landing
    return "; ".join(f"{k}={v}" for k, v in jar.items())


def _through(proxy: str, path: str, cookie: str,
             body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Cookie": cookie, "Accept": "application/json"}
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    req = urllib.request.Request(f"{proxy}{path}", data=data, headers=headers,
                                 method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text or b"{}")
        except json.JSONDecodeError:
            return exc.code, {"message": text.decode(errors="replace")}


def test_signed_in_member_uses_argo_under_argo_with_no_second_login(
        proxy: str, namespaces: dict[str, str], signin: Signin) -> None:
    cookie = _sign_in(proxy, signin, signin.member)
    flows = namespaces["flows"]
    status, body = _through(proxy, f"/argo/api/v1/workflows/{flows}", cookie)
    assert status == 200, body
    name = f"via-proxy-{uuid.uuid4().hex[:6]}"
    status, body = _through(proxy, f"/argo/api/v1/workflows/{flows}", cookie,
                            {"workflow": _workflow(name)})
    assert status == 200, body
    status, body = _through(proxy, f"/argo/api/v1/workflows/{namespaces['other']}", cookie,
                            {"workflow": _workflow("elsewhere")})
    assert status == 403 and _forbidden_for(body, signin.member, "create"), body


def test_signed_in_user_without_rights_can_do_nothing_through_the_proxy(
        proxy: str, namespaces: dict[str, str], signin: Signin) -> None:
    cookie = _sign_in(proxy, signin, signin.outsider)
    flows = namespaces["flows"]
    status, body = _through(proxy, f"/argo/api/v1/workflows/{flows}", cookie)
    assert status == 403, body
    status, body = _through(proxy, f"/argo/api/v1/workflows/{flows}", cookie,
                            {"workflow": _workflow("outsider")})
    assert status == 403 and _forbidden_for(body, signin.outsider, "create"), body
