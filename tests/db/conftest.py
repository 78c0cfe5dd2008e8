"""The `postgres` fixture: a real PostgreSQL started once for the session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from pgserver import Server, pg_bin, running_server


@pytest.fixture(scope="session")
def postgres() -> Iterator[Server]:
    if pg_bin() is None or not shutil.which("psql"):
        pytest.skip("PostgreSQL server not installed (Debian package postgresql)")
    with running_server() as server:
        yield server
