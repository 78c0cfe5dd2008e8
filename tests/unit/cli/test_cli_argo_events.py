"""`deploy_argo_events` through the real CLI entry point."""

from __future__ import annotations

import json

import yaml
from conftest import assert_one_line_error, write_outputs

BASE = 'org_prefix = "acme"\nlocation = "westeurope"\n'


def test_events_on_without_argo_is_one_error_line(cli, workdir):
    (workdir / "mfhelm.toml").write_text(BASE + "deploy_argo = false\ndeploy_argo_events = true\n")
    path = write_outputs(workdir / "outputs.json")
    for command in (("render", "--outputs", str(path)),
                    ("config", "--print", "--outputs", str(path))):
        assert_one_line_error(cli(*command), "mfhelm.toml: deploy_argo_events:",
                              "needs deploy_argo = true")


def test_config_and_render_carry_argo_events(cli, workdir):
    path = write_outputs(workdir / "outputs.json")
    printed = cli("config", "--print", "--outputs", str(path))
    assert printed.code == 0, printed.err
    cfg = json.loads(printed.out)
    assert cfg["METAFLOW_ARGO_EVENTS_EVENT_SOURCE"] == "metaflow-webhook"
    rendered = cli("render", "--outputs", str(path))
    assert rendered.code == 0, rendered.err
    assert yaml.safe_load(rendered.out)["argo-events"]["enabled"] is True
    (workdir / "mfhelm.toml").write_text(BASE + "deploy_argo_events = false\n")
    off = json.loads(cli("config", "--print", "--outputs", str(path)).out)
    assert not any(k.startswith("METAFLOW_ARGO_EVENTS_") for k in off)


def test_init_writes_the_setting(cli, workdir):
    (workdir / "mfhelm.toml").unlink()
    done = cli("init", "--org-prefix", "acme", "--no-argo")
    assert done.code == 0, done.err
    assert "deploy_argo_events = false" in (workdir / "mfhelm.toml").read_text()


# --- Metaflow too old for METAFLOW_ARGO_WORKFLOWS_USE_SCHEDULES ------------------

def test_config_notes_a_metaflow_that_ignores_the_schedules_key(cli, workdir,
                                                               metaflow_seen_as):
    path = write_outputs(workdir / "outputs.json")
    # The test venv's metaflow (2.19.39) reads the key: no note.
    quiet = cli("config", "--print", "--outputs", str(path))
    assert quiet.code == 0 and quiet.err == "", quiet.err
    metaflow_seen_as("2.19.31")
    written = cli("config", "--outputs", str(path))
    assert written.code == 0, written.err
    assert written.out.startswith("wrote ")
    assert written.err == (
        "note: metaflow 2.19.31 here ignores METAFLOW_ARGO_WORKFLOWS_USE_SCHEDULES, so its "
        "@schedule flows get CronWorkflows Argo 4 never starts; install metaflow>=2.19.32 "
        "before `argo-workflows create`\n")
    # Without Argo there is no key, and nothing to say.
    (workdir / "mfhelm.toml").write_text(BASE + "deploy_argo = false\n")
    no_argo = cli("config", "--print", "--outputs",
                  str(write_outputs(workdir / "outputs.json", deployArgo=False)))
    assert no_argo.code == 0 and no_argo.err == "", no_argo.err
