"""Project rules over parsed Bicep (pycep's JSON), for what checkov does not check.

Each rule takes one parsed template and returns a list of violations (empty
means the rule holds), so a test can feed it both the real templates and a
tiny bad snippet. pycep renders identifiers and string literals alike as
Python strings; rules that must tell them apart look the name up among the
template's declared symbols.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pycep import BicepParser

BICEP_DIR = Path(__file__).resolve().parents[2] / "bicep"

# The deployment outputs mfhelm reads (CONTRACT in /work/shared/design, fixed).
CONTRACT_OUTPUTS = {
    "resourceGroupName": "string", "location": "string", "tenantId": "string",
    "subscriptionId": "string", "aksClusterName": "string", "aksOidcIssuerUrl": "string",
    "identityName": "string", "identityClientId": "string", "storageAccountName": "string",
    "storageBlobEndpoint": "string", "metaflowContainerName": "string",
    "airflowLogsContainerName": "string", "postgresServerName": "string",
    "postgresFqdn": "string", "postgresDatabaseName": "string", "postgresAdminLogin": "string",
    "keyVaultName": "string", "keyVaultUri": "string", "postgresPasswordSecretName": "string",
    "serviceNamespace": "string", "flowNamespace": "string", "serviceAccountService": "string",
    "serviceAccountFlows": "string", "serviceAccountAirflow": "string",
    "taskworkersLabelKey": "string", "taskworkersLabelValue": "string",
    "deployArgo": "bool", "deployAirflow": "bool",
}
POOL_LABEL = "mfhelm.io/pool"
TASK_TAINT = "mfhelm.io/pool=taskworkers:NoSchedule"
SYSTEM_TAINT = "CriticalAddonsOnly=true:NoSchedule"

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


def symbols(tpl: dict[str, Any]) -> set[str]:
    return {
        *(tpl.get("parameters") or {}),
        *(tpl.get("variables") or {}),
        *(tpl.get("resources") or {}),
        *(tpl.get("modules") or {}),
    }


def _is_secure(param: dict[str, Any]) -> bool:
    return any(d.get("type") == "secure" for d in param.get("decorators") or [])


def _references(node: Any, names: set[str]) -> bool:
    for s in strings(node):
        if s in names:
            return True
        if any(re.search(r"\$\{[^}]*\b" + re.escape(n) + r"\b", s) for n in names):
            return True
    return False


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
    return [
        f"param {name}: @secure() with a default value"
        for name, p in (tpl.get("parameters") or {}).items()
        if _is_secure(p) and p.get("default") is not None
    ]


def no_secret_outputs(tpl: dict[str, Any]) -> list[str]:
    """No output reads a @secure() parameter, a list*() call or a Key Vault getSecret()."""
    secure = {n for n, p in (tpl.get("parameters") or {}).items() if _is_secure(p)}
    bad = []
    for name, out in (tpl.get("outputs") or {}).items():
        value = out.get("value")
        if secure and _references(value, secure):
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
    """system/services/taskworkers autoscale without a fixed count; labels and taints as agreed."""
    pools = _pools(tpl)
    if not pools:
        return []
    bad = [f"no {n} pool" for n in ("system", "services", "taskworkers") if n not in pools]
    for name, pool in pools.items():
        if pool.get("enableAutoScaling") is not True:
            bad.append(f"pool {name}: enableAutoScaling is not true")
        if pool.get("minCount") is None or pool.get("maxCount") is None:
            bad.append(f"pool {name}: minCount/maxCount not set")
        if "count" in pool:
            bad.append(f"pool {name}: sets count, which fights the autoscaler on re-deploy")
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
    return bad


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
    """Every `location:` is a parameter/variable or expression; only 'global' is literal."""
    known = symbols(tpl)
    bad = []
    blocks = {**(tpl.get("resources") or {}), **(tpl.get("modules") or {})}
    for name, block in blocks.items():
        cfg = body(block)
        candidates = [cfg.get("location"), (cfg.get("params") or {}).get("location")]
        for loc in candidates:
            if isinstance(loc, str) and loc not in known and loc != "global":
                bad.append(f"{name}: hard-coded location {loc!r}")
    for name, p in (tpl.get("parameters") or {}).items():
        default = p.get("default")
        if "location" in name.lower() and isinstance(default, str) and default not in known:
            bad.append(f"param {name}: hard-coded default {default!r}")
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


RULES = (
    tls_not_disabled,
    no_open_postgres_network,
    secure_params_have_no_default,
    no_secret_outputs,
    airflow_logs_only_with_airflow,
    node_pools_follow_contract,
    deterministic_names,
    no_hardcoded_location,
    descriptions_everywhere,
    role_assignments_well_formed,
    federated_credentials_serialised,
)
