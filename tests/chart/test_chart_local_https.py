"""The local profile's HTTPS Azurite and entra-emulator as the chart renders
them, tied to what mfhelm makes (mfhelm.localca: Secret names, ports, serving
names) and to what the laptop config names; and the emulator never on azure.
The emulator script itself runs here against real azure-identity."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from chartlib import CHART, SCENARIOS, all_containers, env_of, get, pod_specs, render

from mfhelm import localca

LOCAL = SCENARIOS["local"]
AZURE_SCENARIOS = sorted(name for name in SCENARIOS if name.startswith("azure"))
LOCAL_SCENARIOS = sorted(name for name in SCENARIOS if name.startswith("local"))
RELEASE, NS = "mf", "mfns"


def _local() -> list[dict]:
    return render([LOCAL], release=RELEASE, namespace=NS)


@pytest.mark.parametrize("scenario", AZURE_SCENARIOS)
def test_the_emulator_never_renders_on_azure(scenario):
    # Even with its values set: the profile alone decides.
    objs = render([SCENARIOS[scenario]], {"local": {"entraEmulator": {"port": 9443}}},
                  release=RELEASE, namespace=NS)
    text = json.dumps(objs)
    assert "entra-emulator" not in text and "entra_emulator" not in text
    assert "local-tls" not in text and f"{RELEASE}-local-ca" not in text
    for _, spec in pod_specs(objs):
        for c in all_containers(spec):
            assert not {"REQUESTS_CA_BUNDLE", "AZURE_AUTHORITY_HOST"} & set(env_of(c)), c["name"]


@pytest.mark.parametrize("scenario", LOCAL_SCENARIOS)
def test_the_emulator_renders_on_every_local_scenario(scenario):
    objs = render([SCENARIOS[scenario]], release=RELEASE, namespace=NS)
    get(objs, "Deployment", f"{RELEASE}-entra-emulator")
    get(objs, "Service", f"{RELEASE}-entra-emulator")


def test_azurite_serves_https_with_oauth_from_the_local_tls_secret():
    objs = _local()
    spec = get(objs, "Deployment", f"{RELEASE}-azurite")["spec"]["template"]["spec"]
    command = spec["containers"][0]["command"]
    def flag(name: str) -> str:
        return command[command.index(name) + 1]

    assert flag("--cert") == "/tls/tls.crt" and flag("--key") == "/tls/tls.key"
    assert flag("--oauth") == "basic"
    tls = next(v for v in spec["volumes"] if v["name"] == "tls")
    assert tls["secret"]["secretName"] == localca.tls_secret(RELEASE)
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "tls")
    assert mount["mountPath"] == "/tls"
    service = get(objs, "Service", f"{RELEASE}-azurite")
    assert service["spec"]["ports"][0]["port"] == localca.AZURITE_PORT


def test_the_published_blob_endpoint_is_a_name_the_certificate_carries():
    objs = _local()
    config = json.loads(get(objs, "ConfigMap", f"{RELEASE}-metaflow-config")["data"]["config.json"])
    endpoint = config["METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT"]
    assert endpoint == localca.azurite_internal_url(RELEASE, NS)
    dns, _ = localca.serving_names(RELEASE, NS)
    assert endpoint.split("/")[2].split(":")[0] in dns
    secret = get(objs, "Secret", f"{RELEASE}-azurite")["stringData"]["connection-string"]
    assert "DefaultEndpointsProtocol=https;" in secret and endpoint.rstrip("/") in secret


def test_the_emulator_runs_the_shipped_script_with_mfhelms_secrets():
    objs = _local()
    cm = get(objs, "ConfigMap", f"{RELEASE}-entra-emulator")
    assert cm["data"]["entra_emulator.py"] == (CHART / "files" / "entra_emulator.py").read_text()
    deploy = get(objs, "Deployment", f"{RELEASE}-entra-emulator")
    spec = deploy["spec"]["template"]["spec"]
    [c] = spec["containers"]
    env = env_of(c)
    for name, key in (("EMULATOR_TENANT_ID", "tenant-id"), ("EMULATOR_CLIENT_ID", "client-id"),
                      ("EMULATOR_CLIENT_ASSERTION", "client-assertion")):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": localca.emulator_secret(RELEASE), "key": key}
        assert key in localca.emulator_data("x")
    assert env["EMULATOR_PORT"]["value"] == str(localca.EMULATOR_PORT)
    tls = next(v for v in spec["volumes"] if v["name"] == "tls")
    assert tls["secret"]["secretName"] == localca.tls_secret(RELEASE)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["automountServiceAccountToken"] is False
    service = get(objs, "Service", f"{RELEASE}-entra-emulator")
    assert service["spec"]["ports"][0]["port"] == localca.EMULATOR_PORT
    assert deploy["metadata"]["labels"]["app.kubernetes.io/component"] == "entra-emulator"
    get(objs, "NetworkPolicy", f"{RELEASE}-entra-emulator")


def test_the_ui_backend_reads_blob_with_the_emulators_token_and_the_ca():
    objs = _local()
    spec = get(objs, "Deployment", f"{RELEASE}-ui-backend")["spec"]["template"]["spec"]
    [c] = spec["containers"]
    env = env_of(c)
    assert env["AZURE_AUTHORITY_HOST"]["value"] == localca.emulator_internal_url(RELEASE, NS)
    assert env["AZURE_TENANT_ID"]["valueFrom"]["secretKeyRef"]["name"] == \
        localca.emulator_secret(RELEASE)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v["secret"] for v in spec["volumes"] if "secret" in v}
    token_file = env["AZURE_FEDERATED_TOKEN_FILE"]["value"]
    assert token_file == f"{mounts['entra-assertion']}/client-assertion"
    assert volumes["entra-assertion"]["items"] == [{"key": "client-assertion",
                                                    "path": "client-assertion"}]
    assert env["REQUESTS_CA_BUNDLE"]["value"] == f"{mounts['local-ca']}/ca.crt"
    # The CA's certificate only: its key is mounted nowhere.
    assert volumes["local-ca"] == {"secretName": localca.tls_secret(RELEASE),
                                   "items": [{"key": "ca.crt", "path": "ca.crt"}]}


def test_the_chart_never_owns_mfhelms_local_secrets():
    """The CA is kept across upgrades and removed only by `uninstall --purge`:
    so Helm must not render (and own, replace or delete) any of them."""
    names = {o["metadata"]["name"] for o in _local() if o["kind"] == "Secret"}
    assert not names & {localca.ca_secret(RELEASE), localca.tls_secret(RELEASE),
                        localca.emulator_secret(RELEASE), localca.flows_secret(RELEASE)}
    for _, spec in pod_specs(_local()):
        for v in spec.get("volumes", []):
            assert v.get("secret", {}).get("secretName") != localca.ca_secret(RELEASE)


# --- the shipped script, run ------------------------------------------------------------

@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("emulator")
    ca, ca_key = localca.generate_ca(RELEASE)
    cert, key = localca.issue_serving(ca, ca_key, *localca.serving_names(RELEASE, NS))
    for name, text in (("ca.crt", ca), ("tls.crt", cert), ("tls.key", key)):
        (tmp / name).write_text(text)
    sys.path.insert(0, str(CHART / "files"))
    import entra_emulator

    settings = entra_emulator.settings_from_env({
        "EMULATOR_TENANT_ID": localca.TENANT_ID, "EMULATOR_CLIENT_ID": localca.CLIENT_ID,
        "EMULATOR_CLIENT_ASSERTION": "the-assertion", "EMULATOR_TLS_CERT": str(tmp / "tls.crt"),
        "EMULATOR_TLS_KEY": str(tmp / "tls.key"), "EMULATOR_HOST": "127.0.0.1",
        "EMULATOR_PORT": "0"})
    started: list = []
    thread = threading.Thread(target=entra_emulator.serve, args=(settings, started.append),
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not started and time.monotonic() < deadline:
        time.sleep(0.05)
    server = started[0]
    yield f"https://localhost:{server.server_address[1]}", tmp / "ca.crt"
    server.shutdown()


def _token(url: str, ca: Path, assertion: str, scope: str = localca.STORAGE_SCOPE) -> str:
    """azure-identity's ClientAssertionCredential, in a process of its own
    (REQUESTS_CA_BUNDLE is per process), prints the token's claims."""
    code = (
        "import sys, json, base64\n"
        "from azure.identity import ClientAssertionCredential\n"
        "c = ClientAssertionCredential(sys.argv[2], sys.argv[3], lambda: sys.argv[4],"
        " authority=sys.argv[1])\n"
        "t = c.get_token(sys.argv[5]).token.split('.')[1]\n"
        "print(base64.urlsafe_b64decode(t + '=' * (-len(t) % 4)).decode())\n")
    done = subprocess.run([sys.executable, "-c", code, url, localca.TENANT_ID, localca.CLIENT_ID,
                           assertion, scope], capture_output=True, text=True, timeout=60,
                          env={"REQUESTS_CA_BUNDLE": str(ca), "PATH": "/usr/bin:/bin"})
    return done.stdout if done.returncode == 0 else "FAILED " + done.stderr[-600:]


