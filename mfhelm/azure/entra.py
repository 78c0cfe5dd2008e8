"""What `mfhelm doctor` asks Microsoft Graph about the sign-in app registration.

Two cases (README "Give your data scientists access"): `mfhelm deploy` creates
the app registration (Microsoft Graph Bicep, as the deploying user), which
needs a user who may register applications; or [access] client_id names an
app someone else registered. Read-only GETs through azure-core's pipeline
(retries, a bearer token for Graph); the base URL is a parameter, for tests
that serve Graph locally. Errors come back as MfhelmError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from mfhelm.errors import MfhelmError

if TYPE_CHECKING:
    from azure.core import PipelineClient
    from azure.core.credentials import TokenCredential

GRAPH_URL = "https://graph.microsoft.com"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"

# Directory roles that may register applications whatever the tenant's
# "Users can register applications" setting says, by role template id (the
# same in every tenant; Microsoft Entra built-in roles reference).
APP_CREATOR_ROLES = {
    "cf1c38e5-3621-4004-a7cb-879624dced7c": "Application Developer",
    "9b895d92-2cd3-44c7-9d02-a6ac2d5ea5c3": "Application Administrator",
    "158c047a-c907-4556-b7ef-446551a6b5f7": "Cloud Application Administrator",
    "62e90394-69f5-4237-9190-012177145e10": "Global Administrator",
}
_MAX_PAGES = 20


@dataclass(frozen=True)
class AppRegistration:
    """The parts of an application object the sign-in proxy and laptops depend on."""

    object_id: str
    app_id: str
    display_name: str
    redirect_uris: tuple[str, ...]
    identifier_uris: tuple[str, ...]
    access_token_version: int | None
    group_claims: str
    federated_subjects: tuple[str, ...] = ()


class Graph:
    """GETs against Microsoft Graph v1.0 as the signed-in identity."""

    def __init__(self, credential: TokenCredential, base_url: str | None = None) -> None:
        from azure.core import PipelineClient
        from azure.core.pipeline import policies

        self.base_url = (base_url or GRAPH_URL).rstrip("/")
        self._client: PipelineClient[Any, Any] = PipelineClient(
            base_url=self.base_url,
            policies=[
                policies.HeadersPolicy({"Accept": "application/json"}),
                policies.UserAgentPolicy("mfhelm"),
                policies.RetryPolicy(retry_total=3),
                policies.BearerTokenCredentialPolicy(credential, GRAPH_SCOPE),
            ],
        )

    def close(self) -> None:
        self._client.close()

    def get(self, path_or_url: str) -> tuple[int, Any]:
        """(status, JSON body) of one GET; a path is relative to the base URL."""
        from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
        from azure.core.rest import HttpRequest

        url = path_or_url if "://" in path_or_url else f"{self.base_url}{path_or_url}"
        try:
            response = self._client.send_request(HttpRequest("GET", url))
        except ClientAuthenticationError as exc:
            raise MfhelmError(f"no Microsoft Graph token ({_first(exc)}); run `az login`") \
                from None
        except ServiceRequestError as exc:
            raise MfhelmError(f"could not reach Microsoft Graph: {_first(exc)}") from None
        try:
            body = response.json() if response.text() else None
        except ValueError:
            body = None
        return response.status_code, body

    def get_all(self, path: str) -> tuple[int, list[Any]]:
        """Every item of a collection, following @odata.nextLink."""
        items: list[Any] = []
        url: str | None = path
        status = 200
        for _ in range(_MAX_PAGES):
            if not url:
                break
            status, body = self.get(url)
            if status != 200 or not isinstance(body, dict):
                return status, items
            items += [v for v in body.get("value") or [] if isinstance(v, dict)]
            next_link = body.get("@odata.nextLink")
            url = next_link if isinstance(next_link, str) else None
        return status, items


def _first(exc: Exception) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def graph_error(body: Any) -> str:
    """Graph's `{"error": {"code", "message"}}` as one line."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return "no error detail"
    code, message = str(err.get("code") or ""), str(err.get("message") or "")
    return f"{code}: {message}" if code and message else (code or message or "no error detail")


