"""Shared test helpers, importable by name from every test layer:
`chartlib` (render the chart with the real helm), `fake_arm` (a local HTTPS
server answering like the Azure REST APIs), `wheelkit` (build the wheel
and install it outside the checkout) and `pgserver` (a real PostgreSQL).

The project's pinned tools (`make dev` links helm, kubectl, uv, ... into
.venv/bin) come first on PATH for the whole session, however pytest was
started: `.venv/bin/python -m pytest` without an activated venv finds the
pinned helm, and so do the subprocesses the tests start.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
for _sub in ("chart", "unit/azure", "packaging", "db"):
    _path = str(_HERE / _sub)
    if _path not in sys.path:
        sys.path.insert(0, _path)

PROJECT_TOOLS = _HERE.parent / ".venv" / "bin"


def _tools_first_on_path() -> None:
    if not PROJECT_TOOLS.is_dir():
        return
    tools = str(PROJECT_TOOLS)
    rest = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != tools]
    os.environ["PATH"] = os.pathsep.join([tools, *rest])


_tools_first_on_path()


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory):
    """mfhelm's wheel, built from this checkout and installed into a fresh venv
    outside it (tests/packaging/wheelkit.py); one build per session."""
    import wheelkit

    try:
        return wheelkit.build_and_install(tmp_path_factory.mktemp("wheel"))
    except wheelkit.WheelUnavailable as exc:
        pytest.skip(reason=str(exc))


@pytest.fixture
def metaflow_seen_as(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Call with a version: from then on, in this process, importlib.metadata
    finds metaflow at that version (an installed-distribution record put first
    on sys.path; the package itself is not needed to read a version), as
    where a data scientist's older Metaflow sits beside mfhelm."""
    def seen_as(version: str) -> None:
        where = tmp_path / f"metaflow-record-{version}"
        info = where / f"metaflow-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: metaflow\nVersion: {version}\n")
        monkeypatch.syspath_prepend(str(where))

    return seen_as