def test_the_emulator_issues_what_azurite_checks(emulator):
    url, ca = emulator
    out = _token(url, ca, "the-assertion")
    claims = json.loads(out)
    assert claims["aud"] == "https://storage.azure.com"
    assert claims["iss"] == f"https://sts.windows.net/{localca.TENANT_ID}/"
    assert claims["nbf"] <= time.time() < claims["exp"] <= time.time() + 3700


def test_the_emulator_refuses_another_assertion_and_scope(emulator):
    url, ca = emulator
    assert "AADSTS700016: unexpected client_assertion" in _token(url, ca, "wrong")
    assert "AADSTS70011" in _token(url, ca, "the-assertion", "https://vault.azure.net/.default")


def test_airflow_on_local_trusts_the_local_ca_for_its_task_logs():
    import yaml

    objs = render([SCENARIOS["local-airflow"]], release=RELEASE, namespace=NS)
    env = get(objs, "ConfigMap", "metaflow-airflow-env")["data"]
    airflow = yaml.safe_load((CHART / "values.yaml").read_text())["airflow"]
    mount = next(m for m in airflow["volumeMounts"] if m["name"] == "mfhelm-local-ca")
    volume = next(v for v in airflow["volumes"] if v["name"] == "mfhelm-local-ca")
    assert volume["secret"] == {"secretName": localca.AIRFLOW_CA_SECRET, "optional": True}
    assert env["REQUESTS_CA_BUNDLE"] == f"{mount['mountPath']}/ca.crt"
    conn = json.loads(get(objs, "Secret", "metaflow-airflow-conn")["stringData"][
        "AIRFLOW_CONN_WASB_LOGS"])["extra"]["connection_string"]
    assert "DefaultEndpointsProtocol=https;" in conn
    # On azure the variable is absent (the optional Secret does not exist there).
    azure = render([SCENARIOS["azure-airflow"]], release=RELEASE, namespace=NS)
    assert "REQUESTS_CA_BUNDLE" not in get(azure, "ConfigMap", "metaflow-airflow-env")["data"]


def test_a_silent_connection_does_not_stop_the_emulator(emulator):
    import socket

    url, ca = emulator
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)):  # connects, never says a word
        claims = json.loads(_token(url, ca, "the-assertion"))
    assert claims["aud"] == "https://storage.azure.com"
