"""Render the chart with the real helm binary and return its objects.

Helm refuses to render a chart whose declared dependencies are missing from
charts/, whatever their conditions. The upstream Argo and Airflow archives
cannot be fetched on every machine, so when they are absent the chart is
copied and the missing dependencies are dropped from the copy's Chart.yaml:
our own templates render exactly as they would in the umbrella, and the
subcharts' values are still validated by our schema as plain values. When
the archives are present the real umbrella is rendered, subcharts included.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from mfhelm import helm as helm_mod
from mfhelm import proc

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "metaflow"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
# Scenario name (the file name without -values.yaml) -> values file.
SCENARIOS = {p.name.removesuffix("-values.yaml"): p for p in CI_VALUES}


def helm() -> str | None:
    return shutil.which("helm")


def dependencies() -> list[dict[str, Any]]:
    return yaml.safe_load((CHART / "Chart.yaml").read_text()).get("dependencies", [])


def missing_dependencies() -> list[str]:
    return helm_mod.missing_dependencies(CHART)


@cache
def renderable_chart() -> Path:
    """The chart itself when complete, else a copy without the absent deps
    (the same copy `mfhelm install` makes).

    mfhelm registers its copy with mfhelm.proc, whose cleanup (the end of
    every in-process CLI run in the tests) removes it: the tests keep their
    own copy of it for the session."""
    made = helm_mod.drop_missing_dependencies(CHART)
    if made == CHART:
        return CHART
    own = Path(tempfile.mkdtemp(prefix="mfhelm-test-chart-"))
    atexit.register(shutil.rmtree, own, True)
    shutil.copytree(made, own / made.name)
    proc.remove_tree(made.parent)
    return own / made.name


class HelmError(Exception):
    pass


def _values_args(values_files: list[Path], values: dict | None, tmp: Path) -> list[str]:
    args: list[str] = []
    for f in values_files:
        args += ["-f", str(f)]
    if values:
        extra = tmp / "extra-values.yaml"
        extra.write_text(yaml.safe_dump(values))
        args += ["-f", str(extra)]
    return args


def render_text(values_files: list[Path] | tuple = (), values: dict | None = None, *,
                release: str = "metaflow", namespace: str = "metaflow") -> str:
    binary = helm()
    assert binary, "helm not on PATH"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [binary, "template", release, str(renderable_chart()), "--namespace", namespace,
               *_values_args(list(values_files), values, Path(tmp))]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise HelmError(proc.stderr.strip())
    return proc.stdout


def render(values_files: list[Path] | tuple = (), values: dict | None = None, **kw) -> list[dict]:
    """All rendered objects, in order."""
    return [d for d in yaml.safe_load_all(render_text(values_files, values, **kw)) if d]


def lint(values_files: list[Path] | tuple = (), values: dict | None = None) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [helm() or "helm", "lint", "--strict", str(renderable_chart()),
               *_values_args(list(values_files), values, Path(tmp))]
        return subprocess.run(cmd, capture_output=True, text=True)


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def get(objs: list[dict], kind: str, name: str) -> dict:
    for o in objs:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    raise KeyError(f"{kind}/{name} not rendered; have {[(o['kind'], o['metadata']['name']) for o in objs]}")


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job", "DaemonSet")


def pod_specs(objs: list[dict]) -> list[tuple[dict, dict]]:
    """(workload, pod template spec) for every workload."""
    return [(o, o["spec"]["template"]["spec"]) for o in objs if o["kind"] in WORKLOAD_KINDS]


def all_containers(spec: dict) -> list[dict]:
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def render_text_for_checkov(values_file: Path) -> str:
    return render_text([values_file])
