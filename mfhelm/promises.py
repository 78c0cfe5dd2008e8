"""The stack's security promises, and the user values that would break them.

One table: each Rule names the keys that can weaken one promise (a dotted
key, or a pattern over every key of the merged values, so that the same
weakening is caught whichever component or subchart key carries it) and
what, in the value found there, weakens it. charts/metaflow/README.md
"Security promises" lists the same promises and keys; a unit test keeps the
two in step.

Only what the user's layers (-f, --set) wrote is judged: mfhelm's own values
and the chart's defaults are the stack's, tested on their own. A value the
user sets to null is judged as what the chart then falls back to (for a
subchart key, the subchart's default: Argo's `singleNamespace` is false
there). A refusal names the key, the layer, the promise and the override.

Upstream facts behind the keys (read at the pinned versions): argo-helm
argo-workflows 1.0.18 (as 0.45.20 did) passes `server.authMode`, each
`server.authModes` item and `server.extraArgs` to the server as
`--auth-mode=...` (every mode given is enabled; `hybrid` is client+server),
renders ClusterRoles unless `singleNamespace`, for `createAggregateRoles`
and for either `clusterWorkflowTemplates.enabled` (all three default to the
cluster-wide choice), and puts `controller.extraArgs` after its own
`--namespaced`; Argo v4.0.7 (as v3.6.10) reads `ARGO_AUTH_MODE` from the
environment when the flag is absent (cmd/argo/commands/server.go: viper,
prefix ARGO). The Airflow chart (1.16) launches pods from its scheduler's
account while `allowPodLaunching` (default true), with ClusterRoles under
`multiNamespaceMode`, and runs as `uid`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# --- the promises ---------------------------------------------------------------------------

ARGO_CLIENT_AUTH = ("the Argo server acts with each caller's own Kubernetes token "
                    "(--auth-mode=client), never with its own account")
NAMESPACED = ("nothing of the stack is cluster-wide (Argo watches one namespace; no ClusterRoles "
              "or ClusterRoleBindings)")
AIRFLOW_PODS = ("Airflow launches pods only in the flow namespace, through the stack's own Role, "
                "away from the services' Secrets")
NETWORK = "NetworkPolicies limit who may connect to each component"
NON_ROOT = ("containers run non-root, unprivileged, without privilege escalation, added "
            "capabilities or an unconfined seccomp profile (one exception: the metadata "
            "migration container runs as uid 0)")
NO_HOST = ("no pod uses the node's filesystem (hostPath), network, PID or IPC namespace or "
           "ports (Pod Security baseline)")
DB_TLS = "on azure every connection to PostgreSQL uses TLS (sslmode require or stricter)"
SIGNIN = ("with the entry point on, only members of the allowed groups get past the sign-in "
          "proxy: no path, address or other issuer skips it")

PROMISES = (ARGO_CLIENT_AUTH, NAMESPACED, AIRFLOW_PODS, NETWORK, NON_ROOT, NO_HOST, DB_TLS,
            SIGNIN)

# What a check finds in one value: (the path below the rule's key, the value shown).
Finding = tuple[tuple[str | int, ...], str]
Check = Callable[[str, Any], list[Finding]]


class _Missing:
    def __repr__(self) -> str:
        return "(removed)"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class Rule:
    promise: str
    key: str  # a dotted key, or with `pattern` a regular expression over keys
    check: Check
    doc: str  # how charts/metaflow/README.md names the keys
    pattern: bool = False
    profiles: tuple[str, ...] = ("azure", "local")

    def matches(self, key: str) -> bool:
        return re.fullmatch(self.key, key) is not None if self.pattern else key == self.key


def show(value: Any) -> str:
    """A value as the refusal shows it: JSON, cut short."""
    if value is MISSING:
        return "(removed)"
    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= 60 else text[:57] + "..."


# --- checks -----------------------------------------------------------------------------------


def truthy(value: Any) -> bool:
    """True as a Go template's `if` sees it (false, 0, "", empty list or map,
    nil are false)."""
    return value is not MISSING and bool(value)


def must_be(expected: bool, upstream_default: bool) -> Check:
    """A switch the templates test with `if`: it must be `expected`; null or
    removed means the upstream chart's default."""
    def check(key: str, value: Any) -> list[Finding]:
        effective = upstream_default if value is None or value is MISSING else truthy(value)
        return [] if effective is expected else [((), show(value))]
    return check


