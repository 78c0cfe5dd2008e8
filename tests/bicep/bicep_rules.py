"""Project rules over parsed Bicep (pycep's JSON), for what checkov does not check.

Each rule takes one parsed template and returns a list of violations (empty
means the rule holds), so a test can feed it both the real templates and a
tiny bad snippet. pycep renders identifiers and string literals alike as
Python strings; rules that must tell them apart look the name up among the
template's declared symbols.

Two kinds of rule live here: the project's own (TLS on, pools as agreed, ...)
and an offline twin of every Bicep linter rule that bicep/bicepconfig.json
raises to "error" (LINTER_CHECKS maps each rule code to its twins). No Bicep
compiler runs in the tests; without the twins, a template that `bicep build`
refuses would pass them.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pycep import BicepParser

from mfhelm import pools
from mfhelm import pools as pools_mod

BICEP_DIR = Path(__file__).resolve().parents[2] / "bicep"

# The deployment outputs mfhelm reads (CONTRACT in /work/shared/design, fixed).
CONTRACT_OUTPUTS = {
    "resourceGroupName": "string", "location": "string", "tenantId": "string",
    "subscriptionId": "string", "aksClusterName": "string", "aksOidcIssuerUrl": "string",
    "identityName": "string", "identityClientId": "string", "storageAccountName": "string",
    "storageBlobEndpoint": "string", "metaflowContainerName": "string",
    "airflowLogsContainerName": "string", "postgresServerName": "string",
    "postgresFqdn": "string", "postgresDatabaseName": "string", "postgresAdminLogin": "string",
    "keyVaultName": "string", "keyVaultUri": "string", "postgresAdminSecretName": "string",
    "serviceNamespace": "string", "flowNamespace": "string", "serviceAccountService": "string",
    "serviceAccountFlows": "string", "serviceAccountAirflow": "string",
    "taskworkersLabelKey": "string", "taskworkersLabelValue": "string",
    "deployArgo": "bool", "deployAirflow": "bool",
    # Issue 18: the sign-in app's client id ('' with access off) and the add-on switch.
    "signinClientId": "string", "appRoutingEnabled": "bool",
    # Issue 20: the flow image's registry ('' when [registry] is off) and the optional pools.
    "registryName": "string", "registryLoginServer": "string",
    "gpuPoolEnabled": "bool", "spotPoolEnabled": "bool",
}
# The pools' label and taints as AKS writes them (k=v:Effect), from mfhelm.pools.
POOL_LABEL = pools.POOL_LABEL
TASK_TAINT = str(pools.TASKWORKERS_TAINT)
SYSTEM_TAINT = str(pools.SYSTEM_TAINT)

_PARSER: BicepParser | None = None


def parse_text(text: str) -> dict[str, Any]:
    global _PARSER
    _PARSER = _PARSER or BicepParser()
    return _PARSER.parse(text=text)


def parse_file(path: Path) -> dict[str, Any]:
    return parse_text(path.read_text())


def bicep_files() -> list[Path]:
    return sorted(BICEP_DIR.rglob("*.bicep"))


# --- tree helpers ------------------------------------------------------------------------


def body(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource's own properties, below any `if (...)` or `[for ...]` wrapper."""
    cfg = resource.get("config") or {}
    while isinstance(cfg, dict) and "config" in cfg and ("condition" in cfg or "loop_type" in cfg):
        cfg = cfg["config"]
    return cfg


def condition(resource: dict[str, Any]) -> Any:
    cfg = resource.get("config") or {}
    return cfg.get("condition") if isinstance(cfg, dict) else None


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def strings(node: Any) -> Iterator[str]:
    return (n for n in walk(node) if isinstance(n, str))


def functions(node: Any) -> Iterator[str]:
    for n in walk(node):
        if isinstance(n, dict) and isinstance(n.get("function"), dict):
            fn = n["function"]
            params = fn.get("parameters")
            if fn.get("type") == "list_func" and isinstance(params, dict):
                yield str(params.get("func_name", "list"))
            else:
                yield str(fn.get("type", ""))
        if isinstance(n, dict) and isinstance(n.get("operator"), dict):
            op = n["operator"]
            if op.get("type") == "function_accessor":  # resource.listKeys()
                yield str((op.get("operands") or {}).get("func_name", ""))


def resources(tpl: dict[str, Any], type_suffix: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, res in (tpl.get("resources") or {}).items():
        if str(res.get("type", "")).lower().endswith(type_suffix.lower()):
            yield name, res


def resource_type(res: dict[str, Any]) -> str:
    """The resource's type without an API version (pycep keeps `@version` on the type of
    a resource declared inside another one)."""
    return str(res.get("type", "")).split("@")[0]


def extension_resource(res: dict[str, Any]) -> bool:
    """A Bicep extension's resource (Microsoft Graph), not an Azure Resource Manager one."""
    return resource_type(res).lower().startswith("microsoft.graph/")


def nested(name: str, tpl: dict[str, Any]) -> bool:
    """Declared inside its parent's body: pycep names it `<parent>__<child>`."""
    parent, sep, _ = name.rpartition("__")
    return bool(sep) and parent in (tpl.get("resources") or {})


def symbols(tpl: dict[str, Any]) -> set[str]:
    return {
        *(tpl.get("parameters") or {}),
        *(tpl.get("variables") or {}),
        *(tpl.get("resources") or {}),
        *(tpl.get("modules") or {}),
    }


def _is_secure(param: dict[str, Any]) -> bool:
    return any(d.get("type") == "secure" for d in param.get("decorators") or [])


def _interpolations(text: str) -> list[str]:
    """The expressions inside `${...}` of a string as pycep renders it."""
    found, start = [], 0
    while (open_at := text.find("${", start)) != -1:
        depth, pos, quoted = 1, open_at + 2, False
        while pos < len(text) and depth:
            ch = text[pos]
            if ch == "'":
                quoted = not quoted
            elif not quoted and ch == "{":
                depth += 1
            elif not quoted and ch == "}":
                depth -= 1
            pos += 1
        found.append(text[open_at + 2:pos - 1])
        start = pos
    return found


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _expression_identifiers(expression: str) -> Iterator[str]:
    """Identifiers in Bicep expression text: not quoted, not after '.', not called."""
    text = re.sub(r"'(?:[^'\\]|\\.)*'", "''", expression)
    for m in _IDENT.finditer(text):
        if text[:m.start()].rstrip().endswith(".") or text[m.end():].lstrip().startswith("("):
            continue
        yield m.group()


def refs(node: Any) -> Iterator[str]:
    """Names an expression may refer to (identifiers, plus plain literals pycep cannot tell
    apart from them). Property names after a '.' and function names are left out."""
    if isinstance(node, str):
        if "${" in node:
            for inner in _interpolations(node):
                yield from _expression_identifiers(inner)
        else:
            yield node
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)
    elif isinstance(node, dict):
        if isinstance(node.get("function"), dict):
            yield from refs(list((node["function"].get("parameters") or {}).values()))
        elif isinstance(node.get("operator"), dict):
            op = node["operator"]
            operands = op.get("operands") or {}
            if op.get("type") == "index_accessor":
                yield from refs(operands.get("operand_1"))
                yield from refs(operands.get("operand_2"))
            elif op.get("type") in ("property_accessor", "function_accessor"):
                yield from refs(operands.get("operand_1"))
                yield from _member_refs(operands.get("operand_2"))
                for key, value in operands.items():
                    if key not in ("operand_1", "operand_2", "func_name"):
                        yield from refs(value)
            else:
                yield from refs(list(operands.values()))
        else:
            yield from refs(list(node.values()))


def _member_refs(node: Any) -> Iterator[str]:
    """The right side of `a.b.c` / `a[b]`: property names are not references, index
    expressions are."""
    if isinstance(node, str) or node is None:
        return
    if isinstance(node, dict) and isinstance(node.get("operator"), dict):
        op = node["operator"]
        operands = op.get("operands") or {}
        if op.get("type") in ("property_accessor", "function_accessor"):
            yield from _member_refs(operands.get("operand_1"))
            yield from _member_refs(operands.get("operand_2"))
            return
        if op.get("type") == "index_accessor":
            yield from _member_refs(operands.get("operand_1"))
            yield from refs(operands.get("operand_2"))
            return
    yield from refs(node)


