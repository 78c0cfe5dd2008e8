"""`mfhelm install`'s move of CronWorkflows from `schedule` to `schedules`
(mfhelm.argo_upgrade) against the real kube-apiserver, with the CronWorkflow
and Workflow CRDs of the pinned Argo (the minimal ones argo-helm installs;
v3.6.10's accept `schedule`, as a stack installed today holds them).

Real here: the API server (its merge patch, server-side dry run,
resourceVersion preconditions, RBAC), Argo's CRDs, and `mfhelm install` as a
user runs it. What stands in: the argo-helm subchart of the wire-up test.
Its archive comes from argo-helm's chart repository, which the tests cannot
reach (every other install test runs --no-argo); the test's copy of our
chart gets an empty chart of the same name and version in its charts/, so
that Helm and mfhelm take Argo as enabled. What is checked there is mfhelm's
order (the moves, then helm), not argo-helm's objects; Argo's controller
itself is run by test_e2e_argo_controller.py and the tests after it.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mfhelm import argo_upgrade as au
from mfhelm.errors import MfhelmError

from .handle import Cluster
from .test_e2e_stack import mfhelm, one_error_line

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
ARGO = {"group": "argoproj.io", "version": "v1alpha1"}


def _custom(cluster: Cluster) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(cluster.api_client())


def make_cron(cluster: Cluster, ns: str, name: str, **spec: Any) -> dict[str, Any]:
    body = {"apiVersion": "argoproj.io/v1alpha1", "kind": "CronWorkflow",
            "metadata": {"name": name},
            "spec": {"workflowSpec": {"workflowTemplateRef": {"name": name}}, **spec}}
    return dict(_custom(cluster).create_namespaced_custom_object(
        **ARGO, namespace=ns, plural="cronworkflows", body=body))


def make_workflow(cluster: Cluster, ns: str, name: str, phase: str | None) -> None:
    # The minimal CRD has no status subresource: the status is written with
    # the object, as the controller writes it (no controller watches `ns`).
    body: dict[str, Any] = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
                            "metadata": {"name": name},
                            "spec": {"workflowTemplateRef": {"name": name}}}
    if phase is not None:
        body["status"] = {"phase": phase}
    _custom(cluster).create_namespaced_custom_object(**ARGO, namespace=ns, plural="workflows",
                                                     body=body)


def read_cron(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return dict(_custom(cluster).get_namespaced_custom_object(
        **ARGO, namespace=ns, plural="cronworkflows", name=name))


def versions(cluster: Cluster, ns: str) -> dict[str, str]:
    items = _custom(cluster).list_namespaced_custom_object(
        **ARGO, namespace=ns, plural="cronworkflows")["items"]
    return {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in items}


@pytest.fixture
def flows(cluster: Cluster, argo_build: Any, namespace: str) -> str:
    """A namespace with Argo's CRDs served (argo_build applies them)."""
    return namespace


# ------------------------------------------------------ the moves, and again


