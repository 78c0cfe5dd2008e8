"""mfhelm grant / revoke on a real release: the API server's own authorizer
(SubjectAccessReviews) judges a member of the group before and after.

Local profile: `python -m mfhelm grant --local` as a user runs it, on a
release `mfhelm install --local` made; the Kubernetes part only. Azure
profile: mfhelm.grant.grant with ARM and Graph served by the local Azure
stand-in (AKS handing out this cluster's kubeconfig), on a release
stack.install_azure made: the role assignments and the RoleBinding both,
and a failed upgrade undoes the role assignments.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import fake_arm
import pytest

from .handle import Cluster
from .test_e2e_stack import install_local, mfhelm, one_error_line, release_secret_revisions

pytestmark = pytest.mark.cluster

RELEASE = "gr"


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> tuple[str, str]:
    ns = cluster.create_namespace(f"grant-{uuid.uuid4().hex[:6]}")
    proc = install_local(cluster, ns, RELEASE)
    assert proc.returncode == 0, proc.stderr
    return ns, f"{ns}-flows"


def _grant(cluster: Cluster, ns: str, *args: str):
    return mfhelm(cluster, *args, "--local", "-n", ns, "--release", RELEASE, "--timeout", "4m")


class Member:
    """A person in `group`, as the API server judges them."""

    def __init__(self, cluster: Cluster, name: str, group: str, flows: str) -> None:
        self.cluster, self.name, self.group, self.flows = cluster, name, group, flows

    def can(self, verb: str, resource: str, group: str = "", subresource: str = "") -> bool:
        return self.cluster.can_i(self.name, verb, resource, namespace=self.flows, group=group,
                                  subresource=subresource,
                                  groups=[self.group, "system:authenticated"])

    def settles(self, check: Callable[[], bool], expected: bool = True) -> None:
        """Wait until the authorizer gives `expected` for `check` after a grant or
        revoke: its caches of Roles and bindings trail the write."""
        self.cluster.wait_for(lambda: check() == expected, 30,
                              f"{self.name}: {check.__name__} to be {expected}")

    def creates_workflows(self) -> bool:
        return self.can("create", "workflows", "argoproj.io")

    def reads_logs(self) -> bool:
        return self.can("get", "pods", subresource="log")

    def lists_cron(self) -> bool:
        return self.can("list", "cronworkflows", "argoproj.io")

    def reads_secrets(self) -> bool:
        return self.can("get", "secrets") or self.can("list", "secrets")


def test_grant_and_revoke_on_the_local_profile(cluster: Cluster, release):
    ns, flows = release
    alice = Member(cluster, "alice", "ml-team", flows)
    bob = Member(cluster, "bob", "ml-watchers", flows)
    for who in (alice, bob):
        assert not who.creates_workflows() and not who.reads_logs() and not who.lists_cron()

    done = _grant(cluster, ns, "grant", "--group", "ml-team")
    assert done.returncode == 0, done.stderr
    assert "local profile: Kubernetes only" in done.stdout
    alice.settles(alice.creates_workflows)
    assert "group ml-team: data-scientist" in done.stdout
    assert alice.creates_workflows() and alice.reads_logs() and alice.lists_cron()
    assert alice.can("get", "events") and alice.can("list", "pods")
    assert not alice.reads_secrets()
    assert not alice.can("create", "pods") and not alice.can("create", "pods", subresource="exec")
    assert not cluster.can_i("alice", "create", "workflows", namespace=ns, group="argoproj.io",
                             groups=["ml-team", "system:authenticated"])
    assert not bob.creates_workflows()

    done = _grant(cluster, ns, "grant", "--group", "ml-watchers", "--role", "viewer")
    assert done.returncode == 0, done.stderr
    bob.settles(bob.reads_logs)
    assert bob.reads_logs() and bob.lists_cron() and bob.can("watch", "workflows", "argoproj.io")
    assert not bob.creates_workflows() and not bob.reads_secrets()
    assert not bob.can("delete", "workflows", "argoproj.io")
    assert not bob.can("delete", "pods")

    listed = _grant(cluster, ns, "grant", "--list")
    assert listed.returncode == 0, listed.stderr
    assert "ml-team: data-scientist (dataScientists.groups)" in listed.stdout
    assert "ml-watchers: viewer (viewers.groups)" in listed.stdout

    # Idempotent: the same grant again writes no new revision.
    revisions = release_secret_revisions(cluster, ns, RELEASE)
    again = _grant(cluster, ns, "grant", "--group", "ml-team")
    assert again.returncode == 0, again.stderr
    assert "already data-scientist" in again.stdout and "nothing to change" in again.stdout
    assert release_secret_revisions(cluster, ns, RELEASE) == revisions

    # A later install keeps what grant gave.
    reinstalled = install_local(cluster, ns, RELEASE)
    assert reinstalled.returncode == 0, reinstalled.stderr
    assert alice.creates_workflows() and bob.reads_logs()

    done = _grant(cluster, ns, "revoke", "--group", "ml-team")
    assert done.returncode == 0, done.stderr
    assert "removed from dataScientists.groups" in done.stdout
    alice.settles(alice.creates_workflows, False)
    assert not alice.creates_workflows() and not alice.reads_logs()
    assert bob.reads_logs()  # the other team keeps its access
    done = _grant(cluster, ns, "revoke", "--group", "ml-watchers")
    assert done.returncode == 0, done.stderr
    bob.settles(bob.reads_logs, False)
    assert not bob.reads_logs()
    again = _grant(cluster, ns, "revoke", "--group", "ml-watchers")
    assert again.returncode == 0 and "not in the release's values" in again.stdout


def test_grant_refuses_a_missing_release(cluster: Cluster, namespace: str):
    line = one_error_line(mfhelm(cluster, "grant", "--local", "-g", "ml-team", "-n", namespace,
                                 "--release", "nothing-here"))
    assert "no release 'nothing-here'" in line and "mfhelm install" in line


# --- azure profile ----------------------------------------------------------------------------

DS = "11111111-2222-3333-4444-555555555555"
PASSWORD = "kv-Only-Pw-5c1a"


@pytest.fixture
def azure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster: Cluster):
    """A deployment federated for its own namespaces, AKS handing out the test
    cluster's kubeconfig, Key Vault the admin password, Graph a tenant with
    the team's group, ARM its role assignments."""
    gen = fake_arm.serve(tmp_path)
    fake = next(gen)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(fake.ca_file))
    suffix = uuid.uuid4().hex[:5]
    outputs = fake_arm.sample_outputs() | {
        "deployArgo": False, "keyVaultUri": fake.base_url + "/",
        "serviceNamespace": f"mfg{suffix}", "flowNamespace": f"mfg{suffix}-flows"}
    creds = (f"/subscriptions/{fake_arm.SUB}/resourceGroups/{outputs['resourceGroupName']}"
             f"/providers/Microsoft.ContainerService/managedClusters/{outputs['aksClusterName']}"
             "/listClusterUserCredential")
    fake.route("POST", creds, 200, fake_arm.kubeconfig_body(cluster.kubeconfig.read_bytes()))
    name = outputs["postgresAdminSecretName"]
    fake.route("GET", f"/secrets/{name}", 200, fake_arm.secret_body(fake.base_url, name, PASSWORD))
    directory = fake_arm.Directory()
    directory.add_group(DS, "ml-team")
    authz = fake_arm.Authorization(directory)
    fake_arm.serve_directory(fake, directory)
    fake_arm.serve_authorization(fake, authz)
    yield fake, outputs, authz
    gen.close()