def _only_client(key: str, value: Any) -> list[Finding]:
    """server.authModes / server.authMode: no mode but `client`."""
    if isinstance(value, list):
        return [((i,), show(m)) for i, m in enumerate(value)
                if m is not None and m != "client"]
    if value in (None, "", "client") or value is MISSING:
        return []
    return [((), show(value))]


_FALSE = {"0", "f", "F", "false", "FALSE", "False"}  # Go's strconv.ParseBool


def _args(value: Any) -> list[tuple[int, str]]:
    if not isinstance(value, list):
        return []
    return [(i, a) for i, a in enumerate(value) if isinstance(a, str)]


def _server_args(key: str, value: Any) -> list[Finding]:
    """`--auth-mode=X` or `--auth-mode X` with X not client; `--namespaced=false`."""
    found: list[Finding] = []
    items = _args(value)
    for n, (i, arg) in enumerate(items):
        if arg.startswith("--auth-mode="):
            if arg.removeprefix("--auth-mode=") != "client":
                found.append(((i,), show(arg)))
        elif arg == "--auth-mode" and n + 1 < len(items) and items[n + 1][1] != "client":
            found.append(((i,), show(f"{arg} {items[n + 1][1]}")))
    return found + _controller_args(key, value)


def _controller_args(key: str, value: Any) -> list[Finding]:
    return [((i,), show(arg)) for i, arg in _args(value)
            if arg.startswith("--namespaced=") and arg.removeprefix("--namespaced=") in _FALSE]


def _env_named(name: str, weak: Callable[[Any], bool]) -> Check:
    """An env list (`[{name, value}]`) holding `name` with a weak value."""
    def check(key: str, value: Any) -> list[Finding]:
        if not isinstance(value, list):
            return []
        return [((i,), show(item)) for i, item in enumerate(value)
                if isinstance(item, dict) and item.get("name") == name
                and weak(item.get("value"))]
    return check


WEAK_SSL_MODES = ("disable", "allow", "prefer")


def _weak_ssl(value: Any) -> bool:
    return isinstance(value, str) and value in WEAK_SSL_MODES


def _ssl_mode(key: str, value: Any) -> list[Finding]:
    return [((), show(value))] if _weak_ssl(value) else []


# The security contexts this chart's values.yaml sets: null (or a null field)
# there drops a setting the chart makes, so it is a weakening; the upstream
# charts' contexts default to empty, so a null there changes nothing.
OWN_CONTEXTS = (
    "podSecurityContext",
    "containerSecurityContext",
    "metadata.migrations.securityContext",
    "ui.static.podSecurityContext",
    "local.postgres.podSecurityContext",
    "airflowGlue.admin.podSecurityContext",
    "argoEventsGlue.podSecurityContext",
    "argo-events.global.securityContext",
    "argo-events.controller.containerSecurityContext",
    "access.proxy.podSecurityContext",
)
_KEPT_FIELDS = ("runAsNonRoot", "allowPrivilegeEscalation", "capabilities", "seccompProfile")
# The documented exception (values.yaml): the migration container runs as uid 0.
ROOT_ALLOWED = "metadata.migrations.securityContext"


def _is_int(value: Any, number: int) -> bool:
    return type(value) is int and value == number


def _security_context(key: str, value: Any) -> list[Finding]:
    if value is None:
        return [((), "null")] if key in OWN_CONTEXTS else []
    if not isinstance(value, dict):
        return []
    found: list[Finding] = []
    root_ok = key == ROOT_ALLOWED
    if _is_int(value.get("runAsUser"), 0) and not root_ok:
        found.append((("runAsUser",), "0"))
    if value.get("runAsNonRoot") is False and not root_ok:
        found.append((("runAsNonRoot",), "false"))
    for flag in ("privileged", "allowPrivilegeEscalation"):
        if value.get(flag) is True:
            found.append(((flag,), "true"))
    caps = value.get("capabilities")
    if isinstance(caps, dict) and caps.get("add"):
        found.append((("capabilities", "add"), show(caps["add"])))
    seccomp = value.get("seccompProfile")
    if isinstance(seccomp, dict) and seccomp.get("type") == "Unconfined":
        found.append((("seccompProfile", "type"), show("Unconfined")))
    windows = value.get("windowsOptions")
    if isinstance(windows, dict) and windows.get("hostProcess") is True:
        found.append((("windowsOptions", "hostProcess"), "true"))
    if value.get("procMount") == "Unmasked":
        found.append((("procMount",), show("Unmasked")))
    if key in OWN_CONTEXTS:
        found += [((f,), "null") for f in _KEPT_FIELDS if f in value and value[f] is None]
    return found


