"""files/azurite_init.py (the local profile's container-creating Job) against
a real Azurite, read back with the real Azure Blob SDK. Azurite runs the
Deployment's command over HTTPS, with a serving certificate mfhelm.localca
issues from a CA of its own, as `mfhelm install --local` does."""

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chartlib import CHART, CI_VALUES, get, render

AZURITE = shutil.which("azurite-blob")
pytestmark = pytest.mark.skipif(not AZURITE, reason="azurite not installed (run `make test-tools`)")
SCRIPT = CHART / "files" / "azurite_init.py"
LOCAL = next(p for p in CI_VALUES if p.name == "local-values.yaml")
KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
       "K1SZFPTOtr/KBHBeksoGMGw==")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chart_azurite_command(port: int, data: Path) -> list[str]:
    """The Azurite command the local profile's Deployment runs, moved to a
    loopback port and a temporary data directory, its serving certificate
    (mounted at /tls from <release>-local-tls) issued here into `data`."""
    from mfhelm import localca

    objs = render([LOCAL])
    command = list(get(objs, "Deployment", "metaflow-azurite")["spec"]["template"]["spec"]
                   ["containers"][0]["command"])
    assert command[0] == "azurite-blob"
    ca_cert, ca_key = localca.generate_ca("metaflow")
    cert, key = localca.issue_serving(ca_cert, ca_key, *localca.serving_names("metaflow",
                                                                              "metaflow"))
    (data / "ca.crt").write_text(ca_cert)
    (data / "tls.crt").write_text(cert)
    (data / "tls.key").write_text(key)
    for flag, value in (("--blobHost", "127.0.0.1"), ("--blobPort", str(port)),
                        ("--location", str(data)), ("--cert", str(data / "tls.crt")),
                        ("--key", str(data / "tls.key"))):
        command[command.index(flag) + 1] = value
    return [AZURITE, *command[1:]]


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    port = _free_port()
    data = tmp_path_factory.mktemp("azurite")
    debug_log = data / "debug.log"
    proc = subprocess.Popen(
        [*chart_azurite_command(port, data), "--debug", str(debug_log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("azurite did not start")
    AZURITE_DEBUG_LOG[0] = debug_log
    CA_FILE[0] = data / "ca.crt"
    yield (f"DefaultEndpointsProtocol=https;AccountName=devstoreaccount1;AccountKey={KEY};"
           f"BlobEndpoint=https://127.0.0.1:{port}/devstoreaccount1;")
    proc.terminate()
    proc.wait(10)


AZURITE_DEBUG_LOG: list[Path] = [Path()]
CA_FILE: list[Path] = [Path()]


def test_chart_azurite_runs_without_telemetry(azurite):
    # Azurite 3.35 sends start/stop events and request samples to Application
    # Insights unless --disableTelemetry; its debug log says which it chose.
    log = AZURITE_DEBUG_LOG[0].read_text()
    assert "enableTelemetry: false" in log, log[-2000:]
    assert "Telemetry initialize successfully" not in log


def _run(conn: str, *containers: str) -> subprocess.CompletedProcess:
    # The Job's REQUESTS_CA_BUNDLE (metaflow.localCaEnv) names the mounted CA.
    return subprocess.run([sys.executable, str(SCRIPT), *containers], capture_output=True,
                          text=True, env={"AZURE_STORAGE_CONNECTION_STRING": conn, "WAIT_SECONDS": "5",
                                          "REQUESTS_CA_BUNDLE": str(CA_FILE[0])})


def test_creates_containers_then_is_idempotent(azurite):
    from azure.storage.blob import BlobServiceClient

    first = _run(azurite, "metaflow-storage", "airflow-logs")
    assert first.returncode == 0, first.stderr
    assert "container metaflow-storage: created" in first.stdout
    second = _run(azurite, "metaflow-storage")
    assert second.returncode == 0, second.stderr
    assert "container metaflow-storage: exists" in second.stdout
    names = {c.name for c in BlobServiceClient.from_connection_string(
        azurite, connection_verify=str(CA_FILE[0])).list_containers()}
    assert {"metaflow-storage", "airflow-logs"} <= names


def test_wrong_key_is_rejected_by_azurite(azurite):
    bad = azurite.replace(KEY, "d3JvbmcK" * 8)
    proc = _run(bad, "never-created")
    assert proc.returncode != 0
    assert "403" in proc.stderr or "Forbidden" in proc.stderr or "Authorization" in proc.stderr


def test_unreachable_azurite_fails_with_one_line():
    conn = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=" + KEY +
            f";BlobEndpoint=http://127.0.0.1:{_free_port()}/devstoreaccount1;")
    proc = subprocess.run([sys.executable, str(SCRIPT), "x1y"], capture_output=True, text=True,
                          env={"AZURE_STORAGE_CONNECTION_STRING": conn, "WAIT_SECONDS": "1"})
    assert proc.returncode == 1
    assert "azurite not reachable" in proc.stderr
