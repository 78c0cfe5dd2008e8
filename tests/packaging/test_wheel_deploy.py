"""`mfhelm deploy` from the installed wheel, outside the checkout: its help
answers, and `--build-only` hands `az` the Bicep template the wheel carries
(the fake `az` of tests/unit/test_bicep_deploy.py records what it got)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from wheelkit import ROOT, InstalledWheel

sys.path.insert(0, str(ROOT / "tests" / "unit"))
from test_bicep_deploy import FAKE_AZ  # noqa: E402


def test_deploy_from_the_wheel_uses_the_packaged_template(installed_wheel: InstalledWheel,
                                                          tmp_path: Path):
    work = tmp_path / "user"
    (work / "home").mkdir(parents=True)
    helped = installed_wheel.run("deploy", "--help", cwd=work, HOME=str(work / "home"))
    assert helped.returncode == 0, helped.stderr
    assert "--what-if" in helped.stdout and "--build-only" in helped.stdout

    bindir, state = tmp_path / "bin", tmp_path / "state"
    bindir.mkdir()
    state.mkdir()
    (bindir / "az").write_text(FAKE_AZ.replace("{python}", sys.executable))
    (bindir / "az").chmod(0o755)
    (state / "scenario.json").write_text("{}")
    path = os.pathsep.join([str(bindir), installed_wheel.env()["PATH"]])
    proc = installed_wheel.run("deploy", "--build-only", cwd=work, HOME=str(work / "home"),
                               PATH=path, FAKE_AZ_STATE=str(state))
    assert proc.returncode == 0, proc.stderr
    (call,) = [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]
    template = Path(call["argv"][call["argv"].index("--file") + 1])
    assert template.is_relative_to(installed_wheel.venv), template
    assert template.parts[-3:] == ("mfhelm", "bicep", "main.bicep")
    assert template.read_text() == (ROOT / "bicep" / "main.bicep").read_text()
