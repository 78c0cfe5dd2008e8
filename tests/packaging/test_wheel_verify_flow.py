"""`mfhelm verify`'s shipped flow rides in the wheel (and the sdist), and the
installed package, outside the checkout, copies it into a verify scratch
directory from its own files."""

from __future__ import annotations

import subprocess
import tarfile
import zipfile
from pathlib import Path

from wheelkit import ROOT, InstalledWheel

FLOW = "mfhelm/verify/flows/mfhelm_verify_flow.py"


def test_wheel_and_sdist_carry_the_verify_flow(installed_wheel: InstalledWheel):
    assert FLOW in zipfile.ZipFile(installed_wheel.wheel).namelist()
    with tarfile.open(installed_wheel.sdist) as tar:
        assert FLOW in {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}


def test_installed_package_copies_its_own_flow(installed_wheel: InstalledWheel, tmp_path: Path):
    code = ("import sys, pathlib, mfhelm.verify.core as c; "
            "print(c.copy_flows(pathlib.Path(sys.argv[1])), c.__file__)")
    done = subprocess.run([str(installed_wheel.python), "-c", code, str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env=installed_wheel.env())
    assert done.returncode == 0, done.stderr
    assert "mfhelm_verify_flow.py" in done.stdout
    assert str(ROOT) not in done.stdout.split()[-1]   # the installed copy, not the checkout
    assert (tmp_path / "mfhelm_verify_flow.py").read_text() == (ROOT / FLOW).read_text()
