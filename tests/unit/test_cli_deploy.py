"""`mfhelm deploy`: the Bicep deployment as a CLI command, run the way a user
runs it (`python -m mfhelm deploy ...`, a subprocess).

The Azure CLI has no local form, so the fake `az` of test_bicep_deploy.py
goes first on PATH: it records its argv and the parameters it reads from
the `@/dev/fd/N` pipe, and answers with ARM-shaped JSON. The preflight is
the real `mfhelm doctor`, stopped by what it finds (no subscription chosen).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_bicep_deploy import (
    ALLOCATION,
    FAKE_AZ,
    POSTGRES_INTERNAL,
    SETTINGS_TOML,
    SUCCESS,
    SUCCESS_OUTPUTS,
)

from mfhelm import bicep_deploy as bd

PRINCIPAL = "3f2b8c1e-6a4d-4e1f-9b7a-2c5d8e9f0a1b"
SUB = "00000000-1111-2222-3333-444444444444"


class Az:
    """The fake az's bin directory, scenario and records."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.state = root / "state"
        self.bin.mkdir()
        self.state.mkdir()
        az = self.bin / "az"
        az.write_text(FAKE_AZ.replace("{python}", sys.executable))
        az.chmod(0o755)
        self.scenario()

    def scenario(self, **kw: Any) -> None:
        doc = {
            "account": {"id": SUB, "user": {"name": "ada@example.com", "type": "user"}},
            "principal": PRINCIPAL,
            "secret_error": "ERROR: (SecretNotFound) A secret with (name/id) "
            "postgres-admin-password was not found in this key vault.",
            "deploy_results": ["success"],
            "success": SUCCESS,
            "errors": {"internal": POSTGRES_INTERNAL, "allocation": ALLOCATION},
        }
        doc.update(kw)
        (self.state / "scenario.json").write_text(json.dumps(doc))

    def calls(self) -> list[dict[str, Any]]:
        path = self.state / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def calls_of(self, *head: str) -> list[dict[str, Any]]:
        return [c for c in self.calls() if tuple(c["argv"][:len(head)]) == head]

    def params(self, call: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = json.loads((self.state / call["params_file"]).read_text())
        return result


@pytest.fixture
def az(tmp_path_factory: pytest.TempPathFactory) -> Az:
    return Az(tmp_path_factory.mktemp("fake-az"))


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    (tmp_path / "azure").mkdir()  # an az profile with no subscription chosen
    (tmp_path / "mfhelm.toml").write_text(SETTINGS_TOML)
    return tmp_path


def mfhelm(work: Path, az: Az | None, *args: str, path: str | None = None,
           ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("AZURE_SUBSCRIPTION_ID", "MFHELM_SETTINGS")}
    env.update(HOME=str(work / "home"), AZURE_CONFIG_DIR=str(work / "azure"))
    if az is not None:
        env["FAKE_AZ_STATE"] = str(az.state)
        env["PATH"] = f"{az.bin}{os.pathsep}{env['PATH']}"
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "mfhelm", *args], capture_output=True,
                          text=True, cwd=work, env=env, timeout=120)


def one_error_line(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("mfhelm: error: ")]
    assert len(errors) == 1, proc.stderr
    assert proc.stderr.rstrip("\n").splitlines()[-1] == errors[0], proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


# --- the happy paths -------------------------------------------------------------------


def test_deploy_runs_the_packaged_template_with_the_password_only_in_the_pipe(work, az):
    az.scenario(previous_outputs=None, module_outputs=None)
    proc = mfhelm(work, az, "deploy", "--skip-preflight")
    assert proc.returncode == 0, proc.stderr
    assert "deployed acme-metaflow:" in proc.stdout
    assert "aksClusterName: acme-aks" in proc.stdout and "next: mfhelm install" in proc.stdout
    assert "generated a new PostgreSQL administrator password" in proc.stderr
    (call,) = az.calls_of("deployment", "sub", "create")
    argv = call["argv"]
    template = Path(argv[argv.index("--template-file") + 1])
    assert template == bd.find_template() and template.is_file()
    assert argv[argv.index("--name") + 1] == "acme-metaflow"
    assert argv[argv.index("--parameters") + 1].startswith("@/dev/fd/")
    params = az.params(call)["parameters"]
    password = params[bd.PASSWORD_PARAMETER]["value"]
    assert params["orgPrefix"] == {"value": "acme"}
    assert params["deployerPrincipalId"] == {"value": PRINCIPAL}
    for c in az.calls():
        assert password not in json.dumps(c["argv"]) and password not in json.dumps(c["env"])
    assert password not in proc.stdout + proc.stderr
    for f in work.rglob("*"):
        assert not f.is_file() or password.encode() not in f.read_bytes(), f


def test_what_if_previews_and_creates_nothing(work, az):
    proc = mfhelm(work, az, "deploy", "--what-if")
    assert proc.returncode == 0, proc.stderr
    assert "+ Create" in proc.stdout
    (call,) = az.calls_of("deployment", "sub", "what-if")
    assert call["argv"][call["argv"].index("--parameters") + 1].startswith("@/dev/fd/")
    assert Path(call["argv"][call["argv"].index("--template-file") + 1]) == bd.find_template()
    assert az.calls_of("deployment", "sub", "create") == []


def test_build_only_compiles_the_packaged_template_and_needs_no_settings(work, az):
    (work / "mfhelm.toml").unlink()
    proc = mfhelm(work, az, "deploy", "--build-only")
    assert proc.returncode == 0, proc.stderr
    assert "$schema" in proc.stdout
    (call,) = az.calls()
    assert call["argv"] == ["bicep", "build", "--file", str(bd.find_template()), "--stdout"]


