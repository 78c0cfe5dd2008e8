"""The Roles people get (`dataScientists`, `viewers`: what `mfhelm grant`
writes), as the real helm renders them: what each may do in the flow
namespace, and what no person's Role ever holds."""

from __future__ import annotations

import pytest
from chartlib import SCENARIOS, HelmError, by_kind, get, render

# The scenarios whose flows run apart from the services.
FLOWS = "metaflow-flows"
ARGO_OBJECTS = {"workflows", "workflowtemplates", "cronworkflows", "sensors", "eventsources",
                "workfloweventbindings"}
READ = {"get", "list", "watch"}


def _allowed(role: dict) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) for every rule of the Role."""
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
            for r in rule["resources"] for v in rule["verbs"]}


def _people(objs: list[dict]) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in by_kind(objs, "Role")
            if o["metadata"]["name"] in ("mf-data-scientists", "mf-viewers")}


def _render(values: dict, scenario: str = "azure-airflow") -> list[dict]:
    return render([SCENARIOS[scenario]], values, release="mf", namespace="mf")


def test_nobody_listed_no_people_roles():
    assert _people(_render({})) == {}


def test_viewers_alone_get_only_their_role():
    objs = _render({"viewers": {"groups": ["g-view"]}})
    assert set(_people(objs)) == {"mf-viewers"}
    binding = get(objs, "RoleBinding", "mf-viewers")
    assert binding["metadata"]["namespace"] == FLOWS
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "mf-viewers"}
    assert binding["subjects"] == [
        {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "g-view"}]


@pytest.mark.parametrize("scenario", ["azure-airflow", "local-airflow"])
def test_data_scientists_see_why_a_step_is_stuck(scenario):
    """`kubectl describe pod`, `kubectl logs`, `argo cron list`, `argo logs`:
    read pods, pods/log, events and every Argo object of the flow namespace."""
    objs = _render({"dataScientists": {"groups": ["g-ds"], "users": ["ann@example.com"]}},
                   scenario)
    role = _people(objs)["mf-data-scientists"]
    assert role["metadata"]["namespace"] == FLOWS
    allowed = _allowed(role)
    for verb in READ:
        for resource in ("pods", "pods/log", "events"):
            assert ("", resource, verb) in allowed, (resource, verb)
        assert ("events.k8s.io", "events", verb) in allowed
        for resource in ARGO_OBJECTS:
            assert ("argoproj.io", resource, verb) in allowed, (resource, verb)
    binding = get(objs, "RoleBinding", "mf-data-scientists")
    assert binding["subjects"] == [
        {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "g-ds"},
        {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "ann@example.com"}]


def test_data_scientists_write_exactly_what_metaflow_argo_client_needs():
    """Register or replace templates, cron workflows and sensors; submit,
    suspend and terminate workflows; nothing else is written."""
    role = _people(_render({"dataScientists": {"groups": ["g-ds"]}}))["mf-data-scientists"]
    writes = {(g, r, v) for g, r, v in _allowed(role) if v not in READ}
    assert writes == {
        *{("argoproj.io", r, v) for r in ("workflowtemplates", "cronworkflows", "sensors")
          for v in ("create", "update", "delete")},
        ("argoproj.io", "workflows", "create"), ("argoproj.io", "workflows", "patch"),
    }


def test_viewers_only_read():
    role = _people(_render({"viewers": {"groups": ["g-view"]}}))["mf-viewers"]
    allowed = _allowed(role)
    assert {v for _, _, v in allowed} == READ
    assert {(g, r) for g, r, _ in allowed} == {
        *{("argoproj.io", r) for r in ARGO_OBJECTS},
        ("", "pods"), ("", "pods/log"), ("", "events"), ("events.k8s.io", "events")}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_no_role_bound_to_people_reaches_secrets_exec_or_wildcards(scenario):
    """Whatever the scenario, a Role bound to a person (Group or User) never
    names Secrets, pods/exec, pods/attach, a wildcard, or creates pods."""
    objs = render([SCENARIOS[scenario]], {
        "dataScientists": {"groups": ["g-ds"], "users": ["u"]},
        "viewers": {"groups": ["g-view"], "users": ["v"]}})
    bound = {b["roleRef"]["name"] for b in by_kind(objs, "RoleBinding")
             if any(s["kind"] in ("Group", "User") for s in b["subjects"])}
    assert bound == {"metaflow-data-scientists", "metaflow-viewers"}
    for role in by_kind(objs, "Role"):
        if role["metadata"]["name"] not in bound:
            continue
        for group, resource, verb in _allowed(role):
            assert "*" not in (group, resource, verb), role["metadata"]["name"]
            assert resource not in ("secrets", "pods/exec", "pods/attach", "pods/portforward",
                                    "serviceaccounts/token"), (role["metadata"]["name"], resource)
            if resource == "pods":
                assert verb in READ, (role["metadata"]["name"], verb)


@pytest.mark.parametrize("values", [
    {"viewers": {"groups": [""]}},
    {"viewers": {"groups": "g-view"}},
    {"viewers": {"teams": ["g-view"]}},
])
def test_schema_refuses_malformed_viewers(values):
    with pytest.raises(HelmError) as refused:
        _render(values)
    assert "viewers" in str(refused.value)
