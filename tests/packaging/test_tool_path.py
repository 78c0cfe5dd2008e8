"""Tests find the pinned helm themselves, however pytest is started: the
top-level conftest puts the project's .venv/bin first on PATH, so
`.venv/bin/python -m pytest tests/cluster` works without an activated venv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from wheelkit import ROOT, TOOLS

pytestmark = pytest.mark.skipif(not (TOOLS / "helm").is_file(),
                                reason="no pinned helm in .venv/bin (run `make dev`)")


def test_helm_on_path_is_the_pinned_one():
    found = shutil.which("helm")
    assert found is not None
    assert Path(found).parent == TOOLS, found


def test_pytest_started_without_the_venv_on_path_finds_the_pinned_helm(tmp_path: Path):
    bare = [p for p in os.environ.get("PATH", "").split(os.pathsep)
            if p and Path(p).resolve() != TOOLS.resolve()]
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "MFHELM_HELM", "PYTEST_ADDOPTS")}
    env["PATH"] = os.pathsep.join(bare) or os.defpath
    here = f"{Path(__file__).relative_to(ROOT)}::test_helm_on_path_is_the_pinned_one"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", here],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout, proc.stdout
