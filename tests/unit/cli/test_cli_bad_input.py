"""Bad input, continued (issue 17 items 5, 6, 7, 9, 10): every case ends in
one line `mfhelm: error: ...`, no traceback, and nothing written first.

- validators match whole values: a trailing newline is not a name;
- digits are ASCII: `--timeout ١٠m` is not ten minutes;
- broken --chart directories, MFHELM_HELM a directory, DAG names too long
  for the tar header, YAML alias bombs: one line, not a traceback (or a
  process eating memory until it dies);
- usage errors, a --purge without a terminal, compile warnings, long chart
  references: one line, not three, "Aborted!" or dozens;
- files mfhelm writes: never through a symlink, never a file named after a
  missing directory, modes that ignore a permissive umask, and no secret
  mfhelm knows in anything it prints.

Cluster commands point at a kubeconfig whose server is a closed port: a
check that came after a cluster call would fail with another line.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import resource
import stat
import subprocess
import sys
import time
from pathlib import Path

import fake_arm
import pytest
import yaml
from conftest import assert_one_line_error, write_outputs

import mfhelm
from mfhelm import dags, errors, metaflow_config, settings, userfiles, uservalues
from mfhelm.azure import credentials, outputs
from mfhelm.errors import MfhelmError

DAG = "from airflow import DAG\nwith DAG('x') as dag:\n    pass\n"
SETTINGS = 'org_prefix = "acme"\nlocation = "westeurope"\n'
ARABIC_TEN = "\u0661\u0660"  # ١٠


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


# =============================================== item 5: whole-value matches

@pytest.mark.parametrize(("extra", "field"), [
    ('org_prefix = "acme\\n"\nlocation = "westeurope"\n', "org_prefix"),
    ('org_prefix = "acme"\nlocation = "westeurope\\n"\n', "location"),
    (SETTINGS + 'resource_group = "my-rg\\n"\n', "resource_group"),
    (SETTINGS + 'deployment_name = "mf\\n"\n', "deployment_name"),
    (SETTINGS + '[helm]\nnamespace = "metaflow\\n"\n', "helm.namespace"),
    (SETTINGS + '[helm]\nrelease = "metaflow\\n"\n', "helm.release"),
    (SETTINGS + '[helm]\nflow_namespace = "jobs\\n"\n', "helm.flow_namespace"),
    (SETTINGS + '[aks]\ntask_vm_size = "Standard_D4s_v5\\n"\n', "aks.task_vm_size"),
    (SETTINGS + '[postgres]\nsku = "Standard_B1ms\\n"\n', "postgres.sku"),
])
def test_settings_with_a_trailing_newline(cli, workdir, extra, field):
    (workdir / "mfhelm.toml").write_text(extra)
    r = cli("render", "--outputs", str(write_outputs(workdir / "outputs.json")))
    assert_one_line_error(r, "mfhelm.toml", field)


@pytest.mark.parametrize(("option", "value"), [("--org-prefix", "acme\n"),
                                               ("--location", "westeurope\n")])
def test_init_with_a_trailing_newline_writes_nothing(cli, tmp_path, monkeypatch, option, value):
    monkeypatch.chdir(tmp_path)
    args = {"--org-prefix": "acme", "--location": "westeurope", option: value}
    r = cli("init", *[x for kv in args.items() for x in kv])
    assert_one_line_error(r, option.removeprefix("--").replace("-", "_"))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", [n for n in outputs.STRING_OUTPUTS
                                  if n not in outputs.MAY_BE_EMPTY])
def test_every_output_with_a_trailing_newline_is_refused(name):
    sample = fake_arm.sample_outputs()
    assert outputs.validate_outputs(sample, "x")  # valid as it is
    with pytest.raises(MfhelmError, match=f"output {name} "):
        outputs.validate_outputs(sample | {name: sample[name] + "\n"}, "outputs.json")


def test_label_value_with_a_newline_never_reaches_the_node_selector(cli, workdir):
    path = write_outputs(workdir / "outputs.json", taskworkersLabelValue="taskworkers\n")
    assert_one_line_error(cli("render", "--outputs", str(path)), "taskworkersLabelValue")
    assert_one_line_error(cli("config", "--outputs", str(path)), "taskworkersLabelValue")
    assert not (workdir / "home" / ".metaflowconfig").exists()


@pytest.mark.parametrize("option", ["--release", "--namespace"])
def test_release_and_namespace_with_a_trailing_newline(cli, workdir, closed_port_kubeconfig, option):
    assert_one_line_error(cli("status", option, "metaflow\n", "--kubeconfig", closed_port_kubeconfig), option)


def test_guids_with_a_trailing_newline(monkeypatch):
    monkeypatch.delenv(credentials.SUBSCRIPTION_ENV, raising=False)
    with pytest.raises(MfhelmError, match="not a GUID"):
        credentials.resolve_subscription_id(fake_arm.SUB + "\n")
    from mfhelm import bicep_deploy

    s = settings.parse({"org_prefix": "acme", "location": "westeurope"})
    with pytest.raises(MfhelmError, match="not an object ID"):
        bicep_deploy.build_parameters(s, "3f2b8c1e-6a4d-4e1f-9b7a-2c5d8e9f0a1b\n")


def test_config_profile_with_a_newline_creates_no_file(cli, workdir):
    path = write_outputs(workdir / "outputs.json")
    r = cli("config", "--outputs", str(path), "--profile", "dev\n")
    assert_one_line_error(r, "profile")
    assert not (workdir / "home" / ".metaflowconfig").exists()


@pytest.mark.parametrize("url", ["http://localhost:8080\n", "http://localhost:8080/\tx",
                                 "http://local\nhost:8080", f"http://localhost:{ARABIC_TEN}",
                                 "http://user:pw@localhost:8080", "http://localhost:8080/?x=1"])
def test_service_url_refused(cli, workdir, url):
    path = write_outputs(workdir / "outputs.json")
    r = cli("config", "--outputs", str(path), "--service-url", url)
    assert_one_line_error(r, "service URL")
    assert not (workdir / "home" / ".metaflowconfig").exists()


@pytest.mark.parametrize("url", ["http://localhost:8080", "https://mf.example.com/api",
                                 "http://10.1.2.3:8080/", "http://[::1]:8080"])
def test_service_urls_accepted(url):
    assert metaflow_config.is_service_url(url)


def test_other_names_with_a_trailing_newline():
    with pytest.raises(MfhelmError):
        dags.check_dag_name("x.py\n", "--name")
    from mfhelm import oci

    with pytest.raises(MfhelmError):
        oci.check_ref("oci://registry.example.com/metaflow\n")


# ======================================================= item 6: ASCII digits

@pytest.mark.parametrize("value", [f"{ARABIC_TEN}m", "\uff11\uff10m", f"1{ARABIC_TEN}s",
                                   "1h\u0663\u0660m"])
def test_timeout_with_non_ascii_digits_is_refused_before_anything(cli, workdir, closed_port_kubeconfig, value):
    r = cli("install", "--local", "--no-argo", "--timeout", value, "--kubeconfig", closed_port_kubeconfig)
    assert_one_line_error(r, "--timeout")


@pytest.mark.parametrize("value", [f"{ARABIC_TEN}.0.0.1", "\u0661.\u0661.\u0661.\u0661",
                                   "10.0.0.\uff11"])
def test_ip_addresses_are_ascii(value):
    assert not outputs.is_host(value)
    with pytest.raises(MfhelmError, match="postgresFqdn"):
        outputs.validate_outputs(fake_arm.sample_outputs() | {"postgresFqdn": value}, "x")


def test_https_url_port_is_ascii():
    assert outputs.is_https_url("https://kv.example.com:8443/")
    assert not outputs.is_https_url(f"https://kv.example.com:{ARABIC_TEN}/")


def _module_patterns() -> dict[int, tuple[str, re.Pattern[str]]]:
    """Every compiled pattern held at module level in mfhelm, once each."""
    found: dict[int, tuple[str, re.Pattern[str]]] = {}
    for info in pkgutil.walk_packages(mfhelm.__path__, "mfhelm."):
        if info.name == "mfhelm.__main__":  # runs the CLI when imported
            continue
        module = importlib.import_module(info.name)
        for attr, value in vars(module).items():
            if isinstance(value, re.Pattern):
                found.setdefault(id(value), (f"{info.name}.{attr}", value))
    return found


def test_every_module_pattern_is_anchored_and_ascii():
    # Unicode on purpose: Azure's own pattern for these names is .NET's \w.
    unicode_by_design = {id(settings.AZURE_RESOURCES_NAME_RE)}
    patterns = _module_patterns()
    assert id(settings.ORG_PREFIX_RE) in patterns and len(patterns) > 30
    for key, (name, pattern) in patterns.items():
        source = pattern.pattern
        if not isinstance(source, str):
            continue
        assert not source.endswith("$") or source.endswith("\\$"), \
            f"{name}: `$` lets a trailing newline through; end with \\Z (or use fullmatch)"
        if key not in unicode_by_design and re.search(r"\\[dDwWsSbB]", source):
            assert pattern.flags & re.ASCII, f"{name}: \\d, \\w or \\s without re.ASCII"


# ============================================ item 7: tracebacks become lines

def _chart(workdir: Path, chart_yaml: bytes | str | None, values: str | None = "{}\n") -> Path:
    chart = workdir / "mychart"
    chart.mkdir()
    if chart_yaml is not None:
        data = chart_yaml.encode() if isinstance(chart_yaml, str) else chart_yaml
        (chart / "Chart.yaml").write_bytes(data)
    if values is not None:
        (chart / "values.yaml").write_text(values)
    return chart


BOMB = "\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] + [
    f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]) + "\n"

BAD_CHARTS = {
    "malformed": ("name: [x\n", "not valid YAML"),
    "a list": ("- name: x\n", "expected a mapping"),
    "not utf-8": (b"name: \xff\xfe\nversion: 0.1.0\n", "not UTF-8"),
    "no version": ("apiVersion: v2\nname: x\n", "version"),
    "numeric version": ("apiVersion: v2\nname: x\nversion: 1\n", "version"),
    "dependency without a name": ("apiVersion: v2\nname: x\nversion: 0.1.0\n"
                                  "dependencies:\n- version: 1.0.0\n", "dependencies[0]"),
    "dependency not a mapping": ("apiVersion: v2\nname: x\nversion: 0.1.0\n"
                                 "dependencies:\n- argo\n", "dependencies[0]"),
    "dependencies not a list": ("apiVersion: v2\nname: x\nversion: 0.1.0\n"
                                "dependencies: argo\n", "dependencies"),
    "condition not text": ("apiVersion: v2\nname: x\nversion: 0.1.0\ndependencies:\n"
                           "- {name: a, version: 1.0.0, condition: [a]}\n", "condition"),
}


@pytest.mark.parametrize("kind", BAD_CHARTS)
def test_broken_chart_directory(cli, workdir, closed_port_kubeconfig, kind):
    content, fragment = BAD_CHARTS[kind]
    chart = _chart(workdir, content)
    r = cli("install", "--local", "--no-argo", "--chart", str(chart), "--kubeconfig", closed_port_kubeconfig)
    assert_one_line_error(r, "Chart.yaml", fragment)


@pytest.mark.parametrize(("values", "fragment"), [("- a\n", "mapping"),
                                                  ("a: [\n", "not valid YAML")])
def test_broken_chart_values(cli, workdir, closed_port_kubeconfig, values, fragment):
    chart = _chart(workdir, "apiVersion: v2\nname: x\nversion: 0.1.0\n", values)
    r = cli("install", "--local", "--no-argo", "--chart", str(chart), "--kubeconfig", closed_port_kubeconfig)
    assert_one_line_error(r, "values.yaml", fragment)


def test_chart_without_values_yaml_gets_to_the_cluster_step(cli, workdir, closed_port_kubeconfig):
    # helm installs a chart without values.yaml; so does mfhelm: it fails
    # only at the closed port, with its own line.
    chart = _chart(workdir, "apiVersion: v2\nname: x\nversion: 0.1.0\n", values=None)
    r = cli("install", "--local", "--no-argo", "--chart", str(chart), "--kubeconfig", closed_port_kubeconfig)
    assert_one_line_error(r)
    assert "values.yaml" not in r.err


def test_mfhelm_helm_a_directory(cli, workdir, closed_port_kubeconfig, monkeypatch):
    monkeypatch.setenv("MFHELM_HELM", str(workdir))
    r = cli("install", "--local", "--no-argo", "--kubeconfig", closed_port_kubeconfig)
    assert_one_line_error(r, "MFHELM_HELM", "not an executable file")
    assert_one_line_error(cli("status", "--kubeconfig", closed_port_kubeconfig), "MFHELM_HELM")


@pytest.mark.parametrize("length", [101, 150, 204, 255])
def test_dag_name_longer_than_the_tar_header(cli, workdir, closed_port_kubeconfig, length):
    (workdir / "d.py").write_text(DAG)
    name = "a" * (length - 3) + ".py"
    r = cli("dag-push", "d.py", "--name", name, "--kubeconfig", closed_port_kubeconfig)
    assert_one_line_error(r, "DAG file name", "at most 100")
    long_file = workdir / name
    long_file.write_text(DAG)
    assert_one_line_error(cli("dag-push", name, "--kubeconfig", closed_port_kubeconfig), "--name")
    assert_one_line_error(cli("dag-push", "--remove", name, "--kubeconfig", closed_port_kubeconfig), "at most 100")


def test_dag_name_of_100_characters_packs(cli, workdir, closed_port_kubeconfig):
    name = "a" * 97 + ".py"
    assert dags.check_dag_name(name, "--name") == name
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(dags.pack(name, b"x"))) as tar:
        assert tar.getnames() == [name]
    (workdir / "d.py").write_text(DAG)
    assert_one_line_error(cli("dag-push", "d.py", "--name", name, "--kubeconfig", closed_port_kubeconfig),
                          "cannot reach")


def _bounded_mfhelm(cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """`python -m mfhelm ARGS` limited to 1 GiB of address space and a minute.
    Alias bombs are only ever fed to mfhelm in here: without the bound, one
    expands to 10^9 nodes and would take the test runner's memory with it."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mfhelm", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=60, preexec_fn=limit,
                          env={**os.environ, "HOME": str(cwd / "home")})
    return proc, time.monotonic() - start


