"""Files the user names (settings, outputs, kubeconfig, values, DAGs, -o, the
Metaflow config under HOME): every way they can be unusable ends in one line.

Most cases run through the real entry point in-process. Permission cases run
`python -m mfhelm` as an unprivileged user, since root reads and writes
through permission bits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import assert_one_line_error, write_outputs

DAG = "from airflow import DAG\nwith DAG('x') as dag:\n    pass\n"
SETTINGS = 'org_prefix = "acme"\nlocation = "westeurope"\n'
NOBODY = 65534


# ------------------------------------------------------ unusable paths

def _directory(p: Path) -> Path:
    p.mkdir()
    return p


def _symlink_loop(p: Path) -> Path:
    p.symlink_to(p.name)  # points at itself
    return p


def _not_utf8(p: Path) -> Path:
    p.write_bytes(b"org_prefix = \"\xff\xfe\"\n")
    return p


def _fifo(p: Path) -> Path:
    # Opening a FIFO for reading blocks until a writer comes: a naive reader hangs.
    os.mkfifo(p)
    return p


def _parent_is_a_file(p: Path) -> Path:
    p.write_text("x")
    return p / "inside"


def _in_missing_directory(p: Path) -> Path:
    return p / "no" / "such"


BAD_INPUTS = {
    "directory": (_directory, "is a directory"),
    "symlink loop": (_symlink_loop, "symlink loop"),
    "not utf-8": (_not_utf8, "not UTF-8"),
    "fifo": (_fifo, "not a regular file"),
    "parent is a file": (_parent_is_a_file, "not a directory"),
    "missing directory": (_in_missing_directory, "no such file"),
}


def _bad(workdir: Path, kind: str, suffix: str) -> tuple[Path, str]:
    make, fragment = BAD_INPUTS[kind]
    return make(workdir / f"bad{suffix}"), fragment


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_settings_path_that_cannot_be_read(cli, workdir, kind):
    bad, fragment = _bad(workdir, kind, ".toml")
    outputs = write_outputs(workdir / "outputs.json")
    r = cli("render", "--settings", str(bad), "--outputs", str(outputs))
    assert_one_line_error(r, str(bad), fragment)


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_outputs_path_that_cannot_be_read(cli, workdir, kind):
    bad, fragment = _bad(workdir, kind, ".json")
    assert_one_line_error(cli("render", "--outputs", str(bad)), str(bad), fragment)
    assert_one_line_error(cli("config", "--outputs", str(bad), "--print"), str(bad), fragment)


@pytest.mark.parametrize("kind", BAD_INPUTS)
@pytest.mark.parametrize("command", [["status"], ["uninstall"], ["port-forward"],
                                     ["dag-push", "--list"], ["install", "--local", "--no-argo"]])
def test_kubeconfig_path_that_cannot_be_read(cli, workdir, kind, command):
    bad, fragment = _bad(workdir, kind, ".yaml")
    r = cli(*command, "--kubeconfig", str(bad))
    assert_one_line_error(r, "kubeconfig", str(bad), fragment)


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_values_path_that_cannot_be_read(cli, workdir, kind):
    bad, fragment = _bad(workdir, kind, ".yaml")
    assert_one_line_error(cli("install", "--local", "-f", str(bad)), str(bad), fragment)


@pytest.mark.parametrize("kind", ["symlink loop", "fifo", "parent is a file"])
def test_dag_path_that_cannot_be_read(cli, workdir, kind):
    bad, fragment = _bad(workdir, kind, ".py")
    r = cli("dag-push", str(bad), "--kubeconfig", str(workdir / "no-kubeconfig"))
    assert_one_line_error(r, str(bad), fragment)


def test_kubeconfig_that_is_not_yaml(cli, workdir):
    kc = workdir / "kubeconfig"
    kc.write_text("{{{{ not: yaml: [\n")
    assert_one_line_error(cli("status", "--kubeconfig", str(kc)), str(kc), "not valid YAML")
    kc.write_text("just a string\n")
    assert_one_line_error(cli("status", "--kubeconfig", str(kc)), str(kc), "mapping")


# ------------------------------------------------------ absurd content

def test_absurdly_nested_outputs_json(cli, workdir):
    bad = workdir / "outputs.json"
    bad.write_text("[" * 100_000 + "]" * 100_000)
    assert_one_line_error(cli("render", "--outputs", str(bad)), str(bad), "nested too deeply")


def test_absurdly_nested_settings_toml(cli, workdir):
    (workdir / "mfhelm.toml").write_text(SETTINGS + "x = " + "[" * 100_000 + "]" * 100_000)
    outputs = write_outputs(workdir / "outputs.json")
    assert_one_line_error(cli("render", "--outputs", str(outputs)), "mfhelm.toml",
                          "nested too deeply")


def test_absurdly_nested_values_yaml(cli, workdir):
    bad = workdir / "values.yaml"
    bad.write_text("a: " + "[" * 100_000 + "]" * 100_000)
    assert_one_line_error(cli("install", "--local", "-f", str(bad)), str(bad), "nested too deeply")


def test_absurdly_nested_kubeconfig(cli, workdir):
    bad = workdir / "kubeconfig"
    bad.write_text("a: " + "[" * 100_000 + "]" * 100_000)
    assert_one_line_error(cli("status", "--kubeconfig", str(bad)), str(bad), "nested too deeply")


def test_absurdly_nested_existing_metaflow_config(cli, workdir):
    cfgdir = workdir / "home" / ".metaflowconfig"
    cfgdir.mkdir()
    (cfgdir / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    outputs = write_outputs(workdir / "outputs.json")
    assert_one_line_error(cli("config", "--outputs", str(outputs)), "config.json",
                          "nested too deeply")


def test_huge_settings_file_fails_fast(cli, workdir):
    huge = workdir / "mfhelm.toml"
    with huge.open("wb") as fh:  # sparse: a size, no data
        fh.truncate(2 * 1024**3)
    outputs = write_outputs(workdir / "outputs.json")
    assert_one_line_error(cli("render", "--outputs", str(outputs)), "mfhelm.toml", "larger than")


# ------------------------------------------------------ writing

BAD_OUTPUTS = {
    "directory": (_directory, "is a directory"),
    "symlink loop": (_symlink_loop, "symlink loop"),
    "parent is a file": (_parent_is_a_file, "not a directory"),
    "missing directory": (_in_missing_directory, "does not exist"),
}


@pytest.mark.parametrize("kind", BAD_OUTPUTS)
def test_render_output_path_that_cannot_be_written(cli, workdir, kind):
    make, fragment = BAD_OUTPUTS[kind]
    bad = make(workdir / "out.yaml")
    outputs = write_outputs(workdir / "outputs.json")
    r = cli("render", "--outputs", str(outputs), "-o", str(bad))
    assert_one_line_error(r, str(bad), fragment)
    assert not list(workdir.glob("**/.out.yaml*")) and not list(workdir.glob("**/*.tmp"))


def test_render_output_through_a_symlink_is_refused(cli, workdir):
    # More cases (dangling links, init, config) in test_cli_bad_input.py.
    target = workdir / "real.yaml"
    target.write_text("old")
    (workdir / "link.yaml").symlink_to("real.yaml")
    r = cli("render", "--outputs", str(write_outputs(workdir / "outputs.json")),
            "-o", "link.yaml")
    assert_one_line_error(r, "link.yaml", "symbolic link")
    assert (workdir / "link.yaml").is_symlink()
    assert target.read_text() == "old"


def test_render_output_to_dev_null_is_allowed(cli, workdir):
    r = cli("render", "--outputs", str(write_outputs(workdir / "outputs.json")),
            "-o", os.devnull)
    assert r.code == 0, r.err
    assert Path(os.devnull).is_char_device()


def test_render_output_to_a_fifo_nobody_reads(cli, workdir):
    fifo = workdir / "out.fifo"
    os.mkfifo(fifo)
    r = cli("render", "--outputs", str(write_outputs(workdir / "outputs.json")),
            "-o", str(fifo))
    assert_one_line_error(r, str(fifo), "nobody is reading")


@pytest.mark.parametrize("kind", [*BAD_OUTPUTS, "fifo"])
def test_init_settings_path_that_cannot_be_written(cli, workdir, kind):
    make, fragment = {**BAD_OUTPUTS, "fifo": (_fifo, "not a regular file")}[kind]
    bad = make(workdir / "new.toml")
    r = cli("init", "--org-prefix", "acme", "--settings", str(bad), "--force")
    assert_one_line_error(r, str(bad), fragment)


def test_config_with_home_a_regular_file(cli, workdir, monkeypatch):
    home = workdir / "home-file"
    home.write_text("not a directory")
    monkeypatch.setenv("HOME", str(home))
    outputs = write_outputs(workdir / "outputs.json")
    r = cli("config", "--outputs", str(outputs))
    assert_one_line_error(r, ".metaflowconfig", "not a directory")
    assert home.read_text() == "not a directory"


def test_config_with_metaflowconfig_a_regular_file(cli, workdir):
    (workdir / "home" / ".metaflowconfig").write_text("x")
    outputs = write_outputs(workdir / "outputs.json")
    assert_one_line_error(cli("config", "--outputs", str(outputs)), ".metaflowconfig",
                          "not a directory")


def test_config_existing_file_not_utf8(cli, workdir):
    cfgdir = workdir / "home" / ".metaflowconfig"
    cfgdir.mkdir()
    (cfgdir / "config.json").write_bytes(b'{"A": "\xff"}')
    outputs = write_outputs(workdir / "outputs.json")
    assert_one_line_error(cli("config", "--outputs", str(outputs)), "config.json", "not UTF-8")
    assert (cfgdir / "config.json").read_bytes() == b'{"A": "\xff"}'


# ---------------------------------------- permissions (as an unprivileged user)

@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged user can enter (pytest's tmp_path is 0700 root's)."""
    path = Path(tempfile.mkdtemp(prefix="mfhelm-perm-"))
    path.chmod(0o755)
    (path / "home").mkdir()
    (path / "home").chmod(0o777)
    (path / "mfhelm.toml").write_text(SETTINGS)
    write_outputs(path / "outputs.json")
    for f in ("mfhelm.toml", "outputs.json"):
        (path / f).chmod(0o644)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def mfhelm_unprivileged(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m mfhelm ARGS` as a user whom permission bits apply to.

    As root, through setpriv: it switches to nobody and drops every
    capability at exec, after resolving the interpreter (which may live
    under root's 0700 home, where nobody could not exec it itself)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("needs setpriv (util-linux) to drop root: permission bits would not apply")
        prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(cwd / "home"),
           "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([*prefix, sys.executable, "-m", "mfhelm", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)
    if "setpriv:" in proc.stderr:  # no CAP_SETUID in this sandbox
        pytest.skip(f"needs to run as an unprivileged user (setpriv): {proc.stderr.strip()}")
    return proc


def one_error_line(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("mfhelm: error: "), proc.stderr
    for frag in fragments:
        assert frag in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("option", ["--settings", "--outputs"])
def test_unreadable_input_file(shared_dir, option):
    secret = shared_dir / "unreadable"
    secret.write_text("{}")
    secret.chmod(0o000)
    args = ["render", "--outputs", "outputs.json", option, str(secret)]
    one_error_line(mfhelm_unprivileged(shared_dir, *args), str(secret), "permission denied")


def test_unreadable_kubeconfig(shared_dir):
    kc = shared_dir / "kubeconfig"
    kc.write_text("apiVersion: v1\n")
    kc.chmod(0o000)
    proc = mfhelm_unprivileged(shared_dir, "status", "--kubeconfig", str(kc))
    one_error_line(proc, str(kc), "permission denied")


def test_output_into_read_only_directory(shared_dir):
    ro = shared_dir / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    proc = mfhelm_unprivileged(shared_dir, "render", "--outputs", "outputs.json",
                               "-o", str(ro / "values.yaml"))
    one_error_line(proc, str(ro / "values.yaml"), "permission denied")
    assert not list(ro.iterdir())


def test_init_into_read_only_directory(shared_dir):
    ro = shared_dir / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    proc = mfhelm_unprivileged(shared_dir, "init", "--org-prefix", "acme",
                               "--settings", str(ro / "mfhelm.toml"))
    one_error_line(proc, str(ro / "mfhelm.toml"), "permission denied")


def test_config_home_where_metaflowconfig_cannot_be_created(shared_dir):
    (shared_dir / "home").chmod(0o555)
    proc = mfhelm_unprivileged(shared_dir, "config", "--outputs", "outputs.json")
    one_error_line(proc, ".metaflowconfig", "permission denied")
    assert not (shared_dir / "home" / ".metaflowconfig").exists()


def test_config_file_unreadable(shared_dir):
    cfgdir = shared_dir / "home" / ".metaflowconfig"
    cfgdir.mkdir()
    cfgdir.chmod(0o777)
    (cfgdir / "config.json").write_text(json.dumps({"K": "v"}))
    (cfgdir / "config.json").chmod(0o000)
    proc = mfhelm_unprivileged(shared_dir, "config", "--outputs", "outputs.json")
    one_error_line(proc, "config.json", "permission denied")


def _in_read_only_mount(directory: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m mfhelm ARGS` in a private mount namespace where `directory`
    is bind-mounted read-only over itself: a real EROFS, gone when it exits."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root and unshare")
    script = 'mount --bind -o ro "$0" "$0" && shift && exec "$@"'
    proc = subprocess.run(
        [unshare, "--mount", "--propagation", "private", "sh", "-c", script, str(directory),
         "unused", sys.executable, "-m", "mfhelm", *args],
        capture_output=True, text=True, cwd=cwd, timeout=120,
        env={**os.environ, "HOME": str(cwd / "home")})
    if "mount:" in proc.stderr or "unshare:" in proc.stderr:
        pytest.skip(f"needs a private read-only mount (unshare --mount): {proc.stderr.strip()}")
    return proc


def test_output_on_a_read_only_file_system(workdir):
    ro = workdir / "ro"
    ro.mkdir()
    write_outputs(workdir / "outputs.json")
    proc = _in_read_only_mount(ro, workdir, "render", "--outputs", "outputs.json",
                               "-o", str(ro / "values.yaml"))
    one_error_line(proc, str(ro / "values.yaml"), "read-only file system")
    assert not list(ro.iterdir())


def test_metaflow_config_on_a_read_only_file_system(workdir):
    write_outputs(workdir / "outputs.json")
    proc = _in_read_only_mount(workdir / "home", workdir, "config", "--outputs", "outputs.json")
    one_error_line(proc, ".metaflowconfig", "read-only file system")