def test_deploy_runs_the_doctor_preflight_first_and_stops_on_its_failures(work, az):
    proc = mfhelm(work, az, "deploy")
    one_error_line(proc, "preflight checks failed", "--skip-preflight")
    assert "preflight: Azure subscription: no Azure subscription chosen" in proc.stderr
    assert az.calls() == []


def test_make_targets_are_thin_wrappers_over_mfhelm_deploy():
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    recipes = {}
    lines = makefile.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("bicep-") and ":" in line:
            recipes[line.split(":")[0]] = lines[i + 1].strip()
    assert recipes == {
        "bicep-build": "@$(BIN)/mfhelm deploy --build-only $(DEPLOY_ARGS)",
        "bicep-whatif": "@$(BIN)/mfhelm deploy --what-if $(DEPLOY_ARGS)",
        "bicep-deploy": "@$(BIN)/mfhelm deploy $(DEPLOY_ARGS)",
    }


def test_help_names_the_modes():
    proc = subprocess.run([sys.executable, "-m", "mfhelm", "deploy", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for flag in ("--what-if", "--build-only", "--skip-preflight", "--settings"):
        assert flag in proc.stdout


# --- bad input: one line, exit 1, nothing sent to Azure ----------------------------------


def test_what_if_and_build_only_together(work, az):
    one_error_line(mfhelm(work, az, "deploy", "--what-if", "--build-only"), "exclude each other")
    assert az.calls() == []


def test_skip_preflight_outside_a_deploy(work, az):
    one_error_line(mfhelm(work, az, "deploy", "--what-if", "--skip-preflight"),
                   "--skip-preflight")
    assert az.calls() == []


def test_missing_settings_file(work, az):
    (work / "mfhelm.toml").unlink()
    one_error_line(mfhelm(work, az, "deploy", "--skip-preflight"), "mfhelm.toml")
    assert az.calls() == []


@pytest.mark.parametrize("prefix", ["toolongprefix", "Acme"])
def test_bad_settings(work, az, prefix):
    (work / "mfhelm.toml").write_text(f'org_prefix = "{prefix}"\nlocation = "westeurope"\n')
    one_error_line(mfhelm(work, az, "deploy", "--skip-preflight"), "org_prefix")
    assert az.calls() == []


def test_missing_az(work, tmp_path_factory):
    empty = tmp_path_factory.mktemp("no-az")
    proc = mfhelm(work, None, "deploy", "--skip-preflight", path=str(empty))
    one_error_line(proc, "the Azure CLI `az` is not on PATH")


def test_unknown_option_is_a_usage_error(work, az):
    proc = mfhelm(work, az, "deploy", "--whatif")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "No such option" in proc.stderr
    assert az.calls() == []


def test_failed_deployment_is_one_explained_line(work, az):
    az.scenario(deploy_results=["allocation"])
    one_error_line(mfhelm(work, az, "deploy", "--skip-preflight"), "Standard_D4s_v5",
                   "mfhelm deploy")
    assert len(az.calls_of("deployment", "sub", "create")) == 1



# --- secrets az quotes back (issue 17 item 10) ---------------------------------------------

KEPT = "Kept_In_Vault_4711xyzABC"


@pytest.mark.parametrize("message", [
    f"The value '{KEPT}' of parameter postgresAdminPassword is not valid.",
    f"connection postgresql://mfadmin:{KEPT}@pg.example.com:5432 refused",
])
def test_a_password_az_echoes_is_never_printed(work, az, message):
    az.scenario(previous_outputs=SUCCESS_OUTPUTS, secret=KEPT, deploy_results=["echo"],
                errors={"echo": {"error": {"code": "InvalidTemplate", "message": message}}})
    proc = mfhelm(work, az, "deploy", "--skip-preflight")
    one_error_line(proc, "deployment acme-metaflow failed")
    (call,) = az.calls_of("deployment", "sub", "create")
    assert az.params(call)["parameters"][bd.PASSWORD_PARAMETER]["value"] == KEPT
    assert KEPT not in proc.stdout + proc.stderr
    assert "InvalidTemplate" in proc.stderr and "***" in proc.stderr


def test_a_generated_password_is_remembered_as_a_secret(work, az, monkeypatch):
    import io

    from mfhelm import errors
    from mfhelm.settings import load

    az.scenario(previous_outputs=None, module_outputs=None)
    monkeypatch.setenv("FAKE_AZ_STATE", str(az.state))
    monkeypatch.setenv("PATH", f"{az.bin}{os.pathsep}{os.environ['PATH']}")
    errors.forget_secrets()
    try:
        params = bd.prepare(load(work / "mfhelm.toml"), io.StringIO())
        password = params["parameters"][bd.PASSWORD_PARAMETER]["value"]
        assert errors.redact(f"az: bad value {password}.") == "az: bad value ***."
    finally:
        errors.forget_secrets()


def test_what_if_output_is_redacted_too(work, az):
    az.scenario(previous_outputs=SUCCESS_OUTPUTS, secret=KEPT,
                whatif_error=f"ERROR: InvalidTemplate: '{KEPT}' is not a valid value for "
                "postgresAdminPassword")
    proc = mfhelm(work, az, "deploy", "--what-if")
    one_error_line(proc, "what-if failed")
    assert KEPT not in proc.stdout + proc.stderr
    assert "InvalidTemplate: '***' is not a valid value" in proc.stderr
