"""The pure part of mfhelm.argo_upgrade: which CronWorkflows move, the patch
that moves them (and the one that moves them back), which namespaces the
install's Argo controller watches, and the lines it prints. The same module
against a real API server: tests/cluster/test_e2e_argo_upgrade_moves.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mfhelm import argo_upgrade as au
from mfhelm import values as values_mod
from mfhelm.chartfiles import chart_defaults

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "metaflow"


def cron(name: str = "daily", *, ns: str = "flows", rv: str = "7", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "CronWorkflow",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": rv},
            "spec": {"workflowSpec": {"workflowTemplateRef": {"name": name}}, **spec}}


# ------------------------------------------------------------- which move


def test_a_schedule_without_schedules_moves():
    move = au.needs_move(cron(schedule="0 3 * * *", timezone="Europe/Berlin"))
    assert move == au.Move("flows", "daily", "0 3 * * *", "7")


@pytest.mark.parametrize("spec", [
    {"schedules": ["0 3 * * *"]},                               # written by Metaflow >= 2.19.32
    {"schedule": "0 3 * * *", "schedules": ["0 4 * * *"]},      # both: its owner's to sort out
    {"schedule": "", "schedules": None},                        # nothing to move
    {"schedule": "   "},
    {},
    {"schedule": 5},                                             # not a cron expression
])
def test_everything_else_stays(spec: dict[str, Any]):
    assert au.needs_move(cron(**spec)) is None


def test_an_empty_schedules_list_counts_as_none():
    assert au.needs_move(cron(schedule="@daily", schedules=[])) is not None


def test_moves_are_in_namespace_and_name_order():
    items = [cron("b", ns="y", schedule="1 * * * *"), cron("a", ns="y", schedule="2 * * * *"),
             cron("z", ns="x", schedule="3 * * * *"), cron("done", schedules=["4 * * * *"])]
    assert [(m.namespace, m.name) for m in au.moves(items)] == [("x", "z"), ("y", "a"),
                                                               ("y", "b")]


# ------------------------------------------------------------- the patches


def test_the_patch_moves_in_one_write_and_is_conditional():
    move = au.Move("flows", "daily", "0 3 * * *", "41")
    # A JSON merge patch (RFC 7386): null removes `schedule`; the
    # resourceVersion makes the API server refuse it (409) if the object
    # changed since it was read.
    assert move.patch() == {"metadata": {"resourceVersion": "41"},
                            "spec": {"schedules": ["0 3 * * *"], "schedule": None}}
    assert move.undo("42") == {"metadata": {"resourceVersion": "42"},
                               "spec": {"schedule": "0 3 * * *", "schedules": None}}


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 applied, as the API server applies a merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


def test_move_then_undo_gives_back_the_spec():
    obj = cron(schedule="*/5 * * * *", timezone="UTC", concurrencyPolicy="Forbid")
    move = au.needs_move(obj)
    assert move is not None
    moved = _merge(obj, move.patch())
    assert moved["spec"] == {**{k: v for k, v in obj["spec"].items() if k != "schedule"},
                             "schedules": ["*/5 * * * *"]}
    assert au.needs_move(moved) is None  # a second install finds nothing
    assert _merge(moved, move.undo("8"))["spec"] == obj["spec"]


# ------------------------------------------------------------ where Argo looks


def test_managed_namespace_is_the_last_flag():
    assert au.managed_namespace([]) is None
    assert au.managed_namespace(["--managed-namespace=a"]) == "a"
    assert au.managed_namespace(["--managed-namespace", "b"]) == "b"
    assert au.managed_namespace(["--managed-namespace=a", "--x", "--managed-namespace", "c"]) == "c"
    assert au.managed_namespace(["--managed-namespace"]) is None
    assert au.managed_namespace(["--managed-namespace="]) is None


def defaults() -> dict[str, Any]:
    return chart_defaults(CHART)


def test_local_install_watches_its_flow_namespace():
    values = values_mod.argo_watches_flow_namespace(
        values_mod.local_values(flow_namespace="mf-flows"), "mf")
    assert au.scope(values, defaults(), "mf") == au.Scope(("mf-flows",))


def test_flows_in_the_release_namespace():
    values = values_mod.argo_watches_flow_namespace(values_mod.local_values(), "mf")
    assert au.scope(values, defaults(), "mf") == au.Scope(("mf",))


def test_no_argo_is_no_scope():
    values = values_mod.local_values(argo=False, flow_namespace="mf-flows")
    where = au.scope(values, defaults(), "mf")
    assert where.empty


def test_the_chart_default_decides_when_values_are_silent():
    # values.yaml: argo-workflows.enabled true and singleNamespace true.
    assert defaults()["argo-workflows"]["enabled"] is True
    assert defaults()["argo-workflows"]["singleNamespace"] is True
    assert au.scope({}, defaults(), "mf") == au.Scope(("mf",))


def test_not_namespaced_is_every_namespace():
    # argo-helm passes --namespaced only with singleNamespace (0.45.20
    # workflow-controller-deployment.yaml), whose own default is false; the
    # controller then ignores --managed-namespace (cmd/workflow-controller/main.go).
    values = {"argo-workflows": {"singleNamespace": False,
                                 "controller": {"extraArgs": ["--managed-namespace=x"]}}}
    assert au.scope(values, defaults(), "mf") == au.Scope(cluster_wide=True)
    assert au.scope(values, {}, "mf") == au.Scope()  # enabled: neither says so
    assert au.scope({"argo-workflows": {"enabled": True}}, {}, "mf").cluster_wide


def test_azure_values_watch_the_flow_namespace():
    import fake_arm

    from mfhelm.settings import parse

    outputs = fake_arm.sample_outputs()
    values = values_mod.render_values(outputs, parse({"org_prefix": "acme",
                                                      "location": "westeurope"}))
    flow_ns = values["flows"]["namespace"]
    assert flow_ns and flow_ns != outputs["serviceNamespace"]
    assert au.scope(values, defaults(), outputs["serviceNamespace"]) == au.Scope((flow_ns,))


def test_the_scope_is_the_flag_the_chart_demands():
    """The chart refuses a separate flow namespace unless both Argo parts get
    exactly `--managed-namespace=<flows.namespace>` (_helpers.tpl); the scope
    is that namespace."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert 'printf "--managed-namespace=%s" (include "metaflow.flowNamespace" .)' in helpers
    assert au.MANAGED_FLAG == "--managed-namespace"


