"""The local profile runs a flow end to end: `mfhelm install --local` makes
the CA once (Secret <release>-local-ca, kept on upgrade, removed by
`uninstall --purge`), Azurite's serving certificate and the emulator's
client; `mfhelm config --local` writes the laptop's config and CA bundle from
the cluster; real Metaflow then stores a run's artifact, log and card in the
real Azurite over HTTPS with bearer tokens from the chart's entra-emulator,
and its Client API reads them back, from the laptop and as a flow pod (with
the environment of the container Metaflow compiles for Argo Workflows from
that config, over the Secrets it names).

The cluster is the tests' control plane with KWOK nodes: its pods do not run
containers. So Azurite and the emulator run on this host (local_https_scenario.py,
in network and mount namespaces of their own: the fixed ports the config names
are free there, and the in-cluster names of the pods' Secret resolve to them),
each started from what the install put in the cluster: the Azurite
Deployment's command, the serving certificate, the emulator's script and
settings. The metadata service is metaflow-local-service (the service's REST
API; Netflix's image cannot run here), on the config's http://localhost:8080.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mfhelm import localca
from mfhelm.values import flows_namespace_for

from .handle import Cluster
from .metaflow_env import _AZURITE_REQUEST, FLOWS_DIR, VENV_BIN, azurite_binary, clean_environ
from .test_e2e_stack import install_local, mfhelm, one_error_line

pytestmark = pytest.mark.cluster

RELEASE = "mf"
SCENARIO = Path(__file__).resolve().parent / "local_https_scenario.py"
METADATA_SERVE = """
import sys, uvicorn
from metaflow_local_service import server
uvicorn.run(server.create_app(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]),
            log_level="warning")
