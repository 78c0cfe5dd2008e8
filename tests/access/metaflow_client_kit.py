"""The parts around the real Metaflow client in test_metaflow_client*.py.

- `serve_entra_front`: Entra ID's token endpoint as azure-identity calls it
  (HTTPS, `POST /<tenant>/oauth2/v2.0/token`, a client assertion from the
  workload-identity token file). It answers two scopes: Azure Storage with the
  unsigned tokens Azurite accepts (as tests/cluster/metaflow_env.serve_entra),
  and the sign-in app's API with the access token of a user of the real test
  IdP (tests/access/accesskit.Idp), signed in once through the IdP's code flow
  and refreshed with its refresh token when half of its life is gone. The
  credential in Metaflow's processes is azure-identity's own
  DefaultAzureCredential (its workload-identity leg, through
  AZURE_AUTHORITY_HOST): the zitadel IdP speaks plain HTTP at its own paths,
  which azure-identity refuses (it wants an https authority with Entra's
  layout), so this front is the thin part between them.
- `start_metadata_service`: a Metaflow metadata service on 127.0.0.1:
  `metaflow-local-service` (PyPI, pinned in pyproject's test extra), which
  speaks the service's REST API (v2.5.0 in its /ping) over Metaflow's local
  metadata files (started by tests/cluster/metaflow_env.py, which teaches it
  the ids an Argo run gives). Netflix's metaflow-service is not on a registry.

The proxy is the chart's (tests/access/chartproxy.py).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster import metaflow_env as mfenv
from cluster.pki import CertificateAuthority

SCOPE_KEY = "METAFLOW_MFHELM_SERVICE_SCOPE"


def api_scope(client_id: str) -> str:
    return f"api://{client_id}/.default"


@dataclass
class EntraFront:
    tenant: str
    client_id: str              # the workload identity's (the assertion's) client id
    federated_token: str
    idp: Any                    # accesskit.Idp; None: unsigned tokens for `api_client_id`
    user: str                   # whose tokens the API scope gets
    refuse_api: bool = False    # answer the API scope as Entra does when sign-in expired
    api_client_id: str = ""     # without an IdP: the sign-in app
    lifetime: int = 3600        # without an IdP: the tokens' lifetime
    url: str = ""
    requests: list[mfenv.Request] = field(default_factory=list)
    api_issued: list[tuple[float, str]] = field(default_factory=list)
    idp_calls: int = 0
    _held: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def scope(self) -> str:
        return api_scope(self.idp.client_id if self.idp else self.api_client_id)

    def api_token(self) -> tuple[str, int]:
        """The user's current access token and its seconds left, refreshed when due."""
        if self.idp is None:
            now = time.time()
            token = mfenv.unsigned_jwt({
                "aud": self.api_client_id, "iss": f"https://login.microsoftonline.com/"
                f"{self.tenant}/v2.0", "iat": int(now), "exp": int(now) + self.lifetime,
                "preferred_username": self.user, "tid": self.tenant, "n": len(self.api_issued)})
            self.api_issued.append((now, token))
            return token, self.lifetime
        with self._lock:
            now = time.time()
            held = self._held
            if not held:
                answer = self.idp.token(self.user, scope=self.scope)
            elif held["expires"] - now < held["lifetime"] / 2:
                answer = self.idp.refresh(held["refresh_token"])
            else:
                answer = None
            if answer is not None:
                self.idp_calls += 1
                lifetime = int(answer["expires_in"])
                held.update(access_token=answer["access_token"],
                            refresh_token=answer["refresh_token"],
                            expires=now + lifetime, lifetime=lifetime)
            self.api_issued.append((now, held["access_token"]))
            return held["access_token"], max(1, int(held["expires"] - now))

    def tokens_issued(self) -> list[str]:
        return [token for _, token in self.api_issued]


@contextlib.contextmanager
def serve_entra_front(ca: CertificateAuthority, front: EntraFront) -> Iterator[EntraFront]:
    path = f"/{front.tenant}/oauth2/v2.0/token"

    class H(mfenv._Recorder):
        requests = front.requests

        def do_POST(self) -> None:
            req = self._record()
            f = req.form
            if req.path != path:
                self._reply(404, mfenv._entra_error("invalid_request", f"AADSTS90002: {req.path}"))
                return
            if (f.get("grant_type") != "client_credentials"
                    or f.get("client_id") != front.client_id
                    or f.get("client_assertion_type") != mfenv.JWT_BEARER
                    or f.get("client_assertion") != front.federated_token):
                self._reply(400, mfenv._entra_error("invalid_client", "AADSTS700016: bad client"))
                return
            scope = f.get("scope")
            if scope == mfenv.STORAGE_SCOPE:
                token, left = mfenv.storage_token(front.tenant, front.client_id), 3599
            elif scope == front.scope and not front.refuse_api:
                token, left = front.api_token()
            elif scope == front.scope:
                self._reply(400, mfenv._entra_error(
                    "invalid_grant", "AADSTS700024: Client assertion is not within its valid "
                                     "time range. Trace ID: 0\nCorrelation ID: 0"))
                return
            else:
                self._reply(400, mfenv._entra_error("invalid_scope", f"AADSTS70011: {scope}"))
                return
            self._reply(200, {"token_type": "Bearer", "expires_in": left,
                              "ext_expires_in": left, "access_token": token})

    with mfenv._serve(H, mfenv._server_context(ca, "entra-front")) as url:
        front.url = url
        yield front


# --- the metadata service -------------------------------------------------------------

Service = mfenv.MetadataService


def start_metadata_service(workdir: Path) -> Service:
    return mfenv.start_metadata_service(workdir)
