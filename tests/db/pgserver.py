"""A real PostgreSQL from Debian's packages for the tests (see conftest.py).

The admin is shaped like Azure Flexible Server's: a login with CREATEROLE and
CREATEDB that is not a superuser, owning the databases it creates. As root,
initdb and the server run as `nobody` (PostgreSQL refuses root).
"""

from __future__ import annotations

import glob
import os
import subprocess
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