# ------------------------------------------------------------------ the lines


@pytest.mark.parametrize(("phases", "count"), [
    ([None, "Pending", "Running", "Succeeded", "Failed", "Error"], 3),
    ([], 0),
    (["Succeeded"], 0),
])
def test_in_flight(phases: list[str | None], count: int):
    items = [{"status": {"phase": p}} if p is not None else {} for p in phases]
    assert au.in_flight(items) == count


def test_lines():
    move = au.Move("mf-flows", "nightly", "0 2 * * *", "1")
    assert move.line() == ('moved CronWorkflow mf-flows/nightly schedule "0 2 * * *" to '
                           "schedules (Argo 4 reads only schedules)")
    assert au.running_line(0, "mf-flows") == "no Argo workflows running in mf-flows"
    one = au.running_line(1, "mf-flows")
    assert one.startswith("1 Argo workflow still running in mf-flows: ")
    assert "finish or fail in the Argo UI" in one
    assert au.running_line(3, "every namespace").startswith(
        "3 Argo workflows still running in every namespace: ")


def test_in_flight_phases_are_argos_unfinished_ones():
    """Argo's Workflow phases (v3.6.10 pkg/apis/workflow/v1alpha1/workflow_phase.go):
    "", Pending, Running, Succeeded, Failed, Error; the last three are final."""
    assert set(au.IN_FLIGHT_PHASES) == {"", "Pending", "Running"}



def test_a_cluster_that_does_not_answer_is_one_line():
    """A real refused connection (nothing listens on the port), not a stand-in."""
    import socket

    from kubernetes import client

    from mfhelm.errors import MfhelmError

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = client.Configuration()
    config.host = f"https://127.0.0.1:{port}"
    config.retries = 0
    with pytest.raises(MfhelmError) as caught:
        au.upgrade(client.ApiClient(config), au.Scope(("flows",)), lambda _: None)
    assert str(caught.value).startswith(f"cannot reach https://127.0.0.1:{port}: "
                                        "connection refused")
