from __future__ import annotations

import json
import sys
from pathlib import Path

import fake_arm
import pytest
import yaml


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `mfhelm ARGS` through the real console entry point (its error handler
    included), in-process."""
    from mfhelm import cli as cli_mod

    def run(*args: str) -> Result:
        monkeypatch.setattr(sys, "argv", ["mfhelm", *args])
        cli_mod._state["debug"] = False
        code = 0
        try:
            cli_mod.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A project directory with mfhelm.toml, saved outputs, and HOME inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MFHELM_SETTINGS", raising=False)
    (tmp_path / "home").mkdir()
    (tmp_path / "mfhelm.toml").write_text('org_prefix = "acme"\nlocation = "westeurope"\n')
    return tmp_path


@pytest.fixture
def closed_port_kubeconfig(workdir):
    """A kubeconfig whose API server is 127.0.0.1:1, where nothing listens."""
    path = workdir / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "x", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}],
    }))
    return str(path)


def write_outputs(path: Path, **overrides) -> Path:
    flat = {**fake_arm.sample_outputs(), **overrides}
    path.write_text(json.dumps(fake_arm.arm_outputs(flat)))
    return path


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.code != 0
    assert "Traceback" not in result.err
    # Progress lines may precede it; the error itself is exactly one line, last.
    lines = [ln for ln in result.err.splitlines() if ln.strip() and not ln.startswith("> ")]
    assert len(lines) == 1, result.err
    assert lines[0].startswith("mfhelm: error: ")
    for frag in fragments:
        assert frag in lines[0], lines[0]
