"""values.schema.json: complete, strict, and it fails `helm install` with a clear message."""

import json
import re

import jsonschema
import pytest
import yaml
from chartlib import CHART, CI_VALUES, HelmError, render

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())
AZURE = CHART / "ci" / "azure-values.yaml"


def _merged(path):
    def merge(a, b):
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return out
    return merge(DEFAULTS, yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("path", CI_VALUES, ids=lambda p: p.name)
def test_ci_values_validate_against_schema(path):
    jsonschema.validate(_merged(path), SCHEMA)


def test_defaults_validate_against_schema():
    jsonschema.validate(DEFAULTS, SCHEMA)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"metdata": {"replicas": 1}}, "metdata"),
        ({"metadata": {"replicas": "two"}}, "replicas"),
        ({"profile": "gcp"}, "profile"),
        ({"database": {"sslMode": "required"}}, "sslMode"),
        ({"metadata": {"image": {"tag": "latest"}}}, "tag"),
        ({"storage": {"blobEndpoint": "acct.blob.core.windows.net"}}, "blobEndpoint"),
        ({"ui": {"backend": {"prot": 8083}}}, "prot"),
    ],
)
def test_bad_values_fail_with_a_message_naming_the_key(values, message):
    with pytest.raises(HelmError) as err:
        render([AZURE], values)
    assert "schema" in str(err.value)
    assert message in str(err.value)


def _walk(schema, path=""):
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{key}")


def test_every_schema_property_has_a_description():
    missing = [p for p, s in _walk(SCHEMA) if p and "description" not in s and "anyOf" not in s]
    assert not missing


def test_every_default_key_is_in_the_schema():
    def keys(d, prefix=""):
        for k, v in d.items():
            if prefix in (".argo-workflows", ".airflow"):
                continue
            yield f"{prefix}.{k}", v
            if isinstance(v, dict):
                yield from keys(v, f"{prefix}.{k}")
    known = {p for p, _ in _walk(SCHEMA)}
    free = {p for p, s in _walk(SCHEMA) if s.get("type") == "object" and "properties" not in s}
    for path, _ in keys(DEFAULTS):
        if any(path.startswith(f + ".") for f in free):
            continue
        assert path in known, path


# Kubernetes pass-through blocks documented once at their parent.
PASSTHROUGH = {"resources", "requests", "limits", "podSecurityContext", "containerSecurityContext",
               "labels", "commonLabels", "annotations",
               "configMapRef", "configMap",
               "securityContext", "seccompProfile", "capabilities", "nodeSelector", "serviceNodeSelector",
               "tolerations"}


def test_values_yaml_has_a_comment_on_every_key():
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    undocumented = []
    opaque_below: int | None = None  # inside a block scalar or a list item
    for i, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if opaque_below is not None:
            if indent > opaque_below:
                continue
            opaque_below = None
        if line.lstrip().startswith("- "):
            opaque_below = indent
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_./-]+):", line)
        if not m:
            continue
        key = m.group(2)
        if re.search(r":\s*[|>][-+]?\s*$", line):
            opaque_below = indent
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parents = [k for _, k in stack]
        stack.append((indent, key))
        if any(p in PASSTHROUGH for p in parents):
            continue
        # A grouping key below the top level is documented by its leaves.
        if parents and line.rstrip().endswith(":") and key not in PASSTHROUGH:
            continue
        prev = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
        if not prev.strip().startswith("#"):
            undocumented.append(f"line {i + 1}: {'.'.join([*parents, key])}")
    assert not undocumented, "\n".join(undocumented)


def test_comment_check_can_fail(tmp_path, monkeypatch):
    """The check above flags an undocumented key."""
    import test_chart_schema as me

    fake = tmp_path / "chart"
    fake.mkdir()
    (fake / "values.yaml").write_text("# -- documented\na: 1\nb:\n  # -- ok\n  c: 2\n  d: 3\n")
    monkeypatch.setattr(me, "CHART", fake)
    with pytest.raises(AssertionError, match="line 6: b.d"):
        me.test_values_yaml_has_a_comment_on_every_key()
