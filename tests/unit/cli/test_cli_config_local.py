"""`mfhelm config --local`: the laptop's keys for a local-profile release, and
bad input refused in one line before the cluster is asked or a file written.
The cluster side (reading the release, writing the files, Metaflow using
them) is tests/cluster/test_e2e_local_https.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_one_line_error

from mfhelm import localca, metaflow_config
from mfhelm.errors import MfhelmError

PUBLISHED = {  # what the chart publishes on the local profile (ci/local-values.yaml)
    "METAFLOW_DEFAULT_DATASTORE": "azure",
    "METAFLOW_DATASTORE_SYSROOT_AZURE": "metaflow-storage/metaflow",
    "METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT":
        "https://mf-azurite.ns.svc.cluster.local:10000/devstoreaccount1/",
    "METAFLOW_DEFAULT_METADATA": "service",
    "METAFLOW_SERVICE_URL": "http://localhost:8080",
    "METAFLOW_SERVICE_INTERNAL_URL": "http://mf-metadata.ns.svc.cluster.local:8080",
    "METAFLOW_KUBERNETES_NAMESPACE": "ns-flows",
    "METAFLOW_KUBERNETES_SERVICE_ACCOUNT": "metaflow-flows",
    "METAFLOW_KUBERNETES_LABELS": "azure.workload.identity/use=true",
    "METAFLOW_KUBERNETES_NODE_SELECTOR": "",
    "METAFLOW_KUBERNETES_TOLERATIONS": "[]",
}
CLIENT = {"tenant-id": "mfhelm-local", "client-id": "mfhelm-local-flows",
          "client-assertion": "s3cret-assertion"}


def test_the_local_config_keys(tmp_path: Path):
    ca_file = tmp_path / "config.ca.pem"
    cfg = metaflow_config.build_local_config(PUBLISHED, release="mf", ca_file=ca_file,
                                             client=CLIENT, argo=True)
    assert cfg == PUBLISHED | {
        "METAFLOW_SERVICE_URL": "http://localhost:8080",
        "METAFLOW_UI_URL": "http://localhost:3000",
        "METAFLOW_ARGO_WORKFLOWS_UI_URL": "http://localhost:2746",
        "METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT":
            "https://localhost:10000/devstoreaccount1/",
        "METAFLOW_DEFAULT_AZURE_CLIENT_PROVIDER": "mfhelm-local",
        "METAFLOW_MFHELM_LOCAL_AUTHORITY": "https://localhost:8443",
        "METAFLOW_MFHELM_LOCAL_TENANT_ID": "mfhelm-local",
        "METAFLOW_MFHELM_LOCAL_CLIENT_ID": "mfhelm-local-flows",
        "METAFLOW_MFHELM_LOCAL_CLIENT_ASSERTION": "s3cret-assertion",
        "METAFLOW_MFHELM_LOCAL_CA": str(ca_file),
        "METAFLOW_KUBERNETES_SECRETS": "mf-local-flows",
    }
    no_argo = metaflow_config.build_local_config(PUBLISHED, release="mf", ca_file=ca_file,
                                                 client=CLIENT, argo=False)
    assert "METAFLOW_ARGO_WORKFLOWS_UI_URL" not in no_argo


def test_with_the_signin_in_front_the_published_urls_stand(tmp_path: Path):
    published = PUBLISHED | {"METAFLOW_SERVICE_URL": "https://mf.example.test/metadata",
                             "METAFLOW_UI_URL": "https://mf.example.test/"}
    cfg = metaflow_config.build_local_config(published, release="mf",
                                             ca_file=tmp_path / "c.pem", client=CLIENT,
                                             argo=False)
    assert cfg["METAFLOW_SERVICE_URL"] == "https://mf.example.test/metadata"
    assert cfg["METAFLOW_UI_URL"] == "https://mf.example.test/"


def test_the_ports_are_the_port_forwards():
    from mfhelm import portforward

    forwards = {f.service: f for f in portforward.plan(
        "mf", {"mf-metadata", "mf-ui", "mf-argo-workflows-server", "mf-azurite",
               "mf-entra-emulator"})}
    assert metaflow_config.LOCAL_BLOB_URL.startswith(
        f"https://localhost:{forwards['mf-azurite'].local}/")
    assert f"https://localhost:{forwards['mf-entra-emulator'].local}" == \
        metaflow_config.LOCAL_AUTHORITY
    assert forwards["mf-azurite"].remote == localca.AZURITE_PORT
    assert forwards["mf-entra-emulator"].remote == localca.EMULATOR_PORT
    assert metaflow_config.LOCAL_UI_URL.endswith(f":{forwards['mf-ui'].local}")
    assert metaflow_config.LOCAL_ARGO_UI_URL.endswith(
        f":{forwards['mf-argo-workflows-server'].local}")
    # Not a local-profile release: neither is forwarded.
    assert {f.service for f in portforward.plan("mf", {"mf-metadata"})} == {"mf-metadata"}


def test_an_incomplete_emulator_secret_is_one_line(tmp_path: Path):
    with pytest.raises(MfhelmError, match="lacks client-assertion: re-run `mfhelm install --local`"):
        metaflow_config.build_local_config(PUBLISHED, release="mf", ca_file=tmp_path / "c",
                                           client={**CLIENT, "client-assertion": ""}, argo=False)


def test_write_puts_the_ca_bundle_beside_the_config(tmp_path: Path):
    home = tmp_path / "mfhome"
    path = metaflow_config.config_path("dev", home=home)
    ca_file = metaflow_config.local_ca_path(path)
    assert ca_file == home / "config_dev.ca.pem"
    cfg = metaflow_config.build_local_config(PUBLISHED, release="mf", ca_file=ca_file,
                                             client=CLIENT, argo=False)
    ca, _ = localca.generate_ca("mf")
    written = metaflow_config.write_local_config(cfg, ca, "dev", home=home)
    assert written == path
    assert json.loads(path.read_text()) == cfg
    assert ca_file.read_text() == ca
    assert path.stat().st_mode & 0o077 == 0  # it holds the emulator's assertion


@pytest.mark.parametrize(("args", "fragment"), [
    (["--outputs", "out.json"], "--outputs is for the azure profile, not --local"),
    (["--subscription", "x"], "--subscription is for the azure profile, not --local"),
    (["--release", "Bad_Name"], "--release"),
    (["-n", "bad/ns"], "--namespace"),
    (["--profile", "a/b"], "is not usable as a file name"),
    (["--service-url", "ftp://x"], "must look like http://host[:port]"),
])
def test_config_local_bad_input_is_one_line(cli, workdir, closed_port_kubeconfig, args, fragment):
    result = cli("config", "--local", "--kubeconfig", closed_port_kubeconfig, *args)
    assert_one_line_error(result, fragment)
    assert not (workdir / "home" / ".metaflowconfig").exists()


@pytest.mark.parametrize("flag", ["--release", "--namespace", "--context"])
def test_cluster_flags_without_local_are_one_line(cli, workdir, flag):
    result = cli("config", flag, "mf")
    assert_one_line_error(result, f"{flag} is for --local")
    assert not (workdir / "home" / ".metaflowconfig").exists()


def test_an_unreachable_cluster_is_one_line_and_writes_nothing(cli, workdir,
                                                               closed_port_kubeconfig):
    result = cli("config", "--local", "--kubeconfig", closed_port_kubeconfig)
    assert_one_line_error(result)
    assert not (workdir / "home" / ".metaflowconfig").exists()
