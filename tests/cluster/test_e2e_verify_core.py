"""`mfhelm verify`'s core layers end to end, run as a user runs it
(`python -m mfhelm verify`, its own process) against a release that
`mfhelm install --local --verify` put on the test cluster, with the real
parts: Helm's release records (profile, flow namespace, layers, appVersion),
the real Metaflow (pinned in the test extra) running the shipped flow with
the config `mfhelm config` writes, the real Azurite over HTTPS with bearer
tokens from the Entra-shaped endpoint (metaflow_env.py), and, standing in for
the metadata service and its UI backend (KWOK nodes run no containers, and
metaflow-service is on no registry), metaflow-local-service from PyPI
advertising the version each test asks (verify_env.py).

Healthy: every core layer passes and what verify says it did is there (the
run in the service, its artifacts in the container). Broken, each at its
layer with its message: Blob refusing the token, the metadata service down,
another version of it; and --timeout, Ctrl-C and --keep.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import metaflow_env as mfenv
from . import verify_env
from .handle import Cluster
from .pki import CertificateAuthority

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
RELEASE = "mf"
CORE = ("metadata service", "local run", "flow image", "ui")


def mfhelm_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "mfhelm", *args]


def user_run(cluster: Cluster, home: verify_env.UserHome, *args: str, tmpdir: Path,
             timeout: float = 600, env: dict[str, str] | None = None,
             cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """mfhelm in the user's environment (their HOME and Azure sign-in), the
    test cluster's kubeconfig given as a flag, scratch space in `tmpdir`."""
    tmpdir.mkdir(parents=True, exist_ok=True)
    full = dict(home.env, TMPDIR=str(tmpdir),
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{home.env['PATH']}") | (env or {})
    return subprocess.run(mfhelm_argv(*args, "--kubeconfig", str(cluster.kubeconfig)),
                          capture_output=True, text=True, timeout=timeout, cwd=cwd, env=full)


def verify_args(ns: str, *extra: str) -> list[str]:
    return ["verify", "--local", "-n", ns, "--release", RELEASE, *extra]


def rows(stdout: str) -> dict[str, str]:
    """The table's rows: check name -> its result (seconds dropped)."""
    lines = stdout.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.split() == ["check", "result", "seconds"])
    col = lines[head].index("result")
    secs = lines[head].index("seconds")
    out = {}
    for ln in lines[head + 1:]:
        if not ln.strip() or ln[:col].strip() == "":
            break
        out[ln[:col].strip()] = ln[col:secs].strip() if len(ln) > secs else ln[col:].strip()
    return out


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("mfhelm: error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def others_skipped(table: dict[str, str]) -> None:
    """The orchestrator layers (another module) are off in a --no-argo release."""
    for name, result in table.items():
        if name not in CORE:
            assert result == "skipped (not in this release)", (name, result)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[verify_env.Service]:
    svc = verify_env.start_metadata_service(tmp_path_factory.mktemp("metadata"),
                                            verify_env.chart_app_version())
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, azurite_https: mfenv.Azurite,
         entra_endpoint: mfenv.FakeEntra, service: verify_env.Service,
         stack_outputs: dict[str, Any]) -> verify_env.UserHome:
    return verify_env.user_home(tmp_path_factory.mktemp("user"), azurite=azurite_https,
                                entra=entra_endpoint, service_url=service.url,
                                outputs=stack_outputs)


