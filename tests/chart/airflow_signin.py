"""The real Airflow webserver (gunicorn, Airflow 2.10.5 with the FAB provider
the image ships; tools.toml pins both) as the chart sets it up behind the
sign-in proxy: the rendered webserver_config.py at $AIRFLOW_HOME (where the
Airflow chart 1.16.0 mounts webserverConfigConfigMapName), the base_url
mfhelm's values give it, Airflow's ProxyFix on (that chart's default
`config.webserver.enable_proxy_fix`), and the admin account our hook creates,
on a migrated SQLite database (only the webserver runs here).

Two paths reach it, as in the cluster:
- "through the proxy": a connection from a non-loopback address of this
  host, standing for the sign-in proxy's pod (the only peer the NetworkPolicy
  lets in);
- "break-glass": a connection over loopback, where `kubectl port-forward`
  arrives (containerd dials localhost inside the pod's network namespace).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from chartlib import get

AIRFLOW = shutil.which("airflow")


def host_address() -> str | None:
    """A non-loopback IPv4 address of this host (no packet is sent)."""
    for probe in ("192.0.2.1", "10.255.255.255", "8.8.8.8"):
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            addr = s.getsockname()[0]
            if not addr.startswith("127."):
                return addr
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


@dataclass
class Webserver:
    address: str   # host:port through "the proxy" (non-loopback peer)
    proxied: str   # base URL through "the proxy"
    local: str     # base URL over loopback (port-forward)
    db: Path
    log: Path

    def roles(self, username: str) -> list[str] | None:
        """The account's Airflow roles; None if there is no account."""
        with contextlib.closing(sqlite3.connect(self.db)) as con:
            rows = con.execute(
                "SELECT r.name FROM ab_user u LEFT JOIN ab_user_role ur ON ur.user_id = u.id "
                "LEFT JOIN ab_role r ON r.id = ur.role_id WHERE lower(u.username) = lower(?)",
                (username,)).fetchall()
        return None if not rows else sorted(r for (r,) in rows if r)

    def account(self, username: str) -> tuple[str, str] | None:
        """(first name, e-mail) of the account."""
        with contextlib.closing(sqlite3.connect(self.db)) as con:
            row = con.execute("SELECT first_name, email FROM ab_user WHERE username = ?",
                              (username,)).fetchone()
        return None if row is None else (row[0], row[1])

    def username_of(self, name: str) -> str | None:
        """The account shown as `name` (its preferred name or e-mail)."""
        with contextlib.closing(sqlite3.connect(self.db)) as con:
            rows = con.execute("SELECT username FROM ab_user WHERE first_name = ? OR email = ?",
                               (name, name)).fetchall()
        assert len(rows) <= 1, rows
        return rows[0][0] if rows else None


@contextlib.contextmanager
def running_webserver(objs: list[dict[str, Any]], values: dict[str, Any], root: Path,
                      admin_password: str, address: str) -> Iterator[Webserver]:
    """The webserver for the rendered chart `objs` (rendered from `values`)."""
    assert AIRFLOW, "airflow not on PATH"
    base_url = values["airflow"]["config"]["webserver"]["base_url"]
    home = root / "home"
    home.mkdir()
    cm = get(objs, "ConfigMap", values["airflow"]["webserver"]["webserverConfigConfigMapName"])
    (home / "webserver_config.py").write_text(cm["data"]["webserver_config.py"])
    scripts = root / "scripts"
    scripts.mkdir()
    (scripts / "airflow_admin.py").write_text(
        get(objs, "ConfigMap", "mf-airflow-admin")["data"]["airflow_admin.py"])
    env = {**os.environ, "AIRFLOW_HOME": str(home),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{root}/airflow.db",
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__WEBSERVER__BASE_URL": base_url,
           "AIRFLOW__WEBSERVER__ENABLE_PROXY_FIX": "True",
           "AIRFLOW__WEBSERVER__SECRET_KEY": secrets.token_hex(16)}
    proc = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    python = str(Path(os.path.realpath(AIRFLOW)).parent / "python")
    proc = subprocess.run([python, str(scripts / "airflow_admin.py")], capture_output=True,
                          text=True, timeout=300,
                          env={**env, "MFHELM_AIRFLOW_ADMIN_USER": "admin",
                               "MFHELM_AIRFLOW_ADMIN_PASSWORD": admin_password})
    assert proc.returncode == 0, proc.stderr[-2000:]
    port = _free_port()
    log = root / "webserver.log"
    with log.open("wb") as out:
        server = subprocess.Popen([AIRFLOW, "webserver", "--port", str(port), "--workers", "1"],
                                  env=env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
    path = "/" + base_url.split("/", 3)[3]
    ws = Webserver(f"{address}:{port}", f"http://{address}:{port}{path}",
                   f"http://127.0.0.1:{port}{path}", root / "airflow.db", log)
    try:
        deadline = time.monotonic() + 300
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{ws.local}/health", timeout=5).status_code == 200:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the webserver did not start:\n"
                                   + log.read_text(errors="replace")[-4000:])
            time.sleep(1)
        yield ws
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()