def _literal(node: Any, tpl: dict[str, Any], seen: frozenset[str] = frozenset()) -> str | None:
    """The string a value is when it is a plain literal, directly or through variables."""
    if not isinstance(node, str) or "${" in node:
        return None
    variables = tpl.get("variables") or {}
    if node in variables and node not in seen:
        return _literal(variables[node].get("value"), tpl, seen | {node})
    if node in symbols(tpl):
        return None
    return node


def _secure_params(tpl: dict[str, Any]) -> set[str]:
    return {n for n, p in (tpl.get("parameters") or {}).items() if _is_secure(p)}


def _lists_or_references(node: Any) -> set[str]:
    """list*() / reference() stand-alone calls in an expression (not resource.listKeys())."""
    found = set()
    for n in walk(node):
        if isinstance(n, dict) and isinstance(n.get("function"), dict):
            fn = n["function"]
            name = str(fn.get("type", ""))
            if name == "list_func":
                name = str((fn.get("parameters") or {}).get("func_name", "list"))
            if name.lower().startswith("list") or name == "reference":
                found.add(name)
        if isinstance(n, str):
            for inner in _interpolations(n):
                for m in re.finditer(r"(?<![\w.])(?:az\.)?(list\w*|reference)\s*\(", inner):
                    found.add(m.group(1))
    return found


# --- rules -------------------------------------------------------------------------------


def tls_not_disabled(tpl: dict[str, Any]) -> list[str]:
    """No Flexible Server configuration turns require_secure_transport off."""
    bad = []
    for name, res in resources(tpl, "flexibleServers/configurations"):
        cfg = body(res)
        if str(cfg.get("name", "")).lower() == "require_secure_transport":
            value = str((cfg.get("properties") or {}).get("value", "")).lower()
            if value in ("off", "0", "false"):
                bad.append(f"{name}: require_secure_transport is {value}")
    return bad


def no_open_postgres_network(tpl: dict[str, Any]) -> list[str]:
    """No 0.0.0.0 firewall rule ("allow Azure services"); servers stay VNet-integrated."""
    bad = []
    for name, res in resources(tpl, "firewallRules"):
        props = body(res).get("properties") or {}
        if "0.0.0.0" in (props.get("startIpAddress"), props.get("endIpAddress")):
            bad.append(f"{name}: firewall rule opens the server to 0.0.0.0")
    for name, res in resources(tpl, "DBforPostgreSQL/flexibleServers"):
        network = (body(res).get("properties") or {}).get("network") or {}
        if not network.get("delegatedSubnetResourceId"):
            bad.append(f"{name}: not VNet-integrated (no delegatedSubnetResourceId)")
        if str(network.get("publicNetworkAccess", "")).lower() != "disabled":
            bad.append(f"{name}: publicNetworkAccess is not Disabled")
    return bad


def secure_params_have_no_default(tpl: dict[str, Any]) -> list[str]:
    """secure-parameter-default: a @secure() default is only '', {} or built with newGuid()."""
    bad = []
    for name, p in (tpl.get("parameters") or {}).items():
        default = p.get("default")
        if not _is_secure(p) or default is None or default in ("", {}):
            continue
        if "new_guid" in set(functions(default)) or any(
            re.search(r"\bnewGuid\(", s) for s in strings(default)
        ):
            continue
        bad.append(f"param {name}: @secure() with a default value")
    return bad


_SECRET_PARAM = re.compile("password|pwd|secret|accountkey|acctkey", re.IGNORECASE)
_ALLOWED_SECRET_PARAM = re.compile(
    "secretpermissions|secretversion|secretur[il]|secretname", re.IGNORECASE
)


def secrets_in_params_are_secure(tpl: dict[str, Any]) -> list[str]:
    """secure-secrets-in-params: a string/object parameter whose name suggests a secret
    (password, pwd, secret, accountkey, acctkey; not ...secretName, ...secretUri,
    ...secretVersion, ...secretPermissions), or whose default reads a @secure()
    parameter, is itself @secure()."""
    params = tpl.get("parameters") or {}
    secure = {n for n, p in params.items() if _is_secure(p)}
    bad = []
    for name, p in params.items():
        if name in secure or p.get("type") in ("int", "bool", "array"):
            continue
        if _SECRET_PARAM.search(name) and not _ALLOWED_SECRET_PARAM.search(name):
            bad.append(f"param {name}: the name suggests a secret but it is not @secure()")
        elif set(refs(p.get("default"))) & secure:
            bad.append(f"param {name}: its default reads a @secure() parameter")
    return bad


def no_secret_outputs(tpl: dict[str, Any]) -> list[str]:
    """outputs-should-not-contain-secrets: no output is named like a password, reads a
    @secure() parameter, or calls list*() / getSecret().

    Bicep flags every output whose *name* contains "password" (case-insensitive),
    whatever its value. Since Bicep 0.37 an output marked @secure() is exempt; this
    check does not exempt it, so older CLIs pass too.
    """
    secure = {n for n, p in (tpl.get("parameters") or {}).items() if _is_secure(p)}
    bad = []
    for name, out in (tpl.get("outputs") or {}).items():
        value = out.get("value")
        if "password" in name.lower():
            bad.append(f"output {name}: the name contains 'password'")
        if set(refs(value)) & secure:
            bad.append(f"output {name}: references a @secure() parameter")
        called = {f.lower() for f in functions(value)}
        if any(f.startswith("list") or f == "getsecret" for f in called):
            bad.append(f"output {name}: calls {sorted(called)}")
        if any(re.search(r"\b(list\w*|getSecret)\(", s) for s in strings(value)):
            bad.append(f"output {name}: interpolates a list*()/getSecret() call")
    return bad


def contract_outputs(tpl: dict[str, Any]) -> list[str]:
    """Exactly the contract's outputs, with the contract's types."""
    outputs = tpl.get("outputs") or {}
    bad = [f"missing output {n}" for n in CONTRACT_OUTPUTS if n not in outputs]
    bad += [f"output {n} is not in the contract" for n in outputs if n not in CONTRACT_OUTPUTS]
    bad += [
        f"output {n} has type {outputs[n].get('type')}, contract says {t}"
        for n, t in CONTRACT_OUTPUTS.items()
        if n in outputs and outputs[n].get("type") != t
    ]
    return bad


def airflow_logs_only_with_airflow(tpl: dict[str, Any]) -> list[str]:
    """A container for Airflow logs exists only under `if (deployAirflow)`."""
    bad = []
    params = tpl.get("parameters") or {}
    variables = tpl.get("variables") or {}
    for name, res in resources(tpl, "blobServices/containers"):
        cname = body(res).get("name")
        key = cname if isinstance(cname, str) else ""
        literal = params.get(key, {}).get("default") if key in params else None
        literal = variables.get(key, {}).get("value") if key in variables else literal
        is_airflow = "airflow" in str(cname).lower() or "airflow" in str(literal).lower()
        if is_airflow and "deployAirflow" not in set(strings(condition(res))):
            bad.append(f"{name}: Airflow container without an `if (deployAirflow)` condition")
    return bad


def _pools(tpl: dict[str, Any]) -> dict[str, dict[str, Any]]:
    pools: dict[str, dict[str, Any]] = {}
    for _, res in resources(tpl, "ContainerService/managedClusters"):
        for p in (body(res).get("properties") or {}).get("agentPoolProfiles") or []:
            if isinstance(p, dict):
                pools[str(p.get("name"))] = p
    for _, res in resources(tpl, "managedClusters/agentPools"):
        cfg = body(res)
        pools[str(cfg.get("name"))] = cfg.get("properties") or {}
    return pools


def _labels(pool: dict[str, Any]) -> dict[str, Any]:
    return {k.strip("'"): v for k, v in (pool.get("nodeLabels") or {}).items()}


