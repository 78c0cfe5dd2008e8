"""A fresh Entra access token on every request Metaflow sends to its service.

Where Metaflow's headers come from (metaflow 2.19.39, pinned in tests):
`metaflow_config.SERVICE_HEADERS` is one dict, read once at import; the
service metadata provider sends `SERVICE_HEADERS.copy()` with every GET, POST
and PATCH (`plugins/metadata_providers/service.py`) and so does the heartbeat
sidecar (`metadata_provider/heartbeat.py`). `BearerHeaders` is that dict with
a `copy()` that adds `Authorization: Bearer <token>`, the token asked of an
azure-identity credential and kept in this process's memory only, renewed
shortly before it expires. The dict itself holds no token, so what Metaflow
serializes from it (`json.dumps(SERVICE_HEADERS)` into Kubernetes and Argo pod
specs, `headers.update(SERVICE_HEADERS)` for Argo Events) carries none.

The proxy's answers are read by a response hook on the provider's
`requests.Session`: a 401 gets one retry if the credential now gives another
token (clocks differ), then a 401,
403 or a redirect to the sign-in page becomes a one-line error naming the fix.
The error is a MetaflowInternalError, the one kind the provider's retry loop
passes straight through.

This module is copied into code packages and runs in flow pods, whose
Python may be older than mfhelm's: standard library only at import time.
"""

import base64
import importlib
import json
import sys
import threading
import time

SCOPE_CONFIG = "METAFLOW_MFHELM_SERVICE_SCOPE"
CREDENTIAL_CONFIG = "METAFLOW_MFHELM_SERVICE_CREDENTIAL"
SERVICE_MODULE = "metaflow.plugins.metadata_providers.service"
# A token is renewed when less than this much of its life is left (or a quarter
# of its lifetime, for short-lived ones).
RENEW_BEFORE = 120.0


def service_headers(base, scope=None, credential=None, service_url=None):
    """Metaflow's SERVICE_HEADERS: `base` as is when no scope is configured."""
    if not scope:
        return base
    return BearerHeaders(base, ServiceToken(scope, credential, service_url))


class BearerHeaders(dict):
    """The service headers; each copy() carries a current bearer token."""

    def __init__(self, base, token):
        super().__init__(base)
        self.token = token

    def copy(self):
        headers = dict(self)
        self.token.watch_responses()
        value = self.token.get()
        if value:
            headers["Authorization"] = "Bearer " + value
        return headers

    # copy.copy/deepcopy/pickle see the plain headers, never the token holder.
    def __reduce__(self):
        return (dict, (dict(self),))


def _first_line(text):
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _reason(exc):
    """One line of a credential's failure. DefaultAzureCredential lists every
    credential it tried: Entra's own answer (AADSTS...) or the Azure CLI's
    hint says more than its headline."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for marker in ("AADSTS", "az login"):
        for line in lines:
            if marker in line:
                return line.split(" Trace ID:")[0]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _load_credential(spec):
    """azure-identity's DefaultAzureCredential, or `module:callable` from the config."""
    if not spec:
        try:
            from azure.identity import DefaultAzureCredential
        except ImportError:
            raise SignInProblem("azure-identity is not installed in this Python environment: "
                                "pip install azure-identity") from None
        return DefaultAzureCredential()
    module, _, attr = str(spec).partition(":")
    if not module or not attr:
        raise SignInProblem(f"{CREDENTIAL_CONFIG}={spec!r}: expected module:callable, e.g. "
                            "azure.identity:AzureCliCredential")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise SignInProblem(f"{CREDENTIAL_CONFIG}={spec!r}: {_first_line(exc)}") from None
    credential = factory()
    if not callable(getattr(credential, "get_token", None)):
        raise SignInProblem(f"{CREDENTIAL_CONFIG}={spec!r}: {credential!r} has no get_token()")
    return credential


class SignInProblem(Exception):
    """Why there is no token (kept until a request needs explaining)."""


