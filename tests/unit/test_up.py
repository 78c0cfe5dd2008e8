"""`mfhelm up` / `mfhelm down` without a cluster: the kind config they make,
and their refusals, one line naming what is missing, before anything is
done.

The commands run as a user runs them (the console entry point in a child
process) with PATH holding only the tools a test gives them: the real kind
and helm from .venv/bin, and the real docker CLI where the machine has one.
There is no Docker engine here: "docker present, engine down" is the real
CLI pointed (DOCKER_HOST) at a socket nothing listens on, which is the same
on a machine where Docker runs. Only on a machine without a docker CLI at
all does a stand-in take its place: a shell script that answers `docker
info` as the CLI does with no engine (the message and exit status 1).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mfhelm import pools, up

VENV_BIN = Path(sys.executable).parent
NO_ENGINE = "Cannot connect to the Docker daemon at {host}. Is the docker daemon running?"


def _kind() -> Path:
    found = shutil.which("kind", path=str(VENV_BIN)) or shutil.which("kind")
    if found is None:
        pytest.skip("kind not built (run `make test-tools`; tools.toml [go.kind] pins it)")
    return Path(found)


def _helm() -> Path:
    found = shutil.which("helm", path=str(VENV_BIN)) or shutil.which("helm")
    if found is None:
        pytest.skip("helm not installed (run `make dev`; tools.toml pins it)")
    return Path(found)


def _docker(bin_dir: Path) -> Path:
    """The docker CLI, real where there is one."""
    real = shutil.which("docker")
    if real is not None:
        return Path(real)
    stand_in = bin_dir.parent / "stand-in" / "docker"
    stand_in.parent.mkdir(exist_ok=True)
    stand_in.write_text('#!/bin/sh\necho "' + NO_ENGINE.format(host="$DOCKER_HOST")
                        + '" >&2\nexit 1\n')
    stand_in.chmod(0o755)
    return stand_in


class Home:
    """A private HOME, kubeconfig and state directory: where `up` would
    write, so a test sees that nothing was."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir()
        self.home = root / "home"
        self.home.mkdir()
        self.env = {
            "PATH": str(self.bin), "HOME": str(self.home),
            "KUBECONFIG": str(root / "kubeconfig"),
            "XDG_STATE_HOME": str(root / "state"),
            "METAFLOW_HOME": str(root / "metaflowconfig"),
            "DOCKER_HOST": f"unix://{root / 'no-engine.sock'}",
        }

    def give(self, name: str, path: Path) -> None:
        (self.bin / name).symlink_to(path)

    def mfhelm(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mfhelm", *args], env=self.env,
                              capture_output=True, text=True, timeout=120, cwd=self.root)

    def written(self) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*")
                      if not p.is_relative_to(self.bin) and p != self.home
                      and "stand-in" not in p.parts)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path)


def _refused(result: subprocess.CompletedProcess[str], home: Home) -> str:
    assert result.returncode == 1, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mfhelm: error: "), result.stderr
    assert home.written() == []
    return lines[0]


# ------------------------------------------------------------------ config

def test_kind_config_is_a_control_plane_and_one_worker_per_pool() -> None:
    config = up.kind_config()
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4" and config["kind"] == "Cluster"
    nodes = config["nodes"]
    assert [n["role"] for n in nodes] == ["control-plane", "worker", "worker", "worker"]
    assert "labels" not in nodes[0] and "kubeadmConfigPatches" not in nodes[0]
    for node, pool in zip(nodes[1:], pools.POOLS, strict=True):
        assert node["labels"] == dict(pool.labels)
        patches = [yaml.safe_load(p) for p in node.get("kubeadmConfigPatches", [])]
        assert all(p["kind"] == "JoinConfiguration" for p in patches)
        taints = [t for p in patches for t in p["nodeRegistration"]["taints"]]
        assert taints == [t.as_dict() for t in pool.taints]


