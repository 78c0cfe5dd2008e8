"""The azure profile's sign-in: oauth2-proxy's `entra-id` provider as the
chart configures it, with no client secret anywhere. The proxy redeems codes
with its workload-identity token (AZURE_FEDERATED_TOKEN_FILE, a projected
service-account token), and the test provider accepts that token only as the
app's federated credential does: issuer, subject
system:serviceaccount:<namespace>:<release>-signin, audience
api://AzureADTokenExchange (tests/tools/gobuild/oidc-server). Only the
issuer URL is the test's (the chart takes only https://login.microsoftonline.com
ones), with the in-cluster addresses and mounted files as in chartproxy.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import accesskit
import pytest
from accesskit import Idp, Upstream, WorkloadIdentity, http
from chartproxy import NAMESPACE, RELEASE, get, render_signin, signin_proxy

ALLOWED = {"adminGroups": ["admins"], "dataScientists": ["data-scientists"]}
MEMBER, OUTSIDER = "alice@example.com", "olga@example.com"
SUBJECT = f"system:serviceaccount:{NAMESPACE}:{RELEASE}-signin"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> WorkloadIdentity:
    return WorkloadIdentity(tmp_path_factory.mktemp("aks"))


@pytest.fixture(scope="module")
def entra(start_idp: Callable[..., Idp], cluster: WorkloadIdentity) -> Idp:
    return start_idp(federated=(cluster, SUBJECT))


def _proxy(entra: Idp, upstream: Upstream, start_proxy, workdir: Path, token: Path) -> str:
    chart = signin_proxy(entra, upstream.url, workdir, ALLOWED, provider="entra-id",
                         federated_token_file=token)
    assert "--client-secret" not in " ".join(chart.args)
    assert "clientSecret" not in str(chart.config)
    return start_proxy(chart.args, chart.env, port=chart.port)


@pytest.fixture
def proxy(entra, cluster, upstream, start_proxy, tmp_path) -> str:
    return _proxy(entra, upstream, start_proxy, tmp_path / "chart",
                  cluster.token_file(SUBJECT))


def test_the_proxys_service_account_is_the_federated_credentials_subject(entra):
    objs = render_signin(entra, ALLOWED, provider="entra-id")
    deployment = get(objs, "Deployment", f"{RELEASE}-signin")
    spec = deployment["spec"]["template"]["spec"]
    account = get(objs, "ServiceAccount", spec["serviceAccountName"])
    assert (f"system:serviceaccount:{deployment['metadata']['namespace']}:"
            f"{account['metadata']['name']}") == SUBJECT
    assert account["metadata"]["annotations"]["azure.workload.identity/client-id"] == (
        entra.client_id)


def test_a_member_signs_in_without_a_client_secret(entra, proxy, upstream, browser):
    accesskit.browser_sign_in(browser, entra, MEMBER, f"{proxy}/runs")

    assert browser.current_url == f"{proxy}/runs"
    path, headers = upstream.requests[-1]
    assert path == "/runs"
    # entra-id names users by preferred_username (the UPN).
    assert headers["X-Forwarded-User"] == MEMBER
    assert headers["X-Forwarded-Email"] == MEMBER
    assert headers["X-Forwarded-Groups"].split(",") == entra.users[MEMBER].groups
    assert "federated client assertion refused" not in entra.log.read_text()


def test_an_outsider_gets_403(entra, proxy, upstream, browser):
    accesskit.browser_sign_in(browser, entra, OUTSIDER, f"{proxy}/")

    assert "403" in browser.title
    assert upstream.requests == []


def test_another_service_accounts_token_cannot_redeem_the_code(entra, cluster, upstream,
                                                               start_proxy, tmp_path, browser):
    stranger = cluster.token_file(f"system:serviceaccount:{NAMESPACE}:someone-else")
    proxy = _proxy(entra, upstream, start_proxy, tmp_path / "chart", stranger)

    accesskit.browser_sign_in(browser, entra, MEMBER, f"{proxy}/")

    assert "500" in browser.title
    assert upstream.requests == []
    assert "federated client assertion refused" in entra.log.read_text()


def test_a_laptops_access_token_passes_and_one_from_another_issuer_does_not(
        entra, proxy, upstream, start_idp):
    mine = entra.token(MEMBER, scope=f"api://{entra.client_id}/.default")["access_token"]
    elsewhere = start_idp()  # another tenant: its own issuer and keys
    theirs = elsewhere.token(MEMBER)["access_token"]

    ok = http(f"{proxy}/metadata/flows", headers={"Authorization": f"Bearer {mine}"})
    refused = http(f"{proxy}/metadata/flows", headers={"Authorization": f"Bearer {theirs}"})

    assert ok.status == 200
    assert ok.json()["headers"]["X-Forwarded-User"] == MEMBER
    assert refused.status in (401, 403)
    assert [p for p, _ in upstream.requests] == ["/flows"]
