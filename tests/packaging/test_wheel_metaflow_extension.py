"""The data scientist's one step: `pip install` of mfhelm's wheel into the
environment they run Metaflow from also installs mfhelm's Metaflow extension
(the top-level namespace package `metaflow_extensions`, source in
mfhelm/mfext), and Metaflow loads it from there."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from wheelkit import ROOT, InstalledWheel, uv_binary

EXT = "metaflow_extensions/mfhelm/config"


def test_the_wheel_carries_the_extension_at_top_level(installed_wheel: InstalledWheel):
    names = set(zipfile.ZipFile(installed_wheel.wheel).namelist())
    assert {f"{EXT}/mfextinit_mfhelm.py", f"{EXT}/service_auth.py"} <= names
    # A namespace package (Metaflow requires it), and no second copy under mfhelm/.
    assert "metaflow_extensions/__init__.py" not in names
    assert not [n for n in names if n.startswith("mfhelm/mfext")]


def test_metaflow_loads_it_after_pip_install(installed_wheel: InstalledWheel, tmp_path: Path):
    uv = uv_binary()
    assert uv is not None
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["test"]
    metaflow = next(p for p in pins if p.startswith("metaflow=="))
    venv = tmp_path / "notebook-env"
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([uv, "pip", "install", "--quiet", "--python", str(python),
                    str(installed_wheel.wheel), metaflow], check=True, timeout=600)
    code = ("from metaflow import metaflow_config as c\n"
            "print(type(c.SERVICE_HEADERS).__name__, c.SERVICE_HEADERS.token.scope)\n")
    env = {"PATH": str(venv / "bin"), "HOME": str(tmp_path),
           "METAFLOW_MFHELM_SERVICE_SCOPE": "api://app/.default",
           "METAFLOW_SERVICE_URL": "https://metaflow.example.com/metadata"}
    done = subprocess.run([str(python), "-c", code], env=env, cwd=tmp_path,
                          capture_output=True, text=True, check=False)
    assert done.stdout.split() == ["BearerHeaders", "api://app/.default"], done.stderr
