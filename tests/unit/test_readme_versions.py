"""README.md's "Versions and upgrades" table is the pins: each row's version
is read here from the one file that pins it (Chart.yaml, values.yaml,
tools.toml, pyproject.toml, mfhelm/__init__.py), so a pin bumped without
the README fails this test, and so does a row added, dropped or renamed."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from mfhelm import __version__

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "metaflow"
SECTION = "## Versions and upgrades"


def _pinned_requirement(requirements: list[str], name: str) -> str:
    found = [r.split("==", 1)[1] for r in requirements if r.split("==", 1)[0] == name]
    assert len(found) == 1, f"{name} is pinned once with == in pyproject.toml"
    return found[0]


def pins() -> dict[str, str]:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    tools = tomllib.loads((ROOT / "tools.toml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps: dict[str, Any] = {d["name"]: d for d in chart["dependencies"]}
    return {
        "mfhelm": __version__,
        "the chart `charts/metaflow`": chart["version"],
        "Metaflow metadata service and UI backend": values["metadata"]["image"]["tag"],
        "Metaflow UI": values["ui"]["static"]["image"]["tag"],
        "Metaflow client (tested)": _pinned_requirement(
            project["optional-dependencies"]["test"], "metaflow"),
        "argo-helm `argo-workflows` chart": deps["argo-workflows"]["version"],
        "Argo Workflows": tools["gobuild"]["argo"]["version"],
        "argo-helm `argo-events` chart": deps["argo-events"]["version"],
        "Argo Events": tools["gobuild"]["argo-events"]["version"],
        "Apache Airflow chart": deps["airflow"]["version"],
        "Airflow": values["airflow"]["defaultAirflowTag"],
        "Kubernetes (tested)": tools["kubernetes"]["version"],
        "Kubernetes (the chart's minimum)": chart["kubeVersion"],
        "Helm": tools["go"]["helm"]["version"],
    }


def readme_table() -> dict[str, str]:
    """component -> version, from the first table under the section heading."""
    text = (ROOT / "README.md").read_text()
    assert text.count(f"\n{SECTION}\n") == 1, f"README.md has one {SECTION!r} section"
    body = text.split(f"\n{SECTION}\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in body.splitlines():
        if not line.startswith("|"):
            if rows:
                break  # the table ended
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "component" or set(cells[0]) <= {"-"}:
            continue
        assert len(cells) == 3, line
        assert cells[0] not in rows, f"row {cells[0]!r} twice"
        rows[cells[0]] = cells[1]
    return rows


def test_the_table_is_the_pins():
    assert readme_table() == pins()


def test_the_airflow_row_agrees_with_the_airflow_tools_pin():
    # The row names both places; tools.toml's Airflow is the one the tests run.
    tools = tomllib.loads((ROOT / "tools.toml").read_text())
    assert pins()["Airflow"] == tools["python"]["airflow"]["version"]


def test_the_argo_workflows_row_agrees_with_the_image_tag_our_values_set():
    # argo-helm 1.0.18's appVersion is v4.0.6; our values run its images at
    # the release the tests build, and the row names both places.
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert pins()["Argo Workflows"] == values["argo-workflows"]["images"]["tag"]


def test_the_chart_app_version_is_the_metadata_service():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert f"v{chart['appVersion']}" == pins()["Metaflow metadata service and UI backend"]


def test_the_upgrading_section_names_what_install_prints():
    """The README quotes the move line; it is the line mfhelm prints."""
    from mfhelm.argo_upgrade import Move

    text = (ROOT / "README.md").read_text()
    upgrading = text.split("\n### Upgrading\n", 1)[1].split("\n## ", 1)[0]
    quoted = " ".join(upgrading.split())
    line = Move("flows", "nightly", "0 2 * * *", "1").line()
    shown = re.search(r"`(moved CronWorkflow [^`]*)`", quoted)
    assert shown is not None
    assert line.startswith(shown.group(1))
