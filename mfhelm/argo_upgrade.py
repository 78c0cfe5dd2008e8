"""What `mfhelm install` does to Argo objects before it upgrades Argo in place.

Argo Workflows 4 dropped CronWorkflow `spec.schedule` (one cron expression)
for `spec.schedules` (a list). Read at the tags:

- v4.0.7 `workflow/validate/validate.go` ValidateCronWorkflow: "cron workflow
  must have at least one schedule" when `schedules` is empty. The v4
  controller reports that as a SpecError in its log and never runs the
  CronWorkflow again; v4's full CRD has no `schedule` field at all.
- v3.6.10 `pkg/apis/workflow/v1alpha1/cron_workflow_types.go`: `schedules`
  exists since 3.6 and `GetSchedules` reads either field, so the 3.6
  controller still running during the install schedules a moved object as
  before; its validate.go refuses an object with both fields, which is why
  one patch sets `schedules` and drops `schedule` together.
- Both versions keep the annotation `cronworkflows.argoproj.io/last-used-schedule`
  and compare it to `getScheduleString(true)`: for `schedule: S` (v3.6) and
  `schedules: [S]` (v3.6 and v4) that string is the same S (with
  `CRON_TZ=<timezone> ` before it when a timezone is set), so the move is not
  seen as a new schedule and the missed-run catch-up (`startingDeadlineSeconds`)
  works as before (`workflow/cron/operator.go` IsUsingNewSchedule).

Metaflow 2.19.32 and later write `schedules` when
METAFLOW_ARGO_WORKFLOWS_USE_SCHEDULES is true (`mfhelm config` sets it);
CronWorkflows created before carry `schedule`, and this moves them.

The namespaces are the ones the new controller will watch, derived as the
chart's values make argo-helm start it: with `singleNamespace` (our default,
a security promise) argo-helm passes `--namespaced` and then
`controller.extraArgs` (0.45.20 templates/controller/workflow-controller-
deployment.yaml); the controller watches the last `--managed-namespace`,
else its own namespace, the release namespace; without `--namespaced` it
watches every namespace (v3.6.10 and v4.0.7 cmd/workflow-controller/main.go).

Nothing is half-applied: every patch is first sent as a server-side dry run;
any refusal stops the install before anything is written. Each patch carries
the resourceVersion it was computed from, so an edit made meanwhile is
refused (409), not overwritten; should a real patch still fail after others
went through, those are moved back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfhelm.errors import MfhelmError

GROUP = "argoproj.io"
VERSION = "v1alpha1"
CRONWORKFLOWS = "cronworkflows"
WORKFLOWS = "workflows"
MERGE_PATCH = "application/merge-patch+json"
FIELD_MANAGER = "mfhelm"
MANAGED_FLAG = "--managed-namespace"
# A Workflow the controller has not finished: no phase yet (not picked up),
# Pending or Running (v3.6.10 and v4.0.7 workflow_phase.go: the other
# phases, Succeeded, Failed and Error, are final).
IN_FLIGHT_PHASES = ("", "Pending", "Running")

Progress = Callable[[str], None]


# ------------------------------------------------------------------ pure part


@dataclass(frozen=True)
class Scope:
    """Where the new controller looks for Argo objects: `namespaces`, or
    every namespace (`cluster_wide`). Empty and not cluster-wide: no Argo."""

    namespaces: tuple[str, ...] = ()
    cluster_wide: bool = False

    @property
    def empty(self) -> bool:
        return not self.namespaces and not self.cluster_wide

    def where(self) -> str:
        return "every namespace" if self.cluster_wide else ", ".join(self.namespaces)


def _setting(values: dict[str, Any], defaults: dict[str, Any], *keys: str) -> Any:
    """values over the chart's defaults, for one dotted path (None if neither has it)."""
    for tree in (values, defaults):
        node: Any = tree
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                node = None
                break
            node = node[key]
        if node is not None:
            return node
    return None


def managed_namespace(args: Iterable[Any]) -> str | None:
    """The namespace the last `--managed-namespace` of these flags names
    (`--managed-namespace=NS` or `--managed-namespace NS`; a repeated string
    flag keeps its last value), or None."""
    found: str | None = None
    items = [str(a) for a in args]
    for i, arg in enumerate(items):
        if arg.startswith(MANAGED_FLAG + "="):
            found = arg.split("=", 1)[1]
        elif arg == MANAGED_FLAG and i + 1 < len(items):
            found = items[i + 1]
    return found or None


