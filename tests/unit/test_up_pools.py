"""mfhelm.pools is the one place the three pools' labels and taints are
written for what mfhelm makes without Azure (`mfhelm up`'s kind cluster, the
test cluster's KWOK nodes): held here to what the Bicep gives the AKS pools
and to what the chart's values select and tolerate."""

from __future__ import annotations

import importlib.util
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from mfhelm import pools, up
from mfhelm.errors import MfhelmError

ROOT = Path(__file__).resolve().parents[2]
VALUES = yaml.safe_load((ROOT / "charts" / "metaflow" / "values.yaml").read_text())


def _bicep_rules() -> Any:
    spec = importlib.util.spec_from_file_location("bicep_rules",
                                                  ROOT / "tests" / "bicep" / "bicep_rules.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _aks_pools() -> tuple[Any, dict[str, dict[str, Any]]]:
    rules = _bicep_rules()
    return rules, rules._pools(rules.parse_file(ROOT / "bicep" / "modules" / "aks.bicep"))


def test_the_aks_pools_in_bicep_are_mfhelm_pools() -> None:
    """Every pool of aks.bicep, the optional GPU and Spot pools included, carries
    exactly the labels and taints mfhelm.pools gives it, less the labels AKS
    writes itself (a System pool's mode, a Spot pool's priority)."""
    rules, bicep = _aks_pools()
    assert set(bicep) == {p.name for p in (*pools.POOLS, *pools.OPTIONAL_POOLS)}
    for pool in (*pools.POOLS, *pools.OPTIONAL_POOLS):
        profile = bicep[pool.name]
        labels = {k.strip("'"): v for k, v in (profile.get("nodeLabels") or {}).items()}
        own = rules.aks_own_labels(profile)
        assert labels == {k: v for k, v in pool.labels.items() if k not in own}, pool.name
        assert own <= set(pool.labels), pool.name
        assert (profile.get("nodeTaints") or []) == [str(t) for t in pool.taints], pool.name
        assert (pool.labels.get(pools.AKS_MODE_LABEL) == "system") == (profile["mode"] == "System")
        assert ((pool.labels.get(pools.SPOT_PRIORITY_LABEL) == "spot")
                == (profile.get("scaleSetPriority") == "Spot")), pool.name


def test_the_labels_left_to_aks_are_the_ones_it_writes() -> None:
    """A Spot pool's nodes get kubernetes.azure.com/scalesetpriority=spot from
    AKS (and its taint, which the Bicep declares as well); only that pool may
    leave the label out."""
    rules, bicep = _aks_pools()
    left_out = {name: rules.aks_own_labels(profile) for name, profile in bicep.items()}
    assert left_out == {"system": {pools.AKS_MODE_LABEL}, "services": set(),
                        "taskworkers": set(), "gpu": set(),
                        "spot": {pools.SPOT_PRIORITY_LABEL}}
    assert pools.SPOT_TAINT.key == pools.SPOT_PRIORITY_LABEL


def test_main_bicep_outputs_the_taskworkers_label_mfhelm_config_selects() -> None:
    text = (ROOT / "bicep" / "main.bicep").read_text()
    key, value = next(iter(pools.TASKWORKERS.labels.items()))
    assert f"var taskworkersLabelKey = '{key}'" in text
    assert f"var taskworkersLabelValue = '{value}'" in text


def _leaves(tree: dict[str, Any], path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Path -> value for every key whose value is a node selector or a list
    (a selector's dict is a leaf: its keys are labels, not chart keys)."""
    out: dict[tuple[str, ...], Any] = {}
    for key, value in tree.items():
        here = (*path, key)
        if isinstance(value, dict) and not (key.endswith("NodeSelector")
                                            or key == "nodeSelector"):
            out |= _leaves(value, here)
        else:
            out[here] = value
    return out


def _lookup(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def test_up_puts_back_exactly_the_charts_pool_selectors_and_tolerations() -> None:
    layer = _leaves(up.pool_values())
    for path, value in layer.items():
        assert _lookup(VALUES, path) == value, ".".join(path)
    assert layer[("flows", "nodeSelector")] == {pools.POOL_LABEL: "taskworkers"}
    assert layer[("flows", "tolerations")] == [
        {"key": pools.POOL_LABEL, "operator": "Equal", "value": "taskworkers",
         "effect": "NoSchedule"}]


def test_up_covers_every_pool_key_the_local_profile_empties() -> None:
    """Each selector and toleration local_values() sets empty (for a cluster
    without pools) is set again on `up`'s cluster, none forgotten."""
    from mfhelm.values import local_values

    local = _leaves(local_values(flow_namespace="metaflow-flows"))
    emptied = {path for path, value in local.items()
               if path[-1] in ("nodeSelector", "serviceNodeSelector", "tolerations")
               and value in ({}, [], None)}
    assert emptied and emptied <= set(_leaves(up.pool_values()))


def _node(name: str, labels: dict[str, str], taints: list[pools.Taint]) -> k8s.V1Node:
    return k8s.V1Node(metadata=k8s.V1ObjectMeta(name=name, labels=labels),
                      spec=k8s.V1NodeSpec(taints=[k8s.V1Taint(**t.as_dict()) for t in taints]))


def test_pool_nodes_sorts_nodes_by_labels_and_taints() -> None:
    nodes = [
        _node("cp", {"node-role.kubernetes.io/control-plane": ""},
              [pools.Taint("node-role.kubernetes.io/control-plane", "")]),
        *(_node(f"{p.name}-0", {**p.labels, "kubernetes.io/os": "linux"}, list(p.taints))
          for p in pools.POOLS),
        # Labelled taskworkers but without the taint: flow pods would share it.
        _node("untainted", {pools.POOL_LABEL: "taskworkers"}, []),
    ]
    found = up.pool_nodes(nodes)
    assert found == {"system": ["system-0"], "services": ["services-0"],
                     "taskworkers": ["taskworkers-0"]}
    up.check_pools("mfhelm", found)


def test_pool_nodes_counts_gpu_and_spot_nodes_apart_from_taskworkers() -> None:
    """A GPU node holds every label and taint of taskworkers: it is the GPU
    pool's, not a second taskworkers node (the test cluster has one of each)."""
    nodes = [_node(f"{p.name}-0", dict(p.labels), list(p.taints))
             for p in (*pools.POOLS, *pools.OPTIONAL_POOLS)]
    found = up.pool_nodes(nodes)
    assert found == {"system": ["system-0"], "services": ["services-0"],
                     "taskworkers": ["taskworkers-0"], "gpu": ["gpu-0"], "spot": ["spot-0"]}
    up.check_pools("mfhelm", found)


def test_a_cluster_without_the_pools_is_refused_naming_the_missing_pool() -> None:
    plain = up.pool_nodes([_node("kind-control-plane", {}, []), _node("kind-worker", {}, [])])
    with pytest.raises(MfhelmError) as err:
        up.check_pools("mine", plain)
    assert str(err.value) == (
        "kind cluster 'mine' has no system node (kubernetes.azure.com/mode=system, taint "
        "CriticalAddonsOnly=true:NoSchedule): it was not made by mfhelm up; delete it with "
        "`mfhelm down --name mine`, or use another --name")


def test_the_kind_node_image_is_the_pinned_kubernetes_version() -> None:
    manifest = tomllib.loads((ROOT / "tools.toml").read_text())
    image = up.node_image()
    assert image == manifest["go"]["kind"]["node_image"]
    assert image == f"kindest/node:v{manifest['kubernetes']['version']}"


def test_the_wheel_carries_tools_toml_where_up_reads_it() -> None:
    """`mfhelm up` from a wheel reads mfhelm/tools.toml (tools_manifest's
    first place); tests/packaging checks the built wheel has it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    build = project["tool"]["hatch"]["build"]["targets"]
    assert build["wheel"]["force-include"]["tools.toml"] == "mfhelm/tools.toml"
    assert "/tools.toml" in build["sdist"]["include"]
    assert up.tools_manifest() == ROOT / "tools.toml"  # a checkout: the repo's copy


def _render_local(layer: Any = None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The chart's workloads and published Metaflow config, rendered with the
    local profile's values and `layer` on top, through the checks `install
    --local -f` runs."""
    import json

    from mfhelm import helm as helm_mod
    from mfhelm import proc, stack
    from mfhelm.uservalues import LOCAL_PROTECTED, UserValues
    from mfhelm.values import flows_namespace_for, local_values

    helm = helm_mod.find_helm()
    if helm is None:
        pytest.skip("helm not installed (run `make dev`; tools.toml pins it)")
    target = stack.Target(up.RELEASE, up.NAMESPACE)
    values = stack.with_user_values(
        local_values(argo=True, airflow=False, flow_namespace=flows_namespace_for(up.NAMESPACE)),
        layer if layer is not None else UserValues.read((), (), ()), LOCAL_PROTECTED,
        up.NAMESPACE, target)
    chart = helm_mod.drop_missing_dependencies(helm_mod.find_chart())
    try:
        out = subprocess.run([helm, "template", up.RELEASE, str(chart), "-n", up.NAMESPACE,
                              "-f", "-"], input=yaml.safe_dump(values), capture_output=True,
                             text=True, check=True, timeout=120).stdout
    finally:
        if chart != helm_mod.find_chart():
            proc.remove_tree(chart.parent)
    docs = [d for d in yaml.safe_load_all(out) if d]
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")]
    config = next(d for d in docs if d["kind"] == "ConfigMap"
                  and d["metadata"]["name"] == f"{up.RELEASE}-metaflow-config")
    published = json.loads(config["data"]["config.json"]) if "config.json" in config["data"] \
        else config["data"]
    return workloads, published


def test_the_rendered_local_profile_on_up_runs_services_and_flows_on_their_pools() -> None:
    """The chart rendered with what `up` installs (the local profile and
    up's layer): every pod of the stack selects the services pool, and the
    published config sends flow pods to taskworkers with the toleration its
    taint needs."""
    import json

    workloads, published = _render_local(up.values_layer())
    assert len(workloads) >= 3
    for w in workloads:
        assert w["spec"]["template"]["spec"].get("nodeSelector") == dict(pools.SERVICES.labels), \
            w["metadata"]["name"]
    assert published["METAFLOW_KUBERNETES_NODE_SELECTOR"] == f"{pools.POOL_LABEL}=taskworkers"
    assert json.loads(published["METAFLOW_KUBERNETES_TOLERATIONS"]) == [
        pools.TASKWORKERS_TAINT.toleration()]


def test_the_plain_local_profile_selects_no_pool() -> None:
    """`install --local` into any cluster (one without mfhelm's pools): no pod
    of the stack and no flow pod selects a pool node, which such a cluster
    does not have. An empty map in the values would keep the chart's default
    selector (Helm merges maps), so the local profile removes the keys."""
    workloads, published = _render_local()
    assert len(workloads) >= 3
    for w in workloads:
        assert not w["spec"]["template"]["spec"].get("nodeSelector"), w["metadata"]["name"]
    assert published["METAFLOW_KUBERNETES_NODE_SELECTOR"] == ""
    assert published["METAFLOW_KUBERNETES_TOLERATIONS"] == "[]"
