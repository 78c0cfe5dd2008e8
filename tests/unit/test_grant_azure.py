"""mfhelm grant's Azure side (mfhelm.azure.access, mfhelm.grant's plan and
apply) against the local stand-in for ARM and Microsoft Graph, which keeps
role assignments and a directory the way the REST APIs do."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import fake_arm
import pytest

from mfhelm import grant
from mfhelm.azure import access
from mfhelm.errors import MfhelmError

OUTS = fake_arm.sample_outputs()
DS = "11111111-2222-3333-4444-555555555555"
VIEW = "66666666-7777-8888-9999-000000000000"
USER = "abababab-cdcd-efef-0101-232323232323"
OTHER_TENANT_GROUP = "fefefefe-0000-1111-2222-333333333333"
CONTAINER, CLUSTER = access.scopes(OUTS)


@pytest.fixture
def azure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple]:
    gen = fake_arm.serve(tmp_path)
    fake = next(gen)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(fake.ca_file))
    directory = fake_arm.Directory()
    directory.add_group(DS, "ml-team")
    directory.add_group(VIEW, "ml-viewers")
    directory.add_user(USER, "Ann Example")
    authz = fake_arm.Authorization(directory)
    fake_arm.serve_directory(fake, directory)
    fake_arm.serve_authorization(fake, authz)
    yield fake, directory, authz
    gen.close()


def clients(fake) -> tuple[access.Directory, access.RoleAssignments]:
    cred = fake_arm.FakeCredential()
    return (access.Directory(fake_arm.TENANT, cred, fake.base_url),
            access.RoleAssignments(fake_arm.SUB, cred, fake.base_url))


def run(fake, group: str, role: str | None) -> list[str]:
    """What grant does on Azure: look up, plan (with the rights checked), apply."""
    directory, ra = clients(fake)
    directory.check_tenant()
    found = directory.group(group)
    plan = grant.plan_azure(directory, ra, OUTS, found.id, role)
    undo: list = []
    try:
        return grant.apply_azure(plan, found.id, undo)
    except MfhelmError:
        grant.undo_all(undo)
        raise


# ------------------------------------------------------------------ pins


def test_built_in_role_ids_are_azures():
    """Azure's built-in roles reference: the ids are the same in every tenant."""
    assert access.BLOB_DATA_CONTRIBUTOR == "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
    assert access.BLOB_DATA_READER == "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
    assert access.AKS_CLUSTER_USER == "4abbcc35-e782-43d8-92c5-2d3f1bd2253f"
    assert access.ROLE_NAMES[access.AKS_CLUSTER_USER] == \
        "Azure Kubernetes Service Cluster User Role"


def test_scopes_are_the_metaflow_container_and_the_cluster():
    rg = f"/subscriptions/{fake_arm.SUB}/resourceGroups/acme-metaflow-rg/providers"
    container, cluster = access.scopes(OUTS)
    assert container == (f"{rg}/Microsoft.Storage/storageAccounts/acmemfstore1234567/"
                         "blobServices/default/containers/metaflow-storage")
    assert cluster == f"{rg}/Microsoft.ContainerService/managedClusters/acme-metaflow-aks"


def test_assignment_names_are_deterministic_guids():
    a, b = access.assignments_for("data-scientist", OUTS)
    assert a.name(DS) == a.name(DS.upper()) and access.is_guid(a.name(DS))
    assert len({a.name(DS), a.name(VIEW), b.name(DS)}) == 3


# ----------------------------------------------------------------- grant


def test_data_scientist_gets_blob_contributor_on_the_container_and_cluster_user(azure):
    fake, _, authz = azure
    lines = run(fake, DS, "data-scientist")
    assert authz.held(DS) == {(CONTAINER, access.BLOB_DATA_CONTRIBUTOR),
                              (CLUSTER, access.AKS_CLUSTER_USER)}
    assert lines == ["assigned Storage Blob Data Contributor on container metaflow-storage",
                     "assigned Azure Kubernetes Service Cluster User Role on AKS cluster "
                     "acme-metaflow-aks"]
    puts = [r for r in fake.requests if r.method == "PUT"]
    assert {r.body["properties"]["principalType"] for r in puts} == {"Group"}
    assert {r.query["api-version"][0] for r in puts} == {"2022-04-01"}
    assert puts[0].body["properties"]["roleDefinitionId"] == (
        f"/subscriptions/{fake_arm.SUB}/providers/Microsoft.Authorization/roleDefinitions/"
        f"{access.BLOB_DATA_CONTRIBUTOR}")
    # Graph was asked with a Graph token, ARM with an ARM one (the fake refuses others).
    assert any(r.path.startswith("/v1.0/groups/") for r in fake.requests)


