"""-f/--set over mfhelm's values (mfhelm/uservalues.py).

The layering is checked against helm itself: for the same first values
file (mfhelm's), user files and --set arguments, `helm install --dry-run=client
-o json` reports the values it would install as `config`; mfhelm's merged
values must be exactly that. Then the protected keys, on both profiles.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import fake_arm
import pytest
import yaml

from mfhelm import settings, uservalues
from mfhelm import values as values_mod
from mfhelm.errors import MfhelmError
from mfhelm.helm import find_chart, find_helm
from mfhelm.uservalues import AZURE_PROTECTED, LOCAL_PROTECTED, UserValues

BASE = {
    "profile": "azure",
    "metadata": {"replicas": 1, "resources": {"requests": {"cpu": "100m"}}},
    "flows": {
        "nodeSelector": {"mfhelm.io/pool": "taskworkers"},
        "tolerations": [{"key": "mfhelm.io/pool", "operator": "Equal", "value": "taskworkers",
                         "effect": "NoSchedule"}],
    },
    "list": [1, 2],
    "nested": [[1, 2], [3]],
    "s": "text",
}

# (values files, --set arguments): each merged by helm and by mfhelm.
CASES: dict[str, tuple[list[str], list[str]]] = {
    "dotted keys": ([], ["metadata.replicas=3", "a.b.c=x"]),
    "several in one --set": ([], ["a=1,b=two,c.d=true"]),
    "typing": ([], ["t1=TRUE,t2=False,t3=nUll,t4=0,t5=007,t6=1.5,t7=-12,t8=+5,t9=0x1A,t10=1e3"]),
    "int64 bounds": ([], ["big=9223372036854775807,bigger=9223372036854775808,neg=-9223372036854775808"]),
    "empty values": ([], ["e1=", "e2=,e3=x"]),
    "escapes": ([], [r"flows.nodeSelector.kubernetes\.io/os=linux", r"v=a\,b", r"w=a\=b\\c"]),
    "index into an existing list": ([], ["list[3]=x", "list[0]=zero"]),
    "new list with a gap": ([], ["fresh[2]=c"]),
    "nested lists": ([], ["nested[0][3]=x", "nested[2][0]=y", "n2[1][1]=z"]),
    "maps inside lists": ([], ["flows.tolerations[0].value=gpu", "flows.tolerations[1].key=k",
                               "objs[0].a.b=1"]),
    "brace lists": ([], ["l1={a,b,3}", "l2={}", "l3={x}", "l4={1,TRUE},after=1"]),
    "list right after a list": ([], ["l5={1}next=2"]),
    "null over a map": ([], ["metadata.resources=null"]),
    "files in order, maps merged": (
        ["metadata:\n  replicas: 2\n  extra: {a: 1}\n", "metadata:\n  extra: {b: 2}\ns: second\n"],
        []),
    "a file replaces lists and scalars": (["list: [9]\nflows:\n  tolerations: []\n"], []),
    "null in a file": (["metadata:\n  resources: null\n"], []),
    "set after the files": (["metadata:\n  replicas: 2\n"], ["metadata.replicas=5"]),
    "set into a list from a file": (["ports: [{name: a, port: 1}]\n"], ["ports[0].port=2"]),
    "multi-document file": (["a: 1\nb: {c: 1}\n---\nb: {d: 2}\n---\n"], []),
    "dates stay text": (["d: 2026-01-01\nt: 2026-01-01T10:00:00Z\n"], []),
    "YAML 1.1 booleans": (["a: yes\nb: off\nc: 'yes'\nd: n\ne: Y\nf: [y, N, ON]\ny: 1\n"], []),
    "non-string keys": (["m:\n  1: one\n  true: t\n"], []),
    "anchors are copies": (["a: &x {k: 1}\nb: *x\n"], ["a.k=2"]),
    "empty file": (["", "# only a comment\n"], ["x=1"]),
}

# Refused by helm and by mfhelm (helm fails; mfhelm raises one line).
REFUSED = ["a", "a,b=1", "a[x]=1", "a[-1]=1", "a={1,2", "a[1]x=2", "s.x=1", "s[0]=1",
           "list.x=1", "metadata[0]=1", "a[70000]=1", "nested[0][0][0]=1"]
# Malformed input helm ignores without a word; mfhelm refuses it.
STRICTER = ["a.", "a[0]", "a[1", "x.y.", "a[0]["]


@pytest.fixture(scope="module")
def helm_config(tmp_path_factory: pytest.TempPathFactory):
    helm = find_helm()
    if helm is None:
        pytest.skip(reason="helm not found (run `make dev`)")
    root = tmp_path_factory.mktemp("echo-chart")
    chart = root / "echo"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: echo\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("")
    counter = iter(range(10_000))

    def run(files: list[str], sets: list[str]) -> subprocess.CompletedProcess[str]:
        n = next(counter)
        paths = []
        for i, text in enumerate([yaml.safe_dump(BASE), *files]):
            path = root / f"case{n}-{i}.yaml"
            path.write_text(text)
            paths.append(path)
        argv = [helm, "install", "echo", str(chart), "--dry-run=client", "-o", "json"]
        for path in paths:
            argv += ["-f", str(path)]
        for expr in sets:
            argv += ["--set", expr]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "HOME": str(root),
                                   "KUBECONFIG": str(root / "no-kubeconfig")})

    return run


def ours(tmp_path: Path, files: list[str], sets: list[str]) -> dict[str, Any]:
    paths = []
    for i, text in enumerate(files):
        path = tmp_path / f"user{i}.yaml"
        path.write_text(text)
        paths.append(path)
    merged = UserValues.read(paths, sets).layer(BASE)
    return json.loads(json.dumps(merged))


@pytest.mark.parametrize("case", sorted(CASES))
def test_layers_merge_exactly_as_helm_merges_them(case: str, helm_config, tmp_path: Path):
    files, sets = CASES[case]
    proc = helm_config(files, sets)
    assert proc.returncode == 0, proc.stderr
    assert ours(tmp_path, files, sets) == json.loads(proc.stdout)["config"]


@pytest.mark.parametrize("expr", REFUSED)
def test_set_that_helm_refuses_is_refused(expr: str, helm_config, tmp_path: Path):
    assert helm_config([], [expr]).returncode != 0
    with pytest.raises(MfhelmError) as err:
        ours(tmp_path, [], [expr])
    assert str(err.value).startswith(f"--set {expr}: ") and "\n" not in str(err.value)


@pytest.mark.parametrize("expr", STRICTER)
def test_malformed_set_that_helm_drops_silently_is_refused(expr: str, helm_config,
                                                           tmp_path: Path):
    assert helm_config([], [expr]).returncode == 0
    with pytest.raises(MfhelmError, match=r"^--set "):
        ours(tmp_path, [], [expr])


def test_set_syntax_is_checked_when_read_not_later():
    with pytest.raises(MfhelmError, match=r'^--set a\[x\]=1: list index "\[x\]" is not a number'):
        UserValues.read([], ["ok=1", "a[x]=1"])


def test_values_file_that_is_not_a_mapping(tmp_path: Path):
    path = tmp_path / "v.yaml"
    path.write_text("a: 1\n---\n- x\n")
    with pytest.raises(MfhelmError, match=f"values file {path}: expected a mapping of values, "
                       "not a list"):
        UserValues.read([path])


# --- protected keys ------------------------------------------------------------------------


# With the entry point on (mfhelm.toml [access]), so its values are rendered too.
ACCESS = {"host": "metaflow.example.com",
          "tls_certificate": "https://acme-kv.vault.azure.net/certificates/metaflow",
          "admin_groups": ["0a1b2c3d-0000-4000-8000-00000000a009"]}


def azure_values(**overrides: Any) -> dict[str, Any]:
    outputs = fake_arm.sample_outputs() | {"deployAirflow": True,
                                           "airflowLogsContainerName": "airflow-logs",
                                           "signinClientId": "0a1b2c3d-0000-4000-8000-00000000a001",
                                           } | overrides
    s = settings.parse({"org_prefix": "acme", "location": "westeurope", "access": ACCESS})
    return values_mod.render_values(outputs, s)


def _leaves(tree: Any, prefix: str = "") -> list[str]:
    if isinstance(tree, dict) and tree:
        return [leaf for k, v in tree.items() for leaf in _leaves(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")]


# What mfhelm renders on azure that does not come from the deployment.
NOT_PROTECTED = {
    "database.sslMode": "Azure needs TLS; verify-full is a user's stricter choice",
    "argo-workflows.controller.extraArgs": "re-derived from flows.namespace after the merge",
    "argo-workflows.server.extraArgs": "re-derived from flows.namespace after the merge",
    "argo-events.controller.rbac.managedNamespace":
        "re-derived from flows.namespace after the merge",
    "airflow.config.webserver.base_url": "re-derived from access.host after the merge",
    "airflow.webserver.webserverConfigConfigMapName": "re-set with access on after the merge",
}


def test_every_azure_value_is_protected_or_listed_as_free():
    values = azure_values(flowNamespace="metaflow-flows")
    for leaf in _leaves(values):
        covered = [k for k in AZURE_PROTECTED if leaf == k or leaf.startswith(k + ".")]
        assert covered or leaf in NOT_PROTECTED, leaf
    for key in AZURE_PROTECTED:  # and every protected key is something mfhelm renders
        assert uservalues._lookup(values, key) is not uservalues._MISSING, key


@pytest.mark.parametrize("key", sorted(AZURE_PROTECTED))
def test_each_azure_protected_key_is_refused_naming_it(key: str):
    expr = f"{key}=999"
    with pytest.raises(MfhelmError) as err:
        UserValues.read(sets=[expr]).apply(azure_values(), AZURE_PROTECTED)
    msg = str(err.value)
    assert msg.startswith(f"--set {expr} changes {key}, which comes from ")
    assert f"--allow-override {key}" in msg and "\n" not in msg
    merged = UserValues.read(sets=[expr], allow=[key]).apply(azure_values(), AZURE_PROTECTED)
    assert uservalues._lookup(merged, key) == 999


def test_the_file_that_changes_a_protected_key_is_named(tmp_path: Path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("database:\n  host: elsewhere.example.com\n")
    b.write_text("metadata:\n  replicas: 2\n")
    with pytest.raises(MfhelmError, match=rf"^values file {a} changes database.host, which "
                       r"comes from the deployment \(postgresFqdn\): remove it"):
        UserValues.read([a, b]).apply(azure_values(), AZURE_PROTECTED)
    # A map above the key replaced counts too; the other keys are listed.
    b.write_text("storage: null\n")
    with pytest.raises(MfhelmError, match=rf"^values file {b} changes storage.accountName, .*"
                       r"\(also storage.blobEndpoint, storage.container"):
        UserValues.read([a, b], allow=["database.host"]).apply(azure_values(), AZURE_PROTECTED)


def test_protected_keys_set_to_the_same_value_pass():
    host = azure_values()["database"]["host"]
    merged = UserValues.read(sets=[f"database.host={host}", "metadata.replicas=2"]).apply(
        azure_values(), AZURE_PROTECTED)
    assert merged["database"]["host"] == host and merged["metadata"]["replicas"] == 2


def test_a_different_type_is_a_change():
    with pytest.raises(MfhelmError, match="changes argo-workflows.enabled"):
        UserValues.read(sets=["argo-workflows.enabled=1"]).apply(azure_values(), AZURE_PROTECTED)


def test_adding_to_a_protected_map_is_a_change():
    with pytest.raises(MfhelmError, match="changes flows.nodeSelector"):
        UserValues.read(sets=[r"flows.nodeSelector.disk=ssd"]).apply(azure_values(),
                                                                      AZURE_PROTECTED)


def test_allow_override_of_an_unknown_key_is_refused():
    with pytest.raises(MfhelmError, match=r"^--allow-override database.hots: not a protected "
                       r"key or a security switch here; the protected keys are profile, "):
        UserValues.read(sets=["a=1"], allow=["database.hots"]).apply(azure_values(),
                                                                     AZURE_PROTECTED)


@pytest.mark.parametrize(("expr", "source"), [
    ("airflow.enabled=true", "--airflow/--no-airflow"),
    ("argo-workflows.enabled=false", "--argo/--no-argo"),
    ("database.existingSecret=mine", "the Secret mfhelm install writes"),
    ("profile=azure", "mfhelm's profile"),
])
def test_local_protected_keys(expr: str, source: str):
    base = values_mod.local_values(argo=True, airflow=False, flow_namespace="mf-flows")
    with pytest.raises(MfhelmError, match=f"which comes from {source}"):
        UserValues.read(sets=[expr]).apply(base, LOCAL_PROTECTED)


def test_local_profile_leaves_placement_and_the_rest_to_the_user():
    base = values_mod.local_values(argo=True, airflow=False, flow_namespace="mf-flows")
    merged = UserValues.read(sets=[r"serviceNodeSelector.mfhelm\.io/pool=nowhere",
                                   "flows.namespace=other", "metadata.replicas=2"]).apply(
        base, LOCAL_PROTECTED)
    assert merged["serviceNodeSelector"] == {"mfhelm.io/pool": "nowhere"}
    assert merged["flows"]["namespace"] == "other"


def test_user_argo_args_keep_the_flow_namespace_flag():
    values = azure_values()
    merged = UserValues.read(sets=["argo-workflows.controller.extraArgs={--qps=50}"]).apply(
        values, AZURE_PROTECTED)
    final = values_mod.argo_watches_flow_namespace(merged, "metaflow")
    assert final["argo-workflows"]["controller"]["extraArgs"] == [
        "--qps=50", "--managed-namespace=metaflow-flows"]


# --- the chart's schema over the merged values ----------------------------------------------


def test_schema_refusal_is_one_line_naming_the_key():
    values = UserValues.read(sets=["metadata.replicas=two"]).apply(azure_values(),
                                                                   AZURE_PROTECTED)
    with pytest.raises(MfhelmError, match=r"^the chart's values.schema.json refuses the values: "
                       r"at metadata.replicas: 'two' is not of type 'integer'$"):
        uservalues.check_schema(find_chart(), values)


def test_schema_accepts_what_mfhelm_renders_with_user_values():
    values = UserValues.read(sets=["metadata.replicas=3", "metadata.resources=null"]).apply(
        azure_values(), AZURE_PROTECTED)
    uservalues.check_schema(find_chart(), values)


def test_coalesce_drops_nulls_over_defaults():
    assert uservalues.coalesce({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": None}, "d": None,
                                                                 "e": {"f": None}}) == {
        "a": {"c": 2}, "e": {}}


def test_values_file_with_data_helm_cannot_take(tmp_path: Path):
    path = tmp_path / "v.yaml"
    path.write_text("blob: !!binary aGVsbG8=\n")
    with pytest.raises(MfhelmError, match=f"values file {path}: holds a value that is not plain"):
        UserValues.read([path])


def test_absurdly_nested_set_is_one_line():
    with pytest.raises(MfhelmError, match="nested too deeply"):
        UserValues.read(sets=["a" + "[0]" * 5000 + "=1"])


def test_airflow_behind_the_sign_in_is_re_derived_after_the_users_values():
    from mfhelm import stack

    values = azure_values(flowNamespace="metaflow-flows")
    assert values["airflow"]["config"]["webserver"]["base_url"] == \
        f"https://{ACCESS['host']}/airflow"
    user = UserValues.read((), ["airflow.config.webserver.base_url=https://elsewhere/x",
                                "airflow.webserver.webserverConfigConfigMapName=mine"], ())
    merged = stack.with_user_values(values, user, AZURE_PROTECTED, "metaflow",
                                    stack.Target("metaflow", "metaflow"))
    assert merged["airflow"]["config"]["webserver"]["base_url"] == \
        f"https://{ACCESS['host']}/airflow"
    assert merged["airflow"]["webserver"]["webserverConfigConfigMapName"] == \
        values_mod.AIRFLOW_SIGNIN_CONFIG