"""


def _namespaces_usable() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare and ip (util-linux, iproute2)"
    probe = subprocess.run(["unshare", "-rnm", "sh", "-c", "ip link set lo up"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"user namespaces unavailable here: {probe.stderr.strip()[:200]}"
    return None


@pytest.fixture(scope="module")
def local_release(cluster: Cluster) -> Iterator[str]:
    ns = cluster.create_namespace(f"lhttps-{uuid.uuid4().hex[:6]}")
    try:
        proc = install_local(cluster, ns, RELEASE)
        assert proc.returncode == 0, proc.stderr
        yield ns
    finally:
        cluster.delete_namespace(ns)


def _secret(cluster: Cluster, ns: str, name: str) -> dict[str, str]:
    data = cluster.core().read_namespaced_secret(name, ns).data or {}
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def test_install_makes_the_ca_once_and_issues_the_serving_cert_from_it(cluster: Cluster,
                                                                      local_release: str):
    from cryptography import x509

    ns = local_release
    ca = _secret(cluster, ns, localca.ca_secret(RELEASE))
    tls = _secret(cluster, ns, localca.tls_secret(RELEASE))
    dns, ips = localca.serving_names(RELEASE, ns)
    assert localca.serving_is_current(tls["tls.crt"], ca["ca.crt"], dns, ips)
    assert tls["ca.crt"] == ca["ca.crt"]
    cert = x509.load_pem_x509_certificate(tls["tls.crt"].encode())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"{RELEASE}-azurite.{ns}.svc.cluster.local" in names.get_values_for_type(x509.DNSName)
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    # An upgrade keeps the CA and the (still current) serving certificate.
    again = install_local(cluster, ns, RELEASE)
    assert again.returncode == 0, again.stderr
    assert _secret(cluster, ns, localca.ca_secret(RELEASE)) == ca
    assert _secret(cluster, ns, localca.tls_secret(RELEASE))["tls.crt"] == tls["tls.crt"]
    flows = _secret(cluster, flows_namespace_for(ns), localca.flows_secret(RELEASE))
    assert flows["METAFLOW_MFHELM_LOCAL_CA"] == ca["ca.crt"]


def test_config_local_refuses_a_release_that_is_not_there(cluster: Cluster, tmp_path: Path):
    env_home = tmp_path / "home"
    proc = subprocess.run(
        [sys.executable, "-m", "mfhelm", "config", "--local", "-n", "nowhere-here",
         "--release", RELEASE, "--kubeconfig", str(cluster.kubeconfig)],
        capture_output=True, text=True, timeout=120, check=False,
        env=cluster.env() | {"HOME": str(env_home)})
    line = one_error_line(proc)
    assert f"no ConfigMap {RELEASE}-metaflow-config" in line
    assert not env_home.exists()


def _spec(cluster: Cluster, ns: str, work: Path, home: Path) -> dict[str, Any]:
    """What the scenario starts, from what the install put in the cluster."""
    apps, core = cluster.apps(), cluster.core()
    tls = _secret(cluster, ns, localca.tls_secret(RELEASE))
    (work / "tls").mkdir(parents=True)
    cert, key = work / "tls" / "tls.crt", work / "tls" / "tls.key"
    cert.write_text(tls["tls.crt"])
    key.write_text(tls["tls.key"])
    key.chmod(0o600)
    files = {"/tls/tls.crt": str(cert), "/tls/tls.key": str(key), "/data": str(work / "data")}
    (work / "data").mkdir()

    [azurite] = apps.read_namespaced_deployment(f"{RELEASE}-azurite", ns).spec.template.spec.containers
    binary = azurite_binary()
    assert binary is not None, "azurite-blob not in .venv/bin (run `make test-tools`)"
    argv = [binary if a == "azurite-blob" else files.get(a, a) for a in azurite.command]
    argv += ["--debug", str(work / "azurite-debug.log")]  # the requests with their headers

    emulator = apps.read_namespaced_deployment(
        f"{RELEASE}-entra-emulator", ns).spec.template.spec.containers[0]
    emulator_env = {}
    for e in emulator.env:
        if e.value_from is not None:
            ref = e.value_from.secret_key_ref
            emulator_env[e.name] = _secret(cluster, ns, ref.name)[ref.key]
        else:
            emulator_env[e.name] = files.get(e.value, e.value)
    scripts = {}
    for cm, key_name in ((f"{RELEASE}-entra-emulator", "entra_emulator.py"),
                         (f"{RELEASE}-azurite-init", "azurite_init.py")):
        path = work / key_name
        path.write_text(core.read_namespaced_config_map(cm, ns).data[key_name])
        scripts[key_name] = str(path)

    config = json.loads((home / ".metaflowconfig" / "config.json").read_text())
    hosts = work / "hosts"
    names = [f"{RELEASE}-azurite.{ns}.svc.cluster.local",
             f"{RELEASE}-entra-emulator.{ns}.svc.cluster.local",
             f"{RELEASE}-metadata.{ns}.svc.cluster.local"]
    hosts.write_text("127.0.0.1 localhost " + " ".join(names) + "\n")
    # The UI backend's Blob side, as installed (Metaflow's own
    # DefaultAzureCredential, workload-identity variables, the mounted CA).
    [ui] = apps.read_namespaced_deployment(f"{RELEASE}-ui-backend", ns).spec.template.spec.containers
    mounted = {"/var/run/mfhelm/entra/client-assertion": work / "client-assertion",
               "/etc/mfhelm/local-ca/ca.crt": work / "ca.crt"}
    (work / "client-assertion").write_text(
        _secret(cluster, ns, localca.emulator_secret(RELEASE))["client-assertion"])
    ui_env = {}
    for e in ui.env:
        if not e.name.startswith(("AZURE_", "METAFLOW_", "REQUESTS_CA_BUNDLE")):
            continue
        if e.value_from is not None:
            ref = e.value_from.secret_key_ref
            ui_env[e.name] = _secret(cluster, ns, ref.name)[ref.key]
        else:
            ui_env[e.name] = str(mounted.get(e.value, e.value))
    assert set(mounted.values()) <= {Path(v) for v in ui_env.values()}, ui_env
    # The flow pods' Secret, as the scenario's pod gets it through envFrom.
    secrets = {localca.flows_secret(RELEASE):
               _secret(cluster, flows_namespace_for(ns), localca.flows_secret(RELEASE))}
    (work / "pod-home").mkdir()
    flow_dir = work / "flows"
    flow_dir.mkdir()
    shutil.copy(FLOWS_DIR / "local_profile_flow.py", flow_dir)
    container = config["METAFLOW_DATASTORE_SYSROOT_AZURE"].split("/")[0]
    return {
        "workdir": str(work), "path": f"{VENV_BIN}:/usr/bin:/bin:/usr/sbin:/sbin",
        "hosts_file": str(hosts), "azurite_argv": argv,
        "connection_string": _secret(cluster, ns, f"{RELEASE}-azurite")["connection-string"],
        "ca_file": str(work / "ca.crt"), "init_script": scripts["azurite_init.py"],
        "containers": [container], "emulator_script": scripts["entra_emulator.py"],
        "emulator_env": emulator_env, "metadata_serve": METADATA_SERVE,
        "home": str(home), "pod_home": str(work / "pod-home"), "secrets": secrets,
        "ui_env": ui_env,
        "flow": str(flow_dir / "local_profile_flow.py"), "flow_dir": str(flow_dir),
    }


def test_a_flow_keeps_its_artifact_log_and_card_in_azurite(cluster: Cluster, local_release: str,
                                                           tmp_path: Path):
    why = _namespaces_usable()
    if why:
        pytest.skip(why)
    ns = local_release
    home = tmp_path / "home"
    # The user's one step: the config and CA bundle, from the cluster.
    wrote = subprocess.run(
        [sys.executable, "-m", "mfhelm", "config", "--local", "-n", ns, "--release", RELEASE,
         "--kubeconfig", str(cluster.kubeconfig)],
        capture_output=True, text=True, timeout=120, check=False,
        env=clean_environ() | {"HOME": str(home)})
    assert wrote.returncode == 0, wrote.stderr
    config_dir = home / ".metaflowconfig"
    assert sorted(p.name for p in config_dir.iterdir()) == ["config.ca.pem", "config.json"]
    work = tmp_path / "scenario"
    spec = _spec(cluster, ns, work, home)
    Path(spec["ca_file"]).write_text(
        _secret(cluster, ns, localca.ca_secret(RELEASE))["ca.crt"])
    (work / "spec.json").write_text(json.dumps(spec))
    out = work / "results.json"
    done = subprocess.run(
        ["unshare", "-rnm", sys.executable, str(SCENARIO), str(work / "spec.json"), str(out)],
        capture_output=True, text=True, timeout=1500, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(out.read_text())
    assert results["init"]["rc"] == 0, results["init"]
    # The pod's container as Metaflow compiles it: the Secret named, and the
    # laptop's Blob URL set explicitly (which the extension moves in the pod).
    assert results["argo_json"]["rc"] == 0, results["argo_json"]
    assert localca.flows_secret(RELEASE) in results["pod_secret_refs"]
    explicit = results["pod_explicit_env"]
    assert explicit["METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT"] == \
        "https://localhost:10000/devstoreaccount1/"
    assert "METAFLOW_DEFAULT_AZURE_CLIENT_PROVIDER" not in explicit
    for who in ("laptop", "pod"):
        ran = results[f"{who}_run"]
        assert ran["rc"] == 0 and results[f"{who}_run_id"], ran
        read = results[f"{who}_read"]
        assert read["rc"] == 0, read
        got = json.loads(read["stdout"].strip().splitlines()[-1])
        assert got["answer"] == 42
        assert f"local-profile-log {results[f'{who}_run_id']}" in got["stdout"]
        assert got["cards"] == 1 and got["card_html"] > 0
    # The UI backend reads the laptop's run as the UI shows it.
    ui = results["ui_read"]
    assert ui["rc"] == 0, ui
    got = json.loads(ui["stdout"].strip().splitlines()[-1])
    assert got["answer"] == 42 and got["cards"] == 1
    assert f"local-profile-log {results['laptop_run_id']}" in got["stdout"]
    # Every Blob call of Metaflow's carried the emulator's token: the laptop's
    # through the port-forward's name, the pod's through the in-cluster one;
    # only the chart's init script used the shared key (Azurite's debug log has
    # each request's headers).
    by_host: dict[tuple[str, str], int] = {}
    hosts_of: dict[str, set[tuple[str, str]]] = {"laptop": set(), "pod": set()}
    for line in (work / "azurite-debug.log").read_text(errors="replace").splitlines():
        m = _AZURITE_REQUEST.search(line)
        if m:
            headers = json.loads(m["headers"])
            scheme = (headers.get("authorization") or "none").split(" ")[0]
            key = (headers.get("host", ""), scheme)
            by_host[key] = by_host.get(key, 0) + 1
            for who in hosts_of:  # the laptop's own writes; all of the pod's calls
                if f"/{results[f'{who}_run_id']}/" in m["url"] and (
                        who == "pod" or m["method"] == "PUT"):
                    hosts_of[who].add(key)
    inside = f"{RELEASE}-azurite.{ns}.svc.cluster.local:10000"
    assert set(by_host) == {("localhost:10000", "Bearer"), (inside, "Bearer"),
                            (inside, "SharedKey")}, by_host
    assert by_host[(inside, "SharedKey")] == 1  # azurite_init.py's container PUT
    assert hosts_of == {"laptop": {("localhost:10000", "Bearer")},
                        "pod": {(inside, "Bearer")}}, hosts_of
    emulator_log = (work / "entra-emulator.log").read_text()
    assert emulator_log.count('"POST /mfhelm-local/oauth2/v2.0/token HTTP/1.1" 200') >= 2
    assert " 401 " not in emulator_log and " 400 " not in emulator_log


def test_uninstall_keeps_the_ca_and_purge_removes_it(cluster: Cluster, local_release: str):
    ns = local_release
    ca = _secret(cluster, ns, localca.ca_secret(RELEASE))
    proc = mfhelm(cluster, "uninstall", "-n", ns, "--release", RELEASE)
    assert proc.returncode == 0, proc.stderr
    assert _secret(cluster, ns, localca.ca_secret(RELEASE)) == ca
    # Reinstalled onto the kept data: the same CA, so laptops' bundles still hold.
    assert install_local(cluster, ns, RELEASE).returncode == 0
    assert _secret(cluster, ns, localca.ca_secret(RELEASE)) == ca
    proc = mfhelm(cluster, "uninstall", "-n", ns, "--release", RELEASE, "--purge", "--yes")
    assert proc.returncode == 0, proc.stderr
    left = {s.metadata.name for s in cluster.core().list_namespaced_secret(ns).items}
    assert not left & {localca.ca_secret(RELEASE), localca.tls_secret(RELEASE),
                       localca.emulator_secret(RELEASE)}
    flows = {s.metadata.name for s in
             cluster.core().list_namespaced_secret(flows_namespace_for(ns)).items}
    assert localca.flows_secret(RELEASE) not in flows
