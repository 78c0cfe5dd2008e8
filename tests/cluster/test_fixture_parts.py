"""Parts of the cluster fixture that can be checked without a cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .controlplane import Processes, _shim_links
from .handle import exit_code
from .kindcluster import kind_config


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: only its parent has not collected it yet.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))


def test_stop_ends_children_of_components_too(tmp_path: Path) -> None:
    procs = Processes(tmp_path)
    pidfile = tmp_path / "grandchild.pid"
    # A component that ignores SIGTERM and has a child of its own, like a
    # wedged server: stop() must still leave nothing behind.
    script = (
        "import signal, subprocess, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "p = subprocess.Popen(['sleep', '300'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(300)\n"
    )
    procs.start("stubborn", [sys.executable, "-c", script])
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline, procs.tail("stubborn")
        time.sleep(0.05)
    leader, grandchild = procs.running["stubborn"].pid, int(pidfile.read_text())

    procs.stop()

    assert not _alive(leader)
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)
    assert procs.running == {}


def test_check_reports_a_dead_component_with_its_log(tmp_path: Path) -> None:
    procs = Processes(tmp_path)
    procs.start("broken", [sys.executable, "-c", "print('bad flag --foo'); raise SystemExit(2)"])
    procs.running["broken"].wait(timeout=10)
    with pytest.raises(RuntimeError, match=r"broken exited with 2:\n.*bad flag --foo"):
        procs.check()
    procs.stop()


def test_a_restarted_component_reads_only_its_own_log(tmp_path: Path) -> None:
    # The log of a name is kept across runs; a readiness line or an error an
    # earlier run wrote must not be read as the new run's.
    procs = Processes(tmp_path)
    procs.start("ctl", [sys.executable, "-c", "print('first run: started; forbidden')"])
    procs.running["ctl"].wait(timeout=10)
    procs.start("ctl", [sys.executable, "-c", "print('second run')"])
    procs.running["ctl"].wait(timeout=10)
    assert procs.text("ctl") == "second run\n"
    assert procs.tail("ctl") == "second run"
    assert "first run" in (tmp_path / "ctl.log").read_text()
    procs.stop()


def test_kind_workers_carry_the_pool_labels_and_taints() -> None:
    nodes = kind_config()["nodes"]
    assert isinstance(nodes, list)
    workers = {n.get("labels", {}).get("mfhelm.io/pool") or "system": n
               for n in nodes if n["role"] == "worker"}
    assert set(workers) == {"system", "services", "taskworkers"}

    def taints(node: dict) -> list[dict]:
        patches = [yaml.safe_load(p) for p in node.get("kubeadmConfigPatches", [])]
        return [t for p in patches if p["kind"] == "JoinConfiguration"
                for t in p["nodeRegistration"]["taints"]]

    assert taints(workers["taskworkers"]) == [
        {"key": "mfhelm.io/pool", "value": "taskworkers", "effect": "NoSchedule"}]
    assert taints(workers["system"]) == [
        {"key": "CriticalAddonsOnly", "value": "true", "effect": "NoSchedule"}]
    assert taints(workers["services"]) == []


def test_exit_code_reads_kubelet_and_kwok_statuses() -> None:
    kubelet = {"status": "Failure", "reason": "NonZeroExitCode",
               "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}}
    kwok = {"status": "Failure", "reason": "InternalError",
            "message": "Internal error occurred: error executing command in container: "
                       "cmd wait: sh -c exit 3: exit status 3"}
    assert exit_code(json.dumps({"status": "Success"})) == 0
    assert exit_code(json.dumps(kubelet)) == 3
    assert exit_code(json.dumps(kwok)) == 3
    with pytest.raises(RuntimeError, match="not found"):
        exit_code(json.dumps({"status": "Failure", "message": 'exec: "nope": not found'}))


def test_the_shim_runs_any_command_with_the_pods_volumes_mounted(tmp_path: Path) -> None:
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("unshare --mount is not permitted here (the shim needs it)")
    links = tmp_path / "links"
    host_path = os.environ["PATH"]
    _shim_links(links, host_path)
    volume, mount_point = tmp_path / "volume", tmp_path / "mnt" / "deep"
    volume.mkdir()
    (volume / "seed").write_text("from the volume\n")
    env = dict(os.environ, PATH=str(links), MFHELM_HOST_PATH=host_path,
               MFHELM_POD_MOUNTS=f"{volume}\t{mount_point}")

    def run(*argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        # Resolved the way KWOK resolves a pod's command: on its PATH.
        return subprocess.run([str(links / argv[0]), *argv[1:]], input=stdin,
                              capture_output=True, env=env, cwd=tmp_path)

    done = run("sh", "-c", f"echo hi > {mount_point}/f; cat; exit 4", stdin=b"stdin\n")
    assert (done.returncode, done.stdout) == (4, b"stdin\n"), done.stderr
    assert (volume / "f").read_text() == "hi\n"
    assert not (mount_point / "f").exists()  # the host's directory was never written

    done = run("cat", str(mount_point / "seed"))
    assert (done.returncode, done.stdout) == (0, b"from the volume\n"), done.stderr
    # A command that left the host's PATH after the links were made.
    (links / "vanished-command").symlink_to(links / "cat")
    done = run("vanished-command")
    assert (done.returncode, done.stderr) == (127, b"vanished-command: command not found\n")
