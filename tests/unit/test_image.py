"""The flow image's contract (Metaflow's dependency list, the Dockerfile, one
pin per package), recording the image in mfhelm.toml, and bad input to
`mfhelm image build` refused in one line before anything is uploaded."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from mfhelm import image
from mfhelm.errors import MfhelmError

ROOT = Path(__file__).resolve().parents[2]


def _pins(reqs: list[str]) -> dict[str, str]:
    return dict(r.split("==", 1) for r in reqs)


def test_flow_set_is_metaflows_azure_install_list_plus_pins():
    """The packages Metaflow's task command would pip-install for the azure
    datastore (metaflow 2.19.39, asked, not copied), each pinned once."""
    from metaflow.metaflow_environment import MetaflowEnvironment

    cmd = MetaflowEnvironment(None)._get_install_dependencies_cmd("azure")
    assert cmd.startswith("if [ -z $METAFLOW_SKIP_INSTALL_DEPENDENCIES ]; then ")
    pip_args = shlex.split(cmd.split("then ", 1)[1].rsplit(";", 1)[0])
    metaflow_wants = {a for a in pip_args[pip_args.index("install") + 1:]
                      if not a.startswith("-")}
    flow = _pins(image.flow_requirements())
    assert set(flow) == metaflow_wants
    assert all(re.fullmatch(r"[0-9]+(\.[0-9]+)*", v) for v in flow.values())


def test_flow_pins_agree_with_mfhelms_own():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    own = _pins([d for d in project["dependencies"] if "==" in d])
    flow = _pins(project["optional-dependencies"]["flow-image"])
    assert _pins(image.flow_requirements()) == flow
    shared = set(own) & set(flow)
    assert shared >= {"azure-identity", "azure-storage-blob", "azure-keyvault-secrets"}
    assert {k: own[k] for k in shared} == {k: flow[k] for k in shared}


def test_dockerfile_contract():
    text = image.dockerfile()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "ARG PYTHON_VERSION=3.12"
    assert lines[1] == "FROM python:${PYTHON_VERSION}-slim-bookworm"
    assert "3.12" in image.SUPPORTED_PYTHON
    env = next(ln for ln in lines if ln.startswith("ENV "))
    assert "METAFLOW_SKIP_INSTALL_DEPENDENCIES=1" in env
    # non-root, last, in a home it owns (the step's `mkdir metaflow` runs in the cwd)
    assert lines[-2:] == ["USER 1000:1000", "WORKDIR /home/metaflow"]
    assert "useradd --uid 1000 --user-group --create-home --home-dir /home/metaflow" in text
    run = text[text.index("RUN "):text.index("USER ")]
    assert run.index("flow-requirements.txt") < run.index("user-requirements.txt")


def test_build_context_holds_exactly_what_the_dockerfile_copies():
    import io
    import tarfile

    data = image.build_context("3.13", "numpy==2.1.3\n")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        names = tar.getnames()
    copied = re.search(r"^COPY (.+) /opt/mfhelm/$", image.dockerfile(), re.M)
    assert copied is not None
    assert sorted(names) == sorted(["Dockerfile", *copied[1].split()])


# --- [image] reference in mfhelm.toml ---------------------------------------------------

REF = "acmeacr.azurecr.io/metaflow-flow@sha256:" + "ab" * 32


@pytest.mark.parametrize("before, after", [
    ('org_prefix = "acme"  # ours\n', f'org_prefix = "acme"  # ours\n\n[image]\nreference = "{REF}"\n'),
    ('org_prefix = "acme"', f'org_prefix = "acme"\n\n[image]\nreference = "{REF}"\n'),
    ('a = 1\n[image] # img\n\n[aks]\nx = 1\n', f'a = 1\n[image] # img\nreference = "{REF}"\n\n[aks]\nx = 1\n'),
    ("a = 1\n[image]\nreference = ''   # old\n", f'a = 1\n[image]\nreference = "{REF}"   # old\n'),
    ('[image]\r\nreference = "x"\r\n[aks]\r\n', f'[image]\r\nreference = "{REF}"\r\n[aks]\r\n'),
])
def test_with_reference_keeps_every_other_byte(before, after):
    assert image.with_reference(before, REF) == after


@pytest.mark.parametrize("text", [
    f'image = {{ reference = "{REF}" }}\n',
    'image.reference = ""\n',
    '[image]\nreference = """\nx"""\n',
])
def test_with_reference_refuses_what_it_cannot_edit_in_place(text):
    with pytest.raises(MfhelmError, match="plain `\\[image\\]` table"):
        image.with_reference(text, REF)


def test_record_reference_validates_and_writes_atomically(tmp_path):
    path = tmp_path / "mfhelm.toml"
    path.write_text('org_prefix = "acme"\nlocation = "westeurope"\n')
    path.chmod(0o640)
    image.record_reference(path, REF)
    assert tomllib.loads(path.read_text())["image"] == {"reference": REF}
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["mfhelm.toml"]  # no temp file left
    before = path.read_text()
    with pytest.raises(MfhelmError, match="image.reference"):
        image.record_reference(path, "not-a-digest-ref")
    assert path.read_text() == before


# --- bad input: one line, nothing uploaded ----------------------------------------------

def test_requirements_that_do_not_resolve_are_one_line():
    """Real pip against the index (PyPI), for the image's Python and platform."""
    with pytest.raises(MfhelmError) as err:
        image.check_resolves("numpy==1.0.999\n", "3.12")
    assert str(err.value) == ("--requirements does not resolve for Python 3.12 on linux/amd64: "
                              "No matching distribution found for numpy==1.0.999")
    # A conflict with a pinned dependency of the image.
    with pytest.raises(MfhelmError, match=r"does not resolve for Python 3\.12 on linux/amd64: "
                       r"Cannot install requests==2\.31\.0 and requests==2\.34\.2 because"):
        image.check_resolves("requests==2.31.0\n", "3.12")
    image.check_resolves("numpy==2.1.3\n", "3.12")  # and a good file passes


