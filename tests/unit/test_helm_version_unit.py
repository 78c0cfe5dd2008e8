"""helm.Helm reads `helm version` itself (pyhelm3 is no longer imported by an
install): the pinned helm passes, and what an older or broken helm says is
one clear error. Helm 3.13 cannot be had here, so an executable that answers
`version --template` as it would stands in for it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mfhelm import helm as helm_mod
from mfhelm.errors import MfhelmError

HELM = shutil.which("helm")


def fake_helm(tmp_path: Path, out: str, code: int = 0) -> str:
    path = tmp_path / "helm"
    path.write_text(f"#!/bin/sh\nprintf '%s' '{out}'\nexit {code}\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.skipif(HELM is None, reason="helm not on PATH (run `make dev`)")
def test_the_pinned_helm_is_read_without_pyhelm3():
    code = ("import sys\nfrom mfhelm.helm import Helm\n"
            f"h = Helm(executable={HELM!r})\nprint(h.version)\n"
            "print('pyhelm3' in sys.modules, 'pydantic' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    pinned = subprocess.run([sys.executable, "tests/tools/install.py", "--version-of", "helm"],
                            capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[2]).stdout.strip()
    assert out == [pinned.lstrip("v"), "False", "False"]


@pytest.mark.parametrize("said, expected", [
    ("v3.14.0", (3, 14, 0)),
    ("v4.3.1", (4, 3, 1)),
    ("v3.15.0-rc.1", (3, 15, 0)),
    ("v4.3", (4, 3, 0)),  # a build without the version stamped
])
def test_versions_mfhelm_accepts(tmp_path, said, expected):
    assert helm_mod.Helm(executable=fake_helm(tmp_path, said)).check() == expected


def test_an_older_helm_is_refused(tmp_path):
    with pytest.raises(MfhelmError, match=r"^helm 3\.13\.2 is too old; mfhelm needs 3\.14\+$"):
        helm_mod.Helm(executable=fake_helm(tmp_path, "v3.13.2"))


def test_a_helm_that_does_not_answer_is_one_error(tmp_path):
    with pytest.raises(MfhelmError, match="cannot use .*: `helm version` said 'boom'"):
        helm_mod.Helm(executable=fake_helm(tmp_path, "boom", code=1))
    with pytest.raises(MfhelmError, match="cannot use "):
        helm_mod.Helm(executable=str(tmp_path / "missing"))


def test_the_check_can_be_finished_later(tmp_path):
    client = helm_mod.Helm(executable=fake_helm(tmp_path, "v3.12.0"), check=False)
    with pytest.raises(MfhelmError, match="too old"):
        client.check()
    other = helm_mod.Helm(executable=fake_helm(tmp_path, "v4.3.1"), check=False)
    other.close()  # reaped without being read
