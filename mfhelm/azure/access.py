"""Who a team is (Microsoft Graph) and what it may do on Azure (role
assignments through ARM's REST API), for `mfhelm grant` and `mfhelm revoke`.

Both are plain REST calls through azure-core's pipeline (retries, bearer
token for the right audience): ARM at `https://management.azure.com`
(Microsoft.Authorization/roleAssignments and .../permissions, api-version
2022-04-01), Graph at `https://graph.microsoft.com/v1.0`. Base URLs are
parameters, for sovereign clouds and for tests that serve both locally.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mfhelm.azure.entra import GRAPH_SCOPE, GRAPH_URL
from mfhelm.errors import MfhelmError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

ARM_URL = "https://management.azure.com"
ARM_SCOPE = "https://management.azure.com/.default"
AUTHZ_API = "2022-04-01"

# Built-in role definitions: the same ids in every tenant (Azure's built-in
# roles reference; tests/unit/test_grant_azure.py pins them).
BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
AKS_CLUSTER_USER = "4abbcc35-e782-43d8-92c5-2d3f1bd2253f"
ROLE_NAMES = {
    BLOB_DATA_CONTRIBUTOR: "Storage Blob Data Contributor",
    BLOB_DATA_READER: "Storage Blob Data Reader",
    AKS_CLUSTER_USER: "Azure Kubernetes Service Cluster User Role",
}
ASSIGN_ACTION = "Microsoft.Authorization/roleAssignments/write"
REMOVE_ACTION = "Microsoft.Authorization/roleAssignments/delete"
# uuid5 namespace of mfhelm's role assignment names: the same group, role
# and scope always give the same name, so a re-run PUTs the same resource.
_NAMES = uuid.UUID("6d1f3b0e-4a7c-5e92-9b13-0c8f2e7a5d41")
_GUID_RE = re.compile(r"\A[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\Z")


def is_guid(value: str) -> bool:
    return bool(_GUID_RE.fullmatch(value))


@dataclass(frozen=True)
class Group:
    id: str
    name: str


@dataclass(frozen=True)
class Assignment:
    """One role on one scope for one principal."""

    role: str  # role definition GUID
    scope: str
    what: str  # the scope as the user reads it: "container metaflow-storage"

    @property
    def role_name(self) -> str:
        return ROLE_NAMES.get(self.role, self.role)

    def name(self, principal: str) -> str:
        key = f"{self.scope.lower()}|{self.role}|{principal.lower()}"
        return str(uuid.uuid5(_NAMES, key))

    def definition_id(self, subscription: str) -> str:
        return (f"/subscriptions/{subscription}/providers/Microsoft.Authorization/"
                f"roleDefinitions/{self.role}")

    def __str__(self) -> str:
        return f"{self.role_name} on {self.what}"


def scopes(outputs: dict[str, Any]) -> tuple[str, str]:
    """(the Metaflow container, the AKS cluster) as ARM resource ids."""
    rg = (f"/subscriptions/{outputs['subscriptionId']}/resourceGroups/"
          f"{outputs['resourceGroupName']}/providers")
    container = (f"{rg}/Microsoft.Storage/storageAccounts/{outputs['storageAccountName']}"
                 f"/blobServices/default/containers/{outputs['metaflowContainerName']}")
    cluster = f"{rg}/Microsoft.ContainerService/managedClusters/{outputs['aksClusterName']}"
    return container, cluster


def assignments_for(role: str, outputs: dict[str, Any]) -> list[Assignment]:
    """What a team with `role` (data-scientist or viewer) holds on Azure."""
    container, cluster = scopes(outputs)
    blob = BLOB_DATA_READER if role == "viewer" else BLOB_DATA_CONTRIBUTOR
    return [Assignment(blob, container, f"container {outputs['metaflowContainerName']}"),
            Assignment(AKS_CLUSTER_USER, cluster, f"AKS cluster {outputs['aksClusterName']}")]


def all_assignments(outputs: dict[str, Any]) -> list[Assignment]:
    """Every assignment grant may have made, whatever the role."""
    seen = assignments_for("data-scientist", outputs) + assignments_for("viewer", outputs)
    return list(dict.fromkeys(seen))


# ------------------------------------------------------------------ REST


class _Rest:
    """One azure-core pipeline to one API with a token for its audience."""

    def __init__(self, base_url: str, credential: TokenCredential, scope: str) -> None:
        from azure.core import PipelineClient
        from azure.core.pipeline import policies

        self.base_url = base_url.rstrip("/")
        self.client: Any = PipelineClient(self.base_url, policies=[
            policies.RequestIdPolicy(),
            policies.HeadersPolicy({"Accept": "application/json"}),
            policies.UserAgentPolicy("mfhelm"),
            policies.RetryPolicy(),
            policies.BearerTokenCredentialPolicy(credential, scope),
            policies.RedirectPolicy(),
        ])

    def call(self, method: str, path: str, params: dict[str, str] | None = None,
             body: Any = None) -> tuple[int, Any]:
        """(status, JSON body or None); network failures and 401s as one line."""
        from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
        from azure.core.rest import HttpRequest

        from mfhelm.azure.credentials import auth_error

        request = HttpRequest(method, self.base_url + path, params=params or {},
                              json=body if body is not None else None)
        try:
            response = self.client.send_request(request)
        except ClientAuthenticationError as exc:
            raise auth_error(exc) from None
        except ServiceRequestError as exc:
            raise MfhelmError(f"cannot reach {self.base_url} ({exc})") from None
        text = response.text()
        try:
            data = json.loads(text) if text.strip() else None
        except ValueError:
            data = None
        if response.status_code == 401:
            raise MfhelmError(f"Azure login failed ({_message(data) or 'unauthorized'}); "
                              "run `az login` and try again")
        return response.status_code, data

    def close(self) -> None:
        self.client.close()


def _code(data: Any) -> str:
    err = data.get("error") if isinstance(data, dict) else None
    return str(err.get("code") or "") if isinstance(err, dict) else ""


def _message(data: Any) -> str:
    err = data.get("error") if isinstance(data, dict) else None
    msg = str(err.get("message") or "") if isinstance(err, dict) else ""
    return msg.strip().splitlines()[0] if msg.strip() else ""


# ----------------------------------------------------------------- Graph


class Directory:
    """The deployment's Entra tenant, through Microsoft Graph."""

    def __init__(self, tenant: str, credential: TokenCredential,
                 base_url: str = GRAPH_URL) -> None:
        self.tenant = tenant
        self.rest = _Rest(base_url, credential, GRAPH_SCOPE)

    def close(self) -> None:
        self.rest.close()

    def _get(self, path: str, params: dict[str, str] | None = None) -> tuple[int, Any]:
        status, data = self.rest.call("GET", "/v1.0" + path, params)
        if status == 403:
            raise MfhelmError(
                f"Microsoft Graph refused to read the directory ({_code(data) or 'Forbidden'}): "
                "you need to be a member (not a guest) of tenant "
                f"{self.tenant}, or ask an admin to run mfhelm grant")
        if status >= 400 and status != 404:
            raise MfhelmError(f"Microsoft Graph {path} failed: {status} "
                              f"{_message(data) or _code(data)}")
        return status, data

    def check_tenant(self) -> None:
        """The signed-in tenant is the deployment's: groups and role
        assignments live there."""
        _, data = self._get("/organization", {"$select": "id,displayName"})
        orgs = data.get("value") if isinstance(data, dict) else None
        ids = [str(o.get("id", "")) for o in orgs or [] if isinstance(o, dict)]
        if not ids or ids[0].lower() != self.tenant.lower():
            now = ids[0] if ids else "unknown"
            raise MfhelmError(
                f"you are signed in to tenant {now}, but the deployment is in tenant "
                f"{self.tenant}: run `az login --tenant {self.tenant}` and try again")

    def group(self, ref: str) -> Group:
        """A security group by object id or by display name; one line for an
        id that is another kind of object or none in this tenant, a name
        that matches no group or several."""
        if is_guid(ref):
            status, data = self._get(f"/groups/{ref}",
                                     {"$select": "id,displayName,securityEnabled"})
            if status == 404:
                raise MfhelmError(self._not_a_group(ref))
            return self._security(data)
        escaped = ref.replace("'", "''")
        _, data = self._get("/groups", {"$filter": f"displayName eq '{escaped}'",
                                        "$select": "id,displayName,securityEnabled"})
        found = [g for g in (data or {}).get("value") or [] if isinstance(g, dict)]
        if not found:
            raise MfhelmError(
                f"no group named {ref!r} in tenant {self.tenant}: check the name (exact, "
                "as Entra ID shows it) or pass the group's object id")
        if len(found) > 1:
            ids = ", ".join(str(g.get("id")) for g in found)
            raise MfhelmError(f"{len(found)} groups are named {ref!r} ({ids}): pass the object "
                              "id of the one you mean")
        return self._security(found[0])

    def _not_a_group(self, ref: str) -> str:
        status, data = self._get(f"/directoryObjects/{ref}", {"$select": "id,displayName"})
        if status == 200 and isinstance(data, dict):
            kind = str(data.get("@odata.type", "")).rsplit(".", 1)[-1] or "object"
            name = data.get("displayName") or ref
            return (f"{ref} is a {kind} ({name}), not a group: pass the object id of an Entra "
                    "security group (`az ad group show -g <name> --query id`)")
        return (f"no group with object id {ref} in tenant {self.tenant} (the deployment's); "
                "a group of another tenant cannot be granted: use a group of this tenant "
                "(`az ad group list --display-name <name> --query [].id`)")

    def _security(self, data: Any) -> Group:
        group = Group(str(data.get("id")), str(data.get("displayName") or data.get("id")))
        if data.get("securityEnabled") is False:
            raise MfhelmError(
                f"group {group.name} ({group.id}) is not a security group: Azure roles and "
                "the sign-in's group claim only see security groups; use a security group")
        return group

    def name_of(self, group_id: str) -> str | None:
        """The group's display name; None when there is no such group."""
        if not is_guid(group_id):
            return None
        status, data = self._get(f"/groups/{group_id}", {"$select": "id,displayName"})
        return str(data.get("displayName")) if status == 200 and isinstance(data, dict) \
            else None