@pytest.fixture(scope="module")
def installed(cluster: Cluster, home: verify_env.UserHome,
              tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[str, subprocess.CompletedProcess[str]]]:
    """One local release, installed with --verify (so the first verify is
    install's), shared by the tests below."""
    ns = cluster.create_namespace(f"vfy-{uuid.uuid4().hex[:6]}")
    try:
        proc = user_run(cluster, home, "install", "--local", "--no-argo", "-n", ns,
                        "--release", RELEASE, "--timeout", "5m", "--verify",
                        tmpdir=tmp_path_factory.mktemp("install-tmp"), timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield ns, proc
    finally:
        cluster.delete_namespace(ns)


def test_install_verify_passes_on_a_healthy_stack(installed, service: verify_env.Service,
                                                  azurite_https: mfenv.Azurite,
                                                  home: verify_env.UserHome):
    ns, proc = installed
    assert f"release {RELEASE} revision 1: deployed" in proc.stdout
    table = rows(proc.stdout)
    version = verify_env.chart_app_version()
    assert table["metadata service"] == f"ok {version}"
    m = re.fullmatch(r"ok run (\d+), answer 42 read back from (\S+)", table["local run"])
    assert m, table
    run_id, container = m[1], m[2]
    assert container == home.config["METAFLOW_DATASTORE_SYSROOT_AZURE"].split("/")[0]
    assert table["ui"] == f"ok lists run {run_id}"
    # The local profile's config names no flow image (no registry).
    assert table["flow image"] == (
        "skipped (none configured: tasks pip-install their dependencies at start)")
    others_skipped(table)
    # What verify says it did is there: the run in the service, its artifacts in Blob.
    status, body = service.get(f"/flows/MfhelmVerifyFlow/runs/{run_id}")
    assert status == 200 and str(body["run_number"]) == run_id
    prefix = home.config["METAFLOW_DATASTORE_SYSROOT_AZURE"].split("/", 1)[1]
    blobs = azurite_https.blob_names(container, f"{prefix}/MfhelmVerifyFlow/{run_id}/")
    assert any("/start/" in b for b in blobs) and any("/end/" in b for b in blobs), blobs
    # Install's steps only: verify draws no progress line without a terminal, warns of nothing.
    assert all(ln.startswith("> ") for ln in proc.stderr.splitlines()), proc.stderr


def test_verify_again_leaving_nothing_behind(cluster: Cluster, installed,
                                             home: verify_env.UserHome, tmp_path: Path):
    """Its scratch space goes, and Metaflow's .metaflow/ and temporary files
    stay in it, out of the directory verify was started in."""
    ns, _ = installed
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = user_run(cluster, home, *verify_args(ns), tmpdir=tmp_path / "tmp", cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert rows(proc.stdout)["local run"].startswith("ok run ")
    assert list((tmp_path / "tmp").iterdir()) == []
    assert list(cwd.iterdir()) == []


def test_blob_refusing_the_token_fails_the_local_run(cluster: Cluster, installed,
                                                     metaflow_ca: CertificateAuthority,
                                                     azurite_https: mfenv.Azurite,
                                                     service: verify_env.Service,
                                                     stack_outputs: dict[str, Any],
                                                     tmp_path: Path):
    ns, _ = installed
    refusing = mfenv.FakeEntra(tenant=stack_outputs["tenantId"],
                               client_id=stack_outputs["identityClientId"],
                               federated_token=mfenv.federated_token(stack_outputs))
    with verify_env.serve_refusing_entra(metaflow_ca, refusing):
        home = verify_env.user_home(tmp_path / "user", azurite=azurite_https, entra=refusing,
                                    service_url=service.url, outputs=stack_outputs)
        proc = user_run(cluster, home, *verify_args(ns), tmpdir=tmp_path / "tmp")
    line = error_line(proc)
    endpoint = azurite_https.account_url
    assert line.startswith(f"mfhelm: error: local run: 403 from Blob (AuthenticationFailed): "
                           f"{endpoint} refused the token; "), line
    assert refusing.issued   # the token Azurite refused came from this endpoint
    table = rows(proc.stdout)
    assert table["metadata service"].startswith("ok ")
    assert table["local run"] == "FAILED"
    assert table["ui"] == "not run"
    assert list((tmp_path / "tmp").iterdir()) == []


def test_blob_out_of_reach_fails_before_metaflow_starts(cluster: Cluster, installed,
                                                       home: verify_env.UserHome,
                                                       tmp_path: Path):
    """The local profile's usual slip, Azurite not forwarded: refused at once
    (Metaflow's Azure client would retry the connection for minutes)."""
    ns, _ = installed
    endpoint = f"https://127.0.0.1:{mfenv.free_port()}/devstoreaccount1/"
    user = verify_env.UserHome(home.env, tmp_path / "mf" / "config.json", dict(home.config))
    user.config_file.parent.mkdir()
    user.write(METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT=endpoint)
    start = time.monotonic()
    proc = user_run(cluster, user, *verify_args(ns), tmpdir=tmp_path / "tmp",
                    env={"METAFLOW_HOME": str(user.config_file.parent)})
    assert time.monotonic() - start < 60
    assert error_line(proc) == (
        f"mfhelm: error: local run: cannot reach Blob at {endpoint} (connection refused); "
        "local: start `mfhelm port-forward` (it forwards Azurite); azure: check that the "
        "storage account's network rules let your address in")
    assert rows(proc.stdout)["ui"] == "not run"


def test_metadata_service_down(cluster: Cluster, installed, azurite_https: mfenv.Azurite,
                               entra_endpoint: mfenv.FakeEntra, stack_outputs: dict[str, Any],
                               tmp_path: Path):
    ns, _ = installed
    url = verify_env.closed_port_url()
    home = verify_env.user_home(tmp_path / "user", azurite=azurite_https, entra=entra_endpoint,
                                service_url=url, outputs=stack_outputs)
    proc = user_run(cluster, home, *verify_args(ns), tmpdir=tmp_path / "tmp")
    assert error_line(proc) == (
        f"mfhelm: error: metadata service: no answer from {url} (connection refused); start "
        "`mfhelm port-forward` (it forwards the metadata service to localhost:8080) and leave "
        "it running")
    table = rows(proc.stdout)
    assert table["metadata service"] == "FAILED"
    assert table["local run"] == table["ui"] == "not run"


def test_metadata_service_of_another_version(cluster: Cluster, installed,
                                             azurite_https: mfenv.Azurite,
                                             entra_endpoint: mfenv.FakeEntra,
                                             stack_outputs: dict[str, Any], tmp_path: Path):
    ns, _ = installed
    old = verify_env.start_metadata_service(tmp_path / "old", "2.4.9")
    try:
        home = verify_env.user_home(tmp_path / "user", azurite=azurite_https,
                                    entra=entra_endpoint, service_url=old.url,
                                    outputs=stack_outputs)
        proc = user_run(cluster, home, *verify_args(ns), tmpdir=tmp_path / "tmp")
    finally:
        old.stop()
    assert error_line(proc) == (
        "mfhelm: error: metadata service: the service is version 2.4.9, the release's chart is "
        f"appVersion {verify_env.chart_app_version()}; the metadata Deployment runs another "
        "image than the chart's: run `mfhelm install` again, without a metadata.image override")
    assert rows(proc.stdout)["local run"] == "not run"


def test_timeout_ends_a_check_that_waits(cluster: Cluster, installed,
                                         azurite_https: mfenv.Azurite,
                                         entra_endpoint: mfenv.FakeEntra,
                                         stack_outputs: dict[str, Any], tmp_path: Path):
    ns, _ = installed
    with verify_env.hanging_server() as url:
        home = verify_env.user_home(tmp_path / "user", azurite=azurite_https,
                                    entra=entra_endpoint, service_url=url, outputs=stack_outputs)
        start = time.monotonic()
        proc = user_run(cluster, home, *verify_args(ns, "--timeout", "4s"),
                        tmpdir=tmp_path / "tmp")
        took = time.monotonic() - start
    assert error_line(proc).startswith(
        "mfhelm: error: metadata service: did not finish within --timeout 4s; ")
    assert took < 25   # the HTTP call's own bound is 30 s
    assert rows(proc.stdout)["metadata service"] == "FAILED"
    assert list((tmp_path / "tmp").iterdir()) == []


def test_ctrl_c_cleans_up_and_exits_130(cluster: Cluster, installed,
                                        azurite_https: mfenv.Azurite,
                                        entra_endpoint: mfenv.FakeEntra,
                                        stack_outputs: dict[str, Any], tmp_path: Path):
    ns, _ = installed
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    with verify_env.hanging_server() as url:
        home = verify_env.user_home(tmp_path / "user", azurite=azurite_https,
                                    entra=entra_endpoint, service_url=url, outputs=stack_outputs)
        env = dict(home.env, TMPDIR=str(tmpdir),
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{home.env['PATH']}")
        child = subprocess.Popen(
            mfhelm_argv(*verify_args(ns), "--kubeconfig", str(cluster.kubeconfig)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        # The scratch directory appears once the checks are about to start.
        deadline = time.monotonic() + 120
        while not list(tmpdir.glob("mfhelm-verify-*")):
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(1.0)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "mfhelm: error: interrupted (SIGINT); verify stopped; what it made was removed")
    assert rows(out)["metadata service"] == "interrupted"
    assert list(tmpdir.iterdir()) == []


def test_keep_leaves_the_scratch_directory(cluster: Cluster, installed,
                                           azurite_https: mfenv.Azurite,
                                           entra_endpoint: mfenv.FakeEntra,
                                           stack_outputs: dict[str, Any], tmp_path: Path):
    ns, _ = installed
    home = verify_env.user_home(tmp_path / "user", azurite=azurite_https, entra=entra_endpoint,
                                service_url=verify_env.closed_port_url(), outputs=stack_outputs)
    proc = user_run(cluster, home, *verify_args(ns, "--keep"), tmpdir=tmp_path / "tmp")
    error_line(proc)
    kept = list((tmp_path / "tmp").glob("mfhelm-verify-*"))
    assert len(kept) == 1 and (kept[0] / "mfhelm_verify_flow.py").is_file()
    assert f"kept (--keep): scratch directory {kept[0]}" in proc.stderr


def test_refusals_come_before_the_cluster_is_asked(cluster: Cluster, installed,
                                                   home: verify_env.UserHome, tmp_path: Path):
    ns, _ = installed
    cases = {
        ("--timeout", "soon"): "--timeout 'soon': not a duration",
        ("--config-profile", "../x"): "profile '../x' is not usable as a file name",
        ("--config-profile", "nobody"): "no Metaflow config at ",
    }
    for extra, expected in cases.items():
        line = error_line(user_run(cluster, home, *verify_args(ns, *extra),
                                   tmpdir=tmp_path / "tmp"))
        assert expected in line, line
    line = error_line(user_run(cluster, home, "verify", "--local", "-n", ns, "--release", "nope",
                               tmpdir=tmp_path / "tmp"))
    assert line == f"mfhelm: error: no release 'nope' in namespace '{ns}'; run mfhelm install first"
    assert list((tmp_path / "tmp").iterdir()) == []