def _claims(token):
    """A JWT's claims, for messages only (the proxy verifies them)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except Exception:
        return {}
    return claims if isinstance(claims, dict) else {}


def _who(claims):
    for key in ("preferred_username", "upn", "unique_name", "email", "oid", "sub"):
        if claims.get(key):
            return str(claims[key])
    return None


_ERROR_CLASS = None


def sign_in_error(message):
    """A MetaflowInternalError (the provider re-raises those at once, without retries)."""
    global _ERROR_CLASS
    if _ERROR_CLASS is None:
        from metaflow.exception import MetaflowInternalError

        class ServiceSignInError(MetaflowInternalError):
            headline = "Metaflow service sign-in"

        _ERROR_CLASS = ServiceSignInError
    return _ERROR_CLASS(message)


class ServiceToken:
    """One access token for `scope`, in memory, asked of the credential when due."""

    def __init__(self, scope, credential=None, service_url=None, clock=time.time):
        self.scope = scope
        self.credential_spec = credential
        self.service_url = (service_url or "").rstrip("/")
        self.clock = clock
        self.credential = None
        self.value = None
        self.expires_on = 0.0
        self.renew_before = RENEW_BEFORE
        self.problem = None
        self.asked = 0
        self._lock = threading.Lock()
        self._watched = []

    def get(self, force=False):
        """The current token, or None (the reason in `problem`) when none could be had."""
        with self._lock:
            now = self.clock()
            if not force and self.value and self.expires_on - now > self.renew_before:
                return self.value
            self.asked += 1
            try:
                if self.credential is None:
                    self.credential = _load_credential(self.credential_spec)
                token = self.credential.get_token(self.scope)
            except Exception as exc:  # the credential's own failure, explained on use
                self.value, self.expires_on = None, 0.0
                self.problem = _reason(exc)
                return None
            self.value, self.expires_on = token.token, float(token.expires_on)
            self.renew_before = min(RENEW_BEFORE, max(0.0, (self.expires_on - now) / 4))
            self.problem = None
            return self.value

    def watch_responses(self):
        """Add the response hook to the service provider's session, once it exists."""
        module = sys.modules.get(SERVICE_MODULE)
        provider = getattr(module, "ServiceMetadataProvider", None)
        session = getattr(provider, "_session", None)
        if session is None or any(s is session for s in self._watched):
            return
        with self._lock:
            if not any(s is session for s in self._watched):
                session.hooks.setdefault("response", []).append(self.on_response)
                self._watched.append(session)

    def _ours(self, url):
        return bool(self.service_url) and (url == self.service_url
                                           or url.startswith(self.service_url + "/"))

    def on_response(self, response, *args, **kwargs):
        request = response.request
        if not self._ours(request.url):
            return None
        status = response.status_code
        sent = (request.headers.get("Authorization") or "")[len("Bearer "):]
        # oauth2-proxy answers an expired bearer token with 403, like an outsider's.
        if status in (401, 403) and sent and not getattr(request, "mfhelm_retried", False):
            # Renewed early: our clock and the proxy's may differ. Only a different
            # token is worth a second try (the credential may hand back its cached one).
            token = self.get(force=True)
            if token and token != sent:
                retry = request.copy()
                retry.headers["Authorization"] = "Bearer " + token
                retry.mfhelm_retried = True
                response.close()  # back to the pool; its body is not needed
                again = response.connection.send(retry, **kwargs)
                again.history.append(response)
                again.request = retry
                return self.on_response(again, *args, **kwargs) or again
        if status in (401, 403) or (response.is_redirect and not self._ours(
                response.headers.get("Location", ""))):
            raise sign_in_error(self.explain(status, sent, response.headers.get("Location")))
        return None

    def explain(self, status, sent, location=None):
        where = self.service_url
        if not sent:
            why = self.problem or "the credential gave no token"
            return (f"no Entra token for {where} ({why}): run `az login` (in the deployment's "
                    "tenant) and retry")
        claims = _claims(sent)
        who = _who(claims)
        as_who = f" as {who}" if who else ""
        expires = claims.get("exp")
        if isinstance(expires, (int, float)) and expires <= time.time():
            return (f"{where} refused your Entra token{as_who} ({status}): it had expired and "
                    "no newer one came from the credential: run `az login` and retry")
        if status == 403:
            return (f"{where} refused you{as_who} (403): you are not in a group allowed in; ask "
                    "the platform team to run `mfhelm grant --group <your team's group>`")
        if location:
            return (f"{where} sent you{as_who} to its sign-in page ({location}) instead of taking "
                    "your token: it must accept bearer tokens (--skip-jwt-bearer-tokens)")
        return (f"{where} did not accept your Entra token{as_who} (401) for {self.scope}: run "
                "`az login` (in the deployment's tenant) and retry; if it persists, re-run "
                "`mfhelm config`")
