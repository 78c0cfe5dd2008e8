"""The entry point and sign-in installed on a real API server: `mfhelm install
--local --signin-issuer ...` as a user runs it. The proxy's objects are
admitted (Pod Security baseline on the namespace mfhelm labels), its cookie
secret is made once and kept by the upgrade (the chart's `lookup`, which
`helm template` can't show), and the UI answers only the proxy.
"""

from __future__ import annotations

import pytest
from kubernetes import client

from .handle import Cluster
from .test_e2e_stack import deployments, install_local

pytestmark = pytest.mark.cluster

SIGNIN = ["--signin-issuer", "https://idp.example.com", "--signin-client-id", "metaflow",
          "--signin-client-secret", "signin-client", "--signin-host", "metaflow.localtest.me", "--signin-tls-secret", "metaflow-tls",
          "--signin-group", "admins"]


def test_signin_installs_and_keeps_its_cookie_secret_across_upgrades(cluster: Cluster,
                                                                      namespace: str):
    proc = install_local(cluster, namespace, "mf", *SIGNIN)
    assert proc.returncode == 0, proc.stderr
    deps = deployments(cluster, namespace, "mf")
    signin = deps["mf-signin"]
    assert (signin.status.available_replicas or 0) >= 1
    [container] = signin.spec.template.spec.containers
    assert container.name == "oauth2-proxy"
    assert "--redirect-url=https://metaflow.localtest.me/oauth2/callback" in container.args
    net = client.NetworkingV1Api(cluster.api_client())
    ingress = net.read_namespaced_ingress("mf-signin", namespace)
    assert ingress.spec.rules[0].host == "metaflow.localtest.me"
    first = cluster.core().read_namespaced_secret("mf-signin-cookie", namespace).data
    assert len(first["cookie-secret"]) > 32  # base64 of 32 characters

    # An upgrade that changes the proxy's config: the pods roll, the cookie
    # secret (and so every signed-in session) stays.
    proc = install_local(cluster, namespace, "mf", *SIGNIN, "--signin-group", "data-scientists")
    assert proc.returncode == 0, proc.stderr
    assert "revision 2: deployed" in proc.stdout
    assert cluster.core().read_namespaced_secret("mf-signin-cookie", namespace).data == first
    policy = net.read_namespaced_network_policy("mf-ui-static", namespace)
    [rule] = policy.spec.ingress
    assert [peer.pod_selector.match_labels["app.kubernetes.io/component"]
            for peer in rule._from] == ["signin"]