def test_viewer_gets_blob_reader(azure):
    fake, _, authz = azure
    run(fake, "ml-viewers", "viewer")
    assert authz.held(VIEW) == {(CONTAINER, access.BLOB_DATA_READER),
                                (CLUSTER, access.AKS_CLUSTER_USER)}


def test_grant_twice_changes_nothing_the_second_time(azure):
    fake, _, authz = azure
    run(fake, DS, "data-scientist")
    before = dict(authz.assignments)
    fake.requests.clear()
    assert run(fake, DS, "data-scientist") == []
    assert authz.assignments == before
    assert not [r for r in fake.requests if r.method in ("PUT", "DELETE")]


def test_an_assignment_made_by_hand_counts_as_present(azure):
    fake, _, authz = azure
    authz.add(CONTAINER, access.BLOB_DATA_CONTRIBUTOR, DS, "0f0f0f0f-1111-2222-3333-444444444444")
    lines = run(fake, DS, "data-scientist")
    assert lines == ["assigned Azure Kubernetes Service Cluster User Role on AKS cluster "
                     "acme-metaflow-aks"]
    assert len(authz.assignments) == 2


def test_role_assignment_exists_409_is_done_and_not_undone(azure):
    """Someone assigns the role between our look and our PUT: ARM's 409
    RoleAssignmentExists is success, and that assignment is not ours to undo."""
    fake, _, authz = azure
    directory, ra = clients(fake)
    plan = grant.plan_azure(directory, ra, OUTS, DS, "data-scientist")
    authz.add(CONTAINER, access.BLOB_DATA_CONTRIBUTOR, DS, "0f0f0f0f-1111-2222-3333-444444444444")
    undo: list = []
    grant.apply_azure(plan, DS, undo)
    assert [what for what, _ in undo] == [
        "remove Azure Kubernetes Service Cluster User Role on AKS cluster acme-metaflow-aks"]
    assert any(r.method == "PUT" and "containers/metaflow-storage" in r.path
               for r in fake.requests)


def test_switching_a_team_to_viewer_swaps_contributor_for_reader(azure):
    fake, _, authz = azure
    run(fake, DS, "data-scientist")
    lines = run(fake, DS, "viewer")
    assert authz.held(DS) == {(CONTAINER, access.BLOB_DATA_READER),
                              (CLUSTER, access.AKS_CLUSTER_USER)}
    assert lines == ["removed Storage Blob Data Contributor on container metaflow-storage",
                     "assigned Storage Blob Data Reader on container metaflow-storage"]


def test_revoke_removes_every_assignment_it_manages_including_hand_made(azure):
    fake, _, authz = azure
    run(fake, DS, "data-scientist")
    authz.add(CONTAINER, access.BLOB_DATA_READER, DS, "0f0f0f0f-1111-2222-3333-444444444444")
    run(fake, DS, None)
    assert authz.held(DS) == set()
    assert run(fake, DS, None) == []  # idempotent


def test_revoke_leaves_other_groups_and_other_scopes_alone(azure):
    fake, _, authz = azure
    run(fake, DS, "data-scientist")
    run(fake, VIEW, "viewer")
    rg = f"/subscriptions/{fake_arm.SUB}/resourceGroups/acme-metaflow-rg"
    authz.add(rg, access.BLOB_DATA_READER, DS, "0e0e0e0e-1111-2222-3333-444444444444")
    run(fake, DS, None)
    assert authz.held(DS) == {(rg, access.BLOB_DATA_READER)}
    assert len(authz.held(VIEW)) == 2


# ------------------------------------------------------------ bad input


def test_a_name_is_looked_up(azure):
    fake, _, _ = azure
    directory, _ = clients(fake)
    assert directory.group("ml-team") == access.Group(DS, "ml-team")
    (req,) = [r for r in fake.requests if r.path == "/v1.0/groups"]
    assert req.query["$filter"] == ["displayName eq 'ml-team'"]


def test_a_name_with_a_quote_is_escaped_for_odata(azure):
    fake, directory, _ = azure
    gid = "12121212-3434-5656-7878-909090909090"
    directory.add_group(gid, "O'Brien's team")
    graph, _ = clients(fake)
    assert graph.group("O'Brien's team").id == gid


@pytest.mark.parametrize(("ref", "words"), [
    (USER, [f"{USER} is a user (Ann Example), not a group", "security group"]),
    (OTHER_TENANT_GROUP, [f"no group with object id {OTHER_TENANT_GROUP} in tenant "
                          f"{fake_arm.TENANT}", "another tenant"]),
    ("nobody-team", ["no group named 'nobody-team'", "object id"]),
])
def test_what_is_not_a_group_here_is_one_line_naming_the_fix(azure, ref, words):
    fake, _, authz = azure
    with pytest.raises(MfhelmError) as refused:
        run(fake, ref, "data-scientist")
    for w in words:
        assert w in str(refused.value)
    assert "\n" not in str(refused.value)
    assert not authz.assignments


