"""The flow image from the installed wheel: the Dockerfile is package data, the
pinned set comes from the wheel's metadata, and `--requirements` is checked
with the pip the wheel depends on (a uv-made venv has none of its own)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import fake_arm
from wheelkit import InstalledWheel

from mfhelm import image


def test_wheel_carries_the_dockerfile_and_the_flow_set(installed_wheel: InstalledWheel,
                                                       tmp_path: Path):
    names = set(zipfile.ZipFile(installed_wheel.wheel).namelist())
    assert "mfhelm/flowimage/Dockerfile" in names
    code = ("import json; from mfhelm import image; "
            "print(json.dumps([image.flow_requirements(), image.dockerfile()]))")
    import subprocess

    done = subprocess.run([str(installed_wheel.python), "-c", code], capture_output=True,
                          text=True, cwd=tmp_path, env=installed_wheel.env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [image.flow_requirements(), image.dockerfile()]


def test_wheel_checks_requirements_with_its_own_pip(installed_wheel: InstalledWheel,
                                                    tmp_path: Path):
    (tmp_path / "mfhelm.toml").write_text('org_prefix = "acme"\nlocation = "westeurope"\n')
    (tmp_path / "outputs.json").write_text(json.dumps(fake_arm.sample_outputs() | {
        "registryName": "acmeacr1234", "registryLoginServer": "acmeacr1234.azurecr.io"}))
    (tmp_path / "requirements.txt").write_text("nosuchpkg-mfhelm==1.0\n")
    done = installed_wheel.run("image", "build", "--python", "3.12", "--requirements",
                               "requirements.txt", "--outputs", "outputs.json",
                               "--subscription", fake_arm.SUB, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == (
        "mfhelm: error: --requirements does not resolve for Python 3.12 on linux/amd64: "
        "No matching distribution found for nosuchpkg-mfhelm==1.0")