def test_moves_once_and_leaves_the_rest(cluster: Cluster, flows: str):
    make_cron(cluster, flows, "nightly", schedule="0 2 * * *")
    make_cron(cluster, flows, "berlin", schedule="30 6 * * 1-5", timezone="Europe/Berlin",
              startingDeadlineSeconds=60)
    both = make_cron(cluster, flows, "both", schedule="0 1 * * *", schedules=["0 3 * * *"])
    new = make_cron(cluster, flows, "new", schedules=["*/10 * * * *"])
    make_workflow(cluster, flows, "unseen", None)
    make_workflow(cluster, flows, "pending", "Pending")
    make_workflow(cluster, flows, "running", "Running")
    make_workflow(cluster, flows, "done", "Succeeded")
    make_workflow(cluster, flows, "failed", "Failed")

    lines: list[str] = []
    moved = au.upgrade(cluster.api_client(), au.Scope((flows,)), lines.append)

    assert [m.name for m in moved] == ["berlin", "nightly"]
    assert lines == [
        f'moved CronWorkflow {flows}/berlin schedule "30 6 * * 1-5" to schedules '
        "(Argo 4 reads only schedules)",
        f'moved CronWorkflow {flows}/nightly schedule "0 2 * * *" to schedules '
        "(Argo 4 reads only schedules)",
        f"3 Argo workflows still running in {flows}: they carry on under the upgraded "
        "controller; data scientists see them finish or fail in the Argo UI as usual",
    ]
    nightly = read_cron(cluster, flows, "nightly")["spec"]
    assert nightly["schedules"] == ["0 2 * * *"] and "schedule" not in nightly
    berlin = read_cron(cluster, flows, "berlin")["spec"]
    assert berlin == {"workflowSpec": {"workflowTemplateRef": {"name": "berlin"}},
                      "schedules": ["30 6 * * 1-5"], "timezone": "Europe/Berlin",
                      "startingDeadlineSeconds": 60}
    # Both fields, or only schedules: not written at all.
    assert read_cron(cluster, flows, "both")["metadata"]["resourceVersion"] == \
        both["metadata"]["resourceVersion"]
    assert read_cron(cluster, flows, "new")["metadata"]["resourceVersion"] == \
        new["metadata"]["resourceVersion"]

    # A second install finds nothing to move and writes nothing.
    before = versions(cluster, flows)
    again: list[str] = []
    assert au.upgrade(cluster.api_client(), au.Scope((flows,)), again.append) == []
    assert again == [lines[-1]]
    assert versions(cluster, flows) == before


def test_nothing_to_say_without_argo(cluster: Cluster, flows: str):
    make_cron(cluster, flows, "nightly", schedule="0 2 * * *")
    lines: list[str] = []
    assert au.upgrade(cluster.api_client(), au.Scope(), lines.append) == []  # --no-argo
    assert lines == []
    assert "schedule" in read_cron(cluster, flows, "nightly")["spec"]


def test_a_kind_the_api_server_does_not_serve_is_no_argo(cluster: Cluster, namespace: str):
    """A first install: no Argo CRDs, so the API server answers 404 for the
    kind, and upgrade() says nothing. Argo's CRDs are cluster-wide and applied
    for the whole session here, so the 404 is asked for a kind no CRD makes,
    through the same listing upgrade() uses."""
    where = au.Scope((namespace,))
    assert au._list(cluster.api_client(), where, "cronworkflowsnotserved") is None


# ------------------------------------------------------------- refusals


