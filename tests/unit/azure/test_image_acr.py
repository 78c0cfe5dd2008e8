"""`mfhelm image build` and the flow-image check against ACR at the HTTP boundary:
the real azure-mgmt-containerregistry, azure-storage-blob and
azure-containerregistry clients, fake_acr's ARM routes and login server, and a
real Azurite holding the uploaded context and the growing build log."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fake_acr
import fake_arm
import pytest

from mfhelm import image
from mfhelm.azure.registry import Registry
from mfhelm.errors import MfhelmError

SETTINGS = """\
# Our stack. Ask #platform before changing it.
org_prefix = "acme"   # short, lowercase
location = "westeurope"

[aks]
# bigger task nodes for the training team
task_vm_size = "Standard_D8s_v5"
"""


@pytest.fixture
def azurite(fake_azure: fake_arm.FakeAzure, tmp_path: Path) -> Iterator[fake_acr.Azurite]:
    if fake_acr.azurite_binary() is None:
        pytest.skip("azurite-blob not in .venv/bin (run `make test-tools`)")
    assert fake_azure.ca_file is not None
    az = fake_acr.start_azurite(tmp_path / "azurite", fake_azure.ca_file,
                                fake_azure.ca_file.with_suffix(".key"))
    yield az
    az.stop()


@pytest.fixture
def acr(fake_azure: fake_arm.FakeAzure, azurite: fake_acr.Azurite) -> fake_acr.FakeAcr:
    return fake_acr.serve_acr(fake_azure, azurite)


@pytest.fixture
def registry() -> Registry:
    return image.registry_of(fake_acr.registry_outputs(), fake_arm.SUB)


def _build(tmp_path: Path, fake_azure: fake_arm.FakeAzure, registry: Registry,
           requirements: str = "") -> tuple[image.Built, list[str], list[str]]:
    settings = tmp_path / "mfhelm.toml"
    if not settings.exists():
        settings.write_text(SETTINGS)
    echoed: list[str] = []
    steps: list[str] = []
    built = image.build(settings, registry, python="3.12", user_requirements=requirements,
                        credential=fake_acr.AcrCredential(), echo=echoed.append,
                        progress=steps.append, base_url=fake_azure.base_url, poll=0.01)
    return built, echoed, steps


def test_build_uploads_the_context_streams_the_log_and_records_the_digest(
        tmp_path, fake_azure, acr, registry):
    built, echoed, steps = _build(tmp_path, fake_azure, registry, "pandas==2.2.3\n")

    # The context ACR got: the packaged Dockerfile and both requirement files.
    assert len(acr.uploads) == 1
    with tarfile.open(fileobj=io.BytesIO(acr.uploaded(acr.uploads[0])), mode="r:gz") as tar:
        files = {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert set(files) == {"Dockerfile", "flow-requirements.txt", "user-requirements.txt"}
    assert files["Dockerfile"] == image.dockerfile()
    assert files["flow-requirements.txt"].split() == image.flow_requirements()
    assert files["user-requirements.txt"] == "pandas==2.2.3\n"

    # The DockerBuildRequest, as ARM received it.
    [req] = acr.requests
    assert req["type"] == "DockerBuildRequest"
    assert req["dockerFilePath"] == "Dockerfile" and req["isPushEnabled"] is True
    assert req["sourceLocation"] == acr.uploads[0]
    assert req["arguments"] == [{"name": "PYTHON_VERSION", "value": "3.12", "isSecret": False}]
    assert req["platform"] == {"os": "Linux", "architecture": "amd64"}
    assert req["imageNames"][0].startswith("metaflow-flow:py3.12-")

    # Every log line, once, in order, as the blob grew over several polls.
    run = acr.runs["cb1"]
    assert "\n".join(echoed) == "\n".join(run.log)
    assert len(fake_azure.calls("/runs/cb1")) >= 4
    assert any("Step 1/6" in line for line in echoed)

    assert built.reference == f"{acr.login_server}/metaflow-flow@{acr.digest}"
    text = (tmp_path / "mfhelm.toml").read_text()
    assert text == SETTINGS + f'\n[image]\nreference = "{built.reference}"\n'
    from mfhelm import settings

    assert settings.load(tmp_path / "mfhelm.toml").image.reference == built.reference
    assert steps[0].startswith("uploading the build context")


def test_a_second_build_replaces_the_reference_in_place(tmp_path, fake_azure, acr, registry):
    settings = tmp_path / "mfhelm.toml"
    old = "reg.azurecr.io/metaflow-flow@sha256:" + "0" * 64
    settings.write_text(SETTINGS + f'\n[image]   # the flow image\nreference = "{old}"  '
                        '# set by mfhelm image build\n\n[registry]\nenabled = true\n')
    built, _, _ = _build(tmp_path, fake_azure, registry)
    assert settings.read_text() == SETTINGS + (
        f'\n[image]   # the flow image\nreference = "{built.reference}"  '
        '# set by mfhelm image build\n\n[registry]\nenabled = true\n')


def test_a_failed_build_is_one_line_with_its_last_log_lines(tmp_path, fake_azure, acr,
                                                            registry):
    acr.fail = True
    settings = tmp_path / "mfhelm.toml"
    settings.write_text(SETTINGS)
    with pytest.raises(MfhelmError) as err:
        _build(tmp_path, fake_azure, registry)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("build run cb1 in registry acmemetaflowacr1234 failed: failed "
                          "during run, err: exit status 1; last log lines: ")
    assert "No matching distribution found for nosuchpkg==1.0" in msg
    assert "noise line 29" in msg and "noise line 10" not in msg  # the tail only
    assert settings.read_text() == SETTINGS  # nothing recorded


def test_a_registry_that_is_gone_is_one_line(tmp_path, fake_azure, registry):
    # No ACR routes: ARM's 404 for the registry.
    fake_azure.handle_pattern("POST", r".*/listBuildSourceUploadUrl", lambda req: (
        404, fake_arm.arm_error("ResourceNotFound", "The Resource 'Microsoft.ContainerRegistry/"
                                "registries/acmemetaflowacr1234' was not found.")))
    (tmp_path / "mfhelm.toml").write_text(SETTINGS)
    with pytest.raises(MfhelmError, match=r"registry acmemetaflowacr1234 not found in resource "
                       r"group acme-metaflow-rg; re-run `mfhelm deploy`"):
        _build(tmp_path, fake_azure, registry)


def test_registry_off_or_missing_in_outputs_is_one_line():
    for outputs in (fake_arm.sample_outputs(),
                    fake_arm.sample_outputs() | {"registryName": "", "registryLoginServer": ""}):
        with pytest.raises(MfhelmError, match=r"the stack has no container registry .*"
                           r"\[registry\] enabled = true .* `mfhelm deploy`"):
            image.registry_of(outputs, fake_arm.SUB)


# --- does the configured image exist ----------------------------------------------------

@pytest.fixture
def login_server(fake_azure: fake_arm.FakeAzure) -> Iterator[fake_acr.Registry]:
    assert fake_azure.ca_file is not None
    with fake_acr.serve_registry(fake_azure.ca_file, fake_azure.ca_file.with_suffix(".key")) \
            as reg:
        yield reg


def test_image_check_finds_the_manifest_through_acrs_token_exchange(login_server):
    digest = "sha256:" + "cd" * 32
    login_server.manifests.add(("metaflow-flow", digest))
    check = image.image_check(f"{login_server.host}/metaflow-flow@{digest}",
                              fake_acr.AcrCredential())
    assert check.ok, check
    assert check.name == "flow image"
    paths = [(m, p) for m, p, _ in login_server.requests]
    assert paths == [("GET", f"/acr/v1/metaflow-flow/_manifests/{digest}"),
                     ("POST", "/oauth2/exchange"), ("POST", "/oauth2/token"),
                     ("GET", f"/acr/v1/metaflow-flow/_manifests/{digest}")]
    assert login_server.requests[1][2]["access_token"] == fake_acr.ACR_AAD_TOKEN


def test_image_check_fails_when_the_image_is_gone(login_server):
    digest = "sha256:" + "ef" * 32
    login_server.manifests.add(("metaflow-flow", "sha256:" + "00" * 32))
    check = image.image_check(f"{login_server.host}/metaflow-flow@{digest}",
                              fake_acr.AcrCredential())
    assert not check.ok
    assert "is not in the registry" in check.detail
    assert check.fix.startswith("mfhelm image build")


def test_image_check_says_when_the_registry_refuses_the_sign_in(login_server):
    class WrongAudience(fake_acr.AcrCredential):
        def get_token(self, *scopes, **kw):  # type: ignore[no-untyped-def]
            return fake_arm.FakeCredential.get_token(self, *scopes, **kw)

    check = image.image_check(f"{login_server.host}/metaflow-flow@sha256:" + "ab" * 32,
                              WrongAudience())
    assert not check.ok
    assert "refused the sign-in" in check.detail and "\n" not in check.detail


def test_no_image_configured_informs():
    check = image.image_check("", fake_acr.AcrCredential())
    assert check.ok and "pip-installs" in check.detail


@pytest.mark.parametrize("present", [True, False])
def test_doctor_has_a_flow_image_row(fake_azure, login_server, monkeypatch, present):
    import shutil
    import sys

    from mfhelm import doctor
    from mfhelm.settings import parse

    monkeypatch.setenv("MFHELM_HELM", shutil.which("helm") or str(Path(sys.executable).parent
                                                                 / "helm"))
    fake_arm.healthy_subscription(fake_azure, "westeurope")
    digest = "sha256:" + "12" * 32
    if present:
        login_server.manifests.add(("metaflow-flow", digest))
    reference = f"{login_server.host}/metaflow-flow@{digest}"
    s = parse({"org_prefix": "acme", "location": "westeurope",
               "image": {"reference": reference}})
    checks = doctor.run_preflight(s, credential=fake_acr.AcrCredential(),
                                  base_url=fake_azure.base_url, subscription_id=fake_arm.SUB)
    [row] = [c for c in checks if c.name == "flow image"]
    assert row.ok is present, row
    # Without a reference there is no row (nothing to look up before a deploy).
    bare = doctor.run_preflight(parse({"org_prefix": "acme", "location": "westeurope"}),
                                credential=fake_acr.AcrCredential(),
                                base_url=fake_azure.base_url, subscription_id=fake_arm.SUB)
    assert "flow image" not in {c.name for c in bare}


def test_the_cli_prints_the_reference_and_streams_the_log(tmp_path, fake_azure, acr,
                                                         monkeypatch, capsys):
    """`mfhelm image build` through main(): the log on stderr as it comes, the
    reference alone on stdout, the settings file updated. The ARM endpoint and
    the credential are the test's (the CLI has no flag for either)."""
    import json

    from mfhelm import cli
    from mfhelm.azure import credentials
    from mfhelm.azure import registry as acr_mod

    real_client = acr_mod._client
    monkeypatch.setattr(acr_mod, "_client",
                        lambda cred, sub, _base: real_client(cred, sub, fake_azure.base_url))
    monkeypatch.setattr(credentials, "get_credential",
                        lambda *a, **k: fake_acr.AcrCredential())
    (tmp_path / "mfhelm.toml").write_text(SETTINGS)
    (tmp_path / "outputs.json").write_text(json.dumps(fake_acr.registry_outputs()))
    monkeypatch.chdir(tmp_path)
    argv = ["mfhelm", "image", "build", "--python", "3.12", "--outputs", "outputs.json",
            "--subscription", fake_arm.SUB]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    out = capsys.readouterr()
    assert exit_.value.code == 0, out.err
    reference = f"{acr.login_server}/metaflow-flow@{acr.digest}"
    assert out.out == reference + "\n"
    assert "Step 1/6 : ARG PYTHON_VERSION=3.12" in out.err
    assert "Run ID: cb1 was successful" in out.err
    assert out.err.rstrip().endswith("run `mfhelm config` (data scientists too)")
    assert f'reference = "{reference}"' in (tmp_path / "mfhelm.toml").read_text()


