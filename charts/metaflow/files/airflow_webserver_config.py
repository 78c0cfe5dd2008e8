# The Airflow webserver behind mfhelm's sign-in proxy. The chart renders this
# file after one line that defines MFHELM_SIGNIN (a JSON document: the Entra
# group object id -> Airflow role names map, the proxy's sign-out URL), and
# mounts it as $AIRFLOW_HOME/webserver_config.py, which Airflow executes when
# it builds its Flask app.
#
# Who a request is:
# - Through the proxy (any peer that is not loopback: the NetworkPolicy lets
#   only the proxy's pods reach the webserver port), the proxy's
#   X-Forwarded-User / -Email / -Groups headers are the identity. The proxy
#   strips every client-sent copy before it sets them. The user's Airflow
#   roles are recomputed from the groups on the first request of a session
#   and whenever the groups change; a user in no mapped group gets 403. The
#   password form is refused on this path.
# - Over loopback (`kubectl port-forward` connects from inside the pod's
#   network namespace to localhost), the forwarded headers are ignored and
#   Airflow's own password login works as before: the break-glass path for
#   the admin account mfhelm generated.
#
# Accounts made here carry a password hash no password matches, so they can
# never log in with the form, and a signed-in name never takes over an
# account that has a password (the admin).
import hashlib
import ipaddress
import json

from airflow.providers.fab.auth_manager.security_manager.override import (
    FabAirflowSecurityManagerOverride,
)
from flask import make_response, redirect, request, session
from flask_appbuilder.const import AUTH_DB
from flask_login import current_user, login_user, logout_user
from markupsafe import escape

# Airflow's own password database stays the login form (break-glass).
AUTH_TYPE = AUTH_DB
WTF_CSRF_ENABLED = True
WTF_CSRF_TIME_LIMIT = None
# No self-registration form: with AUTH_DB it would let anyone create an account.
AUTH_USER_REGISTRATION = False
# Group object id -> Airflow roles; a user gets the union for their groups.
AUTH_ROLES_MAPPING = {
    str(group): [str(role) for role in roles]
    for group, roles in MFHELM_SIGNIN["rolesByGroup"].items()  # noqa: F821
}
AUTH_ROLES_SYNC_AT_LOGIN = True
# Airflow's session cookie only under its own path on the shared host.
SESSION_COOKIE_PATH = str(MFHELM_SIGNIN["cookiePath"])  # noqa: F821

_SIGN_OUT_URL = str(MFHELM_SIGNIN["signOutUrl"])  # noqa: F821
# Not a werkzeug hash (it needs two '$'): check_password_hash is False for any password.
_NO_PASSWORD = "!signed-in-through-the-proxy"
_SESSION_KEY = "mfhelm_signin"


def _peer() -> str:
    """The TCP peer, before Airflow's ProxyFix (enable_proxy_fix) rewrote
    REMOTE_ADDR from a client-controlled X-Forwarded-For."""
    env = request.environ
    orig = env.get("werkzeug.proxy_fix.orig") or {}
    return orig.get("REMOTE_ADDR") or env.get("REMOTE_ADDR") or ""


def _through_proxy() -> bool:
    try:
        addr = ipaddress.ip_address(_peer().split("%", 1)[0])
    except ValueError:
        return False  # not an IP peer (a unix socket): never trust headers
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return not addr.is_loopback


def _identity() -> dict | None:
    headers = request.headers
    name = headers.get("X-Forwarded-Preferred-Username", "").strip()
    email = headers.get("X-Forwarded-Email", "").strip()
    # oauth2-proxy puts the user id in the e-mail header when a token (a
    # laptop's access token) has no e-mail claim: only an address counts.
    email = email if "@" in email else ""
    user = headers.get("X-Forwarded-User", "").strip() or name or email
    if not user:
        return None
    listed = headers.get("X-Forwarded-Groups", "").split(",")
    groups = sorted({g.strip() for g in listed} - {""})
    return {"user": user, "email": email, "name": name, "groups": groups}


def _forbidden(identity: dict, why: str):
    # The readable name (on Entra the user header is an opaque id).
    who = identity["name"] or identity["user"]
    if identity["email"] and identity["email"] != who:
        who += f" ({identity['email']})"
    body = (
        "<!doctype html><title>403 Forbidden</title><h1>Forbidden</h1>"
        f"<p>You are signed in as <b>{escape(who)}</b>: {escape(why)}.</p>"
        f'<p><a href="{escape(_SIGN_OUT_URL)}">Sign out</a></p>'
    )
    resp = make_response(body, 403)
    resp.headers["Content-Type"] = "text/html; charset=utf-8"
    return resp


class SigninSecurityManager(FabAirflowSecurityManagerOverride):
    """Signs in the proxy's user before every request (FAB registers this
    before_request hook on the app)."""

    def before_request(self):
        response = self._signin()
        super().before_request()
        return response

    def _signin(self):
        if not _through_proxy():
            return None
        endpoint = request.endpoint or ""
        if endpoint == f"{self.auth_view.endpoint}.login" and request.method == "POST":
            logout_user()
            return make_response("Password sign-in is only for the break-glass path "
                                 "(kubectl port-forward to the webserver).\n", 403)
        identity = _identity()
        if identity is None:
            # Only the probes reach the webserver without the proxy's headers.
            if current_user.is_authenticated:
                logout_user()
            session.pop(_SESSION_KEY, None)
            return None
        if endpoint == f"{self.auth_view.endpoint}.logout":
            logout_user()
            session.pop(_SESSION_KEY, None)
            return redirect(_SIGN_OUT_URL)
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        if (current_user.is_authenticated and session.get(_SESSION_KEY) == digest
                and current_user.username == identity["user"]):
            return None
        logout_user()
        session.pop(_SESSION_KEY, None)
        user, why = self._sync_user(identity)
        if user is None:
            return _forbidden(identity, why)
        self._rotate_session_id()
        login_user(user, remember=False)
        self.update_user_auth_stat(user)
        session[_SESSION_KEY] = digest
        return None

    def _sync_user(self, identity: dict):
        roles = sorted(self.get_roles_from_keys(identity["groups"]), key=lambda r: r.name)
        user = self.find_user(username=identity["user"])
        if user is not None and user.password != _NO_PASSWORD:
            return None, "that name belongs to an Airflow account with a password"
        if not roles:
            if user is not None and user.roles:
                user.roles = []
                self.update_user(user)
            return None, "you are in none of the groups that may use Airflow"
        email = identity["email"] or (user.email if user is not None else "") \
            or f"{identity['user']}@signin.invalid"
        # What Airflow shows (and its audit log records beside the username).
        display = identity["name"] or identity["email"] or identity["user"]
        if user is None:
            user = self.add_user(
                username=identity["user"],
                first_name=display,
                last_name="",
                email=email,
                role=roles,
                hashed_password=_NO_PASSWORD,
            )
            if not user:
                return None, "Airflow could not create your account (is your e-mail address " \
                             "used by another Airflow account?)"
            return user, ""
        if not user.is_active:
            return None, "your Airflow account is deactivated"
        user.roles = roles
        user.email = email
        user.first_name = display
        if not self.update_user(user):
            return None, "Airflow could not update your account"
        return user, ""


SECURITY_MANAGER_CLASS = SigninSecurityManager
