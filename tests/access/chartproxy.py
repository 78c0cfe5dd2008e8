"""oauth2-proxy configured as the chart configures it.

`signin_proxy()` renders the chart (the real helm, tests/chart/chartlib.py)
with sign-in on, takes the proxy container's args and the alpha config from
its ConfigMap, and changes only what points into the cluster or at files
the pod mounts: the backends' in-cluster addresses (all become the test's
upstream), the listen address, the host (https://<host> becomes the proxy's
http://127.0.0.1:<port>; cookies stay Secure: Chromium keeps them for
http://127.0.0.1, a potentially trustworthy origin), the mounted files (the
alpha config, the cookie secret, the client secret) and, for entra-id, the
issuer (the chart accepts only https ones there). Anything else in the args
that names the host fails here, so a new flag is looked at, not silently
kept or dropped.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from accesskit import Idp, free_port
from chartlib import SCENARIOS, get, render

RELEASE, NAMESPACE = "mf", "metaflow"
HOST = "metaflow.localtest.me"
ALPHA, COOKIE = "/etc/oauth2-proxy/oauth2-proxy.yaml", "/etc/oauth2-proxy/cookie/cookie-secret"
TEMPLATES = "/etc/oauth2-proxy/templates"
IN_CLUSTER = re.compile(rf"^http://[a-z0-9-]+\.{NAMESPACE}\.svc\.cluster\.local:\d+$")


@dataclass
class ChartProxy:
    args: list[str]
    env: dict[str, str]
    port: int
    config: dict[str, Any]       # the alpha config as the test runs it
    alpha: Path                  # ... and its file
    rendered: list[dict]         # every object the chart rendered

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def save(self) -> None:
        """Write `config` back after a test changed it."""
        self.alpha.write_text(yaml.safe_dump(self.config))


def render_signin(idp: Idp, allowed: dict[str, list[str]], *, provider: str = "oidc",
                  values: dict | None = None) -> list[dict]:
    """The chart with sign-in against `idp`: the local profile's scenario
    (every route) for `oidc`, the azure one for `entra-id`. `allowed` maps
    adminGroups / dataScientists to group names of the idp."""
    ids = {k: [idp.groups[g] for g in v] for k, v in allowed.items()}
    access: dict[str, Any] = {"enabled": True, "host": HOST, "clientId": idp.client_id,
                              "provider": provider, "adminGroups": ids.get("adminGroups", [])}
    if provider == "oidc":
        scenario = SCENARIOS["local-signin"]
        access.update(issuerUrl=idp.issuer, clientSecretName="signin-client")
        top: dict[str, Any] = {}
    else:
        scenario = SCENARIOS["azure"]
        access.update(issuerUrl=f"https://login.microsoftonline.com/{idp.tenant}/v2.0",
                      tls={"secretName": "metaflow-tls"})
        top = {"identity": {"tenantId": idp.tenant}}
    merged = {"access": access, "dataScientists": {"groups": ids.get("dataScientists", [])},
              **top}
    for key, value in (values or {}).items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return render([scenario], merged, release=RELEASE, namespace=NAMESPACE)


def signin_proxy(idp: Idp, upstream_url: str, workdir: Path, allowed: dict[str, list[str]],
                 *, provider: str = "oidc", values: dict | None = None,
                 federated_token_file: Path | None = None) -> ChartProxy:
    objs = render_signin(idp, allowed, provider=provider, values=values)
    name = f"{RELEASE}-signin"
    deployment = get(objs, "Deployment", name)
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "oauth2-proxy"
    config = yaml.safe_load(get(objs, "ConfigMap", name)["data"]["oauth2-proxy.yaml"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    workdir.mkdir(parents=True, exist_ok=True)

    config["server"]["bindAddress"] = f"127.0.0.1:{port}"
    for upstream in config["upstreamConfig"]["upstreams"]:
        assert IN_CLUSTER.match(upstream["uri"]), upstream
        upstream["uri"] = upstream_url
    [prov] = config["providers"]
    if provider == "entra-id":
        prov["oidcConfig"]["issuerURL"] = idp.issuer
    else:
        assert prov["oidcConfig"]["issuerURL"] == idp.issuer
    if "clientSecretFile" in prov:
        secret = workdir / "client-secret"
        secret.write_text(idp.client_secret)
        prov["clientSecretFile"] = str(secret)
    alpha = workdir / "oauth2-proxy.yaml"
    alpha.write_text(yaml.safe_dump(config))
    cookie = workdir / "cookie-secret"
    cookie.write_text(secrets.token_urlsafe(24)[:32])
    # The error page the chart mounts from its ConfigMap.
    templates = workdir / "templates"
    templates.mkdir(exist_ok=True)
    (templates / "error.html").write_text(get(objs, "ConfigMap", name)["data"]["error.html"])

    swap = {f"--alpha-config={ALPHA}": f"--alpha-config={alpha}",
            f"--cookie-secret-file={COOKIE}": f"--cookie-secret-file={cookie}",
            f"--custom-templates-dir={TEMPLATES}": f"--custom-templates-dir={templates}",
            f"--redirect-url=https://{HOST}/oauth2/callback": f"--redirect-url={url}/oauth2/callback",
            f"--whitelist-domain={HOST}": f"--whitelist-domain=127.0.0.1:{port}"}
    args = [swap.get(a, a) for a in container["args"]]
    leftover = [a for a in args if HOST in a or "/etc/oauth2-proxy" in a]
    assert not leftover, f"chart flags this test does not know how to run locally: {leftover}"
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    if federated_token_file is not None:
        # What the workload-identity webhook adds to a pod labelled for it.
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels.get("azure.workload.identity/use") == "true"
        env["AZURE_FEDERATED_TOKEN_FILE"] = str(federated_token_file)
    return ChartProxy(args=args, env=env, port=port, config=config, alpha=alpha, rendered=objs)