def test_kind_config_labels_and_taints_are_the_aks_pools() -> None:
    by_pool = {n["labels"].get(pools.POOL_LABEL) or n["labels"].get(pools.AKS_MODE_LABEL): n
               for n in up.kind_config()["nodes"][1:]}
    assert by_pool["system"]["labels"] == {"kubernetes.azure.com/mode": "system"}
    assert by_pool["services"]["labels"] == {"mfhelm.io/pool": "services"}
    assert "kubeadmConfigPatches" not in by_pool["services"]
    assert by_pool["taskworkers"]["labels"] == {"mfhelm.io/pool": "taskworkers"}

    def taints(node: dict) -> list[dict]:
        return yaml.safe_load(node["kubeadmConfigPatches"][0])["nodeRegistration"]["taints"]

    assert taints(by_pool["system"]) == [
        {"key": "CriticalAddonsOnly", "value": "true", "effect": "NoSchedule"}]
    assert taints(by_pool["taskworkers"]) == [
        {"key": "mfhelm.io/pool", "value": "taskworkers", "effect": "NoSchedule"}]


def test_the_context_is_kinds_name_for_the_cluster() -> None:
    assert up.context_name("mfhelm") == "kind-mfhelm"
    assert up.context_name("dev.2") == "kind-dev.2"


def test_the_marker_lives_in_the_xdg_state_directory(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert up.creating_marker("x") == tmp_path / "mfhelm" / "kind-x.creating"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert up.creating_marker("x") == tmp_path / ".local" / "state" / "mfhelm" / "kind-x.creating"


# --------------------------------------------------------------- refusals

@pytest.mark.parametrize("command", ["up", "down"])
def test_nothing_on_path_names_kind_and_docker(home: Home, command: str) -> None:
    line = _refused(home.mfhelm(command), home)
    assert f"mfhelm {command} needs kind, a running Docker engine" in line
    assert "kind is not on PATH (https://kind.sigs.k8s.io" in line
    assert "docker is not on PATH (kind runs its nodes in Docker: install Docker Desktop " \
           "or Docker Engine)" in line
    # `down` deletes a cluster: it has no use for helm.
    assert ("helm is not on PATH" in line) == (command == "up")


@pytest.mark.parametrize("command", ["up", "down"])
def test_no_docker_cli_is_named_alone(home: Home, command: str) -> None:
    home.give("kind", _kind())
    home.give("helm", _helm())
    line = _refused(home.mfhelm(command), home)
    assert line == (f"mfhelm: error: mfhelm {command} needs kind, a running Docker engine"
                    f"{' and helm' if command == 'up' else ''}: docker is not on PATH (kind "
                    "runs its nodes in Docker: install Docker Desktop or Docker Engine)")


@pytest.mark.parametrize("command", ["up", "down"])
def test_a_docker_engine_that_does_not_answer_is_named_with_dockers_words(
        home: Home, command: str) -> None:
    home.give("kind", _kind())
    home.give("helm", _helm())
    home.give("docker", _docker(home.bin))
    line = _refused(home.mfhelm(command), home)
    said = NO_ENGINE.format(host=home.env["DOCKER_HOST"])
    assert line.endswith(f": the Docker engine does not answer `docker info` ({said}): start it")
    assert "kind is not" not in line and "helm is not" not in line


def test_no_kind_with_docker_down_names_both(home: Home) -> None:
    home.give("helm", _helm())
    home.give("docker", _docker(home.bin))
    line = _refused(home.mfhelm("up"), home)
    assert "kind is not on PATH" in line and "the Docker engine does not answer" in line
    assert "docker is not on PATH" not in line and "helm is not" not in line


def test_no_helm_is_named_for_up(home: Home) -> None:
    home.give("kind", _kind())
    line = _refused(home.mfhelm("up"), home)
    assert line.endswith("; helm is not on PATH (`make dev` puts the pinned one in .venv/bin)")


@pytest.mark.parametrize("args, says", [
    (["--name", "Mine"], "--name 'Mine': a kind cluster name is lowercase letters"),
    (["--name", "-x"], "--name '-x': a kind cluster name"),
    (["--name", "a" * 41], "at most 40 characters"),
    (["--timeout", "soon"], "--timeout"),
])
def test_bad_arguments_are_refused_before_the_tools_are_looked_for(
        home: Home, args: list[str], says: str) -> None:
    # Nothing on PATH: the argument is what the line is about.
    line = _refused(home.mfhelm("up", *args), home)
    assert says in line and "not on PATH" not in line
    if args[0] == "--name":
        line = _refused(home.mfhelm("down", *args), home)
        assert says in line and "not on PATH" not in line

