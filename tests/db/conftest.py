"""The `postgres` fixture: a real PostgreSQL started once for the session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgserver import ADMIN, ADMIN_PASSWORD, Server
from pgserver import pg_bin as pg_bin_dir


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    pg_bin = pg_bin_dir()
    if pg_bin is None or not shutil.which("psql"):
        pytest.skip("PostgreSQL server not installed (Debian package postgresql)")
    # Not under pytest's temp dir: as root that is 0700, and the server runs
    # as another user.
    root = Path(tempfile.mkdtemp(prefix="mfhelm-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        os.chown(root, 65534, 65534)
        as_user = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    subprocess.run([*as_user, str(pg_bin / "initdb"), "-D", str(data), "-U", "pgsuper",
                    "--auth=trust"], check=True, capture_output=True)
    # Passwords are checked for everyone but the bootstrap superuser's socket.
    (data / "pg_hba.conf").write_text("local all pgsuper trust\n"
                                      "host all all 127.0.0.1/32 scram-sha-256\n")
    subprocess.run([*as_user, str(pg_bin / "pg_ctl"), "-D", str(data), "-l", str(root / "log"),
                    "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "-w", "start"],
                   check=True, capture_output=True)
    try:
        subprocess.run([str(pg_bin / "psql"), "-h", str(root), "-p", str(port), "-U", "pgsuper",
                        "-d", "postgres", "-qc",
                        f"CREATE ROLE {ADMIN} LOGIN CREATEROLE CREATEDB PASSWORD '{ADMIN_PASSWORD}'"],
                       check=True, capture_output=True)
        yield Server("127.0.0.1", port, pg_bin)
    finally:
        subprocess.run([*as_user, str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
