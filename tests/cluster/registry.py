"""A real OCI registry on 127.0.0.1: the CNCF distribution registry at the
version tools.toml [go.registry] pins, started by the tests.

Two shapes: TLS with a certificate from a test CA (tests/cluster/pki.py) and
htpasswd auth, as a company registry would be; and plain HTTP without auth,
for `--plain-http`. Facts of registry v3.1.2 this relies on (read in its
source, checked by the tests): `registry serve CONFIG` reads a YAML config;
an htpasswd file that does not exist is created with one user, `docker`,
whose random password is logged (level warning, fields `user` and
`password`); `/v2/` answers 200, or 401 with auth on, once it serves.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .controlplane import ensure_tool, free_port, stop_group
from .pki import CertificateAuthority

PROVISIONED_USER = "docker"
PROVISIONED_MSG = "htpasswd is missing, provisioning with default user"


def registry_binary() -> Path:
    """The pinned registry (built with Go on first use; ToolchainMissing without Go)."""
    home, _entry = ensure_tool("registry", "the OCI registry tests")
    return home / "bin" / "registry"


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    proc: subprocess.Popen[bytes]
    log: Path
    ca: CertificateAuthority | None
    username: str | None = None
    password: str | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.ca else "http"

    def ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.ca.pair.cert)) if self.ca else None

    def get(self, path: str, accept: str = "application/json") -> Any:
        """GET on the registry API (with basic auth when it has a user), as JSON."""
        req = urllib.request.Request(f"{self.scheme}://{self.host}{path}",
                                     headers={"Accept": accept})
        if self.username:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=10, context=self.ssl_context()) as resp:
            return json.loads(resp.read())

    def tags(self, repository: str) -> list[str]:
        try:
            return list(self.get(f"/v2/{repository}/tags/list").get("tags") or [])
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # NAME_UNKNOWN: nothing pushed there yet
                return []
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_group(self.proc, grace=10)


def start_registry(workdir: Path, *, ca: CertificateAuthority | None = None,
                   auth: bool = False) -> Registry:
    """Start a registry storing into workdir; TLS when `ca` is given."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    http: dict[str, Any] = {"addr": f"127.0.0.1:{port}", "secret": os.urandom(16).hex()}
    if ca is not None:
        pair = ca.issue("registry", "127.0.0.1", server_ips=("127.0.0.1",),
                        server_names=("localhost",), client=False)
        http["tls"] = {"certificate": str(pair.cert), "key": str(pair.key)}
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "json"},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "data")},
                    "delete": {"enabled": True}},
        "http": http,
    }
    if auth:
        config["auth"] = {"htpasswd": {"realm": "mfhelm-test",
                                       "path": str(workdir / "htpasswd")}}
    (workdir / "config.yml").write_text(yaml.safe_dump(config))
    log = workdir / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(registry_binary()), "serve", str(workdir / "config.yml")],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    reg = Registry(f"127.0.0.1:{port}", proc, log, ca)
    try:
        _wait_serving(reg)
        if auth:
            reg.username, reg.password = _provisioned_user(log)
    except BaseException:
        reg.stop()
        raise
    return reg


def _wait_serving(reg: Registry, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if reg.proc.poll() is not None:
            tail = reg.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"registry exited {reg.proc.returncode}:\n{tail}")
        try:
            urllib.request.urlopen(f"{reg.scheme}://{reg.host}/v2/", timeout=2,
                                   context=reg.ssl_context()).close()
            return
        except urllib.error.HTTPError as exc:
            if exc.code == 401:  # serving, and asking for credentials
                return
            last = exc
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"registry on {reg.host} did not serve in {timeout:.0f}s: {last}")


def _provisioned_user(log: Path) -> tuple[str, str]:
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == PROVISIONED_MSG:
            return str(entry["user"]), str(entry["password"])
    raise RuntimeError(f"the registry logged no provisioned user ({PROVISIONED_MSG!r}) in {log}")