def _verify_stack(reference: str) -> Any:
    from mfhelm.verify.model import Stack

    config = {"METAFLOW_KUBERNETES_CONTAINER_IMAGE": reference} if reference else {}
    return Stack(target=None, profile="azure", flow_namespace="metaflow-flows",  # type: ignore[arg-type]
                 chart_app_version="v2.5.1", argo=True, argo_events=True, airflow=False,
                 config=config, config_file=Path("config.json"))


def test_verify_checks_the_configured_image_in_its_registry(login_server, monkeypatch):
    from mfhelm.azure import credentials
    from mfhelm.verify import checks_core
    from mfhelm.verify.model import Failed, Skipped

    monkeypatch.setattr(credentials, "get_credential", lambda *a, **k: fake_acr.AcrCredential())
    digest = "sha256:" + "cd" * 32
    login_server.manifests.add(("metaflow-flow", digest))
    ok = checks_core.check_flow_image(
        _verify_stack(f"{login_server.host}/metaflow-flow@{digest}"), None)  # type: ignore[arg-type]
    assert ok.startswith("metaflow-flow@sha256:cdcd") and login_server.host in ok
    with pytest.raises(Failed) as gone:
        checks_core.check_flow_image(
            _verify_stack(f"{login_server.host}/metaflow-flow@sha256:" + "ef" * 32), None)  # type: ignore[arg-type]
    assert "is not in the registry" in gone.value.saw
    assert gone.value.fix.startswith("mfhelm image build")
    for reference, why in (("", "none configured"), ("python:3.11", "not an image by digest")):
        with pytest.raises(Skipped) as skipped:
            checks_core.check_flow_image(_verify_stack(reference), None)  # type: ignore[arg-type]
        assert why in skipped.value.why