def scope(values: dict[str, Any], defaults: dict[str, Any], release_namespace: str) -> Scope:
    """The namespaces the controller of this install watches; nothing when
    the install has no Argo Workflows (`--no-argo`)."""
    if not _setting(values, defaults, "argo-workflows", "enabled"):
        return Scope()
    # argo-helm's own default for singleNamespace is false (cluster-wide).
    if not _setting(values, defaults, "argo-workflows", "singleNamespace"):
        return Scope(cluster_wide=True)
    args = _setting(values, defaults, "argo-workflows", "controller", "extraArgs") or []
    return Scope((managed_namespace(args) or release_namespace,))


@dataclass(frozen=True)
class Move:
    """One CronWorkflow whose `schedule` becomes `schedules: [schedule]`."""

    namespace: str
    name: str
    schedule: str
    resource_version: str

    def patch(self) -> dict[str, Any]:
        """A JSON merge patch: `schedules` set and `schedule` dropped in one
        write, refused (409 Conflict) unless the object still has the
        resourceVersion it was read at."""
        return {"metadata": {"resourceVersion": self.resource_version},
                "spec": {"schedules": [self.schedule], "schedule": None}}

    def undo(self, resource_version: str) -> dict[str, Any]:
        """The patch that puts it back, from the version the move wrote."""
        return {"metadata": {"resourceVersion": resource_version},
                "spec": {"schedule": self.schedule, "schedules": None}}

    def line(self) -> str:
        return (f"moved CronWorkflow {self.namespace}/{self.name} schedule "
                f"\"{self.schedule}\" to schedules (Argo 4 reads only schedules)")


