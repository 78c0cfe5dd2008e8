"""Turn the ARM errors users hit most into one paragraph that names the fix.

`az deployment sub create` reports a failure as the ARM error tree:
`{"status": "Failed", "error": {"code": "DeploymentFailed", "details": [...]}}`,
where each nested module deployment adds a `ResourceDeploymentFailure` /
`DeploymentFailed` pair and the cause sits at the bottom. Older API paths also
embed a JSON document as a *string* in `message`. This module walks all of
that and recognises the causes a user can act on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

POSTGRES_INTERNAL = "postgres-internal"
ALLOCATION = "allocation"
SKU_UNAVAILABLE = "sku-unavailable"
QUOTA = "quota"
VAULT_SOFT_DELETED = "vault-soft-deleted"
ROLE_ASSIGNMENT_EXISTS = "role-assignment-exists"

_QUOTA_CODES = {"quotaexceeded", "errcode_insufficientvcpuquota", "insufficientvcpuquota"}
_ALLOCATION_CODES = {
    "allocationfailed",
    "zonalallocationfailed",
    "overconstrainedallocationrequest",
    "overconstrainedzonalallocationrequest",
}
_FAMILY_RE = re.compile(r"\b(\w+Family)\b", re.ASCII)
_LOCATION_RE = re.compile(r"(?:Location:\s*|location\s+'?)([A-Za-z0-9]+)",
                          re.IGNORECASE | re.ASCII)
_VM_SIZE_RE = re.compile(r"\bStandard_[A-Za-z0-9_]+", re.ASCII)
_VAULT_RE = re.compile(r"/vaults/([A-Za-z0-9-]+)", re.IGNORECASE | re.ASCII)
_SUBNET_RE = re.compile(r"(/subscriptions/[^\s'\"]+?/subnets/[A-Za-z0-9._-]+)",
                        re.IGNORECASE | re.ASCII)
_TEXT_CODE_RE = re.compile(r"\(([A-Za-z_]+)\)|\"code\"\s*:\s*\"(\w+)\"|Code:\s*(\w+)",
                           re.ASCII)


@dataclass(frozen=True)
class ErrorNode:
    """One entry of the ARM error tree, with the targets of every entry above it."""

    code: str
    message: str
    context: str  # targets and messages on the path from the root, lowercased
    target: str = ""  # this entry's own target, as Azure spelled it


@dataclass(frozen=True)
class Failure:
    kind: str
    node: ErrorNode


def _loads(text: str) -> Any:
    start = text.find("{")
    end = text.rfind("}")
    if start == -1 or end <= start:
        return None
    try:
        return json.loads(text[start : end + 1])
    except ValueError:
        return None


def _walk(node: Any, context: str) -> Iterator[ErrorNode]:
    if isinstance(node, list):
        for item in node:
            yield from _walk(item, context)
        return
    if not isinstance(node, dict):
        return
    if "error" in node and isinstance(node["error"], dict):
        yield from _walk(node["error"], context)
        return
    code = str(node.get("code") or "")
    message = str(node.get("message") or "")
    target = str(node.get("target") or "")
    here = f"{context} {target} {message}".lower()
    if code:
        yield ErrorNode(code, message, here, target)
    embedded = _loads(message) if message.lstrip().startswith("{") else None
    if embedded is not None:
        yield from _walk(embedded, here)
    yield from _walk(node.get("details") or [], here)


def error_nodes(arm_error: dict[str, Any] | str) -> list[ErrorNode]:
    """Every coded entry of an ARM error, from a parsed document or az's stderr text."""
    if isinstance(arm_error, str):
        doc = _loads(arm_error)
        if doc is None:
            # Newer az versions print "(Code) message" lines instead of JSON.
            codes = [next(g for g in m.groups() if g) for m in _TEXT_CODE_RE.finditer(arm_error)]
            return [ErrorNode(c, arm_error, arm_error.lower()) for c in codes]
        arm_error = doc
    return list(_walk(arm_error, ""))


def classify(arm_error: dict[str, Any] | str) -> Failure | None:
    """The most specific known cause in the error, or None."""
    nodes = error_nodes(arm_error)
    for node in nodes:
        code = node.code.lower()
        if code in _QUOTA_CODES or (code == "operationnotallowed" and "quota" in node.context):
            return Failure(QUOTA, node)
    for node in nodes:
        if node.code.lower() in _ALLOCATION_CODES:
            return Failure(ALLOCATION, node)
    for node in nodes:
        if node.code.lower() == "skunotavailable":
            return Failure(SKU_UNAVAILABLE, node)
    for node in nodes:
        if node.code.lower() == "internalservererror" and (
            "dbforpostgresql" in node.context or "postgres" in node.context
        ):
            return Failure(POSTGRES_INTERNAL, node)
    for node in nodes:
        if node.code.lower() in ("conflicterror", "vaultalreadyexists") and (
            "deleted state" in node.context or "soft delete" in node.context
        ):
            return Failure(VAULT_SOFT_DELETED, node)
    for node in nodes:
        if node.code.lower() == "roleassignmentexists":
            return Failure(ROLE_ASSIGNMENT_EXISTS, node)
    return None


