"""The user's own values (`-f FILE`, `--set key=value`) over mfhelm's.

Design: mfhelm layers them itself, in Helm's order, and hands helm one
merged document. mfhelm's rendered values are the first layer (as if they
were helm's first `-f`), then each `-f` file in order (maps merge key by
key, anything else replaces), then each `--set` in order, written into the
merged map with Helm's `--set` syntax and typing. Merging here, not in
helm, is what lets `mfhelm render` write the result, lets the protected-key
check and the chart preparation (which subcharts are on) see it, and keeps
helm's argv free of values. tests/unit/test_uservalues.py checks the result
against helm's own `config` for the same layers.

Some keys must come from the deployment (or from mfhelm's own Secrets and
flags): a user layer that changes one is refused with one line naming it,
unless `--allow-override KEY` says so on purpose. So is a value that weakens
one of the stack's security promises (mfhelm.promises). A key the stack
publishes in the Metaflow config cannot be replaced through
`metaflowConfig.extra` at all (the chart refuses it too).
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfhelm import promises
from mfhelm.errors import MfhelmError

# --- protected keys ---------------------------------------------------------------------

_POOL = "the AKS pool labels the deployment made (taskworkersLabelKey/Value)"
_SA = "the service account the deployment federated for workload identity"
_SECRET = "the Secret mfhelm install writes"

AZURE_PROTECTED: dict[str, str] = {
    "profile": "mfhelm's profile",
    "identity.clientId": "the deployment (identityClientId)",
    "identity.tenantId": "the deployment (tenantId)",
    "serviceAccounts.service.name": f"{_SA} (serviceAccountService)",
    "serviceAccounts.flows.name": f"{_SA} (serviceAccountFlows)",
    "serviceAccounts.airflow.name": f"{_SA} (serviceAccountAirflow)",
    "flows.namespace": "the deployment (flowNamespace)",
    "flows.nodeSelector": _POOL,
    "flows.tolerations": _POOL,
    "serviceNodeSelector": _POOL,
    "database.host": "the deployment (postgresFqdn)",
    "database.name": "the deployment (postgresDatabaseName)",
    "database.user": "the database role mfhelm install creates",
    "database.adminUser": "the deployment (postgresAdminLogin)",
    "database.existingSecret": _SECRET,
    "database.existingSecretPasswordKey": _SECRET,
    "storage.accountName": "the deployment (storageAccountName)",
    "storage.blobEndpoint": "the deployment (storageBlobEndpoint)",
    "storage.container": "the deployment (metaflowContainerName)",
    "storage.airflowLogsContainer": "the deployment (airflowLogsContainerName)",
    "argo-workflows.enabled": "the deployment (deployArgo)",
    "argo-events.enabled": "mfhelm.toml deploy_argo_events, with the deployment's deployArgo",
    "airflow.enabled": "the deployment (deployAirflow)",
    "gpu.enabled": "the deployment (gpuPoolEnabled)",
    "airflowGlue.databaseUser": "the database role mfhelm install creates",
    "airflowGlue.databaseName": "the database the deployment made for Airflow",
    "airflow.scheduler.serviceAccount": f"{_SA} (serviceAccountAirflow)",
    "airflow.webserver.serviceAccount": f"{_SA} (serviceAccountAirflow)",
    "airflow.migrateDatabaseJob.serviceAccount": f"{_SA} (serviceAccountAirflow)",
    "airflow.createUserJob.serviceAccount": f"{_SA} (serviceAccountAirflow)",
    "airflow.scheduler.nodeSelector": _POOL,
    "airflow.webserver.nodeSelector": _POOL,
    # With mfhelm.toml [access] host: the entry point and Entra ID sign-in.
    "access.enabled": "mfhelm.toml [access] host",
    "access.host": "mfhelm.toml [access] host",
    "access.tls.keyVaultCertificateUri": "mfhelm.toml [access] tls_certificate",
    "access.tls.secretName": "mfhelm.toml [access] tls_secret",
    "access.provider": "the azure profile (Entra ID through workload identity, no client secret)",
    "access.issuerUrl": "the deployment (tenantId: one tenant's issuer)",
    "access.clientId": "the deployment (signinClientId)",
    "argo-workflows.server.baseHref":
        "mfhelm.toml [access] host (the sign-in serves the Argo UI under /argo/)",
    "access.adminGroups": "mfhelm.toml [access] admin_groups",
}

# The Metaflow config the chart publishes (templates/metaflow-config.yaml), and
# with Argo Events its METAFLOW_ARGO_EVENTS_* keys: `metaflowConfig.extra` may
# add keys beside them, never replace one (tests pin both lists to the chart).
PUBLISHED_CONFIG = (
    "METAFLOW_DEFAULT_DATASTORE", "METAFLOW_DATASTORE_SYSROOT_AZURE",
    "METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT", "METAFLOW_DEFAULT_METADATA",
    "METAFLOW_SERVICE_URL", "METAFLOW_SERVICE_INTERNAL_URL", "METAFLOW_KUBERNETES_NAMESPACE",
    "METAFLOW_KUBERNETES_SERVICE_ACCOUNT", "METAFLOW_KUBERNETES_LABELS",
    "METAFLOW_KUBERNETES_NODE_SELECTOR", "METAFLOW_KUBERNETES_TOLERATIONS",
)
PUBLISHED_EVENTS_CONFIG = (
    "METAFLOW_ARGO_EVENTS_EVENT", "METAFLOW_ARGO_EVENTS_EVENT_BUS",
    "METAFLOW_ARGO_EVENTS_EVENT_SOURCE", "METAFLOW_ARGO_EVENTS_SERVICE_ACCOUNT",
    "METAFLOW_ARGO_EVENTS_WEBHOOK_URL", "METAFLOW_ARGO_EVENTS_INTERNAL_WEBHOOK_URL",
)
# With Argo Workflows on: Metaflow writes CronWorkflows' `schedules`, which
# Argo 4 needs (mfhelm/metaflow_config.py ARGO_SCHEDULES_KEY).
PUBLISHED_ARGO_CONFIG = ("METAFLOW_ARGO_WORKFLOWS_USE_SCHEDULES",)
# With access on: the UIs through the entry point (Argo's with Argo on).
# METAFLOW_MFHELM_SERVICE_SCOPE: the token scope mfhelm's Metaflow extension asks for.
PUBLISHED_ACCESS_CONFIG = ("METAFLOW_UI_URL", "METAFLOW_MFHELM_SERVICE_SCOPE")
PUBLISHED_ACCESS_ARGO_CONFIG = ("METAFLOW_ARGO_WORKFLOWS_UI_URL",)


def _on(values: dict[str, Any], key: str, default: bool) -> bool:
    found = _lookup(values, key)
    return default if found is _MISSING else promises.truthy(found)


def published_config_keys(values: dict[str, Any]) -> tuple[str, ...]:
    """The keys the chart publishes with these values (Argo Workflows and
    Events are on unless the values turn them off, access off unless on:
    the chart's defaults)."""
    keys: tuple[str, ...] = PUBLISHED_CONFIG
    if _on(values, "argo-workflows.enabled", True):
        keys += PUBLISHED_ARGO_CONFIG
    if _on(values, "argo-events.enabled", True):
        keys += PUBLISHED_EVENTS_CONFIG
    if _on(values, "access.enabled", False):
        keys += PUBLISHED_ACCESS_CONFIG
        if _on(values, "argo-workflows.enabled", True):
            keys += PUBLISHED_ACCESS_ARGO_CONFIG
    return keys


LOCAL_PROTECTED: dict[str, str] = {
    "profile": "mfhelm's profile",
    "database.existingSecret": _SECRET,
    "database.existingSecretPasswordKey": _SECRET,
    "argo-workflows.enabled": "--argo/--no-argo",
    "argo-events.enabled": "--argo/--no-argo (Argo Events follows Argo)",
    "airflow.enabled": "--airflow/--no-airflow",
}


# --- values files ---------------------------------------------------------------------------


def _loader() -> Any:
    """PyYAML's safe loader, read the way helm reads values (through JSON):
    a date stays the text it was, and every key is a string."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Hashable, Any]:
            # Keys become text as they are read: `1:` and `true:` are two
            # keys for helm, one (1 == True) in a Python dict.
            self.flatten_mapping(node)
            return {_key_text(self.construct_object(k, deep=deep)):
                    self.construct_object(v, deep=deep) for k, v in node.value}

    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    # helm's YAML reader also takes y/Y/n/N for booleans (YAML 1.1).
    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"),
                                 list("yYnN"))
    Loader.bool_values = {**yaml.SafeLoader.bool_values, "y": True, "n": False}
    return Loader


def _key_text(key: Any) -> str:
    """A mapping key as helm sees it after YAML -> JSON: always a string."""
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    return str(key)


def _plain(value: Any) -> Any:
    """A fresh tree of dicts with string keys, lists and scalars (no shared
    nodes, so a YAML anchor used twice is two values, as in helm)."""
    if isinstance(value, dict):
        return {_key_text(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def load_file(path: str | Path) -> dict[str, Any]:
    """A values file: every YAML document in it merged in order (as helm 4
    does), each one a mapping (or empty)."""
    import yaml

    from mfhelm import userfiles

    text = userfiles.read_text(path, "values file")
    where = f"values file {path}"
    loader = userfiles.bounded_yaml_loader(_loader())
    docs = userfiles.parse_document(
        text, where, "YAML", lambda t: [_plain(d) for d in yaml.load_all(t, Loader=loader)],
        (yaml.YAMLError,))
    merged: dict[str, Any] = {}
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise MfhelmError(f"{where}: expected a mapping of values, not a "
                              f"{'list' if isinstance(doc, list) else type(doc).__name__}")
        merged = merge_maps(merged, doc)
    try:
        json.dumps(merged)
    except (TypeError, ValueError) as exc:  # !!binary, !!set: nothing helm can take
        raise MfhelmError(f"{where}: holds a value that is not plain data ({exc})") from None
    return merged


def merge_maps(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`: two maps under one key merge, anything else replaces."""
    out = dict(base)
    for key, value in top.items():
        below = out.get(key)
        if isinstance(value, dict) and isinstance(below, dict):
            out[key] = merge_maps(below, value)
        else:
            out[key] = value
    return out


# --- --set ------------------------------------------------------------------------------------

# Helm's bounds (pkg/strvals at the pinned helm): list index, key nesting.
MAX_INDEX = 65536
MAX_NESTING = 30
_INT = re.compile(r"[+-]?[0-9]+")
_INT64 = (-(2**63), 2**63 - 1)


class SetError(Exception):
    """A --set expression helm would refuse (or silently drop)."""


class _Text:
    """The expression, read left to right; a backslash makes the next
    character plain (`a\\.b=1` sets the key "a.b")."""

    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def next_char(self) -> str | None:
        if self.at_end():
            return None
        ch = self.text[self.pos]
        self.pos += 1
        return ch

    def back(self) -> None:
        self.pos -= 1

    def until(self, stops: str) -> tuple[str, str | None]:
        """The plain text up to the first unescaped character of `stops`
        (consumed), and that character; None for the end of the text."""
        out: list[str] = []
        while True:
            ch = self.next_char()
            if ch is None:
                return "".join(out), None
            if ch in stops:
                return "".join(out), ch
            if ch == "\\":
                escaped = self.next_char()
                if escaped is None:
                    return "".join(out), None
                out.append(escaped)
            else:
                out.append(ch)


def typed(text: str) -> Any:
    """Helm's --set typing: true/false/null in any case, integers without a
    leading zero (int64), everything else (1.5, 0x10, 007, "") a string."""
    low = text.lower()
    if low == "true":
        return True
    if low == "false":
        return False
    if low == "null":
        return None
    if text == "0":
        return 0
    if text and text[0] != "0" and _INT.fullmatch(text):
        number = int(text)
        if _INT64[0] <= number <= _INT64[1]:
            return number
    return text


def parse_set(expr: str, into: dict[str, Any]) -> None:
    """Write one `--set` argument (`a.b=1,c[0]=x,d={1,2}`) into `into`, in
    place, the way `helm --set` writes into the merged values files."""
    text = _Text(expr)
    try:
        while not text.at_end():
            _assign(text, into, 0)
    except RecursionError:
        raise SetError("nested too deeply") from None


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    if key:  # helm ignores an empty key name
        data[key] = value


def _assign(text: _Text, data: dict[str, Any], depth: int) -> None:
    key, stop = text.until("=[,.")
    if not key and stop in ("=", ".", "["):
        # helm drops what an empty key name holds without a word.
        raise SetError(f'a key name is empty (before "{stop}")')
    if stop is None:
        raise SetError(f'key "{key}" has no value' if key else "a key is missing at the end")
    if stop == ",":
        raise SetError(f'key "{key}" has no value (cannot end with ,)')
    if stop == "=":
        _set(data, key, _value(text))
        return
    if stop == ".":
        depth += 1
        if depth > MAX_NESTING:
            raise SetError(f"keys nest deeper than {MAX_NESTING} levels")
        # A null (as the local profile's values hold for node selectors) is no
        # map yet: helm's --set map replaces it, as it does a missing key.
        inner = data.get(key)
        inner = {} if inner is None else inner
        if not isinstance(inner, dict):
            raise SetError(f'"{key}" holds {_kind(inner)}, not a map, so "{key}." cannot '
                           "follow it")
        _assign(text, inner, depth)
        if not inner:
            raise SetError(f'key map "{key}" has no value')
        _set(data, key, inner)
        return
    # stop == "[": a list element
    index = _index(text)
    existing = data.get(key)
    existing = [] if existing is None else existing
    if not isinstance(existing, list):
        raise SetError(f'"{key}" holds {_kind(existing)}, not a list, so "{key}[{index}]" '
                       "cannot follow it")
    _set(data, key, _list_item(text, existing, index, depth, f"{key}[{index}]"))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a map"
    if isinstance(value, list):
        return "a list"
    return f"the value {value!r}"


def _index(text: _Text) -> int:
    raw, stop = text.until("]")
    if stop is None:
        raise SetError(f'list index "[{raw}" is not closed with "]"')
    if not _INT.fullmatch(raw):
        raise SetError(f'list index "[{raw}]" is not a number')
    index = int(raw)
    if index < 0:
        raise SetError(f"negative {index} index not allowed")
    if index > MAX_INDEX:
        raise SetError(f"index of {index} is greater than maximum supported index of "
                       f"{MAX_INDEX}")
    return index


def _put(items: list[Any], index: int, value: Any) -> list[Any]:
    if len(items) <= index:
        items.extend([None] * (index + 1 - len(items)))
    items[index] = value
    return items


def _list_item(text: _Text, items: list[Any], index: int, depth: int, where: str) -> list[Any]:
    rest, stop = text.until("[.=")
    if rest:
        raise SetError(f'unexpected data at end of array index: "{rest}"')
    if stop is None:
        raise SetError(f'"{where}" has no value')
    if stop == "=":
        return _put(items, index, _value(text))
    if stop == "[":
        inner_index = _index(text)
        current = items[index] if index < len(items) else None
        if current is None:
            current = []
        if not isinstance(current, list):
            raise SetError(f'"{where}" holds {_kind(current)}, not a list')
        return _put(items, index, _list_item(text, current, inner_index, depth,
                                             f"{where}[{inner_index}]"))
    # stop == ".": a map inside the list; anything else there is replaced
    if index < len(items) and not isinstance(items[index], dict):
        items[index] = {}
    inner = items[index] if index < len(items) else {}
    _assign(text, inner, depth)
    return _put(items, index, inner)


def _value(text: _Text) -> Any:
    """After `=`: `{a,b}` is a list, anything else one typed value up to `,`."""
    first = text.next_char()
    if first is None:
        return ""
    if first != "{":
        text.back()
        raw, _ = text.until(",")
        return typed(raw)
    items: list[Any] = []
    while True:
        raw, stop = text.until(",}")
        if stop is None:
            raise SetError("list must terminate with '}'")
        items.append(typed(raw))
        if stop == "}":
            if text.next_char() not in (",", None):
                text.back()
            return items


# --- the layers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserValues:
    """What the user gave, read and checked before anything else happens."""

    files: tuple[tuple[str, dict[str, Any]], ...] = ()
    sets: tuple[str, ...] = ()
    allow: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def read(cls, files: Iterable[str | Path] = (), sets: Iterable[str] = (),
             allow: Iterable[str] = ()) -> UserValues:
        """Every file loaded and every --set parsed now: a bad one is one line
        before any cluster or Azure call."""
        loaded = tuple((str(f), load_file(f)) for f in files)
        sets = tuple(sets)
        for expr in sets:
            _parse_alone(expr)
        return cls(loaded, sets, frozenset(allow))

    def __bool__(self) -> bool:
        return bool(self.files or self.sets or self.allow)

    def layer(self, base: dict[str, Any]) -> dict[str, Any]:
        """base, then each file, then each --set: Helm's order, last wins."""
        merged = _plain(base)
        for _, data in self.files:
            merged = merge_maps(merged, _plain(data))
        for expr in self.sets:
            try:
                parse_set(expr, merged)
            except SetError as exc:
                raise MfhelmError(f"--set {expr}: {exc}") from None
        return merged

    def apply(self, base: dict[str, Any], protected: dict[str, str]) -> dict[str, Any]:
        """The merged values, refused (one line) if they change a protected
        key, or weaken a security promise, that --allow-override does not
        name, or replace a published Metaflow config key."""
        profile = str(base.get("profile", "azure"))
        unknown = sorted(k for k in self.allow
                         if k not in protected and not promises.is_switch(k, profile))
        if unknown:
            raise MfhelmError(
                f"--allow-override {unknown[0]}: not a protected key or a security switch here; "
                f"the protected keys are {', '.join(protected)}; the security switches are "
                "listed in charts/metaflow/README.md (Security promises)")
        merged = self.layer(base)
        changed = [k for k in protected if k not in self.allow
                   and not _same(_lookup(base, k), _lookup(merged, k))]
        if changed:
            key = changed[0]
            also = f" (also {', '.join(changed[1:])})" if changed[1:] else ""
            raise MfhelmError(
                f"{self._culprit(key)} changes {key}, which comes from {protected[key]}{also}: "
                f"remove it, or pass --allow-override {key} if you mean it")
        self._check_config_extra(merged)
        self._check_promises(merged, profile)
        return merged

    def _check_config_extra(self, merged: dict[str, Any]) -> None:
        extra = _lookup(merged, "metaflowConfig.extra")
        if not isinstance(extra, dict):
            return
        published = published_config_keys(merged)
        taken = [k for k in extra if k in published]
        if taken:
            key = taken[0]
            culprit = self._culprit_at(("metaflowConfig", "extra", key)) or "your values"
            raise MfhelmError(
                f"{culprit} sets metaflowConfig.extra.{key}, but {key} is published by the "
                "stack in the Metaflow config every data scientist's is built from: extra keys "
                "may add to it, never replace one; remove it")

    def _check_promises(self, merged: dict[str, Any], profile: str) -> None:
        """Weak values a user layer wrote (mfhelm's and the chart's own are
        the stack's), unless --allow-override names their key."""
        found = []
        for weak in promises.weakenings(merged, profile):
            if promises.key_text(weak.key) in self.allow:
                continue
            culprit = self._culprit_at(weak.detail)
            if culprit is not None:
                found.append((weak, culprit))
        if not found:
            return
        weak, culprit = found[0]
        key = promises.key_text(weak.key)
        others = [k for k in dict.fromkeys(promises.key_text(w.key) for w, _ in found[1:])
                  if k != key]
        also = f" (also {', '.join(others)})" if others else ""
        raise MfhelmError(
            f"{culprit} sets {promises.key_text(weak.detail)} to {weak.shown}, which breaks the "
            f"security promise that {weak.rule.promise}{also}: remove it, or pass "
            f"--allow-override {key} if you mean it")

    def writes(self, key: str) -> bool:
        """Whether one of the user's layers writes the dotted `key` (or
        replaces a map above it)."""
        return self._culprit_at(tuple(key.split("."))) is not None

    def _culprit(self, key: str) -> str:
        """The last layer that writes `key` (or replaces a map above it)."""
        return self._culprit_at(tuple(key.split("."))) or "your values"

    def _culprit_at(self, path: tuple[str | int, ...]) -> str | None:
        """The last layer that writes at `path` (or replaces what holds it);
        None when only mfhelm's values do."""
        for expr in reversed(self.sets):
            if _touches(_parse_alone(expr), path, from_set=True):
                return f"--set {expr}"
        for name, data in reversed(self.files):
            if _touches(data, path, from_set=False):
                return f"values file {name}"
        return None


def _parse_alone(expr: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        parse_set(expr, out)
    except SetError as exc:
        raise MfhelmError(f"--set {expr}: {exc}") from None
    return out


_MISSING = object()


def _lookup(tree: Any, key: str) -> Any:
    node = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _same(a: Any, b: Any) -> bool:
    """Equal as helm would see them: `1` is not `true`, `1` is not `"1"`."""
    if a is _MISSING or b is _MISSING:
        return a is b
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _touches(tree: Any, path: tuple[str | int, ...], *, from_set: bool) -> bool:
    """Whether one layer writes at `path`. A file's list replaces the whole
    list; a --set list holds only the elements it names (None elsewhere)."""
    node: Any = tree
    for part in path:
        if isinstance(node, list) and from_set and isinstance(part, int):
            if part >= len(node) or node[part] is None:
                return False
            node = node[part]
            continue
        if not isinstance(node, dict):
            return True  # a value above the key replaces it
        if part not in node:
            return False
        node = node[part]
    return True


# --- the chart's schema (for `mfhelm render`) --------------------------------------------------


def coalesce(defaults: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """values over the chart's defaults, a null removing the key (as helm
    does before it checks values.schema.json)."""
    out = dict(defaults)
    for key, value in values.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = coalesce(out[key], value)
        elif isinstance(value, dict):
            out[key] = coalesce({}, value)
        else:
            out[key] = value
    return out


def check_schema(chart: Path, values: dict[str, Any]) -> None:
    """The chart's own values.schema.json over its defaults and `values`:
    one line naming the first offending key. (`mfhelm install` renders the
    chart with helm first, which also checks the subcharts' schemas.)"""
    import jsonschema
    import yaml

    schema = json.loads((chart / "values.schema.json").read_text())
    defaults = yaml.safe_load((chart / "values.yaml").read_text()) or {}
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(coalesce(defaults, values)),
                    key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.absolute_path) or "(top level)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise MfhelmError(f"the chart's values.schema.json refuses the values: at {where}: "
                          f"{first.message}{more}")
