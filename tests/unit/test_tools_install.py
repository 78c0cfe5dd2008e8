"""tests/tools/install.py's cache: a warm tool home is trusted only for the
set of binaries it was built with, so a binary added to a tool (argoexec to
[gobuild.argo]) is built, not missed because an older home exists."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def inst() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "mfhelm_tools_install_unit", ROOT / "tests" / "tools" / "install.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _home(tmp_path: Path, binaries: list[str], marker: str) -> Path:
    home = tmp_path / "tool"
    (home / "bin").mkdir(parents=True)
    for b in binaries:
        (home / "bin" / b).write_text("")
    (home / ".complete").write_text(marker)
    return home


def test_a_home_built_for_other_binaries_is_not_complete(inst: ModuleType, tmp_path: Path):
    entry = {"version": "v4.0.7", "binaries": ["workflow-controller", "argo", "argoexec"]}
    # argoexec put in by hand beside a build of the other two.
    home = _home(tmp_path, entry["binaries"], "v4.0.7\nworkflow-controller argo\n")
    assert not inst.is_complete(home, entry)
    (home / ".complete").write_text("v4.0.7\nargoexec argo workflow-controller\n")
    assert inst.is_complete(home, entry)


def test_a_missing_binary_or_marker_is_not_complete(inst: ModuleType, tmp_path: Path):
    entry = {"version": "v1", "binaries": ["a", "b"]}
    home = _home(tmp_path, ["a"], "v1\na b\n")
    assert not inst.is_complete(home, entry)
    (home / "bin" / "b").write_text("")
    assert inst.is_complete(home, entry)
    (home / ".complete").unlink()
    assert not inst.is_complete(home, entry)


def test_an_old_marker_still_needs_every_binary(inst: ModuleType, tmp_path: Path):
    """Markers written before they named the binaries (the version only)."""
    entry = {"version": "v1", "binaries": ["a", "b"]}
    assert not inst.is_complete(_home(tmp_path, ["a"], "v1\n"), entry)
    assert inst.is_complete(_home(tmp_path / "2", ["a", "b"], "v1\n"), entry)


def test_a_patched_module_build_is_homed_by_its_recipe(inst: ModuleType,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path):
    monkeypatch.setenv("MFHELM_CACHE", str(tmp_path))
    argo = inst.load_manifest()["gobuild"]["argo"]
    home = inst.tool_home("argo", argo)
    assert home.parent == tmp_path / "tools"
    assert home.name.startswith(f"argo-{argo['version']}-")
    fewer = {**argo, "packages": argo["packages"][:2], "binaries": argo["binaries"][:2]}
    assert inst.tool_home("argo", fewer) != home
    other_link = {**argo, "links": {"x/y.go": "z.go"}}
    assert inst.tool_home("argo", other_link) != home
    # A tool built from the plain module keeps its plain home.
    etcd = inst.load_manifest()["gobuild"]["etcd"]
    assert inst.tool_home("etcd", etcd) == tmp_path / "tools" / f"etcd-{etcd['version']}"


def test_both_argo_builds_restore_the_executors_symlink(inst: ModuleType):
    """One key (`links`) for the repository links both builds need: the
    executor's signal_linux.go -> signal_darwin.go, in os-specific/ at
    v3.6.10 and osspecific/ at v4.0.7 (git ls-tree: mode 120000)."""
    gobuild = inst.load_manifest()["gobuild"]
    assert gobuild["argo"]["links"] == {
        "workflow/executor/osspecific/signal_linux.go": "signal_darwin.go"}
    assert gobuild["argo-previous"]["links"] == {
        "workflow/executor/os-specific/signal_linux.go": "signal_darwin.go"}
    assert "argoexec" in gobuild["argo"]["binaries"]
    assert "argoexec-previous" in gobuild["argo-previous"]["binaries"]
    assert not any("symlinks" in entry for entry in gobuild.values())