# ------------------------------------------------------------------- ARM


class RoleAssignments:
    """Role assignments of one subscription's resources, through ARM."""

    def __init__(self, subscription: str, credential: TokenCredential,
                 base_url: str = ARM_URL) -> None:
        self.subscription = subscription
        self.rest = _Rest(base_url, credential, ARM_SCOPE)

    def close(self) -> None:
        self.rest.close()

    def _fail(self, what: str, status: int, data: Any) -> MfhelmError:
        if status == 403:
            return MfhelmError(
                f"not allowed to {what} ({_code(data) or 'AuthorizationFailed'}): you need "
                "'Role Based Access Control Administrator' (or Owner) on the resource group, "
                "or ask someone who has it to run mfhelm grant")
        if status == 404:
            return MfhelmError(f"cannot {what}: {_message(data) or 'not found'}; "
                               "run `mfhelm deploy` first")
        return MfhelmError(f"could not {what}: {status} {_message(data) or _code(data)}")

    def may(self, scope: str, action: str, what: str) -> None:
        """Refuse now, before anything changes, when the caller's roles on
        `scope` do not allow `action` (ARM's permissions list for the caller)."""
        status, data = self.rest.call(
            "GET", f"{scope}/providers/Microsoft.Authorization/permissions",
            {"api-version": AUTHZ_API})
        if status != 200:
            raise self._fail(f"read your permissions on {what}", status, data)
        perms = [p for p in (data or {}).get("value") or [] if isinstance(p, dict)]
        if not any(_matches(action, p.get("actions") or [])
                   and not _matches(action, p.get("notActions") or []) for p in perms):
            verb = "assign" if action == ASSIGN_ACTION else "remove"
            raise MfhelmError(
                f"not allowed to {verb} roles on {what} (no {action}): you need 'Role Based "
                "Access Control Administrator' (or Owner) on the resource group, or ask "
                "someone who has it to run mfhelm grant")

    def present(self, want: Assignment, principal: str) -> list[str]:
        """Ids of the assignments of `want.role` to `principal` exactly at
        `want.scope` (whatever their names: made by mfhelm or by hand)."""
        status, data = self.rest.call(
            "GET", f"{want.scope}/providers/Microsoft.Authorization/roleAssignments",
            {"api-version": AUTHZ_API, "$filter": f"principalId eq '{principal}'"})
        if status != 200:
            raise self._fail(f"read the role assignments on {want.what}", status, data)
        found = []
        for item in (data or {}).get("value") or []:
            props = item.get("properties") or {}
            if (str(props.get("scope", "")).lower() == want.scope.lower()
                    and str(props.get("roleDefinitionId", "")).lower().endswith(want.role)
                    and str(props.get("principalId", "")).lower() == principal.lower()):
                found.append(str(item["id"]))
        return found

    def create(self, want: Assignment, principal: str) -> str | None:
        """PUT the assignment under its deterministic name: its id when this
        call made it, None when it already existed (RoleAssignmentExists)."""
        path = (f"{want.scope}/providers/Microsoft.Authorization/roleAssignments/"
                f"{want.name(principal)}")
        status, data = self.rest.call("PUT", path, {"api-version": AUTHZ_API}, {
            "properties": {"roleDefinitionId": want.definition_id(self.subscription),
                           "principalId": principal, "principalType": "Group"}})
        if status in (200, 201):
            return path if status == 201 else None
        if status == 409 and _code(data) == "RoleAssignmentExists":
            return None
        raise self._fail(f"assign {want}", status, data)

    def delete(self, assignment_id: str, what: str) -> dict[str, Any] | None:
        """DELETE one assignment; its properties as they were (to put it back)."""
        status, data = self.rest.call("DELETE", assignment_id, {"api-version": AUTHZ_API})
        if status in (200, 204):
            return (data or {}).get("properties") if isinstance(data, dict) else None
        raise self._fail(f"remove {what}", status, data)

    def restore(self, assignment_id: str, props: dict[str, Any]) -> None:
        """Put back an assignment this run deleted, under its old name."""
        body = {"properties": {k: props[k] for k in ("roleDefinitionId", "principalId",
                                                     "principalType") if k in props}}
        status, data = self.rest.call("PUT", assignment_id, {"api-version": AUTHZ_API}, body)
        if status not in (200, 201) and _code(data) != "RoleAssignmentExists":
            raise self._fail(f"put back {assignment_id}", status, data)


def _matches(action: str, patterns: list[Any]) -> bool:
    """ARM action patterns: case-insensitive, `*` any run of characters."""
    for pattern in patterns:
        regex = ".*".join(re.escape(part) for part in str(pattern).split("*"))
        if re.fullmatch(regex, action, re.IGNORECASE):
            return True
    return False

