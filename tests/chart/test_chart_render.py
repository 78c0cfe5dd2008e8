"""Every ci/ scenario renders, lints strictly, and yields valid Kubernetes objects."""

import tomllib

import kubernetes_validate
import pytest
from chartlib import (
    CHART,
    ROOT,
    SCENARIOS,
    dependencies,
    lint,
    missing_dependencies,
    render,
)

K8S_VERSION = tomllib.loads((ROOT / "tools.toml").read_text())["kubernetes"]["version"]


def test_ci_scenarios_cover_the_required_profiles():
    assert {"local", "azure", "azure-airflow", "argo-off"} <= set(SCENARIOS)


def test_dependencies_are_pinned_with_conditions():
    deps = {d["name"]: d for d in dependencies()}
    # 1.0.18: argo-helm's Argo 4.0 chart; our values run v4.0.7 on it.
    assert deps["argo-workflows"]["version"] == "1.0.18"
    assert deps["argo-workflows"]["condition"] == "argo-workflows.enabled"
    # 1.16.0: the newest Airflow chart whose default Airflow is 2.10.x.
    assert deps["airflow"]["version"] == "1.16.0"
    assert deps["airflow"]["condition"] == "airflow.enabled"
    for dep in deps.values():
        assert all(ch not in dep["version"] for ch in "^~*x><"), dep


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario_renders(scenario):
    objs = render([SCENARIOS[scenario]])
    assert objs, "nothing rendered"
    for obj in objs:
        assert obj["apiVersion"] and obj["kind"] and obj["metadata"]["name"]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario_passes_strict_lint(scenario):
    proc = lint([SCENARIOS[scenario]])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_objects_match_kubernetes_openapi_schema(scenario):
    errors = []
    for obj in render([SCENARIOS[scenario]]):
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not errors, "\n".join(errors)


def test_validator_rejects_a_broken_object():
    """The schema check above can fail: a misspelt field is caught."""
    obj = render([SCENARIOS["azure"]])[0]
    broken = {**obj, "metadata": {**obj["metadata"], "nmae": "x"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_umbrella_renders_subcharts_when_archives_present():
    missing = missing_dependencies()
    if missing:
        pytest.skip(reason=(
            f"upstream chart archives not present in {CHART / 'charts'} ({', '.join(missing)}): "
            "run `helm dependency build charts/metaflow` where a chart repository is reachable"
        ))
    objs = render([SCENARIOS["azure-airflow"]])
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert any(k == "Deployment" and "workflow-controller" in n for k, n in kinds)
    assert any(k in ("Deployment", "StatefulSet") and "scheduler" in n for k, n in kinds)
