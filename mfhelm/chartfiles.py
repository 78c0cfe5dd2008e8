"""The files of a chart directory mfhelm reads itself (Chart.yaml, values.yaml).

`--chart DIR` (and a chart pulled from a registry) may hold anything: each
file is read through mfhelm.userfiles (size bound, UTF-8, the YAML alias
bound) and checked for the shape mfhelm relies on, so a broken chart is one
line naming the file and the field, not a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mfhelm import userfiles
from mfhelm.errors import MfhelmError


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def chart_meta(chart: Path) -> dict[str, Any]:
    """Chart.yaml: a mapping with a name and a version, and dependencies (if
    any) a list of mappings that each have a name and a version, and a
    condition that is text."""
    path = chart / "Chart.yaml"
    meta = userfiles.load_yaml(path, "chart file")
    where = f"chart file {path}"
    if not isinstance(meta, dict):
        raise MfhelmError(f"{where}: expected a mapping (name, version, ...), not "
                          f"{_kind(meta)}; is this a Helm chart?")
    for key in ("name", "version"):
        if not _text(meta.get(key)):
            raise MfhelmError(f"{where}: {key} must be a non-empty string (quote a version "
                              f"such as \"1.0\"), got {_shown(meta.get(key))}")
    deps = meta.get("dependencies")
    if deps is None:
        return meta
    if not isinstance(deps, list):
        raise MfhelmError(f"{where}: dependencies must be a list, not {_kind(deps)}")
    for i, dep in enumerate(deps):
        if not isinstance(dep, dict):
            raise MfhelmError(f"{where}: dependencies[{i}] must be a mapping, not {_kind(dep)}")
        for key in ("name", "version"):
            if not _text(dep.get(key)):
                raise MfhelmError(f"{where}: dependencies[{i}] has no {key} (a non-empty "
                                  f"string), got {_shown(dep.get(key))}")
        if "condition" in dep and not isinstance(dep["condition"], str):
            raise MfhelmError(f"{where}: dependencies[{i}].condition must be a string such "
                              f"as {dep['name']}.enabled, got {_shown(dep['condition'])}")
    return meta


def chart_defaults(chart: Path) -> dict[str, Any]:
    """values.yaml as a mapping; a chart without one has no defaults (as in helm)."""
    path = chart / "values.yaml"
    if not path.exists() and not path.is_symlink():
        return {}
    data = userfiles.load_yaml(path, "chart values")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MfhelmError(f"chart values {path}: expected a mapping of values, not "
                          f"{_kind(data)}")
    return data


def check_chart(chart: Path) -> Path:
    """Both files read and checked now, before mfhelm does anything with the chart."""
    chart_meta(chart)
    chart_defaults(chart)
    return chart


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "an empty document"
    return f"a {type(value).__name__}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
