"""A hung helm or az, and Ctrl-C or SIGTERM meeting mfhelm while it waits on
one: every child is bounded, runs in its own process group and is stopped
with all of that group; the exit is one line and 128 + the signal; nothing
is left in $TMPDIR.

The point is mfhelm's handling of a child that does not finish, so the
children here are stand-ins that hang on purpose (a `helm` that never
renders, an `az` whose deployment never ends), each with a grandchild of its
own, as helm's plugins or az's Python have. The OCI pull uses the real helm
against a registry that accepts the connection and never answers: helm
4.3.1's `pull --untar` makes $TMPDIR/helm-* before it downloads and removes
it only on return (pkg/action/pull.go), so a stopped pull leaves it unless
mfhelm gives helm a TMPDIR of its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mfhelm import helm as helm_mod
from mfhelm import proc, stack
from mfhelm.errors import MfhelmError

HELM = shutil.which("helm")
PRINCIPAL = "3f2b8c1e-6a4d-4e1f-9b7a-2c5d8e9f0a1b"
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
"""


def started(marker: Path, what: str) -> list[int]:
    """The pids a hung() child wrote to `marker`, once it has (within 60 s)."""
    return [int(p) for p in wait_for(lambda: marker.exists() and marker.read_text().split(),
                                     60, what)]


def hung(marker: Path, *, ignore_term: bool = False) -> str:
    """Shell that records its pid and a grandchild's, then waits on it forever."""
    trap = "trap '' TERM\n" if ignore_term else ""
    return (f"{trap}sleep 300 &\necho \"$$ $!\" > {marker}.tmp && mv {marker}.tmp {marker}\n"
            "while :; do wait; done\n")