def test_two_groups_of_one_name_ask_for_the_id(azure):
    fake, directory, authz = azure
    twin = "13131313-2424-3535-4646-575757575757"
    directory.add_group(twin, "ml-team")
    with pytest.raises(MfhelmError) as refused:
        run(fake, "ml-team", "data-scientist")
    assert "2 groups are named 'ml-team'" in str(refused.value)
    assert DS in str(refused.value) and twin in str(refused.value)
    assert not authz.assignments


def test_a_group_that_is_not_a_security_group_is_refused(azure):
    fake, directory, authz = azure
    m365 = "14141414-2525-3636-4747-585858585858"
    directory.add_group(m365, "all-hands", security=False)
    with pytest.raises(MfhelmError, match="not a security group"):
        run(fake, m365, "data-scientist")
    assert not authz.assignments


def test_signed_in_to_another_tenant_is_refused(azure):
    fake, directory, authz = azure
    directory.tenant = "abcdefab-0000-0000-0000-000000000000"
    with pytest.raises(MfhelmError) as refused:
        run(fake, DS, "data-scientist")
    assert f"az login --tenant {fake_arm.TENANT}" in str(refused.value)


def test_graph_refusing_a_guest_is_one_line(azure):
    fake, directory, _ = azure
    directory.denied = True
    with pytest.raises(MfhelmError, match="Authorization_RequestDenied"):
        run(fake, DS, "data-scientist")


def test_no_right_to_assign_roles_is_refused_before_anything_changes(azure):
    """The caller's permissions (ARM's .../permissions) lack roleAssignments/write:
    refused with the role to ask for, no PUT sent."""
    fake, _, authz = azure
    authz.actions = ["*/read", "Microsoft.Storage/*"]
    with pytest.raises(MfhelmError) as refused:
        run(fake, DS, "data-scientist")
    assert "Role Based Access Control Administrator" in str(refused.value)
    assert not [r for r in fake.requests if r.method == "PUT"]


def test_not_actions_take_the_right_away(azure):
    fake, _, authz = azure
    authz.actions = ["*"]
    authz.not_actions = ["Microsoft.Authorization/*/Write"]
    with pytest.raises(MfhelmError, match="not allowed to assign roles on container"):
        run(fake, DS, "data-scientist")
    assert not authz.assignments


def test_403_midway_undoes_what_this_run_assigned(azure):
    """The permissions list said yes but ARM refuses the second PUT (an ABAC
    condition on the cluster): the container assignment made a moment ago
    is removed again, and the line says what to do."""
    fake, _, authz = azure
    authz.deny_writes_on = [CLUSTER]
    with pytest.raises(MfhelmError) as refused:
        run(fake, DS, "data-scientist")
    assert "AuthorizationFailed" in str(refused.value)
    assert "Role Based Access Control Administrator" in str(refused.value)
    assert authz.assignments == {}
    assert [r.method for r in fake.requests if "roleAssignments/" in r.path] == \
        ["PUT", "PUT", "DELETE"]


def test_a_failed_switch_puts_the_removed_assignment_back(azure):
    fake, _, authz = azure
    run(fake, DS, "data-scientist")
    before = {k: v["properties"]["roleDefinitionId"] for k, v in authz.assignments.items()}
    authz.deny_writes_on = []
    # Reader can't be written on the container: removal of Contributor went
    # through first, and is undone.
    original_put = [fn for m, rx, fn in fake.patterns if m == "PUT"][0]

    def refuse_reader(req):
        role = (req.body or {}).get("properties", {}).get("roleDefinitionId", "")
        if role.endswith(access.BLOB_DATA_READER):
            return 403, fake_arm.arm_error("AuthorizationFailed", "condition not met")
        return original_put(req)

    fake.patterns = [(m, rx, refuse_reader if m == "PUT" else fn) for m, rx, fn in fake.patterns]
    with pytest.raises(MfhelmError):
        run(fake, DS, "viewer")
    after = {k: v["properties"]["roleDefinitionId"] for k, v in authz.assignments.items()}
    assert after == before


# ------------------------------------------------------------------ list


def test_present_sees_only_the_exact_scope_and_role(azure):
    fake, _, authz = azure
    _, ra = clients(fake)
    blob, aks = access.assignments_for("data-scientist", OUTS)
    rg = f"/subscriptions/{fake_arm.SUB}/resourceGroups/acme-metaflow-rg"
    authz.add(rg, access.BLOB_DATA_CONTRIBUTOR, DS, "0d0d0d0d-1111-2222-3333-444444444444")
    assert ra.present(blob, DS) == []  # inherited from above is not ours to manage
    run(fake, DS, "data-scientist")
    assert len(ra.present(blob, DS)) == 1 and len(ra.present(aks, DS)) == 1
    assert ra.present(blob, VIEW) == []