def test_local_paths_in_requirements_are_refused(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("pandas\n-e ./mylib\n")
    with pytest.raises(MfhelmError, match=r"line 2 \(-e ./mylib\) refers to a local file"):
        image.read_requirements(req)


def _main(args, tmp_path, monkeypatch, capsys):
    from mfhelm import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["mfhelm", *args])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def _settings_and_outputs(tmp_path, **outputs):
    import fake_arm

    (tmp_path / "mfhelm.toml").write_text('org_prefix = "acme"\nlocation = "westeurope"\n')
    (tmp_path / "outputs.json").write_text(json.dumps(fake_arm.sample_outputs() | outputs))


@pytest.mark.parametrize("args, code, line", [
    (["--python", "3.9"], 2, "mfhelm: error: Invalid value for '--python': '3.9' is not a "
     "Python minor the base image has (python:<minor>-slim-bookworm: 3.10, 3.11, 3.12, 3.13, "
     "3.14) (see mfhelm image build --help)"),
    (["--requirements", "missing.txt"], 1,
     "mfhelm: error: --requirements missing.txt: no such file or directory"),
    ([], 1, "mfhelm: error: the stack has no container registry (its deployment has no "
     "registryName output): set [registry] enabled = true in mfhelm.toml and run "
     "`mfhelm deploy`, then build again"),
    (["--requirements", "bad.txt"], 1, "mfhelm: error: --requirements does not resolve for "
     "Python 3.12 on linux/amd64: No matching distribution found for nosuchpkg-mfhelm==1.0"),
])
def test_bad_input_is_one_line_before_any_azure_call(tmp_path, monkeypatch, capsys, args, code,
                                                     line):
    from mfhelm.azure import registry

    _settings_and_outputs(tmp_path, **({"registryName": "acmeacr1234",
                                        "registryLoginServer": "acmeacr1234.azurecr.io"}
                                       if "bad.txt" in args else {}))
    (tmp_path / "bad.txt").write_text("nosuchpkg-mfhelm==1.0\n")
    calls: list[str] = []
    monkeypatch.setattr(registry, "_client", lambda *a: calls.append("arm"))  # never reached
    got = _main(["image", "build", "--python", "3.12", "--outputs", "outputs.json",
                 "--subscription", "00000000-1111-2222-3333-444444444444", *args],
                tmp_path, monkeypatch, capsys)
    assert got[0] == code
    assert got[2].strip() == line
    assert calls == []
    assert "[image]" not in (tmp_path / "mfhelm.toml").read_text()


def test_requirements_are_refused_before_any_azure_sign_in(tmp_path, monkeypatch, capsys):
    """No subscription, no outputs, no `az login`: the requirements file is
    the user's own input, and its error comes first."""
    (tmp_path / "mfhelm.toml").write_text('org_prefix = "acme"\nlocation = "westeurope"\n')
    (tmp_path / "bad.txt").write_text("nosuchpkg-mfhelm==1.0\n")
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(tmp_path / "no-az"))
    code, _, err = _main(["image", "build", "--python", "3.12", "--requirements", "bad.txt"],
                         tmp_path, monkeypatch, capsys)
    assert code == 1
    assert err.strip() == ("mfhelm: error: --requirements does not resolve for Python 3.12 on "
                           "linux/amd64: No matching distribution found for nosuchpkg-mfhelm==1.0")
