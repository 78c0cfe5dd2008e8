"""The real sign-in parts the access tests run, as plain helpers.

- `Idp`: the test OpenID provider (tools.toml [gobuild.oidc-server]: zitadel's
  OIDC library, tests/tools/gobuild/oidc-server) on 127.0.0.1, with users and
  groups from a file, issuing Entra-shaped tokens (`tid`, `oid`, `groups`;
  JWT access tokens with aud = the client id; refresh tokens). `token()` is
  what a laptop holds after `az login`: it drives the authorization code flow
  over HTTP (the provider's own login form), no browser.
- `Proxy`: oauth2-proxy (tools.toml [go.oauth2-proxy]) started with given args.
- `Upstream`: a local HTTP server standing in for the backends behind the
  proxy: every path and method answers with the request headers (and body)
  it got, as JSON or, to a browser, an HTML page; /api/ws is a WebSocket that
  greets with the X-Forwarded-User it got and echoes what it is sent.

tests/access/conftest.py makes fixtures of them; test files in tests/access
import this module by name (pytest puts their directory on sys.path).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import importlib.util
import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class ToolUnavailable(Exception):
    """A tool is not cached and cannot be built or installed here."""


def installer() -> ModuleType:
    path = ROOT / "tests" / "tools" / "install.py"
    spec = importlib.util.spec_from_file_location("mfhelm_tools_install", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tool_binary(name: str) -> Path:
    """The cached binary of tools.toml tool `name`, built with Go if missing.

    A failed build raises (a bug to see); no Go to build with raises
    ToolUnavailable (the tests skip)."""
    inst = installer()
    kind, entry = inst.tool_entries(inst.load_manifest())[name]
    home = inst.tool_home(name, entry)
    if not inst.is_complete(home, entry):
        if shutil.which("go") is None:
            raise ToolUnavailable(
                f"{name} {entry['version']} is not built and `go` is missing; run "
                f"`python3 tests/tools/install.py --only {name}` where Go exists")
        home = inst.install(name, kind, entry)
    return home / "bin" / entry["binaries"][0]


def browser_packages_missing() -> list[str]:
    """[debian] packages (Chromium, its driver) not installed here."""
    inst = installer()
    return list(inst.missing_debian_packages(inst.load_manifest()))


def browser_binaries() -> tuple[str, str]:
    """Chromium's and its WebDriver's paths, as tools.toml [debian] has them."""
    paths = installer().load_manifest()["debian"]["binaries"]
    return paths["chromium"], paths["chromium-driver"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def jwt_claims(token: str) -> dict[str, Any]:
    """A JWT's payload, unverified (the proxy verifies; tests only read)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


@dataclass
class Response:
    status: int
    headers: Any
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


def http(url: str, *, data: dict[str, str] | None = None, headers: dict[str, str] | None = None,
         method: str | None = None, timeout: float = 10) -> Response:
    """One request, redirects not followed (their Location is the test's)."""
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with _opener.open(req, timeout=timeout) as resp:
            return Response(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.headers, exc.read())


