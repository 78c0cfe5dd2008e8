"""Fixtures for the cluster tests.

`cluster` (session): one running cluster for the whole session, either the
local control plane with KWOK nodes (default) or kind (MFHELM_TEST_KIND=1).
`namespace` (function): a fresh namespace in it, deleted afterwards.
`node_ready_watch` (session): every change of a pool node's Ready condition
(nodewatch.py); a test during which a node left Ready fails at teardown,
named, and so does the session's last one for what came after.
`argo_build` (session): Argo's controller and CRDs at the pinned version, the
CRDs applied (argo.py). `metaflow_env` (session): the real Metaflow with the
config `mfhelm config` writes, Blob on a real Azurite over HTTPS and a token
from an Entra-shaped endpoint (metaflow_env.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from . import argo as argo_mod
from . import metaflow_env as mfenv
from .controlplane import ToolchainMissing, start_controlplane
from .handle import Cluster
from .kindcluster import KindUnavailable, kind_requested, start_kind
from .nodewatch import NodeReadyWatch, Transition
from .pki import CertificateAuthority


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    try:
        if kind_requested():
            handle, stop = start_kind(workdir)
        else:
            handle, stop = start_controlplane(workdir)
    except (ToolchainMissing, KindUnavailable) as exc:
        pytest.skip(reason=str(exc))
    request.addfinalizer(stop)
    yield handle


def _left_ready(transitions: list[Transition], cluster: Cluster) -> str:
    lines = "\n".join(f"  {t}" for t in transitions)
    return (f"a node left Ready:\n{lines}\nThe node lifecycle controller marks the pods "
            f"of such a node NotReady. On KWOK nodes it means no Lease renewal or Ready "
            f"heartbeat reached the API server for a whole --node-monitor-grace-period "
            f"(KWOK stopped, or the control plane itself stalled): see "
            f"{cluster.workdir / 'logs'} (kwok.log, kube-controller-manager.log, "
            f"node-ready.log)")


@pytest.fixture(scope="session")
def node_ready_watch(cluster: Cluster) -> Iterator[NodeReadyWatch]:
    watch = NodeReadyWatch(cluster.kubeconfig, set(cluster.nodes.values()),
                           cluster.workdir / "logs" / "node-ready.log")
    watch.start()
    yield watch
    watch.during = "the end of the session"
    watch.stop()
    missed = watch.unreported()
    if missed:
        pytest.fail(_left_ready(missed, cluster))


@pytest.fixture(autouse=True)
def _nodes_stay_ready(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail, at teardown, a test on the session's cluster during which a node
    left Ready: otherwise it shows only as some later wait timing out."""
    if "cluster" not in request.fixturenames:
        yield
        return
    watch: NodeReadyWatch = request.getfixturevalue("node_ready_watch")
    watch.during = request.node.nodeid
    yield
    watch.during = f"after {request.node.nodeid}"
    left = watch.unreported()
    if left:
        pytest.fail(_left_ready(left, request.getfixturevalue("cluster")))


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


@pytest.fixture
def release_namespaces(cluster: Cluster) -> Iterator[tuple[str, str]]:
    """A release namespace and its flow namespace (`<release>-flows`), both
    removed after the test."""
    ns = cluster.create_namespace(f"rel-{uuid.uuid4().hex[:6]}")
    flow_ns = cluster.create_namespace(f"{ns}-flows")
    yield ns, flow_ns
    cluster.delete_namespace(flow_ns)
    cluster.delete_namespace(ns)


# --- real Metaflow against Azurite (HTTPS, OAuth) and an Entra-shaped token endpoint ---
# See metaflow_env.py. Session-scoped: each Metaflow command is its own process and
# asks for its own token, so tests tell their requests apart by counting before/after.




@pytest.fixture(scope="session")
def metaflow_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("metaflow-ca"))


@pytest.fixture(scope="session")
def azurite_https(tmp_path_factory: pytest.TempPathFactory,
                  metaflow_ca: CertificateAuthority) -> Iterator[mfenv.Azurite]:
    if mfenv.azurite_binary() is None:
        pytest.skip(reason="azurite-blob not in .venv/bin (run `make test-tools`)")
    azurite = mfenv.start_azurite(tmp_path_factory.mktemp("azurite"), metaflow_ca,
                                  "metaflow-storage")
    yield azurite
    azurite.stop()


@pytest.fixture(scope="session")
def stack_outputs() -> dict[str, Any]:
    """The test stack's deployment outputs, as tests/unit use them."""
    import fake_arm

    return fake_arm.sample_outputs()


@pytest.fixture(scope="session")
def entra_endpoint(metaflow_ca: CertificateAuthority,
                   stack_outputs: dict[str, Any]) -> Iterator[mfenv.FakeEntra]:
    entra = mfenv.FakeEntra(
        tenant=stack_outputs["tenantId"], client_id=stack_outputs["identityClientId"],
        federated_token=mfenv.federated_token(stack_outputs))
    with mfenv.serve_entra(metaflow_ca, entra):
        yield entra


@pytest.fixture(scope="session")
def metadata_ping() -> Iterator[mfenv.FakeMetadata]:
    with mfenv.serve_metadata_ping() as fake:
        yield fake


@pytest.fixture(scope="session")
def metaflow_env(tmp_path_factory: pytest.TempPathFactory, azurite_https: mfenv.Azurite,
                 entra_endpoint: mfenv.FakeEntra, metadata_ping: mfenv.FakeMetadata,
                 stack_outputs: dict[str, Any]) -> mfenv.MetaflowEnv:
    from mfhelm.settings import parse

    settings = parse({"org_prefix": "acme", "location": "westeurope"})
    return mfenv.build_metaflow_env(
        tmp_path_factory.mktemp("metaflow-user"), azurite=azurite_https,
        entra=entra_endpoint, metadata=metadata_ping, outputs=stack_outputs,
        settings=settings)


@pytest.fixture(scope="session")
def metadata_service(tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[mfenv.MetadataService]:
    """metaflow-local-service, for runs whose steps really run (metaflow_env.py)."""
    service = mfenv.start_metadata_service(tmp_path_factory.mktemp("metadata-service"))
    yield service
    service.stop()


@pytest.fixture(scope="session")
def metaflow_runs(tmp_path_factory: pytest.TempPathFactory, azurite_https: mfenv.Azurite,
                  entra_endpoint: mfenv.FakeEntra, metadata_service: mfenv.MetadataService,
                  stack_outputs: dict[str, Any]) -> mfenv.MetaflowEnv:
    """As `metaflow_env`, with a metadata service that records runs: for flows
    whose steps run on the process kubelet (argo.taskworkers_on_process_kubelet)."""
    from mfhelm.settings import parse

    settings = parse({"org_prefix": "acme", "location": "westeurope"})
    return mfenv.build_metaflow_env(
        tmp_path_factory.mktemp("metaflow-runs"), azurite=azurite_https,
        entra=entra_endpoint, metadata=mfenv.FakeMetadata(url=metadata_service.url),
        outputs=stack_outputs, settings=settings)


# --- Argo Workflows: the pinned controller and CRDs (see argo.py) ---



@pytest.fixture(scope="session")
def argo_build(cluster: Cluster) -> argo_mod.ArgoBuild:
    """Argo's workflow controller and minimal CRDs at the pinned version
    (built with Go on first use, cached after), the CRDs applied to the cluster."""
    try:
        build = argo_mod.ensure_argo()
    except ToolchainMissing as exc:
        pytest.skip(reason=str(exc))
    argo_mod.apply_crds(cluster, build)
    return build
