"""The one line a failed wait becomes (stack.wait_failure): what helm said it
waited for, the reasons kube.not_ready found, grouped and bounded. The
reasons themselves are read from a real cluster in
tests/cluster/test_e2e_install_diagnosis.py; here, how they are put
together.

helm's words are Helm 4.3.1's: pkg/kube/statuswait.go ("resource
%s/%s/%s not ready. status: %s, message: %s", errors.Join-ed with the
context's "context deadline exceeded") and pkg/action/install.go /
upgrade.go ("release %s failed, and has been uninstalled|rolled back due to
rollback-on-failure being set: %w")."""

from __future__ import annotations

from mfhelm import helm as helm_mod
from mfhelm import kube, stack
from mfhelm.kube import NotReady

TARGET = stack.Target("mf", "mf")
UNINSTALLED = (
    "Error: release mf failed, and has been uninstalled due to rollback-on-failure being set: "
    "resource Deployment/mf/mf-metadata not ready. status: InProgress, message: Available: 0/1\n"
    "resource StatefulSet/mf/mf-postgres not ready. status: InProgress, message: Ready: 0/1\n"
    "context deadline exceeded\n")
NODE = "Pending on node n1, node n1 is NotReady (KubeletNotReady: runtime down)"


def test_helm_4s_wait_failures_are_recognised_and_their_resources_read():
    assert helm_mod.wait_failed(UNINSTALLED)
    assert helm_mod.waited_for(UNINSTALLED) == [("Deployment", "mf", "mf-metadata"),
                                                ("StatefulSet", "mf", "mf-postgres")]
    assert not helm_mod.wait_failed("Error: INSTALL FAILED: chart requires kubeVersion >=1.30")


def test_workloads_with_one_reason_are_told_together():
    seen = [NotReady("Deployment", "mf", "mf-metadata", 0, 1, NODE, "mf-metadata-1"),
            NotReady("StatefulSet", "mf", "mf-postgres", 0, 1, NODE, "mf-postgres-0"),
            NotReady("Deployment", "mf-flows", "mf-webhook", 0, 2, NODE, "mf-webhook-1")]
    line = stack.wait_failure(UNINSTALLED, seen, "10m", TARGET)
    assert line == (
        "install timed out after 10m waiting for Deployment mf-metadata 0/1, StatefulSet "
        "mf-postgres 0/1 and Deployment mf-flows/mf-webhook 0/2 ready: their pods " + NODE
        + "; helm removed the release again (rollback on failure)")


def test_reasons_are_bounded_and_the_rest_counted():
    seen = [NotReady("Deployment", "mf", f"mf-{i}", 0, 1, f"Pending (reason {i})", f"mf-{i}-x")
            for i in range(kube.REASONS_SHOWN + 2)]
    seen.append(NotReady("Deployment", "mf", "mf-unexplained", 0, 1, ""))
    line = stack.wait_failure(UNINSTALLED, seen, "5m", TARGET)
    assert "Deployment mf-0 0/1 ready: pod mf-0-x Pending (reason 0); " in line
    assert f"mf-{kube.REASONS_SHOWN}" not in line
    # two more reasons, the one not looked into, and the two helm named
    assert line.endswith("; 5 more not ready; helm removed the release again (rollback on "
                         "failure)"), line


def test_helm_named_resources_are_told_when_they_were_gone_before_mfhelm_looked():
    line = stack.wait_failure(UNINSTALLED, [], "1m", TARGET)
    assert line == ("install timed out after 1m waiting for Deployment mf-metadata; "
                    "StatefulSet mf-postgres; helm removed the release again (rollback on "
                    "failure)")


def test_a_failed_job_on_upgrade_and_nothing_found():
    stderr = ("Error: UPGRADE FAILED: release mf failed, and has been rolled back due to "
              "rollback-on-failure being set: job mf-init failed: BackoffLimitExceeded\n")
    job = NotReady("Job", "mf", "mf-init", 0, 1,
                   "failed (BackoffLimitExceeded: Job has reached the specified backoff limit), "
                   "pod mf-init-x Failed, container init exited 1 (Error)")
    assert stack.wait_failure(stderr, [job], "10m", TARGET) == (
        "install failed waiting for Job mf-init 0/1 ready: failed (BackoffLimitExceeded: Job "
        "has reached the specified backoff limit), pod mf-init-x Failed, container init exited "
        "1 (Error); helm rolled back to the previous revision")
    assert stack.wait_failure("Error: context deadline exceeded\n", [], "2m", TARGET) == (
        "install timed out after 2m; mfhelm found no workload of the release not ready; "
        "helm: context deadline exceeded")
