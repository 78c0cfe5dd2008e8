"""The HTTPS entry point and the sign-in proxy (templates/signin.yaml).

Given access values, these are the Ingress, the two proxy containers' flags
and alpha configs (`oauth2-proxy` signs in, `authorize` checks the groups
and routes), their account, the NetworkPolicies around them, and the
refusals. The oauth2-proxy facts behind them (read at v7.15.6) are pinned
here:

- `--upstream` routes a path prefix but passes the whole path on (the
  upstream URL's own path is dropped), so routes that lose their prefix
  need the alpha config's `rewriteTarget`, a regular expression `path`.
  Only `$1` works there: the alpha config loader rewrites every `$<digits>`
  to `$1` (normalizeSubstitution) before substituting environment variables
  (tests/access/test_chart_proxy_config.py shows the stripped paths arrive);
  with `--alpha-config` the providers, upstreams and injected headers live
  only in that file (the legacy flags for them are unknown flags there).
- An injected header with `preserveRequestValue: false` deletes every copy
  the client sent (any spelling) before the proxy sets its own; several
  values of one header (groups) are joined with commas.
- `entra-id` with `federatedTokenAuth` needs no client secret and refuses
  to start without AZURE_FEDERATED_TOKEN_FILE (the workload-identity
  webhook sets it on pods labelled azure.workload.identity/use).
- The OIDC provider requires an email in the session; Entra ID's v2 tokens
  carry `email` only optionally, `preferred_username` (the UPN) always.
- The session's user is always the token's `sub` (`oidcConfig.userIDClaim`
  only renames the email claim), so X-Forwarded-User is injected from a
  claim; `oidc` clients need a client secret (`--config-test` refuses one
  without); entra-id reads groups past the 200-group overage from Graph
  with the session's access token (scope `User.Read`) and refreshes
  sessions with the federated token too.
- A proxy keeps no session for a user it refuses, so its 403 page cannot
  name them: the chart's sign-in container checks no group (its
  /oauth2/userinfo answers), the authorize container does
  (tests/access/test_signin_whoami.py).
- Bearer tokens (--skip-jwt-bearer-tokens) are verified against the
  provider's issuer and client id only: a single-tenant issuer keeps other
  tenants out.
- The image is distroless `static:nonroot` (uid/gid 65532), entrypoint
  /bin/oauth2-proxy; `/ping` answers liveness, `/ready` readiness.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import jmespath
import pytest
import yaml
from chartlib import ROOT, SCENARIOS, HelmError, by_kind, get, render

from mfhelm import promises

AZURE = SCENARIOS["azure"]
AZURE_AIRFLOW = SCENARIOS["azure-airflow"]
ARGO_OFF = SCENARIOS["argo-off"]  # azure, entra-id, a TLS Secret, Argo off
LOCAL_SIGNIN = SCENARIOS["local-signin"]  # local, oidc with a client secret, every route

TENANT = "00000000-0000-0000-0000-000000000071"
ISSUER = f"https://login.microsoftonline.com/{TENANT}/v2.0"
APP = "00000000-0000-0000-0000-0000000000a1"
ADMINS = "00000000-0000-0000-0000-0000000000a9"
CERT = "https://acme-kv.vault.azure.net/certificates/metaflow"
ENTRA = {"access": {"enabled": True, "host": "metaflow.example.com",
                    "tls": {"keyVaultCertificateUri": CERT}, "issuerUrl": ISSUER,
                    "clientId": APP, "adminGroups": [ADMINS]}}


def _access(**over) -> dict:
    access = {**ENTRA["access"], **over}
    return {"access": access}


def _with_airflow(values: dict) -> dict:
    """Airflow on behind the sign-in, as mfhelm's values give it (base_url and
    the webserver_config ConfigMap: the chart refuses access without them)."""
    from mfhelm.values import airflow_behind_signin

    return airflow_behind_signin({**values, "airflow": {"enabled": True}})


SIGNIN, AUTHORIZE = "oauth2-proxy", "authorize"  # the pod's two containers
CONFIG = {SIGNIN: "oauth2-proxy.yaml", AUTHORIZE: "authorize.yaml"}


def proxy_container(objs: list[dict], name: str = SIGNIN) -> dict:
    containers = get(objs, "Deployment", "mf-signin")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == [SIGNIN, AUTHORIZE]
    [container] = [c for c in containers if c["name"] == name]
    return container


def alpha_config(objs: list[dict], name: str = AUTHORIZE) -> dict:
    """A container's alpha config; by default the authorize one, which
    holds the groups, the routes and the headers."""
    return yaml.safe_load(get(objs, "ConfigMap", "mf-signin")["data"][CONFIG[name]])


def flags(objs: list[dict], name: str = SIGNIN) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for arg in proxy_container(objs, name)["args"]:
        name_, _, value = arg.partition("=")
        out.setdefault(name_, []).append(value)
    return out


# --- the entry point --------------------------------------------------------------------------


def test_off_by_default_nothing_of_it_renders():
    objs = render([AZURE], release="mf")
    assert not by_kind(objs, "Ingress")
    assert not [o for o in objs if o["metadata"]["name"].startswith("mf-signin")]


def test_one_ingress_sends_every_path_of_the_host_to_the_proxy_with_a_key_vault_certificate():
    objs = render([AZURE], ENTRA, release="mf")
    [ingress] = by_kind(objs, "Ingress")
    assert ingress["metadata"]["name"] == "mf-signin"
    assert ingress["spec"]["ingressClassName"] == "webapprouting.kubernetes.azure.com"
    assert ingress["spec"]["rules"] == [{"host": "metaflow.example.com", "http": {"paths": [
        {"path": "/", "pathType": "Prefix",
         "backend": {"service": {"name": "mf-signin", "port": {"name": "http"}}}}]}}]
    # The add-on's Key Vault integration: the annotation names the
    # certificate, the Secret it syncs into is keyvault-<ingress name>.
    assert ingress["metadata"]["annotations"]["kubernetes.azure.com/tls-cert-keyvault-uri"] == CERT
    assert ingress["spec"]["tls"] == [{"hosts": ["metaflow.example.com"],
                                       "secretName": "keyvault-mf-signin"}]
    service = get(objs, "Service", "mf-signin")
    assert service["spec"]["ports"] == [{"name": "http", "port": 4180, "targetPort": "http",
                                         "protocol": "TCP"}]


def test_a_tls_secret_of_the_users_own_instead_of_key_vault():
    objs = render([ARGO_OFF], release="mf")
    [ingress] = by_kind(objs, "Ingress")
    assert ingress["spec"]["tls"] == [{"hosts": ["metaflow.example.com"],
                                       "secretName": "metaflow-tls"}]
    assert "kubernetes.azure.com/tls-cert-keyvault-uri" not in ingress["metadata"]["annotations"]


def test_extra_ingress_annotations_are_added():
    objs = render([AZURE], _access(ingressAnnotations={"example.com/x": "value"}), release="mf")
    annotations = by_kind(objs, "Ingress")[0]["metadata"]["annotations"]
    assert annotations["example.com/x"] == "value"
    # Large session cookies, and the UI's WebSocket kept open.
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffer-size"] == "16k"
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"


# --- routes -------------------------------------------------------------------------------------


def routes(objs: list[dict]) -> dict[str, dict]:
    return {u["id"]: u for u in alpha_config(objs)["upstreamConfig"]["upstreams"]}


def test_every_route_goes_to_its_backend_and_metadata_and_argo_lose_their_prefix():
    got = routes(render([LOCAL_SIGNIN], release="mf"))
    svc = "metaflow.svc.cluster.local"
    assert got == {
        "ui": {"id": "ui", "path": "/", "uri": f"http://mf-ui.{svc}:3000"},
        "ui-api": {"id": "ui-api", "path": "/api/", "uri": f"http://mf-ui-backend.{svc}:8083"},
        "metadata": {"id": "metadata", "path": "^/metadata(?:/(.*))?$", "rewriteTarget": "/$1",
                     "uri": f"http://mf-metadata.{svc}:8080"},
        # argo-helm 1.0.18 (as 0.45.20): <release>-argo-workflows-server on servicePort 2746.
        "argo": {"id": "argo", "path": "^/argo(?:/(.*))?$", "rewriteTarget": "/$1",
                 "uri": f"http://mf-argo-workflows-server.{svc}:2746"},
        # Airflow chart 1.16.0: <release>-webserver on ports.airflowUI; its
        # base_url keeps the /airflow prefix, so the path is passed whole.
        "airflow": {"id": "airflow", "path": "/airflow/", "uri": f"http://mf-webserver.{svc}:8080"},
    }


@pytest.mark.parametrize("path, backend_path", [
    ("/metadata/flows/HelloFlow/runs", "/flows/HelloFlow/runs"),
    ("/metadata/", "/"),
    ("/metadata", "/"),
    ("/argo/api/v1/workflows/metaflow-flows", "/api/v1/workflows/metaflow-flows"),
])
def test_the_rewrite_strips_the_prefix_as_go_regexp_would(path, backend_path):
    # Go's regexp.ReplaceAllString with `$1`; Python's re with `\1` is the
    # same for these patterns (no named groups, no `$1x` ambiguity). An
    # unmatched optional group is empty in both.
    for u in routes(render([LOCAL_SIGNIN], release="mf")).values():
        if "rewriteTarget" in u and re.search(u["path"], path):
            target = u["rewriteTarget"].replace("$1", "\\g<1>")
            assert re.sub(u["path"], target, path) == backend_path
            return
    pytest.fail(f"no rewriting route matches {path}")


def test_argo_and_airflow_routes_only_when_they_run():
    got = routes(render([ARGO_OFF], release="mf"))
    assert set(got) == {"ui", "ui-api", "metadata"}
    got = routes(render([AZURE_AIRFLOW], _with_airflow(_access()), release="mf"))
    assert set(got) == {"ui", "ui-api", "metadata", "argo", "airflow"}


def test_without_the_ui_only_the_apis_are_routed():
    got = routes(render([AZURE], {**_access(), "ui": {"enabled": False}}, release="mf"))
    assert set(got) == {"metadata", "argo"}


# --- who gets in, and what the backends learn ----------------------------------------------------


def test_entra_id_signs_in_with_workload_identity_and_no_client_secret():
    objs = render([AZURE], ENTRA, release="mf")
    [provider] = alpha_config(objs)["providers"]
    assert provider["provider"] == "entra-id"
    assert provider["clientID"] == APP
    assert provider["microsoftEntraIDConfig"] == {"federatedTokenAuth": True,
                                                  "allowedTenants": [TENANT]}
    assert provider["oidcConfig"]["issuerURL"] == ISSUER
    # Entra's v2 endpoint refuses a `groups` scope, and an access token
    # serves one resource; its tokens always carry preferred_username,
    # `email` only optionally. AKS's server app's scope makes the access
    # token one AKS's API server accepts (the Argo server acts with it;
    # tests/cluster/test_e2e_argo_server_auth.py), so Graph's User.Read
    # cannot be asked for too; offline_access keeps the session refreshable.
    assert provider["scope"] == (
        "openid email profile offline_access 6dae42f8-4368-4678-94ff-3960e28e3630/user.read")
    assert provider["oidcConfig"]["emailClaim"] == "preferred_username"
    # Not set: in v7.15.6 it only renames the email claim (the proxy's own
    # user is always `sub`; X-Forwarded-User takes access.userClaim instead).
    assert "userIDClaim" not in provider["oidcConfig"]
    assert provider["allowedGroups"] == [ADMINS]
    # The sign-in container: the same provider, signing in anyone of the
    # tenant (the authorize container checks the groups).
    [signin] = alpha_config(objs, SIGNIN)["providers"]
    assert signin == {k: v for k, v in provider.items() if k != "allowedGroups"}
    deployment = get(objs, "Deployment", "mf-signin")
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert pod["spec"]["serviceAccountName"] == "mf-signin"
    account = get(objs, "ServiceAccount", "mf-signin")
    assert account["metadata"]["annotations"]["azure.workload.identity/client-id"] == APP
    # No client secret anywhere: not in the config, the flags, the
    # environment or a mounted Secret (only the cookie secret is mounted).
    text = yaml.safe_dump(objs)
    assert "clientSecret" not in text and "client-secret" not in text
    assert [v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v] == [
        "mf-signin-cookie"]
    # The error page comes from the chart's own file, byte for byte.
    page = (ROOT / "charts/metaflow/files/signin-templates/error.html").read_text()
    assert get(objs, "ConfigMap", "mf-signin")["data"]["error.html"] == page
    assert {"name": "templates", "configMap": {"name": "mf-signin", "items": [
        {"key": "error.html", "path": "error.html"}]}} in pod["spec"]["volumes"]
    assert "env" not in proxy_container(objs) and "env" not in proxy_container(objs, AUTHORIZE)


def test_oidc_reads_its_client_secret_from_the_named_secret():
    objs = render([LOCAL_SIGNIN], release="mf")
    [provider] = alpha_config(objs)["providers"]
    assert provider["provider"] == "oidc"
    assert provider["clientSecretFile"] == "/etc/oauth2-proxy/client/client-secret"
    assert provider["scope"] == "openid email profile offline_access groups"
    assert provider["oidcConfig"]["emailClaim"] == "email"
    assert "userIDClaim" not in provider["oidcConfig"]
    assert "microsoftEntraIDConfig" not in provider
    user = [h for h in alpha_config(objs)["injectRequestHeaders"] if h["name"] == "X-Forwarded-User"]
    assert user[0]["values"] == [{"claimSource": {"claim": "preferred_username"}}]
    pod = get(objs, "Deployment", "mf-signin")["spec"]["template"]
    assert {"name": "client", "secret": {"secretName": "metaflow-signin-client"}} in pod["spec"]["volumes"]
    for name in (SIGNIN, AUTHORIZE):
        assert {"name": "client", "mountPath": "/etc/oauth2-proxy/client", "readOnly": True} in (
            proxy_container(objs, name)["volumeMounts"])
    assert "azure.workload.identity/use" not in pod["metadata"]["labels"]
    assert "annotations" not in get(objs, "ServiceAccount", "mf-signin")["metadata"]


def test_oidc_without_a_client_secret_is_refused():
    values = yaml.safe_load(LOCAL_SIGNIN.read_text())
    values["access"]["clientSecretName"] = ""
    with pytest.raises(HelmError, match="access.provider oidc needs access.clientSecretName"):
        render([], values, release="mf")


def test_allowed_groups_are_admins_data_scientists_and_viewers_once_each():
    values = {**_access(adminGroups=["g-admin", "g-ds"]),
              "dataScientists": {"groups": ["g-ds", "g-ds2"], "users": []}}
    [provider] = alpha_config(render([AZURE], values, release="mf"))["providers"]
    assert provider["allowedGroups"] == ["g-admin", "g-ds", "g-ds2"]


def test_backends_get_identity_headers_the_client_cannot_send():
    headers = {h["name"]: h for h in alpha_config(render([AZURE], ENTRA, release="mf"))["injectRequestHeaders"]}
    claims = {name: h["values"][0]["claimSource"]["claim"] for name, h in headers.items()}
    assert claims == {"X-Forwarded-User": "preferred_username", "X-Forwarded-Email": "email",
                      "X-Forwarded-Groups": "groups",
                      "X-Forwarded-Preferred-Username": "preferred_username",
                      "Authorization": "access_token"}
    assert headers["Authorization"]["values"][0]["claimSource"]["prefix"] == "Bearer "
    assert all(h["preserveRequestValue"] is False for h in headers.values())


def test_the_signin_container_passes_everything_to_the_authorize_one_with_the_token():
    config = alpha_config(render([AZURE], ENTRA, release="mf"), SIGNIN)
    assert config["server"] == {"bindAddress": "0.0.0.0:4180"}
    assert config["upstreamConfig"] == {"upstreams": [
        {"id": "authorize", "path": "/", "uri": "http://127.0.0.1:4181"}]}
    # The access token of the session (a laptop's own bearer token), never one
    # the client sent: the only identity the authorize container believes, and
    # what it forwards (the Argo server acts with it; an ID token could not).
    assert config["injectRequestHeaders"] == [{
        "name": "Authorization", "preserveRequestValue": False,
        "values": [{"claimSource": {"claim": "access_token", "prefix": "Bearer "}}]}]
    assert alpha_config(render([AZURE], ENTRA, release="mf"))["server"] == {
        "bindAddress": "0.0.0.0:4181"}
    # On oidc the ID token by default (a generic issuer's access token may be
    # opaque); access.forwardToken picks, and nothing else is taken.
    local = alpha_config(render([LOCAL_SIGNIN], release="mf"), SIGNIN)
    assert local["injectRequestHeaders"][0]["values"] == [
        {"claimSource": {"claim": "id_token", "prefix": "Bearer "}}]
    chosen = alpha_config(render([LOCAL_SIGNIN], {"access": {"forwardToken": "access_token"}},
                                 release="mf"), SIGNIN)
    assert chosen["injectRequestHeaders"][0]["values"][0]["claimSource"]["claim"] == \
        "access_token"
    with pytest.raises(HelmError):
        render([LOCAL_SIGNIN], {"access": {"forwardToken": "refresh_token"}}, release="mf")


def test_authorize_flags():
    objs = render([AZURE], ENTRA, release="mf")
    assert flags(objs, AUTHORIZE) == {
        "--alpha-config": ["/etc/oauth2-proxy/authorize.yaml"],
        # Refusing a user it clears its own session cookie: never the
        # sign-in container's.
        "--cookie-name": ["_oauth2_proxy_authorize"],
        "--reverse-proxy": ["true"],
        "--cookie-secret-file": ["/etc/oauth2-proxy/cookie/cookie-secret"],
        "--email-domain": ["*"],
        # It only ever sees bearer tokens; an invalid one is a 403.
        "--skip-jwt-bearer-tokens": ["true"],
        "--bearer-token-login-fallback": ["false"],
        "--silence-ping-logging": ["true"],
        "--custom-templates-dir": ["/etc/oauth2-proxy/templates"],
        # On entra-id the session's access token is AKS's: a v1 token from the
        # tenant's v1 issuer, trusted for that one audience only.
        "--extra-jwt-issuers": [f"https://sts.windows.net/{TENANT}/="
                                "6dae42f8-4368-4678-94ff-3960e28e3630"],
    }
    # On oidc the session's access token is the issuer's own, for the client.
    assert "--extra-jwt-issuers" not in flags(render([LOCAL_SIGNIN], release="mf"), AUTHORIZE)


def test_proxy_flags():
    objs = render([AZURE], ENTRA, release="mf")
    container = proxy_container(objs)
    assert container["name"] == "oauth2-proxy"
    assert "command" not in container  # the image's entrypoint, /bin/oauth2-proxy
    assert flags(objs) == {
        "--alpha-config": ["/etc/oauth2-proxy/oauth2-proxy.yaml"],
        "--cookie-secret-file": ["/etc/oauth2-proxy/cookie/cookie-secret"],
        "--cookie-secure": ["true"],
        "--cookie-samesite": ["lax"],
        "--cookie-expire": ["12h"],
        # The session's refresh token is redeemed this often: fresh tokens for
        # the backends, and groups read again.
        "--cookie-refresh": ["30m"],
        # Everyone the issuer signs in passes the email check; the groups decide.
        "--email-domain": ["*"],
        "--redirect-url": ["https://metaflow.example.com/oauth2/callback"],
        "--whitelist-domain": ["metaflow.example.com"],
        "--reverse-proxy": ["true"],
        "--skip-provider-button": ["true"],
        # Laptops send Entra access tokens for the app.
        "--skip-jwt-bearer-tokens": ["true"],
        "--bearer-token-login-fallback": ["false"],
        # An API client gets 401, not a redirect to a login page.
        "--api-route": ["^/metadata(/|$)"],
        "--silence-ping-logging": ["true"],
        # The chart's error page (files/signin-templates/error.html).
        "--custom-templates-dir": ["/etc/oauth2-proxy/templates"],
    }


def test_proxy_pod_runs_as_the_images_nonroot_user_read_only_on_the_services_pool():
    objs = render([AZURE], ENTRA, release="mf")
    spec = get(objs, "Deployment", "mf-signin")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsUser"] == 65532
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    assert spec["nodeSelector"] == {"mfhelm.io/pool": "services"}
    for name, port in ((SIGNIN, 4180), (AUTHORIZE, 4181)):
        container = proxy_container(objs, name)
        assert container["image"] == "quay.io/oauth2-proxy/oauth2-proxy:v7.15.6"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["livenessProbe"]["httpGet"] == {"path": "/ping", "port": port}
        assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": port}
        assert container["ports"] == [{"name": "http" if name == SIGNIN else "authorize",
                                       "containerPort": port, "protocol": "TCP"}]


def test_the_proxy_image_is_the_version_the_tests_build():
    tools = tomllib.loads((ROOT / "tools.toml").read_text())
    values = yaml.safe_load((ROOT / "charts/metaflow/values.yaml").read_text())
    assert values["access"]["proxy"]["image"]["tag"] == tools["go"]["oauth2-proxy"]["version"]


def test_the_cookie_secret_is_32_characters_and_rolls_nothing_when_rendered_again():
    objs = render([AZURE], ENTRA, release="mf")
    secret = get(objs, "Secret", "mf-signin-cookie")
    value = base64.b64decode(secret["data"]["cookie-secret"])
    assert len(value) == 32 and value.isalnum()
    # The pods roll on config changes only, not on a fresh cookie secret
    # (which `helm template` makes on every render; a release keeps its own).
    again = render([AZURE], ENTRA, release="mf")
    annotations = lambda o: get(o, "Deployment", "mf-signin")["spec"]["template"]["metadata"]["annotations"]  # noqa: E731
    assert annotations(objs) == annotations(again)
    changed = render([AZURE], _access(adminGroups=[ADMINS, "another"]), release="mf")
    assert annotations(changed) != annotations(objs)


# --- NetworkPolicies ---------------------------------------------------------------------------

SIGNIN_PODS = [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "metaflow",
                                                "app.kubernetes.io/instance": "mf",
                                                "app.kubernetes.io/component": "signin"}}}]


def _from(objs, name):
    rules = get(objs, "NetworkPolicy", name)["spec"]["ingress"]
    return [peer for rule in rules for peer in rule["from"]]


def _namespaces(peers):
    return [p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in peers]


def test_with_access_only_the_proxy_faces_the_ingress_controller():
    objs = render([LOCAL_SIGNIN], release="mf")
    assert _namespaces(_from(objs, "mf-signin")) == ["app-routing-system"]
    for name in ("mf-ui-static", "mf-ui-backend", "mf-argo-server", "mf-airflow-webserver"):
        assert _from(objs, name) == SIGNIN_PODS, name
    # In-cluster clients keep the metadata service (flow pods, the UI
    # backend); the ingress controller's namespace does not.
    assert _namespaces(_from(objs, "mf-metadata")) == ["metaflow", "metaflow-flows"]


def test_without_access_the_policies_are_as_before():
    objs = render([AZURE], release="mf")
    assert _namespaces(_from(objs, "mf-ui-static")) == ["metaflow", "app-routing-system"]
    assert _namespaces(_from(objs, "mf-argo-server")) == ["app-routing-system"]


# --- the published config and notes --------------------------------------------------------------


def test_the_published_config_has_the_https_urls_and_pods_keep_the_internal_one():
    import json
    objs = render([AZURE], ENTRA, release="mf")
    config = json.loads(get(objs, "ConfigMap", "mf-metaflow-config")["data"]["config.json"])
    assert config["METAFLOW_SERVICE_URL"] == "https://metaflow.example.com/metadata"
    assert config["METAFLOW_UI_URL"] == "https://metaflow.example.com/"
    assert config["METAFLOW_ARGO_WORKFLOWS_UI_URL"] == "https://metaflow.example.com/argo"
    assert config["METAFLOW_SERVICE_INTERNAL_URL"] == "http://mf-metadata.metaflow.svc.cluster.local:8080"
    static = get(objs, "Deployment", "mf-ui-static")
    assert jmespath.search("spec.template.spec.containers[0].env[?name=='METAFLOW_SERVICE'].value | [0]",
                           static) == "/api"


def test_notes_print_the_https_urls():
    helm = shutil.which("helm")
    from chartlib import renderable_chart
    done = subprocess.run([helm, "install", "mf", str(renderable_chart()), "--dry-run=client",
                           "-n", "metaflow", "-f", str(LOCAL_SIGNIN)],
                          capture_output=True, text=True, check=True)
    notes = done.stdout[done.stdout.index("NOTES:"):]
    for url in ("https://metaflow.localtest.me/", "https://metaflow.localtest.me/metadata",
                "https://metaflow.localtest.me/argo/", "https://metaflow.localtest.me/airflow/"):
        assert url in notes
    assert "http://localhost:3000" not in notes


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("values, message", [
    (_access(host=""), "access.enabled needs access.host"),
    (_access(tls={"keyVaultCertificateUri": "", "secretName": ""}),
     "access.enabled needs a certificate for access.host"),
    (_access(tls={"keyVaultCertificateUri": CERT, "secretName": "x"}),
     "access.tls: set keyVaultCertificateUri or secretName, not both"),
    (_access(issuerUrl=""), "access.enabled needs access.issuerUrl"),
    (_access(clientId=""), "access.enabled needs access.clientId"),
    (_access(clientSecretName="s"), "access.clientSecretName is for the oidc provider only"),
    (_access(issuerUrl="https://idp.example.com"), "is not an Entra ID v2.0 issuer"),
    (_access(issuerUrl=f"https://sts.windows.net/{TENANT}/"), "is not an Entra ID v2.0 issuer"),
    (_access(issuerUrl="https://login.microsoftonline.com/common/v2.0"),
     "access.issuerUrl must name one tenant, not common"),
    (_access(issuerUrl="https://login.microsoftonline.us/organizations/v2.0"),
     "access.issuerUrl must name one tenant, not organizations"),
    (_access(provider="oidc", issuerUrl="http://idp.example.com"), "must be an https:// URL"),
    (_access(adminGroups=[]), "access.enabled needs at least one allowed group"),
    (_access(proxy={"extraArgs": ["--upstream=http://elsewhere/"]}),
     "access.proxy.extraArgs: --upstream is refused: the chart sets it"),
    (_access(proxy={"extraArgs": ["--cookie-secure=false"]}),
     "access.proxy.extraArgs: --cookie-secure is refused: the chart sets it"),
    ({"ingress": {"enabled": True}}, "ingress: was replaced by access:"),
])
def test_bad_access_values_are_refused_with_one_line(values, message):
    with pytest.raises(HelmError) as err:
        render([AZURE], values, release="mf")
    # One line of helm's (its --debug hint follows).
    assert message in str(err.value).splitlines()[0]


def test_plain_http_issuer_is_allowed_for_oidc_on_the_local_profile_only():
    values = yaml.safe_load(LOCAL_SIGNIN.read_text())
    values["access"]["issuerUrl"] = "http://127.0.0.1:5556"
    [provider] = alpha_config(render([], values, release="mf"))["providers"]
    assert provider["oidcConfig"]["issuerURL"] == "http://127.0.0.1:5556"


def test_a_sovereign_clouds_entra_issuer_is_taken():
    issuer = f"https://login.microsoftonline.us/{TENANT}/v2.0"
    [provider] = alpha_config(render([AZURE], _access(issuerUrl=issuer), release="mf"))["providers"]
    assert provider["oidcConfig"]["issuerURL"] == issuer


def test_harmless_extra_flags_pass_to_both_containers():
    objs = render([AZURE], _access(proxy={"extraArgs": ["--cookie-csrf-per-request=true"]}),
                  release="mf")
    for name in (SIGNIN, AUTHORIZE):
        assert flags(objs, name)["--cookie-csrf-per-request"] == ["true"]


# --- the real proxy takes the rendered configuration ---------------------------------------------

OAUTH2_PROXY = shutil.which("oauth2-proxy")


def _config_test(objs: list[dict], tmp: Path, env: dict[str, str],
                 name: str = SIGNIN) -> subprocess.CompletedProcess:
    """`oauth2-proxy --config-test` with a container's rendered flags and
    files, the mounted paths moved under `tmp`."""
    assert OAUTH2_PROXY
    alpha = alpha_config(objs, name)
    for provider in alpha["providers"]:
        if "clientSecretFile" in provider:
            provider["clientSecretFile"] = str(tmp / "client-secret")
            (tmp / "client-secret").write_text("s3cret")
    (tmp / "alpha.yaml").write_text(yaml.safe_dump(alpha))
    cookie = base64.b64decode(get(objs, "Secret", "mf-signin-cookie")["data"]["cookie-secret"])
    (tmp / "cookie").write_bytes(cookie)
    (tmp / "templates").mkdir(exist_ok=True)
    (tmp / "templates" / "error.html").write_text(
        get(objs, "ConfigMap", "mf-signin")["data"]["error.html"])
    args = [a.replace(f"/etc/oauth2-proxy/{CONFIG[name]}", str(tmp / "alpha.yaml"))
             .replace("/etc/oauth2-proxy/cookie/cookie-secret", str(tmp / "cookie"))
             .replace("/etc/oauth2-proxy/templates", str(tmp / "templates"))
            for a in proxy_container(objs, name)["args"]]
    return subprocess.run([OAUTH2_PROXY, *args, "--config-test"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", **env}, timeout=60)


@pytest.mark.skipif(not OAUTH2_PROXY, reason="oauth2-proxy not built (run `make test-tools`)")
@pytest.mark.parametrize("name", [SIGNIN, AUTHORIZE])
def test_oauth2_proxy_accepts_the_entra_id_configuration_with_a_federated_token(tmp_path, name):
    objs = render([AZURE_AIRFLOW], _with_airflow(_access()), release="mf")
    token = tmp_path / "token"
    token.write_text("projected-token")
    done = _config_test(objs, tmp_path, {"AZURE_FEDERATED_TOKEN_FILE": str(token)}, name)
    assert done.returncode == 0, done.stderr
    assert "configuration is valid" in done.stdout
    # Without the workload-identity webhook's variable it refuses to start
    # (the webhook sets it in every container of the pod).
    done = _config_test(objs, tmp_path, {}, name)
    assert done.returncode != 0
    assert "AZURE_FEDERATED_TOKEN_FILE variable is not set" in done.stderr


@pytest.mark.skipif(not OAUTH2_PROXY, reason="oauth2-proxy not built (run `make test-tools`)")
def test_oauth2_proxy_accepts_the_oidc_configuration_and_needs_its_client_secret(tmp_path):
    objs = render([LOCAL_SIGNIN], release="mf")
    for name in (SIGNIN, AUTHORIZE):
        done = _config_test(objs, tmp_path, {}, name)
        assert done.returncode == 0, done.stderr
    # Why the chart requires clientSecretName for oidc.
    cm = get(objs, "ConfigMap", "mf-signin")
    alpha = yaml.safe_load(cm["data"]["oauth2-proxy.yaml"])
    del alpha["providers"][0]["clientSecretFile"]
    cm["data"]["oauth2-proxy.yaml"] = yaml.safe_dump(alpha)
    done = _config_test(objs, tmp_path, {})
    assert done.returncode != 0
    assert "missing setting: client-secret or client-secret-file" in done.stderr


def _chart_flags() -> list[str]:
    tpl = (ROOT / "charts/metaflow/templates/_helpers.tpl").read_text()
    block = tpl[tpl.index('define "metaflow.signinChartFlags"'):]
    block = block[:block.index("{{- end -}}")]
    return re.findall(r'"(--[a-z0-9-]+)"', block)


def test_flags_that_open_the_proxy_are_mfhelms_promise_not_the_charts():
    # A plain `helm install` may take them (like networkPolicy.enabled=false);
    # mfhelm refuses them unless --allow-override (tests/unit/test_access.py).
    assert not set(_chart_flags()) & set(promises.SIGNIN_OPENING_FLAGS)
    objs = render([AZURE], _access(proxy={"extraArgs": ["--skip-auth-route=^/public/"]}),
                  release="mf")
    assert flags(objs)["--skip-auth-route"] == ["^/public/"]


@pytest.mark.skipif(not OAUTH2_PROXY, reason="oauth2-proxy not built (run `make test-tools`)")
def test_every_flag_named_is_one_oauth2_proxy_knows():
    # The legacy flag set (what `--help` lists) holds every flag; with
    # --alpha-config the provider and upstream ones are unknown flags.
    done = subprocess.run([OAUTH2_PROXY, "--help"], capture_output=True, text=True, timeout=60)
    known = set(re.findall(r"^\s+(--[a-z0-9-]+)", done.stdout + done.stderr, re.M))
    assert "--skip-auth-route" in known  # the listing is what this test reads
    named = set(_chart_flags()) | set(promises.SIGNIN_OPENING_FLAGS)
    assert named - known == set()


def test_rewrite_targets_use_only_dollar_one():
    # oauth2-proxy v7.15.6 turns `$2` into `$1` when it loads the file.
    for route in routes(render([LOCAL_SIGNIN], release="mf")).values():
        if "rewriteTarget" in route:
            assert re.findall(r"\$\d+", route["rewriteTarget"]) == ["$1"], route