def _root_uid(key: str, value: Any) -> list[Finding]:
    return [((), "0")] if _is_int(value, 0) else []


def _host_path(key: str, value: Any) -> list[Finding]:
    if isinstance(value, str):  # a templated string (Airflow takes some volumes so)
        return [((), show(value))] if "hostPath" in value else []
    if not isinstance(value, list):
        return []
    return [((i, "hostPath"), show(item["hostPath"])) for i, item in enumerate(value)
            if isinstance(item, dict) and item.get("hostPath") is not None]


def _true(key: str, value: Any) -> list[Finding]:
    return [((), "true")] if value is True else []


def _host_port(key: str, value: Any) -> list[Finding]:
    return [((), show(value))] if type(value) is int and value != 0 else []


def _cluster_objects(key: str, value: Any) -> list[Finding]:
    if not isinstance(value, list):
        return []
    return [((i, "kind"), show(item["kind"])) for i, item in enumerate(value)
            if isinstance(item, dict) and item.get("kind") in ("ClusterRole", "ClusterRoleBinding")]


# oauth2-proxy v7.15.6 flags that let a request through without a session of
# an allowed group: unauthenticated paths, preflights or addresses, other
# users' lists, other token issuers, unverified TLS or emails. The chart
# refuses outright the flags it sets itself (templates/_helpers.tpl).
SIGNIN_OPENING_FLAGS = (
    "--skip-auth-route", "--skip-auth-regex", "--skip-auth-preflight", "--trusted-ip",
    "--authenticated-emails-file", "--htpasswd-file", "--htpasswd-user-group",
    "--extra-jwt-issuers", "--ssl-insecure-skip-verify", "--ssl-upstream-insecure-skip-verify",
    "--insecure-oidc-allow-unverified-email", "--insecure-oidc-skip-issuer-verification",
    "--insecure-oidc-skip-nonce", "--skip-oidc-discovery", "--oidc-jwks-url",
)


def _signin_args(key: str, value: Any) -> list[Finding]:
    """`--flag` or `--flag=value` for a flag in SIGNIN_OPENING_FLAGS."""
    return [((i,), show(arg)) for i, arg in _args(value)
            if arg.split("=", 1)[0] in SIGNIN_OPENING_FLAGS]


# --- the table --------------------------------------------------------------------------------

_AW = "argo-workflows"
_ANY = r"(?:.+\.)?"  # any key above, or none

