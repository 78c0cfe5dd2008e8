"""The core checks' parts that need no cluster: the user's Metaflow config as
verify reads it, the environment its Metaflow runs get, the "metadata
service" check against a real service API (metaflow-local-service from PyPI,
standing in for metaflow-service as in tests/access; tests/cluster/verify_env.py),
and how Azure's answers to the Blob probe become a failure line."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mfhelm.errors import MfhelmError
from mfhelm.stack import Target
from mfhelm.verify import checks_core, core
from mfhelm.verify.model import Failed, Run, Stack

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from cluster import verify_env  # noqa: E402

CONFIG = {
    "METAFLOW_DEFAULT_DATASTORE": "azure",
    "METAFLOW_DATASTORE_SYSROOT_AZURE": "metaflow/metaflow",
    "METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT": "https://acme.blob.core.windows.net/",
    "METAFLOW_DEFAULT_METADATA": "service",
    "METAFLOW_SERVICE_URL": "http://localhost:8080",
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for key in list(__import__("os").environ):
        if key.startswith("METAFLOW_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("METAFLOW_HOME", str(tmp_path / "mfhome"))
    return tmp_path / "mfhome"


def stack_with(config: dict[str, str], tmp_path: Path, app_version: str = "2.5.1") -> Stack:
    return Stack(Target("mf", "mf"), "local", "mf-flows", app_version, False, False, False,
                 config, tmp_path / "config.json")


def a_run(tmp_path: Path) -> Run:
    return Run(workdir=tmp_path, deadline=time.monotonic() + 60)


# ----------------------------------------------------------- the config

def test_config_file_follows_metaflow_home_and_profile(clean_env: Path,
                                                       monkeypatch: pytest.MonkeyPatch):
    assert core.config_file(None) == clean_env / "config.json"
    assert core.config_file("team") == clean_env / "config_team.json"
    monkeypatch.setenv("METAFLOW_PROFILE", "env")
    assert core.config_file(None) == clean_env / "config_env.json"


def test_missing_config_says_how_to_write_it(clean_env: Path):
    with pytest.raises(MfhelmError) as err:
        core.load_config(clean_env / "config.json")
    assert str(err.value).startswith(f"no Metaflow config at {clean_env / 'config.json'}: "
                                     "write it with `mfhelm config`")


def test_config_without_the_stack_keys_is_refused(clean_env: Path):
    clean_env.mkdir()
    path = clean_env / "config.json"
    path.write_text(json.dumps({"METAFLOW_DEFAULT_DATASTORE": "azure"}))
    with pytest.raises(MfhelmError) as err:
        core.load_config(path)
    assert "has no METAFLOW_SERVICE_URL, METAFLOW_DATASTORE_SYSROOT_AZURE, " in str(err.value)
    path.write_text(json.dumps(CONFIG | {"METAFLOW_DEFAULT_DATASTORE": "local"}))
    with pytest.raises(MfhelmError) as err:
        core.load_config(path)
    assert "METAFLOW_DEFAULT_DATASTORE is 'local', not 'azure'" in str(err.value)


def test_environment_overrides_the_file_as_in_metaflow(clean_env: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    clean_env.mkdir()
    path = clean_env / "config.json"
    path.write_text(json.dumps(CONFIG | {"METAFLOW_KUBERNETES_TOLERATIONS": [{"key": "x"}]}))
    monkeypatch.setenv("METAFLOW_SERVICE_URL", "http://elsewhere:8080")
    config = core.load_config(path)
    assert config["METAFLOW_SERVICE_URL"] == "http://elsewhere:8080"
    assert json.loads(config["METAFLOW_KUBERNETES_TOLERATIONS"]) == [{"key": "x"}]
    assert "METAFLOW_HOME" not in config


def test_runs_get_the_checked_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("METAFLOW_PROFILE", "stale")
    plain = Stack(Target("mf", "mf"), "local", "f", "1", False, False, False, CONFIG,
                  tmp_path / "cfg" / "config.json")
    env = core.metaflow_env(plain)
    assert env["METAFLOW_HOME"] == str(tmp_path / "cfg")
    assert "METAFLOW_PROFILE" not in env
    named = Stack(Target("mf", "mf"), "local", "f", "1", False, False, False, CONFIG,
                  tmp_path / "cfg" / "config_team.json")
    assert core.metaflow_env(named)["METAFLOW_PROFILE"] == "team"


def test_ui_backend_is_beside_the_ui_or_port_forwarded():
    url = checks_core.ui_backend_url
    assert url({}) == "http://localhost:8083/api"
    assert url({"METAFLOW_UI_URL": "http://localhost:3000"}) == "http://localhost:8083/api"
    assert url({"METAFLOW_UI_URL": "https://mf.example.com/"}) == "https://mf.example.com/api"


# ------------------------------------------- "metadata service", for real

@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[verify_env.Service]:
    svc = verify_env.start_metadata_service(tmp_path_factory.mktemp("svc"), "2.5.1")
    yield svc
    svc.stop()


def test_metadata_service_of_the_charts_version_passes(service, tmp_path: Path):
    stack = stack_with(CONFIG | {"METAFLOW_SERVICE_URL": service.url + "/"}, tmp_path, "v2.5.1")
    assert checks_core.check_metadata_service(stack, a_run(tmp_path)) == "2.5.1"


def test_metadata_service_of_another_version_fails(service, tmp_path: Path):
    stack = stack_with(CONFIG | {"METAFLOW_SERVICE_URL": service.url}, tmp_path, "2.6.0")
    with pytest.raises(Failed) as err:
        checks_core.check_metadata_service(stack, a_run(tmp_path))
    assert err.value.saw == "the service is version 2.5.1, the release's chart is appVersion 2.6.0"


def test_url_that_is_not_the_service(service, tmp_path: Path):
    stack = stack_with(CONFIG | {"METAFLOW_SERVICE_URL": service.url + "/elsewhere"}, tmp_path)
    with pytest.raises(Failed) as err:
        checks_core.check_metadata_service(stack, a_run(tmp_path))
    assert err.value.saw == f"404 from {service.url}/elsewhere/ping"
    assert "METAFLOW_SERVICE_URL does not point at the metadata service" in err.value.fix


def test_nothing_listening_names_the_port_forward(tmp_path: Path):
    url = verify_env.closed_port_url()
    stack = stack_with(CONFIG | {"METAFLOW_SERVICE_URL": url}, tmp_path)
    with pytest.raises(Failed) as err:
        checks_core.check_metadata_service(stack, a_run(tmp_path))
    assert err.value.saw == f"no answer from {url} (connection refused)"
    assert err.value.fix.startswith("start `mfhelm port-forward`")


def test_ui_lists_the_run_or_says_it_does_not(service, tmp_path: Path):
    stack = stack_with(CONFIG | {"METAFLOW_UI_URL": service.url + "/"}, tmp_path)
    run = a_run(tmp_path)
    run.notes["local run"] = "123"
    with pytest.raises(Failed) as err:
        checks_core.check_ui(stack, run)
    assert err.value.saw == (f"the UI backend at {service.url}/api does not list run "
                             "MfhelmVerifyFlow/123 (404)")


def test_ui_out_of_reach_is_skipped_with_the_reason(tmp_path: Path):
    from mfhelm.verify.model import Skipped

    url = verify_env.closed_port_url()
    stack = stack_with(CONFIG | {"METAFLOW_UI_URL": url + "/"}, tmp_path)
    run = a_run(tmp_path)
    run.notes["local run"] = "123"
    with pytest.raises(Skipped) as err:
        checks_core.check_ui(stack, run)
    assert err.value.why == (f"UI backend not reachable at {url}/api: connection refused; "
                             "start `mfhelm port-forward`")


# ------------------------------------------------ Azure's answers, explained

@pytest.mark.parametrize("probe, saw, fix", [
    ({"kind": "ClientAuthenticationError", "status": 403,
      "code": "AuthorizationPermissionMismatch", "message": "This request is not authorized"},
     "403 from Blob (AuthorizationPermissionMismatch) writing to metaflow",
     "the identity has no Storage Blob Data Contributor on metaflow (`mfhelm grant` gives a "
     "group that role)"),
    ({"kind": "ClientAuthenticationError", "status": 403, "code": "AuthenticationFailed",
      "message": "Server failed to authenticate the request."},
     "403 from Blob (AuthenticationFailed): https://acme.blob.core.windows.net/ refused the "
     "token", None),
    ({"kind": "ResourceNotFoundError", "status": 404, "code": "ContainerNotFound",
      "message": "The specified container does not exist."},
     "404 from Blob: no container metaflow at https://acme.blob.core.windows.net/", None),
    ({"kind": "ClientAuthenticationError", "status": None, "code": "",
      "message": "DefaultAzureCredential failed to retrieve a token"},
     "no Azure credential for Blob (ClientAuthenticationError: DefaultAzureCredential failed "
     "to retrieve a token)", "sign in with `az login` (local: `mfhelm port-forward` forwards "
     "the token emulator)"),
    ({"kind": "ServiceRequestError", "status": None, "code": "",
      "message": "Connection refused"},
     "cannot reach Blob at https://acme.blob.core.windows.net/ (Connection refused)", None),
])
def test_blob_answers_become_the_failure_line(probe, saw, fix, tmp_path: Path):
    failed = checks_core.explain_blob(stack_with(CONFIG, tmp_path), probe)
    assert failed is not None
    assert failed.saw == saw
    if fix is not None:
        assert failed.fix == fix


def test_a_blob_write_that_worked_explains_nothing(tmp_path: Path):
    assert checks_core.explain_blob(stack_with(CONFIG, tmp_path), {"ok": True}) is None
    assert checks_core.explain_blob(stack_with(CONFIG, tmp_path), {}) is None


# ------------------------------------------------- what the service is sent

class StaticCredential:
    """A credential as METAFLOW_MFHELM_SERVICE_CREDENTIAL names one (module:callable)."""

    def get_token(self, *scopes: str, **kwargs: object) -> object:
        from azure.core.credentials import AccessToken

        return AccessToken(f"token-for-{scopes[0]}", int(time.time()) + 3600)


class NoCredential:
    def get_token(self, *scopes: str, **kwargs: object) -> object:
        raise RuntimeError("AADSTS50173: the sign-in has expired")


def test_service_headers_carry_the_config_headers_key_and_token(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    config = CONFIG | {
        "METAFLOW_SERVICE_HEADERS": json.dumps({"x-team": "ds"}),
        "METAFLOW_SERVICE_AUTH_KEY": "k-123",
        "METAFLOW_MFHELM_SERVICE_SCOPE": "api://app/.default",
        "METAFLOW_MFHELM_SERVICE_CREDENTIAL": "test_verify_checks:StaticCredential",
    }
    assert checks_core.service_headers(config) == {
        "x-team": "ds", "x-api-key": "k-123",
        "Authorization": "Bearer token-for-api://app/.default"}
    assert checks_core.service_headers(CONFIG) == {}


def test_no_sign_in_token_is_the_metadata_layers_failure(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    config = CONFIG | {"METAFLOW_MFHELM_SERVICE_SCOPE": "api://app/.default",
                       "METAFLOW_MFHELM_SERVICE_CREDENTIAL": "test_verify_checks:NoCredential"}
    with pytest.raises(Failed) as err:
        checks_core.check_metadata_service(stack_with(config, tmp_path), a_run(tmp_path))
    assert err.value.saw.startswith("no sign-in token for api://app/.default: ")
    assert "AADSTS50173" in err.value.saw
    assert err.value.fix.startswith("sign in with `az login`")