def _limited_user(cluster: Cluster, ns: str, may_patch: list[str]) -> Any:
    """An API client of a user who may read CronWorkflows and Workflows in
    `ns` but patch only the CronWorkflows named."""
    from mfhelm import kube

    if cluster.backend != "controlplane":
        pytest.skip(reason="user certificates need the local control plane's CA")
    user = f"engineer-{uuid.uuid4().hex[:6]}"
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": user, "namespace": ns},
            "rules": [{"apiGroups": ["argoproj.io"], "resources": ["cronworkflows"],
                       "verbs": ["patch"], "resourceNames": may_patch},
                      {"apiGroups": ["argoproj.io"], "resources": ["cronworkflows", "workflows"],
                       "verbs": ["get", "list"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": user, "namespace": ns},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                           "name": user},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                             "name": user}]}
    cluster.rbac().create_namespaced_role(ns, role)
    cluster.rbac().create_namespaced_role_binding(ns, binding)
    cluster.wait_authorized([role, binding])
    return kube.api_client(str(cluster.user_kubeconfig(user)))


def test_a_refused_patch_applies_nothing(cluster: Cluster, flows: str):
    """The second of two moves is refused (no patch right on it): the first,
    which alone would pass, is not applied either."""
    make_cron(cluster, flows, "allowed", schedule="0 2 * * *")
    make_cron(cluster, flows, "denied", schedule="0 4 * * *")
    api = _limited_user(cluster, flows, may_patch=["allowed"])
    before = versions(cluster, flows)
    lines: list[str] = []
    with pytest.raises(MfhelmError) as caught:
        au.upgrade(api, au.Scope((flows,)), lines.append)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"moving CronWorkflow {flows}/denied to schedules: 403 ")
    assert 'cannot patch resource "cronworkflows"' in message
    assert message.endswith("nothing was moved and nothing installed: run mfhelm install "
                            "again once that is fixed")
    assert lines == []
    assert versions(cluster, flows) == before
    assert read_cron(cluster, flows, "allowed")["spec"]["schedule"] == "0 2 * * *"


def test_an_edit_after_reading_is_refused_not_overwritten(cluster: Cluster, flows: str):
    make_cron(cluster, flows, "a", schedule="0 2 * * *")
    make_cron(cluster, flows, "b", schedule="0 4 * * *")
    api = cluster.api_client()
    planned = au.find_moves(api, au.Scope((flows,)))
    assert planned is not None and [m.name for m in planned] == ["a", "b"]
    # A data scientist re-deploys `b` after mfhelm read it.
    _custom(cluster).patch_namespaced_custom_object(
        **ARGO, namespace=flows, plural="cronworkflows", name="b",
        body={"spec": {"schedule": "0 5 * * *"}},
        _content_type="application/merge-patch+json")
    with pytest.raises(MfhelmError) as caught:
        au.validate(api, planned)
    assert str(caught.value).startswith(
        f"moving CronWorkflow {flows}/b to schedules: it was changed after mfhelm read it "
        "(409 Conflict); nothing was moved")
    assert read_cron(cluster, flows, "a")["spec"].get("schedules") is None
    assert read_cron(cluster, flows, "b")["spec"]["schedule"] == "0 5 * * *"


def test_an_edit_between_check_and_write_is_undone(cluster: Cluster, flows: str):
    """The dry run passed, then `b` changed before its real patch: `b` is
    refused (409), and `a`, already moved, is moved back."""
    a = make_cron(cluster, flows, "a", schedule="0 2 * * *", timezone="UTC")
    make_cron(cluster, flows, "b", schedule="0 4 * * *")
    api = cluster.api_client()
    planned = au.find_moves(api, au.Scope((flows,)))
    assert planned is not None
    au.validate(api, planned)
    _custom(cluster).patch_namespaced_custom_object(
        **ARGO, namespace=flows, plural="cronworkflows", name="b",
        body={"metadata": {"labels": {"edited": "yes"}}},
        _content_type="application/merge-patch+json")
    lines: list[str] = []
    with pytest.raises(MfhelmError) as caught:
        au.apply(api, planned, lines.append)
    assert str(caught.value) == (
        f"moving CronWorkflow {flows}/b to schedules: it was changed after mfhelm read it "
        "(409 Conflict); the 1 CronWorkflow(s) moved before it were moved back; nothing "
        "installed: run mfhelm install again")
    assert lines == [planned[0].line()]
    assert read_cron(cluster, flows, "a")["spec"] == a["spec"]
    b = read_cron(cluster, flows, "b")
    assert b["spec"]["schedule"] == "0 4 * * *" and "schedules" not in b["spec"]
    assert b["metadata"]["labels"] == {"edited": "yes"}


# ------------------------------------------------------------ mfhelm install


@pytest.fixture
def chart_with_argo(tmp_path: Path) -> Path:
    """Our chart, with the stand-in for argo-helm's archive (module docstring)."""
    chart = tmp_path / "metaflow"
    shutil.copytree(ROOT / "charts" / "metaflow", chart,
                    ignore=shutil.ignore_patterns("*.tgz"))
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    dep = next(d for d in meta["dependencies"] if d["name"] == "argo-workflows")
    stand_in = chart / "charts" / "argo-workflows"
    stand_in.mkdir(parents=True)
    (stand_in / "Chart.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v2", "name": dep["name"], "version": dep["version"],
        "description": "test stand-in: no objects"}))
    return chart


def install(cluster: Cluster, ns: str, chart: Path) -> Any:
    # Argo Events off: its archive is not here either, and nothing of it is
    # under test (--allow-override: --argo turns it on with Argo).
    return mfhelm(cluster, "install", "--local", "-n", ns, "--release", "mv",
                  "--chart", str(chart), "--set", "argo-events.enabled=false",
                  "--allow-override", "argo-events.enabled", "--timeout", "4m")


