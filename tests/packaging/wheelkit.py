"""Build mfhelm's sdist and wheel from this checkout with the build backend
pinned in pyproject's [build-system], and install the wheel into a fresh venv
outside the checkout, as a user would (`uv tool install` / `pipx install`).

`uv build` builds the sdist first and the wheel from the sdist, so a wheel
that carries the chart also shows that the sdist carries everything the
wheel needs. Dependencies come from PyPI (uv's cache makes that fast).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Where `make dev` links the pinned tools (helm, uv, ...).
TOOLS = ROOT / ".venv" / "bin"


class WheelUnavailable(Exception):
    """No uv to build or install with (a skip, not a failure)."""


def uv_binary() -> str | None:
    pinned = TOOLS / "uv"
    if pinned.is_file() and os.access(pinned, os.X_OK):
        return str(pinned)
    return shutil.which("uv")


def pinned_helm() -> str | None:
    helm = TOOLS / "helm"
    return str(helm) if helm.is_file() and os.access(helm, os.X_OK) else None


def _run(argv: list[str], *, cwd: Path, timeout: float = 600) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")


@dataclass(frozen=True)
class InstalledWheel:
    wheel: Path
    sdist: Path
    venv: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"

    @property
    def mfhelm(self) -> Path:
        return self.bin / "mfhelm"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a user who installed the wheel: its venv's bin
        first, nothing of the checkout (no .venv/bin, no PYTHONPATH), helm
        given as MFHELM_HELM (the pinned one) when the checkout has it."""
        drop = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "MFHELM_SETTINGS"}
        env = {k: v for k, v in os.environ.items() if k not in drop}
        path = [p for p in env.get("PATH", "").split(os.pathsep)
                if p and Path(p).resolve() != TOOLS.resolve()]
        env["PATH"] = os.pathsep.join([str(self.bin), *path])
        helm = pinned_helm()
        if helm:
            env["MFHELM_HELM"] = helm
        env.update(extra)
        return env

    def run(self, *args: str, cwd: Path, timeout: float = 300,
            **env_extra: str) -> subprocess.CompletedProcess[str]:
        """`mfhelm ARGS` from the installed wheel's console script."""
        return subprocess.run([str(self.mfhelm), *args], capture_output=True, text=True,
                              cwd=cwd, env=self.env(**env_extra), timeout=timeout)


def build_and_install(workdir: Path) -> InstalledWheel:
    """Build sdist + wheel into workdir/dist, install the wheel into workdir/venv."""
    if workdir.resolve().is_relative_to(ROOT):
        raise AssertionError(f"{workdir} is inside the checkout; install outside it")
    uv = uv_binary()
    if uv is None:
        raise WheelUnavailable("uv not found in .venv/bin or on PATH (run `make dev`)")
    dist = workdir / "dist"
    _run([uv, "build", "--quiet", "--out-dir", str(dist), str(ROOT)], cwd=workdir)
    wheels = sorted(dist.glob("mfhelm-*.whl"))
    sdists = sorted(dist.glob("mfhelm-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in dist.iterdir())
    venv = workdir / "venv"
    _run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], cwd=workdir)
    _run([uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
          str(wheels[0])], cwd=workdir)
    return InstalledWheel(wheel=wheels[0], sdist=sdists[0], venv=venv)
