"""checkov's Bicep checks over bicep/, offline, and proof that it read every resource.

checkov's Bicep parser (an older pycep than ours) gives up on a file it cannot
read and scans nothing in it, so a clean report alone proves little: the test
compares what checkov reports against what pycep finds in each file.

That parser does not know the `extension` statement (Bicep extensions such as
Microsoft Graph, issue 18), so checkov scans a copy of bicep/ in which each
such line is commented out, and nothing else changes (a test below checks).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import bicep_rules as R
import pytest

CHECKOV = shutil.which("checkov")
pytestmark = pytest.mark.skipif(CHECKOV is None, reason="checkov is not on PATH (make test-tools)")

# Offline: no Prisma/Bridgecrew mapping download, no package scan.
OFFLINE_ENV = {
    "BC_SKIP_MAPPING": "TRUE",
    "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false",
    "PYTHONWARNINGS": "ignore",
}
_SKIP_RE = re.compile(r"checkov:skip=([A-Z0-9_]+):(.*)")
_EXTENSION_RE = re.compile(r"^extension\s+\w+\s*$")


def without_extension_statements(text: str) -> str:
    """The file as checkov's parser can read it: `extension x` lines become comments
    (same line numbers). An `extension x with {...}` block is not handled: none here."""
    return "\n".join(f"// {line}" if _EXTENSION_RE.match(line) else line
                     for line in text.split("\n"))


@cache
def scanned_dir() -> Path:
    """A copy of bicep/ that checkov's parser reads (see the module docstring)."""
    copy = Path(tempfile.mkdtemp(prefix="mfhelm-checkov-")) / "bicep"
    shutil.copytree(R.BICEP_DIR, copy)
    for path in copy.rglob("*.bicep"):
        path.write_text(without_extension_statements(path.read_text()))
    return copy


def _run_checkov(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHECKOV is not None
    return subprocess.run(
        [CHECKOV, *args, "--skip-download"],
        capture_output=True, text=True, timeout=600, env={**os.environ, **OFFLINE_ENV},
    )


@cache
def report() -> dict[str, Any]:
    proc = _run_checkov("-d", str(scanned_dir()), "--framework", "bicep", "-o", "json")
    assert proc.stdout.strip(), proc.stderr
    doc = json.loads(proc.stdout)
    return doc[0] if isinstance(doc, list) else doc


@cache
def checked_types() -> frozenset[str]:
    """Resource types checkov has at least one Bicep check for (from `checkov --list`)."""
    proc = _run_checkov("--list", "--framework", "bicep")
    types = set()
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 4 and cells[3] == "resource":
            types.add(cells[4].lower())
    assert types, proc.stdout[:2000]
    return frozenset(types)


def _results(kind: str) -> list[dict[str, Any]]:
    return list(report()["results"].get(kind, []))


def test_checkov_parsed_every_file():
    summary = report()["summary"]
    assert summary["parsing_errors"] == 0, report()["results"].get("parsing_errors")


def test_the_scanned_copy_differs_only_in_extension_statements():
    changed = {}
    for path in R.bicep_files():
        rel = path.relative_to(R.BICEP_DIR)
        original = path.read_text().split("\n")
        scanned = (scanned_dir() / rel).read_text().split("\n")
        assert len(original) == len(scanned), rel
        diff = [(a, b) for a, b in zip(original, scanned, strict=True) if a != b]
        assert all(b == f"// {a}" and a.startswith("extension ") for a, b in diff), diff
        if diff:
            changed[rel.as_posix()] = [a for a, _ in diff]
    # The Graph modules declare the extension; the rest stay byte for byte.
    assert changed == {"modules/signin.bicep": ["extension microsoftGraphV1"],
                       "modules/signin-api.bicep": ["extension microsoftGraphV1"]}


def test_extension_statements_are_what_the_old_parser_refuses():
    """Proof the rewrite is needed and enough: checkov's own Python parses the Graph
    module only once its extension line is commented out."""
    assert CHECKOV is not None
    python = Path(CHECKOV).resolve().parent / "python"
    text = (R.BICEP_DIR / "modules/signin.bicep").read_text()
    probe = ("import sys\nfrom pycep import BicepParser\n"
             "BicepParser().parse(text=sys.stdin.read())\n")
    for source, ok in ((text, False), (without_extension_statements(text), True)):
        proc = subprocess.run([str(python), "-c", probe], input=source, capture_output=True,
                              text=True, timeout=120)
        assert (proc.returncode == 0) is ok, proc.stderr[-500:]


def test_checkov_passes():
    failed = [(r["check_id"], r["resource"], r["file_path"]) for r in _results("failed_checks")]
    assert failed == []


def test_checkov_scanned_every_resource_it_has_checks_for():
    reported = {
        (r["file_path"].lstrip("/"), r["resource"])
        for kind in ("passed_checks", "failed_checks", "skipped_checks")
        for r in _results(kind)
    }
    expected = set()
    for path in R.bicep_files():
        rel = path.relative_to(R.BICEP_DIR).as_posix()
        for name, res in (R.parse_file(path).get("resources") or {}).items():
            if not res.get("existing") and res["type"].lower() in checked_types():
                expected.add((rel, f"{res['type']}.{name}"))
    assert expected, "pycep found no resource that checkov checks: the comparison is empty"
    assert expected - reported == set()
    # And nothing checkov reports is unknown to pycep (a mis-read file would show here).
    resources_only = {r for r in reported if not r[1].startswith(("string.", "object."))}
    assert resources_only - expected == set()


def test_every_skip_is_used_and_justified():
    skipped = {(r["check_id"], r["resource"]) for r in _results("skipped_checks")}
    for r in _results("skipped_checks"):
        reason = r["check_result"].get("suppress_comment", "")
        assert len(reason) > 20, f"{r['check_id']} on {r['resource']}: no real justification"
    declared = []
    for path in R.bicep_files():
        for line in path.read_text().splitlines():
            m = _SKIP_RE.search(line)
            if m:
                declared.append(m.group(1))
    # A skip comment that checkov never applied is stale: its check no longer fires.
    assert sorted(declared) == sorted(check for check, _ in skipped)


def test_skip_comment_form_works_for_bicep(tmp_path: Path):
    bad = """
resource sa 'Microsoft.Storage/storageAccounts@2025-01-01' = {
  // checkov:skip=CKV_AZURE_3:exercise the skip comment form in a Bicep resource
  name: 'x'
  location: location
  kind: 'StorageV2'
  properties: {
    supportsHttpsTrafficOnly: false
  }
}
"""
    (tmp_path / "bad.bicep").write_text(bad)
    proc = _run_checkov("-d", str(tmp_path), "--framework", "bicep", "-o", "json",
                        "--check", "CKV_AZURE_3")
    doc = json.loads(proc.stdout)
    doc = doc[0] if isinstance(doc, list) else doc
    assert [r["check_id"] for r in doc["results"]["skipped_checks"]] == ["CKV_AZURE_3"]
    (tmp_path / "bad.bicep").write_text(bad.replace("  // checkov:skip", "  // no skip"))
    proc = _run_checkov("-d", str(tmp_path), "--framework", "bicep", "-o", "json",
                        "--check", "CKV_AZURE_3")
    doc = json.loads(proc.stdout)
    doc = doc[0] if isinstance(doc, list) else doc
    assert [r["check_id"] for r in doc["results"]["failed_checks"]] == ["CKV_AZURE_3"]
