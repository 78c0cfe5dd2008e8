"""Fixtures for the cluster tests.

`cluster` (session): one running cluster for the whole session, either the
local control plane with KWOK nodes (default) or kind (MFHELM_TEST_KIND=1).
`namespace` (function): a fresh namespace in it, deleted afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from .controlplane import ToolchainMissing, start_controlplane
from .handle import Cluster
from .kindcluster import KindUnavailable, start_kind


def _use_kind() -> bool:
    return os.environ.get("MFHELM_TEST_KIND", "") not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    try:
        if _use_kind():
            handle, stop = start_kind(workdir)
        else:
            handle, stop = start_controlplane(workdir)
    except (ToolchainMissing, KindUnavailable) as exc:
        pytest.skip(reason=str(exc))
    request.addfinalizer(stop)
    yield handle


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = cluster.create_namespace(f"t-{uuid.uuid4().hex[:8]}")
    yield name
    from kubernetes.client.rest import ApiException

    try:
        cluster.core().delete_namespace(name)
    except ApiException as exc:
        if exc.status != 404:
            raise