@pytest.mark.parametrize("where", ["-f", "--kubeconfig", "Chart.yaml", "chart values.yaml"])
def test_alias_bomb_is_refused_quickly_in_bounded_memory(workdir, closed_port_kubeconfig, where):
    (workdir / "bomb.yaml").write_text(BOMB)
    if where == "-f":
        args, fragment = ["render", "--local", "-f", "bomb.yaml"], "values file bomb.yaml"
    elif where == "--kubeconfig":
        args, fragment = ["status", "--kubeconfig", "bomb.yaml"], "kubeconfig bomb.yaml"
    else:
        chart = _chart(workdir, BOMB if where == "Chart.yaml"
                       else "apiVersion: v2\nname: x\nversion: 0.1.0\n",
                       BOMB if where != "Chart.yaml" else "{}\n")
        args = ["install", "--local", "--no-argo", "--chart", str(chart), "--kubeconfig", closed_port_kubeconfig]
        fragment = "Chart.yaml" if where == "Chart.yaml" else "values.yaml"
    proc, elapsed = _bounded_mfhelm(workdir, *args)
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("> ")]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("mfhelm: error: ") and fragment in lines[0], lines[0]
    assert "refused: its aliases expand to more than 1,000,000" in lines[0]
    assert elapsed < 30


def test_alias_cycle_in_a_kubeconfig(cli, workdir):
    (workdir / "closed_port_kubeconfig").write_text("a: &a [*a]\n")
    assert_one_line_error(cli("status", "--kubeconfig", "closed_port_kubeconfig"), "kubeconfig", "cycle")


