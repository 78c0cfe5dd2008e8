"""The chart as an OCI artifact, against a real registry (tests/cluster/registry.py):
`make chart-push`'s command (`python -m mfhelm.oci push`) packages and
pushes the chart, and `mfhelm install --local --chart oci://... --version X`
installs it into the test cluster.

The realistic path is TLS with a private CA (trusted through SSL_CERT_FILE,
as a system trust store would) and `helm registry login`; plain HTTP with
`--plain-http` is the other. The umbrella's subcharts (argo-helm, Airflow's
chart) come from chart repositories this machine cannot reach, so the chart
is pushed the way `make chart-push SUBCHARTS=drop` pushes it: without them,
as version <version>-nosubcharts, and installed with Argo and Airflow off.
Where the repositories are reachable, the complete push is checked too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mfhelm.oci import NO_SUBCHARTS

from .controlplane import ToolchainMissing
from .handle import Cluster
from .pki import CertificateAuthority
from .registry import Registry, start_registry
from .test_e2e_stack import deployments, one_error_line, tool_env

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CHART_META = yaml.safe_load((ROOT / "charts/metaflow/Chart.yaml").read_text())
CHART_VERSION = CHART_META["version"]
# The first dependency the push cannot fetch: argo-workflows, at its pin.
FIRST_SUBCHART = (f"{CHART_META['dependencies'][0]['name']} "
                  f"{CHART_META['dependencies'][0]['version']}")
PARTIAL = f"{CHART_VERSION}-{NO_SUBCHARTS}"
# helm v4.3.1 pkg/registry/constants.go: what a chart artifact is made of.
HELM_CONFIG_MEDIA_TYPE = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART_LAYER_MEDIA_TYPE = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _start(tmp: Path, **kw) -> Registry:
    try:
        return start_registry(tmp, **kw)
    except ToolchainMissing as exc:
        pytest.skip(reason=str(exc))


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    ca = CertificateAuthority(tmp_path_factory.mktemp("oci-ca"))
    reg = _start(tmp_path_factory.mktemp("oci-tls"), ca=ca, auth=True)
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def http_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = _start(tmp_path_factory.mktemp("oci-http"))
    yield reg
    reg.stop()


def helm_env(cluster: Cluster, home: Path, reg: Registry | None = None) -> dict[str, str]:
    """mfhelm's and helm's environment: helm's config, cache and registry
    logins in `home`, and the registry's CA as the trusted roots."""
    env = tool_env(cluster)
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[var] = str(home / var.lower())
    env["HELM_REGISTRY_CONFIG"] = str(home / "registry.json")
    if reg is not None and reg.ca is not None:
        env["SSL_CERT_FILE"] = str(reg.ca.pair.cert)
    return env


def run(env: dict[str, str], *args: str, stdin: str | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, env=env, input=stdin,
                          cwd=ROOT, timeout=timeout)


def chart_push(env: dict[str, str], registry: str, *flags: str):
    """What `make chart-push REGISTRY=... [PLAIN_HTTP=1] [SUBCHARTS=drop]` runs."""
    return run(env, sys.executable, "-m", "mfhelm.oci", "push", registry, *flags)


def mfhelm_install(cluster: Cluster, env: dict[str, str], ns: str, *args: str):
    return run(env, sys.executable, "-m", "mfhelm", "install", "--local", "-n", ns,
               "--release", "oc", "--timeout", "4m", "--kubeconfig", str(cluster.kubeconfig),
               *args)


def helm_release(env: dict[str, str], ns: str) -> dict:
    proc = run(env, "helm", "list", "-n", ns, "-o", "json")
    assert proc.returncode == 0, proc.stderr
    (release,) = json.loads(proc.stdout)
    return release


def test_the_registry_is_the_pinned_build():
    from .controlplane import _installer
    from .registry import registry_binary

    try:
        binary = registry_binary()
    except ToolchainMissing as exc:
        pytest.skip(reason=str(exc))
    entry = _installer().load_manifest()["go"]["registry"]
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[1:] == [entry["module"], entry["version"]]