def wait_for(url: str, proc: subprocess.Popen, what: str, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            if http(url, timeout=2).status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready at {url} after {timeout}s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the OpenID provider -----------------------------------------------------

@dataclass
class User:
    name: str           # the sign-in name: also email and preferred_username
    password: str
    groups: list[str]   # group object ids
    oid: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class Idp:
    issuer: str
    client_id: str
    client_secret: str
    tenant: str
    users: dict[str, User]      # by name
    groups: dict[str, str]      # group name -> object id
    proc: subprocess.Popen
    log: Path

    @property
    def redirect_uri(self) -> str:
        # Where token() says the code goes; never served (the flow stops at
        # the redirect). Any 127.0.0.1 URL is allowed by the client's globs.
        return "http://127.0.0.1:1/laptop/callback"

    def _client_auth(self) -> dict[str, str]:
        pair = f"{self.client_id}:{self.client_secret}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}

    def token(self, user: str, scope: str = "") -> dict[str, Any]:
        """What a laptop holds for `user` after signing in: the token
        endpoint's answer (access_token, a JWT with aud = the client id;
        refresh_token; id_token; expires_in), got through the authorization
        code flow with PKCE, the provider's login form posted over HTTP.
        `scope` adds to "openid profile email offline_access", e.g.
        f"api://{idp.client_id}/.default" (then `scp` is user_impersonation)."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(
            hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        query = urllib.parse.urlencode({
            "client_id": self.client_id, "redirect_uri": self.redirect_uri,
            "response_type": "code", "state": secrets.token_urlsafe(8),
            "scope": " ".join(["openid profile email offline_access", scope]).strip(),
            "code_challenge": challenge, "code_challenge_method": "S256",
        })
        resp = http(f"{self.issuer}/auth?{query}")
        login = urllib.parse.urljoin(self.issuer, _location(resp, "/auth"))
        request_id = urllib.parse.parse_qs(urllib.parse.urlparse(login).query)["authRequestID"][0]
        resp = http(f"{self.issuer}/login/username", data={
            "id": request_id, "username": user, "password": self.users[user].password})
        callback = urllib.parse.urljoin(self.issuer, _location(resp, "the login form"))
        resp = http(callback)
        code = urllib.parse.parse_qs(
            urllib.parse.urlparse(_location(resp, "the auth callback")).query)["code"][0]
        return self._token_request({"grant_type": "authorization_code", "code": code,
                                    "redirect_uri": self.redirect_uri,
                                    "code_verifier": verifier})

    def refresh(self, refresh_token: str) -> dict[str, Any]:
        """The refresh grant: a new access token and a new refresh token (the
        old one is spent)."""
        return self._token_request({"grant_type": "refresh_token",
                                    "refresh_token": refresh_token})

    def _token_request(self, form: dict[str, str]) -> dict[str, Any]:
        resp = http(f"{self.issuer}/oauth/token", data=form, headers=self._client_auth())
        if resp.status != 200:
            raise RuntimeError(f"token endpoint said {resp.status}: {resp.text}")
        return resp.json()


def _location(resp: Response, step: str) -> str:
    if resp.status not in (302, 303) or not resp.headers.get("Location"):
        raise RuntimeError(f"{step}: expected a redirect, got {resp.status}: {resp.text[:500]}")
    return str(resp.headers["Location"])


class WorkloadIdentity:
    """An AKS cluster's OIDC issuer in miniature: an RSA key, its JWKS, and
    service-account tokens like the ones the workload-identity webhook
    projects into a pod (audience api://AzureADTokenExchange)."""

    def __init__(self, workdir: Path) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.issuer = f"https://oidc.aks.test/{uuid.uuid4()}/"
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = secrets.token_hex(8)
        numbers = self._key.public_key().public_numbers()
        self.jwks = workdir / "aks-jwks.json"
        self.jwks.write_text(json.dumps({"keys": [{
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": self._kid,
            "n": _b64int(numbers.n), "e": _b64int(numbers.e)}]}))
        self.workdir = workdir

    def token_file(self, subject: str, audience: str = "api://AzureADTokenExchange",
                   lifetime: int = 3600) -> Path:
        """A projected service-account token for `subject`
        (system:serviceaccount:<namespace>:<name>), written to a file."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        now = int(time.time())
        header = {"alg": "RS256", "kid": self._kid, "typ": "JWT"}
        claims = {"iss": self.issuer, "sub": subject, "aud": [audience],
                  "iat": now, "nbf": now, "exp": now + lifetime}
        signing_input = ".".join(_b64json(part) for part in (header, claims))
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        path = self.workdir / f"sa-token-{secrets.token_hex(4)}"
        path.write_text(signing_input + "." + _b64(signature))
        return path


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64json(obj: Any) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


def _b64int(n: int) -> str:
    return _b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def start_idp(binary: Path, workdir: Path, users: dict[str, list[str]],
              groups: list[str], *, access_token_ttl: str = "5m",
              federated: tuple[WorkloadIdentity, str] | None = None) -> Idp:
    """Start the provider with `users` (name -> group names) in `groups`.

    Every user's password is random; group ids and the tenant id are fresh
    GUIDs, as Entra's are. `federated` = (cluster issuer, subject) gives the
    client a federated credential: the token endpoint then also accepts that
    subject's service-account token as the client's assertion."""
    workdir.mkdir(parents=True, exist_ok=True)
    group_ids = {g: str(uuid.uuid4()) for g in groups}
    people = {name: User(name=name, password=secrets.token_urlsafe(12),
                         groups=[group_ids[g] for g in member_of])
              for name, member_of in users.items()}
    tenant = str(uuid.uuid4())
    users_file = workdir / "users.json"
    users_file.write_text(json.dumps({"tenant": tenant, "users": [
        {"username": u.name, "password": u.password, "name": u.name.split("@")[0].title(),
         "oid": u.oid, "groups": u.groups} for u in people.values()]}))
    client_id, client_secret = str(uuid.uuid4()), secrets.token_urlsafe(24)
    federation: list[str] = []
    if federated:
        cluster, subject = federated
        federation = ["-federated-issuer", cluster.issuer, "-federated-subject", subject,
                      "-federated-jwks", str(cluster.jwks)]
    log = workdir / "oidc-server.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [str(binary), "-users", str(users_file), "-client-id", client_id,
             "-client-secret", client_secret, "-access-token-ttl", access_token_ttl,
             "-redirect-uri", "http://127.0.0.1:*/**", *federation],
            stdout=subprocess.PIPE, stderr=err)
    assert proc.stdout is not None
    issuer = proc.stdout.readline().decode().strip()
    if not issuer.startswith("http://127.0.0.1:"):
        stop(proc)
        raise RuntimeError(f"oidc-server did not start:\n{log.read_text()[-3000:]}")
    wait_for(f"{issuer}/.well-known/openid-configuration", proc, "oidc-server", log)
    return Idp(issuer=issuer, client_id=client_id, client_secret=client_secret, tenant=tenant,
               users=people, groups=group_ids, proc=proc, log=log)


# --- oauth2-proxy --------------------------------------------------------------

def oidc_proxy_args(idp: Idp) -> list[str]:
    """The flags that point oauth2-proxy's generic `oidc` provider at `idp`
    (the local profile's configuration), plain HTTP: no Secure cookies."""
    return [
        "--provider=oidc",
        f"--oidc-issuer-url={idp.issuer}",
        f"--client-id={idp.client_id}",
        f"--client-secret={idp.client_secret}",
        "--cookie-secure=false",
    ]


@dataclass
class Proxy:
    url: str
    proc: subprocess.Popen
    log: Path


def start_proxy(binary: Path, workdir: Path, args: list[str],
                env: dict[str, str] | None = None, port: int | None = None) -> Proxy:
    """oauth2-proxy on 127.0.0.1:`port` (default: a free one) with `args`.

    Added unless given: --http-address (that port; not with --alpha-config,
    whose file has the address), --redirect-url (its /oauth2/callback),
    --cookie-secret (random; not with --cookie-secret-file). Returns once
    /ping answers."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    given = {a.split("=", 1)[0] for a in args}
    extra = []
    if not given & {"--http-address", "--alpha-config"}:
        extra.append(f"--http-address=127.0.0.1:{port}")
    if "--redirect-url" not in given:
        extra.append(f"--redirect-url={url}/oauth2/callback")
    if not given & {"--cookie-secret", "--cookie-secret-file"}:
        extra.append("--cookie-secret=" + base64.urlsafe_b64encode(os.urandom(32)).decode())
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"oauth2-proxy-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(binary), *args, *extra], stdout=out,
                                stderr=subprocess.STDOUT,
                                env={"PATH": os.environ.get("PATH", ""), **(env or {})})
    wait_for(f"{url}/ping", proc, "oauth2-proxy", log)
    return Proxy(url=url, proc=proc, log=log)


# --- the upstream behind the proxy --------------------------------------------

_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.path, dict(self.headers.items())))  # type: ignore[attr-defined]
        if self.path.split("?")[0] == "/api/ws":
            self._websocket()
            return
        headers = dict(self.headers.items())
        # Read what was sent (the connection is kept alive) and echo it.
        sent = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if "text/html" in self.headers.get("Accept", ""):
            body = _PAGE.format(path=html.escape(self.path),
                                headers=html.escape(json.dumps(headers, indent=1))).encode()
            ctype = "text/html; charset=utf-8"
        else:
            body = json.dumps({"method": self.command, "path": self.path, "headers": headers,
                               "body": sent.decode("utf-8", "replace")}).encode()
            ctype = "application/json"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _websocket(self) -> None:
        key = self.headers.get("Sec-WebSocket-Key")
        if self.headers.get("Upgrade", "").lower() != "websocket" or not key:
            self.send_error(400, "WebSocket upgrade expected")
            return
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        user = self.headers.get("X-Forwarded-User", "")
        _ws_send(self.wfile, f"hello {user}")
        message = _ws_recv(self.rfile)
        if message is not None:
            _ws_send(self.wfile, f"echo {message}")
        self.close_connection = True


def _ws_send(out: Any, text: str) -> None:
    data = text.encode()
    assert len(data) < 126
    out.write(bytes([0x81, len(data)]) + data)
    out.flush()


def _ws_recv(rfile: Any) -> str | None:
    """One masked text frame from a client (short ones only), or None."""
    head = rfile.read(2)
    if len(head) < 2 or head[0] & 0x0F != 0x1:
        return None
    length = head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(rfile.read(2), "big")
    mask = rfile.read(4)
    payload = rfile.read(length)
    return bytes(b ^ mask[i % 4] for i, b in enumerate(payload)).decode()


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>upstream {path}</title>
<link rel="icon" href="data:,"></head>
<body><h1>behind the proxy</h1>
<pre id="headers">{headers}</pre>
<pre id="ws"></pre>
<script>
function openSocket() {{
  const out = document.getElementById("ws");
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://")
                           + location.host + "/api/ws");
  ws.onopen = () => ws.send("ping");
  ws.onmessage = (e) => {{ out.textContent += e.data + "\\n"; }};
  ws.onerror = () => {{ out.textContent += "error\\n"; }};
}}
</script></body></html>
"""


class Upstream:
    """The backends' stand-in: ThreadingHTTPServer on a free 127.0.0.1 port;
    `requests` lists (path, headers) of every request it got."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.requests = []  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def requests(self) -> list[tuple[str, dict[str, str]]]:
        return self.server.requests  # type: ignore[attr-defined]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the browser -------------------------------------------------------------

def browser_sign_in(driver: Any, idp: Idp, user: str, url: str, timeout: float = 20) -> None:
    """Open `url` (behind the proxy) in `driver`, fill the provider's login
    form when the redirect lands there, and wait until the browser is back on
    the proxy's host (the page behind it, or the proxy's own error page)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, timeout)
    wait.until(lambda d: d.current_url.startswith(f"{idp.issuer}/login/"))
    driver.find_element(By.ID, "username").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(idp.users[user].password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    origin = "/".join(url.split("/")[:3])
    wait.until(lambda d: d.current_url.startswith(origin + "/")
               and d.execute_script("return document.readyState") == "complete")