def test_aliases_within_the_bound_still_load(workdir):
    # Anchors are ordinary YAML: a few hundred expanded nodes are fine.
    (workdir / "v.yaml").write_text("base: &b {replicas: 2, image: x}\n"
                                    "metadata: *b\nui: {<<: *b, replicas: 3}\n")
    data = uservalues.load_file(workdir / "v.yaml")
    assert data["metadata"] == {"replicas": 2, "image": "x"}
    assert data["ui"] == {"replicas": 3, "image": "x"}
    composed, expanded = userfiles.expanded_size(yaml.compose(BOMB))
    assert composed < 200 and expanded > 10**9


# ========================================================= item 9: one line

@pytest.mark.parametrize(("args", "where"), [
    (["bogus"], "mfhelm"),
    (["install", "--bogus"], "mfhelm install"),
    (["init"], "mfhelm init"),
    (["init", "--location"], "mfhelm init"),
    (["dag-push", "a.py", "b.py"], "mfhelm dag-push"),
    (["install", "--local", "--argo=maybe"], "mfhelm install"),
    (["--debug", "render", "--nope"], "mfhelm render"),
])
def test_usage_errors_are_one_line(cli, workdir, args, where):
    r = cli(*args)
    assert r.code == 2
    assert r.err.count("\n") == 1 and "Usage:" not in r.err, r.err
    assert r.err.startswith("mfhelm: error: ")
    assert r.err.rstrip().endswith(f"(see {where} --help)"), r.err