def node_pools_follow_contract(tpl: dict[str, Any]) -> list[str]:
    """system/services/taskworkers autoscale between minCount and maxCount; labels and taints
    as agreed. (`count` is pool_counts_valid's business.)"""
    pools = _pools(tpl)
    if not pools:
        return []
    bad = [f"no {n} pool" for n in ("system", "services", "taskworkers") if n not in pools]
    for name, pool in pools.items():
        if pool.get("enableAutoScaling") is not True:
            bad.append(f"pool {name}: enableAutoScaling is not true")
        if pool.get("minCount") is None or pool.get("maxCount") is None:
            bad.append(f"pool {name}: minCount/maxCount not set")
    if "system" in pools and SYSTEM_TAINT not in (pools["system"].get("nodeTaints") or []):
        bad.append(f"pool system: missing taint {SYSTEM_TAINT}")
    if "services" in pools and _labels(pools["services"]).get(POOL_LABEL) != "services":
        bad.append(f"pool services: missing label {POOL_LABEL}=services")
    if "taskworkers" in pools:
        task = pools["taskworkers"]
        if _labels(task).get(POOL_LABEL) != "taskworkers":
            bad.append(f"pool taskworkers: missing label {POOL_LABEL}=taskworkers")
        if TASK_TAINT not in (task.get("nodeTaints") or []):
            bad.append(f"pool taskworkers: missing taint {TASK_TAINT}")
    for pool in pools_mod.OPTIONAL_POOLS:
        if pool.name in pools:
            bad += _optional_pool_problems(pool, pools[pool.name], tpl)
    return bad


def aks_own_labels(profile: dict[str, Any]) -> set[str]:
    """Node labels AKS writes on a pool's nodes itself, which the template leaves out: the
    mode label of a System pool, the priority label of a Spot pool."""
    own = set()
    if str(profile.get("mode", "")).lower() == "system":
        own.add(pools_mod.AKS_MODE_LABEL)
    if str(profile.get("scaleSetPriority", "")).lower() == "spot":
        own.add(pools_mod.SPOT_PRIORITY_LABEL)
    return own


def _optional_pool_problems(pool: pools_mod.Pool, profile: dict[str, Any],
                            tpl: dict[str, Any]) -> list[str]:
    """The GPU and Spot pools as mfhelm.pools has them, with the Azure settings they need:
    the GPU pool has AKS install the NVIDIA driver; the Spot pool is Spot, deletes evicted
    VMs and pays up to the on-demand price."""
    bad = []
    want = {k: v for k, v in pool.labels.items() if k not in aks_own_labels(profile)}
    if _labels(profile) != want:
        bad.append(f"pool {pool.name}: labels {_labels(profile)} are not {want}")
    if (profile.get("nodeTaints") or []) != [str(t) for t in pool.taints]:
        bad.append(f"pool {pool.name}: taints {profile.get('nodeTaints')} are not "
                   f"{[str(t) for t in pool.taints]}")
    if str(profile.get("mode")) != "User":
        bad.append(f"pool {pool.name}: mode is not User")
    if pool is pools_mod.GPU:
        if (profile.get("gpuProfile") or {}).get("driver") != "Install":
            bad.append("pool gpu: gpuProfile.driver is not Install")
        if profile.get("scaleSetPriority") not in (None, "Regular"):
            bad.append("pool gpu: not a Regular pool")
    if pool is pools_mod.SPOT:
        for key, value in (("scaleSetPriority", "Spot"), ("scaleSetEvictionPolicy", "Delete"),
                           ("spotMaxPrice", -1)):
            try:
                got = evaluate(profile.get(key), tpl, {})
            except _Unknown:
                got = profile.get(key)
            if got != value:
                bad.append(f"pool spot: {key} is {got!r}, not {value!r}")
    return bad


class _Unknown(Exception):
    """An expression the small evaluator below does not handle."""


