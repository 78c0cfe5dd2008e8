"""Ctrl-C or SIGTERM while `mfhelm install` waits on helm: the whole helm
process group stops, nothing is left in $TMPDIR, the release is not left
pending, and the next install goes through."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from .handle import Cluster
from .test_e2e_stack import install_local, one_error_line, tool_env

pytestmark = pytest.mark.cluster


def _helm_pids(namespace: str) -> list[int]:
    """helm processes working on this namespace (their argv names it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"helm") and namespace.encode() in argv:
            pids.append(int(entry.name))
    return pids


def _pending(cluster: Cluster, namespace: str, release: str) -> list[str]:
    secrets = cluster.core().list_namespaced_secret(
        namespace, label_selector=f"owner=helm,name={release}").items
    return [s.metadata.labels["status"] for s in secrets
            if s.metadata.labels["status"].startswith("pending-")]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_interrupted_install_stops_helm_cleans_up_and_recovers(cluster: Cluster, tmp_path: Path,
                                                               sig: signal.Signals):
    ns = cluster.create_namespace(f"intr-{uuid.uuid4().hex[:6]}")
    stuck = tmp_path / "stuck.yaml"
    # Valid values whose pods can never be scheduled: helm waits, pending-install.
    stuck.write_text("serviceNodeSelector:\n  mfhelm.io/pool: nowhere\n")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**tool_env(cluster), "TMPDIR": str(tmpdir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mfhelm", "install", "--local", "--no-argo", "-n", ns,
         "--release", "intr", "--timeout", "5m", "-f", str(stuck),
         "--kubeconfig", str(cluster.kubeconfig)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        cluster.wait_for(lambda: _pending(cluster, ns, "intr") and _helm_pids(ns), 120,
                         "helm to be waiting on a pending-install release")
        helm = _helm_pids(ns)
        assert any(os.getpgid(pid) != os.getpgid(proc.pid) for pid in helm)  # its own group
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    line = one_error_line(result)
    assert "interrupted" in line
    assert proc.returncode == 128 + sig  # 130 for SIGINT, 143 for SIGTERM
    deadline = time.monotonic() + 10
    while _helm_pids(ns) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _helm_pids(ns), "helm kept running after mfhelm stopped"
    assert list(tmpdir.iterdir()) == [], "left behind in TMPDIR"
    assert not _pending(cluster, ns, "intr")

    # The next install (schedulable this time) goes through.
    again = install_local(cluster, ns, "intr")
    assert again.returncode == 0, again.stderr
    assert "deployed" in again.stdout


def test_a_pending_release_left_by_a_killed_install(cluster: Cluster, namespace: str):
    """A revision left pending (the install was SIGKILLed, or crashed) is
    cleared by the next install once it is older than that install's
    --timeout; a younger one may belong to a live install and is refused."""
    assert install_local(cluster, namespace, "kld").returncode == 0
    core = cluster.core()
    record = core.list_namespaced_secret(
        namespace, label_selector="owner=helm,name=kld,version=1").items[0]
    core.patch_namespaced_secret(record.metadata.name, namespace,
                                 {"metadata": {"labels": {"status": "pending-upgrade"}}})
    line = one_error_line(install_local(cluster, namespace, "kld"))
    assert "release kld is pending-upgrade (revision 1" in line
    assert "another install may be running" in line
    time.sleep(2)
    proc = subprocess.run(
        [sys.executable, "-m", "mfhelm", "install", "--local", "--no-argo", "-n", namespace,
         "--release", "kld", "--timeout", "1s", "--kubeconfig", str(cluster.kubeconfig)],
        capture_output=True, text=True, env=tool_env(cluster), timeout=300)
    # The stale record is gone; helm then installs anew (adopting the
    # objects, which carry the release's annotations). A 1s wait may time out,
    # and then rolls back: either way nothing is pending any more.
    assert not _pending(cluster, namespace, "kld"), proc.stderr
    assert install_local(cluster, namespace, "kld").returncode == 0