def test_install_moves_before_helm(cluster: Cluster, argo_build: Any, chart_with_argo: Path,
                                   release_namespaces: tuple[str, str]):
    ns, flow_ns = release_namespaces
    make_cron(cluster, flow_ns, "nightly", schedule="0 2 * * *")
    make_cron(cluster, ns, "elsewhere", schedule="0 3 * * *")  # not where Argo looks
    make_workflow(cluster, flow_ns, "running", "Running")

    proc = install(cluster, ns, chart_with_argo)
    assert proc.returncode == 0, proc.stderr
    steps = [ln.removeprefix("> ") for ln in proc.stderr.splitlines() if ln.startswith("> ")]
    moved = (f'moved CronWorkflow {flow_ns}/nightly schedule "0 2 * * *" to schedules '
             "(Argo 4 reads only schedules)")
    running = next(s for s in steps if s.startswith("1 Argo workflow still running in "))
    assert running.startswith(f"1 Argo workflow still running in {flow_ns}: ")
    order = [steps.index(moved), steps.index(running),
             steps.index("writing the namespaces and Secrets"),
             steps.index("helm upgrade --install (waiting for the pods)")]
    assert order == sorted(order), steps
    assert read_cron(cluster, flow_ns, "nightly")["spec"]["schedules"] == ["0 2 * * *"]
    assert read_cron(cluster, ns, "elsewhere")["spec"]["schedule"] == "0 3 * * *"

    again = install(cluster, ns, chart_with_argo)
    assert again.returncode == 0, again.stderr
    assert "revision 2: deployed" in again.stdout
    assert "moved CronWorkflow" not in again.stderr
    assert running in again.stderr


def test_install_refused_move_installs_nothing(cluster: Cluster, argo_build: Any,
                                               chart_with_argo: Path,
                                               release_namespaces: tuple[str, str]):
    """A move the API server refuses (here: admission, a policy that freezes
    one CronWorkflow) stops the install in one line before any write: no
    move, no Secret, no release."""
    ns, flow_ns = release_namespaces
    make_cron(cluster, flow_ns, "a-first", schedule="0 1 * * *")
    make_cron(cluster, flow_ns, "frozen", schedule="0 2 * * *")
    with frozen_cron(cluster, flow_ns, "frozen"):
        before = versions(cluster, flow_ns)
        line = one_error_line(install(cluster, ns, chart_with_argo))
        assert line.startswith(f"mfhelm: error: moving CronWorkflow {flow_ns}/frozen to "
                               "schedules: 422 ")
        assert "frozen by the test" in line
        assert "nothing was moved and nothing installed" in line
        assert versions(cluster, flow_ns) == before
        assert not cluster.core().list_namespaced_secret(ns).items


class frozen_cron:  # noqa: N801 - used as a context manager
    """A ValidatingAdmissionPolicy (GA since 1.30) that refuses any update of
    one CronWorkflow in one namespace, bound while inside; it answers dry
    runs too (admission runs for them)."""

    def __init__(self, cluster: Cluster, ns: str, name: str) -> None:
        self.cluster, self.ns, self.name = cluster, ns, name
        self.policy = f"freeze-{ns}"

    def __enter__(self) -> None:
        from kubernetes import client

        adm = client.AdmissionregistrationV1Api(self.cluster.api_client())
        adm.create_validating_admission_policy({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": self.policy},
            "spec": {"failurePolicy": "Fail",
                     "matchConstraints": {"resourceRules": [{
                         "apiGroups": ["argoproj.io"], "apiVersions": ["v1alpha1"],
                         "operations": ["UPDATE"], "resources": ["cronworkflows"]}]},
                     "validations": [{"expression": f"object.metadata.name != '{self.name}'",
                                      "message": f"{self.name} is frozen by the test"}]}})
        adm.create_validating_admission_policy_binding({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": self.policy},
            "spec": {"policyName": self.policy, "validationActions": ["Deny"],
                     "matchResources": {"namespaceSelector": {"matchLabels": {
                         "kubernetes.io/metadata.name": self.ns}}}}})
        # The policy takes effect when the API server's informers see it: wait
        # until a dry run of the very patch mfhelm will send is refused.
        from kubernetes.client.exceptions import ApiException

        def refused() -> bool:
            try:
                _custom(self.cluster).patch_namespaced_custom_object(
                    **ARGO, namespace=self.ns, plural="cronworkflows", name=self.name,
                    body={"spec": {"schedules": ["0 2 * * *"], "schedule": None}},
                    dry_run="All", _content_type="application/merge-patch+json")
            except ApiException as exc:
                return exc.status == 422
            return False

        self.cluster.wait_for(refused, 60, f"the policy freezing {self.ns}/{self.name}")

    def __exit__(self, *exc: object) -> None:
        from kubernetes import client

        adm = client.AdmissionregistrationV1Api(self.cluster.api_client())
        adm.delete_validating_admission_policy_binding(self.policy)
        adm.delete_validating_admission_policy(self.policy)


