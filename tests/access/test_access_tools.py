"""The sign-in tools are the pinned ones, and tests/tools/install.py builds
and installs them as tools.toml says ([go.oauth2-proxy],
[gobuild.oidc-server], [debian])."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import accesskit
import pytest

ROOT = accesskit.ROOT
WRAPPER = ROOT / "tests" / "tools" / "gobuild" / "oidc-server"


def _manifest() -> dict:
    return accesskit.installer().load_manifest()


def test_the_oidc_wrapper_requires_the_pinned_zitadel_release() -> None:
    entry = _manifest()["gobuild"]["oidc-server"]
    gomod = (WRAPPER / "go.mod").read_text()
    assert re.search(rf"^\s*{re.escape(entry['module'])} {re.escape(entry['version'])}$",
                     gomod, re.M)
    assert "=>" not in gomod


def test_oauth2_proxy_says_its_pinned_version(oauth2_proxy_binary: Path) -> None:
    version = _manifest()["go"]["oauth2-proxy"]["version"]
    out = subprocess.run([str(oauth2_proxy_binary), "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith(f"oauth2-proxy {version} ")


def _installer_copy(tmp_path: Path) -> Path:
    """install.py and the OIDC wrapper in a tree of their own (install.py
    finds the wrapper relative to itself)."""
    shutil.copytree(WRAPPER, tmp_path / "tests" / "tools" / "gobuild" / "oidc-server")
    shutil.copy(ROOT / "tests" / "tools" / "install.py", tmp_path / "tests" / "tools")
    shutil.copy(ROOT / "tools.toml", tmp_path)
    return tmp_path / "tests" / "tools" / "install.py"


def _home_of(install: Path, name: str) -> str:
    return subprocess.run([sys.executable, str(install), "--path-of", name],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_an_edit_to_the_wrappers_own_source_is_a_new_build(tmp_path: Path) -> None:
    install = _installer_copy(tmp_path)
    before = _home_of(install, "oidc-server")
    main = install.parent / "gobuild" / "oidc-server" / "main.go"
    main.write_text(main.read_text() + "\n// changed\n")

    after = _home_of(install, "oidc-server")

    assert before != after
    assert re.search(r"/oidc-server-v3\.52\.0-[0-9a-f]{10}/bin/oidc-server$", after)
    # Wrappers that only pin upstream modules keep their plain version.
    assert _home_of(install, "etcd").endswith("/etcd-v3.6.16/bin/etcd")


def _install_debian_as(binaries: dict[str, str], uid: int | None
                       ) -> subprocess.CompletedProcess:
    # Not pytest's tmp_path: its parent is private to root.
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        tmp_path.chmod(0o755)
        return _install_debian_in(tmp_path, binaries, uid)


def _install_debian_in(tmp_path: Path, binaries: dict[str, str], uid: int | None
                       ) -> subprocess.CompletedProcess:
    install = _installer_copy(tmp_path)
    toml = install.parents[2] / "tools.toml"
    text = toml.read_text()
    start = text.index("[debian]")
    section = ("[debian]\npackages = [" + ", ".join(f'"{p}"' for p in binaries) + "]\n"
               "binaries = { " + ", ".join(f'{p} = "{b}"' for p, b in binaries.items()) + " }\n")
    toml.write_text(text[:start] + section)
    for path in tmp_path.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    prefix = [] if uid is None else ["setpriv", f"--reuid={uid}", f"--regid={uid}",
                                     "--clear-groups"]
    return subprocess.run([*prefix, sys.executable, str(install), "--only", "debian"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root to become another user (setpriv)")
def test_without_root_a_missing_package_is_named_and_nothing_is_installed() -> None:
    done = _install_debian_as({"mfhelm-test-absent": "/nonexistent/mfhelm-absent",
                                         "coreutils": "/bin/ls"}, uid=65534)

    assert done.returncode == 0, done.stderr
    assert "apt-get update" not in done.stderr
    assert done.stderr.strip() == (
        "mfhelm tools: mfhelm-test-absent not installed (needs root: apt-get install "
        "mfhelm-test-absent); the browser tests skip without them")


def test_installed_packages_are_left_alone() -> None:
    done = _install_debian_as({"coreutils": "/bin/ls"}, uid=None)

    assert (done.returncode, done.stderr) == (0, "")