def needs_move(obj: dict[str, Any]) -> Move | None:
    """A Move for a CronWorkflow with a `schedule` and no (or an empty)
    `schedules`; None for anything else (one with both is left as it is:
    Argo refuses it either way, and which one its owner meant is theirs to say)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    schedule = spec.get("schedule")
    if not isinstance(schedule, str) or not schedule.strip() or spec.get("schedules"):
        return None
    return Move(str(meta.get("namespace", "")), str(meta.get("name", "")), schedule,
                str(meta.get("resourceVersion", "")))


def moves(items: Iterable[dict[str, Any]]) -> list[Move]:
    """The moves these CronWorkflows need, in namespace and name order."""
    found = [m for m in (needs_move(o) for o in items) if m is not None]
    return sorted(found, key=lambda m: (m.namespace, m.name))


def in_flight(items: Iterable[dict[str, Any]]) -> int:
    """How many of these Workflows have not finished."""
    return sum(1 for w in items
               if str((w.get("status") or {}).get("phase") or "") in IN_FLIGHT_PHASES)


def running_line(count: int, where: str) -> str:
    """What happens to the Workflows in flight: the controller keeps a
    Workflow's state in the object, and every controller, a new one after a
    restart included, reconciles each Workflow not labelled
    `workflows.argoproj.io/completed=true` (v3.6.10 and v4.0.7
    workflow/controller/controller.go reconciliationNeeded)."""
    if count == 0:
        return f"no Argo workflows running in {where}"
    return (f"{count} Argo workflow{'s' if count != 1 else ''} still running in {where}: "
            "they carry on under the upgraded controller; data scientists see them finish "
            "or fail in the Argo UI as usual")


# ------------------------------------------------------------- cluster part


def _custom(api: Any) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(api)


def _fail(exc: BaseException, what: str, api: Any = None) -> MfhelmError | None:
    """The one line for a refused call or a lost connection; None for
    anything else (a bug is not dressed up as the cluster's answer)."""
    from kubernetes.client.exceptions import ApiException

    from mfhelm import kube

    if isinstance(exc, ApiException):
        return kube.api_error(exc, what)
    return kube.connection_error(exc, api)


def _list(api: Any, where: Scope, plural: str) -> list[dict[str, Any]] | None:
    """Every object of this Argo kind in the scope; None when the API server
    does not serve the kind (no Argo CRDs: a first install)."""
    from kubernetes.client.exceptions import ApiException

    custom = _custom(api)
    items: list[dict[str, Any]] = []
    try:
        if where.cluster_wide:
            items = list(custom.list_cluster_custom_object(GROUP, VERSION, plural)["items"])
        for ns in where.namespaces:
            items += custom.list_namespaced_custom_object(GROUP, VERSION, ns, plural)["items"]
    except Exception as exc:
        if isinstance(exc, ApiException) and exc.status == 404:
            return None
        err = _fail(exc, f"listing Argo {plural} in {where.where()}", api)
        if err is None:
            raise
        raise err from None
    return items


def find_moves(api: Any, where: Scope) -> list[Move] | None:
    """The CronWorkflows to move; None when there is no CronWorkflow kind."""
    if where.empty:
        return None
    items = _list(api, where, CRONWORKFLOWS)
    return None if items is None else moves(items)


def _patch(api: Any, move: Move, body: dict[str, Any], *, dry_run: bool) -> dict[str, Any]:
    kw: dict[str, Any] = {"field_manager": FIELD_MANAGER, "_content_type": MERGE_PATCH}
    if dry_run:
        kw["dry_run"] = "All"
    return dict(_custom(api).patch_namespaced_custom_object(
        GROUP, VERSION, move.namespace, CRONWORKFLOWS, move.name, body, **kw))


NOTHING_DONE = "nothing was moved and nothing installed"


def _refused(exc: BaseException, move: Move, api: Any = None) -> str | None:
    """Why this move was refused, in one line; None for anything but the
    API server's refusal or a lost connection."""
    from kubernetes.client.exceptions import ApiException

    what = f"moving CronWorkflow {move.namespace}/{move.name} to schedules"
    if isinstance(exc, ApiException) and exc.status in (404, 409):
        change = "was deleted" if exc.status == 404 else "was changed"
        return (f"{what}: it {change} after mfhelm read it ({exc.status} "
                f"{'Not Found' if exc.status == 404 else 'Conflict'})")
    said = _server_message(exc)
    if said and getattr(exc, "status", None) != 401:
        # The API server's own words name who was refused what, or which
        # admission policy said no.
        return f"{what}: {exc.status} {said}"  # type: ignore[attr-defined]
    err = _fail(exc, what, api)
    return None if err is None else str(err)


def _server_message(exc: BaseException) -> str:
    """The `message` of the Status an API server refusal carries, on one line."""
    import json

    from kubernetes.client.exceptions import ApiException

    if not isinstance(exc, ApiException) or not exc.body:
        return ""
    try:
        status = json.loads(exc.body)
    except (TypeError, ValueError):
        return ""
    message = status.get("message") if isinstance(status, dict) else None
    return " ".join(str(message).split())[:400] if message else ""


def validate(api: Any, planned: list[Move]) -> None:
    """Every patch as a server-side dry run (authorization, admission, the
    CRD's schema and the resourceVersion all judged, nothing stored); the
    first refusal is the error, before any object is written."""
    for move in planned:
        try:
            _patch(api, move, move.patch(), dry_run=True)
        except Exception as exc:
            why = _refused(exc, move, api)
            if why is None:
                raise
            raise MfhelmError(f"{why}; {NOTHING_DONE}: run mfhelm install again once "
                              "that is fixed") from None


def apply(api: Any, planned: list[Move], progress: Progress) -> None:
    """The patches, for real, one line each. Should one fail after the dry
    run passed (the object changed in between), or the user interrupt, the
    ones done are moved back and the error says so."""
    done: list[tuple[Move, str]] = []
    for move in planned:
        try:
            written = _patch(api, move, move.patch(), dry_run=False)
        except BaseException as exc:
            why = _refused(exc, move, api)
            undone = _undo(api, done)
            if why is None:
                raise
            raise MfhelmError(f"{why}; {undone}nothing installed: run mfhelm install "
                              "again") from None
        done.append((move, str((written.get("metadata") or {}).get("resourceVersion", ""))))
        progress(move.line())


def _undo(api: Any, done: list[tuple[Move, str]]) -> str:
    """Move back what apply() moved, last first; what became of them, for
    the error line ("" when nothing had been moved)."""
    left = []
    for move, version in reversed(done):
        try:
            _patch(api, move, move.undo(version), dry_run=False)
        except Exception:  # noqa: BLE001 - told in the line, the rest still undone
            left.append(f"{move.namespace}/{move.name}")
    if not done:
        return ""
    if left:
        return (f"{len(done) - len(left)} CronWorkflow(s) moved before it were moved back, "
                f"{', '.join(reversed(left))} could not be (it keeps schedules, which Argo "
                "3.6 reads too); ")
    return f"the {len(done)} CronWorkflow(s) moved before it were moved back; "


def upgrade(api: Any, where: Scope, progress: Progress) -> list[Move]:
    """Move every CronWorkflow of the scope off `schedule` (all validated
    first), then tell how many Workflows are still running there. No Argo in
    this install, or no Argo CRDs in the cluster: nothing, silently."""
    planned = find_moves(api, where)
    if planned is None:
        return []
    validate(api, planned)
    apply(api, planned, progress)
    workflows = _list(api, where, WORKFLOWS)
    if workflows is not None:
        progress(running_line(in_flight(workflows), where.where()))
    return planned


def before_install(api: Any, chart: Path, values: dict[str, Any], release_namespace: str,
                   progress: Progress) -> list[Move]:
    """`mfhelm install`'s step, before its first write: upgrade() over the
    namespaces this install's Argo controller will watch (its values over
    the chart's defaults)."""
    from mfhelm.chartfiles import chart_defaults

    return upgrade(api, scope(values, chart_defaults(chart), release_namespace), progress)
