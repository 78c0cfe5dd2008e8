"""Entra ID's token endpoint for the local profile's Azurite (mfhelm chart).

Answers `POST /<tenant>/oauth2/v2.0/token`, the request azure-identity's
ClientAssertionCredential and WorkloadIdentityCredential send (form fields
grant_type=client_credentials, client_id, client_assertion_type
...:jwt-bearer, client_assertion, scope), for one tenant and one client whose
assertion must match. It returns an unsigned JWT shaped like Entra's v1
tokens for Azure Storage (aud https://storage.azure.com, iss
https://sts.windows.net/<tenant>/, nbf, exp): what Azurite's `--oauth basic`
checks. Not Entra: no signature, one client, local profile only.

Standard library only. Settings from the environment:
EMULATOR_TENANT_ID, EMULATOR_CLIENT_ID, EMULATOR_CLIENT_ASSERTION,
EMULATOR_TLS_CERT, EMULATOR_TLS_KEY (PEM files), EMULATOR_PORT (8443),
EMULATOR_TOKEN_LIFETIME (seconds, 3600), EMULATOR_HOST (0.0.0.0).
"""

import base64
import hmac
import json
import os
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
STORAGE_AUDIENCE = "https://storage.azure.com"
STORAGE_SCOPES = (STORAGE_AUDIENCE + "/.default", STORAGE_AUDIENCE + "//.default")
MAX_BODY = 64 * 1024


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def storage_token(tenant, client_id, lifetime, now=None):
    """An unsigned JWT with the claims Azurite's basic OAuth reads."""
    now = int(time.time() if now is None else now)
    claims = {
        "aud": STORAGE_AUDIENCE,
        "iss": f"https://sts.windows.net/{tenant}/",
        "iat": now - 60, "nbf": now - 60, "exp": now + lifetime,
        "tid": tenant, "appid": client_id, "oid": client_id, "sub": client_id,
        "ver": "1.0",
    }
    header = {"alg": "none", "typ": "JWT"}
    return ".".join([_b64url(json.dumps(header).encode()), _b64url(json.dumps(claims).encode()),
                     ""])


def _error(code, description):
    return {"error": code, "error_description": description, "error_codes": [0]}


def answer(settings, method, path, form):
    """(status, JSON body) for one request; pure, so it can be tested alone."""
    token_path = "/{}/oauth2/v2.0/token".format(settings["tenant"])
    if urlsplit(path).path != token_path:
        return 404, _error("invalid_request", f"AADSTS90002: no endpoint {path}")
    if method != "POST":
        return 405, _error("invalid_request", "AADSTS900561: use POST")
    problems = []
    if form.get("grant_type") != "client_credentials":
        problems.append("grant_type")
    if form.get("client_id") != settings["client_id"]:
        problems.append("client_id")
    if form.get("client_assertion_type") != JWT_BEARER:
        problems.append("client_assertion_type")
    if not hmac.compare_digest(form.get("client_assertion", "").encode(),
                               settings["assertion"].encode()):
        problems.append("client_assertion")
    if problems:
        unexpected = ", ".join(problems)
        return 401, _error("invalid_client", f"AADSTS700016: unexpected {unexpected}")
    if form.get("scope") not in STORAGE_SCOPES:
        return 400, _error("invalid_scope",
                           f"AADSTS70011: this emulator issues tokens for {STORAGE_SCOPES[0]} only")
    lifetime = settings["lifetime"]
    return 200, {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime,
                 "access_token": storage_token(settings["tenant"], settings["client_id"],
                                               lifetime)}


def settings_from_env(env):
    missing = [k for k in ("EMULATOR_TENANT_ID", "EMULATOR_CLIENT_ID",
                           "EMULATOR_CLIENT_ASSERTION", "EMULATOR_TLS_CERT",
                           "EMULATOR_TLS_KEY") if not env.get(k)]
    if missing:
        raise SystemExit("entra-emulator: missing {}".format(", ".join(missing)))
    return {
        "tenant": env["EMULATOR_TENANT_ID"],
        "client_id": env["EMULATOR_CLIENT_ID"],
        "assertion": env["EMULATOR_CLIENT_ASSERTION"],
        "cert": env["EMULATOR_TLS_CERT"],
        "key": env["EMULATOR_TLS_KEY"],
        "host": env.get("EMULATOR_HOST", "0.0.0.0"),
        "port": int(env.get("EMULATOR_PORT", "8443")),
        "lifetime": int(env.get("EMULATOR_TOKEN_LIFETIME", "3600")),
    }


def handler(settings):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 30

        def log_message(self, fmt, *args):
            # One line per request; form fields (the assertion) never logged.
            sys.stderr.write("entra-emulator %s\n" % (fmt % args))

        def _reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def _handle(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self.close_connection = True
                self._reply(413, _error("invalid_request", "request too large"))
                return
            body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
            form = {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}
            status, reply = answer(settings, self.command, self.path, form)
            self._reply(status, reply)

        do_POST = do_GET = do_PUT = do_DELETE = do_PATCH = _handle

    return Handler


class TLSServer(ThreadingHTTPServer):
    """The TLS handshake happens in each connection's own thread, with a
    timeout: a client that connects and says nothing (a TCP probe, a port
    scan) holds only its own thread."""

    daemon_threads = True

    def __init__(self, address, handler_class, context):
        super().__init__(address, handler_class)
        self.context = context

    def finish_request(self, request, client_address):
        request.settimeout(30)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except OSError:  # ssl.SSLError included: not TLS, or gone
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()


def serve(settings, ready=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(settings["cert"], settings["key"])
    server = TLSServer((settings["host"], settings["port"]), handler(settings), ctx)
    host, port, tenant = settings["host"], server.server_address[1], settings["tenant"]
    sys.stderr.write(f"entra-emulator listening on https://{host}:{port}/{tenant}/oauth2/v2.0/token\n")
    sys.stderr.flush()
    if ready is not None:
        ready(server)
    server.serve_forever()


if __name__ == "__main__":
    serve(settings_from_env(os.environ))