RULES: tuple[Rule, ...] = (
    Rule(ARGO_CLIENT_AUTH, f"{_AW}.server.authModes", _only_client,
         "`argo-workflows.server.authModes` (only `client`)"),
    Rule(ARGO_CLIENT_AUTH, f"{_AW}.server.authMode", _only_client,
         "`argo-workflows.server.authMode` (deprecated; only `client`)"),
    Rule(ARGO_CLIENT_AUTH, f"{_AW}.server.extraArgs", _server_args,
         "`argo-workflows.server.extraArgs` (`--auth-mode` other than `client`, "
         "`--namespaced=false`)"),
    Rule(ARGO_CLIENT_AUTH, f"{_AW}.server.extraEnv", _env_named(
        "ARGO_AUTH_MODE", lambda v: v != "client"),
         "`argo-workflows.server.extraEnv` (`ARGO_AUTH_MODE` other than `client`)"),
    Rule(NAMESPACED, f"{_AW}.singleNamespace", must_be(True, False),
         "`argo-workflows.singleNamespace` (true)"),
    Rule(NAMESPACED, f"{_AW}.createAggregateRoles", must_be(False, True),
         "`argo-workflows.createAggregateRoles` (false)"),
    Rule(NAMESPACED, f"{_AW}.controller.clusterWorkflowTemplates.enabled",
         must_be(False, True),
         "`argo-workflows.controller.clusterWorkflowTemplates.enabled` (false)"),
    Rule(NAMESPACED, f"{_AW}.server.clusterWorkflowTemplates.enabled", must_be(False, True),
         "`argo-workflows.server.clusterWorkflowTemplates.enabled` (false)"),
    Rule(NAMESPACED, f"{_AW}.controller.extraArgs", _controller_args,
         "`argo-workflows.controller.extraArgs` (`--namespaced=false`)"),
    Rule(NAMESPACED, "airflow.multiNamespaceMode", must_be(False, False),
         "`airflow.multiNamespaceMode` (false)"),
    Rule(NAMESPACED, _ANY + r"extraObjects", _cluster_objects,
         "any `extraObjects` list (no ClusterRole or ClusterRoleBinding)", pattern=True),
    Rule(AIRFLOW_PODS, "airflow.allowPodLaunching", must_be(False, True),
         "`airflow.allowPodLaunching` (false)"),
    Rule(NETWORK, "networkPolicy.enabled", must_be(True, False),
         "`networkPolicy.enabled` (true)"),
    Rule(NON_ROOT, _ANY + r"(?:securityContext|podSecurityContext|containerSecurityContext)"
         r"|" + _ANY + r"securityContexts\.(?:pod|containers?)", _security_context,
         "every security context, ours and the subcharts', pod and container level, in "
         "any component or extra container (`*.podSecurityContext`, "
         "`*.containerSecurityContext`, `*.securityContext`, `*.securityContexts.pod`, "
         "`*.securityContexts.container(s)`): no `runAsUser: 0`, `runAsNonRoot: false`, "
         "`privileged: true`, `allowPrivilegeEscalation: true`, `capabilities.add`, "
         "seccomp `Unconfined`, `procMount: Unmasked`, Windows `hostProcess`; "
         "no null over a context this chart sets", pattern=True),
    Rule(NON_ROOT, "airflow.uid", _root_uid, "`airflow.uid` (not 0)"),
    Rule(NO_HOST, _ANY + r"(?:[A-Za-z]*V|v)olumes", _host_path,
         "every volumes list (`airflow.volumes`, `airflow.*.extraVolumes`, "
         "`argo-workflows.*.volumes`, ...): no `hostPath`", pattern=True),
    Rule(NO_HOST, _ANY + r"host(?:Network|PID|IPC)", _true,
         "`hostNetwork`, `hostPID`, `hostIPC` anywhere (not true)", pattern=True),
    Rule(NO_HOST, _ANY + r"hostPort", _host_port, "`hostPort` anywhere (none)", pattern=True),
    Rule(SIGNIN, "access.proxy.extraArgs", _signin_args,
         "`access.proxy.extraArgs` (no `" + "`, `".join(SIGNIN_OPENING_FLAGS) + "`)"),
    Rule(DB_TLS, "database.sslMode", _ssl_mode,
         "`database.sslMode` (not `disable`, `allow`, `prefer`)", profiles=("azure",)),
    Rule(DB_TLS, _ANY + r"extraEnv", _env_named("MF_METADATA_DB_SSL_MODE", _weak_ssl),
         "`MF_METADATA_DB_SSL_MODE` in any `extraEnv` (same)", pattern=True,
         profiles=("azure",)),
)


# --- finding them ---------------------------------------------------------------------------

Path = tuple[str | int, ...]


def key_text(path: Path) -> str:
    """`a.b[0].c`, a dot inside a key escaped as --set writes it."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part.replace(".", "\\.")
            out += f".{text}" if out else text
    return out


def _walk(tree: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    yield path, tree
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _walk(v, (*path, str(k)))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _walk(v, (*path, i))


def _at(tree: Any, path: Path) -> Any:
    node = tree
    for part in path:
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return MISSING
        elif not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


@dataclass(frozen=True)
class Weakening:
    rule: Rule
    key: Path  # what --allow-override names
    detail: Path  # where the weak value sits
    shown: str


def rules_for(profile: str) -> list[Rule]:
    return [r for r in RULES if profile in r.profiles]


def is_switch(key: str, profile: str) -> bool:
    """A key --allow-override may name for a promise on this profile."""
    return any(r.matches(key) for r in rules_for(profile))


def weakenings(merged: dict[str, Any], profile: str) -> list[Weakening]:
    """Every weak value in `merged`, for the rules of `profile` (in table order).
    The caller keeps those a user layer wrote."""
    paths = list(_walk(merged))
    found: list[Weakening] = []
    for rule in rules_for(profile):
        if rule.pattern:
            targets = [(p, v) for p, v in paths if p and rule.matches(key_text(p))]
        else:
            path: Path = tuple(rule.key.split("."))
            targets = [(path, _at(merged, path))]
        for path, value in targets:
            for below, shown in rule.check(key_text(path), value):
                found.append(Weakening(rule, path, (*path, *below), shown))
    return found