def test_help_and_version_still_exit_zero(cli):
    assert cli("--version").code == 0
    r = cli("install", "--help")
    assert r.code == 0 and "Usage: mfhelm install" in r.out


def test_uninstall_purge_without_a_terminal(cli, workdir, closed_port_kubeconfig, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    r = cli("uninstall", "--purge", "--kubeconfig", closed_port_kubeconfig)
    assert_one_line_error(r, "--yes")
    assert "Aborted" not in r.err and "Delete the data" not in r.out


def test_dag_compile_warnings_do_not_precede_the_error(workdir, closed_port_kubeconfig):
    (workdir / "warn.py").write_text(DAG + "x = 1\nif x is 1:\n    pass\nassert (x, 'msg')\n")
    proc = subprocess.run([sys.executable, "-m", "mfhelm", "dag-push", "warn.py",
                           "--kubeconfig", closed_port_kubeconfig], capture_output=True, text=True, cwd=workdir,
                          timeout=120, env={**os.environ, "PYTHONWARNINGS": "default"})
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("mfhelm: error: ") and "cannot reach" in lines[0]


def test_long_chart_reference_is_one_progress_line(cli, workdir, closed_port_kubeconfig):
    path = "/".join(["component"] * 300)
    ref = f"oci://127.0.0.1:1/{path}"
    assert len(ref) > 2900
    r = cli("install", "--local", "--no-argo", "--chart", ref, "--version", "0.1.0",
            "--plain-http", "--kubeconfig", closed_port_kubeconfig)
    assert_one_line_error(r, "could not pull")
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    assert len(lines) == 2 and lines[0].startswith("> pulling the chart oci://"), lines[:3]


def test_steps_print_user_text_without_markup(capsys):
    from mfhelm.cli import _Steps

    step = _Steps()
    step("pulling [bold]x[/bold] " + "y" * 500)
    step.close()
    err = capsys.readouterr().err
    assert err == "> pulling [bold]x[/bold] " + "y" * 500 + "\n"


@pytest.mark.parametrize("expr", ["=x", ".a.b=x", "a..b=x", "[0]=x", "a=1,=x"])
def test_set_with_an_empty_key_is_refused(cli, workdir, expr):
    r = cli("render", "--local", "--set", expr)
    assert_one_line_error(r, f"--set {expr}", "empty")


# ============================================ item 10: files and secrets


def _render_o(cli, workdir, target: str):
    return cli("render", "--outputs", str(write_outputs(workdir / "outputs.json")), "-o", target)


def _write_with(cli, workdir, command: str, target: str):
    """`render -o TARGET` or `init --settings TARGET`."""
    if command == "render":
        return _render_o(cli, workdir, target)
    return cli("init", "--org-prefix", "acme", "--settings", target)


def test_render_output_to_a_dangling_symlink_creates_nothing(cli, workdir):
    (workdir / "elsewhere").mkdir()
    (workdir / "out.yaml").symlink_to(workdir / "elsewhere" / "created.yaml")
    r = _render_o(cli, workdir, "out.yaml")
    assert_one_line_error(r, "out.yaml", "symbolic link")
    assert not list((workdir / "elsewhere").iterdir())


def test_init_through_a_symlink(cli, workdir):
    (workdir / "elsewhere").mkdir()
    (workdir / "new.toml").symlink_to(workdir / "elsewhere" / "mfhelm.toml")
    r = cli("init", "--org-prefix", "acme", "--settings", "new.toml")
    assert_one_line_error(r, "exists", "--force")
    r = cli("init", "--org-prefix", "acme", "--settings", "new.toml", "--force")
    assert_one_line_error(r, "new.toml", "symbolic link")
    assert not list((workdir / "elsewhere").iterdir())


@pytest.mark.parametrize("dangling", [True, False])
def test_config_through_a_symlink(cli, workdir, dangling):
    cfg = workdir / "home" / ".metaflowconfig"
    cfg.mkdir()
    real = workdir / "dotfiles-config.json"
    if not dangling:
        real.write_text('{"A": "b"}')
    (cfg / "config.json").symlink_to(real)
    r = cli("config", "--outputs", str(write_outputs(workdir / "outputs.json")))
    assert_one_line_error(r, "config.json", "symbolic link")
    assert real.exists() is not dangling
    assert dangling or real.read_text() == '{"A": "b"}'
    assert [p.name for p in cfg.iterdir()] == ["config.json"]


def test_config_backup_is_never_written_through_a_link(workdir, monkeypatch):
    from datetime import datetime

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[override]
            return datetime(2030, 1, 2, 3, 4, 5)

    monkeypatch.setattr(metaflow_config, "datetime", Frozen)
    home = workdir / "mf"
    home.mkdir()
    (home / "config.json").write_text('{"OLD": "1"}')
    outside = workdir / "outside.json"
    (home / "config.json.bak-20300102T030405").symlink_to(outside)
    metaflow_config.write_config({"NEW": "2"}, home=home)
    assert not outside.exists()
    backup = home / "config.json.bak-20300102T030405-1"
    assert backup.read_text() == '{"OLD": "1"}'
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600


@pytest.mark.parametrize("command", ["render", "init"])
def test_path_ending_in_a_slash_for_a_missing_directory(cli, workdir, command):
    before = _files(workdir)
    r = _write_with(cli, workdir, command, "out/")
    assert_one_line_error(r, "out/", "does not exist")
    assert not (workdir / "out").exists()
    assert _files(workdir) - before <= {workdir / "outputs.json"}


def test_path_ending_in_a_slash_for_an_existing_directory(cli, workdir):
    (workdir / "out").mkdir()
    assert_one_line_error(_render_o(cli, workdir, "out/"), "is a directory")
    assert not list((workdir / "out").iterdir())


@pytest.fixture
def umask_000():
    old = os.umask(0)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_modes_ignore_a_permissive_umask(cli, workdir, umask_000):
    r = _render_o(cli, workdir, "values.yaml")
    assert r.code == 0, r.err
    # -f/--set layers may carry credentials mfhelm cannot recognise: private.
    assert _mode(workdir / "values.yaml") == 0o600
    r = cli("init", "--org-prefix", "acme", "--settings", "new.toml")
    assert r.code == 0, r.err
    # No secrets, but it decides where deploys go: nobody else writes it.
    assert _mode(workdir / "new.toml") == 0o644
    (workdir / "old.toml").write_text("x")
    (workdir / "old.toml").chmod(0o666)
    assert cli("init", "--org-prefix", "acme", "--settings", "old.toml", "--force").code == 0
    assert _mode(workdir / "old.toml") == 0o644
    r = cli("config", "--outputs", str(workdir / "outputs.json"))
    assert r.code == 0, r.err
    assert _mode(workdir / "home" / ".metaflowconfig" / "config.json") == 0o600


def test_a_strict_umask_still_narrows_the_settings_file(cli, workdir):
    old = os.umask(0o077)
    try:
        assert cli("init", "--org-prefix", "acme", "--settings", "s.toml").code == 0
    finally:
        os.umask(old)
    assert _mode(workdir / "s.toml") == 0o600


@pytest.mark.parametrize("chart", [
    "oci://robot:S3cretPassw0rd@registry.example.com/charts/metaflow",
    "oci://robot:S3cretPassw0rd@registry.example.com/charts/metaflow@sha256:ab",
    "https://robot:S3cretPassw0rd@registry.example.com/charts/metaflow",
    "oci://robot:S3cret/Passw0rd@registry.example.com/charts/metaflow",
])
def test_chart_reference_password_is_not_echoed(cli, workdir, closed_port_kubeconfig, chart):
    r = cli("install", "--local", "--chart", chart, "--version", "0.1.0", "--kubeconfig", closed_port_kubeconfig)
    assert_one_line_error(r, "--chart")
    assert "S3cret" not in r.err + r.out and "Passw0rd" not in r.err + r.out


def test_redact_knows_secrets_and_url_passwords():
    errors.forget_secrets()
    try:
        errors.remember_secret("Kept_In_Vault_4711/xyz")
        errors.remember_secret("abc")  # too short to redact safely: ignored
        text = ("az: password 'Kept_In_Vault_4711/xyz' (Kept_In_Vault_4711%2Fxyz) rejected; "
                "postgresql://mf:Other-Pw@db:5432/x; https://host:443/path; abc")
        assert errors.redact(text) == ("az: password '***' (***) rejected; "
                                       "postgresql://mf:***@db:5432/x; https://host:443/path; abc")
    finally:
        errors.forget_secrets()


@pytest.mark.parametrize("command", ["render", "init"])
def test_an_empty_path_to_write(cli, workdir, command):
    before = _files(workdir)
    r = _write_with(cli, workdir, command, "")
    assert_one_line_error(r, "an empty path")
    assert _files(workdir) - before <= {workdir / "outputs.json"}


def test_chart_that_cannot_be_copied_to_drop_a_dependency(cli, workdir, closed_port_kubeconfig):
    # A missing, disabled dependency makes mfhelm copy the chart without it;
    # a dangling symlink in the chart made that copy a traceback.
    chart = _chart(workdir, "apiVersion: v2\nname: x\nversion: 0.1.0\ndependencies:\n"
                   "- {name: a, version: 1.0.0, condition: a.enabled}\n")
    (chart / "dangling").symlink_to(workdir / "nowhere")
    r = cli("install", "--local", "--no-argo", "--chart", str(chart), "--kubeconfig", closed_port_kubeconfig)
    assert_one_line_error(r, "cannot copy it", "dangling")


@pytest.mark.parametrize(("option", "value"), [("--profile", "dev\n"),
                                               ("--service-url", "http://localhost:8080\n")])
def test_config_arguments_are_checked_before_settings_and_azure(cli, workdir, option, value):
    # No mfhelm.toml and no outputs: the argument is what gets refused.
    (workdir / "mfhelm.toml").unlink()
    r = cli("config", option, value)
    assert_one_line_error(r, "profile" if option == "--profile" else "service URL")