def _first(pattern: re.Pattern[str], *texts: str) -> str | None:
    for text in texts:
        m = pattern.search(text)
        if m:
            return m.group(1) if m.groups() else m.group(0)
    return None


def explain(failure: Failure) -> str:
    """One paragraph (no line breaks): what happened and the fix."""
    node = failure.node
    location = _first(_LOCATION_RE, node.message) or "this region"
    if failure.kind == QUOTA and "lowprioritycores" in node.message.lower():
        # Spot VMs count only against the regional Spot quota, whatever their
        # family (Azure's "spot vCPU quotas" page).
        return (
            f"Azure refused to create the Spot pool because the Spot (low-priority) vCPU quota "
            f"of your subscription in {location} is too small ({node.code}). Fix: request a "
            "higher Spot quota in that region (Azure portal > Quotas > Compute, \"Total "
            "Regional Spot vCPUs\"), or lower [aks] spot_max_count or choose a smaller "
            "spot_vm_size in mfhelm.toml (`mfhelm doctor` shows what the pool needs), then run "
            "`mfhelm deploy` again."
        )
    if failure.kind == QUOTA:
        family = _first(_FAMILY_RE, node.message)
        what = f"the {family} vCPU quota" if family else "the regional vCPU quota"
        return (
            f"Azure refused to create the node pools because {what} of your subscription in "
            f"{location} is too small ({node.code}). Fix: request a higher quota for that VM "
            "family in that region (Azure portal > Quotas > Compute, or `az quota create`), or "
            "choose a smaller size or lower min/max counts under [aks] in mfhelm.toml "
            "(`mfhelm doctor` shows what each pool needs), then run `mfhelm deploy` again."
        )
    if failure.kind == ALLOCATION:
        size = _first(_VM_SIZE_RE, node.message)
        what = f"the VM size {size}" if size else "one of the node pool VM sizes"
        return (
            f"Azure has no free capacity for {what} in {location} right now ({node.code}); this "
            "is a temporary shortage in the region, not an error in your settings. Fix: set a "
            "different size for that pool under [aks] in mfhelm.toml (system_vm_size, "
            "services_vm_size, task_vm_size, gpu_vm_size or spot_vm_size) or choose another "
            "location, then run "
            "`mfhelm deploy` again; retrying later with the same size may also work."
        )
    if failure.kind == SKU_UNAVAILABLE:
        size = _first(_VM_SIZE_RE, node.message) or "a requested VM size"
        return (
            f"{size} is not offered to your subscription in {location} ({node.code}). Fix: "
            "pick a size listed by `az vm list-skus --location <region> --resource-type "
            "virtualMachines -o table` for the pool under [aks] in mfhelm.toml, or choose "
            "another location, then run `mfhelm deploy` again."
        )
    if failure.kind == POSTGRES_INTERNAL:
        return (
            "Azure Database for PostgreSQL answered InternalServerError while creating the "
            "server, a known transient failure of first-time Flexible Server creation. Fix: "
            "wait a few minutes and run `mfhelm deploy` again (re-running is safe and reuses "
            "the stored password); if it keeps failing, check the SKU is offered with "
            "`az postgres flexible-server list-skus --location <region>` or choose another "
            "location."
        )
    if failure.kind == VAULT_SOFT_DELETED:
        vault = _first(_VAULT_RE, node.context) or "<vault name>"
        return (
            f"A Key Vault named {vault} still exists in the soft-deleted state, left by a stack "
            "that was deleted earlier, and purge protection keeps the name taken. Fix: recover "
            f"it with `az keyvault recover --name {vault}` and run `mfhelm deploy` again "
            "(the stored password is reused)."
        )
    if failure.kind == ROLE_ASSIGNMENT_EXISTS:
        # Stacks deployed before role assignments were named from their principal
        # hold the AKS identity's subnet assignment under an older name; Azure
        # keeps one assignment per principal, role and scope (bicep/README.md).
        scope = _first(_SUBNET_RE, node.target, node.message)
        where = f"on {scope}" if scope else "on the AKS node subnet"
        return (
            f"A role assignment {where} already exists for the same identity and role under "
            f"another name ({node.code}); stacks deployed by an earlier mfhelm named the AKS "
            "identity's Network Contributor assignment differently. Fix: delete the old one "
            "once with `az role assignment delete --assignee <the cluster's "
            "identity.principalId> --role \"Network Contributor\" --scope <the subnet id>` "
            "(bicep/README.md has the commands) and run `mfhelm deploy` again."
        )
    raise ValueError(f"unknown failure kind {failure.kind}")


def explain_failure(arm_error_json: dict[str, Any] | str) -> str | None:
    """A one-paragraph explanation with the fix, or None for errors we do not know."""
    failure = classify(arm_error_json)
    return explain(failure) if failure else None