def fake_helm(tmp_path: Path, *, version: str = "echo v4.3.1", template: str = "",
              upgrade: str = "") -> Path:
    path = tmp_path / "bin" / "helm"
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/sh\ncase \"$1\" in\n"
                    f"version)\n{version}\n;;\n"
                    f"template)\ncat > /dev/null\n{template or 'exit 0'}\n;;\n"
                    f"upgrade)\ncat > /dev/null\n{upgrade or 'exit 0'}\n;;\n"
                    "*) exit 3 ;;\nesac\n")
    path.chmod(0o755)
    return path


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def group_members(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def assert_stopped(pids: list[int], pgid: int | None = None) -> None:
    """Every recorded process and every member of the group is gone (given
    a moment to be reaped after mfhelm exited)."""
    def left() -> list[int]:
        rest = [p for p in pids if alive(p)]
        return rest + (group_members(pgid) if pgid is not None else [])

    deadline = time.monotonic() + 5
    while left() and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = left()
    for pid in survivors:  # do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"still running after mfhelm exited: {survivors}"


def mfhelm(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "mfhelm", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def one_line_exit(child: subprocess.Popen[str], sig: signal.Signals,
                  within: float = 30) -> str:
    """The exit: one error line, the last thing said, and 128 + the signal."""
    out, err = child.communicate(timeout=within)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    assert "Traceback" not in err, err
    assert errors == lines[-1:], err
    assert lines[-1].startswith(f"mfhelm: error: interrupted ({sig.name}); "), err
    assert child.returncode == 128 + sig, (child.returncode, err)
    return lines[-1]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "tmp").mkdir()
    (tmp_path / "home").mkdir()
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MFHELM_", "KUBE"))}
    return {**base, "TMPDIR": str(tmp_path / "tmp"), "HOME": str(tmp_path / "home"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"}


def install_args(tmp_path: Path) -> list[str]:
    return ["install", "--local", "--no-argo", "-n", "intr", "--kubeconfig",
            str(tmp_path / "kubeconfig")]


# --- the values check (`helm template`, run beside the Kubernetes client's import)

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_the_values_check_stops_helm_template(tmp_path, env, sig):
    """The first signal ends mfhelm (it used to wait for `helm template`
    forever), and `helm template` goes with its group (it used to run on)."""
    marker = tmp_path / "template.pids"
    helm = fake_helm(tmp_path, template=hung(marker))
    child = mfhelm(install_args(tmp_path), {**env, "MFHELM_HELM": str(helm)}, tmp_path)
    try:
        pids = started(marker, "helm template to start")
        time.sleep(0.3)  # the Kubernetes client's import is under way meanwhile
        child.send_signal(sig)
        one_line_exit(child, sig)
    finally:
        if child.poll() is None:
            child.kill()
    assert_stopped(pids, pgid=pids[0])
    assert list((tmp_path / "tmp").iterdir()) == [], "left in TMPDIR"


def test_a_second_signal_kills_a_child_that_ignores_sigterm_at_once(tmp_path, env):
    """A child that ignores SIGTERM gets SIGKILL after proc.GRACE; a second
    Ctrl-C does not wait for that (nor does it cut the cleanup short)."""
    marker = tmp_path / "template.pids"
    helm = fake_helm(tmp_path, template=hung(marker, ignore_term=True))
    child = mfhelm(install_args(tmp_path), {**env, "MFHELM_HELM": str(helm)}, tmp_path)
    try:
        pids = started(marker, "helm template to start")
        child.send_signal(signal.SIGTERM)
        time.sleep(1)
        assert child.poll() is None  # still in the grace period
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        one_line_exit(child, signal.SIGTERM)  # the first signal names the exit
        assert time.monotonic() - sent < proc.GRACE / 2
    finally:
        if child.poll() is None:
            child.kill()
    assert_stopped(pids, pgid=pids[0])
    assert list((tmp_path / "tmp").iterdir()) == [], "left in TMPDIR"


# --- bounds: a helm that never answers is stopped, as a group, with one error

def test_helm_version_that_never_answers_is_bounded(tmp_path, monkeypatch):
    marker = tmp_path / "version.pids"
    helm = fake_helm(tmp_path, version=hung(marker))
    monkeypatch.setattr(proc, "QUICK_TIMEOUT", 1.0)
    started = time.monotonic()
    with pytest.raises(MfhelmError, match=r"`helm version` did not answer within 1s; stopped"):
        helm_mod.Helm(executable=str(helm))
    assert time.monotonic() - started < 15
    pids = [int(p) for p in marker.read_text().split()]
    assert_stopped(pids, pgid=pids[0])


def test_status_with_a_hung_helm_is_bounded(tmp_path, monkeypatch):
    """`mfhelm status` used to wait on `helm version` (through pyhelm3) forever."""
    marker = tmp_path / "version.pids"
    monkeypatch.setenv("MFHELM_HELM", str(fake_helm(tmp_path, version=hung(marker))))
    monkeypatch.setattr(proc, "QUICK_TIMEOUT", 1.0)
    with pytest.raises(MfhelmError, match="did not answer within 1s"):
        stack.status(stack.Target("mf", "mf"))
    pids = [int(p) for p in marker.read_text().split()]
    assert_stopped(pids, pgid=pids[0])


def test_helm_template_that_never_finishes_is_bounded(tmp_path, monkeypatch):
    marker = tmp_path / "template.pids"
    helm = fake_helm(tmp_path, template=hung(marker))
    monkeypatch.setattr(proc, "QUICK_TIMEOUT", 1.0)
    with pytest.raises(proc.TimedOut, match=r"^checking the values \(helm template\) did not "
                       r"finish within 1s; stopped it$"):
        stack.check_values(helm_mod.find_chart(), {}, stack.Target("mf", "mf"), str(helm))
    pids = [int(p) for p in marker.read_text().split()]
    assert_stopped(pids, pgid=pids[0])


def test_helm_upgrade_that_outlives_its_timeout_is_stopped(tmp_path, monkeypatch):
    """helm upgrade gets twice --timeout (its wait, then the rollback's) plus
    HELM_SLACK; past that its whole group is stopped."""
    marker = tmp_path / "upgrade.pids"
    helm = fake_helm(tmp_path, upgrade=hung(marker, ignore_term=True))
    monkeypatch.setattr(helm_mod, "HELM_SLACK", 1.0)
    monkeypatch.setattr(proc, "GRACE", 0.5)
    client = helm_mod.Helm(executable=str(helm), timeout="1s")
    assert client.upgrade_bound() == 3.0
    started = time.monotonic()
    with pytest.raises(proc.TimedOut, match=r"helm upgrade --install mf did not finish within "
                       "3s; stopped it"):
        client.install_or_upgrade("mf", helm_mod.find_chart(), {}, namespace="mf")
    assert 3 <= time.monotonic() - started < 15
    pids = [int(p) for p in marker.read_text().split()]
    assert_stopped(pids, pgid=pids[0])


def test_a_bound_too_long_for_select_still_runs(tmp_path):
    """--timeout may be years; the wait is capped where select() can take it."""
    done = proc.run(["true"], timeout=1e12, what="true")
    assert done.returncode == 0


# --- the OCI pull: the real helm against a registry that never answers

@pytest.fixture
def silent_registry():
    """A TCP server that accepts and reads, and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}", held
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def _helm_children(parent: int) -> list[int]:
    """Processes named helm whose parent is `parent`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            if name == "helm" and int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(HELM is None, reason="helm not on PATH (run `make dev`)")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_an_oci_pull_leaves_no_temporary_directory(tmp_path, env,
                                                                   silent_registry, sig):
    registry, held = silent_registry
    tmpdir = tmp_path / "tmp"
    child = mfhelm([*install_args(tmp_path), "--chart", f"oci://{registry}/charts/metaflow",
                    "--version", "0.1.0", "--plain-http"], env, tmp_path)
    try:
        helm = wait_for(lambda: held and _helm_children(child.pid), 60,
                        "helm pull to connect")
        # helm made its download directory under the TMPDIR it was given
        wait_for(lambda: list(tmpdir.rglob("helm-*")), 10, "helm's temporary directory")
        child.send_signal(sig)
        one_line_exit(child, sig)
    finally:
        if child.poll() is None:
            child.kill()
    assert_stopped(helm, pgid=helm[0])
    assert list(tmpdir.iterdir()) == [], f"left in TMPDIR: {list(tmpdir.rglob('*'))}"


@pytest.mark.skipif(HELM is None, reason="helm not on PATH (run `make dev`)")
def test_an_oci_pull_is_bounded_by_the_timeout(tmp_path, env, silent_registry):
    registry, _ = silent_registry
    done = subprocess.run(
        [sys.executable, "-m", "mfhelm", *install_args(tmp_path), "--timeout", "2s",
         "--chart", f"oci://{registry}/charts/metaflow", "--version", "0.1.0", "--plain-http"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    lines = [ln for ln in done.stderr.splitlines() if not ln.startswith("> ")]
    assert done.returncode == 1
    assert lines == [f"mfhelm: error: pulling oci://{registry}/charts/metaflow 0.1.0 did not "
                     "finish within 2s; stopped it"], done.stderr
    assert list((tmp_path / "tmp").iterdir()) == []


# --- `mfhelm deploy`: az stopped, and the user told the deployment goes on in Azure

FAKE_AZ = """#!/bin/sh
case "$1 $2 $3" in
"account show "*) echo '{{"id": "sub", "user": {{"name": "ada@example.com", "type": "user"}}}}' ;;
"ad signed-in-user show") echo '{{"id": "{principal}"}}' ;;
"deployment sub show"|"deployment group show")
  echo "ERROR: (DeploymentNotFound) Deployment could not be found." >&2; exit 3 ;;
"deployment sub create")
{create}
  ;;
*) echo "ERROR: fake az does not know $*" >&2; exit 2 ;;
esac
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_mfhelm_deploy_stops_az(tmp_path, env, sig):
    marker = tmp_path / "az.pids"
    bindir = tmp_path / "azbin"
    bindir.mkdir()
    az = bindir / "az"
    az.write_text(FAKE_AZ.format(principal=PRINCIPAL, create=hung(marker)))
    az.chmod(0o755)
    (tmp_path / "mfhelm.toml").write_text('org_prefix = "acme"\nlocation = "westeurope"\n')
    child = mfhelm(["deploy", "--skip-preflight"],
                   {**env, "PATH": f"{bindir}{os.pathsep}{env['PATH']}"}, tmp_path)
    try:
        pids = started(marker, "az deployment sub create to start")
        child.send_signal(sig)
        line = one_line_exit(child, sig)
    finally:
        if child.poll() is None:
            child.kill()
    assert "az was stopped, but the deployment acme-metaflow may go on in Azure" in line
    assert "az deployment sub show --name acme-metaflow" in line
    assert_stopped(pids, pgid=pids[0])
    assert list((tmp_path / "tmp").iterdir()) == []
