"""The wheel and sdist are a complete tool: the chart and the Bicep templates
ride inside (from their one copy in the repo), and the installed wheel,
run outside the checkout, renders the azure values from its own chart.

`install --local` from the wheel against the test cluster is in
tests/cluster/test_e2e_wheel.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import fake_arm
import yaml
from wheelkit import ROOT, InstalledWheel

CHART = ROOT / "charts" / "metaflow"
BICEP = ROOT / "bicep"


def repo_files(top: Path) -> set[str]:
    """Files under top, relative to it (subchart archives, gitignored, left out)."""
    return {p.relative_to(top).as_posix() for p in top.rglob("*")
            if p.is_file() and "charts" not in p.relative_to(top).parts[:-1]}


def test_wheel_carries_chart_and_bicep_and_no_tests(installed_wheel: InstalledWheel):
    names = set(zipfile.ZipFile(installed_wheel.wheel).namelist())
    for required in ("mfhelm/chart/Chart.yaml", "mfhelm/chart/values.yaml",
                     "mfhelm/chart/values.schema.json", "mfhelm/chart/files/db_roles.sql",
                     "mfhelm/chart/templates/_helpers.tpl", "mfhelm/chart/ci/local-values.yaml",
                     "mfhelm/bicep/main.bicep", "mfhelm/bicep/bicepconfig.json"):
        assert required in names, required
    # Every file of the repo's chart and Bicep, none left behind.
    assert {f"mfhelm/chart/{f}" for f in repo_files(CHART)} <= names
    assert {f"mfhelm/bicep/{f}" for f in repo_files(BICEP)} <= names
    assert not [n for n in names if n.startswith("tests/") or "/tests/" in n
                or Path(n).name.startswith("test_") or Path(n).name == "conftest.py"]


def test_sdist_carries_the_top_level_chart_and_bicep(installed_wheel: InstalledWheel):
    with tarfile.open(installed_wheel.sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for required in ("pyproject.toml", "README.md", "mfhelm/cli.py",
                     "charts/metaflow/Chart.yaml", "charts/metaflow/values.schema.json",
                     "charts/metaflow/files/db_roles.sql", "bicep/main.bicep",
                     "bicep/modules/aks.bicep"):
        assert required in names, required
    assert {f"charts/metaflow/{f}" for f in repo_files(CHART)} <= names
    assert not [n for n in names if n.startswith("tests/")]


def test_installed_wheel_uses_its_own_chart_and_bicep(installed_wheel: InstalledWheel,
                                                      tmp_path: Path):
    code = ("import json, mfhelm, mfhelm.helm as h, mfhelm.bicep_deploy as b; "
            "print(json.dumps([mfhelm.__file__, str(h.find_chart()), str(b.TEMPLATE)]))")
    proc = subprocess.run([str(installed_wheel.python), "-c", code], capture_output=True,
                          text=True, cwd=tmp_path, env=installed_wheel.env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    package, chart, template = (Path(p) for p in json.loads(proc.stdout))
    site = package.parent
    assert site.is_relative_to(installed_wheel.venv), package
    assert chart == site / "chart"
    assert template == site / "bicep" / "main.bicep"
    assert template.is_file()


def test_render_from_the_wheel_outside_the_checkout(installed_wheel: InstalledWheel,
                                                    tmp_path: Path):
    settings = tmp_path / "my-settings.toml"
    settings.write_text('org_prefix = "acme"\nlocation = "westeurope"\n')
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(fake_arm.arm_outputs(fake_arm.sample_outputs())))
    (tmp_path / "home").mkdir()
    args = ("render", "--outputs", str(outputs), "--settings", str(settings))

    proc = installed_wheel.run(*args, cwd=tmp_path, HOME=str(tmp_path / "home"))
    assert proc.returncode == 0, proc.stderr
    values = yaml.safe_load(proc.stdout)
    assert values["profile"] == "azure"
    assert values["storage"]["blobEndpoint"] == "https://acmemfstore1234567.blob.core.windows.net/"
    assert values["database"]["existingSecret"] == "metaflow-db"

    # The same values the checkout renders.
    checkout = subprocess.run([sys.executable, "-m", "mfhelm", *args], capture_output=True,
                              text=True, cwd=tmp_path, timeout=120)
    assert checkout.returncode == 0, checkout.stderr
    assert values == yaml.safe_load(checkout.stdout)


def test_checkout_uses_the_repo_chart_and_bicep():
    """In a checkout (no mfhelm/chart, mfhelm/bicep) the one copy in the repo is used."""
    from mfhelm import bicep_deploy, helm

    assert helm.find_chart() == CHART
    assert bicep_deploy.TEMPLATE == BICEP / "main.bicep"
    assert bicep_deploy.find_template() == BICEP / "main.bicep"


def test_wheel_carries_tools_toml_and_up_reads_its_kind_node_image(
        installed_wheel: InstalledWheel, tmp_path: Path):
    """`mfhelm up` from the wheel takes its kind node image from the
    tools.toml the wheel carries, the checkout's own file."""
    import tomllib

    assert "mfhelm/tools.toml" in set(zipfile.ZipFile(installed_wheel.wheel).namelist())
    read = subprocess.run(
        [str(installed_wheel.python), "-c",
         "from mfhelm import up; print(up.tools_manifest()); print(up.node_image())"],
        capture_output=True, text=True, cwd=tmp_path, env=installed_wheel.env(), timeout=120)
    assert read.returncode == 0, read.stderr
    where, image = read.stdout.splitlines()
    assert Path(where).is_relative_to(installed_wheel.venv)
    pinned = tomllib.loads((ROOT / "tools.toml").read_text())["go"]["kind"]["node_image"]
    assert image == pinned