class Failed(Exception):
    """The template called fail(message): ARM stops the deployment with this message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _arm_equal(a: Any, b: Any) -> bool:
    """`==` as ARM compares: no bool/int mixing (Python has True == 1)."""
    return type(a) is type(b) and a == b


def _contains(container: Any, item: Any) -> bool:
    """ARM contains(): a substring (case-sensitive), an array member, an object key
    (case-insensitive)."""
    if isinstance(container, str) and isinstance(item, str):
        return item in container
    if isinstance(container, list):
        return any(_arm_equal(member, item) for member in container)
    if isinstance(container, dict) and isinstance(item, str):
        return item.lower() in {k.lower() for k in container}
    raise _Unknown(f"contains({container!r}, {item!r})")


def _substring(text: Any, start: Any, length: Any) -> str:
    if not (isinstance(text, str) and isinstance(start, int) and isinstance(length, int)
            and start >= 0 and length >= 0 and start + length <= len(text)):
        raise _Unknown(f"substring({text!r}, {start!r}, {length!r}) is out of range")
    return text[start:start + length]


def _first_or_last(value: Any, last: bool) -> Any:
    if isinstance(value, (str, list)):
        return (value[-1] if last else value[0]) if value else ("" if isinstance(value, str)
                                                                else None)
    raise _Unknown(f"first/last of {value!r}")


def _number(values: list[Any]) -> bool:
    return bool(values) and all(isinstance(v, int) and not isinstance(v, bool) for v in values)


# ARM's functions as the templates use them, by pycep's name. Strings are Python strings
# (sequences of code points; ARM counts UTF-16 units, which is the same in the BMP).
# startsWith/endsWith compare case-insensitively, contains and `==` case-sensitively, as
# the ARM function reference says.
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "length": lambda v: len(v) if isinstance(v, (str, list, dict)) else _unknown("length", v),
    "empty": lambda v: v is None or (isinstance(v, (str, list, dict)) and len(v) == 0),
    "first": lambda v: _first_or_last(v, last=False),
    "last": lambda v: _first_or_last(v, last=True),
    "substring": _substring,
    "split": lambda s, d: s.split(d) if isinstance(s, str) and isinstance(d, str) and d
    else _unknown("split", s, d),
    "to_lower": lambda s: s.lower() if isinstance(s, str) else _unknown("toLower", s),
    "starts_with": lambda s, x: s.lower().startswith(x.lower()),
    "ends_with": lambda s, x: s.lower().endswith(x.lower()),
    "range": lambda start, count: list(range(start, start + count)),
    "int": int,
    "min": lambda *v: min(v) if _number(list(v)) else _unknown("min", *v),
    "max": lambda *v: max(v) if _number(list(v)) else _unknown("max", *v),
}


def _unknown(name: str, *args: Any) -> Any:
    raise _Unknown(f"{name}{args!r}")


@functools.cache
def _parse_expression(text: str) -> Any:
    return parse_text(f"var value = {text}\n")["variables"]["value"]["value"]


_ESCAPES = {"'": "'", "\\": "\\", "n": "\n", "r": "\r", "t": "\t", "$": "$"}


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1)) or _unknown("escape", m[0]), text)


def _interpolate(text: str, tpl: dict[str, Any], env: dict[str, Any], depth: int) -> str:
    """A Bicep string with `${...}` parts, as pycep leaves it: the text of each part is
    parsed again and evaluated."""
    out, start = [], 0
    for inner in _interpolations(text):
        at = text.index("${" + inner + "}", start)
        out.append(_unescape(text[start:at]))
        value = evaluate(_parse_expression(inner), tpl, env, depth + 1)
        out.append(json.dumps(value) if isinstance(value, (bool, list, dict)) else str(value))
        start = at + len(inner) + 3
    out.append(_unescape(text[start:]))
    return "".join(out)


def evaluate(node: Any, tpl: dict[str, Any], env: dict[str, Any], depth: int = 0) -> Any:
    """Value of a (small) Bicep expression with parameters bound by `env`: literals,
    interpolated strings, variables (loops over an array included), the functions in
    _FUNCTIONS plus contains() and fail(), `!`, `&&`, `||`, `==`, `!=`, `?:`, `a.b` and
    `a[b]`. Anything else raises _Unknown; fail() raises Failed.

    `&&` and `||` evaluate both sides (nothing here relies on ARM stopping early); `?:`
    evaluates only the branch taken, as ARM's if() does, which is what lets fail() sit in
    one branch. pycep does not keep parentheses and reads `a == b && c` as
    `a == (b && c)`: expressions evaluated here parenthesise every operand."""
    if depth > 64:
        raise _Unknown("expression too deep")
    if isinstance(node, (bool, int)) or node is None:
        return node
    if isinstance(node, str):
        if "${" in node:
            return _interpolate(node, tpl, env, depth)
        if node in env:
            return env[node]
        variables = tpl.get("variables") or {}
        if node in variables:
            return evaluate(variables[node].get("value"), tpl, env, depth + 1)
        if node in symbols(tpl):
            raise _Unknown(f"{node} has no value here")
        return _unescape(node)
    if isinstance(node, list):
        return [evaluate(item, tpl, env, depth + 1) for item in node]
    if not isinstance(node, dict):
        raise _Unknown(f"expression {node!r}")
    if "loop_type" in node:
        return _loop(node, tpl, env, depth)
    if isinstance(node.get("function"), dict):
        fn = node["function"]
        kind, args = fn.get("type"), fn.get("parameters") or {}
        values = [evaluate(a, tpl, env, depth + 1) for a in args.values() if a is not None]
        if kind == "fail" and len(values) == 1:
            raise Failed(str(values[0]))
        if kind == "contains" and len(values) == 2:
            return _contains(*values)
        if kind in _FUNCTIONS:
            try:
                return _FUNCTIONS[kind](*values)
            except (TypeError, AttributeError) as exc:
                raise _Unknown(f"{kind}{tuple(values)!r}: {exc}") from None
        raise _Unknown(f"function {kind}")
    if isinstance(node.get("operator"), dict):
        return _operator(node["operator"], tpl, env, depth)
    if all(isinstance(k, str) for k in node):  # an object literal
        return {k.strip("'"): evaluate(v, tpl, env, depth + 1) for k, v in node.items()}
    raise _Unknown(f"expression {node!r}")


def _operator(op: dict[str, Any], tpl: dict[str, Any], env: dict[str, Any], depth: int) -> Any:
    kind, operands = op.get("type"), op.get("operands") or {}

    def value(key: str) -> Any:
        return evaluate(operands.get(key), tpl, env, depth + 1)

    if kind == "conditional":
        condition = value("condition")
        if not isinstance(condition, bool):
            raise _Unknown(f"condition {condition!r} is not a bool")
        return value("true_value" if condition else "false_value")
    if kind in ("and", "or"):
        left, right = value("operand_1"), value("operand_2")
        if not (isinstance(left, bool) and isinstance(right, bool)):
            raise _Unknown(f"{kind} of {left!r} and {right!r}")
        return (left and right) if kind == "and" else (left or right)
    if kind == "minus":  # unary minus of an integer literal or expression
        operand = value("integer_value")
        if not isinstance(operand, int) or isinstance(operand, bool):
            raise _Unknown(f"minus {operand!r}")
        return -operand
    if kind == "not":
        operand = value("bool_value")
        if not isinstance(operand, bool):
            raise _Unknown(f"not {operand!r}")
        return not operand
    if kind in ("equals", "not_equals"):
        same = _arm_equal(value("operand_1"), value("operand_2"))
        return same if kind == "equals" else not same
    if kind == "property_accessor" and isinstance(operands.get("operand_2"), dict):
        # a.b.c: pycep nests the rest of the path on the right.
        base = value("operand_1")
        for member in _member_names(operands["operand_2"]):
            if not isinstance(base, dict) or member not in base:
                raise _Unknown(f"no {member!r} in {base!r}")
            base = base[member]
        return base
    if kind in ("property_accessor", "index_accessor"):
        base = value("operand_1")
        key = operands.get("operand_2")
        if kind == "index_accessor":
            key = evaluate(key, tpl, env, depth + 1)
        if isinstance(base, list) and isinstance(key, int) and not isinstance(key, bool):
            if not 0 <= key < len(base):
                raise _Unknown(f"index {key} out of range of {base!r}")
            return base[key]
        if not isinstance(key, str) or not isinstance(base, dict) or key not in base:
            raise _Unknown(f"no {key!r} in {base!r}")
        return base[key]
    raise _Unknown(f"operator {kind}")


def _member_names(node: Any) -> list[str]:
    """The property names of the right side of `a.b.c` (pycep's nested accessors)."""
    if isinstance(node, str):
        return [node]
    op = node.get("operator") if isinstance(node, dict) else None
    if isinstance(op, dict) and op.get("type") == "property_accessor":
        operands = op.get("operands") or {}
        return _member_names(operands.get("operand_1")) + _member_names(operands.get("operand_2"))
    raise _Unknown(f"member path {node!r}")


def _loop(node: dict[str, Any], tpl: dict[str, Any], env: dict[str, Any], depth: int) -> list[Any]:
    """`[for x in array: ...]` and `[for (x, i) in array: ...]`, without a filter."""
    loop = node["loop_type"]
    detail = loop.get("detail") or {}
    if loop.get("type") not in ("array", "array_index") or node.get("condition") is not None:
        raise _Unknown(f"loop {loop!r}")
    items = evaluate(detail.get("array_name"), tpl, env, depth + 1)
    if not isinstance(items, list):
        raise _Unknown(f"loop over {items!r}")
    out = []
    for index, item in enumerate(items):
        bound = {**env, detail["item_name"]: item}
        if detail.get("index_name"):
            bound[detail["index_name"]] = index
        out.append(evaluate(node.get("config"), tpl, bound, depth + 1))
    return out


def _input_params(node: Any, tpl: dict[str, Any], seen: frozenset[str] = frozenset()) -> set[str]:
    """The parameters an expression reads, directly or through variables."""
    params, variables = tpl.get("parameters") or {}, tpl.get("variables") or {}
    found: set[str] = set()
    for ref in set(refs(node)) - seen:
        if ref in params:
            found.add(ref)
        elif ref in variables:
            found |= _input_params(variables[ref].get("value"), tpl, seen | {ref})
    return found


def _int_bounds(param: dict[str, Any]) -> tuple[int, int]:
    decorators = {d.get("type"): d.get("argument") for d in param.get("decorators") or []}
    low, high = decorators.get("min_value"), decorators.get("max_value")
    return (low if isinstance(low, int) else 0, high if isinstance(high, int) else 1000)


def _samples(low: int, high: int) -> list[int]:
    return sorted({v for v in (low, low + 1, 2, 3, 5, high - 1, high) if low <= v <= high})


def pool_counts_valid(tpl: dict[str, Any]) -> list[str]:
    """Every pool sets `count`, and for every parameter value the template accepts:
    minCount <= count <= maxCount (AKS refuses anything else; without `count` it assumes 1,
    so a minCount of 2 or more fails at create), a System pool gets at least one node, and
    a pool whose current size is passed in (an object parameter keyed by pool name, filled
    by the deploy step) keeps that size when it is within the bounds, so a re-deploy does
    not undo the cluster autoscaler."""
    params = tpl.get("parameters") or {}
    bad = []
    for name, pool in _pools(tpl).items():
        if "count" not in pool:
            bad.append(f"pool {name}: no count (AKS then assumes 1, and refuses a minCount "
                       "above 1)")
            continue
        exprs = (pool.get("count"), pool.get("minCount"), pool.get("maxCount"))
        inputs = set().union(*(_input_params(e, tpl) for e in exprs))
        ints = sorted(p for p in inputs if params[p].get("type") == "int")
        objects = sorted(p for p in inputs if params[p].get("type") == "object")
        if not objects:
            bad.append(f"pool {name}: count does not read the pool's current size, so a "
                       "re-deploy resets what the autoscaler chose")
        problem = _first_count_problem(name, pool, tpl, ints, objects)
        if problem:
            bad.append(f"pool {name}: {problem}")
    return bad


def _first_count_problem(name: str, pool: dict[str, Any], tpl: dict[str, Any],
                         ints: list[str], objects: list[str]) -> str | None:
    params = tpl.get("parameters") or {}
    system = str(pool.get("mode", "")).lower() == "system"
    for values in itertools.product(*(_samples(*_int_bounds(params[p])) for p in ints)):
        env: dict[str, Any] = dict(zip(ints, values, strict=True))
        try:
            low = evaluate(pool.get("minCount"), tpl, {**env, **{o: {} for o in objects}})
            high = evaluate(pool.get("maxCount"), tpl, {**env, **{o: {} for o in objects}})
        except _Unknown as exc:
            return f"cannot evaluate minCount/maxCount ({exc})"
        if not (isinstance(low, int) and isinstance(high, int)) or low > high:
            continue  # mfhelm refuses minimum > maximum before deploying
        currents: list[int | None] = [None, *sorted({0, max(low - 1, 0), low,
                                                     (low + high) // 2, high, high + 1})]
        for current in currents:
            passed = {} if current is None else {name: current}
            try:
                count = evaluate(pool.get("count"), tpl, {**env, **{o: passed for o in objects}})
            except _Unknown as exc:
                return f"cannot evaluate count ({exc})"
            where = ", ".join(f"{k}={v}" for k, v in env.items())
            where += f", current size {current}" if current is not None else ", new pool"
            if not (isinstance(count, int) and low <= count <= high):
                return f"count {count} outside [{low}, {high}] ({where})"
            if system and count < 1:
                return f"count {count} on a System pool ({where})"
            if current is not None and objects and low <= current <= high and count != current:
                return f"count {count} replaces the current size {current} ({where})"
    return None


_NONDETERMINISTIC = ("utc_now", "new_guid")


def deterministic_names(tpl: dict[str, Any]) -> list[str]:
    """utcNow()/newGuid() only as parameter defaults (the one place Bicep allows them)."""
    rest = {k: v for k, v in tpl.items() if k != "parameters"}
    bad = [f"{f}() outside a parameter default" for f in functions(rest) if f in _NONDETERMINISTIC]
    bad += [
        f"interpolated {m.group(1)}() outside a parameter default"
        for s in strings(rest)
        for m in re.finditer(r"\b(utcNow|newGuid)\(", s)
    ]
    return bad


def no_hardcoded_location(tpl: dict[str, Any]) -> list[str]:
    """no-hardcoded-location: a resource's `location` (and a module's `location` parameter)
    is a parameter or an expression, never a literal other than 'global', directly or
    through a variable. Stricter than the rule: location parameters default to no literal."""
    bad = []
    blocks = {**(tpl.get("resources") or {}), **(tpl.get("modules") or {})}
    for name, block in blocks.items():
        cfg = body(block)
        for loc in (cfg.get("location"), (cfg.get("params") or {}).get("location")):
            literal = _literal(loc, tpl)
            if literal is not None and literal.lower() != "global":
                bad.append(f"{name}: hard-coded location {literal!r}")
    for name, p in (tpl.get("parameters") or {}).items():
        literal = _literal(p.get("default"), tpl)
        if "location" in name.lower() and literal is not None:
            bad.append(f"param {name}: hard-coded default {literal!r}")
    return bad


def descriptions_everywhere(tpl: dict[str, Any]) -> list[str]:
    bad = []
    for kind in ("parameters", "outputs"):
        for name, item in (tpl.get(kind) or {}).items():
            if not any(d.get("type") == "description" for d in item.get("decorators") or []):
                bad.append(f"{kind[:-1]} {name}: no @description")
    return bad


def role_assignments_well_formed(tpl: dict[str, Any]) -> list[str]:
    """guid() names (idempotent re-deploys) and principalType always set."""
    bad = []
    for name, res in resources(tpl, "Microsoft.Authorization/roleAssignments"):
        cfg = body(res)
        if "guid" not in set(functions(cfg.get("name"))):
            bad.append(f"{name}: name is not guid(...)")
        if not (cfg.get("properties") or {}).get("principalType"):
            bad.append(f"{name}: principalType not set")
    return bad


def _role_id(role_definition: Any) -> Any:
    """The role GUID inside subscriptionResourceId('...roleDefinitions', role) / resourceId()."""
    fn = role_definition.get("function") if isinstance(role_definition, dict) else None
    if isinstance(fn, dict) and fn.get("type") in ("subscription_resource_id", "resource_id",
                                                     "tenant_resource_id"):
        names = [v for k, v in (fn.get("parameters") or {}).items()
                 if k.startswith("resource_name") and v is not None]
        if len(names) == 1:
            return names[0]
    return role_definition


def role_assignment_names_from_scope_principal_role(tpl: dict[str, Any]) -> list[str]:
    """guid(scope, principal, role): a role assignment's name is built from the id of its
    scope, the principalId it assigns and the role it grants. Azure refuses to change the
    principal, scope or role of an existing assignment; a name without the principal stays
    the same when the principal changes (a re-created cluster's new identity), so the next
    deploy fails. `scope` left out means the deployment's own scope, not checked here."""
    bad = []
    for name, res in resources(tpl, "Microsoft.Authorization/roleAssignments"):
        cfg = body(res)
        fn = cfg.get("name", {}).get("function") if isinstance(cfg.get("name"), dict) else None
        if not isinstance(fn, dict) or fn.get("type") != "guid":
            continue  # role_assignments_well_formed reports it
        args = [a for a in (fn.get("parameters") or {}).values() if a is not None]
        props = cfg.get("properties") or {}
        principal = props.get("principalId")
        if principal is None or principal not in args:
            bad.append(f"{name}: name is not built from the principalId it assigns")
        scope = cfg.get("scope")
        if scope is not None and _property(scope, "id") not in args and scope not in args:
            bad.append(f"{name}: name is not built from its scope's id")
        role = props.get("roleDefinitionId")
        if role is None or (_role_id(role) not in args and role not in args):
            bad.append(f"{name}: name is not built from the role it grants")
    return bad


def _property(base: Any, member: str) -> dict[str, Any]:
    """`base.member` as pycep renders it."""
    return {"operator": {"type": "property_accessor",
                         "operands": {"operand_1": base, "operand_2": member}}}


def federated_credentials_serialised(tpl: dict[str, Any]) -> list[str]:
    """Writes on one identity go one at a time: a loop has @batchSize(1), or a dependsOn chain."""
    creds = list(resources(tpl, "userAssignedIdentities/federatedIdentityCredentials"))
    bad = []
    for name, res in creds:
        is_loop = "loop_type" in (res.get("config") or {})
        decorators = res.get("decorators") or []
        batch = [d.get("argument") for d in decorators if d.get("type") == "batchSize"]
        if is_loop and batch != [1]:
            bad.append(f"{name}: loop without @batchSize(1)")
    singles = [(n, r) for n, r in creds if "loop_type" not in (r.get("config") or {})]
    names = {n for n, _ in singles}
    for name, res in singles[1:]:
        deps = set(strings(body(res).get("dependsOn")))
        if not deps & names:
            bad.append(f"{name}: not chained with dependsOn to another federated credential")
    return bad


# --- Bicep linter rules set to "error" in bicep/bicepconfig.json ---------------------------
#
# `bicep build` (and so `az deployment ... --template-file x.bicep`) writes nothing when a
# rule at level error fires. No Bicep compiler runs here, so each such rule has an offline
# twin below, written from the rule's source in Azure/bicep
# (src/Bicep.Core/Analyzers/Linter/Rules/*.cs). Where the parsed tree cannot tell what the
# compiler can (types, symbols), the twin errs on the strict side.


def _is_location_expr(node: Any) -> bool:
    """`resourceGroup(...).location` or `deployment().location`."""
    if not (isinstance(node, dict) and isinstance(node.get("operator"), dict)):
        return False
    op = node["operator"]
    if op.get("type") != "property_accessor":
        return False
    operands = op.get("operands") or {}
    base, member = operands.get("operand_1"), operands.get("operand_2")
    while isinstance(member, dict) and isinstance(member.get("operator"), dict):
        member = (member["operator"].get("operands") or {}).get("operand_1")
    is_call = isinstance(base, dict) and isinstance(base.get("function"), dict)
    return bool(is_call and base["function"].get("type") in ("resource_group", "deployment")
                and member == "location")


_LOCATION_EXPR_TEXT = re.compile(r"(?<![\w.])(?:az\.)?(resourceGroup|deployment)\([^()]*\)\s*\.\s*location\b")


def _has_location_expr(node: Any) -> bool:
    return any(_is_location_expr(n) for n in walk(node)) or any(
        _LOCATION_EXPR_TEXT.search(inner) for s in strings(node) for inner in _interpolations(s)
    )


def no_location_expr_outside_params(tpl: dict[str, Any]) -> list[str]:
    """no-loc-expr-outside-params: resourceGroup().location / deployment().location appear
    only in parameter defaults."""
    bad = []
    for kind in ("variables", "resources", "modules", "outputs"):
        for name, item in (tpl.get(kind) or {}).items():
            if _has_location_expr(item):
                bad.append(f"{kind[:-1]} {name}: resourceGroup()/deployment().location outside "
                           "a parameter default")
    return bad


def no_deployments_resources(tpl: dict[str, Any]) -> list[str]:
    """no-deployments-resources: nested deployments are modules, never
    Microsoft.Resources/deployments resources."""
    return [f"{name}: a Microsoft.Resources/deployments resource; use a module"
            for name, res in (tpl.get("resources") or {}).items()
            if str(res.get("type", "")).lower() == "microsoft.resources/deployments"]


def secure_params_in_nested_deploy(tpl: dict[str, Any]) -> list[str]:
    """secure-params-in-nested-deploy: an outer-scoped Microsoft.Resources/deployments
    resource with an inline template reads no @secure() parameter and no list*()."""
    secure = _secure_params(tpl)
    bad = []
    for name, res in (tpl.get("resources") or {}).items():
        if str(res.get("type", "")).lower() != "microsoft.resources/deployments":
            continue
        props = body(res).get("properties") or {}
        scope = ((props.get("expressionEvaluationOptions") or {}).get("scope") or "")
        if str(scope).lower() == "inner" or "template" not in props:
            continue
        if set(refs(res.get("config"))) & secure:
            bad.append(f"{name}: outer-scoped nested deployment reads a @secure() parameter")
        if _lists_or_references(res.get("config")) - {"reference"}:
            bad.append(f"{name}: outer-scoped nested deployment calls list*()")
    return bad


# Resource properties Bicep types as secure ({sensitive} in Azure/bicep-types-az) for every
# resource type these templates use, at the API versions they use. A type not listed here
# fails the rule until someone looks its sensitive properties up and adds it.
SECURE_INPUTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "microsoft.resources/resourcegroups": (),
    "microsoft.network/networksecuritygroups": (),
    "microsoft.network/virtualnetworks": (),
    "microsoft.network/virtualnetworks/subnets": (),
    "microsoft.network/privatednszones": (),
    "microsoft.network/privatednszones/virtualnetworklinks": (),
    "microsoft.containerservice/managedclusters": (),
    "microsoft.containerservice/managedclusters/agentpools": (),
    # registries@2025-11-01: the only {sensitive} property of the provider is a webhook's
    # serviceUri; this stack creates no webhook.
    "microsoft.containerregistry/registries": (),
    "microsoft.managedidentity/userassignedidentities": (),
    "microsoft.managedidentity/userassignedidentities/federatedidentitycredentials": (),
    "microsoft.storage/storageaccounts": (),
    "microsoft.storage/storageaccounts/blobservices": (),
    "microsoft.storage/storageaccounts/blobservices/containers": (),
    "microsoft.dbforpostgresql/flexibleservers": (("properties", "administratorLoginPassword"),),
    "microsoft.dbforpostgresql/flexibleservers/configurations": (),
    "microsoft.dbforpostgresql/flexibleservers/databases": (),
    "microsoft.keyvault/vaults": (),
    # `value` is not {sensitive} in the type, but it is the one secret this stack writes.
    "microsoft.keyvault/vaults/secrets": (("properties", "value"),),
    "microsoft.authorization/roleassignments": (),
    # Microsoft Graph Bicep 1.0.0 marks no property sensitive; the app has no password
    # credentials (Graph Bicep does not support them) and none are written here.
    "microsoft.graph/applications": (),
    "microsoft.graph/applications/federatedidentitycredentials": (),
    "microsoft.graph/serviceprincipals": (),
}


def _secure_value(value: Any, secure: set[str]) -> bool:
    return value == "" or (isinstance(value, str) and value in secure)


def secure_inputs_get_secure_values(tpl: dict[str, Any]) -> list[str]:
    """use-secure-value-for-secure-inputs: a property typed secure gets a @secure()
    parameter (or ''), never a literal, a plain parameter or anything built from them."""
    secure = _secure_params(tpl)
    bad = []
    for name, res in (tpl.get("resources") or {}).items():
        rtype = resource_type(res)
        if rtype.lower() not in SECURE_INPUTS:
            bad.append(f"{name}: secure properties of {rtype} not reviewed (add it to "
                       "SECURE_INPUTS)")
            continue
        if res.get("existing"):
            continue
        for path in SECURE_INPUTS[rtype.lower()]:
            node: Any = body(res)
            for key in path:
                node = node.get(key) if isinstance(node, dict) else None
            if node is not None and not _secure_value(node, secure):
                bad.append(f"{name}: {'.'.join(path)} is not a @secure() parameter")
    return bad


def admin_username_not_literal(tpl: dict[str, Any]) -> list[str]:
    """adminusername-should-not-be-literal: no `adminUsername` property is a string literal
    (directly or through a variable)."""
    bad = []
    for name, res in (tpl.get("resources") or {}).items():
        for n in walk(res.get("config")):
            if not isinstance(n, dict):
                continue
            for key, value in n.items():
                if key.lower() == "adminusername" and _literal(value, tpl) is not None:
                    bad.append(f"{name}: adminUsername is the literal {_literal(value, tpl)!r}")
    return bad


_SCRIPT_EXTENSIONS = {
    ("microsoft.azure.extensions", "customscript"),
    ("microsoft.compute", "customscriptextension"),
    ("microsoft.ostcextensions", "customscriptforlinux"),
}


def protect_command_to_execute(tpl: dict[str, Any]) -> list[str]:
    """protect-commandtoexecute-secrets: a custom-script extension's settings.commandToExecute
    reads no @secure() parameter and no list*() (that belongs in protectedSettings)."""
    secure = _secure_params(tpl)
    bad = []
    for name, res in (tpl.get("resources") or {}).items():
        if not str(res.get("type", "")).lower().endswith("/extensions"):
            continue
        props = body(res).get("properties") or {}
        command = (props.get("settings") or {}).get("commandToExecute")
        kind = (str(props.get("publisher", "")).lower(), str(props.get("type", "")).lower())
        if command is None or kind not in _SCRIPT_EXTENSIONS:
            continue
        if set(refs(command)) & secure or {f for f in functions(command)
                                           if f.lower().startswith("list")}:
            bad.append(f"{name}: settings.commandToExecute carries a secret; use "
                       "protectedSettings")
    return bad


def _nondeterministic(node: Any, tpl: dict[str, Any], seen: frozenset[str]) -> set[str]:
    found = {f for f in functions(node) if f in _NONDETERMINISTIC}
    found |= {m.group(1) for s in strings(node) for inner in _interpolations(s)
              for m in re.finditer(r"\b(utcNow|newGuid)\(", inner)}
    params, variables = tpl.get("parameters") or {}, tpl.get("variables") or {}
    for ref in set(refs(node)) - seen:
        if ref in params:
            found |= _nondeterministic(params[ref].get("default"), tpl, seen | {ref})
        elif ref in variables:
            found |= _nondeterministic(variables[ref].get("value"), tpl, seen | {ref})
    return found


def stable_resource_identifiers(tpl: dict[str, Any]) -> list[str]:
    """use-stable-resource-identifiers: a resource's name, scope and parent never depend on
    utcNow()/newGuid(), not even through a parameter default or a variable."""
    bad = []
    for name, res in (tpl.get("resources") or {}).items():
        cfg = body(res)
        for key in ("name", "scope", "parent"):
            used = _nondeterministic(cfg.get(key), tpl, frozenset())
            if used:
                bad.append(f"{name}: {key} depends on {', '.join(sorted(used))}")
    return bad


# The property names (case-insensitive) and resource types use-resource-id-functions skips.
_ID_RULE_SKIPPED_PROPERTIES = {p.lower() for p in (
    "appId", "clientId", "contentId", "connectorId", "DataTypeId", "defaultMenuItemId",
    "deploymentSpecId", "detector", "groupId", "IllusiveIncidentId", "keyId", "keyVaultId",
    "keyVaultSecretId", "locations", "menuId", "metadata", "metricId", "nodeAgentSkuId",
    "objectId", "parentId", "policyDefinitionReferenceId", "requestedServiceObjectiveId",
    "resource", "ruleId", "schemaId", "servicePrincipalClientId", "sid", "StartingDeviceID",
    "subscriptionId", "storageAccountSubscriptionId", "SyntheticMonitorId", "tags",
    "targetProtectionContainerId", "targetWorkerSizeId", "tenantId", "timezoneId", "vlanId",
    "workerSizeId", "UniqueFindingId", "principalId",
)}
_ID_RULE_SKIPPED_TYPES = re.compile(
    r"^(microsoft\.portal/dashboards|microsoft\.logic/workflows|microsoft\.apimanagement/service"
    r"/backends|microsoft\.web/sites/config.*|microsoft\.documentdb/databaseaccounts/\w*"
    r"/collections)$", re.IGNORECASE)
# pycep's names for the functions the rule accepts as the whole value of an id property.
_ID_FUNCTIONS = {
    "extension_resource_id", "if", "guid", "management_group_resource_id", "reference",
    "resource_id", "roleDefinitions", "subscription", "subscription_resource_id",
    "tenant_resource_id",
}


def _id_value_ok(value: Any, tpl: dict[str, Any], seen: frozenset[str]) -> bool:
    declared = {*(tpl.get("resources") or {}), *(tpl.get("modules") or {})}
    if set(refs(value)) & declared:
        return True  # built from a resource or module symbol
    params, variables = tpl.get("parameters") or {}, tpl.get("variables") or {}
    if value is None or isinstance(value, (bool, int)):
        return True  # not a string: the rule does not look at it
    if isinstance(value, str):
        if "${" in value:
            return False
        if value in params:
            return True
        if value in variables:
            return value in seen or _id_value_ok(variables[value].get("value"), tpl,
                                                 seen | {value})
        return "/" not in value
    if isinstance(value, dict) and isinstance(value.get("function"), dict):
        return value["function"].get("type") in _ID_FUNCTIONS
    if isinstance(value, dict) and isinstance(value.get("operator"), dict):
        op = value["operator"]
        if op.get("type") == "conditional":
            return True
        if op.get("type") in ("property_accessor", "index_accessor"):
            base = (op.get("operands") or {}).get("operand_1")
            return (isinstance(base, str) and base in params) or _id_value_ok(base, tpl, seen)
    return False


def _id_properties(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from _id_properties(item, f"{path}[{i}]")
        return
    if not isinstance(node, dict) or "function" in node or "operator" in node:
        return
    for key, value in node.items():
        name = str(key).strip("'")
        if name.lower() in _ID_RULE_SKIPPED_PROPERTIES:
            continue
        is_id = name.lower().endswith("id") and not name.endswith(("uid", "UID"))
        is_object = isinstance(value, list) or (
            isinstance(value, dict) and "function" not in value and "operator" not in value)
        if is_id and not is_object:
            yield f"{path}.{name}", value
        elif not is_id:
            yield from _id_properties(value, f"{path}.{name}")


def resource_ids_from_functions(tpl: dict[str, Any]) -> list[str]:
    """use-resource-id-functions: every `...Id` property under `properties` is built from a
    resource/module symbol, a parameter, a ternary or resourceId()-style function, never a
    hand-assembled string."""
    bad = []
    for name, res in (tpl.get("resources") or {}).items():
        if _ID_RULE_SKIPPED_TYPES.match(str(res.get("type", ""))):
            continue
        for path, value in _id_properties(body(res).get("properties"), "properties"):
            if not _id_value_ok(value, tpl, frozenset()):
                bad.append(f"{name}: {path} is not built with a resource symbol or a "
                           "resourceId() function")
    return bad


def parent_property_for_children(tpl: dict[str, Any]) -> list[str]:
    """use-parent-property: a child resource names its parent with `parent:`, not with a
    'parent/child' name (stricter than the rule, which needs the parent in the same file).
    Exempt, as in the rule (UseParentPropertyRule.cs): a resource declared inside its
    parent, and one that is not an Azure resource (Microsoft Graph's federated credential
    takes the '<app uniqueName>/<name>' form as its own name)."""
    bad = []
    for name, res in (tpl.get("resources") or {}).items():
        if resource_type(res).count("/") < 2 or nested(name, tpl) or extension_resource(res):
            continue
        cfg = body(res)
        rname = cfg.get("name")
        if "parent" not in cfg and isinstance(rname, str) and "/" in rname:
            bad.append(f"{name}: child named {rname!r}; use parent: and the child's own name")
    return bad


def resource_symbol_references(tpl: dict[str, Any]) -> list[str]:
    """use-resource-symbol-reference: no stand-alone reference() or list*() call; use the
    resource symbol (`res.properties`, `res.listKeys()`). Stricter than the rule, which only
    flags calls on a resource declared in the same file."""
    bad = []
    for kind in ("parameters", "variables", "resources", "modules", "outputs"):
        for name, item in (tpl.get(kind) or {}).items():
            for call in sorted(_lists_or_references(item)):
                bad.append(f"{kind[:-1]} {name}: calls {call}(); use the resource symbol")
    return bad


def _declarations(tpl: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """(kind, name, the parts of the declaration that can refer to other symbols)."""
    for name, p in (tpl.get("parameters") or {}).items():
        yield "parameters", name, [p.get("default"), p.get("decorators")]
    for name, v in (tpl.get("variables") or {}).items():
        yield "variables", name, v.get("value")
    for name, r in (tpl.get("resources") or {}).items():
        yield "resources", name, [r.get("config"), r.get("decorators")]
    for name, m in (tpl.get("modules") or {}).items():
        yield "modules", name, [m.get("config"), m.get("decorators")]
    for name, o in (tpl.get("outputs") or {}).items():
        yield "outputs", name, [o.get("value"), o.get("decorators")]


def _unused(tpl: dict[str, Any], kind: str, candidates: set[str]) -> list[str]:
    used: set[str] = set()
    for decl_kind, name, parts in _declarations(tpl):
        found = set(refs(parts))
        if decl_kind == kind:
            found.discard(name)
        used |= found
    return sorted(candidates - used)


def no_unused_params(tpl: dict[str, Any]) -> list[str]:
    """no-unused-params: every parameter is read somewhere."""
    names = set(tpl.get("parameters") or {})
    return [f"param {n}: never used" for n in _unused(tpl, "parameters", names)]


def no_unused_vars(tpl: dict[str, Any]) -> list[str]:
    """no-unused-vars: every (non-exported) variable is read somewhere."""
    names = {n for n, v in (tpl.get("variables") or {}).items()
             if not any(d.get("type") == "export" for d in v.get("decorators") or [])}
    return [f"var {n}: never used" for n in _unused(tpl, "variables", names)]


def no_unused_existing_resources(tpl: dict[str, Any]) -> list[str]:
    """no-unused-existing-resources: every `existing` resource is referenced."""
    names = {n for n, r in (tpl.get("resources") or {}).items() if r.get("existing")}
    return [f"existing resource {n}: never used" for n in _unused(tpl, "resources", names)]


# no-hardcoded-env-urls: the hosts Bicep's built-in configuration disallows and excludes
# (src/Bicep.Core/Configuration/bicepconfig.json); bicep/bicepconfig.json changes neither.
DISALLOWED_HOSTS = (
    "azuredatalakeanalytics.net", "azuredatalakestore.net", "batch.core.windows.net",
    "core.windows.net", "database.windows.net", "datalake.azure.net", "gallery.azure.com",
    "graph.windows.net", "login.microsoftonline.com", "management.azure.com",
    "management.core.windows.net", "vault.azure.net",
)
EXCLUDED_HOSTS = ("schema.management.azure.com",)


def _host_spans(host: str, text: str) -> Iterator[tuple[int, int]]:
    lowered, host = text.lower(), host.lower()
    start = 0
    while (at := lowered.find(host, start)) != -1:
        end = at + len(host)
        if not ((at and text[at - 1].isalnum()) or (end < len(text) and text[end].isalnum())):
            yield at, end
        start = end


def no_hardcoded_env_urls(tpl: dict[str, Any]) -> list[str]:
    """no-hardcoded-env-urls: no string names an Azure cloud host (use environment()).

    Bicep 0.37 and later skip @description/@metadata text; this check reads them too, so
    that older CLIs pass as well.
    """
    bad = []
    for kind in ("parameters", "variables", "resources", "modules", "outputs"):
        for name, item in (tpl.get(kind) or {}).items():
            if kind in ("resources", "modules"):
                item = [item.get("config"), item.get("decorators")]
            for text in strings(item):
                excluded = [span for h in EXCLUDED_HOSTS for span in _host_spans(h, text)]
                for host in DISALLOWED_HOSTS:
                    for at, end in _host_spans(host, text):
                        if not any(a < end and at < b for a, b in excluded):
                            bad.append(f"{kind[:-1]} {name}: hard-coded host {host}")
    return sorted(set(bad))


# max-outputs, max-params, max-resources, max-variables (ARM template limits).
TEMPLATE_LIMITS = {"outputs": 64, "parameters": 256, "resources": 800, "variables": 512}


def template_limits(tpl: dict[str, Any]) -> list[str]:
    return [f"{len(tpl.get(kind) or {})} {kind}, more than ARM's {limit}"
            for kind, limit in TEMPLATE_LIMITS.items() if len(tpl.get(kind) or {}) > limit]


# --- rules over a template and the modules it calls --------------------------------------


def _module_templates(tpl: dict[str, Any], base: Path) -> Iterator[tuple[str, dict[str, Any],
                                                                         dict[str, Any]]]:
    for name, mod in (tpl.get("modules") or {}).items():
        path = (mod.get("detail") or {}).get("path")
        if mod.get("type") == "local" and path and (base / path).is_file():
            yield name, mod, parse_file(base / path)


def _location_params(module: dict[str, Any]) -> set[str]:
    """A module's location-related parameters with a default, as Bicep's LocationRuleBase
    finds them: the default reads resourceGroup()/deployment().location, or the parameter
    is read by some resource's top-level `location`."""
    params = module.get("parameters") or {}
    found = {n for n, p in params.items() if _has_location_expr(p.get("default"))}
    for res in (module.get("resources") or {}).values():
        found |= set(refs(body(res).get("location"))) & set(params)
    return {n for n in found if params[n].get("default") is not None}


def module_location_params(tpl: dict[str, Any], base: Path) -> list[str]:
    """explicit-values-for-loc-params (and no-hardcoded-location for module calls): a
    module's location-related parameter with a default gets an explicit value, and that
    value is not a literal other than 'global'."""
    bad = []
    for name, mod, module in _module_templates(tpl, base):
        given = body(mod).get("params") or {}
        for param in sorted(_location_params(module)):
            if param not in given:
                bad.append(f"module {name}: no explicit value for location parameter {param}")
            elif (lit := _literal(given[param], tpl)) is not None and lit.lower() != "global":
                bad.append(f"module {name}: location parameter {param} is the literal {lit!r}")
    return bad


def module_secure_params(tpl: dict[str, Any], base: Path) -> list[str]:
    """A module's @secure() parameter gets a @secure() parameter of the caller (stricter
    than use-secure-value-for-secure-inputs, which looks at resource properties only)."""
    secure = _secure_params(tpl)
    bad = []
    for name, mod, module in _module_templates(tpl, base):
        given = body(mod).get("params") or {}
        for param in sorted(_secure_params(module) & set(given)):
            if not _secure_value(given[param], secure):
                bad.append(f"module {name}: @secure() parameter {param} gets an insecure value")
    return bad


Rule = Callable[[dict[str, Any]], list[str]]
ModuleRule = Callable[[dict[str, Any], Path], list[str]]

RULES: tuple[Rule, ...] = (
    tls_not_disabled,
    no_open_postgres_network,
    secure_params_have_no_default,
    secrets_in_params_are_secure,
    no_secret_outputs,
    airflow_logs_only_with_airflow,
    node_pools_follow_contract,
    pool_counts_valid,
    deterministic_names,
    no_hardcoded_location,
    no_location_expr_outside_params,
    no_deployments_resources,
    secure_params_in_nested_deploy,
    secure_inputs_get_secure_values,
    admin_username_not_literal,
    protect_command_to_execute,
    stable_resource_identifiers,
    resource_ids_from_functions,
    parent_property_for_children,
    resource_symbol_references,
    no_unused_params,
    no_unused_vars,
    no_unused_existing_resources,
    no_hardcoded_env_urls,
    template_limits,
    descriptions_everywhere,
    role_assignments_well_formed,
    role_assignment_names_from_scope_principal_role,
    federated_credentials_serialised,
)

# Rules that also read the modules a template calls (pass the template's directory).
MODULE_RULES: tuple[ModuleRule, ...] = (module_location_params, module_secure_params)

# Every rule bicep/bicepconfig.json sets to "error", with the checks that stand in for it.
LINTER_CHECKS: dict[str, tuple[Rule | ModuleRule, ...]] = {
    "no-hardcoded-location": (no_hardcoded_location, module_location_params),
    "no-loc-expr-outside-params": (no_location_expr_outside_params,),
    "explicit-values-for-loc-params": (module_location_params,),
    "secure-parameter-default": (secure_params_have_no_default,),
    "secure-params-in-nested-deploy": (secure_params_in_nested_deploy,),
    "secure-secrets-in-params": (secrets_in_params_are_secure,),
    "outputs-should-not-contain-secrets": (no_secret_outputs,),
    "use-secure-value-for-secure-inputs": (secure_inputs_get_secure_values, module_secure_params),
    "adminusername-should-not-be-literal": (admin_username_not_literal,),
    "protect-commandtoexecute-secrets": (protect_command_to_execute,),
    "use-stable-resource-identifiers": (stable_resource_identifiers,),
    "use-resource-id-functions": (resource_ids_from_functions,),
    "use-parent-property": (parent_property_for_children,),
    "use-resource-symbol-reference": (resource_symbol_references,),
    "no-unused-params": (no_unused_params,),
    "no-unused-vars": (no_unused_vars,),
    "no-unused-existing-resources": (no_unused_existing_resources,),
    "no-deployments-resources": (no_deployments_resources,),
    "no-hardcoded-env-urls": (no_hardcoded_env_urls,),
    "max-outputs": (template_limits,),
    "max-params": (template_limits,),
    "max-resources": (template_limits,),
    "max-variables": (template_limits,),
}


def error_level_rules(config: Path = BICEP_DIR / "bicepconfig.json") -> dict[str, dict[str, Any]]:
    """The linter rules bicepconfig.json raises to error (the file must stay plain JSON)."""
    rules = json.loads(config.read_text())["analyzers"]["core"]["rules"]
    return {code: cfg for code, cfg in rules.items() if cfg.get("level") == "error"}