@pytest.fixture
def azure_with_argo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster: Cluster
                    ) -> Iterator[tuple[Any, dict[str, Any]]]:
    """A deployment with Argo, federated for namespaces of its own; AKS hands
    out the test cluster's kubeconfig, Key Vault the admin password (as in
    test_e2e_grant.py)."""
    import fake_arm

    arm_dir = tmp_path / "arm"
    arm_dir.mkdir()
    gen = fake_arm.serve(arm_dir)
    fake = next(gen)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(fake.ca_file))
    ns = f"mfa{uuid.uuid4().hex[:5]}"
    outputs = fake_arm.sample_outputs() | {
        "deployArgo": True, "keyVaultUri": fake.base_url + "/",
        "serviceNamespace": ns, "flowNamespace": f"{ns}-flows"}
    creds = (f"/subscriptions/{fake_arm.SUB}/resourceGroups/{outputs['resourceGroupName']}"
             f"/providers/Microsoft.ContainerService/managedClusters/{outputs['aksClusterName']}"
             "/listClusterUserCredential")
    fake.route("POST", creds, 200, fake_arm.kubeconfig_body(cluster.kubeconfig.read_bytes()))
    name = outputs["postgresAdminSecretName"]
    fake.route("GET", f"/secrets/{name}", 200,
               fake_arm.secret_body(fake.base_url, name, "kv-Only-Pw-77aa"))
    cluster.create_namespace(ns)
    cluster.create_namespace(f"{ns}-flows")
    yield fake, outputs
    gen.close()
    cluster.delete_namespace(f"{ns}-flows")
    cluster.delete_namespace(ns)


def test_azure_install_moves_before_its_first_write(cluster: Cluster, argo_build: Any,
                                                    chart_with_argo: Path, azure_with_argo):
    import fake_arm

    from mfhelm import settings, stack

    fake, outputs = azure_with_argo
    ns, flow_ns = outputs["serviceNamespace"], outputs["flowNamespace"]
    make_cron(cluster, flow_ns, "weekly", schedule="0 6 * * 0")
    s = settings.parse({"org_prefix": "acme", "location": "westeurope",
                        "deploy_argo_events": False,
                        "helm": {"namespace": ns, "flow_namespace": flow_ns}})
    steps: list[str] = []
    info = stack.install_azure(
        stack.Target("mfa", ns), s, outputs, credential=fake_arm.FakeCredential(),
        subscription_id=fake_arm.SUB, chart=chart_with_argo, timeout="4m",
        progress=steps.append, arm_base_url=fake.base_url, verify_challenge_resource=False)
    assert (info.revision, info.status) == (1, "deployed")
    moved = (f'moved CronWorkflow {flow_ns}/weekly schedule "0 6 * * 0" to schedules '
             "(Argo 4 reads only schedules)")
    order = [steps.index(moved), steps.index(f"no Argo workflows running in {flow_ns}"),
             steps.index("writing the namespaces"),
             steps.index("helm upgrade --install (waiting for the pods)")]
    assert order == sorted(order), steps
    assert read_cron(cluster, flow_ns, "weekly")["spec"]["schedules"] == ["0 6 * * 0"]