def test_grant_on_the_azure_profile_assigns_roles_and_binds_the_group(cluster: Cluster, azure):
    from mfhelm import grant, settings, stack
    from mfhelm.azure import access
    from mfhelm.errors import MfhelmError

    fake, outputs, authz = azure
    ns = outputs["serviceNamespace"]
    s = settings.parse({"org_prefix": "acme", "location": "westeurope",
                        "helm": {"namespace": ns, "flow_namespace": outputs["flowNamespace"]}})
    target = stack.Target("mfg", ns)
    cred = fake_arm.FakeCredential()
    stack.install_azure(target, s, outputs, credential=cred, subscription_id=fake_arm.SUB,
                        timeout="4m", arm_base_url=fake.base_url,
                        verify_challenge_resource=False)
    side = grant.AzureSide(outputs, cred, fake_arm.SUB, fake.base_url, fake.base_url)
    member = Member(cluster, "carol", DS, outputs["flowNamespace"])
    container, aks = access.scopes(outputs)

    # The upgrade fails (another install holds the release): the role
    # assignments this run made are taken back.
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(cluster.api_client())
    (record,) = [sec for sec in core.list_namespaced_secret(
        ns, label_selector="owner=helm,name=mfg").items]
    core.patch_namespaced_secret(record.metadata.name, ns,
                                 {"metadata": {"labels": {"status": "pending-upgrade"}}})
    with pytest.raises(MfhelmError) as refused:
        grant.grant(target, "ml-team", "data-scientist", azure=side, timeout="4m")
    assert "another install may be running" in str(refused.value)
    assert "this run's changes were undone" in str(refused.value)
    assert authz.assignments == {}
    assert not member.creates_workflows()
    core.patch_namespaced_secret(record.metadata.name, ns,
                                 {"metadata": {"labels": {"status": "deployed"}}})

    out = grant.grant(target, "ml-team", "data-scientist", azure=side, timeout="4m")
    assert authz.held(DS) == {(container, access.BLOB_DATA_CONTRIBUTOR),
                              (aks, access.AKS_CLUSTER_USER)}
    assert any(line.startswith("group ml-team (") for line in out.lines)
    member.settles(member.creates_workflows)
    assert member.creates_workflows() and member.reads_logs() and not member.reads_secrets()

    listed = grant.list_grants(target, azure=side, timeout="4m")
    assert f"ml-team ({DS}): data-scientist (dataScientists.groups)" in listed
    assert "  Storage Blob Data Contributor on container metaflow-storage: present" in listed

    grant.grant(target, DS, None, azure=side, timeout="4m")
    assert authz.held(DS) == set()
    member.settles(member.creates_workflows, False)
    assert not member.creates_workflows() and not member.reads_logs()
