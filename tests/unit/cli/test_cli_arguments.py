"""Arguments are checked before the first cluster call or write: a helm
duration, release and namespace names, DAG file names and DAG sizes.

Every case points the command at a kubeconfig whose server is a closed port:
a check that came after any cluster call would fail with a different line.
"""

from __future__ import annotations

import time

import pytest
from conftest import assert_one_line_error

from mfhelm import settings
from mfhelm.errors import MfhelmError

DAG = "from airflow import DAG\nwith DAG('x') as dag:\n    pass\n"


# ---------------------------------------------------------------- --timeout

@pytest.mark.parametrize("value", ["10m", "1h30m", "90s", "1.5h", "300ms", "2h45m30.5s",
                                   "1µs", "1us", "15m0s"])
def test_helm_durations_accepted(value):
    assert settings.check_timeout(value) == value


@pytest.mark.parametrize("value", ["banana", "10", "", " 10m", "10 m", "-5m", "+5m", "0s", "0",
                                   "1h30", "1d", "10M", "m", ".s", "9999999999999h"])
def test_helm_durations_refused(value):
    with pytest.raises(MfhelmError, match="--timeout"):
        settings.check_timeout(value)


@pytest.mark.parametrize("value", ["banana", "10", "-5m", "0s"])
def test_install_refuses_a_bad_timeout_before_anything(cli, workdir, closed_port_kubeconfig,
                                                       value):
    r = cli("install", "--local", "--no-argo", "--timeout", value,
            "--kubeconfig", closed_port_kubeconfig)
    assert_one_line_error(r, "--timeout", repr(value))


def test_install_azure_refuses_a_bad_timeout_before_reading_azure(cli, workdir):
    r = cli("install", "--outputs", "missing.json", "--timeout", "banana")
    assert_one_line_error(r, "--timeout")


# ------------------------------------------------------ --release, --namespace

@pytest.mark.parametrize("command", [["status"], ["uninstall"], ["port-forward"],
                                     ["dag-push", "--list"], ["install", "--local"]])
@pytest.mark.parametrize(("option", "value"), [
    ("--namespace", "Bad_NS"), ("--namespace", "a" * 64), ("--namespace", "-x"),
    ("--release", "rel/../x"), ("--release", "UPPER"), ("--release", ""),
])
def test_release_and_namespace_are_checked_first(cli, workdir, closed_port_kubeconfig, command,
                                                 option, value):
    r = cli(*command, option, value, "--kubeconfig", closed_port_kubeconfig)
    assert_one_line_error(r, option, "DNS label")


# --------------------------------------------------------------- DAG names

@pytest.mark.parametrize("name", [
    "../x", "../x.py", "/etc/passwd.py", "a/b.py", "x", "x.txt", "..py", ".hidden.py",
    "a..b.py", "x.py/", "dag name.py", "dåg.py", "x\n.py", "", "-rf.py", "a" * 300 + ".py",
])
def test_dag_push_remove_refuses_what_is_not_a_plain_dag_name(cli, workdir,
                                                              closed_port_kubeconfig, name):
    r = cli("dag-push", "--remove", name, "--kubeconfig", closed_port_kubeconfig)
    assert_one_line_error(r, "DAG file name")


@pytest.mark.parametrize("name", ["../x.py", "/etc/passwd.py", "sub/x.py", "x", "..py",
                                  "a..b.py", "x y.py"])
def test_dag_push_name_refuses_what_is_not_a_plain_dag_name(cli, workdir,
                                                            closed_port_kubeconfig, name):
    (workdir / "d.py").write_text(DAG)
    r = cli("dag-push", "d.py", "--name", name, "--kubeconfig", closed_port_kubeconfig)
    assert_one_line_error(r, "DAG file name")


def test_dag_push_local_file_with_an_unusable_name_needs_name(cli, workdir,
                                                             closed_port_kubeconfig):
    (workdir / "my dag.py").write_text(DAG)
    r = cli("dag-push", "my dag.py", "--kubeconfig", closed_port_kubeconfig)
    assert_one_line_error(r, "DAG file name", "--name")


@pytest.mark.parametrize("name", ["x.py", "my-dag.py", "v1.2_dag.py", "Flow_Name-1.py"])
def test_plain_dag_names_pass_to_the_cluster_step(cli, workdir, closed_port_kubeconfig, name):
    r = cli("dag-push", "--remove", name, "--kubeconfig", closed_port_kubeconfig)
    assert_one_line_error(r, "cannot reach")


# ---------------------------------------------------------------- DAG size

def test_dag_file_over_the_limit_fails_fast(cli, workdir, closed_port_kubeconfig):
    big = workdir / "big.py"
    with big.open("wb") as fh:  # sparse: 12 GiB of size, no data on disk
        fh.write(DAG.encode())
        fh.truncate(12 * 1024**3)
    start = time.monotonic()
    r = cli("dag-push", "big.py", "--kubeconfig", closed_port_kubeconfig)
    assert time.monotonic() - start < 5
    assert_one_line_error(r, "big.py", "larger than 1 MiB")


def test_dag_file_just_under_the_limit_is_read(cli, workdir, closed_port_kubeconfig):
    f = workdir / "ok.py"
    f.write_text(DAG + "#" * (1024 * 1024 - len(DAG) - 1) + "\n")
    assert f.stat().st_size == 1024 * 1024
    r = cli("dag-push", "ok.py", "--kubeconfig", closed_port_kubeconfig)
    assert_one_line_error(r, "cannot reach")


def test_dag_push_help_states_the_limit(cli):
    from mfhelm import dags

    r = cli("dag-push", "--help")
    assert r.code == 0
    assert f"{dags.MAX_DAG_BYTES // 1024**2} MiB" in r.out
