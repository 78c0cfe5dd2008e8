"""`--chart`, `--version` and `--plain-http` of `mfhelm install`, checked
before anything runs; `make chart-push`'s packaging with the real helm.

The registry side (push, login, pull, install) is tests/cluster/test_e2e_oci.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from mfhelm import helm as helm_mod
from mfhelm import oci
from mfhelm.errors import MfhelmError

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "metaflow"
HELM = shutil.which("helm")


def test_no_chart_option_is_the_packaged_chart():
    assert oci.chart_source(None, None) is None


def test_a_directory_stays_a_path():
    assert oci.chart_source(str(CHART), None) == CHART


def test_an_oci_reference_with_version():
    src = oci.chart_source("oci://registry.example.com:5000/charts/metaflow", "0.1.0",
                           plain_http=True)
    assert src == oci.OciChart("oci://registry.example.com:5000/charts/metaflow", "0.1.0", True)
    assert isinstance(src, oci.OciChart) and src.name == "metaflow"


@pytest.mark.parametrize("chart, version, plain_http, message", [
    ("oci://r.example.com/metaflow", None, False, "needs --version"),
    ("oci://r.example.com/metaflow", "  ", False, "needs --version"),
    ("https://r.example.com/charts/metaflow", "0.1.0", False,
     "only a chart directory or an oci://REGISTRY/NAME reference"),
    ("oci://r.example.com/metaflow:0.1.0", "0.1.0", False, "not in the reference"),
    ("oci://r.example.com/metaflow@sha256:abc", "0.1.0", False, "not in the reference"),
    ("oci://r.example.com", "0.1.0", False, "expected oci://HOST[:PORT]/[PATH/]NAME"),
    ("oci://r.example.com/Metaflow", "0.1.0", False, "lowercase chart name"),
    ("oci://r.example.com/metaflow", "-x", False, "not a chart version"),
    ("oci://r.example.com/metaflow", "1.0;rm", False, "not a chart version"),
    (str(CHART), "0.1.0", False, "--version goes with --chart oci://"),
    (None, "0.1.0", False, "--version goes with --chart oci://"),
    (str(CHART), None, True, "--plain-http goes with --chart oci://"),
])
def test_bad_chart_options_are_refused(chart, version, plain_http, message):
    with pytest.raises(MfhelmError) as info:
        oci.chart_source(chart, version, plain_http=plain_http)
    assert message in str(info.value)


@pytest.mark.parametrize("args, message", [
    (["--chart", "https://r.example.com/metaflow"], "only a chart directory or an oci://"),
    (["--chart", "oci://127.0.0.1:1/metaflow"], "needs --version"),
    (["--version", "0.1.0"], "--version goes with --chart oci://"),
])
def test_cli_bad_chart_input_is_one_line_before_any_cluster_call(args, message, tmp_path):
    # No kubeconfig exists here: the options are refused before mfhelm looks for one.
    env = dict(os.environ, KUBECONFIG=str(tmp_path / "none"), HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "mfhelm", "install", "--local", *args],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mfhelm: error: "), proc.stderr
    assert message in lines[0]


def test_a_chart_without_its_subcharts_refuses_them_enabled(tmp_path):
    """What `make chart-push SUBCHARTS=drop` pushes installs only with them off."""
    copy = tmp_path / "metaflow"
    shutil.copytree(CHART, copy)
    meta = yaml.safe_load((copy / "Chart.yaml").read_text())
    del meta["dependencies"]
    (copy / "Chart.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(MfhelmError, match="has no argo-workflows subchart"):
        helm_mod.prepare_chart(copy, {"argo-workflows": {"enabled": True}})
    with pytest.raises(MfhelmError, match="has no airflow subchart"):
        helm_mod.prepare_chart(copy, {"argo-workflows": {"enabled": False},
                                      "airflow": {"enabled": True}})
    off = {"argo-workflows": {"enabled": False}, "airflow": {"enabled": False}}
    assert helm_mod.prepare_chart(copy, off) == copy


@pytest.mark.skipif(HELM is None, reason="helm not on PATH (run `make dev`)")
def test_package_without_reachable_subcharts(tmp_path, monkeypatch):
    """Here the chart repositories are unreachable: without drop_subcharts the
    packaging stops naming them; with it, the archive is the chart without
    its dependencies, under <version>-nosubcharts, packaged by helm."""
    assert HELM is not None
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    (tmp_path / "a").mkdir()
    try:
        archive, dropped = oci.package(CHART, tmp_path / "a", helm=HELM, drop_subcharts=False)
    except MfhelmError as exc:
        deps = yaml.safe_load((CHART / "Chart.yaml").read_text())["dependencies"]
        first = f"{deps[0]['name']} {deps[0]['version']}"  # argo-workflows, as pinned
        assert f"cannot fetch the subcharts {first}" in str(exc)
        assert "SUBCHARTS=drop" in str(exc)
    else:  # the repositories were reachable: the complete chart, subcharts inside
        assert dropped == [] and archive.name == f"metaflow-{version}.tgz"
        with tarfile.open(archive) as tar:
            assert any(n.startswith("metaflow/charts/argo-workflows") for n in tar.getnames())
        return
    (tmp_path / "b").mkdir()
    archive, dropped = oci.package(CHART, tmp_path / "b", helm=HELM, drop_subcharts=True)
    assert dropped == [d["name"] for d in yaml.safe_load(
        (CHART / "Chart.yaml").read_text())["dependencies"]]
    assert archive.name == f"metaflow-{version}-{oci.NO_SUBCHARTS}.tgz"
    with tarfile.open(archive) as tar:
        member = tar.extractfile("metaflow/Chart.yaml")
        assert member is not None
        meta = yaml.safe_load(member.read())
        names = tar.getnames()
    assert meta["version"] == f"{version}-{oci.NO_SUBCHARTS}" and "dependencies" not in meta
    assert "metaflow/values.schema.json" in names
    assert not any("/charts/" in n for n in names)
    # The repo's chart is untouched: no Chart.lock, no charts/ written into it.
    assert not (CHART / "Chart.lock").exists() and not (CHART / "charts").exists()
