"""A real PostgreSQL from Debian's packages for the tests (see conftest.py).

The admin is shaped like Azure Flexible Server's: a login with CREATEROLE and
CREATEDB that is not a superuser, owning the databases it creates. As root,
initdb and the server run as `nobody` (PostgreSQL refuses root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ADMIN, ADMIN_PASSWORD = "mfadmin", "Admin-Only-pw-7319"


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    bin: Path

    def env(self, user: str, password: str, database: str = "postgres") -> dict[str, str]:
        return {**os.environ, "PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": user,
                "PGPASSWORD": password, "PGDATABASE": database, "PGSSLMODE": "disable"}

    def psql(self, user: str, password: str, database: str, sql: str,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "psql"), "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql],
            env=self.env(user, password, database), capture_output=True, text=True, check=check)




@contextlib.contextmanager
def running_server() -> Iterator[Server]:
    """A fresh server on a free loopback port, with the Flexible-Server-shaped
    admin; stopped and removed on exit. Needs pg_bin() (the caller skips)."""
    bindir = pg_bin()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server not installed (Debian package postgresql)")
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
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "pgsuper",
                        "--auth=trust"], check=True, capture_output=True)
        # Passwords are checked for everyone but the bootstrap superuser's socket.
        (data / "pg_hba.conf").write_text("local all pgsuper trust\n"
                                          "host all all 127.0.0.1/32 scram-sha-256\n")
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l",
                        str(root / "log"), "-o",
                        f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "-w", "start"],
                       check=True, capture_output=True)
        subprocess.run([str(bindir / "psql"), "-h", str(root), "-p", str(port), "-U", "pgsuper",
                        "-d", "postgres", "-qc",
                        f"CREATE ROLE {ADMIN} LOGIN CREATEROLE CREATEDB "
                        f"PASSWORD '{ADMIN_PASSWORD}'"],
                       check=True, capture_output=True)
        yield Server("127.0.0.1", port, bindir)
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