def test_push_over_tls_with_login_then_install_from_the_registry(
        cluster: Cluster, namespace: str, tls_registry: Registry,
        tmp_path_factory: pytest.TempPathFactory):
    reg = tls_registry
    env = helm_env(cluster, tmp_path_factory.mktemp("helm-home"), reg)
    ref = f"oci://{reg.host}/charts/metaflow"

    # Not logged in: the registry refuses the push, one line, nothing stored.
    proc = chart_push(env, f"{reg.host}/charts", "--drop-subcharts")
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.startswith("chart-push: error: helm push to "), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert reg.tags("charts/metaflow") == []

    login = run(env, "helm", "registry", "login", reg.host, "--username", reg.username or "",
                "--password-stdin", stdin=reg.password)
    assert login.returncode == 0, login.stderr

    proc = chart_push(env, f"{reg.host}/charts", "--drop-subcharts")
    assert proc.returncode == 0, proc.stderr
    assert f"pushed {ref}:{PARTIAL} (sha256:" in proc.stdout
    assert f"mfhelm install --chart {ref} --version {PARTIAL}" in proc.stdout
    subcharts = [d["name"] for d in yaml.safe_load(
        (ROOT / "charts" / "metaflow" / "Chart.yaml").read_text())["dependencies"]]
    assert f"the subcharts {', '.join(subcharts)} could not be fetched" in proc.stderr
    assert reg.tags("charts/metaflow") == [PARTIAL]
    manifest = reg.get(f"/v2/charts/metaflow/manifests/{PARTIAL}", OCI_MANIFEST)
    assert manifest["config"]["mediaType"] == HELM_CONFIG_MEDIA_TYPE
    assert [layer["mediaType"] for layer in manifest["layers"]] == [HELM_CHART_LAYER_MEDIA_TYPE]

    # The chart has no Argo: installing it with Argo on is refused before
    # anything is written (the namespace of this release is not created).
    fresh = f"{namespace}-argo"
    proc = mfhelm_install(cluster, env, fresh, "--chart", ref, "--version", PARTIAL)
    line = one_error_line(proc)
    assert f"chart metaflow {PARTIAL} has no argo-workflows subchart" in line
    assert fresh not in {n.metadata.name for n in cluster.core().list_namespace().items}

    proc = mfhelm_install(cluster, env, namespace, "--no-argo", "--chart", ref,
                          "--version", PARTIAL)
    assert proc.returncode == 0, proc.stderr
    assert f"revision 1: deployed (chart {PARTIAL}, app " in proc.stdout
    assert f"> pulling the chart {ref} {PARTIAL}" in " ".join(proc.stderr.split())
    release = helm_release(env, namespace)
    assert release["chart"] == f"metaflow-{PARTIAL}" and release["status"] == "deployed"
    deps = deployments(cluster, namespace, "oc")
    assert set(deps) == {"oc-metadata", "oc-ui-backend", "oc-ui-static", "oc-azurite",
                         "oc-entra-emulator"}
    for name, d in deps.items():
        assert (d.status.available_replicas or 0) >= d.spec.replicas, name


def test_plain_http_registry_upgrade_and_bad_input(
        cluster: Cluster, namespace: str, http_registry: Registry,
        tmp_path_factory: pytest.TempPathFactory):
    reg = http_registry
    env = helm_env(cluster, tmp_path_factory.mktemp("helm-home"))
    ref = f"oci://{reg.host}/metaflow"

    # Without SUBCHARTS=drop the push needs the subcharts from their repositories.
    proc = chart_push(env, reg.host, "--plain-http")
    if proc.returncode == 0:  # a machine that reaches argo-helm and Airflow's repository
        assert f"pushed {ref}:{CHART_VERSION} " in proc.stdout
    else:
        assert proc.stderr.startswith("chart-push: error: cannot fetch the subcharts "
                                      f"{FIRST_SUBCHART}"), proc.stderr
        assert "SUBCHARTS=drop" in proc.stderr
        assert reg.tags("metaflow") == []

    proc = chart_push(env, reg.host, "--plain-http", "--drop-subcharts")
    assert proc.returncode == 0, proc.stderr
    assert f"--version {PARTIAL} --plain-http" in proc.stdout
    assert PARTIAL in reg.tags("metaflow")

    # An HTTP registry without --plain-http: helm speaks TLS to it and fails.
    proc = mfhelm_install(cluster, env, namespace, "--no-argo", "--chart", ref,
                          "--version", PARTIAL)
    assert f"could not pull {ref} version {PARTIAL}: " in one_error_line(proc)

    first = mfhelm_install(cluster, env, namespace, "--no-argo", "--chart", ref,
                           "--version", PARTIAL, "--plain-http")
    assert first.returncode == 0, first.stderr
    assert "revision 1: deployed" in first.stdout
    # A re-run from the registry is an upgrade of the same release.
    again = mfhelm_install(cluster, env, namespace, "--no-argo", "--chart", ref,
                           "--version", PARTIAL, "--plain-http")
    assert again.returncode == 0, again.stderr
    assert f"revision 2: deployed (chart {PARTIAL}" in again.stdout

    # A version the registry does not have: one line, the release untouched.
    proc = mfhelm_install(cluster, env, namespace, "--no-argo", "--chart", ref,
                          "--version", "9.9.9", "--plain-http")
    assert f"could not pull {ref} version 9.9.9: " in one_error_line(proc)
    assert helm_release(env, namespace)["revision"] == "2"


def test_unreachable_registry_is_one_line_and_writes_nothing(
        cluster: Cluster, tmp_path_factory: pytest.TempPathFactory):
    from .controlplane import free_port

    env = helm_env(cluster, tmp_path_factory.mktemp("helm-home"))
    ns = f"oci-none-{os.getpid()}"
    ref = f"oci://127.0.0.1:{free_port()}/metaflow"
    proc = mfhelm_install(cluster, env, ns, "--no-argo", "--chart", ref, "--version",
                          CHART_VERSION, "--plain-http")
    line = one_error_line(proc)
    assert line.startswith(f"mfhelm: error: could not pull {ref} version {CHART_VERSION}: ")
    assert "connection refused" in line
    assert ns not in {n.metadata.name for n in cluster.core().list_namespace().items}
