"""`mfhelm verify` and `mfhelm install --verify` refuse bad input in one line,
before the cluster is asked anything and before verify makes its scratch
directory (the kubeconfig given points at no cluster: asking it would be a
different error)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CONFIG = {
    "METAFLOW_DEFAULT_DATASTORE": "azure",
    "METAFLOW_DATASTORE_SYSROOT_AZURE": "metaflow/metaflow",
    "METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT": "https://acme.blob.core.windows.net/",
    "METAFLOW_SERVICE_URL": "http://localhost:8080",
}


@pytest.fixture
def user(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("METAFLOW_", "KUBE", "AZURE_"))}
    (tmp_path / "tmp").mkdir()
    (tmp_path / "mfhome").mkdir()
    # A kubeconfig whose server nothing listens on.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}]}))
    return env | {"HOME": str(tmp_path), "TMPDIR": str(tmp_path / "tmp"),
                  "METAFLOW_HOME": str(tmp_path / "mfhome"), "KUBECONFIG": str(kubeconfig)}


def mfhelm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mfhelm", *args], capture_output=True,
                          text=True, env=env, cwd=env["HOME"], timeout=120)


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mfhelm: error: "), proc.stderr
    return lines[0].removeprefix("mfhelm: error: ")


@pytest.mark.parametrize("args, expected", [
    (("--timeout", "soon"), "--timeout 'soon': not a duration"),
    (("--timeout", "0s"), "--timeout '0s': must be longer than zero"),
    (("--config-profile", "a/b"), "profile 'a/b' is not usable as a file name"),
    (("-n", "Bad_NS"), "--namespace 'Bad_NS': must be a lowercase DNS label"),
])
def test_bad_arguments(user: dict[str, str], args: tuple[str, ...], expected: str):
    Path(user["METAFLOW_HOME"], "config.json").write_text(json.dumps(CONFIG))
    assert one_line(mfhelm(user, "verify", "--local", *args)).startswith(expected)
    assert not list(Path(user["TMPDIR"]).iterdir())


def test_no_metaflow_config(user: dict[str, str]):
    line = one_line(mfhelm(user, "verify", "--local"))
    assert line.startswith(f"no Metaflow config at {user['METAFLOW_HOME']}/config.json: "
                           "write it with `mfhelm config`")
    line = one_line(mfhelm(user, "verify", "--local", "--config-profile", "team"))
    assert f"{user['METAFLOW_HOME']}/config_team.json" in line
    assert not list(Path(user["TMPDIR"]).iterdir())


def test_a_config_for_another_datastore(user: dict[str, str]):
    Path(user["METAFLOW_HOME"], "config.json").write_text(
        json.dumps(CONFIG | {"METAFLOW_DEFAULT_DATASTORE": "s3"}))
    assert "METAFLOW_DEFAULT_DATASTORE is 's3', not 'azure'" in one_line(
        mfhelm(user, "verify", "--local"))


def test_install_verify_refuses_before_installing(user: dict[str, str]):
    line = one_line(mfhelm(user, "install", "--local", "--verify"))
    assert line.startswith("no Metaflow config at ")


def test_with_a_config_the_cluster_is_asked(user: dict[str, str]):
    """The refusals above are verify's own: with a config, the next error is
    the cluster's (nothing listens there)."""
    Path(user["METAFLOW_HOME"], "config.json").write_text(json.dumps(CONFIG))
    line = one_line(mfhelm(user, "verify", "--local"))
    assert "no Metaflow config" not in line and "--timeout" not in line
    assert not list(Path(user["TMPDIR"]).iterdir())
