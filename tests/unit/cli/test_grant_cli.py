"""mfhelm grant / revoke on the command line: bad input is one line before
anything is contacted (the kubeconfig's server is a closed port, so a
check that came after a cluster call would say something else)."""

from __future__ import annotations

from conftest import assert_one_line_error


def test_grant_needs_a_group_or_list(cli, workdir, closed_port_kubeconfig):
    assert_one_line_error(cli("grant", "--local", "--kubeconfig", closed_port_kubeconfig),
                          "give --group GROUP, or --list")
    assert_one_line_error(cli("grant", "--local", "--list", "-g", "x", "--kubeconfig",
                              closed_port_kubeconfig), "give --group GROUP, or --list")


def test_grant_refuses_an_unknown_role(cli, workdir, closed_port_kubeconfig):
    assert_one_line_error(cli("grant", "--local", "-g", "ml-team", "--role", "admin",
                              "--kubeconfig", closed_port_kubeconfig),
                          "--role admin: not a role", "data-scientist, viewer")


def test_grant_refuses_an_empty_group(cli, workdir, closed_port_kubeconfig):
    assert_one_line_error(cli("grant", "--local", "-g", " ", "--kubeconfig",
                              closed_port_kubeconfig), "--group")


def test_revoke_needs_a_group(cli, workdir):
    assert_one_line_error(cli("revoke", "--local"), "--group", "mfhelm revoke --help")


def test_grant_with_a_bad_timeout_is_refused_first(cli, workdir, closed_port_kubeconfig):
    assert_one_line_error(cli("grant", "--local", "-g", "ml-team", "--timeout", "soon",
                              "--kubeconfig", closed_port_kubeconfig), "soon")


def test_grant_on_an_unreachable_cluster_is_one_line(cli, workdir, closed_port_kubeconfig):
    result = cli("grant", "--local", "-g", "ml-team", "--kubeconfig", closed_port_kubeconfig)
    assert_one_line_error(result)


def test_grant_is_listed_in_help(cli):
    out = cli("--help").out
    assert "grant" in out and "revoke" in out
