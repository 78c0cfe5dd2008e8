"""`mfhelm grant`, `mfhelm grant --list`, `mfhelm revoke`: onboard a team.

What a team gets, and where it is kept:
- Kubernetes: the group in the release's values, `dataScientists.groups`
  (the data-scientist Role in the flow namespace) or `viewers.groups` (the
  read-only Role); the sign-in proxy admits those groups too. Grant changes
  only that list of the release's current values and upgrades the release
  with them (`helm upgrade`, the chart the release runs); a later
  `mfhelm install` keeps the lists unless the user's own values set them.
- Azure (not on the local profile): Storage Blob Data Contributor (viewers:
  Reader) on the Metaflow container, and the AKS Cluster User Role on the
  cluster (for its kubeconfig), as role assignments whose names derive from
  group, role and scope: a re-run writes the same ones.

Everything is checked before anything changes (the group in Graph, the
caller's right to assign roles, the release and its chart, the new values
rendered); then Azure is changed, then the release. If a step fails, what
this run changed is undone before the one-line error.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfhelm import helm as helm_mod
from mfhelm.errors import Interrupted, MfhelmError

ROLES = ("data-scientist", "viewer")
# Where each role's groups live in the release's values.
VALUES_KEY = {"data-scientist": "dataScientists", "viewer": "viewers"}
GRANTED_KEYS = tuple(f"{key}.groups" for key in VALUES_KEY.values())
LOCAL_NOTE = ("local profile: Kubernetes only (the group as the cluster's sign-in names it; "
              "no Entra ID lookup, no Azure role assignments)")

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class AzureSide:
    """How to reach Azure for a release on the azure profile."""

    outputs: dict[str, Any]
    credential: Any
    subscription_id: str
    arm_base_url: str | None = None
    graph_base_url: str | None = None


def check_role(role: str) -> str:
    if role not in ROLES:
        raise MfhelmError(f"--role {role}: not a role; give one of {', '.join(ROLES)}")
    return role


def check_group_ref(ref: str) -> str:
    ref = ref.strip()
    if not ref or any(ord(c) < 32 for c in ref) or len(ref) > 256:
        raise MfhelmError("--group: give an Entra group's object id or display name "
                          "(on --local, the group name the cluster's sign-in uses)")
    return ref


# ---------------------------------------------------------------- values


def groups_of(values: dict[str, Any], role: str) -> list[str]:
    section = values.get(VALUES_KEY[role])
    groups = section.get("groups") if isinstance(section, dict) else None
    return [str(g) for g in groups] if isinstance(groups, list) else []


def role_of(values: dict[str, Any], group_id: str) -> str | None:
    for role in ROLES:
        if group_id in groups_of(values, role):
            return role
    return None


def with_group(values: dict[str, Any], group_id: str, role: str | None) -> dict[str, Any]:
    """The values with `group_id` in `role`'s list only (None: in neither);
    everything else as it was."""
    out = copy.deepcopy(values)
    for each in ROLES:
        groups = [g for g in groups_of(out, each) if g != group_id]
        if each == role:
            groups.append(group_id)
        section = out.get(VALUES_KEY[each])
        if groups or isinstance(section, dict):
            out[VALUES_KEY[each]] = {**(section if isinstance(section, dict) else {}),
                                     "groups": groups}
    return out


def keep_granted(previous: dict[str, Any], values: dict[str, Any],
                 user_sets: Callable[[str], bool]) -> dict[str, Any]:
    """For `mfhelm install`: the granted groups of the installed release
    (`previous`) carried into the new values, unless the user's own layers
    set that list (`user_sets(key)`): then theirs wins."""
    out = copy.deepcopy(values)
    for role in ROLES:
        key = f"{VALUES_KEY[role]}.groups"
        kept = groups_of(previous, role)
        if not kept or user_sets(key):
            continue
        section = out.get(VALUES_KEY[role])
        section = dict(section) if isinstance(section, dict) else {}
        section["groups"] = list(dict.fromkeys([*kept, *groups_of(out, role)]))
        out[VALUES_KEY[role]] = section
    return out


# --------------------------------------------------------------- release


@dataclass
class Release:
    """The installed release, as grant changes it."""

    target: Any
    client: helm_mod.Helm
    info: helm_mod.ReleaseInfo
    values: dict[str, Any]
    chart: Path | None = None  # prepared, once a change is planned
    helm_bin: str = ""


@contextmanager
def release(target: Any, azure: AzureSide | None, chart_source: Any, timeout: str,
            progress: Progress) -> Iterator[Release]:
    """The release, reached through the user's kube context (local) or the
    AKS user credentials (azure), with its current values."""
    from mfhelm import stack

    helm_bin = helm_mod.helm_binary()
    with ExitStack() as cleanup:
        if azure is not None:
            from mfhelm.azure.aks import aks_user_kubeconfig

            progress("fetching AKS user credentials")
            outs = azure.outputs
            kubeconfig = aks_user_kubeconfig(azure.subscription_id, outs["resourceGroupName"],
                                             outs["aksClusterName"],
                                             credential=azure.credential,
                                             base_url=azure.arm_base_url)
            path = cleanup.enter_context(stack._temp_kubeconfig(kubeconfig))
            target = stack.Target(target.release, target.namespace, kubeconfig=str(path))
        client = helm_mod.Helm(kubeconfig=target.kubeconfig, context=target.context,
                               timeout=timeout, executable=helm_bin)
        info = client.status(target.release, namespace=target.namespace)
        if info is None:
            raise MfhelmError(f"no release {target.release!r} in namespace "
                              f"{target.namespace!r}; run mfhelm install first")
        values = client.user_values(target.release, namespace=target.namespace)
        profile = str(values.get("profile", "azure"))
        if azure is None and profile != "local":
            raise MfhelmError(f"release {target.release} is on the {profile} profile: run "
                              "without --local, so that the Azure roles are granted too")
        if azure is not None and profile == "local":
            raise MfhelmError(f"release {target.release} is on the local profile: pass --local")
        rel = Release(target, client, info, values, helm_bin=helm_bin)
        rel_chart = cleanup.enter_context(helm_mod.chart_dir(chart_source, helm=helm_bin))
        rel.chart = _checked_chart(rel_chart, info.name, client.chart_version(
            target.release, namespace=target.namespace))
        yield rel


def _checked_chart(chart: Path, name: str, running: str) -> Path:
    from mfhelm import chartfiles

    version = str(chartfiles.chart_meta(chart).get("version"))
    if version != running:
        raise MfhelmError(
            f"release {name} runs chart {running}, but the chart here is "
            f"{version}: pass --chart with the chart it was installed from, or run "
            "mfhelm install with this one first")
    return chart


def _upgrade(rel: Release, values: dict[str, Any], progress: Progress) -> helm_mod.ReleaseInfo:
    """Check the new values against the chart (helm template), then upgrade."""
    from mfhelm import kube, stack

    assert rel.chart is not None
    with helm_mod.prepared_chart(rel.chart, values, helm=rel.helm_bin) as prepared:
        stack.check_values(prepared, values, rel.target, rel.helm_bin)
        api = kube.api_client(rel.target.kubeconfig, rel.target.context)
        stack._check_pending(api, rel.target, rel.client.timeout)
        return stack._upgrade(rel.client, api, rel.target, prepared, values, progress)


def _check_values(rel: Release, values: dict[str, Any]) -> None:
    from mfhelm import stack

    assert rel.chart is not None
    with helm_mod.prepared_chart(rel.chart, values, helm=rel.helm_bin) as prepared:
        stack.check_values(prepared, values, rel.target, rel.helm_bin)


# ----------------------------------------------------------------- azure


@dataclass
class AzurePlan:
    directory: Any
    assignments: Any
    create: list[Any] = field(default_factory=list)
    remove: list[tuple[str, Any]] = field(default_factory=list)


@contextmanager
def azure_clients(azure: AzureSide) -> Iterator[tuple[Any, Any]]:
    from mfhelm.azure import access

    directory = access.Directory(str(azure.outputs["tenantId"]), azure.credential,
                                 azure.graph_base_url or access.GRAPH_URL)
    assignments = access.RoleAssignments(azure.subscription_id, azure.credential,
                                         azure.arm_base_url or access.ARM_URL)
    try:
        yield directory, assignments
    finally:
        directory.close()
        assignments.close()


def plan_azure(directory: Any, ra: Any, outputs: dict[str, Any], group_id: str,
                role: str | None) -> AzurePlan:
    """What to create and remove so that the group holds exactly `role`'s
    assignments (none for a revoke), and the right to do it, checked."""
    from mfhelm.azure import access

    plan = AzurePlan(directory, ra)
    wanted = access.assignments_for(role, outputs) if role else []
    for want in access.all_assignments(outputs):
        ids = ra.present(want, group_id)
        if want in wanted and not ids:
            plan.create.append(want)
        elif want not in wanted:
            plan.remove += [(i, want) for i in ids]
    for want in dict.fromkeys([a for a in plan.create] + [w for _, w in plan.remove]):
        if want in plan.create:
            ra.may(want.scope, access.ASSIGN_ACTION, want.what)
        if any(w == want for _, w in plan.remove):
            ra.may(want.scope, access.REMOVE_ACTION, want.what)
    return plan


# ------------------------------------------------------------- commands


@dataclass
class Outcome:
    lines: list[str]


def grant(target: Any, group_ref: str, role: str | None, *, azure: AzureSide | None,
          chart: Any = None, timeout: str = "10m", progress: Progress = _quiet) -> Outcome:
    """Give the group `role` (None: take everything away, i.e. revoke)."""
    group_ref = check_group_ref(group_ref)
    if role is not None:
        check_role(role)
    lines: list[str] = [] if azure is not None else [LOCAL_NOTE]
    with ExitStack() as stack_:
        plan: AzurePlan | None = None
        group_id, group_name = group_ref, group_ref
        if azure is not None:
            directory, ra = stack_.enter_context(azure_clients(azure))
            progress("looking the group up in Entra ID")
            directory.check_tenant()
            found = directory.group(group_ref)
            group_id, group_name = found.id, found.name
            progress("reading the group's role assignments and your rights to change them")
            plan = plan_azure(directory, ra, azure.outputs, group_id, role)
        rel = stack_.enter_context(release(target, azure, chart, timeout, progress))
        before = role_of(rel.values, group_id)
        new_values = with_group(rel.values, group_id, role)
        values_change = new_values != rel.values
        if values_change:
            _check_values(rel, new_values)
        # Everything is checked: from here on, changes, undone on failure.
        undo: list[tuple[str, Callable[[], None]]] = []
        revision = rel.info.revision
        try:
            if plan is not None:
                lines += apply_azure(plan, group_id, undo, progress)
            if values_change:
                revision = _upgrade(rel, new_values, progress).revision
        except (MfhelmError, Interrupted, KeyboardInterrupt) as exc:
            note = undo_all(undo)
            if isinstance(exc, MfhelmError):
                raise MfhelmError(f"{exc}; {note}") from None
            raise
        who = f"group {group_name}" + (f" ({group_id})" if group_name != group_id else "")
        where = f"{rel.target.release} in {rel.target.namespace}"
        if role is None:
            lines.append(f"{who}: removed from {VALUES_KEY[before]}.groups of {where}"
                         if before else f"{who}: not in the release's values of {where}")
        elif values_change:
            lines.append(f"{who}: {role} in {where} ({VALUES_KEY[role]}.groups, revision "
                         f"{revision})")
        else:
            lines.append(f"{who}: already {role} in {where}")
        if not values_change and not (plan and (plan.create or plan.remove)):
            lines.append("nothing to change")
    return Outcome(lines)


def apply_azure(plan: AzurePlan, group_id: str, undo: list[tuple[str, Callable[[], None]]],
                progress: Progress = _quiet) -> list[str]:
    """Remove, then create, the planned assignments; each change made is
    pushed on `undo` (how to take it back) as soon as it is made."""
    ra = plan.assignments
    lines = []
    for assignment_id, what in plan.remove:
        progress(f"removing {what}")
        props = ra.delete(assignment_id, str(what))
        if props:
            undo.append((f"put back {what}", _bind(ra.restore, assignment_id, props)))
        lines.append(f"removed {what}")
    for want in plan.create:
        progress(f"assigning {want}")
        made = ra.create(want, group_id)
        if made:
            undo.append((f"remove {want}", _bind(ra.delete, made, str(want))))
        lines.append(f"assigned {want}")
    return lines


def _bind(fn: Callable[..., Any], *args: Any) -> Callable[[], None]:
    def call() -> None:
        fn(*args)
    return call


def undo_all(undo: list[tuple[str, Callable[[], None]]]) -> str:
    """Run the undo steps, newest first; what the error line says about them."""
    if not undo:
        return "nothing was changed"
    failed = []
    for what, step in reversed(undo):
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - every step is tried, each failure told
            failed.append(f"{what} ({exc})")
    if failed:
        return "undoing this run's changes failed for: " + "; ".join(failed) + \
            " (do it by hand in the portal, or re-run mfhelm revoke)"
    return "this run's changes were undone"


def list_grants(target: Any, *, azure: AzureSide | None, chart: Any = None,
                timeout: str = "10m", progress: Progress = _quiet) -> list[str]:
    """Who has what: each group of the release's values, its role, and
    (azure) each Azure assignment present or missing."""
    lines: list[str] = [] if azure is not None else [LOCAL_NOTE]
    with ExitStack() as stack_:
        rel = stack_.enter_context(release(target, azure, chart, timeout, progress))
        granted = [(g, role) for role in ROLES for g in groups_of(rel.values, role)]
        access_values = rel.values.get("access")
        admins = access_values.get("adminGroups") if isinstance(access_values, dict) else None
        if not granted and not admins:
            lines.append(f"no group granted in {rel.target.release}; "
                         "mfhelm grant --group <group> adds one")
            return lines
        directory = ra = None
        if azure is not None:
            directory, ra = stack_.enter_context(azure_clients(azure))
            directory.check_tenant()
        from mfhelm.azure import access

        for group_id, role in granted:
            name = directory.name_of(group_id) if directory is not None else None
            shown = f"{name} ({group_id})" if name else group_id
            if directory is not None and name is None:
                shown += " [no such group in Entra ID]"
            lines.append(f"{shown}: {role} ({VALUES_KEY[role]}.groups)")
            if azure is None or ra is None:
                continue
            for want in access.assignments_for(role, azure.outputs):
                state = "present" if ra.present(want, group_id) else \
                    "MISSING (mfhelm grant again adds it)"
                lines.append(f"  {want}: {state}")
        for group_id in admins or []:
            lines.append(f"{group_id}: admin (access.adminGroups, from mfhelm.toml)")
    return lines
