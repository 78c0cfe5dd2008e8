"""A Kubernetes client failure met in the middle of a command (the API
server went away, a call was refused) is one line too; a bug is not hidden."""

from __future__ import annotations

import pytest
from conftest import assert_one_line_error
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import MaxRetryError, NewConnectionError


def _dropped(*_args, **_kwargs):
    reason = NewConnectionError(None, "Failed to establish a new connection: "
                                "[Errno 111] Connection refused")
    raise MaxRetryError(None, "/apis/apps/v1/namespaces/metaflow/deployments", reason)


def _refused(*_args, **_kwargs):
    raise ApiException(status=500, reason="Internal Server Error")


def _bug(*_args, **_kwargs):
    raise RuntimeError("a bug")


@pytest.mark.parametrize(("failure", "fragment"), [
    (_dropped, "connection refused"),
    (_refused, "500 Internal Server Error"),
])
def test_cluster_failure_mid_command_is_one_line(cli, workdir, monkeypatch, failure, fragment):
    monkeypatch.setattr("mfhelm.stack.status", failure)
    assert_one_line_error(cli("status"), fragment)


def test_a_bug_keeps_its_traceback(cli, workdir, monkeypatch):
    monkeypatch.setattr("mfhelm.stack.status", _bug)
    with pytest.raises(RuntimeError, match="a bug"):
        cli("status")


def test_port_forward_service_listing_refused_is_one_line(cli, workdir, monkeypatch):
    monkeypatch.setattr("mfhelm.kube.api_client", lambda *a, **k: object())

    def forbidden(self, namespace, **kwargs):
        raise ApiException(status=403, reason="Forbidden")

    monkeypatch.setattr("kubernetes.client.CoreV1Api.list_namespaced_service", forbidden)
    assert_one_line_error(cli("port-forward"), "listing Services in metaflow", "forbidden")