@dataclass(frozen=True)
class CreateRight:
    """Whether the signed-in identity may register the sign-in app, and why."""

    may: bool | None  # None: Graph would not say
    why: str
    service_principal: bool = False


def may_create_apps(graph: Graph) -> CreateRight:
    """A user may register apps when they hold one of APP_CREATOR_ROLES, or when the
    tenant lets every user (authorizationPolicy.defaultUserRolePermissions)."""
    status, roles = graph.get_all("/v1.0/me/memberOf?$select=id,displayName,roleTemplateId")
    if status == 400:
        # Graph answers /me only for a signed-in user; a service principal gets 400.
        return CreateRight(None, "signed in as a service principal: it registers the app "
                           "only with the Microsoft Graph application permission "
                           "Application.ReadWrite.OwnedBy (or Application.ReadWrite.All)",
                           service_principal=True)
    if status != 200:
        raise MfhelmError(f"could not read your directory roles (HTTP {status})")
    held = sorted({APP_CREATOR_ROLES[r["roleTemplateId"]] for r in roles
                   if r.get("@odata.type") == "#microsoft.graph.directoryRole"
                   and r.get("roleTemplateId") in APP_CREATOR_ROLES})
    if held:
        return CreateRight(True, f"you hold {', '.join(held)}, which may register apps")
    status, policy = graph.get("/v1.0/policies/authorizationPolicy")
    if status != 200 or not isinstance(policy, dict):
        return CreateRight(None, "could not read the tenant's app registration setting "
                           f"({graph_error(policy)}) and you hold no role that registers apps")
    perms = policy.get("defaultUserRolePermissions") or {}
    if perms.get("allowedToCreateApps") is True:
        return CreateRight(True, "users may register applications in this tenant")
    return CreateRight(False, "users may not register applications in this tenant, and you "
                       f"hold none of: {', '.join(sorted(APP_CREATOR_ROLES.values()))}")


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def find_app(graph: Graph, client_id: str) -> AppRegistration:
    """The app registration whose client (application) id is `client_id`."""
    key = quote(client_id, safe="")
    fields = "id,appId,displayName,web,api,identifierUris,groupMembershipClaims"
    status, app = graph.get(f"/v1.0/applications(appId='{key}')?$select={fields}")
    if status == 404:
        by_object, found = graph.get(f"/v1.0/applications/{key}?$select=id,appId")
        if by_object == 200 and isinstance(found, dict) and found.get("appId"):
            raise MfhelmError(
                f"{client_id} is an app registration's object id, not its client id; "
                f"set [access] client_id = \"{found['appId']}\"")
        raise MfhelmError(
            f"no app registration has client id {client_id} in this tenant; set [access] "
            "client_id to the Application (client) ID the app's Overview page shows")
    if status != 200 or not isinstance(app, dict):
        raise MfhelmError(f"could not read app registration {client_id}: {graph_error(app)}")
    web: dict[str, Any] = app["web"] if isinstance(app.get("web"), dict) else {}
    api: dict[str, Any] = app["api"] if isinstance(app.get("api"), dict) else {}
    version = api.get("requestedAccessTokenVersion")
    object_id = str(app.get("id") or "")
    subjects: tuple[str, ...] = ()
    if object_id:
        fic_status, fics = graph.get_all(
            f"/v1.0/applications/{quote(object_id, safe='')}/federatedIdentityCredentials")
        if fic_status == 200:
            subjects = tuple(str(f.get("subject") or "") for f in fics)
    return AppRegistration(
        object_id=object_id,
        app_id=str(app.get("appId") or client_id),
        display_name=str(app.get("displayName") or ""),
        redirect_uris=_strings(web.get("redirectUris")),
        identifier_uris=_strings(app.get("identifierUris")),
        access_token_version=version if isinstance(version, int) else None,
        group_claims=str(app.get("groupMembershipClaims") or "None"),
        federated_subjects=subjects,
    )
